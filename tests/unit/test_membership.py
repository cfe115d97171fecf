"""SWIM membership driven through an in-memory network with a virtual clock.

The :class:`Network` below delivers each ``SendPacket`` to the member bound at its address
after a configurable latency, with loss, one-way link cuts, partitions, crashes and
freezes (a node that is not scheduled for a while). In ``wire`` mode every packet is
really encoded, signed, size-checked and decoded with :mod:`protocol`. Push-pull runs as
a simulated TCP exchange. The clock jumps from event to event (packet arrivals and each
node's ``next_deadline()``), in (time, sequence) order, so every run is reproducible from
its seed.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import heapq
import itertools
import math
import random
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

import pytest

from meshnode.core import (
    Deliver,
    Member,
    MemberChanged,
    MemberEvent,
    Membership,
    MemberState,
    NodeConfig,
    SendPacket,
    StartPushPull,
    timing,
)
from meshnode.core.coordinates import Coordinate
from protocol import (
    ENVELOPE_OVERHEAD,
    Ack,
    Alive,
    Dead,
    FastSigner,
    Identity,
    Leave,
    ManifestRumor,
    Message,
    Nack,
    Ping,
    PingReq,
    PushPull,
    Signer,
    Suspect,
    TaskRequest,
    decode,
    encode,
    fast_verify,
    signing_bytes,
    verify,
    wire_size,
)
from protocol.messages import NetworkCoordinate

Address = tuple[str, int]
LAN = NodeConfig.lan()
NO_SIG = bytes(64)


# --------------------------------------------------------------------------- the network


@dataclasses.dataclass(eq=False)
class Node:
    """One simulated host: a membership core plus what the test wants to look at."""

    name: str
    signer: Signer
    membership: Membership
    addr: Address
    crashed: bool = False
    frozen: bool = False
    scheduled: float | None = None
    events: list[tuple[float, MemberChanged]] = dataclasses.field(default_factory=list)
    delivered: list[tuple[float, Deliver]] = dataclasses.field(default_factory=list)
    sent: list[tuple[float, SendPacket]] = dataclasses.field(default_factory=list)
    backlog: list[Callable[[], None]] = dataclasses.field(default_factory=list)

    @property
    def id(self) -> str:
        return self.signer.node_id

    def view(self, other: Node) -> MemberState | None:
        member = self.membership.member(other.id)
        return member.state if member is not None else None

    def events_about(self, other: Node, kind: MemberEvent | None = None) -> list[float]:
        return [
            t for t, e in self.events if e.node_id == other.id and (kind is None or e.kind is kind)
        ]


class Network:
    """Deterministic in-memory UDP (and push-pull TCP) between membership cores."""

    def __init__(
        self,
        config: NodeConfig = LAN,
        *,
        seed: int = 1,
        latency: float = 0.002,
        jitter: float = 0.001,
        loss: float = 0.0,
        wire: bool = False,
        real_crypto: bool = False,
        record: bool = False,
        check_sizes: bool = True,
    ) -> None:
        self.config = config
        self.seed = seed
        self.rng = random.Random(seed)
        self.latency = latency
        self.jitter = jitter
        self.loss = loss
        self.wire = wire
        self.real_crypto = real_crypto
        self.verifier = verify if real_crypto else fast_verify
        self.record = record
        self.check_sizes = check_sizes
        self.now = 0.0
        self.nodes: dict[Address, Node] = {}
        self.by_name: dict[str, Node] = {}
        self.cut: set[tuple[Address, Address]] = set()  # one-way link cuts
        self.groups: list[set[Address]] | None = None  # partition
        self.push_pulls: list[tuple[float, str, Address, bool]] = []
        self.packets = 0
        self._events: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()

    # -- nodes

    def signer_for(self, name: str) -> Signer:
        seed = hashlib.sha256(f"{self.seed}/{name}".encode()).digest()
        return Identity.from_seed(seed) if self.real_crypto else FastSigner.from_seed(seed)

    def add(
        self,
        name: str,
        *,
        incarnation: int = 0,
        config: NodeConfig | None = None,
        addr: Address | None = None,
        signer: Signer | None = None,
    ) -> Node:
        if addr is None:
            addr = (f"10.0.{len(self.by_name) // 250}.{len(self.by_name) % 250 + 1}", 7946)
        signer = signer or self.signer_for(name)
        membership = Membership(
            config or self.config,
            signer,
            host=addr[0],
            port=addr[1],
            rng=random.Random(f"{self.seed}/{name}/{incarnation}"),
            verifier=self.verifier,
            incarnation=incarnation,
            now=self.now,
        )
        node = Node(name, signer, membership, addr)
        self.nodes[addr] = node
        self.by_name[name] = node
        self._flush(node)
        return node

    def cluster(self, count: int, *, prefix: str = "n", stagger: float = 0.05) -> list[Node]:
        """``count`` nodes, each joining through the first one, ``stagger`` s apart."""
        nodes = [self.add(f"{prefix}0")]
        for i in range(1, count):
            self.run_for(stagger)
            node = self.add(f"{prefix}{i}")
            self.join(node, nodes[0])
            nodes.append(node)
        return nodes

    def join(self, node: Node, *seeds: Node | Address) -> int:
        addrs = [s.addr if isinstance(s, Node) else s for s in seeds]
        count = node.membership.join(addrs, self.now)
        self._flush(node)
        return count

    def crash(self, node: Node) -> None:
        node.crashed = True
        node.scheduled = None

    def restart(self, node: Node, *, incarnation: int, addr: Address | None = None) -> Node:
        """A new process for the same identity, optionally on a new address."""
        self.nodes.pop(node.addr, None)
        return self.add(
            node.name, incarnation=incarnation, addr=addr or node.addr, signer=node.signer
        )

    def freeze(self, node: Node) -> None:
        """Stop scheduling ``node``: packets to it queue up, its timers do not run."""
        node.frozen = True
        node.scheduled = None

    def thaw(self, node: Node) -> None:
        """Resume ``node`` like an event loop does: a (late) tick, then the queued packets."""
        node.frozen = False
        node.membership.tick(self.now)
        self._flush(node)
        backlog, node.backlog = node.backlog, []
        for deliver in backlog:
            deliver()

    def partition(self, *groups: Iterable[Node]) -> None:
        self.groups = [{n.addr for n in g} for g in groups]

    def heal(self) -> None:
        self.groups = None
        self.cut.clear()

    def cut_link(self, src: Node, dst: Node) -> None:
        self.cut.add((src.addr, dst.addr))

    def reachable(self, src: Address, dst: Address) -> bool:
        if (src, dst) in self.cut:
            return False
        if self.groups is not None:
            return any(src in g and dst in g for g in self.groups)
        return True

    def live(self) -> list[Node]:
        return [n for n in self.by_name.values() if not n.crashed and not n.membership.left]

    # -- running

    def run_until(self, t: float) -> None:
        events = self._events
        while events and events[0][0] <= t:
            when, _, action = heapq.heappop(events)
            self.now = when
            action()
        self.now = max(self.now, t)

    def run_for(self, dt: float) -> None:
        self.run_until(self.now + dt)

    def run_until_true(
        self, predicate: Callable[[], bool], timeout: float, step: float = 0.1
    ) -> float:
        """Run until ``predicate()`` holds (checked every ``step``); return the time taken."""
        start = self.now
        while not predicate():
            if self.now - start > timeout:
                raise AssertionError(f"condition not met within {timeout} s (seed {self.seed})")
            self.run_for(step)
        return self.now - start

    # -- internals

    def _at(self, when: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._events, (when, next(self._seq), action))

    def _delay(self) -> float:
        return self.latency + (self.rng.random() * self.jitter if self.jitter else 0.0)

    def _reschedule(self, node: Node) -> None:
        if node.crashed or node.frozen:
            return
        deadline = node.membership.next_deadline()
        if math.isinf(deadline):
            node.scheduled = None
            return
        deadline = max(deadline, self.now)
        if node.scheduled != deadline:
            node.scheduled = deadline
            self._at(deadline, lambda: self._tick(node, deadline))

    def _tick(self, node: Node, when: float) -> None:
        if node.crashed or node.frozen or node.scheduled != when:
            return
        node.scheduled = None
        node.membership.tick(self.now)
        # A tick runs everything due: the next deadline is always in the future.
        assert node.membership.next_deadline() > self.now, f"{node.name} left work due"
        self._flush(node)

    def _flush(self, node: Node) -> None:
        for effect in node.membership.take_effects():
            if isinstance(effect, SendPacket):
                self._send(node, effect)
            elif isinstance(effect, StartPushPull):
                self._start_push_pull(node, effect)
            elif isinstance(effect, MemberChanged):
                node.events.append((self.now, effect))
            elif isinstance(effect, Deliver):
                node.delivered.append((self.now, effect))
        self._reschedule(node)

    def _send(self, node: Node, packet: SendPacket) -> None:
        self.packets += 1
        limit = node.membership.config.max_packet_bytes
        if self.check_sizes:
            size = ENVELOPE_OVERHEAD + sum(wire_size(m) for m in packet.messages)
            assert size <= limit, f"{node.name} built a {size}-byte packet (limit {limit})"
        if self.record:
            node.sent.append((self.now, packet))
        payload: bytes | tuple[Message, ...] = packet.messages
        if self.wire:
            payload = encode(packet.messages, node.signer)
            assert len(payload) <= limit
        if not self.reachable(node.addr, packet.addr) or self.rng.random() < self.loss:
            return
        src, sender = node.addr, node.id
        self._at(self.now + self._delay(), lambda: self._arrive(packet.addr, src, sender, payload))

    def _arrive(
        self, dst: Address, src: Address, sender: str, payload: bytes | tuple[Message, ...]
    ) -> None:
        node = self.nodes.get(dst)
        if node is None or node.crashed:
            return
        if node.frozen:
            node.backlog.append(lambda: self._arrive(dst, src, sender, payload))
            return
        if isinstance(payload, bytes):
            envelope = decode(payload, verifier=self.verifier)
            sender, messages = envelope.sender, envelope.messages
        else:
            messages = payload
        node.membership.receive(sender, messages, src, self.now)
        self._flush(node)

    def _start_push_pull(self, node: Node, request: StartPushPull) -> None:
        self.push_pulls.append((self.now, node.name, request.addr, request.join))
        src = node.addr

        def serve() -> None:
            remote = self.nodes.get(request.addr)
            if (
                remote is None
                or remote.crashed
                or remote.frozen
                or not self.reachable(src, request.addr)
                or not self.reachable(request.addr, src)
                or node.crashed
            ):
                return  # the TCP connection fails; the core needs no callback
            remote.membership.merge_state(
                self._tcp(node, node.membership.state_snapshot(), request.join),
                self.now,
                source=node.id,
            )
            snapshot = remote.membership.state_snapshot()
            self._flush(remote)
            reply = self._tcp(remote, snapshot, request.join)

            def finish() -> None:
                if not node.crashed and self.nodes.get(src) is node:
                    node.membership.merge_state(reply, self.now, source=remote.id)
                    self._flush(node)

            self._at(self.now + self._delay(), finish)

        self._at(self.now + self._delay(), serve)

    def _tcp(self, node: Node, members: Sequence[Message], join: bool) -> Sequence[Message]:
        if not self.wire:
            return members
        frame = encode([PushPull(join, tuple(members), (), ())], node.signer)  # type: ignore[arg-type]
        (message,) = decode(frame, verifier=self.verifier).messages
        assert isinstance(message, PushPull)
        return message.members


def all_alive(nodes: Sequence[Node]) -> Callable[[], bool]:
    """Everyone in ``nodes`` sees everyone else in ``nodes`` alive."""

    def check() -> bool:
        return all(a.view(b) is MemberState.ALIVE for a in nodes for b in nodes if a is not b)

    return check


def all_see(nodes: Sequence[Node], target: Node, state: MemberState | None) -> Callable[[], bool]:
    return lambda: all(n.view(target) is state for n in nodes if n is not target)


R = TypeVar("R", Alive, Suspect, Dead, Leave)


def signed(message: R, signer: Signer) -> R:
    """``message`` signed by ``signer`` (rightly or not)."""
    return dataclasses.replace(message, signature=signer.sign(signing_bytes(message)))


def lonely(config: NodeConfig = LAN, name: str = "solo") -> tuple[Membership, FastSigner]:
    """A membership with no network, for feeding rumors and ticks by hand."""
    signer = FastSigner.from_seed(name.encode())
    m = Membership(
        config,
        signer,
        host="10.9.9.9",
        port=7946,
        rng=random.Random(7),
        verifier=fast_verify,
        detect_stalls=False,
    )
    return m, signer


def introduce(m: Membership, alives: Sequence[Alive], now: float) -> None:
    """Feed each ``Alive`` first-hand: sent by its subject from its advertised address
    (second-hand ones would be held unverified until they answer)."""
    for alive in alives:
        m.receive(alive.node, [alive], (alive.host, alive.port), now)


def peer(i: int) -> FastSigner:
    return FastSigner.from_seed(f"peer-{i}".encode())


def alive_of(signer: Signer, incarnation: int = 0, host: str | None = None) -> Alive:
    return signed(
        Alive(
            signer.node_id,
            incarnation,
            host or f"10.1.0.{sum(signer.node_id.encode()) % 200 + 1}",
            7946,
            NO_SIG,
        ),
        signer,
    )


# --------------------------------------------------------------------------- probing


def test_probe_and_ack_over_the_wire() -> None:
    """Two nodes with real Ed25519 signatures and real encoded packets join, probe each
    other every period, get every ack, and never suspect anyone."""
    net = Network(wire=True, real_crypto=True, record=True)
    a, b = net.cluster(2)
    net.run_until_true(all_alive([a, b]), timeout=2.0)
    net.run_for(10.0)
    for node in (a, b):
        c = node.membership.counters
        assert c["probes"] >= 9
        assert c["probes_failed"] == 0
        assert c["suspicions_raised"] == 0
        assert c["recv_ack"] >= c["probes"] - 1
        assert node.membership.health == 0
    pings = [p for _, p in a.sent if any(isinstance(m, Ping) for m in p.messages)]
    assert pings
    assert all(p.addr == b.addr for p in pings)
    member = a.membership.member(b.id)
    assert member is not None
    assert member.rtt is not None
    assert member.rtt == pytest.approx(0.004, abs=0.003)
    assert [e.kind for _, e in a.events] == [MemberEvent.JOINED]


def test_ack_carries_advertised_load() -> None:
    """set_load() travels in acks and lands in the prober's Member.load."""
    net = Network()
    a, b = net.cluster(2)
    b.membership.set_load(7)
    net.run_for(3.0)
    member = a.membership.member(b.id)
    assert member is not None
    assert member.load == 7
    with pytest.raises(ValueError, match="load"):
        b.membership.set_load(-1)


