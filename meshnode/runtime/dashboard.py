"""The live dashboard every node serves: the page, its event stream and its JSON.

Routes
------
=============================  ===========================================================
``GET /``, ``GET /ui``         the page (static HTML; it holds no mesh data, so it is open)
``GET /ui/{asset}``            its script and style sheet (a fixed list, read once)
``GET /v1/dashboard``          the node's view as one JSON document (:func:`state`):
                               ``node``, ``metrics``, ``members``, ``trust``,
                               ``capabilities``, ``tasks``; ``?members=0`` leaves out the
                               per-member lists (``meshnode status`` uses it)
``POST /v1/events/ticket``     a stream ticket: ``{"ticket", "expires_in"}``
``GET /v1/events``             Server-Sent Events: one ``snapshot``, then ``delta`` events
                               on change, a comment line as heartbeat
``GET /v1/dashboard/trace/     one trace assembled across the mesh (:func:`assemble_trace`)
{trace_id}``                   for the page's swimlane: ``trace_id``, ``node_id``,
                               ``spans``, ``missing`` (nodes that could not be asked)
=============================  ===========================================================

Access. Everything that shows mesh data is :attr:`~meshnode.runtime.api.Access.READ`, by
the API's one rule (:func:`~meshnode.runtime.api.authorize`). The page sends the API token,
when the node has one, as ``Authorization: Bearer`` (typed once, kept in the tab's
``sessionStorage``). A browser's ``EventSource`` cannot send headers, and a token in a URL
ends up in logs and history, so the page first asks ``POST /v1/events/ticket`` (with the
bearer header) for a **stream ticket**: an expiry and a random nonce, MACed with a key
drawn when the node starts (HMAC-SHA256). A ticket is good for :data:`TICKET_TTL_S`
seconds and for one stream; ``GET /v1/events?ticket=...`` accepts it in place of the
header. Used nonces are remembered until they expire (at most :data:`MAX_USED_TICKETS`;
beyond that, new streams wait with HTTP 503). Discovery from the search box is ``POST
/v1/discover``, an :attr:`~meshnode.runtime.api.Access.WORK` route like any other.

The page's headers forbid everything it does not need (:data:`CONTENT_SECURITY_POLICY`: no
inline script, no inline style, no other origin, no frames); the script writes every
string that came from the mesh with ``textContent`` or an SVG text node, never as markup
(member names, capability names and descriptions are chosen by whoever signed them).

Event stream. One :class:`EventHub` per node computes the view (:func:`state`) at most every
:data:`EVENT_MIN_INTERVAL_S` seconds, and only while a stream is open; it sends a ``delta``
(:func:`diff`: members and trust as upserts and removals by node id, the small sections
whole) when something changed. A new stream starts with the hub's latest view as its
``snapshot``, so every delta it gets applies to it exactly. At most
:data:`MAX_EVENT_STREAMS` streams are open at once, at most
:data:`MAX_EVENT_STREAMS_PER_ADDRESS` of them from one address other than loopback (more
get HTTP 503). Each has a queue
of :data:`EVENT_QUEUE_MAX` events: a consumer that falls that far behind is dropped (its
queue emptied, its stream closed), and a write that does not finish within
:data:`EVENT_WRITE_TIMEOUT_S` closes it too, so a slow reader never makes the node buffer
without bound. A stream sends a heartbeat comment after :data:`EVENT_HEARTBEAT_S` of
silence and ends after :data:`EVENT_STREAM_MAX_S` (the page asks for a new ticket and
reconnects, so access is checked again). Drops are counted in ``/v1/health``'s ``drops``.

Trace assembly. A delegation's spans are on every node it touched; the page asks its node
for the whole trace, and the node asks the members the spans name (as their node or their
peer), then the members those spans name (``meshnode trace`` asks its node for the same
assembly): at most :data:`TRACE_ASSEMBLY_MAX_NODES` nodes (``?nodes=N`` up to
:data:`TRACE_ASSEMBLY_MAX_NODES_CAP`), :data:`TRACE_ASSEMBLY_FANOUT` at a time, each
within :data:`TRACE_ASSEMBLY_TIMEOUT_S`, each answer read up to
:data:`TRACE_ASSEMBLY_MAX_BODY_BYTES`. Only members this node holds alive or suspect are
asked, at the address their signed ``Alive`` gives; a peer's answer counts only for the
spans it records itself (``node_id`` = the peer asked, the trace asked for, well-formed
ids), so no node can put words in another's mouth. Asking peers is work done on the
caller's behalf, so the route is :attr:`~meshnode.runtime.api.Access.WORK`, and at most
:data:`TRACE_ASSEMBLIES` run at once (HTTP 503 beyond). A caller with READ only gets 401,
and the page then shows this node's own spans (``/v1/traces/{id}``). Peers are asked
without this node's token (it is not theirs to see); a peer that refuses is listed in
``missing``.

Routes other parts of the node add (``/v1/traces/{id}``, ``/v1/trust/{id}/history``) are
used by the page when they answer, and their absence (HTTP 404) is shown as such.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Mapping
from importlib import resources
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from meshnode.core.member import MemberState
from meshnode.core.tracing import bounded_attributes, is_span_id, is_trace_id

if TYPE_CHECKING:
    from meshnode.runtime.node import MeshNode

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "EVENT_HEARTBEAT_S",
    "EVENT_MIN_INTERVAL_S",
    "EVENT_QUEUE_MAX",
    "EVENT_STREAM_MAX_S",
    "EVENT_WRITE_TIMEOUT_S",
    "MAX_DASHBOARD_CAPABILITIES",
    "MAX_EVENT_STREAMS",
    "MAX_EVENT_STREAMS_PER_ADDRESS",
    "MAX_USED_TICKETS",
    "TICKET_TTL_S",
    "TRACE_ASSEMBLIES",
    "TRACE_ASSEMBLY_FANOUT",
    "TRACE_ASSEMBLY_MAX_BODY_BYTES",
    "TRACE_ASSEMBLY_MAX_NODES",
    "TRACE_ASSEMBLY_MAX_NODES_CAP",
    "TRACE_ASSEMBLY_TIMEOUT_S",
    "EventHub",
    "TicketBook",
    "add_routes",
    "assemble_trace",
    "diff",
    "state",
]

TRACE_ASSEMBLY_MAX_NODES = 16
"""Most nodes asked for one trace's spans by default (the page's request): a click in a
browser should not fan out across a whole mesh."""
TRACE_ASSEMBLY_MAX_NODES_CAP = 64
"""Most nodes a caller may ask for with ``?nodes=N`` (``meshnode trace`` asks for this
many: a delegation touches one node per hop and per candidate asked, so 64 covers deep and
wide traces alike)."""
TRACE_ASSEMBLY_FANOUT = 4
"""Nodes asked at once while assembling a trace."""
TRACE_ASSEMBLY_TIMEOUT_S = 3.0
"""Seconds to wait for one node's spans; a node slower than that is listed as missing."""
TRACE_ASSEMBLY_MAX_BODY_BYTES = 1 << 20
"""Largest answer read from one node (``/v1/traces/{id}`` serves at most 1,000 spans of
about 600 bytes): a hostile peer cannot make the node buffer more."""
TRACE_ASSEMBLIES = 2
"""Trace assemblies running at once on one node (HTTP 503 beyond)."""

