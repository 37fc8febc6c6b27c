"""The training run's package: config.json, head, model card, metrics, plots, and the checked SavedModel.

Kept apart from the training story so `python -m training` reads as steps, while what a
package says about itself (MONAI-bundle style: inputs, outputs, intended use, how the
training slices were rendered, the decision rule) is assembled in one place.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lung_classifier import package
from lung_classifier.decoding.windowing import TRAINING_RANGE
from lung_classifier.evidence import STATISTICS, SourceEvidence
from lung_classifier.model.head import Head
from lung_classifier.model.network import CAM_CHOICES, SERVED, TAPS, LungModel
from lung_classifier.model.preprocessing import MODEL_INPUT_RESIZE
from lung_classifier.verdict import SCREENING_MEANING
from training import (calibration, card, cv, decision, evaluate, faithfulness, fit, guard, per_source, recognition,
                      scan_cv, selection)
from training.cv import Pipeline
from training.multisource import PACKAGE_RENDERING, TrainingSet

MODEL_VERSION = "4.0.0"
CHANGELOG = {
    "4.0.0": "evidence per source (issue 23): each input recognised as a training source by statistics of its "
             "rendering (or none); the label is the most probable class of the source's own calibration; a separate "
             "screening answer (malignancy ruled out or not, per-source threshold for recall >= 0.99 pooled out of "
             "fold); \"Normal\" only for sources whose cancers were validated (so no answer on DICOM); a scan is never "
             "more reassuring than its slices",
    "3.0.0": "several training sources (--source): IQ-OTH/NCCD, Chest CT-Scan, COVID-CT-MD DICOM at ten windows; "
             "source-balanced head; offsets for Malignant recall >= 0.99 in every source with Malignant; guard = "
             "PCA score OR distance to the 5th-nearest training row; \"Normal\" means no cancer finding; DICOM "
             "answered only with the labels validated on DICOM; leave-one-source-out evaluation",
    "2.1.0": "whole-scan rule (pooling of slice probabilities, scan-level calibration and decision) chosen by "
             "scan-level CV over pseudo-patients; slice head unchanged",
    "2.0.0": "head chosen and measured by repeated patient-grouped CV and fit on all the data; "
             "Malignant-first decision rule; calibration on out-of-fold logits; Grad-CAM through the whole network",
    "1.0.0": "first release: head fit on a 70% grouped split",
}
INTENDED_USE = ("Research and teaching only: classifying one axial chest CT slice, windowed like the training "
                "sources (IQ-OTH/NCCD export range), as Normal (no cancer finding), Benign or Malignant. "
                "Not a medical device.")
LABELS_MEANING = {
    "Normal": "no cancer finding: a healthy lung or a non-cancer finding (COVID-19 and community-acquired "
              "pneumonia slices were trained as Normal); not a statement that the lung is healthy",
    "Benign": "a benign nodule (IQ-OTH/NCCD's benign cases)",
    "Malignant": "a malignant tumour (IQ-OTH/NCCD malignant cases; Chest CT-Scan adenocarcinoma, large cell and "
                 "squamous cell carcinoma)",
}
TARGETS = (("macro_f1", "macro-F1", 0.85, ">="), ("recall_Malignant", "Malignant recall", 0.98, ">="),
           ("recall_Benign", "Benign recall", 0.70, ">="), ("ece", "ECE", 0.05, "<="))
CALIBRATED_ECE = 0.05
"""The page may call probabilities "calibrated" only if the CV ECE's upper bound is at most this."""


