"""`python -m benchmarks.startup_phases IMAGE`: app.py's start-up steps timed one after another, as JSON.

Run in a fresh process by benchmarks/server.py (row 6): each import is timed where it
happens, so this module imports TensorFlow, Gradio, the library and app.py inside main().
"""

from __future__ import annotations

import json
import sys
import time


def main(argv: list[str] | None = None) -> int:
    image = (argv if argv is not None else sys.argv[1:])[0]
    marks = [("start", time.perf_counter(), time.process_time())]

    def mark(name: str) -> None:
        marks.append((name, time.perf_counter(), time.process_time()))

    from demo.startup import lean_tensorflow_import

    lean = lean_tensorflow_import()
    import tensorflow  # noqa: F401 - timed here

    mark("import tensorflow" + (" (Keras spared)" if lean else " (with Keras)"))
    import gradio  # noqa: F401 - timed here

    mark("import gradio")
    from lung_classifier import LungClassifier

    classifier = LungClassifier.from_pretrained()
    mark("package load (SavedModel)")
    classifier.predict(image)
    mark("first model call")
    import app
    from demo.startup import example_files

    app.build_demo(classifier, example_files(app.EXAMPLES))
    mark("page build")
    print(json.dumps([[name, t - t0, c - c0] for (name, t, c), (_, t0, c0) in zip(marks[1:], marks)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
