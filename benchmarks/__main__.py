"""python -m benchmarks [--quick]: measure the classifier against its targets, write results.md.

Rows: 1 compute bound, 2a one-image predict vs seed-style, 2b-2e one-image predict and 3a-3d
batch of 32 on the four inference paths (ONNX Runtime int8 and float32, TensorFlow bfloat16 and
float32) interleaved against the compute bound, 4 Grad-CAM, 5 the real app.py under 1/4/16
concurrent clients with batching on and off (and its memory), 5c its CPU per request vs the
in-process CPU per image (beside a no-model Gradio app's floor), 5h its peak memory under the
hostile corpus from 16 clients, 5i the worst CPU one upload of each class costs to decode or
refuse, 6 and 6c cold start of the app and of the CLI, step by step, against TensorFlow bfloat16,
7 training (cold and warm feature cache) vs 10 measured seed-style epochs, 8 and 8i bfloat16 and
int8 vs float32, 9 a whole scan through /scan against TensorFlow bfloat16 and in-process
predict_batch (and the server's peak memory).
--quick (CI, a few minutes on 2 cores) runs fewer repeats and requests (1 and 16 clients only),
a 24-slice scan, and skips training.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from .common import DATA, Row, dataset_images, machine_description, render_table
from .readings import loadavg

HERE = Path(__file__).resolve().parent
ROW_NAMES = (
    "1. Compute bound",
    "2a. Predict, one image, vs seed-style",
    "2b. Predict, one image, vs compute bound, ONNX Runtime int8",
    "2c. Predict, one image, vs compute bound, ONNX Runtime float32",
    "2d. Predict, one image, vs compute bound, TensorFlow bfloat16",
    "2e. Predict, one image, vs compute bound, TensorFlow float32",
    "3a. Predict, batch of 32, per image, ONNX Runtime int8",
    "3b. Predict, batch of 32, per image, ONNX Runtime float32",
    "3c. Predict, batch of 32, per image, TensorFlow bfloat16",
    "3d. Predict, batch of 32, per image, TensorFlow float32",
    "4. Grad-CAM explanation",
    "5. Server /predict",
    "5c. Server CPU per /predict request",
    "5m. Server memory",
    "5h. Peak server RSS under the hostile corpus",
    "5i. Worst CPU per upload, per class",
    "6. Cold start",
    "6c. CLI predict, one slice, cold process",
    "7a. Training, cold feature cache",
    "7b. Training, warm feature cache",
    "8. bfloat16 backbone",
    "8i. int8 backbone",
    "9. Whole scan through /scan",
)
"""Every table has a row starting with each of these (tests check them)."""
SEED_EPOCHS = 10
"""Seed-style epochs the full run measures as row 7's baseline (slow: minutes; never extrapolated)."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="CI mode, a few minutes: few repeats and requests, no training")
    parser.add_argument("--output", type=Path,
                        help="markdown file to write (default: benchmarks/results.md, or results-quick.md with --quick)")
    parser.add_argument("--requests", type=int, help="timed requests per server run (default 500; --quick: 32 with 16 clients, a quarter with 1, no 4-client run)")
    parser.add_argument("--data", type=Path, default=DATA, help="the IQ-OTH/NCCD folder (default: %(default)s)")
    parser.add_argument("--skip-server", action="store_true", help="leave out rows 5, 6 and 9")
    parser.add_argument("--skip-training", action="store_true", help="leave out row 7")
    args = parser.parse_args(argv)
    if args.output is None:
        args.output = HERE / ("results-quick.md" if args.quick else "results.md")
    if args.requests is None:
        args.requests = 32 if args.quick else 500
    return args


