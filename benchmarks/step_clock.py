"""Timestamps of a fresh process's start-up steps, printed as one JSON line for the benchmark that started it.

Used by benchmarks.cli_steps and benchmarks.startup_phases (each run as `python -m ...` in a fresh
process). Wall times are time.time(), so the parent can place the interpreter's own start (spawn to
the first statement) and its exit (the last mark to the process gone) on the same clock. The first
import of each HEAVY module is timed where it happens (builtins.__import__ wrapped), so a step that
imports TensorFlow says how much of it that was; the model's session or graph opening, decoding and
network calls are timed by wrapping the library's own functions (watch_model). Standard library only
at import time, so the clock starts before anything heavy.
"""

from __future__ import annotations

import builtins
import json
import sys
import time

HEAVY = ("tensorflow", "onnxruntime", "gradio")
"""Top-level imports timed on their own (none imports another)."""
PREFIX = "STEPS "
"""The report line's start on stdout (the program's own output comes before it)."""


class StepClock:
    """Consecutive steps (wall and CPU seconds each), heavy imports and wrapped calls inside them."""

    def __init__(self) -> None:
        self.started = time.time()
        self._last = (self.started, time.process_time())
        self.steps: list[tuple[str, float, float]] = []
        self.inside: dict[str, float] = {}  # heavy imports ("import X") and wrapped calls, wall seconds
        real = builtins.__import__

        def timed_import(name, globals=None, locals=None, fromlist=(), level=0):
            top = name.partition(".")[0]
            if level or top not in HEAVY or top in sys.modules:
                return real(name, globals, locals, fromlist, level)
            start = time.perf_counter()
            try:
                return real(name, globals, locals, fromlist, level)
            finally:
                self.add(f"import {top}", time.perf_counter() - start)

        builtins.__import__ = timed_import

    def add(self, what: str, seconds: float) -> None:
        self.inside[what] = self.inside.get(what, 0.0) + seconds

    def mark(self, step: str) -> None:
        """The step that ends now (it began at the previous mark)."""
        wall, cpu = time.time(), time.process_time()
        self.steps.append((step, wall - self._last[0], cpu - self._last[1]))
        self._last = (wall, cpu)

    def wrap(self, owner: object, attribute: str, what: str) -> None:
        """Time every call of owner.attribute (a module's function or a class's method) under `what`."""
        original = getattr(owner, attribute)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.add(what, time.perf_counter() - start)

        setattr(owner, attribute, timed)

    def watch_model(self) -> None:
        """Time the library's session/graph opening, decoding and network calls wherever they happen."""
        from lung_classifier.classifier import LungClassifier
        from lung_classifier.model import onnx_runtime, saved_model

        self.wrap(onnx_runtime, "open_session", "ONNX Runtime session open")
        self.wrap(saved_model.SavedModelNetwork, "__init__", "SavedModel load")
        self.wrap(LungClassifier, "read", "decode")
        for network in (onnx_runtime.OnnxNetwork, saved_model.SavedModelNetwork):
            self.wrap(network, "predict", "network")
            self.wrap(network, "exact", "network")

    def report(self) -> None:
        print(PREFIX + json.dumps({"started": self.started, "ended": time.time(), "steps": self.steps,
                                   "inside": self.inside, "tensorflow": "tensorflow" in sys.modules}), flush=True)


def parse_report(stdout: str) -> dict:
    """The report a StepClock printed, from a finished process's stdout."""
    lines = [line for line in stdout.splitlines() if line.startswith(PREFIX)]
    if not lines:
        raise RuntimeError(f"no step report in the output:\n{stdout[-2000:]}")
    return json.loads(lines[-1][len(PREFIX):])
