"""Evaluation a sceptic trusts: per source within grouped CV, leave-one-source-out, each source's trade curve.

Every figure is for slices as the product answers them: image files as they are, DICOM at
the package window, a slice "answered" when the feature guard passes, its source's recogniser
recognises it and the source's cancers were validated (lung_classifier.verdict.answer). Pooled figures count every out-of-fold prediction of
every repeat; per-fold means come with the 2.5-97.5 percentile interval over folds. A fold
holds only a few benign pseudo-patients, so the two disagree and both are shown.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lung_classifier.evidence import Recogniser
from lung_classifier.scan.aggregation import ScanRule, scan_answer
from training import cv, fit, recognition
from training.cv import Fold
from training.decision import RULE_OUT_RECALL, SCREENING_RECALL
from training.multisource import TrainingSet

METRICS = (("answered", "answered (not flagged)"), ("macro_f1", "label macro-F1"),
           ("recall_Malignant", "label: Malignant recall"), ("recall_Normal", "label: normals called Normal"),
           ("screening_sensitivity", "cancers not ruled out (screening sensitivity)"),
           ("screening_specificity", "normals ruled out (screening specificity)"),
           ("cancers_reassured", "cancers answered Normal and ruled out"),
           ("noncancer_Malignant_unflagged", "non-cancer called Malignant without a flag"),
           ("guard_flagged", "flagged by the feature guard"), ("recognition_flagged", "not recognised as its source"))


def validated_sources(training: TrainingSet, crossfitted: cv.CrossFitted) -> np.ndarray:
    """(S,) whether each source's cancers were validated: it has Malignant slices, and the cross-fitted screening
    answer leaves at least SCREENING_RECALL of them not ruled out (pooled over repeats, slices as answered)."""
    malignant = training.labels.index("Malignant")
    out = np.zeros(len(training.sources), bool)
    for index in range(len(training.sources)):
        rows = (training.source == index) & training.answered_rendering() & (training.y == malignant)
        out[index] = bool(rows.any()) and float(np.mean(~crossfitted.ruled_out[:, rows])) >= SCREENING_RECALL
    return out


def product_flags(training: TrainingSet, rows: np.ndarray, guard: np.ndarray, unrecognised: np.ndarray,
                  validated: np.ndarray) -> np.ndarray:
    """No diagnosis, as lung_classifier.verdict.answer gives it: the feature guard, a slice its source's recogniser
    does not recognise, or a slice of a source whose cancers were not validated."""
    return guard | unrecognised | ~validated[training.source[rows]]


def slice_metrics(y: np.ndarray, labels: np.ndarray, flagged: np.ndarray, ruled_out: np.ndarray, guard: np.ndarray,
                  unrecognised: np.ndarray, names: list[str]) -> dict[str, float]:
    """METRICS of one set of slices (NaN where a figure has no slices to count). ``ruled_out`` counts only where the
    slice is answered (a flagged slice never rules malignancy out)."""
    from sklearn.metrics import f1_score

    malignant, normal = names.index("Malignant"), names.index("Normal")
    answered = ~flagged
    ruled = ruled_out & answered

    def share(mask: np.ndarray, of: np.ndarray) -> float:
        return float(np.mean(mask[of])) if of.any() else float("nan")

    present = sorted(set(y.tolist()))
    return {"n": int(len(y)), "answered": float(np.mean(answered)),
            "macro_f1": float(f1_score(y, labels, labels=present, average="macro", zero_division=0))
            if len(present) > 1 else float("nan"),
            "recall_Malignant": share(labels == malignant, y == malignant),
            "recall_Normal": share(labels == normal, y == normal),
            "screening_sensitivity": share(~ruled, y == malignant),
            "screening_specificity": share(ruled, y == normal),
            "cancers_reassured": share(ruled & (labels == normal), y == malignant),
            "noncancer_Malignant_unflagged": share((labels == malignant) & answered, y == normal),
            "guard_flagged": float(np.mean(guard)), "recognition_flagged": float(np.mean(unrecognised))}


def within(training: TrainingSet, crossfitted: cv.CrossFitted, oof: cv.OutOfFold, unrecognised: np.ndarray,
           validated: np.ndarray) -> dict[str, dict[str, Any]]:
    """Per source, slices as the product answers them (``unrecognised``: recognition.Recognition.held_out_flagged)."""
    guard = crossfitted.flagged
    everything = np.arange(len(training.y))
    flags = np.stack([product_flags(training, everything, guard[r], unrecognised[r], validated)
                      for r in range(guard.shape[0])])
    out = {}
    for index, name in enumerate(training.names):
        rows = (training.source == index) & training.answered_rendering()
        repeats = crossfitted.predicted.shape[0]
        pooled = slice_metrics(np.tile(training.y[rows], repeats), crossfitted.predicted[:, rows].ravel(),
                               flags[:, rows].ravel(), crossfitted.ruled_out[:, rows].ravel(),
                               guard[:, rows].ravel(), unrecognised[:, rows].ravel(), training.labels)
        per_fold: dict[str, list[float]] = {}
        for fold in oof.folds:
            test = np.intersect1d(fold.test, np.flatnonzero(rows))
            if not len(test):
                continue
            r = fold.repeat
            values = slice_metrics(training.y[test], crossfitted.predicted[r, test], flags[r, test],
                                   crossfitted.ruled_out[r, test], guard[r, test], unrecognised[r, test],
                                   training.labels)
            for key, value in values.items():
                if key != "n" and np.isfinite(value):
                    per_fold.setdefault(key, []).append(value)
        out[name] = {"validated": bool(validated[index]), "pooled": pooled,
                     "folds": {key: {"mean": float(np.mean(v)), "low": float(np.percentile(v, 2.5)),
                                     "high": float(np.percentile(v, 97.5)), "folds": len(v)}
                               for key, v in per_fold.items()}}
    return out


def loso(training: TrainingSet, settings: fit.HeadSettings, k: int, seed: int,
         recognisers: list[Recogniser]) -> dict[str, dict[str, Any]]:
    """Leave one source out: train on the others (pipeline from their grouped out-of-fold outputs), test on it,
    slices answered only where the other sources' recognisers of its kind recognise them."""
    out = {}
    dicom = np.array([entry.dicom for entry in training.sources])
    for held, name in enumerate(training.names):
        train = np.flatnonzero(training.source != held)
        if len(np.unique(training.y[train])) < 2:
            continue
        sub = _subset(training, train)
        folds = cv.grouped_folds(sub["y"], sub["group"], k, 1, seed, sub["source"])
        oof = cv.out_of_fold(len(train), len(training.labels), folds, _fit_and_score(sub, settings, len(training.labels)))
        pipeline = cv.fit_pipeline(oof.logits[0], oof.ood_scores[0], sub["y"], training.labels.index("Malignant"),
                                   RULE_OUT_RECALL, sub["source"])
        linear = fit.fit_linear(sub["x"], sub["y"], len(training.labels), settings, sub["source"])
        guard = fit.guard_statistics((sub["x"] - linear.mean) / linear.scale)
        test = np.flatnonzero((training.source == held) & training.answered_rendering())
        z = (training.features[test] - linear.mean) / linear.scale
        labels = pipeline.calibration.probabilities(linear.logits(training.features[test])).argmax(axis=1)
        guard_flags = pipeline.flagged(guard.scores(z))
        others = [recognisers[o] for o in range(len(training.sources)) if o != held and dicom[o] == dicom[held]]
        unrecognised = ~recognition.recognised(others, training.statistics[test])
        flags = guard_flags | unrecognised
        never = np.zeros(len(test), bool)
        out[name] = {"trained_on": [n for n in training.names if n != name],
                     **slice_metrics(training.y[test], labels, flags, never, guard_flags, unrecognised,
                                     training.labels),
                     "guard_only": slice_metrics(training.y[test], labels, guard_flags, never, guard_flags,
                                                 unrecognised, training.labels)}
    return out


