"""Find the labelled CT slices, group them into pseudo-patients, split by whole groups.

IQ-OTH/NCCD has no patient ids, exact duplicate files, and runs of near-identical
neighbouring slices of one scan. A random image-level split leaks those neighbours from
train into test and overstates accuracy (0.95 against 0.85 grouped on this data), so
every split here is made by whole pseudo-patient groups, and exact duplicates always
share a group.
"""

from __future__ import annotations

import hashlib
import re
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from tqdm import tqdm

from lung_classifier.decoding.images import load_rgb
from lung_classifier.decoding.limits import ImageError

LABELS = ("Normal", "Benign", "Malignant")
"""Canonical class order: index i of a model output is LABELS[i]."""


IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".dcm"})
"""A directory holding a file with one of these suffixes is a class folder."""

FINGERPRINT_SIDE = 32
"""32x32 grey keeps a slice's layout (body outline, table, heart) and drops noise and detail."""

NEIGHBOUR_SIMILARITY = 0.5
"""Slices this close in file number and at least this similar are taken as one scan.

Measured on IQ-OTH/NCCD (fingerprint correlation): neighbouring files have a median of
0.89-0.95 per class, while pairs from different classes (so surely different patients)
have a median of 0.34 and a 90th percentile of 0.55. Low on purpose: splitting a scan
leaks it across splits, merging two patients costs only split granularity.
"""

NEIGHBOUR_WINDOW = 2
"""Also link a slice to the one after next, so one odd slice does not cut a scan in two."""

NEAR_DUPLICATE_SIMILARITY = 0.9
"""Any two slices of one class and size this similar are one scan, whatever their numbers.

No pair from different classes reached it (maximum 0.87); pairs far apart in numbering
do (e.g. Normal 144 and 415 at 0.998, Malignant 1 and 561 at 0.97).
"""

_NUMBER = re.compile(r"\((\d+)\)")
_FOLDER_LABELS = {
    "bengin": "Benign",
    "benign": "Benign",
    "malignant": "Malignant",
    "normal": "Normal",
}


class DatasetError(ValueError):
    """The --data directory is missing or holds no class folders of images."""


def canonical_label(folder_name: str) -> str:
    """IQ-OTH/NCCD folder names (misspelt "Bengin cases" too) to LABELS; others unchanged."""
    words = folder_name.strip().lower().split()
    if words and words[-1] in ("case", "cases"):
        words = words[:-1]
    if len(words) == 1 and words[0] in _FOLDER_LABELS:
        return _FOLDER_LABELS[words[0]]
    return folder_name


@dataclass(frozen=True, eq=False)
class Item:
    """One readable image with what grouping needs; the pixels themselves are not kept."""

    path: Path
    label: str
    md5: str
    number: int | None
    height: int
    width: int
    fingerprint: np.ndarray = field(repr=False)


@dataclass
class Dataset:
    """The readable images of a class-per-folder tree, and the files that were not."""

    items: list[Item]
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def labels(self) -> tuple[str, ...]:
        """LABELS order when every class is canonical, else sorted, so indices are stable."""
        present = {item.label for item in self.items}
        if present <= set(LABELS):
            return tuple(label for label in LABELS if label in present)
        return tuple(sorted(present))

    def duplicate_sets(self) -> list[list[int]]:
        """Item indices of each set of byte-identical files (two or more), in item order."""
        by_md5: dict[str, list[int]] = defaultdict(list)
        for index, item in enumerate(self.items):
            by_md5[item.md5].append(index)
        return [indices for indices in by_md5.values() if len(indices) > 1]


def scan_folder(root: str | Path, progress: bool = True,
                label_of: Callable[[str], str] = canonical_label) -> Dataset:
    """Read every file of every class folder under root (class: label_of(folder name)); unreadable files are
    reported, not fatal."""
    root = Path(root)
    folders = require_class_folders(root)
    files = [(path, label_of(folder.name)) for folder in folders for path in _folder_files(folder)]
    items: list[Item] = []
    skipped: list[tuple[Path, str]] = []
    for path, label in tqdm(files, desc="reading images", unit="image", file=sys.stderr, disable=not progress):
        try:
            items.append(read_item(path, label))
        except (ImageError, OSError) as error:
            _skip(skipped, path, str(error))
        except Exception as error:  # a decoder bug on one odd file must not end a long scan
            _skip(skipped, path, f"{path.name} could not be decoded ({type(error).__name__}: {error})")
    return Dataset(items=items, skipped=skipped)


def _skip(skipped: list[tuple[Path, str]], path: Path, reason: str) -> None:
    skipped.append((path, reason))
    print(f"warning: skipped {path}: {reason}", file=sys.stderr)


def require_class_folders(root: Path) -> list[Path]:
    """class_folders, or a DatasetError saying why there are none."""
    if not root.is_dir():
        raise DatasetError(f"{root}: no such directory")
    folders = class_folders(root)
    if not folders:
        raise DatasetError(f"{root}: no class folders (directories holding images) one or two levels down")
    return folders


def class_folders(root: Path) -> list[Path]:
    """Directories one or two levels below root that directly hold image files.

    Two levels covers archives that wrap the classes in a top folder, such as
    "The IQ-OTHNCCD lung cancer dataset/Bengin cases/".
    """
    found = []
    for child in _subdirectories(root):
        if _holds_images(child):
            found.append(child)
        else:
            found.extend(grandchild for grandchild in _subdirectories(child) if _holds_images(grandchild))
    return found