def test_indirect_probe_through_ping_req() -> None:
    """With the direct path A↔C cut, A's probes of C fail directly but succeed through B
    (ping-req, relayed ack): C is never suspected."""
    net = Network(record=True)
    a, b, c = net.cluster(3)
    net.run_until_true(all_alive([a, b, c]), timeout=3.0)
    net.cut_link(a, c)
    net.cut_link(c, a)
    net.run_for(20.0)
    assert a.membership.counters["indirect_probes"] >= 3
    assert b.membership.counters["acks_relayed"] >= 3
    assert a.membership.counters["probes_failed"] == 0
    assert a.view(c) is MemberState.ALIVE
    assert not a.events_about(c, MemberEvent.SUSPECT)
    reqs = [m for _, p in a.sent for m in p.messages if isinstance(m, PingReq)]
    assert reqs
    assert all((m.target, m.host, m.port) == (c.id, *c.addr) for m in reqs)


def test_nack_when_the_target_is_down() -> None:
    """A relay that gets no ack answers a nack in time; with every nack back the prober's
    health only pays the +1 of the failed probe, and the target becomes suspect."""
    net = Network()
    a, b, c = net.cluster(3)
    net.run_until_true(all_alive([a, b, c]), timeout=3.0)
    net.crash(c)
    net.run_until_true(lambda: a.view(c) is MemberState.SUSPECT, timeout=5.0, step=0.01)
    net.run_for(6.0)
    assert a.membership.counters["nacks_received"] >= 1
    assert b.membership.counters["nacks_sent"] >= 1
    # Each failed probe with all nacks back costs +1; each later success of B −1.
    assert a.membership.health <= 2


