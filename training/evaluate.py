"""Metrics and plots for a labelled set; `python -m training.evaluate --model SOURCE --data DIR`.

The same `report` scores each cross-validation fold in training and, with this command, a
model package on any labelled folder (for example a hold-out set the model never saw),
with the labels the package's decision rule gives.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ECE_BINS = 15


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """Unweighted mean of per-class F1 (0 for a class never true nor predicted), in plain numpy:
    the decision-rule search calls it thousands of times."""
    matrix = np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)
    true_positive = np.diag(matrix).astype(np.float64)
    denominator = matrix.sum(axis=0) + matrix.sum(axis=1)
    f1 = np.divide(2 * true_positive, denominator, out=np.zeros(n_classes), where=denominator > 0)
    return float(f1.mean())


def reliability(probabilities: np.ndarray, y_true: np.ndarray, bins: int = ECE_BINS) -> list[dict[str, float]]:
    """Per equal-width confidence bin: mean confidence, accuracy and count (top label)."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    return [
        {"low": float(edges[b]), "high": float(edges[b + 1]), "count": int((which == b).sum()),
         "confidence": float(confidence[which == b].mean()), "accuracy": float(correct[which == b].mean())}
        for b in range(bins) if (which == b).any()
    ]


def expected_calibration_error(probabilities: np.ndarray, y_true: np.ndarray, bins: int = ECE_BINS) -> float:
    """Top-label ECE: |accuracy - confidence| per bin, weighted by the bin's share of images."""
    return float(sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in reliability(probabilities, y_true, bins))
                 / len(y_true))


def report(probabilities: np.ndarray, y_true: np.ndarray, labels: list[str],
           predicted: np.ndarray | None = None) -> dict[str, Any]:
    """Loss, accuracy, per-class report, confusion matrix, one-vs-rest ROC AUC, ECE.

    ``predicted`` are the labels the decision rule gave (default: the argmax).
    """
    from sklearn.metrics import classification_report, confusion_matrix, roc_auc_score

    n = len(labels)
    y_pred = probabilities.argmax(axis=1) if predicted is None else predicted
    clipped = np.clip(probabilities[np.arange(len(y_true)), y_true], 1e-12, 1.0)
    per_class = classification_report(y_true, y_pred, labels=list(range(n)), target_names=labels,
                                      output_dict=True, zero_division=0)
    auc = {}
    for index, label in enumerate(labels):
        positives = y_true == index
        auc[label] = float(roc_auc_score(positives, probabilities[:, index])) if 0 < positives.sum() < len(y_true) else None
    return {
        "n": int(len(y_true)),
        "loss": float(-np.log(clipped).mean()),
        "accuracy": float((y_pred == y_true).mean()),
        "macro_f1": macro_f1(y_true, y_pred, n),
        "per_class": {label: {k: float(v) for k, v in per_class[label].items()} for label in labels},
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=list(range(n))).tolist(),
        "roc_auc": auc,
        "ece": expected_calibration_error(probabilities, y_true),
    }


def format_report(metrics: dict[str, Any], labels: list[str]) -> str:
    """The report as markdown tables, for the terminal and the model card."""
    lines = [
        f"images: {metrics['n']}  loss: {metrics['loss']:.4f}  accuracy: {metrics['accuracy']:.4f}  "
        f"macro-F1: {metrics['macro_f1']:.4f}  ECE: {metrics['ece']:.4f}",
        "",
        "| class | precision | recall | F1 | support | ROC AUC (one-vs-rest) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for label in labels:
        row = metrics["per_class"][label]
        auc = metrics["roc_auc"][label]
        lines.append(f"| {label} | {row['precision']:.3f} | {row['recall']:.3f} | {row['f1-score']:.3f} | "
                     f"{int(row['support'])} | {'n/a' if auc is None else f'{auc:.3f}'} |")
    lines += ["", "Confusion matrix (rows: true, columns: predicted):", "",
              "| true \\ predicted | " + " | ".join(labels) + " |", "| --- |" + " --- |" * len(labels)]
    for label, row in zip(labels, metrics["confusion_matrix"]):
        lines.append(f"| {label} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines)


def plot_confusion(matrix: np.ndarray, labels: list[str], path: Path, title: str) -> None:
    import matplotlib.pyplot as plt

    matrix = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(value), ha="center", va="center", color="white" if value > matrix.max() / 2 else "black")
    ax.set(xticks=range(len(labels)), yticks=range(len(labels)), xticklabels=labels, yticklabels=labels,
           xlabel="predicted", ylabel="true", title=f"Confusion matrix ({title})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_roc(probabilities: np.ndarray, y_true: np.ndarray, labels: list[str], path: Path, title: str) -> None:
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    fig, ax = plt.subplots(figsize=(4.5, 4))
    for index, label in enumerate(labels):
        if 0 < (y_true == index).sum() < len(y_true):
            fpr, tpr, _ = roc_curve(y_true == index, probabilities[:, index])
            ax.plot(fpr, tpr, label=label)
    ax.plot([0, 1], [0, 1], "k:", linewidth=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC, one-vs-rest ({title})")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_reliability(before: np.ndarray, after: np.ndarray, y_true: np.ndarray, path: Path, title: str) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4))
    for name, probabilities in (("before calibration", before), ("after calibration", after)):
        bins = reliability(probabilities, y_true)
        ece = expected_calibration_error(probabilities, y_true)
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o-", label=f"{name} (ECE {ece:.3f})")
    ax.plot([0, 1], [0, 1], "k:", linewidth=1)
    ax.set(xlabel="confidence", ylabel="accuracy", title=f"Reliability ({title})", xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from lung_classifier.cli.model_flags import load, model_options
    from training.data import scan_folder

    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.splitlines()[0],
                                     parents=[model_options()])
    parser.add_argument("--data", required=True, type=Path, help="class-per-folder image directory")
    parser.add_argument("--json", type=Path, help="also write the metrics to this JSON file")
    args = parser.parse_args(argv)

    classifier = load(args)
    dataset = scan_folder(args.data)
    labels = list(classifier.labels)
    unknown = sorted({item.label for item in dataset.items} - set(labels))
    if unknown:
        print(f"error: {args.data} has classes the model does not know: {', '.join(unknown)}", file=sys.stderr)
        return 2
    results, items, failures = [], [], []
    for outcome in classifier.analyze_many(dataset.items, read=lambda item: item.path, batch_size=32):
        if outcome.analysis is None:  # scored without it, and said so
            failures.append(str(outcome.error))  # names the file
            continue
        results.append(outcome.analysis)
        items.append(outcome.item)
    if not results:
        print(f"error: no image of {args.data} could be read:\n" + "\n".join(failures), file=sys.stderr)
        return 2
    probabilities = np.array([[r.probabilities[label] for label in labels] for r in results])
    y_true = np.array([labels.index(item.label) for item in items])
    metrics = report(probabilities, y_true, labels, predicted=np.array([labels.index(r.label) for r in results]))
    metrics["ood_flag_rate"] = float(np.mean([r.out_of_distribution for r in results]))
    print(f"model: {classifier.origin}\ndata: {args.data}\n")
    print(format_report(metrics, labels))
    print(f"\nflagged out-of-distribution: {metrics['ood_flag_rate']:.1%}")
    if failures:
        metrics["unreadable"] = failures
        print(f"\nnot scored, unreadable ({len(failures)}):\n" + "\n".join(failures))
    if args.json:
        args.json.write_text(json.dumps(metrics, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
