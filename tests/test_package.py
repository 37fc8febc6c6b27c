"""Model packages on disk: config verification, checksums, head-only completion and its cache."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from lung_classifier import package
from lung_classifier.decoding.windowing import TRAINING_RANGE
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
    """What `training --no-savedmodel` writes: the package without saved_model/, re-checksummed."""
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
    # A full package whose SavedModel is trusted is complete as it is: no rebuild, no copy.
    assert package.full_package(package_copy, config, trust_saved_model=True) == (package_copy, config)


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
    with pytest.raises(PackageError, match=rf"format version {package.FORMAT_VERSION + 1} is not supported.*upgrade"):
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
    minimal = {"labels": ["x", "y"], "input": {"size": 32}, "backbone": {"weights_sha256": "0"},
               "gradcam": {"layers": "conv4+conv5"}, "rendering": TRAINING_RANGE}
    written = package.write_config(tmp_path, {**minimal, "format_version": 99,
                                              "files": {"stale": "0"}, "saved_model_files": {"s": "0"}})
    assert written["format_version"] == package.FORMAT_VERSION
    assert set(written["files"]) == {package.HEAD, "notes/a.txt"}
    assert "saved_model_files" not in written  # no saved_model/ here
    assert package.read_config(tmp_path) == written


@pytest.mark.parametrize("field", ["labels", "input", "backbone", "gradcam"])
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


# --- what a package may list and hold -------------------------------------------------------------


def edit_listing(directory: Path, field: str, name: str, digest: str | None = None) -> None:
    config = json.loads((directory / package.CONFIG).read_text())
    config[field][name] = digest or "0" * 64
    (directory / package.CONFIG).write_text(json.dumps(config))


@pytest.mark.parametrize("name", ["extra.txt", "plots/extra.png", "saved_model/assets/extra.txt",
                                  "saved_model/variables/variables.data-00001-of-00002"])
def test_an_unlisted_file_refuses_the_load_naming_it(package_copy, name):
    (package_copy / name).parent.mkdir(parents=True, exist_ok=True)
    (package_copy / name).write_bytes(b"not in the list")
    for saved_model in (True, False):
        with pytest.raises(PackageError, match=rf"files not listed in config\.json: {re.escape(name)}\."):
            package.read_config(package_copy, saved_model=saved_model)


def test_many_unlisted_files_are_counted(package_copy):
    for index in range(7):
        (package_copy / f"extra{index}.txt").write_text("x")
    with pytest.raises(PackageError, match=r"extra0\.txt, .*extra4\.txt and 2 more"):
        package.read_config(package_copy)


@pytest.mark.parametrize("name", ["../outside.txt", "/etc/hostname", "plots/../../outside.txt", "./head.npz",
                                  "plots//a.png", "plots\\a.png", "C:/outside.txt", "plots/*.png", "", "config.json"])
def test_a_listed_name_that_could_leave_the_package_is_refused(package_copy, name):
    (package_copy.parent / "outside.txt").write_text("outside")
    edit_listing(package_copy, "files", name, package.sha256_file(package_copy.parent / "outside.txt"))
    with pytest.raises(PackageError, match="is not an allowed package file name|cannot list itself"):
        package.read_config(package_copy)


def test_saved_model_files_must_be_listed_as_such(package_copy):
    edit_listing(package_copy, "files", "saved_model/extra.pb")
    with pytest.raises(PackageError, match=r"files lists 'saved_model/extra\.pb', which is not outside saved_model/"):
        package.read_config(package_copy)
    edit_config(package_copy, files=json.loads((package_copy / package.CONFIG).read_text())["saved_model_files"])
    with pytest.raises(PackageError, match="which is not outside"):
        package.read_config(package_copy)


def test_a_digest_that_is_not_sha256_is_refused(package_copy):
    edit_listing(package_copy, "files", "README.md", "abc")
    with pytest.raises(PackageError, match="README.md has no valid sha256"):
        package.read_config(package_copy)


def test_a_symlink_out_of_the_package_is_refused_even_with_the_right_content(package_copy):
    outside = package_copy.parent / "card-elsewhere.md"
    shutil.move(package_copy / "README.md", outside)
    (package_copy / "README.md").symlink_to(outside)
    with pytest.raises(PackageError, match="README.md is a symlink pointing outside the package"):
        package.read_config(package_copy)
    # ... unless the caller says where links may lead (the Hub cache's blob store).
    assert package.read_config(package_copy, root=package_copy.parent)["name"] == "tiny-test"


def test_a_symlinked_directory_is_refused(package_copy):
    shutil.move(package_copy / "plots", package_copy.parent / "plots")
    (package_copy / "plots").symlink_to(package_copy.parent / "plots")
    with pytest.raises(PackageError, match="plots is a symlink to a directory"):
        package.read_config(package_copy)


def test_without_the_saved_model_its_files_may_be_absent_but_not_wrong(package_copy):
    shutil.rmtree(package_copy / package.SAVED_MODEL)
    with pytest.raises(PackageError, match="saved_model/.* is missing"):
        package.read_config(package_copy)
    assert package.has_saved_model(package.read_config(package_copy, saved_model=False))
    (package_copy / package.SAVED_MODEL).mkdir()
    (package_copy / package.SAVED_MODEL / "saved_model.pb").write_bytes(b"another graph")
    with pytest.raises(PackageError, match=r"saved_model/saved_model\.pb fails its sha256"):
        package.read_config(package_copy, saved_model=False)


def test_write_config_refuses_names_it_could_not_read_back(tmp_path):
    (tmp_path / package.HEAD).write_bytes(b"head")
    (tmp_path / "a b.txt").write_text("space")
    with pytest.raises(PackageError, match="'a b.txt' is not an allowed package file name"):
        package.write_config(tmp_path, {})
    (tmp_path / "a b.txt").unlink()
    (tmp_path / "link.txt").symlink_to(tmp_path / package.HEAD)
    with pytest.raises(PackageError, match="link.txt is a symlink"):
        package.write_config(tmp_path, {})


# --- the graph: rebuilt from the head unless the SavedModel is trusted ----------------------------


def test_complete_builds_head_only_package_once_into_the_cache(tiny_package, tmp_path, monkeypatch,
                                                              tiny_standard_backbone, capsys):
    monkeypatch.setenv("LUNG_CLASSIFIER_CACHE", str(tmp_path / "cache"))
    head_only = tmp_path / "head-only"
    config = make_head_only(tiny_package, head_only)

    target, full = package.full_package(head_only, config, precision="float32")
    assert "building the full model" in capsys.readouterr().err
    assert target.parent == tmp_path / "cache" / "packages"
    assert re.fullmatch(r"tiny-test-[0-9a-f]{16}-[0-9a-f]{16}-r2-float32", target.name)
    assert full["rebuilt"]["precision"] == "float32"
    assert package.has_saved_model(full)
    assert full["rebuilt"]["weights_sha256"] == "tiny-backbone-seed-0"
    assert package.read_config(target) == full
    assert not (head_only / package.SAVED_MODEL).exists()  # the source is left alone
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no staging left behind

    # Second use: the cached build is verified and reused.
    again, again_config = package.full_package(head_only, config, precision="float32")
    assert (again, again_config) == (target, full)
    assert "building" not in capsys.readouterr().err

    # Another precision is another build, beside it.
    other, other_config = package.full_package(head_only, config, precision="bfloat16")
    assert other == target.with_name(target.name.replace("float32", "bfloat16"))
    assert other_config["rebuilt"]["precision"] == "bfloat16"
    capsys.readouterr()

    # A damaged cached build is rebuilt, not used.
    flip_last_byte(next((target / "saved_model" / "variables").glob("variables.data-*")))
    rebuilt, _ = package.full_package(head_only, config, precision="float32")
    assert rebuilt == target
    assert "rebuilding damaged cached model" in capsys.readouterr().err
    assert package.has_saved_model(package.read_config(target))


def test_completed_head_only_package_predicts_like_the_full_one(tiny_package, tmp_path, monkeypatch,
                                                                tiny_standard_backbone):
    from conftest import synthetic_slice
    from lung_classifier import LungClassifier

    monkeypatch.setenv("LUNG_CLASSIFIER_CACHE", str(tmp_path / "cache"))
    make_head_only(tiny_package, tmp_path / "head-only")
    rebuilt = LungClassifier.from_pretrained(tmp_path / "head-only", precision="float32")
    original = LungClassifier.from_pretrained(tiny_package, trust_saved_model=True)
    assert (rebuilt.precision, original.precision) == ("float32", "as shipped")
    with pytest.raises(ValueError, match="runs as shipped"):
        LungClassifier.from_pretrained(tiny_package, trust_saved_model=True, precision="bfloat16")
    assert rebuilt.directory.parent == tmp_path / "cache" / "packages"
    assert original.directory == tiny_package
    assert rebuilt.source_name == "local package head-only" and str(tmp_path) not in rebuilt.source_name
    image = np.asarray(synthetic_slice("Malignant", 3))
    got, want = rebuilt.predict(image)["probabilities"], original.predict(image)["probabilities"]
    assert list(got) == list(want)
    np.testing.assert_allclose(list(got.values()), list(want.values()), atol=1e-6)


def with_other_head(source: Path, destination: Path) -> dict:
    """The package with its SavedModel as trained but another head: what a hostile upload could look like."""
    from lung_classifier.model.head import Head

    shutil.copytree(source, destination)
    head = Head.load(destination / package.HEAD)
    other = Head(**{**head.__dict__, "bias": head.bias + np.array([0.0, 0.0, 50.0], np.float32)})
    other.save(destination / package.HEAD)
    config = json.loads((destination / package.CONFIG).read_text())
    (destination / package.CONFIG).unlink()
    return package.write_config(destination, config)


def test_a_full_package_is_rebuilt_from_its_head_unless_its_saved_model_is_trusted(
        tiny_package, tmp_path, monkeypatch, tiny_standard_backbone):
    from conftest import synthetic_slice
    from lung_classifier import LungClassifier

    monkeypatch.setenv("LUNG_CLASSIFIER_CACHE", str(tmp_path / "cache"))
    mixed = tmp_path / "mixed"
    with_other_head(tiny_package, mixed)
    image = np.asarray(synthetic_slice("Normal", 3))
    trained = LungClassifier.from_pretrained(tiny_package, trust_saved_model=True).predict(image)["probabilities"]
    assert trained["Malignant"] < 0.99  # so the other head's answer below is its own

    default = LungClassifier.from_pretrained(mixed, precision="float32")
    assert default.directory.parent == tmp_path / "cache" / "packages"
    assert default.predict(image)["probabilities"]["Malignant"] > 0.999  # the head's answer, not the shipped graph's
    trusted = LungClassifier.from_pretrained(mixed, trust_saved_model=True)
    assert trusted.directory == mixed
    np.testing.assert_allclose(list(trusted.predict(image)["probabilities"].values()), list(trained.values()),
                               atol=1e-6)


def file_writing_saved_model(directory: Path, marker: Path) -> None:
    """A SavedModel with the package's signatures whose every call writes a file (TF graphs can)."""
    import tensorflow as tf

    class Writer(tf.Module):
        def __init__(self):
            super().__init__()
            spec = [tf.TensorSpec([None, None, None, 3], tf.float32, name="images")]
            self.serve = tf.function(self._serve, input_signature=spec)
            self.explain = tf.function(self._explain, input_signature=spec)

        def _serve(self, images):
            tf.io.write_file(str(marker), "written by the package's graph")
            count = tf.shape(images)[0]
            return {"probabilities": tf.fill([count, 3], 1.0 / 3), "label": tf.zeros([count], tf.int64),
                    "ood_score": tf.zeros([count]), "out_of_distribution": tf.zeros([count], tf.bool)}

        def _explain(self, images):
            return {**self._serve(images), "heatmap": tf.zeros(tf.shape(images)[:3])}

    writer = Writer()
    tf.saved_model.save(writer, str(directory), signatures={"serving_default": writer.serve,
                                                            "explain": writer.explain})


