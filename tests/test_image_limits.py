"""load_rgb's bounds: downscaling to MAX_SIDE, the format allow-list, DICOM encodings and tags, the memory budget."""

from __future__ import annotations

import io
import random
import threading

import numpy as np
import pytest
from PIL import Image, ImageOps

from conftest import need_shared_data
from testkit.hostile_corpus import (DEFLATED, EXPLICIT_LE, JPEG_BASELINE, _dataset_bytes, _file_meta,
                                       ct_pixels, deflated_dicom, dicom_file, dicom_header, encapsulated, encode,
                                       many_frames_gif, many_pages_tiff, rle_dicom, slice_image)
from lung_classifier.decoding import dicom, images, jpeg_layout, limits
from lung_classifier.decoding.images import load_rgb
from lung_classifier.decoding.limits import MAX_SIDE, ImageError
from lung_classifier.decoding.windowing import DICOM_WINDOW


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


def test_16_bit_png_over_max_side_is_downscaled_not_refused():
    """Pillow cannot LANCZOS-resize I;16 ("image has wrong mode"): it goes through mode I."""
    ramp = np.tile(np.linspace(0, 65535, 2048).astype(np.uint16), (2048, 1))
    rgb = load_rgb(encode(Image.fromarray(ramp), "PNG"))
    assert rgb.shape == (MAX_SIDE, MAX_SIDE, 3)
    assert abs(int(rgb[0, 0, 0]) - 0) <= 1 and abs(int(rgb[0, -1, 0]) - 255) <= 1
    assert np.all(np.diff(rgb[MAX_SIDE // 2, 8:-8, 0].astype(int)) >= 0)  # still a ramp


def progressive_jpeg(size=(640, 480), colour=True, **options) -> bytes:
    from testkit.hostile_corpus import texture

    return encode(texture(*size, colour=colour), "JPEG", quality=75, progressive=True, **options)


@pytest.mark.parametrize("colour, subsampling, scans", [(False, -1, 6), (True, 2, 10), (True, 0, 10)])
def test_jpeg_layout_counts_scans_and_libjpegs_coefficient_buffer_exactly(colour, subsampling, scans):
    layout = jpeg_layout.read_layout(io.BytesIO(progressive_jpeg(colour=colour, subsampling=subsampling)), "a")
    assert (layout.width, layout.height, layout.progressive, layout.scans) == (640, 480, True, scans)
    luma = 80 * 60 * 64 * 2  # 8x8 blocks x 64 coefficients x 2 bytes
    chroma = luma if subsampling == 0 else luma // 4
    assert layout.coefficient_bytes() == (luma + 2 * chroma if colour else luma)
    baseline = jpeg_layout.read_layout(io.BytesIO(encode(Image.new("RGB", (640, 480)), "JPEG")), "a")
    assert (baseline.scans, baseline.coefficient_bytes()) == (1, 0)


def test_a_thumbnail_inside_app1_is_not_counted():
    body = b"Exif\0\0" + progressive_jpeg((160, 120))
    main = encode(Image.new("RGB", (640, 480)), "JPEG")
    data = main[:2] + b"\xff\xe1" + (len(body) + 2).to_bytes(2, "big") + body + main[2:]
    layout = jpeg_layout.read_layout(io.BytesIO(data), "a")
    assert (layout.width, layout.scans) == (640, 1)


def test_repeated_scans_are_refused_before_libjpeg_sees_them(monkeypatch, decode_in_process):
    from testkit.hostile_corpus import repeated_scans

    base = progressive_jpeg(colour=False)  # 6 scans
    assert load_rgb(repeated_scans(base, jpeg_layout.MAX_SCANS - 6)).shape == (480, 640, 3)
    monkeypatch.setattr(Image, "open", lambda *args, **kwargs: pytest.fail("PIL opened it"))
    with pytest.raises(ImageError, match="more than 64 scans"):
        load_rgb(repeated_scans(base, jpeg_layout.MAX_SCANS - 5))


@pytest.mark.parametrize("marker", [0xC3, 0xC9, 0xCB, 0xCF])
def test_arithmetic_lossless_and_hierarchical_jpeg_frames_are_refused(marker):
    data = bytearray(encode(Image.new("RGB", (64, 64)), "JPEG"))
    data[data.index(b"\xff\xc0") + 1] = marker
    with pytest.raises(ImageError, match=f"SOF{marker - 0xC0}"):
        load_rgb(bytes(data))


def test_a_progressive_jpeg_reserves_its_coefficient_buffer(monkeypatch, decode_in_process):
    reserved = []
    reserve = limits.BUDGET.reserve
    monkeypatch.setattr(limits.BUDGET, "reserve", lambda n, name: reserved.append(n) or reserve(n, name))
    data = progressive_jpeg((4000, 3000), subsampling=0)
    load_rgb(data)
    assert reserved[-1] >= 3 * 500 * 375 * 128  # three full-size components, whatever draft() does


@pytest.mark.parametrize("make", [lambda: many_pages_tiff(20_000), lambda: many_frames_gif(1_000_000)],
                         ids=["tiff-20000-pages", "gif-1m-frames"])
def test_many_pages_or_frames_are_refused_without_walking_them(make):
    import resource

    data = make()
    start = resource.getrusage(resource.RUSAGE_SELF).ru_utime
    with pytest.raises(ImageError, match="animated image or has several pages"):
        load_rgb(data)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_utime - start < 0.3


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
    (lambda: rle_dicom(rows=2048, columns=2048, segments=[b"\x00\x07" * 2**22] * 2), "more than 1,048,576 runs"),
], ids=["deflated", "jpeg", "multi-valued-slope", "nan-slope", "huge-intercept", "frames", "palette", "8000x8000",
        "rle-runs"])
def test_dicom_refusals_name_the_reason(make, message):
    with pytest.raises(ImageError, match=message):
        load_rgb(make())


def test_deflated_dicom_bomb_is_refused_before_inflating(monkeypatch, decode_in_process):
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


def test_only_geometry_and_rescale_tags_are_read(monkeypatch, decode_in_process):
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


FIT_AT_40_MP = {("PNG", "L"), ("PNG", "RGB"), ("BMP", "RGB"), ("TIFF", "L"), ("TIFF", "RGB"), ("TIFF", "1"),
                ("JPEG", "L"), ("JPEG", "RGB"), ("JPEG", "CMYK")}
"""The 40 MP kinds that fit the decode budget (README, Input limits); progressive JPEG only up to 4:2:0."""
REFUSED_AT_40_MP = {("PNG", "LA"), ("PNG", "RGBA"), ("PNG", "P"), ("PNG", "I;16"), ("GIF", "P"), ("WEBP", "RGB"),
                    ("TIFF", "CMYK"), ("TIFF", "RGBA")}


def test_which_40_mp_kinds_fit_the_budget():
    """What the README says about 40 MP files, from the same reservations the decoder makes."""
    width, height = 6000, 6600  # 39.6 MP
    target = limits.target_size(width, height, "x")
    for kind in FIT_AT_40_MP | REFUSED_AT_40_MP:
        size = (width, height)
        if kind[0] == "JPEG":  # decoded at 1/4 scale (draft), so the reservation is the draft's
            size = (width // 4, height // 4)
        fits = images.decode_bytes(*kind, size, target) <= limits.DECODE_BUDGET_BYTES
        assert fits == (kind in FIT_AT_40_MP), kind
    progressive = {subsampling: jpeg_layout.JpegLayout(0xC2, width, height, sampling, 10).coefficient_bytes()
                   for subsampling, sampling in (("4:2:0", ((2, 2), (1, 1), (1, 1))),
                                                 ("4:4:4", ((1, 1), (1, 1), (1, 1))))}
    draft = (width // 4, height // 4)
    assert images.decode_bytes("JPEG", "RGB", draft, target, progressive["4:2:0"]) <= limits.DECODE_BUDGET_BYTES
    assert images.decode_bytes("JPEG", "RGB", draft, target, progressive["4:4:4"]) > limits.DECODE_BUDGET_BYTES
    geometry = dicom._Geometry(height, width, 16, 12, True, False, 1.0, 0.0)
    assert dicom._dicom_bytes(geometry, "1.2.840.10008.1.2.1", 2 * width * height) <= limits.DECODE_BUDGET_BYTES


def measured_peaks(kinds: dict, folder) -> dict[str, dict]:
    """benchmarks.decode_peaks on one file per kind: peak RSS and reservation of each decode, in fresh forks."""
    import json
    import subprocess
    import sys

    from conftest import REPO

    paths = {}
    for kind, make in kinds.items():
        paths[kind] = folder / f"{len(paths):02d}"
        paths[kind].write_bytes(make())
    done = subprocess.run([sys.executable, "-m", "benchmarks.decode_peaks", *map(str, paths.values())], cwd=REPO,
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-2000:]
    results = [json.loads(line) for line in done.stdout.splitlines()]
    return {kind: result for kind, result in zip(paths, results, strict=True)}


def over_reservation(results: dict[str, dict]) -> list[str]:
    return [f"{kind}: peak {r['peak'] / 2**20:.0f} MiB > reserved {r['reserved'] / 2**20:.0f} MiB"
            for kind, r in results.items() if r["outcome"].startswith("ok") and r["peak"] > r["reserved"]]


def test_every_accepted_kind_decodes_within_its_reservation(tmp_path):
    """The budget only bounds memory if each reservation covers its decode's real peak: one file of every
    accepted kind (format, mode, encoding), downscaled like a large upload, each measured in a fresh fork."""
    from testkit.hostile_corpus import accepted_kinds

    results = measured_peaks(accepted_kinds(1600, 1400), tmp_path)
    assert all(r["outcome"].startswith("ok") for r in results.values()), results
    assert not over_reservation(results), over_reservation(results)


@pytest.mark.slow  # about 3 minutes: 33 files of 40 MP (and 2048x2048 compressed DICOM)
def test_every_accepted_kind_at_40_mp_is_decoded_within_its_reservation_or_refused_before_decoding(tmp_path):
    """What the README says of 40 MP files, measured: each decodes within its reservation, or the budget refuses
    it before decoding (REFUSED_AT_40_MP, and progressive 4:4:4 JPEG); RLE of that many runs is refused for CPU."""
    from testkit.hostile_corpus import accepted_kinds

    results = measured_peaks(accepted_kinds(6000, 6600), tmp_path)
    assert not over_reservation(results), over_reservation(results)
    refused = {kind: r["outcome"] for kind, r in results.items() if not r["outcome"].startswith("ok")}
    for_memory = {kind for kind, outcome in refused.items() if "memory limit" in outcome}
    assert for_memory == {"PNG LA", "PNG RGBA", "PNG P", "PNG I;16", "GIF", "WebP RGB", "WebP RGBA", "TIFF RGBA",
                          "TIFF CMYK", "TIFF I;16", "JPEG progressive 4:4:4"}, refused
    assert set(refused) - for_memory == {"DICOM RLE"} and "runs for one segment" in refused["DICOM RLE"], refused
