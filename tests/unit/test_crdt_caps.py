"""Caps on the replicated state: what the ledger and the manifest store keep when full.

Invariants:
* the ledger never holds more than ``max_observers`` observers or ``max_records`` records
  (except its own records, which are always admitted and never evicted);
* when a cap is full, a newcomer evicts the held observer of lowest standing only if its
  own standing is strictly higher; otherwise it is refused and the state is unchanged;
* a refused record costs no signature check and leaves no history behind;
* the manifest store refuses manifests over ``MAX_MANIFEST_BYTES`` and new nodes beyond
  ``max_manifests`` / ``max_bytes``, keeping what it holds; the caller's own manifest is
  never refused by a cap.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable

import pytest

from crdt import (
    STANDING_DEPARTED,
    STANDING_MEMBER,
    STANDING_OWN,
    STANDING_TRUSTED,
    STANDING_UNKNOWN,
    ManifestStore,
    ReputationLedger,
)
from protocol import (
    Capability,
    FastSigner,
    LedgerRecord,
    Manifest,
    fast_verify,
    signing_bytes,
)
from protocol.limits import MAX_MANIFEST_BYTES

NOW = 1_000.0
LATER = NOW + 3_600.0
SIGNERS = [FastSigner.from_seed(bytes([i + 1]) * 32) for i in range(12)]
IDS = [s.node_id for s in SIGNERS]


def record(observer: int, subject: int, seq: int = 1, score: float = 0.5) -> LedgerRecord:
    unsigned = LedgerRecord(
        observer=IDS[observer],
        subject=IDS[subject],
        score=score,
        outcomes=1,
        seq=seq,
        expires_at=LATER,
        signature=b"\x00" * 64,
    )
    return dataclasses.replace(unsigned, signature=SIGNERS[observer].sign(signing_bytes(unsigned)))


def ledger(
    standings: dict[int, int] | None = None, **caps: int
) -> tuple[ReputationLedger, list[int]]:
    """A ledger with ``caps`` whose standing comes from ``standings`` (index -> tier),
    plus a list that counts signature checks."""
    checks: list[int] = []

    def verifier(key: bytes, data: bytes, signature: bytes) -> bool:
        checks.append(1)
        return fast_verify(key, data, signature)

    table = {IDS[i]: tier for i, tier in (standings or {}).items()}
    standing: Callable[[str], int] = lambda node: table.get(node, STANDING_MEMBER)  # noqa: E731
    return ReputationLedger(verifier=verifier, standing=standing, **caps), checks


# ---------------------------------------------------------------------- ledger: plain caps


def test_record_cap_refuses_a_newcomer_of_equal_standing() -> None:
    """Full at 3 records, all members: a fourth record of a new subject is refused, counted,
    and costs no signature check; an update of a held key still goes in."""
    book, checks = ledger(max_records=3)
    for subject in (1, 2, 3):
        assert book.apply(record(0, subject), NOW)
    checks.clear()
    assert not book.apply(record(4, 5), NOW)
    assert not book.apply(record(0, 6), NOW)
    assert len(book) == 3
    assert book.counters["refused_record_cap"] == 2
    assert checks == []  # refused before the signature check
    assert book.apply(record(0, 1, seq=2, score=0.9), NOW)  # same key, newer: replaces
    assert len(book) == 3 and book.get(IDS[0], IDS[1]).score == 0.9  # type: ignore[union-attr]


def test_observer_cap_refuses_a_new_observer_of_equal_standing() -> None:
    book, _ = ledger(max_observers=2)
    assert book.apply(record(0, 5), NOW)
    assert book.apply(record(1, 5), NOW)
    assert not book.apply(record(2, 5), NOW)
    assert book.apply(record(1, 6), NOW)  # a held observer's new subject is fine
    assert book.observers() == sorted([IDS[0], IDS[1]])
    assert book.counters["refused_observer_cap"] == 1


def test_refused_observer_leaves_no_history() -> None:
    """A refused record is not remembered for equivocation checks either (that memory is
    only for observers with held records), so the history stays bounded too."""
    book, _ = ledger(max_observers=1)
    assert book.apply(record(0, 5), NOW)
    other = ReputationLedger(verifier=fast_verify)
    for seq in range(1, 20):
        other.apply(record(1, 5, seq=seq, score=seq / 20), NOW)
    book.merge(other, NOW)
    assert book.observers() == [IDS[0]]
    assert IDS[1] not in book._seen


# ---------------------------------------------------------------------- ledger: standing

U, G, M = STANDING_UNKNOWN, STANDING_DEPARTED, STANDING_MEMBER
T, OWN = STANDING_TRUSTED, STANDING_OWN


@pytest.mark.parametrize(
    ("held", "newcomer", "admitted"),
    [
        (U, G, True),
        (U, M, True),
        (G, M, True),
        (M, T, True),
        (T, OWN, True),
        (U, U, False),
        (G, G, False),
        (M, M, False),
        (M, G, False),
        (T, M, False),
        (OWN, T, False),
        (OWN, OWN, True),  # own records are always admitted, over the cap
    ],
)
@pytest.mark.parametrize("cap", ["max_records", "max_observers"])
def test_full_ledger_evicts_only_for_a_strictly_higher_standing(
    held: int, newcomer: int, admitted: bool, cap: str
) -> None:
    """Observer 0 (standing ``held``) fills the cap; observer 1 (``newcomer``) offers one
    record. Evicted exactly when the newcomer ranks strictly higher (or is our own)."""
    book, _ = ledger({0: held, 1: newcomer}, **{cap: 1})
    assert book.apply(record(0, 5), NOW)
    assert book.apply(record(1, 6), NOW) is admitted
    holders = {r.observer for r in book.records()}
    if not admitted:
        assert holders == {IDS[0]}
    elif held == OWN:
        assert holders == {IDS[0], IDS[1]}  # both own: nothing of ours is evicted
    else:
        assert holders == {IDS[1]}
        assert book.counters["evicted_records"] == 1


def test_eviction_takes_the_lowest_standing_first_then_the_greatest_id() -> None:
    """Full at 4 records (observers 0..3, one each): newcomers of trusted standing evict the
    unknown observer first, then the departed ones, greatest id first; members stay."""
    standings = {0: M, 1: G, 2: U, 3: G, 4: T, 5: T, 6: T}
    book, _ = ledger(standings, max_records=4)
    for observer in range(4):
        assert book.apply(record(observer, 9), NOW)
    order: list[str] = []
    for newcomer in (4, 5, 6):
        before = set(book.observers())
        assert book.apply(record(newcomer, 9), NOW)
        order.extend(before - set(book.observers()))
    departed_first = sorted([IDS[1], IDS[3]], reverse=True)
    assert order == [IDS[2], *departed_first]
    assert IDS[0] in book.observers()
    assert not book.apply(record(7, 9), NOW)  # a member does not evict trusted observers


def test_partial_eviction_drops_the_victims_oldest_record() -> None:
    """With room for observers but not records, a higher-standing newcomer takes one record
    from the lowest-standing observer: its lowest-ranked (oldest) one."""
    book, _ = ledger({0: G, 1: M}, max_records=3)
    for seq, subject in enumerate((5, 6, 7), start=1):
        assert book.apply(record(0, subject, seq=seq), NOW)
    assert book.apply(record(1, 5), NOW)
    assert {(r.observer, r.subject) for r in book.records()} == {
        (IDS[0], IDS[6]),
        (IDS[0], IDS[7]),
        (IDS[1], IDS[5]),
    }


def test_restanding_changes_who_is_evicted() -> None:
    """Standings are read again after :meth:`restanding`: an observer that departed since
    becomes evictable."""
    table = {IDS[0]: M, IDS[1]: M}
    book = ReputationLedger(
        verifier=fast_verify, max_observers=1, standing=lambda n: table.get(n, M)
    )
    assert book.apply(record(0, 5), NOW)
    assert not book.apply(record(1, 5), NOW)
    table[IDS[0]] = G
    book.restanding()
    assert book.apply(record(1, 5), NOW)
    assert book.observers() == [IDS[1]]


def test_own_records_are_never_evicted_and_always_admitted() -> None:
    """Records signed through the ledger (our own) go in over a full cap and are never the
    eviction victim, whatever the standing function says."""
    book, _ = ledger({0: U}, max_records=2)
    book.record_opinion(SIGNERS[0], IDS[5], 0.5, 1, NOW)
    book.record_opinion(SIGNERS[0], IDS[6], 0.5, 1, NOW)
    book.record_opinion(SIGNERS[0], IDS[7], 0.5, 1, NOW)  # over the cap: still ours
    assert len(book) == 3
    assert not book.apply(record(1, 5), NOW)  # nothing but own records to evict
    assert all(r.observer == IDS[0] for r in book.records())


@pytest.mark.parametrize("seed", range(5))
def test_counts_stay_bounded_in_any_arrival_order(seed: int) -> None:
    """Records of 10 observers of mixed standing, 4 subjects each, in a shuffled order:
    never more than the caps, and every record of the trusted observers (which fit) is
    held at the end whatever the order."""
    standings = {i: (T if i < 2 else M if i < 5 else G if i < 8 else U) for i in range(10)}
    records = [record(o, 10 + (s % 2), seq=s + 1) for o in range(10) for s in range(4)]
    records += [record(o, 11 - (s % 2), seq=s + 5) for o in range(10) for s in range(2)]
    random.Random(seed).shuffle(records)
    book, _ = ledger(standings, max_records=6, max_observers=4, max_subjects=2)
    for rec in records:
        book.apply(rec, NOW)
        assert len(book) <= 6 and len(book.observers()) <= 4
    trusted = {(r.observer, r.subject) for r in book.records() if r.observer in IDS[:2]}
    assert trusted == {(IDS[o], IDS[s]) for o in (0, 1) for s in (10, 11)}


# ---------------------------------------------------------------------- manifest store


def manifest(i: int, *, version: int = 1, pad: int = 0) -> Manifest:
    schema = {"pad": "x" * pad} if pad else None
    return Manifest.create(
        SIGNERS[i],
        name=f"n{i}",
        capabilities=[Capability(name="echo", description="repeat", input_schema=schema)],
        version=version,
    )


def oversized(i: int) -> Manifest:
    """A manifest over MAX_MANIFEST_BYTES, signed by its node (bypassing ``create``'s check,
    as a hostile node would)."""
    caps = tuple(
        Capability(name=f"c{k}", description="", input_schema={"pad": "y" * 30_000})
        for k in range(10)
    )
    unsigned = Manifest(
        node_id=IDS[i],
        name=f"big{i}",
        endpoint="",
        max_concurrent_tasks=1,
        capabilities=caps,
        tags=(),
        version=1,
    )
    return dataclasses.replace(unsigned, signature=SIGNERS[i].sign(signing_bytes(unsigned)))


def test_store_refuses_a_manifest_over_the_size_limit() -> None:
    big = oversized(0)
    assert big.wire_bytes() > MAX_MANIFEST_BYTES
    store = ManifestStore(verifier=fast_verify)
    assert not store.apply(big, NOW)
    assert not store.apply(big, NOW, own=True)  # no exception for anyone's manifest
    assert len(store) == 0 and store.total_bytes == 0
    assert store.counters["refused_too_large"] == 2


def test_store_count_cap_keeps_held_nodes_and_refuses_new_ones() -> None:
    store = ManifestStore(verifier=fast_verify, max_manifests=2)
    assert store.apply(manifest(0), NOW) and store.apply(manifest(1), NOW)
    assert not store.apply(manifest(2), NOW)
    assert store.counters["refused_count_cap"] == 1
    assert store.apply(manifest(1, version=2), NOW)  # a held node may update
    assert store.apply(manifest(3), NOW, own=True)  # our own is never refused
    assert len(store) == 3
    # A tombstone frees the room for a refused node.
    assert store.remove(IDS[0], NOW)
    store.discard(IDS[3])
    assert store.apply(manifest(2), NOW)
    assert sorted(m.node_id for m in store.manifests()) == sorted([IDS[1], IDS[2]])


def test_store_byte_cap_keeps_held_nodes_and_refuses_growth() -> None:
    small = [manifest(i, pad=1_000) for i in range(3)]
    size = small[0].wire_bytes()
    store = ManifestStore(verifier=fast_verify, max_bytes=2 * size + 10)
    assert store.apply(small[0], NOW) and store.apply(small[1], NOW)
    assert store.total_bytes == 2 * size
    assert not store.apply(small[2], NOW)
    assert store.counters["refused_bytes_cap"] == 1
    assert not store.apply(manifest(1, version=2, pad=2_000), NOW)  # growth over the cap
    assert store.counters["refused_bytes_cap"] == 2
    shrunk = manifest(1, version=3, pad=10)
    assert store.apply(shrunk, NOW)  # a held node may shrink
    assert store.total_bytes == size + shrunk.wire_bytes()
    assert not store.apply(small[2], NOW)  # still no room for a whole new one
    assert store.remove(IDS[0], NOW)  # a departure frees its bytes
    assert store.apply(small[2], NOW)
    assert len(store) == 2 and store.total_bytes <= 2 * size + 10


def test_store_totals_follow_tombstones_discards_and_copies() -> None:
    store = ManifestStore(verifier=fast_verify)
    for i in range(4):
        store.apply(manifest(i), NOW)
    expected = sum(m.wire_bytes() for m in store.manifests())
    assert store.total_bytes == expected and len(store) == 4
    store.remove(IDS[0], NOW)
    assert store.discard(IDS[1]) and not store.discard(IDS[1])
    assert len(store) == 2
    assert store.total_bytes == sum(m.wire_bytes() for m in store.manifests())
    twin = store.copy(max_manifests=2)
    assert twin == store and twin.max_manifests == 2 and twin.total_bytes == store.total_bytes
    assert not twin.apply(manifest(5), NOW)


def test_equivocation_history_is_bounded_in_total() -> None:
    """A member that signs a fresh seq for the same subject again and again makes us
    remember each superseded record for equivocation checks; the total is capped, the
    busiest observer is trimmed first, and the history count matches what is held."""
    book = ReputationLedger(verifier=fast_verify, max_history=50, seq_window=1024)
    assert book.apply(record(1, 5), NOW)
    assert book.apply(record(2, 5), NOW)
    for seq in range(1, 200):
        assert book.apply(record(0, 5, seq=seq, score=(seq % 10) / 10), NOW)
    remembered = sum(len(by_seq) for by_seq in book._seen.values())
    assert remembered == book._history <= 50
    assert IDS[1] in book._seen and IDS[2] in book._seen  # quiet observers keep theirs
    assert book.get(IDS[0], IDS[5]).seq == 199  # type: ignore[union-attr]
    book.prune(LATER)
    assert book._history == 0 and book._seen == {}
