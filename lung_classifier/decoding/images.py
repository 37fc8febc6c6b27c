"""Every accepted input becomes one RGB uint8 array: the single decoder of the project.

Training, the library, the CLI and the demo all call :func:`load_rgb`, so a file is
decoded the same way wherever it enters (no train/serve skew, no lossy re-encoding).

The demo takes uploads from anyone, so memory is bounded by design, not by luck:

- **Headers first.** A file's declared size, frame count, bit depth and (for DICOM)
  transfer syntax are checked before a single pixel is decoded: more than
  ``MAX_PIXELS`` pixels, several frames, or an encoding not listed here is refused.
- **Accepted formats.** Images: JPEG (and a phone's MPO, first picture), PNG (not
  animated), BMP, TIFF (one page), WebP (not animated) and single-frame GIF; PIL is
  asked to try no other decoder. DICOM: uncompressed little endian (implicit or
  explicit VR) and RLE Lossless (decoded here, never past the declared size), one
  greyscale frame of 8 or 16 bits (MONOCHROME1/2). Refused: Deflated Explicit VR
  Little Endian (it inflates the whole dataset before any tag can be checked), the
  JPEG family (JPEG, JPEG-LS, JPEG 2000, HTJ2K: the embedded stream declares its own
  size), big endian and video syntaxes. Of a DICOM file only the pixel geometry, the
  slice orientation, the rescale slope/intercept and the pixel data are read; no other tag
  (whole-scan ordering reads position, instance number and series identity too:
  :func:`read_dicom_placement`).
- **A memory budget.** Each decode reserves an upper bound of the memory it will use
  from a process-wide budget (``DECODE_BUDGET_BYTES``) and waits while other decodes
  hold it, so concurrent requests cannot add up past it.
- **Small early.** Every result is at most ``MAX_SIDE`` pixels on its long side (JPEGs
  are decoded at a reduced scale where libjpeg can): what the model and the page need.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import math
import os
import struct
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from .rendering import DICOM_WINDOW

ImageInput = Union[str, os.PathLike, bytes, bytearray, Image.Image, np.ndarray]

MIN_SIDE = 32
"""Smaller images carry no usable CT detail (and 1x1 uploads are usually mistakes)."""
MAX_SIDE = 1024
"""Long side of every decoded image: the model sees 224 px, the page shows the slice (CT is 512)."""
MAX_PIXELS = 40_000_000
"""Declared pixel count refused before decoding (a CT slice is ~0.26 MP, a radiograph ~10 MP)."""
DECODE_BUDGET_BYTES = 256 * 2**20
"""Upper bound of the memory all concurrent decodes of this process may hold together (a 40 MP
grey, RGB(A) or palette PNG or a 40 MP uncompressed 16-bit DICOM fits; a 40 MP CMYK TIFF does not)."""
PIL_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "WEBP", "GIF")
"""The only decoders PIL may try (PIL format ids); see the module docstring."""

MAX_DICOM_HEADER_READ = 512 * 2**10
"""Bytes the DICOM header pass may read (skipped elements are seeked over, not read)."""
_DICOM_HEADER_BYTES = 16 * 2**20
"""Budget reserved while pydicom parses a header: at most MAX_DICOM_HEADER_READ of nested items."""
_ACCEPTED_FORMATS_TEXT = "JPEG, PNG, BMP, TIFF, WebP or single-frame GIF"
_RESAMPLE = Image.Resampling.LANCZOS
_SLACK = 16 * 2**20
"""Added to every decode's estimate: decoder buffers, the downscaled copy, Python objects."""

Image.MAX_IMAGE_PIXELS = MAX_PIXELS


class ImageError(ValueError):
    """The input cannot be used as a CT slice; the message says why, for a person."""


