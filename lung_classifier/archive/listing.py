"""SOURCE (a folder tree, a zip, or a manifest CSV of paths) -> the units an archive job scores, with content digests.

A unit is what one verdict is about, found the way ``scan`` takes its input:

- a **series**: the files directly inside a folder that holds a DICOM file (one series, as
  ``scan FOLDER`` would read them; its other files are skipped there with a note), or a zip file
  (one series, as ``scan ZIP`` reads it);
- an **image**: any other file, scored alone as ``predict`` would (a file that is not an image is
  a row with its refusal, not a hole in the table).

Folders are walked in natural name order and symbolic links are not followed (as
decoding.series does). Each unit carries the sha256 of its content, so a rerun recognises
finished work whatever the folder is called now.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from ..decoding.series import is_dicom_file, is_zip, natural_key
from ..package.format import sha256_file

SERIES = "series"
IMAGE = "image"
MANIFEST_COLUMN = "path"
"""The manifest CSV's column of paths (relative to the CSV's folder, or absolute)."""


class SourceError(ValueError):
    """SOURCE cannot be listed: no such path, a manifest without its column, nothing inside."""


@dataclass(frozen=True)
class Unit:
    """One series or one image: what the job scores and what resume recognises by ``digest``."""

    kind: str  # SERIES or IMAGE
    name: str  # the path within SOURCE (POSIX), for people
    paths: tuple[str, ...]  # what analyze_scan (a series: its files, or one zip) or analyze (one image) reads
    digest: str = ""  # sha256 of the content: of the file, or of a series' sorted file digests

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "paths": list(self.paths)}

    @classmethod
    def from_dict(cls, data: dict) -> "Unit":
        return cls(str(data["kind"]), str(data["name"]), tuple(data["paths"]), str(data["digest"]))


def list_units(source: str | os.PathLike) -> list[Unit]:
    """Every unit of SOURCE in a stable order (series and images as their folders sort), digests not yet taken."""
    root = Path(source).absolute()  # workers elsewhere (another directory, another node) read the same paths
    if root.is_dir():
        return list(_tree_units(root, root))
    if root.is_file() and root.suffix.lower() == ".csv":
        return _manifest_units(root)
    if root.is_file() and is_zip(root):
        return [Unit(SERIES, root.name, (str(root),))]
    if root.is_file():
        raise SourceError(f"{root.name} is a single file: give a folder, a zip, or a manifest CSV with a "
                          f"'{MANIFEST_COLUMN}' column (for one file, use predict or scan)")
    raise SourceError(f"{source}: no such folder or file")


def _tree_units(folder: Path, root: Path) -> Iterator[Unit]:
    """Depth first, natural order: a folder with a DICOM file is one series; other files are images or zips."""
    files, folders = [], []
    for entry in sorted(os.scandir(folder), key=lambda e: natural_key(e.name)):
        if entry.is_symlink():
            continue  # a link may lead outside SOURCE: never followed
        (folders if entry.is_dir() else files if entry.is_file() else []).append(Path(entry.path))
    yield from _file_units(files, root)
    for sub in folders:
        yield from _tree_units(sub, root)


def _file_units(files: list[Path], root: Path) -> Iterator[Unit]:
    """The files of one folder: all of them one series when one is DICOM; else each zip a series, each file an image."""
    if any(_sniffed(is_dicom_file, path) for path in files):
        yield Unit(SERIES, _relative(files[0].parent, root), tuple(str(path) for path in files))
        return
    for path in files:
        yield Unit(SERIES if _sniffed(is_zip, path) else IMAGE, _relative(path, root), (str(path),))


def _sniffed(test, path: Path) -> bool:
    """A file's kind by its first bytes; one that cannot be opened is an image here, refused with its error later."""
    try:
        return test(path)
    except OSError:
        return False


def _manifest_units(manifest: Path) -> list[Unit]:
    """Each listed path as a tree would give it: folders walked, files grouped by their folder, in listed order."""
    with open(manifest, newline="", encoding="utf-8-sig") as stream:
        reader = csv.DictReader(stream)
        if MANIFEST_COLUMN not in (reader.fieldnames or []):
            raise SourceError(f"{manifest.name} has no '{MANIFEST_COLUMN}' column (its columns: "
                              f"{', '.join(reader.fieldnames or []) or 'none'})")
        listed = [manifest.parent / row[MANIFEST_COLUMN] for row in reader if (row[MANIFEST_COLUMN] or "").strip()]
    missing = [str(path) for path in listed if not path.exists()]
    if missing:
        raise SourceError(f"{manifest.name} lists {len(missing)} path(s) that do not exist, first {missing[0]}")
    units: list[Unit] = []
    by_folder: dict[Path, list[Path]] = {}
    for path in listed:
        if path.is_dir():
            units.extend(_tree_units(path, manifest.parent))
        else:
            by_folder.setdefault(path.parent, []).append(path)
    for files in by_folder.values():
        units.extend(_file_units(files, manifest.parent))
    return units


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix() or path.name
    except ValueError:  # a manifest may list absolute paths elsewhere
        return path.as_posix()


def with_digest(unit: Unit) -> Unit:
    """The unit with its content digest: the sha256 of its one file, or of a series' sorted file digests.

    A file that cannot be read gets no content digest but its name: its unit is refused with the error
    when scored, and scored afresh once it can be read."""
    try:
        digests = sorted(sha256_file(Path(path)) for path in unit.paths)
    except OSError:
        return Unit(unit.kind, unit.name, unit.paths, f"unreadable:{unit.name}")
    if len(digests) == 1:
        return Unit(unit.kind, unit.name, unit.paths, digests[0])
    return Unit(unit.kind, unit.name, unit.paths, hashlib.sha256("\n".join(digests).encode()).hexdigest())


def chunks(units: Iterable[Unit], images_per_chunk: int) -> list[list[Unit]]:
    """The engines' work items: each series alone (it batches its own slices), consecutive images together,
    so both engines send the model the same batches."""
    work: list[list[Unit]] = []
    images: list[Unit] = []
    for unit in units:
        if unit.kind == IMAGE:
            images.append(unit)
            if len(images) == images_per_chunk:
                work.append(images)
                images = []
        else:
            work.append([unit])
    if images:
        work.append(images)
    return work
