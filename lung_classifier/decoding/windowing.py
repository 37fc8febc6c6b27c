"""How the training slices were rendered, so other inputs (DICOM) can be rendered the same way.

IQ-OTH/NCCD slices were exported from DICOM (Siemens SOMATOM, 120 kV, 1 mm) as windowed
greyscale JPEGs at window width 350-1200 HU and centre 50-600 HU (the dataset's own
description), not in a lung window: the lungs are near black. A DICOM slice rendered in
the standard lung window looks nothing like them, so the DICOM path renders at a window
inside the training range. The package config records this, and the decoder reads it.
"""

from __future__ import annotations

from typing import Any

DICOM_WINDOW = (350.0, 900.0)
"""(centre, width) in HU for DICOM input: the middle of the training slices' window range."""

TRAINING_RANGE: dict[str, Any] = {
    "window_width_hu": [350, 1200],
    "window_centre_hu": [50, 600],
    "dicom_window": {"centre": DICOM_WINDOW[0], "width": DICOM_WINDOW[1]},
}
"""The IQ-OTH/NCCD export range every training rendering lies in, and the window DICOM input is rendered at.
Training adds, per source, how its slices were rendered."""


def dicom_window(config: dict[str, Any]) -> tuple[float, float]:
    """The (centre, width) a package asks DICOM input to be rendered at (a required config field)."""
    window = config["rendering"]["dicom_window"]
    return float(window["centre"]), float(window["width"])

