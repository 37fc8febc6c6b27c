"""What a JPEG Lossless, JPEG-LS or JPEG 2000 codestream makes its decoder allocate, read from its markers alone.

GDCM's decoders trust the codestream, not the DICOM header, and size their buffers from
it, so every marker that sizes something is read here before a byte is decoded:

- **JPEG Lossless and JPEG-LS**: the whole marker sequence from SOI to EOI, entropy-coded
  data skipped (JPEG stuffs 0xFF with 0x00; JPEG-LS stuffs a zero bit, so 0xFF followed
  by a byte under 0x80 is data). Exactly one frame header and one image: CharLS sizes its
  output from the *last* frame header it meets (a second SOF55 of 65535 x 65535 after a
  512 x 512 one made it throw ``std::length_error`` and abort the process), so a second
  frame header, a second SOI, anything after EOI, a frame whose height comes later (DNL,
  or a zero size) and JPEG-LS extension segments other than preset coding parameters
  (mapping tables, oversize dimensions) are refused.
- **JPEG 2000**: SIZ, and the coding style (COD, COC) of the main header and of every
  tile-part header, tile part by tile part (SOT's length). OpenJPEG builds a structure
  for every precinct and code-block of every tile before it decodes one (measured: about
  1.6 KiB per precinct, 230 bytes per code-block), so a 166-byte codestream declaring
  2 x 2 precincts on a 2048 x 2048 image made it allocate 2.3 GiB. Tiles, resolution
  levels, quality layers, precincts and code-blocks are counted and capped, and every JPEG
  2000 decode reserves what the most precincts and code-blocks allowed cost (``J2K_STRUCTURE_BYTES``).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from .limits import ImageError

MAX_MARKERS = 256
"""Most marker segments a JPEG Lossless or JPEG-LS frame may hold (GDCM writes 4 or 5)."""
MAX_J2K_TILES = 64
"""Most JPEG 2000 tiles: DICOM encoders write one; tiny tiles multiply the decoder's per-tile cost."""
MAX_J2K_TILE_PARTS = 256
"""Most JPEG 2000 tile parts walked (a tile may be split by resolution or layer)."""
MAX_J2K_LAYERS = 64
"""Most JPEG 2000 quality layers: each adds packets the decoder walks."""
MAX_J2K_LEVELS = 12
"""Most wavelet decomposition levels (encoders use 5 or 6; 11 already halve 2048 to 1)."""
MAX_J2K_PRECINCTS = 4096
"""Most precincts over all tiles and resolutions (128 x 128 precincts on 2048^2: under 400; 2 x 2: 1.4 million)."""
MAX_J2K_CODE_BLOCKS = 32768
"""Most code-blocks over all tiles, resolutions and sub-bands (64 x 64 blocks on 2048^2: about 1,400)."""
J2K_BYTES_PER_PRECINCT = 2048
"""OpenJPEG's structures per precinct, its sub-bands and tag trees (measured: 2.2 GiB for 1.4 million)."""
J2K_BYTES_PER_CODE_BLOCK = 256
"""OpenJPEG's structure per code-block (measured: 78 MiB for 350,000 of 4 x 4)."""
J2K_STRUCTURE_BYTES = MAX_J2K_PRECINCTS * J2K_BYTES_PER_PRECINCT + MAX_J2K_CODE_BLOCKS * J2K_BYTES_PER_CODE_BLOCK
"""The most the capped precincts and code-blocks may cost: every JPEG 2000 decode reserves it (16 MiB)."""
_JPEG_FRAMES = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
"""After a JPEG scan's data: 0xFF then 0x00 (stuffing), RSTn or 0xFF (fill) is data; anything else a marker."""
_JPEG_LS_MARKER = re.compile(rb"\xff[\x80-\xcf\xd8-\xfe]")
"""After a JPEG-LS scan's data: 0xFF then a byte under 0x80 is data (a stuffed bit); RSTn stay inside the scan."""