@dataclass(frozen=True)
class TrainingRecord:
    """Everything the training run measured and chose, for the config, card and metrics."""

    args: argparse.Namespace
    training: TrainingSet
    digest: str
    results: list[selection.Result]
    chosen: selection.Result
    recognition: recognition.Recognition  # the recognisers and their cross-fitted, left-out validation
    validated: np.ndarray  # (S,) whether each source's cancers were validated (per_source.validated_sources)
    pipeline: Pipeline
    faithfulness: dict[str, Any]
    shifts: dict[str, dict[str, float]]
    scan_results: list[scan_cv.RuleResult]
    scan_chosen: scan_cv.RuleResult
    within: dict[str, dict[str, Any]]  # per source, training.per_source.within
    loso: dict[str, dict[str, Any]]  # per left-out source, training.per_source.loso
    scan_checks: dict[str, dict[str, Any]]  # per DICOM series, training.per_source.scan_checks
    command: str
    seconds: int

    @property
    def labels(self) -> list[str]:
        return self.training.labels

    @property
    def y(self) -> np.ndarray:
        return self.training.y

    @property
    def malignant(self) -> int:
        return self.labels.index("Malignant")


def write(out: Path, model: LungModel, head: Head, record: TrainingRecord) -> int:
    """Write the package; 0 on success, 2 for an unusable output directory, 1 if the export disagrees."""
    if out.exists() and any(out.iterdir()) and not (out / package.CONFIG).is_file():
        print(f"error: {out} is not empty and holds no package; refusing to overwrite it", file=sys.stderr)
        return 2
    shutil.rmtree(out / package.SAVED_MODEL, ignore_errors=True)
    shutil.rmtree(out / "plots", ignore_errors=True)
    (out / package.CONFIG).unlink(missing_ok=True)
    (out / "plots").mkdir(parents=True)
    head.save(out / package.HEAD)
    write_plots(out / "plots", record)
    summary = record.chosen.summary
    (out / "metrics.json").write_text(json.dumps(metrics(record), indent=2) + "\n")
    config = package_config(record, head)
    card.write_card(out, card.card_data(config, summary), card_values(record, config, summary, head))
    if not record.args.no_savedmodel:
        model.export(out / package.SAVED_MODEL)
    package.write_config(out, config)
    if not record.args.no_savedmodel:
        return check_export(out, model, record)
    return 0


def check_export(out: Path, model: LungModel, record: TrainingRecord, count: int = 32) -> int:
    """The exported SavedModel must give the in-memory model's probabilities and labels."""
    import tensorflow as tf

    from lung_classifier.decoding.images import load_rgb
    from lung_classifier.model.preprocessing import prepare_batch

    print("   checking the exported SavedModel against the in-memory model")
    paths = [item.path for entry in record.training.sources if not entry.dicom
             for item in entry.dataset.items][:count]
    images = tf.constant(prepare_batch([load_rgb(path) for path in paths], record.args.input_size))
    exported = tf.saved_model.load(str(out / package.SAVED_MODEL)).signatures["serving_default"](images=images)
    expected = model.predict(images)
    gap = float(np.abs(exported["probabilities"].numpy() - expected["probabilities"].numpy()).max())
    same_labels = bool((exported["label"].numpy() == expected["label"].numpy()).all())
    print(f"   max |difference| in probabilities over {len(paths)} images: {gap:.2e}; same labels: {same_labels}")
    if gap > 1e-4 or not same_labels:
        print("error: the exported model disagrees with the in-memory model", file=sys.stderr)
        return 1
    return 0


def calibrated(summary: dict[str, dict[str, float]]) -> bool:
    return summary["ece"]["high"] <= CALIBRATED_ECE


HEAD_NUMBERS = ("the one copy of the graph's numbers: temperature (the model's calibration), decision_offsets "
                "(zero: the graph's label is the most probable class), ood_threshold and knn_threshold, and the "
                "guard's kNN bank; each source's numbers (recognition, calibration, rule-out threshold) live in "
                "config.json's evidence block")
OOD_RULE = ("ood_score = max(PCA score, kNN distance x ood_threshold / knn_threshold), so out_of_distribution = "
            "ood_score > ood_threshold (head.npz) exactly when the PCA score is above ood_threshold or the cosine "
            "distance to the 5th-nearest training row (the bank: training rows projected on 128 principal axes, "
            "float16) is above knn_threshold; also given no diagnosis: a DICOM slice that is not axial, an input "
            "recognised as no source of its kind, and one recognised as a source whose cancers were not validated "
            "(evidence block; lung_classifier.verdict.answer)")


