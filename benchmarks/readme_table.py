"""The README's performance table, rendered from benchmarks/results.md, so the README shows the recorded run.

    python -m benchmarks.readme_table [--check]

After `python -m benchmarks` rewrites results.md, this rewrites the README's block between
BEGIN and END: the run's date and CPU, and the rows of the default path against its
baselines (one image, batch of 32, cold starts, a whole scan). tests/test_readme.py fails
when the README's block differs from a fresh render.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from training.readme_numbers import block_command

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results.md"
BEGIN = "<!-- performance:begin (python -m benchmarks.readme_table writes this block from benchmarks/results.md) -->"
END = "<!-- performance:end -->"
SHOWN = ("2b.", "2c.", "2d.", "2e.", "3a.", "3b.", "3c.", "3d.", "6.", "6c.", "9.")
"""The rows the README shows, by their number in results.md (the others are in results.md itself)."""
COLUMNS = (0, 1, 3, 4, 5, 6)
"""Row, measured, baseline, ratio, target, met (spread and notes stay in results.md)."""


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def render(results: str) -> str:
    ran = re.search(r"^`python -m benchmarks[^`]*` on ([^,]+),", results, re.M)
    cpu = re.search(r"^- CPU: (.+)$", results, re.M)
    if not ran or not cpu:
        raise ValueError(f"{RESULTS.name} has no run line or CPU line: regenerate it with python -m benchmarks")
    rows = [_cells(line) for line in results.splitlines() if line.startswith("| ") and not line.startswith("| Row")]
    shown = [row for row in rows if row[0].startswith(SHOWN) and (row[0].split()[0] != "6." or "Cold" in row[0])]
    header = ["Row", "Measured (median)", "Baseline (same run)", "Ratio", "Target", "Met?"]
    return "\n".join([
        BEGIN,
        f"Recorded on {ran.group(1)} on {cpu.group(1)}, 2 cores ([benchmarks/results.md](benchmarks/results.md) has "
        "every row with its spread and notes):",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row[i] for i in COLUMNS) + " |" for row in shown),
        END,
    ])


def fresh_block() -> str:
    return render(RESULTS.read_text())


def main(argv: list[str] | None = None) -> int:
    return block_command("python -m benchmarks.readme_table", __doc__.splitlines()[0], fresh_block, BEGIN, END, argv)


if __name__ == "__main__":
    sys.exit(main())
