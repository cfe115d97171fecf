"""The node's HTTP surface (aiohttp), on the same port number as its UDP socket.

Routes for operators and tools (JSON):

====================  =====================================================================
``GET /v1/health``    liveness, node id, incarnation, member counts, local health, and the
                      counters of membership (probes, failed probes, suspicions raised,
                      refutations, rumors dropped…), the mesh core and the task service
``GET /v1/members``   every known member: id, name, address, state, incarnation
``GET /v1/manifests`` every known manifest, decoded
====================  =====================================================================

``POST /v1/discover``  rank providers: ``{"description", "capability_name", "min_trust",
                      "max_cost_usd", "tags", "top_k"}`` → ``{"candidates": [...]}``
``GET /v1/trust``     this node's trust view per peer, its own opinions, breaker states
``POST /v1/delegate`` run a task through the mesh (loopback callers, or a bearer token):
                      ``{"capability", "input", "description", "deadline_s",
                      "max_cost_usd", "min_trust"}``
====================  =====================================================================

Routes between peers (signed msgpack envelopes, ``application/x-meshnode``):

==========================================  =================================================
``POST /v1/wire/pushpull``                  anti-entropy: state in, state and deltas out
``GET /v1/wire/manifests/{node_id}``        one signed manifest, bare msgpack
``POST /v1/wire/records``                   third push-pull leg: records the peer lacks
``GET /v1/ws/tasks``                        WebSocket carrying task negotiation frames
==========================================  =================================================

Peer routes verify the envelope signature and drop anything ``protocol.decode`` refuses with
HTTP 400 (the body says why). They only apply signed data through the same rules as
gossip. ``POST /v1/delegate`` spends money and trust on the caller's behalf, so it is open
only to loopback clients unless ``NodeConfig.api_token`` is set and presented as
``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import hmac
import ipaddress
import math
from typing import TYPE_CHECKING, Any

from aiohttp import web

from protocol import (
    Envelope,
    LedgerRecord,
    Manifest,
    PushPull,
    RemoteProtocolError,
    decode,
    encode,
    pack,
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
        envelope = await _signed_envelope(request, node)
        if len(envelope.messages) != 1 or not isinstance(envelope.messages[0], PushPull):
            raise web.HTTPBadRequest(text="expected exactly one PushPull message")
        reply = node.handle_push_pull(envelope.sender, envelope.messages[0])
        return web.Response(body=encode([reply], node.identity), content_type=WIRE_CONTENT_TYPE)

    @routes.post("/v1/wire/records")
    async def wire_records(request: web.Request) -> web.Response:
        envelope = await _signed_envelope(request, node)
        records = [m for m in envelope.messages if isinstance(m, LedgerRecord)]
        if len(records) != len(envelope.messages):
            raise web.HTTPBadRequest(text="expected only LedgerRecord messages")
        return web.json_response({"applied": node.handle_records(records)})

    @routes.get("/v1/ws/tasks")
    async def ws_tasks(request: web.Request) -> web.StreamResponse:
        return await node.tasks.handle_ws(request)

    @routes.post("/v1/discover")
    async def discover(request: web.Request) -> web.Response:
        from meshnode.runtime.discovery import candidate_json

        body = await _json_body(request)
        try:
            candidates = await node.discover(
                _opt_str(body, "description"),
                capability_name=_opt_str(body, "capability_name"),
                min_trust=_number(body, "min_trust", 0.0),
                max_cost_usd=_opt_number(body, "max_cost_usd"),
                max_latency_ms=_opt_number(body, "max_latency_ms"),
                tags=_str_list(body, "tags"),
                top_k=int(_number(body, "top_k", 5)),
            )
        except (ValueError, TypeError) as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        return web.json_response({"candidates": [candidate_json(c) for c in candidates]})

    @routes.get("/v1/trust")
    async def trust(request: web.Request) -> web.Response:
        return web.json_response({"node_id": node.node_id, "peers": node.trust_json()})

    @routes.post("/v1/delegate")
    async def delegate(request: web.Request) -> web.Response:
        from meshnode.runtime.tasks import DelegationError, attempt_json

        _authorize(request, node.config.api_token)
        body = await _json_body(request)
        try:
            result = await node.delegate(
                _opt_str(body, "capability"),
                body.get("input"),
                description=_opt_str(body, "description"),
                deadline_s=_opt_number(body, "deadline_s"),
                max_cost_usd=_opt_number(body, "max_cost_usd"),
                min_trust=_number(body, "min_trust", 0.0),
            )
        except (ValueError, TypeError) as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        except DelegationError as exc:
            return web.json_response(
                {"error": exc.reason, "attempts": [attempt_json(a) for a in exc.attempts]},
                status=502,
            )
        return web.json_response(result.to_json())

    app.add_routes(routes)
    return app


async def _signed_envelope(request: web.Request, node: MeshNode) -> Envelope:
    """The request body as a verified envelope, or HTTP 400 (and a counted drop)."""
    try:
        return decode(await request.read(), verifier=node.verifier)
    except RemoteProtocolError as exc:
        node.count_drop(type(exc).__name__)
        raise web.HTTPBadRequest(text=f"{type(exc).__name__}: {exc}") from None


def _authorize(request: web.Request, token: str | None) -> None:
    """Loopback callers pass; others need ``Authorization: Bearer <api_token>``."""
    peer = request.remote or ""
    try:
        if ipaddress.ip_address(peer.split("%")[0]).is_loopback:
            return
    except ValueError:
        pass
    given = request.headers.get("Authorization", "")
    if token is not None and hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        return
    raise web.HTTPForbidden(text="delegation is open to loopback callers or with the api token")


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text="body must be a JSON object") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="body must be a JSON object")
    return body


def _opt_str(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise web.HTTPBadRequest(text=f"{key} must be a string")
    return value


def _opt_number(body: dict[str, Any], key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise web.HTTPBadRequest(text=f"{key} must be a number")
    return float(value)


def _number(body: dict[str, Any], key: str, default: float) -> float:
    value = _opt_number(body, key)
    return default if value is None else value


def _str_list(body: dict[str, Any], key: str) -> list[str]:
    value = body.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise web.HTTPBadRequest(text=f"{key} must be a list of strings")
    return value
