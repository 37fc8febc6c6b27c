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

from demo import pictures, scan_view, texts
from demo.batching import BatchingPredictor
from demo.uploads import UploadJanitor, unique_png
from lung_classifier import ImageError, LungClassifier

MAX_BATCH = 16
"""Most images in one model call (server-side batching of /predict, chunks of /batch)."""
MAX_BATCH_FILES = 32
"""Most files in one /batch request."""
MAX_BATCH_PIXELS = 16_000_000
"""Most decoded pixels in one /batch request, all files together (16 slices of 1000 x 1000)."""


def cannot_classify(exc: Exception) -> gr.Error:
    return gr.Error(f"Cannot classify this file: {texts.refusal(exc)}", print_exception=False)


class Handlers:
    """Every handler of the page and the API, sharing one classifier, one batcher and one janitor."""

    def __init__(self, classifier: LungClassifier, blocks: gr.Blocks, examples: list[str], batching: bool = True):
        self.classifier = classifier
        self.max_batch = MAX_BATCH
        self.predictor = BatchingPredictor(classifier, max_batch=MAX_BATCH if batching else 1)
        self.janitor = UploadJanitor(blocks)  # registers blocks.unload: a session's uploads go with it
        self.examples = examples

    def predict(self, slice_file: str | None, request: gr.Request) -> LabelData:
        """The decided label of one CT slice and every class probability; for an input unlike the training
        data the label is the notice "Unlike the training data: no diagnosis" (probabilities kept, for programs).
        Requests that arrive together share one model call."""
        if not slice_file:
            raise gr.Error(texts.NO_FILE, print_exception=False)
        with self.janitor.using([slice_file], request):
            try:
                return texts.api_label_value(self.predictor.analyze(slice_file))
            except ImageError as exc:
                raise cannot_classify(exc) from None

    def analyze(self, slice_file: str | None, request: gr.Request) -> tuple[LabelData, str, str | None, str, dict]:
        """One CT slice as the page shows it: label, the screening answer and what it rests on, Grad-CAM overlay, note,
        details. An input unlike the training data gets the notice, no class bar, no heatmap, and details
        without probabilities."""
        if not slice_file:
            raise gr.Error(texts.NO_FILE, print_exception=False)
        with self.janitor.using([slice_file], request):
            try:
                piece = self.classifier.read(slice_file)
                result = self.classifier.analyze(piece, explain=True)
            except ImageError as exc:
                raise cannot_classify(exc) from None
            picture = None if result.out_of_distribution else unique_png(  # no heatmap presented as a finding
                pictures.overlay(piece.rgb, result.heatmap), "slice-and-heatmap.png")
        return (texts.label_value(result), texts.why(result, self.classifier.config), picture, texts.note(result),
                texts.details(result))

    @staticmethod
    def slice_cleared() -> tuple[None, None, str, None, str, None]:
        """The One slice tab's preview and results wiped (its upload changed)."""
        return None, None, "", None, "", None

    def show(self, slice_file: str | None, request: gr.Request) -> tuple[Any, None, str, None, str, None]:
        """The slice as the model will see it, as soon as it is chosen; earlier results cleared."""
        if not slice_file:
            return self.slice_cleared()
        with self.janitor.using([slice_file], request):  # holds the upload for this page's Classify clicks
            try:
                rgb = self.classifier.read(slice_file).rgb
            except ImageError as exc:
                raise cannot_classify(exc) from None
        return unique_png(pictures.preview(rgb), "slice.png"), None, "", None, "", None

    def batch(self, slice_files: list[str] | str | None, request: gr.Request) -> list[list[Any]]:
        """One row per uploaded slice: file, prediction, each class probability, note (the screening answer, and
        the source it was answered as). A slice given no diagnosis has the notice as prediction, empty
        probabilities and the reason; a file that cannot be read, "error" and the reason."""
        if not slice_files:
            raise gr.Error(texts.NO_FILES, print_exception=False)
        paths = [slice_files] if isinstance(slice_files, str) else list(slice_files)
        if len(paths) > MAX_BATCH_FILES:  # refused before any is held: their uploads go now
            self.janitor.discard(paths)
            raise gr.Error(f"Too many files: {len(paths)} sent, at most {MAX_BATCH_FILES} per batch. "
                           "Send them in several batches.", print_exception=False)
        with self.janitor.using(paths, request):
            rows = []
            blank = [None] * len(self.classifier.labels)
            for outcome in self.classifier.analyze_many(paths, batch_size=MAX_BATCH, max_pixels=MAX_BATCH_PIXELS):
                name, result = Path(outcome.item).name, outcome.analysis
                if result is None:
                    rows.append([name, "error", *blank, texts.refusal(outcome.error)])
                elif result.out_of_distribution:
                    rows.append([name, result.verdict, *blank, f"{result.ood_reason}; {result.screening}"])
                else:
                    rows.append([name, result.verdict, *(round(result.probabilities[label], 4)
                                                         for label in self.classifier.labels),
                                 f"{result.screening}; {result.answered_as}"])
        return rows

    def scan_page(self, scan_files: list[str] | str | None, request: gr.Request,
                  progress: gr.Progress = scan_view.PROGRESS) -> tuple[Any, ...]:
        """The page's whole scan: verdict, note, curve along the body, top slices with Grad-CAM, every slice."""
        paths = scan_view.received(scan_files)
        with self.janitor.using(paths, request):
            result, gallery = scan_view.analyze(self.classifier, paths, explain=True, progress=progress)
        return (texts.label_value(result), texts.why(result, self.classifier.config),
                scan_view.note(result, len(gallery)), scan_view.plot(result), gallery, scan_view.table(result))

    def scan_cleared(self) -> tuple[Any, ...]:
        """The Whole scan tab's results wiped when its upload changes (cleared, or other files chosen)."""
        return scan_view.cleared(self.classifier.labels)

    def scan_api(self, scan_files: list[str] | str | None, request: gr.Request) -> tuple[LabelData, dict[str, Any]]:
        """A whole CT series (one zip, or the slices' files): the scan's verdict, and every slice's result, each
        with its 0-based `index` and the 1-based `number` the page and the CLI show."""
        paths = scan_view.received(scan_files)
        with self.janitor.using(paths, request):
            result, _ = scan_view.analyze(self.classifier, paths)
        return texts.label_value(result), result.as_dict()

    def ready(self, files: list[str] | str | None) -> gr.Button:
        """A button that is pressable only once files are chosen (no empty click to refuse)."""
        return gr.Button(interactive=bool(files))

    def page_opened(self) -> None:
        """A browser opened the page: its Classify shows Grad-CAM, so that graph starts loading now."""
        self.classifier.load_explainer_in_background()

    def pick_example(self, event: gr.SelectData) -> str:
        """The example whose thumbnail was clicked, into the upload box (the cached copy, kept for the server's
        life)."""
        return self.examples[event.index]
