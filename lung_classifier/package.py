"""The model package on disk: config.json schema, checksums, SavedModel export and rebuild.

A package is a directory that describes itself (labels, input, preprocessing, backbone,
calibration, OOD threshold, training data) and proves its integrity (sha256 of every
file in config.json). A *full* package holds the SavedModel; a *head-only* package
(the default embedded in this repo) holds just the trained head and is completed by
rebuilding the frozen ImageNet ResNet50 from the standard weights on first load.
Nothing in a package is ever executed as Python: it is JSON, .npz and a SavedModel graph.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

FORMAT = "lung-classifier-package"
FORMAT_VERSION = 2
CONFIG = "config.json"
HEAD = "head.npz"
SAVED_MODEL = "saved_model"
CARD = "README.md"


class PackageError(RuntimeError):
    """A package is missing, incomplete, of an unknown format or fails its checksums."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _checksums(directory: Path, under: str | None = None) -> dict[str, str]:
    root = directory / under if under else directory
    sums = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(directory).as_posix()
        if path.is_file() and relative != CONFIG and (under or not relative.startswith(SAVED_MODEL + "/")):
            sums[relative] = sha256_file(path)
    return sums


def write_config(directory: Path, config: dict[str, Any]) -> dict[str, Any]:
    """Record the checksums of everything in the directory, then write config.json."""
    config = dict(config, format=FORMAT, format_version=FORMAT_VERSION)
    config["files"] = _checksums(directory)
    if (directory / SAVED_MODEL).is_dir():
        config["saved_model_files"] = _checksums(directory, SAVED_MODEL)
    else:
        config.pop("saved_model_files", None)
    (directory / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return config


def read_config(directory: Path) -> dict[str, Any]:
    """Load and verify a package: required files, known format, every checksum."""
    directory = Path(directory)
    if not directory.is_dir():
        raise PackageError(f"{directory}: no such package directory")
    config_path = directory / CONFIG
    if not config_path.is_file():
        raise PackageError(f"{directory}: not a model package ({CONFIG} is missing)")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise PackageError(f"{config_path}: not valid JSON ({exc})") from None
    if config.get("format") != FORMAT:
        raise PackageError(f"{config_path}: format {config.get('format')!r} is not {FORMAT!r}")
    if config.get("format_version") != FORMAT_VERSION:
        raise PackageError(
            f"{config_path}: package format version {config.get('format_version')} is not supported "
            f"(this library reads version {FORMAT_VERSION}); upgrade lung_classifier or re-export the package"
        )
    required = (("labels",), ("input", "size"), ("ood", "threshold"), ("backbone", "weights_sha256"),
                ("gradcam", "layers"), ("rendering", "dicom_window"))
    for keys in required:
        value = config
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        if value is None:
            raise PackageError(f"{config_path}: required field {'.'.join(keys)} is missing")
    listed = {**config.get("files", {}), **config.get("saved_model_files", {})}
    if HEAD not in listed:
        raise PackageError(f"{config_path}: lists no {HEAD}, the trained head")
    for relative, expected in listed.items():
        path = directory / relative
        if not path.is_file():
            raise PackageError(f"{directory}: {relative} is missing")
        if sha256_file(path) != expected:
            raise PackageError(
                f"{directory}: {relative} fails its sha256 checksum: the file is corrupted or was modified"
            )
    return config


def has_saved_model(config: dict[str, Any]) -> bool:
    return bool(config.get("saved_model_files"))


def export_saved_model(directory: Path, config: dict[str, Any], weights: str | None = None) -> None:
    """Build the full model from the head and the standard ResNet50 weights, export it."""
    from . import backbone
    from .model import Head, LungModel, build_extractor

    size = config["input"]["size"]
    source = backbone.resolve_weights(weights)
    resnet = backbone.load_resnet50(source, input_shape=(size, size, 3))
    expected = config["backbone"]["weights_sha256"]
    if backbone.model_digest(resnet) != expected:
        print(f"lung_classifier: warning: ResNet50 weights from {source.origin} differ from those the head "
              f"was trained on (sha256 {expected[:12]}...); predictions may differ from the model card",
              file=sys.stderr)
    extractor = build_extractor(resnet)
    model = LungModel(extractor, Head.load(directory / HEAD), size, cam=config["gradcam"]["layers"])
    model.export(directory / SAVED_MODEL)


def cache_root() -> Path:
    from .backbone import cache_dir

    return cache_dir() / "packages"


def complete(directory: Path, config: dict[str, Any], weights: str | None = None) -> tuple[Path, dict[str, Any]]:
    """Return a verified full package: the directory itself, or its rebuild in the cache.

    The rebuild is keyed by the head-only package's own config digest, so it happens
    once per machine and per model version.
    """
    if has_saved_model(config):
        return directory, config
    target = cache_root() / f"{config.get('name', 'package')}-{sha256_file(directory / CONFIG)[:16]}"
    if (target / CONFIG).is_file():
        try:
            return target, read_config(target)
        except PackageError as exc:
            print(f"lung_classifier: rebuilding damaged cached model ({exc})", file=sys.stderr)
    print(
        f"lung_classifier: building the full model from {directory.name} and the ImageNet ResNet50 "
        "(first use on this machine only)",
        file=sys.stderr,
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    try:
        for path in directory.iterdir():
            if path.name != CONFIG:
                copy = shutil.copytree if path.is_dir() else shutil.copy2
                copy(path, staging / path.name)
        export_saved_model(staging, config, weights)
        full_config = write_config(staging, config)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target, full_config


def copy_package(source: Path, destination: Path) -> None:
    """Copy a verified package to destination (which must not hold another package)."""
    destination = Path(destination)
    if destination.exists() and any(destination.iterdir()):
        if not (destination / CONFIG).is_file():
            raise PackageError(f"{destination} exists and is not empty; refusing to write a package into it")
        shutil.rmtree(destination)
    shutil.copytree(source, destination, dirs_exist_ok=True)
    read_config(destination)
