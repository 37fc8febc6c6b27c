"""Patient-grouped, stratified, repeated K-fold cross-validation: how a model is measured and chosen.

One grouped split of ~870 slices from ~70 pseudo-patients swings by 0.15 macro-F1
between seeds, so nothing here rests on one split. Every slice is predicted by heads
that never saw its pseudo-patient, K folds at a time, R times over with reshuffled
folds. Everything fitted after the head (calibration, each source's operating point, OOD
threshold) is *cross-fitted*: for each fold it is fitted on the other folds' out-of-fold outputs and
applied to this fold, so every reported number is for a pipeline that never saw the
slices it is scored on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

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
class SourcePoint:
    """One source's operating point: its calibration of the model's probabilities and its rule-out threshold."""

    calibration: calibration.Calibration  # on log-probabilities of the classes the source has
    classes: np.ndarray  # (C,) bool: the classes the source has (the others get ABSENT_BIAS)
    rule_out: float  # P(Malignant) below this rules malignancy out (0: never, a source without cancer)

    def bias(self) -> np.ndarray:
        """(C,) the bias over every class: ABSENT_BIAS for a class the source never showed."""
        full = np.full(len(self.classes), ABSENT_BIAS)
        full[self.classes] = self.calibration.bias
        return full


ABSENT_BIAS = -30.0
"""A class a source never showed gets this bias in its calibration: never the label of an input like it."""


@dataclass(frozen=True)
class Pipeline:
    """What is fitted on out-of-fold outputs, after the head: the global calibration (the graph's
    probabilities), each source's operating point, and the OOD thresholds."""

    calibration: calibration.Calibration
    points: dict[int, SourcePoint]  # source index -> its operating point
    thresholds: tuple[float, float]  # PCA score, kNN distance

    def flagged(self, scores: np.ndarray) -> np.ndarray:
        """The guard: out of distribution where either score is above its threshold."""
        return (scores[..., 0] > self.thresholds[0]) | (scores[..., 1] > self.thresholds[1])

    def probabilities(self, logits: np.ndarray, sources: np.ndarray) -> np.ndarray:
        """Each row's probabilities as its source calibrates them (lung_classifier.evidence.SourceEvidence)."""
        from lung_classifier.evidence import SourceEvidence

        model = self.calibration.probabilities(logits)
        out = np.empty_like(model)
        for source in np.unique(sources):
            rows = sources == source
            point = self.points[int(source)]
            out[rows] = SourceEvidence.calibrated_with(model[rows], point.calibration.temperature, point.bias())
        return out

    def ruled_out(self, probabilities: np.ndarray, sources: np.ndarray, malignant: int) -> np.ndarray:
        """The screening answer per row: P(Malignant) below its source's rule-out threshold."""
        limits = np.array([self.points[int(source)].rule_out for source in sources])
        return probabilities[:, malignant] < limits


def fit_pipeline(logits: np.ndarray, ood_scores: np.ndarray, y: np.ndarray, malignant: int,
                 rule_out_recall: float, sources: np.ndarray | None = None) -> Pipeline:
    """Global calibration, each source's calibration and rule-out threshold, and the OOD thresholds, from
    out-of-fold outputs (rows may span repeats)."""
    sources = np.zeros(len(y), np.int64) if sources is None else sources
    calibrated = calibration.fit(logits, y)
    model = calibrated.probabilities(logits)
    points = {int(source): source_point(model[sources == source], y[sources == source], malignant, rule_out_recall)
              for source in np.unique(sources)}
    thresholds = tuple(max(float(np.quantile(ood_scores[sources == source, part], decision.OOD_QUANTILE))
                           for source in np.unique(sources)) for part in range(2))
    return Pipeline(calibrated, points, thresholds)


def source_point(model: np.ndarray, y: np.ndarray, malignant: int, rule_out_recall: float) -> SourcePoint:
    """A source's calibration (decision.source_calibration) and rule-out threshold (decision.rule_out_threshold)."""
    classes = np.isin(np.arange(model.shape[1]), y)
    fitted = decision.source_calibration(np.log(np.clip(model[:, classes], 1e-12, 1.0)),
                                         np.searchsorted(np.flatnonzero(classes), y))
    point = SourcePoint(fitted, classes, 0.0)
    if not (y == malignant).any():
        return point
    from lung_classifier.evidence import SourceEvidence

    shown = SourceEvidence.calibrated_with(model, fitted.temperature, point.bias())
    return SourcePoint(fitted, classes, decision.rule_out_threshold(shown[y == malignant, malignant], rule_out_recall))


@dataclass(frozen=True)
class CrossFitted:
    """Each repeat's out-of-fold results through the whole pipeline, and the per-fold reports."""

    probabilities: np.ndarray  # (R, N, C) as each row's source calibrates them
    predicted: np.ndarray  # (R, N) label index: the most probable class
    flagged: np.ndarray  # (R, N) OOD flag
    ruled_out: np.ndarray  # (R, N) the screening answer: malignancy ruled out
    reports: list[dict[str, Any]]  # one per fold

    def confusion(self, y: np.ndarray, n_classes: int) -> np.ndarray:
        """Summed over all folds and repeats: each slice counted once per repeat."""
        truth = np.broadcast_to(y, self.predicted.shape).ravel()
        return np.bincount(truth * n_classes + self.predicted.ravel(),
                           minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def cross_fit(oof: OutOfFold, y: np.ndarray, labels: list[str], malignant: int,
              rule_out_recall: float, sources: np.ndarray | None = None) -> CrossFitted:
    """Score each fold with a pipeline fitted on the other folds' out-of-fold outputs."""
    shape = oof.logits.shape
    sources = np.zeros(len(y), np.int64) if sources is None else sources
    probabilities, predicted, flagged = np.zeros(shape), np.zeros(shape[:2], np.int64), np.zeros(shape[:2], bool)
    ruled_out = np.zeros(shape[:2], bool)
    reports = []
    for fold in oof.folds:
        others = np.setdiff1d(np.arange(len(y)), fold.test)
        logits, scores = oof.logits[fold.repeat], oof.ood_scores[fold.repeat]
        pipeline = fit_pipeline(logits[others], scores[others], y[others], malignant, rule_out_recall,
                                sources[others])
        p = pipeline.probabilities(logits[fold.test], sources[fold.test])
        labelled = p.argmax(axis=1)
        probabilities[fold.repeat, fold.test], predicted[fold.repeat, fold.test] = p, labelled
        flagged[fold.repeat, fold.test] = pipeline.flagged(scores[fold.test])
        ruled_out[fold.repeat, fold.test] = pipeline.ruled_out(p, sources[fold.test], malignant)
        report = evaluate.report(p, y[fold.test], labels, predicted=labelled)
        report["ood_flag_rate"] = float(np.mean(flagged[fold.repeat, fold.test]))
        reports.append(report)
    return CrossFitted(probabilities, predicted, flagged, ruled_out, reports)


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
