"""Which number format the rebuilt backbone computes in: bfloat16 where the CPU has it, else float32.

bfloat16 convolutions run on AVX-512 BF16 or AMX units at about twice float32's rate,
with the head (standardisation, classifier, calibration, OOD score) kept in float32;
tests/test_precision.py holds it to float32's answers on every development slice.
On CPUs without those instructions bfloat16 would be emulated, slower than float32.
"""

from __future__ import annotations

import platform
from pathlib import Path

CHOICES = ("auto", "float32", "bfloat16")
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


def resolve(precision: str, flags: frozenset[str] | None = None) -> str:
    """"float32" or "bfloat16": an explicit choice as given, "auto" by the CPU's flags."""
    if precision not in CHOICES:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(CHOICES)}")
    if precision != "auto":
        return precision
    return "bfloat16" if BF16_FLAGS & (cpu_flags() if flags is None else flags) else "float32"
