"""What a package load raises: one home for the room's errors, so that every module of the room can raise them."""


class PackageError(RuntimeError):
    """A package is missing, incomplete, of an unknown format or fails its checks."""


class WeightsMismatchError(PackageError):
    """The ResNet50 weights at hand are not those the package's head was trained on."""
