"""Membership during mass joins and on lossy networks: the vouched verification lane.
Each rule is driven through the sans-I/O core by hand."""

from __future__ import annotations

import pytest

from meshnode.core.config import NodeConfig
from meshnode.core.membership import Membership, MemberState
from protocol import Ack, Ping, PingReq
from tests.unit.test_membership import alive_of, introduce, peer
from tests.unit.test_membership_hardening import fakes, node, run_probes, sends

LAN = NodeConfig.lan()


def _pinged(packets: list, alives: list) -> set[str]:  # type: ignore[type-arg]
    """Node ids among ``alives`` that got a verification ping in ``packets``."""
    by_addr = {(a.host, a.port): a.node for a in alives}
    return {
        by_addr[p.addr]
        for p in packets
        if p.addr in by_addr and any(isinstance(x, Ping) for x in p.messages)
    }


def _with_members(config: NodeConfig, count: int) -> tuple[Membership, list]:  # type: ignore[type-arg]
    m = node(config)
    members = [peer(i) for i in range(1, count + 1)]
    introduce(m, [alive_of(p) for p in members], 0.0)
    return m, members


def test_newcomers_named_by_two_members_are_verified_ahead_of_a_flood() -> None:
    """A newcomer named by two members goes to the vouched lane and is pinged within a
    probe period, even behind 500 fakes pushed by one member; the fakes still get at most
    ``verify_pings`` pings a period.

    On the unfixed code: the 40 newcomers waited behind the 500 fakes, oldest first at
    16 a period; none was pinged in the first 10 periods (the figure this test saw)."""
    m, (y, z) = _with_members(LAN, 2)
    flood = fakes(500)
    m.merge_state([alive_of(y), *flood], 0.5, source=y.node_id)
    newcomers = [alive_of(peer(100 + i), host=f"10.3.0.{i + 1}") for i in range(40)]
    m.receive(y.node_id, newcomers[:20], (alive_of(y).host, 7946), 0.6)
    m.receive(z.node_id, newcomers[:20], (alive_of(z).host, 7946), 0.6)
    m.receive(y.node_id, newcomers[20:], (alive_of(y).host, 7946), 0.6)
    m.merge_state([alive_of(z), *newcomers[20:]], 0.7, source=z.node_id)
    assert m.unverified_count() == 540
    assert m.counters["unverified_vouched"] == 40
    periods = 10
    _, packets = run_probes(m, 0.7 + periods * LAN.probe_interval, 0.7)
    assert _pinged(packets, newcomers) == {a.node for a in newcomers}
    to_fakes = [p for p in packets if p.addr in {(a.host, a.port) for a in flood}]
    assert 0 < len(to_fakes) <= (periods + 1) * LAN.verify_pings


def test_only_current_members_vouch() -> None:
    """Strangers (fresh keys that never answered us), the same member twice and the
    newcomer itself do not count as vouchers: a newcomer stays in the plain lane."""
    m, (y,) = _with_members(LAN, 1)
    stranger = peer(99)
    newcomer = alive_of(peer(50), host="10.3.0.1")
    m.receive(y.node_id, [newcomer], (alive_of(y).host, 7946), 1.0)
    m.receive(y.node_id, [newcomer], (alive_of(y).host, 7946), 1.1)
    m.receive(stranger.node_id, [newcomer], ("10.4.0.1", 7946), 1.2)
    m.merge_state([newcomer], 1.3, source=stranger.node_id)
    assert m.is_unverified(newcomer.node)
    assert m.counters["unverified_vouched"] == 0


def test_the_push_pull_source_vouches_for_what_it_names() -> None:
    """A snapshot's source becomes a member first, so it vouches for the members it names
    (a joining node's seeds count as vouchers at once)."""
    config = NodeConfig.lan(verify_vouchers=1)
    m = node(config)
    seed = peer(1)
    newcomer = alive_of(peer(50), host="10.3.0.1")
    m.merge_state([newcomer, alive_of(seed)], 0.0, source=seed.node_id)
    assert m.member(seed.node_id) is not None
    assert m.counters["unverified_vouched"] == 1


def test_vouched_lane_is_bounded_and_can_be_turned_off() -> None:
    """Each probe period sends at most verify_pings + verify_vouched_pings verification
    pings, and a full lane sends exactly that many; with the vouched lane at 0 the plain
    lane alone runs, at verify_pings a period."""
    for vouched, per_period in ((8, 4 + 8), (0, 4)):
        config = NodeConfig.lan(verify_pings=4, verify_vouched_pings=vouched)
        m, (y, z) = _with_members(config, 2)
        crowd = fakes(300, "crowd")
        crowd_addrs = {(a.host, a.port) for a in crowd}
        for p in (y, z):
            m.merge_state([alive_of(p), *crowd], 0.5, source=p.node_id)
        now, counts = 0.5, []
        while len(counts) < 5:
            now = m.next_deadline()
            m.tick(now)
            lane = [p for p in sends(m) if p.addr in crowd_addrs]
            if lane:
                counts.append(len(lane))
        assert counts == [per_period] * 5
        assert m.counters["verify_pings_sent"] == 5 * per_period


