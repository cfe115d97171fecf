"""NodeCore: one sans-I/O object per node that decides everything the node does.

Theory of operation
-------------------
Both shells — the asyncio runtime (:mod:`meshnode.runtime`) and the simulator
(:mod:`simulations`) — drive exactly one :class:`NodeCore` per node. It owns:

* the :class:`~meshnode.core.mesh.MeshCore` (membership, manifests, the reputation ledger),
  whose calls it passes through unchanged (``receive``, ``tick``, ``join``, ``leave``,
  ``publish_manifest``, ``fetch_answered``, the push-pull legs, …), including the caps on
  fetches and push-pulls running at once;
* the trust view and opinion batching (:class:`~meshnode.core.trust.TrustPolicy`);
* the :class:`~meshnode.core.provider.ProviderCore` (admission, slots, reservations,
  signed results) and one :class:`~meshnode.core.requester.RequesterCore` per delegation,
  keyed by task id;
* the :class:`~meshnode.core.breaker.BreakerBoard` and the
  :class:`~meshnode.core.evaluator.OutputEvaluator`;
* routing (:meth:`NodeCore.route`: which indexed capabilities are candidates, ranked by
  :func:`meshnode.core.router.rank` with our trust view, loads and open circuits) and
  the delegation policy (:mod:`meshnode.core.delegation`: rank order, deadline
  inheritance, attempt deadline and counter ratio, outcome → breaker → opinion), restore
  after a restart (:meth:`NodeCore.restore`), and the cap on delegations in flight
  (:data:`MAX_DELEGATIONS_IN_FLIGHT`; the provider's slots are
  ``NodeConfig.max_concurrent_tasks``).

One calling convention. Inputs are method calls that take ``now`` (seconds; the runtime
passes UNIX time, the simulator its virtual clock); each appends effects
(:mod:`meshnode.core.effects`) that the shell drains with :meth:`NodeCore.take_effects`
and carries out in order; :meth:`NodeCore.next_deadline` says when :meth:`NodeCore.tick`
is due. Inputs:

* membership and state: ``receive``, ``tick``, ``join``, ``leave``, ``adopt_converged``,
  ``restore``, ``publish_manifest``, ``apply_records``, ``push_pull_request``,
  ``handle_push_pull``, ``finish_push_pull``;
* exchange slots: ``fetch_answered`` (one source of a ``FetchManifest`` answered: it says
  which source to try next, or that the fetch is over), ``fetch_abandoned``,
  ``push_pull_done`` — fetches and push-pulls are emitted only within the caps
  (:data:`~meshnode.core.mesh.MAX_CONCURRENT_FETCHES`,
  :data:`~meshnode.core.mesh.MAX_CONCURRENT_PUSH_PULLS`) and queued otherwise;
* tasks: ``start_delegation``, ``cancel_delegation``, ``task_message`` (every task
  message a verified peer sent on its channel), ``handler_done``, ``peer_failed``,
  ``send_failed``, ``set_capabilities``, ``set_policies``, ``close_tasks``, and the liveness check's
  ``peer_answered`` and ``check_unsent``;
* trust: ``record_outcome``, ``sign_opinions``, ``durable_failed``, ``durable_written``;
  queries ``trust_view(now)``, ``direct_experience()``, ``opinion(peer)``;
* routing: ``route(hits, now, ...)`` ranks what the capability index found.
* admission (with ``NodeConfig.authority``; see :mod:`meshnode.core.admission`):
  ``revoke`` (a revocation from the operator), ``offer_certificate``, and the queries
  ``admits(node_id, now)``, ``roles_of(node_id)`` and ``rejoin_problem(sender, request,
  now)``. Every input above that carries news from peers (``receive``, the push-pull legs,
  ``apply_records``, ``task_message``) takes it only from admitted senders, and only news
  by and about admitted nodes; certificates and revocations ride the same packets and
  push-pull state, and a revoked or expired member is expelled (``CloseChannels``, its
  tasks failed, membership reports it left and forgets it).

Queries the shells use: ``next_deadline()`` (everything), ``task_deadline()`` (the task
side alone), ``waiting_on(peer)``, ``attempt_node(task_id)``, ``send_still_due(send)``,
``checks`` (pending liveness checks), ``mesh.exchanges`` (fetch and push-pull slots),
``in_flight``,
``durable_pending``, and the parts themselves (``membership``, ``manifests``, ``ledger``,
``provider``, ``breakers``, ``evaluator``, ``trust``) for reading.

The node-level effects are :class:`~meshnode.core.effects.SendTask`,
:class:`~meshnode.core.effects.RunHandler`, :class:`~meshnode.core.effects.StopHandler`,
:class:`~meshnode.core.effects.CheckPeer`, :class:`~meshnode.core.effects.CloseChannels` and
:class:`~meshnode.core.effects.DelegationFinished`; the mesh's effects pass through.
Capability handlers run in the shell: the core emits ``RunHandler`` and gets
``handler_done`` back. A delegation always ends with exactly one ``DelegationFinished``,
even when it cannot start (no time left, the node is closing, too many in flight).

Peers that go away. A ``Leave`` is signed by the peer itself, so the tasks with it fail at
once. A ``Dead`` is an accusation anyone may make: while a task with the peer is live, the
core emits ``CheckPeer(peer, token)`` (one check at a time per peer) and the shell pings
the peer's task channel with that token. Only a ``ChannelPong`` with the same token, from
the peer on its authenticated channel, within ``NodeConfig.task_liveness_timeout``, counts
as alive (``peer_answered``); when the deadline passes first, the core emits
``CloseChannels`` and fails the peer's tasks; with no channel open (``check_unsent``) they
fail at once. The shell only sends the ping and reports what came back.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from crdt import ManifestStore, ReputationLedger
from meshnode.core.admission import Admission
from meshnode.core.authorization import CapabilityPolicy
from meshnode.core.breaker import BreakerBoard, TaskVerdict
from meshnode.core.config import NodeConfig
from meshnode.core.coordinates import Coordinate
from meshnode.core.delegation import (
    COUNTER_RATIO,
    attempt_consequence,
    attempt_deadline_ms,
    inherit_deadline,
    result_consequence,
)
from meshnode.core.effects import (
    Address,
    AttemptEnded,
    AttemptOutcome,
    CheckPeer,
    CloseChannels,
    DelegationFinished,
    Done,
    Failed,
    FetchManifest,
    MemberChanged,
    MemberEvent,
    NodeEffect,
    RequesterEffect,
    RunHandler,
    SendCancel,
    SendConfirm,
    SendRequest,
    SendTask,
    StartTask,
    StopHandler,
)
from meshnode.core.evaluator import Evaluation, Expectation, OutputEvaluator
from meshnode.core.member import Member, MemberRumor, MemberState
from meshnode.core.membership import Membership
from meshnode.core.mesh import FetchStep, MeshCore
from meshnode.core.metrics import CoreMetrics
from meshnode.core.provider import CancelOutcome, ProviderCore
from meshnode.core.requester import RequesterCore, false_input_claim
from meshnode.core.router import (
    DEFAULT_TOP_K,
    DEFAULT_TRUST,
    RoutableEntry,
    ScoredCandidate,
    rank,
)
from meshnode.core.task_log import TaskLog
from meshnode.core.trust import MemberAges, TrustPolicy
from protocol import (
    Capability,
    LedgerRecord,
    Manifest,
    Message,
    PushPull,
    Signer,
    TaskCancel,
    TaskConfirm,
    TaskRequest,
    TaskResponse,
    TaskResult,
    Verifier,
)
from protocol import verify as ed25519_verify
from protocol.codec import message_to_wire
from protocol.identity import public_key_from_node_id
from protocol.messages import (
    PRESSURE_MAX,
    Ack,
    Alive,
    Dead,
    Leave,
    ManifestRumor,
    Ping,
    PingReq,
    RejoinRequest,
    SignedCertificate,
    SignedRevocation,
    Suspect,
)

__all__ = [
    "DELEGATION_TOP_K",
    "MAX_DELEGATIONS_IN_FLIGHT",
    "TASK_COUNTERS",
    "NodeCore",
    "deadline_problem",
]

DELEGATION_TOP_K = 20
"""Most ranked candidates a delegation is offered to, in order (the runtime asks routing
for this many). Each failed attempt costs at most its attempt deadline, so twenty covers
any realistic run of refusals within a deadline; more only lengthens the tail of a
delegation nobody can serve."""


def deadline_problem(deadline_s: object) -> str | None:
    """Why ``deadline_s`` is not a usable delegation deadline (None: it is): it must be a
    positive, finite number of seconds (not a bool)."""
    if (
        isinstance(deadline_s, bool)
        or not isinstance(deadline_s, int | float)
        or not 0 < deadline_s < math.inf
    ):
        return f"deadline_s must be a positive number of seconds, got {deadline_s}"
    return None


TIE_SECRET_LABEL = b"meshnode router tie-break secret v1"
"""What a node signs (and never sends) to get the secret keying routing's final
tie-break: a label no envelope, record or result body can equal."""

MAX_TIE_KEYS = 65_536
"""Most routing tie-break keys (:func:`~meshnode.core.router.tie_key`, one keyed hash per
node id) a node remembers between queries (about 150 bytes each, some 10 MB at the cap);
past it they are forgotten all at once and made again as queries need them."""

MAX_DELEGATIONS_IN_FLIGHT = 4_096
"""Default for the delegations one node runs at once as a requester (``NodeCore``'s
``max_delegations`` argument). Each holds a RequesterCore (a few hundred bytes plus its
input) and at most one live attempt; beyond the cap a new delegation fails at once with
``too many delegations in flight`` instead of piling up without bound. Ten thousand members
each serving ``max_concurrent_tasks`` tasks rarely need more than a few hundred from one
node; higher only helps a node that fans out enormous bursts, at the cost of memory."""

MAX_NODES_AWAITING_CERTIFICATE = 4_096
"""Most nodes whose news (an ``Alive``, a manifest rumor, an accusation) is held until
their certificate arrives; beyond it the node heard of first is let go (anti-entropy brings
its news later). An admitted member could fill it with news of made-up nodes: that costs
it nothing but holds at most this many small messages."""
MAX_NEWS_PER_NODE_AWAITING = 4
"""Most messages held per node awaiting its certificate (the newest kept)."""

MAX_CERTIFICATE_CHECKS_PER_PACKET = 8
"""Most certificate signatures checked for one UDP envelope from an admitted peer
(certificates already held cost nothing). A packet has room for three or four next to
its rumors; eight leaves slack without letting one packet cost more than eight checks."""

TASK_COUNTERS: dict[str, str] = {
    "delegations_ok": "delegations that ended with a verified, delivered result",
    "delegations_failed": "delegations that ended without one",
    "delegations_refused_cap": "delegations refused: max_delegations were in flight",
    "tasks_served": "signed results this node sent as a provider",
    "dead_refuted_on_channel": "peers declared dead that answered on their task channel",
    "dead_confirmed_on_channel": "peers declared dead, silent on their task channel",
    "dead_without_channel": "peers declared dead with no task channel open to check",
}
"""Every counter of :attr:`NodeCore.task_counters`, with what it counts."""


class _Delegation:
    __slots__ = ("capability", "core", "expectation", "task_input")

    def __init__(
        self,
        core: RequesterCore,
        capability: str,
        task_input: Any,
        expectation: Expectation | None = None,
    ) -> None:
        self.core = core
        self.capability = capability
        self.task_input = task_input
        self.expectation = expectation


class NodeCore:
    """Everything one node decides, sans I/O (see the module docstring)."""

    def __init__(
        self,
        config: NodeConfig,
        signer: Signer,
        *,
        host: str,
        port: int,
        rng: random.Random,
        verifier: Verifier = ed25519_verify,
        incarnation: int = 0,
        now: float = 0.0,
        max_subjects: int | None = None,
        ip_version: Literal[4, 6] = 4,
        capabilities: Mapping[str, Capability] | None = None,
        evaluator: OutputEvaluator | None = None,
        max_delegations: int = MAX_DELEGATIONS_IN_FLIGHT,
        policies: Mapping[str, CapabilityPolicy] | None = None,
        certificate: SignedCertificate | None = None,
    ) -> None:
        """``certificate`` is this node's membership certificate; with
        ``config.authority`` set it is required, and
        :class:`~meshnode.core.admission.AdmissionError` is raised when it is missing or
        not valid for this identity now."""
        if max_delegations < 1:
            raise ValueError(f"max_delegations must be at least 1, got {max_delegations}")
        self.config = config
        self.max_delegations = max_delegations
        """Most delegations in flight at once (see :data:`MAX_DELEGATIONS_IN_FLIGHT`)."""
        self.signer = signer
        self.verifier = verifier
        self._rng = rng
        self._task_rng: random.Random | None = None
        self.mesh = MeshCore(
            config,
            signer,
            host=host,
            port=port,
            rng=rng,
            verifier=verifier,
            incarnation=incarnation,
            now=now,
            max_subjects=max_subjects,
            ip_version=ip_version,
        )
        self.trust = TrustPolicy(self.mesh, config.direct_trust_weight)
        self.provider = ProviderCore(
            signer,
            dict(capabilities or {}),
            config.max_concurrent_tasks,
            verifier=verifier,
            remember_bytes=config.task_memory_bytes,
            policies=policies,
            facts=self,
        )
        self.breakers = BreakerBoard(
            failure_threshold=config.breaker_failure_threshold,
            recovery_time=config.breaker_recovery_time,
        )
        self.evaluator = evaluator or OutputEvaluator()
        self.member_ages = MemberAges()
        """When this node first saw each member alive (routing's tie-break evidence)."""
        self._tie_secret: bytes | None = None
        self._tie_keys: dict[str, bytes] = {}
        """Routing tie-break keys made with :attr:`tie_secret`, by node id (bounded by
        :data:`MAX_TIE_KEYS`)."""
        self._delegations: dict[str, _Delegation] = {}
        self.task_log = TaskLog()
        """This node's delegations in flight and the last few finished (a view for the
        dashboard and ``meshnode status``; see :mod:`meshnode.core.task_log`)."""
        self._requester_due: float | None = None
        self._requester_stale = False
        self._effects: list[NodeEffect] = []
        self._now = now
        self._closing = False
        self._load: int | None = None
        # Liveness checks of peers declared dead: peer -> (ping token, answer deadline).
        self._checks: dict[str, tuple[int, float]] = {}
        self._next_token = 1
        self.task_counters: dict[str, int] = dict.fromkeys(TASK_COUNTERS, 0)
        self.metrics = CoreMetrics()
        """Task outcomes by kind and reason, and the latency histograms (read-only for
        everyone but the shell that times push-pulls and discovery for it)."""
        """Named task event counts, see :data:`TASK_COUNTERS`."""
        self.admission: Admission | None = None
        """Certificates and revocations (None: no mesh authority is configured)."""
        # News about nodes whose certificate we lack yet: node -> [(sender, message, addr)].
        self._awaiting_certificate: dict[str, list[tuple[str, object, Address]]] = {}
        if config.authority is not None:
            self.admission = Admission(
                public_key_from_node_id(config.authority),
                signer.node_id,
                certificate,
                verifier=verifier,
                now=now,
                max_certificates=config.authority_max_certificates,
                max_revocations=config.authority_max_revocations,
                clock_skew=config.authority_clock_skew,
                is_member=self._is_live_member,
            )
            self._spread_certificate(self.admission.own.signed, signer.node_id)

    # ------------------------------------------------------------------ identity and state

    @property
    def node_id(self) -> str:
        return self.mesh.node_id

    @property
    def membership(self) -> Membership:
        """Read it; drive the core."""
        return self.mesh.membership

    @property
    def manifests(self) -> ManifestStore:
        return self.mesh.manifests

    @property
    def ledger(self) -> ReputationLedger:
        return self.mesh.ledger

    @property
    def counters(self) -> dict[str, int]:
        """The mesh's counters (see :data:`meshnode.core.mesh.COUNTERS`)."""
        return self.mesh.counters

    @property
    def tombstone_ttl(self) -> float:
        return self.mesh.tombstone_ttl

    @property
    def closing(self) -> bool:
        """True once :meth:`close_tasks` or :meth:`leave` was called."""
        return self._closing

    @property
    def delegations(self) -> int:
        """Delegations in flight."""
        return len(self._delegations)

    @property
    def in_flight(self) -> int:
        """Provider tasks (running and reserved) plus delegations in flight."""
        return self.provider.in_flight + len(self._delegations)

    def members(self) -> list[Member]:
        return self.mesh.members()

    def coordinate(self) -> Coordinate:
        """This node's Vivaldi network coordinate (see meshnode.core.coordinates)."""
        return self.mesh.membership.coordinate()

    def estimated_rtt_ms(self, node_id: str) -> float | None:
        """Round trip to ``node_id`` estimated from the network coordinates, in
        milliseconds; None while we hold no coordinate for it (it has not answered one of
        our direct probes yet, or it is not a member); 0.0 for ourselves."""
        rtt = self.mesh.membership.estimated_rtt(node_id)
        return None if rtt is None else rtt * 1000.0

    def waiting_on(self, peer: str) -> bool:
        """Is one of our delegations negotiating with ``peer`` or waiting for its result?"""
        return any(d.core.current_node == peer for d in self._delegations.values())

    def attempt_node(self, task_id: str) -> str | None:
        """The peer delegation ``task_id`` is trying now (None if none, or not in flight)."""
        d = self._delegations.get(task_id)
        return None if d is None else d.core.current_node

    def send_still_due(self, send: SendTask) -> bool:
        """Whether ``send`` should still go out once the shell has a channel (opening one
        takes time): a request or confirm of a delegation that is no longer trying
        ``send.node`` is stale and must not reach that peer; anything else is due."""
        if isinstance(send.message, TaskRequest | TaskConfirm):
            return self.attempt_node(send.task_id) == send.node
        return True

    def delegation_deadline(self, task_id: str) -> float | None:
        """The overall deadline of delegation ``task_id`` (None if it is not in flight)."""
        d = self._delegations.get(task_id)
        return None if d is None else d.core.deadline_at

    # ------------------------------------------------------------------ shell interface

    def take_effects(self) -> list[NodeEffect]:
        """Return and clear everything the shell must do, in order."""
        self._collect(self._now)
        effects, self._effects = self._effects, []
        return effects

    def next_deadline(self) -> float:
        """When :meth:`tick` is due next (the earliest timer of every part)."""
        deadline = self.mesh.next_deadline()
        tasks = self.task_deadline()
        return deadline if tasks is None or deadline <= tasks else tasks

    def task_deadline(self) -> float | None:
        """The earliest timer of the task side alone (provider deadlines and holds, each
        delegation's timeouts, the opinion flush); None when none is armed."""
        deadline = self.provider.next_deadline()
        due = self._requester_deadline()
        if due is not None and (deadline is None or due < deadline):
            deadline = due
        flush = self.trust.flush_at
        if flush is not None and (deadline is None or flush < deadline):
            deadline = flush
        if self._checks:
            check = min(at for _, at in self._checks.values())
            if deadline is None or check < deadline:
                deadline = check
        return deadline

    def tick(self, now: float) -> None:
        """Fire every timer that is due: membership and the mesh, provider deadlines and
        reservation holds, each delegation's timeouts, and the opinion flush."""
        self._advance_clock(now)
        self.mesh.tick(now)
        self._collect(now)
        if self.admission is not None:
            self._expire_certificates(now)
        due = self.provider.next_deadline()
        if due is not None and now >= due:
            self._provider_tick(now)
        due = self._requester_deadline()
        if due is not None and now >= due:
            for task_id in [t for t, d in self._delegations.items() if _due(d.core, now)]:
                delegation = self._delegations.get(task_id)
                if delegation is not None:
                    self._apply(task_id, delegation, delegation.core.tick(now), now)
        self.trust.tick(now)
        if self._checks:
            self._expire_checks(now)
        self._collect(now)

    # ------------------------------------------------------------------ mesh pass-through

    def receive(self, sender: str, messages: Sequence[object], addr: Address, now: float) -> bool:
        """One verified envelope from ``sender`` arrived from ``addr`` (UDP). With a mesh
        authority, it is dropped unless ``sender`` is admitted (a certificate in the same
        envelope counts), and news by or about nodes that are not admitted is dropped.

        Returns False when the envelope changed nothing but counters (it held only copies
        of ledger records this node holds, see :meth:`MeshCore.receive`): then there are
        no effects to take and :meth:`next_deadline` has not moved. True otherwise."""
        if now > self._now:  # _advance_clock, inlined: this runs for every datagram
            self._now = now
        if self.admission is not None:
            admitted = self._admit_envelope(sender, messages, addr, now)
            if admitted is None:
                return True
            messages = admitted
        if not self.mesh.receive(sender, messages, addr, now):
            return False
        self._collect(now)
        return True

    def join(self, seeds: Sequence[Address], now: float) -> int:
        self._advance_clock(now)
        joined = self.mesh.join(seeds, now)
        self._collect(now)
        return joined

    def adopt_converged(
        self,
        members: Mapping[str, Member],
        manifests: ManifestStore,
        seeds: Sequence[Address],
        now: float,
    ) -> None:
        self._advance_clock(now)
        self.mesh.adopt_converged(members, manifests, seeds, now)
        self._collect(now)

    def restore(
        self,
        manifests: Iterable[Manifest],
        records: Iterable[LedgerRecord],
        members: Iterable[MemberRumor],
        now: float,
    ) -> list[Address]:
        """Load persisted state before membership knows anyone; return the addresses of
        the remembered members (not ourselves) to contact besides the seeds.

        Which records and manifests are kept is decided by :meth:`MeshCore.restore`: those
        of this node and of the persisted members."""
        self._advance_clock(now)
        rumors = list(members)
        self.mesh.restore(manifests, records, [r.node for r in rumors], now)
        extra: list[Address] = []
        for rumor in rumors:
            host, port = getattr(rumor, "host", None), getattr(rumor, "port", None)
            if rumor.node != self.node_id and host is not None:
                extra.append((str(host), int(port or 0)))
        self._collect(now)
        return extra

    def leave(self, now: float) -> None:
        """Leave the mesh gracefully; outcomes not signed yet are signed first."""
        self._advance_clock(now)
        self._closing = True
        self.trust.sign(now)
        self.mesh.leave(now)
        self._collect(now)

    def publish_manifest(self, manifest: Manifest, now: float) -> None:
        self._advance_clock(now)
        self.mesh.publish_manifest(manifest, now)
        self._collect(now)

    def manifest_fetched(self, manifest: Manifest, now: float) -> bool:
        self._advance_clock(now)
        applied = self.mesh.manifest_fetched(manifest, now)
        self._collect(now)
        return applied

    def fetch_answered(
        self, fetch: FetchManifest, source: Address, manifest: Manifest | None, now: float
    ) -> FetchStep:
        """One source of ``fetch`` answered (see :meth:`MeshCore.fetch_answered`): the
        step says which source to try next, or that the fetch is over."""
        self._advance_clock(now)
        step = self.mesh.fetch_answered(fetch, source, manifest, now)
        self._collect(now)
        return step

    def fetch_abandoned(self, fetch: FetchManifest, now: float) -> None:
        """The shell gave ``fetch`` up before it was over; its slot is free."""
        self._advance_clock(now)
        self.mesh.fetch_abandoned(fetch)
        self._collect(now)

    def push_pull_done(self, now: float) -> None:
        """A push-pull exchange the shell started ended (whatever its outcome), or will
        not run: its slot is free for the next one waiting."""
        self._advance_clock(now)
        self.mesh.push_pull_done()
        self._collect(now)

    def apply_records(self, records: Iterable[LedgerRecord], now: float) -> int:
        self._advance_clock(now)
        if self.admission is not None:
            records = [r for r in records if self._news_admitted(r, now)]
        applied = self.mesh.apply_records(records, now)
        self._collect(now)
        return applied

    def tcp_ping_done(self, node: str, seq: int, ack: Ack | None, now: float) -> str:
        """The TCP fallback ping of a ``StartTcpPing`` ended (``ack``: the ``Ack`` from
        an envelope signed by ``node``, else None); returns the result counted (see
        :meth:`Membership.tcp_ping_done`)."""
        self._advance_clock(now)
        result = self.mesh.membership.tcp_ping_done(node, seq, ack, now)
        self._collect(now)
        return result

    def answer_tcp_ping(self, sender: str, ping: Ping, now: float) -> Ack | None:
        """Our ``Ack`` to ``sender``'s ``Ping`` over TCP, or None: with a mesh authority
        the sender must be admitted, and the ping must name us."""
        self._advance_clock(now)
        if not self.admits(sender, now):
            self.mesh.membership.counters["tcp_pings_refused"] += 1
            return None
        return self.mesh.membership.answer_tcp_ping(ping)

    def push_pull_request(self, join: bool) -> PushPull:
        """Our first leg; with a mesh authority it carries every certificate we hold (ours
        first) and every revocation we keep."""
        return self._with_credentials(self.mesh.push_pull_request(join))

    def handle_push_pull(self, sender: str, request: PushPull, now: float) -> PushPull:
        """Answer a peer's first leg. With a mesh authority, a sender that is not admitted
        (its own certificate, first in the leg, is the only one checked for it) gets an
        empty answer and changes nothing."""
        self._advance_clock(now)
        if self.admission is not None:
            filtered = self._admit_state(sender, request, now)
            if filtered is None:
                return PushPull(join=False, members=(), manifests=(), ledger=())
            request = filtered
        reply = self._with_credentials(self.mesh.handle_push_pull(sender, request, now))
        self._collect(now)
        return reply

    def finish_push_pull(
        self, responder: str, reply: PushPull, addr: Address, now: float
    ) -> list[LedgerRecord]:
        self._advance_clock(now)
        if self.admission is not None:
            filtered = self._admit_state(responder, reply, now)
            if filtered is None:
                self._collect(now)
                return []
            reply = filtered
        missing = self.mesh.finish_push_pull(responder, reply, addr, now)
        self._collect(now)
        return missing

    # ------------------------------------------------------------------ admission

    def admits(self, node_id: str, now: float) -> bool:
        """May ``node_id`` take part in the mesh? Always True without a mesh authority;
        with one, it must hold a certificate valid at ``now`` and not revoked."""
        return self.admission is None or self.admission.admits(node_id, now)

    def roles_of(self, node_id: str) -> frozenset[str] | None:
        """The roles ``node_id``'s certificate grants: None when no mesh authority is
        configured, an empty set for a node that is not admitted."""
        if self.admission is None:
            return None
        return self.admission.roles_of(node_id, self._now)

    def rejoin_problem(self, sender: str, request: RejoinRequest, now: float) -> str | None:
        """Why a node's rejoin request must not be answered with our keyring (None: it
        may; see :meth:`~meshnode.core.admission.Admission.rejoin_problem`). Without a
        mesh authority nobody may rejoin this way."""
        self._advance_clock(now)
        if self.admission is None:
            return "this node runs without a mesh authority"
        return self.admission.rejoin_problem(
            sender, request, now, self.config.authority_rejoin_skew
        )

    def offer_certificate(self, signed: SignedCertificate, now: float) -> bool:
        """A certificate handed to us outside a packet (e.g. by an exchange); True if it
        was new and valid (it is then gossiped)."""
        self._advance_clock(now)
        if self.admission is None:
            return False
        cert = self.admission.offer(signed, now)
        if cert is not None:
            self._spread_certificate(signed, cert.node_id)
        self._collect(now)
        return cert is not None

    def revoke(self, signed: SignedRevocation, now: float) -> bool:
        """A revocation signed by the mesh authority (from gossip, push-pull, or the
        operator through the API). A new one is gossiped, and every member it revokes is
        expelled everywhere: treated as left, its channels closed, its tasks failed.
        Returns True if it was new and valid."""
        self._advance_clock(now)
        if self.admission is None:
            return False
        revocation, revoked = self.admission.revoke(signed, now)
        if revocation is not None:
            self.mesh.membership.broadcast(signed, ("revocation", revocation.key), admission=True)
        for node in revoked:
            self._expel(node, "certificate revoked", now)
        self._collect(now)
        return revocation is not None

    def _expel(self, node: str, reason: str, now: float) -> None:
        if node == self.node_id:
            return  # our own certificate: peers drop us; we keep running until stopped
        self.mesh.membership.expel(node, now)
        self._effects.append(CloseChannels(node, reason))
        self.peer_failed(node, reason, now)

    def _spread_certificate(self, signed: SignedCertificate, node: str) -> None:
        self.mesh.membership.broadcast(signed, ("certificate", node), admission=True)
        self._release_awaiting(node)

    def _is_live_member(self, node: str) -> bool:
        member = self.mesh.membership.member(node)
        return member is not None and member.state in (MemberState.ALIVE, MemberState.SUSPECT)

    def _with_credentials(self, state: PushPull) -> PushPull:
        if self.admission is None:
            return state
        return dataclasses.replace(
            state,
            certificates=self.admission.certificates(self._now),
            revocations=self.admission.revocations(self._now),
        )

    def _credentials(
        self,
        sender: str,
        certificates: Iterable[SignedCertificate],
        revocations: Iterable[SignedRevocation],
        now: float,
        *,
        packet: bool,
    ) -> bool:
        """Take in certificates and revocations from ``sender``; return whether ``sender``
        is admitted afterwards. From a sender not admitted yet, certificates are checked
        only until its own is found valid (one signature check at most before that: a
        stranger's packet costs one check), and its revocations are not looked at; once
        its own certificate admits it, the rest count as a member's. From an admitted
        sender, at most :data:`MAX_CERTIFICATE_CHECKS_PER_PACKET` in a ``packet`` (a
        push-pull leg is not capped: it carries the whole mesh's certificates, each
        checked once ever), and never past the first forgery."""
        admission = self.admission
        assert admission is not None
        admitted = admission.admits(sender, now)
        full_budget = MAX_CERTIFICATE_CHECKS_PER_PACKET if packet else math.inf
        budget = full_budget if admitted else 1
        counters = admission.counters
        for signed in certificates:
            if admission.knows(signed):
                continue
            if budget <= 0:
                break
            budget -= 1
            invalid = counters["certificates_invalid"]
            cert = admission.offer(signed, now)
            if cert is not None:
                self._spread_certificate(signed, cert.node_id)
                if not admitted and cert.node_id == sender:
                    # The sender's own certificate admitted it: what it passes on is
                    # checked like any member's (a seed's push-pull reply carries the
                    # whole mesh's certificates after its own).
                    admitted = True
                    budget = full_budget - 1
            elif counters["certificates_invalid"] != invalid:
                break  # a forgery: an honest peer only passes on what the authority signed
        if not admitted:
            admitted = admission.admits(sender, now)
        if admitted:
            for revocation in revocations:
                self.revoke(revocation, now)
        return admitted

    def _admit_envelope(
        self, sender: str, messages: Sequence[object], addr: Address, now: float
    ) -> list[object] | None:
        certificates = [m for m in messages if isinstance(m, SignedCertificate)]
        revocations = [m for m in messages if isinstance(m, SignedRevocation)]
        if not self._credentials(sender, certificates, revocations, now, packet=True):
            assert self.admission is not None
            self.admission.counters["unadmitted_dropped"] += 1
            self._collect(now)
            return None
        kept = []
        for m in messages:
            if type(m) is SignedCertificate or type(m) is SignedRevocation:
                continue
            if self._news_admitted(m, now):
                kept.append(m)
            else:
                self._await_certificate(sender, m, addr)
        return kept

    def _await_certificate(self, sender: str, message: object, addr: Address) -> None:
        """Hold ``message`` (from admitted ``sender``) about a node whose certificate we
        have not seen yet, to take it in once the certificate arrives: in a join the
        newcomer's ``Alive`` and its certificate spread side by side, and the ``Alive``
        that arrives first would otherwise be lost until anti-entropy. Bounded: at most
        :data:`MAX_NODES_AWAITING_CERTIFICATE` nodes (the oldest dropped first) and
        :data:`MAX_NEWS_PER_NODE_AWAITING` messages each (the newest kept). A node that is
        revoked or whose certificate expired is not waited for."""
        admission = self.admission
        assert admission is not None
        node = self._unadmitted_subject(message)
        if node is None or admission.certificate(node) is not None or admission.is_revoked(node):
            return
        waiting = self._awaiting_certificate
        held = waiting.pop(node, None)
        if held is None:
            if len(waiting) >= MAX_NODES_AWAITING_CERTIFICATE:
                del waiting[next(iter(waiting))]
                admission.counters["news_awaiting_dropped"] += 1
            held = []
        held.append((sender, message, addr))
        del held[:-MAX_NEWS_PER_NODE_AWAITING]
        waiting[node] = held
        admission.counters["news_awaiting_certificate"] += 1

    def _unadmitted_subject(self, message: object) -> str | None:
        """The node ``message`` speaks for or about that is not admitted (None: another
        kind of message, or more than one such node)."""
        cls = type(message)
        if cls is Alive or cls is Leave or cls is ManifestRumor:
            nodes: tuple[str, ...] = (message.node,)  # type: ignore[attr-defined]
        elif cls is Suspect or cls is Dead:
            nodes = (message.node, message.accuser)  # type: ignore[attr-defined]
        elif cls is LedgerRecord:
            nodes = (message.observer, message.subject)  # type: ignore[attr-defined]
        else:
            return None
        missing = [n for n in nodes if not self.admits(n, self._now)]
        return missing[0] if len(missing) == 1 else None

    def _release_awaiting(self, node: str) -> None:
        """``node``'s certificate was just accepted: take in the news held for it."""
        held = self._awaiting_certificate.pop(node, None)
        if not held:
            return
        now = self._now
        for sender, message, addr in held:
            if self.admits(sender, now) and self._news_admitted(message, now):
                self.mesh.receive(sender, [message], addr, now)

    def _admit_state(self, sender: str, state: PushPull, now: float) -> PushPull | None:
        """``state`` from ``sender`` with what is not admitted taken out, or None when the
        sender itself is not admitted."""
        assert self.admission is not None
        if not self._credentials(sender, state.certificates, state.revocations, now, packet=False):
            self.admission.counters["unadmitted_dropped"] += 1
            return None
        ok = self._news_admitted
        return dataclasses.replace(
            state,
            members=tuple(m for m in state.members if ok(m, now)),
            manifests=tuple(m for m in state.manifests if ok(m, now)),
            ledger=tuple(d for d in state.ledger if self.admits(d.observer, now)),
            records=tuple(r for r in state.records if ok(r, now)),
            certificates=(),
            revocations=(),
        )

    def _news_admitted(self, message: object, now: float) -> bool:
        """May this message from an admitted sender be taken in: every node it speaks for
        or about must be admitted too."""
        cls = type(message)
        admits = self.admits
        if cls is Alive or cls is Leave or cls is ManifestRumor:
            ok = admits(message.node, now)  # type: ignore[attr-defined]
        elif cls is Suspect or cls is Dead:
            ok = admits(message.node, now) and admits(message.accuser, now)  # type: ignore[attr-defined]
        elif cls is LedgerRecord:
            ok = admits(message.observer, now) and admits(message.subject, now)  # type: ignore[attr-defined]
        elif cls is PingReq:
            ok = admits(message.target, now)  # type: ignore[attr-defined]
        else:
            return True
        if not ok:
            assert self.admission is not None
            self.admission.counters["unadmitted_news"] += 1
        return ok

    def _expire_certificates(self, now: float) -> None:
        assert self.admission is not None
        due = self.admission.next_expiry()
        if due is None or now < due:
            return
        for node in self.admission.prune(now):
            self._expel(node, "certificate expired", now)

    # ------------------------------------------------------------------ trust

    def record_outcome(self, subject: str, quality: float, now: float) -> LedgerRecord | None:
        """Fold one scored outcome into our opinion of ``subject`` (see
        :class:`~meshnode.core.trust.TrustPolicy`); returns the record signed for it alone,
        if it was signed at once. Our own id is ignored (a node never grades itself)."""
        self._advance_clock(now)
        busy = self.waiting_on(subject) and not self._closing
        record = self.trust.record_outcome(subject, quality, now, busy=busy)
        self._collect(now)
        return record

    def sign_opinions(self, now: float) -> None:
        """Sign every unsigned opinion now (unless an own record is not durable yet)."""
        self._advance_clock(now)
        self.trust.sign(now)
        self._collect(now)

    def durable_failed(self, records: Iterable[LedgerRecord]) -> None:
        """The shell could not commit ``records`` of a ``PersistRecords(durable=True)``:
        no further opinion is signed until :meth:`durable_written`."""
        self.trust.durable_failed(records)

    def durable_written(self, now: float) -> None:
        """The records of :attr:`durable_pending` are committed: sign what waited."""
        self._advance_clock(now)
        self.trust.durable_written(now, sign=not self._closing)
        self._collect(now)

    @property
    def durable_pending(self) -> tuple[LedgerRecord, ...]:
        """Own records whose durable write failed; the shell retries them."""
        return self.trust.durable_pending

    def opinion(self, subject: str) -> tuple[float, int]:
        return self.trust.opinion(subject)

    def direct_experience(self) -> dict[str, float]:
        return self.trust.direct_experience()

    def trust_view(self, now: float) -> dict[str, float]:
        return self.trust.view(now)

    # ------------------------------------------------------------------ tasks: provider

    def set_capabilities(self, capabilities: Mapping[str, Capability]) -> None:
        """What this node serves from now on (tasks already admitted keep running)."""
        self.provider.set_capabilities(capabilities)

    def set_policies(self, policies: Mapping[str, CapabilityPolicy]) -> None:
        """Who may call each capability, and how much (see
        :mod:`meshnode.core.authorization`); a capability without one is members only."""
        self.provider.set_policies(policies)

    # ------------------------------------------------------------------ requester facts

    def is_member(self, node_id: str) -> bool:
        """Whether ``node_id`` is a current member of our view: alive or suspect (a
        stranger, or a member we hold dead or departed, is not)."""
        member = self.mesh.membership.member(node_id)
        return member is not None and member.state in (MemberState.ALIVE, MemberState.SUSPECT)

    def trust_of(self, node_id: str, now: float) -> float:
        """Our trust view of ``node_id`` (what routing uses); a peer nobody rated has
        :data:`~meshnode.core.router.DEFAULT_TRUST`."""
        return float(self.trust.view(now).get(node_id, DEFAULT_TRUST))

    def task_message(self, sender: str, message: Message, now: float) -> None:
        """A task message from ``sender`` (the verified peer of the channel it came on).
        Requests, confirms and cancels go to the provider; responses and results to the
        delegation they name; anything else is ignored. With a mesh authority, nothing
        from a sender that is not admitted is taken."""
        self._advance_clock(now)
        if self.admission is not None and not self.admission.admits(sender, now):
            self.admission.counters["unadmitted_dropped"] += 1
            return
        if isinstance(message, TaskResponse | TaskResult):
            delegation = self._delegations.get(message.task_id)
            if delegation is not None:
                core = delegation.core
                if isinstance(message, TaskResponse):
                    effects = core.on_response(sender, message, now)
                else:
                    effects = core.on_result(sender, message, now)
                self._apply(message.task_id, delegation, effects, now)
        elif isinstance(message, TaskRequest):
            decision = self.provider.on_request(sender, message, now)
            if decision.start is not None:
                # First, so that a handler that finishes at once shares the reply's frame.
                self._run(decision.start)
            self._send(sender, message.task_id, decision.response)
            self.metrics.task_answered(decision.response.status, decision.response.reason)
            if decision.result is not None:
                self._send(sender, message.task_id, decision.result)
            self._provider_changed(now)
        elif isinstance(message, TaskConfirm):
            answer = self.provider.on_confirm(sender, message, now)
            if answer is not None:
                self._send(sender, message.task_id, answer)
            self._provider_changed(now)
        elif isinstance(message, TaskCancel):
            if self.provider.on_cancel(sender, message, now) is CancelOutcome.STOP_HANDLER:
                self._effects.append(StopHandler(sender, message.task_id))
            self._provider_changed(now)
        self._collect(now)

    def handler_done(
        self,
        requester: str,
        task_id: str,
        now: float,
        *,
        output: Any = None,
        error: str | None = None,
        invalid_input: bool = False,
    ) -> None:
        """The handler of ``requester``'s task ended: with ``output``, or failed with
        ``error``; ``invalid_input`` says it refused its input (``error`` says why), which
        the requester does not hold against this node. The signed result is sent unless
        the task already ended (cancelled, or its deadline passed and the core answered)."""
        self._advance_clock(now)
        ok = error is None and not invalid_input
        result = self.provider.complete(
            task_id, ok, output, error or "", now, invalid_input=invalid_input
        )
        if result is not None:
            self.task_counters["tasks_served"] += 1
            self.metrics.task_finished(result.ok)
            self._send(requester, task_id, result)
        self._provider_changed(now)
        self._collect(now)

    def _provider_tick(self, now: float) -> None:
        for event in self.provider.tick(now):
            if event.was_running:
                self._effects.append(StopHandler(event.requester, event.task_id))
            self.metrics.task_finished(event.result.ok)
            self._send(event.requester, event.task_id, event.result)
        self._provider_changed(now)

    def _provider_changed(self, now: float) -> None:
        """After any provider-side event: start what may start, publish the load."""
        for start in self.provider.start_ready(now):
            self._run(start)
        self._set_load()

    def _run(self, start: StartTask) -> None:
        request = start.request
        self._effects.append(
            RunHandler(
                start.requester,
                request.task_id,
                request.capability,
                request.input,
                start.deadline_at,
                request.trace_id,
            )
        )

    # ------------------------------------------------------------------ tasks: requester

    def start_delegation(
        self,
        capability: str,
        task_input: Any,
        candidates: Sequence[str],
        now: float,
        *,
        deadline_s: float | None = None,
        inherited_deadline: float | None = None,
        max_cost_usd: float | None = None,
        trace_id: str = "",
        task_id: str | None = None,
        expectation: Expectation | None = None,
    ) -> str:
        """Start a delegation of ``capability`` to ``candidates`` (node ids, in rank order;
        see :func:`meshnode.core.delegation.rank_candidates`); returns its task id. It ends
        with one :class:`~meshnode.core.effects.DelegationFinished`, possibly at once.

        ``deadline_s`` (default ``NodeConfig.default_deadline_s``) is the whole time it may
        take; ``inherited_deadline`` (UNIX time) is the deadline of the task being served,
        if any, and this delegation never asks for more than is left of it. ``task_id``
        defaults to 128 random bits from a stream derived from the core's ``rng`` (the
        runtime passes its own, from the operating system). ``expectation`` is what the
        caller expects of the output (else the one registered on :attr:`evaluator` for the
        capability, else the result is unscored unless a judge is set); an output that
        fails its schema, or the provider's own declared schema, is refused and the next
        candidate is tried.

        Raises ``ValueError`` for a deadline that is not a positive number, and
        ``protocol.LocalProtocolError`` for an input that cannot be encoded; nothing
        changes then."""
        if deadline_s is None:
            deadline_s = self.config.default_deadline_s
        problem = deadline_problem(deadline_s)
        if problem is not None:
            raise ValueError(problem)
        if task_id is None:
            task_id = self._new_task_id()
        elif task_id in self._delegations:
            raise ValueError(f"delegation {task_id} is already in flight")
        # The input must travel: refuse it before anything is asked of any peer.
        message_to_wire(
            TaskRequest(
                task_id=task_id,
                capability=capability,
                input=task_input,
                deadline_ms=1,
                budget_usd=max_cost_usd,
                trace_id=trace_id or task_id[:16],
            )
        )
        self._advance_clock(now)
        deadline_s = inherit_deadline(deadline_s, inherited_deadline, now)
        reason = None
        if self._closing:
            reason = "node is closing"
        elif deadline_s <= 0:
            reason = "no time left for this delegation"
        elif len(self._delegations) >= self.max_delegations:
            self.task_counters["delegations_refused_cap"] += 1
            reason = "too many delegations in flight"
        if reason is not None:
            self.task_log.started(task_id, capability, trace_id or task_id[:16], now)
            self._finish(task_id, capability, Failed(reason, (), 0.0), None)
            self._collect(now)
            return task_id
        core = RequesterCore(
            self.node_id,
            capability,
            task_input,
            list(candidates),
            task_id=task_id,
            verifier=self.verifier,
            deadline_s=deadline_s,
            budget_usd=max_cost_usd,
            trace_id=trace_id or task_id[:16],
            allow=self.breakers.allow,
            attempt_deadline_ms=attempt_deadline_ms(deadline_s),
            counter_ratio=COUNTER_RATIO,
            check_output=lambda result: self.evaluator.output_refusal(
                self.provider_capability(result.provider, capability),
                capability,
                result.output,
                expectation,
            ),
            input_claim=lambda node: false_input_claim(
                self.provider_capability(node, capability), task_input
            ),
        )
        delegation = _Delegation(core, capability, task_input, expectation)
        self._delegations[task_id] = delegation
        self.task_log.started(task_id, capability, core.trace_id, now)
        self._apply(task_id, delegation, core.start(now), now)
        self._set_load()
        self._collect(now)
        return task_id

    def cancel_delegation(
        self, task_id: str, now: float, reason: str = "cancelled by caller"
    ) -> None:
        """The caller gave up on delegation ``task_id`` (nothing happens if it ended)."""
        self._advance_clock(now)
        delegation = self._delegations.get(task_id)
        if delegation is not None:
            self._apply(task_id, delegation, delegation.core.cancel(now, reason), now)
        self._collect(now)

    def peer_failed(self, peer: str, reason: str, now: float) -> None:
        """The task channel to ``peer`` dropped, or the peer is confirmed gone: every
        delegation waiting on it moves on, and its running tasks here are stopped (nobody
        is left to receive their results)."""
        self._advance_clock(now)
        self._checks.pop(peer, None)
        for task_id in [t for t, d in self._delegations.items() if d.core.current_node == peer]:
            delegation = self._delegations.get(task_id)
            if delegation is not None:
                effects = delegation.core.on_peer_failed(peer, reason, now)
                self._apply(task_id, delegation, effects, now)
        stopped = False
        for requester, task_id in self.provider.running_tasks():
            if requester != peer:
                continue
            outcome = self.provider.on_cancel(peer, TaskCancel(task_id, reason), now)
            if outcome is CancelOutcome.STOP_HANDLER:
                self._effects.append(StopHandler(peer, task_id))
            stopped = True
        if stopped:
            self._provider_changed(now)
        self._collect(now)

    def send_failed(self, node: str, task_id: str, reason: str, now: float) -> None:
        """A :class:`~meshnode.core.effects.SendTask` to ``node`` could not be sent (no
        channel could be opened). Our delegation ``task_id`` moves on if it was waiting on
        ``node``; a provider's answer that cannot be sent is simply lost (the requester's
        timeouts cover it)."""
        self._advance_clock(now)
        delegation = self._delegations.get(task_id)
        if delegation is not None and delegation.core.current_node == node:
            self._apply(task_id, delegation, delegation.core.on_peer_failed(node, reason, now), now)
        self._collect(now)

    def close_tasks(self, now: float) -> None:
        """The node is closing: every delegation is cancelled (``node closing``) and new
        ones fail at once; outcomes not signed yet are signed."""
        self._advance_clock(now)
        self._closing = True
        self._checks.clear()
        for task_id in list(self._delegations):
            delegation = self._delegations.get(task_id)
            if delegation is not None:
                self._apply(task_id, delegation, delegation.core.cancel(now, "node closing"), now)
        self.trust.sign(now)
        self._collect(now)

    # ------------------------------------------------------------------ liveness checks

    def _check(self, peer: str, now: float) -> None:
        """``peer`` was declared dead while tasks with it are live: ask the shell to ping
        its task channel (once while a check is pending)."""
        if peer in self._checks:
            return
        token = self._next_token
        self._next_token += 1
        self._checks[peer] = (token, now + self.config.task_liveness_timeout)
        self._effects.append(CheckPeer(peer, token))

    def peer_answered(self, peer: str, token: int, now: float) -> bool:
        """A ``ChannelPong(token)`` came from ``peer`` on its (authenticated) task channel.
        It refutes the death only if it answers the pending check's ping before its
        deadline; any other pong is ignored (returns False)."""
        self._advance_clock(now)
        pending = self._checks.get(peer)
        if pending is None or pending[0] != token or now > pending[1]:
            return False
        del self._checks[peer]
        self.task_counters["dead_refuted_on_channel"] += 1
        return True

    def check_unsent(self, peer: str, now: float) -> None:
        """The shell has no task channel open to ``peer`` to ping: nothing can refute the
        death, so its tasks fail now."""
        self._advance_clock(now)
        if self._checks.pop(peer, None) is not None:
            self.task_counters["dead_without_channel"] += 1
            self.peer_failed(peer, "member dead", now)
        self._collect(now)

    @property
    def checks(self) -> dict[str, float]:
        """Peers whose liveness check is pending, with its deadline."""
        return {peer: at for peer, (_, at) in self._checks.items()}

    def _expire_checks(self, now: float) -> None:
        for peer in [p for p, (_, at) in self._checks.items() if now >= at]:
            del self._checks[peer]
            self.task_counters["dead_confirmed_on_channel"] += 1
            reason = "member dead; silent on its task channel"
            self._effects.append(CloseChannels(peer, reason))
            self.peer_failed(peer, reason, now)

    def route(
        self,
        hits: Iterable[tuple[RoutableEntry, float]],
        now: float,
        *,
        min_trust: float = 0.0,
        max_cost_usd: float | None = None,
        max_latency_ms: float | None = None,
        tags: Iterable[str] = (),
        capability_name: str | None = None,
        name_only: bool = False,
        top_k: int = DEFAULT_TOP_K,
        lexical: Mapping[tuple[str, str], float] | None = None,
        max_rtt_ms: float | None = None,
    ) -> list[ScoredCandidate]:
        """Rank the index's ``hits`` for a query: only members membership holds alive or
        suspect (not ourselves; a suspect one, which may be down, ranks after every alive
        one rather than vanishing from the answer while its suspicion runs), with the load
        they advertised, our trust view and our open circuits
        (see :func:`meshnode.core.router.rank`); ``lexical`` is each hit's normalised BM25
        score by (node id, capability name). Distance is :meth:`rtt_ms` per node;
        machine pressure the one each member advertised; ``max_rtt_ms`` drops nodes
        farther (or of unknown distance)."""
        membership = self.mesh.membership
        alive: list[tuple[RoutableEntry, float]] = []
        load: dict[str, tuple[int, int]] = {}
        rtts: dict[str, float] = {}
        pressure: dict[str, float] = {}
        ages = self.member_ages
        me = self.node_id
        member_of = membership.member
        estimated_rtt = membership.estimated_rtt
        manifests = self.mesh.manifests
        suspect: set[str] = set()
        seen_alive = ages.seen_alive
        alive_state, suspect_state = MemberState.ALIVE, MemberState.SUSPECT
        for entry, similarity in hits:
            node = entry.node_id
            member = member_of(node)
            if node == me or member is None:
                continue
            state = member.state
            if state is not alive_state:
                if state is not suspect_state:
                    continue
                suspect.add(node)  # maybe down: ranked after every alive member
            seen_alive(node, now)  # a member adopted without an event counts from now
            alive.append((entry, similarity))
            if member.load is not None:
                manifest = manifests.get(node)
                if manifest is not None:  # (in flight, most at once): LoadInfo's fields
                    load[node] = (member.load, manifest.max_concurrent_tasks)
            # rtt_ms, inlined (this loop runs over every hit of every query): the
            # coordinate estimate, else the last direct probe's.
            estimate = estimated_rtt(node)
            if estimate is not None:
                rtts[node] = estimate * 1000.0
            elif member.rtt is not None:
                rtts[node] = member.rtt * 1000.0
            if member.pressure is not None:
                pressure[node] = max(member.pressure) / PRESSURE_MAX
        config = self.config
        if len(self._tie_keys) > MAX_TIE_KEYS:
            self._tie_keys.clear()
        return rank(
            alive,
            trust=self.trust.view(now),
            load=load,
            open_circuits=self.breakers.open_nodes(now),
            suspect=suspect,
            min_trust=min_trust,
            max_cost_usd=max_cost_usd,
            max_latency_ms=max_latency_ms,
            tags=tuple(tags),
            capability_name=capability_name,
            name_only=name_only,
            top_k=top_k,
            weights=self.config.routing_weights,
            member_since=ages.known,
            tie_secret=self.tie_secret,
            tie_keys=self._tie_keys,
            capability_trust=self._capability_trust(alive, now),
            lexical=lexical,
            rtt_ms=rtts,
            max_rtt_ms=max_rtt_ms,
            pressure=pressure,
            latency_weight=config.routing_latency_weight,
            latency_reference_ms=config.routing_latency_reference_ms,
            pressure_weight=config.routing_pressure_weight,
        )

    def rtt_ms(self, node_id: str) -> float | None:
        """The round trip to ``node_id`` routing uses, in ms: the coordinate estimate
        (:meth:`estimated_rtt_ms`) when there is one, else the last direct probe's, else
        None."""
        estimate = self.estimated_rtt_ms(node_id)
        if estimate is not None:
            return estimate
        member = self.mesh.membership.member(node_id)
        if member is None or member.rtt is None:
            return None
        return member.rtt * 1000.0

    def set_pressure(self, cpu: int, memory: int) -> None:
        """This machine's pressure (percent of CPU and of memory in use, 0..100 each),
        measured by the shell; sent beside our acks. A ValueError for anything else."""
        self.mesh.membership.set_pressure(cpu, memory)

    def _capability_trust(
        self, hits: Sequence[tuple[RoutableEntry, float]], now: float
    ) -> dict[tuple[str, str], float]:
        """Our trust per (node, capability) among ``hits``, where we have experience of
        that capability (see :meth:`TrustPolicy.capability_view`)."""
        out: dict[tuple[str, str], float] = {}
        views: dict[str, dict[str, float]] = {}
        for entry, _ in hits:
            name = entry.capability.name
            view = views.get(name)
            if view is None:
                view = views[name] = self.trust.capability_view(now, name)
            score = view.get(entry.node_id)
            if score is not None:
                out[(entry.node_id, name)] = score
        return out

    @property
    def tie_secret(self) -> bytes:
        """The secret that keys routing's last tie-break (:func:`~meshnode.core.router.tie_key`):
        this node's signature of a fixed label, so it is stable across restarts, needs no
        randomness and nobody else can compute it."""
        if self._tie_secret is None:
            self._tie_secret = self.signer.sign(TIE_SECRET_LABEL)
        return self._tie_secret

    def provider_capability(self, provider: str, name: str) -> Capability | None:
        """``provider``'s capability ``name`` from the manifest we hold, if any."""
        manifest = self.mesh.manifests.get(provider)
        return manifest.capability(name) if manifest else None

    # ------------------------------------------------------------------ internals

    def _new_task_id(self) -> str:
        if self._task_rng is None:
            # Derived on first use, so that a node that never delegates draws nothing extra
            # from the stream membership uses.
            self._task_rng = random.Random(self._rng.getrandbits(64))
        while True:
            task_id = f"{self._task_rng.getrandbits(128):032x}"
            if task_id not in self._delegations:
                return task_id

    def _requester_deadline(self) -> float | None:
        """The earliest timer of every delegation, recomputed only after one changed (every
        requester core call goes through :meth:`_apply`), so that ``next_deadline`` and
        ``tick`` cost O(1) between task inputs however many delegations are in flight."""
        if self._requester_stale:
            due: float | None = None
            for d in self._delegations.values():
                at = d.core.next_deadline()
                if at is not None and (due is None or at < due):
                    due = at
            self._requester_due = due
            self._requester_stale = False
        return self._requester_due

    def _apply(
        self, task_id: str, delegation: _Delegation, effects: list[RequesterEffect], now: float
    ) -> None:
        """Turn one requester core's effects into node effects and consequences."""
        self._requester_stale = True
        for effect in effects:
            if isinstance(effect, SendRequest):
                self.task_log.trying(task_id, effect.node)
                self._send(effect.node, task_id, effect.request)
            elif isinstance(effect, SendConfirm):
                self._send(effect.node, task_id, effect.confirm)
            elif isinstance(effect, SendCancel):
                self._send(effect.node, task_id, effect.cancel)
            elif isinstance(effect, AttemptEnded):
                consequence = attempt_consequence(effect.attempt)
                if consequence.verdict is not None:
                    self.breakers.record(effect.attempt.node, consequence.verdict, now)
                if consequence.quality is not None:
                    self.record_outcome(effect.attempt.node, consequence.quality, now)
                    self.trust.record_capability_outcome(
                        effect.attempt.node, delegation.capability, consequence.quality
                    )
            elif isinstance(effect, Done | Failed):
                self._delegations.pop(task_id, None)
                self._set_load()
                evaluation = (
                    self._score(delegation, effect, now) if isinstance(effect, Done) else None
                )
                self._finish(task_id, delegation.capability, effect, evaluation)

    def _score(self, delegation: _Delegation, done: Done, now: float) -> Evaluation:
        cap = self.provider_capability(done.provider, delegation.capability)
        delivered = bool(done.attempts) and done.attempts[-1].outcome is AttemptOutcome.DELIVERED
        evaluation = self.evaluator.evaluate(
            cap or delegation.capability,
            delegation.task_input,
            done.result,
            expectation=delegation.expectation,
            output_checked=delivered,  # check_output already passed it
        )
        consequence = result_consequence(evaluation)
        if consequence.verdict is TaskVerdict.SUCCESS:
            self.breakers.record_success(done.provider, now)
        else:
            self.breakers.record_failure(done.provider, now)
        if consequence.quality is not None:  # an unscored delivery moves no opinion
            self.record_outcome(done.provider, consequence.quality, now)
            self.trust.record_capability_outcome(
                done.provider, delegation.capability, consequence.quality
            )
        return evaluation

    def _finish(
        self,
        task_id: str,
        capability: str,
        outcome: Done | Failed,
        evaluation: Evaluation | None,
    ) -> None:
        ok = isinstance(outcome, Done)
        self.task_counters["delegations_ok" if ok else "delegations_failed"] += 1
        self.metrics.delegations.observe(outcome.elapsed_s)
        self.task_log.finished(
            task_id,
            ok=ok,
            provider=outcome.provider if isinstance(outcome, Done) else None,
            reason="" if isinstance(outcome, Done) else outcome.reason,
            attempts=len(outcome.attempts),
            quality=None if evaluation is None else evaluation.quality,
            now=self._now,
        )
        self._effects.append(DelegationFinished(task_id, capability, outcome, evaluation))

    def _send(self, node: str, task_id: str, message: Message) -> None:
        self._effects.append(SendTask(node, task_id, message))

    def _set_load(self) -> None:
        load = self.provider.in_flight + len(self._delegations)
        if load != self._load:
            self._load = load
            self.mesh.membership.set_load(load)

    def _advance_clock(self, now: float) -> None:
        if now > self._now:
            self._now = now

    def _collect(self, now: float) -> None:
        """Move the mesh's effects to ours, in order, reacting to departures of peers we
        have live tasks with."""
        for effect in self.mesh.take_effects():
            self._effects.append(effect)
            if isinstance(effect, MemberChanged) and effect.node_id != self.node_id:
                self.member_ages.observe(effect.node_id, effect.new_state, now)
                if effect.kind is MemberEvent.LEFT:
                    self.peer_failed(effect.node_id, "member left", now)
                elif effect.kind is MemberEvent.DEAD and self._has_tasks_with(effect.node_id):
                    self._check(effect.node_id, now)

    def _has_tasks_with(self, peer: str) -> bool:
        if self.waiting_on(peer):
            return True
        return any(requester == peer for requester, _ in self.provider.running_tasks())

    def __repr__(self) -> str:
        return (
            f"<NodeCore {self.mesh!r} delegations={len(self._delegations)} "
            f"provider={self.provider!r}>"
        )


def _due(core: RequesterCore, now: float) -> bool:
    deadline = core.next_deadline()
    return deadline is not None and now >= deadline
