"""`python -m lung_classifier predict IMAGE... [--json]`: each slice's label and screening answer (or why there is
no diagnosis), with the page's one-line reason, from the command line.

Exit codes: 0 every file answered (a flagged slice is an answer), 1 some file could not be
read (the others are still answered), 2 the model cannot be loaded (lung_classifier.cli).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any

from ..decoding.limits import ImageError
from ..verdict import labels_meaning, reason_line, shown_label
from .arguments import slice_file

if TYPE_CHECKING:
    from ..classifier import LungClassifier


def add_parser(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    predict = commands.add_parser("predict", parents=parents, help="classify CT slice images")
    predict.add_argument("images", nargs="+", type=slice_file, help="image or DICOM files")
    predict.add_argument("--json", action="store_true", help="one JSON object per image on stdout")


def run_predict(classifier: LungClassifier, args: argparse.Namespace) -> int:
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
            print(f"{path}: {result.verdict}; {result.screening}")
            print(f"  {reason_line(result, meanings)}")
        else:
            scores = "  ".join(f"{label} {p:.3f}" for label, p in result.probabilities.items())
            print(f"{path}: {shown_label(result.label, meanings)}; {result.screening}  ({scores})")
            print(f"  {reason_line(result, meanings)}")
    return 1 if failures else 0


def _naming(path: str, message: str) -> str:
    """The error naming the file once, by the path as given (decoders name it by its base name)."""
    name = os.path.basename(path)
    if path in message:
        return message
    return path + message[len(name):] if message.startswith(name) else f"{path}: {message}"
