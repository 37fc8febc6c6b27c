"""DICOM RLE Lossless (PS3.5 annex G): one encapsulated frame -> its stored bytes, never past the declared size.

Decoded here, not by a library, so that no byte is read or produced past what the
header declared and the memory budget reserved (a crafted run stops at the frame's size).
"""

from __future__ import annotations

import struct
from typing import BinaryIO

from .limits import ImageError


def frame_limit(pixels: int, bytes_per_pixel: int) -> int:
    """The most encapsulated bytes an RLE frame may take: a real encoder never doubles the data."""
    return 2 * pixels * bytes_per_pixel + 64 * 2**10


def read_frame(stream: BinaryIO, available: int, rows: int, columns: int, bytes_per_pixel: int,
               name: str) -> bytearray:
    """Decode one RLE Lossless frame from its encapsulated items to little-endian bytes, bounded by the geometry."""
    segment_size = rows * columns
    limit = frame_limit(segment_size, bytes_per_pixel)
    if available > limit + 2**20:
        raise ImageError(f"{name}: its RLE pixel data is far larger than a {columns}x{rows} "
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
            raise ImageError(f"{name}: its RLE pixel data is larger than a {columns}x{rows} "
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
                         f"{columns}x{rows} image (damaged or crafted file)")
    count, *offsets = struct.unpack("<16I", frame[:64])
    if count != bytes_per_pixel:
        raise ImageError(f"{name}: its RLE frame has {count} segments, expected {bytes_per_pixel}")
    offsets = offsets[:count] + [len(frame)]
    if offsets[0] != 64 or any(b < a for a, b in zip(offsets, offsets[1:])):
        raise ImageError(f"{name}: its RLE segment offsets are invalid (damaged file)")
    native = bytearray(segment_size * count)
    for index in range(count):
        segment = _unpack_bits(frame[offsets[index]:offsets[index + 1]], segment_size, name)
        # Segments hold the most significant byte first; stored little endian, it goes last.
        native[count - 1 - index::count] = segment
    return native


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
