"""LungClassifier on the tiny package: loading, predictions, batching, Grad-CAM, OOD, saving."""

from __future__ import annotations

import io
import json
import re
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from conftest import synthetic_slice
from lung_classifier import Analysis, ImageError, LungClassifier, PackageError
from lung_classifier.classifier import resolve_source
from lung_classifier.verdict import OOD_NOTICE, labels_meaning, shown_label

LABELS = ("Normal", "Benign", "Malignant")


@pytest.fixture(scope="module")
def classifier(tiny_package) -> LungClassifier:
    return LungClassifier.from_pretrained(tiny_package, trust_saved_model=True)  # its graph: the tiny backbone


@pytest.fixture
def slice_file(tmp_path):
    path = tmp_path / "slice.png"
    synthetic_slice("Malignant", 12).save(path)
    return path


def values(probabilities: dict[str, float]) -> np.ndarray:
    return np.array(list(probabilities.values()))


def test_from_pretrained_local_directory(tiny_package, classifier):
    assert classifier.labels == LABELS
    assert classifier.labels == tuple(json.loads((tiny_package / "config.json").read_text())["labels"])
    assert classifier.input_size == 64
    assert classifier.directory == tiny_package  # a full package is used in place
    assert str(tiny_package) in classifier.origin
    again = LungClassifier.from_pretrained(str(tiny_package), trust_saved_model=True)
    assert again.labels == LABELS


def test_predict_is_a_distribution_over_the_labels_in_order(classifier, slice_file):
    result = classifier.predict(slice_file)
    assert set(result) == {"label", "verdict", "malignancy_ruled_out", "screening", "answered_as", "probabilities",
                           "ood_score", "ood_threshold", "out_of_distribution", "ood_reason"}
    assert isinstance(result["malignancy_ruled_out"], bool) and re.fullmatch(r"answered as a data\d*-like image", result["answered_as"])
    assert result["label"] in LABELS and result["verdict"] == result["label"] and not result["out_of_distribution"]
    assert result["ood_threshold"] == classifier.ood_threshold
    probabilities = result["probabilities"]
    assert list(probabilities) == list(LABELS)
    assert all(isinstance(p, float) and 0.0 <= p <= 1.0 for p in probabilities.values())
    assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-5)


def test_predictions_follow_the_training_classes(classifier):
    # The tiny model separates the synthetic classes; a broken label order or head would not.
    for label in LABELS:
        result = classifier.analyze(np.asarray(synthetic_slice(label, 12)))
        assert result.label == label


def test_the_label_agrees_with_the_bars_and_the_screening_answer_with_the_sources_threshold(classifier):
    images = [np.asarray(synthetic_slice(label, index)) for label in LABELS for index in range(1, 30, 4)]
    results = classifier.analyze_batch(images)
    (source,) = classifier.sources
    for result in results:
        assert result.label == max(result.probabilities, key=result.probabilities.get)
        answered = not result.out_of_distribution
        assert result.malignancy_ruled_out == (answered and result.probabilities["Malignant"] < source.rule_out)
    assert any(r.malignancy_ruled_out for r in results) and not all(r.malignancy_ruled_out for r in results)


def test_a_photo_is_flagged_on_predict_and_predict_batch(classifier):
    import matplotlib

    photo = f"{matplotlib.get_data_path()}/sample_data/grace_hopper.jpg"
    record = classifier.predict(photo)
    assert record["out_of_distribution"] is True
    # One rule for a refused input: no label beside the flag, the notice as verdict, probabilities for machines.
    assert record["label"] is None and record["verdict"] == OOD_NOTICE and set(record["probabilities"]) == set(LABELS)
    assert record["ood_score"] > record["ood_threshold"] == classifier.ood_threshold
    assert [r["out_of_distribution"] for r in classifier.predict_batch([photo, photo])] == [True, True]


def test_every_input_kind_gives_the_same_prediction(classifier, slice_file):
    from_path = classifier.predict(slice_file)
    with Image.open(slice_file) as pil:
        from_pil = classifier.predict(pil)
        from_array = classifier.predict(np.asarray(pil))
    for other in (classifier.predict(str(slice_file)), classifier.predict(slice_file.read_bytes()),
                  from_pil, from_array):
        assert other == from_path


def test_predict_batch_matches_single_predictions(classifier):
    images = [np.asarray(synthetic_slice(label, index)) for label in LABELS for index in (3, 17)]
    images.append(np.asarray(synthetic_slice("Benign", 26).resize((90, 120))))  # another size in the batch
    batch = classifier.predict_batch(images)
    assert len(batch) == len(images)
    for image, result in zip(images, batch):
        single = classifier.predict(image)
        np.testing.assert_allclose(values(result["probabilities"]), values(single["probabilities"]), atol=1e-5)
        assert result["label"] == single["label"]
    assert classifier.predict_batch([]) == []


def test_batch_with_a_bad_image_raises_image_error(classifier):
    with pytest.raises(ImageError, match="empty"):
        classifier.predict_batch([np.asarray(synthetic_slice("Normal", 1)), b""])