def read_item(path: Path, label: str) -> Item:
    """Decode one file with the project's decoder and keep its size, hash and fingerprint."""
    rgb = load_rgb(path)
    return Item(
        path=path,
        label=label,
        md5=hashlib.md5(path.read_bytes()).hexdigest(),
        number=file_number(path),
        height=rgb.shape[0],
        width=rgb.shape[1],
        fingerprint=fingerprint(rgb),
    )


def file_number(path: Path) -> int | None:
    """The N of "<Class> case (N).jpg": neighbouring N are usually neighbouring slices."""
    matches = _NUMBER.findall(path.stem)
    return int(matches[-1]) if matches else None


def fingerprint(rgb: np.ndarray) -> np.ndarray:
    """Zero-mean unit-norm grey thumbnail: the dot product of two is their correlation."""
    grey = Image.fromarray(rgb).convert("L").resize((FINGERPRINT_SIDE, FINGERPRINT_SIDE), Image.BILINEAR)
    vector = np.asarray(grey, dtype=np.float32).ravel()
    vector = vector - vector.mean()
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


def group_items(
    dataset: Dataset,
    neighbour_similarity: float = NEIGHBOUR_SIMILARITY,
    near_duplicate_similarity: float = NEAR_DUPLICATE_SIMILARITY,
    window: int = NEIGHBOUR_WINDOW,
) -> list[int]:
    """A pseudo-patient group id per item (0, 1, ... in item order).

    Items are joined when their bytes are identical, or within one class and one image
    size when they are near-duplicates, or neighbours in file number (gaps allowed)
    that look alike. A change of image size between neighbours ends a scan.
    """
    links = UnionFind(len(dataset.items))
    for indices in dataset.duplicate_sets():
        for index in indices[1:]:
            links.union(indices[0], index)
    for indices in _same_class_and_size(dataset.items).values():
        prints = np.stack([dataset.items[index].fingerprint for index in indices])
        for a, b in _near_duplicate_pairs(prints, near_duplicate_similarity):
            links.union(indices[a], indices[b])
    for run in _numbered_runs(dataset.items):
        for position, a in enumerate(run):
            for b in run[position + 1 : position + 1 + window]:
                if _similarity(dataset.items[a], dataset.items[b]) >= neighbour_similarity:
                    links.union(a, b)
    roots: dict[int, int] = {}
    return [roots.setdefault(links.find(index), len(roots)) for index in range(len(dataset.items))]


def group_summary(dataset: Dataset, groups: list[int]) -> dict[str, dict]:
    """Per class: how many groups, and their sizes (largest first), for logs and the model card."""
    sizes: dict[str, Counter] = defaultdict(Counter)
    for item, group in zip(dataset.items, groups):
        sizes[item.label][group] += 1
    return {
        label: {
            "images": sum(sizes[label].values()),
            "groups": len(sizes[label]),
            "sizes": sorted(sizes[label].values(), reverse=True),
        }
        for label in dataset.labels
    }


def _subdirectories(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir() if path.is_dir() and not _hidden(path))


def _holds_images(folder: Path) -> bool:
    return any(path.suffix.lower() in IMAGE_SUFFIXES for path in _folder_files(folder))


def _folder_files(folder: Path) -> list[Path]:
    """Every visible file (not only image suffixes: a misnamed image must be reported, not missed)."""
    files = [path for path in folder.iterdir() if path.is_file() and not _hidden(path)]
    return sorted(files, key=lambda path: (file_number(path) is None, file_number(path) or 0, path.name))


def _hidden(path: Path) -> bool:
    """Dot files, macOS resource forks and Windows thumbnail caches are not data."""
    return path.name.startswith(".") or path.name in ("__MACOSX", "Thumbs.db", "desktop.ini")


def _similarity(a: Item, b: Item) -> float:
    return float(a.fingerprint @ b.fingerprint)


def _same_class_and_size(items: list[Item]) -> dict[tuple[str, int, int], list[int]]:
    buckets: dict[tuple[str, int, int], list[int]] = defaultdict(list)
    for index, item in enumerate(items):
        buckets[item.label, item.height, item.width].append(index)
    return buckets


def _near_duplicate_pairs(prints: np.ndarray, threshold: float, block: int = 1024) -> list[tuple[int, int]]:
    """All pairs at or above threshold, in row blocks so memory stays small for big classes."""
    pairs = []
    for start in range(0, len(prints), block):
        rows, columns = np.nonzero(prints[start : start + block] @ prints.T >= threshold)
        pairs.extend((start + a, b) for a, b in zip(rows.tolist(), columns.tolist()) if start + a < b)
    return pairs


def _numbered_runs(items: list[Item]) -> list[list[int]]:
    """Item indices of each class in file-number order, cut wherever the image size changes."""
    by_class: dict[str, list[int]] = defaultdict(list)
    for index, item in enumerate(items):
        if item.number is not None:
            by_class[item.label].append(index)
    runs: list[list[int]] = []
    for indices in by_class.values():
        indices.sort(key=lambda index: (items[index].number, items[index].path.name))
        runs.append([indices[0]])
        for previous, index in zip(indices, indices[1:]):
            if (items[previous].height, items[previous].width) == (items[index].height, items[index].width):
                runs[-1].append(index)
            else:
                runs.append([index])
    return runs


class UnionFind:
    """Disjoint sets over 0..n-1, so links of every kind compose into groups."""

    def __init__(self, size: int):
        self.parent = list(range(size))

    def find(self, index: int) -> int:
        while self.parent[index] != index:
            self.parent[index] = self.parent[self.parent[index]]
            index = self.parent[index]
        return index

    def union(self, a: int, b: int) -> None:
        self.parent[self.find(a)] = self.find(b)