def test_a_graph_that_writes_files_does_not_run_unless_trusted(tiny_package, tmp_path, monkeypatch,
                                                              tiny_standard_backbone):
    from conftest import synthetic_slice
    from lung_classifier import LungClassifier

    monkeypatch.setenv("LUNG_CLASSIFIER_CACHE", str(tmp_path / "cache"))
    hostile, marker = tmp_path / "hostile", tmp_path / "written-by-the-package.txt"
    shutil.copytree(tiny_package, hostile, ignore=shutil.ignore_patterns(package.SAVED_MODEL))
    file_writing_saved_model(hostile / package.SAVED_MODEL, marker)
    config = json.loads((hostile / package.CONFIG).read_text())
    package.write_config(hostile, config)
    image = np.asarray(synthetic_slice("Benign", 2))

    LungClassifier.from_pretrained(hostile).analyze(image, explain=True)
    assert not marker.exists()
    LungClassifier.from_pretrained(hostile, trust_saved_model=True).predict(image)
    assert marker.read_text() == "written by the package's graph"  # so the check above can fail


def test_a_name_that_climbs_out_stays_in_the_cache(tiny_package, tmp_path, monkeypatch, tiny_standard_backbone):
    work = tmp_path / "work"
    cache = work / "deep" / "cache"
    monkeypatch.setenv("LUNG_CLASSIFIER_CACHE", str(cache))
    prefixes = {"../../x": "x-", "/abs/../..": "abs-", "..": "package-", "a/b\\c d": "a-b-c-d-"}
    for name, prefix in prefixes.items():
        source = work / f"named-{prefix}"
        config = make_head_only(tiny_package, source)
        config = package.write_config(source, {**config, "name": name})
        target, _ = package.full_package(source, config)
        assert target.parent == cache / "packages" and target.name.startswith(prefix), (name, target)
    assert sorted(p.name for p in work.iterdir()) == sorted(["deep"] + [f"named-{p}" for p in prefixes.values()])
    assert [p.name for p in (work / "deep").iterdir()] == ["cache"]