class _DecodeBudget:
    """A byte budget shared by every decode of the process: reservations wait, never overlap past it."""

    def __init__(self, total: int):
        self.total = total
        self._used = 0
        self._free = threading.Condition()
        self._large = threading.local()

    @contextmanager
    def reserve(self, nbytes: int, name: str) -> Iterator[None]:
        if nbytes > self.total:
            raise ImageError(f"{name} is too large to decode within this server's memory limit: "
                             "upload a smaller image (a CT slice is about 512x512 pixels)")
        with self._free:
            self._free.wait_for(lambda: self._used + nbytes <= self.total)
            self._used += nbytes
        if nbytes >= _TRIM_ABOVE:
            self._large.decoded = True
        try:
            yield
        finally:
            with self._free:
                self._used -= nbytes
                self._free.notify_all()

    def release_freed_memory(self) -> None:
        """After a large decode in this thread, hand the freed heap back to the OS.

        glibc keeps freed blocks in per-thread arenas: without this, every request thread
        would keep the peak of its largest decode resident, and 16 of them add up.
        """
        if getattr(self._large, "decoded", False):
            self._large.decoded = False
            if _MALLOC_TRIM is not None:
                _MALLOC_TRIM(0)


_TRIM_ABOVE = 48 * 2**20
_LIBC = ctypes.CDLL(ctypes.util.find_library("c")) if sys.platform.startswith("linux") else None
_MALLOC_TRIM = getattr(_LIBC, "malloc_trim", None)  # glibc only; elsewhere freed memory is left to the allocator
_BUDGET = _DecodeBudget(DECODE_BUDGET_BYTES)


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
    try:
        decoded = _decode(image, (centre, width))
    finally:
        _BUDGET.release_freed_memory()
    _check_size(decoded.rgb)
    return decoded


def _decode(image: ImageInput, window: tuple[float, float]) -> Slice:
    """Every input kind -> RGB uint8, at most MAX_SIDE on the long side."""
    if isinstance(image, np.ndarray):
        if image.ndim >= 2:
            _check_declared(image.shape[1], image.shape[0], "array")
        return Slice(_shrink_rgb(_array_to_rgb(image)))
    if isinstance(image, Image.Image):
        return Slice(_pil_to_rgb(image, "image"))
    if isinstance(image, (bytes, bytearray)):
        if not image:
            raise ImageError("the uploaded data is empty (0 bytes)")
        return _stream_to_slice(io.BytesIO(image), len(image), "the uploaded data", window)
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise ImageError(f"{path}: no such file")
        with open(path, "rb") as stream:
            size = os.fstat(stream.fileno()).st_size
            if not size:
                raise ImageError(f"{path.name} is empty (0 bytes)")
            return _stream_to_slice(stream, size, path.name, window)
    raise ImageError(
        f"unsupported input type {type(image).__name__}: give a file path, bytes, a PIL image or a numpy array"
    )


def _stream_to_slice(stream: BinaryIO, size: int, name: str, window: tuple[float, float]) -> Slice:
    head = stream.read(132)
    stream.seek(0)
    if len(head) == 132 and size > 132 and head[128:132] == b"DICM":
        return _dicom_to_slice(stream, size, name, window)
    return Slice(_pil_stream_to_rgb(stream, name))


# --- PIL images -------------------------------------------------------------------------------------


def _pil_stream_to_rgb(stream: BinaryIO, name: str) -> np.ndarray:
    try:
        with Image.open(stream, formats=PIL_FORMATS) as pil:
            frames = 1 if pil.format == "MPO" else getattr(pil, "n_frames", 1)  # MPO: a photo plus previews
            if frames > 1:
                raise ImageError(f"{name} is an animated image with {frames} frames: upload a single CT slice")
            _check_declared(pil.width, pil.height, name)
            if pil.format in ("JPEG", "MPO"):
                pil.draft(pil.mode, _target_size(pil.width, pil.height, name))  # libjpeg's 1/2..1/8 scaling
            with _BUDGET.reserve(_pil_bytes(pil), name):
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


def _pil_bytes(pil: Image.Image) -> int:
    """Upper bound of a decode's memory: PIL's storage at the decoded size, a mode conversion, slack."""
    native = {"1": 1, "L": 1, "P": 1}.get(pil.mode, 2 if pil.mode.startswith("I;16") else 4)
    converted = 0 if pil.mode in _DIRECT_MODES or pil.mode.startswith("I;16") else 4
    libtiff = 4 if pil.format == "TIFF" else 0  # libtiff may decode through a full-size RGBA buffer
    return pil.width * pil.height * (native + converted + libtiff) + _SLACK


_DIRECT_MODES = ("L", "LA", "RGB", "RGBA", "I", "F")
"""Modes resized and turned into arrays as they are; others are converted at full size first."""


