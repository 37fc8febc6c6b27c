"""Scan-level cross-validation: which pooling rule turns slice answers into the best scan answer.

The pseudo-patients and DICOM series stand in for scans (a near-duplicate group of an image
source is not a scan, so such sources are left out here). Each slice's calibrated, cross-fitted
out-of-fold probabilities (from heads that never saw its scan) are pooled per scan by
every candidate rule; each rule's scan-level temperature, bias and decision offsets
are cross-fitted on the other folds' scans, exactly as the slice pipeline is, and the
held-out scans are labelled by :meth:`ScanRule.label`, the confident-malignant
guarantee included. The rule with the best mean macro-F1 among those that never call
a malignant scan Normal is shipped, refitted on all scans of all repeats.

Slices flagged by the guard or not recognised as their source are
left out of their scan's pooling, as the library does; a scan with more than half its
slices flagged gets no verdict and is counted in the scan flag rate instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from lung_classifier.scan.aggregation import MALIGNANT, ScanRule
from training import calibration, cv, decision, evaluate
from training.multisource import TrainingSet

CONFIDENT_MIN, CONFIDENT_MAX, CONFIDENT_STEP = 0.5, 0.9, 0.05
"""Range and grid of the confidently-malignant threshold: never below an even chance, never above 0.9."""
CANDIDATES = (("max", 1), ("top_k_mean", 2), ("top_k_mean", 3), ("top_k_mean", 5), ("noisy_or", 1),
              ("mean_logit", 1))
"""(pool, k) pairs compared; k matters only for top_k_mean."""


SCAN_GROUPINGS = ("pseudo-patients", "series")


def scan_rows(training: TrainingSet) -> np.ndarray:
    """Row indices of slices whose groups are scans, as the product sees them (DICOM at the package window)."""
    scan_like = np.array([entry.dicom or entry.source.grouping in SCAN_GROUPINGS for entry in training.sources])
    return np.flatnonzero(scan_like[training.source] & training.answered_rendering())


def restrict(crossfitted: cv.CrossFitted, folds: list[cv.Fold], rows: np.ndarray,
             unrecognised: np.ndarray) -> tuple[cv.CrossFitted, list[cv.Fold]]:
    """The cross-fitted outputs and folds of these rows only, flagged by the guard and recognition. Whether a
    source's cancers were validated is left out: it gates the product's answers, not which pooling rule reads
    slice probabilities best (and a source without cancer, COVID-CT-MD, would leave no scan to compare)."""
    flagged = crossfitted.flagged[:, rows] | unrecognised[:, rows]
    position = np.full(crossfitted.flagged.shape[1], -1)
    position[rows] = np.arange(len(rows))
    subset_folds = [cv.Fold(fold.repeat, position[np.intersect1d(fold.train, rows)],
                            position[np.intersect1d(fold.test, rows)]) for fold in folds]
    return (cv.CrossFitted(crossfitted.probabilities[:, rows], crossfitted.predicted[:, rows], flagged,
                           crossfitted.ruled_out[:, rows] & ~flagged, crossfitted.reports), subset_folds)


@dataclass(frozen=True)
class Scans:
    """One repeat's scans: pooled evidence, truth, and which slices each holds."""

    evidence: np.ndarray  # (S, C)
    y: np.ndarray  # (S,)
    flagged: np.ndarray  # (S,) no verdict: most slices out of distribution
    members: list[np.ndarray]  # slice indices of each scan (in-distribution ones only)
    groups: np.ndarray  # (S,) group id of each scan
    top_malignant: np.ndarray  # (S,) highest P(Malignant) of the scan's in-distribution slices (0 if none)


def pool_scans(rule: ScanRule, probabilities: np.ndarray, flagged: np.ndarray, y: np.ndarray,
               groups: np.ndarray) -> Scans:
    """Pool one repeat's slice probabilities (N, C) per scan; a scan's label is its slices' label."""
    ids = np.unique(groups)
    malignant = rule.labels.index(MALIGNANT)
    evidence, truth, scan_flags, members, top = [], [], [], [], []
    for group in ids:
        index = np.flatnonzero(groups == group)
        if len(set(y[index].tolist())) != 1:
            raise ValueError(f"pseudo-patient {group} holds slices of several classes: not a scan")
        inside = index[~flagged[index]]
        scan_flags.append(rule.flagged(flagged[index]))
        members.append(inside)
        evidence.append(rule.evidence(probabilities[inside]) if len(inside) else np.zeros(probabilities.shape[1]))
        truth.append(int(y[index[0]]))
        top.append(float(probabilities[inside, malignant].max()) if len(inside) else 0.0)
    return Scans(np.array(evidence), np.array(truth), np.array(scan_flags), members, ids, np.array(top))


def fit_rule(rule: ScanRule, scans: list[Scans], malignant: int) -> ScanRule:
    """Temperature and bias by unweighted NLL, Malignant-first offsets, and the guarantee's threshold."""
    evidence = np.concatenate([s.evidence[~s.flagged] for s in scans])
    y = np.concatenate([s.y[~s.flagged] for s in scans])
    fitted = calibration.fit(evidence, y)
    offsets = decision.choose_offsets(fitted.probabilities(evidence), y, malignant, decision.MIN_MALIGNANT_RECALL)
    return ScanRule(rule.labels, rule.pool, rule.k, fitted.temperature, fitted.bias, offsets,
                    confident_threshold([s.top_malignant[(s.y == malignant) & ~s.flagged] for s in scans]),
                    rule.max_flagged_fraction)


