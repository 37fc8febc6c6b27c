"""DICOM JPEG Lossless, JPEG-LS and JPEG 2000: one encapsulated frame -> its stored values, checked before decoding.

The codestream is decoded by GDCM (python-gdcm, BSD), through pydicom's pixel plugin
interface, but only after this module has bounded everything the decoder would trust:

1. the frame's size from the DICOM header: at most ``MAX_COMPRESSED_PIXELS``, checked before
   a byte of pixel data is read (decode time grows with pixels: a 2048 x 2048 frame of noise,
   the worst allowed, costs about 1.2 s of CPU; a CT slice is 512 x 512);
2. the encapsulated items, read one at a time: an offset table for one frame, then fragments
   whose total may not pass :func:`compressed_limit` (a lossless coder never doubles its input);
3. the codestream's own frame header (JPEG Lossless SOF3, JPEG-LS SOF55, JPEG 2000 SIZ),
   parsed here: the decoder allocates from it, so it must say the DICOM header's
   columns x rows, one component, and a precision that fits BitsAllocated;
4. the end-of-image marker: a JPEG Lossless stream cut short decodes without any error (the
   decoder invents the rest of the picture), so a frame that does not end with it is refused.
"""

from __future__ import annotations

import os
import struct
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO, Iterator

import numpy as np

from .codestream import Codestream, j2k_header, jpeg_frame
from .limits import ImageError

JPEG_LOSSLESS = {"1.2.840.10008.1.2.4.57": "JPEG Lossless (Process 14)",
                 "1.2.840.10008.1.2.4.70": "JPEG Lossless (Process 14, SV1)"}
JPEG_LS = {"1.2.840.10008.1.2.4.80": "JPEG-LS Lossless", "1.2.840.10008.1.2.4.81": "JPEG-LS Near-Lossless"}
JPEG_2000 = {"1.2.840.10008.1.2.4.90": "JPEG 2000 Lossless", "1.2.840.10008.1.2.4.91": "JPEG 2000"}
SYNTAXES = {**JPEG_LOSSLESS, **JPEG_LS, **JPEG_2000}
"""Accepted compressed transfer syntaxes -> the name a message shows."""
MAX_COMPRESSED_PIXELS = 2048 * 2048
"""Largest frame of these syntaxes: bounds decode time (JPEG 2000 of noise: 1.2 s of CPU at 2048^2, 4 s at 4096^2)."""
MAX_FRAGMENTS = 1024
"""Most fragments one frame may be split into (encoders write one, or a few of a fixed size)."""
DECODE_BYTES_PER_PIXEL = 20
"""GDCM's working memory and pydicom's copies per decoded pixel (measured: JPEG Lossless of 16-bit noise at
2048^2 peaks at 118 MiB in all, against 132 MiB reserved)."""
_EOI = b"\xff\xd9"  # JPEG end of image; JPEG 2000's end of codestream has the same two bytes


@dataclass(frozen=True)
class Frame:
    """What the DICOM header declares about the one frame."""

    rows: int
    columns: int
    bits_allocated: int
    bits_stored: int
    signed: bool

    @property
    def pixels(self) -> int:
        return self.rows * self.columns


def check_size(frame: Frame, syntax: str, name: str) -> None:
    """Refuse a frame too large to decode within the time bound, from the header alone."""
    if frame.pixels > MAX_COMPRESSED_PIXELS:
        raise ImageError(f"{name}: a {SYNTAXES[syntax]} frame of {frame.columns}x{frame.rows} pixels is larger "
                         f"than the {MAX_COMPRESSED_PIXELS:,} accepted for compressed DICOM: save it uncompressed "
                         "(e.g. `gdcmconv --raw`)")


