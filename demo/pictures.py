"""The pictures the page shows, in uint8 and at display size, whatever the input's size.

A full-resolution float colour map of a large slice costs gigabytes; here the heatmap is
sampled down to display size before it is coloured, through a 256-entry colour table.
"""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont

DISPLAY_MAX = 1024
"""Longest side, in pixels, of each picture the page shows."""
GAP = 8
"""White pixels between the slice and its heatmap overlay."""
JET = np.round(colormaps["jet"](np.arange(256))[:, :3] * 255).astype(np.uint8)
"""The heatmap colours: 256 x RGB, uint8."""
LEGEND_TEXT = ("low", "influence on the label", "high")


def display_size(height: int, width: int) -> tuple[int, int]:
    """(height, width) scaled down, never up, to at most DISPLAY_MAX on the long side."""
    scale = min(1.0, DISPLAY_MAX / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def preview(rgb: np.ndarray) -> np.ndarray:
    """The decoded slice as the model receives it, at display size."""
    height, width = display_size(*rgb.shape[:2])
    if (height, width) == rgb.shape[:2]:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.Resampling.BOX))


def overlay(rgb: np.ndarray, heatmap: np.ndarray) -> np.ndarray:
    """The slice beside the slice with its Grad-CAM heatmap blended in (jet colours), uint8."""
    shown = preview(rgb)
    height, width = shown.shape[:2]
    step = max(1, min(heatmap.shape[0] // height, heatmap.shape[1] // width))  # a view: no full-size copy
    small = Image.fromarray(np.asarray(heatmap[::step, ::step], np.float32))
    levels = np.asarray(small.resize((width, height), Image.Resampling.BILINEAR))
    colours = JET[np.clip(np.rint(levels * 255), 0, 255).astype(np.uint8)]
    blended = ((6 * shown.astype(np.uint16) + 4 * colours.astype(np.uint16) + 5) // 10).astype(np.uint8)
    gap = np.full((height, GAP, 3), 255, np.uint8)
    return with_legend(np.concatenate([shown, gap, blended], axis=1), width + GAP)


def with_legend(picture: np.ndarray, heatmap_left: int) -> np.ndarray:
    """The picture with a white band below: the heatmap's colour key under its half, "low" to "high".

    Drawn into the picture, so the page, the scan's gallery and a downloaded PNG all carry it.
    """
    width = picture.shape[1]
    panel = width - heatmap_left
    font_size = max(11, min(18, panel // 28))
    font = ImageFont.load_default(size=font_size)
    bar = max(8, font_size)
    band = np.full((bar + font_size + 12, width, 3), 255, np.uint8)
    band[4:4 + bar, heatmap_left:] = JET[np.linspace(0, 255, panel).astype(np.uint8)][None, :, :]
    key = Image.fromarray(band)  # drawn on the band alone: the picture is copied once, below
    draw = ImageDraw.Draw(key)
    low, middle, high = LEGEND_TEXT
    y = 6 + bar
    draw.text((heatmap_left, y), low, fill=(0, 0, 0), font=font)
    draw.text((heatmap_left + panel // 2, y), middle, fill=(0, 0, 0), font=font, anchor="ma")
    draw.text((width, y), high, fill=(0, 0, 0), font=font, anchor="ra")
    return np.concatenate([picture, np.asarray(key)], axis=0)


def legend_height(width: int) -> int:
    """Rows the legend adds under an overlay whose heatmap half is `width` pixels wide."""
    font_size = max(11, min(18, width // 28))
    return max(8, font_size) + font_size + 12
