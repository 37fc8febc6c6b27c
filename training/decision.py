"""Operating points: each source's calibration and rule-out threshold, and the scan rule's offsets.

A slice's label is its most probable class (so it agrees with the bars); the safety the
Malignant-first offsets used to buy lives in a separate screening answer: "malignancy not
ruled out" whenever P(Malignant) is at or above the recognised source's rule-out threshold,
chosen on pooled out-of-fold probabilities so that RULE_OUT_RECALL of the source's cancers
reach it (grouped cross-fitting then measures the recall a new patient gets: a source's
cancers count as validated when it is at least SCREENING_RECALL). Each source's
probabilities are its own calibration of the model's (unweighted likelihood on its
out-of-fold outputs: measured on two repeats, weighting its classes equally instead raised
Chest CT-Scan normals called Normal from 0.78 to 0.86 but cut IQ-OTH/NCCD's from 0.72 to
0.45 and lowered both sources' macro-F1). The scan rule still chooses Malignant-first offsets
(:func:`choose_offsets`) for its pooled evidence.

The scan rule's offsets: argmax of log-probability plus a per-class offset, chosen on
out-of-fold scans so that Malignant recall is at least MIN_MALIGNANT_RECALL, then the best
mean over sources of balanced accuracy (macro-F1 barely notices normals called Malignant in
a source with ten cancers per normal).
"""

from __future__ import annotations

import numpy as np

from lung_classifier.verdict import decide
from training import calibration


def balanced_accuracy_per_row(y: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Mean recall over the classes present in y, for each row of predicted (G, N)."""
    return np.mean([np.mean(predicted[:, y == label] == label, axis=1) for label in np.unique(y)], axis=0)

RULE_OUT_RECALL = 0.995
"""A source's rule-out threshold lets at least this share of its cancers through, pooled out of fold. A target
lands below itself on held-out patients (measured, IQ-OTH/NCCD cross-fitted: 0.978 when chosen at 0.98; 0.985 at
0.99 on two repeats, and under 0.98 on five; 0.990 at 0.995), so 0.995 is what clears SCREENING_RECALL."""
SCREENING_RECALL = 0.98
"""A source's cancers count as validated when the cross-fitted screening answer catches at least this share
of them: only then may an input like it be answered "Normal (no cancer finding)"."""


def source_calibration(log_probabilities: np.ndarray, y: np.ndarray) -> calibration.Calibration:
    """A temperature and class biases on the model's log-probabilities of the source's classes, by the source's
    own unweighted likelihood (one class only: the identity)."""
    if len(np.unique(y)) < 2:
        return calibration.Calibration(1.0, np.zeros(log_probabilities.shape[1]))
    return calibration.fit(log_probabilities, y)


RULE_OUT_CAP = 0.5
"""A rule-out threshold is never above this: a slice the model finds at least as likely malignant as not is never
ruled out (where a source's cancers all sit near P = 1, the quantile alone would rule out a new one at 0.999)."""


def rule_out_threshold(malignant_probabilities: np.ndarray, recall: float = RULE_OUT_RECALL) -> float:
    """The highest threshold (at most RULE_OUT_CAP) that at least ``recall`` of these cancers' P(Malignant) reach."""
    ordered = np.sort(np.asarray(malignant_probabilities, np.float64))
    return min(float(ordered[int(np.floor((1.0 - recall) * len(ordered)))]), RULE_OUT_CAP)


MIN_MALIGNANT_RECALL = 0.99
"""Chosen at 0.98, the offsets landed at 0.969 pooled out of fold on IQ-OTH/NCCD (measured, three sources):
a grid target lands ~0.01 below itself on held-out patients, so 0.99 is what clears 0.98."""
OOD_QUANTILE = 0.975
"""Each guard threshold: the highest over training sources of this quantile of the source's out-of-fold
scores, so at most ~2.5% of any training source's slices are flagged by either part."""
OFFSET_GRID = np.round(np.arange(-2.0, 6.01, 0.25), 2)
"""Candidate log-probability offsets per non-reference class (the first class's offset is 0)."""


def choose_offsets(probabilities: np.ndarray, y: np.ndarray, malignant: int,
                   min_recall: float = MIN_MALIGNANT_RECALL, sources: np.ndarray | None = None) -> np.ndarray:
    """Offsets meeting the Malignant recall target in every source with the best mean balanced accuracy
    over sources (ties: smallest).

    Every combination of the grid is scored at once (one confusion matrix per combination);
    the first combination in grid order wins a tie, as a loop over the grid would pick it.
    """
    n_classes = probabilities.shape[1]
    sources = np.zeros(len(y), np.int64) if sources is None else np.asarray(sources)
    grid = np.array(np.meshgrid(*[OFFSET_GRID] * (n_classes - 1))).reshape(n_classes - 1, -1).T
    offsets = np.concatenate([np.zeros((len(grid), 1)), grid], axis=1)  # (G, C)
    predicted = decide(probabilities[None, :, :], offsets[:, None, :])  # (G, N)
    meets = np.ones(len(grid), bool)
    score = np.zeros(len(grid))
    names = np.unique(sources)
    for source in names:
        rows = sources == source
        positives = rows & (y == malignant)
        if positives.any():
            meets &= np.mean(predicted[:, positives] == malignant, axis=1) >= min_recall
        score += balanced_accuracy_per_row(y[rows], predicted[:, rows]) / len(names)
    if not meets.any():
        raise ValueError(f"no offsets in the grid reach Malignant recall {min_recall} in every source")
    size = np.abs(offsets).sum(axis=1)
    best = max(np.flatnonzero(meets), key=lambda g: (score[g], -size[g]))  # max keeps the first of equals
    return offsets[best]