def run_kind(args: argparse.Namespace) -> str:
    """What the run left out, for the report's first line."""
    if args.quick:
        return "quick: few repeats, CI smoke run"
    left_out = [what for flag, what in ((args.skip_server, "rows 5, 6 and 9"), (args.skip_training, "row 7"))
                if flag]
    fewer = [f"{args.requests} requests per server run"] if args.requests != 500 else []
    return "full run" + (f", without {' and '.join(left_out)}" if left_out else "") + (
        f", {fewer[0]}" if fewer else "")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def skipped(name: str, why: str) -> Row:
    return Row(name, f"not measured ({why})", "—", "—", "—", "—", "—", "")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    load_before = loadavg()
    from . import inference

    paths = dataset_images(args.data)
    log(f"{'quick' if args.quick else 'full'} run on {len(paths)} images from {args.data}")
    machine = machine_description()
    settings = inference.QUICK if args.quick else inference.FULL
    infer = inference.run(paths, settings, log)
    rows = [r for r in infer.rows if not r.name.startswith("8")]
    late_rows = [r for r in infer.rows if r.name.startswith("8")]
    details: list[str] = ["## Inference", "", *infer.details]

    from . import hostile

    if args.skip_server:
        rows += [skipped("5. Server /predict", "--skip-server"),
                 skipped("5c. Server CPU per /predict request", "--skip-server"),
                 skipped("5m. Server memory", "--skip-server"),
                 skipped("5h. Peak server RSS under the hostile corpus", "--skip-server"),
                 hostile.cpu_row(log),
                 skipped("6. Cold start", "--skip-server"),
                 skipped("6c. CLI predict, one slice, cold process", "--skip-server")]
        scan_rows = [skipped("9. Whole scan through /scan", "--skip-server")]
    else:
        from . import server

        counts = {clients: args.requests for clients in server.CLIENT_COUNTS}
        if args.quick:  # to stay under two minutes: no 4-client runs, fewer requests for one client
            counts = {1: max(4, args.requests // 4), max(server.CLIENT_COUNTS): args.requests}
        served = server.run(paths, counts, batch_rate=infer.batch_rate, one_rate=infer.one_rate, log=log,
                            cpu_repeats=2 if args.quick else 5)
        rows += served.rows
        rows += [hostile.run(paths[0], args.quick, log), hostile.cpu_row(log)]
        from . import cold_start

        rows += cold_start.run(paths[0], 1 if args.quick else 3, log)
        details += ["", "## Server under load", "", *served.details]
        from . import scan

        scan_rows = [scan.run(paths, args.quick, log)]

    if args.quick or args.skip_training:
        why = "--quick" if args.quick else "--skip-training"
        rows += [skipped("7a. Training, cold feature cache", why), skipped("7b. Training, warm feature cache", why)]
    else:
        from . import training_bench

        trained = training_bench.run(warm_repeats=2, seed_epochs=SEED_EPOCHS, log=log, data=args.data)
        rows += trained.rows
        details += ["", "## Training", "", *trained.details]
    rows += late_rows + scan_rows

    elapsed = time.perf_counter() - started
    table = render_table(rows)
    misses = [f"- {row.name}: {row.met.replace('**no**: ', '')}" for row in rows if row.met.startswith("**no**")]
    command = " ".join(["python -m benchmarks", *(sys.argv[1:] if argv is None else argv)])
    document = "\n".join([
        "# Benchmarks",
        "",
        f"`{command}` on {when}, {elapsed / 60:.1f} minutes ({run_kind(args)}).",
        "",
        "## Machine",
        "",
        *machine,
        f"- Load average (1/5/15 min) at start: {load_before}; at end: {loadavg()} "
        "(above the core count means other processes competed for the CPUs during the run)",
        "",
        "## Results",
        "",
        table,
        "",
        "Medians of wall-clock times of warm calls (one untimed call first); the spread is min–max and the "
        "interquartile range over the repeated runs; every baseline was measured in this same run. "
        "Compute bound = ResNet50 FLOPs per image at 224×224 (2 FLOPs per multiply-add, conv and dense "
        "layers only) ÷ the float32 GEMM rate (tf.matmul 4096×4096) measured in this run.",
        "",
        "## Targets missed",
        "",
        *(misses or ["- none"]),
        "",
        *details,
        "",
    ])
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(document)
    print(table)
    print(f"\nWritten to {args.output} ({elapsed:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
