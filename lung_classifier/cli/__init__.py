"""The command line: `python -m lung_classifier predict IMAGE... [--model SOURCE] [--json]`,
`python -m lung_classifier scan PATH... [--json | --csv OUT]` and
`python -m lung_classifier archive SOURCE --out results.parquet [--engine local|ray]`.

One module per command (predict.py, scan.py, archive.py), the model flags every program shares in
model_flags.py; this parser loads the model the same way for predict and scan, then hands over
(archive hands the flags to its engine, whose workers load the model themselves).
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv: list[str] | None = None) -> int:
    from ..model.backbone import BackboneWeightsError
    from ..package.format import PackageError
    from ..package.hub import HubError
    from . import archive, predict, scan
    from .model_flags import load, model_options

    parser = argparse.ArgumentParser(prog="python -m lung_classifier")
    commands = parser.add_subparsers(dest="command", required=True)
    shared = [model_options()]  # predict and scan load the model the same way
    predict.add_parser(commands, shared)
    scan.add_parser(commands, shared)
    archive.add_parser(commands, shared)
    args = parser.parse_args(argv)
    if args.command == "archive":
        return archive.run_archive(args)

    try:
        classifier = load(args)
    except (PackageError, HubError, BackboneWeightsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.command == "scan":
        return scan.run_scan(classifier, args)
    return predict.run_predict(classifier, args)
