"""The default model's answers on every development slice and example, recorded to prove a refactor changed nothing.

``python tests/golden.py`` records (run it before a change that must not move any answer,
and after retraining); ``tests/test_golden.py`` recomputes them with the current code and
compares decisions exactly and numbers within a measured cross-machine tolerance. Files are
keyed by their path relative to their root and carry their md5, so a changed data copy
reads as such, not as a changed model.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RECORD = Path(__file__).resolve().parent / "golden" / "default_model.json"
DATA = REPO.parent / "shared" / "data" / "iqothnccd"
EXAMPLES = REPO / "examples"
BATCH = 32
"""Fixed, so a recheck's batch composition is the same on both sides of the comparison."""


def inputs(data: Path = DATA) -> list[tuple[str, Path]]:
    """(key, path) for every file under the dataset copy and every example image, in a fixed order."""
    found = [(f"iqothnccd/{p.relative_to(data).as_posix()}", p) for p in sorted(data.rglob("*")) if p.is_file()]
    found += [(f"examples/{p.name}", p) for p in sorted(EXAMPLES.glob("*.jpg"))]
    return found


def compute(precision: str = "auto", data: Path = DATA) -> dict[str, Any]:
    """Every input's label, probabilities, OOD score, flag and reason (or its decoding error)."""
    sys.path.insert(0, str(REPO))
    from lung_classifier import ImageError, LungClassifier

    classifier = LungClassifier.from_pretrained(precision=precision)
    results: dict[str, Any] = {}
    readable: list[tuple[str, Any]] = []
    for key, path in inputs(data):
        entry = {"md5": hashlib.md5(path.read_bytes()).hexdigest()}
        results[key] = entry
        try:
            readable.append((key, classifier.read(path)))
        except ImageError as exc:
            entry["error"] = str(exc)
    for start in range(0, len(readable), BATCH):
        chunk = readable[start:start + BATCH]
        for (key, _), analysis in zip(chunk, classifier.analyze_batch([piece for _, piece in chunk])):
            results[key].update(analysis.as_dict())
    return {"precision": classifier.precision, "batch": BATCH, "files": results}


def main() -> int:
    record = compute(precision="float32")  # the portable record: tests/test_golden.py's tolerance is measured for it
    RECORD.parent.mkdir(exist_ok=True)
    files = ",\n".join(f"{json.dumps(key)}: {json.dumps(value, sort_keys=True)}"
                        for key, value in record["files"].items())
    RECORD.write_text(f'{{"precision": "{record["precision"]}", "batch": {record["batch"]}, "files": {{\n{files}}}}}\n')
    print(f"{len(record['files'])} answers ({record['precision']}) -> {RECORD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
