"""The model package: its format on disk (format.py), its values checked (validation.py), the graph rebuilt from its
head (rebuild.py), the Hub (hub.py).

This front door names what callers outside the room use.
"""

from .format import (CARD, CONFIG, FORMAT, FORMAT_VERSION, HEAD, SAVED_MODEL, PackageError, WeightsMismatchError,
                     copy_package, has_saved_model, listed_files, parse_config, read_config, sha256_file,
                     write_config)
from .rebuild import full_package
from .validation import read_head

__all__ = ["CARD", "CONFIG", "FORMAT", "FORMAT_VERSION", "HEAD", "SAVED_MODEL", "PackageError", "WeightsMismatchError",
           "copy_package", "full_package", "has_saved_model", "listed_files", "parse_config", "read_config",
           "read_head", "sha256_file", "write_config"]
