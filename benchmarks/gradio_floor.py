"""Row 5c's floor: a Gradio app with app.py's /predict signature that does no model work.

    python -m benchmarks.gradio_floor --port P

Same input component (gr.File, type="filepath"), the same label output, the same queue
and concurrency limit; the handler only reads the uploaded bytes. Its server CPU per
request under the same client load is what Gradio's upload, queue and event stream cost
before any classifying starts, the part of row 5c no change to this project can remove.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gradio as gr


def build(concurrency: int) -> gr.Blocks:
    def predict(path: str) -> dict[str, float]:
        size = len(Path(path).read_bytes())
        return {"read": 1.0 if size else 0.0}

    with gr.Blocks() as demo:
        upload = gr.File(type="filepath")
        label = gr.Label()
        gr.Button().click(predict, upload, label, api_name="predict", concurrency_limit=concurrency)
    demo.queue(max_size=256)
    return demo


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gradio_floor", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--concurrency", type=int, required=True, help="app.py's /predict concurrency limit")
    args = parser.parse_args()
    build(args.concurrency).launch(server_name="127.0.0.1", server_port=args.port)
