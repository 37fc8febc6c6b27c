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
