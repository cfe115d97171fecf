"""The node's HTTP surface (aiohttp), on the same port number as its UDP socket.

Routes for operators and tools (JSON):

====================  =====================================================================
``GET /v1/health``    liveness, node id, incarnation, member counts
``GET /v1/members``   every known member: id, name, address, state, incarnation
``GET /v1/manifests`` every known manifest, decoded
====================  =====================================================================

Routes between peers (signed msgpack envelopes, ``application/x-meshnode``):

==========================================  =================================================
``POST /v1/wire/pushpull``                  anti-entropy: state in, state and deltas out
``GET /v1/wire/manifests/{node_id}``        one signed manifest, bare msgpack
==========================================  =================================================

Peer routes verify the envelope signature and drop anything ``protocol.decode`` refuses with
HTTP 400 (the body says why). Nothing here changes state except push-pull, which only
applies signed data through the same rules as gossip.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from protocol import (
    MAX_VERSION,
    LedgerRecord,
    Manifest,
    PushPull,
    RemoteProtocolError,
    decode,
    encode,
    pack,
    short_id,
)
from protocol.limits import MAX_FRAME_BYTES

if TYPE_CHECKING:
    from meshnode.runtime.node import MeshNode

WIRE_CONTENT_TYPE = "application/x-meshnode"


def manifest_json(manifest: Manifest) -> dict[str, Any]:
    return {
        "node_id": manifest.node_id,
        "name": manifest.name,
        "endpoint": manifest.endpoint,
        "version": manifest.version,
        "max_concurrent_tasks": manifest.max_concurrent_tasks,
        "tags": list(manifest.tags),
        "capabilities": [
            {
                "name": c.name,
                "description": c.description,
                "input_schema": c.input_schema,
                "output_schema": c.output_schema,
                "avg_latency_ms": c.avg_latency_ms,
                "cost_per_call_usd": c.cost_per_call_usd,
                "tags": list(c.tags),
            }
            for c in manifest.capabilities
        ],
    }


def build_app(node: MeshNode) -> web.Application:
    """The aiohttp application serving ``node``."""
    app = web.Application(client_max_size=MAX_FRAME_BYTES)
    routes = web.RouteTableDef()

    @routes.get("/v1/health")
    async def health(request: web.Request) -> web.Response:
        return web.json_response(node.health())

    @routes.get("/v1/members")
    async def members(request: web.Request) -> web.Response:
        return web.json_response({"members": node.members_json()})

    @routes.get("/v1/manifests")
    async def manifests(request: web.Request) -> web.Response:
        return web.json_response(
            {"manifests": [manifest_json(m) for m in node.core.manifests.manifests()]}
        )

    @routes.get("/v1/wire/manifests/{node_id}")
    async def wire_manifest(request: web.Request) -> web.Response:
        manifest = node.core.manifests.get(request.match_info["node_id"])
        if manifest is None:
            raise web.HTTPNotFound(text="no manifest known for that node")
        return web.Response(body=pack(manifest), content_type=WIRE_CONTENT_TYPE)

    @routes.post("/v1/wire/pushpull")
    async def wire_pushpull(request: web.Request) -> web.Response:
        data = await request.read()
        try:
            envelope = decode(data, verifier=node.verifier)
        except RemoteProtocolError as exc:
            node.count_drop(type(exc).__name__)
            raise web.HTTPBadRequest(text=f"{type(exc).__name__}: {exc}") from None
        if len(envelope.messages) != 1 or not isinstance(envelope.messages[0], PushPull):
            raise web.HTTPBadRequest(text="expected exactly one PushPull message")
        reply = node.handle_push_pull(envelope.sender, envelope.messages[0])
        return web.Response(body=encode([reply], node.identity), content_type=WIRE_CONTENT_TYPE)

    @routes.post("/v1/wire/records")
    async def wire_records(request: web.Request) -> web.Response:
        data = await request.read()
        try:
            envelope = decode(data, verifier=node.verifier)
        except RemoteProtocolError as exc:
            node.count_drop(type(exc).__name__)
            raise web.HTTPBadRequest(text=f"{type(exc).__name__}: {exc}") from None
        records = [m for m in envelope.messages if isinstance(m, LedgerRecord)]
        if len(records) != len(envelope.messages):
            raise web.HTTPBadRequest(text="expected only LedgerRecord messages")
        return web.json_response({"applied": node.handle_records(records)})

    app.add_routes(routes)
    app["node_label"] = short_id(node.identity.node_id)
    app["protocol_max_version"] = MAX_VERSION
    return app