def package_config(record: TrainingRecord, head: Head) -> dict[str, Any]:
    """What the package says about itself: inputs, outputs, rendering, rule, provenance."""
    labels, pipeline = record.labels, record.pipeline
    size = record.args.input_size
    channel_def = {str(index): label for index, label in enumerate(labels)}
    return {
        "name": record.args.name,
        "model_version": MODEL_VERSION,
        "changelog": CHANGELOG,
        "intended_use": INTENDED_USE,
        "labels": labels,
        "labels_meaning": {label: LABELS_MEANING[label] for label in labels if label in LABELS_MEANING},
        "input": {"size": size, "channels": "RGB", "dtype": "float32", "range": [0, 255],
                  "shape": ["N", size, size, 3],
                  "modality": "axial chest CT slice, windowed greyscale as the training slices were rendered"},
        "rendering": rendering_config(record),
        "preprocessing": {"decoder": "lung_classifier.decoding.images.load_rgb", "resize": MODEL_INPUT_RESIZE,
                          "normalisation": "inside the model (ResNet50 caffe mode)"},
        "backbone": {"architecture": "keras.applications.ResNet50", "weights": "imagenet", "include_top": False,
                     "frozen": True, "taps": list(TAPS), "weights_sha256": record.digest},
        "head": {"file": package.HEAD, "type": "standardise + multinomial L2 logistic regression",
                 "settings": record.chosen.settings.as_dict(), "numbers": HEAD_NUMBERS},
        "calibration": {"method": "temperature (head.npz: temperature) and per-class bias fitted on out-of-fold "
                                  "logits (unweighted NLL), the bias folded into the head's bias",
                        "bias": dict(zip(labels, pipeline.calibration.bias.tolist())),
                        "calibrated": calibrated(record.chosen.summary),
                        "cv_ece": record.chosen.summary["ece"]},
        "decision_rule": {"rule": "label = the most probable class of the recognised source's calibrated "
                                  "probabilities; screening: malignancy ruled out when answered and P(Malignant) < "
                                  "the source's rule_out_threshold (evidence block)",
                          "chosen_for": f"rule-out threshold: pooled out-of-fold recall >= {decision.RULE_OUT_RECALL} "
                                        "of the source's cancers; cancers validated when the cross-fitted screening "
                                        f"recall is >= {decision.SCREENING_RECALL}"},
        "evidence": evidence_config(record),
        "ood": {"quantile_of_out_of_fold": decision.OOD_QUANTILE,
                "threshold_rule": "each threshold = the highest over training sources of that source's "
                                  f"{decision.OOD_QUANTILE} quantile of its cross-fitted out-of-fold scores",
                "components": int(head.ood_components.shape[0]), "knn_components": int(head.knn_components.shape[0]),
                "knn_bank_rows": int(head.knn_bank.shape[0]), "knn_k": fit.KNN_K, "rule": OOD_RULE},
        "gradcam": {"layers": record.faithfulness["chosen"], "taps": list(CAM_CHOICES[record.faithfulness["chosen"]])},
        "scan": scan_config(record),
        "outputs": {
            "probabilities": {"type": "probabilities", "dtype": "float32", "shape": ["N", len(labels)],
                              "value_range": [0, 1], "channel_def": channel_def},
            "label": {"type": "class index by the decision rule", "dtype": "int32", "shape": ["N"],
                      "channel_def": channel_def},
            "ood_score": {"type": "score", "dtype": "float32", "shape": ["N"]},
            "out_of_distribution": {"type": "flag", "dtype": "bool", "shape": ["N"]},
            "heatmap": {"type": "Grad-CAM", "dtype": "float32", "shape": ["N", "h", "w"], "value_range": [0, 1],
                        "signature": "explain"},
        },
        "signatures": {"serving_default": list(SERVED), "explain": [*SERVED, "heatmap"], "features": ["features"]},
        "training": {"sources": record.training.describe(), "seed": record.args.seed,
                     "weighting": fit.WEIGHTINGS[record.chosen.settings.weighting],
                     "cv": {"folds": record.args.folds, "repeats": record.args.repeats,
                            "strata": "source x class"},
                     "seconds": record.seconds},
    }


