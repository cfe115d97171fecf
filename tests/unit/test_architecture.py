"""The architecture wall, checked on the source: one table, and ruff agreeing with it.

:data:`LAYERS` says, per layer (a folder or a file), which parts of the project it may
import, which modules it must never import, and whether it may touch files. The picture
(DESIGN.md, "Layout"): protocol/ at the ground; crdt/ and meshnode/discovery/ on it;
meshnode/core/ above them; the two shells, meshnode/runtime/ and simulations/, side by side
on top of the core; cli.py, the demo and the examples above the runtime. Imports only
point down.

The decision layers (``protocol``, ``crdt``, ``meshnode/core``, and the pure modules
``meshnode/errors.py``, ``meshnode/capability.py``, ``meshnode/__init__.py``) are sans-I/O:
no event loop, socket, clock, thread, process, database or file. The same ban is ruff's
TID251 ``banned-api`` in pyproject.toml, exempted by ``per-file-ignores`` exactly for the
other layers; :func:`test_ruff_enforces_the_same_wall` checks that the two agree, file by
file. Ruff sees imports only, so calls of the builtin ``open`` and of path I/O methods
(``read_text``, ``write_bytes``, ...) are found here by scanning the syntax tree.
"""

from __future__ import annotations

import ast
import dataclasses
import re
import tomllib
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROJECT = frozenset(
    {"protocol", "crdt", "meshnode", "simulations", "benchmarks", "scripts", "tests"}
)
"""Top-level packages of this repository: imports of these are checked against
``may_import``; anything else is the standard library or a third-party package."""

SANS_IO = frozenset(
    {
        # event loops, networking, concurrency, clocks
        "asyncio",
        "aiohttp",
        "uvloop",
        "selectors",
        "socket",
        "threading",
        "multiprocessing",
        "signal",
        "time",
        # files, processes, databases
        "os",
        "io",
        "pathlib",
        "shutil",
        "tempfile",
        "fcntl",
        "filelock",
        "sqlite3",
        "subprocess",
        # the global random generator (inject a random.Random instead)
        "random.random",
        "random.choice",
        "random.choices",
        "random.shuffle",
        "random.sample",
        "random.randint",
        "random.randrange",
        "random.uniform",
        "random.gauss",
        "random.getrandbits",
        "random.seed",
    }
)
"""What a sans-I/O layer never imports: modules, and module members (``random.random``)."""

FILE_IO_CALLS = frozenset(
    {
        "open",
        "fdopen",
        "read_text",
        "read_bytes",
        "write_text",
        "write_bytes",
        "touch",
        "unlink",
        "mkdir",
        "rmdir",
        "iterdir",
        "rglob",
        "chmod",
        "symlink_to",
        "hardlink_to",
    }
)
"""Calls that touch files: the builtin ``open`` and methods of that name on any object
(``Path.open``, ``os.open``, ``gzip.open``), and ``pathlib`` file methods. Names that are
also common non-I/O methods (``replace``, ``rename``, ``stat``, ``exists``) are left out;
the import ban on ``os`` and ``pathlib`` already keeps those layers from reaching them."""


@dataclasses.dataclass(frozen=True)
class Layer:
    path: str
    """A folder (every ``.py`` under it) or one file, relative to the repository root."""
    may_import: frozenset[str]
    """Parts of the project it may import (a name and everything under it)."""
    forbidden: frozenset[str] = frozenset()
    """Modules (or module members) it never imports, third-party or standard."""
    file_io: bool = True
    """Whether it may call ``open`` or path I/O methods."""
    public_only: bool = False
    """Whether every other part of meshnode must come through ``meshnode`` itself (the
    flat public namespace), not its modules."""

    @property
    def ruff_enforced(self) -> bool:
        """The layers whose wall ruff checks too (TID251 not exempted)."""
        return self.forbidden == SANS_IO


def _set(*names: str) -> frozenset[str]:
    return frozenset(names)


