"""What the page says: the result of one slice, the model card, the dataset's attribution."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

from lung_classifier import Analysis

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
OOD_LABEL = "Unlike the training data: no diagnosis"


def label_value(result: Analysis) -> dict[str, float] | str:
    """What gr.Label shows: confidences, or a plain warning instead of a confident diagnosis."""
    return OOD_LABEL if result.out_of_distribution else result.probabilities


def note(result: Analysis, threshold: float) -> str:
    """One paragraph on the result, with what to do when the image is unlike the training data."""
    if result.out_of_distribution:
        return (f"### ⚠️ This image does not look like the CT slices the model was trained on\n"
                f"Out-of-distribution score {result.ood_score:.2f} is above the threshold {threshold:.2f}, "
                "so no diagnosis is shown: the model's probabilities are **not meaningful** for it. Upload an "
                "axial chest CT slice (lung window) like those of the IQ-OTH/NCCD dataset.")
    return (f"Most likely **{result.label}** ({result.probabilities[result.label]:.0%}). "
            f"Out-of-distribution score {result.ood_score:.2f} (threshold {threshold:.2f}): the image "
            "resembles the training data. The heatmap shows which regions drove the prediction.")


def details(result: Analysis) -> dict[str, Any]:
    """The JSON an API client reads: every number, no picture."""
    return {"label": result.label, "probabilities": result.probabilities, "ood_score": result.ood_score,
            "out_of_distribution": result.out_of_distribution}


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
