"""The README works as written.

* Every ```python block runs, as written, in a fresh interpreter, unless the line right
  above it is ``<!-- not run: WHY -->`` (listed by the test with its reason). The blocks
  that start nodes wrap themselves in ``asyncio.run``.
* Every ``meshnode ...`` command of every ```bash block is accepted by the CLI's parser
  (placeholders such as ``<n1 id>`` filled in).
* The three-terminal walkthrough runs: its three ``meshnode run`` commands as processes
  (free ports in place of 7946–7948, data dirs under a temporary directory), then every
  command of the fourth terminal against them.
* The closed-mesh commands run in order (``--host 127.0.0.1`` for the run, which then
  needs no ``--open``).
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from meshnode.cli import build_parser
from tests.integration.doc_snippets import run, running

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
BLOCK_TIMEOUT_S = 120.0
"""Seconds one Python block may take (the first MiniLM export on a cold cache included)."""

_FENCE = re.compile(
    r"(?:^<!-- not run: (?P<why>.+?) -->\n)?^```(?P<lang>\w+)\n(?P<code>.*?)^```", re.S | re.M
)


@dataclass(frozen=True)
class Block:
    lang: str
    code: str
    line: int
    not_run: str | None


def blocks(lang: str) -> list[Block]:
    text = README.read_text("utf-8")
    return [
        Block(m["lang"], m["code"], text.count("\n", 0, m.start("code")) + 1, m["why"])
        for m in _FENCE.finditer(text)
        if m["lang"] == lang
    ]


def _id(block: Block) -> str:
    return f"line{block.line}"


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MESHNODE_API_TOKEN", None)
    return env


def test_the_skipped_blocks_say_why() -> None:
    """Which blocks are not run, and why (none may be skipped without a reason)."""
    skipped = {b.line: b.not_run for lang in ("python", "bash") for b in blocks(lang) if b.not_run}
    for why in skipped.values():
        assert why and len(why.split()) >= 3, skipped
    # The two that cannot run here: installing from scratch, and the whole test suite.
    assert {
        "a fresh install needs the package index and minutes",
        "it is the test suite this test is part of",
    } <= set(skipped.values())


@pytest.mark.parametrize("block", blocks("python"), ids=_id)
def test_python_block_runs_as_written(block: Block, tmp_path: Path) -> None:
    """On the unfixed README: the embedding example was a top-level ``async with``, a
    ``SyntaxError`` as written; wrapped in ``asyncio.run`` by hand, ``discover`` returned
    ``[]`` and ``delegate`` raised ``DelegationError`` (no peer known yet), and the node's
    log lines went to stdout."""
    if block.not_run:
        pytest.skip(f"README line {block.line} is marked not run: {block.not_run}")
    done = subprocess.run(
        [sys.executable, "-c", block.code],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", done.stderr  # an embedded node logs nothing unless asked
    if "wait_for(" in block.code:  # the embedding example: what the README says it prints
        lines = done.stdout.splitlines()
        assert len(lines) == 3, lines
        name, capability, score = lines[0].split()
        assert (name, capability) == ("translator", "translate_text")
        assert 0.0 < float(score) <= 1.0
        assert lines[1] == "{'text': 'ih'} True 1.0"
        assert lines[2] == "['delivered']"


PLACEHOLDERS = {
    "<n1 id>": "a" * 52,
    "<authority key>": "b" * 52,
}


def _commands(block: Block) -> list[list[str]]:
    text = block.code.replace("\\\n", " ")
    for placeholder, value in PLACEHOLDERS.items():
        text = text.replace(placeholder, value)
    out = []
    for line in text.splitlines():
        argv = shlex.split(line, comments=True)
        if argv:
            out.append(argv)
    return out


def test_every_meshnode_command_is_accepted_by_the_cli() -> None:
    parser = build_parser()
    checked = 0
    for block in blocks("bash"):
        for argv in _commands(block):
            if argv[0] != "meshnode":
                continue
            try:
                parser.parse_args(argv[1:])
            except SystemExit as exc:
                raise AssertionError(f"README line {block.line}: {shlex.join(argv)}") from exc
            checked += 1
    assert checked >= 14, checked  # the commands of the sections written so far


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _block_with(text: str) -> Block:
    (block,) = [b for b in blocks("bash") if text in b.code]
    return block


def _localize(argv: list[str], ports: dict[str, str], base: Path) -> list[str]:
    out = []
    for arg in argv:
        for old, new in ports.items():
            arg = arg.replace(old, new)
        out.append(arg)
    if "--data-dir" in out:
        i = out.index("--data-dir") + 1
        out[i] = str(base / out[i])
    return out


@pytest.mark.slow
def test_the_three_terminal_walkthrough_runs(tmp_path: Path) -> None:
    """On the unfixed README: the three ``meshnode run`` commands had no ``--data-dir``,
    which the restart paragraph after them relies on."""
    ports = {str(p): str(_free_port()) for p in (7946, 7947, 7948)}
    starts = _commands(_block_with("meshnode run --name data"))
    asks = _commands(_block_with("meshnode members --node"))
    assert [a[:2] for a in starts] == [["meshnode", "run"]] * 3
    assert all("--data-dir" in a for a in starts)  # the restart paragraph relies on it
    log = tmp_path / "nodes.log"
    with (
        running(_localize(starts[0], ports, tmp_path), ROOT, log),
        running(_localize(starts[1], ports, tmp_path), ROOT, log),
        running(_localize(starts[2], ports, tmp_path), ROOT, log),
    ):
        outputs = []
        for argv in asks:
            done = _ask(_localize(argv, ports, tmp_path))
            assert done.returncode == 0, (argv, done.stdout, done.stderr)
            outputs.append(done.stdout)
    members, discovered, greeted, stats, trust = outputs
    assert {"data", "hello", "client"} <= set(members.split())
    first = discovered.splitlines()[1].split()
    assert first[0] == "hello" and first[2] == "greet", discovered
    assert '"greeting": "Hello, Ada!"' in greeted
    assert '"dataset": "startups.csv"' in stats and '"sha256"' in stats, stats
    assert "hello" in trust and "data" in trust, trust
    for name in ("data", "hello", "client"):  # each kept its state where it was told
        assert any((tmp_path / "nodes" / name).iterdir())


def _ask(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run a fourth-terminal command; the client may still be learning the mesh, so a
    command that found nothing yet is asked again (bounded)."""
    import time

    deadline = time.monotonic() + 30.0
    while True:
        done = run(argv, cwd=ROOT)
        settled = done.returncode == 0 and "no candidates" not in done.stdout
        if settled and not (argv[1] == "members" and done.stdout.count("alive") < 3):
            return done
        if time.monotonic() > deadline:
            return done
        time.sleep(0.5)