def test_ping_for_another_node_is_not_answered() -> None:
    """A ping naming a different target (the address changed hands) gets no ack."""
    m, _ = lonely()
    m.receive(peer(1).node_id, [Ping(5, peer(2).node_id)], ("10.1.1.1", 7946), 0.0)
    assert not [e for e in m.take_effects() if isinstance(e, SendPacket)]
    assert m.counters["pings_wrong_target"] == 1
    m.receive(peer(1).node_id, [Ping(6, m.node_id)], ("10.1.1.1", 7946), 0.0)
    (packet,) = [e for e in m.take_effects() if isinstance(e, SendPacket)]
    assert packet.addr == ("10.1.1.1", 7946)
    # A lonely node's view: itself; its ack carries its (fresh) coordinate.
    assert packet.messages[0] == Ack(6, 0, 1, _wire_coordinate(m.coordinate()))


# --------------------------------------------------------------------------- suspicion


def test_suspicion_becomes_dead_after_the_computed_timeout() -> None:
    """Alone with a crashed peer (n = 2: no confirmations expected) a suspicion lasts
    exactly the minimum timeout, suspicion_mult × probe_interval, then Dead is signed."""
    net = Network()
    a, b = net.cluster(2)
    net.run_until_true(all_alive([a, b]), timeout=2.0)
    net.crash(b)
    net.run_until_true(lambda: a.view(b) is MemberState.DEAD, timeout=20.0, step=0.05)
    (suspected,) = a.events_about(b, MemberEvent.SUSPECT)
    (dead,) = a.events_about(b, MemberEvent.DEAD)
    low, _ = timing.suspicion_bounds(4, 6, 2, 1.0)
    assert dead - suspected == pytest.approx(low)
    member = a.membership.member(b.id)
    assert member is not None
    assert isinstance(member.rumor, Dead)
    assert member.rumor.accuser == a.id
    assert a.membership.counters["members_declared_dead"] == 1


def test_confirmations_shrink_the_suspicion() -> None:
    """Suspects from distinct accusers shorten the timeout along memberlist's curve; a
    repeated accuser does not count, and when it expires we sign Dead."""
    m, _ = lonely()
    peers = [peer(i) for i in range(10)]
    introduce(m, [alive_of(p) for p in peers], 0.0)
    assert m.cluster_size() == 11
    target = peers[0]
    start = 10.0
    m.receive(
        peers[1].node_id,
        [signed(Suspect(target.node_id, 0, peers[1].node_id, NO_SIG), peers[1])],
        ("10.1.1.1", 7946),
        start,
    )
    s = m.suspicion(target.node_id)
    assert s is not None
    low, high = timing.suspicion_bounds(4, 6, 11, 1.0)
    assert s.k == 2
    assert (s.min_timeout, s.max_timeout) == pytest.approx((low, high))
    assert s.deadline == pytest.approx(start + high)
    for accuser, confirmations in [(peers[2], 1), (peers[2], 1), (peers[3], 2), (peers[4], 2)]:
        rumor = signed(Suspect(target.node_id, 0, accuser.node_id, NO_SIG), accuser)
        m.receive(accuser.node_id, [rumor], ("10.1.1.1", 7946), start + 1)
        assert s.confirmations == confirmations
        expected = timing.suspicion_timeout(confirmations, 2, low, high)
        assert s.deadline == pytest.approx(start + expected)
    assert s.confirmations == 2
    assert m.counters["suspicion_confirmations"] == 2
    m.take_effects()
    m.tick(start + low - 0.001)
    assert m.member(target.node_id).state is MemberState.SUSPECT  # type: ignore[union-attr]
    m.tick(start + low)
    member = m.member(target.node_id)
    assert member is not None
    assert member.state is MemberState.DEAD
    assert isinstance(member.rumor, Dead)
    assert member.rumor.accuser == m.node_id


def test_refutation_through_the_buddy_system() -> None:
    """B's packets to A are lost, so A suspects B; B hears of it and refutes, but its
    refutation is lost too. After A's Suspect has used up its retransmissions and the link
    heals, A's next ping still carries the Suspect (buddy system), and B's ack carries its
    current Alive: A sees B alive again long before the suspicion could expire."""
    net = Network(record=True)
    a, b = net.cluster(2)
    net.run_until_true(all_alive([a, b]), timeout=2.0)
    net.cut_link(b, a)
    net.run_until_true(lambda: a.view(b) is MemberState.SUSPECT, timeout=5.0, step=0.01)
    suspicion = a.membership.suspicion(b.id)
    assert suspicion is not None
    net.run_for(1.5)
    assert a.membership.queue_depth == 0  # the Suspect is no longer gossiped
    assert b.membership.incarnation == 1  # B refuted, into the void
    net.heal()
    a.sent.clear()
    net.run_until_true(lambda: a.view(b) is MemberState.ALIVE, timeout=3.0, step=0.01)
    assert net.now < suspicion.deadline
    buddy = [
        p
        for _, p in a.sent
        if len(p.messages) == 2
        and isinstance(p.messages[0], Ping)
        and isinstance(p.messages[1], Suspect)
    ]
    assert buddy
    assert buddy[0].addr == b.addr
    assert buddy[0].messages[1].node == b.id  # type: ignore[attr-defined]
    assert b.membership.incarnation == 1
    assert b.membership.counters["refutations"] == 1
    assert a.membership.counters["suspicions_refuted"] == 1
    assert not a.events_about(b, MemberEvent.DEAD)
    assert b.membership.health >= 1  # refuting a suspicion about ourselves costs +1
    assert [e.kind for _, e in b.events if e.node_id == b.id] == [MemberEvent.UPDATED]


def test_refutation_of_dead_after_partition_of_one() -> None:
    """A node cut off long enough to be declared dead refutes when the Dead reaches it
    (gossip to the dead) and comes back alive at a higher incarnation everywhere."""
    net = Network()
    nodes = net.cluster(4)
    net.run_until_true(all_alive(nodes), timeout=3.0)
    victim = nodes[3]
    net.partition(nodes[:3], [victim])
    net.run_until_true(all_see(nodes[:3], victim, MemberState.DEAD), timeout=40.0)
    net.heal()
    net.run_until_true(all_alive(nodes), timeout=30.0)
    assert victim.membership.incarnation >= 1


# --------------------------------------------------------------------------- rumor rules


def test_dead_is_not_resurrected_by_an_alive_at_the_same_incarnation() -> None:
    """Alive(i) only beats a dead member at a strictly higher incarnation."""
    m, _ = lonely()
    y, z = peer(1), peer(2)
    src = ("10.1.1.1", 7946)
    introduce(m, [alive_of(y, 3), alive_of(z)], 0.0)
    # A Dead about a member held alive first becomes our own suspicion; a second copy,
    # arriving while we suspect it, is applied.
    dead = signed(Dead(y.node_id, 3, z.node_id, NO_SIG), z)
    m.receive(z.node_id, [dead, dead], src, 1.0)
    assert m.member(y.node_id).state is MemberState.DEAD  # type: ignore[union-attr]
    m.receive(y.node_id, [alive_of(y, 3)], src, 2.0)
    assert m.member(y.node_id).state is MemberState.DEAD  # type: ignore[union-attr]
    assert m.counters["rumors_stale"] >= 1
    m.receive(y.node_id, [alive_of(y, 2)], src, 2.0)
    assert m.member(y.node_id).state is MemberState.DEAD  # type: ignore[union-attr]
    m.receive(y.node_id, [alive_of(y, 4)], src, 3.0)
    member = m.member(y.node_id)
    assert member is not None
    assert (member.state, member.incarnation) == (MemberState.ALIVE, 4)
    kinds = [
        e.kind for e in m.take_effects() if isinstance(e, MemberChanged) and e.node_id == y.node_id
    ]
    assert kinds == [MemberEvent.JOINED, MemberEvent.SUSPECT, MemberEvent.DEAD, MemberEvent.ALIVE]


