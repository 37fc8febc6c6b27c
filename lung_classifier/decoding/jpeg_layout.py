"""A JPEG's frame header and scan count, read from its markers before libjpeg decodes a pixel.

libjpeg keeps a whole-image coefficient buffer (2 bytes per DCT coefficient, 64 per 8x8
block, per component at its own sampling; jdcoefct.c) whenever a file has more than one
scan: every progressive file, and a sequential file whose components come in separate
scans. ``draft()`` shrinks only the output, never that buffer: a 465 KB progressive
40 MP colour JPEG costs 227 MiB of it, so the decode's reservation must count it
(:meth:`JpegLayout.coefficient_bytes`). And every scan is one pass over that buffer (about
4.5 ms at 40 MP here), so a file of hundreds of tiny repeated scans cost seconds of CPU:
the scans are counted here and capped at ``MAX_SCANS``.

Accepted frames: SOF0/SOF1 (sequential Huffman) and SOF2 (progressive Huffman), what
cameras, viewers and PIL write; arithmetic, lossless and hierarchical JPEG files are
refused. The walk reads the file once in 1 MiB pieces without decoding: a segment with a
length (APPn, DQT, DHT ...) is skipped by it, so a thumbnail inside APP1 is never counted;
after a scan, it jumps to the next marker that is not stuffing, RSTn or fill; it stops at
EOI (an MPO's later pictures are never read), or at the end of the file after a scan (the
decoder then judges the missing EOI). Bytes between segments that are not a marker are
skipped, as libjpeg skips them.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import BinaryIO

from .limits import ImageError

MAX_SCANS = 64
"""Most scans a JPEG may have: real encoders write 1 (baseline), 6 or 10 (progressive), under 20 (mozjpeg)."""
MAX_SEGMENTS = 1000
"""Most marker segments (APPn, DQT, DHT, SOS...) before the end: real files have under 100."""
_SEQUENTIAL, _PROGRESSIVE = (0xC0, 0xC1), (0xC2,)
_OTHER_FRAMES = {0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
"""In entropy-coded data a 0xFF is followed by 0x00 (stuffing), RSTn or another 0xFF (fill): anything else ends it."""
_CHUNK = 2**20


@dataclass(frozen=True)
class JpegLayout:
    marker: int  # the SOF marker: 0xC0, 0xC1 or 0xC2
    width: int
    height: int
    components: tuple[tuple[int, int], ...]  # (horizontal, vertical) sampling factor per component
    scans: int

    @property
    def progressive(self) -> bool:
        return self.marker in _PROGRESSIVE

    def coefficient_bytes(self) -> int:
        """libjpeg's whole-image coefficient buffer (jdcoefct.c), 0 when it decodes one scan at a time."""
        if not self.progressive and self.scans <= 1:
            return 0
        hmax = max(h for h, _ in self.components)
        vmax = max(v for _, v in self.components)
        total = 0
        for h, v in self.components:
            # jdinput.c: the component's size in 8x8 blocks; jdcoefct.c rounds it up to its sampling factor
            blocks_wide = _ceil_div(_ceil_div(self.width * h, hmax), 8)
            blocks_high = _ceil_div(_ceil_div(self.height * v, vmax), 8)
            total += _ceil_div(blocks_wide, h) * h * _ceil_div(blocks_high, v) * v * 64 * 2  # JCOEF: 16 bits
        return total


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def read_layout(stream: BinaryIO, name: str) -> JpegLayout:
    """The frame header and the number of scans, from the markers alone (no pixel decoded)."""
    start = stream.tell()
    try:
        return _walk(stream, name)
    finally:
        stream.seek(start)


