"""The command line: `python -m lung_classifier predict IMAGE... [--model SOURCE] [--json]`
and `python -m lung_classifier scan PATH... [--json | --csv OUT]`.

One module per command (predict.py, scan.py), the model flags every program shares in
model_flags.py; this parser loads the model the same way for each command, then hands over.
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
    from . import predict, scan
    from .model_flags import load, model_options

    parser = argparse.ArgumentParser(prog="python -m lung_classifier")
    commands = parser.add_subparsers(dest="command", required=True)
    shared = [model_options()]  # predict and scan load the model the same way
    predict.add_parser(commands, shared)
    scan.add_parser(commands, shared)
    args = parser.parse_args(argv)

    try:
        classifier = load(args)
    except (PackageError, HubError, BackboneWeightsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.command == "scan":
        return scan.run_scan(classifier, args)
    return predict.run_predict(classifier, args)