@pytest.mark.parametrize(
    ("first", "second", "state_after", "incarnation_after"),
    [
        # (incarnation, kind) pairs applied in order to a member known as Alive(1).
        ((1, "suspect"), (1, "alive"), MemberState.SUSPECT, 1),
        ((1, "suspect"), (2, "alive"), MemberState.ALIVE, 2),
        ((2, "suspect"), (1, "dead"), MemberState.DEAD, 1),  # Suspect(2): ahead of Alive(1)
        ((1, "dead"), (1, "suspect"), MemberState.DEAD, 1),
        ((1, "dead"), (1, "leave"), MemberState.LEFT, 1),
        ((1, "leave"), (1, "dead"), MemberState.LEFT, 1),
        ((1, "leave"), (2, "alive"), MemberState.ALIVE, 2),
        ((0, "suspect"), (0, "dead"), MemberState.ALIVE, 1),  # both stale
        ((3, "dead"), (3, "alive"), MemberState.ALIVE, 3),  # Dead(3) was ahead: refused
        ((1, "suspect"), (2, "suspect"), MemberState.SUSPECT, 1),  # Suspect(2) is ahead
        ((1, "dead"), (2, "suspect"), MemberState.DEAD, 1),
        ((1, "alive"), (1, "dead"), MemberState.DEAD, 1),
        ((2, "alive"), (2, "suspect"), MemberState.SUSPECT, 2),
    ],
)
def test_rumor_precedence_table(
    first: tuple[int, str],
    second: tuple[int, str],
    state_after: MemberState,
    incarnation_after: int,
) -> None:
    """(incarnation, alive < suspect < dead < left): only a strictly greater rumor wins,
    and an accusation above the incarnation we know is refused (no accuser saw it)."""
    m, _ = lonely()
    y, z = peer(1), peer(2)
    src = ("10.1.1.1", 7946)
    introduce(m, [alive_of(y, 1), alive_of(z)], 0.0)

    def rumor(inc: int, kind: str) -> Message:
        if kind == "alive":
            return alive_of(y, inc)
        if kind == "suspect":
            return signed(Suspect(y.node_id, inc, z.node_id, NO_SIG), z)
        if kind == "dead":
            return signed(Dead(y.node_id, inc, z.node_id, NO_SIG), z)
        return signed(Leave(y.node_id, inc, NO_SIG), y)

    def deliver(inc: int, kind: str, now: float) -> None:
        # A Dead about a member held alive first becomes our own suspicion (see
        # test_a_gossiped_dead_about_a_live_member_becomes_our_suspicion); a second copy,
        # arriving while we suspect it, is ranked like any rumor.
        copies = 2 if kind == "dead" else 1
        m.receive(z.node_id, [rumor(inc, kind)] * copies, src, now)

    deliver(*first, 1.0)
    deliver(*second, 2.0)
    member = m.member(y.node_id)
    assert member is not None
    assert (member.state, member.incarnation) == (state_after, incarnation_after)


def test_forged_rumors_are_dropped_and_counted() -> None:
    """Rumors signed by anyone but their rightful signer change nothing."""
    m, _ = lonely()
    y, z, mallory = peer(1), peer(2), peer(3)
    src = ("10.1.1.1", 7946)
    introduce(m, [alive_of(y), alive_of(z)], 0.0)
    forged = [
        signed(Alive(y.node_id, 9, "6.6.6.6", 1, NO_SIG), mallory),  # not y's key
        signed(Suspect(y.node_id, 0, z.node_id, NO_SIG), mallory),  # not the accuser's key
        signed(Dead(y.node_id, 0, z.node_id, NO_SIG), mallory),
        signed(Leave(y.node_id, 0, NO_SIG), mallory),
        signed(Dead(y.node_id, 0, y.node_id, NO_SIG), y),  # self-accusation: use Leave
        dataclasses.replace(alive_of(y, 5), port=1),  # tampered after signing
        signed(Suspect(m.node_id, 0, z.node_id, NO_SIG), mallory),  # about us, forged
    ]
    m.receive(mallory.node_id, forged, src, 1.0)
    assert m.counters["rumors_invalid"] == len(forged)
    member = m.member(y.node_id)
    assert member is not None
    assert (member.state, member.incarnation, member.host) == (
        MemberState.ALIVE,
        0,
        member.alive.host,
    )
    assert m.incarnation == 0  # no refutation of a forged suspicion


def test_forged_rumor_over_the_wire_is_dropped() -> None:
    """A validly enveloped packet carrying a rumor signed by the wrong key is decoded fine
    and dropped by the core."""
    net = Network(wire=True, real_crypto=True)
    a, b = net.cluster(2)
    net.run_until_true(all_alive([a, b]), timeout=2.0)
    mallory = Identity.from_seed(bytes(32))
    forged = signed(Dead(b.id, 0, a.id, NO_SIG), mallory)
    frame = encode([forged], mallory)
    envelope = decode(frame)
    a.membership.receive(envelope.sender, envelope.messages, ("10.6.6.6", 7946), net.now)
    assert a.membership.counters["rumors_invalid"] == 1
    assert a.view(b) is MemberState.ALIVE


def test_suspect_about_unknown_member_is_ignored() -> None:
    """Suspect, Dead and Leave about members we do not know are dropped (no address)."""
    m, _ = lonely()
    y, z = peer(1), peer(2)
    introduce(m, [alive_of(z)], 0.0)
    m.receive(
        z.node_id, [signed(Suspect(y.node_id, 0, z.node_id, NO_SIG), z)], ("10.1.1.1", 1), 0.0
    )
    m.receive(z.node_id, [signed(Leave(y.node_id, 0, NO_SIG), y)], ("10.1.1.1", 1), 0.0)
    assert m.member(y.node_id) is None
    assert m.counters["rumors_unknown_subject"] == 2


def test_alive_with_higher_incarnation_updates_the_address() -> None:
    """A member that restarted on a new address announces it with a higher incarnation."""
    m, _ = lonely()
    y = peer(1)
    m.receive(y.node_id, [alive_of(y, 0, "10.1.1.1")], ("10.1.1.1", 7946), 0.0)
    m.receive(y.node_id, [alive_of(y, 0, "10.2.2.2")], ("10.2.2.2", 7946), 1.0)
    assert m.member(y.node_id).host == "10.1.1.1"  # type: ignore[union-attr]
    m.receive(y.node_id, [alive_of(y, 1, "10.2.2.2")], ("10.2.2.2", 7946), 2.0)
    member = m.member(y.node_id)
    assert member is not None
    assert member.address == ("10.2.2.2", 7946)
    kinds = [e.kind for e in m.take_effects() if isinstance(e, MemberChanged)]
    assert kinds == [MemberEvent.JOINED, MemberEvent.UPDATED]


def test_stale_alive_about_ourselves_is_refuted() -> None:
    """An Alive of ours from a previous life (higher incarnation, or our incarnation on
    another address) makes us announce a newer one."""
    m, me = lonely()
    src = ("10.1.1.1", 7946)
    m.receive(
        peer(1).node_id, [signed(Alive(me.node_id, 5, "10.9.9.9", 7946, NO_SIG), me)], src, 0.0
    )
    assert m.incarnation == 6
    m.receive(
        peer(1).node_id, [signed(Alive(me.node_id, 6, "10.3.3.3", 7946, NO_SIG), me)], src, 0.0
    )
    assert m.incarnation == 7
    m.receive(
        peer(1).node_id, [signed(Alive(me.node_id, 7, "10.9.9.9", 7946, NO_SIG), me)], src, 0.0
    )
    assert m.incarnation == 7
    assert m.health == 0  # address conflicts are not a sign of local trouble


# --------------------------------------------------------------------------- leave, rejoin


