"""A whole scan: analysis.py (stream a series through a slice classifier), aggregation.py (slices -> the
scan's verdict by the package's rule). The command line is lung_classifier.cli.scan."""
