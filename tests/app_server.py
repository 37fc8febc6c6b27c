"""Start the real demo (`python app.py`) as a subprocess for the API and browser tests."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from conftest import REPO

START_TIMEOUT = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class AppServer:
    """A running `python app.py`; its stdout and stderr go to `log_path`."""

    process: subprocess.Popen
    url: str
    log_path: Path
    upload_root: Path  # GRADIO_TEMP_DIR: where Gradio stores uploads (and outputs)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=20)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/gradio_api/info", timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def start_app(model: Path, cache_root: Path, workdir: Path, *extra: str) -> AppServer:
    """Run app.py on a free port and wait until it answers and has printed its URL.

    Fails with the app's log if it does not start.
    """
    upload_root = workdir / "gradio-temp"
    upload_root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "LUNG_CLASSIFIER_CACHE": str(cache_root), "GRADIO_TEMP_DIR": str(upload_root),
           "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO),
           "GRADIO_HEARTBEAT_INTERVAL": "1"}  # a closed client's session ends (its uploads go) in about 1 s
    for variable in ("GRADIO_SERVER_NAME", "GRADIO_SERVER_PORT", "PORT", "LUNG_SHARE", "GRADIO_MCP_SERVER",
                     "LUNG_EXAMPLES"):
        env.pop(variable, None)
    for attempt in range(3):  # a free port can be taken by someone else before the app binds it
        port = free_port()
        log_path = workdir / f"app-{port}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [sys.executable, str(REPO / "app.py"), "--model", str(model), "--trust-saved-model",
                 "--port", str(port), "--host", "127.0.0.1", *extra],
                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        server = AppServer(process, f"http://127.0.0.1:{port}", log_path, upload_root)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if process.poll() is not None:
                break
            if _answers(server.url) and local_url_line(server.log()):  # the URL line follows the first answer
                return server
            time.sleep(0.5)
        server.stop()
        if attempt < 2 and "Cannot find empty port" in server.log():
            continue
        raise AssertionError(f"app.py did not answer on {server.url} within {START_TIMEOUT:.0f} s "
                             f"(exit code {process.returncode}); its output:\n{server.log()}")
    raise AssertionError("unreachable")


def local_url_line(log: str) -> str | None:
    match = re.search(r"Running on local URL:\s+(http://\S+)", log)
    return match.group(1) if match else None
