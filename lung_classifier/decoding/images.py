"""Every accepted input becomes one RGB uint8 array: the single decoder of the project.

Training, the library, the CLI and the demo all call :func:`load_rgb` (or
:func:`read_slice`), so a file is decoded the same way wherever it enters (no
train/serve skew, no lossy re-encoding).

- **Headers first.** A file's declared size and frame count are checked before a single
  pixel is decoded (:mod:`.limits`): more than ``MAX_PIXELS`` pixels or several frames is
  refused; a JPEG's markers are walked first (:mod:`.jpeg_layout`: frame type, scan count,
  coefficient buffer), and the decode reserves an upper bound of its memory
  (:func:`decode_bytes`) from the process budget.
- **Accepted formats.** Images: JPEG (and a phone's MPO, first picture), PNG (not
  animated), BMP, TIFF (one page), WebP (not animated) and single-frame GIF; PIL is
  asked to try no other decoder. DICOM: see :mod:`.dicom`.
- **Small early.** Every result is at most ``MAX_SIDE`` pixels on its long side (JPEGs
  are decoded at a reduced scale where libjpeg can): what the model and the page need.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from . import dicom, jpeg_layout
from .limits import (BUDGET, DOWNSCALE_FILTER, MAX_PIXELS, MIN_SIDE, SLACK, ImageError, check_declared,
                     target_size)
from .pool import pool
from .windowing import DICOM_WINDOW

ImageInput = Union[str, os.PathLike, bytes, bytearray, Image.Image, np.ndarray]

PIL_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "WEBP", "GIF")
"""The only decoders PIL may try (PIL format ids); see the module docstring."""
_ACCEPTED_FORMATS_TEXT = "JPEG, PNG, BMP, TIFF, WebP or single-frame GIF"

Image.MAX_IMAGE_PIXELS = MAX_PIXELS


@dataclass(frozen=True)
class Slice:
    """A decoded slice, and for DICOM input what its header says about where it came from."""

    rgb: np.ndarray  # H x W x 3 uint8
    dicom: bool = False
    axial: bool | None = None  # DICOM only: from ImageOrientationPatient; None when the tag is absent


def load_rgb(image: ImageInput, *, dicom_window: tuple[float, float] = DICOM_WINDOW) -> np.ndarray:
    """Decode a path, bytes, PIL image or array into an H x W x 3 uint8 RGB array.

    The long side is at most MAX_SIDE (larger images are downscaled); DICOM files are
    rescaled to HU and shown through `dicom_window` (centre, width in HU).
    """
    return read_slice(image, dicom_window=dicom_window).rgb


def read_slice(image: ImageInput, *, dicom_window: tuple[float, float] = DICOM_WINDOW) -> Slice:
    """Like :func:`load_rgb`, keeping whether the input was DICOM and whether it is an axial slice."""
    centre, width = (float(value) for value in dicom_window)
    if not (math.isfinite(centre) and math.isfinite(width) and width > 0):
        raise ValueError(f"dicom_window must be (centre, width) in HU with width > 0, not {dicom_window}")
    decoded = _decode(image, (centre, width))
    _check_size(decoded.rgb)
    return decoded


def _decode(image: ImageInput, window: tuple[float, float]) -> Slice:
    """Every input kind -> RGB uint8, at most MAX_SIDE on the long side."""
    if isinstance(image, np.ndarray):
        if image.size == 0:  # before anything reduces over it (np.max of nothing is a plain ValueError)
            raise ImageError(f"array of shape {image.shape} holds no pixel: give an H x W (x 1/3/4) image")
        if image.ndim >= 2:
            check_declared(image.shape[1], image.shape[0], "array")
        return Slice(_shrink_rgb(_array_to_rgb(image)))
    if isinstance(image, Image.Image):
        return Slice(_pil_to_rgb(image, "image"))
    if isinstance(image, (bytes, bytearray)):
        if not image:
            raise ImageError("the uploaded data is empty (0 bytes)")
        return _in_worker(bytes(image), "the uploaded data", window)
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise ImageError(f"{path}: no such file")
        return _in_worker(path, path.name, window)
    raise ImageError(
        f"unsupported input type {type(image).__name__}: give a file path, bytes, a PIL image or a numpy array"
    )


def _in_worker(source: bytes | Path, name: str, window: tuple[float, float]) -> Slice:
    """A file's bytes are decoded by native code (GDCM, libjpeg, libtiff...): in a worker process, never here."""
    rgb, answer = pool().decode(source, name, window)
    axial = answer.get("axial")
    return Slice(rgb, dicom=answer.get("dicom") is True, axial=axial if isinstance(axial, bool) else None)


