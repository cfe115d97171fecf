"""The ledger's incremental caches give what a full recomputation gives.

* :meth:`crdt.trust.OpinionGraph.patch` (used by :meth:`ReputationLedger.graph` after a
  change) against :meth:`OpinionGraph.build` from the same edges: the same ids, the same
  arrays in the same order, so trust is bit-identical.
* :meth:`ReputationLedger.opinions_of` against a filter of :meth:`ReputationLedger.records`.
* :func:`crdt.reputation.signed_form` and :func:`meshnode.core.mesh.record_size` against
  the codec, for records that are remembered and for records that only equal them.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdt import ReputationLedger, record_digest
from crdt.reputation import signed_form
from crdt.trust import OpinionGraph, eigentrust
from meshnode.core.mesh import record_size
from protocol import FastSigner, LedgerRecord, fast_verify, signing_bytes, wire_size

NOW = 1_000.0
SIGNERS = [FastSigner.from_seed(bytes([i + 1]) * 8) for i in range(7)]
IDS = [s.node_id for s in SIGNERS]


def record(
    observer: int,
    subject: int,
    score: float,
    seq: int,
    expires_at: float = NOW + 3_600.0,
) -> LedgerRecord:
    unsigned = LedgerRecord(
        observer=IDS[observer],
        subject=IDS[subject],
        score=score,
        outcomes=1,
        seq=seq,
        expires_at=expires_at,
        signature=b"\x00" * 64,
    )
    signature = SIGNERS[observer].sign(signing_bytes(unsigned))
    return dataclasses.replace(unsigned, signature=signature)


def fresh_graph(ledger: ReputationLedger) -> OpinionGraph:
    """The graph built from scratch (a copy has no cached graph)."""
    return ledger.copy().graph()


def assert_same_graph(got: OpinionGraph, want: OpinionGraph) -> None:
    assert got.ids == want.ids
    assert got.index == want.index
    for name in ("observer", "subject", "score", "expires_at", "excluded"):
        a, b = getattr(got, name), getattr(want, name)
        assert a.dtype == b.dtype, name
        assert np.array_equal(a, b), name


def edges(*items: tuple[str, str, float]) -> list[tuple[str, str, float, float]]:
    return sorted((o, s, w, 1e9) for o, s, w in items)


PATCHES = [
    # (case, edges before, changed, excluded after, edges after)
    ("update in place", [("a", "b", 0.6)], {("a", "b"): (0.9, 1e9)}, (), [("a", "b", 0.9)]),
    (
        "new edge between known ids",
        [("a", "b", 0.6), ("b", "c", 0.7)],
        {("a", "c"): (0.8, 1e9)},
        (),
        [("a", "b", 0.6), ("a", "c", 0.8), ("b", "c", 0.7)],
    ),
    (
        "new ids sort before and between the old ones",
        [("b", "d", 0.6)],
        {("a", "c"): (0.8, 1e9), ("c", "e"): (0.9, 1e9)},
        (),
        [("a", "c", 0.8), ("b", "d", 0.6), ("c", "e", 0.9)],
    ),
    (
        "removal drops ids left without an edge",
        [("a", "b", 0.6), ("c", "d", 0.7)],
        {("a", "b"): None},
        (),
        [("c", "d", 0.7)],
    ),
    (
        "removal of a key the graph never held",
        [("a", "b", 0.6)],
        {("x", "y"): None, ("a", "y"): None},
        (),
        [("a", "b", 0.6)],
    ),
    (
        "an equivocator stays without edges",
        [("a", "b", 0.6), ("e", "b", 0.9)],
        {("e", "b"): None},
        ("e",),
        [("a", "b", 0.6)],
    ),
    (
        "an equivocator appears and another is let go",
        [("a", "b", 0.6)],
        {("a", "c"): (0.7, 1e9)},
        ("z",),
        [("a", "b", 0.6), ("a", "c", 0.7)],
    ),
    ("everything goes", [("a", "b", 0.6)], {("a", "b"): None}, (), []),
    ("from nothing", [], {("b", "a"): (0.7, 1e9)}, (), [("b", "a", 0.7)]),
]


@pytest.mark.parametrize(
    ("case", "before", "changed", "excluded", "after"), PATCHES, ids=[p[0] for p in PATCHES]
)
def test_patch_gives_the_graph_a_build_gives(
    case: str,
    before: list[tuple[str, str, float]],
    changed: dict[tuple[str, str], tuple[float, float] | None],
    excluded: tuple[str, ...],
    after: list[tuple[str, str, float]],
) -> None:
    old = OpinionGraph.build(edges(*before), excluded=("e",) if "equivocator" in case else ())
    got = old.patch(changed, excluded)
    assert_same_graph(got, OpinionGraph.build(edges(*after), excluded=excluded))
    if got.ids:
        pre = [got.ids[0]]
        assert np.array_equal(
            eigentrust(got, NOW, pre).values,
            eigentrust(OpinionGraph.build(edges(*after), excluded=excluded), NOW, pre).values,
        )


OPERATIONS = st.lists(
    st.one_of(
        st.tuples(
            st.just("apply"),
            st.integers(0, 6),
            st.integers(0, 6),
            st.sampled_from([0.0, 0.3, 0.5, 0.55, 0.8, 1.0]),
            st.integers(1, 6),
            st.sampled_from([NOW + 5.0, NOW + 50.0, NOW + 3_600.0]),
        ),
        st.tuples(st.just("graph")),
        st.tuples(st.just("prune"), st.sampled_from([NOW, NOW + 10.0, NOW + 100.0])),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(ops=OPERATIONS, max_subjects=st.integers(1, 4), max_records=st.integers(3, 40))
def test_ledger_graph_equals_a_fresh_build_after_any_changes(
    ops: list[tuple[object, ...]], max_subjects: int, max_records: int
) -> None:
    """Records applied (new keys, newer records, equivocations under one seq, evictions
    under small caps), expired records pruned, the graph read in between: every graph the
    ledger gives is the one built afresh from its state, and so is its trust."""
    ledger = ReputationLedger(
        verifier=fast_verify, max_subjects=max_subjects, max_records=max_records
    )
    now = NOW
    for op in ops:
        if op[0] == "apply":
            _, observer, subject, score, seq, expires = op
            assert isinstance(observer, int) and isinstance(subject, int)
            if observer != subject:
                ledger.apply(record(observer, subject, score, seq, expires), now)  # type: ignore[arg-type]
        elif op[0] == "prune":
            now = max(now, float(op[1]))  # type: ignore[arg-type]
            ledger.prune(now)
        else:
            assert_same_graph(ledger.graph(), fresh_graph(ledger))
    got = ledger.graph()
    assert_same_graph(got, fresh_graph(ledger))
    pre = [IDS[0]]
    assert ledger.trust(now, pre) == ledger.copy().trust(now, pre)


def test_a_large_change_rebuilds_and_a_small_one_patches() -> None:
    """Past ``GRAPH_PATCH_MIN`` changed keys (and a quarter of the records) the ledger
    builds afresh; either way the graph is the same."""
    from crdt import reputation

    ledger = ReputationLedger(verifier=fast_verify)
    ledger.apply(record(0, 1, 0.9, 1), NOW)
    first = ledger.graph()
    added = record(0, 2, 0.8, 2)
    ledger.apply(added, NOW)
    # The change log holds the changed key with the edge it gives now.
    assert ledger._touched == {(IDS[0], IDS[2]): (added.score, added.expires_at)}
    patched = ledger.graph()
    assert patched is not first
    assert_same_graph(patched, fresh_graph(ledger))
    limit = reputation.GRAPH_PATCH_MIN
    try:
        reputation.GRAPH_PATCH_MIN = 1
        ledger.apply(record(1, 2, 0.8, 1), NOW)
        ledger.apply(record(1, 3, 0.8, 2), NOW)
        assert ledger._touched is None
    finally:
        reputation.GRAPH_PATCH_MIN = limit
    assert_same_graph(ledger.graph(), fresh_graph(ledger))
    assert ledger._touched == {}


def test_opinions_of_is_the_observers_part_of_the_records() -> None:
    ledger = ReputationLedger(verifier=fast_verify)
    for r in (record(0, 3, 0.7, 1), record(0, 1, 0.2, 2), record(2, 1, 0.9, 1)):
        ledger.apply(r, NOW)
    for node in IDS:
        want = {r.subject: r.score for r in ledger.records() if r.observer == node}
        got = ledger.opinions_of(node)
        assert got == want
        assert list(got) == sorted(want)
    assert ledger.opinions_of(IDS[0]) == {IDS[1]: 0.2, IDS[3]: 0.7}


def test_signed_form_and_record_size_match_the_codec() -> None:
    """Remembered answers are exact: for the same object, and for an equal but distinct
    object (computed afresh), and an unencodable record gives None every time."""
    one = record(0, 1, 0.7, 1)
    twin = dataclasses.replace(one)
    assert twin is not one
    for r in (one, one, twin, twin):
        assert signed_form(r) == (signing_bytes(r), record_digest(r))
        assert record_size(r) == wire_size(r)
    bad = dataclasses.replace(one, seq=-1)
    assert signed_form(bad) is None
    assert signed_form(bad) is None


def test_the_records_of_one_packet_are_applied_in_order_with_one_persist() -> None:
    """A packet of records (with a duplicate, a stranger's record and a manifest rumor in
    between) gives what applying them one by one gives: the same ledger, counters and
    re-gossip, with one ``PersistRecords`` per run of records, in packet order."""
    from meshnode.core.effects import PersistRecords
    from protocol import ManifestRumor
    from tests.unit.test_mesh_caps import ADDR, core, manifest
    from tests.unit.test_mesh_caps import IDS as MESH_IDS
    from tests.unit.test_mesh_caps import record as mesh_record

    first = [mesh_record(1, 2), mesh_record(2, 1), mesh_record(1, 2), mesh_record(7, 1)]
    rumor = ManifestRumor(MESH_IDS[3], 1, manifest(3).digest())
    second = [mesh_record(3, 1), mesh_record(2, 3)]
    batched = core()
    batched.receive(MESH_IDS[1], [*first, rumor, *second], ADDR, NOW)
    persisted = [e.records for e in batched.take_effects() if isinstance(e, PersistRecords)]
    assert persisted == [(first[0], first[1]), tuple(second)]
    single = core()
    for r in [*first, *second]:
        single.apply_records([r], NOW)
    assert batched.ledger == single.ledger
    for name in ("records_applied", "records_rejected", "records_refused_unknown_observer"):
        assert batched.counters[name] == single.counters[name], name
    assert batched.counters["records_applied"] == 4
    assert batched.counters["records_rejected"] == 2
    queued = [i.message for i in batched.membership._queue if isinstance(i.message, LedgerRecord)]
    assert sorted(queued, key=id) == sorted([*first[:2], *second], key=id)
