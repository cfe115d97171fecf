"""The ``meshnode`` command's errors, against real processes and ports.

Invariant: a failure is one line on stderr, in plain words that say what to do, with a
non-zero exit status; nothing of aiohttp, asyncio or a traceback shows. JSON on stdout
only when ``--json`` asked for it.
"""

from __future__ import annotations

import http.server
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from tests.integration.cluster import NodeProcess

pytestmark = pytest.mark.slow


def meshnode(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshnode.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The single line of stderr, after checking that it is one ``meshnode: error:`` line
    and the status is not 0."""
    assert done.returncode != 0, done.stdout
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("meshnode: error: "), lines[0]
    assert "Traceback" not in done.stderr
    return lines[0].removeprefix("meshnode: error: ")


@pytest.fixture
def closed_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on (bound once by the OS, then freed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    "command",
    [
        ["members"],
        ["discover", "greet someone"],
        ["delegate", "greet", "--input", '{"name": "Ada"}'],
        ["trust"],
        ["status"],
        ["trace", "4bf92f3577b34da6a3ce929d0e0e4736"],
        ["keys", "list"],
        ["a2a", "list"],
    ],
    ids=lambda c: c[0] if c[0] not in ("keys", "a2a") else " ".join(c),
)
def test_no_node_answering_is_said_plainly(command: list[str], closed_port: int) -> None:
    """Every client command names the address and asks whether ``meshnode run`` runs
    there. On the unfixed code: ``ClientConnectorError: Cannot connect to host
    127.0.0.1:PORT ssl:default [Connect call failed ('127.0.0.1', PORT)]`` (members),
    the same for every other command."""
    address = f"127.0.0.1:{closed_port}"
    done = meshnode(*command, "--node", address)
    assert done.returncode == 1
    assert one_error_line(done) == (
        f"no node answering at {address} — is `meshnode run` running there?"
    )
    assert done.stdout == ""


def test_revocation_to_no_node_is_said_plainly(tmp_path: Path, closed_port: int) -> None:
    """``authority revoke --node`` to an address nobody answers at: the same words (the
    revocation file is written all the same). On the unfixed code:
    ``ClientConnectorError: Cannot connect to host ...``."""
    assert meshnode("authority", "init", str(tmp_path / "auth")).returncode == 0
    address = f"127.0.0.1:{closed_port}"
    out = tmp_path / "one.rev"
    done = meshnode(
        "authority", "revoke", "--dir", str(tmp_path / "auth"), "--serial", "1",
        "--node", address, "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 1
    assert one_error_line(done) == (
        f"no node answering at {address} — is `meshnode run` running there?"
    )
    assert out.exists()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeProcess]:
    """A real node offering no capabilities."""
    process = NodeProcess("lone", tmp_path / "lone", [], extra=["--embedder", "hashing"]).start()
    try:
        yield process
    finally:
        process.stop()


def test_failed_delegation_is_one_line_on_stderr(node: NodeProcess) -> None:
    """A delegation nobody can serve: one line on stderr, status 1, nothing on stdout;
    with ``--json`` the node's whole answer on stdout, status 1. On the unfixed code: the
    JSON document (``{"error": ...}``, 9 lines) on stdout without ``--json``."""
    args = ("delegate", "no_such_capability", "--node", node.address, "--deadline", "5")
    plain = meshnode(*args)
    assert plain.returncode == 1
    assert plain.stdout == ""
    message = one_error_line(plain)
    assert message.startswith("delegation failed: "), message
    assert (
        "no_such_capability" in message or "no provider" in message or "no candidate" in (message)
    )
    as_json = meshnode(*args, "--json")
    assert as_json.returncode == 1
    assert "error" in json.loads(as_json.stdout)
    assert as_json.stderr == ""


def test_an_http_refusal_says_what_to_do(tmp_path: Path) -> None:
    """A node that wants the token: the command says the token is missing or wrong and
    how to give it. On the unfixed code: ``RuntimeError: 401: /v1/members: needs the api
    token (Authorization: Bearer ...)``."""
    token = "t" * 24
    guarded = NodeProcess(
        "guarded",
        tmp_path / "guarded",
        [],
        extra=["--embedder", "hashing", "--api-token", token, "--no-trust-loopback"],
    ).start()
    try:
        without = meshnode("members", "--node", guarded.address)
        assert without.returncode == 1
        assert one_error_line(without) == (
            f"{guarded.address} refused the request (HTTP 401): /v1/members: needs the api "
            "token (Authorization: Bearer ...) — give it with --api-token or $MESHNODE_API_TOKEN"
        )
        wrong = meshnode("members", "--node", guarded.address, "--api-token", "w" * 24)
        assert "wrong api token" in one_error_line(wrong)
        right = meshnode("members", "--node", guarded.address, "--api-token", token, "--json")
        assert right.returncode == 0, right.stderr
        # keys takes the token too (on the unfixed code it had no --api-token: status 2),
        # and then gets past authorization to the node's own answer.
        keys = meshnode("keys", "list", "--node", guarded.address, "--api-token", token)
        assert one_error_line(keys) == (
            f"{guarded.address} refused the request (HTTP 409): this node has no keyring "
            "(start it with --keyring)"
        )
    finally:
        guarded.stop()


AGENT_OK = """
from meshnode import MeshNode


class Fine(MeshNode):
    pass


class NotANode:
    pass
"""


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("{dir}/missing.py:Fine", "--agent {dir}/missing.py:Fine: no file {dir}/missing.py"),
        (
            "no_such_module_x:Fine",
            "--agent no_such_module_x:Fine: no module named 'no_such_module_x' "
            "(not installed, and not a FILE.py)",
        ),
        (
            "{dir}/agents.py:Absent",
            "--agent {dir}/agents.py:Absent: {dir}/agents.py has no class Absent",
        ),
        (
            "{dir}/agents.py:NotANode",
            "--agent {dir}/agents.py:NotANode: NotANode is not a MeshNode subclass",
        ),
        (
            "{dir}/broken.py:Fine",
            "--agent {dir}/broken.py:Fine: importing {dir}/broken.py failed: SyntaxError: ",
        ),
        ("agents.py", "--agent agents.py: expected MODULE:CLASS or FILE.py:CLASS"),
    ],
    ids=["file", "module", "class", "subclass", "import", "shape"],
)
def test_agent_errors_name_the_missing_part(
    spec: str, expected: str, tmp_path: Path, closed_port: int
) -> None:
    """``run --agent`` says which part is wrong: the file, the module, the class, or that
    the class is no MeshNode; nothing is started (status 2). On the unfixed code: a missing
    file gave ``FileNotFoundError: [Errno 2] No such file or directory`` and a missing
    module ``ModuleNotFoundError: No module named 'no_such_module_x'`` (status 1), a missing
    class "Absent is not a MeshNode subclass", a broken file ``SyntaxError: invalid syntax
    (broken.py, line 1)`` (status 1) without naming ``--agent``."""
    (tmp_path / "agents.py").write_text(AGENT_OK)
    (tmp_path / "broken.py").write_text("def oops(:\n")
    done = meshnode(
        "run", "--agent", spec.format(dir=tmp_path), "--port", str(closed_port),
        "--embedder", "hashing", "--profile", "local",
    )  # fmt: skip
    assert done.returncode == 2
    assert one_error_line(done).startswith(expected.format(dir=tmp_path))
    assert "listening" not in done.stdout


@pytest.mark.parametrize("kind", ["UDP", "TCP"])
def test_port_in_use_is_named(kind: str, tmp_path: Path) -> None:
    """``run`` on a port another socket holds says so, naming the protocol. On the
    unfixed code: ``OSError: could not bind to local_addr ('127.0.0.1', PORT)`` (UDP) and
    ``BindError: could not bind UDP and TCP on 127.0.0.1:PORT: [Errno 98] error while
    attempting to bind on address ...`` (TCP)."""
    sock_type = socket.SOCK_DGRAM if kind == "UDP" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, sock_type) as held:
        held.bind(("127.0.0.1", 0))
        if kind == "TCP":
            held.listen()
        port = held.getsockname()[1]
        done = meshnode(
            "run", "--port", str(port), "--embedder", "hashing", "--profile", "local",
            "--data-dir", str(tmp_path / "d"),
        )  # fmt: skip
    assert done.returncode == 1
    assert one_error_line(done) == (
        f"port {port} is in use ({kind}) on 127.0.0.1 — another process holds it; "
        "choose another with --port"
    )


def test_demo_into_a_missing_folder_is_refused_before_it_starts(tmp_path: Path) -> None:
    """``demo --out`` into a folder that does not exist is refused at once (status 2):
    no agent is started, nothing is written. On the unfixed code: the demo started its
    five agent processes, ran the query and failed when writing the report (3.7 s in,
    ``FileNotFoundError``, status 1)."""
    out = tmp_path / "missing" / "report.md"
    started = time.monotonic()
    done = meshnode("demo", "--out", str(out), "--no-live", "--embedder", "hashing")
    elapsed = time.monotonic() - started
    assert done.returncode == 2
    assert one_error_line(done) == (
        f"--out {out}: the folder {out.parent} does not exist (create it first)"
    )
    assert done.stdout == ""
    assert not out.parent.exists()
    assert elapsed < 30  # generous: interpreter start only, not five agents


HOSTILE_BODY_BYTES = 64 * 1024 * 1024
"""Size of the error body the hostile server below sends (the command must not read it
all, nor show it); larger than loopback socket buffers, so that a client that stops
reading makes the server's writes fail."""


class _Hostile(http.server.BaseHTTPRequestHandler):
    """Answers every request with 500 and a huge body full of terminal escape codes;
    ``sent_all`` records, per request, whether the client took the whole body."""

    sent_all: ClassVar[list[bool]] = []

    def do_GET(self) -> None:
        chunk = b"\x1b[2J\x1b]0;owned\x07 erased\r\n"
        self.send_response(500)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(HOSTILE_BODY_BYTES))
        self.end_headers()
        sent = 0
        try:
            while sent < HOSTILE_BODY_BYTES:
                piece = chunk * 4096
                piece = piece[: HOSTILE_BODY_BYTES - sent]
                self.wfile.write(piece)
                sent += len(piece)
        except OSError:  # the client stopped reading and closed: what it should do
            pass
        self.sent_all.append(sent >= HOSTILE_BODY_BYTES)

    def log_message(self, *args: object) -> None:
        pass


def test_a_hostile_error_answer_is_cut_and_cleaned() -> None:
    """A server at --node answering with a huge error body of terminal escape codes: the
    command's one error line is at most a few hundred characters, with no control
    character, and the command stopped reading the body early. On the unfixed code: the
    whole 64 MiB body was read and printed, escape codes included (``RuntimeError: 500:
    \\x1b[2J\\x1b]0;owned\\x07 erased ...``, 2.4 M lines)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        done = meshnode("members", "--node", f"127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()
    message = one_error_line(done)
    assert message.startswith(
        f"127.0.0.1:{server.server_address[1]} refused the request (HTTP 500)"
    )
    assert len(message) < 400
    assert all(ch.isprintable() for ch in message)
    assert _Hostile.sent_all == [False]
