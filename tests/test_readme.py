"""The README a newcomer reads first: short, well-formed, links that resolve, and no quality number of its own.

Its quality numbers live in one generated block (training.readme_numbers renders it from the
default package's metrics.json and config.json), its speed in another (benchmarks.readme_table, from
benchmarks/results.md); outside those blocks and code, it states none.
"""

from __future__ import annotations

import re

import pytest

from benchmarks import readme_table
from conftest import REPO
from training import readme_numbers

README = REPO / "README.md"
MAX_LINES = 250
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]
QUALITY_NUMBER = re.compile(r"(?<![\w.])0\.\d+(?![\w.])|\d\s?%")
"""A fraction (0.979) or a percentage: how the README would state a measured quality."""


def fences_open_at_end(text: str) -> bool:
    """Whether a ``` code fence is still open at the end (CommonMark: a fence closes on a line of backticks alone)."""
    open_fence = False
    for line in text.splitlines():
        stripped = line.strip()
        if not open_fence and stripped.startswith("```"):
            open_fence = True
        elif open_fence and re.fullmatch(r"```+", stripped):
            open_fence = False
    return open_fence


def outside_code_and_block(text: str) -> str:
    for block in (readme_numbers.current_block(text),
                  readme_numbers.current_block(text, readme_table.BEGIN, readme_table.END)):
        text = text.replace(block, "")
    return re.sub(r"^```.*?^```+\s*$", "", text, flags=re.M | re.S)


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_code_fence_is_closed(page):
    assert not fences_open_at_end(page.read_text()), f"{page.name}: a code fence is never closed"


def test_fence_check_sees_an_unclosed_fence():
    assert fences_open_at_end("text\n```bash\nmake test\n```\n\n```\nnot closed\n")
    assert not fences_open_at_end("```python\nx = '```'\n```\n")


def test_the_readme_is_short():
    lines = len(README.read_text().splitlines())
    assert lines <= MAX_LINES, f"README.md has {lines} lines (at most {MAX_LINES}; reference material goes to docs/)"


def test_the_readme_quality_numbers_are_the_default_package_s():
    """After retraining: `python -m training.readme_numbers` rewrites the block."""
    assert readme_numbers.current_block(README.read_text()) == readme_numbers.fresh_block(), \
        "README.md's quality block is stale: run python -m training.readme_numbers"


def test_the_readme_speed_table_is_the_recorded_benchmark_run_s():
    """After `python -m benchmarks`: `python -m benchmarks.readme_table` rewrites the block."""
    block = readme_numbers.current_block(README.read_text(), readme_table.BEGIN, readme_table.END)
    assert block == readme_table.fresh_block(), \
        "README.md's performance table is stale: run python -m benchmarks.readme_table"
    assert "flags:" in block, "the table names the CPU it ran on, with its flags"


def test_the_readme_states_no_quality_number_outside_the_generated_block():
    stray = QUALITY_NUMBER.findall(outside_code_and_block(README.read_text()))
    assert not stray, f"numbers outside the generated block: {stray}"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_relative_links_resolve(page):
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text())
    missing = [link for link in links if "://" not in link and not (page.parent / link).exists()]
    assert not missing, f"{page.name} links to missing files: {missing}"


def test_ci_runs_the_readme_test_command_with_ci_set():
    script = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^export CI=true\b", script, re.M)
    assert script.rstrip().splitlines()[-1] == "make test"
    assert "make test " in README.read_text()
