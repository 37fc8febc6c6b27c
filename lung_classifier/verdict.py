"""What the model says of one slice, in words a person and a script can act on.

One rule lives here (:func:`answer`): from which source an input was recognised as
(lung_classifier.evidence), the model's probabilities and the guard's flag, it gives the
label (the most probable class), the separate screening answer (malignancy ruled out or
not, by the source's threshold) and the reason to withhold a diagnosis. The Analysis
carries them, beside the notice shown instead of a label.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .decoding.images import Slice
from .evidence import Recognition, SourceEvidence

OOD_NOTICE = "Unlike the training data: no diagnosis"
"""What the page, the API and the CLI show instead of a class for a flagged input."""
LABELS_MEANING = {"Normal": "no cancer finding: a healthy lung, or a finding that is not cancer (such as COVID-19 "
                            "or pneumonia)"}
"""What a label means where its name alone misleads; a package's config key "labels_meaning" replaces it.
The text before the first colon is the short form shown beside the label ("Normal (no cancer finding)")."""
LOG_FLOOR = 1e-12
"""Probabilities are clipped to this before the log, so a zero probability keeps a finite score."""


def decide(probabilities: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Label index = argmax over classes of log(probability) + offset, per row (or for one row); the scan rule's
    decision (a slice's label is the most probable class: zero offsets)."""
    return np.argmax(np.log(np.clip(probabilities, LOG_FLOOR, 1.0)) + offsets, axis=-1)


@dataclass(frozen=True)
class Analysis:
    """One slice's result: the label, the screening answer, the probabilities, and how far to trust them.

    ``label`` is the most probable class (it agrees with the bars). ``malignancy_ruled_out`` is the
    separate screening answer: true only where the slice was answered (recognised as a source whose
    cancers were validated) and P(Malignant) is below that source's rule-out threshold. Where
    ``out_of_distribution`` is true no diagnosis is given, for the reason in ``ood_reason``.
    """

    label: str
    probabilities: dict[str, float]
    ood_score: float
    out_of_distribution: bool
    ood_reason: str | None = None  # why no diagnosis is given, for a person
    heatmap: np.ndarray | None = None  # float32 in [0, 1], the input's height x width
    ood_threshold: float | None = None  # the package's threshold the score was compared with
    malignancy_ruled_out: bool = False
    source: str | None = None  # the title of the source the input was recognised as ("Chest CT-Scan")
    rule_out_threshold: float | None = None  # that source's threshold on P(Malignant), where answered

    @property
    def verdict(self) -> str:
        """What to show a person: the label, or OOD_NOTICE where no diagnosis is given."""
        return OOD_NOTICE if self.out_of_distribution else self.label

    @property
    def screening(self) -> str:
        return screening_answer(self.malignancy_ruled_out)

    @property
    def answered_as(self) -> str | None:
        """"answered as a Chest CT-Scan-like image", or None where no diagnosis is given."""
        return None if self.out_of_distribution or self.source is None else answered_as(self.source)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (no heatmap). A flagged input has label None beside the flag and the notice,
        so a script that reads "label" cannot mistake it for a diagnosis; its probabilities stay, for machines."""
        return {"label": None if self.out_of_distribution else self.label, "verdict": self.verdict,
                "malignancy_ruled_out": self.malignancy_ruled_out, "screening": self.screening,
                "answered_as": self.answered_as, "probabilities": self.probabilities, "ood_score": self.ood_score,
                "ood_threshold": self.ood_threshold, "out_of_distribution": self.out_of_distribution,
                "ood_reason": self.ood_reason}


NOT_RULED_OUT = "malignancy not ruled out"
RULED_OUT = "malignancy ruled out"
SCREENING_MEANING = ("Screening answer: \"malignancy not ruled out\" whenever P(Malignant) is at or above the "
                     "recognised source's rule-out threshold (set so that at least 98% of that source's cancers reach "
                     "it in grouped cross-validation), and for every input given no diagnosis; \"ruled out\" is not "
                     "a clean bill of health.")
"""One line on what the screening answer means: the page, the CLI and the card show it beside the label."""


def screening_answer(ruled_out: bool) -> str:
    return RULED_OUT if ruled_out else NOT_RULED_OUT


def answered_as(title: str) -> str:
    """"answered as a Chest CT-Scan-like image", "answered as an IQ-OTH/NCCD-like image"."""
    return f"answered as {'an' if title[:1].upper() in 'AEIOU' else 'a'} {title}-like image"


def reason_line(analysis: Analysis, meanings: dict[str, str]) -> str:
    """The one line the page shows under the label and the CLI prints: what the answer is and rests on, or why
    there is none; with the screening answer either way."""
    if analysis.out_of_distribution:
        return f"No diagnosis: this input is {analysis.ood_reason}. Screening: {NOT_RULED_OUT}."
    meaning = meanings.get(analysis.label)
    said = f"{analysis.label} means {meaning}. " if meaning else ""
    if analysis.answered_as is None or analysis.rule_out_threshold is None:  # an Analysis built by hand
        return f"{said}Screening: {analysis.screening}."
    p = analysis.probabilities.get("Malignant", float("nan"))
    side = "below" if analysis.malignancy_ruled_out else "at or above"
    return (f"{said}{analysis.answered_as[0].upper()}{analysis.answered_as[1:]}. Screening: {analysis.screening} "
            f"(P(Malignant) {p:.3f}, {side} the {analysis.source} rule-out threshold {analysis.rule_out_threshold:.3f}).")


def labels_meaning(config: dict[str, Any]) -> dict[str, str]:
    """Each label's meaning, from the package (config "labels_meaning") where it says, else LABELS_MEANING."""
    given = config.get("labels_meaning")
    return {str(k): str(v) for k, v in given.items()} if isinstance(given, dict) and given else dict(LABELS_MEANING)


