"""A hostile MCP server behind ``meshnode run --mcp-expose``: real processes on 127.0.0.1.

The server (``tests/integration/mcp_hostile_server.py``) answers a call of its ``flood``
tool with one JSON-RPC line of 128 MiB. Invariants: the exposing node reads at most
``MAX_MCP_MESSAGE_BYTES`` (8 MiB) of it (its RSS never grows by more than 32 MiB while the
server writes), the delegated task fails with an error naming the cap, and the node keeps
serving: the server is started again and its ``echo`` tool answers the next call.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("mcp")

from meshnode.runtime.mcp_client import MAX_MCP_MESSAGE_BYTES
from tests.adversarial.attack import NodeProcess, http_json, rss_mb
from tests.integration.mcp_pair import exposed_pair

pytestmark = pytest.mark.slow

SERVER = Path(__file__).resolve().parents[1] / "integration" / "mcp_hostile_server.py"
FLOOD_MIB = 128
RSS_GROWTH_LIMIT_MIB = 32
READY_S = 30.0


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
    with exposed_pair(tmp_path, "hostile", SERVER, ["hostile.flood", "hostile.echo"], READY_S) as (
        exposer,
        caller,
    ):
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