SHELL_FORBIDDEN = _set("meshnode.runtime", "aiohttp", "asyncio")
"""The simulator's wall: it drives the cores on a virtual clock, never the asyncio shell."""

LAYERS: tuple[Layer, ...] = (
    Layer("protocol", _set("protocol"), SANS_IO, file_io=False),
    Layer("crdt", _set("protocol", "crdt"), SANS_IO, file_io=False),
    Layer("meshnode/errors.py", _set("protocol.errors"), SANS_IO, file_io=False),
    Layer(
        "meshnode/capability.py",
        _set("protocol", "meshnode.core.authorization"),
        SANS_IO,
        file_io=False,
    ),
    # The loggers: logging and structlog only, so every layer that logs may use them.
    Layer("meshnode/logs.py", _set(), SANS_IO, file_io=False),
    Layer(
        "meshnode/discovery",
        _set("protocol", "meshnode.discovery", "meshnode.errors", "meshnode.logs"),
        # Thread-safe and file-backed (the model's graph cache), but never async or
        # networked: the runtime calls it through an executor.
        _set("asyncio", "aiohttp", "uvloop", "selectors", "socket", "sqlite3"),
    ),
    Layer(
        "meshnode/core",
        _set("protocol", "crdt", "meshnode.core", "meshnode.discovery", "meshnode.errors"),
        SANS_IO,
        file_io=False,
    ),
    Layer(
        "meshnode/runtime",
        _set(
            "protocol",
            "crdt",
            "meshnode.core",
            "meshnode.discovery",
            "meshnode.errors",
            "meshnode.capability",
            "meshnode.runtime",
            "meshnode.logs",
        ),
    ),
    Layer(
        "simulations",
        _set(
            "protocol",
            "crdt",
            "meshnode.core",
            "meshnode.discovery",
            "meshnode.errors",
            "meshnode.capability",
            "simulations",
        ),
        SHELL_FORBIDDEN,
    ),
    # The facade: it names everything, and loads the runtime's names only on first use.
    Layer("meshnode/__init__.py", _set("protocol", "meshnode"), SANS_IO, file_io=False),
    Layer("meshnode/cli.py", _set("protocol", "meshnode")),
    Layer("meshnode/demo", _set("meshnode.demo"), public_only=True),
    Layer("examples", _set(), public_only=True),
    Layer("benchmarks", PROJECT),
    Layer("scripts", PROJECT),
    Layer("tests", PROJECT),
)


# --------------------------------------------------------------------------- helpers


def _layer_files(layer: Layer) -> list[Path]:
    target = ROOT / layer.path
    return [target] if target.suffix == ".py" else sorted(target.rglob("*.py"))


def _layer_of(path: Path) -> Layer:
    """The most specific layer containing ``path``."""
    rel = path.relative_to(ROOT).as_posix()
    matches = [layer for layer in LAYERS if rel == layer.path or rel.startswith(layer.path + "/")]
    assert matches, f"{rel} belongs to no layer of the table"
    return max(matches, key=lambda layer: len(layer.path))


def _all_sources() -> list[Path]:
    return sorted(
        path
        for top in sorted(PROJECT | {"examples"})
        if (ROOT / top).is_dir()
        for path in (ROOT / top).rglob("*.py")
    )


@cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _imports(path: Path, root: Path = ROOT) -> set[str]:
    """Every module imported, and every ``module.member`` taken with ``from``. A relative
    import is resolved against the file's package (``path`` relative to ``root``)."""
    names: set[str] = set()
    package = path.relative_to(root).with_suffix("").parts[:-1]
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[: len(package) - node.level + 1])
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def _under(name: str, prefixes: frozenset[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _file_io_calls(path: Path) -> list[str]:
    found = []
    for node in ast.walk(_tree(path)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id == "open":
            found.append(f"open() at line {node.lineno}")
        elif isinstance(func, ast.Attribute) and func.attr in FILE_IO_CALLS:
            found.append(f".{func.attr}() at line {node.lineno}")
    return found


# --------------------------------------------------------------------------- the table


def test_every_source_file_belongs_to_a_layer() -> None:
    for path in _all_sources():
        _layer_of(path)


@pytest.mark.parametrize("layer", LAYERS, ids=lambda layer: layer.path)
def test_layer_respects_its_wall(layer: Layer) -> None:
    files = [path for path in _layer_files(layer) if _layer_of(path) is layer]
    assert files, f"no sources found under {layer.path}"
    for path in files:
        rel = path.relative_to(ROOT)
        imported = _imports(path)
        ours = {n for n in imported if n.split(".")[0] in PROJECT}
        upward = {
            n
            for n in ours
            if not _under(n, layer.may_import) and not (layer.public_only and _public(n))
        }
        assert not upward, f"{rel} imports {sorted(upward)} past its wall ({layer.path})"
        banned = {n for n in imported if _under(n, layer.forbidden)}
        assert not banned, f"{rel} imports {sorted(banned)}, forbidden in {layer.path}"
        if not layer.file_io:
            assert not _file_io_calls(path), f"{rel} touches files: {_file_io_calls(path)}"


def _public(name: str) -> bool:
    """``meshnode`` itself, or ``meshnode.X`` where X is a name of its public namespace
    (``from meshnode import X``), not a module under it."""
    import meshnode

    head, _, attr = name.partition(".")
    return head == "meshnode" and (not attr or attr in meshnode.__all__)


def test_the_wall_catches_what_it_forbids(tmp_path: Path) -> None:
    """The scanners see what they must: imports of each kind (plain, from, relative,
    member), the builtin ``open`` and path I/O methods."""
    source = tmp_path / "meshnode" / "core" / "bad.py"
    source.parent.mkdir(parents=True)
    source.write_text(
        "import os\n"
        "from random import shuffle\n"
        "from ..runtime import node\n"
        "from pathlib import Path\n"
        "def f():\n"
        "    open('x')\n"
        "    return Path('y').read_text()\n"
    )
    imported = _imports(source, root=tmp_path)
    calls = _file_io_calls(source)
    assert {"os", "random.shuffle", "meshnode.runtime", "pathlib"} <= imported
    assert [c.split(" ")[0] for c in calls] == ["open()", ".read_text()"]


# --------------------------------------------------------------------------- ruff agrees


def _glob_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + r"\Z")


def _ruff() -> tuple[frozenset[str], list[re.Pattern[str]]]:
    """ruff's banned names, and the patterns of files exempt from TID251."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    lint = config["tool"]["ruff"]["lint"]
    assert "TID" in lint["select"] or "TID251" in lint["select"], "TID251 is not selected"
    banned = frozenset(lint["flake8-tidy-imports"]["banned-api"])
    exempt = [
        _glob_regex(pattern)
        for pattern, rules in lint.get("per-file-ignores", {}).items()
        if "TID251" in rules or "TID" in rules
    ]
    return banned, exempt


def test_ruff_enforces_the_same_wall() -> None:
    """ruff bans exactly the sans-I/O set, on exactly the files of the layers the table
    makes sans-I/O, and every other layer is exempt."""
    banned, exempt = _ruff()
    assert banned == SANS_IO, (
        f"pyproject bans {sorted(banned - SANS_IO)} beyond the table and misses "
        f"{sorted(SANS_IO - banned)}"
    )
    disagree = []
    for path in _all_sources():
        rel = path.relative_to(ROOT).as_posix()
        is_exempt = any(p.match(rel) or p.match(path.name) for p in exempt)
        if is_exempt == _layer_of(path).ruff_enforced:
            disagree.append(f"{rel}: ruff {'exempts' if is_exempt else 'checks'} it")
    assert not disagree, "\n".join(disagree)
