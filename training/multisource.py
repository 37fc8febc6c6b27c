"""Several training sources as one table of feature rows: each row a slice as rendered, with its source and group.

Image sources give one row per file (the file as it is). A DICOM source gives one row per
slice and training window (training.sources.DICOM_TRAINING_WINDOWS), all renderings of a
slice in its series' group, so no split separates them. Backbone features come from the
shared cache (files by md5, renderings by the md5 of their prepared pixels).
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from lung_classifier.decoding.images import load_rgb
from lung_classifier.evidence import rendering_statistics
from lung_classifier.decoding.limits import ImageError
from lung_classifier.decoding.windowing import DICOM_WINDOW
from training import data, features
from training.data import LABELS
from training.sources import DICOM_TRAINING_WINDOWS, Source, near_duplicate_groups, window_name

if TYPE_CHECKING:
    import keras

AS_IS = "as is"
"""The rendering name of an image file's row."""
PACKAGE_RENDERING = window_name(DICOM_WINDOW)


@dataclass
class SourceData:
    """One source's slices (items), their groups, and the files that could not be read."""

    source: Source
    dataset: data.Dataset
    groups: list[int]  # per item, 0.. within the source
    dicom: bool
    findings: dict[str, str]  # class folder -> recorded true finding


@dataclass
class TrainingSet:
    """Feature rows of every source: what the head, its CV and the evaluation see."""

    sources: list[SourceData]
    labels: list[str]
    features: np.ndarray  # (N, D)
    y: np.ndarray  # (N,) index into labels
    source: np.ndarray  # (N,) index into sources
    group: np.ndarray  # (N,) globally unique group id
    rendering: np.ndarray  # (N,) AS_IS or a window name
    item: np.ndarray  # (N,) index of the slice in its source's dataset
    statistics: np.ndarray  # (N, R) lung_classifier.evidence.rendering_statistics of the row as rendered

    @property
    def names(self) -> list[str]:
        return [entry.source.name for entry in self.sources]

    def answered_rendering(self) -> np.ndarray:
        """Rows as the product sees them: image files as they are, DICOM at the package window."""
        return (self.rendering == AS_IS) | (self.rendering == PACKAGE_RENDERING)

    def dicom_rows(self) -> np.ndarray:
        return np.array([self.sources[s].dicom for s in self.source], bool)

    def describe(self) -> dict[str, Any]:
        """Per source, for the package config: counts per class, groups, rendering, findings, licence."""
        described = {}
        for index, entry in enumerate(self.sources):
            rows = self.source == index
            items = entry.dataset.items
            per_class = {}
            for label in self.labels:
                members = [i for i, item in enumerate(items) if item.label == label]
                if members:
                    per_class[label] = {"slices": len(members),
                                        "groups": len({entry.groups[i] for i in members})}
            described[entry.source.name] = {
                **entry.source.describe(), "classes": per_class, "rows": int(rows.sum()),
                "skipped": len(entry.dataset.skipped),
                "rendering": (f"DICOM series rendered at {len(DICOM_TRAINING_WINDOWS)} windows inside the "
                              f"IQ-OTH/NCCD export range ({', '.join(window_name(w) for w in DICOM_TRAINING_WINDOWS)})"
                              " for training, all renderings of a slice in its group; at inference DICOM is "
                              f"rendered at the package window {PACKAGE_RENDERING}" if entry.dicom
                              else "image files as they are"),
                "findings": entry.findings,
            }
        return described


def read_sources(sources: list[Source], progress: bool = True) -> list[SourceData]:
    """Read every source's class folders (labels by its map); groups that need features come later."""
    read = []
    for source in sources:
        folders = data.require_class_folders(source.folder)
        dicom = any(path.suffix.lower() == ".dcm" for folder in folders for path in folder.iterdir())
        labels = {folder: source.label_of(folder.name) for folder in folders}
        unknown = sorted({label for label in labels.values() if label not in LABELS})
        if unknown:
            raise data.DatasetError(f"source {source.name}: classes {', '.join(unknown)} are not among "
                                    f"{', '.join(LABELS)}: give a label map (labels=PATTERN:CLASS,...)")
        dataset = (read_dicom_folders(folders, labels) if dicom
                   else data.scan_folder(source.folder, progress=progress, label_of=source.label_of))
        if not dataset.items:
            raise data.DatasetError(f"source {source.name}: no readable slice in {source.folder}")
        findings = {folder.name: finding for folder in folders
                    if (finding := source.finding_of(folder.name)) is not None}
        read.append(SourceData(source, dataset, [], dicom, findings))
    return read


