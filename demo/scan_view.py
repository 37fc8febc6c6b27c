"""What the "Whole scan" tab shows of a ScanResult: the verdict, a note, the curve along the body, the top slices.

The API (/scan) gets the verdict and the plain data only; the plot and the Grad-CAM
pictures are the page's, so an API call costs the classification and nothing more.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gradio as gr
import pandas as pd

from demo import rendering, texts
from demo.uploads import unique_png
from lung_classifier import ImageError, LungClassifier, ScanResult, ScanSlice

UPLOAD_LABEL = "CT scan: one .zip of its slices, or the slices' files (DICOM or images)"
NO_FILES = "No files received: upload one .zip of a scan's slices, or the slices' files."
PROGRESS = gr.Progress()
"""Gradio's marker: a handler parameter defaulting to it receives the request's progress bar."""
PLOTTED = ("Malignant", "Benign")
"""The classes whose probability the page plots along the scan."""
COLOURS = {"Malignant": "#d62728", "Benign": "#ff7f0e"}
PROBABILITY = "probability"
CLASS = "class"


def received(paths: list[str] | None) -> list[str]:
    """The request's uploads, or a gr.Error saying what to send."""
    if not paths:
        raise gr.Error(NO_FILES, print_exception=False)
    return list(paths)


def analyze(classifier: LungClassifier, paths: list[str], *, explain: bool = False,
            progress: gr.Progress | None = None) -> tuple[ScanResult, list[tuple[str, str]]]:
    """The scan's result (a refusal as a gr.Error that says what to send) and, with `explain`, its gallery."""

    def report(done: int, total: int) -> None:
        progress((done, total), desc="Classifying the slices", unit="slices")

    try:
        result = classifier.analyze_scan(paths, explain=explain, progress=report if progress else None)
        return result, (gallery(result) if explain else [])
    except ImageError as exc:  # ScanError included
        raise gr.Error(f"Cannot classify this scan: {exc}", print_exception=False) from None


def headers(labels: Sequence[str]) -> list[str]:
    return ["slice", "position (mm)", "file", "prediction", *labels, "note"]


def table(result: ScanResult) -> list[list[Any]]:
    """One row per slice, in body order: where it is, what the model says of it, and why it is flagged."""
    return [[piece.index + 1, piece.position, piece.name, piece.analysis.verdict,
             *(round(p, 4) for p in piece.analysis.probabilities.values()), piece.analysis.ood_reason or ""]
            for piece in result.slices]


def plot(result: ScanResult) -> gr.LinePlot:
    """The curve, on an x axis named after what it is (positions where known, else slice numbers)."""
    frame = curve(result)
    return gr.LinePlot(value=frame, x=frame.columns[0])


def axis(result: ScanResult) -> str:
    """The plot's x axis: the slice position along the body where every slice has one, else its index."""
    known = result.slices and all(piece.position is not None for piece in result.slices)
    return "position (mm)" if known else "slice"


def curve(result: ScanResult) -> pd.DataFrame:
    """P(Malignant) and P(Benign) of each slice against its place in the scan, one row per slice and class."""
    x = axis(result)
    rows = [{x: piece.position if x == "position (mm)" else piece.index + 1, CLASS: label,
             PROBABILITY: piece.analysis.probabilities[label]}
            for piece in result.slices for label in PLOTTED]
    return pd.DataFrame(rows, columns=[x, CLASS, PROBABILITY])


def note(result: ScanResult, pictures: int | None = None) -> str:
    """The verdict in words, the slices that drove it, what the reader skipped, and any overlay not shown."""
    count = len(result.slices)
    if result.out_of_distribution:
        text = texts.flagged_note("This scan", result.ood_reason)
    else:
        confidence = result.probabilities[result.label]
        text = (f"Scan label **{result.label}** (model confidence {confidence:.0%}) from {count} slices. "
                "The plot shows each slice's probabilities along the scan; the slices that drove the label are "
                "below, with the regions that drove each one's label.")
    if result.top:
        names = ", ".join(f"{result.slices[i].index + 1} ({result.slices[i].name})" for i in result.top)
        which = "least like the training slices" if result.out_of_distribution else "that contributed most"
        text += f"\n\nSlices {which}: {names}."
    lines = list(result.notes)
    if pictures is not None and pictures < len(result.top):
        lines.append(f"the overlay of {len(result.top) - pictures} of these slices is not shown: files of the same "
                     "name could not all be read; give each slice file its own name")
    if lines:
        text += "\n\n" + "\n".join(f"- {line}" for line in lines)
    return text


def caption(piece: ScanSlice) -> str:
    """What a gallery picture says: the slice's number and result first, its file name last."""
    where = "" if piece.position is None else f", {piece.position:.1f} mm"
    return (f"Slice {piece.index + 1}: {piece.analysis.verdict}, P(Malignant) "
            f"{piece.analysis.probabilities['Malignant']:.0%} ({piece.name}{where})")


def gallery(result: ScanResult) -> list[tuple[str, str]]:
    """The top slices, each beside its Grad-CAM overlay, as PNG files of this request alone, with captions."""
    return [(unique_png(rendering.overlay(result.images[i], result.heatmaps[i]), f"slice-{result.slices[i].index}.png"),
             caption(result.slices[i])) for i in result.top]