def test_other_weights_are_an_error_unless_allowed_and_key_the_cache(tiny_package, tmp_path, monkeypatch,
                                                                    tiny_standard_backbone):
    from conftest import synthetic_slice
    from lung_classifier import LungClassifier

    monkeypatch.setenv("LUNG_CLASSIFIER_CACHE", str(tmp_path / "cache"))
    make_head_only(tiny_package, tmp_path / "head-only")
    image = np.asarray(synthetic_slice("Normal", 4))
    same = LungClassifier.from_pretrained(tmp_path / "head-only")

    tiny_standard_backbone(1)  # other weights than the head's 'tiny-backbone-seed-0'
    with pytest.raises(package.WeightsMismatchError,
                       match=r"differ from those the head was trained on.*allow_other_weights=True") as raised:
        LungClassifier.from_pretrained(tmp_path / "head-only")
    assert "trust_saved_model" not in str(raised.value)  # a head-only package ships no graph to trust
    with pytest.raises(package.WeightsMismatchError, match=r"allow_other_weights=True.*trust_saved_model=True"):
        LungClassifier.from_pretrained(tiny_package)  # ships its graph: trusting it is another way out
    with pytest.warns(UserWarning, match="differ from those the head was trained on.*may differ from the model card"):
        other = LungClassifier.from_pretrained(tmp_path / "head-only", allow_other_weights=True)
    assert other.directory != same.directory  # the cache key holds the weights used
    assert other.config["rebuilt"]["weights_sha256"] == "tiny-backbone-seed-1"
    assert not np.allclose(list(other.predict(image)["probabilities"].values()),
                           list(same.predict(image)["probabilities"].values()), atol=1e-4)
    # The cached build made with other weights is no way around the check.
    with pytest.raises(package.WeightsMismatchError):
        LungClassifier.from_pretrained(tmp_path / "head-only")

    tiny_standard_backbone(0)
    assert LungClassifier.from_pretrained(tmp_path / "head-only").directory == same.directory


