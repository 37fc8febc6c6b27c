"""The README's model-quality numbers, rendered from the default package, so the README never disagrees with it.

    python -m training.readme_numbers           # rewrite the block in README.md (after `make default-model`)
    python -m training.readme_numbers --check   # exit 1 if the block is stale

The README states quality numbers only between BEGIN and END; `render` writes that block
from the package's metrics.json (per source as the product answers it, all sources pooled,
source recognition validated leaving each source out, a source never seen, the DICOM series
through the scan rule) and config.json (version, CV protocol, each source's evidence: rule-out
threshold and whether its cancers were validated; the whole-scan rule's CV), and
tests/test_readme.py fails when the README's block differs from a fresh render.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
PACKAGE = REPO / "lung_classifier" / "default_model"
BEGIN = "<!-- metrics:begin (python -m training.readme_numbers writes this block from the default package) -->"
END = "<!-- metrics:end -->"
EXPORTED = " exported as images at "
"""How metrics.json names a DICOM source rendered at one window and judged by the image sources' recognisers."""


def _missing(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _value(x: float | None) -> str:
    return "-" if _missing(x) else f"{x:.3f}"


def _interval(summary: dict[str, float]) -> str:
    return f"{summary['mean']:.3f} [{summary['low']:.3f}, {summary['high']:.3f}]"


def _meets(flagged: float, target: str) -> bool:
    """Whether a recognition figure meets its target ("<= 0.05", ">= 0.95")."""
    operator, bound = target.split()
    return flagged <= float(bound) if operator == "<=" else flagged >= float(bound)


def _sources(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {source["name"]: source for source in config["evidence"]["sources"]}


def _titled(text: str, config: dict[str, Any]) -> str:
    """metrics.json's source names ("iqothnccd") as people read them ("IQ-OTH/NCCD")."""
    for name, source in _sources(config).items():
        text = text.replace(name, source["title"])
    return text


def _per_source_rows(metrics: dict[str, Any], config: dict[str, Any], repeats: int) -> list[str]:
    rows = ["| source (slices) | answered | label macro-F1 | screening sensitivity | screening "
            "specificity | cancers reassured | cancers validated | rule-out threshold |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    evidence = _sources(config)
    for name, entry in metrics["per_source"].items():
        pooled, folds, source = entry["pooled"], entry["folds"], evidence[name]

        def cell(key: str) -> str:
            value = pooled[key]
            if _missing(value):
                return "-"
            return f"{value:.3f} [{folds[key]['low']:.2f}, {folds[key]['high']:.2f}]" if key in folds else f"{value:.3f}"

        kind = ", DICOM" if source["dicom"] else ""
        threshold = f"{source['rule_out_threshold']:.3f}" if source["cancers_validated"] else "- (never answered)"
        rows.append(f"| {source['title']}{kind} ({pooled['n'] // repeats}) | {cell('answered')} | {cell('macro_f1')} | "
                    f"{cell('screening_sensitivity')} | {cell('screening_specificity')} | {cell('cancers_reassured')} | "
                    f"{'yes' if entry['validated'] else 'no'} | {threshold} |")
    return rows


def _recognition_rows(metrics: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """One row per recognition set; a DICOM source's exports at many windows share one row, each window's figure in
    it, those that miss the target named."""
    rows = ["| slices | judged by the recognisers of | flagged (recognised as none of them) | target |",
            "| --- | --- | --- | --- |"]
    grouped: dict[tuple[str, str, str], list[tuple[str, float]]] = {}
    for entry in metrics["recognition"]:
        if EXPORTED in entry["set"]:
            base, window = entry["set"].split(EXPORTED, 1)
            grouped.setdefault((base, entry["judged_by"], entry["target"]), []).append((window, entry["flagged"]))
            continue
        missed = "" if _meets(entry["flagged"], entry["target"]) else " (missed)"
        rows.append(f"| {entry['set']} | {entry['judged_by']} | {entry['flagged']:.3f}{missed} | {entry['target']} |")
    for (base, judged_by, target), windows in grouped.items():
        met = [window for window, flagged in windows if _meets(flagged, target)]
        missed = [f"{window} {flagged:.3f}" for window, flagged in windows if not _meets(flagged, target)]
        cell = f"met at {len(met)} of {len(windows)} windows" + (f"; missed at {', '.join(missed)}" if missed else "")
        rows.append(f"| {base} exported as images ({len(windows)} windows) | {judged_by} | {cell} | {target} |")
    return [_titled(row, config) for row in rows]


def _left_out(metrics: dict[str, Any], config: dict[str, Any]) -> str:
    titles = {name: source["title"] for name, source in _sources(config).items()}
    parts = [f"{titles[name]}: answered {_value(entry['answered'])} (the feature guard alone would answer "
             f"{_value(entry['guard_only']['answered'])}), label macro-F1 {_value(entry['macro_f1'])}, Malignant recall "
             f"{_value(entry['recall_Malignant'])}"
             for name, entry in metrics["leave_one_source_out"].items()]
    return "; ".join(parts)


def _scan_checks(metrics: dict[str, Any], config: dict[str, Any]) -> str:
    parts = []
    for name, entry in metrics["scan_checks"].items():
        verdicts = ", ".join(f"{verdict} x{entry['verdicts'].count(verdict)}" for verdict in dict.fromkeys(entry["verdicts"]))
        parts.append(f"{name}, {entry['finding']}: {verdicts}; slices flagged {_value(entry['flagged'])}")
    return _titled("; ".join(parts), config)


def render(metrics: dict[str, Any], config: dict[str, Any]) -> str:
    """The block, markers included: every number read from the package, none typed."""
    cv, protocol, scan, evidence = metrics["cv"], config["training"]["cv"], config["scan"], config["evidence"]
    lines = [
        BEGIN,
        f"Default model {config['model_version']}, {protocol['folds']}-fold patient-grouped cross-validation "
        f"stratified by {protocol['strata']}, repeated {protocol['repeats']} times, the whole pipeline cross-fitted. "
        "Per source, as the product answers it (image files as they are, DICOM at the package window): the pooled "
        "out-of-fold value [2.5-97.5% interval over folds]. Screening sensitivity: cancers not ruled out (a cancer "
        "given no diagnosis counts as not ruled out); specificity: normals answered and ruled out; cancers reassured: "
        "cancers answered Normal with malignancy ruled out. Each source's rule-out threshold on P(Malignant) is set "
        f"so that {evidence['rule_out_recall']} of its cancers reach it pooled out of fold; its cancers count as "
        f"validated when the cross-fitted screening sensitivity is at least {evidence['screening_recall']}.",
        "",
        *_per_source_rows(metrics, config, protocol["repeats"]),
        "",
        f"- All sources pooled (every slice and DICOM rendering, each source's calibration, before any flag; mean "
        f"[interval] over folds): label macro-F1 {_interval(cv['macro_f1'])}, Malignant recall "
        f"{_interval(cv['recall_Malignant'])}, Benign recall {_interval(cv['recall_Benign'])}, calibration error "
        f"(ECE) {_interval(cv['ece'])}; the probabilities are "
        f"{'called calibrated' if config['calibration']['calibrated'] else 'not called calibrated (model confidence)'}.",
        f"- A source never seen in training (trained on the others): {_left_out(metrics, config)}.",
        f"- DICOM series through the whole-scan rule (leave one scan out, the verdict of each repeat): "
        f"{_scan_checks(metrics, config)}.",
        f"- Whole scans ({scan['rule']} rule, scan-level CV): macro-F1 {_interval(scan['cv']['macro_f1'])}, "
        f"Malignant recall {_interval(scan['cv']['recall_Malignant'])}, malignant scans called Normal: "
        f"{scan['cv_malignant_scans_called_normal']}; a scan with more than {scan['max_flagged_fraction']:.0%} of its "
        "slices flagged gets no verdict.",
        "",
        f"Which source an input looks like (recognition by {len(evidence['statistics'])} rendering statistics, "
        f"threshold at the {evidence['recognition_quantile']} quantile of cross-fitted distances), checked on held-out "
        "patients and on each source left out:",
        "",
        *_recognition_rows(metrics, config),
        END,
    ]
    return "\n".join(lines)


def fresh_block(package: Path = PACKAGE) -> str:
    metrics = json.loads((package / "metrics.json").read_text())
    config = json.loads((package / "config.json").read_text())
    return render(metrics, config)


def current_block(text: str, begin: str = BEGIN, end: str = END) -> str:
    """The README's block between these markers, markers included; an error if they are missing or out of order
    (benchmarks.readme_table's block uses it with its own markers)."""
    first, last = text.find(begin), text.find(end)
    if first < 0 or last < first:
        raise ValueError(f"README.md has no {begin} ... {end} block")
    return text[first:last + len(end)]


def update_block(fresh: str, begin: str, end: str, check: bool, command: str) -> int:
    """Rewrite the README's block between ``begin`` and ``end`` with ``fresh`` (or with ``check`` only say whether it
    is current: exit status 1 if not); ``command`` is what rewrites it, for the message."""
    text = README.read_text()
    old = current_block(text, begin, end)
    if check:
        print(f"README block is current ({command})" if old == fresh else f"README block is stale: run {command}")
        return 0 if old == fresh else 1
    README.write_text(text.replace(old, fresh))
    print(f"{README}: {'unchanged' if old == fresh else 'block rewritten by ' + command}")
    return 0


def block_command(prog: str, description: str, fresh: Callable[[], str], begin: str, end: str,
                  argv: list[str] | None = None) -> int:
    """The command line of a generated README block: rewrite it, or with --check only say whether it is current."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if the README's block is stale")
    return update_block(fresh(), begin, end, parser.parse_args(argv).check, prog)


def main(argv: list[str] | None = None) -> int:
    return block_command("python -m training.readme_numbers", __doc__.splitlines()[0], fresh_block, BEGIN, END, argv)


if __name__ == "__main__":
    sys.exit(main())
