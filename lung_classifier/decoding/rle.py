"""DICOM RLE Lossless (PS3.5 annex G): one encapsulated frame -> its stored bytes, never past the declared size.

Decoded here, not by a library, so that no byte is read or produced past what the
header declared and the memory budget reserved (a crafted run stops at the frame's size).
PackBits is decoded one run at a time in Python (about 0.4 us a run here), so the runs of
a frame are capped at ``MAX_RUNS``: without the cap, a 40 MP frame of one-byte runs cost
over 30 s of CPU.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

from .limits import ImageError

MAX_RUNS = 2**21
"""Most PackBits runs per frame (about 1 s of CPU): a real encoder writes literal runs of up to 128 bytes
(a real 512x512 CT slice took 26,000 runs, 2048x2048 noise takes 66,000); only crafted data needs millions."""


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
        segment = _unpack_bits(frame[offsets[index]:offsets[index + 1]], segment_size, MAX_RUNS // count, name)
        # Segments hold the most significant byte first; stored little endian, it goes last.
        native[count - 1 - index::count] = segment
    return native


def _unpack_bits(source: bytes, size: int, max_runs: int, name: str) -> bytearray:
    """PackBits decoding that stops at `size` bytes (a crafted run cannot grow past the frame) or `max_runs` runs."""
    out = bytearray()
    position, end, runs = 0, len(source), 0
    while position < end and len(out) < size:
        runs += 1
        if runs > max_runs:
            raise ImageError(f"{name}: its RLE data needs more than {max_runs:,} runs for one segment (real encoders "
                             "write runs of up to 128 bytes; damaged or crafted file): save it uncompressed")
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
