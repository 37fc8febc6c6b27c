"""Argument types that check a value when it is parsed: a wrong one is a one-line usage error before any work.

`--folds 0`, `--input-size 7`, `scan --csv` into a folder that cannot be written and
`predict` on a folder used to fail with a traceback, some only after the expensive work
(loading ResNet50, a whole scan's analysis) was done.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path


def whole_number(low: int, high: int | None = None) -> Callable[[str], int]:
    """An int from `low` (to `high`, when given)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, not {text!r}") from None
        if value < low or (high is not None and value > high):
            span = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"must be {span}, got {value}")
        return value

    return parse


def writable_file(text: str) -> str:
    """A file this process can create or overwrite: its folder exists and is writable, and it is no folder."""
    path = Path(text)
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder, not a file to write")
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(f"cannot write {text}: folder {folder} does not exist")
    if not os.access(path if path.exists() else folder, os.W_OK):
        raise argparse.ArgumentTypeError(f"cannot write {text}: permission denied")
    return text


def slice_file(text: str) -> str:
    """One image or DICOM file (a folder is a scan: `python -m lung_classifier scan`)."""
    if Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder: predict takes image or DICOM files "
                                         f"(for a whole scan: python -m lung_classifier scan {text})")
    return text
