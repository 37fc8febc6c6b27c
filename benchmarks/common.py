"""Timing statistics, table rows and the machine description shared by every benchmark."""

from __future__ import annotations

import os
import platform
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from lung_classifier.model.precision import cpu_info, resolve

from .readings import memory_total

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data" / "iqothnccd"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SHUFFLE_SEED = 0


@dataclass(frozen=True)
class Stats:
    """Wall-clock samples (seconds, or any unit) summarised as median, min-max and IQR."""

    samples: tuple[float, ...]

    @classmethod
    def of(cls, samples) -> "Stats":
        values = tuple(float(s) for s in samples)
        if not values:
            raise ValueError("no samples")
        return cls(values)

    @property
    def n(self) -> int:
        return len(self.samples)

    @property
    def median(self) -> float:
        return float(np.median(self.samples))

    @property
    def low(self) -> float:
        return min(self.samples)

    @property
    def high(self) -> float:
        return max(self.samples)

    def quantile(self, q: float) -> float:
        return float(np.quantile(self.samples, q))

    def scaled(self, factor: float) -> "Stats":
        return Stats(tuple(s * factor for s in self.samples))

    def spread(self, unit: Callable[[float], str]) -> str:
        """min–max and the interquartile range, with the number of runs."""
        if self.n == 1:
            return "n=1 (single run)"
        return (f"{unit(self.low)}–{unit(self.high)}, IQR {unit(self.quantile(0.25))}–"
                f"{unit(self.quantile(0.75))} (n={self.n})")


def measure(fn: Callable[[int], object], repeats: int, warmup: int = 1) -> Stats:
    """Call fn(i) warmup times untimed, then repeats times timed; i counts calls from 0."""
    for index in range(warmup):
        fn(index)
    samples = []
    for index in range(warmup, warmup + repeats):
        start = time.perf_counter()
        fn(index)
        samples.append(time.perf_counter() - start)
    return Stats.of(samples)


def measure_interleaved(fns: dict[str, Callable[[int], object]], repeats: int, warmup: int = 1) -> dict[str, Stats]:
    """Like measure for several functions, alternating them so machine noise hits all alike."""
    for index in range(warmup):
        for fn in fns.values():
            fn(index)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for index in range(warmup, warmup + repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn(index)
            samples[name].append(time.perf_counter() - start)
    return {name: Stats.of(values) for name, values in samples.items()}


# --- formatting ----------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.0f} ms" if seconds >= 0.1 else f"{seconds * 1e3:.1f} ms"


def secs(seconds: float) -> str:
    return f"{seconds:.1f} s"


def per_s(rate: float) -> str:
    return f"{rate:.2f}/s"


def x(ratio: float) -> str:
    return f"{ratio:.2f}x"


@dataclass
class Row:
    """One line of the results table."""

    name: str
    measured: str
    spread: str
    baseline: str
    ratio: str
    target: str
    met: str
    notes: str = ""


def verdict_at_most(ratio: float, limit: float, what: str = "") -> str:
    """For 'ratio <= limit' targets: yes, or no and by how much."""
    if ratio <= limit:
        return "yes"
    return f"**no**: {ratio:.2f}x vs ≤{limit:g}x{what} ({(ratio / limit - 1) * 100:.0f}% over)"


def verdict_at_least(ratio: float, limit: float, what: str = "") -> str:
    """For 'ratio >= limit' targets: yes, or no and by how much."""
    if ratio >= limit:
        return "yes"
    return f"**no**: {ratio:.2f}x vs ≥{limit:g}x{what} ({(1 - ratio / limit) * 100:.0f}% short)"


def render_table(rows: list[Row]) -> str:
    header = ["Row", "Measured (median)", "Spread", "Baseline (same run)", "Ratio", "Target", "Met?", "Notes"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row.name, row.measured, row.spread, row.baseline, row.ratio, row.target, row.met, row.notes]
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return "\n".join(lines)


# --- the machine ---------------------------------------------------------


def git_revision() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return f"{head}{' + uncommitted changes' if dirty else ''}" if head else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_description() -> list[str]:
    """Markdown bullet lines: CPU, cores, memory, versions, load."""
    import tensorflow as tf
    import keras
    import gradio
    import onnxruntime

    cpu = cpu_info()
    flags = set(cpu.get("flags", "").split())
    vector = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8",
                          "amx_tile") if f in flags]
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return [
        f"- CPU: {cpu.get('model name', platform.processor() or 'unknown')} "
        f"(vendor {cpu.get('vendor_id', '?')}, family {cpu.get('cpu family', '?')} model {cpu.get('model', '?')}; "
        f"flags: {', '.join(vector) or 'none of avx2/avx512/vnni/amx'})",
        f"- Cores: {os.cpu_count()} logical CPUs, {affinity} usable by this process "
        f"(TF intra-op threads: {tf.config.threading.get_intra_op_parallelism_threads() or 'default = all'}; "
        "ONNX Runtime: one intra-op thread per usable core)",
        f"- Memory: {memory_total()}",
        f"- Software: Python {platform.python_version()}, TensorFlow {tf.__version__}, Keras {keras.__version__}, "
        f"ONNX Runtime {onnxruntime.__version__}, Gradio {gradio.__version__}, NumPy {np.__version__}, "
        f"{platform.system()} {platform.release()}",
        "- Default inference path (runtime and precision auto, by what is installed and the CPU's flags): "
        + " ".join(resolve()),
        f"- Code: git {git_revision()}",
    ]


def dataset_images(root: Path = DATA) -> list[Path]:
    """The real slices in a fixed shuffled order, so every run uses the same ones and any run of them mixes the
    classes as the data does (sorted, the first 95 are all Benign, whose answers the reduced-precision paths
    recompute in float32 far more often than Malignant ones)."""
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        sys.exit(f"error: no images under {root} (the real IQ-OTH/NCCD data is needed)")
    random.Random(SHUFFLE_SEED).shuffle(paths)
    return paths
