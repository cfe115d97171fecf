"""The two walls of the architecture, checked on the source.

1. ``protocol``, ``crdt`` and ``meshnode/core`` never import the runtime, asyncio, aiohttp,
   sockets, threads or clocks (they are sans-I/O and deterministic).
2. ``simulations`` never imports ``meshnode.runtime`` (it drives the cores directly).
Imports only point down the layers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN_IN_CORE = {
    "asyncio",
    "aiohttp",
    "socket",
    "time",
    "threading",
    "uvloop",
    "meshnode.runtime",
    "meshnode.cli",
    "simulations",
    "selectors",
}
LAYER_BELOW = {
    "protocol": {"protocol"},
    "crdt": {"protocol", "crdt"},
    "meshnode/core": {"protocol", "crdt", "meshnode.core", "meshnode.discovery"},
}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def _hits(imported: set[str], banned: set[str]) -> set[str]:
    return {n for n in imported if any(n == b or n.startswith(b + ".") for b in banned)}


@pytest.mark.parametrize("folder", sorted(LAYER_BELOW))
def test_core_layers_are_sans_io(folder: str) -> None:
    files = _files(folder)
    assert files, f"no sources found under {folder}"
    for path in files:
        assert not _hits(_imports(path), FORBIDDEN_IN_CORE), path


@pytest.mark.parametrize("folder", sorted(LAYER_BELOW))
def test_core_imports_point_down(folder: str) -> None:
    project = {"protocol", "crdt", "meshnode", "simulations"}
    for path in _files(folder):
        ours = {n for n in _imports(path) if n.split(".")[0] in project}
        up = {
            n for n in ours if not any(n == a or n.startswith(a + ".") for a in LAYER_BELOW[folder])
        }
        assert not up, f"{path} imports upward: {sorted(up)}"


def test_simulations_never_import_the_runtime() -> None:
    for path in _files("simulations"):
        assert not _hits(_imports(path), {"meshnode.runtime", "aiohttp", "asyncio"}), path
