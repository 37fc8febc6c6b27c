"""The command-line flags of every program that loads a model (the CLI's commands, the demo, evaluation).

One argparse parent, so `--model`, `--revision`, `--trust-saved-model`, `--runtime` and
`--precision` mean the same everywhere; :func:`load` turns them into a LungClassifier.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from ..model.precision import CHOICES, RUNTIMES, uses_tensorflow

if TYPE_CHECKING:
    from ..classifier import LungClassifier


def model_options() -> argparse.ArgumentParser:
    """A parent parser (``parents=[model_options()]``) with the model-loading flags."""
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("model")
    group.add_argument("--model", default=None, help="package directory or Hub repo id (default: embedded model)")
    group.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit sha)")
    group.add_argument("--trust-saved-model", action="store_true",
                       help="load the package's own SavedModel graph (only for packages you trust) instead of "
                            "rebuilding it from the head and the standard ResNet50")
    group.add_argument("--runtime", choices=RUNTIMES, default="auto",
                       help="what runs the backbone (default: onnxruntime where installed, else tensorflow; "
                            "a trusted SavedModel runs on tensorflow)")
    group.add_argument("--precision", choices=CHOICES, default="auto",
                       help="the backbone's number format (default: int8 on onnxruntime where the CPU has VNNI, "
                            "bfloat16 on tensorflow where it has AVX-512 BF16 or AMX, else float32)")
    return parser


def load(args: argparse.Namespace) -> LungClassifier:
    """The classifier the flags name; where TensorFlow will run, its native start-up lines are kept off the
    terminal (on ONNX Runtime it is not imported at all)."""
    from ..classifier import LungClassifier

    if _runs_tensorflow(args):
        with native_stderr_silenced():
            import tensorflow  # noqa: F401 - imported here, quietly, before the package loads it

    return LungClassifier.from_pretrained(args.model, revision=args.revision, trust_saved_model=args.trust_saved_model,
                                          precision=args.precision, runtime=args.runtime)


def _runs_tensorflow(args: argparse.Namespace) -> bool:
    """Whether these flags will run TensorFlow: they choose it, or they trust a package's SavedModel and the
    package has one (a Hub repo, not yet fetched, is assumed to)."""
    if uses_tensorflow(args.precision, args.runtime, trust_saved_model=False):
        return True
    if not args.trust_saved_model:
        return False
    from ..classifier import DEFAULT_MODEL
    from ..package.format import SAVED_MODEL

    local = Path(args.model).expanduser() if args.model else DEFAULT_MODEL
    return not local.exists() or (local / SAVED_MODEL).is_dir()


@contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """File descriptor 2 goes to /dev/null inside the block, then back.

    On machines with CUDA libraries, ``import tensorflow`` writes lines from C++ ("Unable to
    register cuDNN factory", absl's "All log messages before absl::InitializeLog()") that
    TF_CPP_MIN_LOG_LEVEL does not hide; only fd 2 can. An exception still raises, and prints after.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
