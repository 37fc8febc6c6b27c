"""What the "Whole scan" tab shows of a ScanResult: the verdict, a note, the curve along the body, the top slices.

The API (/scan) gets the verdict and the plain data only; the plot and the Grad-CAM
pictures are the page's, so an API call costs the classification and nothing more.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gradio as gr
import pandas as pd

from demo import pictures, texts
from demo.uploads import unique_png
from lung_classifier import ImageError, LungClassifier, PackageError, ScanError, ScanResult, ScanSlice

UPLOAD_LABEL = "CT scan: one .zip of its slices, or the slices' files (DICOM or images)"
NO_FILES = "No files received: upload one .zip of a scan's slices, or the slices' files."
PROGRESS = gr.Progress()
"""Gradio's marker: a handler parameter defaulting to it receives the request's progress bar."""
COLOURS = {"Normal": "#2ca02c", "Benign": "#ff7f0e", "Malignant": "#d62728",
           "OOD score": "#7f7f7f", "threshold": "#c7c7c7"}
"""Class colours, and the greys of a scan with no diagnosis (its curve is the OOD score, not a finding)."""
PROBABILITY = "probability"
OOD_SCORE = "OOD score"
CLASS = "class"
PLOT_LABEL = "Each slice's probabilities along the scan"
FLAGGED_PLOT_LABEL = (f"No diagnosis: class probabilities are {texts.NOT_MEANINGFUL} for this scan. "
                      "Shown instead: each slice's OOD score (grey) and the threshold above which a slice is flagged")
REFUSED = (ImageError, ScanError, PackageError)
"""The library's refusals of an upload or a package (ScanError is an ImageError; listed for the reader)."""


def received(paths: list[str] | str | None) -> list[str]:
    """The request's uploads (one path or several), or a gr.Error saying what to send."""
    if not paths:
        raise gr.Error(NO_FILES, print_exception=False)
    return [paths] if isinstance(paths, str) else list(paths)


def analyze(classifier: LungClassifier, paths: list[str], *, explain: bool = False,
            progress: gr.Progress | None = None) -> tuple[ScanResult, list[tuple[str, str]]]:
    """The scan's result (a refusal as a gr.Error that says what to send) and, with `explain`, its gallery."""

    def report(done: int, total: int) -> None:
        progress((done, total), desc="Classifying the slices", unit="slices")

    try:  # `is not None`: a gr.Progress tracking nothing has length 0, so it is falsy
        result = classifier.analyze_scan(paths, explain=explain, progress=report if progress is not None else None)
        return result, (gallery(result) if explain else [])
    except REFUSED as exc:
        raise gr.Error(f"Cannot classify this scan: {exc}", print_exception=False) from None


def headers(labels: Sequence[str]) -> list[str]:
    return ["slice", "position (mm)", "file", "prediction", *labels, "note"]


def table(result: ScanResult) -> list[list[Any]]:
    """One row per slice, in body order: where it is, what the model says of it, and why it is flagged
    (a flagged slice's probability cells stay empty: they are not meaningful)."""
    rows = []
    for piece in result.slices:
        analysis = piece.analysis
        cells = [None] * len(analysis.probabilities) if analysis.out_of_distribution else [
            round(p, 4) for p in analysis.probabilities.values()]
        said = analysis.ood_reason or f"{analysis.screening}; {analysis.answered_as}"
        rows.append([piece.number, piece.position, piece.name, analysis.verdict, *cells, said])
    return rows


def plot(result: ScanResult) -> gr.LinePlot:
    """The curve, on an x axis named after what it is (positions where known, else slice numbers); for a scan
    with no diagnosis, greyed: the OOD score against its threshold, under a label that says so."""
    frame = curve(result)
    x = frame.columns[0]
    greyed = nothing_answered(result)
    return gr.LinePlot(value=frame, x=x, y=OOD_SCORE if greyed else PROBABILITY, color=CLASS,
                       y_lim=None if greyed else [0, 1], x_axis_format="d" if x == "slice" else None,
                       label=FLAGGED_PLOT_LABEL if greyed else PLOT_LABEL)


def nothing_answered(result: ScanResult) -> bool:
    """Whether no slice of the scan was answered: then its curve is the OOD score, not probabilities (a scan held
    back from Normal by a few slices still plots its answered slices' probabilities)."""
    return all(piece.analysis.out_of_distribution for piece in result.slices)


