"""MeshNode: the public asyncio node, a facade over one :class:`~meshnode.core.node.NodeCore`.

Theory of operation
-------------------
A node owns one port number for both UDP (SWIM packets) and TCP (aiohttp: push-pull,
manifest fetches, task WebSockets, the HTTP API). It runs inside the caller's event loop —
``start()`` / ``aclose()`` or ``async with`` — and never calls ``asyncio.run`` itself.

Every decision is made by the node's one sans-I/O :class:`~meshnode.core.node.NodeCore`
(membership, manifests, ledger, trust, tasks, breakers). The shell only carries bytes,
runs capability handlers, keeps time and persists, split by concern:

* :mod:`meshnode.runtime.driver` — feeds the core, carries out its effects, one timer at
  ``next_deadline()``, supervision and failure accounting;
* :mod:`meshnode.runtime.persistence` — the data dir: durable own records, the persist
  loop, flushes, compaction;
* :mod:`meshnode.runtime.tasks` — task WebSockets, frames and handler tasks;
* :mod:`meshnode.runtime.views` — ``/v1/health``, ``/v1/members``, ``/v1/trust``;
* this module — the public object: lifecycle (:class:`Lifecycle`), binding, restore, the
  Python API (``discover``, ``delegate``, capabilities, trust).

The clock is ``time.time()``: ledger expiries are compared across nodes, so the mesh clock
is UNIX time.

Close is graceful: outcomes not yet signed are signed, a signed ``Leave`` is gossiped for
``leave_propagate_time`` seconds, then every task is cancelled and awaited, the HTTP server
and sockets are closed, and the state is flushed. ``aclose()`` twice is safe; nothing is
left running after it returns.

What stays here, and why: ``BIND_ATTEMPTS`` and ``SEED_RESOLVE_TIMEOUT`` are socket and
resolver matters, the advertised address is configuration, and the lifecycle gates which
inputs reach the core. The delegation deadline's rule (``deadline_problem``), its default
and the number of candidates offered (``DELEGATION_TOP_K``) are the core's.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import random
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from meshnode.capability import (
    CapabilitySpec,
    Handler,
    collect_capabilities,
    make_capability,
    make_policy,
)
from meshnode.core.admission import Admission
from meshnode.core.authorization import Allow, CapabilityPolicy, Quota
from meshnode.core.config import NodeConfig, admission_problem, format_address
from meshnode.core.delegation import rank_candidates
from meshnode.core.effects import MemberChanged
from meshnode.core.evaluator import EvaluatorFn, Expectation
from meshnode.core.member import MemberState
from meshnode.core.node import DELEGATION_TOP_K, NodeCore, deadline_problem
from meshnode.core.router import ScoredCandidate, candidate_pool
from meshnode.errors import BindError, ConfigError, InvalidRequest, NodeNotRunning, WaitTimeout
from meshnode.runtime.api import build_app
from meshnode.runtime.discovery import DiscoveryService
from meshnode.runtime.driver import DECODE_INLINE_MAX_BYTES, Driver
from meshnode.runtime.logging import get_logger
from meshnode.runtime.mcp_client import McpClientPool, McpToolResult
from meshnode.runtime.metrics import Observability
from meshnode.runtime.persistence import Persistence
from meshnode.runtime.store import NodeStore, load_certificate, load_keyring, save_keyring
from meshnode.runtime.tasks import DelegationError, DelegationResult, TaskService
from meshnode.runtime.tracing import Tracer
from meshnode.runtime.transport import (
    ConnectionGuard,
    GuardedSite,
    UdpEndpoint,
    WireSeal,
    effective_connection_limit,
    raise_nofile_limit,
)
from meshnode.runtime.views import degraded_reasons, health, members_json, trust_json
from protocol import (
    Envelope,
    Identity,
    LedgerRecord,
    Manifest,
    PushPull,
    Verifier,
    short_id,
)
from protocol import verify as ed25519_verify
from protocol.identity import public_key_from_node_id
from protocol.keyring import Keyring
from protocol.manifest import ManifestVectors
from protocol.messages import SignedCertificate, SignedRevocation

__all__ = [
    "DECODE_INLINE_MAX_BYTES",
    "WAIT_DEFAULT_TIMEOUT_S",
    "WAIT_MAX_TIMEOUT_S",
    "Lifecycle",
    "MeshNode",
    "wait_for",
]

BIND_ATTEMPTS = 8
"""With ``port=0``: tries to find a port free for both UDP and TCP."""
SEED_RESOLVE_TIMEOUT = 5.0
"""Seconds allowed to resolve one seed's host name when a node starts."""
WAIT_DEFAULT_TIMEOUT_S = 30.0
"""Seconds :meth:`MeshNode.wait_for` waits by default (``within``): a join, a manifest fetch and the
embedding of a few capabilities take well under a second on one machine, and a few
seconds across a WAN mesh being formed; 30 s leaves room for the first MiniLM export."""
WAIT_MAX_TIMEOUT_S = 24 * 3600.0
"""Longest ``within`` :meth:`MeshNode.wait_for` accepts, seconds (one day): longer is a
mistake in units rather than a wait."""

