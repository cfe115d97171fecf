"""Objects shared between simulated nodes are never changed by one of them.

A converged start hands every core one order of ids (``ConvergedTable``) and one manifest
table; cores copy them before their first change. Invariant: whatever the nodes do
afterwards (crashes, new manifest versions), the shared objects keep the contents they had
at the start, and each core sees its own changes only.
"""

from __future__ import annotations

from simulations.cluster import Cluster
from simulations.network import LinkModel
from simulations.scenarios import Spec, make_config


def test_shared_tables_stay_unmutated_while_nodes_change_their_own() -> None:
    spec = Spec("crash", nodes=40, seed=5, start="converged")
    cluster = Cluster(seed=5, config=make_config(spec), link=LinkModel())
    nodes = [cluster.add_node() for _ in range(40)]
    cluster.start_converged(nodes, nodes[:3])
    cores = [n.core for n in nodes]
    assert all(c is not None for c in cores)
    first = cores[0]
    assert first is not None
    shared_ids = first.membership._alive._items
    shared_manifests = first.manifests._entries
    # One list and one manifest table for the whole mesh.
    assert all(c is not None and c.membership._alive._items is shared_ids for c in cores)
    assert all(c is not None and c.manifests._entries is shared_manifests for c in cores)
    ids_before = list(shared_ids)
    manifests_before = dict(shared_manifests)

    cluster.crash(nodes[7])
    cluster.publish_manifest(nodes[9])
    cluster.run_until(60.0)

    assert shared_ids == ids_before
    assert shared_manifests == manifests_before
    for node in nodes:
        core = node.core
        if core is None:
            continue
        alive = list(core.membership._alive)
        assert nodes[7].node_id not in alive  # declared dead: gone from its own view
        assert node.node_id not in alive
        assert len(alive) == 38
        held = core.manifests.get(nodes[9].node_id)
        assert held is not None and held.version == 2  # everyone took the new version
    assert manifests_before[nodes[9].node_id].manifest.version == 1  # type: ignore[union-attr]