def rendering_config(record: TrainingRecord) -> dict[str, Any]:
    """The training range and each source's rendering."""
    return {**TRAINING_RANGE,
            "training_slices": {name: entry["rendering"] for name, entry in record.training.describe().items()}}


def evidence_config(record: TrainingRecord) -> dict[str, Any]:
    """Evidence per source (lung_classifier.evidence reads it): recognition, calibration, rule-out threshold,
    whether its cancers were validated, and what the cross-fitting measured of them."""
    training, labels = record.training, record.labels
    sources = []
    for index, entry in enumerate(training.sources):
        point = record.pipeline.points[index]
        sources.append({
            **SourceEvidence(entry.source.name, entry.source.shown_title, entry.dicom,
                             record.recognition.recognisers[index], point.calibration.temperature, point.bias(),
                             point.rule_out, bool(record.validated[index])).as_config(labels),
            "measured": {key: record.within[entry.source.name]["pooled"][key]
                         for key in ("screening_sensitivity", "screening_specificity", "macro_f1", "answered")}})
    return {"statistics": list(STATISTICS), "recognition_quantile": recognition.RECOGNITION_QUANTILE,
            "rule_out_recall": decision.RULE_OUT_RECALL, "screening_recall": decision.SCREENING_RECALL,
            "sources": sources}


def scan_config(record: TrainingRecord) -> dict[str, Any]:
    """The whole-scan rule (lung_classifier.scan.aggregation.ScanRule.from_config reads it) and its evidence."""
    chosen = record.scan_chosen
    return {**chosen.rule.as_config(), "rule": chosen.rule.describe(),
            "chosen_for": "scan-level CV over pseudo-patients: no malignant scan called Normal, then the highest "
                          "mean macro-F1",
            "cv": {name: chosen.summary[name] for name in ("accuracy", "macro_f1", "recall_Malignant")},
            "cv_malignant_scans_called_normal": chosen.malignant_called_normal}


def metrics(record: TrainingRecord) -> dict[str, Any]:
    chosen = record.chosen
    return {
        "per_source": record.within,
        "leave_one_source_out": record.loso,
        "scan_checks": record.scan_checks,
        "trade": {name: [point.__dict__ for point in points] for name, points in trade_curves(record).items()},
        "cv": chosen.summary,
        "cv_confusion_matrix": chosen.crossfitted.confusion(record.y, len(record.labels)).tolist(),
        "cv_folds": chosen.crossfitted.reports,
        "selection": [{"settings": r.settings.as_dict(), "summary": r.summary, "seconds_per_fit": r.seconds_per_fit}
                      for r in record.results],
        "chosen": chosen.settings.as_dict(),
        "recognition": record.recognition.table,
        "faithfulness": record.faithfulness,
        "ood_shifts": record.shifts,
        "scan": [result.as_dict(record.labels) for result in record.scan_results],
        "scan_chosen": record.scan_chosen.rule.describe(),
    }


def write_plots(directory: Path, record: TrainingRecord) -> None:
    """Pooled out-of-fold plots: each slice once per repeat, scored by heads that never saw its group."""
    chosen, labels = record.chosen, record.labels
    repeats = chosen.oof.logits.shape[0]
    truth = np.tile(record.y, repeats)
    after = chosen.crossfitted.probabilities.reshape(-1, len(labels))
    before = calibration.softmax(chosen.oof.logits.reshape(-1, len(labels)))
    confusion = chosen.crossfitted.confusion(record.y, len(labels))
    title = f"out of fold, {repeats} repeats"
    evaluate.plot_confusion(confusion, labels, directory / "confusion_matrix.png", title)
    evaluate.plot_roc(after, truth, labels, directory / "roc_curves.png", title)
    evaluate.plot_reliability(before, after, truth, directory / "reliability.png", title)
    for name, points in trade_curves(record).items():
        per_source.plot_trade(points, shipped_point(record, name), directory / f"trade_{name}.png", name)


