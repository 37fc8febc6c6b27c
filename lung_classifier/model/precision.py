"""Which runtime and number format compute the backbone: int8 ONNX Runtime, bfloat16 TensorFlow, or float32.

ONNX Runtime (no TensorFlow import, a start in about a second) runs the backbone in int8 where the CPU
has VNNI dot-product instructions (AVX-512 VNNI, AVX-VNNI or AMX), else in float32; TensorFlow, the
fallback where onnxruntime is not installed, runs it in bfloat16 on AVX-512 BF16 or AMX, else float32.
Either way the head (standardisation, classifier, calibration, OOD score) computes in float32, and
answers a reduced-precision backbone leaves near a decision boundary are recomputed in float32
(RECHECK); tests/test_precision.py
and tests/test_onnx.py hold the answers to float32's on every development slice. Without those
instructions int8 and bfloat16 would be emulated, slower than float32.
"""

from __future__ import annotations

import importlib.util
import platform
from dataclasses import dataclass
from pathlib import Path

CHOICES = ("auto", "int8", "float32", "bfloat16")
RUNTIMES = ("auto", "onnxruntime", "tensorflow")
FORMATS = {"onnxruntime": ("int8", "float32"), "tensorflow": ("bfloat16", "float32")}
"""The number formats each runtime computes the backbone in, fastest first."""
INT8_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
"""/proc/cpuinfo flags of native int8 dot products (VNNI, AMX); without them ONNX Runtime's u8s8 kernels
can saturate."""
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
"""/proc/cpuinfo flags of native bfloat16 arithmetic (AVX-512 BF16 dot products, AMX tiles)."""


def cpu_info() -> dict[str, str]:
    """The first CPU's fields as Linux reports them in /proc/cpuinfo (model name, flags, ...); empty elsewhere."""
    info: dict[str, str] = {}
    if platform.system() != "Linux":
        return info
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return info


def cpu_flags() -> frozenset[str]:
    """The CPU feature flags Linux reports; empty elsewhere (or if unreadable)."""
    return frozenset(cpu_info().get("flags", "").split())


@dataclass(frozen=True)
class Recheck:
    """When a reduced-precision answer is recomputed in float32: its OOD score within ``ood_band`` (a fraction) of the
    threshold, a shown P(Malignant) within ``rule_out_band`` of its source's rule-out threshold, or the two most
    probable classes within ``gap_band`` (LungClassifier); and in the bfloat16 graph itself, its decision margin
    (log-probability units) below ``margin`` (lung_classifier.model.network)."""

    ood_band: float
    rule_out_band: float
    gap_band: float
    margin: float | None = None


RECHECK = {
    "bfloat16": Recheck(ood_band=0.05, rule_out_band=0.1, gap_band=0.1, margin=0.25),
    "int8": Recheck(ood_band=0.2, rule_out_band=0.1, gap_band=0.2),
}
"""Each about 1.25x or more the largest change measured on the 869 development slices against float32
(tests/test_precision.py, tests/test_onnx.py). bfloat16: a decision score by at most 0.10, an OOD score by < 2%, a
shown probability by at most 0.021 (model 4.0.0). int8: an OOD score by 14% of the threshold, a shown P(Malignant)
by 0.080 and the gap between the two most probable classes by 0.192."""


def onnxruntime_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def resolve(precision: str = "auto", runtime: str = "auto", flags: frozenset[str] | None = None) -> tuple[str, str]:
    """(runtime, number format): explicit choices as given, "auto" by what is installed and the CPU's flags."""
    if precision not in CHOICES:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(CHOICES)}")
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime {runtime!r} is not one of {', '.join(RUNTIMES)}")
    if runtime == "auto":
        runtime = "onnxruntime" if precision != "bfloat16" and onnxruntime_available() else "tensorflow"
    if precision == "auto":
        fast, needs = FORMATS[runtime][0], INT8_FLAGS if runtime == "onnxruntime" else BF16_FLAGS
        return runtime, fast if needs & (cpu_flags() if flags is None else flags) else "float32"
    if precision not in FORMATS[runtime]:
        other = "tensorflow" if runtime == "onnxruntime" else "onnxruntime (pip install onnxruntime)"
        raise ValueError(f"precision {precision!r} runs on {other}, not {runtime}, which computes in "
                         f"{' or '.join(FORMATS[runtime])}")
    return runtime, precision


def uses_tensorflow(precision: str, runtime: str, trust_saved_model: bool) -> bool:
    """Whether loading with these flags runs TensorFlow (a trusted SavedModel always does)."""
    return trust_saved_model or resolve(precision, runtime)[0] == "tensorflow"
