"""`python -m benchmarks.startup_phases IMAGE [model flags]`: app.py's start-up steps timed one after another.

Run in a fresh process by benchmarks.cold_start (row 6): app.py is imported, then loads its model
the way its main() does (lean TensorFlow import, the model flags given), answers one predict and
builds its page, each step timed with a StepClock (heavy imports and the session or SavedModel
opening inside them too), as one JSON line.
"""

from __future__ import annotations

import sys

from .step_clock import StepClock


def main(argv: list[str] | None = None) -> int:
    clock = StepClock()
    arguments = argv if argv is not None else sys.argv[1:]
    image, flags = arguments[0], arguments[1:]
    import app
    from demo.startup import example_files, lean_tensorflow_import

    clock.mark("import app.py (Gradio, demo, library)")
    clock.watch_model()
    lean_tensorflow_import()
    classifier = app.load(app.parse_args(flags))
    clock.mark("model load")
    classifier.predict(image)
    clock.mark("first model call")
    app.build_demo(classifier, example_files(app.EXAMPLES))
    clock.mark("page build")
    clock.report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
