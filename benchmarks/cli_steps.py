"""`python -m benchmarks.cli_steps predict IMAGE [flags]`: the real CLI with its start-up steps timed (row 6c).

Runs lung_classifier.cli.main with the arguments given, in this fresh process, with a StepClock
started before any import of the library: the imports, the argument parsing, the model load (of
which heavy imports and the session or SavedModel opening), then the predict command (of which
decoding and the network), as one JSON line after the CLI's own output.
"""

from __future__ import annotations

import sys

from .step_clock import StepClock


def main(argv: list[str] | None = None) -> int:
    clock = StepClock()
    arguments = argv if argv is not None else sys.argv[1:]
    from lung_classifier import cli
    from lung_classifier.cli import model_flags

    clock.mark("imports (lung_classifier, its CLI)")
    clock.watch_model()
    real_load = model_flags.load

    def load(args):
        clock.mark("argument parsing")
        try:
            return real_load(args)
        finally:
            clock.mark("model load")

    model_flags.load = load
    status = cli.main(arguments)
    clock.mark("predict command (decode, network, verdict, output)")
    clock.report()
    return status


if __name__ == "__main__":
    sys.exit(main())
