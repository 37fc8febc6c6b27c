"""Is the Grad-CAM heatmap faithful to the prediction? A deletion test on real slices.

Blacking out the part of the body the heatmap ranks highest should lower the predicted
class's probability more than blacking out a random contiguous region of the same size
inside the body. Background is left alone: blacking out black changes nothing, so it
would be no test. Training runs this for each Grad-CAM layer choice and keeps the best.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf
from scipy import ndimage

from lung_classifier.model.network import CAM_CHOICES, LungModel, head_outputs

FRACTION = 0.2
"""Share of the body's pixels deleted."""
RANDOM_REGIONS = 3
"""Random regions per slice, against the heatmap's one."""
BODY_LEVEL = 30
"""Grey level above which a pixel is tissue; holes (the dark lungs) are filled in."""


def body_mask(image: np.ndarray) -> np.ndarray:
    """Non-background pixels of a prepared slice (H x W x 3, 0..255): tissue with the lungs filled in."""
    tissue = image.mean(axis=-1) > BODY_LEVEL
    return ndimage.binary_fill_holes(tissue)


def top_region(heatmap: np.ndarray, body: np.ndarray, fraction: float = FRACTION) -> np.ndarray:
    """The `fraction` of body pixels the heatmap ranks highest."""
    count = int(round(fraction * body.sum()))
    order = np.argsort(np.where(body, heatmap, -np.inf), axis=None)[::-1][:count]
    region = np.zeros(body.size, bool)
    region[order] = True
    return region.reshape(body.shape)


def random_region(body: np.ndarray, rng: np.random.Generator, fraction: float = FRACTION) -> np.ndarray:
    """A contiguous blob of the same size: the body pixels nearest a random body pixel."""
    count = int(round(fraction * body.sum()))
    rows, columns = np.nonzero(body)
    centre = rng.integers(len(rows))
    distance = (rows - rows[centre]) ** 2 + (columns - columns[centre]) ** 2
    nearest = np.argsort(distance, kind="stable")[:count]
    region = np.zeros_like(body)
    region[rows[nearest], columns[nearest]] = True
    return region


def measure(model: LungModel, images: np.ndarray, seed: int = 0, batch: int = 16,
            features: Callable[[np.ndarray], np.ndarray] | None = None) -> dict[str, Any]:
    """Mean drop in the predicted class's probability: heatmap deletion per CAM choice, and random deletion.

    ``features`` maps the deleted slices to pooled backbone features (default: the model's
    own backbone; training passes a cache, training.features.ArrayFeatures).
    """
    features = features or (lambda deleted: model.features(tf.constant(deleted))["features"].numpy())
    rng = np.random.default_rng(seed)
    cam_maps = tf.function(model.cam_maps)
    drops: dict[str, list[float]] = {name: [] for name in CAM_CHOICES}
    drops["random"] = []
    size = images.shape[1:3]
    for first in range(0, len(images), batch):
        chunk = images[first:first + batch]
        outputs, cams = cam_maps(tf.constant(chunk))
        label = outputs["label"].numpy()
        before = outputs["probabilities"].numpy()[np.arange(len(chunk)), label]
        bodies = [body_mask(image) for image in chunk]

        def drop_after(regions: list[np.ndarray]) -> np.ndarray:
            deleted = np.where(np.stack(regions)[..., None], 0.0, chunk).astype(np.float32)
            after = head_outputs(tf.constant(features(deleted)), model.head)["probabilities"].numpy()
            return before - after[np.arange(len(chunk)), label]

        for name, taps in CAM_CHOICES.items():
            heatmap = tf.add_n([cams[tap] for tap in taps]) / len(taps)
            upsampled = tf.image.resize(heatmap[..., None], size, method="bilinear")[..., 0].numpy()
            drops[name] += drop_after([top_region(h, b) for h, b in zip(upsampled, bodies)]).tolist()
        for _ in range(RANDOM_REGIONS):
            drops["random"] += drop_after([random_region(b, rng) for b in bodies]).tolist()
    result = {name: {"mean_drop": float(np.mean(values)), "n": len(values)} for name, values in drops.items()}
    result["chosen"] = max(CAM_CHOICES, key=lambda name: result[name]["mean_drop"])
    return result


def format_table(result: dict[str, Any]) -> str:
    lines = ["| deleted (20% of the body, blacked out) | mean drop in the predicted class's probability | slices |",
             "| --- | --- | --- |"]
    for name in CAM_CHOICES:
        mark = " **(chosen)**" if name == result["chosen"] else ""
        lines.append(f"| top of the Grad-CAM heatmap at {name}{mark} | {result[name]['mean_drop']:.3f} | "
                     f"{result[name]['n']} |")
    random = result["random"]
    lines.append(f"| random contiguous regions inside the body ({RANDOM_REGIONS} per slice) | "
                 f"{random['mean_drop']:.3f} | {random['n'] // RANDOM_REGIONS} |")
    return "\n".join(lines)
