"""The decision rule: which label a slice gets from its calibrated probabilities.

Missing a malignant slice is the one error this product must not make, so the label is
not the plain argmax: it is the argmax of log-probability plus a per-class offset,
chosen on out-of-fold predictions so that Malignant recall is at least a target (0.99),
and then macro-F1 is as high as it can be. The rule itself is lung_classifier.verdict.decide;
the offsets live in the package's head, and the model graph applies them, so the library,
the page, the API and TF Serving users get the same label.
"""

from __future__ import annotations

import numpy as np

from lung_classifier.verdict import decide
from training.evaluate import macro_f1_per_row

MIN_MALIGNANT_RECALL = 0.99
OOD_QUANTILE = 0.975
"""Flag inputs scoring above this quantile of out-of-fold scores: ~2.5% of in-distribution slices."""
OFFSET_GRID = np.round(np.arange(-2.0, 6.01, 0.25), 2)
"""Candidate log-probability offsets per non-reference class (the first class's offset is 0)."""


def choose_offsets(probabilities: np.ndarray, y: np.ndarray, malignant: int,
                   min_recall: float = MIN_MALIGNANT_RECALL) -> np.ndarray:
    """Offsets meeting the Malignant recall target with the best macro-F1 (ties: smallest offsets).

    Every combination of the grid is scored at once (one confusion matrix per combination);
    the first combination in grid order wins a tie, as a loop over the grid would pick it.
    """
    n_classes = probabilities.shape[1]
    grid = np.array(np.meshgrid(*[OFFSET_GRID] * (n_classes - 1))).reshape(n_classes - 1, -1).T
    offsets = np.concatenate([np.zeros((len(grid), 1)), grid], axis=1)  # (G, C)
    predicted = decide(probabilities[None, :, :], offsets[:, None, :])  # (G, N)
    positives = y == malignant
    recall = np.mean(predicted[:, positives] == malignant, axis=1) if positives.any() else np.ones(len(grid))
    f1 = macro_f1_per_row(y, predicted, n_classes)
    meets = recall >= min_recall
    if not meets.any():
        raise ValueError(f"no offsets in the grid reach Malignant recall {min_recall}")
    size = np.abs(offsets).sum(axis=1)
    best = max(np.flatnonzero(meets), key=lambda g: (f1[g], -size[g]))  # max keeps the first of equals
    return offsets[best]
