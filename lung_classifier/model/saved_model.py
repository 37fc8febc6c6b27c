"""A package's TensorFlow SavedModel as a network: pixels in, the served outputs as NumPy arrays out.

Loading happens once: the signatures are concrete graphs, so every later call runs the
model without tracing or rebuilding anything. Also Grad-CAM's home for the ONNX Runtime path
(lung_classifier.model.onnx_runtime has no gradients).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

class SavedModelNetwork:
    """serving_default, explain and (in a reduced-precision rebuild) the float32 `exact` endpoint."""

    runtime = "tensorflow"

    def __init__(self, path: Path):
        import tensorflow as tf

        self._loaded = tf.saved_model.load(str(path))  # keeps the signatures' variables alive
        self._signatures = self._loaded.signatures
        self.rechecks = "exact" in self._signatures
        """Whether :meth:`exact` differs from :meth:`predict` (a bfloat16 build's float32 recheck)."""

    def _run(self, name: str, pixels: np.ndarray) -> dict[str, np.ndarray]:
        import tensorflow as tf

        return {key: value.numpy() for key, value in self._signatures[name](images=tf.constant(pixels)).items()}

    def predict(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        return self._run("serving_default", pixels)

    def exact(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """The served outputs in float32 (the graph's own where it already computes in float32)."""
        return self._run("exact" if self.rechecks else "serving_default", pixels)

    def explain(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """The served outputs and the Grad-CAM `heatmap` (conv4 grid, [0, 1] per image)."""
        return self._run("explain", pixels)
