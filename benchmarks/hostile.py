"""Row 5h: the real app.py's peak memory while 16 clients send it the hostile corpus.

The server is `python app.py` with the real model; the clients are 16 threads of a
separate process (`benchmarks/hostile_corpus.py`, the same corpus and sender as the tests),
each sending every heavy file (DICOM bombs, a 10 MP and a 36 MP black PNG, ...) to
/predict, /analyze and /batch at once, then its share of the other files. Peak = the
server's VmHWM (/proc/PID/status), which includes its start-up.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from .common import REPO, Row
from .readings import peak_rss
from .server import Server

LIMIT_BYTES = int(2.5 * 2**30)
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
            [sys.executable, "-m", "benchmarks.hostile_corpus", "--url", server.url,
             "--dir", str(work / "corpus"), "--clients", str(CLIENTS), "--share", str(share),
             "--endpoints", *endpoints],
            cwd=REPO, capture_output=True, text=True, timeout=3600)
        if sender.returncode != 0:
            raise RuntimeError(f"the corpus sender failed:\n{sender.stderr[-3000:]}")
        summary = json.loads(sender.stdout.strip().splitlines()[-1])
        peak = peak_rss(server.pid)
        alive = server.process.poll() is None
        from gradio_client import Client, handle_file

        after = Client(server.url, verbose=False, download_files=False).predict(handle_file(str(image)),
                                                                                api_name="/predict")
        answered = alive and isinstance(after, dict) and bool(after.get("label"))
    finally:
        server.stop()
    problems = summary["problems"]
    log(f"  peak RSS {peak / 2**30:.2f} GiB; {summary['requests']} requests in {summary['seconds']} s, "
        f"{len(problems)} problems")
    met = "yes"
    if peak >= LIMIT_BYTES:
        met = f"**no**: {peak / 2**30:.2f} GiB vs <2.5 GiB ({(peak / LIMIT_BYTES - 1) * 100:.0f}% over)"
    if problems or not answered:
        met = (f"**no**: {len(problems)} unclear answers or failed requests"
               f"{'' if answered else ', no answer afterwards'}; " + met)
    notes = (f"{summary['requests']} requests ({summary['results']} results, {summary['refusals']} clear refusals) "
             f"in {summary['seconds']} s to {', '.join(endpoints)}"
             f"{f' (quick: every heavy file, 1/{share} of the rest)' if quick else ' (every file)'}"
             f"; a normal /predict answered afterwards: {'yes' if answered else 'no'}"
             + (f"; first problem: {problems[0][:200]}" if problems else ""))
    return Row(f"5h. Peak server RSS under the hostile corpus, {CLIENTS} clients", f"{peak / 2**30:.2f} GiB",
               "n=1 (single run)", f"peak before the corpus (start + one /predict): {before / 2**30:.2f} GiB",
               f"{peak / LIMIT_BYTES:.2f}x of the limit", "< 2.5 GiB, every file a result or a clear refusal",
               met, notes)
