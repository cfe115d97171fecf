"""MeshCore's rules on who may make a node hold what, and the restore rule.

Invariants:
* a ledger record is kept only if its observer is this node or is in our member table
  (any state); every other record is refused and counted, on every path (gossip, push-pull
  legs, the third leg);
* a manifest is fetched and held only for members alive or suspect in our table
  (``MeshCore._may_hold``); no fetch starts for a node the store would refuse when full;
* when the ledger is full, records of live members evict those of departed members, never
  the reverse;
* restored records of observers in the persisted member table survive the restart even
  though membership is empty; restored manifests of nodes membership never learns are
  discarded after the restore grace;
* every counter in ``MeshCore.counters`` is documented in ``COUNTERS``.
"""

from __future__ import annotations

import dataclasses
import random

import pytest

from meshnode.core import NodeConfig
from meshnode.core.membership import Member, Membership, MemberState
from meshnode.core.mesh import (
    COUNTERS,
    LEDGER_PRUNE_INTERVAL,
    RESTORE_GRACE_INTERVALS,
    FetchManifest,
    ManifestChanged,
    MeshCore,
)
from protocol import (
    Alive,
    Capability,
    FastSigner,
    Leave,
    LedgerRecord,
    Manifest,
    ManifestRumor,
    PushPull,
    fast_verify,
    signing_bytes,
)
from tests.unit.test_crdt_caps import oversized

NOW = 1_000.0
SIGNERS = [FastSigner.from_seed(bytes([i + 1]) * 32) for i in range(12)]
IDS = [s.node_id for s in SIGNERS]
ADDR = ("10.0.0.99", 7946)


def core(config: NodeConfig | None = None, *, members: int = 4) -> MeshCore:
    """Node 0, with nodes 1..members-1 alive in its table (nodes >= members are strangers)."""
    mesh = MeshCore(
        config or NodeConfig.lan(),
        SIGNERS[0],
        host="10.0.0.1",
        port=7946,
        rng=random.Random(0),
        verifier=fast_verify,
        now=NOW,
    )
    table: dict[str, Member] = {}
    for i in range(members):
        m = Membership(
            NodeConfig.lan(),
            SIGNERS[i],
            host=f"10.0.0.{i + 1}",
            port=7946,
            rng=random.Random(i),
            verifier=fast_verify,
            now=NOW,
        )
        me = m.member(IDS[i])
        assert me is not None
        table[IDS[i]] = me
    mesh.adopt_converged(table, mesh.manifests, (), NOW)
    mesh.take_effects()
    return mesh


def record(observer: int, subject: int, seq: int = 1) -> LedgerRecord:
    unsigned = LedgerRecord(
        observer=IDS[observer],
        subject=IDS[subject],
        score=0.7,
        outcomes=1,
        seq=seq,
        expires_at=NOW + 3_600.0,
        signature=b"\x00" * 64,
    )
    return dataclasses.replace(unsigned, signature=SIGNERS[observer].sign(signing_bytes(unsigned)))


def manifest(i: int, version: int = 1) -> Manifest:
    return Manifest.create(
        SIGNERS[i],
        name=f"n{i}",
        capabilities=[Capability(name="echo", description="repeat")],
        version=version,
    )


def leave(mesh: MeshCore, i: int) -> None:
    """Node ``i`` leaves gracefully (a Leave signed by itself)."""
    member = mesh.membership.member(IDS[i])
    assert member is not None
    unsigned = Leave(IDS[i], member.incarnation, b"\x00" * 64)
    signed = dataclasses.replace(unsigned, signature=SIGNERS[i].sign(signing_bytes(unsigned)))
    mesh.membership.merge_state([signed], NOW)
    mesh.take_effects()
    left = mesh.membership.member(IDS[i])
    assert left is not None and left.state is MemberState.LEFT


# ---------------------------------------------------------------------- who may write


@pytest.mark.parametrize(
    ("observer", "departed", "kept"),
    [
        (0, False, True),  # ourselves
        (1, False, True),  # an alive member
        (2, True, True),  # a member that left: its opinions stay valid
        (7, False, False),  # a stranger
    ],
)
def test_who_may_write_a_record(observer: int, departed: bool, kept: bool) -> None:
    mesh = core()
    if departed:
        leave(mesh, observer)
    subject = 3 if observer != 3 else 1
    assert mesh.apply_records([record(observer, subject)], NOW) == int(kept)
    assert (mesh.ledger.get(IDS[observer], IDS[subject]) is not None) is kept
    assert mesh.counters["records_refused_unknown_observer"] == int(not kept)


