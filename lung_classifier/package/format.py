"""The model package on disk: config.json schema, the file list and its checksums, reading and verifying.

A package is a directory that describes itself (labels, input, preprocessing, backbone,
calibration, OOD rule, training data) and lists every file it holds with its sha256 in
config.json. Loading trusts only the plain parts: the JSON and the head's arrays in
``head.npz`` (no pickle), which hold the trained numbers (temperature, decision offsets,
OOD threshold) once; :mod:`.rebuild` makes the graph from them. Nothing in a package is
ever executed as Python. Their values are checked on load (:mod:`.validation`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from .errors import PackageError, WeightsMismatchError
from .validation import check_config

FORMAT = "lung-classifier-package"
FORMAT_VERSION = 2
CONFIG = "config.json"
HEAD = "head.npz"
SAVED_MODEL = "saved_model"
CARD = "README.md"

_NAME_PART = re.compile(r"[A-Za-z0-9_.+-]+")
"""Characters a listed file name may use (fullmatch: no separators, drive letters, glob characters, newline)."""
_SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_CONFIG_BYTES = 2**20
"""A config.json larger than this is not a package config (the shipped one is about 10 KB)."""
MAX_CONFIG_DEPTH = 32
"""Deepest JSON nesting a config may have (the shipped one nests 4): json's parser recurses once per level."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_name(name: object) -> str:
    """A listed file name: relative POSIX path inside the package, plain characters only."""
    parts = name.split("/") if isinstance(name, str) else []
    if not parts or any(part in ("", ".", "..") or not _NAME_PART.fullmatch(part) for part in parts):
        raise PackageError(
            f"{name!r} is not an allowed package file name (relative path inside the package; "
            "letters, digits and _ . + - only; no '..', no absolute path)"
        )
    if name == CONFIG:
        raise PackageError(f"{CONFIG} cannot list itself")
    return name


# --- writing ----------------------------------------------------------------------------------


def _scan(directory: Path) -> list[str]:
    """Every file under directory (config.json excepted); symlinks and special files refused."""
    names = []
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory).as_posix()
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            raise PackageError(f"{directory}: {relative} is a symlink or special file; a package holds plain files")
        if path.is_file() and relative != CONFIG:
            names.append(check_name(relative))
    return names


