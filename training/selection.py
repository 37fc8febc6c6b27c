"""Model selection by repeated grouped cross-validation: every candidate head gets the same folds.

The candidates differ in what the issue tracker and the dataset notes suggest could matter
(regularisation, how rows of several sources are weighted); each is scored through the whole
cross-fitted pipeline (calibration, each source's operating point, OOD thresholds), and the
best mean over sources of balanced accuracy (pooled out of fold) wins: pooled macro-F1 would
let the source with most rows (ten renderings per DICOM slice) choose. The comparison table
goes into the model card.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

import numpy as np

from training import cv, fit, workers
from training.decision import balanced_accuracy_per_row

CANDIDATES = tuple(fit.HeadSettings(c, weighting) for weighting, c in
                   itertools.product(("source-balanced", "class-balanced"), (0.1,)))
"""Row weighting at C=0.1. Other C values and a flip-augmented view were compared on IQ-OTH/NCCD alone
(model 2.x: C=0.1 won; flips did not help); each candidate costs ~25 fits of ~3000 x 3584 rows on 2 cores."""


@dataclass(frozen=True)
class Result:
    settings: fit.HeadSettings
    oof: cv.OutOfFold
    crossfitted: cv.CrossFitted
    summary: dict[str, dict[str, float]]
    seconds_per_fit: float
    source_score: float  # mean over sources of balanced accuracy, pooled out of fold


def ood_scores_per_fold(features: np.ndarray, folds: list[cv.Fold]) -> list[np.ndarray]:
    """Each fold's held-out OOD scores (N_test, 2), from its training slices (the same for every candidate)."""
    def scores(fold: cv.Fold) -> np.ndarray:
        mean, scale = fit.standardisation(features[fold.train])
        guard = fit.guard_statistics((features[fold.train] - mean) / scale)
        return guard.scores((features[fold.test] - mean) / scale)

    return workers.parallel_map(scores, folds)


def evaluate_candidate(settings: fit.HeadSettings, features: np.ndarray, y: np.ndarray, sources: np.ndarray,
                       labels: list[str], folds: list[cv.Fold], ood_scores: list[np.ndarray], malignant: int,
                       rule_out_recall: float) -> Result:
    """Out-of-fold logits of heads with these settings, then the cross-fitted pipeline's metrics."""
    scores_of = {id(fold): scores for fold, scores in zip(folds, ood_scores)}
    fit_seconds: list[float] = []

    def fit_and_score(fold: cv.Fold) -> tuple[np.ndarray, np.ndarray]:
        started = time.perf_counter()
        head = fit.fit_linear(features[fold.train], y[fold.train], len(labels), settings, sources[fold.train])
        fit_seconds.append(time.perf_counter() - started)
        return head.logits(features[fold.test]), scores_of[id(fold)]

    oof = cv.out_of_fold(len(y), len(labels), folds, fit_and_score)
    seconds = float(np.mean(fit_seconds))
    crossfitted = cv.cross_fit(oof, y, labels, malignant, rule_out_recall, sources)
    truth = np.broadcast_to(y, crossfitted.predicted.shape)
    in_source = np.broadcast_to(sources, crossfitted.predicted.shape)
    score = float(np.mean([balanced_accuracy_per_row(truth[in_source == s],
                                                     crossfitted.predicted[None, in_source == s])[0]
                           for s in np.unique(sources)]))
    return Result(settings, oof, crossfitted, cv.summarise(crossfitted.reports, labels), seconds, score)


def compare(features: np.ndarray, y: np.ndarray, sources: np.ndarray, labels: list[str], folds: list[cv.Fold],
            malignant: int, rule_out_recall: float,
            candidates: tuple[fit.HeadSettings, ...] = CANDIDATES) -> list[Result]:
    ood_scores = ood_scores_per_fold(features, folds)
    results = []
    for settings in candidates:
        result = evaluate_candidate(settings, features, y, sources, labels, folds, ood_scores, malignant,
                                    rule_out_recall)
        print(f"   {settings.describe()}: mean balanced accuracy over sources {result.source_score:.3f}, "
              f"macro-F1 {cv.format_interval(result.summary, 'macro_f1')}, "
              f"Malignant recall {cv.format_interval(result.summary, f'recall_{labels[malignant]}')}")
        results.append(result)
    return results


def best(results: list[Result]) -> Result:
    """Highest mean balanced accuracy over sources (the screening answer holds Malignant recall)."""
    return max(results, key=lambda result: result.source_score)


def format_table(results: list[Result], chosen: Result, labels: list[str], malignant: int) -> str:
    lines = ["| head settings | mean balanced accuracy over sources (pooled) | macro-F1 | Malignant recall "
             "| Benign recall | ECE | s per fit (one per core at a time) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    benign = [label for label in labels if label == "Benign"]
    for result in results:
        mark = " **(chosen)**" if result is chosen else ""
        benign_cell = cv.format_interval(result.summary, f"recall_{benign[0]}") if benign else "n/a"
        lines.append(f"| {result.settings.describe()}{mark} | {result.source_score:.3f} | "
                     f"{cv.format_interval(result.summary, 'macro_f1')} | "
                     f"{cv.format_interval(result.summary, f'recall_{labels[malignant]}')} | {benign_cell} | "
                     f"{cv.format_interval(result.summary, 'ece')} | {result.seconds_per_fit:.2f} |")
    return "\n".join(lines)
