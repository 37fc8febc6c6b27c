"""What decoding in a worker process costs per slice: `python -m benchmarks.worker_cost [FOLDER]`.

Decodes the COVID-CT-MD JPEG Lossless slices (../shared/data/covidctmd, 512 x 512; 300 decodes,
repeated three times) in this process (`decode_here`, what a worker runs) and through the
decode workers (`read_slice`), one after the other, and prints one JSON line: wall time and
CPU time (this process and the workers together) per slice for each. Used for
docs/limits-and-security.md.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

from .common import DATA


def _cpu_seconds(pids: list[int]) -> float:
    """This process's CPU time and that of the given children (from /proc/PID/stat)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    total = usage.ru_utime + usage.ru_stime
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def main(argv: list[str]) -> int:
    from lung_classifier.decoding.images import decode_here, read_slice
    from lung_classifier.decoding.pool import pool
    from lung_classifier.decoding.windowing import DICOM_WINDOW

    folder = Path(argv[0]) if argv else DATA.parent / "covidctmd"
    files = sorted(folder.glob("*/*.dcm"))
    if not files:
        sys.exit(f"error: no DICOM slices under {folder}")
    files = (files * (300 // len(files) + 1))[:300]
    workers = pool()
    workers.warm()
    pids = [worker.process.pid for worker in workers._idle]
    runs: dict[str, list[tuple[float, float]]] = {"in-process": [], "worker": []}
    for _ in range(3):
        for kind, decode in (("in-process", lambda path: decode_here(path, path.name, DICOM_WINDOW)),
                             ("worker", lambda path: read_slice(path, dicom_window=DICOM_WINDOW))):
            cpu, wall = _cpu_seconds(pids), time.perf_counter()
            for path in files:
                decode(path)
            runs[kind].append(((time.perf_counter() - wall) * 1000 / len(files),
                               (_cpu_seconds(pids) - cpu) * 1000 / len(files)))
    print(json.dumps({kind: {"wall_ms_per_slice": [round(w, 1) for w, _ in values],
                             "cpu_ms_per_slice": [round(c, 1) for _, c in values]} for kind, values in runs.items()}
                     | {"slices": len(files), "load_average": os.getloadavg()[0]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
