"""The command lines, run as a user would: `python -m lung_classifier predict` and `python -m training.evaluate`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, synthetic_slice

LABELS = ["Normal", "Benign", "Malignant"]


@pytest.fixture(scope="module")
def env(cache_root) -> dict[str, str]:
    return {**os.environ, "LUNG_CLASSIFIER_CACHE": str(cache_root), "TF_CPP_MIN_LOG_LEVEL": "3",
            "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def slices(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("slices")
    paths = {}
    for label in LABELS:
        paths[label] = folder / f"{label.lower()}-slice.png"
        synthetic_slice(label, 12).save(paths[label])
    paths["bad"] = folder / "not-an-image.jpg"
    paths["bad"].write_text("definitely not a JPEG")
    return paths


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_predict_json_one_object_per_image(tiny_package, env, slices):
    images = [str(slices[label]) for label in LABELS]
    result = run(env, "-m", "lung_classifier", "predict", *images, "--model", str(tiny_package), "--trust-saved-model", "--json")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3, result.stdout
    for line, image, label in zip(lines, images, LABELS):
        record = json.loads(line)
        assert record["image"] == image
        assert list(record["probabilities"]) == LABELS
        assert sum(record["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert record["label"] == label
        assert isinstance(record["ood_score"], float)
        assert record["out_of_distribution"] is False and record["verdict"] == label
        assert record["malignancy_ruled_out"] is (label != "Malignant") and record["answered_as"].startswith("answered as")

    # The same numbers as the library in this process.
    from lung_classifier import LungClassifier

    classifier = LungClassifier.from_pretrained(tiny_package, trust_saved_model=True)
    first = json.loads(lines[0])
    np.testing.assert_allclose(list(first["probabilities"].values()),
                               list(classifier.predict(images[0])["probabilities"].values()), atol=1e-6)


def test_a_photo_gets_the_notice_not_a_class(tiny_package, env):
    import matplotlib

    photo = f"{matplotlib.get_data_path()}/sample_data/grace_hopper.jpg"
    result = run(env, "-m", "lung_classifier", "predict", photo, "--model", str(tiny_package), "--trust-saved-model",
                 "--json")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["out_of_distribution"] is True
    assert record["label"] is None and record["verdict"] == "Unlike the training data: no diagnosis"
    assert set(record["probabilities"]) == set(LABELS)  # kept for scripts, beside the flag
    text = run(env, "-m", "lung_classifier", "predict", photo, "--model", str(tiny_package), "--trust-saved-model")
    assert text.stdout.startswith(f"{photo}: Unlike the training data: no diagnosis; malignancy not ruled out\n"
                                  "  No diagnosis: this input is ")
    assert "like none of the sources this model was validated on" in text.stdout  # the reason
    assert not re.search(r"(Normal|Benign|Malignant)\s*\(?\d", text.stdout), text.stdout  # no class probability
    assert text.stderr == ""  # quiet: no TensorFlow start-up lines


def test_predict_reports_a_bad_image_and_goes_on(tiny_package, env, slices):
    images = [str(slices["Normal"]), str(slices["bad"]), str(slices["Malignant"])]
    result = run(env, "-m", "lung_classifier", "predict", *images, "--model", str(tiny_package), "--trust-saved-model", "--json")
    assert result.returncode == 1
    printed = [json.loads(line)["image"] for line in result.stdout.splitlines()]
    assert printed == [images[0], images[2]]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert errors[0].startswith(f"error: {images[1]} ") and errors[0].count(images[1]) == 1  # named once
    assert "not an image" in errors[0]


def test_predict_human_readable_line(tiny_package, env, slices):
    image = str(slices["Benign"])
    result = run(env, "-m", "lung_classifier", "predict", image, "--model", str(tiny_package), "--trust-saved-model")
    assert result.returncode == 0, result.stderr
    first, second = result.stdout.splitlines()
    assert re.fullmatch(rf"{re.escape(image)}: Benign; malignancy ruled out  \(Normal [01]\.\d{{3}}  "
                        r"Benign [01]\.\d{3}  Malignant [01]\.\d{3}\)", first), result.stdout
    # The page's one-line reason: what the label means, the source it was answered as, the screening answer.
    assert second.startswith("  Benign means a benign nodule") and re.search(r"Answered as a data\d*-like image\.", second)
    assert re.search(r"Screening: malignancy ruled out \(P\(Malignant\) 0\.\d{3}, below the data\d* rule-out threshold "
                     r"0\.\d{3}\)\.$", second), second


@pytest.mark.parametrize("model, message", [
    ("./no-such-package", "no such local package directory, and not a Hub repo id"),
    ("fake-user/never-downloaded", "HF_HUB_OFFLINE is set"),
])
def test_predict_with_a_bad_model_exits_2(env, slices, tmp_path, model, message):
    env = {**env, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_CACHE": str(tmp_path / "hf_home" / "hub")}
    result = run(env, "-m", "lung_classifier", "predict", str(slices["Normal"]), "--model", model)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip().startswith("error: ")
    assert message in result.stderr


def test_predict_with_a_tampered_model_exits_2(tiny_package, env, slices, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_package, copy)
    metrics = copy / "metrics.json"
    metrics.write_text(metrics.read_text().replace("accuracy", "accurac_"))
    result = run(env, "-m", "lung_classifier", "predict", str(slices["Normal"]), "--model", str(copy))
    assert result.returncode == 2
    assert "metrics.json fails its sha256 checksum" in result.stderr


def test_a_precision_for_a_trusted_saved_model_exits_2(tiny_package, env, slices):
    result = run(env, "-m", "lung_classifier", "predict", str(slices["Normal"]), "--model", str(tiny_package),
                 "--trust-saved-model", "--precision", "bfloat16")
    assert result.returncode == 2
    assert "a trusted SavedModel runs as shipped" in result.stderr


def test_predict_usage_errors(env):
    result = run(env, "-m", "lung_classifier", "predict")
    assert result.returncode == 2
    assert "usage:" in result.stderr


def test_evaluate_prints_the_report(tiny_package, synthetic_dataset, env, tmp_path):
    output = tmp_path / "metrics.json"
    result = run(env, "-m", "training.evaluate", "--model", str(tiny_package), "--trust-saved-model", "--data", str(synthetic_dataset),
                 "--json", str(output))
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert f"local package {tiny_package}" in text
    headline = re.search(r"images: (\d+)  loss: ([\d.]+)  accuracy: ([\d.]+)  macro-F1: ([\d.]+)  ECE: ([\d.]+)", text)
    assert headline, text
    assert int(headline.group(1)) == 90
    assert "Confusion matrix (rows: true, columns: predicted):" in text
    assert "| true \\ predicted | Normal | Benign | Malignant |" in text
    assert re.search(r"flagged out-of-distribution: \d+\.\d%", text)

    metrics = json.loads(output.read_text())
    assert metrics["n"] == 90
    assert float(headline.group(3)) == pytest.approx(metrics["accuracy"], abs=5e-5)
    assert sum(map(sum, metrics["confusion_matrix"])) == 90
    assert [sum(row) for row in metrics["confusion_matrix"]] == [30, 30, 30]
    # The synthetic classes are easy: a working pipeline gets nearly all of them right.
    assert metrics["accuracy"] > 0.9


def test_evaluate_refuses_classes_the_model_does_not_know(tiny_package, env, tmp_path):
    for label in ("Normal", "Pneumonia"):
        (tmp_path / "data" / label).mkdir(parents=True)
        for index in range(3):
            synthetic_slice("Normal", index + 1).save(tmp_path / "data" / label / f"{index}.png")
    result = run(env, "-m", "training.evaluate", "--model", str(tiny_package), "--trust-saved-model", "--data", str(tmp_path / "data"))
    assert result.returncode == 2
    assert "classes the model does not know: Pneumonia" in result.stderr
