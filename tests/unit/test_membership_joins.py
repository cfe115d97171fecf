"""Membership during mass joins and on lossy networks: the vouched verification lane.
Each rule is driven through the sans-I/O core by hand."""

from __future__ import annotations

import pytest

from meshnode.core.config import NodeConfig
from meshnode.core.membership import Membership
from protocol import Ping
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