def decode_here(source: bytes | Path, name: str, window: tuple[float, float]) -> Slice:
    """Decode a file's bytes in this process: what a decode worker runs (:mod:`.worker`), one file at a time."""
    try:
        if isinstance(source, bytes):
            return _stream_to_slice(io.BytesIO(source), len(source), name, window)
        try:
            stream = open(source, "rb")
        except OSError as exc:
            raise ImageError(f"{name} cannot be read ({exc.__class__.__name__})") from None
        with stream:
            size = os.fstat(stream.fileno()).st_size
            if not size:
                raise ImageError(f"{name} is empty (0 bytes)")
            return _stream_to_slice(stream, size, name, window)
    finally:
        BUDGET.release_freed_memory()


def _stream_to_slice(stream: BinaryIO, size: int, name: str, window: tuple[float, float]) -> Slice:
    head = stream.read(132)
    stream.seek(0)
    if len(head) == 132 and size > 132 and head[128:132] == b"DICM":
        grey, axial = dicom.decode(stream, size, name, window)
        return Slice(_array_to_rgb(grey), dicom=True, axial=axial)
    return Slice(_pil_stream_to_rgb(stream, name))


# --- PIL images -------------------------------------------------------------------------------------


def _pil_stream_to_rgb(stream: BinaryIO, name: str) -> np.ndarray:
    try:
        coefficients = 0
        if stream.read(2) == b"\xff\xd8":  # JPEG: frame type, scan count and coefficient buffer before libjpeg
            stream.seek(0)
            layout = jpeg_layout.read_layout(stream, name)
            check_declared(layout.width, layout.height, name)
            coefficients = layout.coefficient_bytes()
        stream.seek(0)
        with Image.open(stream, formats=PIL_FORMATS) as pil:
            # is_animated reads at most the second frame's header; n_frames would walk every frame
            # (7.5 s of CPU for a TIFF of 20,000 pages, 5.9 s for a GIF of 1,000,000 frames).
            if pil.format != "MPO" and getattr(pil, "is_animated", False):  # MPO: a photo plus previews
                raise ImageError(f"{name} is an animated image or has several pages: upload a single CT slice")
            check_declared(pil.width, pil.height, name)
            target = target_size(pil.width, pil.height, name)
            if pil.format in ("JPEG", "MPO"):
                pil.draft(pil.mode, target)  # libjpeg's 1/2..1/8 scaling
            with BUDGET.reserve(decode_bytes(pil.format or "", pil.mode, pil.size, target, coefficients), name):
                pil.load()
                return _pil_to_rgb(pil, name)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{name} is too large to decode safely ({exc})") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name} is not an image in an accepted format ({_ACCEPTED_FORMATS_TEXT}) "
                         "nor a DICOM file: export the slice as PNG or JPEG") from None
    except Exception as exc:  # noqa: BLE001 - PIL's decoders report corrupt data with many exception types
        raise ImageError(f"{name} is damaged or truncated ({exc.__class__.__name__}: {exc}): "
                         "export the slice again") from None


