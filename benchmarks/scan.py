"""Row 9: one whole scan through the real app.py's /scan, the default path against TensorFlow bfloat16 and
against in-process predict_batch on the same slices.

The scan is the first N same-sized Malignant development slices (natural order of their
names), zipped into a temporary folder that is deleted afterwards. Two servers run side by
side: `python app.py` on the default path and `python app.py --precision bfloat16` (the
previous default); one gradio_client each uploads the zip to /scan (upload, unpacking,
decoding, classification, the answer). A third baseline is this process's default
`LungClassifier.predict_batch` on the same N files (decoding included) in chunks of 32
(row 3's batch). The three alternate call by call, so machine noise hits them alike; only
one works at a time. Peak = each server's VmHWM (/proc/PID/status), start-up and every scan
included.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import zipfile
from pathlib import Path

from PIL import Image

from lung_classifier.decoding.series import natural_key

from .common import Row, Stats, secs, x
from .hostile import LIMIT_BYTES
from .readings import peak_rss
from .server import Server

SLICES = 300
QUICK_SLICES = 24
REPEATS = 3
TARGET_S = 6.0
"""Seconds for a whole scan of SLICES slices on the default path (issue 25); --quick's shorter scan gets its share."""
CHUNK = 32


def scan_slices(paths: list[Path], count: int) -> list[Path]:
    """`count` Malignant slices of one size (a scan's slices share theirs), in natural order of names."""
    malignant = sorted((p for p in paths if p.parent.name.lower().startswith("malignant")),
                       key=lambda path: natural_key(path.name))
    sizes: dict[tuple[int, int], list[Path]] = {}
    for path in malignant:
        with Image.open(path) as image:
            sizes.setdefault(image.size, []).append(path)
    largest = max(sizes.values(), key=len)
    if len(largest) < count:
        raise RuntimeError(f"only {len(largest)} same-sized Malignant slices in the data; {count} needed")
    return largest[:count]


def zip_scan(slices: list[Path], target: Path) -> Path:
    """The slices in one zip (stored: JPEGs do not compress), as a user would upload a scan."""
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as archive:
        for path in slices:
            archive.write(path, path.name)
    return target


def run(paths: list[Path], quick: bool, log) -> Row:
    from gradio_client import Client, handle_file

    from lung_classifier import LungClassifier

    from .cold_start import BASELINE, default_name

    count = QUICK_SLICES if quick else SLICES
    repeats = 1 if quick else REPEATS
    ours = default_name()
    work = Path(tempfile.mkdtemp(prefix="lung-bench-scan-"))
    servers = {ours: Server(True, work), BASELINE[0]: Server(True, work, BASELINE[1])}
    clients = {}
    try:
        slices = scan_slices(paths, count)
        archive = zip_scan(slices, work / "scan.zip")
        mib = archive.stat().st_size / 2**20
        with Image.open(slices[0]) as image:
            size = "×".join(map(str, image.size))
        classifier = LungClassifier.from_pretrained()

        def in_process() -> None:
            for first in range(0, len(slices), CHUNK):
                classifier.predict_batch(slices[first:first + CHUNK])

        def scanner(name: str):
            def served() -> None:
                _, details = clients[name].predict([handle_file(str(archive))], api_name="/scan")
                if len(details["slices"]) != count:
                    raise RuntimeError(f"/scan on {name} answered {len(details['slices'])} slices for {count}")
            return served

        log(f"scan: {count} slices ({mib:.1f} MiB zip); app.py {ours} and {BASELINE[0]} side by side")
        for name, server in servers.items():
            server.start(slices[0])
            clients[name] = Client(server.url, verbose=False, analytics_enabled=False, download_files=False)
        calls = {"library": in_process, **{name: scanner(name) for name in servers}}
        for call in calls.values():
            call()  # warm-up: graph set-up for both batch shapes, file cache
        timings: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(repeats):
            for name, call in calls.items():
                started = time.perf_counter()
                call()
                timings[name].append(time.perf_counter() - started)
        peaks = {name: peak_rss(server.pid) for name, server in servers.items()}
    finally:
        for client in clients.values():
            client.close()
        for server in servers.values():
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    scan, baseline, library = (Stats.of(timings[name]) for name in (ours, BASELINE[0], "library"))
    target = TARGET_S * count / SLICES
    log(f"  /scan {ours} {secs(scan.median)}, {BASELINE[0]} {secs(baseline.median)}, in-process predict_batch "
        f"{secs(library.median)}; server peaks " + ", ".join(f"{n} {p / 2**30:.2f} GiB" for n, p in peaks.items()))
    met = "yes" if scan.median <= target else (
        f"**no**: {secs(scan.median)} vs ≤{secs(target)} ({(scan.median / target - 1) * 100:.0f}% over)")
    if peaks[ours] >= LIMIT_BYTES:
        memory = f"{peaks[ours] / 2**30:.2f} GiB vs <2.5 GiB ({(peaks[ours] / LIMIT_BYTES - 1) * 100:.0f}% over)"
        met = f"**no**: {memory}" if met == "yes" else f"{met}; {memory}"
    return Row(f"9. Whole scan through /scan, {count} slices, {ours}",
               f"{secs(scan.median)} ({count / scan.median:.1f} slices/s)", scan.spread(secs),
               f"/scan on {BASELINE[0]}: {secs(baseline.median)} ({baseline.spread(secs)}); in-process "
               f"predict_batch ({ours}), chunks of {CHUNK}: {secs(library.median)}",
               f"{x(scan.median / baseline.median)} of {BASELINE[0]}; {x(scan.median / library.median)} of "
               "predict_batch",
               f"≤{secs(TARGET_S)} per {SLICES} slices" + (f" (here ≤{target:.2f} s)" if count != SLICES else "")
               + ", server peak < 2.5 GiB", met,
               "server peak RSS (VmHWM): " + ", ".join(f"{n} {p / 2**30:.2f} GiB" for n, p in peaks.items())
               + f"; one gradio_client per server uploading a {mib:.1f} MiB zip of {count} {size} JPEG slices; "
               f"{repeats} timed run(s) of each, alternating, after one warm-up")
