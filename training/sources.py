"""Training sources as data: a name, a folder, a label map, a grouping rule, and how slices are rendered.

    --source 'NAME=FOLDER[;title=TEXT][;labels=PATTERN:CLASS,...][;grouping=RULE][;findings=PATTERN:TEXT,...][;licence=TEXT]'

A class folder's name is matched against the label map's shell patterns in order (case
insensitive; first match wins); without a map, folder names are read as IQ-OTH/NCCD's
("Bengin cases" is Benign). ``findings`` records what a folder truly shows where its
class is broader (a COVID-19 series trained as Normal, meaning no cancer finding).
Grouping rules (GROUPINGS) keep one patient's slices in one split. Image files are
used as they are; a source of DICOM series is rendered at DICOM_TRAINING_WINDOWS.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lung_classifier.decoding.windowing import DICOM_WINDOW

GROUPINGS = {
    "pseudo-patients": "exact duplicates + near-identical slices adjacent in file number or of one size "
                       "(training.data.group_items): IQ-OTH/NCCD has no patient ids",
    "near-duplicates": "same class and a 32x32 fingerprint correlation >= 0.9, or a cosine >= 0.9 of the "
                       "standardised backbone features, or a '- Copy' file and any file of its name once ' (k)' and "
                       "' - Copy' are stripped (Chest CT-Scan copies files under such names)",
    "series": "one patient per DICOM series (class folder)",
}
NEAR_DUPLICATE_FINGERPRINT = 0.9
NEAR_DUPLICATE_FEATURES = 0.9
"""Measured on Chest CT-Scan: feature cosine between different cancer subtypes (surely different
patients) reaches 0.71 at most; at 0.9/0.9 a Chest-only head's normals right drop from 0.81
(ungrouped, leaking) to 0.52, and looser thresholds chain a third of a class into one group."""

DICOM_TRAINING_WINDOWS = ((DICOM_WINDOW[0], DICOM_WINDOW[1]),
                          *((centre, width) for centre in (50.0, 325.0, 600.0) for width in (350.0, 775.0, 1200.0)))
"""(centre, width) HU: the package window, then a 3 x 3 grid over IQ-OTH/NCCD's export range
(W 350-1200, C 50-600). Trained at the package window alone, the healthy COVID-CT-MD scan had 95%
of its slices called Malignant at some in-range window (leave-one-scan-out); at all ten, 4%."""

_COPY_SUFFIX = re.compile(r"\s*(\(\d+\)|- Copy)\s*")


class SourceError(ValueError):
    """A --source that cannot be read."""


@dataclass(frozen=True)
class Source:
    """One training source as the --source flag describes it."""

    name: str
    folder: Path
    labels: tuple[tuple[str, str], ...] = ()  # (folder-name pattern, class), first match wins
    grouping: str = "pseudo-patients"
    findings: tuple[tuple[str, str], ...] = ()  # (folder-name pattern, what the folder truly shows)
    licence: str = ""
    title: str = ""  # for people ("Chest CT-Scan"): answers name the source whose validation applies

    @property
    def shown_title(self) -> str:
        return self.title or self.name

    def label_of(self, folder_name: str) -> str:
        """The class of a class folder: the first matching pattern, else IQ-OTH/NCCD's folder names."""
        from training.data import canonical_label

        for pattern, label in self.labels:
            if fnmatch.fnmatch(folder_name.lower(), pattern.lower()):
                return label
        if self.labels:
            raise SourceError(f"source {self.name}: class folder {folder_name!r} matches no pattern of its label map")
        return canonical_label(folder_name)

    def finding_of(self, folder_name: str) -> str | None:
        for pattern, finding in self.findings:
            if fnmatch.fnmatch(folder_name.lower(), pattern.lower()):
                return finding
        return None

    def describe(self) -> dict[str, Any]:
        return {"title": self.shown_title, "folder": str(self.folder), "labels": dict(self.labels) or "IQ-OTH/NCCD folder names",
                "grouping": self.grouping, "grouping_rule": GROUPINGS[self.grouping],
                "findings": dict(self.findings), "licence": self.licence}


