"""Row 1: the compute bound, ResNet50 FLOPs per image over the float32 GEMM rate measured now.

FLOP convention: one multiply-add = 2 FLOPs, counted for every Conv2D and Dense layer
from its kernel and output shapes (BatchNorm, ReLU, residual adds and pooling are
elementwise and left out: they add well under 1% and are memory-bound anyway).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .common import Stats


@dataclass(frozen=True)
class FlopCount:
    total: int  # per image
    conv: int
    dense: int
    layers: int


def count_flops(model) -> FlopCount:
    """2 x multiply-adds of every Conv2D/Dense in a (nested) Keras model, per image."""
    import keras

    conv = dense = layers = 0
    stack = [model]
    while stack:
        layer = stack.pop()
        if isinstance(layer, keras.Model):
            stack.extend(layer.layers)
        elif isinstance(layer, keras.layers.Conv2D):
            kh, kw, cin, cout = layer.kernel.shape
            _, height, width, _ = layer.output.shape
            conv += 2 * height * width * kh * kw * cin * cout
            layers += 1
        elif isinstance(layer, keras.layers.Dense):
            cin, cout = layer.kernel.shape
            dense += 2 * cin * cout
            layers += 1
    return FlopCount(total=conv + dense, conv=conv, dense=dense, layers=layers)


def head_flops(head) -> int:
    """The trained head on pooled features: standardise, classifier and OOD projections (2/MAC)."""
    features, classes = head.kernel.shape
    components = head.ood_components.shape[0]
    return 2 * features * (classes + 2 * components)


def gemm_rate(size: int, repeats: int, dtype: str = "float32") -> Stats:
    """FLOP/s of tf.matmul on two size x size matrices (2 size^3 FLOPs), one warm-up first."""
    gemm = Gemm(size, dtype)
    gemm()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        gemm()
        rates.append(gemm.flops / (time.perf_counter() - start))
    return Stats.of(rates)


class Gemm:
    """One float32 size x size tf.matmul per call, to interleave with other measurements.

    Measuring the GEMM rate next to each timed call (rather than once) keeps the compute
    bound honest on a machine whose load changes during the run: each ratio to the bound
    compares two timings taken seconds apart.
    """

    def __init__(self, size: int, dtype: str = "float32"):
        import tensorflow as tf

        rng = np.random.default_rng(0)
        self.size = size
        self.flops = 2 * size**3
        self._a = tf.cast(tf.constant(rng.standard_normal((size, size), np.float32)), dtype)
        self._b = tf.cast(tf.constant(rng.standard_normal((size, size), np.float32)), dtype)
        self._matmul = tf.function(tf.matmul)

    def __call__(self, index: int = 0) -> None:
        self._matmul(self._a, self._b).numpy()
