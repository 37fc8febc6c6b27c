"""The backbone on ONNX Runtime and the head in NumPy: the served outputs without importing TensorFlow.

An int8 graph answers first; LungClassifier recomputes with the float32 graph (:meth:`OnnxNetwork.exact`,
whose session opens on first need) the answers int8 could have moved (precision.RECHECK["int8"]), so
labels, screening answers and flags are float32's.
"""

from __future__ import annotations

import functools
import os
import threading
from pathlib import Path

import numpy as np

from .head import SERVED, Head, head_outputs


THREADS: int | None = None
"""Intra-op threads of sessions opened from now on; None: one per core this process may run on (a Ray actor sets
its own CPUs here, as it sets TensorFlow's)."""


@functools.cache
def blas():
    """NumPy's BLAS thread pools, held to one thread for the head: its products are a few milliseconds of work,
    and a multi-threaded BLAS beside ONNX Runtime's threads made them take 2 to 900 ms on 2 busy cores (one thread:
    2 to 6 ms)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def open_session(graph: Path):
    """An ONNX Runtime CPU session with every graph optimisation, THREADS intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = THREADS or usable_cores()
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])


class OnnxNetwork:
    """predict / exact like the SavedModel's endpoints, from the ONNX graph(s) of a package build."""

    runtime = "onnxruntime"

    def __init__(self, head: Head, float32_graph: Path, int8_graph: Path | None = None):
        self.head = head
        self._float32_graph = float32_graph
        self._fast = open_session(int8_graph or float32_graph)
        self._exact = None if int8_graph else self._fast
        self._opening = threading.Lock()
        self.rechecks = int8_graph is not None
        """Whether :meth:`exact` differs from :meth:`predict` (the int8 graph's float32 recheck)."""

    def _answer(self, session, pixels: np.ndarray) -> dict[str, np.ndarray]:
        features = session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(pixels, np.float32)})[0]
        with blas().limit(limits=1, user_api="blas"):  # see blas()
            return head_outputs(features, self.head)

    def _exact_session(self):
        with self._opening:
            if self._exact is None:
                self._exact = open_session(self._float32_graph)
        return self._exact

    def exact(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """The served outputs from the float32 graph."""
        outputs = self._answer(self._exact_session(), pixels)
        return {name: outputs[name] for name in SERVED}

    def predict(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """The served outputs from the fast graph (int8 where built so): the caller rechecks what matters."""
        outputs = self._answer(self._fast, pixels)
        return {name: outputs[name] for name in SERVED}
