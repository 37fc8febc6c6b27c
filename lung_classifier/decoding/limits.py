"""What any decode may cost: the size limits every input is held to, the memory budget, the workers' limits.

The demo takes uploads from anyone, so memory is bounded by design, not by luck: a
file's declared size is checked before a pixel is decoded (``MAX_PIXELS``), each decode
reserves an upper bound of the memory it will use from one budget
(``DECODE_BUDGET_BYTES``) and waits while other decodes hold it, so concurrent requests
cannot add up past it; and every result is at most ``MAX_SIDE`` pixels on its long side.
Files are decoded in worker processes (:mod:`.pool`), each with its own budget and
hard limits on its memory, CPU and wall time (``WORKER_*``), so that what the bounds
above do not foresee in a native decoder still costs one request only.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import threading
from contextlib import contextmanager
from typing import Iterator

from PIL import Image

MIN_SIDE = 32
"""Smaller images carry no usable CT detail (and 1x1 uploads are usually mistakes)."""
MAX_SIDE = 1024
"""Long side of every decoded image: the model sees 224 px, the page shows the slice (CT is 512)."""
MAX_PIXELS = 40_000_000
"""Declared pixel count refused before decoding (a CT slice is ~0.26 MP, a radiograph ~10 MP)."""
DECODE_BUDGET_BYTES = 256 * 2**20
"""Upper bound of the memory all concurrent decodes of this process may hold together (a 40 MP
grey, RGB(A) or palette PNG or a 40 MP uncompressed 16-bit DICOM fits; a 40 MP CMYK TIFF does not)."""
SLACK = 16 * 2**20
"""Added to every decode's estimate: decoder buffers, the downscaled copy, Python objects."""
DOWNSCALE_FILTER = Image.Resampling.LANCZOS
"""The filter that shrinks a decoded image larger than MAX_SIDE (the model-input resize is another step:
lung_classifier.model.preprocessing.MODEL_INPUT_RESIZE)."""
WORKERS = 2
"""Decode worker processes (decoding/pool.py): at most this many files decode at once, each in its own process."""
WORKER_MEMORY_BYTES = DECODE_BUDGET_BYTES + 256 * 2**20
"""Address space a worker may add to its size after imports (RLIMIT_AS): its decode budget, and as much again
for what decoders map beyond it (malloc arenas, libraries' scratch); past it allocations fail in the worker."""
WORKER_CPU_S = 5.0
"""CPU seconds one file may cost its worker (RLIMIT_CPU): the slowest accepted file, JPEG 2000 of 16-bit noise
at 2048^2, needs about 1.2 s."""
WORKER_WALL_S = 20.0
"""Seconds one file may take in its worker before the worker is killed (waiting for a free worker not counted):
the CPU limit, with room for a machine shared by many requests."""


class ImageError(ValueError):
    """The input cannot be used as a CT slice; the message says why, for a person."""


class DecodeBudget:
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
BUDGET = DecodeBudget(DECODE_BUDGET_BYTES)
"""The one budget of this process."""


def check_declared(width: int, height: int, name: str) -> None:
    """Refuse a declared size beyond MAX_PIXELS before anything is decoded."""
    if width * height > MAX_PIXELS:
        raise ImageError(f"{name}: image of {width}x{height} pixels is too large (limit {MAX_PIXELS:,}): "
                         "upload a single CT slice")


def target_size(width: int, height: int, name: str) -> tuple[int, int]:
    """The size after downscaling to MAX_SIDE on the long side (unchanged when already small)."""
    if max(width, height) <= MAX_SIDE:
        return width, height
    scale = MAX_SIDE / max(width, height)
    target = (max(1, round(width * scale)), max(1, round(height * scale)))
    if min(target) < MIN_SIDE and min(width, height) >= MIN_SIDE:
        raise ImageError(f"{name}: image of {width}x{height} pixels is too elongated: at {MAX_SIDE} px on its "
                         f"long side it is under {MIN_SIDE} px on the short side; upload a CT slice")
    return target


MAX_SLICES = 1000
"""Most slices one scan may have: a thin-slice chest CT has about 600."""
MAX_MEMBERS = 2 * MAX_SLICES
"""Most files (or zip entries) an upload may hold, counted before any is read."""


class ScanError(ImageError):
    """The upload cannot be analysed as one scan; the message says why and what to upload instead."""
