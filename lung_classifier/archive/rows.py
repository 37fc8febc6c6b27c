"""One chunk of units -> their table rows, built from the library's own answers (``as_dict()``), never re-decided.

The engines run this and nothing else per unit, so a local loop and a Ray actor give the
same rows. A series gives a ``series`` row (ScanResult.as_dict() without its slices) and one
``slice`` row per analysed slice (Analysis.as_dict() with the scan's slice entry); an image
gives an ``image`` row (Analysis.as_dict()). Whatever those dicts hold flows into the rows
unchanged; nested dicts become dotted columns (``probabilities.Normal``). A unit that cannot
be analysed is one row whose ``refusal`` says why; the job goes on.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

from ..decoding.limits import ImageError
from ..batch import analyze_many
from ..package import CONFIG, sha256_file
from .listing import IMAGE, SERIES, Unit

if TYPE_CHECKING:
    from ..classifier import LungClassifier

SLICE = "slice"


def package_identity(classifier: LungClassifier) -> dict[str, Any]:
    """The columns that say which package answered: its name, version, digest (sha256 of its source config.json,
    which lists every file's sha256) and the number format the backbone ran in."""
    rebuilt = classifier.config.get("rebuilt")
    digest = (rebuilt["source_config_sha256"] if isinstance(rebuilt, dict)
              else sha256_file(classifier.directory / CONFIG))
    return {"package_name": classifier.config.get("name"), "package_version": classifier.config.get("model_version"),
            "package_digest": digest, "precision": classifier.precision}


def score_chunk(classifier: LungClassifier, units: list[Unit], identity: dict[str, Any],
                batch_size: int) -> list[tuple[Unit, str]]:
    """Each unit with its rows as one JSON text (exact floats; what the journal stores)."""
    images = [unit for unit in units if unit.kind == IMAGE]
    answers = iter(_image_outcomes(classifier, images, batch_size))
    rows = [_image_rows(next(answers)) if unit.kind == IMAGE else _series_rows(classifier, unit, batch_size)
            for unit in units]
    return [(unit, json.dumps([{**_meta(unit, row.pop("kind")), **identity, **row} for row in unit_rows]))
            for unit, unit_rows in zip(units, rows)]


def refusal_rows(unit: Unit, identity: dict[str, Any], message: str) -> str:
    """A unit that no worker could finish, as the one refused row a finished unit's rows would be."""
    return json.dumps([{**_meta(unit, unit.kind), **identity, "refusal": message}])


def _meta(unit: Unit, kind: str) -> dict[str, Any]:
    return {"kind": kind, "unit": unit.name, "unit_digest": unit.digest}


def _image_outcomes(classifier: LungClassifier, images: list[Unit], batch_size: int) -> list[Any]:
    try:
        return list(analyze_many(classifier, [unit.paths[0] for unit in images], batch_size=batch_size))
    except Exception as exc:  # noqa: BLE001 - one failing batch is refused rows, retried alone below
        print(f"warning: a batch of {len(images)} images failed ({exc.__class__.__name__}); scoring them one by one",
              file=sys.stderr)
        return [_one_outcome(classifier, unit) for unit in images]


def _one_outcome(classifier: LungClassifier, unit: Unit) -> Any:
    try:
        return next(iter(analyze_many(classifier, [unit.paths[0]], batch_size=1)))
    except Exception as exc:  # noqa: BLE001 - recorded in its row, never lost
        return exc


def _image_rows(outcome: Any) -> list[dict[str, Any]]:
    if isinstance(outcome, Exception):
        return [{"kind": IMAGE, "refusal": _failure(outcome)}]
    if outcome.analysis is None:
        return [{"kind": IMAGE, "refusal": str(outcome.error)}]
    return [{"kind": IMAGE, **flatten(outcome.analysis.as_dict())}]


def _series_rows(classifier: LungClassifier, unit: Unit, batch_size: int) -> list[dict[str, Any]]:
    try:
        result = classifier.analyze_scan(list(unit.paths), batch_size=batch_size)
    except ImageError as exc:  # a ScanError too: not one scan, nothing readable, a zip bomb...
        return [{"kind": SERIES, "refusal": str(exc)}]
    except Exception as exc:  # noqa: BLE001 - recorded in its row, never lost
        return [{"kind": SERIES, "refusal": _failure(exc)}]
    whole = result.as_dict()
    entries = whole.pop("slices")
    rows = [{"kind": SERIES, **flatten(whole)}]
    for entry, scan_slice in zip(entries, result.slices):
        rows.append({"kind": SLICE, **flatten({**scan_slice.analysis.as_dict(), **entry})})
    return rows


def _failure(exc: Exception) -> str:
    """An unexpected error, named as such (a decoder fault, not a verdict), and logged for the operator."""
    print(f"warning: analysis failed: {exc.__class__.__name__}: {exc}", file=sys.stderr)
    return f"the analysis failed ({exc.__class__.__name__}: {exc})"


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted columns ({"probabilities": {"Normal": p}} -> "probabilities.Normal"); lists kept."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat
