"""Independent CPU-bound fits spread over the usable cores, each with single-threaded BLAS.

The cross-validated head fits (L-BFGS on cached features) spend their time in BLAS and
scikit-learn's compiled loss, which release the GIL, so threads share the features
without copying them and each fit's answer is the same as in a plain loop. The thread
limits are set once around the whole map: threadpoolctl's limits are process-wide, so a
limit per fit would be undone by whichever fit finished first.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from threadpoolctl import threadpool_limits

Item = TypeVar("Item")
Output = TypeVar("Output")


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def parallel_map(function: Callable[[Item], Output], items: Iterable[Item]) -> list[Output]:
    """function over items in order, one thread per usable core, BLAS and OpenMP at one thread each."""
    items = list(items)
    workers = min(usable_cores(), len(items))
    with threadpool_limits(limits=1):
        if workers <= 1:
            return [function(item) for item in items]
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(function, items))