_ORIENTATION = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}
"""EXIF orientation -> the transpose that displays the image upright (as ImageOps.exif_transpose)."""


def _pil_to_rgb(pil: Image.Image, name: str) -> np.ndarray:
    """Downscale to MAX_SIDE, turn upright (EXIF), then to RGB: 16-bit scaled, transparency black."""
    _check_declared(pil.width, pil.height, name)
    orientation = _ORIENTATION.get(pil.getexif().get(0x0112))
    if pil.mode == "1":
        pil = pil.convert("L")
    elif pil.mode in ("P", "PA"):
        pil = pil.convert("RGBA")
    elif pil.mode not in _DIRECT_MODES and not pil.mode.startswith("I;16"):
        pil = pil.convert("RGB")  # CMYK, YCbCr, LAB, HSV, ...
    target = _target_size(pil.width, pil.height, name)
    if target != pil.size:
        pil = pil.resize(target, _RESAMPLE, reducing_gap=3.0)
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


def _check_declared(width: int, height: int, name: str) -> None:
    """Refuse a declared size beyond MAX_PIXELS before anything is decoded."""
    if width * height > MAX_PIXELS:
        raise ImageError(f"{name}: image of {width}x{height} pixels is too large (limit {MAX_PIXELS:,}): "
                         "upload a single CT slice")


def _target_size(width: int, height: int, name: str) -> tuple[int, int]:
    """The size after downscaling to MAX_SIDE on the long side (unchanged when already small)."""
    if max(width, height) <= MAX_SIDE:
        return width, height
    scale = MAX_SIDE / max(width, height)
    target = (max(1, round(width * scale)), max(1, round(height * scale)))
    if min(target) < MIN_SIDE and min(width, height) >= MIN_SIDE:
        raise ImageError(f"{name}: image of {width}x{height} pixels is too elongated: at {MAX_SIDE} px on its "
                         f"long side it is under {MIN_SIDE} px on the short side; upload a CT slice")
    return target


def _shrink_rgb(rgb: np.ndarray) -> np.ndarray:
    target = _target_size(rgb.shape[1], rgb.shape[0], "image")
    if target == (rgb.shape[1], rgb.shape[0]):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize(target, _RESAMPLE, reducing_gap=3.0))


def _check_size(rgb: np.ndarray) -> None:
    height, width = rgb.shape[:2]
    if min(height, width) < MIN_SIDE:
        raise ImageError(f"image of {width}x{height} pixels is too small (need at least {MIN_SIDE} on each side)")


# --- DICOM ------------------------------------------------------------------------------------------

_UNCOMPRESSED = {"1.2.840.10008.1.2": True, "1.2.840.10008.1.2.1": False}  # syntax -> implicit VR
_RLE = "1.2.840.10008.1.2.5"
_DEFLATED = "1.2.840.10008.1.2.1.99"
_PIXEL_DATA = 0x7FE00010
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
"""Explicit VRs whose element header carries a 4-byte length after 2 reserved bytes."""
_GEOMETRY_TAGS = ["SamplesPerPixel", "PhotometricInterpretation", "NumberOfFrames", "Rows", "Columns",
                  "BitsAllocated", "BitsStored", "PixelRepresentation", "RescaleIntercept", "RescaleSlope",
                  "ImageOrientationPatient"]
"""The only tags read (besides the file meta and the pixel data): geometry, orientation, encoding and rescale."""
AXIAL_COSINE = 0.9
"""A slice is axial when its normal's z component is at least this (within ~25 degrees of the body axis)."""


def _is_axial(header, name: str) -> bool | None:
    """Whether the slice plane is axial, from the row and column direction cosines; None if not recorded."""
    value = header.get("ImageOrientationPatient")
    if value is None or value == "":
        return None
    try:
        cosines = np.array([float(v) for v in value], np.float64)
    except (TypeError, ValueError):
        raise ImageError(f"{name}: DICOM ImageOrientationPatient is not six numbers: export the slice again") from None
    if cosines.shape != (6,) or not np.isfinite(cosines).all():
        raise ImageError(f"{name}: DICOM ImageOrientationPatient is not six numbers: export the slice again")
    normal = np.cross(cosines[:3], cosines[3:])
    length = float(np.linalg.norm(normal))
    if length < 1e-6:
        raise ImageError(f"{name}: DICOM ImageOrientationPatient has parallel row and column directions")
    return bool(abs(normal[2]) / length >= AXIAL_COSINE)


