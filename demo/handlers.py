"""The page's and the API's event handlers, as plain methods of one object.

Gradio injects ``request: gr.Request`` and ``progress: gr.Progress`` into bound methods as
into functions, and names API parameters after the methods' parameters, so app.py only
wires these to the layout. Each handler holds its uploads through the UploadJanitor while
it runs and turns the library's refusals into a gr.Error that says what to send.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr
from gradio.components.label import LabelData

from demo import rendering, scan_view, texts
from demo.batching import BatchingPredictor
from demo.uploads import UploadJanitor, unique_png
from lung_classifier import ImageError, LungClassifier

MAX_BATCH = 16
"""Most images in one model call (server-side batching of /predict, chunks of /batch)."""
MAX_BATCH_FILES = 32
"""Most files in one /batch request."""
MAX_BATCH_PIXELS = 16_000_000
"""Most decoded pixels in one /batch request, all files together (16 slices of 1000 x 1000)."""


def cannot_classify(exc: ImageError) -> gr.Error:
    return gr.Error(f"Cannot classify this file: {texts.refusal(exc)}", print_exception=False)


class Handlers:
    """Every handler of the page and the API, sharing one classifier, one batcher and one janitor."""

    def __init__(self, classifier: LungClassifier, blocks: gr.Blocks, batching: bool = True):
        self.classifier = classifier
        self.max_batch = MAX_BATCH
        self.predictor = BatchingPredictor(classifier, max_batch=MAX_BATCH if batching else 1)
        self.janitor = UploadJanitor(blocks)

    def predict(self, path: str | None) -> LabelData:
        """Decided label (or the out-of-distribution notice) and confidences of one CT slice; batched."""
        if not path:
            raise gr.Error(texts.NO_FILE)
        with self.janitor.using([path]):
            try:
                return texts.label_value(self.predictor.analyze(path))
            except ImageError as exc:
                raise cannot_classify(exc) from None

    def analyze(self, path: str | None) -> tuple[Any, str, str, dict[str, Any]]:
        """Label, Grad-CAM overlay, out-of-distribution note and details for one CT slice."""
        if not path:
            raise gr.Error(texts.NO_FILE)
        with self.janitor.using([path]):
            try:
                piece = self.classifier.read(path)
                result = self.classifier.analyze(piece, explain=True)
            except ImageError as exc:
                raise cannot_classify(exc) from None
            picture = unique_png(rendering.overlay(piece.rgb, result.heatmap), "slice-and-heatmap.png")
        return texts.label_value(result), picture, texts.note(result), result.as_dict()

    def show(self, path: str | None) -> tuple[str | None, None, None, str, None]:
        """The slice as the model will see it, as soon as it is chosen; earlier results cleared."""
        if not path:
            return None, None, None, "", None
        with self.janitor.using([path], take=False):  # the upload stays for "Classify"
            try:
                rgb = self.classifier.read(path).rgb
            except ImageError as exc:
                raise cannot_classify(exc) from None
        return unique_png(rendering.preview(rgb), "slice.png"), None, None, "", None

    def batch(self, paths: list[str] | None) -> list[list[Any]]:
        """One row per uploaded slice: file, prediction, probabilities, and a note (errors included)."""
        if not paths:
            raise gr.Error("No files received: upload one or more CT slices.")
        with self.janitor.using(paths):
            if len(paths) > MAX_BATCH_FILES:
                raise gr.Error(f"Too many files: {len(paths)} sent, at most {MAX_BATCH_FILES} per batch. "
                               "Send them in several batches.", print_exception=False)
            rows = []
            for outcome in self.classifier.analyze_many(paths, batch_size=MAX_BATCH, max_pixels=MAX_BATCH_PIXELS):
                result, error = outcome.analysis, outcome.error
                if result is None:
                    note = texts.refusal(error) if isinstance(error, ImageError) else str(error)
                    rows.append([Path(outcome.item).name, "error", None, None, None, note])
                    continue
                rows.append([Path(outcome.item).name, result.verdict,
                             *(round(result.probabilities[label], 4) for label in self.classifier.labels),
                             result.ood_reason or ""])
        return rows

    def scan_page(self, paths: list[str] | None, progress: gr.Progress = scan_view.PROGRESS) -> tuple[Any, ...]:
        """The page's whole scan: verdict, note, curve along the body, top slices with Grad-CAM, details."""
        with self.janitor.using(scan_view.received(paths)):
            result, pictures = scan_view.analyze(self.classifier, paths, explain=True, progress=progress)
        return (texts.label_value(result), scan_view.note(result, len(pictures)), scan_view.plot(result), pictures,
                scan_view.table(result))

    def scan_api(self, paths: list[str] | None) -> tuple[LabelData, dict[str, Any]]:
        """A whole CT series (one zip, or the slices' files): the scan's verdict, and every slice's result."""
        with self.janitor.using(scan_view.received(paths)):
            result, _ = scan_view.analyze(self.classifier, paths)
        return texts.label_value(result), result.as_dict()