def compressed_limit(frame: Frame) -> int:
    """The most bytes a compressed frame may take: twice its raw size, plus 64 KiB of headers."""
    return 2 * frame.pixels * (frame.bits_allocated // 8) + 64 * 2**10


def read_frame(stream: BinaryIO, frame: Frame, name: str) -> bytes:
    """The one frame's codestream from encapsulated pixel data (the stream is just after the element header)."""
    limit = compressed_limit(frame)
    group, element, length = _item(stream, name)
    if (group, element) != (0xFFFE, 0xE000) or length == 0xFFFFFFFF or length > 4 or length % 4:
        raise ImageError(f"{name}: its compressed pixel data has no offset table for one frame "
                         "(several frames, or a damaged file): upload a single CT slice")
    stream.read(length)
    fragments: list[bytes] = []
    total = 0
    while True:
        group, element, length = _item(stream, name)
        if (group, element) == (0xFFFE, 0xE0DD):
            break
        if (group, element) != (0xFFFE, 0xE000) or length == 0xFFFFFFFF:
            raise ImageError(f"{name}: its compressed pixel data is not a valid item sequence (damaged file)")
        total += length
        if total > limit:
            raise ImageError(f"{name}: its compressed frame is larger than a {frame.columns}x{frame.rows} image "
                             f"can need ({limit:,} bytes; damaged or crafted file): export the slice again")
        if len(fragments) >= MAX_FRAGMENTS:
            raise ImageError(f"{name}: its compressed frame has more than {MAX_FRAGMENTS} fragments "
                             "(damaged or crafted file)")
        data = stream.read(length)
        if len(data) < length:
            raise ImageError(f"{name}: its compressed pixel data is truncated: export the slice again")
        fragments.append(data)
    if not fragments:
        raise ImageError(f"{name}: its compressed pixel data holds no frame")
    return b"".join(fragments)


def _item(stream: BinaryIO, name: str) -> tuple[int, int, int]:
    item = stream.read(8)
    if len(item) < 8:
        raise ImageError(f"{name}: its compressed pixel data is truncated: export the slice again")
    return struct.unpack("<HHI", item)


def codestream_header(syntax: str, codestream: bytes, name: str) -> Codestream:
    """The codestream's own headers, walked and bounded without decoding (:mod:`.codestream`)."""
    if syntax in JPEG_2000:
        return j2k_header(codestream, name)
    return jpeg_frame(codestream, 0xF7 if syntax in JPEG_LS else 0xC3, SYNTAXES[syntax], name)


def check_codestream(codestream: bytes, header: Codestream, frame: Frame, syntax: str, name: str) -> None:
    """The codestream must describe the frame the DICOM header declared, and end where a whole frame ends."""
    if (header.width, header.height) != (frame.columns, frame.rows):
        raise ImageError(f"{name}: its codestream is {header.width}x{header.height} pixels but its DICOM header says "
                         f"{frame.columns}x{frame.rows} (damaged or crafted file)")
    if header.components != 1:
        raise ImageError(f"{name}: its codestream holds {header.components} components, not one greyscale frame")
    if not 2 <= header.precision <= frame.bits_allocated:
        raise ImageError(f"{name}: its codestream has {header.precision}-bit samples, which do not fit the "
                         f"{frame.bits_allocated} bits its DICOM header allocates (wrong bit depth)")
    end = codestream[:-1] if codestream.endswith(b"\0") else codestream  # one padding byte to an even length
    if not end.endswith(_EOI):
        raise ImageError(f"{name}: its {SYNTAXES[syntax]} frame does not end with an end-of-image marker "
                         "(truncated or damaged file): export the slice again")


def decode(stream: BinaryIO, frame: Frame, syntax: str, name: str) -> np.ndarray:
    """Read, check and decode the one frame -> rows x columns stored values at the declared width and sign."""
    codestream = read_frame(stream, frame, name)
    check_codestream(codestream, codestream_header(syntax, codestream, name), frame, syntax, name)
    array = _gdcm_decode(codestream, frame, syntax, name)
    if array.shape != (frame.rows, frame.columns):
        raise ImageError(f"{name}: its frame decoded to {array.shape}, not {frame.rows}x{frame.columns} "
                         "(damaged file)")
    dtype = np.dtype(f"<{'i' if frame.signed else 'u'}{frame.bits_allocated // 8}")
    if array.dtype.itemsize == dtype.itemsize:
        return array.view(dtype)  # the same bits: a signed frame's two's complement is read as such
    return array.astype(dtype)  # an 8-bit codestream in a 16-bit frame (its precision was checked)


def _gdcm_decode(codestream: bytes, frame: Frame, syntax: str, name: str) -> np.ndarray:
    """GDCM, through pydicom's decoder for the syntax (it corrects JPEG-LS / JPEG 2000 precision and sign).

    GDCM's libjpeg reports corrupt data ("Corrupt JPEG data: premature end of data segment")
    only on stderr and hands back whatever it invented: a frame whose decode writes any
    such line is refused, never answered as a slice.
    """
    from pydicom.encaps import encapsulate
    from pydicom.pixels import get_decoder

    try:
        with _native_stderr() as complaints:
            array, _ = get_decoder(syntax).as_array(
                encapsulate([codestream]), decoding_plugin="gdcm", rows=frame.rows, columns=frame.columns,
                samples_per_pixel=1, bits_allocated=frame.bits_allocated, bits_stored=frame.bits_stored,
                pixel_representation=int(frame.signed), photometric_interpretation="MONOCHROME2",
                number_of_frames=1)
    except Exception as exc:  # noqa: BLE001 - GDCM and pydicom report corrupt data with several exception types
        raise ImageError(f"{name}: its {SYNTAXES[syntax]} frame cannot be decoded ({exc.__class__.__name__}: "
                         f"{str(exc)[:120]}): damaged file, export the slice again") from None
    if complaints:
        raise ImageError(f"{name}: its {SYNTAXES[syntax]} frame decodes only with errors ({complaints[0][:120]}): "
                         "damaged file, export the slice again")
    return array


@contextmanager
def _native_stderr() -> Iterator[list[str]]:
    """The lines native code writes to file descriptor 2 meanwhile (the whole process's: a decode worker has one
    thread)."""
    sys.stderr.flush()
    saved = os.dup(2)
    lines: list[str] = []
    try:
        with tempfile.TemporaryFile() as capture:
            os.dup2(capture.fileno(), 2)
            try:
                yield lines
            finally:
                os.dup2(saved, 2)
                capture.seek(0)
                lines.extend(line.strip() for line in capture.read(8192).decode(errors="replace").splitlines()
                             if line.strip())
    finally:
        os.close(saved)