def read_dicom_folders(folders: list[Path], labels: dict[Path, str]) -> data.Dataset:
    """One item per DICOM file, decoded by the library's one decoder (fingerprint at the package window);
    unreadable files are reported."""
    items, skipped = [], []
    for folder in folders:
        for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
            try:
                rgb = load_rgb(path, dicom_window=DICOM_WINDOW)
            except (ImageError, OSError) as error:  # one damaged file must not end the read
                skipped.append((path, str(error)))
                print(f"warning: skipped {path}: {error}", file=sys.stderr)
                continue
            items.append(data.Item(path=path, label=labels[folder], md5=hashlib.md5(path.read_bytes()).hexdigest(),
                                   number=None, height=rgb.shape[0], width=rgb.shape[1],
                                   fingerprint=data.fingerprint(rgb)))
    return data.Dataset(items=items, skipped=skipped)


def build(read: list[SourceData], extractor: "keras.Model", digest: str, input_size: int,
          engine: features.Engine = features.Engine()) -> TrainingSet:
    """Features for every row (cached; image files' on ``engine``), then each source's groups, into one TrainingSet."""
    from lung_classifier.model.preprocessing import prepare_batch

    plain = features.FeatureCache(features.cache_key(digest, input_size))
    derived = features.ArrayFeatures(extractor, input_size,
                                     features.FeatureCache(features.cache_key(digest, input_size, "derived")))
    parts: dict[str, list[np.ndarray]] = {name: [] for name in ("features", "y", "source", "group", "rendering",
                                                                "item", "statistics")}
    group_offset = 0
    for index, entry in enumerate(read):
        items = entry.dataset.items
        y = np.array([LABELS.index(item.label) for item in items])
        if entry.dicom:
            renderings = []
            for window in DICOM_TRAINING_WINDOWS:
                rows, statistics = [], []
                for first in tqdm(range(0, len(items), features.BATCH), file=sys.stderr,
                                  desc=f"{entry.source.name} at {window_name(window)}", unit="batch"):
                    rgbs = [load_rgb(item.path, dicom_window=window) for item in items[first:first + features.BATCH]]
                    statistics += [rendering_statistics(rgb) for rgb in rgbs]
                    rows.append(derived(prepare_batch(rgbs, input_size)))
                derived.save()
                renderings.append((window_name(window), np.concatenate(rows), np.stack(statistics)))
            entry.groups = _series_groups(items)
        else:
            x = features.extract(extractor, [item.path for item in items], [item.md5 for item in items],
                                 input_size, plain, engine)
            statistics = [rendering_statistics(load_rgb(item.path))
                          for item in tqdm(items, file=sys.stderr, desc=f"{entry.source.name} rendering", unit="image")]
            renderings = [(AS_IS, x, np.stack(statistics))]
            entry.groups = (data.group_items(entry.dataset) if entry.source.grouping == "pseudo-patients" else
                            near_duplicate_groups([item.label for item in items],
                                                  np.stack([item.fingerprint for item in items]), x,
                                                  [item.path for item in items])
                            if entry.source.grouping == "near-duplicates" else _series_groups(items))
        for name, x, statistics in renderings:
            parts["features"].append(x)
            parts["statistics"].append(statistics)
            parts["y"].append(y)
            parts["source"].append(np.full(len(items), index))
            parts["group"].append(np.array(entry.groups) + group_offset)
            parts["rendering"].append(np.full(len(items), name, dtype=object))
            parts["item"].append(np.arange(len(items)))
        group_offset += max(entry.groups) + 1
    present = sorted(set(np.concatenate(parts["y"]).tolist()))
    labels = [LABELS[i] for i in present]
    remap = np.full(len(LABELS), -1)
    remap[present] = np.arange(len(present))
    return TrainingSet(read, labels, np.concatenate(parts["features"]).astype(np.float32),
                       remap[np.concatenate(parts["y"])], np.concatenate(parts["source"]),
                       np.concatenate(parts["group"]), np.concatenate(parts["rendering"]).astype(str),
                       np.concatenate(parts["item"]), np.concatenate(parts["statistics"]))


def _series_groups(items: list[data.Item]) -> list[int]:
    """One group per folder (a DICOM series, or a class folder taken as one patient)."""
    roots: dict[Path, int] = {}
    return [roots.setdefault(item.path.parent, len(roots)) for item in items]

