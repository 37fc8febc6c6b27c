"""A scan upload (folder, zip or list of files) -> its slices in body order, checked before any pixel is decoded.

A scan comes from anyone, as one archive or hundreds of files, so this module only
looks: it lists the members, reads each one's header (DICOM ordering tags, or an
image's format), refuses what cannot be one scan, and orders what can. Pixels are
decoded later, a batch at a time, by :mod:`lung_classifier.scan.analysis`.

Refused, with an error that says what to upload instead (:class:`ScanError`):

- **Zip bombs.** Before anything is inflated: more than ``MAX_MEMBERS`` entries, a member
  declaring more than ``MAX_MEMBER_BYTES``, all members together more than
  ``MAX_TOTAL_BYTES``, a member inflating more than ``MAX_COMPRESSION_RATIO`` times its
  stored size, all members together more than that ratio beyond ``FREE_INFLATION_BYTES``,
  or members whose stored data overlap (one compressed stream counted many times). Before
  zipfile reads the central directory, every end record it could use (and its Zip64 form,
  where zipfile reads it and where the locator points) is checked for its entry count and
  directory size. While inflating, a member is never read past its declared size.
- **Malformed archives.** Whatever zipfile raises (a bad end record, a name flagged UTF-8
  that is not, an empty member name, an unsupported method) becomes a ScanError for the
  archive, or a note for the one member, naming the zip problem.
- **More than** ``MAX_SLICES`` slices (a CT series has 80 to 600).
- **Mixed inputs**: DICOM files together with images; DICOM files of several series
  (SeriesInstanceUID), or of one series with different Rows/Columns or orientations.

Skipped, with a note (the scan goes on without them): members that are neither an
accepted image nor a DICOM file (text, DICOMDIR, macOS metadata), archives inside the
archive (never opened), encrypted or damaged members. Images of different sizes are
accepted with a note: each slice is resized to the model's input on its own.

Nothing is ever extracted by member name: members are inflated into memory, bounded as
above, and shown only by their base name, so a name like ``../../etc/passwd`` can
neither write nor reveal anything; no temporary file is written. No DICOM tag beyond those of
:func:`lung_classifier.decoding.dicom.read_dicom_placement` is read, and none is shown.

Order: DICOM slices by ImagePositionPatient projected on the slice normal (the cross
product of ImageOrientationPatient's row and column cosines), ties by InstanceNumber;
images (and DICOM slices without geometry) by the natural order of their names, so
"case (2)" comes before "case (10)".
"""

from __future__ import annotations

import io
import os
import re
import zipfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from .dicom import DicomPlacement, read_dicom_placement, slice_normal
from .images import PIL_FORMATS
from .archive import check_archive, display_name, inflate, open_zip
from .limits import MAX_MEMBERS, MAX_SLICES, ImageError, ScanError

ScanSource = str | os.PathLike | Sequence[str | os.PathLike]

ORIENTATION_TOLERANCE = 1e-3
"""Direction cosines that differ by more than this are different planes."""

_HEADER_FORMATS = tuple(name for name in PIL_FORMATS if name != "WEBP")
"""The formats whose headers PIL reads here, in Python (WebP's: :func:`_webp_size`)."""
_ARCHIVE_MAGICS = (b"PK\x03\x04", b"PK\x05\x06", b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"7z\xbc\xaf\x27\x1c",
                   b"Rar!\x1a\x07")
_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple:
    """Sort key that orders digit runs by value: "case (2)" before "case (10)"."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in _DIGITS.split(name.casefold())
                 if part)


@dataclass(frozen=True)
class SliceEntry:
    """One slice of the scan, before decoding: where to read it and where it sits."""

    name: str  # base name only, for people
    key: str  # file path, or the member's index in the archive (names may repeat): for reading only, never shown
    order: str  # path within the upload (a list's files: the base name): for name order only, never shown
    position: float | None = None  # DICOM: mm along the slice normal
    instance: int | None = None  # DICOM: InstanceNumber


@dataclass
class Series:
    """The ordered slices of one scan and what was left out; read() gives a slice's file or bytes."""

    slices: list[SliceEntry]
    dicom: bool
    notes: Notes
    _archive: zipfile.ZipFile | None = None

    def read(self, entry: SliceEntry) -> bytes | Path:
        """The slice's bytes (zip member, inflated within its limits) or its file path, for images.read_slice."""
        if self._archive is None:
            return Path(entry.key)
        return inflate(self._archive, self._archive.infolist()[int(entry.key)], entry.name)


