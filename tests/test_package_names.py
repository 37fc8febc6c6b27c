"""Package and name errors end in PackageError / ImageError with a message a person can act on, never a raw
RecursionError, ValueError, RuntimeError or huggingface_hub's validator error."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from lung_classifier.decoding.images import load_rgb
from lung_classifier.decoding.limits import ImageError
from lung_classifier.package import format as package_format
from lung_classifier.package import hub
from lung_classifier.package.format import PackageError


def config_file(tmp_path, text: str):
    path = tmp_path / "config.json"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, words", [
    ("[" * 100_000 + "]" * 100_000, "JSON nested 100,000 levels deep"),
    ('{"a": ' + "[" * 33 + "]" * 33 + "}", "JSON nested 34 levels deep"),
    ('{"n": ' + "9" * 5000 + "}", "not a usable JSON config"),
    ('{"a": 1', "not valid JSON"),
])
def test_unusable_configs_are_package_errors(tmp_path, text, words):
    with pytest.raises(PackageError, match=words):
        package_format.parse_config(config_file(tmp_path, text))


def test_brackets_inside_strings_do_not_count_as_nesting(tmp_path):
    text = json.dumps({"format": "x", "note": "[" * 100})
    with pytest.raises(PackageError, match="format 'x' is not"):  # parsed, then refused for its content
        package_format.parse_config(config_file(tmp_path, text))


def test_a_huge_config_is_refused_before_it_is_read(tmp_path):
    path = config_file(tmp_path, " " * (package_format.MAX_CONFIG_BYTES + 1))
    with pytest.raises(PackageError, match="too large for a package config"):
        package_format.parse_config(path)


@pytest.mark.parametrize("name", ["head.npz\n", "a/b.npy\n", "x\ny.npz"])
def test_names_with_a_newline_are_refused(name):
    with pytest.raises(PackageError, match="not an allowed package file name"):
        package_format.check_name(name)


def test_repo_ids_are_fullmatched_and_validated_by_huggingface_hub():
    for bad in ("owner/name\n", "a/..", "a/b--c", "a/x.git", "a/" + "x" * 100, "a/.b"):
        assert hub.parse_repo_id(bad) is None, bad
    assert hub.parse_repo_id("owner/name") == "owner/name"


def test_from_pretrained_of_a_path_like_name_is_a_package_error():
    from lung_classifier import LungClassifier

    with pytest.raises(PackageError, match="no such local package directory, and not a Hub repo id"):
        LungClassifier.from_pretrained("a/..")


def test_a_symlink_loop_in_a_package_is_a_package_error(tmp_path):
    from lung_classifier.classifier import DEFAULT_MODEL

    package = tmp_path / "package"
    shutil.copytree(DEFAULT_MODEL, package)
    (package / "a").symlink_to(package / "b")
    (package / "b").symlink_to(package / "a")
    with pytest.raises(PackageError, match="[ab] is a symlink that cannot be resolved .RuntimeError: a loop"):
        package_format.read_config(package)


@pytest.mark.parametrize("shape", [(0, 0), (0, 64), (64, 0, 3), (0,)])
def test_an_empty_array_is_an_image_error(shape):
    with pytest.raises(ImageError, match="holds no pixel"):
        load_rgb(np.zeros(shape, np.float32))
