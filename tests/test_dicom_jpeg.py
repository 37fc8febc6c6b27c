"""DICOM JPEG Lossless, JPEG-LS and JPEG 2000 (decoding/dicom_jpeg.py): real files decode exactly as pydicom
decodes them, and a codestream that disagrees with its DICOM header is refused before GDCM sees it."""

from __future__ import annotations

import glob
import struct
from pathlib import Path

import numpy as np
import pytest

from testkit.hostile_corpus import (JPEG_2000, JPEG_LOSSLESS, JPEG_LOSSLESS_SV1, JPEG_LS, compressed_dicom,
                                    ct_pixels, gdcm_codestream, j2k_codestream, jpeg_ls_two_frames)
from conftest import REPO, require
from lung_classifier.decoding import dicom_jpeg
from lung_classifier.decoding.images import load_rgb, read_slice
from lung_classifier.decoding.limits import ImageError

COVID_CT_MD = REPO.parent / "shared" / "data" / "covidctmd"
"""Three real JPEG Lossless (Process 14, SV1) CT series (../shared/data/README.md)."""


def covid_files() -> list[str]:
    files = sorted(glob.glob(str(COVID_CT_MD / "*" / "*.dcm")))
    require(files, f"COVID-CT-MD DICOM not found under {COVID_CT_MD} (../shared beside the repo)")
    return files


@pytest.fixture
def stored_values(monkeypatch, decode_in_process) -> list[np.ndarray]:
    """Every frame dicom_jpeg.decode returns, as the stored values (before the window)."""
    frames: list[np.ndarray] = []
    decode = dicom_jpeg.decode

    def keep(*args, **kwargs):
        frames.append(decode(*args, **kwargs))
        return frames[-1]

    monkeypatch.setattr(dicom_jpeg, "decode", keep)
    return frames


def test_covid_ct_md_slices_decode_to_pydicoms_values(stored_values):
    import pydicom

    files = covid_files()[::8]
    for file in files:
        piece = read_slice(file)
        assert piece.dicom and piece.axial and piece.rgb.shape == (512, 512, 3)
        assert np.array_equal(stored_values[-1], pydicom.dcmread(file).pixel_array), file
    assert len(stored_values) == len(files)


@pytest.mark.parametrize("name", ["MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm", "JPEG2000.dcm",
                                  "J2K_pixelrep_mismatch.dcm"])
def test_pydicom_test_files_decode_to_pydicoms_values(name, stored_values):
    import pydicom
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    load_rgb(path)
    assert np.array_equal(stored_values[-1], pydicom.dcmread(path).pixel_array)


@pytest.mark.parametrize("syntax", [JPEG_LOSSLESS_SV1, JPEG_LS, JPEG_2000])
@pytest.mark.parametrize("signed", [False, True])
def test_each_syntax_round_trips_the_stored_values(syntax, signed, stored_values):
    pixels = ct_pixels(96, 7)
    code = gdcm_codestream(pixels, syntax, 12)
    tags = {"PixelRepresentation": 1, "RescaleIntercept": "-1024"} if signed else {}
    if signed:  # the same 12 bits read as two's complement: values of 2048 and more are negative
        expected = np.where(pixels >= 2048, pixels.astype(np.int32) - 4096, pixels).astype(np.int16)
    else:
        expected = pixels
    load_rgb(compressed_dicom(code, syntax, 96, 96, BitsStored=12, HighBit=11, **tags))
    assert np.array_equal(stored_values[-1], expected)


@pytest.mark.parametrize("syntax", [JPEG_LOSSLESS_SV1, JPEG_LS, JPEG_2000])
def test_a_codestream_cut_anywhere_is_refused_not_invented(syntax):
    """libjpeg and GDCM decode a JPEG Lossless stream cut at 30% without an error: the end marker decides."""
    code = gdcm_codestream(ct_pixels(96, 8), syntax, 12)
    for cut in (0.3, 0.6, 0.95):
        with pytest.raises(ImageError, match="does not end with an end-of-image marker"):
            load_rgb(compressed_dicom(code[:int(len(code) * cut)], syntax, 96, 96, BitsStored=12, HighBit=11))


def test_an_oversized_frame_is_refused_from_the_header_before_its_pixels_are_read(monkeypatch, decode_in_process):
    monkeypatch.setattr(dicom_jpeg, "read_frame", lambda *args: pytest.fail("the frame was read"))
    code = gdcm_codestream(ct_pixels(96), JPEG_2000)
    with pytest.raises(ImageError, match="frame of 2049x2048 pixels is larger than the 4,194,304 accepted"):
        load_rgb(compressed_dicom(code, JPEG_2000, 2048, 2049))


def test_a_frame_larger_than_its_header_allows_is_refused_while_its_items_are_read(monkeypatch,
                                                                                 decode_in_process):
    code = gdcm_codestream(ct_pixels(96), JPEG_LS, 12)
    monkeypatch.setattr(dicom_jpeg, "_gdcm_decode", lambda *args: pytest.fail("GDCM was called"))
    with pytest.raises(ImageError, match="larger than a 96x96 image can need"):
        load_rgb(compressed_dicom(code, JPEG_LS, 96, 96, fragments=[b"\0" * 60_000] * 2, BitsStored=12,
                                  HighBit=11))


