"""Turning an upload into one scan's ordered slices: DICOM geometry, natural names, and the zip-safety refusals."""

from __future__ import annotations

import io
import random
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lung_classifier.decoding import archive as zips, series
from lung_classifier.decoding.series import ScanError, natural_key, open_series
from testkit.dicom_files import series_slice

def png(size: tuple[int, int] = (40, 40), value: int = 80) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full(size[::-1], value, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_zip(path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def ordered(source) -> list[series.SliceEntry]:
    with open_series(source) as found:
        return found.slices


# --- order --------------------------------------------------------------------------------------------


def test_natural_order_puts_case_2_before_case_10(tmp_path):
    names = [f"Malignant case ({i}).png" for i in (10, 2, 1, 33, 3)]
    for name in names:
        (tmp_path / name).write_bytes(png())
    assert [e.name for e in ordered(tmp_path)] == [f"Malignant case ({i}).png" for i in (1, 2, 3, 10, 33)]
    assert all(e.position is None for e in ordered(tmp_path))
    assert sorted(["b10", "B2", "a"], key=natural_key) == ["a", "B2", "b10"]


def test_dicom_slices_are_ordered_by_position_along_the_normal_not_by_name_or_instance(tmp_path):
    heights = [-30.0, 12.5, -7.5, 40.0, 0.0]
    members = {}
    for number, z in enumerate(heights):
        # Names and instance numbers deliberately disagree with the geometry.
        members[f"IM{number:04d}.dcm"] = series_slice((0.0, 0.0, z), instance=100 - number)
    shuffled = dict(random.Random(1).sample(sorted(members.items()), len(members)))
    entries = ordered(write_zip(tmp_path / "scan.zip", shuffled))
    assert [e.position for e in entries] == sorted(heights)
    assert entries[0].name == "IM0000.dcm" and entries[-1].name == "IM0003.dcm"


def test_oblique_series_is_ordered_along_its_own_normal(tmp_path):
    # Rows along x, columns tilted 30 degrees out of y towards z: the normal is (0, -sin, cos).
    angle = np.deg2rad(30)
    orientation = (1.0, 0.0, 0.0, 0.0, float(np.cos(angle)), float(np.sin(angle)))
    normal = np.cross(orientation[:3], orientation[3:])
    steps = [3, 0, 4, 1, 2]
    paths = []
    for number, step in enumerate(steps):
        # Each slice moves 2.5 mm along the normal, plus an in-plane shift that must not matter.
        origin = step * 2.5 * normal + (number * 7.0) * np.array(orientation[3:])
        path = tmp_path / f"slice{number}.dcm"
        path.write_bytes(series_slice(tuple(float(v) for v in origin), instance=number, orientation=orientation))
        paths.append(path)
    entries = ordered(paths)
    assert [e.name for e in entries] == [f"slice{steps.index(s)}.dcm" for s in range(5)]
    np.testing.assert_allclose([e.position for e in entries], [0.0, 2.5, 5.0, 7.5, 10.0], atol=1e-6)


def test_equal_positions_are_ordered_by_instance_number(tmp_path):
    for name, instance, z in (("a.dcm", 3, 5.0), ("b.dcm", 1, 5.0), ("c.dcm", 2, 5.0), ("d.dcm", 9, -5.0)):
        (tmp_path / name).write_bytes(series_slice((0.0, 0.0, z), instance))
    assert [e.name for e in ordered(tmp_path)] == ["d.dcm", "b.dcm", "c.dcm", "a.dcm"]


def test_dicom_without_geometry_falls_back_to_instance_number_with_a_note(tmp_path):
    for name, instance in (("x1.dcm", 2), ("x2.dcm", 1), ("x3.dcm", 3)):
        (tmp_path / name).write_bytes(series_slice(None, instance, orientation=None))
    with open_series(tmp_path) as found:
        assert [e.name for e in found.slices] == ["x2.dcm", "x1.dcm", "x3.dcm"]
        assert found.dicom and any("InstanceNumber" in note for note in found.notes.render())


# --- refusals and notes ----------------------------------------------------------------------------------


def test_two_series_are_refused_with_the_count_of_each(tmp_path):
    members = {f"a{i}.dcm": series_slice((0, 0, i), i) for i in range(3)}
    members |= {f"b{i}.dcm": series_slice((0, 0, i), i, series_uid="1.2.3.4") for i in range(2)}
    with pytest.raises(ScanError, match=r"2 DICOM series \(3, 2 slices\).*one series"):
        ordered(write_zip(tmp_path / "two.zip", members))


def test_dicom_slices_of_different_sizes_or_planes_are_refused(tmp_path):
    sizes = {"a.dcm": series_slice((0, 0, 0), 1), "b.dcm": series_slice((0, 0, 1), 2, size=(48, 40))}
    with pytest.raises(ScanError, match="2 different sizes"):
        ordered(write_zip(tmp_path / "sizes.zip", sizes))
    planes = {"a.dcm": series_slice((0, 0, 0), 1), "b.dcm": series_slice((0, 0, 1), 2, orientation=(1, 0, 0, 0, 0, 1))}
    with pytest.raises(ScanError, match="different planes"):
        ordered(write_zip(tmp_path / "planes.zip", planes))


def test_images_of_different_sizes_are_accepted_with_a_note(tmp_path):
    source = write_zip(tmp_path / "mixed.zip", {"1.png": png((40, 40)), "2.png": png((64, 48)), "3.png": png()})
    with open_series(source) as found:
        assert [e.name for e in found.slices] == ["1.png", "2.png", "3.png"]
        assert any("2 different sizes" in note and "resized" in note for note in found.notes.render())


def test_webp_sizes_are_read_from_their_header_without_libwebp(tmp_path, monkeypatch):
    """Opening a WebP runs libwebp on the whole file: native code on untrusted bytes, kept out of the caller."""
    from PIL import WebPImagePlugin

    def encoded(size: tuple[int, int], **options) -> bytes:
        buffer = io.BytesIO()
        Image.new("RGBA" if options.pop("alpha", False) else "RGB", size, (90, 90, 90)).save(buffer, "WEBP", **options)
        return buffer.getvalue()

    members = {"1.webp": encoded((40, 40), quality=50), "2.webp": encoded((64, 48), lossless=True),
               "3.webp": encoded((97, 33), alpha=True, quality=50)}
    monkeypatch.setattr(WebPImagePlugin.WebPImageFile, "_open", lambda self: pytest.fail("libwebp opened it"))
    with open_series(write_zip(tmp_path / "webp.zip", members)) as found:
        assert [e.name for e in found.slices] == ["1.webp", "2.webp", "3.webp"]
        assert any("3 different sizes" in note for note in found.notes.render())


def test_dicom_and_images_together_are_refused(tmp_path):
    with pytest.raises(ScanError, match="mixes 1 DICOM file"):
        ordered(write_zip(tmp_path / "mix.zip", {"a.dcm": series_slice(), "b.png": png()}))


def test_non_image_members_and_nested_archives_are_skipped_with_notes(tmp_path):
    nested = io.BytesIO()
    with zipfile.ZipFile(nested, "w") as inner:
        inner.writestr("hidden.png", png())
    members = {"scan/1.png": png(), "scan/README.txt": b"a scan", "scan/DICOMDIR": b"\0" * 300,
               "scan/inner.zip": nested.getvalue(), "scan/2.png": png()}
    with open_series(write_zip(tmp_path / "upload.zip", members)) as found:
        assert [e.name for e in found.slices] == ["1.png", "2.png"]
        text = " ".join(found.notes.render())
        assert "archives inside the upload are not opened" in text and "inner.zip" in text
        assert "not an accepted image" in text and "README.txt" in text and "DICOMDIR" in text


def test_an_upload_without_a_readable_slice_is_an_error(tmp_path):
    with pytest.raises(ScanError, match="no readable CT slice.*README.txt"):
        ordered(write_zip(tmp_path / "text.zip", {"README.txt": b"nothing here"}))
    with pytest.raises(ScanError, match="no readable CT slice"):
        ordered(write_zip(tmp_path / "empty.zip", {}))


def test_traversal_names_are_never_written_nor_shown(tmp_path):
    members = {"../../escape.png": png(), "/abs/path/2.png": png(), "C:\\windows\\3.png": png(),
               "dir/../../4.png": png()}
    source = write_zip(tmp_path / "traversal.zip", members)
    before = set(tmp_path.parent.rglob("*"))
    entries = ordered(source)
    assert [e.name for e in entries] == ["escape.png", "2.png", "3.png", "4.png"]  # natural order of full names
    assert all("/" not in e.name and "\\" not in e.name and ".." not in e.name for e in entries)
    assert set(tmp_path.parent.rglob("*")) == before  # nothing extracted anywhere


def test_zip_bombs_are_refused_before_inflating(tmp_path):
    bomb = write_zip(tmp_path / "bomb.zip", {"1.png": png(), "zeros.dcm": b"\0" * (8 * 2**20)})
    with pytest.raises(ScanError, match="zip bomb"):
        ordered(bomb)
    big = tmp_path / "big.zip"
    with zipfile.ZipFile(big, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("1.png", png())
    with zipfile.ZipFile(big) as archive:
        info = archive.infolist()[0]
    info.file_size = zips.MAX_MEMBER_BYTES + 1  # a lying central directory is refused from its declaration
    with pytest.raises(ScanError, match="more than the 64 MiB"):
        zips.check_archive([info], big.stat().st_size, "big.zip")


def test_overlapping_members_are_refused(tmp_path):
    source = write_zip(tmp_path / "one.zip", {"1.png": png()}, zipfile.ZIP_STORED)
    with zipfile.ZipFile(source) as archive:
        info = archive.infolist()[0]
    with pytest.raises(ScanError, match="overlap"):
        zips.check_archive([info] * 50, source.stat().st_size, "overlap.zip")


def test_a_member_that_inflates_past_its_declared_size_is_refused(tmp_path):
    source = write_zip(tmp_path / "liar.zip", {"1.png": png()}, zipfile.ZIP_STORED)
    with zipfile.ZipFile(source) as archive:
        info = archive.infolist()[0]
        info.file_size -= 10
        with pytest.raises(Exception, match="inflates to|Bad CRC|cannot be inflated"):
            zips.inflate(archive, info, "1.png")


def test_too_many_members_or_slices_are_refused(tmp_path, monkeypatch):
    for module in (series, zips):  # each module that reads the limit holds its own name for it
        monkeypatch.setattr(module, "MAX_MEMBERS", 6)
    many = write_zip(tmp_path / "many.zip", {f"{i}.txt": b"x" for i in range(7)})
    with pytest.raises(ScanError, match="declares 7 entries, more than the 6 accepted"):
        ordered(many)  # from the end record, before zipfile reads the directory
    with zipfile.ZipFile(many) as archive, pytest.raises(ScanError, match="holds 7 entries, more than the 6"):
        zips.check_archive(archive.infolist(), many.stat().st_size, "many.zip")
    monkeypatch.setattr(series, "MAX_SLICES", 4)
    with pytest.raises(ScanError, match="5 slices, more than the 4"):
        ordered(write_zip(tmp_path / "slices.zip", {f"{i}.png": png() for i in range(5)}))
    monkeypatch.setattr(zips, "MAX_DIRECTORY_BYTES", 100)
    with pytest.raises(ScanError, match="declares a directory of 2.. bytes, more than the 100"):
        ordered(write_zip(tmp_path / "long.zip", {"x" * 200 + ".png": png()}))


def test_a_single_file_that_is_not_a_zip_is_refused_but_a_list_of_one_zip_is_the_zip(tmp_path):
    image = tmp_path / "one.png"
    image.write_bytes(png())
    with pytest.raises(ScanError, match="single file, not a zip"):
        ordered(image)
    assert [e.name for e in ordered([image])] == ["one.png"]
    archive = write_zip(tmp_path / "up.zip", {"a/1.png": png(), "a/2.png": png()})
    assert [e.name for e in ordered([archive])] == ["1.png", "2.png"]


def test_a_damaged_zip_is_a_clear_error(tmp_path):
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(ScanError, match="not a readable zip archive"):
        ordered(broken)


def test_a_list_of_uploaded_files_is_ordered_by_their_names_not_their_folders(tmp_path):
    """Web uploads land in one random folder each: the folders must not decide the order."""
    paths = []
    for folder, number in (("f3c1", 10), ("0a9b", 2), ("77de", 1)):
        (tmp_path / folder).mkdir()
        paths.append(tmp_path / folder / f"case ({number}).png")
        paths[-1].write_bytes(png())
    assert [e.name for e in ordered(paths)] == ["case (1).png", "case (2).png", "case (10).png"]


def test_many_slices_refused_for_one_reason_make_one_note(tmp_path):
    for number in range(3):
        (tmp_path / f"ok{number}.dcm").write_bytes(series_slice((0.0, 0.0, float(number)), number))
    big_endian = series_slice().replace(b"1.2.840.10008.1.2.1\0", b"1.2.840.10008.1.2.2\0", 1)
    for number in range(7):
        (tmp_path / f"be{number}.dcm").write_bytes(big_endian)
    with open_series(tmp_path) as found:
        assert len(found.slices) == 3
        notes = found.notes.render()
    assert len(notes) == 1, notes
    assert notes[0].startswith("skipped 7 files: be0.dcm: DICOM encoding Explicit VR Big Endian")
    assert notes[0].endswith("(and the same for be1.dcm, be2.dcm, be3.dcm, be4.dcm, be5.dcm and 1 more)")


def test_members_with_the_same_name_are_read_each_as_itself(tmp_path):
    import warnings

    path = tmp_path / "twice.zip"
    with warnings.catch_warnings(), zipfile.ZipFile(path, "w") as archive:
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name
        archive.writestr("slice.dcm", series_slice((0.0, 0.0, 5.0), 1, value=100))
        archive.writestr("slice.dcm", series_slice((0.0, 0.0, -5.0), 2, value=2000))
    with open_series(path) as found:
        low, high = (found.read(entry) for entry in found.slices)
        assert [e.position for e in found.slices] == [-5.0, 5.0]
        assert np.frombuffer(low[-2:], np.uint16)[0] == 2000 and np.frombuffer(high[-2:], np.uint16)[0] == 100