def test_graceful_leave_is_left_not_dead() -> None:
    """A node that leaves is seen as left everywhere, never suspected or dead, even after
    it stops answering."""
    net = Network()
    nodes = net.cluster(5)
    net.run_until_true(all_alive(nodes), timeout=3.0)
    leaver = nodes[4]
    leaver.membership.leave(net.now)
    net._flush(leaver)
    assert leaver.membership.left
    assert leaver.view(leaver) is MemberState.LEFT
    net.run_for(LAN.leave_propagate_time)
    net.crash(leaver)
    net.run_for(40.0)
    for node in nodes[:4]:
        assert node.view(leaver) is MemberState.LEFT
        assert not node.events_about(leaver, MemberEvent.DEAD)
        assert not node.events_about(leaver, MemberEvent.SUSPECT)
        assert node.events_about(leaver, MemberEvent.LEFT)
    assert all_alive(nodes[:4])()


def test_rejoin_with_higher_incarnation_on_a_new_address() -> None:
    """A crashed node declared dead restarts with its persisted incarnation + 1 on a new
    address, joins through any member, and everyone sees it alive at the new address."""
    net = Network()
    nodes = net.cluster(5)
    net.run_until_true(all_alive(nodes), timeout=3.0)
    old = nodes[2]
    net.crash(old)
    others = [n for n in nodes if n is not old]
    net.run_until_true(all_see(others, old, MemberState.DEAD), timeout=40.0)
    reborn = net.restart(old, incarnation=old.membership.incarnation + 1, addr=("10.0.7.7", 7946))
    net.join(reborn, nodes[0])
    everyone = [*others, reborn]
    net.run_until_true(all_alive(everyone), timeout=10.0)
    for node in others:
        member = node.membership.member(reborn.id)
        assert member is not None
        assert member.address == ("10.0.7.7", 7946)
        assert member.incarnation == 1
        assert node.events_about(reborn, MemberEvent.ALIVE)


def test_restart_without_persisted_incarnation_refutes_its_death() -> None:
    """Restarted at incarnation 0, the node learns of its own death by push-pull and
    refutes it: incarnation 1, alive everywhere."""
    net = Network()
    nodes = net.cluster(4)
    net.run_until_true(all_alive(nodes), timeout=3.0)
    old = nodes[3]
    net.crash(old)
    others = nodes[:3]
    net.run_until_true(all_see(others, old, MemberState.DEAD), timeout=40.0)
    reborn = net.restart(old, incarnation=0)
    net.join(reborn, nodes[1])
    net.run_until_true(all_alive([*others, reborn]), timeout=10.0)
    assert reborn.membership.incarnation == 1
    assert reborn.membership.counters["refutations"] >= 1


# --------------------------------------------------------------------------- join


def test_join_retries_with_backoff_until_a_member_is_known() -> None:
    """A seed that is down is retried at 1, 2, 4 … s (capped); our own address among the
    seeds is skipped; once the seed is up the join succeeds and retries stop."""
    net = Network()
    a = net.add("a")
    seed_addr = ("10.0.9.9", 7946)
    assert net.join(a, a, seed_addr, seed_addr) == 1
    net.run_for(10.0)
    times = [t for t, name, addr, join in net.push_pulls if name == "a" and join]
    assert times == pytest.approx([0.0, 1.0, 3.0, 7.0])
    seed = net.add("seed", addr=seed_addr)
    net.run_until_true(all_alive([a, seed]), timeout=20.0)
    attempts = len([1 for _, name, _, join in net.push_pulls if name == "a" and join])
    net.run_for(60.0)
    assert len([1 for _, name, _, join in net.push_pulls if name == "a" and join]) == attempts
    assert a.membership.counters["join_attempts"] == attempts


def test_join_through_seed_spreads_to_everyone() -> None:
    """Nodes joining through different seeds end up knowing everyone (join events)."""
    net = Network(seed=3)
    nodes = [net.add(f"n{i}") for i in range(6)]
    for i in range(1, 6):
        net.join(nodes[i], nodes[i - 1])
        net.run_for(0.01)
    net.run_until_true(all_alive(nodes), timeout=5.0)
    for node in nodes:
        joined = {e.node_id for _, e in node.events if e.kind is MemberEvent.JOINED}
        assert joined == {n.id for n in nodes if n is not node}


# --------------------------------------------------------------------------- dissemination


def test_rumor_retransmit_limit_and_replacement() -> None:
    """Each rumor leaves a node at most retransmit_mult × ceil(log10(n+1)) times; queuing a
    newer rumor under the same key replaces the older one; other layers' rumors arrive as
    Deliver effects."""
    net = Network(record=True)
    nodes = net.cluster(8)
    net.run_until_true(all_alive(nodes), timeout=3.0)
    net.run_for(5.0)
    a = nodes[0]
    limit = a.membership.retransmit_limit()
    assert limit == timing.retransmit_limit(4, 8) == 4
    digest1, digest2 = bytes([1]) * 32, bytes([2]) * 32
    first = ManifestRumor(a.id, 1, digest1)
    second = ManifestRumor(a.id, 2, digest2)
    assert a.membership.broadcast(first, ("manifest", a.id))
    assert a.membership.broadcast(second, ("manifest", a.id))
    assert a.membership.queue_depth == 1
    a.sent.clear()
    net._flush(a)
    net.run_for(5.0)
    sent = [m for _, p in a.sent for m in p.messages if isinstance(m, ManifestRumor)]
    assert first not in sent
    assert sent.count(second) == limit
    receivers = {
        n.name
        for n in nodes[1:]
        if any(d.message == second and d.sender == a.id for _, d in n.delivered)
    }
    assert len(receivers) >= 3
    for node in nodes[1:]:
        for _, d in node.delivered:
            assert d.sender == a.id
            assert d.addr == a.addr


def test_packets_stay_within_the_byte_limit_under_a_flood_of_rumors() -> None:
    """Hundreds of queued rumors never make a packet exceed max_packet_bytes, checked on
    real encoded envelopes; a rumor too big for any packet is refused and counted."""
    config = NodeConfig.lan(max_packet_bytes=576)
    net = Network(config, wire=True, record=True)
    nodes = net.cluster(6)
    net.run_until_true(all_alive(nodes), timeout=3.0)
    a = nodes[0]
    for i in range(300):
        assert a.membership.broadcast(
            ManifestRumor(nodes[i % 6].id, i, bytes([i % 256]) * 32), ("m", i)
        )
    big = TaskRequest("t", "cap", {"text": "x" * 600}, 1000, None, "")
    assert not a.membership.broadcast(big, "big")
    assert a.membership.counters["rumors_too_big"] == 1
    net._flush(a)
    net.run_for(10.0)
    sizes = [ENVELOPE_OVERHEAD + sum(wire_size(m) for m in p.messages) for _, p in a.sent]
    assert max(sizes) <= 576
    assert sum(1 for s in sizes if s > 576 - 100) > 20  # packets are actually filled
    assert len(encode(list(a.sent[-1][1].messages), a.signer)) <= 576


def test_push_pull_merges_two_separate_clusters() -> None:
    """Two meshes formed apart merge after one push-pull between them: everyone ends up
    seeing all twelve nodes alive, with no false suspicion."""
    net = Network(seed=5)
    left = net.cluster(6, prefix="l")
    right = net.cluster(6, prefix="r")
    net.run_until_true(lambda: all_alive(left)() and all_alive(right)(), timeout=5.0)
    assert left[0].view(right[0]) is None
    right[3].membership.join([left[2].addr], net.now)
    net._flush(right[3])
    took = net.run_until_true(all_alive(left + right), timeout=10.0)
    assert took < 5.0
    assert all(
        not n.events_about(m, MemberEvent.SUSPECT) for n in left + right for m in left + right
    )


def _answer_next_probe(m: Membership, now: float, members: int) -> tuple[float, list[object]]:
    """Run ``m`` to its next probe, answer it with an ack reporting a view of ``members``;
    return the time and the effects that followed the ack."""
    for _ in range(100):  # a probe is due within one probe interval: a few ticks
        now = m.next_deadline()
        m.tick(now)
        pings = [
            (e.addr, msg)
            for e in m.take_effects()
            if isinstance(e, SendPacket)
            for msg in e.messages
            if isinstance(msg, Ping)
        ]
        if pings:
            break
    else:
        raise AssertionError("no probe was sent")
    addr, ping = pings[0]
    target = next(p for p in (peer(1), peer(2)) if p.node_id == ping.target)
    m.receive(target.node_id, [Ack(ping.seq, 0, members)], addr, now)
    return now, list(m.take_effects())


