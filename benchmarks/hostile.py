"""Row 5h: the real app.py's peak memory while 16 clients send it the hostile corpus; row 5i: the worst CPU
one upload of each class costs to decode or refuse.

5h: the server is `python app.py` with the real model; the clients are 16 threads of a
separate process (`testkit/hostile_corpus.py`, the same corpus and sender as the tests),
each sending every heavy file (the worst of each class: DICOM bombs, 40 MP progressive
JPEGs, a 20,000-page TIFF, ...) to /predict, /analyze and /batch at once, then its share
of the other files, then every hostile zip to /scan. Peak = the server's VmHWM
(/proc/PID/status), which includes its start-up.

5i: every heavy file and hostile zip decoded (or opened as a scan) once by
`benchmarks/decode_peaks.py`, each in a fresh fork of a warmed process; CPU = user +
system seconds of that fork.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from testkit.app_server import decode_workers
from testkit.hostile_corpus import HEAVY, hostile_zips, write_heavy, write_zips

from .common import REPO, Row
from .readings import peak_rss
from .server import Server

LIMIT_BYTES = int(2.5 * 2**30)
CPU_LIMIT_S = 2.0
"""Most CPU one upload may cost to decode or refuse (issue 18)."""
CLASSES = {
    "progressive JPEG": ("jpeg-progressive-420-40mp.jpg", "jpeg-progressive-444-40mp.jpg", "large-3000x2000.jpg"),
    "JPEG scans": ("jpeg-1000-repeated-scans.jpg",),
    "pages and frames": ("tiff-20000-pages.tif", "gif-1m-frames.gif"),
    "PNG": ("png-rgba-40mp.png", "black-36mp.png", "black-10mp.png", "bomb-9000x9000-zeros.png"),
    "DICOM header": ("dicom-40000-header-elements.dcm", "nested-sequence-bomb.dcm"),
    "DICOM RLE": ("rle-one-byte-runs-1024.dcm", "bomb-rle-8000x8000.dcm", "rle-6000x6000-zeros.dcm"),
    "DICOM JPEG family": ("j2k-noise-2048.dcm", "jls-second-frame-65535.dcm", "j2k-precincts-2x2-2048.dcm"),
    "DICOM Deflated": ("bomb-deflate-8000x8000.dcm",),
    "zip": tuple(hostile_zips()),
}
"""The worst files of each class, by name: HEAVY of the corpus and the hostile zips."""
CLIENTS = 16
QUICK_SHARE = 8
"""--quick (CI) sends to /predict only: every heavy file from every client, every 8th of the other files."""


def run(image: Path, quick: bool, log) -> Row:
    share = QUICK_SHARE if quick else 1
    endpoints = ["/predict"] if quick else ["/predict", "/analyze", "/batch"]
    work = Path(tempfile.mkdtemp(prefix="lung-bench-hostile-"))
    server = Server(True, work)
    log(f"hostile corpus: starting app.py on port {server.port}")
    try:
        server.start(image)
        before = peak_rss(server.pid)
        log(f"  {CLIENTS} clients sending the corpus to {' '.join(endpoints)} (1/{share} of the light files)")
        sender = subprocess.run(
            [sys.executable, "-m", "testkit.hostile_corpus", "--url", server.url,
             "--dir", str(work / "corpus"), "--clients", str(CLIENTS), "--share", str(share),
             "--endpoints", *endpoints, "--zips"],
            cwd=REPO, capture_output=True, text=True, timeout=3600)
        if sender.returncode != 0:
            raise RuntimeError(f"the corpus sender failed:\n{sender.stderr[-3000:]}")
        summary = json.loads(sender.stdout.strip().splitlines()[-1])
        server_peak = peak_rss(server.pid)
        workers_peak = sum(peak_rss(pid) for pid in decode_workers(server.pid))  # the live decode workers
        peak = server_peak + workers_peak
        alive = server.process.poll() is None
        from gradio_client import Client, handle_file

        after = Client(server.url, verbose=False, download_files=False).predict(handle_file(str(image)),
                                                                                api_name="/predict")
        answered = alive and isinstance(after, dict) and bool(after.get("label"))
    finally:
        server.stop()
    problems = summary["problems"]
    log(f"  peak RSS {peak / 2**30:.2f} GiB (server {server_peak / 2**30:.2f}, decode workers "
        f"{workers_peak / 2**30:.2f}); {summary['requests']} requests in {summary['seconds']} s, "
        f"{len(problems)} problems")
    met = "yes"
    if peak >= LIMIT_BYTES:
        met = f"**no**: {peak / 2**30:.2f} GiB vs <2.5 GiB ({(peak / LIMIT_BYTES - 1) * 100:.0f}% over)"
    if problems or not answered:
        met = (f"**no**: {len(problems)} unclear answers or failed requests"
               f"{'' if answered else ', no answer afterwards'}; " + met)
    notes = (f"{summary['requests']} requests ({summary['results']} results, {summary['refusals']} clear refusals) "
             f"in {summary['seconds']} s to {', '.join(endpoints)} and every hostile zip to /scan"
             f"{f' (quick: every heavy file, 1/{share} of the rest)' if quick else ' (every file)'}"
             f"; a normal /predict answered afterwards: {'yes' if answered else 'no'}"
             f"; peak = server {server_peak / 2**30:.2f} GiB + its decode workers {workers_peak / 2**30:.2f} GiB"
             + (f"; first problem: {problems[0][:200]}" if problems else ""))
    return Row(f"5h. Peak server RSS under the hostile corpus, {CLIENTS} clients", f"{peak / 2**30:.2f} GiB",
               "n=1 (single run)", f"peak before the corpus (start + one /predict): {before / 2**30:.2f} GiB",
               f"{peak / LIMIT_BYTES:.2f}x of the limit", "< 2.5 GiB, every file a result or a clear refusal",
               met, notes)


def cpu_row(log) -> Row:
    """Row 5i: the worst CPU of one upload per class, each file decoded (or opened as a scan) in a fresh fork."""
    assert set(HEAVY) <= {name for names in CLASSES.values() for name in names}, "a heavy file has no class"
    work = Path(tempfile.mkdtemp(prefix="lung-bench-cpu-"))
    paths = write_heavy(work) + write_zips(work / "zips")
    log(f"CPU per upload: decoding {len(paths)} files, the worst of each class, one fork each")
    done = subprocess.run([sys.executable, "-m", "benchmarks.decode_peaks", *map(str, paths)], cwd=REPO,
                          capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"decode_peaks failed:\n{done.stderr[-3000:]}")
    results = {result["file"]: result for result in map(json.loads, done.stdout.splitlines())}
    worst = {kind: max((results[name] for name in names), key=lambda r: r["cpu_s"]) for kind, names in CLASSES.items()}
    top = max(worst.values(), key=lambda r: r["cpu_s"])
    log(f"  worst: {top['file']} {top['cpu_s']:.2f} s of CPU")
    met = "yes" if top["cpu_s"] <= CPU_LIMIT_S else f"**no**: {top['cpu_s']:.2f} s vs <= {CPU_LIMIT_S:.0f} s"
    per_class = "; ".join(f"{kind}: {r['file']} {r['cpu_s']:.2f} s "
                          f"({'decoded' if r['outcome'].startswith('ok') else 'refused'})" for kind, r in worst.items())
    return Row("5i. Worst CPU per upload, per class", f"{top['cpu_s']:.2f} s", "n=1 per file (single run)",
               f"{top['file']}", f"{top['cpu_s'] / CPU_LIMIT_S:.2f}x of the limit",
               f"<= {CPU_LIMIT_S:.0f} s of CPU to decode or refuse any upload", met, per_class)
