"""The simulated cluster: many :class:`~meshnode.core.node.NodeCore` objects on one clock.

Theory of operation
-------------------
This is the second shell of the sans-I/O cores (the first is ``meshnode/runtime``). It
decides nothing about the protocol: each simulated host owns one ``NodeCore``, and the
cluster does for it exactly what the asyncio runtime does for a real node —

1. **Drive the core.** A host has at most one pending tick in the engine, at the core's
   ``next_deadline()``; after every call into the core (``tick``, ``receive``, a TCP
   callback) the effects are drained with ``take_effects()`` and the tick is moved earlier
   if the deadline did. A tick that fires before the deadline (the deadline moved later)
   only reschedules. A tick that leaves the deadline at or before ``now`` three times in a
   row is a livelock and a safety violation.
2. **Carry out effects**, in order. ``SendPacket``: one datagram through the simulated
   network, sized exactly with the real codec. ``StartPushPull``: a TCP exchange of three
   legs — ``push_pull_request`` at the initiator, ``handle_push_pull`` at the responder,
   ``finish_push_pull`` back at the initiator, ``apply_records`` at the responder — each leg
   delayed by the network and failing under a partition, a crash or the ``tcp_timeout``.
   ``FetchManifest``: a GET of the manifest from a source (the responder reads its own
   store, as the runtime's HTTP handler does), its answer handed to ``fetch_answered``,
   which names the next source to try or ends the fetch. The core emits at most
   :data:`MAX_CONCURRENT_FETCHES` fetches and :data:`MAX_CONCURRENT_PUSH_PULLS` exchanges
   at once (:mod:`meshnode.core.mesh`) and queues the rest; the cluster reports the end
   of each exchange (``push_pull_done``) and keeps no queue of its own. ``MemberChanged``,
   ``ManifestChanged`` and ``PersistRecords`` go to the :class:`~simulations.metrics.Tracker`
   and to the host's simulated disk.
3. **Persist** what the runtime persists, at once (the runtime flushes learned state every
   few seconds; it is all re-learned after a crash anyway): the last incarnation, the
   manifest version counter, own ledger records, learned records and manifests.

A mesh can also be started already converged (:meth:`Cluster.start_converged`): every
process created as by a start, then handed the steady state a join reaches — every peer
alive, every manifest held, nothing queued — through ``NodeCore.adopt_converged``, with
one member table and one set of manifests shared by all hosts.

Hosts fail in three ways. **Crash**: the process is gone, its core is dropped, packets to
it are lost and TCP connections to it are refused. **Restart**: a new ``NodeCore`` for the
same identity and address, one incarnation above the last one persisted, with the
persisted manifests and ledger restored and a new manifest version published, then a join
through the seeds — what ``MeshNode.start`` does with a data dir (which also tries every
member it remembers as a seed; the simulation uses the seeds only). **Pause**: the process
is stalled (CPU starvation, a stop signal): its tick does not run and everything that
arrives for it (datagrams, TCP legs) waits in a backlog. On resume the late tick runs
first — the core sees the stall and shifts its timers — then the backlog, in arrival order.
A graceful **leave** calls ``leave``, keeps the process running for
``leave_propagate_time`` so the ``Leave`` spreads, then stops it.

Byzantine hosts (:mod:`simulations.byzantine`) run a real core like any other, and also
write to their "socket" beside it: :meth:`Cluster.inject_datagram` sends a datagram from a
host's address with any envelope sender (a replay keeps the original one), and
:meth:`Cluster.inject_push_pull` opens an exchange with a crafted first leg; the network
treats both like any traffic, and they are counted apart (``Traffic.attack_*``). A tap
(:attr:`Cluster.taps`) shows a host everything its process receives. A core that raises
while handling input is a safety violation (:meth:`Cluster.core_failed`): the runtime
would drop that input, so the run goes on.

Signatures are real Ed25519 (:class:`protocol.Identity`, :func:`protocol.verify`) or the
simulation stand-in (:class:`protocol.FastSigner`, :func:`protocol.fast_verify`: same sizes,
no security, ~50× cheaper). Either way every check goes through one
:class:`~simulations.verify_cache.CachedVerifier` per run: the same signed bytes are checked
once, not once per node. Messages travel as the very objects the sender's core built,
unless ``wire=True``, which encodes and decodes every datagram and TCP frame with the real
codec (and signs it), for full fidelity at a higher cost.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

from crdt import ManifestStore
from meshnode.core.config import NodeConfig
from meshnode.core.effects import (
    Address,
    FetchManifest,
    ManifestChanged,
    MemberChanged,
    MemberEvent,
    PersistRecords,
    SendPacket,
    StartPushPull,
    StartTcpPing,
)
from meshnode.core.member import Member
from meshnode.core.mesh import MAX_CONCURRENT_FETCHES, MAX_CONCURRENT_PUSH_PULLS
from meshnode.core.node import NodeCore
from meshnode.core.tables import ConvergedTable
from protocol import (
    Ack,
    Capability,
    FastSigner,
    Identity,
    LedgerRecord,
    Manifest,
    Message,
    Nack,
    Ping,
    PingReq,
    PushPull,
    Signer,
    decode,
    encode,
    fast_verify,
    pack,
    unpack,
    verify,
)
from protocol.limits import MAX_MESSAGES_PER_ENVELOPE
from protocol.messages import SignedCertificate, SignedRevocation
from simulations.engine import Engine, derive_rng, derive_seed
from simulations.metrics import Tracker
from simulations.network import LinkModel, Network, Traffic
from simulations.sizes import SizeModel
from simulations.verify_cache import CachedVerifier

__all__ = [
    "MAX_CONCURRENT_FETCHES",
    "MAX_CONCURRENT_PUSH_PULLS",
    "Cluster",
    "SimNode",
    "Status",
    "Violation",
]

FETCH_REQUEST_BYTES: Final = len("GET /v1/wire/manifests/") + 52
"""Bytes counted for a manifest fetch request: the request path with a node id."""
PORT: Final = 7946
_NO_MANIFESTS: Final[Mapping[str, Manifest]] = types.MappingProxyType({})

_PROBE_TYPES: Final = (Ping, Ack, PingReq, Nack)

CAPABILITY_CATALOG: Final = (
    ("translate_text", "Translate text between languages, keeping formatting", ("nlp",)),
    ("summarize", "Summarize a long document into a short abstract", ("nlp",)),
    ("classify_image", "Label an image with the categories it shows", ("vision",)),
    ("transcribe_audio", "Turn recorded speech into text with timestamps", ("audio",)),
    ("extract_entities", "Find people, places and organisations in a text", ("nlp",)),
    ("answer_question", "Answer a question from a given context passage", ("nlp", "qa")),
    ("generate_sql", "Write a SQL query for a question about a schema", ("code",)),
    ("review_code", "Review a patch and point out bugs and risky changes", ("code",)),
)
"""Capabilities handed out to simulated nodes (two each), for manifests of a real size."""


class Status(enum.Enum):
    """What a host's process is doing."""

    NEW = "new"
    """Never started."""
    RUNNING = "running"
    PAUSED = "paused"
    """Stalled: no ticks, arrivals wait in a backlog."""
    DOWN = "down"
    """Crashed, or stopped after leaving."""


