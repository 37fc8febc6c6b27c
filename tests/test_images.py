"""load_rgb: every accepted input kind decodes to the same H x W x 3 uint8, and bad input says why."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lung_classifier.decoding.images import load_rgb
from lung_classifier.decoding.limits import MAX_PIXELS, MIN_SIDE, ImageError
from testkit.dicom_files import ct_slice


def grey_pattern(height: int = 60, width: int = 80) -> np.ndarray:
    """A smooth grey gradient with a bright square: survives JPEG well and is asymmetric."""
    yy, xx = np.mgrid[:height, :width]
    image = (xx * 2 + yy).astype(np.float64)
    image[10:25, 50:70] = 240
    return np.clip(image, 0, 255).astype(np.uint8)


def encode(pil: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    pil.save(buffer, format=format, **options)
    return buffer.getvalue()


def assert_rgb(rgb: np.ndarray, height: int, width: int) -> None:
    assert isinstance(rgb, np.ndarray)
    assert rgb.dtype == np.uint8
    assert rgb.shape == (height, width, 3)


# --- one decoder for every input kind ---------------------------------------------------------


def test_path_bytes_pil_and_array_inputs_decode_identically(tmp_path):
    data = encode(Image.fromarray(grey_pattern(), mode="L"), "JPEG", quality=90)
    path = tmp_path / "slice.jpg"
    path.write_bytes(data)

    from_path = load_rgb(path)
    assert_rgb(from_path, 60, 80)
    # A grey JPEG becomes three equal channels.
    assert (from_path[..., 0] == from_path[..., 1]).all() and (from_path[..., 1] == from_path[..., 2]).all()
    with Image.open(path) as pil:
        from_pil = load_rgb(pil)
        from_array = load_rgb(np.asarray(pil))
    for other in (load_rgb(str(path)), load_rgb(data), load_rgb(bytearray(data)), from_pil, from_array):
        np.testing.assert_array_equal(other, from_path)
    # The decoded values are the image's (JPEG loses a little, not more).
    assert np.abs(from_path[..., 0].astype(int) - grey_pattern()).mean() < 2


@pytest.mark.parametrize("shape", [(40, 50), (40, 50, 1)])
def test_grey_arrays_are_repeated_into_three_channels(shape):
    array = np.arange(np.prod(shape), dtype=np.int64).reshape(shape) % 256
    rgb = load_rgb(array.astype(np.uint8))
    assert_rgb(rgb, 40, 50)
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], array.reshape(40, 50))


def test_rgb_array_is_kept_as_is():
    array = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    np.testing.assert_array_equal(load_rgb(array), array)


def test_rgba_array_is_composited_on_black():
    array = np.zeros((40, 50, 4), np.uint8)
    array[..., :3] = (200, 100, 50)
    array[:, :10, 3] = 255  # opaque
    array[:, 10:20, 3] = 0  # transparent
    array[:, 20:, 3] = 128  # half
    rgb = load_rgb(array)
    assert_rgb(rgb, 40, 50)
    np.testing.assert_array_equal(rgb[0, 0], (200, 100, 50))
    np.testing.assert_array_equal(rgb[0, 15], (0, 0, 0))
    np.testing.assert_array_equal(rgb[0, 30], (200 * 128 // 255, 100 * 128 // 255, 50 * 128 // 255))


def test_uint16_array_full_range_scales_to_uint8():
    array = np.zeros((40, 50), np.uint16)
    array[:, 10:20] = 128 * 257
    array[:, 20:] = 65535
    rgb = load_rgb(array)
    assert rgb[0, 0, 0] == 0 and rgb[0, 15, 0] == 128 and rgb[0, 30, 0] == 255


def test_float_arrays_in_unit_range_and_in_0_255():
    unit = np.full((40, 50), 0.5, np.float32)
    assert load_rgb(unit)[0, 0, 0] == 128
    wide = np.full((40, 50), 200.0)
    assert load_rgb(wide)[0, 0, 0] == 200


def test_16_bit_png_is_scaled_to_8_bits():
    array = np.zeros((40, 50), np.uint16)
    array[:, 10:20] = 100 * 257
    array[:, 20:] = 65535
    pil = Image.fromarray(array)
    assert pil.mode == "I;16"
    data = encode(pil, "PNG")
    with Image.open(io.BytesIO(data)) as reopened:
        assert reopened.mode.startswith("I")  # really a 16-bit file, not quietly 8-bit
    rgb = load_rgb(data)
    assert_rgb(rgb, 40, 50)
    assert rgb[0, 0, 0] == 0 and rgb[0, 15, 0] == 100 and rgb[0, 30, 0] == 255
    np.testing.assert_array_equal(load_rgb(pil), rgb)


def test_rgba_png_transparency_becomes_black():
    array = np.zeros((40, 50, 4), np.uint8)
    array[..., :3] = (10, 200, 30)
    array[:, 25:, 3] = 255
    rgb = load_rgb(encode(Image.fromarray(array, mode="RGBA"), "PNG"))
    np.testing.assert_array_equal(rgb[0, 0], (0, 0, 0))
    np.testing.assert_array_equal(rgb[0, 30], (10, 200, 30))


def test_la_png_grey_with_alpha():
    grey = np.full((40, 50), 180, np.uint8)
    alpha = np.zeros((40, 50), np.uint8)
    alpha[20:] = 255
    pil = Image.merge("LA", [Image.fromarray(grey), Image.fromarray(alpha)])
    rgb = load_rgb(encode(pil, "PNG"))
    assert_rgb(rgb, 40, 50)
    np.testing.assert_array_equal(rgb[0, 0], (0, 0, 0))
    np.testing.assert_array_equal(rgb[30, 0], (180, 180, 180))


def test_palette_png_uses_its_palette_and_transparency():
    indices = np.zeros((40, 50), np.uint8)
    indices[:, 20:35] = 1
    indices[:, 35:] = 2
    pil = Image.fromarray(indices, mode="P")
    pil.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    data = encode(pil, "PNG", transparency=2)  # index 2 (blue) is fully transparent
    rgb = load_rgb(data)
    assert_rgb(rgb, 40, 50)
    np.testing.assert_array_equal(rgb[0, 25], (255, 0, 0))
    np.testing.assert_array_equal(rgb[0, 40], (0, 0, 0))
    # Without transparency the same palette index shows its colour.
    np.testing.assert_array_equal(load_rgb(encode(pil, "PNG"))[0, 40], (0, 0, 255))


def test_exif_orientation_is_applied(tmp_path):
    # Stored 60 high x 80 wide, bright block near the top-right corner.
    stored = np.zeros((60, 80), np.uint8)
    stored[:20, 60:] = 255
    pil = Image.fromarray(stored, mode="L")
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    data = encode(pil, "JPEG", quality=95, exif=exif.tobytes())

    rgb = load_rgb(data)
    # Displayed: 80 high x 60 wide; the top-right block of the stored image is now bottom-right.
    assert_rgb(rgb, 80, 60)
    expected = np.rot90(stored, k=-1)  # clockwise
    assert np.abs(rgb[..., 0].astype(int) - expected).mean() < 3
    assert rgb[70, 50, 0] > 200 and rgb[5, 5, 0] < 50
    path = tmp_path / "rotated.jpg"
    path.write_bytes(data)
    np.testing.assert_array_equal(load_rgb(path), rgb)
    with Image.open(path) as opened:
        np.testing.assert_array_equal(load_rgb(opened), rgb)


# --- DICOM ------------------------------------------------------------------------------------


LUNG_WINDOW = (-600.0, 1500.0)


def test_dicom_is_rescaled_to_hounsfield_and_windowed(tmp_path):
    # Lung window: centre -600, width 1500 -> -1350 HU is black, +150 HU is white.
    columns = [-2000, -1350, -600, 150, 1000]
    hounsfield = np.repeat(np.repeat(np.array(columns, np.float64)[None, :], 10, axis=1), 40, axis=0)  # 40 x 50
    data = ct_slice(hounsfield, slope=2.0, intercept=-2048.0)
    rgb = load_rgb(data, dicom_window=LUNG_WINDOW)
    assert_rgb(rgb, 40, 50)
    values = rgb[0, ::10, 0].astype(int)
    assert values[0] == 0  # below the window: clipped
    assert values[1] == 0  # window bottom
    assert abs(values[2] - 128) <= 1  # window centre
    assert values[3] == 255  # window top
    assert values[4] == 255  # above: clipped
    assert (rgb[..., 0] == rgb[..., 2]).all()
    path = tmp_path / "slice.dcm"
    path.write_bytes(data)
    np.testing.assert_array_equal(load_rgb(path, dicom_window=LUNG_WINDOW), rgb)


def test_dicom_rescale_slope_and_intercept_are_used():
    hounsfield = np.full((40, 40), -975.0)  # a quarter of the way up the lung window -> ~64
    with_rescale = load_rgb(ct_slice(hounsfield, slope=2.0, intercept=-2048.0), dicom_window=LUNG_WINDOW)
    other_rescale = load_rgb(ct_slice(hounsfield, slope=1.0, intercept=-1024.0), dicom_window=LUNG_WINDOW)
    assert abs(int(with_rescale[0, 0, 0]) - 64) <= 1
    np.testing.assert_array_equal(with_rescale, other_rescale)


def test_dicom_without_pixel_data_is_refused():
    with pytest.raises(ImageError, match="without pixel data"):
        load_rgb(ct_slice(None))


# --- refusals, each with a reason a person can act on ---------------------------------------------


def png_claiming_size(width: int, height: int) -> bytes:
    """A small valid PNG whose IHDR (with a correct CRC) claims other dimensions."""
    data = bytearray(encode(Image.new("L", (40, 40)), "PNG"))
    assert data[12:16] == b"IHDR"
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return bytes(data)


def truncated_jpeg() -> bytes:
    data = encode(Image.fromarray(grey_pattern(200, 200), mode="L"), "JPEG", quality=95)
    return data[: len(data) // 2]


def animated_gif() -> bytes:
    frames = [Image.new("L", (40, 40), 0), Image.new("L", (40, 40), 255)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:])


@pytest.mark.parametrize(
    ("make_input", "message"),
    [
        (lambda: b"", "empty"),
        (lambda: b"this is a text file, not an image at all" * 10, "not an image"),
        (truncated_jpeg, "damaged or truncated"),
        (lambda: encode(Image.new("L", (1, 1)), "PNG"), "too small"),
        (lambda: encode(Image.new("L", (MIN_SIDE - 1, 100)), "PNG"), "too small"),
        (lambda: np.zeros((1, 1), np.uint8), "too small"),
        (animated_gif, "animated image or has several pages"),
        (lambda: png_claiming_size(100_000, 100_000), "too large"),
        (lambda: 42, "unsupported input type int"),
        (lambda: Path("/nonexistent/dir/slice.png"), "no such file"),
        (lambda: np.array([[np.nan] * 40] * 40), "NaN"),
        (lambda: np.full((40, 40), np.inf), "infinite"),
        (lambda: np.zeros((40, 40, 2), np.uint8), "not an image"),
        (lambda: np.zeros((4, 40, 40, 3), np.uint8), "not an image"),
        (lambda: np.full((40, 40), -5, np.int32), "expected uint8 or uint16"),
    ],
    ids=["empty-bytes", "text-bytes", "truncated-jpeg", "1x1", "thin", "1x1-array", "animated-gif",
         "bomb", "int", "missing-path", "nan", "inf", "two-channel", "4d-array", "negative-ints"],
)
def test_bad_inputs_raise_image_error_with_reason(make_input, message):
    with pytest.raises(ImageError, match=message):
        load_rgb(make_input())


def test_image_error_is_a_value_error():
    # Callers that only know about ValueError still catch it.
    with pytest.raises(ValueError):
        load_rgb(b"")


def test_missing_path_given_as_string_names_the_file(tmp_path):
    missing = tmp_path / "nope.jpg"
    with pytest.raises(ImageError, match="nope.jpg: no such file"):
        load_rgb(str(missing))


def test_bad_file_on_disk_is_named_in_the_message(tmp_path):
    path = tmp_path / "broken-slice.jpg"
    path.write_bytes(truncated_jpeg())
    with pytest.raises(ImageError, match="broken-slice.jpg"):
        load_rgb(path)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_image_just_over_the_pixel_limit_is_refused_as_too_large():
    # Between MAX_PIXELS and PIL's hard bomb limit (2x) PIL only warns: load_rgb must still refuse,
    # and say the image is too large (not that it is damaged).
    side = int((MAX_PIXELS * 1.2) ** 0.5)
    with pytest.raises(ImageError, match="too large"):
        load_rgb(png_claiming_size(side, side))