def test_acks_reporting_a_bigger_view_twice_start_a_catch_up_push_pull() -> None:
    """A node that missed a rumor learns it from acks: two probes in a row answered by
    members holding more than it does start one push-pull with the member just probed,
    then no other before ``catch_up_interval``; a view no bigger than ours resets."""
    m, _ = lonely()
    introduce(m, [alive_of(peer(i)) for i in (1, 2)], 0.0)
    m.take_effects()
    assert m.cluster_size() == 3
    now, effects = _answer_next_probe(m, 0.0, 5)
    assert not [e for e in effects if isinstance(e, StartPushPull)]
    now, effects = _answer_next_probe(m, now, 3)  # as big as ours: evidence reset
    now, effects = _answer_next_probe(m, now, 5)
    assert not [e for e in effects if isinstance(e, StartPushPull)]
    probed_at = now
    now, effects = _answer_next_probe(m, now, 5)
    (start,) = [e for e in effects if isinstance(e, StartPushPull)]
    assert start.join is False
    assert start.addr in {m.member(p.node_id).address for p in (peer(1), peer(2))}  # type: ignore[union-attr]
    assert m.counters["catch_up_push_pulls"] == 1
    assert now - probed_at < LAN.catch_up_interval
    while now < probed_at + LAN.catch_up_interval:
        now, effects = _answer_next_probe(m, now, 5)
        if now < probed_at + LAN.catch_up_interval:
            assert not [e for e in effects if isinstance(e, StartPushPull)]
    assert m.counters["catch_up_push_pulls"] <= 2
    off, _ = lonely(NodeConfig.lan(catch_up_interval=0.0), name="off")
    introduce(off, [alive_of(peer(i)) for i in (1, 2)], 0.0)
    now = 0.0
    for _ in range(4):
        now, effects = _answer_next_probe(off, now, 5)
        assert not [e for e in effects if isinstance(e, StartPushPull)]


def withhold_alive(net: Network, subject: Node, deaf: Node) -> None:
    """From now on, strip every ``Alive`` about ``subject`` from packets to ``deaf`` (the
    rest of each packet still arrives)."""
    send = net._send

    def strip(node: Node, packet: SendPacket) -> None:
        if packet.addr == deaf.addr:
            kept = tuple(
                m for m in packet.messages if not (isinstance(m, Alive) and m.node == subject.id)
            )
            if not kept:
                return
            packet = dataclasses.replace(packet, messages=kept)
        send(node, packet)

    net._send = strip  # type: ignore[method-assign]


def test_a_member_that_missed_a_join_catches_up_before_push_pull() -> None:
    """A member that never receives a copy of a new node's ``Alive`` (every copy to it is
    stripped from its packets, which still arrive) learns of the node from its probes'
    acks and a catch-up push-pull, with no periodic push-pull running; with catch-up
    off it still has not learned of it 10 s later."""
    for interval in (LAN.catch_up_interval, 0.0):
        net = Network(config=NodeConfig.lan(catch_up_interval=interval), seed=11)
        nodes = net.cluster(6)
        net.run_until_true(all_alive(nodes), timeout=5.0)
        deaf = nodes[5]
        newcomer = net.add("new")
        withhold_alive(net, newcomer, deaf)
        for node in [*nodes, newcomer]:  # no periodic push-pull during the test
            node.membership._next_push_pull_at = math.inf
        net.join(newcomer, nodes[0])
        net.run_until_true(all_see(nodes[:5], newcomer, MemberState.ALIVE), timeout=3.0)
        assert deaf.view(newcomer) is None
        if interval > 0:
            took = net.run_until_true(all_see([deaf], newcomer, MemberState.ALIVE), timeout=5.0)
            assert took < 5.0
            assert deaf.membership.counters["catch_up_push_pulls"] == 1
            assert [p for p in net.push_pulls if p[1] == deaf.name and not p[3]]
        else:
            net.run_for(10.0)
            assert deaf.view(newcomer) is None
            assert deaf.membership.counters["catch_up_push_pulls"] == 0
        assert not any(n.events_about(m, MemberEvent.SUSPECT) for n in nodes for m in nodes)


def test_periodic_push_pull_heals_a_partition() -> None:
    """A partition long enough for each side to declare the other dead heals by itself:
    push-pull sometimes targets dead members, refutations follow, all are alive again."""
    config = NodeConfig.lan(push_pull_interval=10.0)
    net = Network(config, seed=11)
    nodes = net.cluster(8)
    net.run_until_true(all_alive(nodes), timeout=3.0)
    net.partition(nodes[:4], nodes[4:])
    net.run_until_true(
        lambda: all(a.view(b) is MemberState.DEAD for a in nodes[:4] for b in nodes[4:]),
        timeout=60.0,
    )
    net.run_for(40.0)  # past gossip_to_the_dead_time: only push-pull can heal now
    net.heal()
    net.run_until_true(all_alive(nodes), timeout=90.0, step=0.5)
    assert sum(n.membership.counters["reconnects"] for n in nodes) >= 1


def test_seeds_heal_a_partition_that_outlasted_dead_member_retention() -> None:
    """Once both sides have forgotten each other, only the join seed is left: a node whose
    seed no live member answers for push-pulls with it now and then, and the mesh is whole
    again. Without a lost seed, reconnection draws are as before (none in a whole mesh)."""
    config = NodeConfig.lan(
        push_pull_interval=10.0, gossip_to_the_dead_time=20.0, dead_member_retention=30.0
    )
    net = Network(config, seed=12)
    nodes = net.cluster(6)  # everyone joined through nodes[0]
    net.run_until_true(all_alive(nodes), timeout=3.0)
    net.run_for(60.0)
    assert sum(n.membership.counters["seed_reconnects"] for n in nodes) == 0
    net.partition(nodes[:3], nodes[3:])
    net.run_until_true(
        lambda: all(a.view(b) is None for a in nodes[:3] for b in nodes[3:]),
        timeout=120.0,
    )
    net.heal()
    net.run_until_true(all_alive(nodes), timeout=120.0, step=0.5)
    assert sum(n.membership.counters["seed_reconnects"] for n in nodes[3:]) >= 1


def test_state_snapshot_and_merge_round_trip() -> None:
    """merge_state of a snapshot reproduces the table once the members it names answer
    us; a suspect travels with its Alive. The snapshot's source is a member at once, the
    others are held unverified until they contact us."""
    m1, one = lonely(name="one")
    y, z = peer(1), peer(2)
    src = ("10.1.1.1", 7946)
    introduce(m1, [alive_of(y, 2), alive_of(z, 1)], 0.0)
    m1.receive(z.node_id, [signed(Suspect(y.node_id, 2, z.node_id, NO_SIG), z)], src, 1.0)
    snapshot = m1.state_snapshot()
    assert [type(r) for r in snapshot] == [Alive, Alive, Suspect, Alive]
    m2, _ = lonely(name="two")
    assert m2.merge_state(snapshot, 5.0, source=one.node_id) == 1
    assert m2.member(y.node_id) is None
    assert {a.node for a in m2.unverified()} == {y.node_id, z.node_id}
    for node in (y, z):  # any signed packet from its advertised address verifies it
        m2.receive(node.node_id, [Nack(1)], m1.member(node.node_id).address, 5.5)  # type: ignore[union-attr]
    assert m2.unverified_count() == 0
    assert m2.merge_state(snapshot, 6.0, source=one.node_id) == 1  # the suspicion
    for node in (y, z, one):
        a, b = m1.member(node.node_id), m2.member(node.node_id)
        assert a is not None
        assert b is not None
        assert (a.state, a.incarnation, a.address) == (b.state, b.incarnation, b.address)
    assert m2.merge_state(snapshot, 7.0, source=one.node_id) == 0  # idempotent


