"""The decision rule: which label a slice gets from its calibrated probabilities.

Missing a malignant slice is the one error this product must not make, so the label is
not the plain argmax: it is the argmax of log-probability plus a per-class offset,
chosen on out-of-fold predictions so that Malignant recall is at least a target (0.99),
and then macro-F1 is as high as it can be. The offsets live in the package (config and
head), and the model graph applies them, so the library, the page, the API and TF
Serving users get the same label.
"""

from __future__ import annotations

import numpy as np

from training.evaluate import macro_f1

MIN_MALIGNANT_RECALL = 0.99
OOD_QUANTILE = 0.975
"""Flag inputs scoring above this quantile of out-of-fold scores: ~2.5% of in-distribution slices."""
OFFSET_GRID = np.round(np.arange(-2.0, 6.01, 0.25), 2)
"""Candidate log-probability offsets per non-reference class (the first class's offset is 0)."""


def apply(probabilities: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Label index per row: argmax of log(probability) + offset."""
    return np.argmax(np.log(np.clip(probabilities, 1e-12, 1.0)) + offsets, axis=1)


def choose_offsets(probabilities: np.ndarray, y: np.ndarray, malignant: int,
                   min_recall: float = MIN_MALIGNANT_RECALL) -> np.ndarray:
    """Offsets meeting the Malignant recall target with the best macro-F1 (ties: smallest offsets)."""
    n_classes = probabilities.shape[1]
    log_p = np.log(np.clip(probabilities, 1e-12, 1.0))
    positives = y == malignant
    best: tuple[float, float] | None = None
    chosen = np.zeros(n_classes)  # replaced by the first combination that meets the target
    for combination in np.array(np.meshgrid(*[OFFSET_GRID] * (n_classes - 1))).reshape(n_classes - 1, -1).T:
        offsets = np.concatenate([[0.0], combination])
        predicted = np.argmax(log_p + offsets, axis=1)
        recall = float(np.mean(predicted[positives] == malignant)) if positives.any() else 1.0
        if recall < min_recall:
            continue
        key = (macro_f1(y, predicted, n_classes), -float(np.abs(offsets).sum()))
        if best is None or key > best:
            best, chosen = key, offsets
    if best is None:
        raise ValueError(f"no offsets in the grid reach Malignant recall {min_recall}")
    return chosen
