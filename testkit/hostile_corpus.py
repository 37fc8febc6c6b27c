"""A corpus of hostile and odd uploads, generated at run time (never committed).

`write_corpus(directory)` writes 200+ files and returns what each one should do:
`ok` (decodes to a result), `error` (refused with an ImageError) or `any` (fuzzed bytes:
either is fine, a crash or a hang is not). Used by tests/test_hostile_inputs.py and by
the benchmarks' peak-memory row (benchmarks/hostile.py), so both send exactly the same files.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image

CT = "1.2.840.10008.5.1.4.1.1.2"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
RLE = "1.2.840.10008.1.2.5"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.57"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_LS = "1.2.840.10008.1.2.4.80"
JPEG_2000 = "1.2.840.10008.1.2.4.90"


@dataclass(frozen=True)
class HostileFile:
    path: Path
    expect: str  # "ok", "error" or "any"
    why: str

    @property
    def name(self) -> str:
        return self.path.name


# --- building blocks --------------------------------------------------------------------------------


def slice_image(size: int = 96, seed: int = 0) -> np.ndarray:
    """A CT-like grey slice: dark disc, a few bright blobs, noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    image = np.where((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size * 0.42) ** 2, 60.0, 0.0)
    for cy, cx in rng.uniform(size * 0.3, size * 0.7, (3, 2)):
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < (size * 0.08) ** 2] = 230.0
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def encode(pil: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    pil.save(buffer, format=format, **options)
    return buffer.getvalue()


def png_claiming_size(width: int, height: int) -> bytes:
    """A small valid PNG whose IHDR (CRC fixed up) claims other dimensions."""
    data = bytearray(encode(Image.new("L", (40, 40)), "PNG"))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return bytes(data)


def black_png(width: int, height: int) -> bytes:
    """A real PNG of that size, all black, written row by row: a few KB that decode to width*height bytes."""
    raw = zlib.compressobj(9)
    row = b"\0" * (width + 1)  # filter byte + grey pixels
    chunks = [raw.compress(row) for _ in range(height)] + [raw.flush()]
    idat = b"".join(chunks)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def jpeg_claiming_size(width: int, height: int) -> bytes:
    """A valid JPEG whose SOF0 marker claims other dimensions."""
    data = bytearray(encode(Image.fromarray(slice_image(64)), "JPEG", quality=80))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def bmp_claiming_size(width: int, height: int) -> bytes:
    data = bytearray(encode(Image.fromarray(slice_image(64)), "BMP"))
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


def gif_claiming_size(width: int, height: int) -> bytes:
    data = bytearray(encode(Image.fromarray(slice_image(64)), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)  # logical screen
    image_descriptor = data.index(b"\x2c", 13)
    data[image_descriptor + 5:image_descriptor + 9] = struct.pack("<HH", width, height)
    return bytes(data)


def tiff_bomb(width: int, height: int) -> bytes:
    """A real deflate-compressed TIFF of zeros: tiny file, width*height pixels declared."""
    pil = Image.new("1", (width, height))  # 1-bit keeps the writer's memory small
    return encode(pil, "TIFF", compression="tiff_adobe_deflate")


def truncations(data: bytes, count: int) -> Iterator[tuple[str, bytes]]:
    for index in range(1, count + 1):
        cut = max(1, len(data) * index // (count + 1))
        yield f"cut{cut}", data[:cut]


def bit_flips(data: bytes, count: int, seed: int, skip: int = 0) -> Iterator[tuple[str, bytes]]:
    """Copies of `data` with a few random bits flipped (after the first `skip` bytes)."""
    rng = np.random.default_rng(seed)
    for index in range(count):
        flipped = bytearray(data)
        for position in rng.integers(skip, len(data), size=1 + index % 8):
            flipped[position] ^= 1 << int(rng.integers(0, 8))
        yield f"flip{index}", bytes(flipped)


def texture(width: int, height: int, colour: bool = False) -> Image.Image:
    """A CT-like texture tiled to any size: deterministic, and a 40 MP file of it is a few hundred KB."""
    yy, xx = np.mgrid[:256, :256]
    tile = (128 + 60 * np.sin(xx / 9.0) * np.cos(yy / 13.0)).astype(np.uint8)
    grey = np.tile(tile, (-(-height // 256), -(-width // 256)))[:height, :width]
    if colour:
        return Image.fromarray(np.stack([grey, grey[::-1], 255 - grey], axis=2))
    return Image.fromarray(grey)


def jpeg_scans(data: bytes) -> tuple[bytes, list[bytes], bytes]:
    """A JPEG cut at its scans: (everything before the first scan's tables, each scan with its tables, EOI on)."""
    position, header_end, scans, scan_start = 2, None, [], None
    while data[position + 1] != 0xD9:
        marker = data[position + 1]
        length = struct.unpack(">H", data[position + 2:position + 4])[0]
        if marker in (0xC4, 0xDA) and scan_start is None:
            scan_start = position
            header_end = position if header_end is None else header_end
        position += 2 + length
        if marker == 0xDA:
            while not (data[position] == 0xFF and data[position + 1] not in (0x00, *range(0xD0, 0xD8))):
                position += 1
            scans.append(data[scan_start:position])
            scan_start = None
    return data[:header_end], scans, data[position:]


def repeated_scans(progressive: bytes, copies: int) -> bytes:
    """A progressive JPEG with its smallest scan (an all-zero AC pass, tens of bytes) repeated `copies` times:
    libjpeg only warns about the bogus progression and runs every copy over the whole image."""
    head, scans, tail = jpeg_scans(progressive)
    return head + b"".join(scans) + min(scans, key=len) * copies + tail


def many_pages_tiff(pages: int, side: int = 64) -> bytes:
    """A little-endian TIFF of `pages` IFDs of 8 entries chained one after the other, all sharing one strip."""
    strip = bytes(side * side)
    first = 8 + len(strip)
    ifd_size = 2 + 8 * 12 + 4
    out = bytearray(b"II" + struct.pack("<HL", 42, first) + strip)
    for page in range(pages):
        following = first + (page + 1) * ifd_size if page + 1 < pages else 0
        entries = [(256, 3, 1, side), (257, 3, 1, side), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
                   (273, 4, 1, 8), (278, 3, 1, side), (279, 4, 1, len(strip))]
        out += struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHLL", *entry) for entry in entries)
        out += struct.pack("<L", following)
    return bytes(out)


def many_frames_gif(frames: int, side: int = 64) -> bytes:
    """A GIF of `frames` 1x1 frames of 23 bytes each on a side x side screen (a million frames: 22 MB)."""
    header = b"GIF89a" + struct.pack("<HHBBB", side, side, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
    frame = (b"\x21\xf9\x04\x00\x00\x00\x00\x00" + b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0)
             + b"\x02\x02\x44\x01\x00")
    return header + frame * frames + b"\x3b"


def accepted_kinds(width: int, height: int) -> dict[str, Callable[[], bytes]]:
    """One file of every accepted kind (format, mode, encoding) at about width x height, for peak-vs-reservation."""
    grey, colour = texture(width, height), texture(width, height, colour=True)
    rgba = Image.merge("RGBA", [*colour.split(), grey])  # an alpha that varies: not dropped by any encoder
    exif = Image.Exif()
    exif[0x0112] = 6
    side = min(2048, width, height)
    return {
        "PNG L": lambda: encode(grey, "PNG", compress_level=1),
        "PNG LA": lambda: encode(Image.merge("LA", [grey, grey.rotate(90)]), "PNG", compress_level=1),
        "PNG RGB": lambda: encode(colour, "PNG", compress_level=1),
        "PNG RGBA": lambda: encode(rgba, "PNG", compress_level=1),
        "PNG P": lambda: encode(colour.quantize(64), "PNG", compress_level=1),
        "PNG I;16": lambda: encode(Image.fromarray(np.asarray(grey).astype(np.uint16) * 257), "PNG"),
        "PNG 1-bit": lambda: encode(grey.convert("1"), "PNG"),
        "BMP RGB": lambda: encode(colour, "BMP"),
        "GIF": lambda: encode(grey, "GIF"),
        "WebP RGB": lambda: encode(colour, "WEBP", quality=50, method=0),
        "WebP RGBA": lambda: encode(rgba, "WEBP", quality=50, method=0),
        "TIFF L": lambda: encode(grey, "TIFF", compression="tiff_deflate"),
        "TIFF RGB": lambda: encode(colour, "TIFF", compression="tiff_deflate"),
        "TIFF RGBA": lambda: encode(rgba, "TIFF", compression="tiff_deflate"),
        "TIFF CMYK": lambda: encode(colour.convert("CMYK"), "TIFF", compression="tiff_deflate"),
        "TIFF 1-bit": lambda: encode(grey.convert("1"), "TIFF", compression="group4"),
        "TIFF I;16": lambda: encode(Image.fromarray(np.asarray(grey).astype(np.uint16) * 257), "TIFF"),
        "TIFF float": lambda: encode(grey.convert("F"), "TIFF"),
        "JPEG grey": lambda: encode(grey, "JPEG", quality=75),
        "JPEG 4:2:0": lambda: encode(colour, "JPEG", quality=75),
        "JPEG CMYK": lambda: encode(colour.convert("CMYK"), "JPEG", quality=75),
        "JPEG EXIF-rotated": lambda: encode(colour, "JPEG", quality=75, exif=exif.tobytes()),
        "JPEG progressive grey": lambda: encode(grey, "JPEG", quality=75, progressive=True),
        "JPEG progressive 4:2:0": lambda: encode(colour, "JPEG", quality=75, progressive=True),
        "JPEG progressive 4:4:4": lambda: encode(colour, "JPEG", quality=75, progressive=True, subsampling=0),
        "MPO": lambda: encode(colour, "MPO", save_all=True, append_images=[grey.convert("RGB")]),
        "DICOM 16-bit": lambda: dicom_file(np.asarray(grey).astype(np.uint16) * 16),
        "DICOM 8-bit": lambda: dicom_file(np.asarray(grey)),
        "DICOM RLE": lambda: rle_dicom(np.asarray(grey).astype(np.uint16) * 16),
        "DICOM header of 40,000 elements": lambda: many_elements_dicom(2000, 20),
        **{f"DICOM {short} {side}x{side} noise": lambda syntax=syntax: compressed_dicom(
            gdcm_codestream(_noise(side), syntax), syntax, side, side)
           for short, syntax in (("JPEG Lossless", JPEG_LOSSLESS_SV1), ("JPEG-LS", JPEG_LS), ("JPEG 2000", JPEG_2000))},
        f"DICOM JPEG 2000 {side}x{side}, 64x64 precincts, 16x16 code-blocks": lambda: compressed_dicom(
            j2k_codestream(side, side, precincts=6, block=4), JPEG_2000, side, side),
    }


def _noise(side: int) -> np.ndarray:
    """16-bit noise: the compressed frame that costs its decoder the most."""
    return np.random.default_rng(6).integers(0, 65536, (side, side), dtype=np.uint16)


# --- DICOM ------------------------------------------------------------------------------------------


def _dataset_bytes(dataset, implicit: bool, little_endian: bool = True) -> bytes:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = little_endian, implicit
    write_dataset(buffer, dataset)
    return buffer.getvalue()


def _file_meta(syntax: str) -> bytes:
    from pydicom.dataset import FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT
    meta.MediaStorageSOPInstanceUID = "1.2.3.4.5.6.7"
    meta.TransferSyntaxUID = syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return b"\0" * 128 + b"DICM" + buffer.getvalue()


def dicom_header(rows: int, columns: int, bits: int = 16, signed: bool = False, **tags) -> "object":
    """A CT dataset without pixel data; `tags` override or add (None deletes)."""
    from pydicom.dataelem import RawDataElement
    from pydicom.dataset import Dataset
    from pydicom.datadict import dictionary_VR
    from pydicom.tag import Tag

    dataset = Dataset()
    dataset.SOPClassUID = CT
    dataset.SOPInstanceUID = "1.2.3.4.5.6.7"
    dataset.Modality = "CT"
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.Rows, dataset.Columns = rows, columns
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = bits, bits, bits - 1
    dataset.PixelRepresentation = int(signed)
    dataset.RescaleSlope, dataset.RescaleIntercept = "1", "-1024"
    for keyword, value in tags.items():
        if value is None:
            delattr(dataset, keyword)
        elif isinstance(value, str) and dictionary_VR(keyword) in ("DS", "IS"):
            raw = value.encode() + b" " * (len(value) % 2)  # written as is, valid or not
            dataset[keyword] = RawDataElement(Tag(keyword), dictionary_VR(keyword), len(raw), raw, 0, False, True)
        else:
            setattr(dataset, keyword, value)
    return dataset


def pixel_element(length: int, implicit: bool = False, vr: bytes = b"OW") -> bytes:
    if implicit:
        return struct.pack("<HHI", 0x7FE0, 0x0010, length)
    return struct.pack("<HH2sHI", 0x7FE0, 0x0010, vr, 0, length)


def dicom_file(pixels: np.ndarray | None, syntax: str = EXPLICIT_LE, **tags) -> bytes:
    """An uncompressed single-frame DICOM file of `pixels` (uint16 or uint8), or no pixel data."""
    implicit = syntax == IMPLICIT_LE
    if pixels is None:
        return _file_meta(syntax) + _dataset_bytes(dicom_header(64, 64, **tags), implicit)
    bits = pixels.dtype.itemsize * 8
    header = dicom_header(*pixels.shape, bits=bits, **tags)
    body = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    body += b"\0" * (len(body) % 2)
    return _file_meta(syntax) + _dataset_bytes(header, implicit) + pixel_element(len(body), implicit) + body


def ct_pixels(size: int = 96, seed: int = 0) -> np.ndarray:
    """Stored values (HU + 1024) of a CT-like slice through the lung window."""
    hounsfield = slice_image(size, seed).astype(np.float64) / 255.0 * 1500.0 - 1350.0
    return np.clip(np.round(hounsfield + 1024.0), 0, 4095).astype(np.uint16)  # air is -1024 HU


def encapsulated(fragments: list[bytes]) -> bytes:
    items = struct.pack("<HHI", 0xFFFE, 0xE000, 0)  # empty basic offset table
    for fragment in fragments:
        fragment += b"\0" * (len(fragment) % 2)
        items += struct.pack("<HHI", 0xFFFE, 0xE000, len(fragment)) + fragment
    return pixel_element(0xFFFFFFFF, vr=b"OB") + items + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)


def packbits(data: bytes) -> bytes:
    """PackBits: runs of equal bytes as replicate runs, the rest as literals."""
    out, position = bytearray(), 0
    while position < len(data):
        run = 1
        while run < 128 and position + run < len(data) and data[position + run] == data[position]:
            run += 1
        if run > 1:
            out += bytes([257 - run, data[position]])
            position += run
            continue
        end = position + 1
        while end < len(data) and end - position < 128 and (end + 1 >= len(data) or data[end] != data[end + 1]):
            end += 1
        out += bytes([end - position - 1]) + data[position:end]
        position = end
    return bytes(out)


def rle_frame(segments: list[bytes]) -> bytes:
    offsets, position = [], 64
    for segment in segments:
        offsets.append(position)
        position += len(segment)
    return struct.pack("<16I", len(segments), *offsets, *[0] * (15 - len(segments))) + b"".join(segments)


def rle_dicom(pixels: np.ndarray | None = None, *, rows: int = 0, columns: int = 0,
              segments: list[bytes] | None = None, **tags) -> bytes:
    """RLE Lossless DICOM of uint16 `pixels`, or of hand-made `segments` under a declared size."""
    if pixels is not None:
        rows, columns = pixels.shape
        big_endian = pixels.astype(">u2").tobytes()
        segments = [packbits(big_endian[0::2]), packbits(big_endian[1::2])]
    frame = rle_frame(segments)
    return _file_meta(RLE) + _dataset_bytes(dicom_header(rows, columns, **tags), False) + encapsulated([frame])


def gdcm_codestream(pixels: np.ndarray, syntax: str, bits_stored: int | None = None) -> bytes:
    """GDCM's codestream of uint8/uint16 `pixels` in a DICOM JPEG Lossless, JPEG-LS or JPEG 2000 syntax."""
    import tempfile

    import gdcm
    from pydicom import dcmread
    from pydicom.encaps import generate_frames

    bits = pixels.dtype.itemsize * 8
    source = dicom_file(pixels, BitsStored=bits_stored or bits, HighBit=(bits_stored or bits) - 1)
    with tempfile.TemporaryDirectory() as folder:
        raw, compressed = Path(folder, "raw.dcm"), Path(folder, "compressed.dcm")
        raw.write_bytes(source)
        reader = gdcm.ImageReader()
        reader.SetFileName(str(raw))
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.GetTSType(syntax)))
        if not reader.Read():
            raise RuntimeError("GDCM cannot read the uncompressed source")
        change.SetInput(reader.GetImage())
        if not change.Change():
            raise RuntimeError(f"GDCM cannot encode {pixels.shape} {pixels.dtype} as {syntax}")
        writer = gdcm.ImageWriter()
        writer.SetFileName(str(compressed))
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        if not writer.Write():
            raise RuntimeError(f"GDCM cannot write {syntax}")
        return next(generate_frames(dcmread(compressed).PixelData, number_of_frames=1))


def compressed_dicom(codestream: bytes, syntax: str, rows: int, columns: int, bits: int = 16,
                     fragments: list[bytes] | None = None, **tags) -> bytes:
    """A JPEG-family DICOM file holding `codestream` (then any extra `fragments`) under the declared size."""
    return (_file_meta(syntax) + _dataset_bytes(dicom_header(rows, columns, bits=bits, **tags), False)
            + encapsulated([codestream, *(fragments or [])]))


def siz_claiming_size(codestream: bytes, width: int, height: int) -> bytes:
    """A JPEG 2000 codestream whose SIZ marker claims other dimensions (its offsets are 0)."""
    return codestream[:8] + struct.pack(">II", width, height) + codestream[16:]


def sof_claiming_size(codestream: bytes, marker: bytes, width: int, height: int) -> bytes:
    """A JPEG Lossless (SOF3) or JPEG-LS (SOF55) codestream whose frame header claims other dimensions."""
    at = codestream.index(marker)
    return codestream[:at + 5] + struct.pack(">HH", height, width) + codestream[at + 9:]


def j2k_codestream(width: int, height: int, *, levels: int = 5, precincts: int | None = None, block: int = 6,
                   layers: int = 1, tile: int | None = None) -> bytes:
    """A JPEG 2000 codestream written by hand: one 16-bit component, reversible 5/3, every packet empty (a black
    slice), 2^block code-blocks and, if given, 2^precincts x 2^precincts precincts at every resolution. What the
    decoder builds from its headers alone: 2 x 2 precincts at 2048^2 cost OpenJPEG 2.3 GiB, in 166 bytes."""
    side = tile or max(width, height)
    siz = struct.pack(">HIIIIIIIIH", 0, width, height, 0, 0, side, side, 0, 0, 1) + bytes([15, 1, 1])
    cod = bytes([1 if precincts else 0, 0]) + struct.pack(">H", layers) + bytes([0, levels, block - 2, block - 2, 0, 1])
    if precincts:
        cod += bytes([precincts << 4 | precincts] * (levels + 1))
    qcd = bytes([0x40]) + bytes([18 << 3] * (3 * levels + 1))

    def segment(marker: bytes, body: bytes) -> bytes:
        return marker + struct.pack(">H", len(body) + 2) + body

    code = b"\xff\x4f" + segment(b"\xff\x51", siz) + segment(b"\xff\x52", cod) + segment(b"\xff\x5c", qcd)
    for index in range(-(-width // side) * -(-height // side)):
        data = b"\xff\x93" + b"\0" * 64
        code += b"\xff\x90" + struct.pack(">HHIBB", 10, index, 12 + len(data), 0, 1) + data
    return code + b"\xff\xd9"


def jpeg_ls_two_frames(second: int, first: int = 512) -> bytes:
    """A JPEG-LS DICOM of first x first (a black slice) whose codestream has a second frame header of
    second x second: CharLS sized its buffer from the last one (second 65535: 482 bytes that aborted the server)."""
    code = gdcm_codestream(np.zeros((first, first), np.uint16), JPEG_LS, 12)
    at = code.index(b"\xff\xf7")
    length = struct.unpack(">H", code[at + 2:at + 4])[0]
    header = code[at:at + 2 + length]
    again = header[:5] + struct.pack(">HH", second, second) + header[9:]
    return compressed_dicom(code[:at + 2 + length] + again + code[at + 2 + length:], JPEG_LS, first, first,
                            BitsStored=12, HighBit=11)


def zero_runs(count: int) -> bytes:
    """PackBits for `count` zero bytes: 2 bytes per 128."""
    full, rest = divmod(count, 128)
    return b"\x81\0" * full + (bytes([257 - rest, 0]) if rest > 1 else b"\0\0" if rest else b"")


def deflated_dicom(rows: int, columns: int) -> bytes:
    """Deflated Explicit VR Little Endian, all-zero 16-bit pixels, compressed as a stream (no big buffer)."""
    body = _dataset_bytes(dicom_header(rows, columns), False) + pixel_element(rows * columns * 2)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [compressor.compress(body)]
    zeros = b"\0" * (columns * 2 * 64)
    for _ in range(rows // 64):
        parts.append(compressor.compress(zeros))
    parts.append(compressor.compress(b"\0" * (columns * 2 * (rows % 64))))
    parts.append(compressor.flush())
    return _file_meta(DEFLATED) + b"".join(parts)


def nested_sequence_dicom(items: int) -> bytes:
    """A private undefined-length sequence of `items` empty items before the pixels (parser bomb)."""
    sequence = struct.pack("<HH2sHI", 0x0009, 0x1010, b"SQ", 0, 0xFFFFFFFF)
    sequence += (struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)) * items
    sequence += struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    header = dicom_header(64, 64)
    pixels = ct_pixels(64).tobytes()
    private_creator = struct.pack("<HH2sH", 0x0009, 0x0010, b"LO", 4) + b"EVIL"
    header_bytes = _dataset_bytes(header, False)
    # Elements must ascend: group 0008 first, then 0009 (ours), then 0018+ from the dataset.
    split = header_bytes.index(struct.pack("<HH", 0x0028, 0x0002))
    return (_file_meta(EXPLICIT_LE) + header_bytes[:split] + private_creator + sequence + header_bytes[split:]
            + pixel_element(len(pixels)) + pixels)


def private_items_dicom(sequence: bytes) -> bytes:
    """A 64x64 CT DICOM with private `sequence` bytes (group 0009, creator EVIL) spliced before group 0028."""
    creator = struct.pack("<HH2sH", 0x0009, 0x0010, b"LO", 4) + b"EVIL"
    header_bytes = _dataset_bytes(dicom_header(64, 64), False)
    pixels = ct_pixels(64).tobytes()
    split = header_bytes.index(struct.pack("<HH", 0x0028, 0x0002))  # elements ascend: 0008, then 0009, then 0018+
    return (_file_meta(EXPLICIT_LE) + header_bytes[:split] + creator + sequence + header_bytes[split:]
            + pixel_element(len(pixels)) + pixels)


def many_elements_dicom(items: int, elements: int) -> bytes:
    """A private sequence of `items` items of `elements` tiny elements each (pydicom: ~90 B of objects a byte)."""
    body = b"".join(struct.pack("<HH2sH", 0x0009, 0x1000 + i, b"SH", 2) + b"ab" for i in range(elements))
    item = struct.pack("<HHI", 0xFFFE, 0xE000, len(body)) + body
    return private_items_dicom(struct.pack("<HH2sHI", 0x0009, 0x1010, b"SQ", 0, 0xFFFFFFFF) + item * items
                               + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))


def deep_sequence_dicom(depth: int) -> bytes:
    """A private sequence whose one item holds a sequence whose item holds ... `depth` levels (recursion)."""
    open_level = struct.pack("<HH2sHI", 0x0009, 0x1010, b"SQ", 0, 0xFFFFFFFF) + struct.pack("<HHI", 0xFFFE, 0xE000,
                                                                                              0xFFFFFFFF)
    close_level = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return private_items_dicom(open_level * depth + close_level * depth)


# --- the corpus -------------------------------------------------------------------------------------


def _files() -> Iterator[tuple[str, str, str, Callable[[], bytes]]]:
    """(name, expect, why, make) for every corpus file."""
    grey = Image.fromarray(slice_image(96))
    rgb = Image.merge("RGB", [grey, grey.rotate(90), grey])
    jpeg = encode(grey, "JPEG", quality=90)
    png = encode(grey, "PNG")
    dicom = dicom_file(ct_pixels(96))

    # Valid inputs of every accepted kind.
    for format, suffix in (("JPEG", "jpg"), ("PNG", "png"), ("BMP", "bmp"), ("TIFF", "tif"), ("WEBP", "webp"),
                           ("GIF", "gif")):
        yield f"valid-grey.{suffix}", "ok", f"grey {format}", lambda f=format: encode(grey, f)
        yield f"valid-rgb.{suffix}", "ok", f"RGB {format}", lambda f=format: encode(rgb, f)
    yield "valid.dcm", "ok", "uncompressed explicit VR DICOM", lambda: dicom
    yield "valid-implicit.dcm", "ok", "implicit VR DICOM", lambda: dicom_file(ct_pixels(96, 1), IMPLICIT_LE)
    yield "valid-rle.dcm", "ok", "RLE Lossless DICOM", lambda: rle_dicom(ct_pixels(96, 2))
    yield "valid-8bit.dcm", "ok", "8-bit DICOM", lambda: dicom_file(slice_image(96), RescaleIntercept="-1350",
                                                                     RescaleSlope="5.88")
    yield "valid-signed-12bit.dcm", "ok", "signed 12-bit stored", lambda: dicom_file(
        (ct_pixels(96).astype(np.int16) - 1024), PixelRepresentation=1, BitsStored=12, HighBit=11,
        RescaleIntercept="0")
    yield "monochrome1.dcm", "ok", "inverted greyscale", lambda: dicom_file(ct_pixels(96),
                                                                           PhotometricInterpretation="MONOCHROME1")
    yield "large-512.dcm", "ok", "a full-size CT slice", lambda: dicom_file(ct_pixels(512, 3))
    yield "large-2048.png", "ok", "downscaled to 1024", lambda: encode(grey.resize((2048, 2048)), "PNG")
    yield "large-3000x2000.jpg", "ok", "JPEG draft", lambda: encode(rgb.resize((3000, 2000)), "JPEG")

    # Modes: CMYK, palette, 16-bit, 1-bit, alpha, float, EXIF rotations, MPO.
    yield "cmyk.jpg", "ok", "CMYK JPEG", lambda: encode(rgb.convert("CMYK"), "JPEG")
    yield "cmyk.tif", "ok", "CMYK TIFF", lambda: encode(rgb.convert("CMYK"), "TIFF")
    yield "palette.png", "ok", "palette PNG", lambda: encode(rgb.convert("P"), "PNG")
    yield "palette-transparent.png", "ok", "palette with transparency", lambda: encode(
        rgb.convert("P"), "PNG", transparency=0)
    yield "palette.gif", "ok", "palette GIF", lambda: encode(rgb.convert("P"), "GIF")
    yield "16bit.png", "ok", "16-bit grey PNG", lambda: encode(Image.fromarray(ct_pixels(96) * 16), "PNG")
    yield "16bit.tif", "ok", "16-bit grey TIFF", lambda: encode(Image.fromarray(ct_pixels(96) * 16), "TIFF")
    yield "32bit-int.tif", "ok", "32-bit integer TIFF", lambda: encode(
        Image.fromarray(ct_pixels(96).astype(np.int32)), "TIFF")
    yield "float.tif", "ok", "float TIFF", lambda: encode(Image.fromarray(slice_image(96) / 255.0).convert("F"),
                                                           "TIFF")
    yield "bilevel.png", "ok", "1-bit PNG", lambda: encode(grey.convert("1"), "PNG")
    yield "grey-alpha.png", "ok", "LA PNG", lambda: encode(grey.convert("LA"), "PNG")
    yield "rgba.png", "ok", "RGBA PNG", lambda: encode(rgb.convert("RGBA"), "PNG")
    yield "rgba.webp", "ok", "RGBA WebP", lambda: encode(rgb.convert("RGBA"), "WEBP", lossless=True)
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        yield f"exif-orientation-{orientation}.jpg", "ok", "EXIF rotation", lambda e=exif: encode(
            rgb.resize((120, 80)), "JPEG", exif=e.tobytes())
    exif = Image.Exif()
    exif[0x0112] = 6
    yield "exif-rotated-large.jpg", "ok", "EXIF rotation of a downscaled JPEG", lambda: encode(
        rgb.resize((2400, 1600)), "JPEG", exif=exif.tobytes())
    yield "phone.mpo", "ok", "MPO (phone photo with a second picture)", lambda: encode(
        rgb, "MPO", save_all=True, append_images=[grey.convert("RGB")])

    # Animated images and several pages.
    frames = [grey, grey.rotate(90), grey.rotate(180)]
    yield "animated.gif", "error", "animated GIF", lambda: encode(frames[0], "GIF", save_all=True,
                                                                   append_images=frames[1:])
    yield "animated.png", "error", "APNG", lambda: encode(frames[0], "PNG", save_all=True, append_images=frames[1:])
    yield "animated.webp", "error", "animated WebP", lambda: encode(
        frames[0].convert("RGB"), "WEBP", save_all=True, append_images=[f.convert("RGB") for f in frames[1:]])
    yield "pages.tif", "error", "multi-page TIFF", lambda: encode(frames[0], "TIFF", save_all=True,
                                                                   append_images=frames[1:])

    # Memory and CPU per decoder path: the worst file of each class (issue 18).
    progressive_grey = encode(texture(6000, 6600), "JPEG", quality=75, progressive=True)
    small_progressive = encode(texture(640, 480), "JPEG", quality=75, progressive=True)
    yield "jpeg-progressive-420-40mp.jpg", "ok", "40 MP progressive 4:2:0: 125 MiB of coefficients, reserved", lambda: (
        encode(texture(6000, 6600, colour=True), "JPEG", quality=75, progressive=True))
    yield "jpeg-progressive-444-40mp.jpg", "error", "40 MP progressive 4:4:4: 227 MiB of coefficients", lambda: (
        encode(texture(6000, 6600, colour=True), "JPEG", quality=75, progressive=True, subsampling=0))
    yield "jpeg-1000-repeated-scans.jpg", "error", "40 MP with 1000 repeated scans (4.7 s of CPU)", lambda: (
        repeated_scans(progressive_grey, 1000))
    yield "jpeg-64-scans.jpg", "ok", "64 scans, the most accepted", lambda: repeated_scans(small_progressive, 58)
    yield "jpeg-65-scans.jpg", "error", "65 scans", lambda: repeated_scans(small_progressive, 59)
    yield "jpeg-arithmetic.jpg", "error", "arithmetic-coded frame (SOF9)", lambda: (
        jpeg.replace(b"\xff\xc0", b"\xff\xc9", 1))
    yield "tiff-20000-pages.tif", "error", "20,000 pages (7.5 s of CPU to count)", lambda: many_pages_tiff(20_000)
    yield "gif-1m-frames.gif", "error", "1,000,000 frames in 22 MB (5.9 s of CPU to count)", lambda: (
        many_frames_gif(1_000_000))
    yield "png-rgba-40mp.png", "error", "40 MP RGBA: 356 MiB to resize", lambda: encode(
        Image.merge("RGBA", [*texture(6000, 6600, colour=True).split(), texture(6000, 6600)]), "PNG",
        compress_level=1)
    yield "png-16bit-2048.png", "ok", "16-bit PNG over 1024 px (Pillow cannot resize I;16)", lambda: encode(
        Image.fromarray(np.asarray(texture(2048, 2048)).astype(np.uint16) * 257), "PNG")
    yield "dicom-40000-header-elements.dcm", "ok", "0.4 MB of tiny private elements (37 MiB of objects)", lambda: (
        many_elements_dicom(2000, 20))
    yield "dicom-sequence-5000-deep.dcm", "error", "a private sequence nested 5000 levels", lambda: (
        deep_sequence_dicom(5000))
    yield "rle-one-byte-runs-1024.dcm", "ok", "RLE of 2M one-byte runs (1 s of CPU), the most accepted", lambda: (
        rle_dicom(rows=1024, columns=1024, segments=[b"\x00\x07" * 2**20] * 2))
    yield "rle-one-byte-runs-2048.dcm", "error", "RLE of 8M one-byte runs (3.5 s of CPU uncapped)", lambda: (
        rle_dicom(rows=2048, columns=2048, segments=[b"\x00\x07" * 2**22] * 2))

    # Sizes: declared bombs, real decompression bombs, too small, too elongated.
    for width, height in ((100_000, 100_000), (65_535, 65_535), (7_000, 7_000), (40_000, 1_001)):
        yield f"bomb-{width}x{height}.png", "error", "PNG declaring a huge size", lambda w=width, h=height: (
            png_claiming_size(w, h))
    for width, height in ((65_000, 65_000), (8_000, 8_000)):
        yield f"bomb-{width}x{height}.jpg", "error", "JPEG declaring a huge size", lambda w=width, h=height: (
            jpeg_claiming_size(w, h))
        yield f"bomb-{width}x{height}.bmp", "error", "BMP declaring a huge size", lambda w=width, h=height: (
            bmp_claiming_size(w, h))
        yield f"bomb-{width}x{height}.gif", "error", "GIF declaring a huge size", lambda w=width, h=height: (
            gif_claiming_size(w, h))
    yield "bomb-6000x6000-declared.png", "error", "PNG declaring 36 MP with 1.6 KB of data", lambda: (
        png_claiming_size(6_000, 6_000))
    yield "bomb-9000x9000-zeros.png", "error", "real 81 MP PNG of zeros", lambda: black_png(9_000, 9_000)
    yield "black-10mp.png", "ok", "real 10 MP black PNG (decodes, downscaled)", lambda: black_png(3_700, 2_800)
    yield "black-36mp.png", "ok", "real 36 MP black PNG, under the limit", lambda: black_png(6_000, 6_000)
    yield "bomb-9000x9000.tif", "error", "deflate TIFF of 81 MP", lambda: tiff_bomb(9_000, 9_000)
    yield "bomb-9000x9000.gif", "error", "real GIF of 81 MP", lambda: encode(Image.new("P", (9_000, 9_000)), "GIF")
    yield "tiny-1x1.png", "error", "1x1", lambda: encode(Image.new("L", (1, 1)), "PNG")
    yield "thin-31x100.png", "error", "under 32 px", lambda: encode(Image.new("L", (31, 100)), "PNG")
    yield "elongated-20000x40.png", "error", "too elongated to downscale", lambda: encode(
        Image.new("L", (20_000, 40)), "PNG")
    yield "smallest-32x32.png", "ok", "exactly the minimum", lambda: encode(Image.new("L", (32, 32), 90), "PNG")

    # DICOM bombs and odd DICOM files.
    yield "bomb-deflate-8000x8000.dcm", "error", "deflate DICOM bomb (~125 KB -> 128 MB)", lambda: (
        deflated_dicom(8_000, 8_000))
    yield "deflate-small.dcm", "error", "Deflated syntax is not accepted", lambda: deflated_dicom(64, 64)
    yield "bomb-rle-8000x8000.dcm", "error", "RLE declaring 64 MP", lambda: rle_dicom(
        rows=8_000, columns=8_000, segments=[zero_runs(64_000_000)] * 2)
    yield "rle-6000x6000-zeros.dcm", "ok", "RLE of 36 MP zeros, under the limit", lambda: rle_dicom(
        rows=6_000, columns=6_000, segments=[zero_runs(36_000_000)] * 2)
    yield "rle-overlong-runs.dcm", "ok", "RLE segments that expand far past 512x512", lambda: rle_dicom(
        rows=512, columns=512, segments=[zero_runs(150_000 * 128)[:300_000]] * 2)
    yield "rle-noop-stuffing.dcm", "error", "RLE of no-op bytes, far larger than the image", lambda: rle_dicom(
        rows=64, columns=64, segments=[b"\x80" * 2_000_000] * 2)
    yield "rle-short.dcm", "error", "RLE segments shorter than the image", lambda: rle_dicom(
        rows=64, columns=64, segments=[zero_runs(1000)] * 2)
    yield "rle-one-segment.dcm", "error", "RLE with the wrong segment count", lambda: rle_dicom(
        rows=64, columns=64, segments=[zero_runs(4096)])
    yield "rle-bad-offsets.dcm", "error", "RLE with offsets past the frame", lambda: (
        rle_dicom(ct_pixels(64)).replace(struct.pack("<I", 2) + struct.pack("<I", 64), struct.pack("<I", 2)
                                         + struct.pack("<I", 99_999), 1))
    yield "bomb-uncompressed-8000x8000.dcm", "error", "declares 64 MP, holds 8 KB", lambda: (
        _file_meta(EXPLICIT_LE) + _dataset_bytes(dicom_header(8_000, 8_000), False) + pixel_element(8192)
        + b"\0" * 8192)
    yield "bomb-pixel-length.dcm", "error", "pixel data length 4 GB", lambda: (
        _file_meta(EXPLICIT_LE) + _dataset_bytes(dicom_header(512, 512), False) + pixel_element(0xFFFFFFF0)
        + b"\0" * 4096)
    yield "short-pixels.dcm", "error", "fewer pixel bytes than declared", lambda: dicom[:-2000]
    yield "no-pixels.dcm", "error", "DICOM without pixel data", lambda: dicom_file(None)
    yield "nested-sequence-bomb.dcm", "error", "400k nested empty items (6 MB)", lambda: nested_sequence_dicom(400_000)
    yield "nested-sequence-small.dcm", "ok", "a few private items", lambda: nested_sequence_dicom(100)
    yield "jpeg-baseline.dcm", "error", "JPEG transfer syntax is not accepted", lambda: (
        _file_meta(JPEG_BASELINE) + _dataset_bytes(dicom_header(64, 64, bits=8), False)
        + encapsulated([jpeg_claiming_size(60_000, 60_000)]))
    yield from _jpeg_family_files()
    yield "big-endian.dcm", "error", "retired big endian syntax", lambda: (
        _file_meta(EXPLICIT_BE) + _dataset_bytes(dicom_header(64, 64), False, little_endian=False)
        + b"\x7f\xe0\x00\x10OW\0\0" + struct.pack(">I", 8192) + b"\0" * 8192)
    yield "no-syntax.dcm", "error", "file meta without a transfer syntax", lambda: (
        b"\0" * 128 + b"DICM" + _dataset_bytes(dicom_header(64, 64), False))
    yield "dicm-then-garbage.dcm", "error", "DICM prefix and random bytes", lambda: (
        b"\0" * 128 + b"DICM" + np.random.default_rng(5).bytes(4000))
    yield "multiframe.dcm", "error", "3 frames", lambda: dicom_file(
        np.concatenate([ct_pixels(64)] * 3), NumberOfFrames="3", Rows=64)
    yield "rgb.dcm", "error", "colour DICOM", lambda: dicom_file(np.zeros((64, 192), np.uint8), SamplesPerPixel=3,
                                                                   PhotometricInterpretation="RGB", Columns=64,
                                                                   PlanarConfiguration=0)
    yield "palette.dcm", "error", "PALETTE COLOR DICOM", lambda: dicom_file(
        np.zeros((64, 64), np.uint8), PhotometricInterpretation="PALETTE COLOR")
    yield "32bit.dcm", "error", "32 bits allocated", lambda: dicom_file(np.zeros((64, 64), np.uint32))
    yield "tiny.dcm", "error", "8x8 DICOM", lambda: dicom_file(ct_pixels(64)[:8, :8])
    yield "rows-missing.dcm", "error", "no Rows tag", lambda: dicom_file(ct_pixels(64), Rows=None)
    for keyword, value, expect in (
        ("RescaleSlope", "1\\2", "error"), ("RescaleSlope", "NaN", "error"), ("RescaleSlope", "1e30", "error"),
        ("RescaleSlope", "0", "error"), ("RescaleSlope", "-inf", "error"), ("RescaleSlope", "abc", "error"),
        ("RescaleSlope", "", "ok"), ("RescaleIntercept", "1\\2\\3", "error"), ("RescaleIntercept", "1e30", "error"),
        ("RescaleIntercept", "NaN", "error"), ("RescaleIntercept", "-1024.5", "ok"), ("RescaleSlope", "0.5", "ok"),
        ("Rows", [64, 64], "error"), ("BitsStored", 40, "error"), ("PixelRepresentation", 7, "error"),
        ("NumberOfFrames", "x", "error"),
    ):
        safe = "".join(c if c.isalnum() else "_" for c in str(value)) or "empty"
        yield f"tag-{keyword}-{safe}.dcm", expect, f"{keyword} = {value!r}", lambda k=keyword, v=value: (
            dicom_file(ct_pixels(64), **{k: v}))

    # Not images at all.
    yield "empty.png", "error", "zero bytes", lambda: b""
    yield "empty.dcm", "error", "zero bytes", lambda: b""
    yield "notes.txt", "error", "text", lambda: b"Patient notes, not an image.\n" * 20
    yield "page.html", "error", "HTML", lambda: b"<!DOCTYPE html><html><body><img src=x onerror=alert(1)></body></html>"
    yield "drawing.svg", "error", "SVG", lambda: (b'<svg xmlns="http://www.w3.org/2000/svg" width="512" height="512">'
                                                  b'<circle cx="256" cy="256" r="200"/></svg>')
    yield "report.pdf", "error", "PDF", lambda: (b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
                                                 b"2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n")
    yield "slices.zip", "error", "zip of images", lambda: _zip({"slice.png": png, "slice.dcm": dicom})
    yield "slices.png.gz", "error", "gzip", lambda: zlib.compress(png)
    yield "data.json", "error", "JSON", lambda: b'{"image": [1, 2, 3]}'
    yield "icon.ico", "error", "ICO is not an accepted format", lambda: encode(grey.resize((64, 64)), "ICO")
    yield "netpbm.ppm", "error", "PPM is not an accepted format", lambda: encode(rgb, "PPM")
    yield "random.bin", "error", "random bytes", lambda: np.random.default_rng(1).bytes(5000)
    yield "png-signature-only.png", "error", "PNG signature only", lambda: png[:8]
    yield "jpeg-markers-only.jpg", "error", "JPEG SOI/EOI", lambda: b"\xff\xd8\xff\xd9"

    # Truncated and bit-flipped files of every kind.
    originals = {"jpg": jpeg, "png": png, "dcm": dicom, "bmp": encode(grey, "BMP"), "tif": encode(grey, "TIFF"),
                 "webp": encode(grey, "WEBP"), "gif": encode(grey, "GIF"), "rle.dcm": rle_dicom(ct_pixels(96, 4))}
    for suffix, data in originals.items():
        for label, cut in truncations(data, 8):
            yield f"truncated-{label}.{suffix}", "any" if suffix in ("jpg", "tif", "gif") else "error", \
                "truncated", lambda d=cut: d
    for seed, (suffix, data) in enumerate(originals.items()):
        skip = 132 if suffix.endswith("dcm") else 0
        for label, flipped in bit_flips(data, 12, seed, skip):
            yield f"bitflip-{label}.{suffix}", "any", "random bits flipped", lambda d=flipped: d


def _jpeg_family_files() -> Iterator[tuple[str, str, str, Callable[[], bytes]]]:
    """JPEG Lossless, JPEG-LS and JPEG 2000 DICOM: valid, and every way a codestream can disagree with its header."""
    pixels = ct_pixels(96, 5)
    noise = np.random.default_rng(6).integers(0, 65536, (2048, 2048), dtype=np.uint16)
    for short, syntax, marker in (("jll", JPEG_LOSSLESS_SV1, b"\xff\xc3"), ("jll14", JPEG_LOSSLESS, b"\xff\xc3"),
                                  ("jls", JPEG_LS, b"\xff\xf7"), ("j2k", JPEG_2000, b"\xff\x51")):
        code = gdcm_codestream(pixels, syntax, 12)
        code16 = gdcm_codestream(pixels * 16, syntax, 16)

        def make(codestream: bytes = code, syntax: str = syntax, rows: int = 96, columns: int = 96, bits: int = 16,
                 **options) -> Callable[[], bytes]:
            return lambda: compressed_dicom(codestream, syntax, rows, columns, bits, BitsStored=min(bits, 12),
                                            HighBit=min(bits, 12) - 1, **options)

        larger = siz_claiming_size(code, 6000, 6600) if syntax == JPEG_2000 else \
            sof_claiming_size(code, marker, 6000, 6600)
        yield f"valid-{short}.dcm", "ok", f"{syntax} DICOM", make()
        yield f"valid-{short}-monochrome1.dcm", "ok", f"{syntax}, inverted", make(
            PhotometricInterpretation="MONOCHROME1")
        yield f"{short}-larger-than-header.dcm", "error", "codestream says 6000x6600, header 96x96", make(larger)
        yield f"{short}-smaller-than-header.dcm", "error", "codestream of 96x96, header 128x128", make(
            rows=128, columns=128)
        yield f"{short}-truncated-half.dcm", "error", "codestream cut in half", make(code[:len(code) // 2])
        yield f"{short}-no-end-marker.dcm", "error", "codestream without its last 2 bytes", make(code[:-2])
        yield f"{short}-wrong-bit-depth.dcm", "error", "16-bit codestream, 8 bits allocated", make(code16, bits=8)
        yield f"{short}-junk-fragment.dcm", "error", "a frame far larger than 96x96 can need", make(
            fragments=[b"\xab" * 2**20])
        yield f"{short}-over-2048.dcm", "error", "a compressed frame of 2100x2100 declared", make(
            rows=2100, columns=2100)
        yield f"{short}-two-frames.dcm", "error", "an offset table of two frames", lambda c=code, s=syntax: (
            compressed_dicom(c, s, 96, 96, BitsStored=12, HighBit=11).replace(
                struct.pack("<HHI", 0xFFFE, 0xE000, 0), struct.pack("<HHIII", 0xFFFE, 0xE000, 8, 0, 100), 1))
        yield f"{short}-not-encapsulated.dcm", "error", "compressed syntax, native pixel data", lambda s=syntax: (
            _file_meta(s) + _dataset_bytes(dicom_header(96, 96), False) + pixel_element(96 * 96 * 2)
            + pixels.tobytes())
        for label, cut in truncations(compressed_dicom(code, syntax, 96, 96, BitsStored=12, HighBit=11), 4):
            yield f"truncated-{label}.{short}.dcm", "error", "truncated", lambda d=cut: d
        for label, flipped in bit_flips(compressed_dicom(code, syntax, 96, 96, BitsStored=12, HighBit=11), 8,
                                        len(short), 400):
            yield f"bitflip-{label}.{short}.dcm", "any", "random bits flipped", lambda d=flipped: d
    for second in (16384, 30000, 65535):  # issue 24: CharLS sized its buffer from the last: 65535 aborted the server
        yield f"jls-second-frame-{second}.dcm", "error", f"a second JPEG-LS frame header of {second}^2", (
            lambda n=second: jpeg_ls_two_frames(n))
    yield "jls-two-images.dcm", "error", "two JPEG-LS images in one frame", lambda: compressed_dicom(
        gdcm_codestream(pixels, JPEG_LS, 12) * 2, JPEG_LS, 96, 96, BitsStored=12, HighBit=11)
    for label, options in (("precincts-2x2", {"precincts": 1}), ("precincts-4x4", {"precincts": 2}),
                           ("code-blocks-4x4", {"block": 2}), ("levels-13", {"levels": 13})):
        yield f"j2k-{label}-2048.dcm", "error", f"JPEG 2000 bomb of 2048^2: {label}", lambda o=options: (
            compressed_dicom(j2k_codestream(2048, 2048, **o), JPEG_2000, 2048, 2048))
    yield "j2k-precincts-64x64-2048.dcm", "ok", "JPEG 2000 of 2048^2 with 64x64 precincts (accepted)", lambda: (
        compressed_dicom(j2k_codestream(2048, 2048, precincts=6, block=4), JPEG_2000, 2048, 2048))
    corrupt = gdcm_codestream(ct_pixels(256, 4), JPEG_LOSSLESS_SV1, 12)
    yield "jll-cut-end-marker-put-back.dcm", "error", "JPEG Lossless cut in half, EOI re-appended", lambda: (
        compressed_dicom(corrupt[:len(corrupt) // 2] + b"\xff\xd9", JPEG_LOSSLESS_SV1, 256, 256, BitsStored=12,
                         HighBit=11))
    changed = bytearray(corrupt)
    for index in range(400, len(corrupt) - 10, 97):
        changed[index] ^= 0x5A
    yield "jll-bytes-changed.dcm", "error", "JPEG Lossless with bytes changed (decodes with warnings)", lambda: (
        compressed_dicom(bytes(changed), JPEG_LOSSLESS_SV1, 256, 256, BitsStored=12, HighBit=11))
    yield "jll-in-jls-syntax.dcm", "error", "JPEG-LS syntax holding a JPEG Lossless codestream", lambda: (
        compressed_dicom(gdcm_codestream(pixels, JPEG_LOSSLESS_SV1, 12), JPEG_LS, 96, 96, BitsStored=12, HighBit=11))
    yield "j2k-noise-2048.dcm", "ok", "the slowest accepted compressed frame (JPEG 2000 of noise)", lambda: (
        compressed_dicom(gdcm_codestream(noise, JPEG_2000), JPEG_2000, 2048, 2048))


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


# --- zips for /scan ---------------------------------------------------------------------------------


def _local_header(name: bytes, data: bytes = b"", flags: int = 0) -> bytes:
    return struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, flags, 0, 0, 0x21, zlib.crc32(data), len(data), len(data),
                       len(name), 0) + name + data


def _central_header(name: bytes, offset: int, data: bytes = b"") -> bytes:
    return struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 0, 0, 0x21, zlib.crc32(data), len(data), len(data),
                       len(name), 0, 0, 0, 0, 0, offset) + name


def _end_record(entries: int, directory: int, offset: int) -> bytes:
    return struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, entries, entries, directory, offset, 0)


def zip_hiding_entries(count: int) -> bytes:
    """One member, then a directory of `count` 47-byte entries; the end record's offset field holds the end
    signature, so a reader that rfinds the signature lands 16 bytes into the real record and sees nothing."""
    directory = _central_header(b"a", 0) * count
    offset = struct.unpack("<L", b"PK\x05\x06")[0]  # zipfile ignores it: it trusts end - directory size
    return _local_header(b"a") + directory + _end_record(min(count, 0xFFFF), len(directory), offset)


def zip64_decoy(count: int) -> bytes:
    """A Zip64 locator pointing at a decoy record of 1 entry; zipfile reads the real one, 56 bytes before the
    locator, of `count` entries."""
    local = _local_header(b"a")
    decoy = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, 1, 1, 47, 0)
    directory = _central_header(b"a", 0) * count
    real = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, len(directory),
                       len(local) + len(decoy))
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, len(local), 1)
    return local + decoy + directory + real + locator + _end_record(0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF)


def zip64_locator_past_the_end() -> bytes:
    """A one-member zip whose end record says Zip64 and whose locator points at offset 2**64 - 1."""
    local = _local_header(b"a.png", b"x")
    directory = _central_header(b"a.png", 0, b"x")
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, 2**64 - 1, 1)
    return local + directory + locator + _end_record(0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF)