class Violation(Exception):
    """A safety invariant failed (the message says which, on which node, when)."""


@dataclasses.dataclass(eq=False, slots=True)
class SimNode:
    """One simulated host: its identity, its current process and its disk."""

    slot: int
    name: str
    signer: Signer
    host: str
    port: int
    capabilities: tuple[Capability, ...]
    core: NodeCore | None = None
    status: Status = Status.NEW
    life: int = 0
    """Processes started so far on this host (restarts count)."""
    leaving: bool = False
    tick_at: float = math.inf
    tick_gen: int = 0
    stuck_ticks: int = 0
    backlog: list[tuple[Callable[..., None], tuple[Any, ...]]] = dataclasses.field(
        default_factory=list
    )
    paused_at: float = 0.0
    # disk
    incarnation: int = -1
    manifest_version: int = 0
    disk_records: dict[tuple[str, str], LedgerRecord] = dataclasses.field(default_factory=dict)
    disk_manifests: dict[str, Manifest | None] = dataclasses.field(default_factory=dict)
    """Learned manifests on disk, over ``disk_manifest_base`` (None: deleted from it)."""
    disk_manifest_base: Mapping[str, Manifest] = dataclasses.field(
        default_factory=lambda: _NO_MANIFESTS
    )
    """Manifests stored at a converged start: one mapping shared by every host."""
    certificate: SignedCertificate | None = None
    """The host's membership certificate (on its disk), passed to every process started
    on it (needed when the mesh has an authority)."""
    config: NodeConfig | None = None
    """This host's own configuration (None: the cluster's), e.g. an outsider that runs
    without the mesh authority."""

    @property
    def node_id(self) -> str:
        return self.signer.node_id

    @property
    def addr(self) -> Address:
        return self.host, self.port

    @property
    def up(self) -> bool:
        """The process runs (possibly paused)."""
        return self.status is Status.RUNNING or self.status is Status.PAUSED

    def stored_manifests(self) -> list[Manifest]:
        """The manifests on this host's disk."""
        merged = {**self.disk_manifest_base, **self.disk_manifests}
        return [m for m in merged.values() if m is not None]

    def store_manifest(self, node: str, manifest: Manifest | None) -> None:
        """Write (None: delete) ``node``'s manifest on this host's disk."""
        if manifest is None and node not in self.disk_manifest_base:
            self.disk_manifests.pop(node, None)
        else:
            self.disk_manifests[node] = manifest

    def __repr__(self) -> str:
        return f"<SimNode {self.name} {self.status.value} life={self.life}>"


