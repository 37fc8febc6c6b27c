"""Evaluation a sceptic trusts: per source within grouped CV, leave-one-source-out, the IQ-OTH trade curve.

Every figure is for slices as the product answers them: image files as they are, DICOM at
the package window, a slice "answered" when neither the guard nor the DICOM rule flags it
(lung_classifier.verdict.ood_reason). Pooled figures count every out-of-fold prediction of
every repeat; per-fold means come with the 2.5-97.5 percentile interval over folds. A fold
holds only a few benign pseudo-patients, so the two disagree and both are shown.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lung_classifier.scan.aggregation import ScanRule, withheld_reason
from lung_classifier.verdict import decide
from training import cv, fit
from training.cv import Fold
from training.decision import MIN_MALIGNANT_RECALL
from training.multisource import TrainingSet

METRICS = (("answered", "answered (not flagged)"), ("accuracy_answered", "accuracy on answered"),
           ("recall_Malignant", "Malignant recall"), ("normals_called_Malignant", "normals called Malignant"),
           ("noncancer_Malignant_unflagged", "non-cancer called Malignant without a flag"),
           ("guard_flagged", "flagged by the guard"))


def product_flags(training: TrainingSet, rows: np.ndarray, labels: np.ndarray, guard: np.ndarray,
                  dicom_labels: list[str]) -> np.ndarray:
    """The guard's flag, plus the DICOM rule: a DICOM row is answered only with a label validated on DICOM."""
    allowed = np.isin(np.array(training.labels)[labels], dicom_labels)
    return guard | (training.dicom_rows()[rows] & ~allowed)


def slice_metrics(y: np.ndarray, labels: np.ndarray, flagged: np.ndarray, guard: np.ndarray,
                  names: list[str]) -> dict[str, float]:
    """METRICS of one set of slices (NaN where a figure has no slices to count)."""
    malignant, normal = names.index("Malignant"), names.index("Normal")
    answered = ~flagged

    def share(mask: np.ndarray, of: np.ndarray) -> float:
        return float(np.mean(mask[of])) if of.any() else float("nan")

    return {"n": int(len(y)), "answered": float(np.mean(answered)),
            "accuracy_answered": share(labels == y, answered),
            "recall_Malignant": share(labels == malignant, y == malignant),
            "normals_called_Malignant": share(labels == malignant, y == normal),
            "noncancer_Malignant_unflagged": share((labels == malignant) & answered, y == normal),
            "guard_flagged": float(np.mean(guard))}


def within(training: TrainingSet, crossfitted: cv.CrossFitted, oof: cv.OutOfFold) -> dict[str, dict[str, Any]]:
    """Per source (rows as answered) and for each DICOM source also over all its training windows."""
    pipeline_flags = crossfitted.flagged
    dicom_labels = training.dicom_labels()
    repeats = crossfitted.predicted.shape[0]
    flags = np.stack([product_flags(training, np.arange(len(training.y)), crossfitted.predicted[r],
                                    pipeline_flags[r], dicom_labels) for r in range(repeats)])
    out = {}
    for index, name in enumerate(training.names):
        sets = {name: (training.source == index) & training.answered_rendering()}
        if training.sources[index].dicom:
            sets[f"{name}, all {len(set(training.rendering[training.source == index]))} training windows"] = (
                training.source == index)
        for title, rows in sets.items():
            pooled = slice_metrics(np.tile(training.y[rows], repeats), crossfitted.predicted[:, rows].ravel(),
                                   flags[:, rows].ravel(), pipeline_flags[:, rows].ravel(), training.labels)
            per_fold: dict[str, list[float]] = {}
            for fold in oof.folds:
                test = np.intersect1d(fold.test, np.flatnonzero(rows))
                if not len(test):
                    continue
                values = slice_metrics(training.y[test], crossfitted.predicted[fold.repeat, test],
                                       flags[fold.repeat, test], pipeline_flags[fold.repeat, test], training.labels)
                for key, value in values.items():
                    if key != "n" and np.isfinite(value):
                        per_fold.setdefault(key, []).append(value)
            out[title] = {"pooled": pooled, "folds": {key: {"mean": float(np.mean(v)),
                                                           "low": float(np.percentile(v, 2.5)),
                                                           "high": float(np.percentile(v, 97.5)), "folds": len(v)}
                                                     for key, v in per_fold.items()}}
    return out


