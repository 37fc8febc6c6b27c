"""Gradio demo and API for the lung CT slice classifier: load, handlers, layout, launch.

    python app.py [--model SOURCE] [--host H] [--port P] [--share] [--mcp] [--examples DIR]

Endpoints (all take the uploaded file's exact bytes, so the page and the API classify
exactly what `LungClassifier` classifies): /predict (batched: label + confidences),
/analyze (one slice: label, Grad-CAM overlay, out-of-distribution note, details),
/batch (several slices: one table row each) and /scan (a whole CT series, as one zip or
many files: the scan's verdict and every slice's result). DICOM files are accepted everywhere.
This module knows no TensorFlow: it only calls LungClassifier; upload lifecycle,
pictures and texts live in the `demo` package.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import gradio as gr
from gradio.components.label import LabelData

from demo import rendering, scan_view, texts
from demo.label import DecisionLabel
from demo.startup import lean_tensorflow_import, warm_up
from demo.uploads import UploadJanitor, keep_examples, unique_png
from lung_classifier import ImageError, LungClassifier
from demo.batching import BatchingPredictor
from lung_classifier.options import load, model_options

EXAMPLES = Path(__file__).resolve().parent / "examples"
MAX_FILE_SIZE = "50mb"
MAX_BATCH = 16
"""Most images in one model call (server-side batching of /predict, chunks of /batch)."""
MAX_BATCH_FILES = 32
"""Most files in one /batch request."""
MAX_BATCH_PIXELS = 16_000_000
"""Most decoded pixels in one /batch request, all files together (16 slices of 1000 x 1000)."""
NO_FILE = "No file received: upload a CT slice image or DICOM file."


WHAT_TO_SEND = "upload one axial CT slice as an image file (JPEG, PNG, …) or a DICOM file"


def refusal(exc: ImageError) -> str:
    """The decoder's reason, and what to send instead when the reason does not say."""
    return str(exc) if "upload" in str(exc).lower() else f"{exc}: {WHAT_TO_SEND}"


def cannot_classify(exc: ImageError) -> gr.Error:
    return gr.Error(f"Cannot classify this file: {refusal(exc)}", print_exception=False)


