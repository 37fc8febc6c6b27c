"""What the page says: the result of one slice, the model card, the dataset's attribution."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

from gradio.components.label import LabelConfidence, LabelData

from lung_classifier import Analysis, ImageError, ScanResult
from lung_classifier.verdict import (OOD_NOTICE, SCREENING_MEANING, UNLIKE_FEATURES, labels_meaning, reason_line,
                                     shown_label)

DISCLAIMER = (
    "**Research demo, not a medical device.** Not cleared or validated for clinical use: "
    "do not use it to diagnose, treat or triage anyone."
)
ATTRIBUTION = (
    "Example slices: IQ-OTH/NCCD lung cancer dataset, Alyasriy & AL-Huseiny, Iraq-Oncology Teaching "
    "Hospital / National Center for Cancer Diseases, Mendeley Data, "
    "[doi:10.17632/bhmdr45bh2](https://doi.org/10.17632/bhmdr45bh2), "
    "[CC BY 4.0](https://creativecommons.org/licenses/by/4.0/)."
)
EXAMPLES_SEEN_IN_TRAINING = (
    "These examples are **training slices** of the embedded default model: a confident answer on them shows "
    "that it learned them, not how it does on a new scan. The model card has the cross-validated numbers."
)
"""Beside the shipped examples (examples/), which the default model was trained on."""
WHAT_THE_MODEL_EXPECTS = (
    "an axial chest CT slice exported as an image the way the IQ-OTH/NCCD slices were: greyscale, in a "
    "soft-tissue-to-bone window (width 350-1200 HU, centre 50-600 HU), so the lungs look near black")

NO_FILE = "No file received: upload a CT slice image or DICOM file."
NO_FILES = "No files received: upload one or more CT slices."
WHAT_TO_SEND = "upload one axial CT slice as an image file (JPEG, PNG, …) or a DICOM file"
PREVIEW_ALT = "The uploaded slice, as the model receives it"
HEATMAP_ALT = ("Left: the slice. Right: the same slice with the regions that drove the label in warm colours, "
               "with a colour key from low to high influence below")
NOT_MEANINGFUL = "not meaningful"
CLOSE_TOASTS = ("(...args) => { document.querySelectorAll(\"[data-testid='toast-close']\")"
                ".forEach(button => button.click()); return args; }")
"""An event's `js`: closes the error toasts of earlier requests in the browser as a new one starts."""


def refusal(exc: Exception) -> str:
    """The decoder's reason, and what to send instead only where the reason does not already say."""
    text = str(exc)
    return text if any(word in text.lower() for word in ("upload", "export", "send")) else f"{text}: {WHAT_TO_SEND}"


def trained_on(config: dict[str, Any]) -> str:
    """The training sources as the package records them (packages before 3.0 name one data folder)."""
    sources = config.get("training", {}).get("sources")
    if sources:
        return f"{len(sources)} CT sources ({', '.join(sources)}; see the Model card)"
    return "the IQ-OTH/NCCD dataset"


def header(config: dict[str, Any], origin: str) -> str:
    """The page's title and first paragraph: what the model is, what its labels mean, and what it is not."""
    meanings = labels_meaning(config)
    classes = " / ".join(shown_label(label, meanings) for label in config["labels"])
    return (f"# Lung CT slice classifier\n{classes}, on a frozen ImageNet ResNet50 "
            f"trained on {trained_on(config)}. Model: {model_name(config, origin)}.\n\n{DISCLAIMER} "
            "The model's measured quality and limits are in the **Model card** tab.")


def label_value(result: Analysis | ScanResult) -> LabelData:
    """What gr.Label shows a person: the decided label (not always the top confidence) and the confidences;
    for a refused input the notice alone, with no class bar."""
    if result.out_of_distribution:
        return LabelData(label=OOD_NOTICE)
    confidences = [LabelConfidence(label=label, confidence=p)
                   for label, p in sorted((result.probabilities or {}).items(), key=lambda item: -item[1])]
    return LabelData(label=result.verdict, confidences=confidences)