_NAME = "\0"
"""Stands for the file's name in a grouped message."""


@dataclass
class Notes:
    """What was skipped and why, grouped: 300 slices refused for one reason make one line, not 300."""

    kinds: dict[str, list[str]] = field(default_factory=dict)  # reason -> names
    failures: dict[str, list[str]] = field(default_factory=dict)  # message with the name as _NAME -> names
    lines: list[str] = field(default_factory=list)

    def skip(self, reason: str, name: str) -> None:
        """A member that is not a slice (text, nested archive...): grouped under `reason`."""
        self.kinds.setdefault(reason, []).append(name)

    def unreadable(self, name: str, message: str) -> None:
        """A slice that cannot be read: the error's message (which may start with its name), grouped with the
        same errors of other slices."""
        template = _NAME + message[len(name):] if message.startswith(name) else message
        self.failures.setdefault(template, []).append(name)

    def render(self) -> list[str]:
        rendered = [f"skipped {len(names)} file{'s' if len(names) > 1 else ''} ({reason}): {_names(names)}"
                    for reason, names in self.kinds.items()]
        for message, names in self.failures.items():
            first = message.replace(_NAME, names[0]) if _NAME in message else f"{names[0]}: {message}"
            rendered.append(f"skipped: {first}" if len(names) == 1 else
                            f"skipped {len(names)} files: {first} (and the same for {_names(names[1:])})")
        return rendered + self.lines


def _names(names: list[str], shown: int = 5) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


@dataclass(frozen=True)
class _Found:
    entry: SliceEntry
    dicom: bool
    placement: DicomPlacement | None = None  # DICOM only
    size: tuple[int, int] | None = None  # images: (width, height)


@dataclass
class _Member:
    key: str
    name: str
    order: str
    open: Callable[[], BinaryIO]


def open_series(source: ScanSource) -> _SeriesContext:
    """``with open_series(source) as series:`` -- the checked, ordered slices; an archive stays open inside."""
    return _SeriesContext(source)


class _SeriesContext:
    def __init__(self, source: ScanSource):
        self.source = source
        self.archive: zipfile.ZipFile | None = None

    def __enter__(self) -> Series:
        try:
            return _build(self._members(), self.archive)
        except BaseException:
            self.__exit__(None, None, None)
            raise

    def __exit__(self, *exc) -> None:
        if self.archive is not None:
            self.archive.close()
            self.archive = None

    def _members(self) -> list[_Member]:
        source = self.source
        if isinstance(source, (str, os.PathLike)):
            path = Path(source)
            if path.is_dir():
                return _folder_members(path)
            if path.is_file():
                if is_zip(path):
                    return self._zip_members(path)
                raise ScanError(f"{path.name} is a single file, not a zip archive: give a folder, a zip file or "
                                "several slice files (for one slice, use analyze())")
            raise ScanError(f"{path.name}: no such file or folder")
        if isinstance(source, (bytes, bytearray)) or not isinstance(source, Sequence):
            raise TypeError(f"a scan source is a folder, a zip file or a list of files, not {type(source).__name__}")
        paths = [Path(item) for item in source]
        if not paths:
            raise ScanError("no files given: upload the slices of one scan, or a zip of them")
        if len(paths) == 1 and paths[0].is_file() and is_zip(paths[0]):
            return self._zip_members(paths[0])  # one uploaded archive
        if len(paths) > MAX_MEMBERS:
            raise ScanError(f"{len(paths)} files is more than the {MAX_MEMBERS} an upload may hold: "
                            f"upload one series (at most {MAX_SLICES} slices)")
        for path in paths:
            if not path.is_file():
                raise ScanError(f"{display_name(str(path))}: no such file (give the slice files of one scan)")
        return [_file_member(path, path.name) for path in paths]

    def _zip_members(self, path: Path) -> list[_Member]:
        self.archive = open_zip(path, path.name)
        members = [(index, info) for index, info in enumerate(self.archive.infolist())
                   if not info.filename.endswith("/")]  # not is_dir(): it indexes filename[-1]
        check_archive([info for _, info in members], path.stat().st_size, path.name)
        archive = self.archive
        return [_Member(str(index), display_name(info.filename), info.filename,
                        lambda info=info: io.BytesIO(inflate(archive, info, display_name(info.filename))))
                for index, info in members]


