"""Evidence per source: which training source an input looks like, and what was validated on that source.

The pooled backbone features the head reads are where a source's shortcut lives: another
hospital's slices exported as PNG passed a guard built on them (issue 23: 2 of 177 flagged).
How a slice was *rendered* (the noise left after smoothing, how many of the 256 grey levels
it uses, how much of it is pure black or white, its brightness) separates image sources far
better, and costs milliseconds in numpy on the decoded slice. Each training source keeps the
mean, scale and inverse covariance (Ledoit-Wolf) of these statistics over its slices and a
threshold on the Mahalanobis distance, taken by grouped cross-fitting (training.recognition);
an input is recognised as the nearest source of its kind (image file or DICOM) whose
threshold it is within, or as none.

Beside recognition each source records its calibration (a temperature and class biases on
the model's log-probabilities, fitted on out-of-fold outputs of that source), its rule-out
threshold on P(Malignant), and whether its cancers were validated (Malignant slices in
training and a cross-fitted screening recall at the package's bar). The package's config
holds all of it (``config["evidence"]``); lung_classifier.verdict turns it into answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

STATISTICS = ("log residual std", "log mean |residual|", "flat residual share", "log residual kurtosis",
              "grey levels used", "black share", "log white share", "mean grey", "grey std")
"""What rendering_statistics returns, in order."""
BODY_GREY = 20
"""Noise is measured on pixels brighter than this (the body), not on the black background."""
LOG_FLOOR = 1e-3


def rendering_statistics(rgb: np.ndarray) -> np.ndarray:
    """(len(STATISTICS),) statistics of an H x W x 3 uint8 slice as decoded (training and serving call this)."""
    grey = rgb.astype(np.float32).mean(axis=2)
    height, width = grey.shape
    padded = np.pad(grey, 1, mode="edge")
    local_mean = sum(padded[i:i + height, j:j + width] for i in range(3) for j in range(3)) / 9.0
    residual = grey - local_mean
    body = grey > BODY_GREY
    noise = (residual[body] if body.sum() > 100 else residual.ravel()).astype(np.float64)
    variance = max(float(noise.var()), 1e-6)
    kurtosis = float(((noise - noise.mean()) ** 4).mean()) / variance ** 2
    return np.array([
        np.log(noise.std() + LOG_FLOOR), np.log(np.abs(noise).mean() + LOG_FLOOR),
        float((np.abs(residual) < 0.5).mean()), np.log(kurtosis + LOG_FLOOR),
        len(np.unique(grey.astype(np.uint8))) / 256.0, float((grey == 0).mean()),
        np.log(float((grey >= 254.5).mean()) + LOG_FLOOR), float(grey.mean()) / 255.0, float(grey.std()) / 255.0])


@dataclass(frozen=True)
class Recogniser:
    """One source's rendering statistics: an input is like it when its distance is at most the threshold."""

    mean: np.ndarray  # (R,)
    scale: np.ndarray  # (R,)
    precision: np.ndarray  # (R, R) inverse Ledoit-Wolf covariance of the standardised statistics
    threshold: float

    def distances(self, statistics: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance per row, divided by the number of statistics (about 1 on the source)."""
        z = (np.atleast_2d(statistics) - self.mean) / self.scale
        return np.einsum("ij,jk,ik->i", z, self.precision, z) / z.shape[1]

    def as_config(self) -> dict[str, Any]:
        return {"mean": self.mean.tolist(), "scale": self.scale.tolist(), "precision": self.precision.tolist(),
                "threshold": self.threshold}

    @classmethod
    def from_config(cls, block: dict[str, Any]) -> "Recogniser":
        return cls(np.array(block["mean"], np.float64), np.array(block["scale"], np.float64),
                   np.array(block["precision"], np.float64), float(block["threshold"]))


@dataclass(frozen=True)
class SourceEvidence:
    """What the package knows of one training source."""

    name: str  # as in training (the --source name)
    title: str  # for people: "Chest CT-Scan"
    dicom: bool  # its slices are DICOM (rendered by the package) rather than image files
    recogniser: Recogniser
    temperature: float  # the source's calibration of the model's log-probabilities
    bias: np.ndarray  # (C,)
    rule_out: float  # P(Malignant) below this rules malignancy out; 1.0 where nothing was validated
    cancers_validated: bool  # Malignant slices in training and cross-fitted screening recall at the bar

    def calibrated(self, probabilities: np.ndarray) -> np.ndarray:
        """The source's probabilities: softmax(log p / temperature + bias), row by row."""
        return self.calibrated_with(probabilities, self.temperature, self.bias)

    @staticmethod
    def calibrated_with(probabilities: np.ndarray, temperature: float, bias: np.ndarray) -> np.ndarray:
        """softmax(log p / temperature + bias): the one formula training and serving use."""
        z = np.log(np.clip(np.asarray(probabilities, np.float64), 1e-12, 1.0)) / temperature + bias
        z = z - z.max(axis=-1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=-1, keepdims=True)

    def as_config(self, labels: list[str]) -> dict[str, Any]:
        return {"name": self.name, "title": self.title, "dicom": self.dicom, "recognition": self.recogniser.as_config(),
                "calibration": {"temperature": self.temperature, "bias": dict(zip(labels, self.bias.tolist()))},
                "rule_out_threshold": self.rule_out, "cancers_validated": self.cancers_validated}

    @classmethod
    def from_config(cls, block: dict[str, Any], labels: tuple[str, ...]) -> "SourceEvidence":
        calibration = block["calibration"]
        return cls(str(block["name"]), str(block["title"]), bool(block["dicom"]),
                   Recogniser.from_config(block["recognition"]), float(calibration["temperature"]),
                   np.array([float(calibration["bias"][label]) for label in labels]),
                   float(block["rule_out_threshold"]), bool(block["cancers_validated"]))


@dataclass(frozen=True)
class Recognition:
    """Which source an input was recognised as (None: none), and its distance to each, over its threshold."""

    source: SourceEvidence | None
    ratios: dict[str, float]  # source name -> distance / threshold (at most 1: within); same-kind sources only


def from_config(block: dict[str, Any], labels: tuple[str, ...]) -> list[SourceEvidence]:
    """The package's evidence per source (its config's "evidence" block)."""
    return [SourceEvidence.from_config(entry, labels) for entry in block["sources"]]


def recognise(sources: list[SourceEvidence], statistics: np.ndarray, dicom: bool) -> Recognition:
    """The nearest source of the input's kind whose threshold it is within, or none."""
    ratios = {source.name: float(source.recogniser.distances(statistics)[0] / source.recogniser.threshold)
              for source in sources if source.dicom == dicom}
    within = [source for source in sources if source.name in ratios and ratios[source.name] <= 1.0]
    return Recognition(min(within, key=lambda source: ratios[source.name]) if within else None, ratios)
