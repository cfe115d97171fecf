"""Membership against hostile peers: wire addresses, who may accuse, second-hand members,
relays and identity conflicts. Each rule is driven through the sans-I/O core by hand."""

from __future__ import annotations

import random

import pytest

from meshnode.core.config import NodeConfig
from meshnode.core.effects import IdentityConflict, MemberChanged, SendPacket, StartPushPull
from meshnode.core.membership import (
    ADDRESS_FLAP_WINDOW,
    MAX_INCARNATION,
    REFUTATION_WAR_COUNT,
    Member,
    Membership,
    MemberState,
    address_problem,
)
from protocol import (
    Ack,
    Alive,
    Dead,
    FastSigner,
    LedgerRecord,
    Nack,
    Ping,
    PingReq,
    Signer,
    Suspect,
    fast_verify,
)
from tests.unit.test_membership import NO_SIG, alive_of, introduce, peer, signed

LAN = NodeConfig.lan()


def node(config: NodeConfig = LAN, name: str = "victim", ip_version: int = 4) -> Membership:
    return Membership(
        config,
        FastSigner.from_seed(name.encode()),
        host="10.9.9.9",
        port=7946,
        rng=random.Random(3),
        verifier=fast_verify,
        detect_stalls=False,
        ip_version=ip_version,  # type: ignore[arg-type]
    )


def alive_at(signer: Signer, host: str, port: int = 7946, incarnation: int = 0) -> Alive:
    return signed(Alive(signer.node_id, incarnation, host, port, NO_SIG), signer)


def sends(m: Membership) -> list[SendPacket]:
    return [e for e in m.take_effects() if isinstance(e, SendPacket)]


def run_probes(m: Membership, until: float, now: float = 0.0) -> tuple[float, list[SendPacket]]:
    """Tick ``m`` at its deadlines up to ``until``; every packet it sent meanwhile."""
    out: list[SendPacket] = []
    while True:
        deadline = m.next_deadline()
        if deadline > until:
            return now, out
        now = deadline
        m.tick(now)
        out += sends(m)


# --------------------------------------------------------------------------- addresses


@pytest.mark.parametrize(
    ("host", "port", "version", "ok"),
    [
        ("10.1.2.3", 7946, 4, True),
        ("127.0.0.1", 1, 4, True),
        ("192.168.0.1", 65_535, 4, True),
        ("::1", 7946, 6, True),
        ("fe80::1%eth0", 7946, 6, True),
        ("2001:db8::7", 7946, 6, True),
        ("localhost", 7946, 4, False),  # a name: resolving it is not the core's business
        ("example.com", 7946, 4, False),
        ("::1", 7946, 4, False),  # wrong family for the socket
        ("127.0.0.1", 7946, 6, False),
        ("0.0.0.0", 7946, 4, False),  # unspecified
        ("::", 7946, 6, False),
        ("224.0.0.1", 7946, 4, False),  # multicast
        ("ff02::1", 7946, 6, False),
        ("255.255.255.255", 7946, 4, False),  # broadcast
        ("10.1.2.3", 0, 4, False),
        ("10.1.2.3", 65_536, 4, False),
        ("10.1.2.3", True, 4, False),
        ("", 7946, 4, False),
        ("010.001.002.003", 7946, 4, False),  # not a canonical literal
        (" 10.1.2.3", 7946, 4, False),
    ],
)
def test_address_problem_table(host: str, port: int, version: int, ok: bool) -> None:
    """Only numeric IP literals of the socket's family with a real port are addresses."""
    problem = address_problem(host, port, version)
    assert (problem is None) is ok, problem


@pytest.mark.parametrize(
    "host", ["localhost", "::1", "0.0.0.0", "224.0.0.1", "255.255.255.255", "no such host"]
)
def test_alive_with_a_bad_address_changes_nothing(host: str) -> None:
    """A self-signed Alive naming a host name, a foreign family or a special address is
    refused and counted, whether it arrives first-hand, by gossip or by push-pull.

    On the unfixed code: the member was added at that address (and under uvloop the
    runtime's sendto to it raised, stopping failure detection)."""
    m = node()
    fresh = FastSigner.from_seed(b"stranger")
    bad = alive_at(fresh, host)
    m.receive(fresh.node_id, [bad], ("10.0.0.5", 7946), 0.0)
    m.receive(peer(1).node_id, [bad], ("10.0.0.6", 7946), 0.0)
    m.merge_state([bad], 0.0, source=fresh.node_id)
    assert m.member(fresh.node_id) is None
    assert m.unverified_count() == 0
    assert m.counters["addresses_invalid"] == 3


