"""A hostile MCP server behind ``meshnode run --mcp-expose``: real processes on 127.0.0.1.

The server (``tests/integration/mcp_hostile_server.py``) answers a call of its ``flood``
tool with one JSON-RPC line of 128 MiB. Invariants: the exposing node reads at most
``MAX_MCP_MESSAGE_BYTES`` (8 MiB) of it (its RSS never grows by more than 32 MiB while the
server writes), the delegated task fails with an error naming the cap, and the node keeps
serving: the server is started again and its ``echo`` tool answers the next call.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("mcp")

from meshnode.runtime.mcp_client import MAX_MCP_MESSAGE_BYTES
from tests.adversarial.attack import NodeProcess, http_json, rss_mb, wait_until

pytestmark = pytest.mark.slow

SERVER = Path(__file__).resolve().parents[1] / "integration" / "mcp_hostile_server.py"
FLOOD_MIB = 128
RSS_GROWTH_LIMIT_MIB = 32


def _capabilities(node: NodeProcess, of: NodeProcess) -> set[str]:
    for manifest in node.get("/v1/manifests")["manifests"]:
        if manifest["node_id"] == of.node_id:
            return {c["name"] for c in manifest["capabilities"]}
    return set()


def _delegate(caller: NodeProcess, capability: str, payload: Any) -> tuple[int, Any]:
    return http_json(
        caller.address,
        "/v1/delegate",
        {"capability": capability, "input": payload, "deadline_s": 20},
        timeout=40,
    )


def test_an_oversized_mcp_answer_fails_the_task_and_costs_bounded_memory(
    tmp_path: Path,
) -> None:
    """On the unfixed code: the exposing node's RSS grew by 66 MiB (106 to 172 MiB) while
    it buffered the line, and the task ran out its deadline (``execution_timeout`` after
    13.3 s) instead of failing with the cap. With the cap: no growth measured (sampled
    every 50 ms), HTTP 502 naming the cap within a second."""
    config = tmp_path / "mcp.json"
    config.write_text(
        json.dumps({"mcpServers": {"hostile": {"command": sys.executable, "args": [str(SERVER)]}}})
    )
    nodes: list[NodeProcess] = []
    try:
        exposer = NodeProcess(
            "exposer",
            tmp_path / "exposer",
            [],
            extra=["--embedder", "hashing", "--mcp-expose", str(config)],
        ).start()
        nodes.append(exposer)
        caller = NodeProcess(
            "caller", tmp_path / "caller", [exposer.address], extra=["--embedder", "hashing"]
        ).start()
        nodes.append(caller)
        wait_until(
            lambda: {"hostile.flood", "hostile.echo"} <= _capabilities(caller, exposer),
            30,
            "the caller sees the hostile server's tools",
        )
        status, body = _delegate(caller, "hostile.echo", {"text": "warm"})
        assert status == 200, body
        assert exposer.proc is not None
        pid = exposer.proc.pid
        baseline = rss_mb(pid)
        peak = [baseline]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.05):
                try:
                    peak[0] = max(peak[0], rss_mb(pid))
                except (OSError, RuntimeError):
                    return

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            status, body = _delegate(caller, "hostile.flood", {"megabytes": FLOOD_MIB})
        finally:
            done.set()
            sampler.join()
        assert peak[0] - baseline < RSS_GROWTH_LIMIT_MIB, (baseline, peak[0])
        assert status == 502, body
        text = json.dumps(body)
        assert f"over {MAX_MCP_MESSAGE_BYTES} bytes" in text, text

        # The node keeps serving: the server is started again for the next call.
        status, body = _delegate(caller, "hostile.echo", {"text": "after"})
        assert status == 200, body
        assert "after" in json.dumps(body["output"])
    finally:
        for node in nodes:
            node.stop()
