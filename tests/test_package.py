"""Model packages on disk: config verification, checksums, head-only completion and its cache."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lung_classifier import package
from lung_classifier.package import PackageError
from conftest import require


@pytest.fixture
def package_copy(tiny_package, tmp_path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_package, copy)
    return copy


def all_files(directory: Path) -> set[str]:
    return {p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()}


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def edit_config(directory: Path, **changes) -> None:
    config = json.loads((directory / package.CONFIG).read_text())
    config.update(changes)
    (directory / package.CONFIG).write_text(json.dumps(config))


def make_head_only(source: Path, destination: Path) -> dict:
    """What `training --head-only` writes: the package without saved_model/, re-checksummed."""
    shutil.copytree(source, destination, ignore=shutil.ignore_patterns(package.SAVED_MODEL))
    config = json.loads((destination / package.CONFIG).read_text())
    (destination / package.CONFIG).unlink()
    return package.write_config(destination, config)


# --- verification -----------------------------------------------------------------------------


def test_a_copy_of_a_package_verifies(package_copy):
    config = package.read_config(package_copy)
    assert config["format"] == package.FORMAT and config["format_version"] == package.FORMAT_VERSION
    assert config["labels"] == ["Normal", "Benign", "Malignant"]
    assert package.has_saved_model(config)
    # A full package is complete as it is: no rebuild, no copy.
    assert package.complete(package_copy, config) == (package_copy, config)


def test_tampered_head_is_refused_naming_the_file(package_copy):
    flip_last_byte(package_copy / package.HEAD)
    with pytest.raises(PackageError, match=r"head\.npz fails its sha256 checksum"):
        package.read_config(package_copy)


def test_tampered_saved_model_file_is_refused_naming_the_file(package_copy):
    variables = next((package_copy / "saved_model" / "variables").glob("variables.data-*"))
    flip_last_byte(variables)
    relative = variables.relative_to(package_copy).as_posix()
    with pytest.raises(PackageError, match=f"{relative} fails its sha256 checksum"):
        package.read_config(package_copy)


def test_tampered_graph_is_refused(package_copy):
    flip_last_byte(package_copy / "saved_model" / "saved_model.pb")
    with pytest.raises(PackageError, match=r"saved_model/saved_model\.pb fails"):
        package.read_config(package_copy)


def test_tampered_card_is_refused(package_copy):
    (package_copy / "README.md").write_text((package_copy / "README.md").read_text() + "\nedited\n")
    with pytest.raises(PackageError, match=r"README\.md fails"):
        package.read_config(package_copy)


def test_missing_config_is_not_a_package(package_copy):
    (package_copy / package.CONFIG).unlink()
    with pytest.raises(PackageError, match="config.json is missing"):
        package.read_config(package_copy)


def test_missing_directory(tmp_path):
    with pytest.raises(PackageError, match="no such package directory"):
        package.read_config(tmp_path / "absent")


def test_config_that_is_not_json(package_copy):
    (package_copy / package.CONFIG).write_text("{not json")
    with pytest.raises(PackageError, match="not valid JSON"):
        package.read_config(package_copy)


def test_unknown_format_version_says_to_upgrade(package_copy):
    edit_config(package_copy, format_version=package.FORMAT_VERSION + 1)
    with pytest.raises(PackageError, match=r"format version 2 is not supported.*upgrade"):
        package.read_config(package_copy)


def test_other_format_is_refused(package_copy):
    edit_config(package_copy, format="some-other-model")
    with pytest.raises(PackageError, match="'some-other-model' is not"):
        package.read_config(package_copy)


def test_missing_listed_file_is_named(package_copy):
    (package_copy / "plots" / "roc_curves.png").unlink()
    with pytest.raises(PackageError, match=r"plots/roc_curves\.png is missing"):
        package.read_config(package_copy)


def test_missing_saved_model_file_is_named(package_copy):
    (package_copy / "saved_model" / "variables" / "variables.index").unlink()
    with pytest.raises(PackageError, match=r"saved_model/variables/variables\.index is missing"):
        package.read_config(package_copy)


def test_config_listing_no_head_is_refused(package_copy):
    config = json.loads((package_copy / package.CONFIG).read_text())
    del config["files"][package.HEAD]
    (package_copy / package.CONFIG).write_text(json.dumps(config))
    with pytest.raises(PackageError, match="lists no head.npz"):
        package.read_config(package_copy)


# --- writing ----------------------------------------------------------------------------------


def test_write_config_records_every_file(tiny_package):
    config = json.loads((tiny_package / package.CONFIG).read_text())
    files = all_files(tiny_package) - {package.CONFIG}
    top = {f for f in files if not f.startswith("saved_model/")}
    inside = files - top
    assert set(config["files"]) == top
    assert {"head.npz", "README.md", "metrics.json", "plots/confusion_matrix.png"} <= top
    assert set(config["saved_model_files"]) == inside
    assert "saved_model/saved_model.pb" in inside
    for relative, digest in {**config["files"], **config["saved_model_files"]}.items():
        assert digest == package.sha256_file(tiny_package / relative), relative


def test_write_config_overrides_format_and_checksums_given_by_the_caller(tmp_path):
    (tmp_path / package.HEAD).write_bytes(b"head")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("a")
    minimal = {"labels": ["x"], "input": {"size": 8}, "ood": {"threshold": 1.0}, "backbone": {"weights_sha256": "0"}}
    written = package.write_config(tmp_path, {**minimal, "format_version": 99,
                                              "files": {"stale": "0"}, "saved_model_files": {"s": "0"}})
    assert written["format_version"] == package.FORMAT_VERSION
    assert set(written["files"]) == {package.HEAD, "notes/a.txt"}
    assert "saved_model_files" not in written  # no saved_model/ here
    assert package.read_config(tmp_path) == written


@pytest.mark.parametrize("field", ["labels", "input", "ood", "backbone"])
def test_a_package_missing_a_required_field_is_refused(tiny_package, tmp_path, field):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_package, copy)
    config = json.loads((copy / package.CONFIG).read_text())
    del config[field]
    (copy / package.CONFIG).write_text(json.dumps(config))
    with pytest.raises(package.PackageError, match="required field"):
        package.read_config(copy)


def test_head_only_package_verifies_without_saved_model(tiny_package, tmp_path):
    config = make_head_only(tiny_package, tmp_path / "head-only")
    assert "saved_model_files" not in config
    assert not package.has_saved_model(package.read_config(tmp_path / "head-only"))
    assert config["labels"] == json.loads((tiny_package / package.CONFIG).read_text())["labels"]


def test_copy_package_refuses_a_non_empty_foreign_directory(tiny_package, tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    (target / "thesis.docx").write_text("precious")
    with pytest.raises(PackageError, match="not empty"):
        package.copy_package(tiny_package, target)
    assert (target / "thesis.docx").read_text() == "precious"


def test_copy_package_replaces_an_older_package(tiny_package, tmp_path):
    target = tmp_path / "target"
    shutil.copytree(tiny_package, target)
    (target / "stale-file.txt").write_text("left over")
    package.copy_package(tiny_package, target)
    assert all_files(target) == all_files(tiny_package)


# --- head-only completion (with the tiny stand-in exporter) ---------------------------------------


@pytest.fixture
def tiny_exporter(monkeypatch):
    """export_saved_model with the tiny backbone the tiny package was trained on, counting calls."""
    from conftest import tiny_backbone
    from lung_classifier.model import Head, LungModel, build_extractor

    calls = []

    def export(directory: Path, config: dict, weights: str | None = None) -> None:
        calls.append(directory)
        size = config["input"]["size"]
        LungModel(build_extractor(tiny_backbone()), Head.load(directory / package.HEAD), size).export(
            directory / package.SAVED_MODEL)

    monkeypatch.setattr(package, "export_saved_model", export)
    return calls


def test_complete_builds_head_only_package_once_into_the_cache(tiny_package, tmp_path, monkeypatch,
                                                              tiny_exporter, capsys):
    monkeypatch.setenv("LUNG_CLASSIFIER_CACHE", str(tmp_path / "cache"))
    head_only = tmp_path / "head-only"
    config = make_head_only(tiny_package, head_only)

    target, full = package.complete(head_only, config)
    assert "building the full model" in capsys.readouterr().err
    assert len(tiny_exporter) == 1
    assert target.parent == tmp_path / "cache" / "packages"
    assert target.name.startswith("tiny-test-")
    assert package.has_saved_model(full)
    assert package.read_config(target) == full
    assert not (head_only / package.SAVED_MODEL).exists()  # the source is left alone
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no staging left behind

    # Second use: the cached build is verified and reused.
    again, again_config = package.complete(head_only, config)
    assert (again, again_config) == (target, full)
    assert len(tiny_exporter) == 1
    assert "building" not in capsys.readouterr().err

    # A damaged cached build is rebuilt, not used.
    flip_last_byte(next((target / "saved_model" / "variables").glob("variables.data-*")))
    rebuilt, _ = package.complete(head_only, config)
    assert rebuilt == target and len(tiny_exporter) == 2
    assert "rebuilding damaged cached model" in capsys.readouterr().err
    package.read_config(target)


def test_completed_head_only_package_predicts_like_the_full_one(tiny_package, tmp_path, monkeypatch,
                                                                tiny_exporter):
    from conftest import synthetic_slice
    from lung_classifier import LungClassifier

    monkeypatch.setenv("LUNG_CLASSIFIER_CACHE", str(tmp_path / "cache"))
    make_head_only(tiny_package, tmp_path / "head-only")
    rebuilt = LungClassifier.from_pretrained(tmp_path / "head-only")
    original = LungClassifier.from_pretrained(tiny_package)
    assert rebuilt.directory != tmp_path / "head-only"
    image = np.asarray(synthetic_slice("Malignant", 3))
    got, want = rebuilt.predict(image), original.predict(image)
    assert list(got) == list(want)
    np.testing.assert_allclose(list(got.values()), list(want.values()), atol=1e-6)


def test_failed_build_leaves_no_cache_entry(tiny_package, tmp_path, monkeypatch):
    monkeypatch.setenv("LUNG_CLASSIFIER_CACHE", str(tmp_path / "cache"))
    config = make_head_only(tiny_package, tmp_path / "head-only")

    def broken(directory, config, weights=None):
        raise RuntimeError("no weights today")

    monkeypatch.setattr(package, "export_saved_model", broken)
    with pytest.raises(RuntimeError, match="no weights today"):
        package.complete(tmp_path / "head-only", config)
    assert list((tmp_path / "cache" / "packages").iterdir()) == []


# --- head-only completion with the real ResNet50 (slow) -----------------------------------------


def real_weights(monkeypatch) -> str:
    """The real ImageNet ResNet50 notop weights (a skip or, in CI, a failure saying why)."""
    from lung_classifier import backbone

    user_cache = Path("~/.cache/lung_classifier").expanduser() / backbone.CACHE_FILE_NAME
    if user_cache.is_file():
        monkeypatch.setenv(backbone.WEIGHTS_ENV, str(user_cache))
    try:
        return str(backbone.resolve_weights().path)
    except backbone.BackboneWeightsError as exc:
        require(False, f"real ResNet50 weights cannot be resolved: {exc}")


def random_resnet_head_package(directory: Path, weights_sha256: str, seed: int = 0) -> dict:
    """A head-only package with a random but valid head for ResNet50's 3584 pooled features."""
    from lung_classifier.model import TAPS, Head

    rng = np.random.default_rng(seed)
    features, classes, components = 3584, 3, 32
    axes, _ = np.linalg.qr(rng.normal(size=(features, components)))
    head = Head(
        feature_mean=rng.uniform(0, 1, features).astype(np.float32),
        feature_scale=rng.uniform(0.5, 2, features).astype(np.float32),
        kernel=(rng.normal(size=(features, classes)) * 0.01).astype(np.float32),
        bias=np.zeros(classes, np.float32),
        temperature=np.array(1.5, np.float32),
        ood_components=axes.T.astype(np.float32),
        ood_scale=rng.uniform(0.5, 2, components).astype(np.float32),
        ood_residual=np.array(1.0, np.float32),
        ood_threshold=np.array(3.0, np.float32),
    )
    directory.mkdir(parents=True)
    head.save(directory / package.HEAD)
    (directory / "README.md").write_text("random head for tests\n")
    config = {
        "name": "random-resnet-head",
        "model_version": "0.0.0",
        "labels": ["Normal", "Benign", "Malignant"],
        "input": {"size": 224, "channels": "RGB", "dtype": "float32", "range": [0, 255]},
        "preprocessing": {"decoder": "lung_classifier.images.load_rgb", "resize": "bilinear"},
        "backbone": {"architecture": "keras.applications.ResNet50", "weights": "imagenet", "include_top": False,
                     "frozen": True, "taps": list(TAPS), "weights_sha256": weights_sha256},
        "head": {"file": package.HEAD},
        "temperature": 1.5,
        "ood": {"threshold": 3.0},
    }
    return package.write_config(directory, config)