def test_ping_req_naming_a_host_name_is_refused_without_raising() -> None:
    """On the unfixed code: the PingReq was served and a SendPacket to ("localhost", 1)
    was emitted (the runtime raised on it)."""
    m = node()
    y = peer(1)
    introduce(m, [alive_of(y)], 0.0)
    m.take_effects()
    m.receive(y.node_id, [PingReq(5, peer(2).node_id, "localhost", 1)], ("10.0.0.1", 7946), 0.0)
    assert sends(m) == []
    assert m.counters["addresses_invalid"] == 1


def test_no_packet_or_push_pull_leaves_for_an_invalid_address() -> None:
    """Defence in depth: even a member that got into the table some other way (here a
    converged start) is never sent to at an address the wire check refuses.

    On the unfixed code: probes, gossip and push-pulls went to "localhost"."""
    m = Membership(
        NodeConfig.lan(push_pull_interval=1.0),
        FastSigner.from_seed(b"victim"),
        host="10.9.9.9",
        port=7946,
        rng=random.Random(3),
        verifier=fast_verify,
        detect_stalls=False,
    )
    bogus = FastSigner.from_seed(b"bogus")
    alive = alive_at(bogus, "localhost")
    member = Member(bogus.node_id, "localhost", 7946, 0, MemberState.ALIVE, 0.0, alive, alive)
    m.adopt_converged({bogus.node_id: member}, 0.0)
    m.broadcast(Nack(1), "something to gossip")
    effects: list[object] = []
    now = 0.0
    while now < 10.0:
        now = m.next_deadline()
        m.tick(now)
        effects += m.take_effects()
    addresses = [e.addr for e in effects if isinstance(e, SendPacket | StartPushPull)]
    assert ("localhost", 7946) not in addresses
    assert m.counters["sends_refused"] > 0
    assert m.join([("localhost", 1), ("10.0.0.1", 7946)], now) == 1


# --------------------------------------------------------------------------- accusations


def _victim_with_members() -> tuple[Membership, FastSigner, FastSigner]:
    m = node()
    y, z = peer(1), peer(2)
    introduce(m, [alive_of(y, 5), alive_of(z, 0)], 0.0)
    m.take_effects()
    return m, y, z


OUTSIDER = FastSigner.from_seed(b"outsider")


@pytest.mark.parametrize(
    ("kind", "incarnation", "accuser", "state_after", "counter"),
    [
        # accusations about y (known Alive at incarnation 5)
        ("dead", MAX_INCARNATION, "outsider", MemberState.ALIVE, "accusations_by_outsiders"),
        ("dead", 5, "outsider", MemberState.ALIVE, "accusations_by_outsiders"),
        ("suspect", 5, "outsider", MemberState.ALIVE, "accusations_by_outsiders"),
        ("dead", MAX_INCARNATION, "z", MemberState.ALIVE, "accusations_ahead"),
        ("suspect", 6, "z", MemberState.ALIVE, "accusations_ahead"),
        ("dead", 5, "z", MemberState.SUSPECT, "dead_downgraded"),  # our suspicion
        ("suspect", 5, "z", MemberState.SUSPECT, "rumors_applied"),
        ("suspect", 4, "z", MemberState.ALIVE, "rumors_stale"),
    ],
)
def test_accusation_rules_table(
    kind: str, incarnation: int, accuser: str, state_after: MemberState, counter: str
) -> None:
    """A Suspect or Dead counts only from a current member, and only at an incarnation
    that member could have seen (not above the one we know), by gossip or push-pull.

    On the unfixed code: Dead(y, 2**64-1) from a non-member made y dead for the whole
    dead-member retention (its refutation would overflow the uint64 wire integer)."""
    for via_push_pull in (False, True):
        m, y, z = _victim_with_members()
        signer = OUTSIDER if accuser == "outsider" else z
        cls = Dead if kind == "dead" else Suspect
        rumor = signed(cls(y.node_id, incarnation, signer.node_id, NO_SIG), signer)
        before = m.counters[counter]
        if via_push_pull:
            m.merge_state([rumor], 1.0, source=signer.node_id)
        else:
            m.receive(signer.node_id, [rumor], ("10.0.0.1", 7946), 1.0)
        member = m.member(y.node_id)
        assert member is not None
        # A Dead about a live member becomes our own suspicion, by gossip or push-pull.
        assert member.state is state_after
        assert member.incarnation == 5
        assert m.counters[counter] > before


