"""The ONNX Runtime path: the exported graph computes the Keras graph's features, the NumPy head the TF head's
outputs, int8 answers equal float32's on every development slice, and predict / scan / the served API never import
TensorFlow."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, SHARED_DATA, need_shared_data, require, synthetic_slice
from lung_classifier.package import onnx_build

BATCH = 64
INT8_PROBABILITY_BOUND = 0.2
"""Largest change int8 may make to a shown probability before the recheck (measured: 0.135 on 869 slices)."""


def resnet_like_backbone():
    """Every layer type the exporter writes (zero padding, valid and same convolutions, batch norm, ReLU, max
    pooling, residual add), with the taps' names, small enough for a unit test."""
    import keras

    from lung_classifier.model.network import TAPS

    keras.utils.set_random_seed(3)
    layers = keras.layers
    inputs = keras.Input((48, 48, 3))
    x = layers.ZeroPadding2D(3, name="conv1_pad")(inputs)
    x = layers.Conv2D(8, 7, strides=2, name="conv1_conv")(x)
    x = layers.BatchNormalization(epsilon=1.001e-5, name="conv1_bn")(x)
    x = layers.Activation("relu", name="conv1_relu")(x)
    x = layers.ZeroPadding2D(1, name="pool1_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
    for name, channels in zip(TAPS, (8, 16, 16)):
        shortcut = layers.BatchNormalization(name=f"{name}_0_bn")(layers.Conv2D(channels, 1, strides=2,
                                                                                name=f"{name}_0_conv")(x))
        y = layers.Conv2D(channels, 3, strides=2, padding="same", name=f"{name}_1_conv")(x)
        y = layers.Activation("relu", name=f"{name}_1_relu")(layers.BatchNormalization(name=f"{name}_1_bn")(y))
        x = layers.Activation("relu", name=name)(layers.Add(name=f"{name}_add")([shortcut, y]))
    model = keras.Model(inputs, x)
    for layer in model.layers:  # batch norms with statistics of their own, so folding them is tested
        if isinstance(layer, layers.BatchNormalization):
            gamma, beta, mean, variance = layer.get_weights()
            rng = np.random.default_rng(len(layer.name))
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.2, beta.shape),
                               rng.normal(0, 0.5, mean.shape), rng.uniform(0.5, 2.0, variance.shape)])
    return model


@pytest.mark.parametrize("make", [resnet_like_backbone, None], ids=["resnet-like", "tiny"])
def test_the_exported_graph_computes_the_keras_features(make):
    import onnxruntime as ort

    from conftest import tiny_backbone
    from lung_classifier.model.network import build_extractor, pool
    from lung_classifier.model.onnx_export import backbone_to_onnx

    backbone = make() if make else tiny_backbone()
    size = backbone.input_shape[1]
    pixels = np.random.default_rng(0).uniform(0, 255, (3, size, size, 3)).astype(np.float32)
    want = pool(build_extractor(backbone)(pixels)).numpy()
    session = ort.InferenceSession(backbone_to_onnx(backbone).SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"pixels": pixels})[0]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_the_numpy_head_gives_the_graph_head_outputs():
    import tensorflow as tf

    from lung_classifier.classifier import DEFAULT_MODEL
    from lung_classifier.model.head import Head, head_outputs
    from lung_classifier.model.network import HeadVariables, head_outputs as graph_head_outputs

    head = Head.load(DEFAULT_MODEL / "head.npz")
    rng = np.random.default_rng(1)
    near_training = head.knn_bank[:30] @ head.knn_components  # standardised features along training rows
    far = rng.normal(0, 1.5, (10, head.feature_mean.size))  # the guard's side of its threshold
    features = (head.feature_mean + head.feature_scale * np.concatenate([near_training, far])).astype(np.float32)
    want = {name: value.numpy() for name, value in graph_head_outputs(tf.constant(features),
                                                                       HeadVariables(head)).items()}
    got = head_outputs(features, head)
    assert set(got) == set(want)
    for name in ("label", "out_of_distribution"):
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    for name in ("probabilities", "logits", "margin", "ood_score"):
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5, err_msg=name)
    assert want["out_of_distribution"].any() and not want["out_of_distribution"].all()


