"""Command line for scripts: `python -m lung_classifier predict IMAGE... [--model SOURCE] [--json]`,
and `python -m lung_classifier scan PATH... [--json | --csv OUT]` (lung_classifier.scan.cli)."""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv: list[str] | None = None) -> int:
    from . import HubError, ImageError, PackageError
    from .model.backbone import BackboneWeightsError
    from .options import load, model_options
    from .scan.cli import add_parser, run_scan
    from .verdict import labels_meaning, shown_label

    parser = argparse.ArgumentParser(prog="python -m lung_classifier")
    commands = parser.add_subparsers(dest="command", required=True)
    shared = [model_options()]  # predict and scan load the model the same way
    predict = commands.add_parser("predict", parents=shared, help="classify CT slice images")
    predict.add_argument("images", nargs="+", help="image or DICOM files")
    predict.add_argument("--json", action="store_true", help="one JSON object per image on stdout")
    add_parser(commands, shared)
    args = parser.parse_args(argv)

    try:
        classifier = load(args)
    except (PackageError, HubError, BackboneWeightsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.command == "scan":
        return run_scan(classifier, args)
    meanings = labels_meaning(classifier.config)
    failures = 0
    for path in args.images:
        try:
            result = classifier.analyze(path)
        except ImageError as exc:
            failures += 1
            print(f"error: {_naming(path, str(exc))}", file=sys.stderr)
            continue
        if args.json:  # a flagged input: label None beside the flag, probabilities kept for scripts
            print(json.dumps({"image": path, **result.as_dict()}))
        elif result.out_of_distribution:  # for a person: the reason, and no class probability
            print(f"{path}: {result.verdict}: {result.ood_reason}")
        else:
            scores = "  ".join(f"{label} {p:.3f}" for label, p in result.probabilities.items())
            print(f"{path}: {shown_label(result.label, meanings)}  ({scores})")
    return 1 if failures else 0


def _naming(path: str, message: str) -> str:
    """The error naming the file once, by the path as given (decoders name it by its base name)."""
    name = os.path.basename(path)
    if path in message:
        return message
    return path + message[len(name):] if message.startswith(name) else f"{path}: {message}"


if __name__ == "__main__":
    sys.exit(main())
