"""Model selection by repeated grouped cross-validation: every candidate head gets the same folds.

The candidates differ in what the issue tracker and the dataset notes suggest could matter
(regularisation, class weighting, flip augmentation); each is scored through the whole
cross-fitted pipeline (calibration, Malignant-first decision rule, OOD threshold), and the
best mean macro-F1 wins. The comparison table goes into the model card.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

import numpy as np

from training import cv, fit

CANDIDATES = (*(fit.HeadSettings(c, balanced, False) for balanced, c in
                itertools.product((True, False), (0.01, 0.1, 1.0))),
              fit.HeadSettings(0.1, True, True))
"""Regularisation x class weighting, and flip augmentation (twice the rows, so tried once)."""


@dataclass(frozen=True)
class Result:
    settings: fit.HeadSettings
    oof: cv.OutOfFold
    crossfitted: cv.CrossFitted
    summary: dict[str, dict[str, float]]
    seconds_per_fit: float


def held_out_outputs(views: dict[str, np.ndarray], y: np.ndarray, n_classes: int, folds: list[cv.Fold],
                     candidates: tuple[fit.HeadSettings, ...]) -> tuple[dict, list[np.ndarray], dict]:
    """Each candidate's held-out logits per fold, each fold's held-out OOD scores, each candidate's seconds per fit
    (a fold's shared RowSpace not counted in it).

    A fold's plain training rows are standardised and factorised once (fit.RowSpace) for its
    OOD statistics and every candidate fitted on those rows; flip augmentation fits other rows.
    Each fit starts from the fold's fit with the same C and weighting, or else the last one.
    """
    logits: dict[fit.HeadSettings, list[np.ndarray]] = {settings: [] for settings in candidates}
    seconds = dict.fromkeys(candidates, 0.0)
    ood_scores = []
    for fold in folds:
        space = fit.RowSpace.of(views["plain"][fold.train])
        test = views["plain"][fold.test]
        ood_scores.append(fit.ood_statistics(space.z, space.gram).scores((test - space.mean) / space.scale))
        fitted: dict[tuple[float, bool], fit.LinearHead] = {}
        head = None
        for settings in candidates:
            started = time.perf_counter()
            rows, targets = fit.training_rows(views, y, fold.train, settings)
            head = fit.fit_linear(rows, targets, n_classes, settings, None if settings.flip_augment else space,
                                  start=fitted.get((settings.c, settings.balanced), head))
            fitted.setdefault((settings.c, settings.balanced), head)
            logits[settings].append(head.logits(test))
            seconds[settings] += time.perf_counter() - started
    return logits, ood_scores, {settings: total / len(folds) for settings, total in seconds.items()}


def compare(views: dict[str, np.ndarray], y: np.ndarray, labels: list[str], folds: list[cv.Fold],
            malignant: int, min_malignant_recall: float,
            candidates: tuple[fit.HeadSettings, ...] = CANDIDATES) -> list[Result]:
    """Every candidate on the same folds: out-of-fold logits, then the cross-fitted pipeline's metrics."""
    logits, ood_scores, seconds = held_out_outputs(views, y, len(labels), folds, candidates)
    results = []
    for settings in candidates:
        outputs = {id(fold): (fold_logits, scores)
                   for fold, fold_logits, scores in zip(folds, logits[settings], ood_scores)}
        oof = cv.out_of_fold(len(y), len(labels), folds, lambda fold, outputs=outputs: outputs[id(fold)])
        crossfitted = cv.cross_fit(oof, y, labels, malignant, min_malignant_recall)
        result = Result(settings, oof, crossfitted, cv.summarise(crossfitted.reports, labels), seconds[settings])
        print(f"   {settings.describe()}: macro-F1 {cv.format_interval(result.summary, 'macro_f1')}, "
              f"Malignant recall {cv.format_interval(result.summary, f'recall_{labels[malignant]}')}, "
              f"{result.seconds_per_fit:.2f} s per fit")
        results.append(result)
    return results


def best(results: list[Result]) -> Result:
    """Highest mean macro-F1 (the decision rule already holds Malignant recall for every candidate)."""
    return max(results, key=lambda result: result.summary["macro_f1"]["mean"])


def format_table(results: list[Result], chosen: Result, labels: list[str], malignant: int) -> str:
    lines = ["| head settings | macro-F1 | Malignant recall | Benign recall | ECE | fit (s) |",
             "| --- | --- | --- | --- | --- | --- |"]
    benign = [label for label in labels if label == "Benign"]
    for result in results:
        mark = " **(chosen)**" if result is chosen else ""
        benign_cell = cv.format_interval(result.summary, f"recall_{benign[0]}") if benign else "n/a"
        lines.append(f"| {result.settings.describe()}{mark} | {cv.format_interval(result.summary, 'macro_f1')} | "
                     f"{cv.format_interval(result.summary, f'recall_{labels[malignant]}')} | {benign_cell} | "
                     f"{cv.format_interval(result.summary, 'ece')} | {result.seconds_per_fit:.2f} |")
    return "\n".join(lines)
