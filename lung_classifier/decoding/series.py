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
import struct
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from .dicom import DicomPlacement, read_dicom_placement, slice_normal
from .images import PIL_FORMATS
from .limits import ImageError

ScanSource = str | os.PathLike | Sequence[str | os.PathLike]

MAX_SLICES = 1000
"""Most slices one scan may have: a thin-slice chest CT has about 600."""
MAX_MEMBERS = 2 * MAX_SLICES
"""Most files (or zip entries) an upload may hold, counted before any is read."""
MAX_MEMBER_BYTES = 64 * 2**20
"""Largest uncompressed member: a 512x512 16-bit DICOM slice is 0.5 MiB, a 2048x2048 one 8 MiB."""
MAX_TOTAL_BYTES = 2 * 2**30
"""Largest uncompressed archive: 1000 slices of 2 MiB."""
MAX_COMPRESSION_RATIO = 100
"""Uncompressed / stored size above which a member (of at least RATIO_CHECK_BYTES) is a bomb: CT inflates ~2-5x."""
RATIO_CHECK_BYTES = 2**20
"""Members smaller than this may compress as well as they like (a blank slice does), within FREE_INFLATION_BYTES."""
FREE_INFLATION_BYTES = 64 * 2**20
"""Bytes a whole archive may inflate beyond MAX_COMPRESSION_RATIO x its stored bytes (blank slices, tiny headers):
past it, an upload must bring 1 byte per MAX_COMPRESSION_RATIO it inflates, so inflating costs CPU in
proportion to its size (2000 members of 1 MiB - 1 zeros inflated 2 GiB from 2 MB, 5.9 s of CPU)."""
MAX_DIRECTORY_BYTES = MAX_MEMBERS * 512
"""Largest zip central directory: MAX_MEMBERS entries with long names (46 bytes each plus name and extras)."""
ORIENTATION_TOLERANCE = 1e-3
"""Direction cosines that differ by more than this are different planes."""

_ARCHIVE_MAGICS = (b"PK\x03\x04", b"PK\x05\x06", b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"7z\xbc\xaf\x27\x1c",
                   b"Rar!\x1a\x07")
_DIGITS = re.compile(r"(\d+)")
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f]")


class ScanError(ImageError):
    """The upload cannot be analysed as one scan; the message says why and what to upload instead."""