def test_a_jpeg_2000_of_many_tiles_is_refused():
    code = bytearray(gdcm_codestream(ct_pixels(96), JPEG_2000))
    code[24:32] = (4).to_bytes(4, "big") * 2  # SIZ: 4x4 tiles, so 576 of them
    with pytest.raises(ImageError, match="576 tiles"):
        load_rgb(compressed_dicom(bytes(code), JPEG_2000, 96, 96))


@pytest.mark.slow
def test_every_covid_ct_md_series_runs_through_analyze_scan_in_body_order_with_mm_positions():
    from lung_classifier import LungClassifier

    classifier = LungClassifier.from_pretrained()
    folders = sorted({Path(file).parent for file in covid_files()})
    assert len(folders) >= 3
    for folder in folders:
        result = classifier.analyze_scan(folder)
        positions = [scan_slice.position for scan_slice in result.slices]
        assert len(positions) == len(list(folder.glob("*.dcm"))), folder
        assert all(isinstance(position, float) for position in positions), folder
        assert positions == sorted(positions) and len(set(positions)) == len(positions), folder
        assert not result.notes, result.notes
        assert result.verdict


@pytest.mark.parametrize("second", [16384, 30000, 65535])
def test_a_jpeg_ls_second_frame_header_is_refused_before_charls_sees_it(second, monkeypatch, decode_in_process):
    """CharLS sized its buffer from the last frame header: 65535^2 aborted the process (std::length_error)."""
    monkeypatch.setattr(dicom_jpeg, "_gdcm_decode", lambda *args: pytest.fail("GDCM was called"))
    with pytest.raises(ImageError, match="more than one frame header"):
        load_rgb(jpeg_ls_two_frames(second))


@pytest.mark.parametrize("syntax", [JPEG_LOSSLESS_SV1, JPEG_LS])
def test_a_second_image_after_the_end_marker_is_refused(syntax):
    code = gdcm_codestream(ct_pixels(96, 3), syntax, 12)
    with pytest.raises(ImageError, match="after its end-of-image marker"):
        load_rgb(compressed_dicom(code + code, syntax, 96, 96, BitsStored=12, HighBit=11))


def test_jpeg_ls_mapping_tables_and_oversize_dimensions_are_refused():
    code = gdcm_codestream(ct_pixels(96, 3), JPEG_LS, 12)
    at = code.index(b"\xff\xf8")  # GDCM writes an LSE of type 1 (preset coding parameters): accepted as is
    for kind in (2, 4):
        crafted = code[:at + 4] + bytes([kind]) + code[at + 5:]
        with pytest.raises(ImageError, match=f"extension segment of type {kind}"):
            load_rgb(compressed_dicom(crafted, JPEG_LS, 96, 96, BitsStored=12, HighBit=11))


def test_a_jpeg_2000_precinct_bomb_is_refused_from_its_header(monkeypatch, decode_in_process):
    """166 bytes declaring 2x2 precincts on 2048^2: OpenJPEG built 1.4 million precincts (2.3 GiB, 9 s of CPU)."""
    monkeypatch.setattr(dicom_jpeg, "_gdcm_decode", lambda *args: pytest.fail("GDCM was called"))
    for options, count in (({"precincts": 1}, "1,405,848 precincts"), ({"block": 2}, "268,224 code-blocks"),
                           ({"levels": 13}, "13 decomposition levels"), ({"layers": 65}, "65 quality layers")):
        with pytest.raises(ImageError, match=count):
            load_rgb(compressed_dicom(j2k_codestream(2048, 2048, **options), JPEG_2000, 2048, 2048))


def test_jpeg_2000_coding_styles_of_tile_parts_are_counted_too():
    code = j2k_codestream(2048, 2048, tile=1024)
    bomb = code.replace(b"\xff\x93", b"\xff\x52\x00\x12\x01\x00\x00\x01\x00\x05\x04\x04\x00\x01" + b"\x11" * 6
                        + b"\xff\x93", 1)  # a COD of 2x2 precincts in the first tile-part header
    bomb = bomb.replace(struct.pack(">HI", 0, 12 + 66), struct.pack(">HI", 0, 12 + 66 + 20), 1)
    with pytest.raises(ImageError, match="precincts"):
        load_rgb(compressed_dicom(bomb, JPEG_2000, 2048, 2048))
    assert load_rgb(compressed_dicom(code, JPEG_2000, 2048, 2048)).shape == (1024, 1024, 3)


@pytest.mark.parametrize("syntax", [JPEG_LOSSLESS_SV1, JPEG_LOSSLESS])
def test_a_corrupt_jpeg_lossless_stream_that_gdcm_decodes_with_warnings_is_refused(syntax):
    """Cut short with its end marker put back, or bytes changed: libjpeg says "Corrupt JPEG data" on stderr only."""
    code = gdcm_codestream(ct_pixels(256, 4), syntax, 12)
    cut = code[:len(code) // 2] + b"\xff\xd9"
    changed = bytearray(code)
    for index in range(400, len(code) - 10, 97):
        changed[index] ^= 0x5A
    for crafted in (cut, bytes(changed)):
        with pytest.raises(ImageError, match="decodes only with errors|cannot be decoded|damaged"):
            load_rgb(compressed_dicom(crafted, syntax, 256, 256, BitsStored=12, HighBit=11))
