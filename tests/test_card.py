"""The model card and config.json that training writes: complete, parseable, consistent with the metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jinja2
import jinja2.meta
import numpy as np
import pytest
import yaml
from huggingface_hub import EvalResult, ModelCard
from PIL import Image

from conftest import REPO
from lung_classifier import package
from lung_classifier.model.head import Head
from lung_classifier.verdict import SCREENING_MEANING
from lung_classifier.model.network import TAPS
from training import card
from training import selection

PLOTS = ("confusion_matrix.png", "roc_curves.png", "reliability.png")


def front_matter(text: str) -> dict:
    match = re.match(r"---\n(.*?)\n---\n", text, re.DOTALL)
    assert match, "README.md does not start with YAML front matter"
    return yaml.safe_load(match.group(1))


@pytest.fixture(scope="module")
def readme(tiny_package) -> str:
    return (tiny_package / "README.md").read_text()


@pytest.fixture(scope="module")
def config(tiny_package) -> dict:
    return json.loads((tiny_package / "config.json").read_text())


@pytest.fixture(scope="module")
def metrics(tiny_package) -> dict:
    return json.loads((tiny_package / "metrics.json").read_text())


# --- building the card ---------------------------------------------------------------------------------

CONFIG = {"name": "m", "labels": ["Normal", "Benign", "Malignant"]}
MEANS = {"accuracy": 0.876543, "macro_f1": 0.5, "recall_Normal": 1.0, "recall_Benign": 0.25,
         "recall_Malignant": 0.123456}
SUMMARY = {name: {"mean": value, "low": 0.0, "high": 1.0} for name, value in MEANS.items()}


def test_build_fills_every_variable_from_the_values_and_the_card_data(tmp_path):
    template = tmp_path / "template.md"
    template.write_text("---\n{{ card_data }}\n---\n\n# {{ name }}: a {{ x }} b {{ y }} {{ x }}, {{ license }}\n")
    built = card.build(card.card_data(CONFIG, SUMMARY), {"name": "m", "x": 1, "y": "two", "unused": 3}, template)
    assert built.text == "\n# m: a 1 b two 1, cc-by-4.0\n"  # the template's final newline kept
    assert built.data.license == "cc-by-4.0"


def test_a_variable_without_a_value_is_an_error_not_a_blank(tmp_path):
    template = tmp_path / "template.md"
    template.write_text("---\n{{ card_data }}\n---\n{{ a }} {{ c }} {{ b }}\n")
    with pytest.raises(KeyError, match="model card values missing: b, c"):
        card.build(card.card_data(CONFIG, SUMMARY), {"a": 1}, template)


HUGGING_FACE_ORDER = ("Model details", "Intended use", "How to use", "Out of scope", "Limitations and risks",
                      "Training data", "Evaluation")


def test_the_template_follows_the_hugging_face_order_and_says_nothing_internal():
    text = card.TEMPLATE.read_text()
    sections = re.findall(r"^## (.+)$", text, re.M)
    assert tuple(name for name in sections if name in HUGGING_FACE_ORDER) == HUGGING_FACE_ORDER, sections
    assert not re.search(r"\bissue \d+|110 patients", text)


def test_the_repository_card_is_the_default_package_card():
    """model_card.md (what a reader of the repository opens) is the shipped card, not a template."""
    assert (REPO / "model_card.md").read_bytes() == (REPO / "lung_classifier" / "default_model" / "README.md").read_bytes()


def test_values_are_inserted_as_text_not_rendered_again(tmp_path):
    template = tmp_path / "template.md"
    template.write_text("---\n{{ card_data }}\n---\n{{ a }}\n")
    assert card.build(card.card_data(CONFIG, SUMMARY), {"a": "{{ b }} {% if x %}"}, template).text == \
        "{{ b }} {% if x %}\n"


def test_the_template_is_jinja_with_the_card_data_as_front_matter_and_training_fills_it(readme):
    text = card.TEMPLATE.read_text()
    assert text.startswith("---\n{{ card_data }}\n---\n")
    assert len(jinja2.meta.find_undeclared_variables(jinja2.Environment().parse(text))) > 30
    # Everything the template names was filled (build would have raised otherwise).
    assert "{{" not in readme and "}}" not in readme and "{%" not in readme


def test_the_model_index_is_generated_by_huggingface_hub_from_the_measured_results():
    data = card.card_data(CONFIG, SUMMARY)
    assert all(isinstance(result, EvalResult) for result in data.eval_results)
    parsed = yaml.safe_load(data.to_yaml())
    (entry,) = parsed["model-index"]
    assert entry["name"] == "m"
    metrics = entry["results"][0]["metrics"]
    assert {m["name"]: m["value"] for m in metrics} == {
        "accuracy": 0.8765, "macro F1": 0.5, "Normal recall": 1.0, "Benign recall": 0.25, "Malignant recall": 0.1235}
    assert "eval_results" not in parsed and "model_name" not in parsed
    # What the Hub reads back from the card is what was measured.
    again = ModelCard(f"---\n{data.to_yaml()}\n---\n").data
    assert again.model_name == "m" and again.eval_results == data.eval_results


def test_write_card_uses_the_given_template(tmp_path):
    template = tmp_path / "template.md"
    template.write_text("---\n{{ card_data }}\n---\n# {{ name }}\n")
    card.write_card(tmp_path, card.card_data(CONFIG, SUMMARY), {"name": "x"}, template)
    text = (tmp_path / "README.md").read_text()
    assert text.endswith("\n---\n# x\n")
    assert front_matter(text)["model-index"][0]["name"] == "m"


# --- the card training wrote for the tiny package -----------------------------------------------------


def test_card_front_matter(readme, config, metrics):
    meta = front_matter(readme)
    assert meta["license"] == "cc-by-4.0"
    assert meta["library_name"] == "keras"
    assert meta["pipeline_tag"] == "image-classification"
    assert isinstance(meta["tags"], list) and {"medical-imaging", "resnet50"} <= set(meta["tags"])
    assert isinstance(meta["datasets"], list) and meta["datasets"]
    (entry,) = meta["model-index"]
    assert entry["name"] == config["name"] == "tiny-test"
    (result,) = entry["results"]
    assert result["task"]["type"] == "image-classification"
    assert "cross-validation" in result["dataset"]["name"]
    values = {m["type"] if m["type"] != "recall" else m["name"]: m["value"] for m in result["metrics"]}
    cv = metrics["cv"]
    assert values["accuracy"] == pytest.approx(round(cv["accuracy"]["mean"], 4))
    assert values["f1"] == pytest.approx(round(cv["macro_f1"]["mean"], 4))
    for label in config["labels"]:
        assert values[f"{label} recall"] == pytest.approx(round(cv[f"recall_{label}"]["mean"], 4))


def test_card_text(tiny_package, readme, config, metrics):
    assert "not a medical device" in readme
    # Every source in the training-data table, with its counts per class and groups.
    for name, source in config["training"]["sources"].items():
        cells = " | ".join(f"{source['classes'][label]['slices']} ({source['classes'][label]['groups']})"
                           for label in config["labels"])
        assert f"| {name} | `{Path(source['folder']).name}` | {cells} |" in readme
    assert f"Lung CT slice classifier: {config['name']}" in readme
    assert "**Normal, Benign, Malignant**" in readme
    # CV numbers with intervals, and no single-split numbers.
    assert "5-fold patient-grouped cross-validation, stratified\nby source x class, repeated 2 times" in readme
    cv = metrics["cv"]
    assert f"| macro-F1 | {cv['macro_f1']['mean']:.3f} [{cv['macro_f1']['low']:.3f}, {cv['macro_f1']['high']:.3f}] |" \
        in readme
    assert "test split" not in readme
    # What was compared, how the rule and calibration were chosen, the deletion test and the guard.
    assert readme.count(" **(chosen)** |") == 2  # one head in the selection table, one CAM layer
    head = Head.load(tiny_package / "head.npz")
    assert f"temperature T = {float(head.temperature):.3f}" in readme
    assert not head.decision_offsets.any()  # the graph's label is the most probable class
    # Evidence per source: the recognition table, each source's operating point, what the screening answer means.
    for source in config["evidence"]["sources"]:
        assert f"| {source['name']}: held-out patients (grouped CV) | {source['name']} |" in readme
        cell = f"{source['rule_out_threshold']:.4f}" if source["rule_out_threshold"] > 0 else "- (no cancer"
        assert f"| {source['name']} | {source['calibration']['temperature']:.3f}; " in readme and cell in readme
    assert SCREENING_MEANING in readme
    assert f"threshold {float(head.ood_threshold):.3f}" in readme
    assert "| random contiguous regions inside the body (3 per slice) |" in readme
    assert "| photographs (matplotlib's sample images) | 3 |" in readme
    assert "| Benign recall >= 0.7 |" in readme
    # The whole-scan rule's numbers as the package stores them.
    assert f"more than {config['scan']['max_flagged_fraction']:.0%}\nof its slices given no diagnosis gets no verdict" \
        in readme
    assert "A scan is never more reassuring than its slices" in readme
    # Reproduction command and usage hint.
    assert "python -m training --data" in readme and "--input-size 64" in readme
    assert 'from_pretrained("OWNER/NAME")' in readme  # no --push-to-hub: a placeholder repo id


def test_plots_are_pngs_referenced_by_the_card(tiny_package, readme):
    for name in PLOTS:
        path = tiny_package / "plots" / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width >= 300 and image.height >= 200
        assert f"(plots/{name})" in readme


# --- config.json --------------------------------------------------------------------------------------


def test_config_describes_the_model(tiny_package, config):
    head = Head.load(tiny_package / "head.npz")
    assert config["format"] == package.FORMAT and config["format_version"] == package.FORMAT_VERSION
    assert config["labels"] == ["Normal", "Benign", "Malignant"]
    assert config["input"]["size"] == 64 and config["input"]["channels"] == "RGB"
    assert config["input"]["range"] == [0, 255]
    assert config["preprocessing"]["decoder"] == "lung_classifier.decoding.images.load_rgb"
    # The rules' numbers live in the head only: config.json describes the rules without repeating them.
    assert "temperature" not in config and "temperature" not in config["calibration"]
    assert "threshold" not in config["ood"] and "threshold" not in config["outputs"]["ood_score"]
    assert "offsets" not in config["decision_rule"]
    assert np.isfinite(head.ood_threshold) and head.decision_offsets.shape == (3,)
    assert config["ood"]["components"] == head.ood_components.shape[0]
    assert config["gradcam"]["layers"] in ("conv4", "conv5", "conv4+conv5")
    assert config["rendering"]["window_width_hu"] == [350, 1200]
    assert config["rendering"]["window_centre_hu"] == [50, 600]
    assert set(config["rendering"]["dicom_window"]) == {"centre", "width"}
    backbone = config["backbone"]
    assert backbone["architecture"] == "keras.applications.ResNet50" and backbone["frozen"] is True
    assert backbone["taps"] == list(TAPS)
    assert backbone["weights_sha256"] == "tiny-backbone-seed-0"
    assert head.kernel.shape == (8 + 16 + 32, len(config["labels"]))
    assert set(config["signatures"]) == {"serving_default", "explain", "features"}
    outputs = config["outputs"]
    assert outputs["probabilities"]["channel_def"] == {"0": "Normal", "1": "Benign", "2": "Malignant"}
    assert set(outputs) == {"probabilities", "label", "ood_score", "out_of_distribution", "heatmap"}
    assert "intended_use" in config and "not a medical device" in config["intended_use"].lower()


def test_config_training_record(config):
    training = config["training"]
    assert training["seed"] == 0
    assert training["cv"] == {"folds": 5, "repeats": 2, "strata": "source x class"}
    (source,) = training["sources"].values()  # --data: one source, grouped into pseudo-patients
    assert source["grouping"] == "pseudo-patients" and source["rendering"] == "image files as they are"
    for label in config["labels"]:
        assert source["classes"][label]["slices"] == 30
        assert source["classes"][label]["groups"] >= 5
    (evidence,) = config["evidence"]["sources"]  # one image source: recognised by its rendering statistics
    assert evidence["dicom"] is False and evidence["title"] == source["title"]
    assert evidence["cancers_validated"] is True and 0 < evidence["rule_out_threshold"] <= 0.5
    assert len(evidence["recognition"]["mean"]) == len(config["evidence"]["statistics"])


def test_config_checksums_cover_the_package(tiny_package, config):
    files = config["files"]
    assert {"head.npz", "README.md", "metrics.json", *(f"plots/{p}" for p in PLOTS)} <= set(files)
    assert "config.json" not in files
    saved = config["saved_model_files"]
    assert "saved_model/saved_model.pb" in saved
    assert any(name.startswith("saved_model/variables/") for name in saved)
    for name, digest in {**files, **saved}.items():
        assert re.fullmatch(r"[0-9a-f]{64}", digest)
        assert package.sha256_file(tiny_package / name) == digest


def test_metrics_json_is_consistent(metrics, config):
    cv = metrics["cv"]
    assert len(metrics["cv_folds"]) == 5 * 2 == cv["macro_f1"]["folds"]
    matrix = np.array(metrics["cv_confusion_matrix"])
    assert matrix.sum() == 90 * 2  # every slice once per repeat
    assert [int(row.sum()) for row in matrix] == [60, 60, 60]
    assert cv["macro_f1"]["mean"] == pytest.approx(np.mean([fold["macro_f1"] for fold in metrics["cv_folds"]]))
    assert len(metrics["selection"]) == len(selection.CANDIDATES)
    assert metrics["chosen"] in [candidate["settings"] for candidate in metrics["selection"]]
    assert metrics["faithfulness"]["chosen"] == config["gradcam"]["layers"]
    assert all(0.0 <= entry["flagged"] <= 1.0 for entry in metrics["ood_shifts"].values())