MAX_EVENT_STREAMS = 8
"""Event streams (open dashboard pages) a node serves at once; more get HTTP 503. Each
costs a view computed per :data:`EVENT_MIN_INTERVAL_S` (shared) and one queue; a handful of
operators watch a node, and a page left open in many tabs must not multiply the work."""
MAX_EVENT_STREAMS_PER_ADDRESS = 2
"""Event streams one remote address other than loopback may hold at once (with
``NodeConfig.api_open_reads`` anyone may open one: this keeps one stranger from taking
every slot). Loopback callers are bounded by :data:`MAX_EVENT_STREAMS` alone."""
EVENT_MIN_INTERVAL_S = 1.0
"""Shortest time between two views (and so two deltas) sent to the pages, seconds. A view
costs time in proportion to the members (one pass over the member table, the trust view
and the manifests: 3 ms at 1,000 members, 54 ms at 10,000, ``benchmarks/dashboard.py
--view``); shorter feels more live, longer costs less CPU while a page is open."""
EVENT_HEARTBEAT_S = 15.0
"""A stream silent this long gets a comment line, seconds: keeps proxies from closing it
and finds readers that went away."""
EVENT_QUEUE_MAX = 16
"""Events waiting for one stream's reader; one more drops that reader (16 seconds behind at
the minimum interval). The page reconnects and starts again from a fresh snapshot."""
EVENT_WRITE_TIMEOUT_S = 10.0
"""Longest one event may take to be written to a reader, seconds; past it the stream is
closed (a reader that stopped reading holds no more than the socket's buffers)."""
EVENT_STREAM_MAX_S = 3600.0
"""Longest life of one stream, seconds; the page then asks for a new ticket, so a token
changed or withdrawn meanwhile is checked again within the hour."""
TICKET_TTL_S = 30.0
"""How long a stream ticket can be used after it is issued, seconds. The page uses it at
once; shorter narrows the window a leaked URL is good for."""
MAX_USED_TICKETS = 1_024
"""Used ticket nonces remembered (until they expire) so that each opens one stream only;
when full of unexpired ones, new streams get HTTP 503 for at most :data:`TICKET_TTL_S`."""
MAX_TICKET_CHARS = 128
"""Longest ticket string read off a URL (a real one is 108 characters)."""
MAX_DASHBOARD_CAPABILITIES = 200
"""Capability names listed in the view, most providers first; the rest are counted. A
mesh offers a few dozen; this bounds what hostile manifests can put on the page."""
MAX_DESCRIPTION_CHARS = 300
"""Characters of a capability description shown in the view (the search finds the rest)."""
ASSET_TYPES: Mapping[str, str] = {
    "app.js": "text/javascript",
    "trace.js": "text/javascript",
    "style.css": "text/css",
}
"""The page's assets, served from ``meshnode/runtime/dashboard/`` and nothing else."""
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""The page's Content-Security-Policy: its own scripts and styles only (no inline code),
requests to this node only, no frames, no forms posted anywhere."""
SECURITY_HEADERS: Mapping[str, str] = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
"""Headers on every dashboard response."""

_HUB_KEY = web.AppKey("meshnode_dashboard_hub", object)


# ============================================================================ the view


def state(node: MeshNode, *, with_members: bool = True) -> dict[str, Any]:
    """The node's view as the dashboard shows it (a JSON-ready document)."""
    core = node.core
    m = core.membership
    members = core.members()
    own = node.node_id
    health = node.health()
    tasks = node.tasks_or_none
    counters = tasks.counters if tasks is not None else {}
    log = core.task_log
    out: dict[str, Any] = {
        "node": {
            "node_id": own,
            "name": node.config.name,
            "address": health["address"],
            "status": health["status"],
            "reasons": health["reasons"],
            "incarnation": health["incarnation"],
            "local_health": m.health,
        },
        "metrics": {
            "members": {s.name.lower(): m.count(s) for s in MemberState},
            "manifests": len(core.manifests),
            "ledger_records": len(core.ledger),
            "tasks_in_flight": core.in_flight,
            "delegations_ok": counters.get("delegations_ok", 0),
            "delegations_failed": counters.get("delegations_failed", 0),
            "tasks_served": counters.get("tasks_served", 0),
            "drops": sum(health["drops"].values()) + sum(health["dropped"].values()),
            "connections": health["connections"].get("open", 0),
            "driver_restarts": health["driver_restarts"],
        },
        "capabilities": _capabilities(
            node, {x.node_id for x in members if x.state is MemberState.ALIVE}
        ),
        "tasks": {
            "in_flight": _named(node, log.in_flight()),
            "recent": _named(node, log.recent()),
            "serving": core.provider.in_flight,
        },
    }
    if with_members:
        out["members"] = {
            member.node_id: {
                "node_id": member.node_id,
                "name": (
                    manifest.name if (manifest := core.manifests.get(member.node_id)) else None
                ),
                "address": f"{member.host}:{member.port}",
                "state": member.state.name.lower(),
                "incarnation": member.incarnation,
                "rtt_ms": None if member.rtt is None else round(member.rtt * 1000, 1),
                "load": member.load,
                "self": member.node_id == own,
            }
            for member in members
        }
        out["trust"] = {p["node_id"]: p for p in node.trust_json()}
    return out