def loso(training: TrainingSet, settings: fit.HeadSettings, k: int, seed: int) -> dict[str, dict[str, Any]]:
    """Leave one source out: train on the others (pipeline from their grouped out-of-fold outputs), test on it."""
    out = {}
    for held, name in enumerate(training.names):
        train = np.flatnonzero(training.source != held)
        if len(np.unique(training.y[train])) < 2:
            continue
        sub = _subset(training, train)
        folds = cv.grouped_folds(sub["y"], sub["group"], k, 1, seed, sub["source"])
        oof = cv.out_of_fold(len(train), len(training.labels), folds, _fit_and_score(sub, settings, len(training.labels)))
        pipeline = cv.fit_pipeline(oof.logits[0], oof.ood_scores[0], sub["y"], training.labels.index("Malignant"),
                                   MIN_MALIGNANT_RECALL, sub["source"])
        linear = fit.fit_linear(sub["x"], sub["y"], len(training.labels), settings, sub["source"])
        guard = fit.guard_statistics((sub["x"] - linear.mean) / linear.scale)
        test = np.flatnonzero((training.source == held) & training.answered_rendering())
        z = (training.features[test] - linear.mean) / linear.scale
        labels = decide(pipeline.calibration.probabilities(linear.logits(training.features[test])), pipeline.offsets)
        guard_flags = pipeline.flagged(guard.scores(z))
        dicom_labels = sorted({training.labels[v] for v in sub["y"][training.dicom_rows()[train]].tolist()})
        flags = product_flags(training, test, labels, guard_flags, dicom_labels)
        out[name] = {"trained_on": [n for n in training.names if n != name],
                     **slice_metrics(training.y[test], labels, flags, guard_flags, training.labels),
                     "guard_only": slice_metrics(training.y[test], labels, guard_flags, guard_flags,
                                                 training.labels)}
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
    offset: float  # added to the Malignant margin
    recall: float
    normals_called_malignant: float
    benign_called_malignant: float


def trade_curve(probabilities: np.ndarray, y: np.ndarray, names: list[str]) -> list[TradePoint]:
    """Malignant recall against normals (and benigns) called Malignant, over an offset on the Malignant margin
    (log P(Malignant) minus the highest other log probability), from pooled out-of-fold probabilities."""
    malignant, normal = names.index("Malignant"), names.index("Normal")
    logp = np.log(np.clip(probabilities, 1e-12, 1.0))
    margin = logp[:, malignant] - np.max(np.delete(logp, malignant, axis=1), axis=1)
    benign = names.index("Benign") if "Benign" in names else None
    points = []
    for offset in np.round(np.arange(-2.0, 8.01, 0.25), 2):
        called = margin + offset >= 0
        points.append(TradePoint(float(offset), float(called[y == malignant].mean()),
                                 float(called[y == normal].mean()),
                                 float(called[y == benign].mean()) if benign is not None and (y == benign).any()
                                 else float("nan")))
    return points


def trade_table(points: list[TradePoint], shipped: dict[str, float]) -> str:
    lines = ["| Malignant recall at least | normals called Malignant | benign called Malignant | margin offset |",
             "| --- | --- | --- | --- |"]
    for level in (0.90, 0.94, 0.97, 0.98, 0.99, 1.00):
        reaching = [p for p in points if p.recall >= level]
        if reaching:
            best = min(reaching, key=lambda p: (p.normals_called_malignant, -p.offset))
            lines.append(f"| {level:.2f} (reached {best.recall:.3f}) | {best.normals_called_malignant:.3f} | "
                         f"{_cell(best.benign_called_malignant)} | {best.offset:+.2f} |")
    lines.append(f"| **shipped rule** ({shipped['recall']:.3f}) | **{shipped['normals']:.3f}** | "
                 f"**{_cell(shipped['benign'])}** | (the shipped decision offsets, cross-fitted) |")
    return "\n".join(lines)


