"""Gradio demo and API for the lung CT slice classifier: load, handlers, layout, launch.

    python app.py [--model SOURCE] [--host H] [--port P] [--share] [--mcp] [--examples DIR]

Endpoints (all take the uploaded file's exact bytes, so the page and the API classify
exactly what `LungClassifier` classifies): /predict (batched: label + confidences),
/analyze (one slice: label, Grad-CAM overlay, out-of-distribution note, details),
/batch (several slices: one table row each) and /scan (a whole CT series, as one zip or
many files: the scan's verdict and every slice's result). This module is the story only:
the handlers are demo/handlers.py, uploads demo/uploads.py, words demo/texts.py.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import gradio as gr

from demo import scan_view, texts
from demo.handlers import MAX_BATCH_FILES, Handlers
from demo.label import DecisionLabel
from demo.startup import example_files, lean_tensorflow_import, warm_up
from demo.uploads import keep_examples
from lung_classifier import LungClassifier
from lung_classifier.options import load, model_options

EXAMPLES = Path(__file__).resolve().parent / "examples"
MAX_FILE_SIZE = "50mb"


def build_demo(classifier: LungClassifier, examples: list[str] | None = None, batching: bool = True) -> gr.Blocks:
    demo = gr.Blocks(title="Lung CT slice classifier", delete_cache=(60, 120))
    handlers = Handlers(classifier, demo, batching=batching)
    with demo:
        gr.Markdown(texts.header(classifier.config, classifier.origin))
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
            upload.change(handlers.show, upload, [preview, label, heatmap, message, info],
                          api_visibility="private", concurrency_limit=2)
            run.click(handlers.analyze, upload, [label, heatmap, message, info], api_name="analyze",
                      concurrency_limit=2)
        with gr.Tab("Several slices"):
            uploads = gr.File(label=f"CT slices (at most {MAX_BATCH_FILES})", file_count="multiple",
                              type="filepath")
            run_many = gr.Button("Classify all", variant="primary")
            table = gr.Dataframe(headers=["file", "prediction", *classifier.labels, "note"], label="Results",
                                 interactive=False)
            run_many.click(handlers.batch, uploads, table, api_name="batch", concurrency_limit=2)
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
            run_scan.click(handlers.scan_page, scan_files, [scan_label, scan_note, scan_plot, scan_top, scan_table],
                           api_visibility="private", concurrency_id="scan", concurrency_limit=1)
            with gr.Row(visible=False):  # /scan: the verdict and the data, no pictures
                api_scan_files = gr.File(file_count="multiple", type="filepath")
                api_scan_outputs = [DecisionLabel(), gr.JSON()]
                api_scan = gr.Button()
            api_scan.click(handlers.scan_api, api_scan_files, api_scan_outputs, api_name="scan",
                           concurrency_id="scan", concurrency_limit=1)
        with gr.Tab("Model card"):
            gr.Markdown(texts.model_card(classifier.directory))
        with gr.Row(visible=False):
            api_file = gr.File(type="filepath")
            api_label = DecisionLabel()
            api_trigger = gr.Button()
        # Up to MAX_BATCH requests wait together in the BatchingPredictor, which runs them as one
        # model call; Gradio's own batch=True would fail every request in a batch for one bad file.
        api_trigger.click(handlers.predict, api_file, api_label, api_name="predict",
                          concurrency_limit=handlers.max_batch)
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
