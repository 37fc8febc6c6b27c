"""A few long-lived decode workers (:mod:`.worker`): a file that kills its decoder costs one request, not the server.

Every file or upload's bytes is decoded in a worker process, never in the caller's: the
server, the CLI and the library keep running whatever a decoder does. A worker that
aborts, crashes, runs past ``WORKER_CPU_S`` of CPU or ``WORKER_WALL_S`` of wall time, or
runs out of its address space turns into an :class:`ImageError` for that one file ("this
file could not be decoded safely: ...") and is replaced by a fresh one on the next call.

Workers are started with ``subprocess`` (fork and exec at once, as multiprocessing's
"spawn" does): nothing of the caller (TensorFlow, its threads, its locks) is copied into
them. They stay alive between files, so a slice costs one round trip on a pipe, not a
process start; at most ``WORKERS`` exist, so at most that many decodes run at once and
their memory adds up to at most ``WORKERS`` x (start size + ``WORKER_MEMORY_BYTES``).
Any number of threads may call :func:`decode` at once: each takes an idle worker, or
waits for one.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import IO

import numpy as np

from .limits import MAX_SIDE, WORKER_CPU_S, WORKER_MEMORY_BYTES, WORKER_WALL_S, WORKERS, ImageError
from .protocol import read_exactly, receive, send

MAX_LOG_BYTES = 2**20
"""A worker's stderr (library warnings) is kept for the reason of its end, and emptied past this size."""
START_TIMEOUT_S = 60.0
"""Seconds a new worker may take to import its decoders and say it is ready (0.7 to 1.5 s measured, under load)."""
_ROOT = str(Path(__file__).resolve().parents[2])  # the folder holding lung_classifier: the worker imports it


class WorkerFailed(Exception):
    """The worker is gone or unusable; the message says why, for a person."""


class _Worker:
    """One child process and its pipes; used by one thread at a time."""

    def __init__(self) -> None:
        self.log: IO[bytes] = tempfile.TemporaryFile(prefix="lung-decode-worker-")
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "OPJ_NUM_THREADS": "1",
               "MALLOC_ARENA_MAX": "2", "PYTHONPATH": os.pathsep.join(filter(None, [_ROOT, os.environ.get(
                   "PYTHONPATH")]))}
        command = [sys.executable, "-m", "lung_classifier.decoding.worker", str(WORKER_MEMORY_BYTES)]
        self.process = subprocess.Popen(command, env=env,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                        cwd=_ROOT, start_new_session=True)
        self.timed_out = False
        try:
            if not self._answer(START_TIMEOUT_S, "start").get("ready"):
                raise WorkerFailed(f"the decode worker did not start ({self._ending()})")
        except WorkerFailed:
            self.close()
            raise

    def decode(self, source: bytes | Path, name: str, window: tuple[float, float]) -> dict:
        """Send one file; its answer header (the pixels follow on the pipe for a slice)."""
        if isinstance(source, Path):
            request, payload = {"path": str(source.resolve())}, b""
        else:
            request, payload = {"size": len(source)}, source
        try:
            send(self.process.stdin, {**request, "name": name, "window": list(window), "cpu_s": WORKER_CPU_S},
                 payload)
        except (BrokenPipeError, OSError):
            raise WorkerFailed(self._ending()) from None
        return self._answer(WORKER_WALL_S, "decode")

    def pixels(self, shape: list[int]) -> np.ndarray:
        """The slice that follows an answer, checked: H x W x 3, each side within MAX_SIDE."""
        if len(shape) != 3 or shape[2] != 3 or not all(isinstance(n, int) and 0 < n <= MAX_SIDE for n in shape):
            raise WorkerFailed(f"the decode worker answered a slice of shape {shape}")
        data = read_exactly(self.process.stdout, shape[0] * shape[1] * 3)
        if data is None:
            raise WorkerFailed(self._ending())
        return np.frombuffer(data, np.uint8).reshape(shape)

    def _answer(self, timeout: float, what: str) -> dict:
        """The next answer header, killing the worker if none comes within `timeout` seconds."""
        timer = threading.Timer(timeout, self._time_out)
        timer.start()
        try:
            answer = receive(self.process.stdout)
        except (ValueError, OSError):
            answer = None
        finally:
            timer.cancel()
        if answer is None:
            if self.timed_out:
                raise WorkerFailed(f"it took longer than {timeout:g} s to {what}")
            raise WorkerFailed(self._ending())
        return answer

    def _time_out(self) -> None:
        self.timed_out = True
        self.process.kill()

    def _ending(self) -> str:
        """Why the worker stopped answering, from its exit status and the last line it wrote."""
        self.process.kill()
        code = self.process.wait()
        last = self._last_line()
        if code == -signal.SIGXCPU:
            return f"it needs more than {WORKER_CPU_S:g} s of CPU"
        if code == -signal.SIGABRT:
            return "its decoder aborted" + (f" ({last})" if last else "")
        if code < 0:
            return f"its decoder crashed ({signal.Signals(-code).name})" + (f": {last}" if last else "")
        return f"its decoder stopped (exit status {code})" + (f": {last}" if last else "")

    def _last_line(self) -> str:
        """The C++ exception that ended it ("terminate called after throwing an instance of 'std::length_error'"),
        or the last line it wrote."""
        self.log.seek(0, os.SEEK_END)
        self.log.seek(max(0, self.log.tell() - 4096))
        lines = [line.strip() for line in self.log.read().decode(errors="replace").splitlines() if line.strip()]
        thrown = [line.split("instance of ", 1)[1].strip("'") for line in lines if "instance of '" in line]
        return (thrown or lines or [""])[-1][:160]

    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.stdin.close()
            except OSError:
                pass
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for stream in (self.process.stdin, self.process.stdout, self.log):
            try:
                stream.close()
            except OSError:
                pass  # a pipe the dead worker left unflushed


