"""The model card, built with huggingface_hub: ModelCardData for the YAML front matter, EvalResults of
the measured means from which the library generates the model-index, and model_card_template.md (beside
this module) as the Jinja template of the body (ModelCard.from_template). The repository's top-level
model_card.md is the default package's rendered card (README.md), copied by `make default-model`.

Only training writes cards, so this lives here rather than in the lung_classifier library: the runtime
never builds one, it ships the README.md training wrote.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
from huggingface_hub import EvalResult, ModelCard, ModelCardData

TEMPLATE = Path(__file__).resolve().parent / "model_card_template.md"
TASK = ("image-classification", "Lung CT slice classification")
DATASET = ("lung-ct-sources", "IQ-OTH/NCCD, Chest CT-Scan and COVID-CT-MD (grouped repeated cross-validation "
           "stratified by source x class, mean over folds)")
DATASETS = ["IQ-OTH/NCCD lung cancer dataset", "Chest CT-Scan images Dataset (Kaggle)", "COVID-CT-MD"]
TAGS = ["medical-imaging", "lung-cancer", "ct", "resnet50", "tensorflow", "saved-model", "image-classification"]
DIGITS = 4
"""The model-index rounds the CV means to this many decimals (the card's tables give the intervals)."""


def eval_results(labels: list[str], summary: dict[str, dict[str, float]]) -> list[EvalResult]:
    """The cross-validated means as huggingface_hub EvalResults: accuracy, macro F1 and each class's recall."""
    measured = [("accuracy", "accuracy", "accuracy"), ("f1", "macro F1", "macro_f1")]
    measured += [("recall", f"{label} recall", f"recall_{label}") for label in labels]
    task_type, task_name = TASK
    dataset_type, dataset_name = DATASET
    return [EvalResult(task_type=task_type, task_name=task_name, dataset_type=dataset_type, dataset_name=dataset_name,
                       metric_type=kind, metric_name=name, metric_value=round(summary[key]["mean"], DIGITS))
            for kind, name, key in measured]


def card_data(config: dict[str, Any], summary: dict[str, dict[str, float]]) -> ModelCardData:
    """The front matter; huggingface_hub validates the EvalResults and writes them as the model-index.

    No base_model: the frozen backbone is keras.applications.ResNet50's ImageNet weights, which no
    Hub repo holds (config.json's backbone block names them and their sha256).
    """
    return ModelCardData(license="cc-by-4.0", library_name="keras", pipeline_tag="image-classification", tags=TAGS,
                         datasets=DATASETS, metrics=["accuracy", "f1", "recall"],
                         model_name=config["name"], eval_results=eval_results(config["labels"], summary))


def build(data: ModelCardData, values: dict[str, Any], template: Path = TEMPLATE) -> ModelCard:
    """The card: the template's front matter is ``{{ card_data }}``, its body is filled from ``values``.

    A variable the template uses without a value is an error, not a blank (Jinja would render it empty).
    """
    text = template.read_text(encoding="utf-8")
    used = jinja2.meta.find_undeclared_variables(jinja2.Environment().parse(text))
    missing = sorted(used - {"card_data"} - set(data.to_dict()) - set(values))
    if missing:
        raise KeyError(f"model card values missing: {', '.join(missing)}")
    card = ModelCard.from_template(data, template_str=text, **values)
    if text.endswith("\n") and not card.text.endswith("\n"):
        card.text += "\n"  # Jinja drops a template's final newline (from_template cannot ask it to keep it)
    return card


def write_card(directory: Path, data: ModelCardData, values: dict[str, Any], template: Path = TEMPLATE) -> None:
    build(data, values, template).save(directory / "README.md")
