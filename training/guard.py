"""How honest is the OOD guard? Flag rates on development slices and on shifted versions of them.

The guard must let training-like slices through and stop what the model was never
trained on. (DICOM input is also flagged by the library when its label was not validated
on DICOM, see lung_classifier.verdict.ood_reason; this measures the feature-space guard
alone.) Each
shift here is something a user could plausibly send: another display
window, an inverted or blurred slice, a zoomed crop, a slice turned on its side, the CT
that ships with pydicom, ordinary photographs, noise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import tensorflow as tf
from PIL import Image, ImageFilter

from lung_classifier.decoding.images import load_rgb
from lung_classifier.decoding.windowing import DICOM_WINDOW
from lung_classifier.model.network import LungModel, head_outputs
from lung_classifier.model.preprocessing import prepare_batch

PROBE_PER_CLASS = 20

Shift = Callable[[np.ndarray], np.ndarray]


def probe_slices(paths: list[Path], y: np.ndarray, input_size: int) -> np.ndarray:
    """PROBE_PER_CLASS slices of each class spread evenly over its files, prepared for the model."""
    chosen = []
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        chosen += members[np.linspace(0, len(members) - 1, min(PROBE_PER_CLASS, len(members))).astype(int)].tolist()
    return prepare_batch([load_rgb(paths[index]) for index in chosen], input_size)


def _pil_shift(operation: Callable[[Image.Image], Image.Image]) -> Shift:
    def shift(image: np.ndarray) -> np.ndarray:
        size = image.shape[1], image.shape[0]
        shifted = operation(Image.fromarray(image.astype(np.uint8)))
        return np.asarray(shifted.convert("RGB").resize(size, Image.Resampling.BILINEAR), np.float32)
    return shift


def _crop_centre(pil: Image.Image) -> Image.Image:
    width, height = pil.size
    return pil.crop((width // 4, height // 4, 3 * width // 4, 3 * height // 4))


SHIFTS: dict[str, Shift] = {
    "development slices as they are": lambda image: image,
    "narrower window (contrast x2)": lambda image: np.clip((image - 128.0) * 2.0 + 128.0, 0, 255),
    "wider window (contrast x0.5)": lambda image: (image - 128.0) * 0.5 + 128.0,
    "inverted": lambda image: 255.0 - image,
    "blurred (Gaussian, radius 4)": _pil_shift(lambda pil: pil.filter(ImageFilter.GaussianBlur(4))),
    "cropped to the centre half, zoomed": _pil_shift(_crop_centre),
    "turned on its side (90 degrees)": lambda image: np.rot90(image).copy(),
}


def external_images(input_size: int) -> dict[str, np.ndarray]:
    """Images from packages every install has: pydicom's test CT, matplotlib's sample photographs."""
    import matplotlib
    from pydicom.data import get_testdata_file

    samples = Path(matplotlib.get_data_path()) / "sample_data"
    photos = [samples / "grace_hopper.jpg", samples / "logo2.png", samples / "Minduka_Present_Blue_Pack.png"]
    return {
        "pydicom's test CT (CT_small.dcm at the DICOM window)": prepare_batch(
            [load_rgb(get_testdata_file("CT_small.dcm"), dicom_window=DICOM_WINDOW)], input_size),
        "photographs (matplotlib's sample images)": prepare_batch([load_rgb(p) for p in photos], input_size),
        "uniform noise": np.random.default_rng(0).uniform(0, 255, (4, input_size, input_size, 3)).astype(np.float32),
    }


def measure(model: LungModel, probe: np.ndarray, input_size: int, malignant: int,
            features: Callable[[np.ndarray], np.ndarray] | None = None) -> dict[str, dict[str, float]]:
    """Share of each set flagged out of distribution, and the share called Malignant without a flag.

    ``features`` maps image arrays to pooled backbone features (default: the model's own
    backbone; training passes a cache, training.features.ArrayFeatures).
    """
    features = features or (lambda images: model.features(tf.constant(images))["features"].numpy())
    sets = {name: np.stack([shift(image) for image in probe]).astype(np.float32) for name, shift in SHIFTS.items()}
    sets.update(external_images(input_size))
    rates = {}
    for name, images in sets.items():
        outputs = head_outputs(tf.constant(features(images)), model.head)
        flagged = outputs["out_of_distribution"].numpy()
        unflagged_malignant = (~flagged) & (outputs["label"].numpy() == malignant)
        rates[name] = {"n": len(images), "flagged": float(flagged.mean()),
                       "unflagged_malignant": float(unflagged_malignant.mean())}
    return rates


def format_table(rates: dict[str, dict[str, float]]) -> str:
    lines = ["| input | images | flagged out of distribution | called Malignant without a flag |",
             "| --- | --- | --- | --- |"]
    lines += [f"| {name} | {entry['n']} | {entry['flagged']:.0%} | {entry['unflagged_malignant']:.0%} |"
              for name, entry in rates.items()]
    return "\n".join(lines)