def build_demo(classifier: LungClassifier, examples: list[str] | None = None, batching: bool = True) -> gr.Blocks:
    predictor = BatchingPredictor(classifier, max_batch=MAX_BATCH if batching else 1)
    demo = gr.Blocks(title="Lung CT slice classifier", delete_cache=(60, 120))
    janitor = UploadJanitor(demo)

    def predict(path: str | None) -> LabelData:
        """Decided label (or the out-of-distribution notice) and confidences of one CT slice; batched."""
        if not path:
            raise gr.Error(NO_FILE)
        with janitor.using([path]):
            try:
                return texts.label_value(predictor.analyze(path))
            except ImageError as exc:
                raise cannot_classify(exc) from None

    def analyze(path: str | None) -> tuple[Any, str, str, dict[str, Any]]:
        """Label, Grad-CAM overlay, out-of-distribution note and details for one CT slice."""
        if not path:
            raise gr.Error(NO_FILE)
        with janitor.using([path]):
            try:
                piece = classifier.read(path)
                result = classifier.analyze(piece, explain=True)
            except ImageError as exc:
                raise cannot_classify(exc) from None
            picture = unique_png(rendering.overlay(piece.rgb, result.heatmap), "slice-and-heatmap.png")
        return texts.label_value(result), picture, texts.note(result), result.as_dict()

    def show(path: str | None) -> tuple[str | None, None, None, str, None]:
        """The slice as the model will see it, as soon as it is chosen; earlier results cleared."""
        if not path:
            return None, None, None, "", None
        with janitor.using([path], take=False):  # the upload stays for "Classify"
            try:
                rgb = classifier.read(path).rgb
            except ImageError as exc:
                raise cannot_classify(exc) from None
        return unique_png(rendering.preview(rgb), "slice.png"), None, None, "", None

    def batch(paths: list[str] | None) -> list[list[Any]]:
        """One row per uploaded slice: file, prediction, probabilities, and a note (errors included)."""
        if not paths:
            raise gr.Error("No files received: upload one or more CT slices.")
        with janitor.using(paths):
            if len(paths) > MAX_BATCH_FILES:
                raise gr.Error(f"Too many files: {len(paths)} sent, at most {MAX_BATCH_FILES} per batch. "
                               "Send them in several batches.", print_exception=False)
            rows = []
            for outcome in classifier.analyze_many(paths, batch_size=MAX_BATCH, max_pixels=MAX_BATCH_PIXELS):
                result, error = outcome.analysis, outcome.error
                if result is None:
                    note = refusal(error) if isinstance(error, ImageError) else str(error)
                    rows.append([Path(outcome.item).name, "error", None, None, None, note])
                    continue
                rows.append([Path(outcome.item).name, result.verdict,
                             *(round(result.probabilities[label], 4) for label in classifier.labels),
                             result.ood_reason or ""])
        return rows

    def scan_page(paths: list[str] | None, progress: gr.Progress = scan_view.PROGRESS) -> tuple[Any, ...]:
        """The page's whole scan: verdict, note, curve along the body, top slices with Grad-CAM, details."""
        with janitor.using(scan_view.received(paths)):
            result, pictures = scan_view.analyze(classifier, paths, explain=True, progress=progress)
        return (texts.label_value(result), scan_view.note(result, len(pictures)), scan_view.plot(result), pictures,
                scan_view.table(result))

    def scan_api(paths: list[str] | None) -> tuple[LabelData, dict[str, Any]]:
        """A whole CT series (one zip, or the slices' files): the scan's verdict, and every slice's result."""
        with janitor.using(scan_view.received(paths)):
            result, _ = scan_view.analyze(classifier, paths)
        return texts.label_value(result), result.as_dict()

    with demo:
        gr.Markdown("# Lung CT slice classifier\nNormal / Benign / Malignant, on a frozen ImageNet ResNet50 "
                    "trained on the IQ-OTH/NCCD dataset. Model: "
                    f"{texts.model_name(classifier.config, classifier.origin)}.\n\n{texts.DISCLAIMER} "
                    "The model's measured quality and limits are in the **Model card** tab.")
        with gr.Tab("One slice"):
            with gr.Row():
                with gr.Column():
                    upload = gr.File(label="CT slice: JPEG, PNG, … or DICOM (.dcm)", type="filepath")
                    run = gr.Button("Classify", variant="primary")
                    if examples:
                        gr.Examples(examples=[[path] for path in keep_examples(examples, upload)], inputs=upload,
                                    label="No slice at hand? Try an example",
                                    example_labels=[Path(path).stem.replace("-", " ") for path in examples])
                        gr.Markdown(texts.ATTRIBUTION)
                    preview = gr.Image(label="The slice as the model sees it", type="filepath", interactive=False,
                                       elem_id="preview", height=380)
                with gr.Column():
                    label = DecisionLabel(num_top_classes=3, label=texts.confidence_title(classifier.config))
                    message = gr.Markdown(elem_id="note")
                    heatmap = gr.Image(label="Slice and Grad-CAM heatmap", type="filepath", interactive=False,
                                       elem_id="heatmap")
                    with gr.Accordion("Details (JSON)", open=False):
                        info = gr.JSON(label="analysis")
            upload.change(show, upload, [preview, label, heatmap, message, info], api_visibility="private",
                          concurrency_limit=2)
            run.click(analyze, upload, [label, heatmap, message, info], api_name="analyze", concurrency_limit=2)
        with gr.Tab("Several slices"):
            uploads = gr.File(label=f"CT slices (at most {MAX_BATCH_FILES})", file_count="multiple",
                              type="filepath")
            run_many = gr.Button("Classify all", variant="primary")
            table = gr.Dataframe(headers=["file", "prediction", *classifier.labels, "note"], label="Results",
                                 interactive=False)
            run_many.click(batch, uploads, table, api_name="batch", concurrency_limit=2)
        with gr.Tab("Whole scan"):
            with gr.Row():
                with gr.Column():
                    scan_files = gr.File(label=scan_view.UPLOAD_LABEL, file_count="multiple", type="filepath",
                                         height=220)
                    run_scan = gr.Button("Classify the scan", variant="primary")
                    scan_label = DecisionLabel(num_top_classes=3, label="Scan verdict")
                    scan_note = gr.Markdown(elem_id="scan-note")
                with gr.Column():
                    scan_plot = gr.LinePlot(x="slice", y=scan_view.PROBABILITY, color=scan_view.CLASS,
                                            color_map=scan_view.COLOURS, y_lim=[0, 1], elem_id="scan-plot",
                                            label="Each slice's probabilities along the scan")
            scan_top = gr.Gallery(label="Slices that drove the verdict, with their Grad-CAM heatmaps", columns=3,
                                  height="auto", object_fit="contain", elem_id="scan-top")
            with gr.Accordion("Every slice", open=False):
                scan_table = gr.Dataframe(headers=scan_view.headers(classifier.labels), interactive=False)
            run_scan.click(scan_page, scan_files, [scan_label, scan_note, scan_plot, scan_top, scan_table],
                           api_visibility="private", concurrency_id="scan", concurrency_limit=1)
            with gr.Row(visible=False):  # /scan: the verdict and the data, no pictures
                api_scan_files = gr.File(file_count="multiple", type="filepath")
                api_scan_outputs = [DecisionLabel(), gr.JSON()]
                api_scan = gr.Button()
            api_scan.click(scan_api, api_scan_files, api_scan_outputs, api_name="scan", concurrency_id="scan",
                           concurrency_limit=1)
        with gr.Tab("Model card"):
            gr.Markdown(texts.model_card(classifier.directory))
        with gr.Row(visible=False):
            api_file = gr.File(type="filepath")
            api_label = DecisionLabel()
            api_trigger = gr.Button()
        # Up to MAX_BATCH requests wait together in the BatchingPredictor, which runs them as one
        # model call; Gradio's own batch=True would fail every request in a batch for one bad file.
        api_trigger.click(predict, api_file, api_label, api_name="predict", concurrency_limit=MAX_BATCH)
    demo.queue(max_size=256)
    return demo


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ
    parser = argparse.ArgumentParser(description="Serve the lung CT classifier demo and API.",
                                     parents=[model_options()],
                                     epilog="The model flags' defaults come from LUNG_MODEL, LUNG_MODEL_REVISION, "
                                            "LUNG_TRUST_SAVED_MODEL=1 and LUNG_PRECISION where set.")
    parser.set_defaults(model=env.get("LUNG_MODEL"), revision=env.get("LUNG_MODEL_REVISION"),
                        trust_saved_model=env.get("LUNG_TRUST_SAVED_MODEL") == "1",
                        precision=env.get("LUNG_PRECISION", "auto"))
    parser.add_argument("--host", default=env.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="address to listen on (env GRADIO_SERVER_NAME; 0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=int(env.get("GRADIO_SERVER_PORT", env.get("PORT", 7860))),
                        help="port (env GRADIO_SERVER_PORT or PORT)")
    parser.add_argument("--share", action="store_true", default=env.get("LUNG_SHARE") == "1",
                        help="ask Gradio for a public share link (env LUNG_SHARE=1)")
    parser.add_argument("--mcp", action="store_true", default=env.get("GRADIO_MCP_SERVER", "").lower() == "true",
                        help="also serve the endpoints as MCP tools (env GRADIO_MCP_SERVER=true)")
    parser.add_argument("--examples", type=Path, default=env.get("LUNG_EXAMPLES", EXAMPLES),
                        help="directory of example slices to offer on the page (env LUNG_EXAMPLES; "
                             "default: the IQ-OTH/NCCD slices in examples/)")
    parser.add_argument("--no-batching", action="store_true", help="run each /predict request as its own model call")
    return parser.parse_args(argv)


def example_files(directory: Path, limit: int = 6) -> list[str]:
    """The example slices, copied into Gradio's cache when the page is built (no folder is served)."""
    if not directory.is_dir():
        sys.exit(f"error: --examples {directory}: no such directory; name a folder of CT slice images")
    suffixes = {".jpg", ".jpeg", ".png", ".dcm", ".bmp", ".tif", ".tiff"}
    return [str(p.resolve()) for p in sorted(directory.iterdir()) if p.suffix.lower() in suffixes][:limit]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    lean_tensorflow_import()
    classifier = load(args)
    print(f"Model: {classifier.origin} (backbone precision: {classifier.precision})", flush=True)
    warm_up(classifier)  # meanwhile the page is built and the server starts
    demo = build_demo(classifier, example_files(args.examples), batching=not args.no_batching)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, mcp_server=args.mcp,
                max_file_size=MAX_FILE_SIZE, show_error=True)


if __name__ == "__main__":
    main()