def zip_with_empty_name() -> bytes:
    """A member whose name is empty (zipfile's ZipInfo.is_dir() then indexes filename[-1])."""
    local = _local_header(b"", b"x")
    directory = _central_header(b"", 0, b"x")
    return local + directory + _end_record(1, len(directory), len(local))


def zip_with_bad_utf8_local_name(slice_bytes: bytes) -> bytes:
    """A good slice, and a member whose local header flags its name UTF-8 and holds 0xff (zipfile decodes it
    when the member is opened)."""
    good = _local_header(b"1.png", slice_bytes)
    bad = _local_header(b"\xff2.png", b"x" * 10, flags=0x800)
    directory = _central_header(b"1.png", 0, slice_bytes) + _central_header(b"_2.png", len(good), b"x" * 10)
    return good + bad + directory + _end_record(2, len(directory), len(good) + len(bad))


def small_member_bomb(members: int, member_bytes: int) -> bytes:
    """`members` deflated members of zeros, each just under RATIO_CHECK_BYTES (the per-member ratio check):
    2000 of 1 MiB - 1 declare 2 GB from 2 MB."""
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    stream = packer.compress(b"\0" * member_bytes) + packer.flush()
    crc = zlib.crc32(b"\0" * member_bytes)
    body, directory = io.BytesIO(), io.BytesIO()
    for index in range(members):
        name = f"s{index:04d}.dcm".encode()
        offset = body.tell()
        body.write(struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 8, 0, 0x21, crc, len(stream), member_bytes,
                               len(name), 0) + name + stream)
        directory.write(struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 8, 0, 0x21, crc, len(stream),
                                    member_bytes, len(name), 0, 0, 0, 0, 0, offset) + name)
    return body.getvalue() + directory.getvalue() + _end_record(members, directory.tell(), body.tell())


