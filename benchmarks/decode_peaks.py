"""What one decode really costs: peak memory beside its reservation, and CPU, per file.

`python -m benchmarks.decode_peaks FILE...` prints one JSON line per file. Each file is
decoded as a decode worker decodes it (`decode_here`) in its own forked child of a warmed
process (the decoders, pydicom's dictionary and GDCM already loaded, so they are not
counted): the child hands its
inherited free heap back (malloc_trim) and resets its high-water mark, so `peak` is what the
decode itself added to the resident memory; `reserved` is the largest reservation it made
from the decode budget. Used by tests/test_image_limits.py (peak <= reserved for every
accepted kind) and by the CPU-per-upload benchmark row (benchmarks/hostile.py).
"""

from __future__ import annotations

import json
import multiprocessing
import resource
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .readings import peak_rss, reset_peak_rss, rss_bytes


def _child(path: str, results) -> None:
    from lung_classifier.decoding import limits, series
    from lung_classifier.decoding.images import decode_here
    from lung_classifier.decoding.windowing import DICOM_WINDOW

    reserved: list[int] = []
    reserve = limits.BUDGET.reserve

    @contextmanager
    def recording(nbytes: int, name: str) -> Iterator[None]:
        reserved.append(nbytes)
        with reserve(nbytes, name):
            yield

    limits.BUDGET.reserve = recording
    if limits._MALLOC_TRIM is not None:
        limits._MALLOC_TRIM(0)  # the parent's freed heap would otherwise hide the decode's own pages
    reset_peak_rss()
    before = rss_bytes()
    start, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    try:
        if path.endswith(".zip"):
            with series.open_series(path) as scan:
                outcome = f"ok {len(scan.slices)} slices"
        else:
            outcome = f"ok {decode_here(Path(path), Path(path).name, DICOM_WINDOW).rgb.shape}"
    except Exception as exc:  # noqa: BLE001 - reported: a refusal is an outcome
        outcome = f"{exc.__class__.__name__}: {exc}"
    end = resource.getrusage(resource.RUSAGE_SELF)
    results.put({"file": Path(path).name, "outcome": outcome[:300],
                 "cpu_s": round(end.ru_utime + end.ru_stime - start.ru_utime - start.ru_stime, 3),
                 "wall_s": round(time.perf_counter() - wall, 3), "peak": peak_rss() - before,
                 "reserved": max(reserved, default=0)})


def _warm_up() -> None:
    """Load every decoder once, on small files, so a child counts only its own decode."""
    import tempfile

    from lung_classifier.decoding.images import decode_here
    from lung_classifier.decoding.windowing import DICOM_WINDOW

    from testkit.hostile_corpus import accepted_kinds

    with tempfile.TemporaryDirectory() as folder:
        for kind, make in accepted_kinds(64, 64).items():
            path = Path(folder, "warm")
            path.write_bytes(make())
            decode_here(path, "warm", DICOM_WINDOW)


def measure(paths: list[str], timeout: float = 300) -> Iterator[dict]:
    """One result per path, each decoded in a fresh fork of this (warmed) process."""
    context = multiprocessing.get_context("fork")
    for path in paths:
        results = context.Queue()
        child = context.Process(target=_child, args=(path, results))
        child.start()
        try:
            yield results.get(timeout=timeout)
        finally:
            child.join(10)
            if child.is_alive():
                child.kill()


def main(argv: list[str]) -> int:
    _warm_up()
    for result in measure(argv):
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
