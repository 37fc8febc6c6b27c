"""The library's rooms stay a one-way data flow: no import circle, rooms import only downstream, no module too long.

The graph is read from the source (every import a module makes at run time, lazy ones
inside functions included; imports for type checkers only are left out), so an arrow
hidden in a function body counts as much as one at the top.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from conftest import REPO

LIBRARY = REPO / "lung_classifier"
MAX_LINES = 450
ROOM_ORDER = {"decoding": 0, "model": 1, "evidence": 1, "package": 2, "verdict": 2, "batch": 3, "scan": 4,
              "classifier": 5, "archive": 6, "cli": 7, "__init__": 8, "__main__": 9}
"""Rank of each room: a module may import its own room and rooms of lower rank only (the facade on top)."""


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(LIBRARY.rglob("*.py"))}


def runtime_imports(path: Path, name: str) -> set[str]:
    """The lung_classifier modules a module imports when it runs (not those under `if TYPE_CHECKING:`)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    skipped = {id(node) for guard in ast.walk(tree) if isinstance(guard, ast.If)
               and isinstance(guard.test, ast.Name) and guard.test.id == "TYPE_CHECKING"
               for statement in guard.body for node in ast.walk(statement)}
    found = set()
    known = modules()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom):
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), package) if node.level \
                else node.module or ""
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in known else base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {module for module in found if module in known and module != name}


def graph() -> dict[str, set[str]]:
    return {name: runtime_imports(path, name) for name, path in modules().items()}


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_module_imports():
    for name in modules():
        if name != "lung_classifier.__main__":
            importlib.import_module(name)


def test_no_import_circle():
    edges = graph()
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges[node]):
            if state.get(target) == 1:
                pytest.fail("import circle: " + " -> ".join(path[path.index(target):] + [target]))
            if target not in state:
                visit(target, path + [target])
        state[node] = 2

    for start in sorted(edges):
        if start not in state:
            visit(start, [start])


def test_rooms_import_only_downstream():
    upstream = [f"{source} -> {target}" for source, targets in graph().items() for target in targets
                if room(source) != room(target) and ROOM_ORDER[room(target)] >= ROOM_ORDER[room(source)]]
    assert not upstream, upstream


def test_no_library_module_is_too_long():
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, long


def imported_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    return imported | {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and not node.level}


def test_benchmarks_import_nothing_from_tests_and_run_no_code_strings():
    """Every arrow out of a benchmark is an import the graph can see: none into tests/, no `python -c` code."""
    for path in sorted((REPO / "benchmarks").rglob("*.py")):
        assert not {name for name in imported_names(path) if name.split(".")[0] in ("tests", "conftest")}, path
        strings = {node.value for node in ast.walk(ast.parse(path.read_text()))
                   if isinstance(node, ast.Constant) and isinstance(node.value, str)}
        assert not strings & {"tests", "-c"}, path


def test_testkit_is_the_one_home_of_shared_test_helpers():
    """testkit/ (what tests and benchmarks share) imports neither of them, so either can use it alone."""
    for path in sorted((REPO / "testkit").rglob("*.py")):
        assert not {name for name in imported_names(path)
                    if name.split(".")[0] in ("tests", "conftest", "benchmarks")}, path
