"""The model package on disk: config.json schema, file list and checksums, rebuild from the head.

A package is a directory that describes itself (labels, input, preprocessing, backbone,
calibration, OOD threshold, training data) and lists every file it holds with its
sha256 in config.json. Loading trusts only the plain parts: the JSON and the head's
arrays in ``head.npz`` (no pickle). The graph is rebuilt here from the head and the
standard ImageNet ResNet50 (once per machine, cached), because a package's own
SavedModel is an arbitrary TensorFlow graph, and TF graphs can read and write files:
it is loaded only when the caller trusts it (``trust_saved_model``). Nothing in a
package is ever executed as Python.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .backbone import WeightsSource

FORMAT = "lung-classifier-package"
FORMAT_VERSION = 2
CONFIG = "config.json"
HEAD = "head.npz"
SAVED_MODEL = "saved_model"
CARD = "README.md"

_NAME_PART = re.compile(r"^[A-Za-z0-9_.+-]+$")
"""Characters a listed file name may use: no separators, drive letters or glob characters."""
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class PackageError(RuntimeError):
    """A package is missing, incomplete, of an unknown format or fails its checks."""


class WeightsMismatchError(PackageError):
    """The ResNet50 weights at hand are not those the package's head was trained on."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_name(name: object) -> str:
    """A listed file name: relative POSIX path inside the package, plain characters only."""
    parts = name.split("/") if isinstance(name, str) else []
    if not parts or any(part in ("", ".", "..") or not _NAME_PART.match(part) for part in parts):
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
    try:
        config = json.loads(Path(config_path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PackageError(f"{config_path}: not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise PackageError(f"{config_path}: not a JSON object")
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
            if not isinstance(digest, str) or not _SHA256.match(digest):
                raise PackageError(f"{config_path}: {name} has no valid sha256 digest")
    if HEAD not in config.get("files", {}):
        raise PackageError(f"{config_path}: lists no {HEAD}, the trained head")
    return config


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
                if not path.resolve().is_relative_to(root.resolve()):
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


# --- the graph: trusted SavedModel, or rebuilt from the head ------------------------------------


def check_weights(expected: str, actual: str, origin: str, allow_other_weights: bool,
                  graph_shipped: bool = False) -> None:
    """Weights other than the head's are an error, or with allow_other_weights a warning."""
    if actual == expected:
        return
    message = (f"the ResNet50 weights from {origin} (sha256 {actual[:12]}...) differ from those the head "
               f"was trained on (sha256 {expected[:12]}...)")
    if allow_other_weights:
        warnings.warn(f"{message}; loading anyway (allow_other_weights=True): predictions may differ from "
                      "the model card", UserWarning, stacklevel=3)
        return
    raise WeightsMismatchError(
        f"{message}, so predictions would not match the model card. Use the weights file the package was "
        f"trained with (weights=... or $LUNG_CLASSIFIER_RESNET50_WEIGHTS), or pass allow_other_weights=True "
        "to load it with these weights anyway"
        + ("; or, if you trust this package, load its own SavedModel with trust_saved_model=True"
           if graph_shipped else "")
    )


def export_saved_model(directory: Path, config: dict[str, Any], source: WeightsSource,
                       allow_other_weights: bool = False, precision: str = "float32") -> str:
    """Build the full model from the head and the given ResNet50 weights, export it; returns their digest.

    The backbone computes in ``precision`` ("float32" or "bfloat16", batch norms folded
    into the convolutions); the head always in float32. A bfloat16 model also holds the
    float32 backbone, for the images it must recheck (see LungModel).
    """
    from . import backbone
    from .model import Head, LungModel, build_extractor, fold_batch_norm

    size = config["input"]["size"]
    resnet = backbone.load_resnet50(source, input_shape=(size, size, 3))
    digest = backbone.model_digest(resnet)
    check_weights(config["backbone"]["weights_sha256"], digest, source.origin, allow_other_weights,
                  has_saved_model(config))
    exact = build_extractor(fold_batch_norm(resnet, "float32"))
    fast = exact if precision == "float32" else build_extractor(fold_batch_norm(resnet, precision))
    model = LungModel(fast, Head.load(directory / HEAD), size, cam=config["gradcam"]["layers"],
                      reference=None if fast is exact else exact)
    model.export(directory / SAVED_MODEL)
    return digest


def cache_root() -> Path:
    from .backbone import cache_dir

    return cache_dir() / "packages"


def cache_name(config: dict[str, Any]) -> str:
    """The package's name as one safe path component (a name like '../../x' stays in the cache)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(config.get("name", ""))).strip(".-")
    return name[:64] or "package"


def complete(directory: Path, config: dict[str, Any], weights: str | None = None, *,
             trust_saved_model: bool = False, allow_other_weights: bool = False,
             precision: str = "auto") -> tuple[Path, dict[str, Any]]:
    """Return a verified full package to load: the directory itself if its SavedModel is
    trusted, otherwise the rebuild of its head with the standard ResNet50, from the cache.

    The rebuild is keyed by the package's config digest, the weights file's digest and the
    backbone's precision (see lung_classifier.precision; "auto" picks it from the CPU), so
    it happens once per machine, model version, weights and precision. A trusted
    SavedModel runs as shipped: asking it for a precision is an error.
    """
    from . import precision as precisions

    chosen = precisions.resolve(precision)
    if trust_saved_model and has_saved_model(config):
        if precision != "auto":
            raise ValueError(f"precision={precision!r} applies to the graph rebuilt from the head; a trusted "
                             "SavedModel runs as shipped (leave precision at 'auto', or drop trust_saved_model)")
        return directory, config
    from . import backbone

    source = backbone.resolve_weights(weights)
    weights_file = sha256_file(source.path)
    target = cache_root() / (f"{cache_name(config)}-{sha256_file(directory / CONFIG)[:16]}-{weights_file[:16]}"
                             f"-{chosen}")
    if (target / CONFIG).is_file():
        try:
            cached = read_config(target)
            used = cached["rebuilt"]["weights_sha256"]
        except (PackageError, KeyError, TypeError) as exc:
            print(f"lung_classifier: rebuilding damaged cached model ({exc})", file=sys.stderr)
        else:
            check_weights(config["backbone"]["weights_sha256"], used, source.origin, allow_other_weights,
                          has_saved_model(config))
            return target, cached
    print(
        f"lung_classifier: building the full model from {directory.name} and the ImageNet ResNet50 in {chosen} "
        "(first use on this machine only)",
        file=sys.stderr,
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    try:
        for name in listed_files(config, saved_model=False):
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(directory / name, staging / name)
            if sha256_file(staging / name) != config["files"][name]:
                raise PackageError(f"{directory}: {name} changed while it was being copied; try again")
        digest = export_saved_model(staging, config, source, allow_other_weights, chosen)
        rebuilt = {"weights_sha256": digest, "weights_file_sha256": weights_file,
                   "source_config_sha256": sha256_file(directory / CONFIG), "precision": chosen}
        full_config = write_config(staging, {**config, "rebuilt": rebuilt})
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