def test_records_from_strangers_are_refused_on_every_path() -> None:
    """Gossip (a piggybacked record), both push-pull legs: none of 3 strangers x 5 records
    is kept; the member's record on each path is."""
    mesh = core()
    flood = [record(o, s) for o in (7, 8, 9) for s in (1, 2, 3, 4, 5)]
    mesh.receive(IDS[1], [*flood[:5], record(1, 2)], ADDR, NOW)
    request = PushPull(join=False, members=(), manifests=(), ledger=(), records=tuple(flood))
    mesh.handle_push_pull(IDS[1], request, NOW)
    mesh.finish_push_pull(
        IDS[2], dataclasses.replace(request, records=(*flood, record(2, 1))), ADDR, NOW
    )
    assert {r.observer for r in mesh.ledger.records()} == {IDS[1], IDS[2]}
    assert mesh.counters["records_refused_unknown_observer"] == 5 + 15 + 15


def test_full_ledger_prefers_live_members_over_departed_ones() -> None:
    """At the record cap, a live member's record evicts a departed member's record; a
    departed member's record never evicts a live member's."""
    mesh = core(NodeConfig.lan(max_ledger_records=2), members=5)
    assert mesh.apply_records([record(1, 3), record(2, 3)], NOW) == 2
    leave(mesh, 2)
    assert mesh.apply_records([record(4, 3)], NOW) == 1  # evicts the departed node's record
    assert {r.observer for r in mesh.ledger.records()} == {IDS[1], IDS[4]}
    mesh2 = core(NodeConfig.lan(max_ledger_records=1), members=5)
    mesh2.apply_records([record(1, 3)], NOW)
    leave(mesh2, 2)
    assert mesh2.apply_records([record(2, 3)], NOW) == 0  # departed: refused
    assert mesh2.counters["records_refused_record_cap"] == 1
    assert mesh2.counters["records_evicted"] == 0
    assert mesh.counters["records_evicted"] == 1


def test_own_opinions_and_rated_peers_outrank_members() -> None:
    """Observers we rated (direct experience) are kept over plain members; our own records
    evict anyone else's, and go in over the cap when only ours are left."""
    mesh = core(NodeConfig.lan(max_ledger_records=2), members=5)
    mesh.publish_opinion(IDS[1], 0.9, 1, NOW)  # we rated node 1
    assert mesh.apply_records([record(2, 3)], NOW) == 1
    assert mesh.apply_records([record(1, 3)], NOW) == 1  # rated by us: evicts node 2's
    assert {r.observer for r in mesh.ledger.records()} == {IDS[0], IDS[1]}
    mesh.publish_opinion(IDS[2], 0.4, 1, NOW)  # ours: evicts node 1's record
    assert {r.observer for r in mesh.ledger.records()} == {IDS[0]}
    mesh.publish_opinion(IDS[3], 0.4, 1, NOW)  # ours: admitted over the cap
    assert len(mesh.ledger) == 3


# ---------------------------------------------------------------------- manifests


def rumor(i: int, version: int = 1) -> ManifestRumor:
    return ManifestRumor(IDS[i], version, manifest(i, version).digest())


def fetches(mesh: MeshCore) -> list[str]:
    return [e.node for e in mesh.take_effects() if isinstance(e, FetchManifest)]


@pytest.mark.parametrize(
    ("node", "departed", "fetched"),
    [(1, False, True), (2, True, False), (7, False, False), (0, False, False)],
)
def test_fetch_only_for_alive_or_suspect_members(node: int, departed: bool, fetched: bool) -> None:
    mesh = core()
    if departed:
        leave(mesh, node)
    mesh.receive(IDS[1], [rumor(node)], ADDR, NOW)
    assert fetches(mesh) == ([IDS[node]] if fetched else [])
    assert mesh._may_hold(IDS[node]) is (fetched or node == 0)
    skipped = mesh.counters["fetches_skipped_not_member"]
    assert skipped == (0 if fetched or node == 0 else 1)