@dataclass(frozen=True)
class Codestream:
    """What the codestream's own headers say (the decoder allocates from this)."""

    width: int
    height: int
    components: int
    precision: int
    tiles: int = 1
    layers: int = 1
    precincts: int = 0
    code_blocks: int = 0


def jpeg_frame(codestream: bytes, wanted: int, kind: str, name: str) -> Codestream:
    """The one frame header of a JPEG Lossless (SOF3) or JPEG-LS (SOF55) image, after walking every marker."""
    if codestream[:2] != b"\xff\xd8":
        raise ImageError(f"{name}: its {kind} frame does not start with a JPEG SOI marker (damaged file)")
    skip_data = _JPEG_LS_MARKER if wanted == 0xF7 else _JPEG_MARKER
    frame: Codestream | None = None
    position, markers = 2, 0
    while True:
        while position < len(codestream) and codestream[position] == 0xFF and position + 1 < len(codestream) \
                and codestream[position + 1] == 0xFF:
            position += 1  # fill bytes
        if position + 2 > len(codestream) or codestream[position] != 0xFF:
            raise ImageError(f"{name}: its {kind} frame does not end with an end-of-image marker (truncated or "
                             "damaged file): export the slice again")
        marker = codestream[position + 1]
        if marker == 0xD9:
            break
        markers += 1
        if markers > MAX_MARKERS:
            raise ImageError(f"{name}: its {kind} codestream has more than {MAX_MARKERS} marker segments "
                             "(damaged or crafted file)")
        if marker == 0xD8:
            raise ImageError(f"{name}: its {kind} frame holds a second image (a second SOI marker): damaged or "
                             "crafted file")
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            position += 2
            continue
        if position + 4 > len(codestream):
            raise ImageError(f"{name}: its {kind} codestream is truncated: export the slice again")
        length = struct.unpack(">H", codestream[position + 2:position + 4])[0]
        body = codestream[position + 4:position + 2 + length]
        if length < 2 or len(body) < length - 2:
            raise ImageError(f"{name}: its {kind} codestream has a damaged or truncated marker segment")
        if marker in _JPEG_FRAMES:
            if marker != wanted:
                found = "SOF55 (JPEG-LS)" if marker == 0xF7 else f"SOF{marker - 0xC0}"
                raise ImageError(f"{name}: its transfer syntax says {kind} but its codestream's frame is {found} "
                                 "(damaged or crafted file)")
            if frame is not None:
                raise ImageError(f"{name}: its {kind} codestream has more than one frame header (the decoder would "
                                 "size its buffer from the last one): damaged or crafted file")
            frame = _frame_header(body, kind, name)
        elif marker == 0xDC:
            raise ImageError(f"{name}: its {kind} frame defines its height after the image data (DNL marker), "
                             "which is not accepted: export the slice again")
        elif marker == 0xF8 and wanted == 0xF7 and (not body or body[0] != 1):
            raise ImageError(f"{name}: its JPEG-LS codestream has an extension segment of type "
                             f"{body[0] if body else 'none'} (mapping table or oversize image), which is not "
                             "accepted: export the slice again")
        position += 2 + length
        if marker == 0xDA:
            if frame is None:
                raise ImageError(f"{name}: its {kind} scan comes before its frame header (damaged file)")
            found = skip_data.search(codestream, position)
            position = found.start() if found else len(codestream)
    end = position + 2
    if end < len(codestream) and codestream[end:] != b"\0":  # one padding byte to an even length
        raise ImageError(f"{name}: its {kind} frame has {len(codestream) - end:,} bytes after its end-of-image "
                         "marker (a second image, or a damaged file): export the slice again")
    if frame is None:
        raise ImageError(f"{name}: its {kind} codestream has no frame header (damaged or truncated file)")
    return frame


def _frame_header(body: bytes, kind: str, name: str) -> Codestream:
    if len(body) < 6:
        raise ImageError(f"{name}: its {kind} frame header is truncated")
    precision, height, width, components = struct.unpack(">BHHB", body[:6])
    if not (width and height):
        raise ImageError(f"{name}: its {kind} frame header declares {width}x{height} pixels (a size given "
                         "elsewhere is not accepted): damaged or crafted file")
    return Codestream(width, height, components, precision)