log = get_logger("meshnode")


class Lifecycle(enum.Enum):
    """Where a :class:`MeshNode` is in its life; it only moves forward."""

    CREATED = "created"
    """Constructed; ``start()`` not called yet."""
    STARTING = "starting"
    """``start()`` is binding, restoring and joining."""
    RUNNING = "running"
    """Started and serving."""
    STOPPING = "stopping"
    """``aclose()`` is leaving and releasing everything."""
    STOPPED = "stopped"
    """Closed (or its start failed); nothing is left running."""


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
        keyring: Keyring | None = None,
    ) -> None:
        self.config = config or NodeConfig()
        self._identity = identity
        self.seal = WireSeal(
            keyring,
            encrypt_outgoing=self.config.encrypt_outgoing,
            encrypt_incoming=self.config.encrypt_incoming,
        )
        """The keyring and its switches (``keyring``, else ``NodeConfig.keyring_file``
        loaded at start): every byte to and from peers passes through it."""
        self.verifier = verifier
        self._rng = rng or random.Random()
        self._capabilities: dict[str, CapabilitySpec] = {
            spec.capability.name: spec for spec in collect_capabilities(self)
        }
        self._core: NodeCore | None = None
        self._store: NodeStore | None = None
        self._udp: UdpEndpoint | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._driver: Driver | None = None
        self._driver_task: asyncio.Task[None] | None = None
        self._persistence: Persistence | None = None
        self._persist_task: asyncio.Task[None] | None = None
        self.lifecycle = Lifecycle.CREATED
        self._manifest_version = 0
        self.drops: Counter[str] = Counter()
        self._guard: ConnectionGuard | None = None
        self.manifest_listeners: list[Callable[[str, Manifest | None], None]] = []
        """Called with (node_id, manifest or None) whenever a known manifest changes."""
        self.member_listeners: list[Callable[[MemberChanged], None]] = []
        """Called with every membership change."""
        self._log = log
        self._tasks_service: TaskService | None = None
        self._discovery: DiscoveryService | None = None
        self.obs: Observability | None = None
        """Metrics registry, tracer and trust history (None until started)."""
        self.mcp: McpClientPool | None = None
        """MCP servers :meth:`call_mcp_tool` reaches; None until first use, when it is built
        from the file ``$MESHNODE_MCP_CONFIG`` names. Assign a pool to configure it in code.
        The node closes it on shutdown."""

    # ------------------------------------------------------------------ properties

    @property
    def identity(self) -> Identity:
        if self._identity is None:
            raise NodeNotRunning("the node has no identity until start()")
        return self._identity

    @property
    def node_id(self) -> str:
        return self.identity.node_id

    @property
    def core(self) -> NodeCore:
        if self._core is None:
            raise NodeNotRunning("the node is not started")
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
        return self.lifecycle is Lifecycle.RUNNING

    @property
    def tracer(self) -> Tracer | None:
        """This node's tracer (None until started)."""
        return self.obs.tracer if self.obs is not None else None

    @property
    def tcp_counts(self) -> Mapping[str, int]:
        """HTTP requests and body bytes served and made (for ``/metrics``)."""
        if self.obs is None:
            return dict.fromkeys(
                ("requests_sent", "requests_received", "bytes_sent", "bytes_received"), 0
            )
        return self.obs.tcp

    @property
    def tasks(self) -> TaskService:
        if self._tasks_service is None:
            raise NodeNotRunning("the node is not started")
        return self._tasks_service

    @property
    def tasks_or_none(self) -> TaskService | None:
        return self._tasks_service

    @property
    def discovery(self) -> DiscoveryService:
        if self._discovery is None:
            raise NodeNotRunning("the node is not started")
        return self._discovery

    @property
    def http_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise NodeNotRunning("the node is not started")
        return self._session

    @property
    def driver(self) -> Driver | None:
        return self._driver

    @property
    def persistence(self) -> Persistence | None:
        return self._persistence

    @property
    def udp(self) -> UdpEndpoint | None:
        return self._udp

    @property
    def connection_guard(self) -> ConnectionGuard | None:
        return self._guard

    @property
    def effect_failures(self) -> Counter[tuple[str, str]]:
        """Failures of carried-out effects, by (effect kind, error class)."""
        return self._driver.effect_failures if self._driver is not None else Counter()

    @property
    def driver_restarts(self) -> int:
        return self._driver.restarts if self._driver is not None else 0

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
        allow: Allow | None = None,
        quota: Quota | None = None,
        examples: tuple[str, ...] | list[str] = (),
    ) -> None:
        """Register a plain coroutine as a capability. ``examples``: a few requests it
        answers, in a user's words (discovery matches them). After ``start()`` the manifest is
        re-signed with a higher version and announced. ``allow`` says who may call it
        (default: current members only; ``Allow.anyone()`` for a public one), ``quota``
        how much one requester may use it (see :mod:`meshnode.core.authorization`); both
        stay on this node, out of the manifest."""
        cap = make_capability(
            name=name,
            description=description,
            input_schema=input_schema,
            output_schema=output_schema,
            avg_latency_ms=avg_latency_ms,
            cost_per_call_usd=cost_per_call_usd,
            tags=tags,
            examples=examples,
        )
        self._capabilities[name] = CapabilitySpec(cap, func, make_policy(allow, quota))
        if self.running:
            self.core.set_policies(self._policies())
            self.tasks.capabilities_changed()
            self._publish_manifest()

    def remove_capability(self, name: str) -> None:
        """Withdraw a capability; the new manifest version spreads by gossip."""
        if self._capabilities.pop(name, None) is not None and self.running:
            self.core.set_policies(self._policies())
            self.tasks.capabilities_changed()
            self._publish_manifest()

    @property
    def capabilities(self) -> dict[str, CapabilitySpec]:
        return dict(self._capabilities)

    def _policies(self) -> dict[str, CapabilityPolicy]:
        return {name: spec.policy for name, spec in self._capabilities.items()}

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> MeshNode:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Bind, restore state, announce our manifest and join through the seeds."""
        if self.lifecycle is not Lifecycle.CREATED:
            raise NodeNotRunning(f"start() on a node that is {self.lifecycle.value}")
        self.lifecycle = Lifecycle.STARTING
        try:
            await self._start()
        except BaseException:
            await self._shutdown()
            self.lifecycle = Lifecycle.STOPPED
            raise
        self.lifecycle = Lifecycle.RUNNING

    async def _start(self) -> None:
        cfg = self.config
        if cfg.data_dir is not None:
            self._store = NodeStore(Path(cfg.data_dir))
            if self._identity is None:
                self._identity = self._store.load_identity()
        if self._identity is None:
            self._identity = Identity.generate()
        self._log = log.bind(node=short_id(self._identity.node_id), name=cfg.name)
        certificate = self._own_certificate()
        self._load_keyring()
        problem = admission_problem(cfg, has_keyring=self.seal.keyring is not None)
        if problem is not None:
            raise ConfigError(problem)
        incarnation = 0
        if self._store is not None:
            incarnation = self._store.incarnation() + 1
            self._store.set_incarnation(incarnation)
            self._manifest_version = self._store.counter("manifest_version")

        # Load the embedder before binding and joining: importing a model holds the GIL
        # for seconds, and a node that cannot answer probes must not be a member yet.
        self._discovery = DiscoveryService(cfg, lambda: self.core)
        await self._discovery.load()
        await self._bind()
        assert self._udp is not None
        bound_port = self._udp.local_address[1]
        host = cfg.advertise_host or cfg.host
        port = cfg.advertise_port or bound_port
        now = time.time()
        core = NodeCore(
            cfg,
            self.identity,
            host=host,
            port=port,
            rng=self._rng,
            verifier=self.verifier,
            incarnation=incarnation,
            now=now,
            ip_version=6 if self._udp.family == socket.AF_INET6 else 4,
            capabilities={name: spec.capability for name, spec in self._capabilities.items()},
            policies=self._policies(),
            certificate=certificate,
        )
        self._core = core
        self.obs = Observability(self, data_dir=cfg.data_dir)
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=cfg.tcp_timeout),
            connector=aiohttp.TCPConnector(limit=64),
            trace_configs=self.obs.client_trace_configs(),
        )
        if self._store is not None:
            self._persistence = Persistence(
                self._store,
                lambda: self._core,
                log=self._log,
                drops=self.drops,
                dispatch=self._dispatch,
                running=lambda: self.running,
            )
        driver = Driver(
            core,
            signer=self.identity,
            verifier=self.verifier,
            udp=lambda: self._udp,
            session=lambda: self._session,
            accepting=lambda: self.lifecycle in (Lifecycle.STARTING, Lifecycle.RUNNING),
            log=self._log,
            drops=self.drops,
            persistence=self._persistence,
            manifest_listeners=self.manifest_listeners,
            member_listeners=self.member_listeners,
            tick=self._tick,
            seal=self.seal,
        )
        self._driver = driver
        self._tasks_service = TaskService(
            core,
            config=cfg,
            signer=self.identity,
            verifier=self.verifier,
            session=lambda: self.http_session,
            specs=lambda: self._capabilities,
            poke=driver.poke,
            count_drop=self.count_drop,
            seal=self.seal,
        )
        driver.tasks = self._tasks_service
        self._tasks_service.tracer = self.obs.tracer
        self.manifest_listeners.append(self._discovery.manifest_changed)
        seeds = await self._resolve_seeds(cfg.seed_addresses)
        if self._store is not None:
            members = self._store.load_members()
            seeds += core.restore(
                self._store.load_manifests(), self._store.load_records(), members, now
            )
        if cfg.seeds and not seeds:
            raise BindError(f"none of the seeds {', '.join(cfg.seeds)} could be resolved")
        self._tasks_service.start()
        self._discovery.start()
        self._publish_manifest()
        core.join(seeds, time.time())
        self._dispatch()
        self._driver_task = asyncio.create_task(
            driver.supervise(), name=f"meshnode-driver-{host}:{port}"
        )
        if self._persistence is not None:
            self._persist_task = asyncio.create_task(self._persistence.loop())
        self.obs.start()
        self._log.info(
            "node_started",
            node_id=self.node_id,
            address=format_address((host, port)),
            incarnation=incarnation,
            seeds=len(seeds),
        )

    def _load_keyring(self) -> None:
        """Load ``NodeConfig.keyring_file`` (unless a keyring was given) and write every
        keyring a key operation installs back to it."""
        path = self.config.keyring_file
        if path is None:
            return
        if self.seal.keyring is None:
            self.seal.replace(load_keyring(path))

        def persist(ring: Keyring) -> None:
            try:
                save_keyring(path, ring)
            except OSError as exc:  # the new keyring is in use; a restart would lose it
                self._log.error("keyring_persist_failed", path=path, error=str(exc))
                raise

        self.seal.listeners.append(persist)

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
                cfg.host,
                cfg.port,
                self.identity,
                self._on_envelope,
                verifier=self.verifier,
                seal=self.seal,
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
        raise BindError(f"could not bind UDP and TCP on {cfg.host}:{cfg.port}: {last_error}")

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

    async def aclose(self) -> None:
        """Leave gracefully and release everything. Safe to call more than once."""
        if self.lifecycle in (Lifecycle.STOPPING, Lifecycle.STOPPED):
            return
        was_running = self.lifecycle is Lifecycle.RUNNING
        self.lifecycle = Lifecycle.STOPPING
        try:
            if was_running and self._core is not None:
                self._core.leave(time.time())  # signs outcomes not yet signed first
                self._dispatch()
                # Keep the driver gossiping the Leave for a bounded time.
                await asyncio.sleep(self.config.leave_propagate_time)
        finally:
            await self._shutdown()
            self.lifecycle = Lifecycle.STOPPED

    async def _shutdown(self) -> None:
        if self._tasks_service is not None:
            await self._tasks_service.close()  # cancels delegations, signs outcomes
        if self._discovery is not None:
            await self._discovery.close()
        if self.mcp is not None:
            await self.mcp.aclose()
        tasks = [t for t in (self._driver_task, self._persist_task) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._driver_task = self._persist_task = None
        if self._driver is not None:
            await self._driver.close()
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self.obs is not None:
            await self.obs.aclose()
        if self._store is not None:
            if self._persistence is not None:
                try:
                    self._persistence.flush(full=True)
                except Exception as exc:  # a closing node reports what it could not write
                    self._log.error("persist_failed_on_close", error=f"{type(exc).__name__}: {exc}")
            self._store.close()
            self._store = None
        if self._core is not None:
            self._log.info("node_closed")

    # ------------------------------------------------------------------ driving the core

    def _on_envelope(self, envelope: Envelope, addr: tuple[str, int]) -> None:
        if self._driver is None or self.lifecycle not in (
            Lifecycle.RUNNING,
            Lifecycle.STOPPING,
            Lifecycle.STARTING,
        ):
            return
        self._driver.on_envelope(envelope, addr)

    def _tick(self, now: float) -> None:
        """The driver's tick: ``core.tick(now)``."""
        self.core.tick(now)

    def _dispatch(self) -> None:
        """Carry out the core's pending effects now (the driver does it after each input)."""
        if self._driver is not None:
            self._driver.dispatch()

    def _flush(self, *, full: bool = False) -> None:
        """Write what changed to the data dir now (the persist loop does it periodically)."""
        if self._persistence is not None:
            self._persistence.flush(full=full)

    async def _push_pull(self, addr: tuple[str, int], join: bool) -> None:
        assert self._driver is not None
        await self._driver.push_pull(addr, join)

    async def _fetch_manifest(self, effect: Any) -> None:
        assert self._driver is not None
        await self._driver.fetch_manifest(effect)

    async def decode_frame(self, data: bytes) -> Envelope:
        """``protocol.decode`` of a TCP frame, off the loop when it is large."""
        if self._driver is None:
            raise NodeNotRunning("the node is not started")
        return await self._driver.decode_frame(data)

    def handle_push_pull(self, sender: str, request: PushPull) -> PushPull:
        """Answer a peer's push-pull (called by the HTTP handler)."""
        reply = self.core.handle_push_pull(sender, request, time.time())
        if self._driver is not None:
            self._driver.poke()
        return reply

    def _own_certificate(self) -> SignedCertificate | None:
        """With a mesh authority configured: this node's certificate, checked before
        anything is bound or loaded (raises ``AdmissionError`` naming the fix)."""
        cfg = self.config
        if cfg.authority is None:
            return None
        certificate = load_certificate(cfg.certificate) if cfg.certificate else None
        Admission(
            public_key_from_node_id(cfg.authority),
            self.identity.node_id,
            certificate,
            verifier=self.verifier,
            now=time.time(),
            max_certificates=1,
            max_revocations=1,
            clock_skew=cfg.authority_clock_skew,
        )
        return certificate

    def revoke(self, revocation: SignedRevocation) -> bool:
        """Take in a revocation signed by the mesh authority (from the operator through the
        API); True if it was new and valid. It spreads by gossip from here."""
        fresh = self.core.revoke(revocation, time.time())
        self._dispatch()
        return fresh

    def handle_records(self, records: list[LedgerRecord]) -> int:
        """Apply the third leg of a push-pull (called by the HTTP handler)."""
        applied = self.core.apply_records(records, time.time())
        self._dispatch()
        return applied

    def count_drop(self, reason: str) -> None:
        self.drops[reason] += 1

    # ------------------------------------------------------------------ manifest

    def _own_vectors(self) -> ManifestVectors | None:
        """Our capability texts' vectors by the embedder we run, for our manifest (None
        when ``NodeConfig.manifest_vectors`` is off or embedding fails: peers then embed
        the texts themselves, so a failure here never stops publishing)."""
        capabilities = [spec.capability for spec in self._capabilities.values()]
        if self._discovery is None or not capabilities:
            return None
        try:
            vectors: ManifestVectors | None = self._discovery.own_vectors(capabilities)
        except Exception as exc:
            self._log.warning("own_vectors_failed", error=f"{type(exc).__name__}: {exc}")
            return None
        return vectors

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
            vectors=self._own_vectors(),
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
        max_rtt_ms: float | None = None,
    ) -> list[ScoredCandidate]:
        """Rank the peers that can do what ``description`` says (or offer
        ``capability_name`` exactly), from this node's own index: no network round trip.
        ``max_rtt_ms`` keeps only providers whose round trip (coordinate estimate, else
        last probe) is known and at most that many milliseconds (default: no limit)."""
        started = time.perf_counter()
        try:
            return await self.discovery.discover(
                description,
                capability_name=capability_name,
                min_trust=min_trust,
                max_cost_usd=max_cost_usd,
                max_latency_ms=max_latency_ms,
                tags=tuple(tags or ()),
                top_k=top_k,
                max_rtt_ms=max_rtt_ms,
            )
        finally:
            if self._core is not None:
                self._core.metrics.discovery.observe(time.perf_counter() - started)

    async def wait_for(
        self,
        description: str | None = None,
        *,
        capability_name: str | None = None,
        count: int = 1,
        within: float = WAIT_DEFAULT_TIMEOUT_S,
        min_trust: float = 0.0,
        max_cost_usd: float | None = None,
        max_latency_ms: float | None = None,
        tags: list[str] | tuple[str, ...] | None = None,
        top_k: int = 5,
    ) -> list[ScoredCandidate]:
        """Wait until :meth:`discover` with the same arguments finds at least ``count``
        candidates, and return them (ranked, at least ``max(count, top_k)`` asked for).

        A node knows only what gossip has brought it: right after ``start()`` its index is
        empty, and a peer's manifest arrives within a gossip round or a push-pull. This
        waits for that without polling: the query is asked again only when a manifest or
        a member changed (and the index has taken the change in), or, with ``min_trust``
        above 0, when ledger records arrived (trust follows them).
        Raises :class:`~meshnode.errors.WaitTimeout` (a ``TimeoutError``) after
        ``within`` seconds, saying what was awaited and what the node knew;
        :class:`~meshnode.errors.InvalidRequest` for arguments ``discover`` refuses, a
        ``count`` below 1 or a ``within`` that is not a positive number (and ``ValueError`` for
        a ``top_k`` or ``count`` above ``discover``'s ceiling)."""
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise InvalidRequest(f"count must be a positive integer, got {count!r}")
        if (
            isinstance(within, bool)
            or not isinstance(within, int | float)
            or not (0 < within <= WAIT_MAX_TIMEOUT_S)
        ):
            raise InvalidRequest(
                f"within must be a number of seconds in (0, {WAIT_MAX_TIMEOUT_S:g}], got {within!r}"
            )
        candidate_pool(top_k)  # refuses a top_k that discover would refuse
        candidate_pool(max(count, top_k))  # and a count above its ceiling
        driver = self._driver
        if driver is None or not self.running:
            raise NodeNotRunning("wait_for needs a running node")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        changed = asyncio.Event()
        driver.change_events.add(changed)
        if min_trust > 0:  # trust moves with ledger records
            driver.record_events.add(changed)
        found: list[ScoredCandidate] = []
        try:
            while True:
                changed.clear()  # a change from here on triggers another look
                if not await _before(deadline, self.discovery.settled()):
                    break
                found = await self.discover(
                    description,
                    capability_name=capability_name,
                    min_trust=min_trust,
                    max_cost_usd=max_cost_usd,
                    max_latency_ms=max_latency_ms,
                    tags=tags,
                    top_k=max(count, top_k),
                )
                if len(found) >= count:
                    return found
                if not await _before(deadline, changed.wait()):
                    break
        finally:
            driver.change_events.discard(changed)
            driver.record_events.discard(changed)
        raise WaitTimeout(
            self._wait_summary(
                description,
                capability_name,
                count,
                within,
                len(found),
                min_trust=min_trust,
                max_cost_usd=max_cost_usd,
                max_latency_ms=max_latency_ms,
                tags=tags,
            ),
            found,
        )

    def _wait_summary(
        self,
        description: str | None,
        capability_name: str | None,
        count: int,
        within: float,
        found: int,
        **filters: Any,
    ) -> str:
        """What :meth:`wait_for` awaited and what this node knew when it gave up."""
        what = " ".join(
            part
            for part in (
                f"of capability {capability_name!r}" if capability_name else "",
                f"matching {description!r}" if description else "",
            )
            if part
        )
        shown = [
            f"{key} {value!r}" for key, value in filters.items() if value not in (None, 0.0, (), [])
        ]
        core = self.core
        alive = max(0, core.membership.count(MemberState.ALIVE) - 1)  # ourselves
        manifests = [m for m in core.manifests.manifests() if m.node_id != self.node_id]
        capabilities = sum(len(m.capabilities) for m in manifests)
        text = (
            f"waited {within:g} s for {count} provider(s) {what}"
            f"{' (' + ', '.join(shown) + ')' if shown else ''} and found {found}; "
            f"this node knows {alive} other alive member(s) and {len(manifests)} peer "
            f"manifest(s) with {capabilities} capabilities"
        )
        if capability_name:
            offering = sum(
                1 for m in manifests if any(c.name == capability_name for c in m.capabilities)
            )
            text += f", {offering} of them offering {capability_name!r}"
        driver = self._driver
        isolation = (
            driver.seeds.reason(time.monotonic(), detail=True) if driver is not None else None
        )
        if isolation is not None:
            text += f"; {isolation}"
        return text

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
        expect: Mapping[str, Any] | None = None,
        evaluator: EvaluatorFn | None = None,
    ) -> DelegationResult:
        """Hand a task to the best peer: discover, negotiate in rank order, fall back on
        rejection, timeout, a dropped connection or a peer's death; score the result and
        gossip the signed opinion. Raises :class:`~meshnode.runtime.tasks.DelegationError`
        when no candidate delivers (with ``invalid_input`` True, and no fallback, when a
        provider refused the input itself).

        The result is scored by what *this* node expects of it, never by the provider's
        own claims: ``expect`` (an output JSON schema it must match) and/or ``evaluator``
        (``fn(input, output) -> quality in [0, 1]``) for this call, else what
        :meth:`expect` registered for the capability, else the judge; with none of these
        a non-empty result is unscored (``quality`` None) and moves no trust. An output
        failing ``expect`` is refused and the next candidate tried.

        The delegation is traced (:mod:`meshnode.runtime.tracing`): under the current trace
        context (or ``trace_id``, when it is a W3C traceparent), else in a new trace; the
        result's ``trace_id`` names it."""
        tracer = self.tracer
        if tracer is None:
            raise NodeNotRunning("the node is not started")
        from meshnode.runtime.tracing import traced_delegation

        return await traced_delegation(
            self,
            tracer,
            capability_name,
            trace_id,
            lambda parent_traceparent: self._delegate(
                capability_name,
                task_input,
                description=description,
                deadline_s=deadline_s,
                max_cost_usd=max_cost_usd,
                min_trust=min_trust,
                trace_id=parent_traceparent,
                expect=expect,
                evaluator=evaluator,
            ),
        )

    async def _delegate(
        self,
        capability_name: str | None,
        task_input: Any,
        *,
        description: str | None,
        deadline_s: float | None,
        max_cost_usd: float | None,
        min_trust: float,
        trace_id: str,
        expect: Mapping[str, Any] | None,
        evaluator: EvaluatorFn | None,
    ) -> DelegationResult:
        if not capability_name and not description:
            raise InvalidRequest("delegate needs a capability name or a description")
        problem = None if deadline_s is None else deadline_problem(deadline_s)
        if problem is not None:
            raise InvalidRequest(problem)
        expectation = _expectation(expect, evaluator)
        from meshnode.runtime.tracing import SpanKind

        assert self.tracer is not None
        with self.tracer.span("discover", SpanKind.INTERNAL) as span:
            candidates = await self.discover(
                description,
                capability_name=capability_name,
                min_trust=min_trust,
                max_cost_usd=max_cost_usd,
                top_k=DELEGATION_TOP_K,
            )
            span.attributes["meshnode.candidates"] = len(candidates)
        ranked = rank_candidates(candidates, capability_name)
        if ranked is None:
            raise DelegationError(
                f"no alive peer offers {capability_name or description!r} within the filters"
            )
        capability, ordered = ranked
        return await self.tasks.delegate(
            capability,
            task_input,
            ordered,
            deadline_s=deadline_s,  # None: the core's default
            max_cost_usd=max_cost_usd,
            trace_id=trace_id,
            expectation=expectation,
        )

    def expect(
        self,
        capability_name: str,
        *,
        schema: Mapping[str, Any] | None = None,
        evaluator: EvaluatorFn | None = None,
    ) -> None:
        """Score every delegated result of ``capability_name`` by ``schema`` (an output JSON
        schema it must match; a result that fails it is refused and the next candidate
        tried) and/or ``evaluator`` (``fn(input, output) -> quality in [0, 1]``), replacing
        any earlier expectation for it. Raises :class:`InvalidRequest` for neither, a
        schema outside the supported subset, or an evaluator that is not callable."""
        built = _expectation(schema, evaluator)
        if built is None:
            raise InvalidRequest("expect needs a schema, an evaluator, or both")
        self.core.evaluator.expect(capability_name, schema=built.schema, evaluator=built.evaluator)

    # ------------------------------------------------------------------ trust

    def record_outcome(self, subject: str, quality: float) -> None:
        """Fold a scored outcome into our opinion of ``subject`` (``new = old + 0.1 ×
        (quality − old)``); routing uses it at once. The signed ledger record carrying it
        is persisted and gossiped at once, unless other delegations of ours to ``subject``
        are still running: then their outcomes share one record, signed when the last of
        them ends or within ``OPINION_FLUSH_S``, whichever is first (the core decides,
        :class:`~meshnode.core.trust.TrustPolicy`)."""
        self.core.record_outcome(subject, quality, time.time())
        if self._driver is not None:
            self._driver.poke()

    def opinion(self, subject: str) -> tuple[float, int]:
        """Our current opinion of ``subject``: (score, outcomes behind it), signed or not."""
        return self.core.opinion(subject)

    def direct_experience(self) -> dict[str, float]:
        """Our own current opinion of every peer we have rated (signed or not yet)."""
        return self.core.direct_experience()

    def trust_view(self) -> dict[str, float]:
        """The trust this node routes by, per peer, in [0, 1] (see
        :mod:`meshnode.core.trust`)."""
        return self.core.trust_view(time.time())

    # ------------------------------------------------------------------ views

    def degraded_reasons(self) -> list[str]:
        """Why this node is not fully working, for ``/v1/health`` (empty when it is)."""
        return degraded_reasons(self)

    def health(self) -> dict[str, Any]:
        return health(self)

    def members_json(self) -> list[dict[str, Any]]:
        return members_json(self)

    def trust_json(self) -> list[dict[str, Any]]:
        return trust_json(self)

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

    def __repr__(self) -> str:
        if self._core is None:
            return f"<MeshNode {self.config.name} {self.lifecycle.value}>"
        m = self._core.membership
        background = self._driver.background if self._driver is not None else 0
        return (
            f"<MeshNode {self.config.name} {short_id(self.node_id)} {self.lifecycle.value} "
            f"alive={m.count(MemberState.ALIVE)} suspect={m.count(MemberState.SUSPECT)} "
            f"queue={m.queue_depth} tasks={background + self._core.in_flight}>"
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


async def _before(deadline: float, awaitable: Awaitable[Any]) -> bool:
    """Await ``awaitable`` until the loop time ``deadline``; False if the deadline came
    first."""
    try:
        async with asyncio.timeout_at(deadline):
            await awaitable
    except TimeoutError:
        return False
    return True


def _expectation(
    schema: Mapping[str, Any] | None, evaluator: EvaluatorFn | None
) -> Expectation | None:
    """The caller's expectation (None: neither given), or :class:`InvalidRequest`."""
    if schema is None and evaluator is None:
        return None
    try:
        return Expectation(schema, evaluator)
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(str(exc)) from None
