"""Patient-grouped, stratified, repeated K-fold cross-validation: how a model is measured and chosen.

One grouped split of ~870 slices from ~70 pseudo-patients swings by 0.15 macro-F1
between seeds, so nothing here rests on one split. Every slice is predicted by heads
that never saw its pseudo-patient, K folds at a time, R times over with reshuffled
folds. Everything fitted after the head (calibration, decision rule, OOD threshold) is
*cross-fitted*: for each fold it is fitted on the other folds' out-of-fold outputs and
applied to this fold, so every reported number is for a pipeline that never saw the
slices it is scored on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from lung_classifier.verdict import decide
from training import calibration, decision, evaluate, workers

K_FOLDS = 5
REPEATS = 5
INTERVAL = (2.5, 97.5)
"""Percentiles of the per-fold values (K x R of them) reported as the 95% interval."""


@dataclass(frozen=True)
class Fold:
    repeat: int
    train: np.ndarray  # indices
    test: np.ndarray  # indices


def grouped_folds(y: np.ndarray, groups: np.ndarray, k: int = K_FOLDS, repeats: int = REPEATS,
                  seed: int = 0, sources: np.ndarray | None = None) -> list[Fold]:
    """K folds of whole groups stratified by source x class, R times with a different shuffle each time."""
    from sklearn.model_selection import StratifiedGroupKFold

    strata = y if sources is None else np.array([f"{source}|{label}" for source, label in zip(sources, y)])
    folds = []
    for repeat in range(repeats):
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed + repeat)
        for train, test in splitter.split(np.zeros(len(y)), strata, groups):
            folds.append(Fold(repeat, train, test))
    return folds


@dataclass(frozen=True)
class OutOfFold:
    """Out-of-fold head outputs: each slice's logits and OOD scores from heads that never saw its group."""

    logits: np.ndarray  # (R, N, C)
    ood_scores: np.ndarray  # (R, N, 2): PCA score, kNN distance (training.fit.Guard)
    folds: list[Fold]


FitAndScore = Callable[[Fold], tuple[np.ndarray, np.ndarray]]
"""fold -> (logits, OOD scores) of its test slices, from a head fitted on its training slices."""


def out_of_fold(n: int, n_classes: int, folds: list[Fold], fit_and_score: FitAndScore) -> OutOfFold:
    repeats = max(fold.repeat for fold in folds) + 1
    logits = np.full((repeats, n, n_classes), np.nan, np.float64)
    scores = np.full((repeats, n, 2), np.nan, np.float64)
    for fold, (fold_logits, fold_scores) in zip(folds, workers.parallel_map(fit_and_score, folds)):
        logits[fold.repeat, fold.test], scores[fold.repeat, fold.test] = fold_logits, fold_scores
    if np.isnan(logits).any():
        raise ValueError("some slices were never in a test fold")
    return OutOfFold(logits, scores, folds)


@dataclass(frozen=True)
class Pipeline:
    """What is fitted on out-of-fold outputs, after the head: calibration, decision rule, OOD threshold."""

    calibration: calibration.Calibration
    offsets: np.ndarray  # (C,) log-probability offsets of the decision rule
    thresholds: tuple[float, float]  # PCA score, kNN distance

    def flagged(self, scores: np.ndarray) -> np.ndarray:
        """The guard: out of distribution where either score is above its threshold."""
        return (scores[..., 0] > self.thresholds[0]) | (scores[..., 1] > self.thresholds[1])


def fit_pipeline(logits: np.ndarray, ood_scores: np.ndarray, y: np.ndarray, malignant: int,
                 min_malignant_recall: float, sources: np.ndarray | None = None) -> Pipeline:
    """Calibration, decision rule and OOD thresholds from out-of-fold outputs (rows may span repeats)."""
    sources = np.zeros(len(y), np.int64) if sources is None else sources
    calibrated = calibration.fit(logits, y)
    offsets = decision.choose_offsets(calibrated.probabilities(logits), y, malignant, min_malignant_recall, sources)
    thresholds = tuple(max(float(np.quantile(ood_scores[sources == source, part], decision.OOD_QUANTILE))
                           for source in np.unique(sources)) for part in range(2))
    return Pipeline(calibrated, offsets, thresholds)


