"""The MCP client pool against a real MCP server (``mcp_echo_server.py``) over stdio.

Invariants: a server starts on first use and serves concurrent calls on one session; a
tool's own error is a result, not an exception; a call past its deadline raises and
leaves the pool usable; configuration errors fail early; closing the pool (or the node
that owns it) stops the server process; the web-search agent uses a configured ``search``
tool and labels its results as online.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("mcp")

from meshnode import NodeConfig
from meshnode.demo.agents import WebSearchAgent
from meshnode.runtime.mcp_client import (
    McpCallError,
    McpClientPool,
    McpConfigError,
    McpUnavailable,
    load_config,
)
from meshnode.runtime.node import MeshNode

SERVER = Path(__file__).with_name("mcp_echo_server.py")


def config(**env: str) -> dict[str, Any]:
    return {
        "mcpServers": {"echo": {"command": sys.executable, "args": [str(SERVER)], "env": dict(env)}}
    }


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (ProcessLookupError, FileNotFoundError):
        return False
    return not stat.split(") ")[1].startswith("Z")  # a zombie has exited


async def gone(pid: int, within: float = 10.0) -> None:
    """Wait until process ``pid`` has exited."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while _running(pid):
        assert loop.time() < deadline, f"MCP server {pid} still running"
        await asyncio.sleep(0.05)


async def test_calls_start_the_server_once_and_run_concurrently() -> None:
    async with McpClientPool(config()) as pool:
        assert pool.servers == ["echo"] and pool.running == []
        result = await pool.call_tool("echo", "echo", {"text": "hi"})
        assert result.text == "hi" and not result.is_error
        assert pool.running == ["echo"]
        first_pid = (await pool.call_tool("echo", "pid")).text
        texts = await asyncio.gather(
            *(pool.call_tool("echo", "echo", {"text": f"m{i}"}) for i in range(8))
        )
        assert [r.text for r in texts] == [f"m{i}" for i in range(8)]
        assert (await pool.call_tool("echo", "pid")).text == first_pid
        assert sorted(await pool.list_tools("echo")) == [
            "echo",
            "env",
            "fail",
            "pid",
            "search",
            "slow",
        ]
    await gone(int(first_pid))


async def test_structured_results_and_tool_errors() -> None:
    async with McpClientPool(config()) as pool:
        found = await pool.call_tool("echo", "search", {"query": "mesh", "limit": 2})
        structured = found.structured or json.loads(found.text)
        titles = [r["title"] for r in structured["results"]]
        assert titles == ["Result 1 for mesh", "Result 2 for mesh"]
        failed = await pool.call_tool("echo", "fail", {"reason": "on purpose"})
        assert failed.is_error and "on purpose" in failed.text
        # The session survives a tool error.
        assert (await pool.call_tool("echo", "echo", {"text": "still here"})).text == "still here"


async def test_a_call_past_its_deadline_raises_and_the_pool_stays_usable() -> None:
    async with McpClientPool(config()) as pool:
        await pool.call_tool("echo", "echo", {"text": "warm"})
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(McpCallError, match="did not answer"):
            await pool.call_tool("echo", "slow", {"seconds": 10}, timeout_s=0.3)
        assert loop.time() - started < 3.0
        assert (await pool.call_tool("echo", "echo", {"text": "after"})).text == "after"


async def test_server_env_comes_from_the_config_not_the_parent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MESHNODE_PARENT_ONLY", "leak")
    async with McpClientPool(config(GREETING="hola")) as pool:
        assert (await pool.call_tool("echo", "env", {"name": "GREETING"})).text == "hola"
        assert (await pool.call_tool("echo", "env", {"name": "MESHNODE_PARENT_ONLY"})).text == ""


async def test_a_server_that_cannot_start_raises() -> None:
    bad = {"broken": {"command": sys.executable, "args": ["-c", "import sys; sys.exit(1)"]}}
    async with McpClientPool(bad, start_timeout_s=10) as pool:
        with pytest.raises(McpCallError):
            await pool.call_tool("broken", "anything")


