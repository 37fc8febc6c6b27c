"""What the model says of one slice, in words a person and a script can act on.

The one numpy decision rule lives here (training chooses its offsets with it, the scan
rule applies it, tests hold the graph's version to it), beside the Analysis that
carries its label, the notice shown instead of a label, and the reasons to withhold one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .decoding.images import Slice

OOD_NOTICE = "Unlike the training data: no diagnosis"
"""What the page, the API and the CLI show instead of a class for a flagged input."""
LABELS_MEANING = {"Normal": "no cancer finding: a healthy lung, or a finding that is not cancer (such as COVID-19 "
                            "or pneumonia)"}
"""What a label means where its name alone misleads; a package's config key "labels_meaning" replaces it.
The text before the first colon is the short form shown beside the label ("Normal (no cancer finding)")."""
LOG_FLOOR = 1e-12
"""Probabilities are clipped to this before the log, so a zero probability keeps a finite score."""


def decide(probabilities: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """The decision rule: label index = argmax over classes of log(probability) + offset, per row (or for one row)."""
    return np.argmax(np.log(np.clip(probabilities, LOG_FLOOR, 1.0)) + offsets, axis=-1)


@dataclass(frozen=True)
class Analysis:
    """One slice's result: the decided label, the probabilities, and how far to trust them.

    ``label`` is the package's decision rule (Malignant recall first), not always the most
    probable class. Where ``out_of_distribution`` is true the input is unlike the training
    slices: show no diagnosis for it.
    """

    label: str
    probabilities: dict[str, float]
    ood_score: float
    out_of_distribution: bool
    ood_reason: str | None = None  # why it is out of distribution, for a person
    heatmap: np.ndarray | None = None  # float32 in [0, 1], the input's height x width
    ood_threshold: float | None = None  # the package's threshold the score was compared with

    @property
    def verdict(self) -> str:
        """What to show a person: the label, or OOD_NOTICE where the input is out of distribution."""
        return OOD_NOTICE if self.out_of_distribution else self.label

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (no heatmap). A flagged input has label None beside the flag and the notice,
        so a script that reads "label" cannot mistake it for a diagnosis; its probabilities stay, for machines."""
        return {"label": None if self.out_of_distribution else self.label, "verdict": self.verdict,
                "probabilities": self.probabilities, "ood_score": self.ood_score, "ood_threshold": self.ood_threshold,
                "out_of_distribution": self.out_of_distribution, "ood_reason": self.ood_reason}


def labels_meaning(config: dict[str, Any]) -> dict[str, str]:
    """Each label's meaning, from the package (config "labels_meaning") where it says, else LABELS_MEANING."""
    given = config.get("labels_meaning")
    return {str(k): str(v) for k, v in given.items()} if isinstance(given, dict) and given else dict(LABELS_MEANING)


def shown_label(label: str, meanings: dict[str, str]) -> str:
    """The label as a person reads it: "Normal (no cancer finding)" where its meaning has a short form."""
    meaning = meanings.get(label, "")
    return f"{label} ({meaning.split(':', 1)[0].strip()})" if ":" in meaning else label


NON_AXIAL = "a reformatted (coronal, sagittal or oblique) DICOM slice: the model knows only axial slices"
UNVALIDATED_DICOM = ("a DICOM file: no DICOM source was among this model's training sources, so no answer on "
                     "DICOM was validated (see the model card)")
CANCER_ON_DICOM = ("a cancer finding on DICOM is not validated (no cancer DICOM among the training sources): "
                   "no diagnosis; have it read by a specialist")


def ood_reason(decoded: Slice, feature_flag: bool, score: float, threshold: float, label: str,
               dicom_labels: tuple[str, ...]) -> str | None:
    """The first reason to withhold a diagnosis, or None.

    ``dicom_labels`` are the labels the evidence validated on DICOM (the package config's
    ``rendering.dicom_validated_labels``: the classes of its DICOM training sources). An axial
    DICOM slice at the package window that passes the guard is answered only with one of them.
    """
    if decoded.dicom and decoded.axial is False:
        return NON_AXIAL
    if feature_flag:
        return (f"an image whose features are unlike the training slices (score {score:.2f} above the threshold "
                f"{threshold:.2f})")
    if decoded.dicom and label not in dicom_labels:
        return CANCER_ON_DICOM if dicom_labels else UNVALIDATED_DICOM
    return None