class _HeaderReader:
    """A file object that refuses to read more than `limit` bytes (seeks are free)."""

    def __init__(self, stream: BinaryIO, limit: int, name: str):
        self._stream, self._left = stream, limit
        self.exceeded = ImageError(f"{name}: its DICOM header reads more than {limit // 2**10} KiB before the "
                                   "pixel data (damaged or crafted file): export the slice again or as PNG")
        self.hit = False

    def read(self, size: int = -1) -> bytes:
        if size < 0 or size > self._left:
            self.hit = True  # pydicom re-raises what its reads raise as OSError: the caller checks `hit`
            raise self.exceeded
        data = self._stream.read(size)
        self._left -= len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._stream.seek(offset, whence)

    def tell(self) -> int:
        return self._stream.tell()


@contextmanager
def _dicom_errors(header_stream: "_HeaderReader", name: str) -> Iterator[None]:
    """Any failure reading a DICOM header becomes an ImageError that says what to do."""
    try:
        yield
    except ImageError:
        raise
    except Exception as exc:  # noqa: BLE001 - pydicom reports malformed headers with many exception types
        if header_stream.hit:
            raise header_stream.exceeded from None
        raise ImageError(f"{name} is not a readable DICOM file ({exc.__class__.__name__}): "
                         "export it again or as PNG") from None


def _dicom_to_slice(stream: BinaryIO, size: int, name: str, window: tuple[float, float]) -> Slice:
    """Check the header, then decode one bounded frame; rescale to HU and apply the window."""
    header_stream = _HeaderReader(stream, MAX_DICOM_HEADER_READ, name)
    pixel_element: dict[str, int] = {}

    def at_pixel_data(tag: int, vr: str | None, length: int) -> bool:
        if tag >= _PIXEL_DATA:
            pixel_element.update(tag=int(tag), length=length)
            return True
        return False

    with _dicom_errors(header_stream, name), _BUDGET.reserve(_DICOM_HEADER_BYTES, name):
        syntax, header = _read_dicom_header(header_stream, at_pixel_data, name)
        geometry = _Geometry.read(header, name)
    if pixel_element.get("tag") != _PIXEL_DATA:
        raise ImageError(f"{name} is a DICOM file without pixel data (not an image)")
    with _BUDGET.reserve(_dicom_bytes(geometry, syntax, size - stream.tell()), name):
        stored = _read_pixels(stream, size, syntax, pixel_element["length"], geometry, name)
        grey = _window(stored, geometry, window)
        del stored
        target = _target_size(geometry.columns, geometry.rows, name)
        if target != (geometry.columns, geometry.rows):
            grey = np.asarray(Image.fromarray(grey).resize(target, _RESAMPLE, reducing_gap=3.0))
        return Slice(_array_to_rgb(grey), dicom=True, axial=_is_axial(header, name))


def _read_dicom_header(header_stream: _HeaderReader, at_pixel_data, name: str, tags: list[str] = _GEOMETRY_TAGS):
    """The transfer syntax (refused unless accepted) and the given tags; stops at the pixel data."""
    from pydicom.filereader import read_dataset, read_preamble
    from pydicom.tag import Tag
    from pydicom.uid import UID

    read_preamble(header_stream, False)
    meta = read_dataset(header_stream, is_implicit_VR=False, is_little_endian=True,
                        stop_when=lambda tag, vr, length: tag >> 16 != 2, specific_tags=[Tag(0x00020010)])
    syntax = str(meta.get("TransferSyntaxUID", "") or "").strip("\0 ")
    if syntax == _DEFLATED:
        raise ImageError(f"{name} uses the Deflated transfer syntax, which is not accepted (it must be inflated "
                         "whole before it can be checked): save it uncompressed, e.g. `gdcmconv --raw`")
    if not syntax:
        raise ImageError(f"{name} is a DICOM file without a transfer syntax in its file meta "
                         "(damaged or not conformant): export it again or as PNG")
    if syntax not in _UNCOMPRESSED and syntax != _RLE:
        raise ImageError(f"{name}: DICOM encoding {UID(syntax).name} ({syntax}) is not accepted (accepted: "
                         "uncompressed little endian or RLE Lossless): save it uncompressed, e.g. `gdcmconv --raw`, "
                         "or as PNG")
    header = read_dataset(header_stream, _UNCOMPRESSED.get(syntax, False), True, stop_when=at_pixel_data,
                          specific_tags=[Tag(keyword) for keyword in tags])
    return syntax, header