def hostile_zips() -> dict[str, tuple[str, Callable[[], bytes]]]:
    """name -> (the words its ScanError says, or "ok" for a scan that opens with a note, make)."""
    png = encode(Image.fromarray(slice_image(96)), "PNG")
    return {
        "zip-hiding-1m-entries.zip": ("declares a directory of 47,000,000 bytes", lambda: zip_hiding_entries(10**6)),
        "zip64-decoy-1m-entries.zip": ("Zip64 end record declares a directory of 47,000,000 bytes",
                                       lambda: zip64_decoy(10**6)),
        "zip64-locator-past-end.zip": ("declares a directory of 4,294,967,295 bytes", zip64_locator_past_the_end),
        "zip-empty-name.zip": ("entry number 1 has an empty name", zip_with_empty_name),
        "zip-bad-utf8-local-name.zip": ("ok", lambda: zip_with_bad_utf8_local_name(png)),
        "zip-small-member-bomb.zip": ("a zip bomb", lambda: small_member_bomb(2000, 2**20 - 1)),
        "zip-not-a-zip.zip": ("not a readable zip archive", lambda: b"PK\x03\x04" + b"\0" * 100),
        "zip-truncated.zip": ("not a readable zip archive", lambda: _zip({"1.png": png, "2.png": png})[:-30]),
    }