@pytest.mark.parametrize(
    "overrides",
    [{"verify_vouched_pings": -1}, {"verify_vouchers": 0}, {"verify_vouched_pings": 1.5}],
)
def test_join_config_is_validated(overrides: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        NodeConfig.lan(**overrides)  # type: ignore[arg-type]


def _probe_until_indirect(config: NodeConfig) -> tuple[Membership, object, list]:  # type: ignore[type-arg]
    """A node with three members whose first probe's ping is lost: ticked to the end of
    the direct stage. Returns the node, the probed member and the packets sent then."""
    m, members = _with_members(config, 3)
    addrs = {(alive_of(s).host, 7946): s for s in members}
    sends(m)
    first = None
    while first is None:
        m.tick(m.next_deadline())
        pings = [p for p in sends(m) if p.addr in addrs and isinstance(p.messages[0], Ping)]
        first = pings[0] if pings else None
    probe_ends = m.next_deadline()
    m.tick(probe_ends)  # the end of the direct stage: no ack came
    return m, addrs[first.addr], sends(m)


@pytest.mark.parametrize(("reprobes", "pings_to_target"), [(1, 1), (0, 0), (2, 2)])
def test_a_missed_direct_ack_gets_direct_reprobes_beside_the_relays(
    reprobes: int, pings_to_target: int
) -> None:
    """At the end of the direct stage the target gets ``direct_reprobes`` more pings with
    the probe's sequence number, beside the ping-reqs to the relays."""
    config = NodeConfig.lan(direct_reprobes=reprobes)
    m, target, packets = _probe_until_indirect(config)
    addr = (alive_of(target).host, 7946)  # type: ignore[arg-type]
    again = [p for p in packets if p.addr == addr and isinstance(p.messages[0], Ping)]
    relays = [p for p in packets if p.addr != addr and isinstance(p.messages[0], PingReq)]
    assert len(again) == pings_to_target
    assert len(relays) == 2  # the two other members
    assert m.counters["direct_reprobes"] == reprobes


def test_an_ack_to_the_reprobe_clears_the_probe_without_an_rtt() -> None:
    """The target acks the second ping (the first or its ack was lost): no suspicion, and
    the round-trip time is not taken from an ack that may answer either ping.

    On the unfixed code: no second ping went out (0 pings to the target at the indirect
    stage), so with the relays' paths lost too the probe failed and the target was
    suspected."""
    m, target, packets = _probe_until_indirect(LAN)
    addr = (alive_of(target).host, 7946)  # type: ignore[arg-type]
    (again,) = [p for p in packets if p.addr == addr and isinstance(p.messages[0], Ping)]
    ping = again.messages[0]
    assert isinstance(ping, Ping)
    m.receive(target.node_id, [Ack(ping.seq)], addr, m.next_deadline() - 0.1)  # type: ignore[attr-defined]
    while m.counters["probes"] < 2:  # until the next probe starts: this one is judged
        m.tick(m.next_deadline())
    member = m.member(target.node_id)  # type: ignore[attr-defined]
    assert member is not None and member.state is MemberState.ALIVE
    assert member.rtt is None
    assert m.counters["probes_failed"] == 0
    assert m.counters["suspicions_raised"] == 0


def test_a_candidate_gets_one_verification_ping_per_round_whichever_lane() -> None:
    """A few vouched candidates fit in both lanes' budgets: each still gets one ping per
    probe period, so ``unverified_tries`` stays a number of periods, not of lanes.

    On the unfixed code: both lanes pinged each of them in the same period, so they were
    dropped after 2 periods (rounds of 10 pings, then 5) instead of 3."""
    m, (y, z) = _with_members(LAN, 2)
    few = fakes(5, "few")
    for p in (y, z):
        m.merge_state([alive_of(p), *few], 0.5, source=p.node_id)
    addrs = {(a.host, a.port) for a in few}
    rounds = []
    for _ in range(200):  # ticks: probes, gossip, verification rounds
        m.tick(m.next_deadline())
        lane = [p.addr for p in sends(m) if p.addr in addrs]
        if lane:
            rounds.append(sorted(lane))
    assert rounds == [sorted(addrs)] * LAN.unverified_tries
    assert m.counters["unverified_dropped"] == len(few)