def shown_label(label: str, meanings: dict[str, str]) -> str:
    """The label as a person reads it: "Normal (no cancer finding)" where its meaning has a short form."""
    meaning = meanings.get(label, "")
    return f"{label} ({meaning.split(':', 1)[0].strip()})" if ":" in meaning else label


UNLIKE_FEATURES = "an input whose backbone features are unlike the training slices (the out-of-distribution guard)"
NON_AXIAL = "a reformatted (coronal, sagittal or oblique) DICOM slice: the model knows only axial slices"


def unrecognised(dicom: bool, validated: list[str]) -> str:
    """The reason for an input like none of the validated sources of its kind."""
    if not validated:
        kind = "DICOM" if dicom else "image"
        return (f"{_a(dicom)}: none of this model's {kind} training sources has validated cancers, so no answer on "
                f"{kind} input is validated (see the model card)")
    return (f"{_a(dicom)} whose rendering (noise, grey levels, brightness) is like none of the sources this model was "
            f"validated on ({', '.join(validated)}): no answer on it is validated")


def unvalidated_source(title: str, dicom: bool) -> str:
    """The reason for an input recognised as a source whose cancers were not validated (COVID-CT-MD: no cancer)."""
    return (f"{_a(dicom)} like {title}, a training source without validated cancers: neither a cancer finding nor "
            "\"no cancer finding\" was shown to be reliable on it; have it read by a specialist")


def _a(dicom: bool) -> str:
    return "a DICOM slice" if dicom else "an image"


def answer(probabilities: np.ndarray, labels: tuple[str, ...], decoded: Slice, recognition: Recognition,
           sources: list[SourceEvidence], feature_flag: bool) -> tuple[np.ndarray, str, bool, str | None]:
    """The one rule: "which source, how sure, what probabilities" -> (probabilities as shown, label, malignancy
    ruled out, the reason to withhold a diagnosis or None).

    The probabilities are the recognised source's calibration of the model's; the label is the most probable
    class; malignancy is ruled out only for an answered input whose P(Malignant) is below its source's rule-out
    threshold. An input is answered only when it is axial, it is recognised as a source whose cancers were
    validated (so "no cancer finding" rests on shown sensitivity), and the feature guard passes; the reason given
    is the first that fails, in that order.
    """
    source = recognition.source
    shown = source.calibrated(probabilities) if source is not None else np.asarray(probabilities, np.float64)
    label = labels[int(np.argmax(shown))]
    if decoded.dicom and decoded.axial is False:
        reason: str | None = NON_AXIAL
    elif source is None:  # the evidence's reasons first: they say what no answer could rest on
        reason = unrecognised(decoded.dicom, [s.title for s in sources if s.dicom == decoded.dicom and s.cancers_validated])
    elif not source.cancers_validated:
        reason = unvalidated_source(source.title, decoded.dicom)
    elif feature_flag:
        reason = UNLIKE_FEATURES
    else:
        reason = None
    ruled_out = reason is None and source is not None and float(shown[labels.index("Malignant")]) < source.rule_out
    return shown, label, ruled_out, reason
