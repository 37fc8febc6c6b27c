"""`python -m benchmarks --quick` runs end to end and reports every row (no timing assertions)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, need_shared_data, require


def _real_weights() -> str:
    """The real ImageNet ResNet50 notop weights file (a skip or, in CI, a failure saying why)."""
    from lung_classifier.model import backbone

    user_cache = Path("~/.cache/lung_classifier").expanduser() / backbone.CACHE_FILE_NAME
    if user_cache.is_file():
        return str(user_cache)
    try:
        return str(backbone.resolve_weights().path)
    except backbone.BackboneWeightsError as exc:
        require(False, f"real ResNet50 weights cannot be resolved: {exc}")


@pytest.mark.slow
def test_quick_benchmarks_run_and_report_every_row(tmp_path):
    from benchmarks.__main__ import ROW_NAMES
    from lung_classifier.model import backbone

    data = need_shared_data()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           # Our own cache: the package is rebuilt there (once, before anything is timed).
           "LUNG_CLASSIFIER_CACHE": str(tmp_path / "cache"), backbone.WEIGHTS_ENV: _real_weights()}
    output = tmp_path / "results.md"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--data", str(data), "--output", str(output)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-5000:]}"

    table = [line for line in done.stdout.splitlines() if line.startswith("|")]
    assert table[0].startswith("| Row | Measured (median) | Spread | Baseline (same run) | Ratio | Target | Met?")
    names = [line.split("|")[1].strip() for line in table[2:]]
    for expected in ROW_NAMES:
        assert any(name.startswith(expected) for name in names), f"no row {expected!r} in {names}"
    server_rows = [line for line in table if line.startswith("| 5. Server /predict")]
    assert {"on", "off"} == {row.split("batching ")[1].split()[0] for row in server_rows}
    assert all(", 0 failed" in row for row in server_rows), "the server failed requests:\n" + "\n".join(server_rows)

    written = output.read_text()
    assert "## Machine" in written and "TensorFlow" in written and "CPU:" in written
    assert "\n".join(table) in written


def test_training_rows_compare_measured_epochs_and_the_same_fold():
    """Row 7's verdict: speed against the sum of the measured seed-style epochs, quality on the shared first fold."""
    from benchmarks.training_bench import Timed, rows

    seed = {"epoch_seconds": [30.0] * 10, "test_macro_f1": 0.60}
    ours = {"macro_f1": 0.61, "accuracy": 0.8, "fold1_macro_f1": 0.65, "fold1_accuracy": 0.85, "fold1_n": 174}
    cold, warm = Timed(100.0, 150.0, ""), [Timed(25.0, 30.0, ""), Timed(35.0, 31.0, "")]
    seven_a, seven_b = rows(cold, warm, ours, seed)
    assert seven_a.name.startswith("7a.") and seven_b.name.startswith("7b.")
    assert seven_a.ratio == "3.00x faster" and seven_a.met.startswith("**no**")
    assert seven_b.ratio == "10.00x faster" and seven_b.met == "yes"  # 300 s of epochs / 30 s median
    assert "10 measured epochs: 300.0 s" in seven_b.baseline and "30.5 s CPU" in seven_b.measured

    worse = rows(cold, warm, {**ours, "fold1_macro_f1": 0.55}, seed)[1]
    assert worse.met.startswith("**no**: first-fold macro-F1 0.550 < seed-style 0.600; speed met")