def test_failed_build_leaves_no_cache_entry(tiny_package, tmp_path, monkeypatch, tiny_standard_backbone):
    from lung_classifier.model import backbone

    monkeypatch.setenv("LUNG_CLASSIFIER_CACHE", str(tmp_path / "cache"))
    config = make_head_only(tiny_package, tmp_path / "head-only")

    def broken(source, input_shape=None):
        raise RuntimeError("no weights today")

    monkeypatch.setattr(backbone, "load_resnet50", broken)
    with pytest.raises(RuntimeError, match="no weights today"):
        package.full_package(tmp_path / "head-only", config)
    assert list((tmp_path / "cache" / "packages").iterdir()) == []


# --- head-only completion with the real ResNet50 (slow) -----------------------------------------


def real_weights(monkeypatch) -> str:
    """The real ImageNet ResNet50 notop weights (a skip or, in CI, a failure saying why)."""
    from lung_classifier.model import backbone

    user_cache = Path("~/.cache/lung_classifier").expanduser() / backbone.CACHE_FILE_NAME
    if user_cache.is_file():
        monkeypatch.setenv(backbone.WEIGHTS_ENV, str(user_cache))
    try:
        return str(backbone.resolve_weights().path)
    except backbone.BackboneWeightsError as exc:
        require(False, f"real ResNet50 weights cannot be resolved: {exc}")