def ranges_file(tmp_path: Path, change) -> Path:
    cache = json.loads((Path(onnx_build.__file__).parents[1] / "default_model" / onnx_build.CALIBRATION).read_text())
    change(cache)
    path = tmp_path / onnx_build.CALIBRATION
    path.write_text(json.dumps(cache))
    return path


def _first(cache: dict) -> dict:
    return next(iter(cache["data"].values()))


@pytest.mark.parametrize("change, message", [
    (lambda c: c["calibration_method"].update(value="CalibrationMethod.MinMax"), "not Percentile ranges"),
    (lambda c: c.update(data={}), "not Percentile ranges"),
    (lambda c: _first(c).update(lowest=float("nan")), "range"),
    (lambda c: _first(c).update(lowest=1e9), "range"),
    (lambda c: _first(c).update(lowest="0"), "not a number"),
    (lambda c: _first(c)["highest"].update(dtype="object"), "dtype"),
    (lambda c: c.pop("calibration_method"), "calibration_method"),
], ids=["method", "empty", "nan", "inverted", "string", "dtype", "missing"])
def test_calibration_ranges_are_checked_numbers(tmp_path, change, message):
    with pytest.raises(onnx_build.PackageError, match=message):
        onnx_build.read_ranges(ranges_file(tmp_path, change))


def test_the_default_ranges_are_read_and_written_back_alike(tmp_path):
    ranges = onnx_build.read_ranges(ranges_file(tmp_path, lambda cache: None))
    assert len(ranges) > 100 and all(low <= high for low, high in ranges.values())
    onnx_build.write_ranges(ranges, tmp_path / "again.json")
    assert onnx_build.read_ranges(tmp_path / "again.json") == ranges


def test_the_tiny_package_runs_in_int8_and_float32_on_onnx_runtime(tiny_package, tmp_path, monkeypatch,
                                                                    tiny_standard_backbone):
    from lung_classifier import LungClassifier, PackageError

    monkeypatch.setenv("LUNG_CLASSIFIER_CACHE", str(tmp_path / "cache"))
    assert onnx_build.has_calibration(json.loads((tiny_package / "config.json").read_text()))  # training measured it
    fast = LungClassifier.from_pretrained(tiny_package, precision="int8")
    exact = LungClassifier.from_pretrained(tiny_package, precision="float32")
    graph = LungClassifier.from_pretrained(tiny_package, trust_saved_model=True)
    assert (fast.runtime, fast.precision, exact.precision, graph.runtime) == ("onnxruntime", "int8", "float32",
                                                                             "tensorflow")
    assert (fast.directory / onnx_build.INT8_GRAPH).is_file()
    images = [np.asarray(synthetic_slice(label, index)) for label in ("Normal", "Malignant") for index in range(4)]
    for a, b in zip(exact.analyze_batch(images), graph.analyze_batch(images)):
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-4)
        assert a.ood_score == pytest.approx(b.ood_score, rel=1e-4)
    explained = fast.analyze(images[0], explain=True)  # Grad-CAM from the TensorFlow rebuild, loaded now
    assert explained.heatmap.shape == images[0].shape[:2]

    # A package measured before int8 ranges existed: auto runs it in float32; int8 asked for is an error.
    old = tmp_path / "no-ranges"
    shutil.copytree(tiny_package, old)
    (old / onnx_build.CALIBRATION).unlink()
    from lung_classifier import package

    config = json.loads((old / "config.json").read_text())
    package.write_config(old, config)
    assert LungClassifier.from_pretrained(old).precision in ("float32", "as shipped")
    with pytest.raises(PackageError, match="no int8_calibration.json"):
        LungClassifier.from_pretrained(old, precision="int8")
    with pytest.raises(ValueError, match="trusted SavedModel runs on TensorFlow"):
        LungClassifier.from_pretrained(tiny_package, trust_saved_model=True, runtime="onnxruntime")


