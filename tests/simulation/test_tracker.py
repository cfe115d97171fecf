"""The incremental tracker agrees with a brute-force comparison of every view.

Invariant: at any instant of a run with crashes, restarts, leaves, pauses, partitions,
manifest updates and ledger opinions, the tracker's O(1)-maintained counts (wrong member
views, wrong manifest copies, missing ledger copies, convergence flags) equal the ones
obtained by looking at every (live observer, subject) pair.
"""

from __future__ import annotations

import random

from meshnode.core.config import NodeConfig
from meshnode.core.membership import MemberState
from simulations.cluster import Cluster, SimNode, Status
from simulations.engine import derive_rng
from simulations.network import LinkModel


def brute_force(cluster: Cluster) -> tuple[int, int, int]:
    tracker = cluster.tracker
    live = [n for n in cluster.nodes if tracker.live[n.slot]]
    wrong_views = wrong_manifests = missing = 0
    for v in live:
        assert v.core is not None
        for s in cluster.nodes:
            if s is v:
                continue
            member = v.core.membership.member(s.node_id)
            state = member.state if member is not None else None
            if tracker.live[s.slot]:
                wrong_views += state is not MemberState.ALIVE
            else:
                wrong_views += state in (MemberState.ALIVE, MemberState.SUSPECT)
            manifest = v.core.manifests.get(s.node_id)
            held = manifest.version if manifest is not None else None
            if tracker.live[s.slot]:  # copies of departed members are not wrong
                wrong_manifests += held != tracker.expected[s.slot]
        for (observer, subject), record in tracker.latest.items():
            missing += v.core.ledger.get(observer, subject) != record
    return wrong_views, wrong_manifests, missing


def random_fault(
    cluster: Cluster, nodes: list[SimNode], rng: random.Random, step: int, kinds: int = 8
) -> int:
    """Apply one random action of the first ``kinds`` to ``cluster`` (crash, restart,
    publish, rate, partition, heal, pause, leave); return its number."""
    action = rng.randrange(kinds)
    running = [n for n in nodes if n.status is Status.RUNNING and not n.leaving]
    pick: SimNode = running[rng.randrange(len(running))] if running else nodes[0]
    if action == 0 and len(running) > 6:
        cluster.crash(pick)
    elif action == 1:
        down = [n for n in nodes if n.status is Status.DOWN]
        if down:
            cluster.start(down[rng.randrange(len(down))], nodes[:3])
    elif action == 2 and running:
        cluster.publish_manifest(pick)
    elif action == 3 and len(running) > 1:
        other = running[(running.index(pick) + 1) % len(running)]
        cluster.record_outcome(pick, other, rng.random())
    elif action == 4:
        cluster.partition([nodes[: rng.randrange(1, len(nodes))]])
    elif action == 5:
        cluster.heal()
    elif action == 6 and running:
        cluster.pause(pick)
        cluster.engine.after(rng.uniform(0.1, 3.0), cluster.resume, pick)
    elif action == 7 and len(running) > 6 and step % 3 == 0:
        cluster.leave(pick)
    return action


def test_tracker_matches_brute_force() -> None:
    config = NodeConfig.local()
    cluster = Cluster(seed=21, config=config, link=LinkModel(loss=0.05), strict=True)
    nodes = [cluster.add_node() for _ in range(12)]
    for node in nodes:
        cluster.start(node, nodes[:3])
    rng = derive_rng(21, "test")
    checked = 0
    for step in range(60):
        cluster.run_until(cluster.now + rng.uniform(0.05, 1.5))
        action = random_fault(cluster, nodes, rng, step)
        tracker = cluster.tracker
        expected = brute_force(cluster)
        assert (tracker.wrong_views, tracker.wrong_manifests, tracker.ledger_missing) == (
            expected
        ), f"step {step}, action {action}"
        assert tracker.membership_converged == (expected[0] == 0)
        assert tracker.manifests_converged == (expected[1] == 0)
        checked += 1
    assert checked == 60
    assert cluster.violations == []
