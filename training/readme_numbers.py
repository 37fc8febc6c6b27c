"""The README's model-quality numbers, rendered from the default package, so the README never disagrees with it.

    python -m training.readme_numbers           # rewrite the block in README.md (after `make default-model`)
    python -m training.readme_numbers --check   # exit 1 if the block is stale

The README states quality numbers only between BEGIN and END; `render` writes that block
from the package's metrics.json (per source, all sources pooled, leave one source out) and
config.json (version, CV protocol, the whole-scan rule's CV), and tests/test_readme.py fails
when the README's block differs from a fresh render.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
PACKAGE = REPO / "lung_classifier" / "default_model"
BEGIN = "<!-- metrics:begin (python -m training.readme_numbers writes this block from the default package) -->"
END = "<!-- metrics:end -->"


def _value(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def _interval(summary: dict[str, float]) -> str:
    return f"{summary['mean']:.3f} [{summary['low']:.3f}, {summary['high']:.3f}]"


def _per_source_rows(metrics: dict[str, Any], repeats: int) -> list[str]:
    rows = ["| source (slices, or renderings) | answered | accuracy on answered | Malignant recall | normals called Malignant |",
            "| --- | --- | --- | --- | --- |"]
    for name, entry in metrics["per_source"].items():
        pooled, folds = entry["pooled"], entry["folds"]

        def cell(key: str) -> str:
            value = pooled[key]
            if value is None or math.isnan(value):
                return "-"
            return f"{value:.3f} [{folds[key]['low']:.2f}, {folds[key]['high']:.2f}]"

        rows.append(f"| {name} ({pooled['n'] // repeats}) | {cell('answered')} | {cell('accuracy_answered')} | "
                    f"{cell('recall_Malignant')} | {cell('normals_called_Malignant')} |")
    return rows


def _left_out(metrics: dict[str, Any]) -> str:
    parts = [f"{name}: answered {_value(entry['answered'])}, accuracy on answered "
             f"{_value(entry['accuracy_answered'])}, Malignant recall {_value(entry['recall_Malignant'])}, non-cancer "
             f"called Malignant without a flag {_value(entry['noncancer_Malignant_unflagged'])}"
             for name, entry in metrics["leave_one_source_out"].items()]
    return "; ".join(parts)


def render(metrics: dict[str, Any], config: dict[str, Any]) -> str:
    """The block, markers included: every number read from the package, none typed."""
    cv, protocol, scan = metrics["cv"], config["training"]["cv"], config["scan"]
    lines = [
        BEGIN,
        f"Default model {config['model_version']}, {protocol['folds']}-fold patient-grouped cross-validation "
        f"stratified by {protocol['strata']}, repeated {protocol['repeats']} times. Per source, as the product answers "
        "it (image files as they are, DICOM at the package window): the pooled out-of-fold value, then the "
        "2.5-97.5 percentile interval over folds.",
        "",
        *_per_source_rows(metrics, protocol["repeats"]),
        "",
        f"- All sources pooled (mean [interval] over folds): macro-F1 {_interval(cv['macro_f1'])}, Malignant recall "
        f"{_interval(cv['recall_Malignant'])}, Benign recall {_interval(cv['recall_Benign'])}, calibration error "
        f"(ECE) {_interval(cv['ece'])}; the probabilities are "
        f"{'called calibrated' if config['calibration']['calibrated'] else 'not called calibrated (model confidence)'}.",
        f"- A source never seen in training (trained on the others): {_left_out(metrics)}.",
        f"- Whole scans ({scan['rule']} rule, scan-level CV): macro-F1 {_interval(scan['cv']['macro_f1'])}, "
        f"Malignant recall {_interval(scan['cv']['recall_Malignant'])}, malignant scans called Normal: "
        f"{scan['cv_malignant_scans_called_normal']}.",
        END,
    ]
    return "\n".join(lines)


def fresh_block(package: Path = PACKAGE) -> str:
    metrics = json.loads((package / "metrics.json").read_text())
    config = json.loads((package / "config.json").read_text())
    return render(metrics, config)


def current_block(text: str) -> str:
    """The README's block, markers included; an error if the markers are missing or out of order."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"README.md has no {BEGIN} ... {END} block")
    return text[start:end + len(END)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.readme_numbers", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if the README's block is stale")
    args = parser.parse_args(argv)
    text = README.read_text()
    old, new = current_block(text), fresh_block()
    if args.check:
        print("README numbers are current" if old == new else "README numbers are stale: run "
              "python -m training.readme_numbers")
        return 0 if old == new else 1
    README.write_text(text.replace(old, new))
    print(f"{README}: {'unchanged' if old == new else 'numbers rewritten from ' + str(PACKAGE)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