@dataclass
class _Style:
    """A JPEG 2000 coding style: decomposition levels, code-block size and precinct size exponents."""

    levels: int = 0
    block: tuple[int, int] = (6, 6)
    precincts: tuple[tuple[int, int], ...] = ()  # per resolution, (x, y) exponents; () means 2^15

    def counts(self, width: int, height: int) -> tuple[int, int]:
        """Upper bounds of the precincts and code-blocks of one component of a tile of width x height."""
        precincts = blocks = 0
        for resolution in range(self.levels + 1):
            shift = self.levels - resolution
            rw, rh = _ceil_div(width, 1 << shift) + 1, _ceil_div(height, 1 << shift) + 1
            px, py = self.precincts[resolution] if self.precincts else (15, 15)
            precincts += (_ceil_div(rw, 1 << px) + 1) * (_ceil_div(rh, 1 << py) + 1)
            bands, bw, bh = (1, rw, rh) if resolution == 0 else (3, _ceil_div(rw, 2) + 1, _ceil_div(rh, 2) + 1)
            bx = min(self.block[0], px - (resolution > 0))
            by = min(self.block[1], py - (resolution > 0))
            blocks += bands * (_ceil_div(bw, 1 << max(bx, 0)) + 1) * (_ceil_div(bh, 1 << max(by, 0)) + 1)
        return precincts, blocks


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def j2k_header(codestream: bytes, name: str) -> Codestream:
    """JPEG 2000's SIZ, and the precincts and code-blocks that every tile's coding style makes the decoder build."""
    if codestream[:4] != b"\xff\x4f\xff\x51":
        raise ImageError(f"{name}: its JPEG 2000 frame does not start with SOC and SIZ (a JP2 file, or damaged)")
    if len(codestream) < 45:
        raise ImageError(f"{name}: its JPEG 2000 header is truncated")
    length, _, x, y, x0, y0, tile_x, tile_y, tile_x0, tile_y0, components = struct.unpack(
        ">HHIIIIIIIIH", codestream[4:42])
    if not components or len(codestream) < 42 + 3 * components or not (tile_x and tile_y) or x <= x0 or y <= y0 \
            or tile_x0 > x0 or tile_y0 > y0:
        raise ImageError(f"{name}: its JPEG 2000 header is damaged or truncated")
    depths = [codestream[42 + 3 * i] for i in range(components)]
    sampling = [codestream[43 + 3 * i:45 + 3 * i] for i in range(components)]
    if any(d != depths[0] for d in depths) or any(s != b"\1\1" for s in sampling):
        raise ImageError(f"{name}: its JPEG 2000 components differ in depth or sampling (not a greyscale slice)")
    across, down = _ceil_div(x - tile_x0, tile_x), _ceil_div(y - tile_y0, tile_y)
    tiles = across * down
    if tiles > MAX_J2K_TILES:
        raise ImageError(f"{name}: its JPEG 2000 codestream has {tiles:,} tiles (at most {MAX_J2K_TILES}): damaged "
                         "or crafted file")
    main, layers, position = _Style(), 1, 4 + length
    position, layers = _coding_styles(codestream, position, main, layers, name)
    styles = {tile: main for tile in range(tiles)}
    parts = 0
    while codestream[position:position + 2] == b"\xff\x90":  # SOT: one tile part
        parts += 1
        if parts > MAX_J2K_TILE_PARTS or position + 12 > len(codestream):
            raise ImageError(f"{name}: its JPEG 2000 codestream has more than {MAX_J2K_TILE_PARTS} tile parts, or "
                             "a truncated one: damaged or crafted file")
        tile, part_length = struct.unpack(">HI", codestream[position + 4:position + 10])
        if tile >= tiles:
            raise ImageError(f"{name}: its JPEG 2000 codestream has a tile part for tile {tile} of {tiles}")
        style = styles[tile] = _Style(styles[tile].levels, styles[tile].block, styles[tile].precincts)
        _, layers = _coding_styles(codestream, position + 12, style, layers, name)
        if part_length < 14:
            break  # 0: the last tile part runs to the end of the codestream
        position += part_length
    precincts = blocks = 0
    for tile, style in styles.items():
        column, row = tile % across, tile // across
        width = min(tile_x0 + (column + 1) * tile_x, x) - max(tile_x0 + column * tile_x, x0)
        height = min(tile_y0 + (row + 1) * tile_y, y) - max(tile_y0 + row * tile_y, y0)
        counted = style.counts(width, height)
        precincts += counted[0] * components
        blocks += counted[1] * components
    header = Codestream(x - x0, y - y0, components, (depths[0] & 0x7F) + 1, tiles, layers, precincts, blocks)
    if layers > MAX_J2K_LAYERS or precincts > MAX_J2K_PRECINCTS or blocks > MAX_J2K_CODE_BLOCKS:
        raise ImageError(f"{name}: its JPEG 2000 codestream declares {layers:,} quality layers, {precincts:,} "
                         f"precincts and {blocks:,} code-blocks (at most {MAX_J2K_LAYERS}, {MAX_J2K_PRECINCTS:,} "
                         f"and {MAX_J2K_CODE_BLOCKS:,}): damaged or crafted file, export the slice again")
    return header


