"""Byzantine members in the simulator: real keys, adversarial behaviour, outside judges.

Theory of operation
-------------------
A Byzantine node is an ordinary simulated host (:class:`~simulations.cluster.SimNode`): it
joins with its own key through the seeds and runs a real ``NodeCore``, so the honest nodes
admit it as a member, probe it and gossip with it, exactly as they would a compromised
member of a real mesh. Beside its core, an :class:`Attacker` writes to the same "socket"
(:meth:`Cluster.inject_datagram`, :meth:`Cluster.inject_push_pull`): signed traffic built
with the project's own ``protocol`` package, in bursts every :attr:`AttackPlan.interval`
seconds between :attr:`AttackPlan.start` and :attr:`AttackPlan.stop`. Four attacks
(:data:`ATTACKS`):

``accuse``
    ``Suspect`` and ``Dead`` about honest members, signed with the attacker's own key, at
    the incarnation it holds for the victim, one above, far above and ``2**64 - 1``
    (:data:`INCARNATION_OFFSETS`), by gossip to a few honest nodes and inside a push-pull
    snapshot.
``fake-members``
    Fresh identities (keys derived from the run seed), each with a self-signed ``Alive``
    pointing at an address where nobody listens: :attr:`AttackPlan.fakes_per_burst` new
    ones per burst, up to :attr:`AttackPlan.fake_members` in all, pushed by gossip to a
    few honest nodes, and every one made so far in a push-pull to one honest node.
``ledger-flood``
    Records from fresh observer keys (each key signs one opinion of an honest node), and
    the attacker's own records about many subjects (fresh ids), signed through its own
    ledger so that their sequence numbers never clash with its core's (no equivocation),
    by gossip and in the records of a push-pull.
``replay``
    Everything honest the attacker's process received (its tap on the cluster) is kept:
    the last :data:`CAPTURE_PACKETS` packets as delivered, the first ``Alive`` of each
    honest member (the oldest incarnation it saw) and the first
    :data:`CAPTURE_RECORDS` ledger records. Each burst re-sends captured packets, under
    their original sender, to random honest nodes; and the old ``Alive`` rumors and
    records by gossip and push-pull.

Determinism: every choice comes from ``derive_rng(seed, "byzantine", slot)``; fresh keys
from ``derive_seed(seed, "byzantine", slot, kind, i)``; honest targets are listed by slot;
nothing iterates over a set. The same run seed gives the same attack, packet for packet.

Judging from outside: :class:`Judge` listens to every ``MemberChanged`` effect (the
tracker's listener hook) and classifies it against the simulator's truth — a ``Dead``
signed by an honest node about an honest node whose process is live and which the accuser
reaches both ways, adopted by an honest observer, is a **false death** (the honest mesh
declared a healthy member dead; the Byzantine accusations honest nodes believed are
counted apart, as *dead views*); holding an honest subject at an incarnation it never
announced is an **inflated incarnation**. It
samples, every :data:`SAMPLE_EVERY` seconds, the member, record and manifest counts of
every honest node (the peaks are the figures), and decides when the honest nodes have
converged again (:meth:`Judge.honest_converged`).

What the hardened core is expected to guarantee is written down in one place,
:class:`Assumptions` (the caps the bounds are named after, and which member states count
as members), so that it can be adjusted when the core's rules change.
"""

from __future__ import annotations

import collections
import dataclasses
import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

from crdt.reputation import DEFAULT_MAX_SUBJECTS
from meshnode.core.effects import MemberChanged
from meshnode.core.membership import Member, MemberState
from protocol import (
    Alive,
    Dead,
    FastSigner,
    Identity,
    LedgerRecord,
    Message,
    PushPull,
    Signer,
    Suspect,
    decode,
    signing_bytes,
)
from protocol.limits import MAX_MESSAGES_PER_ENVELOPE
from simulations.cluster import Status
from simulations.engine import derive_rng, derive_seed

if TYPE_CHECKING:
    from simulations.cluster import Cluster, SimNode