def test_accusations_about_ourselves_above_our_incarnation_are_refused() -> None:
    """Nobody can have seen an incarnation of ours above the current one: such an
    accusation is refused and our incarnation does not move.

    On the unfixed code: Dead(us, 2**64-1) made us refute with 2**64, and signing that
    Alive raised LocalProtocolError out of receive()."""
    m, y, _ = _victim_with_members()
    for incarnation in (1, MAX_INCARNATION):
        rumor = signed(Dead(m.node_id, incarnation, y.node_id, NO_SIG), y)
        m.receive(y.node_id, [rumor], ("10.0.0.1", 7946), 1.0)
    assert m.incarnation == 0
    assert m.counters["accusations_ahead"] == 2
    # At our incarnation, any validly signed accusation is refuted (only a member's
    # costs health), and the refutation beats it everywhere.
    m.receive(
        OUTSIDER.node_id,
        [signed(Suspect(m.node_id, 0, OUTSIDER.node_id, NO_SIG), OUTSIDER)],
        ("10.0.0.1", 1),
        2.0,
    )
    assert (m.incarnation, m.health) == (1, 0)
    m.receive(
        y.node_id, [signed(Suspect(m.node_id, 1, y.node_id, NO_SIG), y)], ("10.0.0.1", 1), 3.0
    )
    assert (m.incarnation, m.health) == (2, 1)


def test_incarnation_arithmetic_saturates() -> None:
    """A refutation at 2**64-2 reaches 2**64-1; at 2**64-1 it stays there (no overflow,
    nothing raises, the Alive still encodes). Starting above the limit is refused.

    On the unfixed code: the refutation at 2**64-1 tried to sign Alive(2**64), which
    raised LocalProtocolError out of receive()."""
    from protocol import encode

    for start, after in (
        (MAX_INCARNATION - 2, MAX_INCARNATION - 1),
        (MAX_INCARNATION - 1, MAX_INCARNATION),
        (MAX_INCARNATION, MAX_INCARNATION),
    ):
        signer = FastSigner.from_seed(b"edge")
        m = Membership(
            LAN,
            signer,
            host="10.9.9.9",
            port=7946,
            rng=random.Random(1),
            verifier=fast_verify,
            incarnation=start,
            detect_stalls=False,
        )
        y = peer(1)
        introduce(m, [alive_of(y)], 0.0)
        m.take_effects()
        m.receive(
            y.node_id, [signed(Dead(m.node_id, start, y.node_id, NO_SIG), y)], ("10.0.0.1", 1), 1.0
        )
        assert m.incarnation == after
        assert encode([m.member(m.node_id).alive], signer)  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="incarnation"):
        Membership(LAN, signer, host="10.9.9.9", port=1, rng=random.Random(1), incarnation=2**64)


def test_push_pull_dead_as_suspicion_follows_the_same_rules() -> None:
    """A pushed Dead becomes our suspicion only from a member, at the known incarnation.

    On the unfixed code: a Dead from any key, at any incarnation at or above the known
    one, became a suspicion signed by us (and so trusted everywhere)."""
    m, y, z = _victim_with_members()
    m.merge_state([signed(Dead(y.node_id, 5, OUTSIDER.node_id, NO_SIG), OUTSIDER)], 1.0)
    m.merge_state([signed(Dead(y.node_id, 9, z.node_id, NO_SIG), z)], 1.0)
    assert m.member(y.node_id).state is MemberState.ALIVE  # type: ignore[union-attr]
    assert m.counters["dead_downgraded"] == 0
    m.merge_state([signed(Dead(y.node_id, 5, z.node_id, NO_SIG), z)], 1.0)
    assert m.member(y.node_id).state is MemberState.SUSPECT  # type: ignore[union-attr]
    assert m.counters["dead_downgraded"] == 1