@pytest.mark.slow
def test_head_only_package_is_completed_with_real_resnet50(tmp_path, monkeypatch, capfd):
    from conftest import synthetic_slice
    from lung_classifier import LungClassifier

    monkeypatch.setenv("LUNG_CLASSIFIER_CACHE", str(tmp_path / "cache"))
    real_weights(monkeypatch)
    source = tmp_path / "head-only"
    # Trained "on other weights": the rebuild works but warns that predictions may differ from the card.
    random_resnet_head_package(source, weights_sha256="0" * 64)

    first = LungClassifier.from_pretrained(source)
    err = capfd.readouterr().err
    assert "building the full model" in err
    assert "differ from those the head was trained on (sha256 000000000000...)" in err
    assert first.directory.parent == tmp_path / "cache" / "packages"
    assert first.input_size == 224
    assert not (source / package.SAVED_MODEL).exists()
    image = np.asarray(synthetic_slice("Normal", 1))
    probabilities = first.predict(image)
    assert list(probabilities) == ["Normal", "Benign", "Malignant"]
    assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-5)

    second = LungClassifier.from_pretrained(source)
    assert "building" not in capfd.readouterr().err
    assert second.directory == first.directory
    np.testing.assert_allclose(list(second.predict(image).values()), list(probabilities.values()), atol=1e-6)


@pytest.mark.slow
def test_embedded_default_model_loads_and_predicts(tmp_path, monkeypatch, capfd):
    from conftest import synthetic_slice
    from lung_classifier import LungClassifier
    from lung_classifier.classifier import DEFAULT_MODEL

    require(DEFAULT_MODEL.is_dir(), f"no embedded default model at {DEFAULT_MODEL} yet")
    from lung_classifier import backbone

    monkeypatch.setenv("LUNG_CLASSIFIER_CACHE", str(tmp_path / "cache"))
    weights = real_weights(monkeypatch)
    classifier = LungClassifier.from_pretrained()
    err = capfd.readouterr().err
    assert "building the full model" in err
    if Path(weights).name == backbone.CACHE_FILE_NAME:  # the pinned npm import the default head was trained on
        assert "differ" not in err
    assert classifier.labels == ("Normal", "Benign", "Malignant")
    assert classifier.input_size == 224
    probabilities = classifier.predict(np.asarray(synthetic_slice("Normal", 1)))
    assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert "embedded default model" in classifier.origin
