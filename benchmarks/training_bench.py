"""Row 7: `python -m training` (cold and warm feature cache) against 10+ measured seed-style epochs.

Every run is a fresh process timed from its start to its exit (wall clock, and the CPU
seconds the child used, which other load on the machine inflates less). The cold-cache
run points LUNG_CLASSIFIER_CACHE at an empty directory (and LUNG_CLASSIFIER_RESNET50_WEIGHTS
at the already-resolved weights file, so nothing is downloaded or imported): every image
goes through ResNet50 once per view. The warm-cache runs reuse that directory: the
features are read back. The baseline is seed-style training (benchmarks.seed_training)
for `seed_epochs` epochs, every one measured, none extrapolated.

Quality is compared on the same slices: the seed-style model is trained on the training
slices of the first fold of the same grouped CV and scored on its test slices, which are
exactly the slices `python -m training` scores as its first CV fold (metrics.json
`cv_folds[0]`, the whole pipeline fitted without them). Ours' mean over all K x R folds
is shown beside it.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import DATA, REPO, Row, Stats, secs, verdict_at_least, x

TARGET = 10.0
"""`python -m training` must be at least this many times faster than the seed-style epochs."""


@dataclass
class TrainingResults:
    rows: list[Row]
    details: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Timed:
    wall: float
    cpu: float  # user + system seconds of the child process
    stdout: str


def _timed(command: list[str], env: dict[str, str], log_path: Path) -> Timed:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    log_path.write_text(f"$ {' '.join(command)}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}")
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} exited with {done.returncode}; log: {log_path}\n"
                           f"{done.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Timed(wall, cpu, done.stdout)


def cv_metrics(package: Path) -> dict[str, float]:
    """The package's CV mean macro-F1 and accuracy, and both on its first fold."""
    metrics = json.loads((package / "metrics.json").read_text())
    first = metrics["cv_folds"][0]
    return {"macro_f1": metrics["cv"]["macro_f1"]["mean"], "accuracy": metrics["cv"]["accuracy"]["mean"],
            "fold1_macro_f1": first["macro_f1"], "fold1_accuracy": first["accuracy"], "fold1_n": first["n"]}


def run(warm_repeats: int, seed_epochs: int, log, data: Path = DATA) -> TrainingResults:
    from lung_classifier.model import backbone

    weights = backbone.resolve_weights().path
    work = Path(tempfile.mkdtemp(prefix="lung-bench-training-"))
    try:
        cache = work / "cache"
        cache.mkdir()
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "HF_HUB_OFFLINE": "1",
               "LUNG_CLASSIFIER_CACHE": str(cache), "LUNG_CLASSIFIER_RESNET50_WEIGHTS": str(weights)}
        ours = [sys.executable, "-m", "training", "--data", str(data)]

        log("training: ours, cold feature cache")
        cold = _timed(ours + ["--output", str(work / "cold")], env, work / "cold.log")
        metrics = cv_metrics(work / "cold")
        log(f"  {cold.wall:.0f} s ({cold.cpu:.0f} s CPU), CV macro-F1 {metrics['macro_f1']:.3f}")
        warm = []
        for index in range(warm_repeats):
            log(f"training: ours, warm feature cache ({index + 1}/{warm_repeats})")
            warm.append(_timed(ours + ["--output", str(work / f"warm{index}")], env, work / f"warm{index}.log"))
            log(f"  {warm[-1].wall:.0f} s ({warm[-1].cpu:.0f} s CPU)")
        if cv_metrics(work / "warm0") != metrics:
            raise RuntimeError("the warm-cache run's CV metrics differ from the cold run's: the cache changed results")

        log(f"training: seed-style, {seed_epochs} measured epochs through the frozen ResNet50")
        seed_run = _timed([sys.executable, "-m", "benchmarks.seed_training", "--data", str(data),
                           "--epochs", str(seed_epochs)], env, work / "seed.log")
        seed = json.loads(seed_run.stdout.strip().splitlines()[-1])
        log(f"  {seed_run.wall:.0f} s, first-fold macro-F1 {seed['test_macro_f1']:.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return TrainingResults(rows(cold, warm, metrics, seed), details(cold, warm, metrics, seed, seed_run, data))


def rows(cold: Timed, warm: list[Timed], ours: dict[str, float], seed: dict[str, Any]) -> list[Row]:
    """Rows 7a/7b: ours against the seed-style epochs, both measured; the verdict also needs equal or better macro-F1."""
    epochs = sum(seed["epoch_seconds"])
    quality_ok = ours["fold1_macro_f1"] >= seed["test_macro_f1"]
    quality = (f"first CV fold ({ours['fold1_n']} test slices, same for both): macro-F1 ours "
               f"{ours['fold1_macro_f1']:.3f} vs seed-style {seed['test_macro_f1']:.3f}; ours over all CV folds "
               f"{ours['macro_f1']:.3f}")
    result = []
    for name, runs in (("7a. Training, cold feature cache", [cold]), ("7b. Training, warm feature cache", warm)):
        wall, cpu = Stats.of([r.wall for r in runs]), Stats.of([r.cpu for r in runs])
        speedup = epochs / wall.median
        verdict = verdict_at_least(speedup, TARGET, " faster")
        if not quality_ok:
            speed = "speed met" if verdict == "yes" else verdict.replace("**no**: ", "")
            verdict = (f"**no**: first-fold macro-F1 {ours['fold1_macro_f1']:.3f} < seed-style "
                       f"{seed['test_macro_f1']:.3f}; {speed}")
        result.append(Row(
            name=name, measured=f"{secs(wall.median)} wall, {secs(cpu.median)} CPU", spread=wall.spread(secs),
            baseline=f"seed-style {len(seed['epoch_seconds'])} measured epochs: {secs(epochs)} (n=1)",
            ratio=f"{x(speedup)} faster", target=f"≥{TARGET:g}x faster at equal or better macro-F1", met=verdict,
            notes=quality))
    return result


def details(cold: Timed, warm: list[Timed], ours: dict[str, float], seed: dict[str, Any], seed_run: Timed,
            data: Path) -> list[str]:
    seed_line = (
        f"- Seed-style run ({len(seed['epoch_seconds'])} epochs, every one measured): {secs(seed_run.wall)} wall "
        f"({secs(seed_run.cpu)} CPU) = {secs(seed['prepare_seconds'])} reading/decoding + split, model build, "
        f"{', '.join(secs(s) for s in seed['epoch_seconds'])} per epoch (train {seed['n']['train']} + validation "
        f"{seed['n']['val']} images through ResNet50 each), {secs(seed['test_seconds'])} test prediction; "
        f"on {seed['evaluated_on']}: accuracy {seed['test_accuracy']:.3f}, macro-F1 {seed['test_macro_f1']:.3f} "
        f"({seed['n']['test']} test slices).")
    ours_line = (
        f"- Ours: `python -m training --data {data} --output <tmp>` (every CV step, the full package with "
        f"SavedModel export and its verification); cold cache {secs(cold.wall)} ({secs(cold.cpu)} CPU), warm "
        f"cache {', '.join(f'{secs(r.wall)} ({secs(r.cpu)} CPU)' for r in warm)}; on the same first fold: accuracy "
        f"{ours['fold1_accuracy']:.3f}, macro-F1 {ours['fold1_macro_f1']:.3f} (with the Malignant-first decision "
        f"rule); mean over all CV folds: accuracy {ours['accuracy']:.3f}, macro-F1 {ours['macro_f1']:.3f}.")
    return [seed_line, ours_line]