def _coding_styles(codestream: bytes, position: int, style: _Style, layers: int, name: str) -> tuple[int, int]:
    """Read a (main or tile-part) header's markers up to SOT, SOD or EOC, applying COD and COC to `style`."""
    for _ in range(MAX_MARKERS):
        marker = codestream[position:position + 2]
        if len(marker) < 2 or marker in (b"\xff\x90", b"\xff\x93", b"\xff\xd9"):
            return position, layers
        if marker[0] != 0xFF or position + 4 > len(codestream):
            raise ImageError(f"{name}: its JPEG 2000 header is damaged (no marker where one was due)")
        length = struct.unpack(">H", codestream[position + 2:position + 4])[0]
        body = codestream[position + 4:position + 2 + length]
        if length < 2 or len(body) < length - 2:
            raise ImageError(f"{name}: its JPEG 2000 header has a damaged or truncated marker segment")
        if marker == b"\xff\x52":  # COD: Scod, progression, layers, MCT, then SPcod
            if len(body) < 9:
                raise ImageError(f"{name}: its JPEG 2000 coding style (COD) is truncated")
            layers = struct.unpack(">H", body[2:4])[0]
            _apply(style, body[0], body[5:], name)
        elif marker == b"\xff\x53":  # COC: component (one byte: fewer than 257 components), Scoc, then SPcoc
            if len(body) < 7:
                raise ImageError(f"{name}: its JPEG 2000 component coding style (COC) is truncated")
            _apply(style, body[1], body[2:], name)
        position += 2 + length
    raise ImageError(f"{name}: its JPEG 2000 header has more than {MAX_MARKERS} marker segments (crafted file)")


def _apply(style: _Style, flags: int, spcod: bytes, name: str) -> None:
    """SPcod/SPcoc: levels, code-block width and height exponents (-2), style, transform, precinct sizes."""
    levels = spcod[0]
    block = (spcod[1] + 2, spcod[2] + 2)
    if levels > MAX_J2K_LEVELS or max(block) > 10 or sum(block) > 12:
        raise ImageError(f"{name}: its JPEG 2000 coding style has {levels} decomposition levels (at most "
                         f"{MAX_J2K_LEVELS}) or code-blocks of 2^{block[0]} x 2^{block[1]} (invalid): damaged or "
                         "crafted file")
    precincts: tuple[tuple[int, int], ...] = ()
    if flags & 1:
        sizes = spcod[5:6 + levels]
        if len(sizes) < levels + 1:
            raise ImageError(f"{name}: its JPEG 2000 coding style lists fewer precinct sizes than resolutions")
        precincts = tuple((size & 15, size >> 4) for size in sizes)
    style.levels, style.block, style.precincts = levels, block, precincts