def _named(node: MeshNode, tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``tasks`` with ``provider_name``: the name in the provider's manifest, if known."""
    manifests = node.core.manifests
    for task in tasks:
        manifest = manifests.get(task["provider"]) if task["provider"] else None
        task["provider_name"] = manifest.name if manifest is not None else None
    return tasks


def _capabilities(node: MeshNode, alive: set[str]) -> dict[str, Any]:
    """Capabilities offered by the ``alive`` members, most providers first, at most
    :data:`MAX_DASHBOARD_CAPABILITIES` names (``more`` counts the others)."""
    core = node.core
    by_name: dict[str, dict[str, Any]] = {}
    for manifest in core.manifests.manifests():
        if manifest.node_id not in alive:
            continue
        for cap in manifest.capabilities:
            entry = by_name.get(cap.name)
            if entry is None:
                entry = by_name[cap.name] = {
                    "name": cap.name,
                    "description": cap.description[:MAX_DESCRIPTION_CHARS],
                    "providers": 0,
                    "min_cost_usd": cap.cost_per_call_usd,
                }
            entry["providers"] += 1
            entry["min_cost_usd"] = min(entry["min_cost_usd"], cap.cost_per_call_usd)
    ranked = sorted(by_name.values(), key=lambda e: (-e["providers"], e["name"]))
    return {
        "top": ranked[:MAX_DASHBOARD_CAPABILITIES],
        "more": max(0, len(ranked) - MAX_DASHBOARD_CAPABILITIES),
    }


KEYED_SECTIONS = ("members", "trust")
"""Sections keyed by node id: a delta carries their changed entries and removed keys."""


def diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """What changed from ``old`` to ``new`` (two :func:`state` documents): keyed sections as
    ``{"upsert": [entries], "remove": [keys]}``, any other section whole. Empty when
    nothing changed. Applying it to ``old`` gives ``new`` exactly."""
    delta: dict[str, Any] = {}
    for key, value in new.items():
        if key in KEYED_SECTIONS:
            before = old.get(key, {})
            upsert = [v for k, v in value.items() if before.get(k) != v]
            remove = [k for k in before if k not in value]
            if upsert or remove:
                delta[key] = {"upsert": upsert, "remove": remove}
        elif old.get(key) != value:
            delta[key] = value
    return delta


def apply_delta(view: dict[str, Any], delta: Mapping[str, Any]) -> dict[str, Any]:
    """``view`` with ``delta`` applied (what the page does; used to check :func:`diff`)."""
    out = dict(view)
    for key, value in delta.items():
        if key in KEYED_SECTIONS:
            section = dict(out.get(key, {}))
            for k in value["remove"]:
                section.pop(k, None)
            for entry in value["upsert"]:
                section[entry["node_id"]] = entry
            out[key] = section
        else:
            out[key] = value
    return out


def wire_view(view: Mapping[str, Any]) -> dict[str, Any]:
    """``view`` as sent in a snapshot: keyed sections as lists."""
    return {k: list(v.values()) if k in KEYED_SECTIONS else v for k, v in view.items()}


# ============================================================================ tickets


class TicketBook:
    """Stream tickets: ``<expiry>.<nonce>.<mac>``, HMAC-SHA256 under a key drawn here, each
    good once and for ``ttl`` seconds (see the module docstring)."""

    def __init__(self, ttl: float = TICKET_TTL_S, max_used: int = MAX_USED_TICKETS) -> None:
        self._key = secrets.token_bytes(32)
        self.ttl = ttl
        self.max_used = max_used
        self._used: dict[str, float] = {}

    def _mac(self, body: str) -> str:
        return hmac.new(self._key, body.encode(), hashlib.sha256).hexdigest()

    def issue(self, now: float) -> str:
        body = f"{int(now + self.ttl)}.{secrets.token_hex(16)}"
        return f"{body}.{self._mac(body)}"

    def redeem(self, ticket: str, now: float) -> str | None:
        """Use ``ticket`` now: None if it is good (it is used up), else why not."""
        if len(ticket) > MAX_TICKET_CHARS or ticket.count(".") != 2:
            return "malformed ticket"
        expiry, nonce, mac = ticket.split(".")
        if not hmac.compare_digest(self._mac(f"{expiry}.{nonce}"), mac):
            return "invalid ticket"
        if not (expiry.isascii() and expiry.isdigit()) or int(expiry) < now:
            return "expired ticket"
        if nonce in self._used:
            return "ticket already used"
        if len(self._used) >= self.max_used:
            self._used = {n: t for n, t in self._used.items() if t >= now}
            if len(self._used) >= self.max_used:
                return "too many streams opened recently"
        self._used[nonce] = float(expiry)
        return None


# ============================================================================ the hub


class _Stream:
    __slots__ = ("address", "closed", "queue")

    def __init__(self, size: int, address: str | None) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(size)
        self.closed = False
        self.address = address
        """The remote address counted against :data:`MAX_EVENT_STREAMS_PER_ADDRESS`
        (None: loopback, or not counted)."""


class EventHub:
    """Computes the view for every open stream and fans deltas out (see the module
    docstring): ``open`` a stream, ``publish`` a delta, ``step`` once per interval (its
    own task does, while a stream is open), ``aclose`` on shutdown."""

    def __init__(
        self,
        node: MeshNode,
        *,
        max_streams: int = MAX_EVENT_STREAMS,
        interval: float = EVENT_MIN_INTERVAL_S,
        queue_max: int = EVENT_QUEUE_MAX,
    ) -> None:
        self.node = node
        self.max_streams = max_streams
        self.interval = interval
        self.queue_max = queue_max
        self.streams: set[_Stream] = set()
        self.view: dict[str, Any] | None = None
        self.seq = 0
        self._task: asyncio.Task[None] | None = None
        self.counters = {"opened": 0, "refused_full": 0, "dropped_slow": 0, "events": 0}

    def open(self, address: str | None = None) -> _Stream | None:
        """A new stream for a reader at ``address`` (None: loopback), with the current
        view queued as its snapshot (None: all slots, or the address's, are taken)."""
        held = sum(1 for s in self.streams if address is not None and s.address == address)
        if len(self.streams) >= self.max_streams or held >= MAX_EVENT_STREAMS_PER_ADDRESS:
            self.counters["refused_full"] += 1
            self.node.count_drop("dashboard_streams_full")
            return None
        if self.view is None:
            self.view = state(self.node)
        stream = _Stream(self.queue_max, address)
        stream.queue.put_nowait(
            _event("snapshot", self.seq, {"seq": self.seq, **wire_view(self.view)})
        )
        self.streams.add(stream)
        self.counters["opened"] += 1
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="meshnode-dashboard-events")
        return stream

    def close(self, stream: _Stream) -> None:
        stream.closed = True
        self.streams.discard(stream)

    def publish(self, delta: Mapping[str, Any]) -> None:
        """Queue ``delta`` for every stream; a stream whose queue is full is dropped."""
        self.seq += 1
        self.counters["events"] += 1
        data = _event("delta", self.seq, {"seq": self.seq, **delta})
        for stream in list(self.streams):
            try:
                stream.queue.put_nowait(data)
            except asyncio.QueueFull:
                self.counters["dropped_slow"] += 1
                self.node.count_drop("dashboard_stream_slow")
                self._drop(stream)

    def _drop(self, stream: _Stream) -> None:
        self.close(stream)
        while not stream.queue.empty():
            stream.queue.get_nowait()
        stream.queue.put_nowait(None)  # wakes its writer, which ends the stream

    def step(self) -> None:
        """Compute the view once and publish what changed (the loop calls it)."""
        view = state(self.node)
        if self.view is None:
            self.view = view
            return
        delta = diff(self.view, view)
        self.view = view
        if delta:
            self.publish(delta)

    async def _run(self) -> None:
        try:
            while self.streams:
                await asyncio.sleep(self.interval)
                if not self.streams or not self.node.running:
                    continue
                try:
                    self.step()
                except Exception as exc:  # one bad view never stops the stream
                    self.node.count_drop(f"dashboard_view_{type(exc).__name__}")
        finally:
            self.view = None  # computed afresh for the next page

    async def aclose(self) -> None:
        """End every stream (the node is shutting down)."""
        for stream in list(self.streams):
            self._drop(stream)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _event(kind: str, seq: int, data: Mapping[str, Any]) -> bytes:
    body = json.dumps(data, separators=(",", ":"))
    return f"event: {kind}\nid: {seq}\ndata: {body}\n\n".encode()


