"""Admission in the simulator shell: the same NodeCore gate the runtime drives."""

from __future__ import annotations

import dataclasses

import pytest

from meshnode.core.admission import AdmissionError
from meshnode.core.config import NodeConfig
from protocol import FastSigner
from protocol.certificate import issue_certificate, issue_revocation
from simulations.cluster import Cluster, SimNode
from simulations.network import LinkModel

AUTHORITY = FastSigner.from_seed(b"mesh authority")
LOCAL = NodeConfig.local(authority=AUTHORITY.node_id)
OPEN = NodeConfig.local()
EXPIRES = 1e6


def _certify(node: SimNode, serial: int) -> None:
    node.certificate = issue_certificate(
        AUTHORITY,
        node.node_id,
        roles=("member",),
        name=node.name,
        serial=serial,
        issued_at=0.0,
        expires_at=EXPIRES,
    ).signed


def _knows(node: SimNode, other: SimNode) -> bool:
    assert node.core is not None
    return node.core.membership.member(other.node_id) is not None


def _mesh(n: int) -> tuple[Cluster, list[SimNode]]:
    cluster = Cluster(seed=7, config=LOCAL, link=LinkModel())
    nodes = [cluster.add_node() for _ in range(n)]
    for serial, node in enumerate(nodes, start=1):
        _certify(node, serial)
        cluster.start(node, nodes[:2])
    cluster.run_until(
        30.0, stop=lambda: all(_knows(a, b) for a in nodes for b in nodes if a is not b)
    )
    assert all(_knows(a, b) for a in nodes for b in nodes if a is not b)
    return cluster, nodes


def test_a_node_without_a_certificate_never_becomes_a_member() -> None:
    """Six certified nodes form a mesh; an outsider running without the authority (so
    without a certificate) joins through two of them and gossips for 20 s: nobody ever
    holds it, and it learns nobody (its push-pulls are answered empty)."""
    cluster, nodes = _mesh(6)
    outsider = cluster.add_node("outsider")
    outsider.config = OPEN
    cluster.start(outsider, nodes[:2])
    seen: set[str] = set()
    end = cluster.now + 20.0
    while cluster.now < end:
        cluster.run_until(cluster.now + 1.0)
        seen.update(n.name for n in nodes if _knows(n, outsider))
    assert seen == set()
    assert outsider.core is not None
    assert [m.node_id for m in outsider.core.members()] == [outsider.node_id]
    dropped = sum(n.core.admission.counters["unadmitted_dropped"] for n in nodes)  # type: ignore[union-attr]
    assert dropped > 10


def test_a_revoked_node_is_removed_everywhere_and_stays_out() -> None:
    """A revocation of one member's certificate, handed to a single node, spreads by
    gossip: every other node drops the member (treated as left, then forgotten), and its
    own packets and push-pulls keep being refused afterwards."""
    cluster, nodes = _mesh(8)
    victim = nodes[5]
    assert victim.certificate is not None
    revocation = issue_revocation(
        AUTHORITY, node_id=victim.node_id, revoked_at=cluster.now, keep_until=EXPIRES
    )
    assert cluster.revoke(nodes[0], revocation.signed)
    others = [n for n in nodes if n is not victim]
    cluster.run_until(cluster.now + 15.0, stop=lambda: not any(_knows(n, victim) for n in others))
    assert [n.name for n in others if _knows(n, victim)] == []
    cluster.run_until(cluster.now + 15.0)
    assert [n.name for n in others if _knows(n, victim)] == []
    for node in others:
        assert node.core is not None and node.core.admission is not None
        assert not node.core.admits(victim.node_id, cluster.now)
        assert node.core.admission.revocation_count == 1
    # The rest of the mesh is whole.
    assert all(_knows(a, b) for a in others for b in others if a is not b)


def test_a_node_with_a_certificate_of_another_authority_cannot_start() -> None:
    """The core refuses to run with a certificate its authority did not sign."""
    cluster = Cluster(seed=3, config=LOCAL, link=LinkModel())
    node = cluster.add_node()
    other = FastSigner.from_seed(b"another authority")
    node.certificate = dataclasses.replace(
        issue_certificate(other, node.node_id, serial=1, issued_at=0.0, expires_at=EXPIRES)
    ).signed
    with pytest.raises(AdmissionError, match="meshnode authority issue"):
        cluster.start(node, [])


def test_a_node_that_was_down_learns_the_revocation_from_push_pull() -> None:
    """A node is down while a member is revoked; restarted (nothing of the revocation on
    its disk), it learns the revocation in its join exchange and drops the revoked member
    within a few seconds, though the revoked member is still running and gossiping."""
    cluster, nodes = _mesh(6)
    victim, away = nodes[4], nodes[5]
    cluster.crash(away)
    revocation = issue_revocation(
        AUTHORITY, node_id=victim.node_id, revoked_at=cluster.now, keep_until=EXPIRES
    )
    assert cluster.revoke(nodes[0], revocation.signed)
    cluster.run_until(cluster.now + 15.0)
    cluster.start(away, nodes[:2])
    cluster.run_until(
        cluster.now + 10.0,
        stop=lambda: (
            away.core is not None
            and away.core.admission is not None
            and away.core.admission.revocation_count == 1
            and all(_knows(away, n) for n in nodes[:4])
        ),
    )
    assert away.core is not None and away.core.admission is not None
    assert away.core.admission.revocation_count == 1
    assert all(_knows(away, n) for n in nodes[:4])
    cluster.run_until(cluster.now + 10.0)
    assert not _knows(away, victim)
