"""load_rgb's bounds: downscaling to MAX_SIDE, the format allow-list, DICOM encodings and tags, the memory budget."""

from __future__ import annotations

import io
import random
import threading

import numpy as np
import pytest
from PIL import Image, ImageOps

from conftest import need_shared_data
from benchmarks.hostile_corpus import (DEFLATED, EXPLICIT_LE, JPEG_BASELINE, _dataset_bytes, _file_meta,
                                       ct_pixels, deflated_dicom, dicom_file, dicom_header, encapsulated, encode,
                                       rle_dicom, slice_image)
from lung_classifier.decoding import dicom, images, limits
from lung_classifier.decoding.images import load_rgb
from lung_classifier.decoding.limits import MAX_SIDE, ImageError
from lung_classifier.decoding.rendering import DICOM_WINDOW


def test_large_images_are_downscaled_to_max_side_keeping_the_aspect():
    grey = Image.fromarray(slice_image(96)).resize((3000, 1500))
    for data in (encode(grey, "PNG"), encode(grey, "JPEG", quality=95), np.asarray(grey)):
        rgb = load_rgb(data)
        assert rgb.shape == (MAX_SIDE // 2, MAX_SIDE, 3)
        expected = np.asarray(grey.resize((MAX_SIDE, MAX_SIDE // 2), Image.Resampling.LANCZOS))
        assert np.abs(rgb[..., 0].astype(int) - expected).mean() < 2  # the same picture, only smaller


def test_images_up_to_max_side_are_not_resampled():
    array = np.random.default_rng(0).integers(0, 256, (MAX_SIDE, 700), dtype=np.uint8)
    np.testing.assert_array_equal(load_rgb(encode(Image.fromarray(array), "PNG"))[..., 0], array)


def test_large_jpeg_is_decoded_at_a_reduced_scale():
    data = encode(Image.fromarray(slice_image(96)).resize((4096, 4096)), "JPEG")
    with Image.open(io.BytesIO(data)) as pil:
        pil.draft("L", (MAX_SIDE, MAX_SIDE))
        assert pil.size == (MAX_SIDE, MAX_SIDE)  # libjpeg decodes 1/4 of each side: 16x less memory
    assert load_rgb(data).shape == (MAX_SIDE, MAX_SIDE, 3)


def test_exif_rotation_applies_to_downscaled_images_too():
    stored = np.zeros((1200, 2400), np.uint8)
    stored[:400, 1800:] = 255  # bright block top-right
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    rgb = load_rgb(encode(Image.fromarray(stored), "PNG", exif=exif.tobytes()))
    assert rgb.shape == (MAX_SIDE, 512, 3)
    assert rgb[-50, -50, 0] > 200 and rgb[50, 50, 0] < 50  # now bottom-right


@pytest.mark.slow  # needs the real dataset
def test_decoded_development_slices_are_exactly_what_pil_gives():
    """The bounds change nothing for the training data: every slice is <= 1024 px and decodes byte for byte."""
    paths = sorted(p for p in need_shared_data().rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    assert len(paths) > 500
    for path in paths:
        with Image.open(path) as pil:
            expected = np.asarray(ImageOps.exif_transpose(pil).convert("RGB"))
        np.testing.assert_array_equal(load_rgb(path), expected, err_msg=str(path))


@pytest.mark.parametrize("format", ["ICO", "PPM", "TGA", "PCX"])
def test_formats_outside_the_allow_list_are_refused(format):
    data = encode(Image.fromarray(slice_image(64)), format)
    with pytest.raises(ImageError, match="not an image in an accepted format"):
        load_rgb(data)


# --- DICOM ------------------------------------------------------------------------------------------


def test_rle_dicom_decodes_to_the_same_slice_as_uncompressed():
    pixels = ct_pixels(128, 7)
    np.testing.assert_array_equal(load_rgb(rle_dicom(pixels)), load_rgb(dicom_file(pixels)))


def test_dicom_window_parameter_is_used():
    pixels = ct_pixels(64)  # stored = HU + 1024
    default = load_rgb(dicom_file(pixels))
    np.testing.assert_array_equal(load_rgb(dicom_file(pixels), dicom_window=DICOM_WINDOW), default)  # the training slices' window by default
    mediastinum = load_rgb(dicom_file(pixels), dicom_window=(40.0, 400.0))
    hounsfield = pixels.astype(np.float32) - 1024.0
    expected = np.round(np.clip((hounsfield - (40.0 - 200.0)) / 400.0, 0, 1) * 255).astype(np.uint8)
    np.testing.assert_array_equal(mediastinum[..., 0], expected)
    with pytest.raises(ValueError, match="width > 0"):
        load_rgb(dicom_file(pixels), dicom_window=(40.0, 0.0))


def test_monochrome1_is_inverted():
    pixels = ct_pixels(64)
    normal = load_rgb(dicom_file(pixels))
    inverted = load_rgb(dicom_file(pixels, PhotometricInterpretation="MONOCHROME1"))
    np.testing.assert_array_equal(inverted, 255 - normal)


def test_signed_12_bit_pixels_are_sign_extended():
    hounsfield = ct_pixels(64).astype(np.int16) - 1024
    stored = hounsfield.astype(np.uint16) & 0x0FFF  # 12 bits stored, the top 4 bits garbage-free
    signed = dicom_file(stored.view(np.int16), PixelRepresentation=1, BitsStored=12, HighBit=11,
                        RescaleIntercept="0")
    np.testing.assert_array_equal(load_rgb(signed), load_rgb(dicom_file(ct_pixels(64))))


@pytest.mark.parametrize(("make", "message"), [
    (lambda: deflated_dicom(64, 64), "Deflated transfer syntax"),
    (lambda: _file_meta(JPEG_BASELINE) + _dataset_bytes(dicom_header(64, 64, bits=8), False)
     + encapsulated([encode(Image.fromarray(slice_image(64)), "JPEG")]), "JPEG Baseline"),
    (lambda: dicom_file(ct_pixels(64), RescaleSlope="1\\2"), "RescaleSlope holds several values"),
    (lambda: dicom_file(ct_pixels(64), RescaleSlope="NaN"), "RescaleSlope is nan"),
    (lambda: dicom_file(ct_pixels(64), RescaleIntercept="1e30"), "RescaleIntercept is 1e\\+30"),
    (lambda: dicom_file(ct_pixels(64), NumberOfFrames="2"), "2 frames"),
    (lambda: dicom_file(ct_pixels(64), PhotometricInterpretation="PALETTE COLOR"), "greyscale"),
    (lambda: _file_meta(EXPLICIT_LE) + _dataset_bytes(dicom_header(8000, 8000), False), "too large"),
], ids=["deflated", "jpeg", "multi-valued-slope", "nan-slope", "huge-intercept", "frames", "palette", "8000x8000"])
def test_dicom_refusals_name_the_reason(make, message):
    with pytest.raises(ImageError, match=message):
        load_rgb(make())


def test_deflated_dicom_bomb_is_refused_before_inflating(monkeypatch):
    import zlib

    def no_inflate(*args, **kwargs):
        raise AssertionError("the deflated dataset was inflated")

    data = deflated_dicom(8000, 8000)
    assert len(data) < 200_000
    monkeypatch.setattr(zlib, "decompress", no_inflate)
    monkeypatch.setattr(zlib, "decompressobj", no_inflate)
    with pytest.raises(ImageError, match="Deflated"):
        load_rgb(data)
    assert DEFLATED in data.decode("latin-1")


def test_only_geometry_and_rescale_tags_are_read(monkeypatch):
    """A patient's name (or any tag but the pixel geometry and rescale) is never decoded."""
    from pydicom.dataset import Dataset

    seen = []
    original = Dataset.__getitem__

    def spy(self, key):
        element = original(self, key)
        seen.append(element.keyword)
        return element

    data = dicom_file(ct_pixels(64), PatientName="Doe^Jane", PatientID="12345")
    assert b"Doe^Jane" in data
    monkeypatch.setattr(Dataset, "__getitem__", spy)
    load_rgb(data)
    assert seen and set(seen) <= set(dicom._GEOMETRY_TAGS) | {"TransferSyntaxUID"}, seen


# --- the memory budget ------------------------------------------------------------------------------


def test_budget_never_lets_reservations_add_up_past_it():
    budget = limits.DecodeBudget(100)
    held, peak, lock = [0], [0], threading.Lock()
    sizes = [random.Random(seed).randint(1, 100) for seed in range(64)]

    def work(size: int) -> None:
        with budget.reserve(size, "x"):
            with lock:
                held[0] += size
                peak[0] = max(peak[0], held[0])
            with lock:
                held[0] -= size

    threads = [threading.Thread(target=work, args=(size,)) for size in sizes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert 0 < peak[0] <= 100 and budget._used == 0
    with pytest.raises(ImageError, match="memory limit"):
        with budget.reserve(101, "x"):
            pass


def test_the_largest_common_images_fit_the_budget():
    """40 MP grey, RGBA or palette PNGs and 40 MP 16-bit uncompressed DICOMs are decoded, not refused for memory."""
    side = int(limits.MAX_PIXELS ** 0.5)
    for mode in ("L", "RGB", "RGBA", "P", "I;16"):
        pil = Image.new(mode, (1, 1))
        pil._size = (side, side)  # the estimate reads the declared size only
        pil.format = "PNG"
        assert images._pil_bytes(pil) <= limits.DECODE_BUDGET_BYTES, mode
    geometry = dicom._Geometry(side, side, 16, 12, True, False, 1.0, 0.0)
    assert dicom._dicom_bytes(geometry, "1.2.840.10008.1.2.1", 2 * side * side) <= limits.DECODE_BUDGET_BYTES


MEASURE_PEAK = """
import sys
import numpy as np
from benchmarks.readings import peak_rss, reset_peak_rss, rss_bytes
from lung_classifier.decoding import limits
from lung_classifier.decoding.images import load_rgb
small, large = sys.argv[1], sys.argv[2]
load_rgb(small)  # the same kind of file, small: imports and decoder set-up are not counted
reserved = []
original = limits.BUDGET.reserve
limits.BUDGET.reserve = lambda nbytes, name: reserved.append(nbytes) or original(nbytes, name)
reset_peak_rss()
before = rss_bytes()
load_rgb(large)
print(peak_rss() - before, max(reserved))
"""


@pytest.mark.parametrize("kind", ["png", "rle", "dicom"])
def test_estimates_bound_what_a_decode_really_uses(kind, tmp_path):
    """The budget only bounds memory if each estimate covers the decode's real peak (RSS, fresh process)."""
    import subprocess
    import sys

    from conftest import REPO
    from benchmarks.hostile_corpus import black_png, zero_runs

    make = {"png": lambda side: black_png(side, side),
            "rle": lambda side: rle_dicom(rows=side, columns=side, segments=[zero_runs(side * side)] * 2),
            "dicom": lambda side: dicom_file(np.zeros((side, side), np.uint16), BitsStored=12)}[kind]
    small, large = tmp_path / "small", tmp_path / "large"
    small.write_bytes(make(64))
    large.write_bytes(make(5000))
    done = subprocess.run([sys.executable, "-c", MEASURE_PEAK, str(small), str(large)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    peak, estimate = map(int, done.stdout.split())
    assert 0 < peak <= estimate, f"peak {peak / 2**20:.0f} MiB > estimate {estimate / 2**20:.0f} MiB"
