"""Rows 1-4 and 8: compute bound, one-image predict, batch of 32, Grad-CAM, bfloat16.

All in one process with the package loaded once (as a server holds it), each measurement
warm, the seed-style baseline interleaved call by call with ours, and a float32 GEMM timed
after every call, so each ratio to the compute bound uses the machine's speed of that moment.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .common import Row, Stats, measure, measure_interleaved, ms, verdict_at_least, verdict_at_most, x
from .compute import Gemm, count_flops, gemm_rate, head_flops

GEMM_SIZE = 4096
BATCH = 32


@dataclass
class Settings:
    one_repeats: int
    batch_repeats: int
    explain_repeats: int
    bf16: bool
    sweep: bool  # per-image time against batch size, for the details section


FULL = Settings(one_repeats=30, batch_repeats=8, explain_repeats=20, bf16=True, sweep=True)
QUICK = Settings(one_repeats=4, batch_repeats=2, explain_repeats=3, bf16=False, sweep=False)
SWEEP = (1, 2, 4, 8, 16, 32)


@dataclass
class InferenceResults:
    rows: list[Row]
    batch_rate: float  # images/s of predict_batch(32), for the server row's target
    one_rate: float  # images/s of predict(one path), for the unbatched server rows
    compute_bound_s: float
    details: list[str] = field(default_factory=list)


def run(paths: list[Path], settings: Settings, log) -> InferenceResults:
    from lung_classifier import LungClassifier
    from lung_classifier.images import load_rgb
    from lung_classifier.model import Head
    from lung_classifier.preprocessing import prepare_batch

    from .seed import build_seed_model, seed_predict

    log("loading the package (LungClassifier.from_pretrained) and the seed-style Keras model")
    started = time.perf_counter()
    classifier = LungClassifier.from_pretrained()
    load_s = time.perf_counter() - started
    size, labels = classifier.input_size, classifier.labels
    head = Head.load(classifier.directory / "head.npz")
    seed_model = build_seed_model(head, size)
    flops = count_flops(seed_model)
    total_flops = flops.total + head_flops(head)
    gemm = Gemm(GEMM_SIZE)

    def bound_of(gemm_seconds: float) -> float:
        """Compute-bound seconds per image at the GEMM rate of one timed matmul."""
        return total_flops * gemm_seconds / gemm.flops

    def bound_stats(gemm_times: Stats) -> Stats:
        return Stats.of(bound_of(t) for t in gemm_times.samples)

    def ratios(times: Stats, gemm_times: Stats) -> Stats:
        """Per repetition: the call's time over the bound from the matmul timed right after it."""
        return Stats.of(t / bound_of(g) for t, g in zip(times.samples, gemm_times.samples))

    log(f"predict one image: ours, seed-style and a {GEMM_SIZE}² GEMM interleaved x{settings.one_repeats}")
    one = measure_interleaved({
        "ours": lambda i: classifier.predict(paths[i % len(paths)]),
        "seed": lambda i: seed_predict(seed_model, paths[i % len(paths)], labels, size),
        "gemm": gemm,
    }, repeats=settings.one_repeats)

    log(f"predict_batch of {BATCH} and GEMM interleaved x{settings.batch_repeats}")
    groups = [[paths[(k * BATCH + j) % len(paths)] for j in range(BATCH)] for k in range(settings.batch_repeats + 1)]
    batch = measure_interleaved({"batch": lambda i: classifier.predict_batch(groups[i]), "gemm": gemm},
                                repeats=settings.batch_repeats)
    per_image = batch["batch"].scaled(1 / BATCH)
    decode = measure(lambda i: prepare_batch([load_rgb(p) for p in groups[i]], size),
                     repeats=max(1, settings.batch_repeats // 2)).scaled(1 / BATCH)

    log(f"analyze(explain=True) and GEMM interleaved x{settings.explain_repeats}")
    explain = measure_interleaved({"explain": lambda i: classifier.analyze(paths[i % len(paths)], explain=True),
                                   "gemm": gemm}, repeats=settings.explain_repeats)

    gemm_times = Stats.of(one["gemm"].samples + batch["gemm"].samples + explain["gemm"].samples)
    rate = Stats.of(gemm.flops / t for t in gemm_times.samples)
    bounds = bound_stats(gemm_times)
    bound = bounds.median
    rows: list[Row] = []
    details: list[str] = []

    # Row 1 ---------------------------------------------------------------
    rows.append(Row(
        name="1. Compute bound (ResNet50 @224, float32)",
        measured=f"{ms(bound)}/image",
        spread=bounds.spread(ms),
        baseline=f"{total_flops / 1e9:.2f} GFLOP ÷ {rate.median / 1e9:.0f} GFLOP/s",
        ratio="1.00x (reference)",
        target="reference for rows 2-4",
        met="—",
        notes=(f"FLOPs = 2 × multiply-adds of {flops.layers} conv/dense layers ({flops.conv / 1e9:.3f} G conv) "
               f"+ head {head_flops(head) / 1e6:.2f} M; GEMM = tf.matmul {GEMM_SIZE}² float32 timed once after "
               f"every call of rows 2-4 ({rate.n} runs, {rate.low / 1e9:.0f}–{rate.high / 1e9:.0f} GFLOP/s); "
               "a reference, not a hard floor: oneDNN convolutions can beat tf.matmul's rate"),
    ))

    # Row 2 ---------------------------------------------------------------
    ours, seed = one["ours"], one["seed"]
    speedup = seed.median / ours.median
    rows.append(Row(
        name="2a. Predict, one image, vs seed-style",
        measured=ms(ours.median),
        spread=ours.spread(ms),
        baseline=f"seed-style {ms(seed.median)} ({seed.spread(ms)})",
        ratio=f"{x(speedup)} faster",
        target="≥2x faster than seed-style",
        met=verdict_at_least(speedup, 2.0, " faster"),
        notes="ours: LungClassifier.predict(path) (decode+resize+SavedModel signature); seed: keras load_img + "
              "model.predict(array) on the same network held in memory; calls interleaved",
    ))
    one_ratio = ratios(ours, one["gemm"])
    rows.append(Row(
        name="2b. Predict, one image, vs compute bound",
        measured=ms(ours.median),
        spread=ours.spread(ms),
        baseline=f"compute bound {ms(bound_stats(one['gemm']).median)}",
        ratio=f"{x(one_ratio.median)} ({x(one_ratio.low)}–{x(one_ratio.high)})",
        target="≤1.3x compute bound",
        met=verdict_at_most(one_ratio.median, 1.3),
        notes="ratio per call against the GEMM timed next to it; batch of 1 gives each convolution little "
              "parallel work for the cores (see the batch-size sweep below)",
    ))

    # Row 3 ---------------------------------------------------------------
    batch_ratio = ratios(per_image, batch["gemm"])
    rows.append(Row(
        name=f"3. Predict, batch of {BATCH}, per image",
        measured=f"{ms(per_image.median)}/image ({1 / per_image.median:.2f} images/s)",
        spread=per_image.spread(ms),
        baseline=f"compute bound {ms(bound_stats(batch['gemm']).median)}",
        ratio=f"{x(batch_ratio.median)} ({x(batch_ratio.low)}–{x(batch_ratio.high)})",
        target="≤1.1x compute bound",
        met=verdict_at_most(batch_ratio.median, 1.1),
        notes=f"predict_batch(32 paths); decode+resize alone {ms(decode.median)}/image of it",
    ))

    # Row 4 ---------------------------------------------------------------
    explain_ratio = ratios(explain["explain"], explain["gemm"])
    rows.append(Row(
        name="4. Grad-CAM explanation, per image",
        measured=ms(explain["explain"].median),
        spread=explain["explain"].spread(ms),
        baseline=f"compute bound {ms(bound_stats(explain['gemm']).median)}",
        ratio=f"{x(explain_ratio.median)} ({x(explain_ratio.low)}–{x(explain_ratio.high)})",
        target="≤3x compute bound",
        met=verdict_at_most(explain_ratio.median, 3.0),
        notes="analyze(path, explain=True), one image: forward + gradient to the conv4 tap + heatmap upsampling",
    ))

    # Row 8 ---------------------------------------------------------------
    if settings.bf16:
        rows.append(_bfloat16_row(flops.total, size, settings, log))
    else:
        rows.append(Row("8. bfloat16 backbone, batch of 32", "not measured (--quick)", "—", "—", "—",
                        "optional", "—", "run without --quick"))

    if settings.sweep:
        log(f"batch-size sweep {SWEEP}")
        cells = []
        for n in SWEEP:
            timed = measure_interleaved({
                "batch": lambda i: classifier.predict_batch([paths[(i * n + j) % len(paths)] for j in range(n)]),
                "gemm": gemm}, repeats=3)
            ratio = ratios(timed["batch"].scaled(1 / n), timed["gemm"]).median
            cells.append(f"{n}: {ms(timed['batch'].median / n)} ({x(ratio)})")
        details.append("- predict_batch per-image time by batch size (median of 3; ratio to the compute bound "
                       "from the GEMM timed alongside): " + ", ".join(cells))
    details.append(f"- Package load (LungClassifier.from_pretrained, package already built): {load_s:.1f} s")
    return InferenceResults(rows=rows, batch_rate=1 / per_image.median, one_rate=1 / ours.median,
                            compute_bound_s=bound, details=details)


def _bfloat16_row(backbone_flops: int, size: int, settings: Settings, log) -> Row:
    """The same extractor under Keras's mixed_bfloat16 policy against float32, batch of 32."""
    import keras
    import tensorflow as tf

    from lung_classifier import backbone
    from lung_classifier.model import build_extractor, pool

    log("bfloat16: mixed_bfloat16 extractor vs float32 extractor, batch of 32, and bf16 GEMM")
    float_extractor = build_extractor(backbone.load_resnet50(backbone.resolve_weights(), (size, size, 3)))
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        bf16_extractor = build_extractor(backbone.load_resnet50(backbone.resolve_weights(), (size, size, 3)))
    finally:
        keras.config.set_dtype_policy(previous)
    spec = [tf.TensorSpec([None, size, size, 3], tf.float32)]
    f32 = tf.function(lambda images: pool(float_extractor(images, training=False)), input_signature=spec)
    bf16 = tf.function(lambda images: pool([tf.cast(m, tf.float32) for m in bf16_extractor(images, training=False)]),
                       input_signature=spec)
    images = tf.constant(np.random.default_rng(0).uniform(0, 255, (BATCH, size, size, 3)).astype(np.float32))
    reference, approximate = f32(images).numpy(), bf16(images).numpy()
    error = float(np.abs(reference - approximate).max() / np.abs(reference).max())
    timed = measure_interleaved({"f32": lambda i: f32(images).numpy(), "bf16": lambda i: bf16(images).numpy()},
                                repeats=max(3, settings.batch_repeats))
    rate = gemm_rate(GEMM_SIZE, 5, dtype="bfloat16")
    f32_img, bf16_img = timed["f32"].scaled(1 / BATCH), timed["bf16"].scaled(1 / BATCH)
    return Row(
        name="8. bfloat16 backbone, batch of 32 (optional)",
        measured=f"{ms(bf16_img.median)}/image",
        spread=bf16_img.spread(ms),
        baseline=f"float32 same graph {ms(f32_img.median)}/image",
        ratio=f"{x(f32_img.median / bf16_img.median)} faster",
        target="optional, no target",
        met="—",
        notes=(f"extractor only (tf.function, no decode); bf16 GEMM {rate.median / 1e9:.0f} GFLOP/s → bf16 bound "
               f"{ms(backbone_flops / rate.median)}/image; max feature error {error:.1%} of the largest feature; "
               "not used by the library"),
    )
