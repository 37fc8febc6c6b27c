"""Gradio demo and API for the lung CT slice classifier: load, handlers, layout, launch.

    python app.py [--model SOURCE] [--host H] [--port P] [--share] [--mcp] [--examples DIR]

Endpoints: /predict (label + probabilities), /analyze (the page's one slice), /batch (several
slices) and /scan (a whole CT series). The story only: handlers in demo/handlers.py, uploads in
demo/uploads.py, words in demo/texts.py.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import gradio as gr  # noqa: E402

from demo import scan_view, texts
from demo.handlers import MAX_BATCH_FILES, Handlers
from demo.components import DecisionLabel, ScanFiles, SliceFile, SliceFiles
from demo.startup import example_files, lean_tensorflow_import, warm_up
from demo.uploads import UPLOAD_LIFETIME, keep_examples
from lung_classifier import LungClassifier
from lung_classifier.cli.model_flags import load, model_options

EXAMPLES = Path(__file__).resolve().parent / "examples"
MAX_FILE_SIZE = "50mb"


def build_demo(classifier: LungClassifier, examples: list[str] | None = None, batching: bool = True) -> gr.Blocks:
    demo = gr.Blocks(title="Lung CT slice classifier", delete_cache=(60, 120))
    with demo:
        with gr.Row(visible=False):  # /predict: API only, registered first so that the API panel lists it first
            api_file = SliceFile(label="slice", type="filepath")
            api_label = DecisionLabel(label="prediction")
            api_run = gr.Button()
        gr.Markdown(texts.header(classifier.config, classifier.origin))
        with gr.Tab("One slice"):
            with gr.Row():
                with gr.Column():
                    upload = SliceFile(label="CT slice: JPEG, PNG, … or DICOM (.dcm)", type="filepath")
                    gr.Markdown(UPLOAD_LIFETIME, elem_id="upload-lifetime")
                    run = gr.Button("Classify", variant="primary", interactive=False)
                    if kept := keep_examples(examples or [], upload):
                        thumbnails = gr.Gallery([(path, Path(path).stem.replace("-", " ")) for path in kept],
                                                label="No slice at hand? Try an example", columns=3, height=160,
                                                allow_preview=False, object_fit="contain", elem_id="examples")
                        if all(Path(path).resolve().parent == EXAMPLES.resolve() for path in examples or []):
                            gr.Markdown(texts.EXAMPLES_SEEN_IN_TRAINING, elem_id="examples-seen-in-training")
                        gr.Markdown(texts.ATTRIBUTION)
                    preview = gr.Image(label="The slice as the model sees it", type="filepath", interactive=False,
                                       elem_id="preview", height=380, alt_text=texts.PREVIEW_ALT)
                with gr.Column():
                    with gr.Group():
                        label = DecisionLabel(num_top_classes=3, label=texts.confidence_title(classifier.config))
                        why = gr.Markdown(label="why", elem_id="label-why", padding=True)
                    note = gr.Markdown(label="note", elem_id="note")
                    heatmap = gr.Image(label="Slice and Grad-CAM heatmap", type="filepath", interactive=False,
                                       elem_id="heatmap", alt_text=texts.HEATMAP_ALT)
                    with gr.Accordion("Details (JSON)", open=False):
                        details = gr.JSON(label="details")
        with gr.Tab("Several slices"):
            uploads = SliceFiles(label=f"CT slices (at most {MAX_BATCH_FILES})", file_count="multiple",
                                 type="filepath")
            run_many = gr.Button("Classify all", variant="primary", interactive=False)
            table = gr.Dataframe(headers=["file", "prediction", *classifier.labels, "note"], label="results",
                                 interactive=False)
        with gr.Tab("Whole scan"):
            with gr.Row():
                with gr.Column():
                    scan_files = SliceFiles(label=scan_view.UPLOAD_LABEL, file_count="multiple", type="filepath",
                                            height=220)
                    run_scan = gr.Button("Classify the scan", variant="primary", interactive=False)
                    with gr.Group():
                        scan_label = DecisionLabel(num_top_classes=3, label="scan verdict", elem_id="scan-label")
                        scan_why = gr.Markdown(label="why", elem_id="scan-why", padding=True)
                    scan_note = gr.Markdown(label="scan note", elem_id="scan-note")
                with gr.Column():
                    scan_plot = gr.LinePlot(x="slice", y=scan_view.PROBABILITY, color=scan_view.CLASS,
                                            color_map=scan_view.COLOURS, y_lim=[0, 1], x_axis_format="d",
                                            elem_id="scan-plot", label=scan_view.PLOT_LABEL)
            scan_top = gr.Gallery(label="Slices that drove the verdict, with their Grad-CAM heatmaps", columns=3,
                                  height="auto", object_fit="contain", elem_id="scan-top")
            with gr.Accordion("Every slice", open=False):
                scan_table = gr.Dataframe(headers=scan_view.headers(classifier.labels), interactive=False)
            with gr.Row(visible=False):  # /scan: the verdict and the data, no pictures
                api_scan_files = ScanFiles(label="scan files", file_count="multiple", type="filepath")
                api_scan_outputs = [DecisionLabel(label="scan verdict"), gr.JSON(label="scan")]
                api_scan = gr.Button()
        with gr.Tab("Model card"):
            gr.Markdown(texts.model_card(classifier.directory))
        handlers = Handlers(classifier, demo, kept, batching=batching)  # inside: its unload joins the page
        # Concurrent /predict requests share one model call (BatchingPredictor; one bad file fails only its own)
        api_run.click(handlers.predict, api_file, api_label, api_name="predict", concurrency_limit=handlers.max_batch)
        demo.load(handlers.page_opened, None, None, api_visibility="private", queue=False)
        page = {"js": texts.CLOSE_TOASTS}  # every page request first closes earlier error toasts
        if kept:
            thumbnails.select(handlers.pick_example, None, upload, api_visibility="private")
        for files, button in ((upload, run), (uploads, run_many), (scan_files, run_scan)):
            files.change(handlers.ready, files, button, api_visibility="private", queue=False)
        # Earlier results go first, outside the queue: a refused file (show raises) leaves no stale slice behind.
        slice_outputs = [preview, label, why, heatmap, note, details]
        upload.change(handlers.slice_cleared, None, slice_outputs, api_visibility="private", queue=False).then(
            handlers.show, upload, slice_outputs, api_visibility="private", concurrency_limit=2, **page)
        run.click(handlers.analyze, upload, [label, why, heatmap, note, details], api_name="analyze",
                  concurrency_limit=2, **page)
        run_many.click(handlers.batch, uploads, table, api_name="batch", concurrency_limit=2, **page)
        scan_outputs = [scan_label, scan_why, scan_note, scan_plot, scan_top, scan_table]
        run_scan.click(handlers.scan_page, scan_files, scan_outputs, api_visibility="private", concurrency_id="scan",
                       concurrency_limit=1, **page)
        # Other files (or none): the old verdict goes at once (outside the queue, so no scan waits behind it).
        scan_files.change(handlers.scan_cleared, None, scan_outputs, api_visibility="private", queue=False)
        api_scan.click(handlers.scan_api, api_scan_files, api_scan_outputs, api_name="scan", concurrency_id="scan",
                       concurrency_limit=1)
    return demo.queue(max_size=256)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ
    parser = argparse.ArgumentParser(description="Serve the lung CT classifier demo and API.",
                                     parents=[model_options()],
                                     epilog="The model flags' defaults come from LUNG_MODEL, LUNG_MODEL_REVISION, "
                                            "LUNG_TRUST_SAVED_MODEL=1, LUNG_RUNTIME and LUNG_PRECISION where set.")
    parser.set_defaults(model=env.get("LUNG_MODEL"), revision=env.get("LUNG_MODEL_REVISION"), precision=env.get(
        "LUNG_PRECISION", "auto"), runtime=env.get("LUNG_RUNTIME", "auto"),
        trust_saved_model=env.get("LUNG_TRUST_SAVED_MODEL") == "1")
    parser.add_argument("--host", default=env.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="address to listen on (env GRADIO_SERVER_NAME; 0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=int(env.get("GRADIO_SERVER_PORT", env.get("PORT", 7860))),
                        help="port (env GRADIO_SERVER_PORT or PORT)")
    parser.add_argument("--share", action="store_true", default=env.get("LUNG_SHARE") == "1",
                        help="ask Gradio for a public share link (env LUNG_SHARE=1)")
    parser.add_argument("--mcp", action="store_true", default=env.get("GRADIO_MCP_SERVER", "").lower() == "true",
                        help="also serve the endpoints as MCP tools (env GRADIO_MCP_SERVER=true)")
    parser.add_argument("--examples", type=Path, default=env.get("LUNG_EXAMPLES", EXAMPLES),
                        help="directory of example slices to offer on the page (env LUNG_EXAMPLES)")
    parser.add_argument("--no-batching", action="store_true", help="run each /predict request as its own model call")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    lean_tensorflow_import()
    classifier = load(args)
    print(f"Model: {classifier.origin} (backbone: {classifier.precision} on {classifier.runtime})", flush=True)
    warm_up(classifier)  # meanwhile the page is built and the server starts
    demo = build_demo(classifier, example_files(args.examples), batching=not args.no_batching)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, mcp_server=args.mcp,
                max_file_size=MAX_FILE_SIZE, show_error=True, quiet=True, prevent_thread_lock=True)
    print(f"* Running on local URL:  {demo.local_url.rstrip('/')}", flush=True)  # quiet drops Gradio's own line
    if not args.share:
        print("* For a public link, start the app with --share (or LUNG_SHARE=1).", flush=True)
    demo.block_thread()


if __name__ == "__main__":
    main()
