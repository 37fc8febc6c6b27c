"""RGB slice -> model input: the one geometric step shared by training and serving.

Pixel values stay 0..255; ResNet50's normalisation happens inside the model graph.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

MODEL_INPUT_RESIZE = "bilinear"
"""How a slice is resized to the model's input size (the package config records it as preprocessing.resize).
PIL's bilinear filter widens its support when shrinking, so 512 px slices are antialiased."""


def prepare(rgb: np.ndarray, input_size: int) -> np.ndarray:
    """Resize an H x W x 3 uint8 slice to input_size x input_size float32 pixels (0..255)."""
    pil = Image.fromarray(rgb)
    if pil.size != (input_size, input_size):
        pil = pil.resize((input_size, input_size), Image.Resampling[MODEL_INPUT_RESIZE.upper()])
    return np.asarray(pil, dtype=np.float32)


def prepare_batch(images: list[np.ndarray], input_size: int) -> np.ndarray:
    """Stack prepared slices into one (N, S, S, 3) float32 batch."""
    batch = np.empty((len(images), input_size, input_size, 3), np.float32)
    for index, rgb in enumerate(images):
        batch[index] = prepare(rgb, input_size)
    return batch
