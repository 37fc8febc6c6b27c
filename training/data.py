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

import numpy as np
from PIL import Image

from lung_classifier.images import ImageError, load_rgb

LABELS = ("Normal", "Benign", "Malignant")
"""Canonical class order: index i of a model output is LABELS[i]."""

SPLITS = ("train", "val", "test")

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


def scan_folder(root: str | Path, progress: bool = True) -> Dataset:
    """Read every file of every class folder under root; unreadable files are reported, not fatal."""
    root = Path(root)
    folders = require_class_folders(root)
    files = [(path, canonical_label(folder.name)) for folder in folders for path in _folder_files(folder)]
    items: list[Item] = []
    skipped: list[tuple[Path, str]] = []
    for count, (path, label) in enumerate(files, start=1):
        try:
            items.append(read_item(path, label))
        except (ImageError, OSError) as error:
            _skip(skipped, path, str(error))
        except Exception as error:  # a decoder bug on one odd file must not end a long scan
            _skip(skipped, path, f"{path.name} could not be decoded ({type(error).__name__}: {error})")
        if progress and (count % 50 == 0 or count == len(files)):
            print(f"\rreading images: {count}/{len(files)}", end="\n" if count == len(files) else "",
                  file=sys.stderr, flush=True)
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
    links = _UnionFind(len(dataset.items))
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


def similarity_stats(dataset: Dataset, seed: int = 0) -> dict[str, dict[str, list[float]]]:
    """Quantiles (10/50/90%) of fingerprint similarity, the evidence behind the thresholds.

    Per class: numbered neighbours of one size, and random pairs; plus pairs from
    different classes, which are surely different patients.
    """
    rng = np.random.default_rng(seed)
    prints = np.stack([item.fingerprint for item in dataset.items])
    labels = np.array([item.label for item in dataset.items])
    first, second = rng.integers(0, len(dataset.items), size=(2, 20_000))
    random_pairs = np.einsum("ij,ij->i", prints[first], prints[second])
    stats: dict[str, dict[str, list[float]]] = {}
    for label in dataset.labels:
        neighbours = [
            _similarity(dataset.items[a], dataset.items[b])
            for run in _numbered_runs(dataset.items)
            if dataset.items[run[0]].label == label
            for a, b in zip(run, run[1:])
        ]
        within = (labels[first] == label) & (labels[second] == label) & (first != second)
        stats[label] = {"neighbours": _quantiles(neighbours), "random": _quantiles(random_pairs[within])}
    stats["different classes"] = {"random": _quantiles(random_pairs[labels[first] != labels[second]])}
    return stats


def grouped_split(
    dataset: Dataset,
    groups: list[int],
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    tries: int = 200,
) -> list[str]:
    """A split name ("train", "val" or "test") per item, by whole groups, class by class.

    Each class's groups are dealt separately (so every split gets every class when the
    class has a group for it), greedily to the split furthest below its share of
    images; of `tries` seeded shuffles, the one closest to the fractions in both images
    and groups wins (so a test split is not one big scan).
    """
    targets = np.asarray(fractions, dtype=float)
    if targets.shape != (len(SPLITS),) or (targets < 0).any() or not np.isclose(targets.sum(), 1.0):
        raise ValueError(f"fractions must be {len(SPLITS)} non-negative numbers summing to 1, got {fractions}")
    rng = np.random.default_rng(seed)
    split_of_group: dict[int, str] = {}
    for label, members in _groups_by_class(dataset, groups).items():
        ids = sorted(members)
        sizes = np.array([members[group] for group in ids])
        assignment = _best_assignment(sizes, targets, rng, tries)
        if len(set(assignment.tolist())) < np.count_nonzero(targets):
            print(f"warning: {label} has only {len(ids)} group(s): some split gets none of it", file=sys.stderr)
        split_of_group.update((group, SPLITS[split]) for group, split in zip(ids, assignment))
    return [split_of_group[group] for group in groups]


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


def _groups_by_class(dataset: Dataset, groups: list[int]) -> dict[str, dict[int, int]]:
    """Class -> {group: images}; a group whose duplicates carry two labels goes with its majority."""
    labels_of: dict[int, Counter] = defaultdict(Counter)
    for item, group in zip(dataset.items, groups):
        labels_of[group][item.label] += 1
    order = {label: rank for rank, label in enumerate(dataset.labels)}
    by_class: dict[str, dict[int, int]] = {label: {} for label in dataset.labels}
    for group, counts in labels_of.items():
        label = min(counts, key=lambda name: (-counts[name], order[name]))
        by_class[label][group] = sum(counts.values())
    return {label: members for label, members in by_class.items() if members}


def _best_assignment(sizes: np.ndarray, targets: np.ndarray, rng: np.random.Generator, tries: int) -> np.ndarray:
    best, best_cost = None, np.inf
    for _ in range(tries):
        assignment = _greedy_assignment(sizes, targets, rng.permutation(len(sizes)))
        cost = _misfit(np.bincount(assignment, weights=sizes, minlength=len(targets)), targets * sizes.sum())
        cost += _misfit(np.bincount(assignment, minlength=len(targets)), targets * len(sizes))
        if cost < best_cost:
            best, best_cost = assignment, cost
    return best


def _misfit(counts: np.ndarray, goal: np.ndarray) -> float:
    """Chi-square distance, so a miss of 5 images weighs more in test than in train."""
    wanted = goal > 0
    return float(np.sum((counts[wanted] - goal[wanted]) ** 2 / goal[wanted]))


def _greedy_assignment(sizes: np.ndarray, targets: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Each group in turn to the split with the largest unfilled fraction of its target.

    An empty split has the largest possible (1), so with three groups or more every split
    with a non-zero fraction gets one.
    """
    goal = targets * sizes.sum()
    filled = np.zeros(len(targets))
    assignment = np.zeros(len(sizes), dtype=int)
    for group in order:
        unfilled = np.where(goal > 0, 1.0 - filled / np.where(goal > 0, goal, 1.0), -np.inf)
        split = int(np.argmax(unfilled))
        assignment[group] = split
        filled[split] += sizes[group]
    return assignment


def _quantiles(values) -> list[float]:
    values = np.asarray(values, dtype=float)
    return [round(float(q), 3) for q in np.quantile(values, [0.1, 0.5, 0.9])] if values.size else []


class _UnionFind:
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