__all__ = [
    "ATTACKS",
    "Assumptions",
    "AttackPlan",
    "Attacker",
    "Judge",
    "member_bound",
    "record_bound",
    "run_attack",
]

ATTACKS: Final = ("accuse", "fake-members", "ledger-flood", "replay")
"""The attack kinds (see the module docstring)."""

UINT64_MAX: Final = 2**64 - 1
INCARNATION_OFFSETS: Final = (0, 1, 1000, None)
"""Incarnations a forged accusation names, relative to what the attacker holds for the
victim (None: ``2**64 - 1``, the largest the wire allows)."""
RECORD_TTL: Final = 3600.0
"""Seconds until a forged record expires: long enough to outlive any simulated run."""
CAPTURE_PACKETS: Final = 256
"""Honest packets kept for replay (the most recent ones)."""
CAPTURE_RECORDS: Final = 512
"""Honest ledger records kept for replay (the first ones seen)."""
SAMPLE_EVERY: Final = 1.0
"""Seconds between two samples of the honest nodes' table sizes."""
NOWHERE_PORT: Final = 7946
"""Port of the addresses fake members claim (in 172.16.0.0/12, where no host is)."""
_PLACEHOLDER: Final = bytes(64)


@dataclasses.dataclass(frozen=True, slots=True)
class Assumptions:
    """What the hardened core is expected to guarantee, in one place.

    The bounds of the Byzantine property are named after these caps; adjust them here when
    the core's rules or their defaults change.
    """

    learned_per_source: int = 64
    """Members a node stores on one source's word (learned second-hand, not yet heard
    from): each Byzantine node is one source, the fresh identities it invents are not."""
    records_per_observer: int = DEFAULT_MAX_SUBJECTS
    """Records kept per observer (the ledger's ``max_subjects``)."""
    counted_states: tuple[MemberState, ...] = (MemberState.ALIVE, MemberState.SUSPECT)
    """States in which a member counts as one (routable, a probe or gossip target, in the
    cluster size). A state for members learned second-hand that have not answered yet
    belongs outside this tuple."""

    def counts(self, member: Member) -> bool:
        """Does ``member`` count as a member of the mesh?"""
        return member.state in self.counted_states


ASSUMPTIONS: Final = Assumptions()


def member_bound(real_nodes: int, byzantine: int, assumptions: Assumptions = ASSUMPTIONS) -> int:
    """Most members an honest node may hold: every real node, plus what each Byzantine
    source may make it store on its word."""
    return real_nodes + byzantine * assumptions.learned_per_source


def record_bound(
    honest: int, real_nodes: int, byzantine: int, assumptions: Assumptions = ASSUMPTIONS
) -> int:
    """Most ledger records an honest node may hold: honest observers rate real nodes only
    (at most ``real_nodes - 1`` subjects each), a Byzantine member is capped per observer,
    and identities nobody has seen as a member get nothing kept."""
    return honest * (real_nodes - 1) + byzantine * assumptions.records_per_observer