def _trade_rows(record: TrainingRecord, name: str) -> np.ndarray:
    training = record.training
    return (training.source == training.names.index(name)) & training.answered_rendering()


def trade_curves(record: TrainingRecord) -> dict[str, list[per_source.TradePoint]]:
    """Per source with Normal and Malignant slices: cancers against normals not ruled out (pooled out of fold)."""
    training, curves = record.training, {}
    repeats = record.chosen.crossfitted.probabilities.shape[0]
    for name in training.names:
        rows = _trade_rows(record, name)
        present = {training.labels[v] for v in training.y[rows].tolist()}
        if {"Normal", "Malignant"} <= present:
            curves[name] = per_source.trade_curve(
                record.chosen.crossfitted.probabilities[:, rows].reshape(-1, len(training.labels)),
                np.tile(training.y[rows], repeats), training.labels)
    return curves


def shipped_point(record: TrainingRecord, name: str) -> dict[str, float]:
    """Where the shipped rule-out threshold sits on a source's trade curve: cross-fitted (each fold's threshold
    from the other folds) shares not ruled out, and the threshold fitted on all folds."""
    training = record.training
    rows = _trade_rows(record, name)
    kept = ~record.chosen.crossfitted.ruled_out[:, rows]
    y = np.broadcast_to(training.y[rows], kept.shape)

    def not_ruled_out(label: str) -> float:
        if label not in training.labels or not (y == training.labels.index(label)).any():
            return float("nan")
        return float(np.mean(kept[y == training.labels.index(label)]))

    return {"recall": not_ruled_out("Malignant"), "normals": not_ruled_out("Normal"),
            "benign": not_ruled_out("Benign"), "threshold": record.pipeline.points[training.names.index(name)].rule_out}


def targets_table(summary: dict[str, dict[str, float]]) -> str:
    lines = ["| target | CV mean [95% interval] | met by the CV mean? |", "| --- | --- | --- |"]
    for name, title, goal, sense in TARGETS:
        if name not in summary:
            continue
        mean = summary[name]["mean"]
        met = mean >= goal if sense == ">=" else mean <= goal
        verdict = "yes" if met else f"**no** (mean {mean:.4f})"
        lines.append(f"| {title} {sense} {goal} | {cv.format_interval(summary, name)} | {verdict} |")
    return "\n".join(lines)


