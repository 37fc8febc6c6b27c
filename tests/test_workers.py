"""The CV's parallel fits: answers in input order, one BLAS thread each, errors not swallowed."""

from __future__ import annotations

import time

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from training import fit, workers


def test_results_come_back_in_input_order_whatever_finishes_first():
    def slow_for_small(n: int) -> int:
        time.sleep(0.002 * (10 - n))
        return n * n

    assert workers.parallel_map(slow_for_small, range(10)) == [n * n for n in range(10)]


def test_each_fit_runs_with_one_blas_thread():
    def blas_threads(_: int) -> set[int]:
        return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}

    assert set().union(*workers.parallel_map(blas_threads, range(4))) == {1}


def test_a_failing_fit_raises_in_the_caller():
    def fail_on_three(n: int) -> int:
        if n == 3:
            raise ValueError("fold 3 has one class")
        return n

    with pytest.raises(ValueError, match="fold 3"):
        workers.parallel_map(fail_on_three, range(6))


def test_parallel_head_fits_equal_the_same_fits_one_after_another():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 40)) + np.repeat(np.eye(3, 40) * 2, 40, axis=0)
    y = np.repeat(np.arange(3), 40)
    settings = [fit.HeadSettings(c, weighting) for c in (0.01, 0.1, 1.0) for weighting in fit.WEIGHTINGS]

    def kernel(s: fit.HeadSettings) -> np.ndarray:
        return fit.fit_linear(x, y, 3, s).kernel

    for parallel, alone in zip(workers.parallel_map(kernel, settings), [kernel(s) for s in settings]):
        np.testing.assert_array_equal(parallel, alone)
