"""A package's values, checked on load: a broken or hostile package is refused, naming the field it got wrong.

The operator chooses the package, but a wrong one must never answer: NaN weights answered
"Normal" with NaN probabilities, a temperature of 0 answered "Normal", NaN thresholds
switched the guard off, and a 3.1 MB head.npz holding a 1 GiB array took 5.9 GiB to load.
So config.json's values are checked for type and range (:func:`check_config`), and
head.npz's arrays for name, dtype and shape from their ``.npy`` headers before a byte of
their data is read, then for consistent shapes and finite values (:func:`read_head`).
Every problem is a :class:`PackageError` that names the field.
"""

from __future__ import annotations

import math
import zipfile
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from ..model.head import Head
from .errors import PackageError

MAX_LABELS = 16
"""Most classes a package may have (the shipped one has 3)."""
INPUT_SIZES = (32, 1024)
"""Smallest and largest model input side (the shipped one: 224)."""
MAX_FEATURES = 8192
"""Most backbone features the head may read (ResNet50's stages 2 to 5 together give 3,840; the shipped head 3,584)."""
MAX_COMPONENTS = 1024
"""Most PCA or kNN axes (the shipped head: 32 and 128)."""
MAX_BANK_ROWS = 100_000
"""Most kNN bank rows (the shipped head: 3,027 training slices)."""
MAX_HEAD_VALUES = 16 * 2**20
"""Most numbers head.npz may hold in all (64 MiB as float32; the shipped head holds about 1.1 million)."""
_SCALARS = ("temperature", "ood_residual", "ood_threshold", "knn_threshold")


def check_config(config: dict[str, Any], where: Path) -> None:
    """Types and ranges of the config values the library uses (the required ones are known to be present)."""
    labels = config["labels"]
    if not (isinstance(labels, list) and 2 <= len(labels) <= MAX_LABELS and len(set(map(str, labels))) == len(labels)
            and all(isinstance(label, str) and 0 < len(label) <= 64 for label in labels)):
        raise PackageError(f"{where}: labels must be a list of 2 to {MAX_LABELS} different names, not "
                           f"{str(labels)[:80]}")
    size = config["input"]["size"]
    if not (type(size) is int and INPUT_SIZES[0] <= size <= INPUT_SIZES[1]):
        raise PackageError(f"{where}: input.size must be a whole number from {INPUT_SIZES[0]} to {INPUT_SIZES[1]}, "
                           f"not {size!r:.40}")
    for field, value in (("backbone.weights_sha256", config["backbone"]["weights_sha256"]),
                         ("gradcam.layers", config["gradcam"]["layers"])):  # the layer names: checked by rebuild
        if not (isinstance(value, str) and 0 < len(value) <= 128):
            raise PackageError(f"{where}: {field} must be a name or digest, not {value!r:.80}")
    window = config["rendering"]["dicom_window"]
    centre, width = (_number(window.get(key) if isinstance(window, dict) else None, f"rendering.dicom_window.{key}",
                             where) for key in ("centre", "width"))
    if width <= 0:
        raise PackageError(f"{where}: rendering.dicom_window.width must be above 0 HU, not {width:g}")
    validated = config["rendering"].get("dicom_validated_labels", [])
    if not (isinstance(validated, list) and set(validated) <= set(labels)):
        raise PackageError(f"{where}: rendering.dicom_validated_labels must list some of the labels, not "
                           f"{str(validated)[:80]}")
    meanings = config.get("labels_meaning", {})
    if not (isinstance(meanings, dict) and all(isinstance(v, str) for v in meanings.values())):
        raise PackageError(f"{where}: labels_meaning must map labels to text")
    if "scan" in config:
        _check_scan(config["scan"], labels, where)


def _check_scan(block: Any, labels: list[str], where: Path) -> None:
    """The whole-scan rule's numbers (its pooling name is checked where the rule is built)."""
    if not isinstance(block, dict) or not isinstance(block.get("pool"), str):
        raise PackageError(f"{where}: scan must be an object with a pool name")
    k = block.get("k")
    if not (type(k) is int and 1 <= k <= 10_000):
        raise PackageError(f"{where}: scan.k must be a whole number of at least 1, not {k!r:.40}")
    if _number(block.get("temperature"), "scan.temperature", where) <= 0:
        raise PackageError(f"{where}: scan.temperature must be above 0")
    for field in ("bias", "offsets"):
        values = block.get(field)
        if not isinstance(values, dict) or set(values) != set(labels):
            raise PackageError(f"{where}: scan.{field} must give a number for each label ({', '.join(labels)})")
        for label in labels:
            _number(values[label], f"scan.{field}.{label}", where)
    for field in ("confident_malignant", "max_flagged_fraction"):
        if field in block or field == "confident_malignant":
            value = _number(block.get(field), f"scan.{field}", where)
            if not 0 <= value <= 1:
                raise PackageError(f"{where}: scan.{field} must be from 0 to 1, not {value:g}")