def api_label_value(result: Analysis) -> LabelData:
    """/predict's value, for programs: the verdict (the notice for a refused input) and every probability."""
    return LabelData(label=result.verdict, confidences=[LabelConfidence(label=label, confidence=p)
                                                        for label, p in result.probabilities.items()])


def why(result: Analysis | ScanResult, config: dict[str, Any]) -> str:
    """The line under the label: the screening answer, and what the answer rests on or why there is none (a slice:
    lung_classifier.verdict.reason_line, as the CLI prints it; a scan: how many slices were flagged, and why)."""
    if isinstance(result, Analysis):
        line = reason_line(result, labels_meaning(config))
        if result.out_of_distribution:
            line += f" The model's probabilities are {NOT_MEANINGFUL} for it."
    else:
        verdict = "No diagnosis" if result.out_of_distribution else f"**{result.label}**"
        line = f"{verdict}; screening: {result.screening}. {result.flagged_summary()}."
    return f"**Screening: {result.screening}.** {line}\n\n{SCREENING_MEANING}"


def details(result: Analysis) -> dict[str, Any]:
    """/analyze's details, shown on the page: a refused input's names no class and carries no probabilities
    (programs that want them call /predict, or use the library)."""
    record = result.as_dict()
    if result.out_of_distribution:
        del record["probabilities"]
    return record


def ood_score(result: Analysis) -> str:
    """The score beside the threshold it is judged by (the package's one value)."""
    if result.ood_threshold is None:
        return f"Out-of-distribution score {result.ood_score:.2f}"
    return f"Out-of-distribution score {result.ood_score:.2f} (flagged above {result.ood_threshold:.2f})"


def flagged_note(sentence: str, unlike_features: bool = False) -> str:
    """The paragraph for an input that gets no diagnosis: `sentence` says what it is and why; what the model expects
    only where the reason is that the input looks unlike the training slices (a DICOM file or a recognised
    source has its own reason, and the page accepts DICOM)."""
    expects = f" The model expects {WHAT_THE_MODEL_EXPECTS}." if unlike_features else ""
    return (f"### ⚠️ {OOD_NOTICE}\n{sentence} The model's probabilities are **{NOT_MEANINGFUL}** for it.{expects}")


def confidence_title(config: dict[str, Any]) -> str:
    """"calibrated" only where the package's CV says its calibration error is small enough."""
    calibrated = config.get("calibration", {}).get("calibrated", False)
    return "Prediction (calibrated probabilities)" if calibrated else "Prediction (model confidence)"


def note(result: Analysis) -> str:
    """One paragraph on the result, with what to do when no diagnosis can be given."""
    if result.out_of_distribution:
        score = "" if "threshold" in str(result.ood_reason) else f" {ood_score(result)}."
        return flagged_note(f"This input is {result.ood_reason}.{score}", result.ood_reason == UNLIKE_FEATURES)
    return (f"Label **{result.label}** (model confidence {result.probabilities[result.label]:.0%}), "
            f"{result.answered_as}; screening: **{result.screening}**. "
            f"{ood_score(result)}: the image resembles the training data. "
            "The heatmap shows which regions drove the label (colour key under it).")


def model_name(config: dict[str, Any], origin: str) -> str:
    """The model as the page names it: its name and version, and its Hub repo; never a server path."""
    name = f"{config.get('name', 'unnamed model')} {config.get('model_version', '')}".strip()
    return f"{name} ({origin})" if origin.startswith("Hugging Face Hub") else name


def model_card(directory: Path) -> str:
    """The package's card without its YAML front matter, its plots inlined as data URIs.

    The page cannot fetch the package's files, and serving the package folder would
    expose everything in it.
    """
    markdown = re.sub(r"^---\n.*?\n---\n", "", (directory / "README.md").read_text(), flags=re.S)
    root = directory.resolve()

    def embed(match: re.Match) -> str:
        path = (root / match.group(2)).resolve()
        if not path.is_file() or not path.is_relative_to(root):
            return match.group(0)
        return f"![{match.group(1)}](data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()})"

    return re.sub(r"!\[([^\]]*)\]\(([^)\s:]+\.png)\)", embed, markdown)