def _subset(training: TrainingSet, rows: np.ndarray) -> dict[str, np.ndarray]:
    return {"x": training.features[rows], "y": training.y[rows], "source": training.source[rows],
            "group": training.group[rows]}


def _fit_and_score(sub: dict[str, np.ndarray], settings: fit.HeadSettings, n_classes: int):
    def fit_and_score(fold: Fold) -> tuple[np.ndarray, np.ndarray]:
        x, y, sources = sub["x"][fold.train], sub["y"][fold.train], sub["source"][fold.train]
        linear = fit.fit_linear(x, y, n_classes, settings, sources)
        guard = fit.guard_statistics((x - linear.mean) / linear.scale)
        return linear.logits(sub["x"][fold.test]), guard.scores((sub["x"][fold.test] - linear.mean) / linear.scale)
    return fit_and_score


@dataclass(frozen=True)
class TradePoint:
    threshold: float  # the rule-out threshold on P(Malignant)
    recall: float  # cancers not ruled out
    normals_not_ruled_out: float
    benign_not_ruled_out: float


TRADE_THRESHOLDS = np.round(np.concatenate([np.geomspace(0.001, 0.1, 21)[:-1], np.arange(0.1, 0.96, 0.025)]), 4)


def trade_curve(probabilities: np.ndarray, y: np.ndarray, names: list[str]) -> list[TradePoint]:
    """Cancers not ruled out against normals (and benigns) not ruled out, over the rule-out threshold, from pooled
    out-of-fold probabilities as the source calibrates them."""
    malignant, normal = names.index("Malignant"), names.index("Normal")
    benign = names.index("Benign") if "Benign" in names else None
    points = []
    for threshold in TRADE_THRESHOLDS:
        kept = probabilities[:, malignant] >= threshold
        points.append(TradePoint(float(threshold), float(kept[y == malignant].mean()), float(kept[y == normal].mean()),
                                 float(kept[y == benign].mean()) if benign is not None and (y == benign).any()
                                 else float("nan")))
    return points


