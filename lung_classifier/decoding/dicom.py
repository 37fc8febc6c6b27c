"""A DICOM slice -> greyscale pixels in the package's window, reading only what the header bounds.

Accepted: uncompressed little endian (implicit or explicit VR), RLE Lossless (decoded
in :mod:`.rle`, never past the declared size), and JPEG Lossless, JPEG-LS and JPEG 2000
(decoded by GDCM after :mod:`.dicom_jpeg` has checked the codestream against the header);
one greyscale frame of 8 or 16 bits (MONOCHROME1/2). Refused: Deflated Explicit VR Little
Endian (it inflates the whole dataset before any tag can be checked), lossy baseline and
extended JPEG (not a CT archive's encoding), HTJ2K, big endian and video syntaxes. Of a DICOM
file only the pixel geometry, the slice orientation, the rescale slope/intercept and the
pixel data are read; no other tag (whole-scan ordering reads position, instance number
and series identity too: :func:`read_dicom_placement`). The header is read by pydicom
through a reader that refuses to read past ``MAX_DICOM_HEADER_READ``, and every decode
reserves its memory from the process budget (:mod:`.limits`) first.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO, Iterator

import numpy as np
from PIL import Image

from . import dicom_jpeg, rle
from .codestream import J2K_STRUCTURE_BYTES
from .limits import BUDGET, DOWNSCALE_FILTER, MIN_SIDE, SLACK, ImageError, check_declared, target_size

MAX_DICOM_HEADER_READ = 512 * 2**10
"""Bytes the DICOM header pass may read (skipped elements are seeked over, not read)."""
_DICOM_HEADER_BYTES = 64 * 2**20
"""Budget reserved while pydicom parses a header: it builds about 90 bytes of objects per header byte (measured:
37 MiB for 0.4 MB of tiny elements in items), and reads at most MAX_DICOM_HEADER_READ."""

_UNCOMPRESSED = {"1.2.840.10008.1.2": True, "1.2.840.10008.1.2.1": False}  # syntax -> implicit VR
_RLE = "1.2.840.10008.1.2.5"
_ACCEPTED_TEXT = "uncompressed little endian, RLE Lossless, JPEG Lossless, JPEG-LS or JPEG 2000"
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


def slice_normal(orientation) -> np.ndarray | None:
    """The unit normal of a slice plane from ImageOrientationPatient's row and column cosines (their cross
    product); None when the two directions are parallel (no plane)."""
    cosines = np.asarray(orientation, np.float64)
    normal = np.cross(cosines[:3], cosines[3:])
    length = float(np.linalg.norm(normal))
    return None if length < 1e-6 else normal / length


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
    normal = slice_normal(cosines)
    if normal is None:
        raise ImageError(f"{name}: DICOM ImageOrientationPatient has parallel row and column directions")
    return bool(abs(normal[2]) >= AXIAL_COSINE)


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


def decode(stream: BinaryIO, size: int, name: str, window: tuple[float, float]) -> tuple[np.ndarray, bool | None]:
    """Check the header, then decode one bounded frame; rescale to HU and apply the window.

    Returns the greyscale slice (uint8, at most MAX_SIDE on its long side) and whether it is
    axial (None when the header does not say).
    """
    header_stream = _HeaderReader(stream, MAX_DICOM_HEADER_READ, name)
    pixel_element: dict[str, int] = {}

    def at_pixel_data(tag: int, vr: str | None, length: int) -> bool:
        if tag >= _PIXEL_DATA:
            pixel_element.update(tag=int(tag), length=length)
            return True
        return False

    with _dicom_errors(header_stream, name), BUDGET.reserve(_DICOM_HEADER_BYTES, name):
        syntax, header = _read_dicom_header(header_stream, at_pixel_data, name)
        geometry = _Geometry.read(header, name)
    if pixel_element.get("tag") != _PIXEL_DATA:
        raise ImageError(f"{name} is a DICOM file without pixel data (not an image)")
    if syntax in dicom_jpeg.SYNTAXES:
        dicom_jpeg.check_size(geometry.frame, syntax, name)
    with BUDGET.reserve(_dicom_bytes(geometry, syntax, size - stream.tell()), name):
        stored = _read_pixels(stream, size, syntax, pixel_element["length"], geometry, name)
        grey = _window(stored, geometry, window)
        del stored
        target = target_size(geometry.columns, geometry.rows, name)
        if target != (geometry.columns, geometry.rows):
            grey = np.asarray(Image.fromarray(grey).resize(target, DOWNSCALE_FILTER, reducing_gap=3.0))
        return grey, _is_axial(header, name)


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
    if syntax not in _UNCOMPRESSED and syntax != _RLE and syntax not in dicom_jpeg.SYNTAXES:
        raise ImageError(f"{name}: DICOM encoding {UID(syntax).name} ({syntax}) is not accepted (accepted: "
                         f"{_ACCEPTED_TEXT}): save it uncompressed, e.g. `gdcmconv --raw`, or as PNG")
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
        with BUDGET.reserve(_DICOM_HEADER_BYTES, name):
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
    if syntax in dicom_jpeg.SYNTAXES:  # the frame, its encapsulated copy, GDCM's buffers and the decoded copies
        compressed = min(remaining, dicom_jpeg.compressed_limit(geometry.frame))
        structures = J2K_STRUCTURE_BYTES if syntax in dicom_jpeg.JPEG_2000 else 0  # precincts, code-blocks
        return 2 * compressed + dicom_jpeg.DECODE_BYTES_PER_PIXEL * geometry.pixels + 2 * stored \
            + geometry.pixels + structures + SLACK
    if syntax == _RLE:  # the encapsulated frame (at most what the file holds), one decoded segment
        encapsulated = min(remaining, rle.frame_limit(geometry.pixels, geometry.bytes_per_pixel))
        return encapsulated + stored + 2 * geometry.pixels + SLACK
    return 2 * stored + geometry.pixels + SLACK


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

    @property
    def frame(self) -> dicom_jpeg.Frame:
        return dicom_jpeg.Frame(self.rows, self.columns, self.bits_allocated, self.bits_stored, self.signed)

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
        check_declared(columns, rows, name)
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
    if syntax in dicom_jpeg.SYNTAXES or syntax == _RLE:
        if length != 0xFFFFFFFF:
            raise ImageError(f"{name}: its compressed pixel data is not encapsulated (damaged file)")
    if syntax in dicom_jpeg.SYNTAXES:
        stored = dicom_jpeg.decode(stream, geometry.frame, syntax, name)
        return _mask(stored, geometry)
    if syntax == _RLE:
        native = rle.read_frame(stream, size - stream.tell(), geometry.rows, geometry.columns,
                                geometry.bytes_per_pixel, name)
    else:
        if length == 0xFFFFFFFF or length < expected:
            raise ImageError(f"{name}: its DICOM pixel data holds fewer bytes than {geometry.columns}x{geometry.rows} "
                             "pixels need (damaged or truncated)")
        native = stream.read(expected)
        if len(native) < expected:
            raise ImageError(f"{name}: its DICOM pixel data is truncated ({len(native):,} of {expected:,} bytes)")
    dtype = np.dtype(f"<{'i' if geometry.signed else 'u'}{geometry.bytes_per_pixel}")
    return _mask(np.frombuffer(native, dtype).reshape(geometry.rows, geometry.columns), geometry)


def _mask(stored: np.ndarray, geometry: _Geometry) -> np.ndarray:
    """Keep BitsStored bits: sign-extend a signed value from its top stored bit, clear an unsigned one's extra bits."""
    unused = geometry.bits_allocated - geometry.bits_stored
    if unused and geometry.signed:  # sign-extend from BitsStored
        stored = (stored << unused) >> unused
    elif unused:
        stored = stored & ((1 << geometry.bits_stored) - 1)
    return stored


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

