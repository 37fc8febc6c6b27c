"""Train the head on a frozen ResNet50 and write a model package.

    python -m training --data DIR --output DIR [--head-only] [--push-to-hub OWNER/NAME]

The story, top to bottom: read and group the images, split by whole pseudo-patients,
cache backbone features, fit the head on train, calibrate on validation, measure on
test, write the package (SavedModel, config, card, plots) and check the exported model
gives the in-memory model's probabilities.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

if TYPE_CHECKING:
    import keras


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path, help="class-per-folder image directory")
    parser.add_argument("--output", required=True, type=Path, help="package directory to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--name", default="lung-ct-resnet50", help="model name in the card and config")
    parser.add_argument("--weights", help="ResNet50 ImageNet notop weights file (default: resolved automatically)")
    parser.add_argument("--head-only", action="store_true",
                        help="write no SavedModel (the repo's embedded default: rebuilt on first load)")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the package to this Hub model repo")
    args = parser.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from lung_classifier import backbone
    from training.data import DatasetError, require_class_folders

    try:
        require_class_folders(args.data)  # fail on a wrong --data before loading ResNet50
        source = backbone.resolve_weights(args.weights)
        print(f"Backbone weights: {source.origin}")
        resnet = backbone.load_resnet50(source, input_shape=(args.input_size, args.input_size, 3))
        return train(args, resnet, backbone.model_digest(resnet))
    except (DatasetError, backbone.BackboneWeightsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def train(args: argparse.Namespace, resnet: "keras.Model", digest: str) -> int:
    """Everything after the backbone is loaded (tests pass a tiny stand-in backbone)."""
    started = time.perf_counter()

    import tensorflow as tf

    from lung_classifier import package
    from lung_classifier.model import TAPS, Head, HeadVariables, LungModel, build_extractor, head_outputs
    from lung_classifier.preprocessing import RESAMPLE, prepare_batch
    from lung_classifier.images import load_rgb
    from training import card, data, evaluate, features, fit

    tf.config.experimental.enable_op_determinism()

    print(f"1. Reading {args.data}")
    dataset = data.scan_folder(args.data)
    labels = list(dataset.labels)
    groups = data.group_items(dataset)
    splits = data.grouped_split(dataset, groups, seed=args.seed)
    summary = data.split_summary(dataset, groups, splits)
    split_table = data.format_split_table(summary)
    duplicates = dataset.duplicate_sets()
    print(f"   {len(dataset.items)} images, {len(dataset.skipped)} unreadable skipped, "
          f"{sum(len(s) - 1 for s in duplicates)} exact duplicates (kept within one group)")
    print(split_table)
    empty = [f"{label} in {split}" for label, row in summary["classes"].items()
             for split, cell in row.items() if not cell["images"]]
    if empty:
        print(f"error: too few pseudo-patient groups to split: no images of {', '.join(empty)}", file=sys.stderr)
        return 2

    print("2. Backbone features (frozen, cached per image)")
    extractor = build_extractor(resnet)
    cache = features.FeatureCache(features.cache_key(digest, args.input_size))
    x = features.extract(extractor, [i.path for i in dataset.items], [i.md5 for i in dataset.items],
                         args.input_size, cache)
    y = np.array([labels.index(item.label) for item in dataset.items])
    part = {name: np.array([s == name for s in splits]) for name in ("train", "val", "test")}

    print("3. Fitting the head on train, calibrating on validation")
    fitted = fit.fit(x[part["train"]], y[part["train"]], x[part["val"]], y[part["val"]], len(labels), args.seed)

    def outputs(head: Head, rows: np.ndarray) -> dict[str, np.ndarray]:
        return {k: v.numpy() for k, v in head_outputs(tf.constant(x[rows]), HeadVariables(head)).items()}

    head = fit.with_ood_threshold(fitted.head, outputs(fitted.head, part["val"])["ood_score"])
    test = outputs(head, part["test"])
    uncalibrated = tf.nn.softmax(test["logits"]).numpy()
    metrics = {
        "test": evaluate.report(test["probabilities"], y[part["test"]], labels),
        "test_uncalibrated_ece": evaluate.expected_calibration_error(uncalibrated, y[part["test"]]),
        "test_ood_flag_rate": float(np.mean(test["ood_score"] > head.ood_threshold)),
        "validation": evaluate.report(outputs(head, part["val"])["probabilities"], y[part["val"]], labels),
        "l2_search": fitted.search,
    }
    print(evaluate.format_report(metrics["test"], labels))
    print(f"   ECE {metrics['test_uncalibrated_ece']:.4f} -> {metrics['test']['ece']:.4f} after temperature "
          f"{float(head.temperature):.3f}; OOD flags on test {metrics['test_ood_flag_rate']:.1%}")

    print(f"4. Writing the package to {args.output}")
    out = args.output
    if out.exists() and any(out.iterdir()) and not (out / package.CONFIG).is_file():
        print(f"error: {out} is not empty and holds no package; refusing to overwrite it", file=sys.stderr)
        return 2
    (out / "plots").mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / package.SAVED_MODEL, ignore_errors=True)
    (out / package.CONFIG).unlink(missing_ok=True)
    head.save(out / package.HEAD)
    evaluate.plot_confusion(metrics["test"], labels, out / "plots/confusion_matrix.png")
    evaluate.plot_roc(test["probabilities"], y[part["test"]], labels, out / "plots/roc_curves.png")
    evaluate.plot_reliability(uncalibrated, test["probabilities"], y[part["test"]], out / "plots/reliability.png")
    evaluate.plot_history(fitted.history, out / "plots/training_curves.png")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    seconds = round(time.perf_counter() - started)
    config = {
        "name": args.name,
        "model_version": "1.0.0",
        "labels": labels,
        "input": {"size": args.input_size, "channels": "RGB", "dtype": "float32", "range": [0, 255],
                  "modality": "axial chest CT slice, windowed (lung window for DICOM input)"},
        "preprocessing": {"decoder": "lung_classifier.images.load_rgb", "resize": RESAMPLE,
                          "normalisation": "inside the model (ResNet50 caffe mode)"},
        "backbone": {"architecture": "keras.applications.ResNet50", "weights": "imagenet", "include_top": False,
                     "frozen": True, "taps": list(TAPS), "weights_sha256": digest},
        "head": {"file": package.HEAD, "type": "standardise + linear softmax", "l2": fitted.l2},
        "temperature": float(head.temperature),
        "ood": {"threshold": float(head.ood_threshold), "quantile_of_validation": fit.OOD_QUANTILE,
                "components": int(head.ood_components.shape[0])},
        "signatures": {"serving_default": ["probabilities", "ood_score"],
                       "explain": ["probabilities", "ood_score", "heatmap"], "features": ["features"]},
        "training": {"data": str(args.data), "seed": args.seed, "split": summary,
                     "exact_duplicates": sum(len(s) - 1 for s in duplicates),
                     "grouping": "pseudo-patients: exact duplicates + adjacent near-identical slices",
                     "seconds": seconds},
    }
    command = "python -m training " + " ".join(shlex.quote(a) for a in args.argv)
    card.write_card(out, {
        "metadata": card.metadata(config, metrics["test"]), "name": args.name, "labels": ", ".join(labels),
        "backbone_digest": digest, "taps": ", ".join(TAPS), "feature_dim": x.shape[1],
        "input_size": args.input_size, "l2": fitted.l2, "temperature": f"{float(head.temperature):.3f}",
        "ood_components": head.ood_components.shape[0], "ood_threshold": f"{float(head.ood_threshold):.3f}",
        "ood_quantile": fit.OOD_QUANTILE, "n_images": len(dataset.items),
        "n_duplicates": sum(len(s) - 1 for s in duplicates), "seed": args.seed, "split_table": split_table,
        "test_report": evaluate.format_report(metrics["test"], labels),
        "ece_before": f"{metrics['test_uncalibrated_ece']:.4f}", "ece_after": f"{metrics['test']['ece']:.4f}",
        "ood_flag_rate": f"{metrics['test_ood_flag_rate']:.1%}",
        "search": ", ".join(f"L2={k}: {v:.3f}" for k, v in fitted.search.items()),
        "repo_hint": args.push_to_hub or "OWNER/NAME", "command": command, "train_seconds": seconds,
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores",
    })
    if not args.head_only:
        LungModel(extractor, head, args.input_size).export(out / package.SAVED_MODEL)
    package.write_config(out, config)

    if not args.head_only:
        print("5. Checking the exported SavedModel against the in-memory model")
        loaded = tf.saved_model.load(str(out / package.SAVED_MODEL))
        test_paths = [item.path for item, keep in zip(dataset.items, part["test"]) if keep]
        exported = loaded.signatures["serving_default"](
            images=tf.constant(prepare_batch([load_rgb(p) for p in test_paths], args.input_size)))
        gap = float(np.abs(exported["probabilities"].numpy() - test["probabilities"]).max())
        print(f"   max |difference| in probabilities over {len(test_paths)} test images: {gap:.2e}")
        if gap > 1e-4:
            print("error: the exported model disagrees with the in-memory model", file=sys.stderr)
            return 1
    if args.push_to_hub:
        from lung_classifier import hub
        print(f"   pushed to {args.push_to_hub} at commit {hub.upload(out, args.push_to_hub)}")
    print(f"Done in {time.perf_counter() - started:.0f} s: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
