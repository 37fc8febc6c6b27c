"""Rows 1-4 and 8: compute bound, one-image predict, batch of 32, Grad-CAM, backbone precision.

All in one process with the package loaded once (as a server holds it), each measurement
warm, the seed-style baseline interleaved call by call with ours, and a float32 GEMM timed
after every call, so each ratio to the compute bound uses the machine's speed of that moment.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from .common import Row, Stats, measure, measure_interleaved, ms, verdict_at_least, verdict_at_most, x
from .compute import Gemm, count_flops, gemm_rate, head_flops

GEMM_SIZE = 4096
BATCH = 32


@dataclass
class Settings:
    one_repeats: int
    batch_repeats: int
    explain_repeats: int
    precision: bool  # row 8: the shipped precision against float32 (a second package build)
    sweep: bool  # per-image time against batch size, for the details section


FULL = Settings(one_repeats=30, batch_repeats=8, explain_repeats=20, precision=True, sweep=True)
QUICK = Settings(one_repeats=4, batch_repeats=2, explain_repeats=3, precision=False, sweep=False)
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
    from lung_classifier.decoding.images import load_rgb
    from lung_classifier.model.head import Head
    from lung_classifier.model.preprocessing import prepare_batch

    from .seed import build_seed_model, seed_predict

    log("loading the package (LungClassifier.from_pretrained, precision auto) and the seed-style Keras model")
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

    log(f"analyze(explain=True), predict and GEMM interleaved x{settings.explain_repeats}")
    explain = measure_interleaved({"explain": lambda i: classifier.analyze(paths[i % len(paths)], explain=True),
                                   "predict": lambda i: classifier.predict(paths[i % len(paths)]),
                                   "gemm": gemm}, repeats=settings.explain_repeats)

    log(f"predict(path) at batch 1, step by step x{settings.one_repeats}")
    steps = breakdown(classifier, paths, settings.one_repeats)

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
    to_seed = ours.median / seed.median
    rows.append(Row(
        name="2a. Predict, one image, vs seed-style",
        measured=ms(ours.median),
        spread=ours.spread(ms),
        baseline=f"seed-style {ms(seed.median)} ({seed.spread(ms)})",
        ratio=f"{x(to_seed)} of seed-style ({x(1 / to_seed)} faster)",
        target="≤0.35x seed-style",
        met=verdict_at_most(to_seed, 0.35, " of seed-style"),
        notes=f"ours: LungClassifier.predict(path), backbone in {classifier.precision} (precision auto); seed: keras "
              "load_img + model.predict(array), float32, the same network held in memory; calls interleaved; "
              "where the time goes: see 'predict(path) at batch 1, step by step' below",
    ))
    one_ratio = ratios(ours, one["gemm"])
    rows.append(Row(
        name="2b. Predict, one image, vs compute bound",
        measured=ms(ours.median),
        spread=ours.spread(ms),
        baseline=f"float32 compute bound {ms(bound_stats(one['gemm']).median)}",
        ratio=f"{x(one_ratio.median)} ({x(one_ratio.low)}–{x(one_ratio.high)})",
        target="≤2.0x float32 compute bound",
        met=verdict_at_most(one_ratio.median, 2.0),
        notes=f"ratio per call against the GEMM timed next to it; the graph alone at batch 1 takes "
              f"{ms(steps['signature'].median)} of it (a batch of 1 gives each convolution little parallel work)",
    ))

    # Row 3 ---------------------------------------------------------------
    batch_ratio = ratios(per_image, batch["gemm"])
    rows.append(Row(
        name=f"3. Predict, batch of {BATCH}, per image",
        measured=f"{ms(per_image.median)}/image ({1 / per_image.median:.2f} images/s)",
        spread=per_image.spread(ms),
        baseline=f"float32 compute bound {ms(bound_stats(batch['gemm']).median)}",
        ratio=f"{x(batch_ratio.median)} ({x(batch_ratio.low)}–{x(batch_ratio.high)})",
        target="≤1.0x float32 compute bound",
        met=verdict_at_most(batch_ratio.median, 1.0),
        notes=f"predict_batch(32 paths), backbone in {classifier.precision}; decode+resize alone "
              f"{ms(decode.median)}/image of it",
    ))

    # Row 4 ---------------------------------------------------------------
    explain_ratio = Stats.of(e / p for e, p in zip(explain["explain"].samples, explain["predict"].samples))
    rows.append(Row(
        name="4. Grad-CAM explanation, per image",
        measured=ms(explain["explain"].median),
        spread=explain["explain"].spread(ms),
        baseline=f"predict(path) {ms(explain['predict'].median)}",
        ratio=f"{x(explain_ratio.median)} ({x(explain_ratio.low)}–{x(explain_ratio.high)})",
        target="≤2.0x one-image predict",
        met=verdict_at_most(explain_ratio.median, 2.0),
        notes=f"analyze(path, explain=True) against predict(path), interleaved, backbone in {classifier.precision}: "
              "forward + gradient from the decided logit back through conv5 to the conv4 tap + heatmap upsampling",
    ))

    # Row 8 ---------------------------------------------------------------
    if settings.precision:
        rows.append(_precision_row(classifier, groups, flops.total, settings, log))
    else:
        rows.append(Row(f"8. bfloat16 backbone (this run: {classifier.precision})", "not measured (--quick)", "—",
                        "—", "—", "faster than float32 at float32's answers", "—", "run without --quick"))

    details.append(_breakdown_line(steps, ours))
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


def breakdown(classifier, paths: list[Path], repeats: int) -> dict[str, Stats]:
    """predict(path) at batch 1 and its steps, interleaved: decode, resize, the graph, all of it."""
    import tensorflow as tf

    from lung_classifier.model.preprocessing import prepare_batch

    size = classifier.input_size
    rgbs = [classifier.read(paths[i % len(paths)]).rgb for i in range(repeats + 1)]
    tensors = [tf.constant(prepare_batch([rgb], size)) for rgb in rgbs]
    return measure_interleaved({
        "decode": lambda i: classifier.read(paths[i % len(paths)]),
        "prepare": lambda i: tf.constant(prepare_batch([rgbs[i]], size)),
        "signature": lambda i: {k: v.numpy() for k, v in classifier._predict(images=tensors[i]).items()},
        "total": lambda i: classifier.predict(paths[i % len(paths)]),
    }, repeats=repeats)


def _breakdown_line(steps: dict[str, Stats], ours: Stats) -> str:
    parts = {name: steps[name].median for name in ("decode", "prepare", "signature")}
    total = steps["total"].median
    rest = total - sum(parts.values())
    shares = ", ".join(f"{name} {ms(t)} ({t / total:.0%})" for name, t in parts.items())
    return (f"- predict(path) at batch 1, step by step (medians of {steps['total'].n} interleaved runs): total "
            f"{ms(total)} (row 2's run: {ms(ours.median)}) = {shares}, and Python around them (Analysis, "
            f"dicts, OOD reason) {ms(rest)} ({rest / total:.0%}). decode = LungClassifier.read(path) (file to "
            "RGB uint8); prepare = bilinear resize to 224² float32 + tf.constant; signature = the SavedModel's "
            "serving_default at batch 1 on a ready tensor, outputs to NumPy: the raw graph, the head "
            f"(0.5 MFLOP) inside it. predict(path) / raw graph = {x(total / parts['signature'])}")


def _precision_row(classifier, groups: list[list[Path]], backbone_flops: int, settings: Settings, log) -> Row:
    """The shipped precision (auto) against the float32 rebuild of the same package, batch of 32."""
    from lung_classifier import LungClassifier
    from lung_classifier.decoding.images import load_rgb
    from lung_classifier.model import precision

    log("row 8: float32 package build against the shipped precision, batch of 32, and the bf16 GEMM rate")
    float32 = LungClassifier.from_pretrained(precision="float32")
    other = classifier if classifier.precision == "bfloat16" else LungClassifier.from_pretrained(precision="bfloat16")
    pieces = [[classifier.read(p) for p in group] for group in groups]
    timed = measure_interleaved({"f32": lambda i: float32.analyze_batch(pieces[i % len(pieces)]),
                                 "bf16": lambda i: other.analyze_batch(pieces[i % len(pieces)])},
                                repeats=max(3, settings.batch_repeats))
    answers32 = float32.analyze_batch([load_rgb(p) for p in groups[0]])
    answers16 = other.analyze_batch([load_rgb(p) for p in groups[0]])
    same = sum(a.label == b.label for a, b in zip(answers32, answers16))
    error = max(abs(a.probabilities[k] - b.probabilities[k]) for a, b in zip(answers32, answers16)
                for k in a.probabilities)
    rate = gemm_rate(GEMM_SIZE, 5, dtype="bfloat16")
    f32 = timed["f32"].scaled(1 / BATCH)
    bf16 = timed["bf16"].scaled(1 / BATCH)
    flags = sorted(precision.BF16_FLAGS & precision.cpu_flags()) or ["none"]
    return Row(
        name=f"8. bfloat16 backbone (this run: {classifier.precision}), batch of 32",
        measured=f"{ms(bf16.median)}/image",
        spread=bf16.spread(ms),
        baseline=f"float32 package {ms(f32.median)}/image",
        ratio=f"{x(f32.median / bf16.median)} faster",
        target="faster than float32 at float32's answers",
        met=verdict_at_least(f32.median / bf16.median, 1.0, " faster"),
        notes=(f"analyze_batch of 32 decoded slices, interleaved; CPU bf16 flags: {', '.join(flags)}; "
               f"bf16 GEMM {rate.median / 1e9:.0f} GFLOP/s → bf16 bound {ms(backbone_flops / rate.median)}/image; "
               f"here {same}/{BATCH} labels equal, max probability difference {error:.3f} (all 869 development "
               "slices: tests/test_precision.py); batch norms folded, stem in float32, images near a decision "
               "boundary or the OOD threshold recomputed in float32"),
    )
