"""Gradio demo and API for the lung CT slice classifier.

    python app.py [--model SOURCE] [--host H] [--port P] [--share] [--mcp] [--examples DIR]

Endpoints (all take the uploaded file's exact bytes, so the page and the API classify
exactly what `LungClassifier` classifies): /predict (batched: label + confidences),
/analyze (one slice: label, Grad-CAM overlay, out-of-distribution note, details) and
/batch (several slices: one table row each). DICOM files are accepted everywhere.
This module knows no TensorFlow: it only calls LungClassifier.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import sys
import tempfile
import threading
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import gradio as gr
import numpy as np
from matplotlib import colormaps

from lung_classifier import Analysis, ImageError, LungClassifier
from lung_classifier.batching import BatchingPredictor
from lung_classifier.images import load_rgb

MAX_FILE_SIZE = "50mb"
MAX_BATCH = 16
DISCLAIMER = (
    "**Research demo, not a medical device.** Not cleared or validated for clinical use: "
    "do not use it to diagnose, treat or triage anyone."
)


UPLOAD_GRACE_S = float(os.environ.get("LUNG_UPLOAD_GRACE_S", 30))
"""Seconds an upload outlives its last request (env LUNG_UPLOAD_GRACE_S)."""
UPLOAD_GONE = ("this upload was already deleted from the server (uploads are not kept after their requests): "
               "upload the file again")


def gradio_upload_root() -> Path:
    """Where Gradio stores uploads; only files under it are ever deleted."""
    return Path(os.environ.get("GRADIO_TEMP_DIR", Path(tempfile.gettempdir()) / "gradio")).resolve()


class UploadJanitor:
    """Deletes each uploaded file once no request uses it, after a short grace period.

    Gradio stores an upload under its content hash, so the same file sent by two clients
    at once is one path: deleting it the moment the first request ends would fail the
    second. The grace period also covers the page's queue and a repeated click.
    """

    def __init__(self, grace_s: float = UPLOAD_GRACE_S):
        self.grace_s = grace_s
        self._users: Counter[Path] = Counter()
        self._lock = threading.Lock()

    @contextmanager
    def using(self, paths: list[str | None]) -> Iterator[None]:
        uploads = [Path(p).resolve() for p in paths if p and Path(p).resolve().is_relative_to(gradio_upload_root())]
        if any(not path.exists() for path in uploads):
            raise gr.Error(f"Cannot classify this file: {UPLOAD_GONE}.", print_exception=False)
        with self._lock:
            self._users.update(uploads)
        try:
            yield
        finally:
            with self._lock:
                self._users.subtract(uploads)
            for path in uploads:
                timer = threading.Timer(self.grace_s, self._delete_if_unused, args=(path,))
                timer.daemon = True
                timer.start()

    def _delete_if_unused(self, path: Path) -> None:
        with self._lock:
            if self._users[path] <= 0:
                del self._users[path]
                path.unlink(missing_ok=True)


def inline_images(markdown: str, directory: Path) -> str:
    """The card's relative PNG links (plots/...) as data URIs: the page cannot fetch package files."""
    root = directory.resolve()

    def embed(match: re.Match) -> str:
        path = (root / match.group(2)).resolve()
        if not path.is_file() or not path.is_relative_to(root):
            return match.group(0)
        return f"![{match.group(1)}](data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()})"

    return re.sub(r"!\[([^\]]*)\]\(([^)\s:]+\.png)\)", embed, markdown)


def overlay(rgb: np.ndarray, heatmap: np.ndarray) -> np.ndarray:
    """The slice beside the slice with its Grad-CAM heatmap blended in (jet colours)."""
    colours = colormaps["jet"](heatmap)[:, :, :3] * 255.0
    blended = (0.6 * rgb + 0.4 * colours).astype(np.uint8)
    gap = np.full((rgb.shape[0], 8, 3), 255, np.uint8)
    return np.concatenate([rgb, gap, blended], axis=1)


OOD_LABEL = "Unlike the training data: no diagnosis"


def label_value(result: Analysis) -> dict[str, float] | str:
    """What gr.Label shows: confidences, or a plain warning instead of a confident diagnosis."""
    return OOD_LABEL if result.out_of_distribution else result.probabilities


def note(result: Analysis, threshold: float) -> str:
    if result.out_of_distribution:
        return (f"### ⚠️ This image does not look like the CT slices the model was trained on\n"
                f"Out-of-distribution score {result.ood_score:.2f} is above the threshold {threshold:.2f}, "
                "so no diagnosis is shown: the model's probabilities are **not meaningful** for it. Upload an axial chest CT slice "
                "(lung window) like those of the IQ-OTH/NCCD dataset.")
    return (f"Most likely **{result.label}** ({result.probabilities[result.label]:.0%}). "
            f"Out-of-distribution score {result.ood_score:.2f} (threshold {threshold:.2f}): the image "
            "resembles the training data. The heatmap shows which regions drove the prediction.")


def details(result: Analysis) -> dict[str, Any]:
    return {"label": result.label, "probabilities": result.probabilities, "ood_score": result.ood_score,
            "out_of_distribution": result.out_of_distribution}


def build_demo(classifier: LungClassifier, examples: list[str] | None = None, batching: bool = True) -> gr.Blocks:
    threshold = classifier.ood_threshold
    predictor = BatchingPredictor(classifier, max_batch=MAX_BATCH if batching else 1)
    janitor = UploadJanitor()

    def predict(path: str | None) -> dict[str, float]:
        """Label and confidences of one CT slice (image or DICOM file); batched with concurrent requests."""
        if not path:
            raise gr.Error("No file received: upload a CT slice image or DICOM file.")
        with janitor.using([path]):
            try:
                return predictor.analyze(path).probabilities
            except ImageError as exc:
                raise gr.Error(f"Cannot classify this file: {exc}", print_exception=False) from None

    def analyze(path: str | None) -> tuple[Any, np.ndarray, str, dict[str, Any]]:
        """Label, Grad-CAM overlay, out-of-distribution note and details for one CT slice."""
        if not path:
            raise gr.Error("No file received: upload a CT slice image or DICOM file.")
        with janitor.using([path]):
            try:
                rgb = load_rgb(path)
                result = classifier.analyze(rgb, explain=True)
            except ImageError as exc:
                raise gr.Error(f"Cannot classify this file: {exc}", print_exception=False) from None
        return label_value(result), overlay(rgb, result.heatmap), note(result, threshold), details(result)

    def batch(paths: list[str] | None) -> list[list[Any]]:
        """One row per uploaded slice: file, prediction, probabilities, and a note (errors included)."""
        if not paths:
            raise gr.Error("No files received: upload one or more CT slices.")
        rows: list[list[Any]] = []
        with janitor.using(paths):
            decoded: list[tuple[int, np.ndarray]] = []
            for path in paths:
                rows.append([Path(path).name, "error", None, None, None, ""])
                try:
                    decoded.append((len(rows) - 1, load_rgb(path)))
                except ImageError as exc:
                    rows[-1][-1] = str(exc)
            for first in range(0, len(decoded), MAX_BATCH):
                chunk = decoded[first:first + MAX_BATCH]
                for (row, _), result in zip(chunk, classifier.analyze_batch([rgb for _, rgb in chunk])):
                    flag = "unlike the training data: do not trust" if result.out_of_distribution else ""
                    rows[row] = [rows[row][0], result.label,
                                 *(round(result.probabilities[label], 4) for label in classifier.labels), flag]
        return rows

    card = (classifier.directory / "README.md").read_text()
    card = inline_images(re.sub(r"^---\n.*?\n---\n", "", card, flags=re.S), classifier.directory)
    with gr.Blocks(title="Lung CT slice classifier", delete_cache=(60, 120)) as demo:
        gr.Markdown("# Lung CT slice classifier\nNormal / Benign / Malignant, on a frozen ImageNet ResNet50 "
                    f"trained on the IQ-OTH/NCCD dataset. Model: {classifier.origin}.\n\n{DISCLAIMER} "
                    "The model's measured quality and limits are in the **Model card** tab.")
        with gr.Tab("One slice"):
            with gr.Row():
                with gr.Column():
                    upload = gr.File(label="CT slice: JPEG, PNG, … or DICOM (.dcm)",
                                     type="filepath")
                    run = gr.Button("Classify", variant="primary")
                    if examples:
                        gr.Examples(examples=[[path] for path in examples], inputs=upload, label="Examples")
                with gr.Column():
                    label = gr.Label(num_top_classes=3, label="Prediction (calibrated)")
                    message = gr.Markdown(elem_id="note")
                    heatmap = gr.Image(label="Slice and Grad-CAM heatmap", type="numpy", interactive=False,
                                       format="png")
                    with gr.Accordion("Details (JSON)", open=False):
                        info = gr.JSON(label="analysis")
            run.click(analyze, upload, [label, heatmap, message, info], api_name="analyze", concurrency_limit=2)
        with gr.Tab("Several slices"):
            uploads = gr.File(label="CT slices", file_count="multiple", type="filepath")
            run_many = gr.Button("Classify all", variant="primary")
            table = gr.Dataframe(headers=["file", "prediction", *classifier.labels, "note"], label="Results",
                                 interactive=False)
            run_many.click(batch, uploads, table, api_name="batch", concurrency_limit=2)
        with gr.Tab("Model card"):
            gr.Markdown(card)
        with gr.Row(visible=False):
            api_file = gr.File(type="filepath")
            api_label = gr.Label()
            api_trigger = gr.Button()
        # Up to MAX_BATCH requests wait together in the BatchingPredictor, which runs them as one
        # model call; Gradio's own batch=True would fail every request in a batch for one bad file.
        api_trigger.click(predict, api_file, api_label, api_name="predict", concurrency_limit=MAX_BATCH)
    demo.queue(max_size=256)
    return demo


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ
    parser = argparse.ArgumentParser(description="Serve the lung CT classifier demo and API.")
    parser.add_argument("--model", default=env.get("LUNG_MODEL"),
                        help="package directory or Hub repo id (env LUNG_MODEL; default: embedded model)")
    parser.add_argument("--revision", default=env.get("LUNG_MODEL_REVISION"), help="Hub revision to pin")
    parser.add_argument("--trust-saved-model", action="store_true", default=env.get("LUNG_TRUST_SAVED_MODEL") == "1",
                        help="load the package's own SavedModel graph (only for packages you trust)")
    parser.add_argument("--host", default=env.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="address to listen on (env GRADIO_SERVER_NAME; 0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=int(env.get("GRADIO_SERVER_PORT", env.get("PORT", 7860))),
                        help="port (env GRADIO_SERVER_PORT or PORT)")
    parser.add_argument("--share", action="store_true", default=env.get("LUNG_SHARE") == "1",
                        help="ask Gradio for a public share link (env LUNG_SHARE=1)")
    parser.add_argument("--mcp", action="store_true", default=env.get("GRADIO_MCP_SERVER", "").lower() == "true",
                        help="also serve the endpoints as MCP tools (env GRADIO_MCP_SERVER=true)")
    parser.add_argument("--examples", type=Path, default=env.get("LUNG_EXAMPLES"),
                        help="directory of example slices to offer on the page (env LUNG_EXAMPLES)")
    parser.add_argument("--no-batching", action="store_true", help="run each /predict request as its own model call")
    return parser.parse_args(argv)


def example_files(directory: Path | None, limit: int = 12) -> list[str]:
    if directory is None:
        return []
    if not directory.is_dir():
        sys.exit(f"error: --examples {directory}: no such directory")
    suffixes = {".jpg", ".jpeg", ".png", ".dcm", ".bmp", ".tif", ".tiff"}
    return [str(p.resolve()) for p in sorted(directory.rglob("*")) if p.suffix.lower() in suffixes][:limit]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    classifier = LungClassifier.from_pretrained(args.model, revision=args.revision,
                                                trust_saved_model=args.trust_saved_model)
    print(f"Model: {classifier.origin}", flush=True)
    examples = example_files(args.examples)
    demo = build_demo(classifier, examples, batching=not args.no_batching)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, mcp_server=args.mcp,
                max_file_size=MAX_FILE_SIZE, allowed_paths=[str(args.examples.resolve())] if examples else None,
                show_error=True)


if __name__ == "__main__":
    main()