def card_values(record: TrainingRecord, config: dict[str, Any], summary: dict[str, dict[str, float]],
                head: Head) -> dict:
    """The card's numbers: the rules' numbers as the head stores them, the rest from the training record."""
    labels, pipeline, args = record.labels, record.pipeline, record.args
    sources = config["training"]["sources"]
    source_rows = ["| source | folder | " + " | ".join(f"{label} slices (groups)" for label in labels)
                   + " | grouping | rendering | findings | licence / citation |",
                   "| --- | --- |" + " --- |" * len(labels) + " --- | --- | --- | --- |"]
    for name, entry in sources.items():
        cells = [f"{entry['classes'][label]['slices']} ({entry['classes'][label]['groups']})"
                 if label in entry["classes"] else "-" for label in labels]
        findings = "; ".join(f"{k}: {v}" for k, v in entry["findings"].items()) or "-"
        source_rows.append(f"| {name} | `{Path(entry['folder']).name}` | " + " | ".join(cells)
                           + f" | {entry['grouping']} | {entry['rendering']} | {findings} | {entry['licence']} |")
    rendering = config["rendering"]
    trades = trade_curves(record)
    return {
        "name": args.name, "labels": ", ".join(labels), "intended_use": INTENDED_USE,
        "backbone_digest": record.digest, "taps": ", ".join(TAPS),
        "feature_dim": head.kernel.shape[0],
        "input_size": args.input_size, "head_settings": record.chosen.settings.describe(),
        "temperature": f"{float(head.temperature):.3f}",
        "calibration_bias": ", ".join(f"{l} {b:+.3f}" for l, b in zip(labels, pipeline.calibration.bias)),
        "calibration_wording": ("calibrated" if calibrated(summary) else
                                f"not called calibrated (the CV ECE's upper bound is above {CALIBRATED_ECE}): "
                                "the page says \"model confidence\""),
        "rule_out_recall": decision.RULE_OUT_RECALL, "screening_recall": decision.SCREENING_RECALL,
        "ood_components": config["ood"]["components"], "ood_threshold": f"{float(head.ood_threshold):.3f}",
        "ood_quantile": decision.OOD_QUANTILE,
        "training_window": f"width {rendering['window_width_hu'][0]}-{rendering['window_width_hu'][1]} HU, "
                           f"centre {rendering['window_centre_hu'][0]}-{rendering['window_centre_hu'][1]} HU",
        "dicom_window": f"centre {rendering['dicom_window']['centre']} / width {rendering['dicom_window']['width']} HU",
        "n_rows": len(record.y), "n_slices": sum(len(entry.dataset.items) for entry in record.training.sources),
        "n_groups": len(set(record.training.group.tolist())), "n_sources": len(sources),
        "sources_table": "\n".join(source_rows), "weighting": config["training"]["weighting"],
        "validated_sources": ", ".join(entry.source.shown_title for entry, ok in
                                       zip(record.training.sources, record.validated) if ok) or "none",
        "unvalidated_sources": ", ".join(f"{entry.source.shown_title} ({'DICOM' if entry.dicom else 'images'})"
                                         for entry, ok in zip(record.training.sources, record.validated) if not ok)
                               or "none",
        "dicom_answered": ("no DICOM input is answered: no DICOM training source has validated cancers"
                           if not any(ok and entry.dicom for entry, ok in zip(record.training.sources, record.validated))
                           else "DICOM is answered where it is recognised as a DICOM source with validated cancers"),
        "statistics": ", ".join(STATISTICS), "recognition_quantile": recognition.RECOGNITION_QUANTILE,
        "recognition_table": recognition.format_table(record.recognition.table),
        "operating_points_table": per_source.format_operating_points(
            record.within, {name: record.pipeline.points[i] for i, name in enumerate(record.training.names)}, labels),
        "screening_meaning": SCREENING_MEANING,
        "knn_threshold": f"{float(head.knn_threshold):.3f}", "knn_components": config["ood"]["knn_components"],
        "knn_rows": config["ood"]["knn_bank_rows"],
        "per_source_table": per_source.format_within(record.within),
        "loso_table": per_source.format_loso(record.loso) if record.loso else "(one source: nothing to leave out)",
        "scan_checks_table": (per_source.format_scans(record.scan_checks) if record.scan_checks
                              else "(no DICOM source)"),
        "trade_section": "\n\n".join(f"**{name}**\n\n" + per_source.trade_table(points, shipped_point(record, name))
                                      + f"\n\n![trade curve, {name}](plots/trade_{name}.png)"
                                      for name, points in trades.items()),
        "folds": args.folds, "repeats": args.repeats,
        "cv_table": cv.format_summary(summary, record.chosen.crossfitted.confusion(record.y, len(labels)), labels,
                                      args.folds, args.repeats),
        "targets_table": targets_table(summary),
        "selection_table": selection.format_table(record.results, record.chosen, labels, record.malignant),
        "faithfulness_table": faithfulness.format_table(record.faithfulness),
        "cam_choice": record.faithfulness["chosen"], "guard_table": guard.format_table(record.shifts),
        "scan_table": scan_cv.format_markdown(record.scan_results, record.scan_chosen),
        "scan_cv_table": cv.format_summary(record.scan_chosen.summary, record.scan_chosen.confusion, labels,
                                           args.folds, args.repeats, unit="scan"),
        "scan_rule": record.scan_chosen.rule.describe(),
        "scan_confident": f"{record.scan_chosen.rule.confident_malignant:.2f}",
        "scan_max_flagged": f"{record.scan_chosen.rule.max_flagged_fraction:.0%}",
        "n_scans": len(set(record.training.group[scan_cv.scan_rows(record.training)].tolist())),
        "repo_hint": args.push_to_hub or "OWNER/NAME", "command": record.command, "train_seconds": record.seconds,
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores",
    }
