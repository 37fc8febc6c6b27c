"""Train the head on a frozen ResNet50, chosen and measured by repeated grouped CV, and write a package.

    python -m training --data DIR --output DIR [--head-only] [--push-to-hub OWNER/NAME]

The story, top to bottom: read the images and group them into pseudo-patients; cache
backbone features once per image and view; compare candidate heads by patient-grouped,
repeated cross-validation through the whole pipeline; fit the chosen head on all the
data, with calibration, the Malignant-first decision rule and the OOD threshold taken
from its out-of-fold outputs; choose the Grad-CAM layer by a deletion test; measure the
OOD guard on shifted slices; choose the whole-scan pooling rule by scan-level CV;
write the package (SavedModel, config, card, plots) and
check the exported model gives the in-memory model's answers.
"""

from __future__ import annotations

import argparse
import os
import shlex
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
    parser.add_argument("--seed", type=int, default=0, help="shuffles the CV folds")
    parser.add_argument("--folds", type=int, default=5, help="K of the grouped K-fold CV")
    parser.add_argument("--repeats", type=int, default=5, help="how many times the K-fold CV is reshuffled")
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
    from lung_classifier.model import backbone
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
    import tensorflow as tf

    from lung_classifier.model.network import LungModel, build_extractor
    from training import cv, data, decision, faithfulness, features, fit, guard, packaging, scan_cv, selection

    started = time.perf_counter()
    tf.config.experimental.enable_op_determinism()

    print(f"1. Reading {args.data}")
    dataset = data.scan_folder(args.data)
    labels = list(dataset.labels)
    groups = np.array(data.group_items(dataset))
    y = np.array([labels.index(item.label) for item in dataset.items])
    print(f"   {len(dataset.items)} images in {len(set(groups.tolist()))} pseudo-patients, "
          f"{len(dataset.skipped)} unreadable skipped")
    if "Malignant" not in labels:
        print("error: no Malignant class folder: the decision rule is built around it", file=sys.stderr)
        return 2
    malignant = labels.index("Malignant")
    too_few = [label for label in labels if len(set(groups[y == labels.index(label)].tolist())) < args.folds]
    if too_few:
        print(f"error: fewer than {args.folds} pseudo-patients of {', '.join(too_few)}: "
              "too few for grouped cross-validation (lower --folds or add data)", file=sys.stderr)
        return 2

    print("2. Backbone features (frozen, cached per image and view)")
    extractor = build_extractor(resnet)
    paths, md5s = [item.path for item in dataset.items], [item.md5 for item in dataset.items]
    views = {view: features.extract(extractor, paths, md5s, args.input_size,
                                    features.FeatureCache(features.cache_key(digest, args.input_size, view)), view)
             for view in features.VIEWS}

    print(f"3. Choosing the head by {args.folds}-fold grouped CV, repeated {args.repeats} times")
    folds = cv.grouped_folds(y, groups, args.folds, args.repeats, args.seed)
    results = selection.compare(views, y, labels, folds, malignant, decision.MIN_MALIGNANT_RECALL)
    chosen = selection.best(results)
    print(cv.format_summary(chosen.summary, chosen.crossfitted.confusion(y, len(labels)), labels,
                            args.folds, args.repeats))
    without_rule = cv.summarise(cv.cross_fit(chosen.oof, y, labels, malignant, 0.0).reports, labels)
    print(f"   without the recall-first rule: macro-F1 {cv.format_interval(without_rule, 'macro_f1')}, "
          f"Malignant recall {cv.format_interval(without_rule, 'recall_Malignant')}")

    print(f"4. Fitting the chosen head ({chosen.settings.describe()}) on all {len(y)} images")
    rows, targets = fit.training_rows(views, y, np.arange(len(y)), chosen.settings)
    linear = fit.fit_linear(rows, targets, len(labels), chosen.settings)
    ood = fit.ood_statistics((views["plain"] - linear.mean) / linear.scale)
    repeats = chosen.oof.logits.shape[0]
    pipeline = cv.fit_pipeline(chosen.oof.logits.reshape(-1, len(labels)), chosen.oof.ood_scores.ravel(),
                               np.tile(y, repeats), malignant, decision.MIN_MALIGNANT_RECALL)
    head = fit.assemble(linear, ood, pipeline.calibration, pipeline.offsets, pipeline.ood_threshold)
    print(f"   temperature {pipeline.calibration.temperature:.3f}, decision offsets {np.round(pipeline.offsets, 2)}, "
          f"OOD threshold {pipeline.ood_threshold:.3f}")

    print("5. Grad-CAM layer by the deletion test, and the OOD guard on shifted slices")
    model = LungModel(extractor, head, args.input_size)
    probe = guard.probe_slices(paths, y, args.input_size)
    derived = features.ArrayFeatures(extractor, args.input_size,
                                     features.FeatureCache(features.cache_key(digest, args.input_size, "derived")))
    cam = faithfulness.measure(model, probe, seed=args.seed, features=derived)
    print(faithfulness.format_table(cam))
    model = LungModel(extractor, head, args.input_size, cam=cam["chosen"])
    shifts = guard.measure(model, probe, args.input_size, malignant, features=derived)
    derived.save()
    print(guard.format_table(shifts))

    print("6. Whole-scan rule by scan-level CV (pseudo-patients as scans)")
    scan_results = scan_cv.compare(chosen.crossfitted, y, groups, folds, labels)
    scan_chosen = scan_cv.best(scan_results)
    print(scan_cv.format_table(scan_results, scan_chosen))

    print(f"7. Writing the package to {args.output}")
    command = "python -m training " + " ".join(shlex.quote(a) for a in args.argv)
    training = packaging.TrainingRecord(
        args=args, dataset=dataset, groups=groups, y=y, labels=labels, digest=digest, results=results,
        chosen=chosen, without_rule=without_rule, pipeline=pipeline, faithfulness=cam, shifts=shifts,
        scan_results=scan_results, scan_chosen=scan_chosen,
        command=command,
        seconds=round(time.perf_counter() - started))
    status = packaging.write(args.output, model, head, training)
    if status:
        return status
    if args.push_to_hub:
        from lung_classifier.package import hub
        print(f"   pushed to {args.push_to_hub} at commit {hub.upload(args.output, args.push_to_hub).oid}")
    print(f"Done in {time.perf_counter() - started:.0f} s: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