def test_a_refutation_is_not_starved_by_a_flood_of_application_rumors() -> None:
    """Our refutation rides on every packet we send until its retransmit limit, however
    many fresh application rumors (ledger records, manifests) keep arriving; so does a
    membership rumor about another member, ahead of them.

    On the unfixed code: the queue sent fewest-transmitted, newest rumors first whatever
    their kind, so with 40 fresh records arriving between two packets the refutation went
    out in 0 of the 8 acks (in the 30-node byzantine run, victims' refutations sat queued
    unsent for 16 s while honest suspicions of them expired: 8 false deaths)."""
    m, y, z = _victim_with_members()
    flood = 0

    def more_records(count: int) -> None:
        nonlocal flood
        for _ in range(count):
            flood += 1
            record = LedgerRecord(y.node_id, z.node_id, 0.5, 1, flood, 3600.0, NO_SIG)
            m.broadcast(record, ("ledger", flood))

    more_records(200)
    m.receive(y.node_id, [signed(Suspect(m.node_id, 0, y.node_id, NO_SIG), y)], y_addr(y), 1.0)
    m.receive(y.node_id, [signed(Suspect(z.node_id, 0, y.node_id, NO_SIG), y)], y_addr(y), 1.0)
    assert m.incarnation == 1
    refutation = m.member(m.node_id).alive  # type: ignore[union-attr]
    accusation = m.member(z.node_id).rumor  # type: ignore[union-attr]
    carried = relayed = 0
    for i in range(8):
        more_records(40)
        m.receive(y.node_id, [Ping(i, m.node_id)], y_addr(y), 2.0 + i)
        (packet,) = sends(m)
        assert isinstance(packet.messages[0], Ack)
        carried += refutation in packet.messages
        relayed += accusation in packet.messages
    limit = m.retransmit_limit()
    assert carried == min(8, limit)
    assert relayed == min(8, limit)


def test_a_gossiped_dead_about_a_live_member_becomes_our_suspicion() -> None:
    """A Dead signed by another member about a member we hold alive, at its current
    incarnation, makes us suspect it (signed by us) instead of dropping it: it stays in
    our probe list (our next ping carries the Suspect, so it can refute at once), its
    refutation ends the suspicion, and a really dead member is still declared dead, by a
    second Dead while we suspect it or by our own suspicion's expiry.

    On the unfixed code: the member was dead at once on one member's word (out of our
    probe and gossip lists) and we relayed that Dead; in the 30-node byzantine run
    (accuse and ledger-flood, 30 s, seed 1) honest nodes held live honest members dead
    514 times on Byzantine Deads."""
    m, y, z = _victim_with_members()
    w = peer(3)
    introduce(m, [alive_of(w)], 0.0)
    m.take_effects()
    dead = signed(Dead(y.node_id, 5, z.node_id, NO_SIG), z)
    m.receive(z.node_id, [dead], y_addr(z), 1.0)
    member = m.member(y.node_id)
    assert member is not None and member.state is MemberState.SUSPECT
    assert isinstance(member.rumor, Suspect) and member.rumor.accuser == m.node_id
    assert m.counters["dead_downgraded"] == 1
    queued = [r.message for r in m._queue]
    assert dead not in queued and member.rumor in queued  # we gossip our suspicion
    # Its refutation ends it.
    m.receive(y.node_id, [alive_of(y, 6)], y_addr(y), 2.0)
    assert m.member(y.node_id).state is MemberState.ALIVE  # type: ignore[union-attr]
    assert m.suspicion(y.node_id) is None
    # A really dead member: a second Dead while we suspect it is applied...
    m.receive(z.node_id, [signed(Dead(y.node_id, 6, z.node_id, NO_SIG), z)], y_addr(z), 3.0)
    assert m.member(y.node_id).state is MemberState.SUSPECT  # type: ignore[union-attr]
    m.receive(w.node_id, [signed(Dead(y.node_id, 6, w.node_id, NO_SIG), w)], y_addr(w), 3.5)
    assert m.member(y.node_id).state is MemberState.DEAD  # type: ignore[union-attr]
    # ...and without one, our suspicion expires into our own Dead.
    m.receive(z.node_id, [signed(Dead(w.node_id, 0, z.node_id, NO_SIG), z)], y_addr(z), 4.0)
    suspicion = m.suspicion(w.node_id)
    assert suspicion is not None
    m.tick(suspicion.deadline)
    gone = m.member(w.node_id)
    assert gone is not None and gone.state is MemberState.DEAD
    assert isinstance(gone.rumor, Dead) and gone.rumor.accuser == m.node_id


def y_addr(y: Signer) -> tuple[str, int]:
    alive = alive_of(y)
    return alive.host, alive.port


# --------------------------------------------------------------------------- second-hand


