"""Starting a core from a converged mesh, and the manifest rumors the store keeps.

``Membership.adopt_converged`` / ``MeshCore.adopt_converged`` install the steady state a
join would reach (every peer alive, every manifest held) without any traffic or event;
``ManifestStore.rumor`` hands out the rumor computed when a manifest was accepted (so an
announcement hashes nothing again), and ``rumors()`` is rebuilt only when the store
changes.
"""

from __future__ import annotations

import dataclasses
import random

import pytest

from crdt import ManifestStore
from meshnode.core import Member, Membership, MemberState, NodeConfig, SendPacket, timing
from meshnode.core.mesh import MeshCore
from protocol import Ack, Capability, FastSigner, Manifest, ManifestRumor, Ping, fast_verify

NOW = 100.0
SIGNERS = [FastSigner.from_seed(bytes([i + 1]) * 32) for i in range(40)]


def membership(i: int, config: NodeConfig | None = None) -> Membership:
    return Membership(
        config or NodeConfig.lan(),
        SIGNERS[i],
        host=f"10.0.0.{i + 1}",
        port=7946,
        rng=random.Random(i),
        verifier=fast_verify,
        now=NOW,
    )


def manifest(i: int, version: int = 1) -> Manifest:
    return Manifest.create(
        SIGNERS[i],
        name=f"n{i}",
        capabilities=[Capability(name="echo", description="repeat")],
        version=version,
    )


def own_members(count: int) -> dict[str, Member]:
    out = {}
    for i in range(count):
        m = membership(i)
        me = m.member(m.node_id)
        assert me is not None
        out[m.node_id] = me
    return out


def test_adopt_converged_installs_every_peer_alive_without_traffic() -> None:
    members = own_members(40)
    node = membership(0)
    node.adopt_converged(members, NOW)
    assert node.take_effects() == []
    assert node.queue_depth == 0
    assert node.alive_count() == 40 and node.cluster_size() == 40
    assert [m.node_id for m in node.members()] == sorted(members)
    assert all(node.member(n) is members[n] for n in members if n != node.node_id)
    # The anti-entropy phase lies within the interval of the new size.
    interval = timing.push_pull_interval(NodeConfig.lan().push_pull_interval, 40)
    assert NOW <= node.next_deadline() <= NOW + interval
    # Probing goes round every peer once per pass.
    probed: set[str] = set()
    while len(probed) < 39:
        now = node.next_deadline()
        node.tick(now)
        for effect in node.take_effects():
            if isinstance(effect, SendPacket) and isinstance(effect.messages[0], Ping):
                target = effect.messages[0].target
                assert target not in probed
                probed.add(target)
                # Answer, so the next period finds a healthy prober.
                node.receive(target, [Ack(effect.messages[0].seq, 0)], effect.addr, now)
    assert probed == set(members) - {node.node_id}


def test_adopt_converged_needs_a_fresh_membership_and_alive_members() -> None:
    members = own_members(5)
    node = membership(0)
    node.adopt_converged(members, NOW)
    with pytest.raises(ValueError, match="fresh"):
        node.adopt_converged(members, NOW)
    other = membership(1)
    dead = dataclasses.replace(members[SIGNERS[2].node_id], state=MemberState.DEAD)
    with pytest.raises(ValueError, match="alive"):
        other.adopt_converged({**members, dead.node_id: dead}, NOW)


def test_mesh_core_adopts_members_manifests_and_seeds() -> None:
    members = own_members(6)
    store = ManifestStore(verifier=fast_verify)
    for i in range(6):
        assert store.apply(manifest(i), NOW)
    core = MeshCore(
        NodeConfig.lan(),
        SIGNERS[0],
        host="10.0.0.1",
        port=7946,
        rng=random.Random(0),
        verifier=fast_verify,
        now=NOW,
    )
    core.adopt_converged(members, store, [("10.0.0.2", 7946)], NOW)
    assert core.take_effects() == []
    assert core.manifests == store and core.manifests is not store
    # Our own manifest, already held, is not announced again.
    core.publish_manifest(manifest(0), NOW)
    assert core.take_effects() == [] and core.membership.queue_depth == 0


def test_store_rumor_is_the_one_computed_on_apply() -> None:
    store = ManifestStore(verifier=fast_verify)
    m = manifest(3, version=2)
    assert store.rumor(m.node_id) is None
    assert store.apply(m, NOW)
    rumor = store.rumor(m.node_id)
    assert rumor == ManifestRumor(m.node_id, 2, m.digest())
    store.remove(m.node_id, NOW)
    assert store.rumor(m.node_id) is None


def test_rumors_follow_every_change_of_the_store() -> None:
    store = ManifestStore(verifier=fast_verify)
    for i in range(3):
        store.apply(manifest(i), NOW)
    first = store.rumors()
    assert first == sorted(first, key=lambda r: r.node) and len(first) == 3
    first.clear()  # callers get their own list
    assert len(store.rumors()) == 3
    twin = store.copy()
    store.apply(manifest(1, version=2), NOW)
    assert {r.node: r.version for r in store.rumors()}[SIGNERS[1].node_id] == 2
    assert {r.node: r.version for r in twin.rumors()}[SIGNERS[1].node_id] == 1
    store.remove(SIGNERS[0].node_id, NOW)
    assert SIGNERS[0].node_id not in {r.node for r in store.rumors()}
    store.lift_tombstone(SIGNERS[0].node_id)
    twin.apply(manifest(5), NOW)
    assert len(twin.rumors()) == 4 and len(store.rumors()) == 2
