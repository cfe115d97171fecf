"""``meshnode mcp --node`` driven by the official MCP client (``stdio_client`` +
``ClientSession``) against a real three-node mesh on 127.0.0.1.

Invariants: the server lists exactly the four tools, each with typed, bounded inputs and
an output schema; each tool answers with structured content that matches what the node's
API says (delegate runs a real capability on another node); whatever the node refuses,
or a node that is not there, comes back as an MCP tool error with a clear message; an
out-of-bounds argument is refused before it reaches the node; ``--http`` serves the same
tools over streamable HTTP on loopback, and refuses a non-loopback bind without
``--open``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("mcp")

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

from tests.integration.agents import TEXT_SCHEMA, Cap, LocalMesh

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "mcp-test-token-0123456789"


async def shout(payload: Any) -> Any:
    return {"text": str(payload["text"]).upper()}


@pytest.fixture
async def mesh() -> AsyncIterator[LocalMesh]:
    local = LocalMesh()
    try:
        await local.node("gateway")
        await local.node(
            "shouter",
            [Cap("shout", shout, TEXT_SCHEMA, TEXT_SCHEMA, description="shout text in capitals")],
        )
        await local.node("quiet")
        await local.ready()
        yield local
    finally:
        await local.close()


def _params(*args: str) -> StdioServerParameters:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MESHNODE_API_TOKEN", None)
    return StdioServerParameters(
        command=sys.executable, args=["-m", "meshnode.cli", "mcp", *args], env=env, cwd=str(ROOT)
    )


@contextlib.asynccontextmanager
async def session(*args: str) -> AsyncIterator[ClientSession]:
    async with (
        stdio_client(_params(*args)) as (read, write),
        ClientSession(read, write) as s,
    ):
        await s.initialize()
        yield s


def _text(result: Any) -> str:
    return "\n".join(getattr(b, "text", "") for b in result.content)


async def test_four_tools_against_a_real_mesh(mesh: LocalMesh) -> None:
    """tools/list shows discover, delegate, members and trust with typed, bounded inputs
    and output schemas; each call's structured content is the node's own answer, and
    delegate runs the capability on the node that offers it."""
    gateway, shouter = mesh.nodes[0], mesh.nodes[1]
    async with session("--node", f"127.0.0.1:{gateway.address[1]}") as s:
        tools = {t.name: t for t in (await s.list_tools()).tools}
        assert set(tools) == {"discover", "delegate", "members", "trust"}
        top_k = tools["discover"].input_schema["properties"]["top_k"]
        assert (top_k["minimum"], top_k["maximum"]) == (1, 20)
        assert (
            tools["discover"].input_schema["properties"]["description"]["anyOf"][0]["maxLength"]
            == 2000
        )
        assert all(t.output_schema for t in tools.values())

        found = await s.call_tool("discover", {"description": "shout text in capitals"})
        assert not found.is_error, _text(found)
        best = found.structured_content["candidates"][0]
        assert (best["capability"], best["node_id"]) == ("shout", shouter.node_id)

        done = await s.call_tool("delegate", {"capability": "shout", "input": {"text": "hi"}})
        assert not done.is_error, _text(done)
        assert done.structured_content["output"] == {"text": "HI"}
        assert done.structured_content["provider"] == shouter.node_id

        members = await s.call_tool("members", {})
        ids = {m["node_id"] for m in members.structured_content["members"]}
        assert ids == {n.node_id for n in mesh.nodes}
        assert {m["state"] for m in members.structured_content["members"]} == {"alive"}

        trust = await s.call_tool("trust", {})
        assert trust.structured_content["node_id"] == gateway.node_id
        assert shouter.node_id in {p["node_id"] for p in trust.structured_content["peers"]}


async def test_node_errors_become_tool_errors(mesh: LocalMesh, tmp_path: Path) -> None:
    """A delegation no provider can take, an argument out of bounds, a node that wants a
    token, and a node that is not there: each is an MCP tool error saying why, and the
    session goes on answering."""
    gateway = mesh.nodes[0]
    async with session("--node", f"127.0.0.1:{gateway.address[1]}") as s:
        missing = await s.call_tool("delegate", {"capability": "no_such_thing"})
        assert missing.is_error
        assert "no alive peer offers 'no_such_thing'" in _text(missing)
        bad = await s.call_tool("discover", {"description": "x", "top_k": 500})
        assert bad.is_error and "top_k" in _text(bad)
        neither = await s.call_tool("discover", {})
        assert neither.is_error and "needs a description or a capability_name" in _text(neither)
        again = await s.call_tool("members", {})
        assert not again.is_error

    closed = await mesh.node("closed", api_token=TOKEN, api_trust_loopback=False)
    address = f"127.0.0.1:{closed.address[1]}"
    async with session("--node", address) as s:
        refused = await s.call_tool("members", {})
        assert refused.is_error
        assert f"node at {address} answered 401" in _text(refused)
    async with session("--node", address, "--token", TOKEN) as s:
        allowed = await s.call_tool("members", {})
        assert not allowed.is_error, _text(allowed)

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{sock.getsockname()[1]}"
    async with session("--node", dead) as s:
        gone = await s.call_tool("trust", {})
        assert gone.is_error and f"cannot reach the node at {dead}" in _text(gone)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_streamable_http_on_loopback(mesh: LocalMesh) -> None:
    """``--http PORT`` serves the same tools over streamable HTTP on 127.0.0.1 (the
    official streamable HTTP client calls members); a non-loopback ``--http-host``
    without ``--open`` is refused with exit status 2 and says why."""
    from mcp.client.streamable_http import streamable_http_client

    gateway = mesh.nodes[0]
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "meshnode.cli",
        "mcp",
        "--node",
        f"127.0.0.1:{gateway.address[1]}",
        "--http",
        str(port),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            except OSError:
                assert proc.returncode is None, "meshnode mcp --http exited early"
                assert loop.time() < deadline, "the HTTP server did not start"
                await asyncio.sleep(0.1)
        async with (
            streamable_http_client(f"http://127.0.0.1:{port}/mcp") as (read, write, *_),
            ClientSession(read, write) as s,
        ):
            await s.initialize()
            result = await s.call_tool("members", {})
            assert not result.is_error, _text(result)
            assert len(result.structured_content["members"]) == 3
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 15)

    refused = await asyncio.create_subprocess_exec(
        sys.executable,
        *["-m", "meshnode.cli", "mcp", "--http", "0", "--http-host", "0.0.0.0"],
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(refused.communicate(), 60)
    assert refused.returncode == 2
    assert b"is not loopback" in err and b"--open" in err


async def test_docs_mcp_host_snippets_run(mesh: LocalMesh, tmp_path: Path) -> None:
    """docs/interop.md, "Using the mesh from an MCP host": the host configuration (read by
    meshnode's own MCP client pool) and the Python block (the official client) both reach
    the mesh through ``meshnode mcp``."""
    from meshnode.runtime.mcp_client import McpClientPool
    from tests.integration import doc_snippets

    address = f"127.0.0.1:{mesh.nodes[0].address[1]}"
    config = json.loads(doc_snippets.snippet("mcp-host-config"))
    entry = config["mcpServers"]["mesh"]
    assert entry["command"] == "meshnode"
    entry["command"] = sys.executable
    entry["args"] = [
        "-m",
        "meshnode.cli",
        *(a.replace("127.0.0.1:7946", address) for a in entry["args"]),
    ]
    entry["env"] = {"PYTHONPATH": str(ROOT)}
    entry["cwd"] = str(ROOT)
    async with McpClientPool(config) as pool:
        result = await pool.call_tool("mesh", "members", {})
        assert not result.is_error, result.text
        assert len(result.structured["members"]) == 3

    code = doc_snippets.snippet("mcp-host-python").replace(
        'command="meshnode", args=["mcp",',
        'command=sys.executable, args=["-m", "meshnode.cli", "mcp",',
    )
    script = tmp_path / "host.py"
    script.write_text("import sys\n" + code)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        env={**doc_snippets.env(), "MESH_NODE": address},
        cwd=str(ROOT),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert "['delegate', 'discover', 'members', 'trust']" in out.decode()
    assert "3 members" in out.decode()


def _start_then_eof(node: str) -> tuple[int, str]:
    """Run ``meshnode mcp --node NODE`` on stdio, close its input at once (an MCP host
    that goes away), and return its exit code and stderr."""
    params = _params("--node", node)
    proc = subprocess.run(
        [params.command, *params.args],
        input="",
        capture_output=True,
        text=True,
        env=params.env,
        cwd=params.cwd,
        timeout=60,
    )
    return proc.returncode, proc.stderr


async def test_a_missing_node_is_reported_at_start(mesh: LocalMesh) -> None:
    """``meshnode mcp`` checks its node once at start: with nothing listening there it says
    so on stderr (the host's log) in one line, and still serves (exit 0 at the end of
    input); with the node up it says nothing. On the code before the check: no line."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    code, err = await asyncio.to_thread(_start_then_eof, f"127.0.0.1:{free}")
    assert code == 0, err
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert warnings == [
        f"meshnode mcp: warning: no node answering at 127.0.0.1:{free} — is `meshnode run` "
        "running there? (the tools answer with an error until the node is up)"
    ]
    code, err = await asyncio.to_thread(_start_then_eof, f"127.0.0.1:{mesh.nodes[0].address[1]}")
    assert code == 0 and "warning" not in err, err
