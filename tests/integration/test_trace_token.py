"""``meshnode trace`` gives the API token to the node it was pointed at, and to no one
else: the node assembles the trace from its peers itself, without the token.

The node here is a stand-in HTTP server, because the point is what the command line sends
where: its members list names a peer whose address is a second server that records every
request it gets. (The assembly by real nodes is covered by ``test_traces.py``.)"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from aiohttp import web

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TOKEN = "operator-secret-token-0123456789"
NODE_ID = "a" * 64
PEER_ID = "b" * 64


def _span(node_id: str, span_id: str, parent: str | None, peer: str | None) -> dict[str, Any]:
    return {
        "trace_id": TRACE,
        "span_id": span_id,
        "parent_span_id": parent,
        "name": "invoke_agent upper",
        "kind": "client" if node_id == NODE_ID else "server",
        "node_id": node_id,
        "peer_id": peer,
        "start": 1.0 if parent is None else 1.001,
        "end": 1.01,
        "status": "ok",
        "attributes": {},
    }


async def _serve(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, port


async def test_trace_sends_the_token_to_its_node_only() -> None:
    """Invariant: every request the command makes goes to ``--node``; the peer a span names
    gets nothing from it (so it never sees the operator's token). On the code before the
    command asked its node to assemble the trace: the peer got ``GET /v1/traces/<id>``
    with ``Authorization: Bearer <token>``."""
    peer_requests: list[tuple[str, str | None]] = []
    node_requests: list[tuple[str, str | None]] = []

    async def record_peer(request: web.Request) -> web.Response:
        peer_requests.append((request.path, request.headers.get("Authorization")))
        return web.json_response({"node_id": PEER_ID, "spans": []})

    peer = web.Application()
    peer.router.add_route("*", "/{tail:.*}", record_peer)
    peer_runner, peer_port = await _serve(peer)

    own = _span(NODE_ID, "1" * 16, None, PEER_ID)
    theirs = _span(PEER_ID, "2" * 16, own["span_id"], NODE_ID)

    async def node_route(request: web.Request) -> web.Response:
        node_requests.append((request.path_qs, request.headers.get("Authorization")))
        if request.path == f"/v1/traces/{TRACE}":
            return web.json_response({"trace_id": TRACE, "node_id": NODE_ID, "spans": [own]})
        if request.path == "/v1/members":
            members = [
                {"node_id": NODE_ID, "name": "a", "address": "127.0.0.1:1", "state": "alive"},
                {
                    "node_id": PEER_ID,
                    "name": "b",
                    "address": f"127.0.0.1:{peer_port}",
                    "state": "alive",
                },
            ]
            return web.json_response({"members": members})
        if request.path == f"/v1/dashboard/trace/{TRACE}":
            body = {"trace_id": TRACE, "node_id": NODE_ID, "spans": [own, theirs], "missing": []}
            return web.json_response(body)
        return web.json_response({"error": "not found"}, status=404)

    node = web.Application()
    node.router.add_route("*", "/{tail:.*}", node_route)
    node_runner, node_port = await _serve(node)
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "meshnode.cli",
            "trace",
            TRACE,
            "--node",
            f"127.0.0.1:{node_port}",
            "--token",
            TOKEN,
            "--json",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        await node_runner.cleanup()
        await peer_runner.cleanup()
    assert proc.returncode == 0, err.decode()
    assert peer_requests == []
    assert node_requests and all(auth == f"Bearer {TOKEN}" for _, auth in node_requests)
    assembled = json.loads(out)
    assert {s["node_id"] for s in assembled["spans"]} == {NODE_ID, PEER_ID}
    assert assembled["missing"] == []
