"""The decode workers' messages: a JSON header, then the raw bytes it announces; no pickle crosses the boundary.

A worker decodes hostile bytes; if one ever took control of it, what it sends the server is
read here as a bounded JSON header and plain bytes (numbers and words), never as objects
that run code when they are loaded.
"""

from __future__ import annotations

import json
import struct
from typing import BinaryIO

_LENGTH = struct.Struct("<I")
MAX_HEADER_BYTES = 64 * 2**10
"""Longest JSON header either side sends (a file name and a few numbers)."""


def send(stream: BinaryIO, header: dict, payload: bytes | memoryview = b"") -> None:
    """One message: the header's length, the JSON header, then the payload it announces."""
    data = json.dumps(header).encode()
    stream.write(_LENGTH.pack(len(data)) + data)
    if payload:
        stream.write(payload)
    stream.flush()


def receive(stream: BinaryIO) -> dict | None:
    """The next message's header; None when the other side has closed the pipe."""
    raw = read_exactly(stream, _LENGTH.size)
    if raw is None:
        return None
    (length,) = _LENGTH.unpack(raw)
    if length > MAX_HEADER_BYTES:
        raise ValueError(f"a decode message header of {length:,} bytes")
    data = read_exactly(stream, length)
    if data is None:
        return None
    header = json.loads(data)
    if not isinstance(header, dict):
        raise ValueError("a decode message header is not a JSON object")
    return header


def read_exactly(stream: BinaryIO, size: int) -> bytes | None:
    """`size` bytes, or None when the pipe closes first."""
    chunks, left = [], size
    while left:
        chunk = stream.read(left)
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
