"""The public surface: one flat namespace, ``meshnode``, and one error root, ``MeshError``.

Invariants:

* every name in ``meshnode.__all__`` resolves, and every error among them (and every error
  of :mod:`meshnode.errors`) subclasses ``MeshError``;
* ``import meshnode`` does not import aiohttp (the runtime loads on first use of one of its
  names), checked in a fresh interpreter;
* ``NodeConfig`` validation raises ``ConfigError``, which is also a ``ValueError``;
* the examples and the demo import the project only through ``meshnode`` (the demo's own
  modules aside), checked on their source.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import meshnode
import meshnode.errors
from meshnode import ConfigError, MeshError, NodeConfig

ROOT = Path(__file__).resolve().parents[2]
PROJECT_PACKAGES = {"meshnode", "protocol", "crdt", "simulations"}
SUBPROCESS_TIMEOUT_S = 120.0


def _public_values() -> dict[str, object]:
    return {name: getattr(meshnode, name) for name in meshnode.__all__}


def test_every_public_name_resolves() -> None:
    assert len(set(meshnode.__all__)) == len(meshnode.__all__), "duplicates in __all__"
    for name, value in _public_values().items():
        assert value is not None, name
    assert set(meshnode.__all__) <= set(dir(meshnode))


def test_unknown_names_are_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = meshnode.no_such_name  # type: ignore[attr-defined]


def test_every_public_error_is_a_mesh_error() -> None:
    errors = {
        name: value
        for name, value in _public_values().items()
        if isinstance(value, type) and issubclass(value, BaseException)
    }
    assert {"MeshError", "ConfigError", "DataDirInUse", "DelegationError", "KeyFileError"} <= set(
        errors
    )
    for name, error in errors.items():
        assert issubclass(error, MeshError), name


def test_the_errors_module_is_all_public() -> None:
    """Every error of meshnode.errors is exported from meshnode, under MeshError."""
    for name in meshnode.errors.__all__:
        error = getattr(meshnode.errors, name)
        assert issubclass(error, MeshError), name
        assert getattr(meshnode, name) is error, name


def test_the_runtime_reexports_are_the_public_classes() -> None:
    """Code that still imports an error from the module that raises it gets the same class."""
    from meshnode.runtime import store, tasks

    assert tasks.DelegationError is meshnode.DelegationError
    assert store.DataDirInUse is meshnode.DataDirInUse


PROBE = """
import json, sys
import meshnode
from meshnode import NodeConfig, MemberState, ScoredCandidate, MeshError, capability
before = {m: m in sys.modules for m in ("aiohttp", "meshnode.runtime.node")}
node_class = meshnode.MeshNode
after = {m: m in sys.modules for m in ("aiohttp", "meshnode.runtime.node")}
print(json.dumps({"before": before, "after": after, "name": node_class.__name__}))
"""


def test_import_meshnode_does_not_pull_aiohttp() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        check=True,
        cwd=ROOT,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["before"] == {"aiohttp": False, "meshnode.runtime.node": False}
    assert result["after"] == {"aiohttp": True, "meshnode.runtime.node": True}
    assert result["name"] == "MeshNode"


@pytest.mark.parametrize(
    "overrides",
    [
        {"port": -1},
        {"name": ""},
        {"seeds": "10.0.0.5:7946"},
        {"seeds": ["no-port"]},
        {"embedder": "word2vec"},
        {"direct_trust_weight": 1.5},
    ],
)
def test_config_errors_are_config_error_and_value_error(overrides: dict[str, object]) -> None:
    with pytest.raises(ConfigError) as caught:
        NodeConfig(**overrides)  # type: ignore[arg-type]
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, MeshError)


def _project_imports(path: Path) -> set[str]:
    """Every module of the project that ``path`` imports (absolute imports only; a
    relative import is reported as ``.`` + its module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                found.add("." + (node.module or ""))
                continue
            names = [node.module or ""]
        else:
            continue
        found.update(n for n in names if n.split(".")[0] in PROJECT_PACKAGES)
    return found


@pytest.mark.parametrize(
    ("folder", "own"),
    [("examples", set()), ("meshnode/demo", {"meshnode.demo"})],
)
def test_examples_and_demo_import_only_the_public_namespace(folder: str, own: set[str]) -> None:
    files = sorted((ROOT / folder).rglob("*.py"))
    assert files, f"no sources under {folder}"
    for path in files:
        bad = {
            name
            for name in _project_imports(path)
            if name != "meshnode" and not any(name == o or name.startswith(o + ".") for o in own)
        }
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}; use `from meshnode`"
