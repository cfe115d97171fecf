"""A2A interop benchmark: the cost of calling the mesh over A2A, against ``node.delegate``.

Usage::

    python benchmarks/interop.py [--out docs/benchmarks/interop.json] [--quick]

Prints JSON to stdout (or writes it to ``--out``); progress goes to stderr.

What is measured, on 127.0.0.1 only, in one run:

* a provider process (``meshnode run --agent benchmarks/delegation.py:BenchProvider``,
  local profile, capability ``echo_bench``);
* a gateway ``MeshNode`` in this process (local profile, hashing embedder), joined to the
  provider, twice: without a data dir (A2A tasks kept in memory) and with one (every task
  written to SQLite, ``synchronous=FULL``).

Sequential round trips (one at a time, after a warm-up), each measured from the caller:

* ``delegate``: ``await gateway.delegate("echo_bench", {...})`` (the baseline);
* ``a2a_gateway``: a blocking A2A ``SendMessage`` (JSON-RPC over HTTP, ``httpx`` with
  keep-alive) to the gateway naming ``echo_bench``, which the gateway does not serve: it
  discovers the provider and delegates to it;
* ``a2a_direct``: the same message sent to the provider's own A2A endpoint, served by its
  own provider core (no mesh hop).

``overhead_ms`` is ``a2a_gateway − delegate`` at p50 and p99: what A2A adds on top of a
delegation (HTTP, JSON-RPC, the task document, its storage). Goal: at most
:data:`GOAL_OVERHEAD_P50_MS` at p50. The machine is shared, so the load average is recorded
beside the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run from a plain checkout

import httpx  # noqa: E402

from benchmarks.delegation import (  # noqa: E402
    CAPABILITY,
    percentiles,
    start_provider,
    wait_until_discoverable,
)
from meshnode import MeshNode, NodeConfig  # noqa: E402

GOAL_OVERHEAD_P50_MS = 2.0
"""Most the gateway may add to a delegation's p50 round trip on loopback."""
ROUNDS = 400
"""Measured round trips per path (``--quick``: :data:`QUICK_ROUNDS`)."""
QUICK_ROUNDS = 100
WARMUP = 30
"""Round trips per path before measuring (connections opened, caches warm)."""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def a2a_body(text: str) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "SendMessage",
        "params": {
            "message": {
                "messageId": uuid.uuid4().hex,
                "role": "ROLE_USER",
                "parts": [{"data": {"text": text}}],
                "metadata": {"skill": CAPABILITY},
            }
        },
    }


async def timed(call: Callable[[], Awaitable[None]], rounds: int) -> dict[str, Any]:
    for _ in range(WARMUP):
        await call()
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - start) * 1000.0)
    return percentiles(samples)


async def measure(
    provider_id: str, provider_address: str, data_dir: str | None, rounds: int
) -> dict[str, Any]:
    config = NodeConfig.local(
        embedder="hashing", seeds=(provider_address,), data_dir=data_dir, name="gateway", port=0
    )
    async with MeshNode(config) as gateway:
        await wait_until_discoverable(gateway, provider_id)
        headers = {"A2A-Version": "1.0"}
        async with httpx.AsyncClient(headers=headers, timeout=30) as http:

            async def delegate() -> None:
                result = await gateway.delegate(CAPABILITY, {"text": "x"})
                assert result.output == {"text": "x"}

            def a2a_call(url: str) -> Callable[[], Awaitable[None]]:
                async def call() -> None:
                    reply = (await http.post(url, json=a2a_body("x"))).json()
                    task = reply["result"]["task"]
                    assert task["status"]["state"] == "TASK_STATE_COMPLETED", task["status"]

                return call

            figures = {}
            log(f"  delegate ({'sqlite' if data_dir else 'memory'})")
            figures["delegate"] = await timed(delegate, rounds)
            log("  a2a_gateway")
            figures["a2a_gateway"] = await timed(a2a_call(f"{gateway.url}/a2a"), rounds)
            log("  a2a_direct")
            figures["a2a_direct"] = await timed(a2a_call(f"http://{provider_address}/a2a"), rounds)
    overhead = {
        q: round(figures["a2a_gateway"][q] - figures["delegate"][q], 3) for q in ("p50", "p99")
    }
    return {**figures, "overhead_ms": overhead}


async def run(rounds: int) -> dict[str, Any]:
    load_before = [round(x, 2) for x in os.getloadavg()]
    proc, provider_id, address = start_provider()
    try:
        log("gateway without a data dir")
        memory = await measure(provider_id, address, None, rounds)
        with tempfile.TemporaryDirectory() as tmp:
            log("gateway with a data dir")
            sqlite = await measure(provider_id, address, str(Path(tmp) / "gw"), rounds)
    finally:
        proc.terminate()
        proc.wait(20)
        if proc.stdout is not None:
            proc.stdout.close()
    return {
        "benchmark": "interop",
        "rounds": rounds,
        "loopback": True,
        "load_average_before": load_before,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "gateway_in_memory": memory,
        "gateway_with_sqlite": sqlite,
        "goals": {
            "overhead_p50_ms_max": GOAL_OVERHEAD_P50_MS,
            "met_in_memory": memory["overhead_ms"]["p50"] <= GOAL_OVERHEAD_P50_MS,
            "met_with_sqlite": sqlite["overhead_ms"]["p50"] <= GOAL_OVERHEAD_P50_MS,
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the JSON here (default: stdout)")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_ROUNDS} rounds")
    args = parser.parse_args(argv)
    result = asyncio.run(run(QUICK_ROUNDS if args.quick else ROUNDS))
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