def test_merge_state_refutes_suspicion_about_ourselves() -> None:
    """A remote snapshot saying we are dead makes us refute, not die."""
    m, me = lonely()
    z = peer(2)
    m.merge_state([alive_of(z), signed(Dead(me.node_id, 0, z.node_id, NO_SIG), z)], 1.0)
    assert m.incarnation == 1
    assert m.member(me.node_id).state is MemberState.ALIVE  # type: ignore[union-attr]
    assert m.counters["refutations"] == 1


def _merge_fixture() -> tuple[Membership, list[Message], FastSigner, FastSigner]:
    """A membership that knows three peers (incarnations 2, 2, 1), a snapshot mixing
    every kind of rumor a merge meets (stale, older, newer, about ourselves, unknown
    subjects, a bad address at a stale incarnation, a forged newer ``Alive``, an
    accusation, a non-rumor), its own signer and the snapshot's source."""
    m, me = lonely(name="merge")
    y, z, w, stranger = peer(1), peer(2), peer(3), peer(4)
    introduce(m, [alive_of(y, 2), alive_of(z, 2), alive_of(w, 1)], 0.0)
    forged = dataclasses.replace(alive_of(w, 5), signature=alive_of(z, 5).signature)
    snapshot: list[Message] = [
        alive_of(y, 2),  # stale: the same incarnation
        alive_of(z, 1),  # stale: an older incarnation
        alive_of(w, 3),  # newer: applied
        dataclasses.replace(alive_of(y, 1), host="0.0.0.0"),  # bad address, stale
        alive_of(me, 0),  # about ourselves
        alive_of(stranger, 0),  # unknown subject: held unverified
        forged,  # newer but forged
        signed(Suspect(z.node_id, 2, y.node_id, NO_SIG), y),
        signed(Dead(stranger.node_id, 0, y.node_id, NO_SIG), y),  # unknown subject
        Nack(3),  # not a rumor
    ]
    return m, snapshot, me, y


@pytest.mark.parametrize("with_source", [False, True])
def test_merge_state_takes_stale_alives_as_the_full_rule_does(with_source: bool) -> None:
    """A merge takes a stale ``Alive`` about a known member without the full rule (the
    10,000-node push-pull is nearly all of those): the outcome, the return value, every
    counter and the table are those of the full rule applied to every rumor in order."""
    fast, snapshot, _, source = _merge_fixture()
    slow, _, _, _ = _merge_fixture()
    src = source.node_id if with_source else None
    applied = fast.merge_state(snapshot, 1.0, source=src)
    # The reference: the source's own Alive first (as merge_state does), then every other
    # rumor through the full rule, one by one.
    slow.counters["push_pull_merges"] += 1
    expected = 0
    firsts = [r for r in snapshot if src is not None and type(r) is Alive and r.node == src]
    for rumor in firsts:
        expected += slow._apply(rumor, 1.0, source=src or "", direct=True)  # type: ignore[arg-type]
    if src is not None:
        slow._verify_by_contact(src, 1.0)
    for rumor in snapshot:
        if any(rumor is f for f in firsts):
            continue
        expected += slow._merge_one(rumor, 1.0, src, src or "")
    if src is not None:
        slow._verify_by_contact(src, 1.0)
    assert fast.counters["rumors_stale"] >= 2  # the fast path was taken
    assert fast.counters["addresses_invalid"] == 1  # and left the bad address to the rule
    assert applied == expected
    assert fast.counters == slow.counters
    for node in [*(r.node for r in snapshot if isinstance(r, Alive))]:
        assert fast.member(node) == slow.member(node)
    assert {a.node for a in fast.unverified()} == {a.node for a in slow.unverified()}


def test_member_with_ack_is_replace_of_load_and_rtt() -> None:
    """``Member.with_ack`` copies every other field: the same member as
    ``dataclasses.replace`` gives, for the field list it was written for."""
    signer = peer(1)
    alive = alive_of(signer, 3)
    member = Member(
        signer.node_id, "10.1.0.7", 7946, 3, MemberState.SUSPECT, 12.5, alive, alive,
        load=4, rtt=0.002, pressure=(10, 20),
    )  # fmt: skip
    assert [f.name for f in dataclasses.fields(Member)] == [
        "node_id", "host", "port", "incarnation", "state", "state_change", "rumor", "alive",
        "load", "rtt", "pressure",
    ]  # fmt: skip
    assert member.with_ack(7, 0.004) == dataclasses.replace(member, load=7, rtt=0.004)
    assert member.with_ack(None, None) == dataclasses.replace(member, load=None, rtt=None)


# --------------------------------------------------------------------------- clusters


def test_thirty_nodes_converge_and_detect_a_crash_without_false_positives() -> None:
    """30 nodes join through one seed and all see each other alive within seconds; a
    crashed node is declared dead by every survivor, and nobody alive is ever suspected."""
    net = Network(seed=30)
    nodes = net.cluster(30, stagger=0.02)
    took = net.run_until_true(all_alive(nodes), timeout=10.0)
    assert took < 5.0
    net.run_for(10.0)
    victim = nodes[17]
    net.crash(victim)
    crashed_at = net.now
    survivors = [n for n in nodes if n is not victim]
    net.run_until_true(all_see(survivors, victim, MemberState.DEAD), timeout=60.0, step=0.25)
    detection = net.now - crashed_at
    low, _ = timing.suspicion_bounds(4, 6, 30, 1.0)
    assert low < detection < 3 * low  # confirmations bring it close to the minimum
    net.run_for(10.0)
    for a in survivors:
        for b in survivors:
            if a is not b:
                assert not a.events_about(b, MemberEvent.SUSPECT), (a.name, b.name)
        assert a.membership.counters["refutations"] == 0
    assert all_alive(survivors)()


def test_local_preset_detects_a_crash_within_seconds() -> None:
    """With the local profile, a 20-node mesh whose packets are delayed by up to 80 ms
    (a busy machine) raises no suspicion at all, and a killed node is declared dead by
    every survivor within a few seconds."""
    net = Network(NodeConfig.local(), seed=20, latency=0.001, jitter=0.08)
    nodes = net.cluster(20, stagger=0.01)
    net.run_until_true(all_alive(nodes), timeout=5.0, step=0.05)
    net.run_for(30.0)
    assert sum(n.membership.counters["suspicions_raised"] for n in nodes) == 0
    victim = nodes[5]
    net.crash(victim)
    survivors = [n for n in nodes if n is not victim]
    detection = net.run_until_true(
        all_see(survivors, victim, MemberState.DEAD), timeout=10.0, step=0.05
    )
    assert detection < 4.0
    assert all(not a.events_about(b, MemberEvent.SUSPECT) for a in survivors for b in survivors)


def test_lossy_network_suspects_but_never_kills_live_nodes() -> None:
    """At 10 % packet loss, indirect probes and refutation keep every live node alive:
    suspicions may happen, no live node is ever declared dead."""
    net = Network(seed=99, loss=0.10)
    nodes = net.cluster(12)
    net.run_until_true(all_alive(nodes), timeout=10.0)
    net.run_for(60.0)
    for a in nodes:
        for b in nodes:
            if a is not b:
                assert not a.events_about(b, MemberEvent.DEAD), (a.name, b.name)
    assert all_alive(nodes)()


def test_dead_members_are_forgotten_after_retention() -> None:
    """Dead and left members are dropped from the table (and from snapshots) once
    dead_member_retention has passed since their last state change."""
    config = NodeConfig.lan(dead_member_retention=60.0)
    net = Network(config)
    nodes = net.cluster(5)
    net.run_until_true(all_alive(nodes), timeout=3.0)
    net.crash(nodes[4])
    nodes[3].membership.leave(net.now)
    net._flush(nodes[3])
    net.run_for(1.0)
    net.crash(nodes[3])
    rest = nodes[:3]
    net.run_until_true(all_see(rest, nodes[4], MemberState.DEAD), timeout=30.0)
    assert all(n.view(nodes[3]) is MemberState.LEFT for n in rest)
    net.run_for(61.0)
    for node in rest:
        assert node.membership.member(nodes[4].id) is None
        assert node.membership.member(nodes[3].id) is None
        assert len(node.membership.members()) == 3
        assert len(node.membership.state_snapshot()) == 3
        forgotten = {e.node_id for _, e in node.events if e.kind is MemberEvent.FORGOTTEN}
        assert forgotten == {nodes[3].id, nodes[4].id}
    assert all_alive(rest)()