def confident_threshold(top_malignant: list[np.ndarray]) -> float:
    """The highest grid threshold one step below every malignant scan's most malignant slice, in [0.5, 0.9].

    "Confidently malignant" is then a P(Malignant) that no malignant development scan fell short
    of, with a margin; cross-fitting measures how often a new malignant scan falls short anyway.
    """
    lowest = float(np.concatenate(top_malignant).min()) if sum(map(len, top_malignant)) else CONFIDENT_MAX
    stepped = np.floor(round((lowest - CONFIDENT_STEP) / CONFIDENT_STEP, 6)) * CONFIDENT_STEP
    return round(float(np.clip(stepped, CONFIDENT_MIN, CONFIDENT_MAX)), 2)


@dataclass(frozen=True)
class RuleResult:
    rule: ScanRule  # refitted on all scans
    summary: dict[str, dict[str, float]]  # cv.summarise over folds
    confusion: np.ndarray  # (C, C) summed over folds and repeats (flagged scans left out)
    malignant_called_normal: int  # over all folds and repeats
    flag_rate: float

    def as_dict(self, labels: list[str]) -> dict[str, Any]:
        return {"rule": self.rule.describe(), "pool": self.rule.pool, "k": self.rule.k,
                "malignant_scans_called_normal": self.malignant_called_normal,
                "scan_flag_rate": self.flag_rate, "cv": self.summary,
                "confusion_matrix": self.confusion.tolist()}


def evaluate_rule(rule: ScanRule, crossfitted: cv.CrossFitted, y: np.ndarray, groups: np.ndarray,
                  folds: list[cv.Fold], labels: list[str], malignant: int) -> RuleResult:
    """Cross-fitted scan-level CV of one rule over the slice CV's own folds (whole scans per fold)."""
    repeats = crossfitted.probabilities.shape[0]
    per_repeat = [pool_scans(rule, crossfitted.probabilities[r], crossfitted.flagged[r], y, groups)
                  for r in range(repeats)]
    n_classes = len(labels)
    confusion = np.zeros((n_classes, n_classes), np.int64)
    reports, flags = [], []
    for fold in folds:
        scans = per_repeat[fold.repeat]
        test = np.isin(scans.groups, np.unique(groups[fold.test]))
        train_scans = _subset(scans, ~test)
        fitted = fit_rule(rule, [train_scans], malignant)
        flags.extend(scans.flagged[test].tolist())
        keep = np.flatnonzero(test & ~scans.flagged)
        p = fitted.probabilities(scans.evidence[keep])
        predicted = np.array([fitted.label(p[i], crossfitted.probabilities[fold.repeat][scans.members[s]])
                              for i, s in enumerate(keep)], np.int64)
        truth = scans.y[keep]
        np.add.at(confusion, (truth, predicted), 1)
        reports.append(evaluate.report(p, truth, labels, predicted=predicted))
    normal = labels.index("Normal")
    return RuleResult(fit_rule(rule, per_repeat, malignant), cv.summarise(reports, labels), confusion,
                      int(confusion[malignant, normal]), float(np.mean(flags)))


def _subset(scans: Scans, keep: np.ndarray) -> Scans:
    return Scans(scans.evidence[keep], scans.y[keep], scans.flagged[keep],
                 [m for m, k in zip(scans.members, keep) if k], scans.groups[keep], scans.top_malignant[keep])


def compare(crossfitted: cv.CrossFitted, y: np.ndarray, groups: np.ndarray, folds: list[cv.Fold],
            labels: list[str]) -> list[RuleResult]:
    """Every candidate rule on the same folds (single-threaded BLAS: tiny problems, see training.fit)."""
    from threadpoolctl import threadpool_limits

    malignant = labels.index(MALIGNANT)
    with threadpool_limits(1, "blas"):
        return [evaluate_rule(ScanRule(tuple(labels), pool, k), crossfitted, y, groups, folds, labels, malignant)
                for pool, k in CANDIDATES]


def best(results: list[RuleResult]) -> RuleResult:
    """Highest mean macro-F1 among rules that never called a malignant scan Normal (first wins ties)."""
    safe = [r for r in results if r.malignant_called_normal == 0] or results
    return max(safe, key=lambda r: (r.summary["macro_f1"]["mean"], -results.index(r)))


def format_table(results: list[RuleResult], chosen: RuleResult) -> str:
    lines = ["   rule            macro-F1 [95% interval]   accuracy   Malignant recall   malignant->Normal   flagged"]
    for r in results:
        mark = "*" if r is chosen else " "
        lines.append(f"  {mark}{r.rule.describe():<15} {cv.format_interval(r.summary, 'macro_f1'):<25} "
                     f"{r.summary['accuracy']['mean']:.3f}      {r.summary['recall_Malignant']['mean']:.3f}"
                     f"              {r.malignant_called_normal:<19} {r.flag_rate:.1%}")
    return "\n".join(lines)


def format_markdown(results: list[RuleResult], chosen: RuleResult) -> str:
    """The comparison for the model card."""
    header = "| rule | macro-F1 [95% interval] | accuracy | Malignant recall | malignant scans called Normal | scans flagged |"
    lines = [header, "| --- | --- | --- | --- | --- | --- |"]
    for r in results:
        name = f"**{r.rule.describe()}** (shipped)" if r is chosen else r.rule.describe()
        lines.append(f"| {name} | {cv.format_interval(r.summary, 'macro_f1')} | "
                     f"{cv.format_interval(r.summary, 'accuracy')} | {cv.format_interval(r.summary, 'recall_Malignant')} "
                     f"| {r.malignant_called_normal} | {r.flag_rate:.1%} |")
    return "\n".join(lines)
