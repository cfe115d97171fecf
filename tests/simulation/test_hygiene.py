"""The simulator's own rules, checked on its source.

* It never imports the runtime, asyncio or aiohttp (it drives the cores directly).
* It never uses the global ``random`` (every stream is a seeded ``random.Random``).
* It reads the wall clock only where wall time is reported (progress bar, command line).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "simulations"
FORBIDDEN_IMPORTS = ("meshnode.runtime", "asyncio", "aiohttp", "uvloop", "threading")
WALL_CLOCK_ALLOWED = {"progress.py", "cli.py"}


def _sources() -> list[Path]:
    files = sorted(ROOT.rglob("*.py"))
    assert files
    return files


def _imports(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_no_runtime_or_event_loop_imports() -> None:
    for path in _sources():
        imported = _imports(ast.parse(path.read_text()))
        bad = {
            n for n in imported if any(n == f or n.startswith(f + ".") for f in FORBIDDEN_IMPORTS)
        }
        assert not bad, f"{path.name} imports {sorted(bad)}"


def test_no_global_random() -> None:
    """``random`` is only used for ``random.Random`` (seeded instances)."""
    for path in _sources():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "random":
                assert all(a.name == "Random" for a in node.names), path.name
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "random"
            ):
                assert node.attr == "Random", f"{path.name}:{node.lineno} uses random.{node.attr}"


def test_wall_clock_only_for_reporting() -> None:
    for path in _sources():
        imported = _imports(ast.parse(path.read_text()))
        if "time" in imported or "datetime" in imported:
            assert path.name in WALL_CLOCK_ALLOWED, f"{path.name} reads the wall clock"
