"""The machine and process readings of the benchmarks and the memory tests, in one place.

The standard library gives the machine's memory and load; a process's resident memory,
its peak (VmHWM) and its CPU time are read from Linux's /proc here and nowhere else
(psutil has no peak-RSS reading of another process, and the CPU's feature flags are
lung_classifier.model.precision.cpu_info's).
"""

from __future__ import annotations

import os
from pathlib import Path


def _status_bytes(pid: int | str, field: str) -> int:
    """A memory line of /proc/PID/status (kB there), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise OSError(f"no {field} for pid {pid}")


def rss_bytes(pid: int | str = "self") -> int:
    """A process's resident memory now (VmRSS)."""
    return _status_bytes(pid, "VmRSS")


def peak_rss(pid: int | str = "self") -> int:
    """A process's peak resident memory so far (VmHWM)."""
    return _status_bytes(pid, "VmHWM")


def reset_peak_rss() -> None:
    """Make this process's VmHWM its current RSS, so a later peak_rss() measures from here."""
    Path("/proc/self/clear_refs").write_text("5")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_total() -> str:
    """The machine's physical memory, for the report."""
    try:
        return f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.1f} GiB"
    except (ValueError, OSError):
        return "unknown"


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages."""
    try:
        return " ".join(f"{load:.2f}" for load in os.getloadavg())
    except OSError:
        return "unknown"