def fakes(count: int, prefix: str = "fake") -> list[Alive]:
    out = []
    for i in range(count):
        signer = FastSigner.from_seed(f"{prefix}-{i}".encode())
        out.append(alive_at(signer, f"10.{50 + i // 65_000}.{i // 250 % 250}.{i % 250 + 1}"))
    return out


def test_second_hand_members_are_held_apart_until_they_answer() -> None:
    """An Alive relayed by someone else makes no member: not in the table, the cluster
    size, the probe list, the gossip queue or our snapshot; no event.

    On the unfixed code: the fake was a member at once, probed, counted in the timing
    formulas, re-gossiped and pushed to every peer."""
    m, y, _ = _victim_with_members()
    fake = fakes(1)[0]
    m.receive(y.node_id, [fake], ("10.0.0.1", 7946), 1.0)
    assert m.member(fake.node) is None
    assert [a.node for a in m.unverified()] == [fake.node]
    assert m.cluster_size() == 3
    assert all(r.node != fake.node for r in m.state_snapshot())
    assert not any(isinstance(e, MemberChanged) for e in m.take_effects())
    _, packets = run_probes(m, 30.0, 1.0)
    probes = [p for p in packets if any(isinstance(x, Ping) for x in p.messages)]
    to_fake = [p for p in probes if p.addr == (fake.host, fake.port)]
    # Only the verification lane pings it: a Ping and our own Alive, nothing else.
    assert 1 <= len(to_fake) <= LAN.unverified_tries
    for packet in to_fake:
        assert [type(x) for x in packet.messages] == [Ping, Alive]
        assert packet.messages[1].node == m.node_id  # type: ignore[union-attr]
    gossip = [x for p in packets for x in p.messages if isinstance(x, Alive)]
    assert all(a.node != fake.node for a in gossip)
    # Never answered: dropped quietly, never suspected or declared dead.
    assert m.unverified_count() == 0
    assert m.counters["unverified_dropped"] == 1
    accusations = [x for p in packets for x in p.messages if isinstance(x, Suspect | Dead)]
    assert all(a.node != fake.node for a in accusations)
    assert m.member(fake.node) is None


def test_an_ack_to_a_verification_ping_makes_a_member() -> None:
    m, y, _ = _victim_with_members()
    stranger = FastSigner.from_seed(b"late joiner")
    alive = alive_at(stranger, "10.7.7.7")
    m.receive(y.node_id, [alive], ("10.0.0.1", 7946), 1.0)
    _, packets = run_probes(m, 3.0, 1.0)
    (ping,) = [
        x
        for p in packets
        if p.addr == ("10.7.7.7", 7946)
        for x in p.messages
        if isinstance(x, Ping)
    ][:1]
    # An ack from someone else with that seq verifies nothing.
    m.receive(y.node_id, [Ack(ping.seq)], ("10.0.0.1", 7946), 3.1)
    assert m.member(stranger.node_id) is None
    _, packets = run_probes(m, 5.0, 3.1)
    (ping,) = [
        x
        for p in packets
        if p.addr == ("10.7.7.7", 7946)
        for x in p.messages
        if isinstance(x, Ping)
    ][:1]
    m.receive(stranger.node_id, [Ack(ping.seq)], ("10.7.7.8", 1), 5.1)  # NAT: any source
    member = m.member(stranger.node_id)
    assert member is not None
    assert member.state is MemberState.ALIVE
    assert m.counters["members_verified"] == 1
    assert m.cluster_size() == 4


def test_contact_from_the_member_itself_verifies_at_once() -> None:
    """Joins converge: a packet from a second-hand member's advertised address, its own
    Alive sent by itself, or a push-pull with it make it a member at once."""
    m, y, _ = _victim_with_members()
    a, b, c = (FastSigner.from_seed(s) for s in (b"a", b"b", b"c"))
    alives = [alive_at(a, "10.7.0.1"), alive_at(b, "10.7.0.2"), alive_at(c, "10.7.0.3")]
    m.receive(y.node_id, alives, ("10.0.0.1", 7946), 1.0)
    assert m.unverified_count() == 3
    m.receive(a.node_id, [Ping(1, m.node_id)], ("10.7.0.1", 7946), 1.1)
    m.receive(b.node_id, [alives[1]], ("10.7.0.2", 7946), 1.1)
    m.merge_state([], 1.2, source=c.node_id)
    assert m.unverified_count() == 0
    assert all(m.member(s.node_id) is not None for s in (a, b, c))
    # A packet from another address verifies nothing.
    d = FastSigner.from_seed(b"d")
    m.receive(y.node_id, [alive_at(d, "10.7.0.4")], ("10.0.0.1", 7946), 1.3)
    m.receive(d.node_id, [Ping(2, m.node_id)], ("10.6.6.6", 7946), 1.4)
    assert m.member(d.node_id) is None