def natural_key(name: str) -> tuple:
    """Sort key that orders digit runs by value: "case (2)" before "case (10)"."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in _DIGITS.split(name.casefold())
                 if part)


def display_name(member: str) -> str:
    """A member's or file's base name, printable: never a directory of the upload or of the server."""
    base = PurePosixPath(member.replace("\\", "/")).name or "(unnamed)"
    return _UNPRINTABLE.sub("?", base)[:120]


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
        return _inflate(self._archive, self._archive.infolist()[int(entry.key)], entry.name)


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
                if _is_zip(path):
                    return self._zip_members(path)
                raise ScanError(f"{path.name} is a single file, not a zip archive: give a folder, a zip file or "
                                "several slice files (for one slice, use analyze())")
            raise ScanError(f"{path.name}: no such file or folder")
        if isinstance(source, (bytes, bytearray)) or not isinstance(source, Sequence):
            raise TypeError(f"a scan source is a folder, a zip file or a list of files, not {type(source).__name__}")
        paths = [Path(item) for item in source]
        if not paths:
            raise ScanError("no files given: upload the slices of one scan, or a zip of them")
        if len(paths) == 1 and paths[0].is_file() and _is_zip(paths[0]):
            return self._zip_members(paths[0])  # one uploaded archive
        if len(paths) > MAX_MEMBERS:
            raise ScanError(f"{len(paths)} files is more than the {MAX_MEMBERS} an upload may hold: "
                            f"upload one series (at most {MAX_SLICES} slices)")
        for path in paths:
            if not path.is_file():
                raise ScanError(f"{display_name(str(path))}: no such file (give the slice files of one scan)")
        return [_file_member(path, path.name) for path in paths]

    def _zip_members(self, path: Path) -> list[_Member]:
        self.archive = _open_zip(path, path.name)
        members = [(index, info) for index, info in enumerate(self.archive.infolist())
                   if not info.filename.endswith("/")]  # not is_dir(): it indexes filename[-1]
        _check_archive([info for _, info in members], path.stat().st_size, path.name)
        archive = self.archive
        return [_Member(str(index), display_name(info.filename), info.filename,
                        lambda info=info: io.BytesIO(_inflate(archive, info, display_name(info.filename))))
                for index, info in members]


def _is_zip(path: Path) -> bool:
    with open(path, "rb") as stream:
        return stream.read(4) in (b"PK\x03\x04", b"PK\x05\x06")


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


_END, _END64, _LOCATOR = b"PK\x05\x06", b"PK\x06\x06", b"PK\x06\x07"
_END_SIZE, _END64_SIZE, _LOCATOR_SIZE = 22, 56, 20


@dataclass(frozen=True)
class _EndRecord:
    entries: int  # the larger of the record's two entry counts
    directory_bytes: int
    zip64: bool


def _end_records(stream: BinaryIO) -> list[_EndRecord]:
    """Every end record (and Zip64 form) zipfile could read from this file, found as zipfile finds them.

    zipfile (CPython 3.11 ``_EndRecData``) first takes the last 22 bytes when they are a record
    without a comment, else the last ``PK\x05\x06`` in the final 64 KiB + 22 bytes, without
    checking the comment length. Rather than copy one rule (a signature hidden inside the
    real record's offset field sent the old rfind elsewhere, and a later CPython may choose
    differently), every candidate with 22 bytes after it is returned.
    """
    size = stream.seek(0, os.SEEK_END)
    offsets = set()
    if size >= _END_SIZE:
        stream.seek(size - _END_SIZE)
        last = stream.read(_END_SIZE)
        if last[:4] == _END and last[-2:] == b"\0\0":
            offsets.add(size - _END_SIZE)
    start = max(size - 2**16 - _END_SIZE, 0)
    stream.seek(start)
    tail = stream.read()
    found = tail.find(_END)
    while found >= 0:
        if len(tail) - found >= _END_SIZE:
            offsets.add(start + found)
        found = tail.find(_END, found + 1)
    records = []
    for at in sorted(offsets):
        stream.seek(at)
        _, _, _, this_disk, total, directory, _, _ = struct.unpack("<4s4H2LH", stream.read(_END_SIZE))
        zip64 = _zip64_records(stream, at, size)
        if zip64:  # 0xFFFF / 0xFFFFFFFF then only say "see the Zip64 record", whose values zipfile uses
            this_disk, total = (0 if n == 0xFFFF else n for n in (this_disk, total))
            directory = 0 if directory == 0xFFFFFFFF else directory
        records += [_EndRecord(max(this_disk, total), directory, False), *zip64]
    return records


def _zip64_records(stream: BinaryIO, end_at: int, size: int) -> list[_EndRecord]:
    """The Zip64 record(s) of the end record at `end_at`: 56 bytes before its locator (where zipfile 3.11 reads
    it) and at the locator's offset (where other readers do), when that lies inside the file."""
    if end_at < _LOCATOR_SIZE:
        return []
    stream.seek(end_at - _LOCATOR_SIZE)
    signature, disk, offset, disks = struct.unpack("<4sLQL", stream.read(_LOCATOR_SIZE))
    if signature != _LOCATOR:
        return []
    if disk != 0 or disks > 1:
        raise ScanError("it spans several disks (a split archive)")
    places = {end_at - _LOCATOR_SIZE - _END64_SIZE}
    if offset <= size - _END64_SIZE:  # 2**64 - 1 and other offsets past the end are simply not there
        places.add(offset)
    records = []
    for place in sorted(place for place in places if place >= 0):
        stream.seek(place)
        data = stream.read(_END64_SIZE)
        if len(data) == _END64_SIZE and data[:4] == _END64:
            this_disk, total, directory = struct.unpack("<3Q", data[24:48])
            records.append(_EndRecord(max(this_disk, total), directory, True))
    return records


def _check_end_records(path: Path, name: str) -> None:
    """Refuse a central directory too large for MAX_MEMBERS entries before zipfile parses it into memory.

    zipfile reads the whole directory (its size as the end record states) and makes an
    object per entry: a 47 MB archive of a million empty entries cost 454 MiB and 11 s of
    CPU before it could be refused from ``infolist()``.
    """
    with open(path, "rb") as stream:
        try:
            records = _end_records(stream)
        except ScanError as exc:
            raise ScanError(f"{name} is not a zip archive this server reads ({exc}): zip the slices of one series "
                            "again, as one plain .zip file") from None
    if not records:
        raise ScanError(f"{name} is not a readable zip archive (no end-of-archive record; damaged or truncated): "
                        "zip the slices of one series again")
    for record in records:
        kind = "Zip64 end record" if record.zip64 else "end record"
        if record.directory_bytes > MAX_DIRECTORY_BYTES:
            raise ScanError(f"{name}: its {kind} declares a directory of {record.directory_bytes:,} bytes, more than "
                            f"the {MAX_DIRECTORY_BYTES:,} that {MAX_MEMBERS} entries need (damaged or crafted "
                            "archive): zip the slices of one series again")
        if record.entries > MAX_MEMBERS:
            raise ScanError(f"{name}: its {kind} declares {record.entries:,} entries, more than the {MAX_MEMBERS} "
                            f"accepted: zip one series (at most {MAX_SLICES} slices)")