def test_explain_gives_a_heatmap_of_the_input_size(classifier):
    image = np.asarray(synthetic_slice("Malignant", 12).resize((90, 120)))  # 120 high, 90 wide
    explained = classifier.analyze(image, explain=True)
    assert isinstance(explained, Analysis)
    heatmap = explained.heatmap
    assert heatmap.dtype == np.float32
    assert heatmap.shape == (120, 90)
    assert heatmap.min() >= 0.0 and heatmap.max() <= 1.0
    assert heatmap.max() > 0.5  # normalised per image, not all zeros
    plain = classifier.analyze(image)
    assert plain.heatmap is None
    assert plain.label == explained.label
    np.testing.assert_allclose(values(explained.probabilities), values(plain.probabilities), atol=1e-5)
    assert explained.ood_score == pytest.approx(plain.ood_score, rel=1e-4)


def test_ood_flag_is_the_score_against_the_threshold(classifier):
    rng = np.random.default_rng(0)
    images = [np.asarray(synthetic_slice("Normal", 8)), rng.integers(0, 256, (100, 100, 3), dtype=np.uint8)]
    for result in classifier.analyze_batch(images):
        assert isinstance(result.out_of_distribution, bool)
        assert result.out_of_distribution == (result.ood_score > classifier.ood_threshold)


def test_the_threshold_is_the_heads_and_older_configs_repeating_it_still_load(tiny_package, tmp_path):
    from lung_classifier import package
    from lung_classifier.model.head import Head

    older = tmp_path / "older"
    shutil.copytree(tiny_package, older)
    config = json.loads((older / package.CONFIG).read_text())
    config["ood"]["threshold"] = 123.0  # older packages repeat it here; the head's copy is the one used
    package.write_config(older, config)
    loaded = LungClassifier.from_pretrained(older, trust_saved_model=True)
    assert loaded.ood_threshold == float(Head.load(older / package.HEAD).ood_threshold) != 123.0


def test_training_like_slices_are_less_out_of_distribution_than_junk(classifier):
    rng = np.random.default_rng(1)
    slices = [np.asarray(synthetic_slice(label, index)) for label in LABELS for index in (8, 12, 18, 23)]
    junk = {
        "colour noise": rng.integers(0, 256, (100, 100, 3), dtype=np.uint8),
        "constant grey": np.full((100, 100), 128, np.uint8),
        "colour gradient": np.stack([*np.meshgrid(np.linspace(0, 255, 100), np.linspace(255, 0, 100)),
                                     np.full((100, 100), 200.0)], axis=-1).astype(np.uint8),
    }
    slice_scores = [r.ood_score for r in classifier.analyze_batch(slices)]
    for name, image in junk.items():
        score = classifier.analyze(image).ood_score
        assert score > max(slice_scores), name
    # Most in-distribution slices are not flagged (the threshold is a high quantile of validation scores).
    flagged = [r.out_of_distribution for r in classifier.analyze_batch(slices)]
    assert sum(flagged) <= len(flagged) // 4


def test_concurrent_predictions_agree(classifier):
    images = [np.asarray(synthetic_slice(label, 10 + i)) for i, label in enumerate(LABELS * 2)]
    expected = [classifier.predict(image) for image in images]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(classifier.predict, images * 3))
    for index, result in enumerate(got):
        np.testing.assert_allclose(values(result["probabilities"]),
                                   values(expected[index % len(images)]["probabilities"]), atol=1e-6)


def test_bad_image_raises_image_error(classifier):
    with pytest.raises(ImageError, match="not an image"):
        classifier.predict(b"GIF89a but not really" * 20)


def test_save_pretrained_round_trips(classifier, tmp_path, slice_file):
    saved = classifier.save_pretrained(tmp_path / "saved")
    assert saved == tmp_path / "saved"
    reloaded = LungClassifier.from_pretrained(saved, trust_saved_model=True)
    assert reloaded.labels == classifier.labels
    assert reloaded.config == classifier.config
    assert reloaded.predict(slice_file) == classifier.predict(slice_file)
    # Saving over a package replaces it.
    classifier.save_pretrained(saved)
    assert LungClassifier.from_pretrained(saved, trust_saved_model=True).predict(slice_file) == classifier.predict(slice_file)


def test_save_pretrained_refuses_a_non_empty_foreign_directory(classifier, tmp_path):
    target = tmp_path / "documents"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(PackageError, match="not empty"):
        classifier.save_pretrained(target)
    assert [p.name for p in target.iterdir()] == ["notes.txt"]


