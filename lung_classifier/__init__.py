"""Lung CT slice classifier (Normal / Benign / Malignant) on a frozen ImageNet ResNet50.

Data flow: image -> images.load_rgb -> preprocessing.prepare -> model (SavedModel) -> Analysis.
"""

from .classifier import Analysis, LungClassifier
from .hub import HubError
from .images import ImageError
from .package import PackageError

__all__ = ["Analysis", "HubError", "ImageError", "LungClassifier", "PackageError"]