def _number(value: Any, field: str, where: Path) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PackageError(f"{where}: {field} must be a finite number, not {value!r:.40}")
    return float(value)


def read_head(path: Path, classes: int) -> Head:
    """head.npz's arrays, checked from their headers before they are read, then checked for shape and value."""
    declared = _declared_arrays(path)
    try:
        with np.load(path, allow_pickle=False) as arrays:
            head = Head(**{name: arrays[name].astype(np.float32) for name in declared})
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise PackageError(f"{path}: cannot be read ({exc.__class__.__name__}: {str(exc)[:120]})") from None
    _check_head(head, classes, path)
    return head


def _declared_arrays(path: Path) -> dict[str, tuple[int, ...]]:
    """Every array's shape, read from its .npy header: names, dtypes and sizes bounded before any data is read."""
    wanted = {field.name for field in fields(Head)}
    shapes: dict[str, tuple[int, ...]] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            if len(members) > 2 * len(wanted):
                raise PackageError(f"{path}: holds {len(members)} arrays, not the {len(wanted)} of a head")
            for member in members:
                name = member.filename.removesuffix(".npy")
                if name not in wanted:
                    continue
                with archive.open(member) as stream:
                    version = np.lib.format.read_magic(stream)
                    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                        np.lib.format.read_array_header_2_0
                    shape, _, dtype = read(stream, max_header_size=1024)
                if dtype.kind != "f" or dtype.itemsize > 8:
                    raise PackageError(f"{path}: {name} is of dtype {dtype}, not floating point")
                shapes[name] = tuple(shape)
    except PackageError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise PackageError(f"{path}: not a readable head ({exc.__class__.__name__}: {str(exc)[:120]})") from None
    missing = sorted(wanted - set(shapes))
    if missing:
        raise PackageError(f"{path}: head arrays missing: {', '.join(missing)} (a package from an older version: "
                           "retrain it with python -m training)")
    total = sum(math.prod(shape) for shape in shapes.values())
    if total > MAX_HEAD_VALUES:
        largest = max(shapes, key=lambda name: math.prod(shapes[name]))
        raise PackageError(f"{path}: declares {total:,} numbers (at most {MAX_HEAD_VALUES:,}); the largest, {largest}, "
                           f"is {'x'.join(map(str, shapes[largest]))}: not a head of this library")
    return shapes


def _check_head(head: Head, classes: int, path: Path) -> None:
    """Shapes that fit together and with the labels, finite values, and the ranges the rules need."""
    def first(name: str) -> int:
        shape = getattr(head, name).shape
        return shape[0] if shape else 0

    features, components, knn, rows = (first(name) for name in ("feature_mean", "ood_components", "knn_components",
                                                                 "knn_bank"))
    expected = {"feature_mean": (features,), "feature_scale": (features,), "kernel": (features, classes),
                "bias": (classes,), "decision_offsets": (classes,), "ood_components": (components, features),
                "ood_scale": (components,), "knn_components": (knn, features), "knn_bank": (rows, knn),
                **{name: () for name in _SCALARS}}
    for name, shape in expected.items():
        if getattr(head, name).shape != shape or not all(shape):
            raise PackageError(f"{path}: {name} has shape {getattr(head, name).shape}, expected {shape} (with "
                               f"{classes} labels and {features} features)")
    if not (features <= MAX_FEATURES and components <= MAX_COMPONENTS and knn <= MAX_COMPONENTS
            and rows <= MAX_BANK_ROWS):
        raise PackageError(f"{path}: a head of {features} features, {components} and {knn} axes and {rows} bank "
                           f"rows is beyond this library's bounds ({MAX_FEATURES}, {MAX_COMPONENTS} and "
                           f"{MAX_BANK_ROWS:,})")
    for field in fields(Head):
        values = getattr(head, field.name)
        if not np.isfinite(values).all():
            raise PackageError(f"{path}: {field.name} holds NaN or infinite values")
    for name in ("temperature", "feature_scale", "ood_scale", "ood_threshold", "knn_threshold"):
        if not (getattr(head, name) > 0).all():
            raise PackageError(f"{path}: {name} must be above 0")
    if head.ood_residual < 0:
        raise PackageError(f"{path}: ood_residual must not be negative")