def test_plain_saved_model_gives_the_classifier_probabilities(classifier, tiny_package):
    import tensorflow as tf

    from lung_classifier.decoding.images import load_rgb
    from lung_classifier.model.preprocessing import prepare_batch

    images = [np.asarray(synthetic_slice(label, 14)) for label in LABELS]
    loaded = tf.saved_model.load(str(tiny_package / "saved_model"))
    assert {"serving_default", "explain", "features"} <= set(loaded.signatures)
    batch = tf.constant(prepare_batch([load_rgb(image) for image in images], classifier.input_size))
    outputs = loaded.signatures["serving_default"](images=batch)
    assert set(outputs) == {"probabilities", "label", "ood_score", "out_of_distribution"}
    results = classifier.analyze_batch(images)
    (source,) = classifier.sources  # the library shows the recognised source's calibration of the graph's
    for row, result in zip(outputs["probabilities"].numpy(), results):
        np.testing.assert_allclose(source.calibrated(row), values(result.probabilities), atol=1e-5)
    # TF Serving users get the most probable class of the graph's probabilities, and the feature guard's flag.
    assert outputs["label"].numpy().tolist() == outputs["probabilities"].numpy().argmax(axis=1).tolist()
    flags = outputs["out_of_distribution"].numpy().tolist()
    assert all(r.out_of_distribution for r, flag in zip(results, flags) if flag)
    features = loaded.signatures["features"](images=batch)["features"]
    assert features.shape == (3, 8 + 16 + 32)  # the tiny backbone's taps, pooled


def test_from_pretrained_refuses_a_tampered_package(tiny_package, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_package, copy)
    data = bytearray((copy / "head.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "head.npz").write_bytes(bytes(data))
    with pytest.raises(PackageError, match="head.npz"):
        LungClassifier.from_pretrained(copy)


@pytest.mark.parametrize("source", ["./nope", "/definitely/not/here", "~/no-such-package-dir", "not a repo id!!",
                                    "three/part/name", "hf://"])
def test_resolve_source_refuses_what_is_neither_a_directory_nor_a_repo_id(source, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PackageError, match="no such local package directory, and not a Hub repo id"):
        resolve_source(source)


def test_resolve_source_local_directory_and_default(tiny_package):
    assert resolve_source(tiny_package).directory == tiny_package
    assert resolve_source(str(tiny_package)).directory == tiny_package
    default = resolve_source(None)
    assert default.directory.name == "default_model" and "embedded default model" in default.origin


def test_from_pretrained_on_a_directory_that_is_not_a_package(tmp_path):
    (tmp_path / "stuff.txt").write_text("x")
    with pytest.raises(PackageError, match="config.json is missing"):
        LungClassifier.from_pretrained(tmp_path)


def test_image_bytes_from_a_jpeg_upload(classifier):
    buffer = io.BytesIO()
    synthetic_slice("Benign", 12).save(buffer, format="JPEG", quality=95)
    result = classifier.analyze(buffer.getvalue())
    assert result.label == "Benign"


def dicom_slice(tmp_path, orientation: list[float] | None) -> str:
    """pydicom's test CT, with its orientation set (None: the tag removed)."""
    import pydicom
    from pydicom.data import get_testdata_file

    dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    if orientation is None:
        del dataset.ImageOrientationPatient
    else:
        dataset.ImageOrientationPatient = orientation
    path = tmp_path / f"slice-{len(list(tmp_path.iterdir()))}.dcm"
    dataset.save_as(path)
    return str(path)


@pytest.mark.parametrize("orientation, reason", [
    # axial: the tiny package has no DICOM source, the reason says so (not "exported as an image")
    ([1, 0, 0, 0, 1, 0], "a DICOM slice: none of this model's DICOM training sources has validated cancers"),
    (None, "a DICOM slice: none of this model's DICOM training sources has validated cancers"),  # not recorded
    ([1, 0, 0, 0, 0, -1], "reformatted"),  # coronal
    ([0, 1, 0, 0, 0, -1], "reformatted"),  # sagittal
])
def test_dicom_input_is_never_diagnosed_and_reformats_say_why(classifier, tmp_path, orientation, reason):
    path = dicom_slice(tmp_path, orientation)
    result = classifier.analyze(path)
    assert result.out_of_distribution and result.verdict == "Unlike the training data: no diagnosis"
    assert any(part in result.ood_reason for part in reason.split("|")), result.ood_reason
    assert classifier.predict(path)["out_of_distribution"] is True
    # Rendered at the package's window, which the config records.
    from lung_classifier.decoding.images import load_rgb

    window = classifier.config["rendering"]["dicom_window"]
    np.testing.assert_array_equal(classifier.read(path).rgb,
                                  load_rgb(path, dicom_window=(window["centre"], window["width"])))


def test_labels_read_with_their_meaning_from_the_package_or_the_default():
    assert shown_label("Normal", labels_meaning({})) == "Normal (no cancer finding)"
    assert shown_label("Malignant", labels_meaning({})) == "Malignant"
    package = {"labels_meaning": {"Normal": "no cancer seen: healthy or other findings", "Benign": "a benign nodule"}}
    assert shown_label("Normal", labels_meaning(package)) == "Normal (no cancer seen)"
    assert shown_label("Benign", labels_meaning(package)) == "Benign"
