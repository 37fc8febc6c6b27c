"""Lung CT slice classifier (Normal / Benign / Malignant) on a frozen ImageNet ResNet50.

Data flow, one room each: decoding/ (any input -> a checked RGB slice) -> model/ (ResNet50
taps + trained head: probabilities, decided label, OOD score) -> verdict.py (Analysis: label
or no diagnosis, and why) -> scan/ (a whole series -> one verdict); package/ (format, rebuild,
Hub) holds what a model is on disk. LungClassifier (classifier.py) is the facade over them.
"""

from .classifier import LungClassifier
from .decoding.limits import ImageError
from .decoding.series import MAX_SLICES, ScanError
from .package.format import PackageError
from .package.hub import HubError
from .scan.analysis import ScanResult, ScanSlice
from .verdict import Analysis

__all__ = ["MAX_SLICES", "Analysis", "HubError", "ImageError", "LungClassifier", "PackageError", "ScanError",
           "ScanResult", "ScanSlice"]