def _open_zip(path: Path, name: str) -> zipfile.ZipFile:
    """zipfile.ZipFile after the end records are checked; whatever zipfile raises becomes a ScanError naming it."""
    _check_end_records(path, name)
    try:
        archive = zipfile.ZipFile(path)
    except UnicodeDecodeError:
        raise ScanError(f"{name}: a member name in its directory is flagged UTF-8 but is not (damaged or crafted "
                        "archive): zip the slices of one series again") from None
    except NotImplementedError as exc:
        raise ScanError(f"{name} uses a zip feature this server does not read ({exc}): zip the slices again with a "
                        "standard zip tool (stored or deflate)") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, struct.error, ValueError, OverflowError, EOFError,
            OSError) as exc:
        why = exc if isinstance(exc, zipfile.BadZipFile) else exc.__class__.__name__  # no server path
        raise ScanError(f"{name} is not a readable zip archive ({why}): zip the slices of one series again") from None
    for index, info in enumerate(archive.infolist()):
        if not info.filename:  # zipfile's is_dir() would raise IndexError; no slice is called ""
            archive.close()
            raise ScanError(f"{name}: its entry number {index + 1} has an empty name (damaged or crafted archive): "
                            "zip the slices of one series again")
    return archive


def _check_archive(infos: list[zipfile.ZipInfo], archive_bytes: int, name: str) -> None:
    """Zip-bomb checks on the central directory, before a byte is inflated."""
    if len(infos) > MAX_MEMBERS:
        raise ScanError(f"{name} holds {len(infos)} entries, more than the {MAX_MEMBERS} accepted: "
                        f"zip one series (at most {MAX_SLICES} slices)")
    for info in infos:
        member = display_name(info.filename)
        if info.file_size > MAX_MEMBER_BYTES:
            raise ScanError(f"{name}: {member} declares {info.file_size:,} bytes uncompressed, more than the "
                            f"{MAX_MEMBER_BYTES // 2**20} MiB a slice may have (damaged or crafted archive)")
        if info.file_size >= RATIO_CHECK_BYTES and info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1):
            raise ScanError(f"{name}: {member} inflates {info.file_size / max(info.compress_size, 1):,.0f} times its "
                            f"stored size (more than {MAX_COMPRESSION_RATIO}): a zip bomb, not a CT series")
    total = sum(info.file_size for info in infos)
    if total > MAX_TOTAL_BYTES:
        raise ScanError(f"{name} inflates to {total / 2**30:.1f} GiB, more than the {MAX_TOTAL_BYTES / 2**30:.0f} GiB "
                        "accepted: zip one series")
    stored = sum(info.compress_size for info in infos)
    if total > MAX_COMPRESSION_RATIO * stored + FREE_INFLATION_BYTES:
        raise ScanError(f"{name} inflates to {total / 2**20:,.0f} MiB from {stored / 2**20:,.1f} MiB stored (more than "
                        f"{MAX_COMPRESSION_RATIO} times, beyond the first {FREE_INFLATION_BYTES // 2**20} MiB): "
                        "a zip bomb, not a CT series")
    if stored > archive_bytes:
        raise ScanError(f"{name}: its members' stored data overlap (one compressed stream counted several times): "
                        "a zip bomb, not a CT series")


def _inflate(archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str) -> bytes:
    """One member's bytes, never reading past its declared (already checked) size."""
    if info.flag_bits & 0x1:
        raise ImageError(f"{name} is encrypted")
    try:
        with archive.open(info) as member:
            data = member.read(info.file_size + 1)
    except UnicodeDecodeError:
        raise ImageError(f"{name}: its local zip header holds a name that is not valid UTF-8 (damaged or crafted "
                         "archive)") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError, ValueError,
            OverflowError, struct.error) as exc:
        raise ImageError(f"{name} cannot be inflated ({exc.__class__.__name__}: {exc})") from None
    if len(data) != info.file_size:
        raise ImageError(f"{name} inflates to {len(data):,} bytes, not the {info.file_size:,} it declares "
                         "(damaged or crafted archive)")
    return data


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
            shown = ", ".join(f"{w}x{h} ({n})" for (w, h), n in sizes.most_common(4))
            notes.lines.append(f"the slices have {len(sizes)} different sizes ({shown}): each is resized to the "
                               "model's input on its own")
    return Series(slices, bool(dicom), notes, archive)


def _classify(member: _Member, notes: Notes) -> _Found | None:
    """DICOM (with its placement), image (with its size), or skipped with a note."""
    try:
        with member.open() as stream:
            head = stream.read(512)
            stream.seek(0)
            if len(head) >= 132 and head[128:132] == b"DICM":
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
    """An accepted image's declared size from its header alone, or None when it is not one."""
    try:
        with Image.open(stream, formats=PIL_FORMATS) as image:
            return image.size
    except (UnidentifiedImageError, Image.DecompressionBombError):
        return None
    except Exception:  # noqa: BLE001 - PIL reports unparseable headers with many exception types
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
