"""The runnable blocks of ``docs/interop.md``, by the name in the ``<!-- snippet: NAME -->``
comment above each, and helpers to run them against processes the tests start."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "interop.md"
START_TIMEOUT_S = 30.0
"""Seconds a ``meshnode run`` from a snippet may take to print its listening line."""

_BLOCK = re.compile(r"<!-- snippet: ([\w-]+) -->\s*```(\w+)\n(.*?)```", re.S)


def snippet(name: str) -> str:
    """The code of the block named ``name`` (KeyError if the page has none)."""
    blocks = {m.group(1): m.group(3) for m in _BLOCK.finditer(DOC.read_text("utf-8"))}
    return blocks[name]


def commands(name: str) -> list[list[str]]:
    """A bash block's commands as argument lists (continuation lines joined)."""
    text = snippet(name).replace("\\\n", " ")
    return [shlex.split(line) for line in text.splitlines() if line.strip()]


def meshnode(argv: list[str]) -> list[str]:
    """``meshnode ...`` as this interpreter running this checkout's CLI."""
    assert argv[0] == "meshnode", argv
    return [sys.executable, "-m", "meshnode.cli", *argv[1:]]


def env() -> dict[str, str]:
    out = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    out.pop("MESHNODE_API_TOKEN", None)
    return out


@contextlib.contextmanager
def running(argv: list[str], cwd: Path, log: Path) -> Iterator[str]:
    """Start a ``meshnode run`` command line; yields its address once it listens."""
    with open(log, "a") as err:
        proc = subprocess.Popen(
            meshnode(argv), cwd=cwd, env=env(), stdout=subprocess.PIPE, stderr=err, text=True
        )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            with contextlib.suppress(json.JSONDecodeError):
                event = json.loads(line)
                if event.get("event") == "listening":
                    yield str(event["address"])
                    return
        raise AssertionError(f"{argv} did not start; see {log}")
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def run(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        meshnode(argv), cwd=cwd, env=env(), capture_output=True, text=True, timeout=60
    )
