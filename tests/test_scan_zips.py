"""Crafted and malformed zips (testkit/hostile_corpus.hostile_zips): refused before zipfile allocates, with a
ScanError that names the zip problem; real archives, Zip64 and comments included, still open."""

from __future__ import annotations

import io
import resource
import zipfile

import pytest
from PIL import Image

from testkit.hostile_corpus import encode, hostile_zips, slice_image
from lung_classifier.decoding import archive
from lung_classifier.decoding.series import ScanError, open_series

ZIPS = hostile_zips()


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@pytest.mark.parametrize("name", list(ZIPS))
def test_each_crafted_zip_is_refused_with_its_problem_named_or_opens_with_a_note(name, tmp_path, monkeypatch):
    words, make = ZIPS[name]
    path = tmp_path / name
    path.write_bytes(make())
    if "declares" in words:  # refused from the end records alone: zipfile never reads the directory
        monkeypatch.setattr(zipfile, "_EndRecData", lambda *args: pytest.fail("zipfile read the end record"))
    start = cpu_seconds()
    if words == "ok":
        with open_series(path) as found:
            assert len(found.slices) == 1
            assert "local zip header holds a name that is not valid UTF-8" in " ".join(found.notes.render())
    else:
        with pytest.raises(ScanError, match=words) as refused:
            open_series(path).__enter__()
        assert name in str(refused.value) and ("zip" in str(refused.value))
    assert cpu_seconds() - start < 0.5


def real_zip(members: int = 3, comment: bytes = b"", zip64: bool = False) -> bytes:
    png = encode(Image.fromarray(slice_image(64)), "PNG")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for index in range(members):
            with archive.open(f"scan/{index}.png", "w", force_zip64=zip64) as member:
                member.write(png)
        archive.comment = comment
    return buffer.getvalue()


@pytest.mark.parametrize("options", [{}, {"comment": b"exported by a PACS"}, {"comment": b"x" * 65535},
                                     {"zip64": True}, {"members": 900}], ids=["plain", "comment", "long-comment",
                                                                               "zip64", "900-members"])
def test_real_archives_open_and_every_end_record_zipfile_uses_was_checked(options, tmp_path, monkeypatch):
    """Differential: the directory size zipfile reads is among the end records the check saw."""
    path = tmp_path / "scan.zip"
    path.write_bytes(real_zip(**options))
    seen = []
    end_records = archive.end_records
    monkeypatch.setattr(archive, "end_records", lambda stream: seen.extend(end_records(stream)) or seen)
    with open_series(path) as found:
        assert len(found.slices) == options.get("members", 3)
    with open(path, "rb") as stream:
        zipfile_reads = zipfile._EndRecData(stream)[zipfile._ECD_SIZE]
    assert zipfile_reads in {record.directory_bytes for record in seen}


def test_a_zip_whose_comment_holds_an_end_signature_is_refused_by_name(tmp_path):
    path = tmp_path / "odd.zip"
    path.write_bytes(real_zip(comment=b"see PK\x05\x06 here"))
    with pytest.raises(ScanError, match="odd.zip"):
        open_series(path).__enter__()


def test_a_small_member_bomb_is_refused_but_blank_slices_within_the_free_allowance_open(tmp_path):
    from testkit.hostile_corpus import small_member_bomb

    blank = tmp_path / "blank.zip"
    blank.write_bytes(small_member_bomb(40, 2**20 - 1))  # 40 MiB of zeros: within FREE_INFLATION_BYTES
    with pytest.raises(ScanError, match="no readable CT slice"):  # opened and inflated: zeros are no slice
        open_series(blank).__enter__()
    bomb = tmp_path / "bomb.zip"
    bomb.write_bytes(small_member_bomb(100, 2**20 - 1))
    with pytest.raises(ScanError, match="a zip bomb"):
        open_series(bomb).__enter__()
