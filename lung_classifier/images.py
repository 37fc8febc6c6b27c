"""Every accepted input becomes one RGB uint8 array: the single decoder of the project.

Training, the library, the CLI and the demo all call :func:`load_rgb`, so a file is
decoded the same way wherever it enters (no train/serve skew, no lossy re-encoding).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

ImageInput = Union[str, os.PathLike, bytes, bytearray, Image.Image, np.ndarray]

MIN_SIDE = 32
"""Smaller images carry no usable CT detail (and 1x1 uploads are usually mistakes)."""
MAX_PIXELS = 40_000_000
"""Refuse decompression bombs well before they exhaust memory (a CT slice is ~0.26 MP)."""
LUNG_WINDOW = (-600.0, 1500.0)
"""DICOM display window (centre, width) in HU: the standard lung window."""

Image.MAX_IMAGE_PIXELS = MAX_PIXELS


class ImageError(ValueError):
    """The input cannot be used as a CT slice; the message says why, for a person."""


def load_rgb(image: ImageInput) -> np.ndarray:
    """Decode a path, bytes, PIL image or array into an H x W x 3 uint8 RGB array."""
    if isinstance(image, np.ndarray):
        rgb = _array_to_rgb(image)
    elif isinstance(image, Image.Image):
        rgb = _pil_to_rgb(image)
    elif isinstance(image, (bytes, bytearray)):
        rgb = _bytes_to_rgb(bytes(image), name="the uploaded data")
    elif isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise ImageError(f"{path}: no such file")
        rgb = _bytes_to_rgb(path.read_bytes(), name=path.name)
    else:
        raise ImageError(
            f"unsupported input type {type(image).__name__}: "
            "give a file path, bytes, a PIL image or a numpy array"
        )
    _check_size(rgb)
    return rgb


def _bytes_to_rgb(data: bytes, name: str) -> np.ndarray:
    if not data:
        raise ImageError(f"{name} is empty (0 bytes)")
    if _is_dicom(data):
        return _dicom_to_rgb(data, name)
    try:
        with Image.open(io.BytesIO(data)) as pil:
            if getattr(pil, "n_frames", 1) > 1:
                raise ImageError(
                    f"{name} is an animated image with {pil.n_frames} frames: upload a single CT slice"
                )
            # PIL only warns between MAX_PIXELS and twice that: refuse before decoding, not after.
            if pil.width * pil.height > MAX_PIXELS:
                raise ImageError(
                    f"{name}: image of {pil.width}x{pil.height} pixels is too large (limit {MAX_PIXELS:,})"
                )
            pil.load()
            return _pil_to_rgb(pil)
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{name} is too large to decode safely ({exc})") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name} is not an image PIL can read, nor a DICOM file") from None
    except (OSError, SyntaxError, TypeError, ValueError) as exc:
        if isinstance(exc, ImageError):
            raise
        # PIL reports corrupt files through all of these, depending on the format.
        raise ImageError(f"{name} is damaged or truncated ({exc})") from None


def _pil_to_rgb(pil: Image.Image) -> np.ndarray:
    if pil.width * pil.height > MAX_PIXELS:
        raise ImageError(f"image of {pil.width}x{pil.height} pixels is too large (limit {MAX_PIXELS:,})")
    pil = ImageOps.exif_transpose(pil)
    if pil.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _array_to_rgb(np.asarray(pil))
    if pil.mode == "P":
        pil = pil.convert("RGBA")
    if pil.mode in ("RGBA", "LA", "PA"):
        return _array_to_rgb(np.asarray(pil.convert("RGBA")))
    return np.asarray(pil.convert("RGB"), dtype=np.uint8)


def _array_to_rgb(array: np.ndarray) -> np.ndarray:
    """Arrays: H x W or H x W x 1/3/4; uint8 as is, 16-bit and float scaled to 0..255."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageError(f"array of shape {array.shape} is not an image (need H x W or H x W x 1/3/4)")
    array = _to_uint8(array)
    if array.ndim == 2:
        return np.repeat(array[:, :, None], 3, axis=2)
    if array.shape[2] == 4:
        alpha = array[:, :, 3:4].astype(np.uint16)
        # CT slices have a black background: transparent areas become black.
        return (array[:, :, :3].astype(np.uint16) * alpha // 255).astype(np.uint8)
    return np.ascontiguousarray(array)


def _to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.integer):
        if array.min() < 0 or array.max() > 65535:
            raise ImageError(
                f"integer array with values {array.min()}..{array.max()}: expected uint8 or uint16 grey levels"
            )
        # 16-bit grey levels (PNG 'I;16', uint16 arrays): full range maps to 0..255.
        return np.round(array.astype(np.float64) / 257.0).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ImageError("float array contains NaN or infinite values")
        top = 1.0 if array.max() <= 1.0 else 255.0
        return np.clip(np.round(array / top * 255.0), 0, 255).astype(np.uint8)
    raise ImageError(f"array of dtype {array.dtype} is not an image")


def _check_size(rgb: np.ndarray) -> None:
    height, width = rgb.shape[:2]
    if min(height, width) < MIN_SIDE:
        raise ImageError(f"image of {width}x{height} pixels is too small (need at least {MIN_SIDE} on each side)")
    if height * width > MAX_PIXELS:
        raise ImageError(f"image of {width}x{height} pixels is too large (limit {MAX_PIXELS:,})")


def _is_dicom(data: bytes) -> bool:
    return len(data) > 132 and data[128:132] == b"DICM"


def _dicom_to_rgb(data: bytes, name: str) -> np.ndarray:
    """Rescale stored values to HU, apply the lung window; no tag other than pixels is read."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        dataset = pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, EOFError, OSError, ValueError) as exc:
        raise ImageError(f"{name} is not a readable DICOM file ({exc.__class__.__name__})") from None
    if "PixelData" not in dataset:
        raise ImageError(f"{name} is a DICOM file without pixel data (not an image)")
    try:
        pixels = dataset.pixel_array
    except Exception as exc:  # pydicom raises many types for unsupported encodings
        raise ImageError(f"{name}: its DICOM pixel data cannot be decoded ({exc.__class__.__name__})") from None
    if pixels.ndim != 2:
        raise ImageError(f"{name} holds {pixels.shape} pixel data: upload a single greyscale CT slice")
    slope = float(getattr(dataset, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(dataset, "RescaleIntercept", 0.0) or 0.0)
    hounsfield = pixels.astype(np.float32) * slope + intercept
    centre, width = LUNG_WINDOW
    low = centre - width / 2.0
    grey = np.clip((hounsfield - low) / width, 0.0, 1.0)
    return _array_to_rgb(np.round(grey * 255.0).astype(np.uint8))
