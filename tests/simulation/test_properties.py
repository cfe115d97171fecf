"""Convergence after faults heal, over arbitrary small meshes (Hypothesis).

Invariant: a mesh of 5 to 30 nodes under any loss (up to 30 %), duplication (20 %) and
reordering (30 %), cut by any sequence of symmetric, one-way and single-node partitions
while opinions are recorded and manifests republished, converges once the partitions
heal: within a bounded virtual time every live node holds the identical member table
(state and incarnation of every member), the identical set of manifests and the identical
ledger. Safety invariants are checked on every effect meanwhile (strict mode: the first
violation fails the example).

Examples: each one simulates a whole mesh for up to a couple of virtual minutes, up to a
few seconds of wall time, so this file overrides the suite's 200 examples with
``EXAMPLES`` (documented below) to stay well under a minute on a loaded two-core machine.
Raise it locally with ``SIM_PROPERTY_EXAMPLES``.

Manifests are checked in every run, including runs in which a partition got members
declared dead: a member that comes back alive is routable again with the manifest it had
(``test_manifests_reconverge_after_a_false_death`` pins that case on its own).
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshnode.core.config import NodeConfig
from simulations.cluster import Cluster, SimNode
from simulations.network import LinkModel

EXAMPLES = int(os.environ.get("SIM_PROPERTY_EXAMPLES", "25"))
"""25 examples, from a fraction of a second to ~5 s each: ~25 s for the file on a
two-core machine at load 4 (the suite's 200 would take minutes)."""
CONFIG = NodeConfig.local()
HEAL_BUDGET = 90.0
"""Virtual seconds allowed after the heal: 45 push-pull intervals of the local profile."""


def member_table(node: SimNode) -> dict[str, tuple[str, int]]:
    assert node.core is not None
    return {m.node_id: (m.state.label, m.incarnation) for m in node.core.membership.members()}


def manifest_set(node: SimNode) -> list[tuple[str, int, bytes]]:
    assert node.core is not None
    return [(m.node_id, m.version, m.signature) for m in node.core.manifests.manifests()]


def identical(cluster: Cluster, *, manifests: bool) -> bool:
    live = cluster.live_nodes()
    first = live[0]
    assert first.core is not None
    table = member_table(first)
    if any(state != "alive" for state, _ in table.values()) or len(table) != len(live):
        return False
    stores = manifest_set(first)
    for node in live[1:]:
        assert node.core is not None
        if member_table(node) != table or node.core.ledger != first.core.ledger:
            return False
        if manifests and manifest_set(node) != stores:
            return False
    return True


episode = st.tuples(
    st.floats(0.0, 8.0),  # start, seconds into the fault phase
    st.floats(0.5, 8.0),  # length
    st.sampled_from(["split", "one-way", "isolate"]),
    st.integers(0, 2**30),  # which nodes go where
)
workload = st.lists(
    st.tuples(st.floats(0.0, 12.0), st.sampled_from(["outcome", "publish"]), st.integers(0, 999)),
    max_size=8,
)


@st.composite
def meshes(draw: Any) -> dict[str, Any]:
    return {
        "n": draw(st.one_of(st.integers(5, 12), st.integers(5, 30))),
        "seed": draw(st.integers(0, 2**32 - 1)),
        "loss": draw(st.floats(0.0, 0.3)),
        "duplicate": draw(st.floats(0.0, 0.2)),
        "reorder": draw(st.floats(0.0, 0.3)),
        "episodes": draw(st.lists(episode, max_size=3)),
        "workload": draw(workload),
    }


def _partition(cluster: Cluster, nodes: list[SimNode], kind: str, mask: int) -> None:
    chosen = [n for i, n in enumerate(nodes) if mask >> (i % 30) & 1]
    rest = [n for n in nodes if n not in chosen]
    if kind == "isolate":
        cluster.partition([[nodes[mask % len(nodes)]]])
    elif kind == "split":
        cluster.partition([chosen])
    else:
        cluster.partition_one_way(chosen, rest)


def run_mesh(case: dict[str, Any]) -> tuple[Cluster, bool]:
    """Build, fault, heal; returns the cluster and whether it converged in budget."""
    link = LinkModel(
        min_latency=0.0005,
        mean_latency=0.002,
        loss=case["loss"],
        duplicate=case["duplicate"],
        reorder=case["reorder"],
    )
    cluster = Cluster(seed=case["seed"], config=CONFIG, link=link, strict=True)
    nodes = [cluster.add_node() for _ in range(case["n"])]
    for node in nodes:
        cluster.start(node, nodes[:3])
    cluster.run_until(60.0, stop=lambda: cluster.tracker.converged)
    start = cluster.now
    end = start
    for offset, length, kind, mask in case["episodes"]:
        cluster.engine.at(start + offset, _partition, cluster, nodes, kind, mask)
        end = max(end, start + offset + length)
    for offset, kind, pick in case["workload"]:
        cluster.engine.at(start + offset, _work, cluster, nodes, kind, pick)
        end = max(end, start + offset)
    cluster.run_until(end)
    cluster.heal()
    cluster.run_until(
        end + HEAL_BUDGET,
        stop=lambda: cluster.tracker.converged or _settled(cluster),
    )
    deadline = end + HEAL_BUDGET
    while cluster.now < deadline:
        if identical(cluster, manifests=True):
            return cluster, True
        cluster.run_until(min(deadline, cluster.now + 0.5))
    return cluster, identical(cluster, manifests=True)


def _settled(cluster: Cluster) -> bool:
    t = cluster.tracker
    return t.membership_converged and t.ledger_converged


def _work(cluster: Cluster, nodes: list[SimNode], kind: str, pick: int) -> None:
    running = [n for n in nodes if n.status.value == "running"]
    if len(running) < 2:
        return
    a = running[pick % len(running)]
    if kind == "publish":
        cluster.publish_manifest(a)
    else:
        b = running[(pick // len(running) + 1 + running.index(a)) % len(running)]
        if b is not a:
            cluster.record_outcome(a, b, (pick % 100) / 100)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(meshes())
def test_convergence_after_faults_heal(case: dict[str, Any]) -> None:
    cluster, converged = run_mesh(case)
    assert cluster.violations == []
    assert converged, (
        f"not identical {HEAL_BUDGET}s after the heal: "
        f"membership ok={cluster.tracker.membership_converged}, "
        f"ledger ok={cluster.tracker.ledger_converged}, "
        f"manifests ok={cluster.tracker.manifests_converged}"
    )


def test_manifests_reconverge_after_a_false_death() -> None:
    """A partition long enough for each side to declare the other dead, then a heal:
    every node must hold every node's manifest again within the budget."""
    case = {
        "n": 10,
        "seed": 7,
        "loss": 0.0,
        "duplicate": 0.0,
        "reorder": 0.0,
        "episodes": [(0.0, 15.0, "split", 0b0101010101)],
        "workload": [],
    }
    link = LinkModel(min_latency=0.0005, mean_latency=0.002)
    cluster = Cluster(seed=case["seed"], config=CONFIG, link=link, strict=True)
    nodes = [cluster.add_node() for _ in range(case["n"])]
    for node in nodes:
        cluster.start(node, nodes[:3])
    cluster.run_until(60.0, stop=lambda: cluster.tracker.converged)
    _partition(cluster, nodes, "split", 0b0101010101)
    cluster.run_until(cluster.now + 15.0)
    assert cluster.tracker.deaths.partitioned > 0  # the partition did cause deaths
    cluster.heal()
    cluster.run_until(cluster.now + HEAL_BUDGET, stop=lambda: cluster.tracker.converged)
    assert cluster.tracker.membership_converged
    assert cluster.tracker.manifests_converged
