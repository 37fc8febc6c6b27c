"""Lung CT slice classifier (Normal / Benign / Malignant) on a frozen ImageNet ResNet50.

Data flow: image -> images.load_rgb -> preprocessing.prepare -> model (SavedModel) -> Analysis.
"""

from .classifier import Analysis, LungClassifier
from .hub import HubError
from .images import ImageError
from .package import PackageError
from .scan import ScanResult, ScanSlice
from .series import MAX_SLICES, ScanError

__all__ = ["MAX_SLICES", "Analysis", "HubError", "ImageError", "LungClassifier", "PackageError", "ScanError",
           "ScanResult", "ScanSlice"]