def cleared(labels: Sequence[str]) -> tuple[None, str, str, gr.LinePlot, list, pd.DataFrame]:
    """The tab's outputs before any scan: no verdict, no note, an empty curve under its usual label, no slices,
    an empty table. Shown as soon as the upload changes, so no verdict stands beside files it was not given."""
    empty = pd.DataFrame(columns=["slice", CLASS, PROBABILITY])
    return (None, "", "", gr.LinePlot(value=empty, x="slice", y=PROBABILITY, color=CLASS, y_lim=[0, 1],
                                      x_axis_format="d", label=PLOT_LABEL),
            [], pd.DataFrame(columns=headers(labels)))


def axis(result: ScanResult) -> str:
    """The plot's x axis: the slice position along the body where every slice has one, else its number."""
    known = result.slices and all(piece.position is not None for piece in result.slices)
    return "position (mm)" if known else "slice"


def curve(result: ScanResult) -> pd.DataFrame:
    """One row per slice and series against its place in the scan: each class's probability (in-distribution
    slices only), or, for a scan with no diagnosis, the OOD score and the threshold."""
    x = axis(result)

    def where(piece: ScanSlice) -> float | int:
        return piece.position if x == "position (mm)" else piece.number

    if nothing_answered(result):
        threshold = next((p.analysis.ood_threshold for p in result.slices if p.analysis.ood_threshold), None)
        rows = [{x: where(piece), CLASS: OOD_SCORE, OOD_SCORE: piece.analysis.ood_score} for piece in result.slices]
        if threshold is not None:
            rows += [{x: where(piece), CLASS: "threshold", OOD_SCORE: threshold} for piece in result.slices]
        return pd.DataFrame(rows, columns=[x, CLASS, OOD_SCORE])
    rows = [{x: where(piece), CLASS: label, PROBABILITY: p}
            for piece in result.slices if not piece.analysis.out_of_distribution
            for label, p in piece.analysis.probabilities.items()]
    return pd.DataFrame(rows, columns=[x, CLASS, PROBABILITY])


def note(result: ScanResult, shown: int | None = None) -> str:
    """The verdict in words, the slices that drove it, what the reader skipped, and any overlay not shown."""
    count = len(result.slices)
    flagged = sum(piece.analysis.out_of_distribution for piece in result.slices)
    if result.out_of_distribution:
        text = texts.flagged_note(f"This scan cannot be classified: {result.ood_reason}.")
    else:
        confidence = result.probabilities[result.label]
        left_out = (f" The {flagged} slices given no diagnosis are left out of the pooling and the plot (they keep "
                    "the scan from being called Normal)." if flagged else "")
        text = (f"Scan label **{result.label}** (model confidence {confidence:.0%}) from {count} slices; screening: "
                f"**{result.screening}**.{left_out} "
                "The plot shows each slice's probabilities along the scan; the slices that drove the label are "
                "below, with the regions that drove each one's label.")
    text += f"\n\n{result.flagged_summary()}."
    if result.top:
        names = ", ".join(f"{result.slices[i].number} ({result.slices[i].name})" for i in result.top)
        which = "to look at" if result.out_of_distribution else "that contributed most"
        text += f"\n\nSlices {which}: {names}."
    lines = list(result.notes)
    if shown is not None and shown < len(result.top):
        lines.append(f"the overlay of {len(result.top) - shown} of these slices is not shown: files of the same "
                     "name could not all be read; give each slice file its own name")
    if lines:
        text += "\n\n" + "\n".join(f"- {line}" for line in lines)
    return text


def caption(piece: ScanSlice) -> str:
    """What a gallery picture says (its alt text too): the slice's number and result first, its file name last;
    a flagged slice's OOD score, not a class probability."""
    where = "" if piece.position is None else f", {piece.position:.1f} mm"
    analysis = piece.analysis
    if analysis.out_of_distribution:
        said = f"unlike the training slices, no diagnosis ({texts.ood_score(analysis)})"
    else:
        said = f"{analysis.label}, P({analysis.label}) {analysis.probabilities[analysis.label]:.0%}"
    return f"Slice {piece.number}: {said} ({piece.name}{where})"


def gallery(result: ScanResult) -> list[tuple[str, str]]:
    """The top slices as PNG files of this request alone, with captions: each beside its Grad-CAM overlay, or,
    for a flagged slice, alone (no heatmap presented as a finding)."""
    shown = []
    for i in result.top:
        piece = result.slices[i]
        pixels = (pictures.preview(result.images[i]) if piece.analysis.out_of_distribution
                  else pictures.overlay(result.images[i], result.heatmaps[i]))
        shown.append((unique_png(pixels, f"slice-{piece.number}.png"), caption(piece)))
    return shown
