"""Row 9: one whole scan through the real app.py's /scan against in-process predict_batch on the same slices.

The scan is the first N same-sized Malignant development slices (natural order of their
names), zipped into a temporary folder that is deleted afterwards. The server is
`python app.py` with the real model; one gradio_client uploads the zip to /scan (upload,
unpacking, decoding, classification in batches, the answer). The baseline is this
process's `LungClassifier.predict_batch` on the same N files (decoding included), in
chunks of 32 (row 3's batch), measured in the same run, alternating with the server
calls so machine noise hits both alike; the server is idle while the baseline runs.
Peak = the server's VmHWM (/proc/PID/status), start-up and every scan included.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import zipfile
from pathlib import Path

from PIL import Image

from lung_classifier.decoding.series import natural_key

from .common import Row, Stats, secs, verdict_at_most, x
from .hostile import LIMIT_BYTES
from .readings import peak_rss
from .server import Server

SLICES = 300
QUICK_SLICES = 24
REPEATS = 3
TARGET = 1.3
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

    count = QUICK_SLICES if quick else SLICES
    repeats = 1 if quick else REPEATS
    work = Path(tempfile.mkdtemp(prefix="lung-bench-scan-"))
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

        server = Server(True, work)
        log(f"scan: {count} slices ({mib:.1f} MiB zip); app.py on port {server.port}")
        try:
            server.start(slices[0])
            client = Client(server.url, verbose=False, analytics_enabled=False, download_files=False)

            def served() -> dict:
                _, details = client.predict([handle_file(str(archive))], api_name="/scan")
                return details

            in_process()  # warm-up: graph tracing for both batch shapes, file cache
            details = served()
            if len(details["slices"]) != count:
                raise RuntimeError(f"/scan answered {len(details['slices'])} slices for {count}")
            timings: dict[str, list[float]] = {"library": [], "server": []}
            for _ in range(repeats):
                for name, call in (("library", in_process), ("server", served)):
                    started = time.perf_counter()
                    call()
                    timings[name].append(time.perf_counter() - started)
            peak = peak_rss(server.pid)
            client.close()
        finally:
            server.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    library, scan = Stats.of(timings["library"]), Stats.of(timings["server"])
    ratio = scan.median / library.median
    log(f"  /scan {secs(scan.median)}, predict_batch {secs(library.median)} ({ratio:.2f}x); "
        f"server peak {peak / 2**30:.2f} GiB")
    met = verdict_at_most(ratio, TARGET, " of in-process predict_batch")
    if peak >= LIMIT_BYTES:
        memory = f"{peak / 2**30:.2f} GiB vs <2.5 GiB ({(peak / LIMIT_BYTES - 1) * 100:.0f}% over)"
        met = f"**no**: {memory}" if met == "yes" else f"{met}; {memory}"
    return Row(f"9. Whole scan through /scan, {count} slices", f"{secs(scan.median)} ({count / scan.median:.1f} slices/s)",
               scan.spread(secs), f"predict_batch in-process, chunks of {CHUNK}: {secs(library.median)}", x(ratio),
               f"≤{TARGET:g}x predict_batch, server peak < 2.5 GiB", met,
               f"server peak RSS (VmHWM) {peak / 2**30:.2f} GiB; one gradio_client uploading a "
               f"{mib:.1f} MiB zip of {count} {size} JPEG slices; "
               f"{repeats} timed run(s) each, alternating, after one warm-up")
