"""MeshNode: the asyncio shell around :class:`~meshnode.core.mesh.MeshCore`.

Theory of operation
-------------------
A node owns one port number for both UDP (SWIM packets) and TCP (aiohttp: push-pull,
manifest fetches, the HTTP API). It runs inside the caller's event loop — ``start()`` /
``aclose()`` or ``async with`` — and never calls ``asyncio.run`` itself.

The shell does three things and decides nothing:

1. **Drive the core.** One driver task calls ``core.tick(now)`` whenever
   ``core.next_deadline()`` passes (or earlier, when a packet moved the deadline), and
   every UDP datagram is handed to ``core.receive`` as soon as it is decoded.
2. **Carry out effects** in order: send packets, run push-pull exchanges and manifest
   fetches as background tasks (bounded by :data:`MAX_CONCURRENT_FETCHES` and
   :data:`MAX_CONCURRENT_PUSH_PULLS`), persist, and log membership changes.
3. **Persist** to the data dir, if one is configured: the incarnation at start (restarts
   come back one above it), own ledger records durably before they are gossiped, and the
   member table, manifests and received records every :data:`PERSIST_INTERVAL` and on close.

Failures are contained, counted and visible, never fatal to a loop:

* every effect is carried out on its own: one that raises is counted in
  :attr:`MeshNode.effect_failures` by (effect kind, error class) and the rest still run;
* the driver task is supervised: if it dies it is logged, counted and restarted with a
  backoff (:data:`DRIVER_RESTART_INITIAL` … :data:`DRIVER_RESTART_MAX`);
* a failed flush (full disk, I/O error) keeps everything it did not write and is retried
  with a backoff (:data:`PERSIST_RETRY_INITIAL` … :data:`PERSIST_RETRY_MAX`); a failed
  durable write of our own records is retried the same way, and until it succeeds no
  further opinion is signed (see :meth:`MeshNode._sign_opinions`);
* ``/v1/health`` says ``"degraded"`` (HTTP 200, with ``reasons``) for any of these, and
  for an identity conflict the core reports (:meth:`MeshNode.degraded_reasons`).

Replies read from peers are capped (:data:`MAX_PUSH_PULL_REPLY_BYTES`,
``protocol.limits.MAX_MANIFEST_BYTES``, :data:`MAX_RECORDS_REPLY_BYTES`): past the cap the
connection is aborted and the drop counted. Frames over :data:`DECODE_INLINE_MAX_BYTES` are
decoded in a thread so the loop keeps answering probes.

The clock is ``time.time()``: ledger expiries are compared across nodes, so the mesh clock
is UNIX time.

Close is graceful: a signed ``Leave`` is gossiped for ``leave_propagate_time`` seconds,
then every task is cancelled and awaited, the HTTP server and sockets are closed, and the
state is flushed. ``aclose()`` twice is safe; nothing is left running after it returns.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import functools
import ipaddress
import math
import random
import socket
import sqlite3
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from crdt import INITIAL_TRUST, elo_update
from meshnode.capability import CapabilitySpec, Handler, collect_capabilities, make_capability
from meshnode.core.config import NodeConfig, format_address
from meshnode.core.effects import (
    IdentityConflict,
    MemberChanged,
    MemberEvent,
    SendPacket,
    StartPushPull,
)
from meshnode.core.membership import IDENTITY_CONFLICT_WINDOW, MemberRumor, MemberState
from meshnode.core.mesh import (
    FetchManifest,
    ManifestChanged,
    MeshCore,
    PersistRecords,
)
from meshnode.core.router import ScoredCandidate
from meshnode.runtime.api import WIRE_CONTENT_TYPE, build_app
from meshnode.runtime.discovery import DiscoveryService
from meshnode.runtime.mcp_client import McpClientPool, McpToolResult
from meshnode.runtime.store import NodeStore
from meshnode.runtime.tasks import DelegationResult, TaskService
from meshnode.runtime.transport import (
    BodyTooLarge,
    ConnectionGuard,
    GuardedSite,
    UdpEndpoint,
    effective_connection_limit,
    raise_nofile_limit,
    read_capped,
)
from protocol import (
    Envelope,
    Identity,
    LedgerRecord,
    Manifest,
    Message,
    PushPull,
    RemoteProtocolError,
    Verifier,
    decode,
    encode,
    short_id,
    unpack,
)
from protocol import verify as ed25519_verify
from protocol.limits import MAX_FRAME_BYTES, MAX_MANIFEST_BYTES, MAX_MESSAGES_PER_ENVELOPE

MAX_CONCURRENT_FETCHES = 8
"""Manifest fetches in flight at once; more wait their turn."""
MAX_CONCURRENT_PUSH_PULLS = 4
"""Push-pull exchanges in flight at once (joins contact every seed in parallel)."""
PERSIST_INTERVAL = 5.0
"""Seconds between flushes of learned state (members, manifests, peers' records)."""
BIND_ATTEMPTS = 8
"""With ``port=0``: tries to find a port free for both UDP and TCP."""
SEED_RESOLVE_TIMEOUT = 5.0
"""Seconds allowed to resolve one seed's host name when a node starts."""
OPINION_FLUSH_S = 0.25
"""Longest a scored outcome waits for the signed ledger record that carries it, while other
delegations of ours to the same peer are still running. Every outcome is folded into this
node's opinion of the peer at once (in order, by the ELO rule), so routing sees it
immediately. With nothing else waiting on that peer it is signed at once; during a burst of
concurrent tasks to one peer, their outcomes are signed, persisted and gossiped together as
*one* record at most this often. Lower: fresher replicas elsewhere, but up to a signature,
a durable write and a gossiped record (verified by every node) per task; higher: the
reverse."""
PERSIST_RETRY_INITIAL = 0.5
"""Seconds before the first retry of a failed flush (full disk, I/O error); each further
failure doubles the wait up to :data:`PERSIST_RETRY_MAX`. Nothing unwritten is dropped
meanwhile: the changed members, manifests and records stay marked until a flush commits."""
PERSIST_RETRY_MAX = 30.0
"""Longest wait between retries of a failing flush, seconds."""
DRIVER_RESTART_INITIAL = 0.05
"""Seconds before the driver task is restarted after it died; doubles with each restart
in a row, up to :data:`DRIVER_RESTART_MAX`, and resets once it has run for
:data:`DEGRADED_WINDOW_S`."""
DRIVER_RESTART_MAX = 5.0
"""Longest wait before restarting a driver that keeps dying, seconds."""
LEDGER_COMPACT_INTERVAL_S = 60.0
"""Least time between two compactions of the stored ledger: when the ledger dropped records
since the last one (evicted at a cap, or expired), a flush deletes their rows, so the SQLite
file stays as bounded as the ledger in memory. A compaction reads every stored key once."""
IDENTITY_CONFLICT_REPORT_S = 2 * IDENTITY_CONFLICT_WINDOW
"""Seconds an identity conflict keeps ``/v1/health`` degraded after the core last reported
it (the core reports an ongoing one at most once per ``IDENTITY_CONFLICT_WINDOW``, so a
conflict that goes on keeps the node degraded without a gap)."""
DEGRADED_WINDOW_S = 60.0
"""``/v1/health`` says ``degraded`` while the driver restarted or an effect failed within
this many seconds (persistence failures count for as long as they last)."""
FAILURE_LOG_INTERVAL_S = 60.0
"""A failing effect is logged at most once per (effect kind, error class) per this many
seconds; every failure is counted."""
MAX_PUSH_PULL_REPLY_BYTES = MAX_FRAME_BYTES
"""Longest push-pull reply read from a peer, bytes (16 MiB): the reply carries the peer's
whole state and the ledger records we lack. The read stops and the connection is aborted
as soon as more arrives."""
MAX_RECORDS_REPLY_BYTES = 64 * 1024
"""Longest answer read to a ``/v1/wire/records`` post (a small JSON object), bytes."""
DECODE_INLINE_MAX_BYTES = 64 * 1024
"""Frames up to this size are decoded on the event loop (well under a millisecond);
larger ones in :attr:`MeshNode._decoder`, a one-thread pool, so that the loop keeps
answering probes while a multi-megabyte frame is checked."""
READ_CHUNK_BYTES = 64 * 1024
"""Bytes read at a time from a peer's HTTP body when its size is capped."""
TRUST_REFRESH_S = 0.5
"""Longest the mesh-wide (EigenTrust) part of :meth:`MeshNode.trust_view` is reused while
only this node's own opinions change the ledger (its direct experience, which they carry,
is always current in the view). Any other change of the ledger, and any change of the
pre-trusted set, recomputes at once."""
TRUST_MAX_AGE_S = 10.0
"""Longest any trust computation is reused, even with an unchanged ledger (records
expire with time)."""

log = structlog.get_logger("meshnode")

_EVENT_NAMES = {
    MemberEvent.JOINED: "member_joined",
    MemberEvent.ALIVE: "member_recovered",
    MemberEvent.SUSPECT: "member_suspected",
    MemberEvent.DEAD: "member_died",
    MemberEvent.LEFT: "member_left",
    MemberEvent.UPDATED: "member_updated",
    MemberEvent.FORGOTTEN: "member_forgotten",
}


class MeshNode:
    """A mesh node living in the caller's event loop.

    Subclass it and mark coroutine methods with :func:`meshnode.capability`, or call
    :meth:`add_capability`, then ``async with Node(config) as node: ...``.
    """

    def __init__(
        self,
        config: NodeConfig | None = None,
        *,
        identity: Identity | None = None,
        verifier: Verifier = ed25519_verify,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config or NodeConfig()
        self._identity = identity
        self.verifier = verifier
        self._rng = rng or random.Random()
        self._capabilities: dict[str, CapabilitySpec] = {
            spec.capability.name: spec for spec in collect_capabilities(self)
        }
        self._core: MeshCore | None = None
        self._store: NodeStore | None = None
        self._udp: UdpEndpoint | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._driver: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._fetch_slots = asyncio.Semaphore(MAX_CONCURRENT_FETCHES)
        self._push_pull_slots = asyncio.Semaphore(MAX_CONCURRENT_PUSH_PULLS)
        self._state = "new"
        self._manifest_version = 0
        self._dirty_members: set[str] = set()
        self._dirty_manifests: dict[str, Manifest | None] = {}
        self._pending_records: dict[tuple[str, str], LedgerRecord] = {}
        """Peers' records not yet written, by (observer, subject): bounded by the ledger."""
        self._durable_pending: dict[tuple[str, str], LedgerRecord] = {}
        """Own records whose durable write failed; while any is here no further opinion
        is signed (outcomes stay in :attr:`_unsigned`), see :meth:`_sign_opinions`."""
        self._pending_incarnation: int | None = None
        self._persist_error: tuple[float, str] | None = None
        """(wall time of the first failure in a row, last error) while writes fail."""
        self._persist_wake = asyncio.Event()
        self.drops: Counter[str] = Counter()
        self.effect_failures: Counter[tuple[str, str]] = Counter()
        """Failures of carried-out effects, by (effect kind, error class)."""
        self._effect_failed_at: float | None = None
        self._effect_last_failed: dict[tuple[str, str], float] = {}
        self._failure_logged: dict[tuple[str, str], float] = {}
        self.driver_restarts = 0
        self._driver_died_at: float | None = None
        self._identity_conflict: tuple[float, tuple[str, int]] | None = None
        self._ledger_dropped_seen = 0
        self._compacted_at = -math.inf
        """When (monotonic) the core last reported our id at another address, and where."""
        self._driver_error = ""
        self._guard: ConnectionGuard | None = None
        self._decoder: concurrent.futures.ThreadPoolExecutor | None = None
        self.manifest_listeners: list[Callable[[str, Manifest | None], None]] = []
        """Called with (node_id, manifest or None) whenever a known manifest changes."""
        self.member_listeners: list[Callable[[MemberChanged], None]] = []
        """Called with every membership change."""
        self._log = log
        self._tasks_service: TaskService | None = None
        self._discovery: DiscoveryService | None = None
        self._global_trust: _GlobalTrust | None = None
        self._direct_cache: tuple[int, dict[str, float]] | None = None
        self._view_cache: tuple[_GlobalTrust, tuple[int, int], dict[str, float]] | None = None
        self._unsigned: dict[str, tuple[float, int]] = {}
        """Own opinions folded since the last signed record: peer -> (score, outcomes)."""
        self._unsigned_stamp = 0
        self._own_writes = 0
        """Ledger version changes caused by this node's own records (see trust_view)."""
        self._opinion_timer: asyncio.TimerHandle | None = None
        self.mcp: McpClientPool | None = None
        """MCP servers :meth:`call_mcp_tool` reaches; None until first use, when it is built
        from the file ``$MESHNODE_MCP_CONFIG`` names. Assign a pool to configure it in code.
        The node closes it on shutdown."""

    # ------------------------------------------------------------------ properties

    @property
    def identity(self) -> Identity:
        if self._identity is None:
            raise RuntimeError("the node has no identity until start()")
        return self._identity

    @property
    def node_id(self) -> str:
        return self.identity.node_id

    @property
    def core(self) -> MeshCore:
        if self._core is None:
            raise RuntimeError("the node is not started")
        return self._core

    @property
    def address(self) -> tuple[str, int]:
        """The ``(host, port)`` other nodes reach us at."""
        return self.core.membership.address

    @property
    def url(self) -> str:
        return f"http://{format_address(self.address)}"

    @property
    def running(self) -> bool:
        return self._state == "running"

    @property
    def tasks(self) -> TaskService:
        if self._tasks_service is None:
            raise RuntimeError("the node is not started")
        return self._tasks_service

    @property
    def discovery(self) -> DiscoveryService:
        if self._discovery is None:
            raise RuntimeError("the node is not started")
        return self._discovery

    @property
    def http_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("the node is not started")
        return self._session

    def peer_url(self, addr: tuple[str, int], path: str) -> str:
        return f"http://{format_address(addr)}{path}"

    # ------------------------------------------------------------------ capabilities

    def add_capability(
        self,
        func: Handler,
        *,
        name: str,
        description: str = "",
        input_schema: dict[str, Any] | None = None,
        output_schema: dict[str, Any] | None = None,
        avg_latency_ms: float = 0.0,
        cost_per_call_usd: float = 0.0,
        tags: tuple[str, ...] | list[str] = (),
    ) -> None:
        """Register a plain coroutine as a capability. After ``start()`` the manifest is
        re-signed with a higher version and announced."""
        cap = make_capability(
            name=name,
            description=description,
            input_schema=input_schema,
            output_schema=output_schema,
            avg_latency_ms=avg_latency_ms,
            cost_per_call_usd=cost_per_call_usd,
            tags=tags,
        )
        self._capabilities[name] = CapabilitySpec(cap, func)
        if self.running:
            self.tasks.capabilities_changed()
            self._publish_manifest()

    def remove_capability(self, name: str) -> None:
        """Withdraw a capability; the new manifest version spreads by gossip."""
        if self._capabilities.pop(name, None) is not None and self.running:
            self.tasks.capabilities_changed()
            self._publish_manifest()

    @property
    def capabilities(self) -> dict[str, CapabilitySpec]:
        return dict(self._capabilities)

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> MeshNode:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Bind, restore state, announce our manifest and join through the seeds."""
        if self._state != "new":
            raise RuntimeError(f"start() on a node that is {self._state}")
        self._state = "starting"
        try:
            await self._start()
        except BaseException:
            await self._shutdown()
            self._state = "closed"
            raise
        self._state = "running"

    async def _start(self) -> None:
        cfg = self.config
        if cfg.data_dir is not None:
            self._store = NodeStore(Path(cfg.data_dir))
            if self._identity is None:
                self._identity = self._store.load_identity()
        if self._identity is None:
            self._identity = Identity.generate()
        self._log = log.bind(node=short_id(self._identity.node_id), name=cfg.name)
        incarnation = 0
        if self._store is not None:
            incarnation = self._store.incarnation() + 1
            self._store.set_incarnation(incarnation)
            self._manifest_version = self._store.counter("manifest_version")

        # Load the embedder before binding and joining: importing a model holds the GIL
        # for seconds, and a node that cannot answer probes must not be a member yet.
        self._discovery = DiscoveryService(self)
        await self._discovery.load()
        await self._bind()
        assert self._udp is not None
        bound_port = self._udp.local_address[1]
        host = cfg.advertise_host or cfg.host
        port = cfg.advertise_port or bound_port
        now = time.time()
        self._core = MeshCore(
            cfg,
            self.identity,
            host=host,
            port=port,
            rng=self._rng,
            verifier=self.verifier,
            incarnation=incarnation,
            now=now,
            ip_version=6 if self._udp.family == socket.AF_INET6 else 4,
        )
        self._decoder = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="meshnode-decode"
        )
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=cfg.tcp_timeout),
            connector=aiohttp.TCPConnector(limit=64),
        )
        self._tasks_service = TaskService(self)
        self.manifest_listeners.append(self._discovery.manifest_changed)
        self.member_listeners.append(self._on_member_for_tasks)
        seeds = await self._resolve_seeds(cfg.seed_addresses)
        if self._store is not None:
            seeds += self._restore(now)
        if cfg.seeds and not seeds:
            raise OSError(f"none of the seeds {', '.join(cfg.seeds)} could be resolved")
        self._tasks_service.start()
        self._discovery.start()
        self._publish_manifest()
        self.core.join(seeds, time.time())
        self._dispatch()
        self._driver = asyncio.create_task(
            self._supervise_driver(), name=f"meshnode-driver-{host}:{port}"
        )
        self._spawn(self._persist_loop())
        self._log.info(
            "node_started",
            node_id=self.node_id,
            address=format_address((host, port)),
            incarnation=incarnation,
            seeds=len(seeds),
        )

    async def _bind(self) -> None:
        cfg = self.config
        soft, _ = raise_nofile_limit()
        total = effective_connection_limit(cfg.max_connections_total, soft)
        if total < cfg.max_connections_total:
            self._log.warning(
                "connection_limit_lowered",
                configured=cfg.max_connections_total,
                effective=total,
                nofile_soft_limit=soft,
            )
        self._guard = ConnectionGuard(
            per_address=min(cfg.max_connections_per_address, total),
            total=total,
            header_timeout=cfg.http_header_timeout,
        )
        last_error: OSError | None = None
        for _ in range(BIND_ATTEMPTS if cfg.port == 0 else 1):
            udp = await UdpEndpoint.open(
                cfg.host, cfg.port, self.identity, self._on_envelope, verifier=self.verifier
            )
            port = udp.local_address[1]
            try:
                runner = web.AppRunner(
                    build_app(self),
                    access_log=None,
                    handle_signals=False,
                    keepalive_timeout=cfg.http_keepalive_timeout,
                )
                await runner.setup()
            except BaseException:
                udp.close()
                raise
            assert self._guard is not None
            try:
                await GuardedSite(runner, cfg.host, port, self._guard).start()
            except OSError as exc:
                last_error = exc
                udp.close()
                await runner.cleanup()
                continue
            except BaseException:
                udp.close()
                await runner.cleanup()
                raise
            self._udp, self._runner = udp, runner
            return
        raise OSError(f"could not bind UDP and TCP on {cfg.host}:{cfg.port}: {last_error}")

    async def _resolve_seeds(self, seeds: tuple[tuple[str, int], ...]) -> list[tuple[str, int]]:
        """``seeds`` with every host name replaced by its addresses in the bound socket's
        family (resolved off the loop; see ``NodeConfig.seeds``). Unresolvable names are
        logged and left out."""
        assert self._udp is not None
        loop = asyncio.get_running_loop()
        resolved: list[tuple[str, int]] = []
        for host, port in seeds:
            try:
                ipaddress.ip_address(host)
            except ValueError:
                pass
            else:
                resolved.append((host, port))
                continue
            try:
                infos = await asyncio.wait_for(
                    loop.getaddrinfo(host, port, family=self._udp.family, type=socket.SOCK_DGRAM),
                    SEED_RESOLVE_TIMEOUT,
                )
            except (OSError, TimeoutError) as exc:
                self._log.warning(
                    "seed_unresolved", seed=format_address((host, port)), reason=str(exc)
                )
                continue
            for info in infos:
                addr = (str(info[4][0]), int(info[4][1]))
                if addr not in resolved:
                    resolved.append(addr)
        return resolved

    def _restore(self, now: float) -> list[tuple[str, int]]:
        """Load persisted manifests and records; return remembered members as extra seeds."""
        assert self._store is not None
        members = self._store.load_members()
        self.core.restore(
            self._store.load_manifests(), self._store.load_records(), [m.node for m in members], now
        )
        extra: list[tuple[str, int]] = []
        for rumor in members:
            member_addr = getattr(rumor, "host", None), getattr(rumor, "port", None)
            if rumor.node != self.node_id and member_addr[0] is not None:
                extra.append((str(member_addr[0]), int(member_addr[1] or 0)))
        return extra

    async def aclose(self) -> None:
        """Leave gracefully and release everything. Safe to call more than once."""
        if self._state in ("closing", "closed"):
            return
        was_running = self._state == "running"
        self._state = "closing"
        try:
            if was_running and self._core is not None:
                self._sign_opinions()
                self._core.leave(time.time())
                self._dispatch()
                # Keep the driver gossiping the Leave for a bounded time.
                await asyncio.sleep(self.config.leave_propagate_time)
        finally:
            await self._shutdown()
            self._state = "closed"

    async def _shutdown(self) -> None:
        if self._tasks_service is not None:
            await self._tasks_service.close()
        if self._core is not None:
            self._sign_opinions()  # outcomes of tasks that ended while closing
        if self._discovery is not None:
            await self._discovery.close()
        if self.mcp is not None:
            await self.mcp.aclose()
        tasks = [t for t in (self._driver, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self._driver = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._decoder is not None:
            self._decoder.shutdown(wait=False, cancel_futures=True)
            self._decoder = None
        if self._store is not None:
            try:
                self._flush(full=True)
            except Exception as exc:  # a closing node reports what it could not write
                self._log.error("persist_failed_on_close", error=f"{type(exc).__name__}: {exc}")
            self._store.close()
            self._store = None
        if self._core is not None:
            self._log.info("node_closed")

    # ------------------------------------------------------------------ driving the core

    async def _supervise_driver(self) -> None:
        """Run :meth:`_drive`; if it ever dies, log it, count a restart and start it again
        after a backoff (:data:`DRIVER_RESTART_INITIAL` doubling to
        :data:`DRIVER_RESTART_MAX`). Cancellation (close) ends it."""
        delay = DRIVER_RESTART_INITIAL
        while True:
            started = time.monotonic()
            try:
                await self._drive()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.driver_restarts += 1
                self._driver_died_at = time.monotonic()
                self._driver_error = f"{type(exc).__name__}: {exc}"
                if time.monotonic() - started >= DEGRADED_WINDOW_S:
                    delay = DRIVER_RESTART_INITIAL
                self._log.error(
                    "driver_restarted",
                    error=self._driver_error,
                    restarts=self.driver_restarts,
                    backoff_s=delay,
                    exc_info=exc,
                )
                await asyncio.sleep(delay)
                delay = min(DRIVER_RESTART_MAX, delay * 2)

    def _tick(self, now: float) -> None:
        self.core.tick(now)

    async def _drive(self) -> None:
        core = self.core
        while True:
            self._tick(time.time())
            self._dispatch()
            delay = core.next_deadline() - time.time()
            if delay > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)

    def _on_envelope(self, envelope: Envelope, addr: tuple[str, int]) -> None:
        if self._core is None or self._state not in ("running", "closing", "starting"):
            return
        try:
            self._core.receive(envelope.sender, envelope.messages, addr, time.time())
        except Exception as exc:
            self._effect_failed("receive", exc)
        self._dispatch()
        self._wake.set()

    def _effect_failed(self, kind: str, exc: BaseException) -> None:
        """Count (and at most every :data:`FAILURE_LOG_INTERVAL_S`, log) one failure."""
        key = (kind, type(exc).__name__)
        self.effect_failures[key] += 1
        now = time.monotonic()
        self._effect_failed_at = now
        self._effect_last_failed[key] = now
        last = self._failure_logged.get(key)
        if last is None or now - last >= FAILURE_LOG_INTERVAL_S:
            self._failure_logged[key] = now
            self._log.error(
                "effect_failed",
                effect=kind,
                error=f"{type(exc).__name__}: {exc}",
                count=self.effect_failures[key],
            )

    def _dispatch(self) -> None:
        """Carry out the core's effects in order. Each is contained: one that raises is
        counted (:attr:`effect_failures`) and the rest still run."""
        if self._core is None:
            return
        for effect in self._core.take_effects():
            try:
                self._carry_out(effect)
            except Exception as exc:
                self._effect_failed(type(effect).__name__, exc)

    def _carry_out(self, effect: object) -> None:
        if isinstance(effect, SendPacket):
            if self._udp is not None:
                self._udp.send(effect.addr, effect.messages)
        elif isinstance(effect, StartPushPull):
            if self._state in ("starting", "running"):
                self._spawn(self._push_pull(effect.addr, effect.join))
        elif isinstance(effect, FetchManifest):
            if self._state in ("starting", "running"):
                self._spawn(self._fetch_manifest(effect))
        elif isinstance(effect, ManifestChanged):
            self._dirty_manifests[effect.node] = effect.manifest
            for listener in self.manifest_listeners:
                try:
                    listener(effect.node, effect.manifest)
                except Exception as exc:
                    self._effect_failed("manifest_listener", exc)
        elif isinstance(effect, PersistRecords):
            if effect.durable and self._store is not None:
                self._persist_own(effect.records)
            else:
                for record in effect.records:
                    self._pending_records[(record.observer, record.subject)] = record
        elif isinstance(effect, MemberChanged):
            self._on_member_changed(effect)
        elif isinstance(effect, IdentityConflict):
            self._identity_conflict = (time.monotonic(), effect.other_address)
            self._log.error(
                "identity_conflict",
                other_address=format_address(effect.other_address),
                hint="another process announces this node's id: is a copy of its data dir "
                "or key running elsewhere?",
            )

    def _persist_own(self, records: tuple[LedgerRecord, ...]) -> None:
        """Commit own records at once. If the disk refuses, keep them for the persist
        loop (which retries with backoff), report it in health, and sign no further
        opinion until they are durable (see :meth:`_sign_opinions`)."""
        assert self._store is not None
        try:
            self._store.save_records(records, durable=True)
        except (sqlite3.Error, OSError) as exc:
            self._store.rollback()
            for record in records:
                self._durable_pending[(record.observer, record.subject)] = record
            self._persist_failed(exc)

    def _on_member_changed(self, change: MemberChanged) -> None:
        self._dirty_members.add(change.node_id)
        member = change.member
        if change.node_id == self.node_id:
            if change.kind is MemberEvent.UPDATED and self._store is not None:
                try:
                    self._store.set_incarnation(member.incarnation)
                except (sqlite3.Error, OSError) as exc:
                    self._store.rollback()
                    self._pending_incarnation = member.incarnation
                    self._persist_failed(exc)
            if change.kind is MemberEvent.UPDATED:
                self._log.warning("refuted_suspicion", incarnation=member.incarnation)
        else:
            self._log.info(
                _EVENT_NAMES.get(change.kind, "member_changed"),
                peer=short_id(change.node_id),
                address=format_address(member.address),
                incarnation=member.incarnation,
                state=member.state.name.lower(),
            )
        for listener in self.member_listeners:
            try:
                listener(change)
            except Exception as exc:
                self._effect_failed("member_listener", exc)

    def _on_member_for_tasks(self, change: MemberChanged) -> None:
        if change.kind in (MemberEvent.DEAD, MemberEvent.LEFT) and self._tasks_service:
            left = change.kind is MemberEvent.LEFT
            self._tasks_service.member_gone(change.node_id, left=left)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ TCP exchanges

    def _peer_url(self, addr: tuple[str, int], path: str) -> str:
        return f"http://{format_address(addr)}{path}"

    async def _post_envelope(
        self, addr: tuple[str, int], path: str, body: bytes, cap: int
    ) -> bytes:
        """POST ``body`` and return the reply, read with a hard cap of ``cap`` bytes: a
        longer reply aborts the connection and raises
        :class:`~meshnode.runtime.transport.BodyTooLarge`."""
        assert self._session is not None
        async with self._session.post(
            self._peer_url(addr, path),
            data=body,
            headers={"Content-Type": WIRE_CONTENT_TYPE},
        ) as resp:
            resp.raise_for_status()
            try:
                return await read_capped(resp.content, cap, resp.content_length, READ_CHUNK_BYTES)
            except BodyTooLarge:
                resp.close()
                raise

    async def decode_frame(self, data: bytes) -> Envelope:
        """``protocol.decode`` of a TCP frame: on the loop when small, in the decoder
        thread above :data:`DECODE_INLINE_MAX_BYTES` so the loop keeps serving probes."""
        if len(data) <= DECODE_INLINE_MAX_BYTES or self._decoder is None:
            return decode(data, verifier=self.verifier)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._decoder, functools.partial(decode, data, verifier=self.verifier)
        )

    async def _push_pull(self, addr: tuple[str, int], join: bool) -> None:
        async with self._push_pull_slots:
            core = self.core
            request = core.push_pull_request(join)
            try:
                data = await self._post_envelope(
                    addr,
                    "/v1/wire/pushpull",
                    encode([request], self.identity),
                    MAX_PUSH_PULL_REPLY_BYTES,
                )
                envelope = await self.decode_frame(data)
                if len(envelope.messages) != 1 or not isinstance(envelope.messages[0], PushPull):
                    raise RemoteProtocolError("push-pull reply is not one PushPull")
                missing = core.finish_push_pull(
                    envelope.sender, envelope.messages[0], addr, time.time()
                )
                self._dispatch()
                for start in range(0, len(missing), MAX_MESSAGES_PER_ENVELOPE):
                    chunk: list[Message] = list(missing[start : start + MAX_MESSAGES_PER_ENVELOPE])
                    await self._post_envelope(
                        addr,
                        "/v1/wire/records",
                        encode(chunk, self.identity),
                        MAX_RECORDS_REPLY_BYTES,
                    )
            except (aiohttp.ClientError, TimeoutError, OSError, RemoteProtocolError) as exc:
                self.drops[f"push_pull_{type(exc).__name__}"] += 1
                self._log.debug("push_pull_failed", peer=format_address(addr), error=str(exc))
            self._wake.set()

    def handle_push_pull(self, sender: str, request: PushPull) -> PushPull:
        """Answer a peer's push-pull (called by the HTTP handler)."""
        reply = self.core.handle_push_pull(sender, request, time.time())
        self._dispatch()
        self._wake.set()
        return reply

    def handle_records(self, records: list[LedgerRecord]) -> int:
        """Apply the third leg of a push-pull (called by the HTTP handler)."""
        applied = self.core.apply_records(records, time.time())
        self._dispatch()
        return applied

    async def _fetch_manifest(self, effect: FetchManifest) -> None:
        async with self._fetch_slots:
            assert self._session is not None
            for source in effect.sources:
                try:
                    async with self._session.get(
                        self._peer_url(source, f"/v1/wire/manifests/{effect.node}")
                    ) as resp:
                        resp.raise_for_status()
                        try:
                            raw = await read_capped(
                                resp.content,
                                MAX_MANIFEST_BYTES,
                                resp.content_length,
                                READ_CHUNK_BYTES,
                            )
                        except BodyTooLarge:
                            resp.close()
                            raise
                    manifest = unpack(raw, Manifest)
                except (aiohttp.ClientError, TimeoutError, OSError, RemoteProtocolError) as exc:
                    self.drops[f"fetch_{type(exc).__name__}"] += 1
                    continue
                if manifest.node_id != effect.node:
                    self.drops["fetch_wrong_node"] += 1
                    continue
                self.core.manifest_fetched(manifest, time.time())
                self._dispatch()
                if manifest.version >= effect.version:
                    return
            self.core.fetch_failed(effect.node)

    def count_drop(self, reason: str) -> None:
        self.drops[reason] += 1

    # ------------------------------------------------------------------ manifest

    def _publish_manifest(self) -> None:
        self._manifest_version += 1
        if self._store is not None:
            self._store.set_counter("manifest_version", self._manifest_version)
        manifest = Manifest.create(
            self.identity,
            name=self.config.name,
            endpoint=format_address(self.core.membership.address),
            capabilities=[spec.capability for spec in self._capabilities.values()],
            max_concurrent_tasks=self.config.max_concurrent_tasks,
            version=self._manifest_version,
        )
        self.core.publish_manifest(manifest, time.time())
        self._dispatch()

    # ------------------------------------------------------------------ discovery, tasks

    async def discover(
        self,
        description: str | None = None,
        *,
        capability_name: str | None = None,
        min_trust: float = 0.0,
        max_cost_usd: float | None = None,
        max_latency_ms: float | None = None,
        tags: list[str] | tuple[str, ...] | None = None,
        top_k: int = 5,
    ) -> list[ScoredCandidate]:
        """Rank the peers that can do what ``description`` says (or offer
        ``capability_name`` exactly), from this node's own index: no network round trip."""
        return await self.discovery.discover(
            description,
            capability_name=capability_name,
            min_trust=min_trust,
            max_cost_usd=max_cost_usd,
            max_latency_ms=max_latency_ms,
            tags=tuple(tags or ()),
            top_k=top_k,
        )

    async def delegate(
        self,
        capability_name: str | None,
        task_input: Any,
        *,
        description: str | None = None,
        deadline_s: float | None = None,
        max_cost_usd: float | None = None,
        min_trust: float = 0.0,
        trace_id: str = "",
    ) -> DelegationResult:
        """Hand a task to the best peer: discover, negotiate in rank order, fall back on
        rejection, timeout, a dropped connection or a peer's death; score the result and
        gossip the signed opinion. Raises :class:`~meshnode.runtime.tasks.DelegationError`
        when no candidate delivers."""
        from meshnode.runtime.tasks import DelegationError

        if not capability_name and not description:
            raise ValueError("delegate needs a capability name or a description")
        if deadline_s is not None and not 0 < deadline_s < float("inf"):
            raise ValueError(f"deadline_s must be a positive number of seconds, got {deadline_s}")
        candidates = await self.discover(
            description,
            capability_name=capability_name,
            min_trust=min_trust,
            max_cost_usd=max_cost_usd,
            top_k=20,
        )
        if not candidates:
            raise DelegationError(
                f"no alive peer offers {capability_name or description!r} within the filters"
            )
        capability = capability_name or candidates[0].capability.name
        ordered = [c.node_id for c in candidates if c.capability.name == capability]
        return await self.tasks.delegate(
            capability,
            task_input,
            ordered,
            deadline_s=deadline_s if deadline_s is not None else self.config.default_deadline_s,
            max_cost_usd=max_cost_usd,
            trace_id=trace_id,
        )

    def record_outcome(self, subject: str, quality: float) -> None:
        """Fold a scored outcome into our opinion of ``subject`` (``new = old + 0.1 ×
        (quality − old)``); routing uses it at once. The signed ledger record carrying it
        is persisted and gossiped at once, unless other delegations of ours to ``subject``
        are still running: then their outcomes share one record, signed when the last of
        them ends or within :data:`OPINION_FLUSH_S`, whichever is first."""
        if subject == self.node_id:
            return
        tasks = self._tasks_service
        busy = tasks is not None and tasks.waiting_on(subject) and self._state == "running"
        if not busy and subject not in self._unsigned and not self._durable_pending:
            before = self.core.ledger.version
            self.core.record_outcome(subject, quality, time.time())
            self._own_writes += self.core.ledger.version - before
            self._dispatch()
            return
        score, outcomes = self.opinion(subject)
        self._unsigned[subject] = (elo_update(score, quality), outcomes + 1)
        self._unsigned_stamp += 1
        if not busy:
            self._sign_opinions((subject,))
        elif self._opinion_timer is None:
            loop = asyncio.get_running_loop()
            self._opinion_timer = loop.call_later(OPINION_FLUSH_S, self._sign_opinions)

    def opinion(self, subject: str) -> tuple[float, int]:
        """Our current opinion of ``subject``: (score, outcomes behind it), signed or not."""
        unsigned = self._unsigned.get(subject)
        if unsigned is not None:
            return unsigned
        held = self.core.ledger.get(self.node_id, subject)
        return (held.score, held.outcomes) if held is not None else (INITIAL_TRUST, 0)

    def _sign_opinions(self, subjects: tuple[str, ...] | None = None) -> None:
        """Sign one ledger record per peer with unsigned outcomes (all, or ``subjects``);
        persist them durably (a restarted node must never reuse a sequence number), then
        gossip them.

        While an earlier own record could not be made durable (the disk refuses writes),
        nothing is signed: the outcomes stay folded into the unsigned opinions (routing
        uses them), and are signed once the persist loop has written the held record. A
        record is gossiped only after its durable write was attempted (the core orders
        it so); the one whose write failed is already queued for gossip and is retried
        until durable, and no later sequence number is used before then, so a crash can
        at worst re-use that one record's sequence number after a restart, never a later
        one."""
        core = self._core
        if self._durable_pending and self._store is not None:
            if subjects is None and self._opinion_timer is not None:
                self._opinion_timer.cancel()
                self._opinion_timer = None
            return
        if subjects is None:
            unsigned, self._unsigned = self._unsigned, {}
        else:
            unsigned = {s: self._unsigned.pop(s) for s in subjects if s in self._unsigned}
        if not self._unsigned and self._opinion_timer is not None:
            self._opinion_timer.cancel()
            self._opinion_timer = None
        if not unsigned or core is None:
            return
        now = time.time()
        before = core.ledger.version
        for subject, (score, outcomes) in unsigned.items():
            core.publish_opinion(subject, score, outcomes, now)
        self._own_writes += core.ledger.version - before
        self._dispatch()

    def direct_experience(self) -> dict[str, float]:
        """Our own current opinion of every peer we have rated (signed or not yet)."""
        version = self.core.ledger.version
        cached = self._direct_cache
        if cached is None or cached[0] != version:
            cached = (version, self.core.direct_experience())
            self._direct_cache = cached
        if not self._unsigned:
            return cached[1]
        return {**cached[1], **{peer: s for peer, (s, _) in self._unsigned.items()}}

    def trust_view(self) -> dict[str, float]:
        """The trust this node routes by, per peer, in [0, 1].

        Mesh-wide EigenTrust, personalised to this node and the peers it has good direct
        experience of (its own opinion at least :data:`~crdt.INITIAL_TRUST`; never a
        uniform vector over every known id, and never a peer it has seen fail, whose
        opinions would otherwise be trusted by construction), blended with its own direct
        experience: ``w × direct + (1 − w) × global`` with ``w`` =
        ``config.direct_trust_weight``. Direct experience is always current. The global
        part is recomputed when the pre-trusted set changes or any record but our own
        changed the ledger; while only our own opinions change it, at most every
        :data:`TRUST_REFRESH_S`; and every :data:`TRUST_MAX_AGE_S` regardless, as records
        expire with time."""
        now = time.time()
        direct = self.direct_experience()
        pretrusted = frozenset(
            {self.node_id, *(peer for peer, score in direct.items() if score >= INITIAL_TRUST)}
        )
        ledger = self.core.ledger
        version = ledger.version
        known = self._global_trust
        if (
            known is None
            or known.pretrusted != pretrusted
            or now - known.computed_at >= TRUST_MAX_AGE_S
            or version - known.version != self._own_writes - known.own_writes
            or (known.version != version and now - known.computed_at >= TRUST_REFRESH_S)
        ):
            scores = ledger.trust_scores(now, pretrusted)
            known = _GlobalTrust(version, self._own_writes, now, pretrusted, scores)
            self._global_trust = known
        stamp = (version, self._unsigned_stamp)
        cached = self._view_cache
        if cached is not None and cached[0] is known and cached[1] == stamp:
            return cached[2]
        w = self.config.direct_trust_weight
        view = dict(known.scores)
        for peer, score in direct.items():
            view[peer] = w * score + (1 - w) * known.scores.get(peer, score)
        view.pop(self.node_id, None)
        self._view_cache = (known, stamp, view)
        return view

    def trust_json(self) -> list[dict[str, Any]]:
        now = time.time()
        view = self.trust_view()
        direct = self.direct_experience()
        breakers = self.tasks.breakers
        peers = sorted(set(view) | set(direct) | {m.node_id for m in self.core.members()})
        out = []
        for peer in peers:
            if peer == self.node_id:
                continue
            manifest = self.core.manifests.get(peer)
            out.append(
                {
                    "node_id": peer,
                    "name": manifest.name if manifest else None,
                    "trust": round(view.get(peer, 0.5), 6),
                    "direct": None if peer not in direct else round(direct[peer], 6),
                    "breaker": breakers.state(peer, now).name.lower(),
                }
            )
        return out

    async def call_mcp_tool(
        self,
        server: str,
        tool: str,
        arguments: dict[str, Any] | None = None,
        *,
        timeout_s: float | None = None,
    ) -> McpToolResult:
        """Call ``tool`` on the MCP server named ``server`` in :attr:`mcp` (started on first
        use). Needs the ``mcp`` extra; see :mod:`meshnode.runtime.mcp_client`."""
        if self.mcp is None:
            self.mcp = McpClientPool.from_env()
        return await self.mcp.call_tool(server, tool, arguments, timeout_s=timeout_s)

    # ------------------------------------------------------------------ persistence

    async def _persist_loop(self) -> None:
        """Flush every :data:`PERSIST_INTERVAL`. A failed flush (full disk, I/O error)
        keeps everything it did not write and is retried after
        :data:`PERSIST_RETRY_INITIAL`, doubling to :data:`PERSIST_RETRY_MAX`; a failed
        durable write of our own records wakes it at once. It never stops."""
        if self._store is None:
            return
        delay = PERSIST_INTERVAL
        while True:
            self._persist_wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._persist_wake.wait(), delay)
            try:
                self._flush()
            except Exception as exc:
                self._persist_failed(exc)
                retry = PERSIST_RETRY_INITIAL if delay >= PERSIST_INTERVAL else delay * 2
                delay = min(PERSIST_RETRY_MAX, retry)
            else:
                delay = PERSIST_INTERVAL

    def _persist_failed(self, exc: BaseException) -> None:
        """Record a failed write for health and the log (one line when failures start)."""
        error = f"{type(exc).__name__}: {exc}"
        self.drops[f"persist_{type(exc).__name__}"] += 1
        if self._persist_error is None:
            self._persist_error = (time.time(), error)
            self._log.error(
                "persist_failed",
                error=error,
                unwritten_members=len(self._dirty_members),
                unwritten_records=len(self._pending_records) + len(self._durable_pending),
            )
            self._persist_wake.set()
        else:
            self._persist_error = (self._persist_error[0], error)

    def _flush(self, *, full: bool = False) -> None:
        """Write what changed since the last flush and commit. Members are written one row
        per member that changed (a flush in a large, busy mesh costs its changes, not its
        size); ``full`` rewrites the whole table, as on close. A member is marked changed
        by its membership events, and the core emits none when a suspect or dead member
        only gets a newer rumor in the same state: after a crash such a row may hold the
        older rumor of that state, which the rejoin's push-pull replaces."""
        store = self._store
        if store is None or self._core is None:
            return
        membership = self._core.membership
        try:
            if self._pending_incarnation is not None:
                store.set_incarnation(self._pending_incarnation)
                self._pending_incarnation = None
            if full:
                store.save_members(membership.state_snapshot())
            elif self._dirty_members:
                changed: list[MemberRumor] = []
                gone: list[str] = []
                for node in self._dirty_members:
                    member = membership.member(node)
                    if member is None:
                        gone.append(node)
                    else:
                        changed.append(member.rumor)
                store.update_members(changed, gone)
            for node, manifest in self._dirty_manifests.items():
                if manifest is None:
                    store.delete_manifest(node)
                else:
                    store.save_manifest(manifest)
            records = [*self._durable_pending.values(), *self._pending_records.values()]
            if records:
                store.save_records(records)
            compacted = self._compact_ledger(store, full)
            store.commit()
        except BaseException:
            store.rollback()
            raise
        # Nothing awaits above: what was marked is exactly what was just committed.
        self._dirty_members.clear()
        self._dirty_manifests.clear()
        self._pending_records.clear()
        if compacted is not None:
            self._ledger_dropped_seen = compacted
            self._compacted_at = time.monotonic()
        held = bool(self._durable_pending)
        self._durable_pending.clear()
        if self._persist_error is not None:
            since, error = self._persist_error
            self._log.info("persist_recovered", failing_since=since, last_error=error)
            self._persist_error = None
        if held and self._state == "running":
            self._sign_opinions()

    def _compact_ledger(self, store: NodeStore, force: bool) -> int | None:
        """Delete the stored records the ledger no longer holds, if it dropped any since the
        last compaction and :data:`LEDGER_COMPACT_INTERVAL_S` passed (``force``: on close);
        return the drop count it caught up with, or None if it did not run."""
        core = self.core
        dropped = core.counters["records_evicted"] + core.counters["records_pruned"]
        if dropped == self._ledger_dropped_seen or (
            not force and time.monotonic() - self._compacted_at < LEDGER_COMPACT_INTERVAL_S
        ):
            return None
        held = {(r.observer, r.subject) for r in core.ledger.records()}
        store.delete_records(store.record_keys() - held)
        return dropped

    # ------------------------------------------------------------------ views

    def degraded_reasons(self) -> list[str]:
        """Why this node is not fully working, for ``/v1/health`` (empty when it is): a
        driver restart or a failed effect within :data:`DEGRADED_WINDOW_S`, failing
        writes to the data dir, own records not yet durable, or an identity conflict the
        core reported within :data:`IDENTITY_CONFLICT_REPORT_S`."""
        reasons: list[str] = []
        now = time.monotonic()
        if self._driver_died_at is not None and now - self._driver_died_at < DEGRADED_WINDOW_S:
            reasons.append(
                f"driver restarted {self.driver_restarts} time(s), last "
                f"{now - self._driver_died_at:.0f} s ago: {self._driver_error}"
            )
        if self._effect_failed_at is not None and now - self._effect_failed_at < DEGRADED_WINDOW_S:
            recent = [
                f"{kind} {error} x{count}"
                for (kind, error), count in sorted(self.effect_failures.items())
                if now - self._effect_last_failed[(kind, error)] < DEGRADED_WINDOW_S
            ]
            reasons.append("effects failing: " + ", ".join(recent))
        if self._persist_error is not None:
            since, error = self._persist_error
            reasons.append(f"persistence failing for {time.time() - since:.0f} s: {error}")
        if self._durable_pending:
            reasons.append(
                f"{len(self._durable_pending)} own ledger record(s) not yet durable; "
                "new opinions are held back"
            )
        conflict = self._identity_conflict
        if conflict is not None and now - conflict[0] < IDENTITY_CONFLICT_REPORT_S:
            reasons.append(
                f"identity conflict: another process announces this node's id at "
                f"{format_address(conflict[1])} ({now - conflict[0]:.0f} s ago)"
            )
        return reasons

    def health(self) -> dict[str, Any]:
        core = self.core
        m = core.membership
        reasons = self.degraded_reasons()
        status = self._state
        if self.running:
            status = "degraded" if reasons else "ok"
        return {
            "status": status,
            "reasons": reasons,
            "node_id": self.node_id,
            "name": self.config.name,
            "address": format_address(m.address),
            "incarnation": m.incarnation,
            "members": {s.name.lower(): m.count(s) for s in MemberState},
            "manifests": len(core.manifests),
            "ledger_records": len(core.ledger),
            "local_health": m.health,
            "dropped": dict(sorted((self._udp.dropped if self._udp else Counter()).items())),
            "drops": dict(sorted(self.drops.items())),
            "driver_restarts": self.driver_restarts,
            "effect_failures": {
                f"{kind}/{error}": count
                for (kind, error), count in sorted(self.effect_failures.items())
            },
            "connections": self._guard.snapshot() if self._guard is not None else {},
            "counters": {
                "membership": dict(sorted(m.counters.items())),
                "mesh": dict(sorted(core.counters.items())),
                "tasks": dict(
                    sorted(self._tasks_service.counters.items() if self._tasks_service else ())
                ),
            },
        }

    def members_json(self) -> list[dict[str, Any]]:
        core = self.core
        out = []
        for member in core.members():
            manifest = core.manifests.get(member.node_id)
            out.append(
                {
                    "node_id": member.node_id,
                    "name": manifest.name if manifest else None,
                    "address": format_address(member.address),
                    "state": member.state.name.lower(),
                    "incarnation": member.incarnation,
                }
            )
        return out

    def __repr__(self) -> str:
        if self._core is None:
            return f"<MeshNode {self.config.name} {self._state}>"
        m = self._core.membership
        return (
            f"<MeshNode {self.config.name} {short_id(self.node_id)} {self._state} "
            f"alive={m.count(MemberState.ALIVE)} suspect={m.count(MemberState.SUSPECT)} "
            f"queue={m.queue_depth} tasks={len(self._tasks)}>"
        )


async def wait_for(
    predicate: Callable[[], bool | Awaitable[bool]], within: float, interval: float = 0.02
) -> None:
    """Wait until ``predicate()`` is true, polling every ``interval``; TimeoutError after
    ``within`` seconds. For tests and scripts that wait on a condition with a deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = predicate()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if loop.time() >= deadline:
            raise TimeoutError(f"condition not met within {within} s")
        await asyncio.sleep(interval)


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class _GlobalTrust:
    """One EigenTrust computation: the ledger version (and how many of its changes were
    our own) and the instant it was made at, from which pre-trusted set, and the routing
    scores it gave."""

    version: int
    own_writes: int
    computed_at: float
    pretrusted: frozenset[str]
    scores: dict[str, float]
