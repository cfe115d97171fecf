"""Where a node's log lines go.

Invariants: a node embedded in a program writes nothing to that program's stdout or stderr
unless the program configures logging (the ``meshnode`` logger has only a NullHandler);
configured, the standard ``logging`` tree carries the events with their fields; ``meshnode
run`` on a terminal prints every line in one format, the ``listening`` line included.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 60.0
"""Seconds a child program of these tests may take."""

PROGRAM = textwrap.dedent(
    """
    import asyncio
    {setup}
    from meshnode import MeshNode, NodeConfig, format_address

    async def echo(payload):
        return payload

    async def main():
        cfg = dict(port=0, embedder="hashing")
        async with MeshNode(NodeConfig.local(name="provider", **cfg)) as provider:
            provider.add_capability(echo, name="echo", description="Echo the input back")
            seeds = [format_address(provider.address)]
            async with MeshNode(NodeConfig.local(name="app", seeds=seeds, **cfg)) as app:
                await app.wait_for(capability_name="echo", within=20)
                result = await app.delegate("echo", {{"x": 1}})
                assert result.output == {{"x": 1}}
        print("done")

    asyncio.run(main())
    """
)


def _run(setup: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", PROGRAM.format(setup=setup)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )


def test_an_embedded_node_writes_nothing_unless_the_program_configures_logging() -> None:
    """Two nodes start, find each other, delegate and close: a join, a manifest, a task,
    a leave, all logged at INFO, and the program's own output is all there is.

    On the unfixed code (with a sleep in place of ``wait_for``, which it lacked): stdout
    held 7 structlog lines (node_started twice, member_joined, ...) before ``done``."""
    done = _run("")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "done\n"
    assert done.stderr == ""


def test_the_standard_logging_tree_carries_the_events_when_configured() -> None:
    setup = textwrap.dedent(
        """
        import logging, sys
        class Fields(logging.Filter):
            def filter(self, record):
                if getattr(record, "meshnode_event", None) == "node_started":
                    print("fields", record.name, sorted(record.meshnode_fields), file=sys.stderr)
                return True
        handler = logging.StreamHandler(sys.stderr)
        handler.addFilter(Fields())
        logging.basicConfig(level=logging.INFO, handlers=[handler], format="%(name)s %(message)s")
        """
    )
    done = _run(setup)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "done\n"
    lines = done.stderr.splitlines()
    started = [line for line in lines if line.startswith("meshnode node_started ")]
    assert len(started) == 2, done.stderr
    assert "name='provider'" in done.stderr and "name='app'" in done.stderr
    assert any(line.startswith("meshnode member_joined ") for line in lines)
    assert "fields meshnode ['address', 'incarnation', 'name', 'node', 'node_id', 'seeds']" in lines


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _read_until(fd: int, needle: str, timeout: float) -> str:
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and needle.encode() not in out:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
    return out.decode("utf-8", "replace")


@pytest.mark.slow
def test_meshnode_run_on_a_terminal_prints_one_format(tmp_path: Path) -> None:
    """``meshnode run`` with stdout and stderr on a pseudo-terminal, as in a shell.

    On the unfixed code: the ``listening`` line was the one raw JSON object among the
    rendered lines (``{"event": "listening", ...}``)."""
    parent, child = pty.openpty()
    cmd = [sys.executable, "-m", "meshnode.cli", "run", "--name", "tty", "--port", "0"]
    cmd += ["--profile", "local", "--embedder", "hashing", "--data-dir", str(tmp_path / "n")]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "TERM": "xterm"},
        stdin=subprocess.DEVNULL,
        stdout=child,
        stderr=child,
        close_fds=True,
    )
    os.close(child)
    try:
        text = _read_until(parent, "listening", RUN_TIMEOUT_S)
        text += _read_until(parent, "\n", 2.0)
    finally:
        proc.send_signal(signal.SIGINT)
        text_after = _read_until(parent, "node_closed", 20.0)
        proc.wait(20)
        os.close(parent)
    lines = [_ANSI.sub("", line).strip() for line in (text + text_after).splitlines()]
    lines = [line for line in lines if line]
    listening = [line for line in lines if "listening" in line]
    assert len(listening) == 1, lines
    assert not [line for line in lines if line.startswith("{")], lines
    assert "node_started" in text  # the log lines are there, rendered for reading
    started = next(line for line in lines if "node_started" in line)
    # the same layout: an ISO timestamp, the level, the event, then the fields
    layout = re.compile(r"^\d{4}-\d\d-\d\dT[\d:.]+Z \[info\s*\] (\w+)\s+\S+=")
    assert layout.match(started) and layout.match(listening[0]), (started, listening[0])


@pytest.mark.slow
def test_the_listening_line_stays_json_when_stdout_is_a_pipe(tmp_path: Path) -> None:
    """stderr on a terminal (log lines rendered for reading) but stdout piped to a script:
    the ``listening`` line is still the JSON object scripts parse."""
    parent, child = pty.openpty()
    cmd = [sys.executable, "-m", "meshnode.cli", "run", "--name", "piped", "--port", "0"]
    cmd += ["--profile", "local", "--embedder", "hashing", "--data-dir", str(tmp_path / "n")]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "TERM": "xterm"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=child,
        text=True,
    )
    os.close(child)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        logs = _read_until(parent, "node_started", 5.0)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(20)
        if proc.stdout is not None:
            proc.stdout.close()
        os.close(parent)
    event = json.loads(line)
    assert event["event"] == "listening" and event["name"] == "piped"
    assert "node_started" in logs and not _ANSI.sub("", logs).lstrip().startswith("{")