_PLACEMENT_TAGS = ["Rows", "Columns", "ImageOrientationPatient", "ImagePositionPatient", "InstanceNumber",
                   "SeriesInstanceUID"]
"""What ordering a series needs: size, plane, position, instance number and series identity; nothing else."""


@dataclass(frozen=True)
class DicomPlacement:
    """Where a DICOM slice sits in its series, from its header alone (no pixel is decoded)."""

    series_uid: str | None
    rows: int
    columns: int
    orientation: tuple[float, ...] | None  # ImageOrientationPatient: row, then column direction cosines
    position: tuple[float, float, float] | None  # ImagePositionPatient: the first pixel's centre, mm
    instance: int | None  # InstanceNumber


def read_dicom_placement(stream: BinaryIO, name: str) -> DicomPlacement:
    """The ordering tags of a DICOM file, read with the same bounded header reader as decoding uses."""
    header_stream = _HeaderReader(stream, MAX_DICOM_HEADER_READ, name)
    with _dicom_errors(header_stream, name):
        with _BUDGET.reserve(_DICOM_HEADER_BYTES, name):
            _, header = _read_dicom_header(header_stream, lambda tag, vr, length: tag >= _PIXEL_DATA, name,
                                           _PLACEMENT_TAGS)
        rows, columns = (_single(header, keyword, name) for keyword in ("Rows", "Columns"))
        if rows is None or columns is None:
            raise ImageError(f"{name} is a DICOM file without Rows and Columns (not an image)")
        series = _single(header, "SeriesInstanceUID", name)
        instance = _single(header, "InstanceNumber", name)
        return DicomPlacement(series_uid=None if series is None else str(series).strip("\0 ")[:64],
                              rows=int(rows), columns=int(columns),
                              orientation=_numbers(header, "ImageOrientationPatient", 6, name),
                              position=_numbers(header, "ImagePositionPatient", 3, name),
                              instance=None if instance is None else int(instance))


def _numbers(header, keyword: str, count: int, name: str) -> tuple[float, ...] | None:
    """A multi-valued numeric tag as `count` finite floats; None when absent or empty."""
    value = header.get(keyword)
    if value is None or value == "":
        return None
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        numbers = ()
    if len(numbers) != count or not all(math.isfinite(n) for n in numbers):
        raise ImageError(f"{name}: DICOM {keyword} is not {count} numbers: export the slice again")
    return numbers


def _dicom_bytes(geometry: "_Geometry", syntax: str, remaining: int) -> int:
    """Upper bound of decoding the pixels: the stored bytes (and RLE input), a masked copy, the grey image."""
    stored = geometry.pixels * geometry.bytes_per_pixel
    if syntax == _RLE:  # the encapsulated frame (at most what the file holds), one decoded segment
        return min(remaining, _rle_limit(geometry)) + stored + 2 * geometry.pixels + _SLACK
    return 2 * stored + geometry.pixels + _SLACK