def random_resnet_head_package(directory: Path, weights_sha256: str, seed: int = 0) -> dict:
    """A head-only package with a random but valid head for ResNet50's 3584 pooled features."""
    from lung_classifier.classifier import DEFAULT_MODEL
    from lung_classifier.model.head import Head
    from lung_classifier.model.network import TAPS

    rng = np.random.default_rng(seed)
    features, classes, components = 3584, 3, 32
    axes, _ = np.linalg.qr(rng.normal(size=(features, components)))
    head = Head(
        feature_mean=rng.uniform(0, 1, features).astype(np.float32),
        feature_scale=rng.uniform(0.5, 2, features).astype(np.float32),
        kernel=(rng.normal(size=(features, classes)) * 0.01).astype(np.float32),
        bias=np.zeros(classes, np.float32),
        temperature=np.array(1.5, np.float32),
        decision_offsets=np.array([0.0, 0.0, 1.0], np.float32),
        ood_components=axes.T.astype(np.float32),
        ood_scale=rng.uniform(0.5, 2, components).astype(np.float32),
        ood_residual=np.array(1.0, np.float32),
        ood_threshold=np.array(3.0, np.float32),
        knn_components=axes.T.astype(np.float32),
        knn_bank=(lambda rows: rows / np.linalg.norm(rows, axis=1, keepdims=True))(
            rng.normal(size=(16, components))).astype(np.float32),
        knn_threshold=np.array(2.0, np.float32),
    )
    directory.mkdir(parents=True)
    head.save(directory / package.HEAD)
    (directory / "README.md").write_text("random head for tests\n")
    config = {
        "name": "random-resnet-head",
        "model_version": "0.0.0",
        "labels": ["Normal", "Benign", "Malignant"],
        "input": {"size": 224, "channels": "RGB", "dtype": "float32", "range": [0, 255]},
        "preprocessing": {"decoder": "lung_classifier.decoding.images.load_rgb", "resize": "bilinear"},
        "backbone": {"architecture": "keras.applications.ResNet50", "weights": "imagenet", "include_top": False,
                     "frozen": True, "taps": list(TAPS), "weights_sha256": weights_sha256},
        "head": {"file": package.HEAD},
        "gradcam": {"layers": "conv4+conv5"},
        "rendering": TRAINING_RANGE,
        # The evidence per source of the default package: valid recognisers and operating points for these labels.
        "evidence": json.loads((DEFAULT_MODEL / package.CONFIG).read_text())["evidence"],
    }
    return package.write_config(directory, config)