def write_zips(directory: Path) -> list[Path]:
    """Write every hostile zip (hostile_zips) into `directory` (created); returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, (_, make) in hostile_zips().items():
        paths.append(directory / name)
        paths[-1].write_bytes(make())
    return paths


def write_heavy(directory: Path) -> list[Path]:
    """Write only the HEAVY files of the corpus (the worst of each class) into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, _, _, make in _files():
        if name in HEAVY:
            paths.append(directory / name)
            paths[-1].write_bytes(make())
    return paths


def write_corpus(directory: Path) -> list[HostileFile]:
    """Write every corpus file into `directory` (created); returns them with their expected outcome."""
    directory.mkdir(parents=True, exist_ok=True)
    corpus = []
    for name, expect, why, make in _files():
        path = directory / name
        assert not path.exists(), f"duplicate corpus name {name}"
        path.write_bytes(make())
        corpus.append(HostileFile(path, expect, why))
    return corpus


# --- sending the corpus to a running app -------------------------------------------------------------

HEAVY = ("bomb-deflate-8000x8000.dcm", "bomb-rle-8000x8000.dcm", "rle-6000x6000-zeros.dcm", "black-10mp.png",
         "black-36mp.png", "bomb-9000x9000-zeros.png", "nested-sequence-bomb.dcm", "large-3000x2000.jpg",
         "jpeg-progressive-420-40mp.jpg", "jpeg-progressive-444-40mp.jpg", "jpeg-1000-repeated-scans.jpg",
         "tiff-20000-pages.tif", "gif-1m-frames.gif", "png-rgba-40mp.png", "dicom-40000-header-elements.dcm",
         "rle-one-byte-runs-1024.dcm", "j2k-noise-2048.dcm", "jls-second-frame-65535.dcm",
         "j2k-precincts-2x2-2048.dcm")
