"""Start-up: less work before the server answers, and none left for the first request.

`lean_tensorflow_import` spares the import of all of Keras (and scikit-learn) that
`import tensorflow` does for Keras objects in SavedModels (where TensorFlow runs at all);
`warm_up` runs /predict's model once in the background while the page is built and the
server starts.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
from pathlib import Path

import numpy as np

from lung_classifier import LungClassifier
from lung_classifier.decoding.pool import pool

LEGACY_KERAS = "TF_USE_LEGACY_KERAS"


def lean_tensorflow_import() -> bool:
    """Keep `import tensorflow` from importing Keras (about 1.5 s of CPU); True if it will.

    TensorFlow imports Keras's optimizers eagerly, for Keras models inside a SavedModel;
    the served graph is a plain tf.Module's signatures and needs none. With
    TF_USE_LEGACY_KERAS set TensorFlow tries the legacy tf_keras package instead and skips
    it when it is absent (it is not a requirement), so this is done only then, and only
    before TensorFlow is imported. `import keras` still gives Keras 3 (the package rebuild
    uses it); only `tf.keras` is unusable, and this app never uses it.
    """
    if "tensorflow" in sys.modules or LEGACY_KERAS in os.environ or importlib.util.find_spec("tf_keras"):
        return False
    os.environ[LEGACY_KERAS] = "1"
    return True


def warm_up(classifier: LungClassifier) -> threading.Thread:
    """Run /predict's model call once on a blank slice, in a background thread.

    The first call sets up the runtime's graph (ONNX Runtime's first run, or TensorFlow's
    graph set-up, about a second). Requests that arrive meanwhile run as usual (the
    classifier is thread-safe) and share that set-up. Grad-CAM's graph is left until a
    browser opens the page (Handlers.page_opened): now, it would compete with the first
    /predict for the CPU.
    The decode workers start meanwhile too (each imports its decoders, about 0.3 s of CPU).
    """
    blank = np.full((classifier.input_size, classifier.input_size), 128, np.uint8)
    threading.Thread(target=pool().warm, name="decode-workers-start", daemon=True).start()
    thread = threading.Thread(target=classifier.analyze, args=(blank,), name="model-warm-up", daemon=True)
    thread.start()
    return thread


def example_files(directory: Path, limit: int = 6) -> list[str]:
    """The example slices, copied into Gradio's cache when the page is built (no folder is served)."""
    if not directory.is_dir():
        sys.exit(f"error: --examples {directory}: no such directory; name a folder of CT slice images")
    suffixes = {".jpg", ".jpeg", ".png", ".dcm", ".bmp", ".tif", ".tiff"}
    return [str(p.resolve()) for p in sorted(directory.iterdir()) if p.suffix.lower() in suffixes][:limit]
