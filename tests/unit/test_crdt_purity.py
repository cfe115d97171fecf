"""crdt/ is pure: no clock, socket, thread, event loop or global random anywhere in it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CRDT = Path(__file__).resolve().parents[2] / "crdt"
FORBIDDEN = {"asyncio", "time", "socket", "aiohttp", "threading", "random", "datetime", "os"}
MODULES = sorted(CRDT.glob("*.py"))


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_crdt_has_modules() -> None:
    assert {p.name for p in MODULES} >= {"__init__.py", "manifests.py", "reputation.py"}


@pytest.mark.parametrize("path", MODULES, ids=[p.name for p in MODULES])
def test_no_io_clock_or_global_randomness(path: Path) -> None:
    """Every crdt module imports none of the modules that bring I/O, time or randomness."""
    assert imported_roots(path) & FORBIDDEN == set()


@pytest.mark.parametrize("path", MODULES, ids=[p.name for p in MODULES])
def test_module_opens_with_a_docstring(path: Path) -> None:
    docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    assert docstring is not None
    assert docstring.strip()