"""The worst file of each class, in memory or CPU, to refuse or decode: every client sends all of them at once."""
ENDPOINTS = ("/predict", "/analyze", "/batch")
CLIENT_TIMEOUT_S = 300
"""Seconds a client waits for one request (upload included) before it counts as failed."""
SCAN_REFUSAL = "Cannot classify this scan:"
"""How the app's /scan begins a refusal (a ScanError's message follows)."""
BATCH_FILES = 8
"""Files per /batch request."""
REFUSAL = "Cannot classify this file:"
"""How the app's /predict and /analyze begin a refusal (an ImageError's message follows)."""


def check_answer(endpoint: str, names: list[str], answer) -> list[str]:
    """Problems with one successful answer (empty when it is a proper result)."""
    if endpoint == "/predict":
        ok = isinstance(answer, dict) and answer.get("label") and answer.get("confidences")
        return [] if ok else [f"{endpoints_name(endpoint, names)}: unexpected answer {answer!r:.200}"]
    if endpoint == "/analyze":
        ok = isinstance(answer, (list, tuple)) and len(answer) == 5 and isinstance(answer[4], dict) \
            and "verdict" in answer[4]
        return [] if ok else [f"{endpoints_name(endpoint, names)}: unexpected answer {answer!r:.200}"]
    if endpoint == "/scan":
        ok = isinstance(answer, (list, tuple)) and len(answer) == 2 and isinstance(answer[1], dict) \
            and "slices" in answer[1]
        return [] if ok else [f"/scan {names[0]}: unexpected answer {answer!r:.200}"]
    rows = answer.get("data") if isinstance(answer, dict) else None
    if not isinstance(rows, list) or len(rows) != len(names):
        return [f"{endpoints_name(endpoint, names)}: expected {len(names)} rows, got {answer!r:.300}"]
    problems = []
    for name, row in zip(names, rows):
        if row[1] == "error":
            if not (isinstance(row[-1], str) and len(row[-1]) > 10):
                problems.append(f"/batch {name}: error row without a reason: {row!r:.200}")
        elif not isinstance(row[2], (int, float)) and not (row[2] is None and isinstance(row[-1], str) and row[-1]):
            problems.append(f"/batch {name}: row is neither a prediction, a flag nor an error: {row!r:.200}")
    return problems


