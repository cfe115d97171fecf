"""``meshnode run --mcp-expose CONFIG``: the tools of an MCP server (``mcp_tools_server.py``,
written with the ``mcp`` package, over stdio) become capabilities of one node, and another
node delegates to them. Real ``meshnode run`` processes on 127.0.0.1.

Invariants: each tool is published as ``<server>.<tool>`` in the node's signed manifest,
with its description, the ``mcp`` tags and its input schema (an ``anyOf`` of bare types
narrowed to a type list); a tool whose schema the mesh cannot enforce (a ``pattern``) is
not published; a delegation from another node runs the tool and returns its structured
result; an input that breaks the schema is refused as invalid input without reaching the
tool or blaming the node; a tool error fails the task and lowers the caller's trust in the
exposing node; a tool added upstream (``tools/list_changed``) is published without a
restart.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("mcp")

from tests.adversarial.attack import http_json
from tests.integration.cluster import NodeProcess, wait_until
from tests.integration.mcp_pair import capabilities, exposed_pair

pytestmark = pytest.mark.slow

SERVER = Path(__file__).with_name("mcp_tools_server.py")
READY_S = 30.0


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[NodeProcess, NodeProcess]]:
    with exposed_pair(tmp_path, "tools", SERVER, ["tools.word_count"], READY_S) as nodes:
        yield nodes


def _delegate(caller: NodeProcess, capability: str, payload: Any) -> tuple[int, Any]:
    return http_json(
        caller.address,
        "/v1/delegate",
        {"capability": capability, "input": payload, "deadline_s": 20},
        timeout=30,
    )


def _trust(caller: NodeProcess, of: NodeProcess) -> float | None:
    for peer in caller.get("/v1/trust")["peers"]:
        if peer["node_id"] == of.node_id:
            direct: float | None = peer["direct"]
            return direct
    return None


def test_tools_are_capabilities_another_node_calls(pair: tuple[NodeProcess, NodeProcess]) -> None:
    exposer, caller = pair
    caps = capabilities(caller, exposer)
    assert set(caps) == {
        "tools.word_count",
        "tools.unit_price",
        "tools.explode",
        "tools.learn_reverse",
        "tools.learn_quietly",
    }, "slug's pattern cannot be enforced, so it is not published"
    word_count = caps["tools.word_count"]
    assert word_count["description"] == "Count the words of a text and list the most common ones."
    assert word_count["tags"] == ["mcp", "mcp:tools"]
    assert word_count["input_schema"]["properties"]["top"]["maximum"] == 10
    count = caps["tools.unit_price"]["input_schema"]["properties"]["count"]
    assert count["type"] == ["integer", "null"] and "anyOf" not in count

    status, body = _delegate(
        caller, "tools.word_count", {"text": "the mesh and the node", "top": 1}
    )
    assert status == 200, body
    assert body["provider"] == exposer.node_id
    assert body["output"] == {"words": 5, "top": ["the"]}

    status, body = _delegate(caller, "tools.unit_price", {"total": 9.0, "count": None})
    assert status == 200, body
    assert body["output"] == {"result": 9.0}


def test_bad_input_is_refused_and_tool_errors_lower_trust(
    pair: tuple[NodeProcess, NodeProcess],
) -> None:
    """An input outside the schema is refused by the exposing node before the tool runs
    (no opinion formed); a tool error is a failed task, and the caller's own opinion of
    the exposing node drops."""
    exposer, caller = pair
    status, body = _delegate(caller, "tools.word_count", {"text": "x", "top": 99})
    assert status == 422 and body["invalid_input"] is True, body
    assert _trust(caller, exposer) is None, "a caller's bad input is not the provider's failure"

    status, body = _delegate(caller, "tools.word_count", {"text": "warm up"})
    assert status == 200, body
    before = _trust(caller, exposer)
    for _ in range(3):
        status, body = _delegate(caller, "tools.explode", {"reason": "the disk is full"})
        assert status == 502, body
        assert "the disk is full" in body["attempts"][0]["detail"]
    wait_until(
        lambda: (_trust(caller, exposer) or 1.0) < (before if before is not None else 0.5),
        10,
        "the caller's opinion of the exposer drops after tool errors",
    )


def test_a_tool_added_upstream_is_published(pair: tuple[NodeProcess, NodeProcess]) -> None:
    exposer, caller = pair
    assert "tools.reverse" not in capabilities(caller, exposer)
    status, body = _delegate(caller, "tools.learn_reverse", {})
    assert status == 200, body
    wait_until(
        lambda: "tools.reverse" in capabilities(caller, exposer),
        READY_S,
        "tools/list_changed publishes the new tool",
    )
    status, body = _delegate(caller, "tools.reverse", {"text": "mesh"})
    assert status == 200, body
    assert body["output"] == {"result": "hsem"}


def test_docs_mcp_expose_snippets_run(tmp_path: Path) -> None:
    """docs/interop.md, "MCP tools as mesh capabilities": the server block, its config
    and the CLI block (run --mcp-expose, then delegate) work as written."""
    from tests.integration import doc_snippets

    (tmp_path / "wordtools.py").write_text(doc_snippets.snippet("mcp-tool-server"))
    config = json.loads(doc_snippets.snippet("mcp-expose-config"))
    config["mcpServers"]["wordtools"]["command"] = sys.executable  # "python" on the page
    (tmp_path / "mcp.json").write_text(json.dumps(config))
    tools, caller, delegate = doc_snippets.commands("mcp-expose-cli")
    ports = {"7946": str(_free_port()), "7947": str(_free_port())}

    def local(argv: list[str]) -> list[str]:
        for old, new in ports.items():
            argv = [a.replace(old, new) for a in argv]
        return argv

    fast = ["--profile", "local", "--embedder", "hashing", "--log-level", "WARNING"]
    with (
        doc_snippets.running(
            [*local(tools), "--data-dir", str(tmp_path / "tools"), *fast],
            tmp_path,
            tmp_path / "tools.log",
        ),
        doc_snippets.running(
            [*local(caller), "--data-dir", str(tmp_path / "caller"), *fast],
            tmp_path,
            tmp_path / "caller.log",
        ),
    ):
        outcome: list[Any] = []

        def delegated() -> bool:
            done = doc_snippets.run(local(delegate))
            outcome[:] = [done]
            return done.returncode == 0

        wait_until(delegated, READY_S, "the caller delegates to the exposed tool")
        assert json.loads(outcome[0].stdout) == {"words": 3}


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_periodic_refresh_publishes_and_withdraws(tmp_path: Path) -> None:
    """A server that changes its tools without announcing it: the periodic listing
    publishes the new tool and withdraws the removed one (in-process node, real server)."""
    from meshnode import MeshNode, NodeConfig
    from meshnode.runtime.mcp_client import McpClientPool
    from meshnode.runtime.mcp_expose import McpExposer
    from meshnode.runtime.node import wait_for

    pool = McpClientPool(
        {"mcpServers": {"tools": {"command": sys.executable, "args": [str(SERVER)]}}}
    )
    node = MeshNode(NodeConfig.local(name="exposer", port=0, embedder="hashing"))
    node.mcp = pool
    async with node, McpExposer(node, pool, refresh_s=0.3) as exposer:
        assert {"tools.explode", "tools.word_count"} <= set(node.capabilities)
        assert "tools.slug" in exposer.refused and "pattern" in exposer.refused["tools.slug"]
        result = await pool.call_tool("tools", "learn_quietly", {})
        assert not result.is_error
        await wait_for(
            lambda: "tools.shout" in node.capabilities and "tools.explode" not in node.capabilities,
            10,
        )
        assert set(exposer.published) == set(node.capabilities)
