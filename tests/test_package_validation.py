"""A package's values are checked on load: a wrong number is a PackageError naming its field, never an answer."""

from __future__ import annotations

import io
import json
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from lung_classifier import LungClassifier, package
from lung_classifier.model.head import Head
from lung_classifier.package import PackageError
from lung_classifier.package.validation import MAX_HEAD_VALUES


def with_head(source: Path, destination: Path, **arrays) -> Path:
    """A copy of the package whose head.npz has `arrays` replaced, its checksums rewritten (so only values differ)."""
    shutil.copytree(source, destination)
    head = Head.load(destination / package.HEAD)
    Head(**{**head.__dict__, **arrays}).save(destination / package.HEAD)
    return rewritten(destination)


def rewritten(destination: Path, **config_changes) -> Path:
    config = {**json.loads((destination / package.CONFIG).read_text()), **config_changes}
    (destination / package.CONFIG).unlink()
    package.write_config(destination, config)
    return destination


@pytest.fixture(scope="module")
def head(tiny_package) -> Head:
    return Head.load(tiny_package / package.HEAD)


@pytest.mark.parametrize("field, value, message", [
    ("kernel", "nan", "kernel holds NaN or infinite values"),
    ("ood_threshold", "nan", "ood_threshold holds NaN or infinite values"),
    ("knn_threshold", "inf", "knn_threshold holds NaN or infinite values"),
    ("temperature", 0.0, "temperature must be above 0"),
    ("temperature", -1.0, "temperature must be above 0"),
    ("feature_scale", 0.0, "feature_scale must be above 0"),
    ("decision_offsets", "nan", "decision_offsets holds NaN"),
])
def test_a_head_with_a_bad_number_is_refused_naming_it(tiny_package, tmp_path, head, field, value, message):
    array = np.array(getattr(head, field), np.float32)
    array[...] = float(value) if isinstance(value, str) else value
    copy = with_head(tiny_package, tmp_path / "bad", **{field: array})
    with pytest.raises(PackageError, match=message):
        package.read_head(copy / package.HEAD, 3)
    with pytest.raises(PackageError, match=message):
        LungClassifier.from_pretrained(copy, trust_saved_model=True)


@pytest.mark.parametrize("field, shape", [("kernel", (4,)), ("bias", (4,)), ("temperature", (2,)),
                                          ("ood_components", (3, 5)), ("knn_bank", (7, 3))])
def test_a_head_whose_shapes_do_not_fit_is_refused_naming_the_array(tiny_package, tmp_path, head, field, shape):
    wrong = np.ones(shape, np.float32)
    copy = with_head(tiny_package, tmp_path / "bad", **{field: wrong})
    with pytest.raises(PackageError, match=f"{field} has shape"):
        package.read_head(copy / package.HEAD, 3)


def test_a_head_with_fewer_classes_than_labels_is_refused(tiny_package):
    with pytest.raises(PackageError, match=r"kernel has shape .* expected"):
        package.read_head(tiny_package / package.HEAD, 4)


def npy_header(shape: tuple[int, ...], dtype: str = "<f4") -> bytes:
    """A .npy version 1.0 header declaring `shape`, with no data after it."""
    text = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    text += b" " * (63 - (10 + len(text)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text


def test_a_small_head_declaring_a_1_gib_array_is_refused_from_its_header(tiny_package, tmp_path, monkeypatch):
    """3.1 MB holding a 1 GiB array once took 5.9 GiB to load: now the .npy header alone refuses it."""
    copy = tmp_path / "bomb"
    shutil.copytree(tiny_package, copy)
    with zipfile.ZipFile(copy / package.HEAD) as archive:
        data = archive.read("knn_bank.npy")
    buffer = io.BytesIO()
    with zipfile.ZipFile(copy / package.HEAD) as old, zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as new:
        for item in old.infolist():
            new.writestr(item.filename, npy_header((2**14, 2**14)) + b"\0" * 4096 if item.filename == "knn_bank.npy"
                         else old.read(item.filename))
    (copy / package.HEAD).write_bytes(buffer.getvalue())
    assert len(data) > 0 and (copy / package.HEAD).stat().st_size < 4 * 2**20
    monkeypatch.setattr(np, "load", lambda *args, **kwargs: pytest.fail("the arrays were loaded"))
    with pytest.raises(PackageError, match=f"declares 268,[0-9,]+ numbers \\(at most {MAX_HEAD_VALUES:,}\\).*knn_bank"):
        package.read_head(copy / package.HEAD, 3)


def test_a_head_array_of_objects_or_integers_is_refused(tiny_package, tmp_path):
    copy = tmp_path / "ints"
    shutil.copytree(tiny_package, copy)
    buffer = io.BytesIO()
    with zipfile.ZipFile(copy / package.HEAD) as old, zipfile.ZipFile(buffer, "w") as new:
        for item in old.infolist():
            new.writestr(item.filename, npy_header((), "|O") if item.filename == "temperature.npy"
                         else old.read(item.filename))
    (copy / package.HEAD).write_bytes(buffer.getvalue())
    with pytest.raises(PackageError, match="temperature is of dtype object"):
        package.read_head(copy / package.HEAD, 3)


def test_a_head_that_is_not_a_zip_is_refused(tmp_path):
    (tmp_path / "head.npz").write_bytes(b"not a zip")
    with pytest.raises(PackageError, match="not a readable head"):
        package.read_head(tmp_path / "head.npz", 3)


@pytest.mark.parametrize("changes, message", [
    ({"labels": "Normal"}, "labels must be a list"),
    ({"labels": ["Normal", "Normal", "Malignant"]}, "labels must be a list"),
    ({"input": {"size": "224"}}, "input.size must be a whole number"),
    ({"input": {"size": 7}}, "input.size must be a whole number"),
    ({"rendering": {"dicom_window": {"centre": 40, "width": 0}}}, "rendering.dicom_window.width must be above 0"),
    ({"rendering": {"dicom_window": {"centre": float("nan"), "width": 400}}}, "dicom_window.centre must be a finite"),
    ({"rendering": {"dicom_window": [40, 400]}}, "dicom_window.centre must be a finite"),
    ({"gradcam": {"layers": 5}}, "gradcam.layers must be a name"),
])
def test_a_config_with_a_bad_value_is_refused_naming_the_field(tiny_package, tmp_path, changes, message):
    copy = tmp_path / "bad"
    shutil.copytree(tiny_package, copy)
    config = json.loads((copy / package.CONFIG).read_text())
    for key, value in changes.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) and isinstance(config.get(key), dict) \
            else value
    (copy / package.CONFIG).write_text(json.dumps(config))
    with pytest.raises(PackageError, match=message):
        package.read_config(copy)


@pytest.mark.parametrize("field, value, message", [
    ("temperature", 0.0, "scan.temperature must be above 0"), ("temperature", float("nan"), "must be a finite"),
    ("k", 0, "scan.k must be a whole number"), ("confident_malignant", 1.5, "must be from 0 to 1"),
])
def test_a_scan_rule_with_a_bad_number_is_refused(tiny_package, tmp_path, field, value, message):
    copy = tmp_path / "bad"
    shutil.copytree(tiny_package, copy)
    config = json.loads((copy / package.CONFIG).read_text())
    if "scan" not in config:
        pytest.fail("the tiny package has no scan rule to spoil")
    config["scan"][field] = value
    (copy / package.CONFIG).write_text(json.dumps(config))
    with pytest.raises(PackageError, match=f"scan.{field}|{message}"):
        package.read_config(copy)