def _cell(value: float) -> str:
    return "-" if not np.isfinite(value) else f"{value:.3f}"


def plot_trade(points: list[TradePoint], shipped: dict[str, float], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.plot([p.normals_called_malignant for p in points], [p.recall for p in points], ".-", label="normals")
    if np.isfinite([p.benign_called_malignant for p in points]).any():
        ax.plot([p.benign_called_malignant for p in points], [p.recall for p in points], ".-", alpha=0.6,
                label="benign")
    ax.plot([shipped["normals"]], [shipped["recall"]], "r*", markersize=12, label="shipped rule (normals)")
    ax.axhline(0.98, color="k", linestyle=":", linewidth=1)
    ax.set(xlabel="share called Malignant", ylabel="Malignant recall", ylim=(0.8, 1.005),
           title="IQ-OTH/NCCD trade (out of fold)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def scan_checks(training: TrainingSet, crossfitted: cv.CrossFitted, rule: ScanRule) -> dict[str, dict[str, Any]]:
    """Each DICOM series through the shipped scan rule, from leave-one-scan-out slice outputs (every repeat)."""
    guard_flags = crossfitted.flagged
    dicom_labels = tuple(training.dicom_labels())
    out = {}
    for index, entry in enumerate(training.sources):
        if not entry.dicom:
            continue
        rows = (training.source == index) & training.answered_rendering()
        for group in np.unique(training.group[rows]):
            members = np.flatnonzero(rows & (training.group == group))
            folder = entry.dataset.items[training.item[members[0]]].path.parent.name
            verdicts, malignant_unflagged = [], []
            for repeat in range(crossfitted.predicted.shape[0]):
                labels = crossfitted.predicted[repeat, members]
                flags = product_flags(training, members, labels, guard_flags[repeat, members], list(dicom_labels))
                probabilities = crossfitted.probabilities[repeat, members]
                malignant_unflagged.append(float(np.mean((labels == training.labels.index("Malignant")) & ~flags)))
                if rule.flagged(flags):
                    verdicts.append("no verdict (most slices flagged)")
                    continue
                decision = rule.decide(probabilities[~flags])
                reason = withheld_reason(rule, decision.label, probabilities, flags, True, dicom_labels)
                verdicts.append("no diagnosis (" + reason.split(":")[0] + ")" if reason
                                else training.labels[decision.label])
            out[f"{entry.source.name}/{folder}"] = {
                "finding": entry.findings.get(folder, training.labels[int(training.y[members[0]])]),
                "slices": len(members), "verdicts": verdicts,
                "flagged": float(np.mean([product_flags(training, members, crossfitted.predicted[r, members],
                                                        guard_flags[r, members], list(dicom_labels))
                                          for r in range(crossfitted.predicted.shape[0])])),
                "called_Malignant_unflagged": float(np.max(malignant_unflagged)),
                "max_P_Malignant": float(crossfitted.probabilities[:, members,
                                                                   training.labels.index("Malignant")].max())}
    return out


def format_within(results: dict[str, dict[str, Any]]) -> str:
    lines = ["| source | slices | " + " | ".join(title for _, title in METRICS) + " |",
             "| --- | --- |" + " --- |" * len(METRICS)]
    for name, entry in results.items():
        cells = []
        for key, _ in METRICS:
            pooled, folds = entry["pooled"][key], entry["folds"].get(key)
            cell = "-" if not np.isfinite(pooled) else f"{pooled:.3f}"
            if folds and np.isfinite(pooled):
                cell += f" ({folds['mean']:.2f} [{folds['low']:.2f}, {folds['high']:.2f}])"
            cells.append(cell)
        lines.append(f"| {name} | {entry['pooled']['n']} | " + " | ".join(cells) + " |")
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

