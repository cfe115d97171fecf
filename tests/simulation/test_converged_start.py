"""A converged start (``--start converged``) is the steady state a join reaches, at once.

Invariants: right after ``Cluster.start_converged`` every core knows every other node
alive at incarnation 0 and holds every manifest, nothing is queued for gossip, and the
tracker reports convergence; the tracker's bulk counts (and the manifest versions shared
between observers) agree with a brute-force comparison of every view through crashes,
restarts, manifest updates and partitions; a restarted host gets its stored manifests
back; and the steady state measured from a converged start matches the one reached by a
join.
"""

from __future__ import annotations

import pytest

from meshnode.core.config import NodeConfig
from meshnode.core.membership import MemberState
from simulations.cluster import Cluster, SimNode, Status
from simulations.engine import derive_rng
from simulations.network import LinkModel
from simulations.scenarios import Spec, run_scenario
from tests.simulation.test_tracker import brute_force, random_fault


def converged_cluster(n: int, seed: int = 5, loss: float = 0.0) -> tuple[Cluster, list[SimNode]]:
    cluster = Cluster(seed=seed, config=NodeConfig.local(), link=LinkModel(loss=loss))
    nodes = [cluster.add_node() for _ in range(n)]
    cluster.start_converged(nodes, nodes[:3])
    return cluster, nodes


def test_every_core_starts_with_the_whole_mesh() -> None:
    cluster, nodes = converged_cluster(9)
    for node in nodes:
        core = node.core
        assert core is not None and node.status is Status.RUNNING
        members = core.membership.members()
        assert [m.node_id for m in members] == sorted(n.node_id for n in nodes)
        assert all(m.state is MemberState.ALIVE and m.incarnation == 0 for m in members)
        assert core.membership.queue_depth == 0
        assert sorted(m.node_id for m in core.manifests.manifests()) == sorted(
            n.node_id for n in nodes
        )
        assert all(m.version == 1 for m in core.manifests.manifests())
    tracker = cluster.tracker
    assert tracker.converged and tracker.live_count == 9
    assert brute_force(cluster) == (0, 0, 0)


def test_member_tables_are_shared_not_copied_object_by_object() -> None:
    _, nodes = converged_cluster(6)
    a, b = nodes[1].core, nodes[2].core
    assert a is not None and b is not None
    subject = nodes[4].node_id
    assert a.membership.member(subject) is b.membership.member(subject)
    assert a.manifests.get(subject) is b.manifests.get(subject)


def test_converged_mesh_stays_converged_without_faults() -> None:
    cluster, _ = converged_cluster(12)
    cluster.run_until(20.0)
    assert cluster.violations == []
    assert cluster.tracker.converged
    assert brute_force(cluster) == (0, 0, 0)
    assert cluster.traffic.probe_packets > 0


def test_tracker_matches_brute_force_after_a_converged_start() -> None:
    cluster, nodes = converged_cluster(12, seed=31, loss=0.05)
    rng = derive_rng(31, "test")
    for step in range(40):
        cluster.run_until(cluster.now + rng.uniform(0.05, 1.5))
        action = random_fault(cluster, nodes, rng, step, kinds=6)
        tracker = cluster.tracker
        expected = brute_force(cluster)
        assert (tracker.wrong_views, tracker.wrong_manifests, tracker.ledger_missing) == (
            expected
        ), f"step {step}, action {action}"
    assert cluster.violations == []


def test_a_restarted_host_gets_its_stored_manifests_back() -> None:
    cluster, nodes = converged_cluster(8)
    victim = nodes[5]
    cluster.publish_manifest(nodes[2])  # version 2, gossiped to everyone
    cluster.run_until(10.0)
    cluster.crash(victim)
    cluster.start(victim, nodes[:3])
    core = victim.core
    assert core is not None
    held = {m.node_id: m.version for m in core.manifests.manifests()}
    expected = {n.node_id: 1 for n in nodes}
    expected[nodes[2].node_id] = 2
    expected[victim.node_id] = 2  # its own manifest, republished on restart
    assert held == expected


def test_start_converged_needs_an_empty_mesh() -> None:
    cluster, nodes = converged_cluster(4)
    with pytest.raises(ValueError, match="fresh hosts"):
        cluster.start_converged([cluster.add_node()], nodes[:1])


def test_steady_scenario_from_a_converged_start() -> None:
    spec = Spec("steady", seed=3, nodes=30, profile="local", duration=10.0, start="converged")
    outcome = run_scenario(spec)
    assert outcome.violations == []
    assert all(c["passed"] for c in outcome.checks), outcome.checks
    boot = outcome.results["bootstrap"]
    assert boot["start"] == "converged" and boot["membership_s"] == 0.0
    assert outcome.results["drain_s"] == 0.0
    assert outcome.simulated_seconds == 10.0


def test_converged_start_measures_the_steady_state_a_join_reaches() -> None:
    """Probe traffic per node does not depend on how the mesh came up; rumor traffic
    (the workload's ledger records) agrees within noise."""
    figures = {}
    for start in ("join", "converged"):
        spec = Spec("steady", seed=4, nodes=40, profile="local", duration=20.0, start=start)
        outcome = run_scenario(spec)
        assert outcome.violations == []
        figures[start] = outcome.results["traffic"]["per_node_per_s"]
    for channel, tolerance in (("probe", 0.05), ("udp", 0.25)):
        joined = figures["join"][channel]["bytes"]
        converged = figures["converged"][channel]["bytes"]
        assert abs(converged - joined) <= tolerance * joined, (channel, joined, converged)


def test_spec_rejects_a_converged_join() -> None:
    with pytest.raises(ValueError, match="join scenario"):
        Spec("join", start="converged")
    with pytest.raises(ValueError, match="start must be"):
        Spec("steady", start="warm")