class _Geometry:
    """The pixel-describing tags of a DICOM header, validated."""

    def __init__(self, rows: int, columns: int, bits_allocated: int, bits_stored: int, signed: bool,
                 inverted: bool, slope: float, intercept: float):
        self.rows, self.columns = rows, columns
        self.bits_allocated, self.bits_stored, self.signed = bits_allocated, bits_stored, signed
        self.inverted, self.slope, self.intercept = inverted, slope, intercept

    @property
    def pixels(self) -> int:
        return self.rows * self.columns

    @property
    def bytes_per_pixel(self) -> int:
        return self.bits_allocated // 8

    @classmethod
    def read(cls, header, name: str) -> "_Geometry":
        def integer(keyword: str, default: int | None = None) -> int:
            value = _single(header, keyword, name)
            if value is None:
                if default is None:
                    raise ImageError(f"{name} is a DICOM file without {keyword} (no usable pixel data)")
                return default
            try:
                return int(value)
            except (TypeError, ValueError):
                raise ImageError(f"{name}: DICOM tag {keyword} is {value!r}, not a whole number") from None

        if "Rows" not in header and "Columns" not in header:
            raise ImageError(f"{name} is a DICOM file without pixel data (not an image)")
        rows, columns = integer("Rows"), integer("Columns")
        frames = integer("NumberOfFrames", 1)
        samples = integer("SamplesPerPixel", 1)
        photometric = str(_single(header, "PhotometricInterpretation", name) or "MONOCHROME2").strip()
        if frames != 1:
            raise ImageError(f"{name} holds {frames} frames: upload a single CT slice (one frame)")
        if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
            raise ImageError(f"{name} is a DICOM image of type {photometric} with {samples} sample(s) per pixel: "
                             "upload a greyscale CT slice (MONOCHROME2)")
        if min(rows, columns) < MIN_SIDE:
            raise ImageError(f"{name}: image of {columns}x{rows} pixels is too small "
                             f"(need at least {MIN_SIDE} on each side)")
        _check_declared(columns, rows, name)
        bits_allocated = integer("BitsAllocated")
        if bits_allocated not in (8, 16):
            raise ImageError(f"{name}: DICOM pixels of {bits_allocated} bits are not accepted (8 or 16 bits)")
        bits_stored = integer("BitsStored", bits_allocated)
        if not 1 <= bits_stored <= bits_allocated:
            raise ImageError(f"{name}: DICOM BitsStored {bits_stored} does not fit BitsAllocated {bits_allocated}")
        representation = integer("PixelRepresentation", 0)
        if representation not in (0, 1):
            raise ImageError(f"{name}: DICOM PixelRepresentation {representation} is neither 0 nor 1")
        slope = _rescale(header, "RescaleSlope", 1.0, 1e3, name)
        intercept = _rescale(header, "RescaleIntercept", 0.0, 1e5, name)
        if slope == 0:
            raise ImageError(f"{name}: DICOM RescaleSlope is 0, which maps every pixel to one value")
        return cls(rows, columns, bits_allocated, bits_stored, representation == 1,
                   photometric == "MONOCHROME1", slope, intercept)


def _single(header, keyword: str, name: str):
    """One tag's value, None when absent or empty; several values are an error."""
    from pydicom.multival import MultiValue

    if keyword not in header:
        return None
    value = header[keyword].value
    if isinstance(value, (MultiValue, list, tuple)):
        shown = "\\".join(str(item) for item in value)[:40]
        raise ImageError(f"{name}: DICOM tag {keyword} holds several values ({shown}), expected one")
    if value is None or (isinstance(value, (str, bytes)) and not value.strip()):
        return None
    return value


def _rescale(header, keyword: str, default: float, bound: float, name: str) -> float:
    value = _single(header, keyword, name)
    if value is None:
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ImageError(f"{name}: DICOM tag {keyword} is {str(value)[:40]!r}, not a number") from None
    if not math.isfinite(number) or abs(number) > bound:
        raise ImageError(f"{name}: DICOM tag {keyword} is {number:g}, outside any CT rescale (|value| <= {bound:g})")
    return number


def _read_pixels(stream: BinaryIO, size: int, syntax: str, length: int, geometry: _Geometry,
                 name: str) -> np.ndarray:
    """The stored values of the single frame, never reading or producing more than declared."""
    expected = geometry.pixels * geometry.bytes_per_pixel
    element = stream.read(8)  # tag and (VR and) length, already known from the header pass
    if not _UNCOMPRESSED.get(syntax, False) and element[4:6] in _LONG_VRS:
        stream.read(4)
    if syntax == _RLE:
        if length != 0xFFFFFFFF:
            raise ImageError(f"{name}: its RLE pixel data is not encapsulated (damaged file)")
        native = _rle_frame(stream, size - stream.tell(), geometry, name)
    else:
        if length == 0xFFFFFFFF or length < expected:
            raise ImageError(f"{name}: its DICOM pixel data holds fewer bytes than {geometry.columns}x{geometry.rows} "
                             "pixels need (damaged or truncated)")
        native = stream.read(expected)
        if len(native) < expected:
            raise ImageError(f"{name}: its DICOM pixel data is truncated ({len(native):,} of {expected:,} bytes)")
    dtype = np.dtype(f"<{'i' if geometry.signed else 'u'}{geometry.bytes_per_pixel}")
    stored = np.frombuffer(native, dtype).reshape(geometry.rows, geometry.columns)
    unused = geometry.bits_allocated - geometry.bits_stored
    if unused and geometry.signed:  # sign-extend from BitsStored
        stored = (stored << unused) >> unused
    elif unused:
        stored = stored & ((1 << geometry.bits_stored) - 1)
    return stored


