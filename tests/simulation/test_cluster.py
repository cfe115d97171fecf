"""The cluster shell drives real MeshCores: crashes, restarts, pauses and wire fidelity."""

from __future__ import annotations

import dataclasses

from meshnode.core.config import NodeConfig
from meshnode.core.membership import MemberState
from simulations.cluster import Cluster, SimNode, Status
from simulations.network import LinkModel
from simulations.report import build_report, dumps
from simulations.scenarios import Spec, make_config, run_scenario

LOCAL = NodeConfig.local()


def _cluster(n: int, *, seed: int = 1, **kw: object) -> tuple[Cluster, list[SimNode]]:
    cluster = Cluster(seed=seed, config=LOCAL, link=LinkModel(), **kw)  # type: ignore[arg-type]
    nodes = [cluster.add_node() for _ in range(n)]
    for node in nodes:
        cluster.start(node, nodes[:3])
    cluster.run_until(10.0, stop=lambda: cluster.tracker.converged)
    assert cluster.tracker.converged
    return cluster, nodes


def _views(cluster: Cluster, subject: SimNode) -> list[MemberState | None]:
    out = []
    for node in cluster.live_nodes():
        if node is subject or node.core is None:
            continue
        member = node.core.membership.member(subject.node_id)
        out.append(member.state if member else None)
    return out


def test_crash_then_restart_with_a_higher_incarnation() -> None:
    """A crashed node is declared dead; restarted (same identity, persisted incarnation
    + 1, new manifest version) it is alive everywhere again and wins over its tombstone."""
    cluster, nodes = _cluster(8)
    victim = nodes[5]
    cluster.crash(victim)
    assert victim.status is Status.DOWN and victim.core is None
    cluster.run_until(cluster.now + 30, stop=lambda: cluster.tracker.membership_converged)
    assert set(_views(cluster, victim)) <= {MemberState.DEAD, None}
    old_incarnation = victim.incarnation
    cluster.start(victim, nodes[:3])
    assert victim.core is not None
    assert victim.core.membership.incarnation == old_incarnation + 1
    assert victim.manifest_version == 2
    cluster.run_until(cluster.now + 30, stop=lambda: cluster.tracker.converged)
    assert cluster.tracker.converged
    assert set(_views(cluster, victim)) == {MemberState.ALIVE}
    for node in cluster.live_nodes():
        if node is not victim and node.core is not None:
            manifest = node.core.manifests.get(victim.node_id)
            assert manifest is not None and manifest.version == 2


def test_pause_defers_everything_and_the_core_sees_the_stall() -> None:
    cluster, nodes = _cluster(6)
    slow = nodes[4]
    assert slow.core is not None
    cluster.pause(slow)
    cluster.run_until(cluster.now + 3.0)
    assert slow.status is Status.PAUSED
    assert slow.backlog  # datagrams waited
    cluster.resume(slow)
    assert slow.core.membership.counters["stalls"] == 1
    assert not slow.backlog
    cluster.run_until(cluster.now + 20, stop=lambda: cluster.tracker.membership_converged)
    assert cluster.tracker.membership_converged


def test_graceful_leave_is_seen_as_left() -> None:
    cluster, nodes = _cluster(6)
    leaver = nodes[3]
    cluster.leave(leaver)
    cluster.run_until(cluster.now + 5.0)
    assert leaver.status is Status.DOWN
    assert set(_views(cluster, leaver)) == {MemberState.LEFT}


def test_record_outcome_reaches_every_ledger() -> None:
    cluster, nodes = _cluster(8)
    record = cluster.record_outcome(nodes[1], nodes[2], 0.9)
    cluster.run_until(cluster.now + 10, stop=lambda: cluster.tracker.ledger_converged)
    for node in nodes:
        assert node.core is not None
        assert node.core.ledger.get(record.observer, record.subject) == record


def test_wire_mode_changes_nothing_but_the_cost() -> None:
    """Encoding and decoding every packet with the real codec gives the same run: the size
    model matches the codec (checked on every datagram) and decoded messages are equal."""
    spec = Spec("crash", seed=9, nodes=10, profile="local", duration=8.0, loss=0.05, settle=1.0)
    plain = run_scenario(spec)
    wired = run_scenario(dataclasses.replace(spec, wire=True))
    assert wired.violations == []
    config = make_config(spec)
    a = build_report(spec, config, plain, wall_s=None)
    b = build_report(dataclasses.replace(spec, wire=True), config, wired, wall_s=None)
    for report in (a, b):
        for key in ("wire", "spec", "command"):
            report.pop(key)
    assert dumps(a) == dumps(b)


def test_real_crypto_runs() -> None:
    """Ed25519 end to end (slower): the mesh still converges and nothing is rejected."""
    _, nodes = _cluster(5, crypto="real")
    for node in nodes:
        assert node.core is not None
        assert node.core.membership.counters["rumors_invalid"] == 0


def _record_sends(cap: int) -> tuple[int, int, bool]:
    """Rumor sends across a quiet 30-node mesh for one new ledger record, the limit at this
    size, and whether every ledger then holds the record."""
    config = dataclasses.replace(LOCAL, ledger_retransmit_cap=cap)
    cluster = Cluster(seed=3, config=config, link=LinkModel())
    nodes = [cluster.add_node() for _ in range(30)]
    for node in nodes:
        cluster.start(node, nodes[:3])
    cluster.run_until(10.0, stop=lambda: cluster.tracker.converged)
    cores = [n.core for n in nodes if n.core is not None]

    # Quiet: every join rumor sent its last copy, so each send from here on is the record.
    def quiet() -> bool:
        return all(c.membership.queue_depth == 0 for c in cores)

    cluster.run_until(cluster.now + 30, stop=quiet)
    assert quiet()
    before = sum(c.membership.counters["rumors_sent"] for c in cores)
    record = cluster.record_outcome(nodes[4], nodes[5], 0.8)
    cluster.run_until(
        cluster.now + 30,
        stop=lambda: cluster.tracker.ledger_converged and quiet(),
    )
    sends = sum(c.membership.counters["rumors_sent"] for c in cores) - before
    everywhere = all(c.ledger.get(record.observer, record.subject) == record for c in cores)
    return sends, cores[0].membership.retransmit_limit(), everywhere


def test_ledger_records_are_sent_at_most_cap_times_per_node() -> None:
    """With a cap below the membership limit each node sends a record at most `cap` times;
    the members gossip missed still get it (push-pull reconciles the ledger). Without a cap
    the same record costs up to the limit per node."""
    capped, limit, everywhere = _record_sends(2)
    assert limit == 8
    assert everywhere
    assert 0 < capped <= 2 * 30
    uncapped, _, everywhere = _record_sends(0)
    assert everywhere
    assert 2 * 30 < uncapped <= limit * 30
