"""Command line for scripts: `python -m lung_classifier predict IMAGE... [--model SOURCE] [--json]`,
and `python -m lung_classifier scan PATH... [--json | --csv OUT]` (lung_classifier.scan_cli)."""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv: list[str] | None = None) -> int:
    from . import HubError, ImageError, LungClassifier, PackageError
    from .classifier import OOD_NOTICE
    from .backbone import BackboneWeightsError
    from .precision import CHOICES
    from .scan_cli import add_parser, run_scan

    parser = argparse.ArgumentParser(prog="python -m lung_classifier")
    commands = parser.add_subparsers(dest="command", required=True)
    predict = commands.add_parser("predict", help="classify CT slice images")
    predict.add_argument("images", nargs="+", help="image or DICOM files")
    predict.add_argument("--model", default=None, help="package directory or Hub repo id (default: embedded model)")
    predict.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit sha)")
    predict.add_argument("--json", action="store_true", help="one JSON object per image on stdout")
    predict.add_argument("--trust-saved-model", action="store_true",
                         help="load the package's own SavedModel graph (only for packages you trust) instead of "
                              "rebuilding it from the head and the standard ResNet50")
    add_parser(commands)
    for command in commands.choices.values():  # predict and scan load the model the same way
        command.add_argument("--precision", choices=CHOICES, default="auto",
                             help="the rebuilt backbone's number format (default: bfloat16 where the CPU has "
                                  "AVX-512 BF16 or AMX, else float32)")
    args = parser.parse_args(argv)

    try:
        classifier = LungClassifier.from_pretrained(args.model, revision=args.revision,
                                                    trust_saved_model=args.trust_saved_model,
                                                    precision=args.precision)
    except (PackageError, HubError, BackboneWeightsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.command == "scan":
        return run_scan(classifier, args)
    failures = 0
    for path in args.images:
        try:
            result = classifier.analyze(path)
        except ImageError as exc:
            failures += 1
            print(f"error: {path}: {exc}", file=sys.stderr)
            continue
        if args.json:
            # A flagged input gets no label: scripts that read "label" cannot mistake it for a diagnosis.
            record = {"image": path, **result.as_dict()}
            if result.out_of_distribution:
                record.update(label=None, notice=OOD_NOTICE)
            print(json.dumps(record))
        else:
            scores = "  ".join(f"{label} {p:.3f}" for label, p in result.probabilities.items())
            print(f"{path}: {result.verdict}  ({scores})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