def is_zip(path: Path) -> bool:
    """A zip archive by its first bytes (a local file header, or the end record of an empty archive)."""
    with open(path, "rb") as stream:
        return stream.read(4) in (b"PK\x03\x04", b"PK\x05\x06")


def is_dicom(head: bytes) -> bool:
    """A DICOM file by its first 132 bytes: the 128-byte preamble, then "DICM"."""
    return len(head) >= 132 and head[128:132] == b"DICM"


def is_dicom_file(path: Path) -> bool:
    with open(path, "rb") as stream:
        return is_dicom(stream.read(132))


def _file_member(path: Path, order: str) -> _Member:
    return _Member(str(path), display_name(path.name), order, lambda: open(path, "rb"))


def _folder_members(folder: Path) -> list[_Member]:
    """Every regular file under the folder (symbolic links are not followed), counted as it is walked."""
    members = []
    for root, directories, files in os.walk(folder, followlinks=False):
        directories.sort()
        for file in sorted(files):
            path = Path(root) / file
            if path.is_symlink() or not path.is_file():
                continue  # a link may lead outside the folder: never followed
            members.append(_file_member(path, path.relative_to(folder).as_posix()))
            if len(members) > MAX_MEMBERS:
                raise ScanError(f"{folder.name} holds more than {MAX_MEMBERS} files: give the folder of one series "
                                f"(at most {MAX_SLICES} slices)")
    return members



def _build(members: list[_Member], archive: zipfile.ZipFile | None) -> Series:
    """Classify every member by its header, refuse what cannot be one scan, order the rest."""
    notes = Notes()
    found: list[_Found] = []
    for member in members:
        classified = _classify(member, notes)
        if classified is not None:
            found.append(classified)
    dicom = [item for item in found if item.dicom]
    images = [item for item in found if not item.dicom]
    if dicom and images:
        raise ScanError(f"the upload mixes {len(dicom)} DICOM file(s) and {len(images)} image(s): upload one scan, "
                        "either its DICOM series or its images")
    if not found:
        why = "; ".join(notes.render()) or "it is empty"
        raise ScanError(f"no readable CT slice in the upload ({why}): upload the DICOM files of one series, "
                        "or the slice images, or a zip of them")
    if len(found) > MAX_SLICES:
        raise ScanError(f"the upload holds {len(found)} slices, more than the {MAX_SLICES} one scan may have: "
                        "upload one series")
    if dicom:
        slices = _order_dicom(dicom, notes)
    else:
        slices = sorted((item.entry for item in images), key=lambda entry: natural_key(entry.order))
        sizes = Counter(item.size for item in images)
        if len(sizes) > 1:
            common = sizes.most_common(4)
            shown = ", ".join(f"{w}x{h} ({n})" for (w, h), n in common)
            if len(sizes) > len(common):
                shown += f" and {len(sizes) - len(common)} more"
            notes.lines.append(f"the slices have {len(sizes)} different sizes ({shown}): each is resized to the "
                               "model's input on its own")
    return Series(slices, bool(dicom), notes, archive)