def development_slices() -> list[Path]:
    """Every development slice of the three sources: IQ-OTH/NCCD, Chest CT-Scan (images) and COVID-CT-MD (DICOM)."""
    from training.data import scan_folder

    root = need_shared_data().parent
    chest, dicom = root / "chestctscan", root / "covidctmd"
    require(chest.is_dir() and dicom.is_dir(), f"Chest CT-Scan and COVID-CT-MD data not found under {root}")
    return ([item.path for item in scan_folder(SHARED_DATA, progress=False).items]
            + sorted(p for p in chest.rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
            + sorted(dicom.rglob("*.dcm")))


@pytest.mark.slow
def test_int8_answers_as_float32_on_every_development_slice():
    from lung_classifier import LungClassifier
    from lung_classifier.model.preprocessing import prepare_batch

    paths = development_slices()
    assert len(paths) > 1500
    exact = LungClassifier.from_pretrained(precision="float32")
    fast = LungClassifier.from_pretrained(precision="int8")
    assert (exact.runtime, fast.runtime, fast.precision) == ("onnxruntime", "onnxruntime", "int8")
    decided = ("label", "malignancy_ruled_out", "out_of_distribution", "ood_reason", "answered_as")
    largest = 0.0
    for start in range(0, len(paths), BATCH):
        chunk = [exact.read(path) for path in paths[start:start + BATCH]]
        pixels = prepare_batch([piece.rgb for piece in chunk], exact.input_size)
        largest = max(largest, float(np.abs(exact.network.predict(pixels)["probabilities"]
                                            - fast.network.predict(pixels)["probabilities"]).max()))
        for path, a, b in zip(paths[start:start + BATCH], exact.analyze_batch(chunk), fast.analyze_batch(chunk)):
            want, got = a.as_dict(), b.as_dict()
            assert {k: got[k] for k in decided} == {k: want[k] for k in decided}, path.name
    assert largest <= INT8_PROBABILITY_BOUND


NO_TENSORFLOW = """
import sys
from lung_classifier import LungClassifier
classifier = LungClassifier.from_pretrained()
assert classifier.runtime == "onnxruntime", classifier.runtime
print(classifier.predict(sys.argv[1])["verdict"])
print(classifier.analyze_scan(sys.argv[2:]).verdict)
loaded = sorted(name for name in sys.modules if name.split(".")[0] in ("tensorflow", "keras"))
assert not loaded, loaded[:5]
"""


@pytest.mark.slow
def test_predict_and_scan_never_import_tensorflow(cache_root):
    from lung_classifier import LungClassifier

    LungClassifier.from_pretrained()  # builds the ONNX graphs into the test cache (TensorFlow is imported for that)
    slice_path = development_slices()[0]
    series = sorted((SHARED_DATA.parent / "covidctmd" / "normal001").glob("*.dcm"))[:8]
    done = subprocess.run([sys.executable, "-c", NO_TENSORFLOW, str(slice_path), *map(str, series)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    cli = subprocess.run([sys.executable, "-X", "importtime", "-m", "lung_classifier", "predict", str(slice_path)],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert "tensorflow" not in cli.stderr and " keras" not in cli.stderr


@pytest.mark.slow
def test_the_served_api_never_imports_tensorflow(cache_root, tmp_path):
    from gradio_client import Client, handle_file

    from lung_classifier import LungClassifier
    from lung_classifier.classifier import DEFAULT_MODEL
    from testkit.app_server import start_app

    LungClassifier.from_pretrained()  # the ONNX graphs, built into the test cache the app will use
    slices = development_slices()[:3]
    series = sorted((SHARED_DATA.parent / "covidctmd" / "normal001").glob("*.dcm"))[:8]
    server = start_app(DEFAULT_MODEL, cache_root, tmp_path)
    try:
        assert "on onnxruntime" in server.log()
        client = Client(server.url, verbose=False, download_files=str(tmp_path / "downloads"))
        assert client.predict(handle_file(str(slices[0])), api_name="/predict")["label"]
        assert len(client.predict([handle_file(str(path)) for path in slices], api_name="/batch")["data"]) == 3
        assert client.predict([handle_file(str(path)) for path in series], api_name="/scan")[1]["slices"]
        maps = Path(f"/proc/{server.pid}/maps").read_text()
        assert "tensorflow" not in maps, "the server loaded TensorFlow's libraries"
    finally:
        server.stop()