# --------------------------------------------------------------------------- Lifeguard


def test_isolated_node_raises_its_own_health_score_and_slows_down() -> None:
    """A node whose outgoing packets are all lost gets no acks and no nacks: its local
    health score climbs to the maximum and its probe period stretches accordingly."""
    net = Network()
    nodes = net.cluster(5)
    net.run_until_true(all_alive(nodes), timeout=3.0)
    sick = nodes[0]
    for other in nodes[1:]:
        net.cut_link(sick, other)
    before = sick.membership.counters["probes"]
    net.run_for(20.0)
    assert sick.membership.health == LAN.awareness_max_multiplier - 1
    probes = sick.membership.counters["probes"] - before
    assert probes < 10  # instead of 20 at full speed


def test_a_stalled_node_blames_itself_not_its_peers() -> None:
    """A node not scheduled for 3 s (probe in flight) does not suspect the peer whose ack
    waited in its socket buffer: the late tick shifts its timers and raises its health."""
    net = Network()
    a, b = net.cluster(2)
    net.run_until_true(all_alive([a, b]), timeout=2.0)
    net.run_until_true(lambda: a.membership._probe is not None, timeout=2.0, step=0.001)
    net.freeze(a)
    net.run_for(3.0)
    net.thaw(a)
    net.run_for(10.0)
    assert a.membership.counters["stalls"] == 1
    assert a.membership.counters["suspicions_raised"] == 0
    assert not a.events_about(b, MemberEvent.SUSPECT)
    assert all_alive([a, b])()


def test_repr_shows_live_state() -> None:
    """repr names the node, incarnation, state counts, queue depth and health."""
    m, me = lonely()
    text = repr(m)
    assert me.node_id[:10] in text
    assert "alive=1" in text
    assert "queue=1" in text
    assert "health=0" in text
    m.leave(0.0)
    assert " left " in repr(m)
    member = m.member(me.node_id)
    assert isinstance(member, Member)
    assert "left@0" in repr(member)


# --------------------------------------------------------------------------- API details


def trace(seed: int) -> list[tuple[object, ...]]:
    """Every packet and event of a faulty run, in order."""
    net = Network(seed=seed, loss=0.05, record=True)
    nodes = net.cluster(10)
    net.run_for(5.0)
    net.crash(nodes[3])
    net.partition(nodes[:5], nodes[5:])
    net.run_for(20.0)
    net.heal()
    net.run_for(20.0)
    out: list[tuple[object, ...]] = []
    for node in nodes:
        out += [(t, p.addr, p.messages) for t, p in node.sent]
        out += [(t, e.kind, e.node_id, e.member.incarnation) for t, e in node.events]
    return out


def test_runs_are_reproducible_from_the_seed() -> None:
    """The same seed gives the same packets and events, byte for byte; another seed
    does not."""
    first = trace(4)
    assert first == trace(4)
    assert first != trace(5)


def _wire_coordinate(c: Coordinate) -> NetworkCoordinate:
    return NetworkCoordinate(c.vec, c.error, c.adjustment, c.height)


def test_probe_message_size_bounds() -> None:
    """The sizes assumed for probe messages bound their real encoding at the extremes."""
    from meshnode.core import membership as core

    node = peer(1).node_id
    biggest = 2**64 - 1
    assert wire_size(Ping(biggest, node)) <= core._PING_BYTES
    assert wire_size(Ack(biggest, 1_000_000, 2**32 - 1)) <= core._ACK_BYTES
    coord = NetworkCoordinate((-1e300,) * 8, 1e300, -1e300, 1e300)
    with_coordinate = Ack(biggest, 1_000_000, 2**32 - 1, coord)
    assert wire_size(with_coordinate) <= core._ACK_BYTES + core._ACK_COORDINATE_BYTES
    assert wire_size(Nack(biggest)) <= core._NACK_BYTES
    for host in ("h", "10.0.0.1", "x" * 31, "y" * 32, "z" * 253):
        request = PingReq(biggest, node, host, 65_535)
        assert wire_size(request) <= core._PING_REQ_FIXED_BYTES + len(host)


def test_ping_req_naming_us_and_non_rumors_in_push_pull() -> None:
    """A ping-req about ourselves is answered with an ack; push-pull entries that are
    not membership rumors are counted and skipped; other messages are delivered up."""
    m, _ = lonely()
    src = ("10.1.1.1", 7946)
    introduce(m, [alive_of(peer(1), host=src[0])], 0.0)
    m.take_effects()
    m.receive(peer(1).node_id, [PingReq(9, m.node_id, "10.9.9.9", 7946)], src, 0.0)
    (packet,) = [e for e in m.take_effects() if isinstance(e, SendPacket)]
    assert packet.addr == src
    assert packet.messages[0] == Ack(9, 0, 2, _wire_coordinate(m.coordinate()))
    rumors = [Ping(1, m.node_id), alive_of(peer(2))]
    assert m.merge_state(rumors, 0.0, source=peer(2).node_id) == 1  # type: ignore[arg-type]
    assert m.counters["rumors_invalid"] == 1
    rumor = ManifestRumor(peer(2).node_id, 3, bytes(32))
    m.receive(peer(2).node_id, [rumor], src, 0.0)
    delivered = [e for e in m.take_effects() if isinstance(e, Deliver)]
    assert delivered == [Deliver(peer(2).node_id, src, rumor)]
    assert m.counters["recv_manifestrumor"] == 1


def test_leave_is_idempotent_and_ends_probing() -> None:
    """After leave() the node no longer probes, joins or refutes, and a second leave()
    changes nothing."""
    net = Network()
    a, b = net.cluster(2)
    net.run_until_true(all_alive([a, b]), timeout=2.0)
    a.membership.leave(net.now)
    net._flush(a)
    incarnation = a.membership.incarnation
    probes = a.membership.counters["probes"]
    a.membership.leave(net.now)
    assert [e for e in a.membership.take_effects() if isinstance(e, MemberChanged)] == []
    assert a.membership.join([b.addr], net.now) == 0
    net.run_for(10.0)
    assert a.membership.counters["probes"] == probes
    assert a.membership.incarnation == incarnation
    assert b.view(a) is MemberState.LEFT
    assert a.membership.cluster_size() == 1  # b only: we no longer count ourselves


def test_constructor_validates_its_arguments() -> None:
    """A negative incarnation or an unusable address is refused."""
    signer = peer(1)
    with pytest.raises(ValueError, match="incarnation"):
        Membership(LAN, signer, host="h", port=1, rng=random.Random(1), incarnation=-1)
    with pytest.raises(ValueError, match="address"):
        Membership(LAN, signer, host="h", port=0, rng=random.Random(1))


# --------------------------------------------------------------------------- purity

CORE = Path(__file__).resolve().parents[2] / "meshnode" / "core"
MEMBERSHIP_MODULES = [
    CORE / name
    for name in (
        "__init__.py",
        "broadcast.py",
        "config.py",
        "effects.py",
        "health.py",
        "membership.py",
        "suspicion.py",
        "timing.py",
    )
]
FORBIDDEN_IMPORTS = {"asyncio", "time", "socket", "aiohttp", "threading", "datetime", "os"}


@pytest.mark.parametrize("path", MEMBERSHIP_MODULES, ids=[p.name for p in MEMBERSHIP_MODULES])
def test_membership_modules_are_sans_io(path: Path) -> None:
    """No I/O, clock or thread imports; `random` only for the `random.Random` type; each
    module opens with its theory of operation."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
            assert node.module != "random", "import random.Random via `import random`"
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "random"
        ):
            assert node.attr == "Random", f"global random.{node.attr} used in {path.name}"
    assert roots & FORBIDDEN_IMPORTS == set()
    docstring = ast.get_docstring(tree)
    assert docstring is not None
    assert len(docstring.strip()) > 80
