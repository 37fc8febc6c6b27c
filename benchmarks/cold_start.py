"""Rows 6 and 6c: cold start of the app (process start to its first /predict answer) and of the CLI
(`python -m lung_classifier predict SLICE`, process start to exit), each step by step.

The default path (runtime and precision auto) and TensorFlow bfloat16 (`--precision bfloat16`, the
previous default) alternate start by start, so the machine's load hits both alike. Packages are
built and cached before anything is timed (one untimed CLI run of each); the files are in the OS
cache, so "cold" means a fresh process, not a cold disk. The steps come from separate fresh
processes that time themselves (benchmarks.cli_steps, benchmarks.startup_phases: heavy imports and
the session or SavedModel opening inside them), on the same wall clock as the spawn and the exit.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from testkit.app_server import app_env

from .common import REPO, Row, Stats, secs, x
from .server import START_TIMEOUT_S, Server
from .step_clock import parse_report

BASELINE = ("TensorFlow bfloat16", ("--precision", "bfloat16"))
"""The previous default, as flags of the CLI and of app.py (runtime auto resolves bfloat16 to TensorFlow)."""
APP_TARGET_S = 4.0
CLI_TARGET_S = 2.5


def default_name() -> str:
    from lung_classifier.model.precision import resolve

    runtime, precision = resolve()
    return f"{'ONNX Runtime' if runtime == 'onnxruntime' else 'TensorFlow'} {precision}"


def cli_command(image: Path, flags: tuple[str, ...], module: str = "lung_classifier") -> list[str]:
    return [sys.executable, "-m", module, "predict", str(image), *flags]


def timed_run(command: list[str]) -> tuple[float, float, float, str]:
    """(spawn wall clock, exit wall clock, seconds, stdout) of a command that must succeed."""
    spawned = time.time()
    done = subprocess.run(command, cwd=REPO, env=app_env(), capture_output=True, text=True, timeout=START_TIMEOUT_S)
    exited = time.time()
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {done.returncode}:\n{done.stderr[-3000:]}")
    return spawned, exited, exited - spawned, done.stdout


def stepwise(command: list[str]) -> str:
    """One fresh process timing its own steps: 'step wall / CPU, ...; of which ...; TensorFlow imported: ...'."""
    spawned, exited, _, stdout = timed_run(command)
    report = parse_report(stdout)
    steps = [("interpreter start", report["started"] - spawned, None), *report["steps"],
             ("exit", exited - report["ended"], None)]
    parts = [f"{name} {secs(wall)}" + (f" / {secs(cpu)} CPU" if cpu is not None else "") for name, wall, cpu in steps]
    inside = ", ".join(f"{name} {secs(wall)}" for name, wall in report["inside"].items())
    return (f"{', '.join(parts)} (total {secs(exited - spawned)}); of which {inside or 'nothing timed'}; "
            f"TensorFlow imported: {'yes' if report['tensorflow'] else 'no'}")


def run(image: Path, repeats: int, log) -> list[Row]:
    ours = default_name()
    variants = {ours: (), BASELINE[0]: BASELINE[1]}
    log(f"cold starts: CLI predict and app.py, {ours} vs {BASELINE[0]}, alternating x{repeats}")
    for flags in variants.values():
        timed_run(cli_command(image, flags))  # untimed: builds and caches the package if needed
    cli: dict[str, list[float]] = {name: [] for name in variants}
    app: dict[str, list[float]] = {name: [] for name in variants}
    log_dir = Path(tempfile.mkdtemp(prefix="lung-bench-cold-"))
    for _ in range(repeats):
        for name, flags in variants.items():
            cli[name].append(timed_run(cli_command(image, flags))[2])
            server = Server(True, log_dir, flags)
            try:
                app[name].append(server.start(image))
            finally:
                server.stop()
            log(f"  {name}: CLI {secs(cli[name][-1])}, app {secs(app[name][-1])}")
    log("cold-start steps, one fresh process each")
    cli_steps = {name: stepwise(cli_command(image, flags, "benchmarks.cli_steps")) for name, flags in variants.items()}
    app_steps = {name: stepwise([sys.executable, "-m", "benchmarks.startup_phases", str(image), *flags])
                 for name, flags in variants.items()}
    return [
        _row(f"6. Cold start: app process start → first /predict answer, {ours}", Stats.of(app[ours]),
             Stats.of(app[BASELINE[0]]), APP_TARGET_S,
             "`python app.py` (batching on) until one gradio_client /predict of a real slice is answered: Python, "
             "imports, package load, server start and the full round trip. Its steps one after another in a fresh "
             "process (app.py imported, model loaded as its main() does, one predict, page built; no server): "
             + "; ".join(f"{name}: {steps}" for name, steps in app_steps.items())),
        _row(f"6c. CLI predict, one slice, cold process, {ours}", Stats.of(cli[ours]), Stats.of(cli[BASELINE[0]]),
             CLI_TARGET_S,
             f"`python -m lung_classifier predict SLICE` from spawn to exit (a {image.suffix} slice of the data). "
             "Its steps in a fresh process (the same CLI run by benchmarks.cli_steps): "
             + "; ".join(f"{name}: {steps}" for name, steps in cli_steps.items())),
    ]


def _row(name: str, ours: Stats, baseline: Stats, target: float, notes: str) -> Row:
    met = ("yes" if ours.median <= target else
           f"**no**: {secs(ours.median)} vs ≤{secs(target)} ({(ours.median / target - 1) * 100:.0f}% over)")
    return Row(name, secs(ours.median), ours.spread(secs),
               f"{BASELINE[0]} {secs(baseline.median)} ({baseline.spread(secs)})",
               f"{x(ours.median / baseline.median)} of {BASELINE[0]}", f"≤ {secs(target)}", met,
               notes + f". Alternating start by start, {ours.n} of each; packages built and cached beforehand")