def _rle_frame(stream: BinaryIO, available: int, geometry: _Geometry, name: str) -> bytearray:
    """Decode one RLE Lossless frame (DICOM PS3.5 G) to little-endian bytes, bounded by the geometry."""
    segment_size = geometry.pixels
    limit = _rle_limit(geometry)
    if available > limit + 2**20:
        raise ImageError(f"{name}: its RLE pixel data is far larger than a {geometry.columns}x{geometry.rows} "
                         "image can need (damaged or crafted file)")
    frame, offset_table_seen = bytearray(), False
    while True:
        item = stream.read(8)
        if len(item) < 8:
            raise ImageError(f"{name}: its RLE pixel data is truncated")
        group, element, length = struct.unpack("<HHI", item)
        if (group, element) == (0xFFFE, 0xE0DD):
            break
        if (group, element) != (0xFFFE, 0xE000) or length == 0xFFFFFFFF:
            raise ImageError(f"{name}: its RLE pixel data is not a valid encapsulated item sequence")
        if len(frame) + length > limit:
            raise ImageError(f"{name}: its RLE pixel data is larger than a {geometry.columns}x{geometry.rows} "
                             "image can need (damaged or crafted file)")
        data = stream.read(length)
        if len(data) < length:
            raise ImageError(f"{name}: its RLE pixel data is truncated")
        if offset_table_seen:
            frame += data
        offset_table_seen = True
        del data
    if len(frame) < 64:
        raise ImageError(f"{name}: its RLE frame of {len(frame):,} bytes does not fit a "
                         f"{geometry.columns}x{geometry.rows} image (damaged or crafted file)")
    count, *offsets = struct.unpack("<16I", frame[:64])
    if count != geometry.bytes_per_pixel:
        raise ImageError(f"{name}: its RLE frame has {count} segments, expected {geometry.bytes_per_pixel}")
    offsets = offsets[:count] + [len(frame)]
    if offsets[0] != 64 or any(b < a for a, b in zip(offsets, offsets[1:])):
        raise ImageError(f"{name}: its RLE segment offsets are invalid (damaged file)")
    native = bytearray(segment_size * count)
    for index in range(count):
        segment = _unpack_bits(frame[offsets[index]:offsets[index + 1]], segment_size, name)
        # Segments hold the most significant byte first; stored little endian, it goes last.
        native[count - 1 - index::count] = segment
    return native


def _rle_limit(geometry: "_Geometry") -> int:
    """The most encapsulated bytes an RLE frame may take: a real encoder never doubles the data."""
    return 2 * geometry.pixels * geometry.bytes_per_pixel + 64 * 2**10


def _unpack_bits(source: bytes, size: int, name: str) -> bytearray:
    """PackBits decoding that stops at `size` bytes: a crafted run cannot grow past the frame."""
    out = bytearray()
    position, end = 0, len(source)
    while position < end and len(out) < size:
        header = source[position]
        position += 1
        if header < 128:
            out += source[position:position + header + 1]
            position += header + 1
        elif header > 128:
            out += source[position:position + 1] * (257 - header)
            position += 1
    if len(out) < size:
        raise ImageError(f"{name}: its RLE pixel data is truncated ({len(out):,} of {size:,} bytes per segment)")
    del out[size:]
    return out


def _window(stored: np.ndarray, geometry: _Geometry, window: tuple[float, float]) -> np.ndarray:
    """Stored values -> HU (rescale) -> 0..255 through the window, a few rows at a time (bounded memory)."""
    centre, width = window
    low = centre - width / 2.0
    grey = np.empty(stored.shape, np.uint8)
    step = max(1, 2**20 // stored.shape[1])
    for top in range(0, stored.shape[0], step):
        hounsfield = stored[top:top + step].astype(np.float32) * geometry.slope + geometry.intercept
        grey[top:top + step] = np.round(np.clip((hounsfield - low) / width, 0.0, 1.0) * 255.0).astype(np.uint8)
    return 255 - grey if geometry.inverted else grey