def test_verification_lane_is_rate_limited() -> None:
    """At most verify_pings verification pings per probe period, whatever the number of
    unverified members; the rest wait their turn.

    On the unfixed code: 2,000 fake members were all probe targets at once."""
    config = NodeConfig.lan(verify_pings=3)
    m = node(config)
    y = peer(1)
    introduce(m, [alive_of(y)], 0.0)
    m.merge_state([alive_of(y), *fakes(500)], 0.5, source=y.node_id)
    assert m.unverified_count() == 500
    assert m.cluster_size() == 2
    now = 0.5
    periods = 10
    _, packets = run_probes(m, now + periods * config.probe_interval, now)
    yaddr = m.member(y.node_id).address  # type: ignore[union-attr]
    lane = [p for p in packets if p.addr != yaddr]
    assert 0 < len(lane) <= (periods + 1) * 3
    assert m.counters["verify_pings_sent"] == len(lane)


def test_caps_keep_known_members_and_refuse_new_ones() -> None:
    """Per-source, total and table caps: at a cap, known members stay, new ones are
    refused and counted; a push-pull with many fakes costs dictionary work only (no
    signature is checked for a member still unverified).

    On the unfixed code: every fake had its signature checked and became a member (no
    cap: 50,000 fakes made 50,001 members, 0.9 s of CPU with the fast test verifier)."""
    config = NodeConfig.lan(max_members=60, max_unverified_members=40, max_unverified_per_source=25)
    checked: list[bytes] = []

    def counting_verifier(key: bytes, data: bytes, signature: bytes) -> bool:
        checked.append(key)
        return fast_verify(key, data, signature)

    m = Membership(
        config,
        FastSigner.from_seed(b"v"),
        host="10.9.9.9",
        port=7946,
        rng=random.Random(1),
        verifier=counting_verifier,
        detect_stalls=False,
    )
    y, z = peer(1), peer(2)
    introduce(m, [alive_of(y), alive_of(z)], 0.0)
    checked.clear()
    m.merge_state([alive_of(y), *fakes(100, "y")], 1.0, source=y.node_id)
    assert m.unverified_count() == 25
    assert m.counters["unverified_refused"] == 75
    m.merge_state([alive_of(z), *fakes(100, "z")], 1.0, source=z.node_id)
    assert m.unverified_count() == 40
    assert checked == []  # only dictionary work so far
    assert m.cluster_size() == 3
    # The table cap: first-hand members beyond max_members are refused, known ones kept.
    for alive in fakes(80, "direct"):
        m.receive(alive.node, [alive], (alive.host, alive.port), 2.0)
    assert len(m.members()) == 60
    assert m.counters["members_refused"] == 80 - 57
    assert m.member(y.node_id) is not None
    # 50,000 fakes in one snapshot: refused at the caps, no signature checked.
    checked.clear()
    m.merge_state([*fakes(50_000, "flood")], 3.0, source=y.node_id)
    assert checked == []
    assert m.unverified_count() == 40
    assert len(m.members()) == 60


# --------------------------------------------------------------------------- relays


def test_ping_req_is_relayed_only_for_members_to_members_at_our_address() -> None:
    """On the unfixed code: any outsider made us ping any address it named (reflection,
    with our gossip piggybacked)."""
    m, y, z = _victim_with_members()
    zaddr = m.member(z.node_id).address  # type: ignore[union-attr]
    yaddr = m.member(y.node_id).address  # type: ignore[union-attr]
    # From a non-member: refused.
    m.receive(OUTSIDER.node_id, [PingReq(1, z.node_id, *zaddr)], ("10.0.0.9", 7946), 1.0)
    # About a non-member: refused.
    m.receive(y.node_id, [PingReq(2, OUTSIDER.node_id, "10.0.0.9", 7946)], yaddr, 1.0)
    assert sends(m) == []
    assert m.counters["ping_reqs_refused"] == 2
    # About a member at another address: we ping the address we know, and count it.
    m.receive(y.node_id, [PingReq(3, z.node_id, "10.66.66.66", 9999)], ("10.0.0.9", 1), 1.0)
    (packet,) = sends(m)
    assert packet.addr == zaddr
    assert m.counters["ping_req_address_mismatch"] == 1
    (ping,) = [x for x in packet.messages if isinstance(x, Ping)]
    m.receive(z.node_id, [Ack(ping.seq, 0, 3)], zaddr, 1.1)
    (relayed,) = sends(m)
    assert relayed.addr == yaddr  # the requester's known address, not the packet's source
    assert relayed.messages[0] == Ack(3, 0, 3)