def _classify(member: _Member, notes: Notes) -> _Found | None:
    """DICOM (with its placement), image (with its size), or skipped with a note."""
    try:
        with member.open() as stream:
            head = stream.read(512)
            stream.seek(0)
            if is_dicom(head):
                placement = read_dicom_placement(stream, member.name)
                return _Found(SliceEntry(member.name, member.key, member.order), True, placement)
            if head.startswith(_ARCHIVE_MAGICS) or head[257:262] == b"ustar":
                notes.skip("archives inside the upload are not opened", member.name)
                return None
            size = _image_size(stream)
    except ImageError as exc:
        notes.unreadable(member.name, str(exc))
        return None
    except OSError as exc:
        notes.unreadable(member.name, f"{member.name} cannot be read ({exc.__class__.__name__})")
        return None
    if size is None:
        notes.skip("not an accepted image nor a DICOM slice", member.name)
        return None
    return _Found(SliceEntry(member.name, member.key, member.order), False, size=size)


def _image_size(stream: BinaryIO) -> tuple[int, int] | None:
    """An accepted image's declared size from its header alone, or None when it is not one.

    PIL reads the other formats' headers in Python; opening a WebP runs libwebp's demuxer on
    the whole file, native code on untrusted bytes that belongs in a decode worker
    (:mod:`.pool`), so its size is read here from the RIFF header instead (:func:`_webp_size`).
    """
    head = stream.read(30)
    stream.seek(0)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return _webp_size(head)
    try:
        with Image.open(stream, formats=_HEADER_FORMATS) as image:
            return image.size
    except (UnidentifiedImageError, Image.DecompressionBombError):
        return None
    except Exception:  # noqa: BLE001 - PIL reports unparseable headers with many exception types
        return None


def _webp_size(head: bytes) -> tuple[int, int] | None:
    """The canvas of an extended (VP8X), lossless (VP8L) or lossy (VP8) WebP, from its first 30 bytes."""
    chunk = head[12:16]
    if chunk == b"VP8X" and len(head) >= 30:
        return 1 + int.from_bytes(head[24:27], "little"), 1 + int.from_bytes(head[27:30], "little")
    if chunk == b"VP8L" and len(head) >= 25 and head[20] == 0x2F:
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, (bits >> 14 & 0x3FFF) + 1
    if chunk == b"VP8 " and len(head) >= 30 and head[23:26] == b"\x9d\x01\x2a":
        return int.from_bytes(head[26:28], "little") & 0x3FFF, int.from_bytes(head[28:30], "little") & 0x3FFF
    return None


def _order_dicom(found: list[_Found], notes: Notes) -> list[SliceEntry]:
    """One series, one size, one plane: ordered along the slice normal, then by InstanceNumber."""
    series = Counter(item.placement.series_uid for item in found)
    if len(series) > 1:
        counts = ", ".join(str(n) for _, n in series.most_common())
        raise ScanError(f"the upload holds {len(series)} DICOM series ({counts} slices): upload one series at a "
                        "time (one SeriesInstanceUID)")
    sizes = Counter((item.placement.columns, item.placement.rows) for item in found)
    if len(sizes) > 1:
        shown = ", ".join(f"{w}x{h} ({n})" for (w, h), n in sizes.most_common(4))
        raise ScanError(f"the DICOM slices have {len(sizes)} different sizes ({shown}): a series has one size; "
                        "upload one series")
    orientations = [item.placement.orientation for item in found]
    positions = [item.placement.position for item in found]
    if all(o is not None for o in orientations) and all(p is not None for p in positions):
        cosines = np.array(orientations, np.float64)
        if np.abs(cosines - cosines[0]).max() > ORIENTATION_TOLERANCE:
            raise ScanError("the DICOM slices lie in different planes (ImageOrientationPatient differs): "
                            "upload one series")
        normal = slice_normal(cosines[0])
        if normal is None:
            raise ScanError("the DICOM slices' ImageOrientationPatient has parallel row and column directions: "
                            "export the series again")
        along = np.array(positions, np.float64) @ normal
        entries = [replace(item.entry, position=float(z), instance=item.placement.instance)
                   for item, z in zip(found, along)]
    else:
        notes.lines.append("some DICOM slices lack ImagePositionPatient or ImageOrientationPatient: slices are "
                           "ordered by InstanceNumber (then name), and have no position")
        entries = [replace(item.entry, instance=item.placement.instance) for item in found]
    return sorted(entries, key=lambda e: (e.position is None, e.position or 0.0, e.instance is None,
                                          e.instance or 0, natural_key(e.order)))