def endpoints_name(endpoint: str, names: list[str]) -> str:
    return f"{endpoint} {names[0] if len(names) == 1 else f'{len(names)} files'}"


def check_refusal(endpoint: str, names: list[str], message: str) -> list[str]:
    """Problems with a refusal: it must be the app's clear message (a whole /batch may be refused with a reason)."""
    if endpoint == "/batch":
        clear = len(message) > 15 and "Traceback" not in message
    elif endpoint == "/scan":  # a zip refusal must name the zip problem, not a raw Python error
        clear = message.startswith(SCAN_REFUSAL) and ".zip" in message and "Traceback" not in message
    else:
        clear = message.startswith(REFUSAL) and len(message) > len(REFUSAL) + 5 and "Traceback" not in message
    return [] if clear else [f"{endpoints_name(endpoint, names)}: unclear refusal {message!r:.300}"]


def send_corpus(url: str, corpus: list[Path], clients: int = 16, share: int = 1,
                endpoints: tuple[str, ...] = ENDPOINTS, zips: list[Path] = ()) -> dict:
    """`clients` gradio_client users at once: each sends every HEAVY file, then its part of the corpus
    (every `share`-th file of it), to each endpoint, and every one of `zips` to /scan. Returns counts and
    every problem found."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    heavy = [path for path in corpus if path.name in HEAVY]
    rest = [path for path in corpus if path.name not in HEAVY][::share]
    barrier = threading.Barrier(clients)
    lock = threading.Lock()
    summary = {"requests": 0, "results": 0, "refusals": 0, "problems": []}

    def request(client: Client, endpoint: str, paths: list[Path]) -> None:
        names = [path.name for path in paths]
        files = [handle_file(str(path)) for path in paths]
        try:
            answer = client.predict(files if endpoint in ("/batch", "/scan") else files[0], api_name=endpoint)
            problems, outcome = check_answer(endpoint, names, answer), "results"
        except AppError as exc:
            problems, outcome = check_refusal(endpoint, names, str(exc)), "refusals"
        except Exception as exc:  # a dropped connection, a timeout: the server failed this request
            problems, outcome = [f"{endpoints_name(endpoint, names)}: {type(exc).__name__}: {exc}"[:400]], "problems"
        with lock:
            summary["requests"] += 1
            if outcome != "problems":
                summary[outcome] += 1
            summary["problems"] += problems

    def one_client(index: int) -> None:
        # httpx's default 5 s timeout is shorter than 16 simultaneous 22-47 MB uploads take to reach Gradio on
        # 2 shared cores; a browser waits.
        client = Client(url, verbose=False, download_files=False, httpx_kwargs={"timeout": CLIENT_TIMEOUT_S})
        mine = rest[index::clients]
        barrier.wait(timeout=120)
        for endpoint in endpoints:
            if endpoint == "/batch":
                for paths in (heavy, *(mine[i:i + BATCH_FILES] for i in range(0, len(mine), BATCH_FILES))):
                    if paths:
                        request(client, endpoint, paths)
            else:
                for path in heavy + mine:
                    request(client, endpoint, [path])
        for path in zips:
            request(client, "/scan", [path])
        client.close()

    started = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(one_client, index) for index in range(clients)]:
            future.result()
    summary["seconds"] = round(time.monotonic() - started, 1)
    return summary


def main(argv: list[str] | None = None) -> int:
    """python -m testkit.hostile_corpus --url URL --dir DIR [--clients N] [--share K] [--endpoints ...]: write the
    corpus, send it, print a JSON summary."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--dir", type=Path, required=True, help="where to write the corpus")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--share", type=int, default=1, help="send every K-th non-heavy file (1: all)")
    parser.add_argument("--endpoints", nargs="+", default=list(ENDPOINTS), choices=ENDPOINTS)
    parser.add_argument("--zips", action="store_true", help="also send every hostile zip to /scan from each client")
    args = parser.parse_args(argv)
    corpus = [item.path for item in write_corpus(args.dir)]
    zips = write_zips(args.dir / "zips") if args.zips else []
    print(json.dumps(send_corpus(args.url, corpus, args.clients, args.share, tuple(args.endpoints), zips)),
          flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
