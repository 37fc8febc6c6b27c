"""Train the head on a frozen ResNet50, chosen and measured by repeated grouped CV, and write a package.

    python -m training --source NAME=FOLDER[;OPTIONS] [--source ...] --output DIR [--no-savedmodel]
    python -m training --data DIR --output DIR          (one image source)

The story, top to bottom: read each source (its label map, its grouping rule, DICOM
rendered at several windows); cache backbone features once per file and rendering;
compare candidate heads by patient-grouped, repeated cross-validation through the whole
pipeline; recognise each source by statistics of its rendering, validated left out; fit the
chosen head on all the data, with calibration, each source's operating point (calibration,
rule-out threshold) and the two OOD thresholds taken from its out-of-fold outputs; measure
every source within CV and left out (leave-one-source-out); choose the Grad-CAM layer by
a deletion test; measure the OOD guard on shifted slices; choose the whole-scan pooling
rule by scan-level CV and run each DICOM series through it; write the package
(SavedModel, config, card, plots) and check the exported model gives the in-memory
model's answers.
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
    from lung_classifier.cli.arguments import whole_number
    from lung_classifier.package.validation import INPUT_SIZES

    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__.splitlines()[0])
    parser.add_argument("--source", action="append", default=[], metavar="SPEC",
                        help="a training source: 'NAME=FOLDER[;labels=PATTERN:CLASS,...][;grouping=RULE]"
                             "[;findings=PATTERN:TEXT,...][;licence=TEXT]' (repeat for several; see training.sources)")
    parser.add_argument("--data", type=Path, help="one class-per-folder image source (the same as --source NAME=DATA)")
    parser.add_argument("--output", required=True, type=Path, help="package directory to write")
    parser.add_argument("--seed", type=int, default=0, help="shuffles the CV folds")
    parser.add_argument("--folds", type=whole_number(2), default=5, help="K of the grouped K-fold CV (at least 2)")
    parser.add_argument("--repeats", type=whole_number(1), default=5,
                        help="how many times the K-fold CV is reshuffled")
    parser.add_argument("--input-size", type=whole_number(*INPUT_SIZES), default=224,
                        help=f"the model's input side in pixels ({INPUT_SIZES[0]} to {INPUT_SIZES[1]})")
    parser.add_argument("--name", default="lung-ct-resnet50", help="model name in the card and config")
    parser.add_argument("--weights", help="ResNet50 ImageNet notop weights file (default: resolved automatically)")
    parser.add_argument("--no-savedmodel", action="store_true",
                        help="write no SavedModel (the repo's embedded default: rebuilt on first load)")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the package to this Hub model repo")
    parser.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="where image files' backbone features are computed: this process, or Ray Data actors "
                             "(the cache then written as shards as they come); DICOM renderings stay local")
    parser.add_argument("--address", default=None, help="ray: join this running cluster instead of starting one")
    parser.add_argument("--workers", type=int, default=None, help="ray: feature actors (default: one per CPU)")
    args = parser.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    from training.sources import SourceError, check_unique, parse_source

    try:
        args.sources = [parse_source(text) for text in args.source]
        if args.data is not None:
            args.sources.append(parse_source(f"{args.data.resolve().name or 'data'}={args.data}"))
        check_unique(args.sources)
    except SourceError as exc:
        parser.error(str(exc))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from lung_classifier.model import backbone
    from training.data import DatasetError, require_class_folders

    try:
        for source in args.sources:  # fail on a wrong folder before loading ResNet50
            require_class_folders(source.folder)
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
    from training import (cv, decision, faithfulness, features, fit, guard, int8_calibration, multisource, packaging,
                          per_source, recognition, scan_cv, selection)
    from training.data import DatasetError

    started = time.perf_counter()
    tf.config.experimental.enable_op_determinism()

    print(f"1. Reading {len(args.sources)} source(s): " + ", ".join(f"{s.name} ({s.folder})" for s in args.sources))
    try:
        read = multisource.read_sources(args.sources)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    print("2. Backbone features (frozen, cached per file and per rendering) and groups")
    extractor = build_extractor(resnet)
    engine = features.Engine(args.engine, args.address, args.workers)
    training = multisource.build(read, extractor, digest, args.input_size, engine)
    labels, y, groups, sources = training.labels, training.y, training.group, training.source
    for name, entry in training.describe().items():
        counts = ", ".join(f"{label} {c['slices']} slices / {c['groups']} groups" for label, c in entry["classes"].items())
        print(f"   {name}: {counts}; {entry['rows']} rows; {entry['skipped']} unreadable skipped")
    if "Malignant" not in labels:
        print("error: no Malignant class folder: the decision rule is built around it", file=sys.stderr)
        return 2
    malignant = labels.index("Malignant")
    too_few = [label for label in labels if len(set(groups[y == labels.index(label)].tolist())) < args.folds]
    if too_few:
        print(f"error: fewer than {args.folds} pseudo-patients of {', '.join(too_few)}: "
              "too few for grouped cross-validation (lower --folds or add data)", file=sys.stderr)
        return 2

    print(f"3. Choosing the head by {args.folds}-fold grouped CV (strata: source x class), "
          f"repeated {args.repeats} times")
    folds = cv.grouped_folds(y, groups, args.folds, args.repeats, args.seed, sources)
    results = selection.compare(training.features, y, sources, labels, folds, malignant, decision.RULE_OUT_RECALL)
    chosen = selection.best(results)
    print(cv.format_summary(chosen.summary, chosen.crossfitted.confusion(y, len(labels)), labels,
                            args.folds, args.repeats))
    print("   which source a slice looks like: recognisers of rendering statistics, cross-fitted on the same folds")
    recognised = recognition.fit(training, folds)
    print(recognition.format_table(recognised.table))
    validated = per_source.validated_sources(training, chosen.crossfitted)
    within = per_source.within(training, chosen.crossfitted, chosen.oof, recognised.held_out_flagged, validated)
    print(per_source.format_within(within))

    print(f"4. Fitting the chosen head ({chosen.settings.describe()}) on all {len(y)} rows")
    linear = fit.fit_linear(training.features, y, len(labels), chosen.settings, sources)
    ood = fit.guard_statistics((training.features - linear.mean) / linear.scale)
    repeats = chosen.oof.logits.shape[0]
    pipeline = cv.fit_pipeline(chosen.oof.logits.reshape(-1, len(labels)), chosen.oof.ood_scores.reshape(-1, 2),
                               np.tile(y, repeats), malignant, decision.RULE_OUT_RECALL, np.tile(sources, repeats))
    head = fit.assemble(linear, ood, pipeline.calibration, pipeline.thresholds)
    print(f"   temperature {pipeline.calibration.temperature:.3f}, OOD thresholds: PCA score "
          f"{pipeline.thresholds[0]:.3f}, kNN distance {pipeline.thresholds[1]:.3f}; rule-out thresholds "
          + ", ".join(f"{training.names[s]} {p.rule_out:.4f}" for s, p in pipeline.points.items()))

    print("5. Leave-one-source-out")
    loso = (per_source.loso(training, chosen.settings, args.folds, args.seed, recognised.recognisers)
            if len(training.sources) > 1 else {})
    if loso:
        print(per_source.format_loso(loso))

    print("6. Grad-CAM layer by the deletion test, and the OOD guard on shifted slices")
    model = LungModel(extractor, head, args.input_size)
    images = np.flatnonzero(~training.dicom_rows())
    probe_paths = [training.sources[training.source[i]].dataset.items[training.item[i]].path for i in images]
    probe = guard.probe_slices(probe_paths, y[images], args.input_size)
    derived = features.ArrayFeatures(extractor, args.input_size,
                                     features.FeatureCache(features.cache_key(digest, args.input_size, "derived")))
    cam = faithfulness.measure(model, probe, seed=args.seed, features=derived)
    print(faithfulness.format_table(cam))
    model = LungModel(extractor, head, args.input_size, cam=cam["chosen"])
    shifts = guard.measure(model, probe, args.input_size, malignant, features=derived)
    derived.save()
    print(guard.format_table(shifts))

    print("7. Whole-scan rule by scan-level CV (pseudo-patients and DICOM series as scans)")
    scans = scan_cv.scan_rows(training)
    scan_crossfitted, scan_folds = scan_cv.restrict(chosen.crossfitted, folds, scans,
                                                         recognised.held_out_flagged)
    scan_results = scan_cv.compare(scan_crossfitted, y[scans], groups[scans], scan_folds, labels)
    scan_chosen = scan_cv.best(scan_results)
    print(scan_cv.format_table(scan_results, scan_chosen))
    scan_checks = per_source.scan_checks(training, chosen.crossfitted, scan_chosen.rule,
                                         recognised.held_out_flagged, validated)
    print(per_source.format_scans(scan_checks))

    print(f"8. Writing the package to {args.output}")
    command = "python -m training " + " ".join(shlex.quote(a) for a in args.argv)
    record = packaging.TrainingRecord(
        args=args, training=training, results=results, digest=digest,
        chosen=chosen, pipeline=pipeline, recognition=recognised, validated=validated, faithfulness=cam, shifts=shifts,
        scan_results=scan_results, scan_chosen=scan_chosen, within=within, loso=loso, scan_checks=scan_checks,
        command=command, seconds=round(time.perf_counter() - started))
    status = packaging.write(args.output, model, head, record)
    if status:
        return status
    int8_calibration.add_to_package(args.output, resnet, int8_calibration.spread(
        [[item.path for item in entry.dataset.items] for entry in training.sources]))
    print(f"   int8 activation ranges measured on {int8_calibration.SLICES} development slices")
    if args.push_to_hub:
        from lung_classifier.package import hub
        print(f"   pushed to {args.push_to_hub} at commit {hub.upload(args.output, args.push_to_hub).oid}")
    print(f"Done in {time.perf_counter() - started:.0f} s: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
