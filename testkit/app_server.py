"""The real demo (`python app.py`) in a subprocess: the one launcher of the API tests, the browser tests,
the benchmarks and the screenshot script.

Each caller decides when the server is ready (the tests: it answers /gradio_api/info and has
printed its URL; the benchmarks: it answers a /predict, whose time is the cold start), so this
module starts, reports and stops; `start_app` is the tests' way of waiting.
"""

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

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT = 300.0
"""How long app.py may take to answer (polled): a TensorFlow import on a loaded 2-core machine takes minutes."""
STOP_TIMEOUT = 20.0
LAUNCH_VARIABLES = ("GRADIO_SERVER_NAME", "GRADIO_SERVER_PORT", "PORT", "LUNG_SHARE", "GRADIO_MCP_SERVER",
                    "LUNG_EXAMPLES")
"""Variables app.py reads as defaults for its own flags: removed, so only the command line sets them."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def app_env(**extra: str) -> dict[str, str]:
    """This process's environment for a local, offline, quiet app: no analytics, no Hub, no proxy for loopback,
    unbuffered output, the repository importable, and none of app.py's launch variables."""
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
           "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": str(REPO), **extra}
    for variable in LAUNCH_VARIABLES:
        env.pop(variable, None)
    return env


def app_command(port: int, *extra: str) -> list[str]:
    """`python app.py` on loopback at `port`, with further flags (a model, --no-batching...)."""
    return [sys.executable, str(REPO / "app.py"), "--port", str(port), "--host", "127.0.0.1", *extra]


@dataclass
class AppServer:
    """A running server process; its stdout and stderr go to `log_path`."""

    process: subprocess.Popen
    url: str
    log_path: Path
    upload_root: Path | None = None  # GRADIO_TEMP_DIR: where Gradio stores uploads (and outputs)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def answers(self) -> bool:
        """Gradio's info route answers: the app is up (its first request may still be slow)."""
        try:
            with urllib.request.urlopen(self.url + "/gradio_api/info", timeout=5) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_TIMEOUT)


def spawn(command: list[str], port: int, log_path: Path, env: dict[str, str],
          upload_root: Path | None = None) -> AppServer:
    """Start `command` (a server that will listen on 127.0.0.1:`port`) in the repository, logging to `log_path`."""
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    return AppServer(process, f"http://127.0.0.1:{port}", log_path, upload_root)


def start_app(model: Path, cache_root: Path, workdir: Path, *extra: str) -> AppServer:
    """Run app.py on `model` (trusting its SavedModel) at a free port; return once it answers and has printed
    its URL. Fails with the app's log if it does not start."""
    upload_root = workdir / "gradio-temp"
    upload_root.mkdir(parents=True, exist_ok=True)
    env = app_env(LUNG_CLASSIFIER_CACHE=str(cache_root), GRADIO_TEMP_DIR=str(upload_root), TF_CPP_MIN_LOG_LEVEL="3",
                  GRADIO_HEARTBEAT_INTERVAL="1")  # a closed client's session ends (its uploads go) in about 1 s
    for attempt in range(3):  # a free port can be taken by someone else before the app binds it
        port = free_port()
        server = spawn(app_command(port, "--model", str(model), "--trust-saved-model", *extra), port,
                       workdir / f"app-{port}.log", env, upload_root)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                break
            if server.answers() and local_url_line(server.log()):  # the URL line follows the first answer
                return server
            time.sleep(0.5)
        server.stop()
        if attempt < 2 and "Cannot find empty port" in server.log():
            continue
        raise AssertionError(f"app.py did not answer on {server.url} within {START_TIMEOUT:.0f} s "
                             f"(exit code {server.process.returncode}); its output:\n{server.log()}")
    raise AssertionError("unreachable")


def local_url_line(log: str) -> str | None:
    match = re.search(r"Running on local URL:\s+(http://\S+)", log)
    return match.group(1) if match else None


def decode_workers(server_pid: int) -> list[int]:
    """The process ids of a server's decode workers (its children running lung_classifier.decoding.worker)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if parent == server_pid and b"lung_classifier.decoding.worker" in command:
            found.append(int(entry.name))
    return found
