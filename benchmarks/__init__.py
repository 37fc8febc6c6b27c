"""Benchmarks of the lung CT classifier: `python -m benchmarks [--quick]`.

Every row is measured warm (one untimed call first), reported as the median and spread
of repeated wall-clock runs, and compared with a baseline measured in the same run.
Results go to benchmarks/results.md (full run) or benchmarks/results-quick.md (--quick).
"""
