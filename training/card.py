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


def metadata(config: dict[str, Any], test: dict[str, Any]) -> str:
    """Hugging Face YAML front matter, including a model-index with the measured results.

    JSON is valid YAML, so each value is written with json.dumps: no YAML library needed.
    """
    results = [("accuracy", "accuracy", test["accuracy"]), ("f1", "macro F1", test["macro_f1"])]
    results += [("recall", f"{label} recall", test["per_class"][label]["recall"]) for label in config["labels"]]
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
                "dataset": {"type": "iq-oth-nccd", "name": "IQ-OTH/NCCD (patient-grouped test split)"},
                "metrics": metrics,
            }],
        }],
    }
    return "\n".join(f"{key}: {json.dumps(value)}" for key, value in entries.items())


def write_card(directory: Path, values: dict[str, Any], template: Path = TEMPLATE) -> None:
    (directory / "README.md").write_text(render(template.read_text(), values))