def _walk(stream: BinaryIO, name: str) -> JpegLayout:
    if stream.read(2) != b"\xff\xd8":
        raise ImageError(f"{name} is not a JPEG file (no SOI marker)")
    frame: tuple[int, int, int, tuple[tuple[int, int], ...]] | None = None
    scans = segments = 0
    while True:
        marker = _next_marker(stream)
        if marker is None and scans:
            break  # no EOI after the last scan: the decoder decides (PIL refuses it as truncated)
        if marker is None:
            raise ImageError(f"{name} is a truncated JPEG file: export the slice again")
        if marker == 0xD9:  # EOI
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            continue  # RSTn outside a scan, TEM: no length
        segments += 1
        if segments > MAX_SEGMENTS:
            raise ImageError(f"{name} has more than {MAX_SEGMENTS} JPEG marker segments (damaged or crafted file): "
                             "export the slice again as PNG or baseline JPEG")
        raw = stream.read(2)
        if len(raw) < 2:
            raise ImageError(f"{name} is a truncated JPEG file: export the slice again")
        length = struct.unpack(">H", raw)[0]
        if length < 2:
            raise ImageError(f"{name} has a JPEG marker segment of length {length} (damaged file): "
                             "export the slice again")
        body = stream.read(length - 2) if marker == 0xDA or 0xC0 <= marker <= 0xCF else None
        if body is None:
            stream.seek(length - 2, 1)
        elif len(body) < length - 2:
            raise ImageError(f"{name} is a truncated JPEG file: export the slice again")
        if marker in _OTHER_FRAMES:
            raise ImageError(f"{name} is an arithmetic-coded, lossless or hierarchical JPEG (SOF{marker - 0xC0}), "
                             "which is not accepted: export the slice as PNG or as a baseline JPEG")
        if marker in _SEQUENTIAL + _PROGRESSIVE:
            if frame is not None:
                raise ImageError(f"{name} has two JPEG frame headers (damaged or crafted file)")
            frame = _frame(marker, body, name)
        elif marker == 0xDA:
            if frame is None:
                raise ImageError(f"{name}: a JPEG scan comes before its frame header (damaged file)")
            scans += 1
            if scans > MAX_SCANS:
                raise ImageError(f"{name} is a JPEG of more than {MAX_SCANS} scans (real encoders write at most about "
                                 "20; damaged or crafted file): export the slice as PNG or as a baseline JPEG")
            _skip_entropy_data(stream)
    if frame is None or not scans:
        raise ImageError(f"{name} is a JPEG file without {'a frame header' if frame is None else 'any scan'}")
    marker, width, height, components = frame
    return JpegLayout(marker, width, height, components, scans)


def _frame(marker: int, body: bytes, name: str) -> tuple[int, int, int, tuple[tuple[int, int], ...]]:
    if len(body) < 6:
        raise ImageError(f"{name} has a damaged JPEG frame header")
    _, height, width, count = struct.unpack(">BHHB", body[:6])
    if count not in (1, 3, 4) or len(body) < 6 + 3 * count:
        raise ImageError(f"{name} has a JPEG frame header with {count} components (damaged file)")
    sampling = tuple((body[7 + 3 * i] >> 4, body[7 + 3 * i] & 15) for i in range(count))
    if any(not (1 <= h <= 4 and 1 <= v <= 4) for h, v in sampling):
        raise ImageError(f"{name} has invalid JPEG sampling factors {sampling} (damaged file)")
    return marker, width, height, sampling


def _next_marker(stream: BinaryIO) -> int | None:
    """The next marker code, None at the end of the file.

    Like libjpeg, bytes that are not a marker are skipped (some writers leave padding between
    segments; libjpeg only warns), and so are fill bytes (0xFF repeated).
    """
    byte = stream.read(1)
    if byte and byte != b"\xff":
        stream.seek(-1, 1)
        _skip_entropy_data(stream)
        byte = stream.read(1)
    while byte == b"\xff":
        byte = stream.read(1)
    return byte[0] if byte else None


def _skip_entropy_data(stream: BinaryIO) -> None:
    """Leave the stream at the marker that ends a scan's entropy-coded data (EOF: at the end)."""
    carry = b""
    while True:
        at = stream.tell() - len(carry)
        piece = carry + stream.read(_CHUNK)
        found = _NEXT_MARKER.search(piece)
        if found:
            stream.seek(at + found.start())
            return
        if len(piece) == len(carry):
            return  # end of file: the caller reads past it and finds it truncated
        carry = piece[-1:] if piece.endswith(b"\xff") else b""