@dataclasses.dataclass(frozen=True, slots=True)
class AttackPlan:
    """What one Byzantine node does, and when (absolute virtual seconds)."""

    attacks: tuple[str, ...] = ATTACKS
    start: float = 0.0
    stop: float = 30.0
    interval: float = 1.0
    """Seconds between bursts (each one jittered by up to ±25 %)."""
    targets: int = 3
    """Honest nodes each gossip burst is sent to."""
    victims: int = 2
    """Honest nodes accused per burst."""
    fakes_per_burst: int = 200
    fake_members: int = 2000
    """Fresh identities invented in all (later bursts push the same ones again)."""
    records_per_burst: int = 100
    """Records from fresh keys per burst (and as many of the attacker's own)."""
    flood_records: int = 2000
    """Records from fresh keys in all (later bursts push the same ones again)."""
    replays: int = 8
    """Captured packets re-sent per burst."""

    def __post_init__(self) -> None:
        unknown = [a for a in self.attacks if a not in ATTACKS]
        if unknown:
            raise ValueError(f"unknown attacks {unknown}; pick from {ATTACKS}")
        if self.interval <= 0:
            raise ValueError("interval must be positive")
        if self.stop < self.start:
            raise ValueError("stop must not be before start")
        for name in ("targets", "victims", "fakes_per_burst", "fake_members", "replays"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.records_per_burst < 0 or self.flood_records < 0:
            raise ValueError("record counts must not be negative")


def fresh_signer(cluster: Cluster, *labels: object) -> Signer:
    """A key nobody has seen, derived from the run seed and ``labels``."""
    key = derive_seed(cluster.seed, "byzantine", *labels).to_bytes(8, "big") * 4
    return Identity.from_seed(key) if cluster.crypto == "real" else FastSigner.from_seed(key)


def _sign(signer: Signer, message: Any) -> Any:
    return dataclasses.replace(message, signature=signer.sign(signing_bytes(message)))


def _nowhere(i: int) -> str:
    return f"172.{16 + ((i >> 16) & 15)}.{(i >> 8) & 255}.{i & 255}"


class Attacker:
    """The adversarial side of one Byzantine node (its core stays the real one)."""

    def __init__(
        self, cluster: Cluster, node: SimNode, plan: AttackPlan, byzantine: Sequence[int]
    ) -> None:
        self.cluster = cluster
        self.node = node
        self.plan = plan
        self.byzantine = tuple(sorted(byzantine))
        """Slots of every Byzantine node of the run (they never target each other)."""
        self.rng: random.Random = derive_rng(cluster.seed, "byzantine", node.slot)
        self.fakes: list[Alive] = []
        self.flood: list[LedgerRecord] = []
        self.strangers = 0
        """Fresh subjects of its own flood records so far."""
        self.packets: collections.deque[tuple[str, tuple[Message, ...] | bytes]] = (
            collections.deque(maxlen=CAPTURE_PACKETS)
        )
        self.old_alives: dict[str, Alive] = {}
        self.old_records: dict[tuple[str, int], LedgerRecord] = {}
        self.sent: collections.Counter[str] = collections.Counter()
        """Messages (by kind) and exchanges sent by the attack."""
        cluster.taps[node.slot] = self._tap
        cluster.engine.at(plan.start, self._burst)

    # ------------------------------------------------------------------ capture

    def _honest_id(self, node_id: str) -> bool:
        slot = self.cluster.by_id.get(node_id)
        return slot is not None and slot not in self.byzantine

    def _tap(self, sender: str, payload: tuple[Message, ...] | bytes) -> None:
        if "replay" not in self.plan.attacks or not self._honest_id(sender):
            return
        self.packets.append((sender, payload))
        if isinstance(payload, bytes):
            messages: Sequence[Message] = decode(payload, verifier=self.cluster.verifier).messages
        else:
            messages = payload
        self._keep(messages)

    def _keep(self, messages: Sequence[Message]) -> None:
        for message in messages:
            if isinstance(message, Alive):
                if self._honest_id(message.node) and message.node not in self.old_alives:
                    self.old_alives[message.node] = message
            elif isinstance(message, LedgerRecord):
                key = (message.observer, message.seq)
                if len(self.old_records) < CAPTURE_RECORDS and self._honest_id(message.observer):
                    self.old_records.setdefault(key, message)

    def _reply(self, reply: PushPull) -> None:
        if "replay" in self.plan.attacks:
            self._keep(reply.members)
            self._keep(reply.records)

    # ------------------------------------------------------------------ bursts

    def _honest(self) -> list[SimNode]:
        return [
            n
            for n in self.cluster.nodes
            if n.status is Status.RUNNING and n.slot not in self.byzantine
        ]

    def _burst(self) -> None:
        cluster = self.cluster
        if cluster.now >= self.plan.stop or self.node.core is None or not self.node.up:
            return
        honest = self._honest()
        if honest:
            for attack in self.plan.attacks:
                if attack == "accuse":
                    self._accuse(honest)
                elif attack == "fake-members":
                    self._fake_members(honest)
                elif attack == "ledger-flood":
                    self._ledger_flood(honest)
                else:
                    self._replay(honest)
        jitter = self.rng.uniform(0.75, 1.25)
        cluster.engine.after(self.plan.interval * jitter, self._burst)

    def _pick(self, honest: list[SimNode], k: int) -> list[SimNode]:
        return self.rng.sample(honest, min(k, len(honest)))

    def _gossip(self, honest: list[SimNode], messages: Sequence[Message]) -> None:
        """Send ``messages`` to ``targets`` honest nodes, packed into datagrams that fit
        ``max_packet_bytes`` (as an honest sender would, so they are not dropped for size)."""
        if not messages:
            return
        limit = self.cluster.config.max_packet_bytes
        sizes = self.cluster.sizes
        packets: list[list[Message]] = [[]]
        for message in messages:
            current = packets[-1]
            current.append(message)
            if len(current) > 1 and (
                len(current) > MAX_MESSAGES_PER_ENVELOPE or sizes.packet(current) > limit
            ):
                current.pop()
                packets.append([message])
        for target in self._pick(honest, self.plan.targets):
            for packet in packets:
                self.cluster.inject_datagram(self.node, target, packet)
        for message in messages:
            self.sent[type(message).__name__] += 1

    def _push_pull(
        self,
        honest: list[SimNode],
        members: Sequence[Alive | Suspect | Dead] = (),
        records: Sequence[LedgerRecord] = (),
    ) -> None:
        """A push-pull to one honest node carrying the attacker's real state plus
        ``members`` and ``records``."""
        core = self.node.core
        assert core is not None
        own = core.push_pull_request(False)
        request = dataclasses.replace(
            own, members=(*own.members, *members), records=(*own.records, *records)
        )
        (target,) = self._pick(honest, 1)
        self.cluster.inject_push_pull(self.node, target, request, self._reply)
        self.sent["push_pull"] += 1

    def _accuse(self, honest: list[SimNode]) -> None:
        core = self.node.core
        assert core is not None
        signer = self.node.signer
        rumors: list[Suspect | Dead] = []
        for victim in self._pick(honest, self.plan.victims):
            held = core.membership.member(victim.node_id)
            base = held.incarnation if held is not None else 0
            offset = INCARNATION_OFFSETS[self.rng.randrange(len(INCARNATION_OFFSETS))]
            incarnation = UINT64_MAX if offset is None else min(UINT64_MAX, base + offset)
            kind = Suspect if self.rng.random() < 0.5 else Dead
            rumors.append(
                _sign(signer, kind(victim.node_id, incarnation, self.node.node_id, _PLACEHOLDER))
            )
        self._gossip(honest, rumors)
        self._push_pull(honest, members=rumors)

    def _fake_members(self, honest: list[SimNode]) -> None:
        plan = self.plan
        fresh: list[Alive] = []
        while len(self.fakes) < plan.fake_members and len(fresh) < plan.fakes_per_burst:
            i = len(self.fakes)
            signer = fresh_signer(self.cluster, self.node.slot, "member", i)
            alive = _sign(signer, Alive(signer.node_id, 0, _nowhere(i), NOWHERE_PORT, _PLACEHOLDER))
            self.fakes.append(alive)
            fresh.append(alive)
        if not fresh and self.fakes:  # all invented: push a slice of the old ones again
            start = self.rng.randrange(len(self.fakes))
            fresh = (self.fakes[start:] + self.fakes[:start])[: plan.fakes_per_burst]
        self._gossip(honest, fresh)
        self._push_pull(honest, members=self.fakes)

    def _ledger_flood(self, honest: list[SimNode]) -> None:
        plan = self.plan
        now = self.cluster.now
        batch: list[LedgerRecord] = []
        while len(self.flood) < plan.flood_records and len(batch) < plan.records_per_burst:
            i = len(self.flood)
            observer = fresh_signer(self.cluster, self.node.slot, "observer", i)
            subject = honest[self.rng.randrange(len(honest))]
            record = _sign(
                observer,
                LedgerRecord(
                    observer.node_id,
                    subject.node_id,
                    round(self.rng.random(), 3),
                    1,
                    1,
                    now + RECORD_TTL,
                    _PLACEHOLDER,
                ),
            )
            self.flood.append(record)
            batch.append(record)
        if not batch and self.flood:
            start = self.rng.randrange(len(self.flood))
            batch = (self.flood[start:] + self.flood[:start])[: plan.records_per_burst]
        own: list[LedgerRecord] = []
        core = self.node.core
        assert core is not None
        for _ in range(plan.records_per_burst):
            self.strangers += 1
            stranger = fresh_signer(self.cluster, self.node.slot, "subject", self.strangers)
            # Signed through its own ledger: the seq comes from the counter its core uses,
            # so the flood never equivocates (that would be a different attack).
            own.append(
                core.ledger.record_opinion(
                    self.node.signer,
                    stranger.node_id,
                    round(self.rng.random(), 3),
                    1,
                    now,
                    RECORD_TTL,
                )
            )
        self._gossip(honest, [*batch, *own])
        self._push_pull(honest, records=[*batch, *own])

    def _replay(self, honest: list[SimNode]) -> None:
        packets = list(self.packets)
        if packets:
            for _ in range(self.plan.replays):
                sender, payload = packets[self.rng.randrange(len(packets))]
                (target,) = self._pick(honest, 1)
                if self.cluster.by_id.get(sender) == target.slot:
                    continue  # a node's own packet back to it teaches nothing
                self.cluster.inject_datagram(self.node, target, payload, sender=sender)
                self.sent["replayed_packet"] += 1
        old: list[Alive | Suspect | Dead] = list(self.old_alives.values())
        records = list(self.old_records.values())
        if old or records:
            self._gossip(honest, [*old, *records])
            self._push_pull(honest, members=old, records=records)


@dataclasses.dataclass(slots=True)
class Peaks:
    """The largest table sizes any honest node reached (sampled)."""

    members: int = 0
    """Entries of the member table, any state."""
    counted_members: int = 0
    """Members that count (see :attr:`Assumptions.counted_states`)."""
    foreign_members: int = 0
    """Members that no simulated host is (fake identities), any state."""
    records: int = 0
    manifests: int = 0


class Judge:
    """Watches honest nodes from outside: false deaths, inflated incarnations, peaks, and
    convergence among honest nodes. Attach before the attack starts."""

    def __init__(
        self,
        cluster: Cluster,
        byzantine: Sequence[int],
        assumptions: Assumptions = ASSUMPTIONS,
    ) -> None:
        self.cluster = cluster
        self.byzantine = frozenset(byzantine)
        self.assumptions = assumptions
        self.false_deaths = 0
        """Distinct ``Dead`` rumors (subject, incarnation) signed by an honest node about a
        live honest subject it could reach both ways, adopted by an honest observer: the
        honest mesh declared a healthy member dead."""
        self.dead_views = 0
        """Honest observers moving a live, reachable honest subject to DEAD, whoever
        signed the rumor (the Byzantine accusations they believed included)."""
        self.dead_views_signed_by_byzantine = 0
        self.false_leaves = 0
        self.false_suspicions = 0
        """Honest observers moving a live, reachable honest subject to SUSPECT."""
        self._deaths_seen: dict[tuple[int, int], None] = {}
        self.inflated_incarnations = 0
        """Honest observers holding an honest subject above any incarnation it announced."""
        self.examples: list[str] = []
        """The first few false deaths and inflated incarnations, for the report."""
        self.peaks = Peaks()
        cluster.tracker.foreign_ok = True
        cluster.tracker.listeners.append(self._changed)

    def honest(self, node: SimNode) -> bool:
        return node.slot not in self.byzantine

    def _changed(self, node: SimNode, effect: MemberChanged) -> None:
        cluster = self.cluster
        if node.slot in self.byzantine:
            return
        subject = cluster.by_id.get(effect.node_id)
        if subject is None or subject == node.slot or subject in self.byzantine:
            return
        tracker = cluster.tracker
        member = effect.member
        if member.incarnation > tracker.max_incarnation[subject]:
            self.inflated_incarnations += 1
            name = cluster.nodes[subject].name
            self._example(f"{node.name} holds {name} at incarnation {member.incarnation}")
        if effect.old_state is effect.new_state:
            return
        reachable = cluster.network.reachable
        if not (
            tracker.live[subject]
            and tracker.live[node.slot]
            and reachable(node.slot, subject)
            and reachable(subject, node.slot)
        ):
            return
        state = effect.new_state
        if state is MemberState.DEAD:
            self.dead_views += 1
            accuser = getattr(member.rumor, "accuser", None)
            slot = cluster.by_id.get(accuser) if isinstance(accuser, str) else None
            if slot is None or slot in self.byzantine:
                self.dead_views_signed_by_byzantine += 1
                return
            key = (subject, member.incarnation)
            if key in self._deaths_seen or not (
                reachable(slot, subject) and reachable(subject, slot)
            ):
                return
            self._deaths_seen[key] = None
            self.false_deaths += 1
            self._example(
                f"t={cluster.now:.3f} honest {cluster.nodes[slot].name} declared "
                f"{cluster.nodes[subject].name} dead at incarnation {member.incarnation} "
                f"(first adopted by {node.name})"
            )
        elif state is MemberState.LEFT:
            self.false_leaves += 1
        elif state is MemberState.SUSPECT:
            self.false_suspicions += 1

    def _example(self, text: str) -> None:
        if len(self.examples) < 10:
            self.examples.append(text)

    # ------------------------------------------------------------------ sampling

    def honest_nodes(self) -> list[SimNode]:
        """Live honest nodes, by slot."""
        return [n for n in self.cluster.live_nodes() if n.slot not in self.byzantine]

    def sample(self) -> None:
        """Take the table sizes of every honest node now (the peaks keep the largest)."""
        by_id = self.cluster.by_id
        counts = self.assumptions.counts
        peaks = self.peaks
        for node in self.honest_nodes():
            core = node.core
            if core is None:
                continue
            members = core.membership.members()
            peaks.members = max(peaks.members, len(members))
            peaks.counted_members = max(peaks.counted_members, sum(1 for m in members if counts(m)))
            peaks.foreign_members = max(
                peaks.foreign_members, sum(1 for m in members if m.node_id not in by_id)
            )
            peaks.records = max(peaks.records, len(core.ledger))
            peaks.manifests = max(peaks.manifests, len(core.manifests.manifests()))

    def sample_every(self, until: float, every: float = SAMPLE_EVERY) -> None:
        """Sample now and every ``every`` seconds until ``until``."""
        self.sample()
        if self.cluster.now + every <= until:
            self.cluster.engine.after(every, self.sample_every, until, every)

    # ------------------------------------------------------------------ convergence

    def honest_converged(self) -> bool:
        """Every live honest node sees every other live simulated node (honest or
        Byzantine) alive at that node's current incarnation, counts no other member
        (fakes, the departed), holds every live node's current manifest, and all hold the
        same records from honest observers."""
        cluster = self.cluster
        tracker = cluster.tracker
        honest = self.honest_nodes()
        live = cluster.live_nodes()
        truth: list[tuple[SimNode, int]] = []
        for other in live:
            if other.core is None:
                return False
            truth.append((other, other.core.membership.incarnation))
        honest_ids = {n.node_id for n in cluster.nodes if n.slot not in self.byzantine}
        counts = self.assumptions.counts
        reference: dict[tuple[str, str], bytes] | None = None
        for node in honest:
            core = node.core
            assert core is not None
            membership = core.membership
            for other, incarnation in truth:
                if other is node:
                    continue
                member = membership.member(other.node_id)
                if (
                    member is None
                    or member.state is not MemberState.ALIVE
                    or member.incarnation != incarnation
                ):
                    return False
                expected = tracker.expected[other.slot]
                manifest = core.manifests.get(other.node_id)
                if expected is not None and (manifest is None or manifest.version != expected):
                    return False
            if sum(1 for m in membership.members() if counts(m)) != len(live):
                return False  # itself and every other live node, nothing else
            mine = {
                (r.observer, r.subject): r.signature
                for r in core.ledger.records()
                if r.observer in honest_ids
            }
            if reference is None:
                reference = mine
            elif mine != reference:
                return False
        return True

    def report(self) -> dict[str, Any]:
        return {
            "false_deaths_of_honest": self.false_deaths,
            "dead_views_of_honest": self.dead_views,
            "dead_views_signed_by_byzantine": self.dead_views_signed_by_byzantine,
            "false_leaves_of_honest": self.false_leaves,
            "false_suspicions_of_honest": self.false_suspicions,
            "inflated_incarnations": self.inflated_incarnations,
            "peak_members": self.peaks.members,
            "peak_counted_members": self.peaks.counted_members,
            "peak_foreign_members": self.peaks.foreign_members,
            "peak_records": self.peaks.records,
            "peak_manifests": self.peaks.manifests,
            "examples": list(self.examples),
        }


CONVERGENCE_CHECK_EVERY: Final = 0.5
"""Virtual seconds between two convergence checks after the attack stops."""


def run_attack(
    cluster: Cluster,
    byzantine: Sequence[SimNode],
    plans: Sequence[AttackPlan],
    quiet_s: float,
    assumptions: Assumptions = ASSUMPTIONS,
    on_progress: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Turn ``byzantine`` (running members of a converged mesh) against the others, one
    plan each, run until every plan has stopped, then up to ``quiet_s`` more seconds until
    the honest nodes have converged; return the figures (JSON-ready). ``on_progress`` is
    handed to the engine (for progress bars)."""
    if len(plans) != len(byzantine):
        raise ValueError("one plan per Byzantine node")
    slots = [n.slot for n in byzantine]
    real = len(cluster.live_nodes())
    honest_count = real - len(byzantine)
    judge = Judge(cluster, slots, assumptions)
    attackers = [
        Attacker(cluster, node, plan, slots) for node, plan in zip(byzantine, plans, strict=True)
    ]
    stop = max((p.stop for p in plans), default=cluster.now)
    before = cluster.traffic.copy()
    violations_before = len(cluster.violations)
    judge.sample_every(stop + quiet_s)
    cluster.run_until(stop, on_progress=on_progress)
    judge.sample()
    converged_at: float | None = None
    deadline = stop + quiet_s
    while True:
        if judge.honest_converged():
            converged_at = cluster.now
            break
        if cluster.now >= deadline:
            break
        cluster.run_until(
            min(deadline, cluster.now + CONVERGENCE_CHECK_EVERY), on_progress=on_progress
        )
    judge.sample()
    traffic = cluster.traffic.minus(before)
    sent: collections.Counter[str] = collections.Counter()
    for attacker in attackers:
        sent.update(attacker.sent)
    new_violations = cluster.violations[violations_before:]
    bounds = {
        "members": member_bound(real, len(byzantine), assumptions),
        "records": record_bound(honest_count, real, len(byzantine), assumptions),
    }
    return {
        "byzantine_nodes": [n.name for n in byzantine],
        "honest_nodes": honest_count,
        "attacks": sorted({a for p in plans for a in p.attacks}),
        "attack_stopped_at_s": round(stop, 6),
        "honest_converged": converged_at is not None,
        "honest_convergence_after_stop_s": None
        if converged_at is None
        else round(converged_at - stop, 6),
        "convergence_budget_s": quiet_s,
        "bounds": bounds,
        "within_bounds": {
            "members": judge.peaks.counted_members <= bounds["members"]
            and judge.peaks.members <= bounds["members"],
            "records": judge.peaks.records <= bounds["records"],
        },
        **judge.report(),
        "core_errors": cluster.core_errors,
        "violations": len(new_violations),
        "first_violations": new_violations[:5],
        "foreign_member_events": cluster.tracker.foreign_member_events,
        "foreign_records_accepted": cluster.tracker.foreign_records,
        "attack_sent": dict(sorted(sent.items())),
        "attack_traffic": {
            "packets": traffic.attack_packets,
            "bytes": traffic.attack_bytes,
            "push_pulls": traffic.attack_push_pulls,
            "push_pull_bytes": traffic.attack_push_pull_bytes,
        },
    }