class Cluster:
    """Hosts, network and engine of one simulation run."""

    def __init__(
        self,
        *,
        seed: int,
        config: NodeConfig,
        link: LinkModel,
        crypto: str = "fast",
        wire: bool = False,
        strict: bool = True,
    ) -> None:
        if crypto not in ("fast", "real"):
            raise ValueError(f"crypto must be 'fast' or 'real', got {crypto!r}")
        self.seed = seed
        self.config = config
        self.crypto = crypto
        self.wire = wire
        self.strict = strict
        """Raise :class:`Violation` at the first failed safety invariant (else record it)."""
        self.verifier = CachedVerifier(verify if crypto == "real" else fast_verify)
        """Every core's (and the wire decoder's) signature check: the real one, with its
        answers remembered for the run (:mod:`simulations.verify_cache`)."""
        self.engine = Engine()
        self.network = Network(link, derive_rng(seed, "network"))
        self.sizes = SizeModel()
        self.traffic = Traffic()
        self.nodes: list[SimNode] = []
        self.by_addr: dict[Address, int] = {}
        self.by_id: dict[str, int] = {}
        self.violations: list[str] = []
        self.tracker = Tracker(
            self.nodes, self.by_id, self._clock, self.network.reachable, self.violation
        )
        self._workload_rng = derive_rng(seed, "workload")
        self.taps: dict[int, Callable[[str, tuple[Message, ...] | bytes], None]] = {}
        """Slot -> callback seeing every datagram that host's process receives (sender id,
        payload as delivered), before its core does: how a Byzantine node records honest
        packets to replay them."""
        self.core_errors = 0
        """Exceptions raised by a core while handling input (each is also a violation)."""
        self.task_shell: Callable[[SimNode, list[object]], None] | None = None
        """Carries out a host's task effects (``SendTask``, ``RunHandler``, ``StopHandler``,
        ``CheckPeer``, ``DelegationFinished``), in order, after each drain of its core;
        None: they are dropped (a mesh with no task workload)."""
        self._task_channels: dict[tuple[int, int, int, int], tuple[int, float]] = {}
        """(src slot, src life, dst slot, dst life) -> (connection number, arrival time of
        the last message sent on it): messages never overtake one another, and a broken
        connection loses everything still on its way."""
        self._task_connections = 0

    def _clock(self) -> float:
        return self.engine.now

    @property
    def now(self) -> float:
        return self.engine.now

    # ------------------------------------------------------------------ invariants

    def core_failed(self, node: SimNode, where: str, exc: Exception) -> None:
        """A core raised while handling input: a safety violation (the runtime would drop
        the input and log it); the run goes on with whatever state the core was left in."""
        self.core_errors += 1
        self.violation(f"{node.name}: core raised {type(exc).__name__} in {where}: {exc}")

    def violation(self, text: str) -> None:
        """Record a failed safety invariant (and raise if ``strict``)."""
        message = f"t={self.engine.now:.6f}: {text}"
        self.violations.append(message)
        if self.strict:
            raise Violation(message)

    # ------------------------------------------------------------------ hosts

    def add_node(self, name: str | None = None) -> SimNode:
        """A new host with a fresh identity and address (not started)."""
        slot = self.network.add_host()
        key = derive_seed(self.seed, "identity", slot).to_bytes(8, "big") * 4
        signer: Signer = (
            Identity.from_seed(key) if self.crypto == "real" else FastSigner.from_seed(key)
        )
        host = f"10.{(slot >> 16) & 255}.{(slot >> 8) & 255}.{slot & 255}"
        first = (slot * 2) % len(CAPABILITY_CATALOG)
        caps = tuple(
            Capability(
                name=cap_name,
                description=description,
                avg_latency_ms=float(100 + 10 * (slot % 50)),
                cost_per_call_usd=0.001 * (1 + slot % 5),
                tags=tags,
            )
            for cap_name, description, tags in (
                CAPABILITY_CATALOG[first],
                CAPABILITY_CATALOG[(first + 1) % len(CAPABILITY_CATALOG)],
            )
        )
        node = SimNode(slot, name or f"n{slot}", signer, host, PORT, caps)
        self.nodes.append(node)
        self.by_addr[node.addr] = slot
        self.by_id[node.node_id] = slot
        self.tracker.add_slot()
        return node

    def start(self, node: SimNode, seeds: Sequence[SimNode]) -> None:
        """Start a process on ``node`` (first start or restart) and join through ``seeds``."""
        if node.up:
            raise ValueError(f"{node.name} is already running")
        now = self.engine.now
        core = self._new_process(node, now)
        # Restore what the runtime restores from its data dir.
        for manifest in node.stored_manifests():
            if manifest.node_id != node.node_id:
                core.manifests.apply(manifest, now)
        if node.disk_records:
            core.ledger.apply_many(list(node.disk_records.values()), now)
        node.core = core
        node.status = Status.RUNNING
        self.tracker.restarted(node)
        self.tracker.up(node)
        self.publish_manifest(node)
        core.join([s.addr for s in seeds], now)
        self._dispatch(node)

    def _new_process(self, node: SimNode, now: float) -> NodeCore:
        """A new process (and its core) on ``node``, one incarnation above the last."""
        node.life += 1
        node.incarnation += 1
        node.leaving = False
        node.stuck_ticks = 0
        node.backlog = []
        return NodeCore(
            node.config or self.config,
            node.signer,
            host=node.host,
            port=node.port,
            rng=derive_rng(self.seed, "node", node.slot, "life", node.life),
            verifier=self.verifier,
            incarnation=node.incarnation,
            now=now,
            capabilities={c.name: c for c in node.capabilities},
            certificate=node.certificate,
        )

    def revoke(self, node: SimNode, revocation: SignedRevocation) -> bool:
        """The operator hands a signed revocation to ``node``'s running process (as
        ``meshnode authority revoke --node`` does); it spreads from there by gossip."""
        if node.core is None:
            raise ValueError(f"{node.name} is not running")
        fresh = node.core.revoke(revocation, self.engine.now)
        self._dispatch(node)
        return fresh

    def start_converged(self, nodes: Sequence[SimNode], seeds: Sequence[SimNode]) -> None:
        """Start ``nodes`` (never started, and nobody else running) as a mesh that has
        already converged: every process knows every other alive at incarnation 0 and
        holds every manifest (version 1), nothing is left to gossip, and the seeds are
        remembered for rejoining. Each process is created exactly as :meth:`start`
        creates it (same random streams), then adopts the converged state with
        :meth:`NodeCore.adopt_converged` instead of joining.

        The member table and the manifests are built once and shared (``Member`` and
        ``Manifest`` objects are immutable): each core copies the member dict, and shares
        the order of the alive ids (:class:`~meshnode.core.tables.ConvergedTable`) and
        the manifest table until it changes them, so a mesh of N nodes costs one
        dictionary of N slots per core, not O(N²) objects.
        """
        if any(n.status is not Status.NEW for n in nodes) or self.tracker.live_count:
            raise ValueError("start_converged needs fresh hosts in an empty mesh")
        now = self.engine.now
        cores = [self._new_process(node, now) for node in nodes]
        store = ManifestStore(verifier=self.verifier)
        manifests: dict[str, Manifest] = {}
        for node in nodes:
            manifest = self._next_manifest(node)
            if not store.apply(manifest, now):
                raise Violation(f"{node.name}'s own manifest does not verify")
            manifests[node.node_id] = manifest
        store.rumors()  # built once here, then shared by every copy of the store
        members: dict[str, Member] = {}
        for node, core in zip(nodes, cores, strict=True):
            member = core.membership.member(node.node_id)
            assert member is not None
            members[node.node_id] = member
        table = ConvergedTable(members)  # one order of ids, shared by every core
        addresses = [s.addr for s in seeds]
        for node, core in zip(nodes, cores, strict=True):
            core.adopt_converged(table, store, addresses, now)
            node.core = core
            node.status = Status.RUNNING
            node.disk_manifest_base = manifests
        self.tracker.up_converged(nodes, [manifests[n.node_id] for n in nodes])
        for node in nodes:
            self._dispatch(node)

    def _next_manifest(self, node: SimNode) -> Manifest:
        node.manifest_version += 1
        return Manifest.create(
            node.signer,
            name=node.name,
            endpoint=f"{node.host}:{node.port}",
            capabilities=node.capabilities,
            tags=("sim",),
            version=node.manifest_version,
        )

    def publish_manifest(self, node: SimNode) -> Manifest:
        """Sign and publish the next version of ``node``'s manifest."""
        core = node.core
        if core is None or not node.up:
            raise ValueError(f"{node.name} is not running")
        manifest = self._next_manifest(node)
        self.tracker.published_manifest(node, manifest)
        core.publish_manifest(manifest, self.engine.now)
        self._dispatch(node)
        return manifest

    def crash(self, node: SimNode) -> None:
        """Kill ``node``'s process: no goodbye, its core is gone."""
        if not node.up:
            return
        if not node.leaving:
            self.tracker.crashed(node)
        self.tracker.down(node)
        self._stop(node)

    def _stop(self, node: SimNode) -> None:
        node.status = Status.DOWN
        node.core = None
        node.backlog = []
        node.tick_gen += 1
        node.tick_at = math.inf

    def leave(self, node: SimNode) -> None:
        """Leave gracefully, keep gossiping for ``leave_propagate_time``, then stop."""
        if not node.up or node.leaving or node.core is None:
            return
        self.tracker.down(node)
        node.leaving = True
        node.core.leave(self.engine.now)
        self._dispatch(node)
        self.engine.after(self.config.leave_propagate_time, self._stop_left, node, node.life)

    def _stop_left(self, node: SimNode, life: int) -> None:
        if node.life == life and node.up:
            self._stop(node)

    def pause(self, node: SimNode) -> None:
        """Stall ``node``'s process until :meth:`resume`."""
        if node.status is Status.RUNNING:
            node.status = Status.PAUSED
            node.paused_at = self.engine.now
            node.tick_gen += 1
            node.tick_at = math.inf

    def resume(self, node: SimNode) -> None:
        """Let a paused process run again: the late tick first, then the backlog."""
        if node.status is not Status.PAUSED or node.core is None:
            return
        node.status = Status.RUNNING
        node.core.tick(self.engine.now)
        self._dispatch(node)
        backlog, node.backlog = node.backlog, []
        for callback, args in backlog:
            if node.status is not Status.RUNNING:
                node.backlog.append((callback, args))
                continue
            callback(*args)

    def record_outcome(self, node: SimNode, subject: SimNode, quality: float) -> LedgerRecord:
        """``node`` scored a task done by ``subject``: its core signs a new opinion."""
        core = node.core
        if core is None or not node.up:
            raise ValueError(f"{node.name} is not running")
        if subject is node:
            raise ValueError(f"{node.name} cannot rate itself")
        record = core.record_outcome(subject.node_id, quality, self.engine.now)
        # Nothing of ours is waiting on ``subject`` and every durable write succeeds here,
        # so the core signs the opinion at once.
        assert record is not None
        self.tracker.record_created(record)
        self._dispatch(node)
        return record

    def live_nodes(self) -> list[SimNode]:
        """Hosts whose process runs (or is paused) and that have not left, by slot."""
        live = self.tracker.live
        return [n for n in self.nodes if live[n.slot]]

    # ------------------------------------------------------------------ network faults

    def partition(self, groups: Sequence[Iterable[SimNode]]) -> None:
        """Symmetric partition into ``groups`` (hosts in none form one more group)."""
        self.network.partition([[n.slot for n in g] for g in groups])

    def partition_one_way(self, senders: Iterable[SimNode], receivers: Iterable[SimNode]) -> None:
        """Nothing from ``senders`` reaches ``receivers``; the reverse direction works."""
        self.network.partition_one_way([n.slot for n in senders], [n.slot for n in receivers])

    def heal(self) -> None:
        self.network.heal()

    # ------------------------------------------------------------------ running

    def run_until(
        self,
        until: float,
        *,
        stop: Callable[[], bool] | None = None,
        on_progress: Callable[[], None] | None = None,
    ) -> bool:
        """Run the engine up to virtual time ``until`` (or until ``stop()``)."""
        return self.engine.run_until(until, stop=stop, on_progress=on_progress)

    # ------------------------------------------------------------------ driving cores

    def _reschedule(self, node: SimNode) -> float:
        """Move ``node``'s tick earlier if its core's deadline did; return the deadline."""
        core = node.core
        if core is None or node.status is not Status.RUNNING:
            return math.inf
        deadline = core.next_deadline()
        if deadline < node.tick_at:
            node.tick_gen += 1
            node.tick_at = deadline
            self.engine.at(deadline, self._on_tick, node, node.tick_gen)
        return deadline

    def _on_tick(self, node: SimNode, gen: int) -> None:
        if gen != node.tick_gen or node.status is not Status.RUNNING:
            return
        node.tick_at = math.inf
        core = node.core
        assert core is not None
        now = self.engine.now
        if core.next_deadline() > now:
            self._reschedule(node)
            return
        try:
            core.tick(now)
        except Exception as exc:
            self.core_failed(node, "tick", exc)
        if self._dispatch(node) <= now and node.core is core:
            node.stuck_ticks += 1
            if node.stuck_ticks >= 3:
                self.violation(f"{node.name}: tick at {now} makes no progress (livelock)")
                node.tick_at = now + 1.0  # keep the run going when not strict
        else:
            node.stuck_ticks = 0

    def _dispatch(self, node: SimNode) -> float:
        """Carry out the effects of ``node``'s core; return its next deadline."""
        core = node.core
        if core is None:
            return math.inf
        tracker = self.tracker
        task_effects: list[object] = []
        for effect in core.take_effects():
            kind = type(effect)
            if kind is SendPacket:
                self._send(node, effect)  # type: ignore[arg-type]
            elif kind is MemberChanged:
                assert isinstance(effect, MemberChanged)
                tracker.member_changed(node, effect)
                if (
                    effect.node_id == node.node_id
                    and effect.kind is MemberEvent.UPDATED
                    and effect.member.incarnation > node.incarnation
                ):
                    node.incarnation = effect.member.incarnation  # persisted, as the runtime does
            elif kind is FetchManifest:
                assert isinstance(effect, FetchManifest)
                tracker.fetch_started(node, effect)
                self._fetch_try(node, node.life, effect, effect.sources[0])
            elif kind is StartPushPull:
                assert isinstance(effect, StartPushPull)
                self._push_pull_begin(node, effect)
            elif kind is StartTcpPing:
                assert isinstance(effect, StartTcpPing)
                self._tcp_ping_begin(node, effect)
            elif kind is ManifestChanged:
                assert isinstance(effect, ManifestChanged)
                tracker.manifest_changed(node, effect)
                node.store_manifest(effect.node, effect.manifest)
            elif kind is PersistRecords:
                assert isinstance(effect, PersistRecords)
                if effect.durable:  # own opinions, some signed by the core on its own
                    for record in effect.records:
                        if tracker.created.get((record.observer, record.seq)) != record:
                            tracker.record_created(record)
                tracker.records_persisted(node, effect)
                disk = node.disk_records
                for record in effect.records:
                    disk[(record.observer, record.subject)] = record
            elif self.task_shell is not None:
                task_effects.append(effect)
        if task_effects and self.task_shell is not None:
            self.task_shell(node, task_effects)
        return self._reschedule(node)

    # ------------------------------------------------------------------ UDP

    def _send(self, node: SimNode, packet: SendPacket) -> None:
        messages = packet.messages
        size = self.sizes.packet(messages)
        limit = self.config.max_packet_bytes
        if size > limit:
            self.violation(f"{node.name} sent a {size}-byte datagram (limit {limit})")
        traffic = self.traffic
        if messages and type(messages[0]) in _PROBE_TYPES:
            traffic.probe_packets += 1
            traffic.probe_messages += len(messages)
            traffic.probe_bytes += size
        else:
            traffic.gossip_packets += 1
            traffic.gossip_messages += len(messages)
            traffic.gossip_bytes += size
        dst = self.by_addr.get(packet.addr)
        if dst is None:
            traffic.datagrams_to_nobody += 1
            return
        fates = self.network.datagram(node.slot, dst)
        if not fates:
            traffic.datagrams_lost += 1
            return
        payload: tuple[Message, ...] | bytes = messages
        if self.wire:
            payload = encode(messages, node.signer)
            if len(payload) != size:
                self.violation(f"size model says {size} bytes, the codec made {len(payload)}")
        if len(fates) > 1:
            traffic.datagrams_duplicated += 1
        now = self.engine.now
        at = self.engine.at
        for delay in fates:
            at(now + delay, self._arrive, dst, node.addr, node.node_id, payload)

    def _arrive(
        self, slot: int, src: Address, sender: str, payload: tuple[Message, ...] | bytes
    ) -> None:
        node = self.nodes[slot]
        status = node.status
        if status is not Status.RUNNING:
            if status is Status.PAUSED:
                node.backlog.append((self._arrive, (slot, src, sender, payload)))
            return
        tap = self.taps.get(slot)
        if tap is not None:
            tap(sender, payload)
        if isinstance(payload, bytes):
            envelope = decode(payload, verifier=self.verifier)
            sender, messages = envelope.sender, envelope.messages
        else:
            messages = payload
        core = node.core
        assert core is not None
        try:
            if not core.receive(sender, messages, src, self.engine.now):
                return  # copies of held records only: no effects, the deadline stands
        except Exception as exc:
            self.core_failed(node, "receive", exc)
        self._dispatch(node)

    # ------------------------------------------------------------------ TCP: push-pull

    def _connect(self, src: SimNode, addr: Address, timeout: float) -> tuple[int | None, float]:
        """``(remote slot, seconds until the request has arrived)``, or ``(None, seconds
        until the failure is noticed)`` when the connection cannot be made."""
        dst = self.by_addr.get(addr)
        network = self.network
        if dst is None or not (
            network.reachable(src.slot, dst) and network.reachable(dst, src.slot)
        ):
            return None, timeout
        if not self.nodes[dst].up:
            # The host answers with a reset: one round trip.
            return None, network.delay(src.slot, dst) + network.delay(dst, src.slot)
        elapsed = network.tcp_connect(src.slot, dst) + network.tcp_leg(src.slot, dst)
        if elapsed > timeout:
            return None, timeout
        return dst, elapsed

    def _frame(self, messages: Sequence[Message], signer: Signer) -> Sequence[Message]:
        """In wire mode, messages as the receiver decodes them from a real signed frame."""
        if not self.wire:
            return messages
        return decode(encode(list(messages), signer), verifier=self.verifier).messages

    def _push_pull_begin(self, node: SimNode, effect: StartPushPull) -> None:
        core = node.core
        assert core is not None
        now = self.engine.now
        timeout = self.config.tcp_timeout
        self.traffic.push_pull_exchanges += 1
        dst, elapsed = self._connect(node, effect.addr, timeout)
        if dst is None:
            self.engine.at(now + elapsed, self._push_pull_failed, node, node.life)
            return
        request = core.push_pull_request(effect.join)
        self._count_push_pull(request)
        (request,) = self._frame((request,), node.signer)  # type: ignore[assignment]
        self.engine.at(
            now + elapsed, self._push_pull_serve, node, node.life, dst, request, now, effect
        )

    def _count_push_pull(self, message: PushPull) -> None:
        self.traffic.push_pull_frames += 1
        self.traffic.push_pull_bytes += self.sizes.frame((message,))

    def _push_pull_serve(
        self,
        node: SimNode,
        life: int,
        dst: int,
        request: PushPull,
        started: float,
        effect: StartPushPull,
    ) -> None:
        remote = self.nodes[dst]
        now = self.engine.now
        deadline = started + self.config.tcp_timeout
        if remote.status is Status.PAUSED:
            remote.backlog.append(
                (self._push_pull_serve, (node, life, dst, request, started, effect))
            )
            return
        if remote.core is None or not self.network.reachable(node.slot, dst):
            self.engine.at(max(now, deadline), self._push_pull_failed, node, life)
            return
        try:
            reply = remote.core.handle_push_pull(node.node_id, request, now)
        except Exception as exc:
            self.core_failed(remote, "handle_push_pull", exc)
            self._dispatch(remote)
            self.engine.at(max(now, deadline), self._push_pull_failed, node, life)
            return
        self._dispatch(remote)
        self._count_push_pull(reply)
        (reply,) = self._frame((reply,), remote.signer)  # type: ignore[assignment]
        arrival = now + self.network.tcp_leg(dst, node.slot)
        if arrival > deadline or not self.network.reachable(dst, node.slot):
            self.engine.at(max(now, deadline), self._push_pull_failed, node, life)
            return
        self.engine.at(arrival, self._push_pull_finish, node, life, dst, reply, started, effect)

    def _push_pull_finish(
        self,
        node: SimNode,
        life: int,
        dst: int,
        reply: PushPull,
        started: float,
        effect: StartPushPull,
    ) -> None:
        if node.life != life or node.core is None:
            return
        if node.status is Status.PAUSED:
            node.backlog.append((self._push_pull_finish, (node, life, dst, reply, started, effect)))
            return
        now = self.engine.now
        if now > started + self.config.tcp_timeout:
            self._push_pull_failed(node, life)  # the client gave up while stalled
            return
        remote = self.nodes[dst]
        try:
            missing = node.core.finish_push_pull(remote.node_id, reply, effect.addr, now)
        except Exception as exc:
            self.core_failed(node, "finish_push_pull", exc)
            missing = []
        self._dispatch(node)
        for start in range(0, len(missing), MAX_MESSAGES_PER_ENVELOPE):
            chunk = missing[start : start + MAX_MESSAGES_PER_ENVELOPE]
            self.traffic.push_pull_frames += 1
            self.traffic.push_pull_bytes += self.sizes.records(chunk)
            records = self._frame(chunk, node.signer)
            arrival = now + self.network.tcp_leg(node.slot, dst)
            self.engine.at(arrival, self._push_pull_records, dst, records)
        self._push_pull_done(node, life)

    def _push_pull_records(self, dst: int, records: Sequence[LedgerRecord]) -> None:
        remote = self.nodes[dst]
        if remote.status is Status.PAUSED:
            remote.backlog.append((self._push_pull_records, (dst, records)))
            return
        if remote.core is None or remote.status is not Status.RUNNING:
            return
        try:
            remote.core.apply_records(records, self.engine.now)
        except Exception as exc:
            self.core_failed(remote, "apply_records", exc)
        self._dispatch(remote)

    def _push_pull_failed(self, node: SimNode, life: int) -> None:
        if node.life != life:
            return
        if node.status is Status.PAUSED:
            node.backlog.append((self._push_pull_failed, (node, life)))
            return
        self.traffic.push_pull_failures += 1
        self._push_pull_done(node, life)

    def _push_pull_done(self, node: SimNode, life: int) -> None:
        """The exchange ended: its slot goes back to the core, which may start the next."""
        core = node.core
        if node.life != life or core is None or not node.up:
            return
        try:
            core.push_pull_done(self.engine.now)
        except Exception as exc:
            self.core_failed(node, "push_pull_done", exc)
        self._dispatch(node)

    # ------------------------------------------------------------------ TCP: fallback ping

    def _tcp_ping_begin(self, node: SimNode, effect: StartTcpPing) -> None:
        """The TCP fallback probe: connect, the target's core answers the ``Ping``, the
        ``Ack`` comes back on the TCP path; past ``effect.timeout`` it counts as failed."""
        now = self.engine.now
        deadline = now + effect.timeout
        dst, elapsed = self._connect(node, effect.addr, effect.timeout)
        if dst is None:
            self.engine.at(now + elapsed, self._tcp_ping_done, node, node.life, effect, None)
            return
        self.engine.at(now + elapsed, self._tcp_ping_serve, node, node.life, dst, effect, deadline)

    def _tcp_ping_serve(
        self, node: SimNode, life: int, dst: int, effect: StartTcpPing, deadline: float
    ) -> None:
        remote = self.nodes[dst]
        now = self.engine.now
        if (
            remote.core is None
            or remote.status is not Status.RUNNING
            or not self.network.reachable(dst, node.slot)
        ):  # a paused process answers after the caller gave up: the same as no answer
            self.engine.at(max(now, deadline), self._tcp_ping_done, node, life, effect, None)
            return
        try:
            ack = remote.core.answer_tcp_ping(node.node_id, Ping(effect.seq, effect.node), now)
        except Exception as exc:
            self.core_failed(remote, "answer_tcp_ping", exc)
            ack = None
        self._dispatch(remote)
        arrival = now + self.network.tcp_leg(dst, node.slot)
        if ack is None or arrival > deadline:
            self.engine.at(max(now, deadline), self._tcp_ping_done, node, life, effect, None)
            return
        self.engine.at(arrival, self._tcp_ping_done, node, life, effect, ack)

    def _tcp_ping_done(
        self, node: SimNode, life: int, effect: StartTcpPing, ack: Ack | None
    ) -> None:
        core = node.core
        if node.life != life or core is None:
            return
        if node.status is Status.PAUSED:
            node.backlog.append((self._tcp_ping_done, (node, life, effect, ack)))
            return
        try:
            core.tcp_ping_done(effect.node, effect.seq, ack, self.engine.now)
        except Exception as exc:
            self.core_failed(node, "tcp_ping_done", exc)
        self._dispatch(node)

    # ------------------------------------------------------------------ TCP: manifest fetch

    def _fetch_try(self, node: SimNode, life: int, effect: FetchManifest, source: Address) -> None:
        if node.life != life or node.core is None:
            return
        if node.status is Status.PAUSED:
            node.backlog.append((self._fetch_try, (node, life, effect, source)))
            return
        now = self.engine.now
        timeout = self.config.tcp_timeout
        dst, elapsed = self._connect(node, source, timeout)
        if dst is None:
            self.engine.at(now + elapsed, self._fetch_answered, node, life, effect, source, None)
            return
        self.traffic.fetch_requests += 1
        self.traffic.fetch_bytes += FETCH_REQUEST_BYTES
        self.engine.at(now + elapsed, self._fetch_serve, node, life, effect, source, dst, now)

    def _fetch_serve(
        self,
        node: SimNode,
        life: int,
        effect: FetchManifest,
        source: Address,
        dst: int,
        started: float,
    ) -> None:
        remote = self.nodes[dst]
        if remote.status is Status.PAUSED:
            remote.backlog.append((self._fetch_serve, (node, life, effect, source, dst, started)))
            return
        now = self.engine.now
        deadline = started + self.config.tcp_timeout
        answered = self._fetch_answered
        if remote.core is None or not self.network.reachable(node.slot, dst):
            self.engine.at(max(now, deadline), answered, node, life, effect, source, None)
            return
        manifest = remote.core.manifests.get(effect.node)
        arrival = now + self.network.tcp_leg(dst, node.slot)
        if arrival > deadline or not self.network.reachable(dst, node.slot):
            self.engine.at(max(now, deadline), answered, node, life, effect, source, None)
            return
        if manifest is None:  # 404
            self.engine.at(arrival, answered, node, life, effect, source, None)
            return
        self.traffic.fetch_bytes += self.sizes.manifest(manifest)
        if self.wire:
            manifest = unpack(pack(manifest), Manifest)
        self.engine.at(arrival, answered, node, life, effect, source, manifest)

    def _fetch_answered(
        self,
        node: SimNode,
        life: int,
        effect: FetchManifest,
        source: Address,
        manifest: Manifest | None,
    ) -> None:
        """Hand one source's answer to the core; it says which source is next, if any."""
        core = node.core
        if node.life != life or core is None:
            return
        if node.status is Status.PAUSED:
            node.backlog.append((self._fetch_answered, (node, life, effect, source, manifest)))
            return
        try:
            step = core.fetch_answered(effect, source, manifest, self.engine.now)
        except Exception as exc:
            self.core_failed(node, "fetch_answered", exc)
            core.fetch_abandoned(effect, self.engine.now)
            self._dispatch(node)
            return
        if step.source is None:
            if step.failed:
                self.traffic.fetch_failures += 1
            self._dispatch(node)
            return
        if manifest is not None:
            self._dispatch(node)
        self._fetch_try(node, life, effect, step.source)

    # ------------------------------------------------------------------ injection

    def inject_datagram(
        self,
        src: SimNode,
        dst: SimNode,
        messages: Sequence[Message] | bytes,
        sender: str | None = None,
    ) -> None:
        """Send one datagram from ``src``'s address to ``dst`` beside ``src``'s core: as a
        Byzantine process writing to its socket. ``sender`` is the envelope's sender
        (default ``src``'s own id); ``messages`` are encoded and signed by ``src`` in wire
        mode, or are already the bytes of an envelope (a replay, sent as captured). The
        network treats it like any datagram (loss, delay, partitions); no size limit is
        checked (the attacker chose it)."""
        traffic = self.traffic
        traffic.attack_packets += 1
        payload: tuple[Message, ...] | bytes
        if isinstance(messages, bytes):
            payload = messages
            traffic.attack_bytes += len(messages)
        else:
            payload = tuple(messages)
            traffic.attack_bytes += self.sizes.packet(payload)
            if self.wire:
                payload = encode(list(payload), src.signer)
        fates = self.network.datagram(src.slot, dst.slot)
        if not fates:
            traffic.datagrams_lost += 1
            return
        now = self.engine.now
        who = src.node_id if sender is None else sender
        for delay in fates:
            self.engine.at(now + delay, self._arrive, dst.slot, src.addr, who, payload)

    def inject_push_pull(
        self,
        src: SimNode,
        dst: SimNode,
        request: PushPull,
        on_reply: Callable[[PushPull], None] | None = None,
    ) -> None:
        """Open a push-pull exchange from ``src`` to ``dst`` with a crafted first leg
        (``request``, which may carry records), beside ``src``'s core. The responder
        handles it exactly as an honest exchange (``handle_push_pull``); its reply goes to
        ``on_reply`` (the attacker may keep it to replay), never to ``src``'s core."""
        self.traffic.attack_push_pulls += 1
        self.traffic.attack_push_pull_bytes += self.sizes.frame((request,))
        dst_slot, elapsed = self._connect(src, dst.addr, self.config.tcp_timeout)
        if dst_slot is None:
            return
        (request,) = self._frame((request,), src.signer)  # type: ignore[assignment]
        self.engine.at(self.engine.now + elapsed, self._injected_serve, src, dst, request, on_reply)

    def _injected_serve(
        self,
        src: SimNode,
        dst: SimNode,
        request: PushPull,
        on_reply: Callable[[PushPull], None] | None,
    ) -> None:
        if dst.status is Status.PAUSED:
            dst.backlog.append((self._injected_serve, (src, dst, request, on_reply)))
            return
        if dst.core is None or dst.status is not Status.RUNNING:
            return
        try:
            reply = dst.core.handle_push_pull(src.node_id, request, self.engine.now)
        except Exception as exc:
            self.core_failed(dst, "handle_push_pull", exc)
            self._dispatch(dst)
            return
        self._dispatch(dst)
        if on_reply is not None:
            on_reply(reply)

    # ------------------------------------------------------------------ checks

    def check_final_state(self) -> None:
        """End-of-run safety checks: no ledger holds proof that an honest node equivocated."""
        for node in self.live_nodes():
            assert node.core is not None
            equivocators = node.core.ledger.equivocators()
            if equivocators:
                names = [self.nodes[self.by_id[e]].name for e in equivocators if e in self.by_id]
                self.violation(f"{node.name} holds equivocation proofs against {names}")

    def random_pair(self) -> tuple[SimNode, SimNode] | None:
        """Two distinct live, running nodes picked by the workload stream."""
        running = [n for n in self.live_nodes() if n.status is Status.RUNNING]
        if len(running) < 2:
            return None
        rng = self._workload_rng
        a, b = rng.sample(range(len(running)), 2)
        return running[a], running[b]

    @property
    def workload_rng(self) -> Any:
        return self._workload_rng

    # ------------------------------------------------------------------ task channels

    def task_send(
        self,
        src: SimNode,
        dst_id: str,
        messages: tuple[Message, ...],
        on_arrive: Callable[[SimNode, str, tuple[Message, ...]], None],
        on_broken: Callable[[SimNode, str], None],
    ) -> bool:
        """Send ``messages`` from ``src`` to node ``dst_id`` over a task channel: a
        reliable, ordered stream (a pooled WebSocket in the runtime) with the network's
        latency and TCP retransmission. They arrive together at ``on_arrive(dst, sender,
        messages)``, never before anything ``src`` sent earlier on the same connection.

        The channel breaks as a TCP connection does: when the destination is unknown,
        unreachable or down (``on_broken(src, dst_id)`` after a reset's round trip or the
        ``tcp_timeout``), when a message would take longer than ``tcp_timeout`` to get
        through, or when the destination crashes or is partitioned away while messages are
        on their way. A broken connection loses every message still on it, and ``src``
        hears of each loss; the next send opens a new connection. A paused destination
        receives its messages when it resumes. Returns False when the channel is known to
        be broken at sending."""
        now = self.engine.now
        timeout = self.config.tcp_timeout
        slot = self.by_id.get(dst_id)
        if slot is None:
            self.engine.at(now + timeout, self._task_broken, src, src.life, dst_id, on_broken)
            return False
        dst = self.nodes[slot]
        network = self.network
        key = (src.slot, src.life, slot, dst.life)
        if not (network.reachable(src.slot, slot) and network.reachable(slot, src.slot)):
            self._task_channels.pop(key, None)
            self.engine.at(now + timeout, self._task_broken, src, src.life, dst_id, on_broken)
            return False
        if not dst.up:
            self._task_channels.pop(key, None)
            rtt = network.delay(src.slot, slot) + network.delay(slot, src.slot)
            self.engine.at(now + rtt, self._task_broken, src, src.life, dst_id, on_broken)
            return False
        channel = self._task_channels.get(key)
        delay = network.tcp_leg(src.slot, slot)
        if channel is None:  # a new connection: its handshake first
            self._task_connections += 1
            channel = (self._task_connections, now)
            delay += network.tcp_connect(src.slot, slot)
        connection, last = channel
        arrival = max(now + delay, last)
        if not math.isfinite(arrival) or arrival - now > timeout:
            self._task_channels.pop(key, None)  # what is still on its way is lost
            self.engine.at(now + timeout, self._task_broken, src, src.life, dst_id, on_broken)
            return False
        self._task_channels[key] = (connection, arrival)
        self.engine.at(
            arrival, self._task_arrive, key, connection, src, dst, messages, on_arrive, on_broken
        )
        return True

    def _task_arrive(
        self,
        key: tuple[int, int, int, int],
        connection: int,
        src: SimNode,
        dst: SimNode,
        messages: tuple[Message, ...],
        on_arrive: Callable[[SimNode, str, tuple[Message, ...]], None],
        on_broken: Callable[[SimNode, str], None],
    ) -> None:
        src_life, dst_life = key[1], key[3]
        channel = self._task_channels.get(key)
        lost = (
            channel is None
            or channel[0] != connection
            or dst.life != dst_life
            or not dst.up
            or not self.network.reachable(src.slot, dst.slot)
        )
        if not lost and dst.status is Status.PAUSED:
            dst.backlog.append(
                (
                    self._task_arrive,
                    (key, connection, src, dst, messages, on_arrive, on_broken),
                )
            )
            return
        if lost:
            if channel is not None and channel[0] == connection:
                del self._task_channels[key]
            back = self.network.delay(dst.slot, src.slot)
            self.engine.at(
                self.engine.now + back, self._task_broken, src, src_life, dst.node_id, on_broken
            )
            return
        on_arrive(dst, src.node_id, messages)

    def _task_broken(
        self,
        src: SimNode,
        life: int,
        dst_id: str,
        on_broken: Callable[[SimNode, str], None],
    ) -> None:
        if src.life != life or not src.up:
            return
        if src.status is Status.PAUSED:
            src.backlog.append((self._task_broken, (src, life, dst_id, on_broken)))
            return
        on_broken(src, dst_id)

    def publish_opinion(
        self, node: SimNode, subject: SimNode, score: float, outcomes: int
    ) -> LedgerRecord:
        """``node`` signs ``score`` as its opinion of ``subject`` outright, beside the
        trust policy of its core (as any member may: the ledger holds what each observer
        says, whatever its reasons), and its mesh gossips it."""
        core = node.core
        if core is None or not node.up:
            raise ValueError(f"{node.name} is not running")
        record = core.mesh.publish_opinion(subject.node_id, score, outcomes, self.engine.now)
        self.tracker.record_created(record)
        self._dispatch(node)
        return record

    def dispatch(self, node: SimNode) -> None:
        """Carry out whatever ``node``'s core has queued after a call made from outside the
        cluster (a shell component driving the same core, such as the task layer)."""
        self._dispatch(node)
