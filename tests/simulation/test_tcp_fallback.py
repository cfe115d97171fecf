"""The simulator carries the TCP fallback probe like the runtime: a host whose every UDP
datagram is lost (in and out) but whose TCP works stays alive in every view."""

from __future__ import annotations

import pytest

from meshnode.core.config import NodeConfig
from meshnode.core.membership import MemberState
from simulations.cluster import Cluster
from simulations.network import LinkModel
from simulations.scenarios import Spec, run_scenario

WATCH_S = 20.0
"""Simulated seconds of UDP loss watched (local profile: a member whose probes all fail
is dead in about 2 s)."""


@pytest.mark.parametrize(("cap", "kept_alive"), [(2, True), (0, False)])
def test_a_host_without_udp_stays_alive_through_tcp(cap: int, kept_alive: bool) -> None:
    """With the fallback (cap 2) the UDP-less host is never suspected and every other
    node's probes of it are saved over TCP; with it off (cap 0, the behaviour before it)
    the others suspect the same host over and over. Seen (seed 3): 67 probes saved and no
    suspicion with the fallback; 21 suspicions and none saved without it."""
    config = NodeConfig.local(tcp_fallback_max_concurrent=cap)
    cluster = Cluster(seed=3, config=config, link=LinkModel())
    nodes = [cluster.add_node() for _ in range(4)]
    for node in nodes:
        cluster.start(node, nodes[:2])
    cluster.run_until(10.0, stop=lambda: cluster.tracker.converged)
    assert cluster.tracker.converged
    victim = nodes[3]
    cluster.network.set_extra_loss(victim.slot, 1.0)
    cluster.run_until(cluster.now + WATCH_S)
    others = [n for n in nodes if n is not victim]
    views = set()
    saved = 0
    for node in others:
        assert node.core is not None
        member = node.core.membership.member(victim.node_id)
        views.add(member.state if member else None)
        saved += node.core.membership.counters["tcp_fallback_ok"]
    if kept_alive:
        assert views == {MemberState.ALIVE}
        assert saved >= 3 * 10  # each of three nodes probes it many times in 20 s
        assert all(
            n.core is not None and n.core.membership.counters["suspicions_raised"] == 0
            for n in others
        )
    else:
        # Suspected again and again (it refutes over push-pull, which is TCP, so views
        # flap between suspect, dead and alive).
        raised = sum(
            n.core.membership.counters["suspicions_raised"] for n in others if n.core is not None
        )
        assert raised >= 3, raised
        assert saved == 0


def test_tcp_fallback_cuts_false_suspicions_under_loss() -> None:
    """The setting of ``test_direct_reprobes_cut_false_suspicions_at_ten_percent_loss``
    (100 nodes, 10 % datagram loss, 60 s): with the TCP ping beside the relays and the
    re-probe, false suspicions fall from 11 (fallback off) to 4; never a false death."""

    def false_suspicions(*overrides: tuple[str, object]) -> int:
        spec = Spec(
            "steady",
            nodes=100,
            seed=1,
            loss=0.1,
            duration=60.0,
            start="converged",
            outcome_rate=0.0,
            overrides=tuple(overrides),
        )
        outcome = run_scenario(spec)
        assert outcome.violations == []
        assert outcome.results["false_deaths"]["false"] == 0
        count: int = outcome.results["false_suspicions"]["false"]
        return count

    without = false_suspicions(("tcp_fallback_max_concurrent", 0))
    with_fallback = false_suspicions()
    assert without >= 8
    assert with_fallback * 2 <= without
