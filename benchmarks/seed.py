"""The seed-style serving path the library replaced: a Keras model held in memory by a
Flask-like handler, one `keras.utils.load_img` + `model.predict(array)` per request.

The network is the same one the package exports (frozen ResNet50, the same taps and the
same trained head), so the comparison measures the serving path, not a different model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def build_seed_model(head, input_size: int = 224, weights: str | None = None):
    """keras.Model: raw 0..255 RGB -> calibrated probabilities, built like the seed built it."""
    import keras

    from lung_classifier.model import backbone
    from lung_classifier.model.network import build_extractor

    resnet = backbone.load_resnet50(backbone.resolve_weights(weights), input_shape=(input_size, input_size, 3))
    extractor = build_extractor(resnet)
    pixels = keras.Input((input_size, input_size, 3), name="image")
    maps = extractor(pixels)
    pooled = keras.ops.concatenate([keras.ops.mean(m, axis=(1, 2)) for m in maps], axis=-1)
    z = (pooled - head.feature_mean) / head.feature_scale
    logits = keras.ops.matmul(z, head.kernel) + head.bias
    probabilities = keras.ops.softmax(logits / head.temperature, axis=-1)
    return keras.Model(pixels, probabilities, name="seed_style")


def seed_predict(model, path: str | Path, labels: tuple[str, ...], input_size: int = 224) -> dict[str, float]:
    """What a seed Flask handler did per request: load and resize, then model.predict on one array."""
    import keras

    image = keras.utils.load_img(path, target_size=(input_size, input_size))
    array = keras.utils.img_to_array(image)[None]
    probabilities = model.predict(array, verbose=0)[0]
    return {label: float(p) for label, p in zip(labels, np.asarray(probabilities))}