@pytest.mark.parametrize(
    "bad",
    [
        [],
        {"mcpServers": []},
        {"x": {"args": []}},
        {"x": {"command": ""}},
        {"x": {"command": "python", "args": "server.py"}},
        {"x": {"command": "python", "env": {"A": 1}}},
        {"x": "python server.py"},
    ],
)
def test_malformed_configs_fail_when_loaded(bad: Any) -> None:
    with pytest.raises(McpConfigError):
        load_config(bad)


def test_config_file_forms(tmp_path: Path) -> None:
    entry = {"command": "python", "args": ["s.py"], "env": {"K": "v"}, "cwd": "/tmp"}
    for form in ({"mcpServers": {"a": entry}}, {"servers": {"a": entry}}, {"a": entry}):
        path = tmp_path / "mcp.json"
        path.write_text(json.dumps(form))
        spec = load_config(path)["a"]
        assert (spec.command, spec.args, dict(spec.env), spec.cwd) == (
            "python",
            ("s.py",),
            {"K": "v"},
            "/tmp",
        )
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(McpConfigError, match="not JSON"):
        load_config(tmp_path / "broken.json")
    with pytest.raises(McpConfigError, match="cannot read"):
        load_config(tmp_path / "missing.json")


async def test_unknown_server_and_closed_pool() -> None:
    pool = McpClientPool(config())
    with pytest.raises(McpConfigError, match="no MCP server named 'nope'"):
        await pool.call_tool("nope", "echo")
    await pool.aclose()
    await pool.aclose()  # twice is safe
    with pytest.raises(McpCallError, match="closed"):
        await pool.call_tool("echo", "echo", {"text": "x"})


async def test_missing_package_gives_an_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mcp", None)
    pool = McpClientPool(config())
    with pytest.raises(McpUnavailable, match=r"meshnode\[mcp\]"):
        await pool.call_tool("echo", "echo", {"text": "x"})
    await pool.aclose()


async def test_node_call_mcp_tool_reads_the_env_config_and_closes_on_shutdown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "mcp.json"
    path.write_text(json.dumps(config()))
    monkeypatch.setenv("MESHNODE_MCP_CONFIG", str(path))
    node = MeshNode(NodeConfig.local(name="mcp-user", port=0, embedder="hashing"))
    await node.start()
    try:
        result = await node.call_mcp_tool("echo", "echo", {"text": "from a node"})
        assert result.text == "from a node"
        pid = int((await node.call_mcp_tool("echo", "pid")).text)
        assert node.mcp is not None and node.mcp.running == ["echo"]
    finally:
        await node.aclose()
    await gone(pid)


async def test_web_search_agent_uses_the_configured_search_tool() -> None:
    agent = WebSearchAgent(NodeConfig.local(name="web", port=0, embedder="hashing"))
    agent.mcp = McpClientPool(config())
    try:
        out = await agent.web_search({"query": "gossip", "limit": 2})
    finally:
        await agent.aclose()
    assert out["offline"] is False and out["source"] == "mcp:echo"
    assert [r["title"] for r in out["results"]] == ["Result 1 for gossip", "Result 2 for gossip"]
    assert all(r["url"].startswith("https://example.org/") for r in out["results"])


async def test_web_search_agent_without_mcp_answers_offline_and_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MESHNODE_MCP_CONFIG", raising=False)
    agent = WebSearchAgent(NodeConfig.local(name="web", port=0, embedder="hashing"))
    try:
        out = await agent.web_search({"query": "why is the median better than the mean"})
    finally:
        await agent.aclose()
    assert out["offline"] is True and "Offline" in out["note"]
    assert out["results"] and all(r["offline"] for r in out["results"])
    assert out["results"][0]["title"] == "Why averages of funding rounds mislead"