class DecodePool:
    """At most `size` workers, each handed to one caller at a time; a failed worker is dropped, not reused."""

    def __init__(self, size: int = WORKERS):
        self.size = size
        self._idle: list[_Worker] = []
        self._running = 0  # workers alive or starting, idle or not
        self._free = threading.Condition()
        self._pid = os.getpid()

    def decode(self, source: bytes | Path, name: str, window: tuple[float, float]) -> tuple[np.ndarray, dict]:
        """The slice and the answer's header ({"dicom", "axial"}), or an ImageError saying why not."""
        worker = self._take(name)
        healthy = False
        try:
            answer = worker.decode(source, name, window)
            if "refused" in answer:
                healthy = True
                raise ImageError(str(answer["refused"]))
            if "failed" in answer:
                raise WorkerFailed(str(answer["failed"]))
            rgb = worker.pixels(answer.get("shape", []))
            healthy = True
            return rgb, answer
        except WorkerFailed as exc:
            raise ImageError(f"{name}: this file could not be decoded safely: {exc}") from None
        finally:
            self._give_back(worker, healthy)

    def warm(self) -> None:
        """Start the workers not yet running, here and now: the first files then wait for no process start."""
        with self._free:
            missing = self.size - self._running
            self._running += missing
        for _ in range(missing):
            try:
                worker = _Worker()
            except (WorkerFailed, OSError):
                with self._free:
                    self._running -= 1
                    self._free.notify()
                continue
            self._give_back(worker, True)

    def _take(self, name: str) -> _Worker:
        with self._free:
            self._free.wait_for(lambda: self._idle or self._running < self.size)
            while self._idle:
                worker = self._idle.pop()
                if worker.alive():
                    return worker
                self._running -= 1  # ended while idle (killed from outside): replaced below
                worker.log.close()
            self._running += 1
        try:
            return _Worker()
        except (WorkerFailed, OSError) as exc:
            with self._free:
                self._running -= 1
                self._free.notify()
            raise ImageError(f"{name} could not be decoded: the decode worker did not start ({exc})") from None

    def _give_back(self, worker: _Worker, healthy: bool) -> None:
        if not healthy:
            worker.close()
        elif os.fstat(worker.log.fileno()).st_size > MAX_LOG_BYTES:
            worker.log.seek(0)  # the worker writes at the same (shared) offset: from the start again
            worker.log.truncate()
        with self._free:
            if healthy:
                self._idle.append(worker)
            else:
                self._running -= 1
            self._free.notify()

    def close(self) -> None:
        """Stop the idle workers (at exit); busy ones stop when their callers give them back."""
        with self._free:
            idle, self._idle = self._idle, []
            self._running -= len(idle)
        for worker in idle:
            worker.close()


_POOL: DecodePool | None = None
_POOL_LOCK = threading.Lock()


def pool() -> DecodePool:
    """This process's pool (a forked child gets its own: pipes to its parent's workers are not its to use)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL._pid != os.getpid():
            _POOL = DecodePool()
            atexit.register(_POOL.close)
        return _POOL
