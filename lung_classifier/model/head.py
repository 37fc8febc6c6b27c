"""The trained head as plain arrays: what a package's head.npz holds, readable without TensorFlow.

Besides the classifier's weights it holds the one copy of the numbers the rules use (the
softmax temperature, the decision offsets and the two OOD thresholds); the graph
(:mod:`.network`) is built from it and the library reads those numbers from it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np


KNN_K = 5
"""The guard's kNN distance is to the 5th-nearest training row: one odd near-duplicate cannot vouch for an input."""
SERVED = ("probabilities", "label", "ood_score", "out_of_distribution")
"""What a network serves (the SavedModel's serving_default; `explain` adds `heatmap`)."""
COMPACT = ("knn_components", "knn_bank")
"""Stored as float16 (training rounds them so before it measures anything): the bank is thousands of rows."""


@dataclass(frozen=True)
class Head:
    """Trained parts: standardisation, calibrated linear classifier, decision rule, OOD statistics."""

    feature_mean: np.ndarray  # (D,)
    feature_scale: np.ndarray  # (D,)
    kernel: np.ndarray  # (D, C)
    bias: np.ndarray  # (C,) calibration's per-class bias folded in
    temperature: np.ndarray  # () softmax temperature fitted on out-of-fold logits
    decision_offsets: np.ndarray  # (C,) label = argmax(log probability + offset)
    ood_components: np.ndarray  # (K, D) principal axes of standardised training features
    ood_scale: np.ndarray  # (K,) their standard deviations
    ood_residual: np.ndarray  # () mean squared off-subspace residual on training features
    ood_threshold: np.ndarray  # () PCA score above which an input is out of distribution
    knn_components: np.ndarray  # (K, D) axes the kNN bank and inputs are projected on
    knn_bank: np.ndarray  # (M, K) training rows, projected and unit length
    knn_threshold: np.ndarray  # () distance to the 5th-nearest training row above which an input is out

    def save(self, path: Path) -> None:
        """Plain float arrays in an .npz, loadable without pickle; the kNN arrays as float16 (COMPACT)."""
        np.savez(path, **{f.name: np.asarray(getattr(self, f.name), np.float16 if f.name in COMPACT else np.float32)
                          for f in fields(self)})

    @classmethod
    def load(cls, path: Path) -> "Head":
        with np.load(path, allow_pickle=False) as arrays:
            missing = [f.name for f in fields(cls) if f.name not in arrays]
            if missing:
                raise ValueError(f"{path.name}: head arrays missing: {', '.join(missing)} "
                                 "(a package from an older version: retrain it with python -m training)")
            return cls(**{f.name: arrays[f.name].astype(np.float32) for f in fields(cls)})

    def as_float32(self) -> "Head":
        return Head(**{f.name: np.asarray(getattr(self, f.name), np.float32) for f in fields(self)})


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def head_outputs(features: np.ndarray, head: Head) -> dict[str, np.ndarray]:
    """:func:`..network.head_outputs` in NumPy, for runtimes without TensorFlow: the same float32 arithmetic,
    held to the graph's outputs by tests/test_onnx.py."""
    z = (features.astype(np.float32) - head.feature_mean) / head.feature_scale
    logits = z @ head.kernel + head.bias
    scaled = logits / head.temperature
    projected = z @ head.ood_components.T
    inside = np.mean(np.square(projected / head.ood_scale), axis=-1)
    residual = np.mean(np.square(z - projected @ head.ood_components), axis=-1)
    pca_score = 0.5 * (inside + residual / head.ood_residual)
    near = z @ head.knn_components.T
    near = near / np.maximum(np.linalg.norm(near, axis=-1, keepdims=True), 1e-12)
    k = min(KNN_K, head.knn_bank.shape[0])
    similarity = near @ head.knn_bank.T
    knn_distance = 1.0 - np.partition(similarity, similarity.shape[1] - k, axis=-1)[:, similarity.shape[1] - k]
    ood_score = np.maximum(pca_score, knn_distance * head.ood_threshold / head.knn_threshold).astype(np.float32)
    log_probabilities = _log_softmax(scaled)
    decision = log_probabilities + head.decision_offsets
    top2 = np.sort(decision, axis=-1)[:, -2:]
    return {
        "probabilities": np.exp(log_probabilities).astype(np.float32),
        "label": np.argmax(decision, axis=-1).astype(np.int32),
        "logits": logits,
        "margin": (top2[:, 1] - top2[:, 0]).astype(np.float32),
        "ood_score": ood_score,
        "out_of_distribution": ood_score > head.ood_threshold,
    }
