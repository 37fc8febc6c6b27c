"""`python -m lung_classifier scan PATH... [--json | --csv OUT]`: one scan's verdict from the command line.

PATH is a folder, a zip file, or several slice files (DICOM of one series, or images).
A progress bar runs on stderr when it is a terminal; stdout carries only the answer:
plain text, one JSON object (--json), or plain text plus the per-slice table (--csv).
Exit codes as for predict: 0 answered (a flagged scan is an answer), 1 the upload
cannot be analysed as one scan, 2 the model cannot be loaded or predates whole-scan analysis.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from typing import TYPE_CHECKING, Any, TextIO

from ..decoding.limits import ImageError
from .arguments import whole_number, writable_file
from ..package.format import PackageError
from ..verdict import SCREENING_MEANING, labels_meaning, shown_label
from ..scan.aggregation import NORMAL
from ..scan.analysis import ScanResult, slice_row

if TYPE_CHECKING:
    from ..classifier import LungClassifier


def add_parser(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    scan = commands.add_parser("scan", parents=parents,
                               help="classify a whole CT scan (folder, zip, or the slice files of one series)")
    scan.add_argument("paths", nargs="+", metavar="PATH",
                      help="a folder or zip file of one scan, or its slice files (DICOM of one series, or images)")
    output = scan.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print one JSON object (verdict, per-slice rows, notes)")
    output.add_argument("--csv", metavar="OUT", type=writable_file, default=None,
                        help="also write the per-slice table to this CSV file")
    scan.add_argument("--top", type=whole_number(1), default=3, metavar="K",
                      help="how many top slices to list (default 3)")
    scan.add_argument("--batch-size", type=whole_number(1), default=16, help="slices decoded and analysed at a time")


def run_scan(classifier: LungClassifier, args: argparse.Namespace) -> int:
    source = args.paths[0] if len(args.paths) == 1 else args.paths
    bar = _ProgressBar() if sys.stderr.isatty() else None
    try:
        result = classifier.analyze_scan(source, top_k=args.top, batch_size=args.batch_size, progress=bar)
    except PackageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ImageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if bar is not None:
            bar.close()
    if args.json:
        print(json.dumps(result.as_dict()))
        return 0
    print_summary(result, sys.stdout, labels_meaning(classifier.config))
    if args.csv:
        write_csv(result, args.csv, classifier.labels)
        print(f"per-slice table: {args.csv}")
    return 0


def print_summary(result: ScanResult, out: TextIO, meanings: dict[str, str] | None = None) -> None:
    """Verdict, probabilities or flag, top slices (numbered from 1, as on the page), notes: what a person reads.

    A flagged scan or slice shows no class probability: its numbers are not meaningful (--json keeps them).
    """
    meanings = meanings or {}
    print(f"slices: {len(result.slices)}", file=out)
    verdict = result.verdict if result.out_of_distribution else shown_label(str(result.label), meanings)
    print(f"verdict: {verdict}", file=out)
    print(f"screening: {result.screening}", file=out)
    print(f"flagged: {result.flagged_summary()}", file=out)
    print(SCREENING_MEANING, file=out)
    if result.out_of_distribution:
        print(f"no diagnosis: {result.ood_reason}", file=out)
        print("top slices (the ones to look at):", file=out)
    else:
        print("probabilities: " + "  ".join(f"{k} {p:.3f}" for k, p in result.probabilities.items()), file=out)
        why = "closest to changing the verdict" if result.label == NORMAL else "drove the verdict"
        print(f"top slices ({why}):", file=out)
    for index in result.top:
        scan_slice = result.slices[index]
        analysis = scan_slice.analysis
        where = f" at {scan_slice.position:.1f} mm" if scan_slice.position is not None else ""
        if analysis.out_of_distribution:
            said = f"{analysis.verdict}: {analysis.ood_reason}"
        else:
            said = (f"{analysis.verdict}; {analysis.screening}  ("
                    + "  ".join(f"{k} {p:.3f}" for k, p in analysis.probabilities.items()) + ")")
        print(f"  slice {scan_slice.number} ({scan_slice.name}){where}: {said}", file=out)
    for note in result.notes:
        print(f"note: {note}", file=out)


def write_csv(result: ScanResult, path: str, labels: tuple[str, ...]) -> None:
    """One row per slice in body order: number (1-based), index, name, position, label (empty when flagged),
    P(label)..., flag."""
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["number", "index", "name", "position", "label", *(f"p_{label}" for label in labels),
                         "out_of_distribution", "malignancy_ruled_out", "reason"])
        for scan_slice in result.slices:
            row = slice_row(scan_slice)
            position = "" if row["position"] is None else f"{row['position']:.3f}"
            writer.writerow([row["number"], row["index"], row["name"], position, row["label"] or "",
                             *(f"{row['probabilities'][label]:.6f}" for label in labels),
                             row["out_of_distribution"], row["malignancy_ruled_out"], row["ood_reason"] or ""])


class _ProgressBar:
    """tqdm on stderr, sized at the first report (the slice count is known only once the upload is checked)."""

    def __init__(self) -> None:
        self._bar = None

    def __call__(self, done: int, total: int) -> None:
        from tqdm import tqdm

        if self._bar is None:
            self._bar = tqdm(total=total, unit="slice", file=sys.stderr, desc="scan")
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