@pytest.mark.slow
def test_the_closed_mesh_commands_run(tmp_path: Path) -> None:
    block = _block_with("meshnode keys init")
    steps = _commands(block)
    ids: dict[str, str] = {}
    for argv in steps[:-1]:
        argv = [ids.get(a, a) for a in argv]
        done = run(argv, cwd=tmp_path)
        assert done.returncode == 0, (argv, done.stderr)
        if argv[1] == "authority" and argv[2] == "init":
            ids[PLACEHOLDERS["<authority key>"]] = done.stdout.split()[-1]
        if argv[1] == "keygen":
            ids[PLACEHOLDERS["<n1 id>"]] = done.stdout.strip()
    assert (tmp_path / "n1.cert").exists() and (tmp_path / "mesh.keyring").exists()
    last = [ids.get(a, a) for a in steps[-1]]
    assert last[:2] == ["meshnode", "run"]
    last[last.index("--host") + 1] = "127.0.0.1"  # not 0.0.0.0 in a test
    last += ["--port", "0", "--embedder", "hashing"]
    with running(last, tmp_path, tmp_path / "run.log") as address:
        assert address.startswith("127.0.0.1:")


def test_every_result_field_is_documented() -> None:
    """Each field of what ``discover`` and ``delegate`` return is named in the README."""
    import dataclasses

    from meshnode import DelegationResult, ScoredCandidate

    text = README.read_text("utf-8")
    for cls in (ScoredCandidate, DelegationResult):
        for field in dataclasses.fields(cls):
            assert f"`{field.name}`" in text, (cls.__name__, field.name)
