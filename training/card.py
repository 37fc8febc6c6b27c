"""The model card: the top-level model_card.md template filled with measured values."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

TEMPLATE = Path(__file__).resolve().parent.parent / "model_card.md"
PLACEHOLDER = re.compile(r"\{\{ (\w+) \}\}")


def render(template: str, values: dict[str, Any]) -> str:
    """Replace every {{ name }}; a placeholder without a value is an error, not a blank."""
    missing = sorted(set(PLACEHOLDER.findall(template)) - set(values))
    if missing:
        raise KeyError(f"model card values missing: {', '.join(missing)}")
    return PLACEHOLDER.sub(lambda match: str(values[match.group(1)]), template)


def metadata(config: dict[str, Any], summary: dict[str, dict[str, float]]) -> str:
    """Hugging Face YAML front matter, with a model-index of the cross-validated means.

    JSON is valid YAML, so each value is written with json.dumps: no YAML library needed.
    """
    results = [("accuracy", "accuracy", summary["accuracy"]["mean"]), ("f1", "macro F1", summary["macro_f1"]["mean"])]
    results += [("recall", f"{label} recall", summary[f"recall_{label}"]["mean"]) for label in config["labels"]]
    metrics = [{"type": kind, "name": name, "value": round(value, 4)} for kind, name, value in results]
    entries = {
        "license": "cc-by-4.0",
        "library_name": "keras",
        "pipeline_tag": "image-classification",
        "tags": ["medical-imaging", "lung-cancer", "ct", "resnet50", "tensorflow", "saved-model", "image-classification"],
        "datasets": ["IQ-OTH/NCCD lung cancer dataset"],
        "metrics": ["accuracy", "f1", "recall"],
        "model-index": [{
            "name": config["name"],
            "results": [{
                "task": {"type": "image-classification", "name": "Lung CT slice classification"},
                "dataset": {"type": "iq-oth-nccd", "name": "IQ-OTH/NCCD (patient-grouped repeated cross-validation, mean over folds)"},
                "metrics": metrics,
            }],
        }],
    }
    return "\n".join(f"{key}: {json.dumps(value)}" for key, value in entries.items())


def write_card(directory: Path, values: dict[str, Any], template: Path = TEMPLATE) -> None:
    (directory / "README.md").write_text(render(template.read_text(), values))
