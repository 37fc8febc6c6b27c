"""What the "Whole scan" tab shows of a ScanResult: the verdict, a note, the curve along the body, the top slices.

The API (/scan) gets the verdict and the plain data only; the plot and the Grad-CAM
pictures are the page's, so an API call costs the classification and nothing more.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import pandas as pd
from gradio.components.label import LabelConfidence, LabelData

from demo import rendering, texts
from demo.uploads import unique_png
from lung_classifier import ImageError
from lung_classifier.classifier import OOD_NOTICE

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


def analyze(classifier: Any, paths: list[str], *, explain: bool = False,
            progress: gr.Progress | None = None) -> tuple[Any, list[tuple[str, str]]]:
    """The scan's result (errors as a gr.Error that says what to send) and, with `explain`, its gallery."""
    source = paths[0] if len(paths) == 1 and zipfile.is_zipfile(paths[0]) else paths

    def report(done: int, total: int) -> None:
        progress((done, total), desc="Classifying the slices", unit="slices")

    try:
        result = classifier.analyze_scan(source, explain=explain, progress=report if progress else None)
    except ImageError as exc:
        raise gr.Error(f"Cannot classify this scan: {exc}", print_exception=False) from None
    return result, (gallery(result, _pixels(classifier, source, result)) if explain else [])


def _pixels(classifier: Any, source: str | list[str], result: Any) -> dict[int, np.ndarray]:
    if isinstance(source, str):
        with zipfile.ZipFile(source) as archive:
            return {i: classifier.read(archive.read(result.slices[i].name)).rgb for i in result.top}
    by_name = {Path(path).name: path for path in source}
    return {i: classifier.read(by_name[result.slices[i].name]).rgb for i in result.top}


def label_value(result: Any) -> LabelData:
    """The scan's verdict (its label, or the notice) with its probabilities, as gr.Label shows them."""
    probabilities = result.probabilities or {}
    confidences = [LabelConfidence(label=label, confidence=p)
                   for label, p in sorted(probabilities.items(), key=lambda item: -item[1])]
    return LabelData(label=result.verdict, confidences=confidences)


def headers(labels: Sequence[str]) -> list[str]:
    return ["slice", "position (mm)", "file", "prediction", *labels, "note"]


def table(result: Any) -> list[list[Any]]:
    """One row per slice, in body order: where it is, what the model says of it, and why it is flagged."""
    return [[piece.index, piece.position, piece.name, piece.analysis.verdict,
             *(round(p, 4) for p in piece.analysis.probabilities.values()), piece.analysis.ood_reason or ""]
            for piece in result.slices]


def plot(result: Any) -> gr.LinePlot:
    """The curve, on an x axis named after what it is (positions where known, else slice numbers)."""
    frame = curve(result)
    return gr.LinePlot(value=frame, x=frame.columns[0])


def axis(result: Any) -> str:
    """The plot's x axis: the slice position along the body where every slice has one, else its index."""
    known = result.slices and all(piece.position is not None for piece in result.slices)
    return "position (mm)" if known else "slice"


def curve(result: Any) -> pd.DataFrame:
    """P(Malignant) and P(Benign) of each slice against its place in the scan, one row per slice and class."""
    x = axis(result)
    rows = [{x: piece.position if x == "position (mm)" else piece.index, CLASS: label,
             PROBABILITY: piece.analysis.probabilities[label]}
            for piece in result.slices for label in PLOTTED]
    return pd.DataFrame(rows, columns=[x, CLASS, PROBABILITY])


def note(result: Any) -> str:
    """The verdict in words, the slices that drove it, and what the reader skipped."""
    count = len(result.slices)
    if result.out_of_distribution:
        text = (f"### ⚠️ {OOD_NOTICE}\nThis scan is {result.ood_reason}, so the model's probabilities are "
                f"**not meaningful** for it. The model expects {texts.WHAT_THE_MODEL_EXPECTS}.")
    else:
        confidence = result.probabilities[result.label]
        text = (f"Scan label **{result.label}** (model confidence {confidence:.0%}) from {count} slices. "
                "The plot shows each slice's probabilities along the scan; the slices that drove the label are "
                "below, with the regions that drove each one's label.")
    if result.top:
        names = ", ".join(f"#{result.slices[i].index} ({result.slices[i].name})" for i in result.top)
        text += f"\n\nSlices that contributed most: {names}."
    if result.notes:
        text += "\n\n" + "\n".join(f"- {line}" for line in result.notes)
    return text


def caption(piece: Any) -> str:
    where = "" if piece.position is None else f", {piece.position:.1f} mm"
    return (f"#{piece.index} {piece.name}{where}: {piece.analysis.verdict}, "
            f"P(Malignant) {piece.analysis.probabilities['Malignant']:.0%}")


def gallery(result: Any, images: dict[int, np.ndarray]) -> list[tuple[str, str]]:
    """The top slices, each beside its Grad-CAM overlay, as PNG files of this request alone, with captions."""
    return [(unique_png(rendering.overlay(images[i], result.heatmaps[i]), f"slice-{result.slices[i].index}.png"),
             caption(result.slices[i])) for i in result.top if i in images and i in result.heatmaps]
