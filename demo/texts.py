"""What the page says: the result of one slice, the model card, the dataset's attribution."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

from gradio.components.label import LabelConfidence, LabelData

from lung_classifier import Analysis, ImageError, ScanResult
from lung_classifier.verdict import OOD_NOTICE

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
WHAT_THE_MODEL_EXPECTS = (
    "an axial chest CT slice exported as an image the way the IQ-OTH/NCCD slices were: greyscale, in a "
    "soft-tissue-to-bone window (width 350-1200 HU, centre 50-600 HU), so the lungs look near black")

NO_FILE = "No file received: upload a CT slice image or DICOM file."
WHAT_TO_SEND = "upload one axial CT slice as an image file (JPEG, PNG, …) or a DICOM file"


def refusal(exc: ImageError) -> str:
    """The decoder's reason, and what to send instead when the reason does not say."""
    return str(exc) if "upload" in str(exc).lower() else f"{exc}: {WHAT_TO_SEND}"


def header(classifier_config: dict[str, Any], origin: str) -> str:
    """The page's title and first paragraph: what the model is, and what it is not."""
    return ("# Lung CT slice classifier\nNormal / Benign / Malignant, on a frozen ImageNet ResNet50 "
            f"trained on the IQ-OTH/NCCD dataset. Model: {model_name(classifier_config, origin)}.\n\n{DISCLAIMER} "
            "The model's measured quality and limits are in the **Model card** tab.")


def label_value(result: Analysis | ScanResult) -> LabelData:
    """What gr.Label shows: the decided label (not always the top confidence) or the notice, and the confidences
    (none for a flagged scan, which has no probabilities)."""
    confidences = [LabelConfidence(label=label, confidence=p)
                   for label, p in sorted((result.probabilities or {}).items(), key=lambda item: -item[1])]
    return LabelData(label=result.verdict, confidences=confidences)


def flagged_note(what: str, reason: str | None) -> str:
    """The paragraph for an input that gets no diagnosis: `what` ("This input", "This scan") is `reason`."""
    return (f"### ⚠️ {OOD_NOTICE}\n{what} is {reason}, so the model's probabilities are "
            f"**not meaningful** for it. The model expects {WHAT_THE_MODEL_EXPECTS}.")


def confidence_title(config: dict[str, Any]) -> str:
    """"calibrated" only where the package's CV says its calibration error is small enough."""
    calibrated = config.get("calibration", {}).get("calibrated", False)
    return "Prediction (calibrated probabilities)" if calibrated else "Prediction (model confidence)"


def note(result: Analysis) -> str:
    """One paragraph on the result, with what to do when no diagnosis can be given."""
    if result.out_of_distribution:
        return flagged_note("This input", result.ood_reason)
    top = max(result.probabilities, key=result.probabilities.get)
    rule = ("" if top == result.label else
            f" The most probable class is {top} ({result.probabilities[top]:.0%}); the label is {result.label} "
            "because the model's rule puts finding malignant slices first.")
    return (f"Label **{result.label}** (model confidence {result.probabilities[result.label]:.0%}).{rule} "
            f"Out-of-distribution score {result.ood_score:.2f}: the image resembles the training data. "
            "The heatmap shows which regions drove the label.")


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