# --------------------------------------------------------------------------- identity


def test_alive_about_us_at_another_address_is_an_identity_conflict() -> None:
    """An Alive signed with our key naming another address means a second process holds
    our key: counted, reported once per window, and refuted.

    On the unfixed code: silently refuted, with no counter and no effect."""
    m = node()
    me = FastSigner.from_seed(b"victim")
    clone = alive_at(me, "10.8.8.8", 7000, incarnation=0)
    m.receive(me.node_id, [clone], ("10.8.8.8", 7000), 1.0)
    effects = m.take_effects()
    assert IdentityConflict(m.node_id, ("10.8.8.8", 7000)) in effects
    assert m.counters["identity_conflicts"] == 1
    assert m.incarnation == 1
    m.receive(me.node_id, [alive_at(me, "10.8.8.8", 7000, 5)], ("10.8.8.8", 7000), 2.0)
    assert not any(isinstance(e, IdentityConflict) for e in m.take_effects())  # once
    assert m.counters["identity_conflicts"] == 2
    assert m.incarnation == 6


def test_refutation_war_at_our_own_address_is_reported() -> None:
    """Our incarnation pushed up again and again by Alives signed with our key."""
    m = node()
    me = FastSigner.from_seed(b"victim")
    for i in range(REFUTATION_WAR_COUNT):
        m.receive(
            me.node_id,
            [alive_at(me, "10.9.9.9", 7946, m.incarnation + 1)],
            ("10.9.9.9", 7946),
            float(i),
        )
    assert m.counters["refutation_wars"] == 1
    assert IdentityConflict(m.node_id, ("10.9.9.9", 7946)) in m.take_effects()


def test_member_flapping_between_two_addresses_is_counted() -> None:
    """Another member's id moving back to its previous address within the window."""
    m, y, _ = _victim_with_members()
    first = m.member(y.node_id).address  # type: ignore[union-attr]
    m.receive(y.node_id, [alive_at(y, "10.4.4.4", 7946, 6)], ("10.4.4.4", 7946), 1.0)
    assert m.counters["address_flaps"] == 0  # one move is honest
    m.receive(y.node_id, [alive_at(y, first[0], first[1], 7)], first, 2.0)
    assert m.counters["address_flaps"] == 1
    later = 3.0 + ADDRESS_FLAP_WINDOW + 1
    m.receive(y.node_id, [alive_at(y, "10.4.4.4", 7946, 8)], ("10.4.4.4", 7946), later)
    assert m.counters["address_flaps"] == 1


def test_ipv6_node_refuses_ipv4_members() -> None:
    m = node(ip_version=6)
    y = FastSigner.from_seed(b"six")
    m.receive(y.node_id, [alive_at(y, "10.0.0.1")], ("10.0.0.1", 7946), 0.0)
    m.receive(y.node_id, [alive_at(y, "fd00::1")], ("fd00::1", 7946), 0.0)
    member = m.member(y.node_id)
    assert member is not None
    assert member.host == "fd00::1"
    assert m.counters["addresses_invalid"] == 1


@pytest.mark.parametrize(
    "overrides",
    [
        {"max_members": 1},
        {"max_members": 2.5},
        {"max_unverified_members": -1},
        {"max_unverified_per_source": 11, "max_unverified_members": 10},
        {"verify_pings": -1},
        {"unverified_tries": 0},
    ],
)
def test_hardening_config_is_validated(overrides: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="|".join(overrides)):
        NodeConfig.lan(**overrides)


def test_hardening_defaults_fit_ten_thousand_members() -> None:
    config = NodeConfig.lan()
    assert config.max_members >= 2 * 10_000
    assert config.max_unverified_members >= 10_000
    assert config.max_unverified_per_source <= config.max_unverified_members
    assert Membership(
        config, FastSigner.from_seed(b"x"), host="::1", port=1, rng=random.Random(1), ip_version=6
    )
