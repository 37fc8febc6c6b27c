"""`python -m lung_classifier archive SOURCE --out results.parquet [--engine local|ray] [--address ADDR]`.

Every series and image under SOURCE (a folder tree, a zip, or a manifest CSV with a ``path``
column) scored into one table: a row per series, per slice and per image, Parquet or CSV
by OUT's suffix (see lung_classifier.archive). A rerun with the same OUT skips what is
done. Progress on stderr when it is a terminal; stdout gets the closing summary.
Exit codes: 0 every unit has its rows (a refused file is a row), 1 SOURCE or OUT cannot
be used, 2 the model cannot be loaded.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..archive import ENGINES, JournalError, ModelSpec, SourceError, Summary, run
from ..model.backbone import BackboneWeightsError
from ..model.precision import uses_tensorflow
from ..package.format import PackageError
from ..package.hub import HubError
from .model_flags import native_stderr_silenced


def add_parser(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    archive = commands.add_parser("archive", parents=parents,
                                  help="score every series and image under a folder, zip or manifest into one table")
    archive.add_argument("source", metavar="SOURCE", help="a folder tree, a zip, or a manifest CSV (column 'path')")
    archive.add_argument("--out", required=True, help="results file: .parquet or .csv (its journal: OUT.parts/)")
    archive.add_argument("--engine", choices=ENGINES, default="local",
                         help="local: this process; ray: Ray Data actors, one package each (default: local)")
    archive.add_argument("--address", default=None,
                         help="ray: join this running cluster ('auto', or ray://HEAD:10001) instead of starting one")
    archive.add_argument("--workers", type=_positive, default=None,
                         help="ray: model actors (default: as many as the cluster's CPUs allow)")
    archive.add_argument("--worker-cpus", type=_positive, default=1, help="ray: CPUs (threads) per actor (default 1)")
    archive.add_argument("--num-cpus", type=_positive, default=None,
                         help="ray without --address: CPUs of the local cluster (default: all)")
    archive.add_argument("--batch-size", type=_positive, default=16, help="slices per model call (default 16)")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def run_archive(args: argparse.Namespace) -> int:
    model = str(Path(args.model).absolute()) if args.model and Path(args.model).exists() else args.model
    # a folder, as workers find it
    spec = ModelSpec(model, args.revision, args.trust_saved_model, args.precision, args.runtime)
    if args.engine == "local" and uses_tensorflow(args.precision, args.runtime, args.trust_saved_model):
        with native_stderr_silenced():
            import tensorflow  # noqa: F401 - imported here, quietly, before the local engine loads the model
    try:
        summary = run(args.source, args.out, spec, args.engine, address=args.address, workers=args.workers,
                      worker_cpus=args.worker_cpus, num_cpus=args.num_cpus, batch_size=args.batch_size,
                      progress=sys.stderr.isatty())
    except (SourceError, JournalError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (PackageError, HubError, BackboneWeightsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print_summary(summary, args.out)
    return 0


def print_summary(summary: Summary, out: str) -> None:
    """What the run did, in three lines."""
    print(f"units: {summary.units} (already done: {summary.skipped}; scored now: {summary.scored}, of which "
          f"{summary.series} series; refused: {summary.refused})")
    rate = f" ({summary.slices / summary.engine_seconds:.1f} slices/s)" if summary.engine_seconds else ""
    print(f"slices analysed now: {summary.slices} in {summary.seconds:.1f} s{rate}")
    print(f"results: {out} ({summary.rows} rows; journal {out}.parts/)")
