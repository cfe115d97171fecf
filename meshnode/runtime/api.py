"""The node's HTTP surface (aiohttp), on the same port number as its UDP socket.

Routes for operators and tools (JSON):

====================  =====================================================================
``GET /v1/health``    ``status`` (``ok``, or ``degraded`` with ``reasons``: a driver
                      restart or failing effects within a minute, failing writes, own
                      records not yet durable, an identity conflict, every seed
                      unreachable with no other member known; always HTTP 200),
                      ``isolated`` (that last case), node id, incarnation, member
                      counts, local health, drops, effect failures, inbound
                      connection counts and limits, fetches and push-pulls running
                      and waiting (``exchanges``), and the counters of membership
                      (probes, failed probes, suspicions raised, refutations, rumors
                      dropped…), the mesh core and the task service
``GET /v1/members``   every known member: id, name, address, state, incarnation
``GET /v1/manifests`` every known manifest, decoded
====================  =====================================================================

``POST /v1/discover``  rank providers: ``{"description", "capability_name", "min_trust",
                      "max_cost_usd", "tags", "top_k", "max_rtt_ms"}`` → ``{"candidates": [...]}``
``GET /v1/trust``     this node's trust view per peer, its own opinions, breaker states
``POST /v1/delegate`` run a task through the mesh (loopback callers, or a bearer token):
                      ``{"capability", "input", "description", "deadline_s",
                      "max_cost_usd", "min_trust"}``
``POST /v1/keys``     a cluster-wide keyring operation (loopback callers, or a bearer
                      token): ``{"action": "install"|"use"|"remove"|"list", "key":
                      base64}`` → the summary of :class:`meshnode.core.keys.KeyOpSummary`
                      (HTTP 409 while another one runs, 400 when refused here)
====================  =====================================================================

Routes between peers (signed msgpack envelopes, ``application/x-meshnode``):

==========================================  =================================================
``POST /v1/wire/pushpull``                  anti-entropy: state in, state and deltas out
``GET /v1/wire/manifests/{node_id}``        one signed manifest, bare msgpack
``POST /v1/wire/records``                   third push-pull leg: records the peer lacks
``POST /v1/wire/ping``                      TCP fallback probe: one ``Ping`` in, one ``Ack``
``POST /v1/wire/keys``                      a member's key operation in, our answer out
``GET /v1/ws/tasks``                        WebSocket carrying task negotiation frames
==========================================  =================================================

``POST /v1/wire/rejoin`` (unsealed, signed, rate-limited per address) gives a node that
missed a key rotation the keyring, sealed to its key, if its certificate is valid.
``POST /v1/authority/revoke`` (loopback callers, or the api token) takes a packed
:class:`~protocol.messages.SignedRevocation` signed by the mesh authority and gossips it.

Peer routes verify the envelope signature and drop anything ``protocol.decode`` refuses with
HTTP 400 (the body says why). Every body is read with a hard cap per route
With a keyring, every peer route's request body is opened and every reply sealed by the
node's :class:`~meshnode.runtime.transport.WireSeal` (the manifest too); a body that does
not open is refused with HTTP 400 and counted, before anything is decoded. Each peer
body cap allows for the seal's overhead.

Peer routes verify the envelope signature and drop anything ``protocol.decode`` refuses
with HTTP 400 (the body says why). Every body is read with a hard cap per route
(:data:`MAX_PUSH_PULL_REQUEST_BYTES`, :data:`MAX_RECORDS_REQUEST_BYTES`,
:data:`MAX_DISCOVER_BODY_BYTES`, :data:`MAX_DELEGATE_BODY_BYTES`): a declared
Content-Length over it is refused with HTTP 413 before a byte is read, and a body that
grows past it is cut off with 413. Frames over a small threshold are decoded in a thread
(see ``MeshNode.decode_frame``), at most :data:`PEER_BODY_SLOTS` at a time (more get 503),
so the event loop keeps answering probes. JSON bodies must be objects nested at most
:data:`MAX_JSON_DEPTH` deep (else HTTP 400).

``POST /v1/discover`` and ``POST /v1/delegate`` cost CPU (embedding a query, running a
task): callers from anywhere but loopback are rate-limited per remote address by a token
bucket (``NodeConfig.api_rate_per_s`` refill, ``api_rate_burst`` capacity); an empty
bucket gets HTTP 429 with ``Retry-After``. They only apply signed data through the same rules as
gossip.

Access (:func:`authorize`, the one rule every route uses). A route that triggers work or
changes state (:attr:`Access.WORK`: ``POST /v1/delegate`` spends money and trust on the
caller's behalf, ``POST /v1/discover`` spends CPU) answers a caller that presents
``Authorization: Bearer <NodeConfig.api_token>``, or a loopback caller while
``NodeConfig.api_trust_loopback`` holds (the default); anyone else gets HTTP 401. The read
routes (:attr:`Access.READ`: members, manifests, trust) map the mesh, so they follow the
same rule unless ``NodeConfig.api_open_reads``. ``GET /v1/health`` is open. Tokens are
compared in constant time (as SHA-256 digests, so not even their length leaks) and never
logged.

Browser origins (:func:`origin_problem`, a middleware ahead of every route, and
:func:`authorize`). A web page the operator visits can send requests to the node on
loopback: a form post or a "simple" ``fetch`` to ``/v1/delegate`` needs no CORS approval
to be *sent*, and a page on a domain that resolves to 127.0.0.1 (DNS rebinding) can also
*read* the answer. So:

* a request carrying an ``Origin`` header is refused with HTTP 403 (JSON ``{"error"}``)
  unless the origin is the node's own (the scheme and ``Host`` the request was addressed
  to, with a host the node answers to, see below) or listed in
  ``NodeConfig.api_allowed_origins``; a request with ``Sec-Fetch-Site: cross-site`` and
  no ``Origin`` is refused the same way, except a plain navigation to the static
  dashboard page (:data:`BROWSER_OPEN_PATHS`: it holds no data); this happens before
  any route runs, token or not (a page cannot know the token, and a console on another
  origin is allowed by listing it);
* the ``Host`` header must name the node: an IP literal, ``localhost``, the node's
  ``host`` or ``advertise_host``, or a name in ``NodeConfig.api_allowed_hosts``
  (``meshnode run --api-host``). Every request a browser marks as its own
  (``Sec-Fetch-Site`` present) is held to it in the middleware; :func:`authorize` holds
  to it every request it lets through without a token (loopback trust, open reads),
  whatever the client. A request with the right bearer token passes whatever its
  ``Host``: a page cannot attach a token it does not know, and proxies or scrapers that
  reach the node by another name keep working with the token. Peer routes
  (``/v1/wire/*``, the task WebSocket) are signed, not trusted by address, and peers
  send neither ``Origin`` nor ``Sec-Fetch-Site``, so they are untouched; a request with
  no ``Host`` header at all (no browser sends one) is not refused for it.

Refusals are counted in ``/v1/health``'s drops (``api_cross_origin``,
``api_host_refused``).

What stays here, and why: the body caps, the JSON depth, the peer body slots and the
loopback exemption bound raw HTTP input at the boundary, before anything is decoded or
reaches the core; the token bucket itself is the core's
(:class:`meshnode.core.channel.RateLimiter`, given ``time.monotonic()``).
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import hmac
import ipaddress
import json
import math
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from meshnode.core.a2a import json_depth as bounded_json_depth
from meshnode.core.channel import MAX_RATE_BUCKETS as MAX_RATE_BUCKETS  # its old home
from meshnode.core.channel import RateLimiter as RateLimiter  # its old home
from meshnode.core.config import normalize_origin, split_host_port
from meshnode.core.keys import MAX_CONCURRENT_KEY_OPS, Action
from meshnode.runtime.dashboard import add_routes as add_dashboard_routes
from meshnode.runtime.transport import BodyTooLarge, read_capped
from protocol import (
    Envelope,
    LedgerRecord,
    Manifest,
    Ping,
    PushPull,
    RemoteProtocolError,
    decode,
    encode,
    pack,
    unpack,
)
from protocol.certificate import seal_to_node
from protocol.errors import KeyringError
from protocol.keyring import is_sealed, parse_key
from protocol.limits import (
    MAX_DEPTH,
    MAX_MESSAGES_PER_ENVELOPE,
    MAX_VALUE_BYTES,
    SEAL_OVERHEAD_BYTES,
)
from protocol.messages import KeyOp, RejoinReply, RejoinRequest, SignedRevocation

if TYPE_CHECKING:
    from meshnode.core.config import NodeConfig
    from meshnode.runtime.node import MeshNode

WIRE_CONTENT_TYPE = "application/x-meshnode"

MAX_REJOIN_BODY_BYTES = 4_096
"""Largest ``POST /v1/wire/rejoin`` body (one signed envelope holding a certificate, a
timestamp and a nonce: under 1.3 KiB)."""
REJOIN_RATE_PER_S = 0.2
"""Rejoin requests answered per second per remote address (one every 5 s), loopback
included: each costs two signature checks and a sealed box, and an honest node needs one
per missed rotation."""
REJOIN_BURST = 3
"""Rejoin requests an address may send at once before :data:`REJOIN_RATE_PER_S` applies."""
MAX_REVOCATION_BODY_BYTES = 1_024
"""Largest ``POST /v1/authority/revoke`` body (a packed revocation is under 400 bytes)."""
MAX_PUSH_PULL_REQUEST_BYTES = 8 * 1024 * 1024
"""Largest ``POST /v1/wire/pushpull`` body, 8 MiB. The request leg carries the sender's
members, manifest rumors and ledger digests but no records: about 3 MiB at 10,000
members, so this leaves room for growth while refusing the 16 MiB frames the codec would
otherwise take."""
MAX_RECORDS_REQUEST_BYTES = 1024 * 1024
"""Largest ``POST /v1/wire/records`` body, 1 MiB: at most
``protocol.limits.MAX_MESSAGES_PER_ENVELOPE`` ledger records of a few hundred bytes."""
MAX_TCP_PING_REQUEST_BYTES = 1024
"""Largest ``POST /v1/wire/ping`` body (one signed ``Ping`` envelope: about 150 bytes,
plus the seal): the TCP fallback probe costs a listener one small read and a signature
check before it knows the body is garbage."""
MAX_KEY_OP_REQUEST_BYTES = 4 * 1024
"""Largest ``POST /v1/wire/keys`` body (one signed, sealed ``KeyOp``: about 250 bytes)
and ``POST /v1/keys`` JSON body."""
MAX_DISCOVER_BODY_BYTES = 64 * 1024
"""Largest ``POST /v1/discover`` JSON body, 64 KiB (a query is at most
``NodeConfig.max_query_chars`` characters plus a few filters)."""
MAX_DELEGATE_BODY_BYTES = MAX_VALUE_BYTES + 64 * 1024
"""Largest ``POST /v1/delegate`` JSON body: a task input (at most
``protocol.limits.MAX_VALUE_BYTES`` once packed) plus the request's other fields."""
MAX_JSON_DEPTH = MAX_DEPTH
"""Deepest nesting of arrays and objects accepted in a JSON body (the wire format's own
ceiling: a deeper task input could never be sent anyway)."""
PEER_BODY_SLOTS = 4
"""Peer requests with a body over ``node.DECODE_INLINE_MAX_BYTES`` (or of unknown length)
being read and decoded at once; more get HTTP 503 at once. Bounds the memory and thread
time a burst of large frames can take (honest push-pulls arrive a few per minute)."""
BROWSER_OPEN_PATHS = frozenset({"/", "/ui"})
"""Paths (with ``/ui/`` assets) a cross-site browser navigation may ``GET``: the static
dashboard page, which holds no mesh data (following a link to one's own dashboard from
another site is not an attack). Everything it then fetches is same-origin."""
MAX_ORIGIN_ECHO_CHARS = 100
"""Characters of a refused ``Origin`` or ``Host`` quoted back in the 403 body."""
RETRY_AFTER_S = 1
"""``Retry-After`` seconds sent with HTTP 429 and 503."""