def decode_bytes(format: str, mode: str, size: tuple[int, int], target: tuple[int, int],
                 coefficients: int = 0) -> int:
    """Upper bound of one PIL decode, from the decoded size (after draft) to the RGB result, term by term.

    Measured per kind against the peak (tests/test_image_limits.py); Pillow 12's resize and
    reduce read where a term was not obvious:
      native       PIL's storage: 1 B/px (modes 1, L, P), 2 (I;16), 4 (every other mode)
      decoder      WebP: its animation decoder holds the frame as bytes and a canvas, 12 B/px;
                   JPEG: libjpeg's coefficient buffer when progressive or multi-scan (jpeg_layout)
      convert      P/PA -> RGBA 4 B/px, 1 -> L 1 B/px, CMYK/YCbCr/LAB/HSV -> RGB 4 B/px
      resize       RGBA and LA (and P through RGBA): Pillow premultiplies a full-size copy and
                   resizes it without reducing_gap, so its horizontal pass is target width x full
                   height; other modes: the reduce() copy (bands x px / f^2) and a pass on it
      output       4 copies of the target at 4 B/px (resize, transpose, array, RGB)
    """
    width, height = size
    pixels = width * height
    working = _working_mode(mode)
    total = _native_bytes(mode) * pixels + coefficients + SLACK
    if format == "WEBP":
        total += 12 * pixels
    if working != mode:
        total += {"L": 1, "I": 4}.get(working, 4) * pixels
    bands = 1 if working == "L" else 4
    if target != size:
        if working in ("RGBA", "LA"):
            total += bands * pixels + bands * target[0] * height
        else:
            fx, fy = (max(1, int(side / goal / _REDUCING_GAP)) for side, goal in zip(size, target))
            reduced = bands * (width // fx + 1) * (height // fy + 1) if fx * fy > 1 else 0
            total += reduced + bands * target[0] * (height // fy + 1)
    return total + 4 * 4 * target[0] * target[1]


def _native_bytes(mode: str) -> int:
    return 2 if mode.startswith("I;16") else {"1": 1, "L": 1, "P": 1}.get(mode, 4)


def _working_mode(mode: str) -> str:
    """The mode _pil_to_rgb resizes in: 1 -> L, P/PA -> RGBA, I;16 -> I, other non-direct modes -> RGB."""
    if mode == "1":
        return "L"
    if mode in ("P", "PA"):
        return "RGBA"
    if mode.startswith("I;16"):
        return "I"
    return mode if mode in _DIRECT_MODES else "RGB"


_REDUCING_GAP = 3
"""Pillow reduces by an integer factor first while the image is 3 times the target or more (its quality default)."""
_DIRECT_MODES = ("L", "LA", "RGB", "RGBA", "I", "F")
"""Modes resized and turned into arrays as they are; others are converted at full size first."""


_ORIENTATION = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}
"""EXIF orientation -> the transpose that displays the image upright (as ImageOps.exif_transpose)."""


def _pil_to_rgb(pil: Image.Image, name: str) -> np.ndarray:
    """Downscale to MAX_SIDE, turn upright (EXIF), then to RGB: 16-bit scaled, transparency black."""
    check_declared(pil.width, pil.height, name)
    orientation = _ORIENTATION.get(pil.getexif().get(0x0112))
    target = target_size(pil.width, pil.height, name)
    if _working_mode(pil.mode) != pil.mode and (target != pil.size or not pil.mode.startswith("I;16")):
        pil = pil.convert(_working_mode(pil.mode))  # CMYK, YCbCr, ... -> RGB; I;16 only to resize (Pillow cannot)
    if target != pil.size:
        pil = pil.resize(target, DOWNSCALE_FILTER, reducing_gap=_REDUCING_GAP)
    if orientation is not None:
        pil = pil.transpose(orientation)
    if pil.mode in ("I", "F") or pil.mode.startswith("I;16"):
        return _array_to_rgb(np.asarray(pil))
    if pil.mode in ("RGBA", "LA"):
        return _array_to_rgb(np.asarray(pil.convert("RGBA")))
    return np.asarray(pil.convert("RGB"), dtype=np.uint8)


# --- arrays and sizes -------------------------------------------------------------------------------


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


def _shrink_rgb(rgb: np.ndarray) -> np.ndarray:
    target = target_size(rgb.shape[1], rgb.shape[0], "image")
    if target == (rgb.shape[1], rgb.shape[0]):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize(target, DOWNSCALE_FILTER, reducing_gap=3.0))


def _check_size(rgb: np.ndarray) -> None:
    height, width = rgb.shape[:2]
    if min(height, width) < MIN_SIDE:
        raise ImageError(f"image of {width}x{height} pixels is too small (need at least {MIN_SIDE} on each side)")