@dataclass(frozen=True)
class CrossFitted:
    """Each repeat's out-of-fold results through the whole pipeline, and the per-fold reports."""

    probabilities: np.ndarray  # (R, N, C) calibrated
    predicted: np.ndarray  # (R, N) label index by the decision rule
    flagged: np.ndarray  # (R, N) OOD flag
    reports: list[dict[str, Any]]  # one per fold

    def confusion(self, y: np.ndarray, n_classes: int) -> np.ndarray:
        """Summed over all folds and repeats: each slice counted once per repeat."""
        truth = np.broadcast_to(y, self.predicted.shape).ravel()
        return np.bincount(truth * n_classes + self.predicted.ravel(),
                           minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def cross_fit(oof: OutOfFold, y: np.ndarray, labels: list[str], malignant: int,
              min_malignant_recall: float, sources: np.ndarray | None = None) -> CrossFitted:
    """Score each fold with a pipeline fitted on the other folds' out-of-fold outputs."""
    shape = oof.logits.shape
    sources = np.zeros(len(y), np.int64) if sources is None else sources
    probabilities, predicted, flagged = np.zeros(shape), np.zeros(shape[:2], np.int64), np.zeros(shape[:2], bool)
    reports = []
    for fold in oof.folds:
        others = np.setdiff1d(np.arange(len(y)), fold.test)
        logits, scores = oof.logits[fold.repeat], oof.ood_scores[fold.repeat]
        pipeline = fit_pipeline(logits[others], scores[others], y[others], malignant, min_malignant_recall,
                                sources[others])
        p = pipeline.calibration.probabilities(logits[fold.test])
        labelled = decide(p, pipeline.offsets)
        probabilities[fold.repeat, fold.test], predicted[fold.repeat, fold.test] = p, labelled
        flagged[fold.repeat, fold.test] = pipeline.flagged(scores[fold.test])
        report = evaluate.report(p, y[fold.test], labels, predicted=labelled)
        report["ood_flag_rate"] = float(np.mean(flagged[fold.repeat, fold.test]))
        reports.append(report)
    return CrossFitted(probabilities, predicted, flagged, reports)


def summarise(reports: list[dict[str, Any]], labels: list[str]) -> dict[str, dict[str, float]]:
    """Mean and 95% interval over folds x repeats of every scalar metric."""
    values: dict[str, list[float]] = {}
    for report in reports:
        for name, value in scalar_metrics(report, labels).items():
            if value is not None and np.isfinite(value):
                values.setdefault(name, []).append(value)
    low, high = INTERVAL
    return {name: {"mean": float(np.mean(v)), "low": float(np.percentile(v, low)),
                   "high": float(np.percentile(v, high)), "folds": len(v)} for name, v in values.items()}


def scalar_metrics(report: dict[str, Any], labels: list[str]) -> dict[str, float | None]:
    metrics: dict[str, float | None] = {
        "accuracy": report["accuracy"], "macro_f1": report["macro_f1"], "loss": report["loss"], "ece": report["ece"]}
    for label in labels:
        metrics[f"recall_{label}"] = report["per_class"][label]["recall"] if report["per_class"][label]["support"] else None
        metrics[f"precision_{label}"] = report["per_class"][label]["precision"]
        metrics[f"auc_{label}"] = report["roc_auc"][label]
    if "ood_flag_rate" in report:
        metrics["ood_flag_rate"] = report["ood_flag_rate"]
    return metrics


def format_interval(summary: dict[str, dict[str, float]], name: str) -> str:
    entry = summary[name]
    return f"{entry['mean']:.3f} [{entry['low']:.3f}, {entry['high']:.3f}]"


def format_summary(summary: dict[str, dict[str, float]], confusion: np.ndarray, labels: list[str],
                   k: int, repeats: int, unit: str = "slice") -> str:
    """The CV table for the terminal and the model card."""
    rows = [("accuracy", "accuracy"), ("macro-F1", "macro_f1"), ("log loss", "loss"), ("ECE (15 bins)", "ece"),
            ("OOD flag rate (in-distribution)", "ood_flag_rate")]
    for label in labels:
        rows += [(f"{label} recall", f"recall_{label}"), (f"{label} precision", f"precision_{label}"),
                 (f"{label} ROC AUC (one-vs-rest)", f"auc_{label}")]
    lines = [f"{k}-fold patient-grouped stratified CV, repeated {repeats} times: mean and 95% interval "
             f"(2.5th-97.5th percentile) over the {k * repeats} folds",
             "", "| metric | mean [95% interval] |", "| --- | --- |"]
    lines += [f"| {title} | {format_interval(summary, name)} |" for title, name in rows if name in summary]
    lines += ["", f"Confusion matrix summed over the out-of-fold predictions of all {repeats} repeats "
              f"(each {unit} counted once per repeat; rows: true, columns: predicted):", "",
              "| true \\ predicted | " + " | ".join(labels) + " |", "| --- |" + " --- |" * len(labels)]
    lines += [f"| {label} | " + " | ".join(str(v) for v in row) + " |" for label, row in zip(labels, confusion)]
    return "\n".join(lines)