def trade_table(points: list[TradePoint], shipped: dict[str, float]) -> str:
    lines = ["| cancers not ruled out, at least | normals not ruled out | benign not ruled out | rule-out threshold |",
             "| --- | --- | --- | --- |"]
    for level in (0.90, 0.94, 0.97, 0.98, 0.99, 1.00):
        reaching = [p for p in points if p.recall >= level]
        if reaching:
            best = max(reaching, key=lambda p: p.threshold)
            lines.append(f"| {level:.2f} (reached {best.recall:.3f}) | {best.normals_not_ruled_out:.3f} | "
                         f"{_cell(best.benign_not_ruled_out)} | {best.threshold:.4f} |")
    lines.append(f"| **shipped threshold, cross-fitted** ({shipped['recall']:.3f}) | **{shipped['normals']:.3f}** | "
                 f"**{_cell(shipped['benign'])}** | {shipped['threshold']:.4f} (fitted on all folds) |")
    return "\n".join(lines)


def _cell(value: float) -> str:
    return "-" if not np.isfinite(value) else f"{value:.3f}"


def plot_trade(points: list[TradePoint], shipped: dict[str, float], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.plot([p.normals_not_ruled_out for p in points], [p.recall for p in points], ".-", label="normals")
    if np.isfinite([p.benign_not_ruled_out for p in points]).any():
        ax.plot([p.benign_not_ruled_out for p in points], [p.recall for p in points], ".-", alpha=0.6,
                label="benign")
    ax.plot([shipped["normals"]], [shipped["recall"]], "r*", markersize=12, label="shipped threshold (normals)")
    ax.axhline(SCREENING_RECALL, color="k", linestyle=":", linewidth=1)
    ax.set(xlabel="share not ruled out", ylabel="cancers not ruled out", ylim=(0.8, 1.005),
           title=f"{title} screening trade (out of fold)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def scan_checks(training: TrainingSet, crossfitted: cv.CrossFitted, rule: ScanRule, unrecognised: np.ndarray,
                validated: np.ndarray) -> dict[str, dict[str, Any]]:
    """Each DICOM series through the shipped scan rule (aggregation.scan_answer), from leave-one-scan-out slice
    outputs (every repeat)."""
    malignant = training.labels.index("Malignant")
    out = {}
    for index, entry in enumerate(training.sources):
        if not entry.dicom:
            continue
        rows = (training.source == index) & training.answered_rendering()
        for group in np.unique(training.group[rows]):
            members = np.flatnonzero(rows & (training.group == group))
            folder = entry.dataset.items[training.item[members[0]]].path.parent.name
            verdicts, malignant_unflagged, flagged = [], [], []
            for repeat in range(crossfitted.predicted.shape[0]):
                labels = crossfitted.predicted[repeat, members]
                flags = product_flags(training, members, crossfitted.flagged[repeat, members],
                                      unrecognised[repeat, members], validated)
                flagged.append(float(np.mean(flags)))
                malignant_unflagged.append(float(np.mean((labels == malignant) & ~flags)))
                found = scan_answer(rule, crossfitted.probabilities[repeat, members], flags,
                                    crossfitted.ruled_out[repeat, members] & ~flags)
                verdicts.append(f"no diagnosis ({found.reason})" if found.label is None
                                else training.labels[found.label])
            out[f"{entry.source.name}/{folder}"] = {
                "finding": entry.findings.get(folder, training.labels[int(training.y[members[0]])]),
                "slices": len(members), "verdicts": verdicts, "flagged": float(np.mean(flagged)),
                "called_Malignant_unflagged": float(np.max(malignant_unflagged)),
                "max_P_Malignant": float(crossfitted.probabilities[:, members, malignant].max())}
    return out


def _with_interval(entry: dict[str, Any], key: str) -> str:
    """The pooled value, then the per-fold mean [2.5-97.5 percentile over folds]."""
    pooled, folds = entry["pooled"][key], entry["folds"].get(key)
    cell = "-" if not np.isfinite(pooled) else f"{pooled:.3f}"
    if folds and np.isfinite(pooled):
        cell += f" ({folds['mean']:.2f} [{folds['low']:.2f}, {folds['high']:.2f}])"
    return cell


def format_within(results: dict[str, dict[str, Any]]) -> str:
    lines = ["| source | slices | cancers validated | " + " | ".join(title for _, title in METRICS) + " |",
             "| --- | --- | --- |" + " --- |" * len(METRICS)]
    for name, entry in results.items():
        cells = [_with_interval(entry, key) for key, _ in METRICS]
        lines.append(f"| {name} | {entry['pooled']['n']} | {'yes' if entry['validated'] else 'no'} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_operating_points(results: dict[str, dict[str, Any]], points: dict[str, cv.SourcePoint],
                            labels: list[str]) -> str:
    """Each source's operating point (fitted on all out-of-fold outputs) and what cross-fitting measured of it."""
    lines = ["| source | calibration: temperature, class biases | rule-out threshold on P(Malignant) | "
             "screening sensitivity | screening specificity (normals ruled out) | label macro-F1 | cancers validated |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, entry in results.items():
        point = points[name]
        bias = ", ".join(f"{label} {value:+.2f}" for label, value, present in
                         zip(labels, point.bias(), point.classes) if present)
        threshold = f"{point.rule_out:.4f}" if point.rule_out > 0 else "- (no cancer in the source)"
        lines.append(f"| {name} | {point.calibration.temperature:.3f}; {bias} | {threshold} | "
                     f"{_with_interval(entry, 'screening_sensitivity')} | "
                     f"{_with_interval(entry, 'screening_specificity')} | {_with_interval(entry, 'macro_f1')} | "
                     f"{'yes' if entry['validated'] else 'no'} |")
    return "\n".join(lines)


def format_loso(results: dict[str, dict[str, Any]]) -> str:
    lines = ["| left out | trained on | slices | " + " | ".join(title for _, title in METRICS)
             + " | answered by the guard alone |", "| --- | --- | --- |" + " --- |" * (len(METRICS) + 1)]
    for name, entry in results.items():
        cells = ["-" if not np.isfinite(entry[key]) else f"{entry[key]:.3f}" for key, _ in METRICS]
        lines.append(f"| {name} | {', '.join(entry['trained_on'])} | {entry['n']} | " + " | ".join(cells)
                     + f" | {entry['guard_only']['answered']:.3f} |")
    return "\n".join(lines)


def format_scans(results: dict[str, dict[str, Any]]) -> str:
    lines = ["| scan | true finding | slices | verdict per repeat | slices flagged | called Malignant without a "
             "flag (worst repeat) | highest P(Malignant) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, entry in results.items():
        verdicts = ", ".join(f"{v} x{entry['verdicts'].count(v)}" for v in dict.fromkeys(entry["verdicts"]))
        lines.append(f"| {name} | {entry['finding']} | {entry['slices']} | {verdicts} | {entry['flagged']:.3f} | "
                     f"{entry['called_Malignant_unflagged']:.3f} | {entry['max_P_Malignant']:.2f} |")
    return "\n".join(lines)