@pytest.mark.slow
def test_head_only_package_is_completed_with_real_resnet50(tmp_path, monkeypatch, capfd):
    from conftest import synthetic_slice
    from lung_classifier import LungClassifier

    monkeypatch.setenv("LUNG_CLASSIFIER_CACHE", str(tmp_path / "cache"))
    real_weights(monkeypatch)
    source = tmp_path / "head-only"
    # Trained "on other weights": an error that says how to fix it, or on request a warning.
    random_resnet_head_package(source, weights_sha256="0" * 64)
    with pytest.raises(package.WeightsMismatchError, match=r"\(sha256 000000000000\.\.\.\).*allow_other_weights"):
        LungClassifier.from_pretrained(source)
    assert list((tmp_path / "cache" / "packages").iterdir()) == []

    with pytest.warns(UserWarning, match=r"differ from those the head was trained on \(sha256 000000000000\.\.\.\)"):
        first = LungClassifier.from_pretrained(source, allow_other_weights=True)
    err = capfd.readouterr().err
    assert "building the ONNX graph" in err  # the default runtime's build
    assert first.directory.parent == tmp_path / "cache" / "packages"
    assert first.input_size == 224
    assert not (source / package.SAVED_MODEL).exists()
    image = np.asarray(synthetic_slice("Normal", 1))
    probabilities = first.predict(image)["probabilities"]
    assert list(probabilities) == ["Normal", "Benign", "Malignant"]
    assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-5)

    with pytest.warns(UserWarning, match="differ"):
        second = LungClassifier.from_pretrained(source, allow_other_weights=True)
    assert "building" not in capfd.readouterr().err
    assert second.directory == first.directory
    np.testing.assert_allclose(list(second.predict(image)["probabilities"].values()), list(probabilities.values()),
                               atol=1e-6)


@pytest.mark.slow
def test_embedded_default_model_loads_and_predicts(tmp_path, monkeypatch, capfd):
    from conftest import synthetic_slice
    from lung_classifier import LungClassifier
    from lung_classifier.classifier import DEFAULT_MODEL

    require(DEFAULT_MODEL.is_dir(), f"no embedded default model at {DEFAULT_MODEL} yet")
    from lung_classifier.model import backbone

    monkeypatch.setenv("LUNG_CLASSIFIER_CACHE", str(tmp_path / "cache"))
    weights = real_weights(monkeypatch)
    # The pinned npm import is what the default head was trained on; other copies must be allowed on purpose.
    pinned = Path(weights).name == backbone.CACHE_FILE_NAME
    classifier = LungClassifier.from_pretrained(allow_other_weights=not pinned)
    err = capfd.readouterr().err
    assert "building the ONNX graph" in err  # the default runtime's build
    if pinned:
        assert classifier.config["rebuilt"]["weights_sha256"] == classifier.config["backbone"]["weights_sha256"]
    assert classifier.labels == ("Normal", "Benign", "Malignant")
    assert classifier.input_size == 224
    probabilities = classifier.predict(np.asarray(synthetic_slice("Normal", 1)))["probabilities"]
    assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert "embedded default model" in classifier.origin
    assert classifier.source_name == "embedded default model"