def test_fetched_manifest_of_a_non_member_is_refused() -> None:
    mesh = core()
    leave(mesh, 2)
    assert not mesh.manifest_fetched(manifest(7), NOW)
    assert not mesh.manifest_fetched(manifest(2), NOW)
    assert mesh.manifest_fetched(manifest(1), NOW)
    assert [m.node_id for m in mesh.manifests.manifests()] == [IDS[1]]
    assert mesh.counters["manifests_refused_not_member"] == 2


def test_full_store_starts_no_fetch_for_new_nodes_but_updates_held_ones() -> None:
    mesh = core(NodeConfig.lan(max_manifests=2), members=6)
    mesh.publish_manifest(manifest(0), NOW)  # our own counts too
    assert mesh.manifest_fetched(manifest(1), NOW)
    mesh.take_effects()
    mesh.receive(IDS[1], [rumor(2), rumor(1, version=2)], ADDR, NOW)
    assert fetches(mesh) == [IDS[1]]
    assert mesh.counters["fetches_skipped_cap"] == 1
    assert not mesh.manifest_fetched(manifest(3), NOW)  # fetched anyway: refused
    assert mesh.counters["manifests_refused_count_cap"] == 1
    assert mesh.manifest_fetched(manifest(1, version=2), NOW)


def test_oversized_fetched_manifest_is_refused_and_counted() -> None:
    mesh = core(members=3)
    big = oversized(1)
    assert not mesh.manifest_fetched(big, NOW)
    assert mesh.counters["manifests_refused_too_large"] == 1
    assert len(mesh.manifests) == 0


# ---------------------------------------------------------------------- restore


def test_restore_keeps_remembered_observers_records_before_membership_is_known() -> None:
    """Membership is empty at restore: records of ourselves and of nodes in the persisted
    member table are kept; a stranger's stored record is not."""
    mesh = core(members=1)
    records = [record(0, 1), record(1, 2), record(2, 1), record(9, 1)]
    mesh.restore([manifest(1), manifest(9)], records, [IDS[0], IDS[1], IDS[2]], NOW)
    assert {r.observer for r in mesh.ledger.records()} == {IDS[0], IDS[1], IDS[2]}
    assert [m.node_id for m in mesh.manifests.manifests()] == [IDS[1]]


def test_restored_manifests_of_nodes_never_seen_again_are_discarded_after_the_grace() -> None:
    config = NodeConfig.lan()
    mesh = core(config, members=1)
    mesh.restore([manifest(1), manifest(2)], [], [IDS[1], IDS[2]], NOW)
    # Node 1 comes back (alive in our table); node 2 never does.
    other = core(config, members=2)
    member = other.membership.member(IDS[1])
    assert member is not None
    mesh.membership.merge_state([member.rumor], NOW, source=IDS[1])  # first-hand
    mesh.take_effects()
    grace_end = NOW + RESTORE_GRACE_INTERVALS * config.push_pull_interval
    t = NOW
    while t < grace_end + LEDGER_PRUNE_INTERVAL:
        t += 5.0
        mesh.tick(t)
        effects = mesh.take_effects()
        if IDS[2] not in mesh.manifests:
            assert ManifestChanged(IDS[2], None) in effects
            break
    assert [m.node_id for m in mesh.manifests.manifests()] == [IDS[1]]
    assert mesh.counters["manifests_discarded_not_member"] == 1


def test_every_counter_is_documented() -> None:
    mesh = core()
    assert set(mesh.counters) == set(COUNTERS)
    assert all(isinstance(text, str) and text for text in COUNTERS.values())