# ============================================================================ routes


def add_routes(app: web.Application, node: MeshNode) -> None:
    """Add the dashboard's routes to ``app`` (the node's API application)."""
    from meshnode.runtime.api import Access, authorize

    hub = EventHub(node)
    tickets = TicketBook()
    app[_HUB_KEY] = hub
    files = resources.files("meshnode.runtime") / "dashboard"
    page = (files / "index.html").read_bytes()
    assets = {name: (files / name).read_bytes() for name in ASSET_TYPES}

    def allow(request: web.Request) -> None:
        try:
            authorize(request, node.config, Access.READ)
        except web.HTTPUnauthorized:
            node.count_drop("api_unauthorized")
            raise

    async def index(request: web.Request) -> web.Response:
        return web.Response(
            body=page, content_type="text/html", charset="utf-8", headers=SECURITY_HEADERS
        )

    async def asset(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        kind = ASSET_TYPES.get(name)
        if kind is None:
            raise web.HTTPNotFound(text="no such dashboard asset")
        return web.Response(
            body=assets[name], content_type=kind, charset="utf-8", headers=SECURITY_HEADERS
        )

    async def view(request: web.Request) -> web.Response:
        allow(request)
        with_members = request.query.get("members", "1") not in ("0", "false", "no")
        body = wire_view(state(node, with_members=with_members))
        return web.json_response(body, headers=SECURITY_HEADERS)

    async def ticket(request: web.Request) -> web.Response:
        allow(request)
        return web.json_response(
            {"ticket": tickets.issue(time.time()), "expires_in": tickets.ttl},
            headers=SECURITY_HEADERS,
        )

    async def events(request: web.Request) -> web.StreamResponse:
        given = request.query.get("ticket")
        if given is not None:
            problem = tickets.redeem(given, time.time())
            if problem is not None:
                node.count_drop("dashboard_ticket_refused")
                if problem.startswith("too many"):
                    raise web.HTTPServiceUnavailable(
                        text=problem, headers={"Retry-After": str(int(tickets.ttl))}
                    )
                raise web.HTTPUnauthorized(text=f"/v1/events: {problem}")
        else:
            allow(request)
        return await _stream(request, hub)

    app.router.add_get("/", index)
    app.router.add_get("/ui", index)
    app.router.add_get("/ui/{name}", asset)
    assembling = asyncio.Semaphore(TRACE_ASSEMBLIES)

    async def trace(request: web.Request) -> web.Response:
        try:
            authorize(request, node.config, Access.WORK)  # it asks other nodes
        except web.HTTPUnauthorized:
            node.count_drop("api_unauthorized")
            raise
        trace_id = request.match_info["trace_id"]
        if not is_trace_id(trace_id):
            raise web.HTTPBadRequest(text="trace_id must be 32 lowercase hex digits, not all zero")
        reach = request.query.get("nodes", str(TRACE_ASSEMBLY_MAX_NODES))
        well_formed = len(reach) <= 3 and reach.isascii() and reach.isdigit()
        if not well_formed or not 1 <= int(reach) <= TRACE_ASSEMBLY_MAX_NODES_CAP:
            raise web.HTTPBadRequest(
                text=f"nodes must be an integer from 1 to {TRACE_ASSEMBLY_MAX_NODES_CAP}"
            )
        if assembling.locked():
            raise web.HTTPServiceUnavailable(
                text=f"at most {TRACE_ASSEMBLIES} traces are assembled at once",
                headers={"Retry-After": "1"},
            )
        async with assembling:
            spans, missing = await assemble_trace(node, trace_id, int(reach))
        body = {"trace_id": trace_id, "node_id": node.node_id, "spans": spans, "missing": missing}
        return web.json_response(body, headers=SECURITY_HEADERS)

    app.router.add_get("/v1/dashboard", view)
    app.router.add_get("/v1/dashboard/trace/{trace_id}", trace)
    app.router.add_post("/v1/events/ticket", ticket)
    app.router.add_get("/v1/events", events)
    app.on_shutdown.append(lambda _app: hub.aclose())


async def _stream(request: web.Request, hub: EventHub) -> web.StreamResponse:
    from meshnode.runtime.api import _is_loopback

    remote = request.remote
    stream = hub.open(None if _is_loopback(remote) else (remote or "?"))
    if stream is None:
        raise web.HTTPServiceUnavailable(
            text=f"dashboard streams are full (at most {hub.max_streams} at once, "
            f"{MAX_EVENT_STREAMS_PER_ADDRESS} per remote address)",
            headers={"Retry-After": "5"},
        )
    response = web.StreamResponse(
        headers={
            **SECURITY_HEADERS,
            "Content-Type": "text/event-stream",
            "X-Accel-Buffering": "no",
        }
    )
    loop = asyncio.get_running_loop()
    ends_at = loop.time() + EVENT_STREAM_MAX_S
    try:
        await response.prepare(request)
        while not stream.closed and loop.time() < ends_at:
            try:
                data = await asyncio.wait_for(stream.queue.get(), EVENT_HEARTBEAT_S)
            except TimeoutError:
                data = b": heartbeat\n\n"
            if data is None:
                break
            async with asyncio.timeout(EVENT_WRITE_TIMEOUT_S):
                await response.write(data)
    except (ConnectionError, TimeoutError, RuntimeError):
        pass  # the reader went away or stopped reading: its stream ends here
    finally:
        hub.close(stream)
    return response


_SPAN_TEXT_FIELDS = ("name", "kind", "status")


def _peer_span(span: Any, node_id: str, trace_id: str) -> dict[str, Any] | None:
    """``span`` as a peer sent it, if it is one of its own spans of ``trace_id`` with
    well-formed fields (else None)."""
    if not isinstance(span, dict) or span.get("node_id") != node_id:
        return None
    if span.get("trace_id") != trace_id or not is_span_id(span.get("span_id")):
        return None
    parent = span.get("parent_span_id")
    if parent is not None and not is_span_id(parent):
        return None
    start, end = span.get("start"), span.get("end")
    if not isinstance(start, int | float) or not (end is None or isinstance(end, int | float)):
        return None
    if not all(isinstance(span.get(k), str) for k in _SPAN_TEXT_FIELDS):
        return None
    peer = span.get("peer_id")
    attributes = span.get("attributes")
    return {
        "trace_id": trace_id,
        "span_id": span["span_id"],
        "parent_span_id": parent,
        "name": span["name"][:128],
        "kind": span["kind"][:16],
        "node_id": node_id,
        "peer_id": peer if isinstance(peer, str) and len(peer) <= 64 else None,
        "start": float(start),
        "end": None if end is None else float(end),
        "status": span["status"][:16],
        "attributes": bounded_attributes(attributes if isinstance(attributes, dict) else {}),
    }


async def assemble_trace(
    node: MeshNode, trace_id: str, max_nodes: int = TRACE_ASSEMBLY_MAX_NODES
) -> tuple[list[dict[str, Any]], list[str]]:
    """Every span of ``trace_id`` this node and the members its spans name hold (see the
    module docstring), asking at most ``max_nodes`` nodes (this one included): (spans by
    start time, node ids that could not be asked)."""
    from meshnode.runtime.transport import BodyTooLarge, read_capped

    tracer = node.tracer
    own = tracer.trace(trace_id) if tracer is not None else []
    spans: dict[tuple[str, str], dict[str, Any]] = {(s["node_id"], s["span_id"]): s for s in own}
    address = {
        m.node_id: (m.host, m.port)
        for m in node.core.membership.members()
        if m.state in (MemberState.ALIVE, MemberState.SUSPECT) and m.node_id != node.node_id
    }
    asked = {node.node_id}
    missing: list[str] = []
    slots = asyncio.Semaphore(TRACE_ASSEMBLY_FANOUT)
    timeout = aiohttp.ClientTimeout(total=TRACE_ASSEMBLY_TIMEOUT_S)

    async def ask(session: aiohttp.ClientSession, peer: str) -> list[dict[str, Any]]:
        host, port = address[peer]
        url = f"http://{host}:{port}/v1/traces/{trace_id}"
        if ":" in host:
            url = f"http://[{host}]:{port}/v1/traces/{trace_id}"
        async with slots:
            try:
                async with session.get(url) as resp:
                    if resp.status != 200:
                        raise ValueError(f"HTTP {resp.status}")
                    raw = await read_capped(
                        resp.content, TRACE_ASSEMBLY_MAX_BODY_BYTES, resp.content_length
                    )
                found = json.loads(raw).get("spans", [])
            except (
                aiohttp.ClientError,
                TimeoutError,
                ValueError,
                RecursionError,  # a hostile peer's deeply nested answer
                BodyTooLarge,
                AttributeError,
            ):
                missing.append(peer)
                return []
        if not isinstance(found, list):
            missing.append(peer)
            return []
        kept = (_peer_span(s, peer, trace_id) for s in found)
        return [s for s in kept if s is not None]

    async with aiohttp.ClientSession(timeout=timeout) as session:
        while len(asked) < max_nodes:
            named = {s["node_id"] for s in spans.values()} | {
                s["peer_id"] for s in spans.values() if s.get("peer_id")
            }
            todo = sorted(n for n in named - asked if n in address)
            todo = todo[: max_nodes - len(asked)]
            for gone in sorted(n for n in named - asked if n not in address):
                asked.add(gone)
                missing.append(gone)
            if not todo:
                break
            asked.update(todo)
            for found in await asyncio.gather(*(ask(session, n) for n in todo)):
                for span in found:
                    spans[(span["node_id"], span["span_id"])] = span
    ordered = sorted(spans.values(), key=lambda s: (s["start"], s["end"] or 0.0))
    return ordered, sorted(missing)