assert MAX_RECORDS_REQUEST_BYTES >= MAX_MESSAGES_PER_ENVELOPE * 512


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
    app = web.Application(
        client_max_size=max(
            MAX_PUSH_PULL_REQUEST_BYTES,
            MAX_RECORDS_REQUEST_BYTES,
            MAX_DISCOVER_BODY_BYTES,
            MAX_DELEGATE_BODY_BYTES,
        ),
        middlewares=[_origin_middleware(node), _observe_middleware(node)],
    )
    routes = web.RouteTableDef()
    limiter = RateLimiter(node.config.api_rate_per_s, node.config.api_rate_burst)
    body_slots = asyncio.Semaphore(PEER_BODY_SLOTS)
    key_op_slots = asyncio.Semaphore(MAX_CONCURRENT_KEY_OPS)
    seal = node.seal

    def wire_response(body: bytes) -> web.Response:
        return web.Response(body=seal.seal(body), content_type=WIRE_CONTENT_TYPE)

    def rate_limit(request: web.Request) -> None:
        if _is_loopback(request.remote):
            return
        if not limiter.allow(request.remote or "?", time.monotonic()):
            node.count_drop("api_rate_limited")
            raise web.HTTPTooManyRequests(
                text="too many requests from this address; slow down",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )

    async def signed_envelope(request: web.Request, cap: int) -> Envelope:
        """The body as a verified envelope: 413 over ``cap``, 400 if refused by
        ``protocol.decode`` (counted), 503 when too many large bodies are in flight."""
        from meshnode.runtime.node import DECODE_INLINE_MAX_BYTES

        cap += SEAL_OVERHEAD_BYTES  # a sealed body at its plaintext cap
        declared = request.content_length
        if declared is not None and declared > cap:
            node.count_drop("http_body_too_large")
            raise web.HTTPRequestEntityTooLarge(max_size=cap, actual_size=declared)
        small = declared is not None and declared <= DECODE_INLINE_MAX_BYTES
        if small:
            return await _read_envelope(request, node, cap)
        if body_slots.locked():
            node.count_drop("http_body_slots_full")
            raise web.HTTPServiceUnavailable(
                text="too many large requests in flight",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        async with body_slots:
            return await _read_envelope(request, node, cap)

    @routes.get("/v1/health")
    async def health(request: web.Request) -> web.Response:
        return web.json_response(node.health())

    def allow(request: web.Request, access: Access) -> None:
        try:
            authorize(request, node.config, access)
        except web.HTTPUnauthorized:
            node.count_drop("api_unauthorized")
            raise

    @routes.get("/v1/members")
    async def members(request: web.Request) -> web.Response:
        allow(request, Access.READ)
        return web.json_response({"node_id": node.node_id, "members": node.members_json()})

    @routes.get("/v1/manifests")
    async def manifests(request: web.Request) -> web.Response:
        allow(request, Access.READ)
        return web.json_response(
            {"manifests": [manifest_json(m) for m in node.core.manifests.manifests()]}
        )

    @routes.get("/v1/wire/manifests/{node_id}")
    async def wire_manifest(request: web.Request) -> web.Response:
        manifest = node.core.manifests.get(request.match_info["node_id"])
        if manifest is None:
            raise web.HTTPNotFound(text="no manifest known for that node")
        return wire_response(pack(manifest))

    @routes.post("/v1/wire/pushpull")
    async def wire_pushpull(request: web.Request) -> web.Response:
        envelope = await signed_envelope(request, MAX_PUSH_PULL_REQUEST_BYTES)
        if len(envelope.messages) != 1 or not isinstance(envelope.messages[0], PushPull):
            raise web.HTTPBadRequest(text="expected exactly one PushPull message")
        reply = node.handle_push_pull(envelope.sender, envelope.messages[0])
        return wire_response(encode([reply], node.identity))

    @routes.post("/v1/wire/ping")
    async def wire_ping(request: web.Request) -> web.Response:
        envelope = await signed_envelope(request, MAX_TCP_PING_REQUEST_BYTES)
        if len(envelope.messages) != 1 or not isinstance(envelope.messages[0], Ping):
            raise web.HTTPBadRequest(text="expected exactly one Ping message")
        ack = node.core.answer_tcp_ping(envelope.sender, envelope.messages[0], time.time())
        if ack is None:
            node.count_drop("tcp_ping_refused")
            raise web.HTTPForbidden(text="not admitted, or the ping names another node")
        return wire_response(encode([ack], node.identity))

    @routes.post("/v1/wire/records")
    async def wire_records(request: web.Request) -> web.Response:
        envelope = await signed_envelope(request, MAX_RECORDS_REQUEST_BYTES)
        records = [m for m in envelope.messages if isinstance(m, LedgerRecord)]
        if len(records) != len(envelope.messages):
            raise web.HTTPBadRequest(text="expected only LedgerRecord messages")
        applied = {"applied": node.handle_records(records)}
        if seal.sealing:
            return wire_response(json.dumps(applied).encode())
        return web.json_response(applied)

    @routes.post("/v1/wire/keys")
    async def wire_keys(request: web.Request) -> web.Response:
        # Key operations travel sealed whatever the switches say: plaintext accepted
        # during an upgrade never changes a keyring.
        body = await _read_body(request, node, MAX_KEY_OP_REQUEST_BYTES + SEAL_OVERHEAD_BYTES)
        if not is_sealed(body):
            node.count_drop("key_op_unsealed")
            raise web.HTTPForbidden(text="key operations must be sealed under the keyring")
        try:
            envelope = await node.decode_frame(body)
        except RemoteProtocolError as exc:
            node.count_drop(type(exc).__name__)
            raise web.HTTPBadRequest(text=f"{type(exc).__name__}: {exc}") from None
        if len(envelope.messages) != 1 or not isinstance(envelope.messages[0], KeyOp):
            raise web.HTTPBadRequest(text="expected exactly one KeyOp message")
        driver = node.driver
        if driver is None:
            raise web.HTTPServiceUnavailable(text="the node is not running")
        reply = driver.answer_key_op(envelope.sender, envelope.messages[0])
        return wire_response(encode([reply], node.identity))

    @routes.post("/v1/keys")
    async def keys(request: web.Request) -> web.Response:
        authorize(request, node.config, Access.WORK)
        body = await _json_body(request, node, MAX_KEY_OP_REQUEST_BYTES)
        action_name = _opt_str(body, "action") or ""
        try:
            action = Action[action_name.upper()]
        except KeyError:
            raise web.HTTPBadRequest(
                text="action must be one of install, use, remove, list"
            ) from None
        key = b""
        if action is not Action.LIST:
            try:
                key = parse_key(_opt_str(body, "key") or "")
            except KeyringError as exc:
                raise web.HTTPBadRequest(text=f"key: {exc}") from None
        driver = node.driver
        if driver is None or seal.keyring is None:
            raise web.HTTPConflict(text="this node has no keyring (start it with --keyring)")
        if key_op_slots.locked():
            raise web.HTTPConflict(text="another key operation is running on this node")
        async with key_op_slots:
            summary = await driver.key_operation(action, key)
        out = summary.to_json()
        if action is not Action.LIST and node.node_id in summary.failed:
            return web.json_response(out, status=400)
        return web.json_response(out)

    @routes.get("/v1/ws/tasks")
    async def ws_tasks(request: web.Request) -> web.StreamResponse:
        return await node.tasks.handle_ws(request)

    @routes.post("/v1/discover")
    async def discover(request: web.Request) -> web.Response:
        from meshnode.runtime.discovery import candidate_json

        allow(request, Access.WORK)
        rate_limit(request)
        body = await _json_body(request, node, MAX_DISCOVER_BODY_BYTES)
        try:
            candidates = await node.discover(
                _opt_str(body, "description"),
                capability_name=_opt_str(body, "capability_name"),
                min_trust=_number(body, "min_trust", 0.0),
                max_cost_usd=_opt_number(body, "max_cost_usd"),
                max_latency_ms=_opt_number(body, "max_latency_ms"),
                tags=_str_list(body, "tags"),
                top_k=int(_number(body, "top_k", 5)),
                max_rtt_ms=_opt_number(body, "max_rtt_ms"),
            )
        except (ValueError, TypeError) as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        forged = node.discovery.forged_vectors
        return web.json_response(
            {"candidates": [candidate_json(c, forged.get(c.node_id, 0)) for c in candidates]}
        )

    @routes.get("/v1/trust")
    async def trust(request: web.Request) -> web.Response:
        allow(request, Access.READ)
        return web.json_response({"node_id": node.node_id, "peers": node.trust_json()})

    @routes.post("/v1/delegate")
    async def delegate(request: web.Request) -> web.Response:
        from meshnode.runtime.tasks import DelegationError, attempt_json

        allow(request, Access.WORK)
        rate_limit(request)
        body = await _json_body(request, node, MAX_DELEGATE_BODY_BYTES)
        expect = body.get("expect")  # the caller's expected output schema, if any
        if expect is not None and not isinstance(expect, dict):
            raise web.HTTPBadRequest(text="expect must be a JSON schema object")
        try:
            result = await node.delegate(
                _opt_str(body, "capability"),
                body.get("input"),
                description=_opt_str(body, "description"),
                deadline_s=_opt_number(body, "deadline_s"),
                max_cost_usd=_opt_number(body, "max_cost_usd"),
                min_trust=_number(body, "min_trust", 0.0),
                expect=expect,
            )
        except (ValueError, TypeError) as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        except DelegationError as exc:
            return web.json_response(
                {
                    "error": exc.reason,
                    "trace_id": exc.trace_id,
                    "invalid_input": exc.invalid_input,
                    "attempts": [attempt_json(a) for a in exc.attempts],
                },
                # The caller's input is the problem (a provider refused it): a client
                # error, not a failure of the mesh.
                status=422 if exc.invalid_input else 502,
            )
        return web.json_response(result.to_json())

    rejoin_limiter = RateLimiter(REJOIN_RATE_PER_S, REJOIN_BURST)

    @routes.post("/v1/wire/rejoin")
    async def wire_rejoin(request: web.Request) -> web.Response:
        """A node that missed a key rotation asks for the keyring: an unsealed envelope it
        signed, holding one ``RejoinRequest``; the answer is an unsealed envelope we sign,
        holding our certificate and the keyring sealed to the requester's key. Rate
        limited per address (loopback included) before anything is read."""
        if not rejoin_limiter.allow(request.remote or "?", time.monotonic()):
            node.count_drop("rejoin_rate_limited")
            raise web.HTTPTooManyRequests(
                text="too many rejoin requests from this address",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        if node.config.authority is None:
            raise web.HTTPConflict(text="this node runs without a mesh authority")
        ring = seal.keyring
        if ring is None:
            raise web.HTTPConflict(text="this node has no keyring: nothing to rejoin")
        body = await _read_body(request, node, MAX_REJOIN_BODY_BYTES)
        try:
            envelope = decode(body, verifier=node.verifier)
        except RemoteProtocolError as exc:
            node.count_drop(f"rejoin_{type(exc).__name__}")
            raise web.HTTPBadRequest(text=f"{type(exc).__name__}: {exc}") from None
        messages = envelope.messages
        if len(messages) != 1 or not isinstance(messages[0], RejoinRequest):
            raise web.HTTPBadRequest(text="expected exactly one RejoinRequest message")
        problem = node.core.rejoin_problem(envelope.sender, messages[0], time.time())
        if problem is not None:
            node.count_drop("rejoin_refused")
            raise web.HTTPForbidden(text=f"rejoin refused: {problem}")
        admission = node.core.admission
        assert admission is not None
        reply = RejoinReply(admission.own.signed, seal_to_node(envelope.sender, ring.encode()))
        return web.Response(body=encode([reply], node.identity), content_type=WIRE_CONTENT_TYPE)

    @routes.post("/v1/authority/revoke")
    async def authority_revoke(request: web.Request) -> web.Response:
        """The operator hands in a signed revocation (``meshnode authority revoke
        --node``); the node gossips it. Loopback callers, or the api token."""
        authorize(request, node.config, Access.WORK)
        rate_limit(request)
        if node.config.authority is None:
            raise web.HTTPConflict(text="this node runs without a mesh authority")
        body = await _read_body(request, node, MAX_REVOCATION_BODY_BYTES)
        try:
            revocation = unpack(body, SignedRevocation, max_bytes=MAX_REVOCATION_BODY_BYTES)
        except RemoteProtocolError as exc:
            raise web.HTTPBadRequest(text=f"not a revocation: {exc}") from None
        from meshnode.core.admission import revocation_problem

        problem = revocation_problem(node.core, revocation)
        if problem is not None:
            raise web.HTTPBadRequest(text=problem)
        return web.json_response({"accepted": node.revoke(revocation)})

    _observability_routes(routes, node, allow)
    app.add_routes(routes)
    from meshnode.runtime.a2a_import import import_routes  # the A2A import routes

    app.add_routes(import_routes(node))
    from meshnode.runtime.a2a_server import add_a2a_routes  # A2A card and JSON-RPC

    add_a2a_routes(app, node)
    add_dashboard_routes(app, node)  # GET /, /ui, /v1/dashboard, /v1/events
    return app


# ---------------------------------------------------------------------------- observability

TRACED_ROUTES = frozenset({("POST", "/v1/delegate"), ("POST", "/v1/discover")})
"""Requests that get a server span of their own (the ones that start work). Every other
request only takes the caller's ``traceparent`` as its context: a span per gossip
exchange would flood the span store with nothing to look at."""
DEFAULT_TRACES_LISTED = 50
"""Trace ids ``GET /v1/traces`` lists without ``?limit``."""


def _observe_middleware(node: MeshNode) -> Any:
    """Counts HTTP requests and bodies, takes the caller's ``traceparent`` (a bad one
    starts a new trace, never an error) and gives :data:`TRACED_ROUTES` a server span,
    whose traceparent the response carries, when the caller passes :func:`authorize`
    (an unauthorized caller gets its 401 without a span)."""
    from meshnode.core.tracing import SpanKind, SpanStatus, format_traceparent, parse_traceparent
    from meshnode.runtime.tracing import TRACEPARENT, use_context

    @web.middleware
    async def observe(request: web.Request, handler: Any) -> web.StreamResponse:
        obs = node.obs
        parent = parse_traceparent(request.headers.get(TRACEPARENT))
        if obs is None:
            with use_context(parent):
                response: web.StreamResponse = await handler(request)
            return response
        obs.tcp["requests_received"] += 1
        obs.tcp["bytes_received"] += request.content_length or 0
        if (request.method, request.path) not in TRACED_ROUTES or not _authorized(request):
            # Untraced, or refused before any work: no span for a caller to flood the
            # store with.
            with use_context(parent):
                response = await handler(request)
        else:
            name = f"{request.method} {request.path}"
            attributes = {"http.request.method": request.method, "url.path": request.path}
            with obs.tracer.span(name, SpanKind.SERVER, parent=parent, attributes=attributes) as s:
                try:
                    response = await handler(request)
                except web.HTTPException as exc:
                    s.attributes["http.response.status_code"] = exc.status
                    exc.headers[TRACEPARENT] = format_traceparent(s.context)
                    raise
                s.attributes["http.response.status_code"] = response.status
                if response.status >= 500:
                    s.status = SpanStatus.ERROR
                response.headers[TRACEPARENT] = format_traceparent(s.context)
        body = getattr(response, "body", None)
        if isinstance(body, bytes):
            obs.tcp["bytes_sent"] += len(body)
        return response

    def _authorized(request: web.Request) -> bool:
        try:
            authorize(request, node.config, Access.WORK)
        except web.HTTPUnauthorized:
            return False
        return True

    return observe


def _observability_routes(routes: web.RouteTableDef, node: MeshNode, allow: Any) -> None:
    """``GET /metrics``, ``GET /v1/traces``, ``GET /v1/traces/{trace_id}`` and ``GET
    /v1/trust/{node_id}/history``: read routes (:attr:`Access.READ`)."""
    from prometheus_client import CONTENT_TYPE_LATEST

    from meshnode.core.tracing import is_trace_id
    from meshnode.runtime.metrics import history_json, render
    from meshnode.runtime.tracing import MAX_RECENT_TRACES
    from protocol.identity import is_node_id

    @routes.get("/metrics")
    async def metrics(request: web.Request) -> web.Response:
        allow(request, Access.READ)
        obs = node.obs
        if obs is None or obs.registry is None:
            raise web.HTTPNotFound(text="metrics are off on this node")
        return web.Response(
            body=render(obs.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    @routes.get("/v1/traces")
    async def traces(request: web.Request) -> web.Response:
        allow(request, Access.READ)
        raw = request.query.get("limit", str(DEFAULT_TRACES_LISTED))
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_RECENT_TRACES:
            raise web.HTTPBadRequest(text=f"limit must be an integer in 1..{MAX_RECENT_TRACES}")
        tracer = node.tracer
        listed = tracer.recent(int(raw)) if tracer is not None else []
        return web.json_response({"node_id": node.node_id, "traces": listed})

    @routes.get("/v1/traces/{trace_id}")
    async def trace(request: web.Request) -> web.Response:
        allow(request, Access.READ)
        trace_id = request.match_info["trace_id"]
        if not is_trace_id(trace_id):
            raise web.HTTPBadRequest(text="trace_id must be 32 lowercase hex digits, not all zero")
        tracer = node.tracer
        spans = tracer.trace(trace_id) if tracer is not None else []
        return web.json_response({"trace_id": trace_id, "node_id": node.node_id, "spans": spans})

    @routes.get("/v1/trust/{node_id}/history")
    async def trust_history(request: web.Request) -> web.Response:
        allow(request, Access.READ)
        peer = request.match_info["node_id"]
        if not is_node_id(peer):
            raise web.HTTPBadRequest(text="node_id is not a node id")
        obs = node.obs
        return web.json_response(history_json(obs.history if obs is not None else None, peer))


async def _read_envelope(request: web.Request, node: MeshNode, cap: int) -> Envelope:
    body = await _read_body(request, node, cap)
    try:
        return await node.decode_frame(body)
    except RemoteProtocolError as exc:
        node.count_drop(type(exc).__name__)
        raise web.HTTPBadRequest(text=f"{type(exc).__name__}: {exc}") from None


async def _read_body(request: web.Request, node: MeshNode, cap: int) -> bytes:
    """The body, at most ``cap`` bytes within ``NodeConfig.tcp_timeout`` seconds; HTTP 413
    beyond the cap, 408 past the time (a slow sender cannot hold a body slot), both
    counted."""
    try:
        async with asyncio.timeout(node.config.tcp_timeout):
            return await read_capped(request.content, cap, request.content_length)
    except BodyTooLarge:
        node.count_drop("http_body_too_large")
        raise web.HTTPRequestEntityTooLarge(
            max_size=cap, actual_size=request.content_length or cap + 1
        ) from None
    except TimeoutError:
        node.count_drop("http_body_too_slow")
        raise web.HTTPRequestTimeout(text="request body too slow") from None


def _is_loopback(remote: str | None) -> bool:
    try:
        return ipaddress.ip_address((remote or "").split("%")[0]).is_loopback
    except ValueError:
        return False


class Access(enum.Enum):
    """What a route does, for :func:`authorize`."""

    WORK = "work"
    """Triggers work or changes state (delegate, discover, anything that spends or writes)."""
    READ = "read"
    """Reads the node's view of the mesh (members, manifests, trust)."""


def token_matches(given: str, token: str | None) -> bool:
    """Whether ``given`` is ``token``, compared in constant time over SHA-256 digests (so
    neither the content nor the length of the token leaks through timing)."""
    if token is None:
        return False
    given_digest = hashlib.sha256(given.encode("utf-8", "surrogateescape")).digest()
    token_digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
    return hmac.compare_digest(given_digest, token_digest)


def bearer_token(request: web.Request) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, if any."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def authorize(request: web.Request, config: NodeConfig, access: Access) -> None:
    """The API's access rule (see the module docstring); raises HTTP 401 to refuse, and
    HTTP 403 (:class:`HostRefused`) when the caller would pass without a token but its
    ``Host`` header does not name the node (:func:`host_allowed`).

    The caller passes with the right bearer token. Without one, a read route passes when
    ``config.api_open_reads``, and any route from loopback while
    ``config.api_trust_loopback``; both only for a ``Host`` the node answers to. Every
    route that triggers work or changes state calls this with :attr:`Access.WORK`."""
    given = bearer_token(request)
    if given is not None and token_matches(given, config.api_token):
        return
    if (access is Access.READ and config.api_open_reads) or (
        config.api_trust_loopback and _is_loopback(request.remote)
    ):
        if not host_allowed(request, config):
            raise HostRefused(request)
        return
    if config.api_token is None:
        needs = "loopback callers only" if config.api_trust_loopback else "closed: no api token"
    elif given is not None:
        needs = "wrong api token"
    else:
        needs = "needs the api token (Authorization: Bearer ...)"
    raise web.HTTPUnauthorized(
        text=f"{request.path}: {needs}", headers={"WWW-Authenticate": 'Bearer realm="meshnode"'}
    )


class HostRefused(web.HTTPForbidden):
    """HTTP 403 for a request whose ``Host`` header names something other than the node
    (a DNS-rebinding page's domain): plain JSON ``{"error": ...}``."""

    def __init__(self, request: web.Request) -> None:
        host = (request.headers.get("Host") or "")[:MAX_ORIGIN_ECHO_CHARS]
        super().__init__(
            text=json.dumps(
                {
                    "error": f"Host {host!r} does not name this node: use its address, "
                    "localhost, or a name given with --api-host (or send the api token)"
                }
            ),
            content_type="application/json",
        )


def _node_names(config: NodeConfig) -> set[str]:
    names = set(config.api_allowed_hosts)
    for configured in (config.host, config.advertise_host):
        if configured:
            names.add(configured.strip().lower().strip("[]").rstrip("."))
    return names


def host_allowed(request: web.Request, config: NodeConfig) -> bool:
    """Whether the request's ``Host`` header names this node: an IP literal, ``localhost``,
    ``NodeConfig.host`` or ``advertise_host``, or a name in
    ``NodeConfig.api_allowed_hosts`` (any port). No ``Host`` header at all passes (no
    browser omits it; see the module docstring); a malformed one does not."""
    raw = request.headers.get("Host")
    if raw is None:
        return True
    try:
        host, _ = split_host_port(raw)
    except ValueError:
        return False
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return host in _node_names(config)
    return True


def _own_origin(request: web.Request) -> str | None:
    """The origin the request was addressed to (its scheme and ``Host``), normalised."""
    raw = request.headers.get("Host")
    if raw is None:
        return None
    try:
        return normalize_origin(f"{request.scheme}://{raw.strip()}")
    except ValueError:
        return None


def origin_problem(request: web.Request, config: NodeConfig) -> str | None:
    """Why a browser must not make this request (None: it may); see the module docstring.

    With an ``Origin`` header: it must be in ``NodeConfig.api_allowed_origins``, or be the
    node's own origin with a ``Host`` the node answers to. Without one, a request that
    says ``Sec-Fetch-Site: cross-site`` is refused (except a ``GET`` of
    :data:`BROWSER_OPEN_PATHS`), and any request with a ``Sec-Fetch-Site`` header (only
    browsers send it) must have an allowed ``Host``."""
    origin = request.headers.get("Origin")
    if origin is not None:
        try:
            normalized = normalize_origin(origin)
        except ValueError:
            normalized = None
        if normalized is not None and normalized in config.api_allowed_origins:
            return None
        if (
            normalized is not None
            and normalized == _own_origin(request)
            and host_allowed(request, config)
        ):
            return None
        return (
            f"cross-origin request from {origin[:MAX_ORIGIN_ECHO_CHARS]!r} refused: the "
            "API answers its own origin and the origins in api_allowed_origins"
        )
    site = request.headers.get("Sec-Fetch-Site")
    if site is None:
        return None
    if site.strip().lower() == "cross-site":
        path = request.path
        if request.method in ("GET", "HEAD") and (
            path in BROWSER_OPEN_PATHS or path.startswith("/ui/")
        ):
            return None
        return "cross-site request refused (Sec-Fetch-Site: cross-site)"
    if not host_allowed(request, config):
        host = (request.headers.get("Host") or "")[:MAX_ORIGIN_ECHO_CHARS]
        return f"Host {host!r} does not name this node (DNS rebinding?)"
    return None


def _origin_middleware(node: MeshNode) -> Any:
    """Refuses, before any route runs, what a browser must not send (:func:`origin_problem`)
    with HTTP 403 and a JSON error, and counts it; counts :class:`HostRefused` raised by
    :func:`authorize` on the way out."""

    @web.middleware
    async def origins(request: web.Request, handler: Any) -> web.StreamResponse:
        problem = origin_problem(request, node.config)
        if problem is not None:
            node.count_drop("api_cross_origin")
            return web.json_response({"error": problem}, status=403)
        try:
            response: web.StreamResponse = await handler(request)
        except HostRefused:
            node.count_drop("api_host_refused")
            raise
        return response

    return origins


async def _json_body(request: web.Request, node: MeshNode, cap: int) -> dict[str, Any]:
    """The body as a JSON object of at most ``cap`` bytes (else 413) nested at most
    :data:`MAX_JSON_DEPTH` deep (else 400)."""
    raw = await _read_body(request, node, cap)
    try:
        body = json.loads(raw)
    except RecursionError:
        raise web.HTTPBadRequest(
            text=f"JSON body is nested deeper than {MAX_JSON_DEPTH} levels"
        ) from None
    except ValueError:
        raise web.HTTPBadRequest(text="body must be a JSON object") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="body must be a JSON object")
    if json_depth(body) > MAX_JSON_DEPTH:
        raise web.HTTPBadRequest(text=f"JSON body is nested deeper than {MAX_JSON_DEPTH} levels")
    return body


def json_depth(value: Any) -> int:
    """Nesting depth of a decoded JSON value (a scalar is 0, ``[]`` is 1), measured without
    recursion and given up as soon as it passes :data:`MAX_JSON_DEPTH`."""
    return bounded_json_depth(value, MAX_JSON_DEPTH)


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