def test_a_refused_manifest_is_not_fetched_again() -> None:
    """Re-announcing a manifest that was fetched and refused starts no second download: a
    200-byte rumor must not buy the sender a 256 KiB transfer each time. Refusals for want
    of room are forgotten when the store lets a manifest go; refusals for size are not.

    Without the memory of refusals, the oversized manifest's rumor started a second fetch."""
    config = NodeConfig.local(max_manifests=2)
    mesh = core(config, members=5)
    assert mesh.manifest_fetched(manifest(1), NOW)
    big = oversized(2)
    assert not mesh.manifest_fetched(big, NOW)
    mesh.take_effects()
    big_rumor = ManifestRumor(IDS[2], big.version, big.digest())
    mesh.receive(IDS[1], [big_rumor], ADDR, NOW)  # the store has room: only the memo stops it
    assert fetches(mesh) == []
    assert mesh.counters["fetches_skipped_refused"] == 1
    # The store fills; node 3's manifest (fetched before it filled) is refused.
    assert mesh.manifest_fetched(manifest(4), NOW)
    assert not mesh.manifest_fetched(manifest(3), NOW)
    assert mesh.counters["manifests_refused_count_cap"] == 1
    # Node 1 leaves and is forgotten: its manifest goes, room is free again.
    leave(mesh, 1)
    t = NOW
    while IDS[1] in mesh.manifests and t < NOW + 2 * config.dead_member_retention:
        t += config.probe_interval
        mesh.tick(t)
        mesh.take_effects()
    assert IDS[1] not in mesh.manifests
    # No one answered our probes meanwhile: nodes 2 to 4 refute, alive again.
    for i in (2, 3, 4):
        alive = Alive(IDS[i], 10, f"10.0.0.{i + 1}", 7946, b"\x00" * 64)
        signed = dataclasses.replace(alive, signature=SIGNERS[i].sign(signing_bytes(alive)))
        mesh.membership.merge_state([signed], t)
    mesh.take_effects()
    assert mesh._may_hold(IDS[2]) and mesh._may_hold(IDS[3])
    mesh.receive(IDS[4], [rumor(3), big_rumor], ADDR, t)
    assert fetches(mesh) == [IDS[3]]
    assert mesh.counters["fetches_skipped_refused"] == 2


def test_full_store_lets_departed_members_manifests_go_for_live_ones() -> None:
    """A dead or left member keeps its manifest only while there is room: when the store
    is full, a live member's manifest takes the place of a departed member's (counted),
    never of a live member's."""
    mesh = core(NodeConfig.lan(max_manifests=2), members=5)
    assert mesh.manifest_fetched(manifest(1), NOW)
    assert mesh.manifest_fetched(manifest(2), NOW)
    assert not mesh.manifest_fetched(manifest(3), NOW)  # both holders alive: refused
    leave(mesh, 2)
    assert IDS[2] in mesh.manifests  # kept while there is no pressure
    mesh.receive(IDS[1], [rumor(4)], ADDR, NOW)  # a fetch starts: room can be made
    assert fetches(mesh) == [IDS[4]]
    assert mesh.manifest_fetched(manifest(4), NOW)
    assert sorted(m.node_id for m in mesh.manifests.manifests()) == sorted([IDS[1], IDS[4]])
    assert mesh.counters["manifests_evicted_departed"] == 1


def test_restored_records_of_observers_never_seen_again_are_evicted_first() -> None:
    """A restored observer that membership does not know has the lowest standing: under
    pressure a live member's record takes its place, never the reverse."""
    mesh = core(NodeConfig.lan(max_ledger_records=2), members=3)
    mesh.restore([], [record(8, 1), record(9, 1)], [IDS[8], IDS[9]], NOW)
    assert len(mesh.ledger) == 2
    assert mesh.apply_records([record(1, 2)], NOW) == 1
    assert mesh.apply_records([record(2, 1)], NOW) == 1
    assert {r.observer for r in mesh.ledger.records()} == {IDS[1], IDS[2]}
    assert mesh.counters["records_evicted"] == 2


def test_records_of_a_member_being_verified_wait_for_it() -> None:
    """A record whose observer we heard of second-hand (held until it answers us) is held
    back, not refused, and applied once the observer becomes a member; a stranger's record
    is still refused. Without the hold, an opinion gossiped by a node that joined a moment
    ago was dropped and the ledger of a 5-node join did not converge within 10 s
    (``python -m simulations --scenario join --nodes 5 --duration 10 --seed 26``)."""
    mesh = core(members=2)
    other = core(members=6)
    newcomer = other.membership.member(IDS[5])
    assert newcomer is not None
    mesh.membership.merge_state([newcomer.rumor], NOW, source=IDS[1])  # second-hand
    assert mesh.membership.is_unverified(IDS[5])
    assert mesh.apply_records([record(5, 1), record(6, 1)], NOW) == 0
    assert mesh.counters["records_awaiting_member"] == 1
    assert mesh.counters["records_refused_unknown_observer"] == 1
    assert mesh.ledger.get(IDS[5], IDS[1]) is None
    mesh.membership.merge_state([newcomer.rumor], NOW, source=IDS[5])  # it answered us
    mesh.take_effects()
    assert mesh.ledger.get(IDS[5], IDS[1]) is not None
    assert mesh.ledger.get(IDS[6], IDS[1]) is None