def parse_source(text: str) -> Source:
    """One --source value (see the module docstring); a malformed one is a SourceError naming the fault."""
    head, *options = [part.strip() for part in text.split(";")]
    name, equals, folder = head.partition("=")
    if not equals or not name.strip() or not folder.strip():
        raise SourceError(f"--source {text!r}: expected NAME=FOLDER first")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name.strip()):
        raise SourceError(f"--source {text!r}: a source name uses letters, digits, '_', '-' and '.' only")
    fields: dict[str, str] = {}
    for option in options:
        key, equals, value = option.partition("=")
        key = key.strip()
        if not equals or key not in ("title", "labels", "grouping", "findings", "licence"):
            raise SourceError(f"--source {text!r}: unknown option {option!r} "
                              "(title=, labels=, grouping=, findings=, licence=)")
        if key in fields:
            raise SourceError(f"--source {text!r}: {key}= given twice")
        fields[key] = value.strip()
    grouping = fields.get("grouping", "pseudo-patients")
    if grouping not in GROUPINGS:
        raise SourceError(f"--source {text!r}: unknown grouping {grouping!r} (one of {', '.join(GROUPINGS)})")
    return Source(name.strip(), Path(folder.strip()).expanduser(), _pairs(fields.get("labels", ""), text),
                  grouping, _pairs(fields.get("findings", ""), text), fields.get("licence", ""), fields.get("title", ""))


def _pairs(value: str, text: str) -> tuple[tuple[str, str], ...]:
    pairs = []
    for entry in filter(None, (part.strip() for part in value.split(","))):
        pattern, colon, target = entry.rpartition(":")
        if not colon or not pattern.strip() or not target.strip():
            raise SourceError(f"--source {text!r}: {entry!r} is not PATTERN:VALUE")
        pairs.append((pattern.strip(), target.strip()))
    return tuple(pairs)


def check_unique(sources: list[Source]) -> None:
    names = [source.name for source in sources]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise SourceError(f"source names must be unique: {', '.join(repeated)} given twice")
    if not sources:
        raise SourceError("no training source: give --source NAME=FOLDER (or --data FOLDER)")


def name_stem(path: Path) -> str:
    """A file name without the ' (k)' and ' - Copy' that copying files adds."""
    return _COPY_SUFFIX.sub(" ", path.stem).strip()


def near_duplicate_groups(labels: list[str], fingerprints: np.ndarray, features: np.ndarray,
                          paths: list[Path]) -> list[int]:
    """Group ids (0, 1, ... in item order) by the near-duplicates rule (GROUPINGS)."""
    from training.data import UnionFind

    n = len(labels)
    links = UnionFind(n)
    z = (features - features.mean(axis=0)) / np.where(features.std(axis=0) > 1e-6, features.std(axis=0), 1.0)
    z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    label_array = np.array(labels)
    for label in sorted(set(labels)):
        members = np.flatnonzero(label_array == label)
        close = ((fingerprints[members] @ fingerprints[members].T >= NEAR_DUPLICATE_FINGERPRINT)
                 | (z[members] @ z[members].T >= NEAR_DUPLICATE_FEATURES))
        for a, b in zip(*np.nonzero(np.triu(close, 1))):
            links.union(int(members[a]), int(members[b]))
        by_stem: dict[str, list[int]] = {}
        for index in members.tolist():
            by_stem.setdefault(name_stem(paths[index]), []).append(index)
        for same in by_stem.values():  # a "- Copy" file joins every file of its stem
            for index in same:
                if "copy" in paths[index].stem.lower():
                    for other in same:
                        links.union(index, other)
    roots: dict[int, int] = {}
    return [roots.setdefault(links.find(index), len(roots)) for index in range(n)]


def window_name(window: tuple[float, float]) -> str:
    return f"C{window[0]:g}/W{window[1]:g}"