def write_config(directory: Path, config: dict[str, Any]) -> dict[str, Any]:
    """List every file in the directory with its sha256, then write config.json."""
    directory = Path(directory)
    config = dict(config, format=FORMAT, format_version=FORMAT_VERSION)
    names = _scan(directory)
    inside = [n for n in names if n.startswith(SAVED_MODEL + "/")]
    config["files"] = {n: sha256_file(directory / n) for n in names if n not in inside}
    if inside:
        config["saved_model_files"] = {n: sha256_file(directory / n) for n in inside}
    else:
        config.pop("saved_model_files", None)
    (directory / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return config


# --- reading and verifying --------------------------------------------------------------------


def parse_config(config_path: Path) -> dict[str, Any]:
    """config.json's content, checked for format, required fields and well-formed file list.

    Checks nothing on disk but the file itself, so the Hub download can learn which files
    to fetch from it before fetching them.
    """
    config = _read_json(Path(config_path))
    if not isinstance(config, dict):
        raise PackageError(f"{config_path}: not a JSON object")
    if config.get("format") != FORMAT:
        raise PackageError(f"{config_path}: format {config.get('format')!r} is not {FORMAT!r}")
    if config.get("format_version") != FORMAT_VERSION:
        raise PackageError(
            f"{config_path}: package format version {config.get('format_version')} is not supported "
            f"(this library reads version {FORMAT_VERSION}); upgrade lung_classifier or re-export the package"
        )
    # Older packages also repeat ood.threshold, temperature and decision_rule.offsets here: read
    # from head.npz only, those copies are ignored, so those packages load as they are.
    required = (("labels",), ("input", "size"), ("backbone", "weights_sha256"),
                ("gradcam", "layers"), ("rendering", "dicom_window"))
    for keys in required:
        value = config
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        if value is None:
            raise PackageError(f"{config_path}: required field {'.'.join(keys)} is missing")
    for field, inside in (("files", False), ("saved_model_files", True)):
        listing = config.get(field, {})
        if not isinstance(listing, dict):
            raise PackageError(f"{config_path}: {field} must map file names to sha256 digests")
        for name, digest in listing.items():
            try:
                check_name(name)
            except PackageError as exc:
                raise PackageError(f"{config_path}: {field} lists {exc}") from None
            if name.startswith(SAVED_MODEL + "/") != inside:
                where = f"under {SAVED_MODEL}/" if inside else f"outside {SAVED_MODEL}/"
                raise PackageError(f"{config_path}: {field} lists {name!r}, which is not {where}")
            if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
                raise PackageError(f"{config_path}: {name} has no valid sha256 digest")
    if HEAD not in config.get("files", {}):
        raise PackageError(f"{config_path}: lists no {HEAD}, the trained head")
    check_config(config, config_path)
    return config


def _read_json(path: Path) -> Any:
    """A config file's JSON value; every way it can be unreadable is a PackageError that says which."""
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise PackageError(f"{path}: {size:,} bytes is too large for a package config (at most "
                           f"{MAX_CONFIG_BYTES // 2**20} MiB): not a lung_classifier package")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PackageError(f"{path}: not valid JSON (not UTF-8 text: {exc.reason} at byte {exc.start})") from None
    depth = _json_depth(text)
    if depth > MAX_CONFIG_DEPTH:
        raise PackageError(f"{path}: JSON nested {depth:,} levels deep (at most {MAX_CONFIG_DEPTH}): not a "
                           "lung_classifier package config")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise PackageError(f"{path}: not valid JSON ({exc})") from None
    except (ValueError, RecursionError) as exc:  # ValueError: an integer of more than 4300 digits
        raise PackageError(f"{path}: not a usable JSON config ({str(exc)[:120]})") from None


def _json_depth(text: str) -> int:
    """Deepest [ / { nesting, brackets inside strings ignored: one linear pass, so no recursion is relied on."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def listed_files(config: dict[str, Any], saved_model: bool = True) -> list[str]:
    """The files a load needs: the plain ones, and the SavedModel's when it will be loaded."""
    return sorted({**config.get("files", {}), **(config.get("saved_model_files", {}) if saved_model else {})})


def _unlisted(directory: Path, root: Path, listed: set[str], ignore: frozenset[str]) -> list[str]:
    """Files present but not listed; refuses symlinks leading out of root and special files."""
    unlisted = []
    for folder, subfolders, files in os.walk(directory):
        for entry in subfolders + files:
            path = Path(folder) / entry
            relative = path.relative_to(directory).as_posix()
            if path.is_symlink():
                if entry in subfolders:
                    raise PackageError(f"{directory}: {relative} is a symlink to a directory; refusing it")
                try:
                    target = path.resolve()
                except (RuntimeError, OSError) as exc:  # a loop: RuntimeError on Python 3.11, OSError on 3.13
                    raise PackageError(f"{directory}: {relative} is a symlink that cannot be resolved "
                                       f"({exc.__class__.__name__}: a loop or a broken chain); a package holds "
                                       "plain files") from None
                if not target.is_relative_to(root.resolve()):
                    raise PackageError(f"{directory}: {relative} is a symlink pointing outside the package")
            elif entry in files and not path.is_file():
                raise PackageError(f"{directory}: {relative} is not a regular file")
            if entry in files and relative != CONFIG and relative not in listed and relative not in ignore:
                unlisted.append(relative)
    return sorted(unlisted)


def read_config(directory: Path, *, saved_model: bool = True, root: Path | None = None,
                ignore: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Load and verify a package: format, file list, nothing unlisted, every checksum.

    ``saved_model=False`` (the SavedModel will not be loaded) lets its files be absent;
    those present are still checked. ``root`` is where symlinks may lead (the Hub cache
    links snapshot files to its blob store); by default the package directory itself.
    ``ignore`` names files that may be present unlisted (the Hub's own .gitattributes).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise PackageError(f"{directory}: no such package directory")
    config_path = directory / CONFIG
    if not config_path.is_file():
        raise PackageError(f"{directory}: not a model package ({CONFIG} is missing)")
    config = parse_config(config_path)
    listed = {**config.get("files", {}), **config.get("saved_model_files", {})}
    unlisted = _unlisted(directory, root or directory, set(listed), ignore)
    if unlisted:
        shown = ", ".join(unlisted[:5]) + (f" and {len(unlisted) - 5} more" if len(unlisted) > 5 else "")
        raise PackageError(
            f"{directory}: files not listed in {CONFIG}: {shown}. A package lists every file it holds; "
            "remove them, or re-export the package"
        )
    optional = set() if saved_model else set(config.get("saved_model_files", {}))
    for relative, expected in listed.items():
        path = directory / relative
        if not path.is_file():
            if relative in optional:
                continue
            raise PackageError(f"{directory}: {relative} is missing")
        if sha256_file(path) != expected:
            raise PackageError(
                f"{directory}: {relative} fails its sha256 checksum: the file is corrupted or was modified"
            )
    return config


def has_saved_model(config: dict[str, Any]) -> bool:
    return bool(config.get("saved_model_files"))


def copy_package(source: Path, destination: Path) -> None:
    """Copy a verified package to destination (which must not hold another package)."""
    destination = Path(destination)
    if destination.exists() and any(destination.iterdir()):
        if not (destination / CONFIG).is_file():
            raise PackageError(f"{destination} exists and is not empty; refusing to write a package into it")
        shutil.rmtree(destination)
    shutil.copytree(source, destination, dirs_exist_ok=True)
    read_config(destination)
