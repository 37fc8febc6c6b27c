"""Rows 1-4 and 8: compute bound, one-image predict, batch of 32, Grad-CAM, bfloat16.

All in one process with the package loaded once (as a server holds it), each measurement
warm, and the seed-style baseline interleaved call by call with ours.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .common import Row, Stats, measure, measure_interleaved, ms, verdict_at_least, verdict_at_most, x
from .compute import count_flops, gemm_rate, head_flops

GEMM_SIZE = 4096
BATCH = 32


@dataclass
class Settings:
    gemm_repeats: int
    one_repeats: int
    batch_repeats: int
    explain_repeats: int
    bf16: bool


FULL = Settings(gemm_repeats=9, one_repeats=30, batch_repeats=8, explain_repeats=20, bf16=True)
QUICK = Settings(gemm_repeats=3, one_repeats=5, batch_repeats=2, explain_repeats=3, bf16=False)


@dataclass
class InferenceResults:
    rows: list[Row]
    batch_rate: float  # images/s of predict_batch(32), for the server row's target
    one_rate: float  # images/s of predict(one path), for the unbatched server rows
    compute_bound_s: float
    details: list[str] = field(default_factory=list)


def run(paths: list[Path], settings: Settings, log) -> InferenceResults:
    from lung_classifier import LungClassifier
    from lung_classifier.model import Head
    from lung_classifier.preprocessing import prepare_batch
    from lung_classifier.images import load_rgb

    from .seed import build_seed_model, seed_predict

    log("loading the package (LungClassifier.from_pretrained) and the seed-style Keras model")
    started = time.perf_counter()
    classifier = LungClassifier.from_pretrained()
    load_s = time.perf_counter() - started
    size = classifier.input_size
    head = Head.load(classifier.directory / "head.npz")
    seed_model = build_seed_model(head, size)
    flops = count_flops(seed_model)
    total_flops = flops.total + head_flops(head)
    rows: list[Row] = []
    details: list[str] = []

    # Row 1 ---------------------------------------------------------------
    log(f"GEMM rate: float32 {GEMM_SIZE}x{GEMM_SIZE} matmul x{settings.gemm_repeats}")
    rate = gemm_rate(GEMM_SIZE, settings.gemm_repeats)
    bound = total_flops / rate.median
    bound_samples = Stats.of(total_flops / r for r in rate.samples)
    rows.append(Row(
        name="1. Compute bound (ResNet50 @224, float32)",
        measured=f"{ms(bound)}/image",
        spread=bound_samples.spread(ms),
        baseline=f"{total_flops / 1e9:.2f} GFLOP ÷ {rate.median / 1e9:.0f} GFLOP/s",
        ratio="1.00x (reference)",
        target="reference for rows 2-4",
        met="—",
        notes=(f"FLOPs = 2 × multiply-adds of {flops.layers} conv/dense layers ({flops.conv / 1e9:.3f} G conv) "
               f"+ head {head_flops(head) / 1e6:.2f} M; GEMM = tf.matmul {GEMM_SIZE}² float32, "
               f"{rate.low / 1e9:.0f}–{rate.high / 1e9:.0f} GFLOP/s over {rate.n} runs"),
    ))

    # Row 2 ---------------------------------------------------------------
    log(f"predict one image: ours vs seed-style, interleaved x{settings.one_repeats}")
    labels = classifier.labels
    one = measure_interleaved({
        "ours": lambda i: classifier.predict(paths[i % len(paths)]),
        "seed": lambda i: seed_predict(seed_model, paths[i % len(paths)], labels, size),
    }, repeats=settings.one_repeats)
    ours, seed = one["ours"], one["seed"]
    speedup = seed.median / ours.median
    rows.append(Row(
        name="2a. Predict, one image, vs seed-style",
        measured=f"{ms(ours.median)}",
        spread=ours.spread(ms),
        baseline=f"seed-style {ms(seed.median)} ({seed.spread(ms)})",
        ratio=f"{x(speedup)} faster",
        target="≥2x faster than seed-style",
        met=verdict_at_least(speedup, 2.0, " faster"),
        notes="ours: LungClassifier.predict(path) (decode+resize+SavedModel signature); seed: keras load_img + "
              "model.predict(array) on the same network held in memory",
    ))
    ratio = ours.median / bound
    rows.append(Row(
        name="2b. Predict, one image, vs compute bound",
        measured=f"{ms(ours.median)}",
        spread=ours.spread(ms),
        baseline=f"compute bound {ms(bound)}",
        ratio=x(ratio),
        target="≤1.3x compute bound",
        met=verdict_at_most(ratio, 1.3),
        notes="batch of 1: convolutions on one image use the 2 cores less well than one big GEMM",
    ))

    # Row 3 ---------------------------------------------------------------
    log(f"predict_batch of {BATCH} x{settings.batch_repeats}")
    groups = [[paths[(k * BATCH + j) % len(paths)] for j in range(BATCH)] for k in range(settings.batch_repeats + 1)]
    batch = measure(lambda i: classifier.predict_batch(groups[i]), repeats=settings.batch_repeats)
    per_image = batch.scaled(1 / BATCH)
    decode = measure(lambda i: prepare_batch([load_rgb(p) for p in groups[i]], size),
                     repeats=max(1, settings.batch_repeats // 2)).scaled(1 / BATCH)
    ratio = per_image.median / bound
    rows.append(Row(
        name=f"3. Predict, batch of {BATCH}, per image",
        measured=f"{ms(per_image.median)}/image ({1 / per_image.median:.2f} images/s)",
        spread=per_image.spread(ms),
        baseline=f"compute bound {ms(bound)}",
        ratio=x(ratio),
        target="≤1.1x compute bound",
        met=verdict_at_most(ratio, 1.1),
        notes=f"predict_batch(32 paths); decode+resize alone {ms(decode.median)}/image of it",
    ))

    # Row 4 ---------------------------------------------------------------
    log(f"analyze(explain=True) x{settings.explain_repeats}")
    explain = measure(lambda i: classifier.analyze(paths[i % len(paths)], explain=True),
                      repeats=settings.explain_repeats)
    ratio = explain.median / bound
    rows.append(Row(
        name="4. Grad-CAM explanation, per image",
        measured=ms(explain.median),
        spread=explain.spread(ms),
        baseline=f"compute bound {ms(bound)}",
        ratio=x(ratio),
        target="≤3x compute bound",
        met=verdict_at_most(ratio, 3.0),
        notes="analyze(path, explain=True): forward + gradient to the conv4 tap + heatmap upsampling",
    ))

    # Row 8 ---------------------------------------------------------------
    if settings.bf16:
        rows.append(_bfloat16_row(seed_model, flops.total, size, settings, log))
    else:
        rows.append(Row("8. bfloat16 backbone, batch of 32", "not measured (--quick)", "—", "—", "—",
                        "optional", "—", "run without --quick"))

    details.append(f"- Package load (LungClassifier.from_pretrained, package already built): {load_s:.1f} s")
    details.append(f"- Seed-style sanity: same network; ours returns {len(labels)} calibrated probabilities "
                   f"({', '.join(labels)})")
    return InferenceResults(rows=rows, batch_rate=1 / per_image.median, one_rate=1 / ours.median,
                            compute_bound_s=bound, details=details)


def _bfloat16_row(seed_model, backbone_flops: int, size: int, settings: Settings, log) -> Row:
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
    rate = gemm_rate(GEMM_SIZE, max(3, settings.gemm_repeats // 2), dtype="bfloat16")
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
