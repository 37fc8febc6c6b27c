"""The default model answers every development slice and example exactly as recorded (tests/golden.py).

Bit-identical: labels, flags and reasons equal, probabilities and OOD scores equal as
floats. The recorded run and this one use the same precision and batches, and TensorFlow's
CPU kernels are deterministic for a fixed batch, so any difference is a changed answer.
"""

from __future__ import annotations

import json

import pytest

from conftest import need_shared_data
from golden import RECORD, compute


@pytest.mark.slow
def test_default_model_answers_as_recorded():
    need_shared_data()
    recorded = json.loads(RECORD.read_text())
    current = compute(precision=recorded["precision"])
    assert current["precision"] == recorded["precision"]
    assert current["files"].keys() == recorded["files"].keys()
    changed = [key for key, want in recorded["files"].items() if current["files"][key] != want]
    assert not changed, f"{len(changed)} answers changed, e.g. {changed[:3]}: " + json.dumps(
        {key: {"now": current["files"][key], "recorded": recorded["files"][key]} for key in changed[:2]})
