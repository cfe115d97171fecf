"""Properties of the reputation ledger (Hypothesis).

Records are signed once, at import, from a small pool of deterministic identities (Ed25519
key generation and signing per example would dominate the run); strategies sample them.

The merge laws are checked on ledgers whose observer and record caps are exactly the most
the pool can fill (six observers, K records of five subjects each) and whose standing
function ranks observers unequally: within the caps neither changes anything. What a cap
does once it is hit is stated by the properties at the end: counts stay bounded in any
order, and the records of the observers of highest standing, when they fit, are the same
whatever the order; lower-standing observers' records may differ between replicas.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import random
from collections.abc import Iterable, Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from crdt import (
    STANDING_DEPARTED,
    STANDING_MEMBER,
    STANDING_TRUSTED,
    STANDING_UNKNOWN,
    ReputationLedger,
    record_digest,
)
from protocol import Identity, LedgerRecord, signing_bytes

NOW = 10_000.0
IDS = [Identity.from_seed(bytes([i + 1]) * 32) for i in range(6)]
HONEST = IDS[:5]
LIAR = IDS[5]
HONEST_IDS = [i.node_id for i in HONEST]
_rng = random.Random(20_240_601)


def sign(
    observer: Identity,
    subject: Identity,
    score: float,
    seq: int,
    expires_at: float,
    signer: Identity | None = None,
) -> LedgerRecord:
    unsigned = LedgerRecord(
        observer=observer.node_id,
        subject=subject.node_id,
        score=score,
        outcomes=1 + seq % 7,
        seq=seq,
        expires_at=expires_at,
        signature=b"\x00" * 64,
    )
    key = signer or observer
    return dataclasses.replace(unsigned, signature=key.sign(signing_bytes(unsigned)))


def _expiry() -> float:
    return NOW + _rng.choice([50.0, 500.0, 5_000.0])


def _honest_pool() -> list[LedgerRecord]:
    """Each honest observer rates every other id twice; its seqs never repeat."""
    pool = []
    for o, observer in enumerate(HONEST):
        seq = 0
        for _round in range(2):
            for s, subject in enumerate(IDS):
                if s == o:
                    continue
                seq += 1
                pool.append(sign(observer, subject, round(_rng.random(), 3), seq, _expiry()))
    return pool


HONEST_POOL = _honest_pool()
# The liar rates like anyone else (seq 6 supersedes seq 1 for the same subject) ...
LIAR_POOL = [sign(LIAR, IDS[i % 5], round(_rng.random(), 3), i + 1, _expiry()) for i in range(6)]
# ... but also signs conflicting records under seqs it already used.
CONFLICTS = [
    sign(LIAR, IDS[2], 0.99, 1, _expiry()),  # seq 1 again, another subject
    sign(LIAR, IDS[3], 0.01, 4, _expiry()),  # seq 4 again, same subject, other score
    sign(LIAR, IDS[3], 0.02, 4, _expiry()),  # a third record under seq 4
]
POOL = HONEST_POOL + LIAR_POOL + CONFLICTS

EXPIRED = [sign(IDS[i], IDS[(i + 1) % 6], 0.5, 50 + i, NOW - i * 10.0) for i in range(6)]
SELF_RATINGS = [sign(i, i, 1.0, 60, NOW + 100) for i in IDS]
WRONG_KEY = [sign(IDS[i], IDS[(i + 2) % 6], 0.9, 70, NOW + 100, IDS[(i + 1) % 6]) for i in range(6)]

RING_SIZE = 100
RING = [Identity.from_seed(b"ring" + i.to_bytes(28, "big")) for i in range(RING_SIZE)]


@functools.cache
def ring_record(i: int, j: int) -> LedgerRecord:
    """Ring member i rates ring member j at 1.0 (seq j + 1: unique per observer)."""
    return sign(RING[i], RING[j], 1.0, j + 1, NOW + 1_000)


@functools.cache
def ring_praise(i: int, h: int) -> LedgerRecord:
    """Ring member i rates honest node h at 1.0 (outbound only; nothing points back)."""
    return sign(RING[i], HONEST[h], 1.0, 200 + h, NOW + 1_000)


deliveries = st.lists(st.sampled_from(POOL), max_size=40)
bounds = st.sampled_from([1, 2, 3, 256])
pretrusted = st.lists(st.sampled_from(HONEST_IDS), min_size=1, max_size=3, unique=True)
SETTINGS = settings(max_examples=200, deadline=None)


TIERS = (STANDING_UNKNOWN, STANDING_DEPARTED, STANDING_MEMBER, STANDING_TRUSTED)


def by_id(node: str) -> int:
    """A fixed, unequal standing per id (within the caps it must not matter)."""
    return TIERS[ord(node[-1]) % len(TIERS)]


def build(
    records: Iterable[LedgerRecord], k: int = 256, *, capped: bool = True
) -> ReputationLedger:
    """A ledger fed ``records``; ``capped``: caps exactly at the most the pool can fill."""
    if capped:
        subjects = min(k, len(IDS) - 1)
        ledger = ReputationLedger(
            max_subjects=k,
            max_observers=len(IDS),
            max_records=len(IDS) * subjects,
            standing=by_id,
        )
    else:
        ledger = ReputationLedger(max_subjects=k)
    for record in records:
        ledger.apply(record, NOW)
    return ledger


def merged(*ledgers: ReputationLedger) -> ReputationLedger:
    out = ledgers[0].copy()
    for other in ledgers[1:]:
        out.merge(other, NOW)
    return out


def assert_same(one: ReputationLedger, two: ReputationLedger, pre: Sequence[str]) -> None:
    assert one == two
    assert one.records() == two.records()
    assert one.equivocations() == two.equivocations()
    assert one.digests() == two.digests()
    assert one.trust(NOW, pre) == two.trust(NOW, pre)


def rank(record: LedgerRecord) -> tuple[int, bytes]:
    return (record.seq, record_digest(record))


# --------------------------------------------------------------------------- merge laws


@SETTINGS
@given(deliveries, deliveries, bounds, pretrusted)
def test_merge_is_commutative(
    a: list[LedgerRecord], b: list[LedgerRecord], k: int, pre: list[str]
) -> None:
    """a ⊔ b == b ⊔ a: state, records, proofs, digests and trust."""
    la, lb = build(a, k), build(b, k)
    assert_same(merged(la, lb), merged(lb, la), pre)


@SETTINGS
@given(deliveries, deliveries, deliveries, bounds, pretrusted)
def test_merge_is_associative(
    a: list[LedgerRecord], b: list[LedgerRecord], c: list[LedgerRecord], k: int, pre: list[str]
) -> None:
    """(a ⊔ b) ⊔ c == a ⊔ (b ⊔ c)."""
    la, lb, lc = build(a, k), build(b, k), build(c, k)
    assert_same(merged(merged(la, lb), lc), merged(la, merged(lb, lc)), pre)


@SETTINGS
@given(deliveries, bounds, pretrusted)
def test_merge_is_idempotent(a: list[LedgerRecord], k: int, pre: list[str]) -> None:
    """a ⊔ a == a, and merging a copy of oneself reports no change."""
    la = build(a, k)
    again = la.copy()
    assert again.merge(la, NOW) is False
    assert_same(again, la, pre)


@SETTINGS
@given(deliveries, bounds, pretrusted)
def test_merge_equals_delivering_everything_to_one_replica(
    a: list[LedgerRecord], k: int, pre: list[str]
) -> None:
    """Splitting deliveries between two replicas and merging == one replica seeing all."""
    half = len(a) // 2
    assert_same(merged(build(a[:half], k), build(a[half:], k)), build(a, k), pre)


@SETTINGS
@given(deliveries, deliveries, bounds, st.sampled_from([NOW + 50.0, NOW + 500.0]), pretrusted)
def test_merge_laws_hold_once_records_expire(
    a: list[LedgerRecord], b: list[LedgerRecord], k: int, later: float, pre: list[str]
) -> None:
    """Merging at a later instant, when some records have expired, is still commutative,
    and no expired record survives it."""
    la, lb = build(a, k), build(b, k)
    one, two = la.copy(), lb.copy()
    one.merge(lb, later)
    two.merge(la, later)
    assert one == two
    assert one.records() == two.records()
    assert one.trust(later, pre) == two.trust(later, pre)
    assert all(r.expires_at > later for r in one.records())


# --------------------------------------------------------------------------- delivery order


@SETTINGS
@given(st.data(), deliveries, bounds, pretrusted)
def test_any_order_or_duplication_gives_the_same_state(
    data: st.DataObject, a: list[LedgerRecord], k: int, pre: list[str]
) -> None:
    """Permuting and duplicating deliveries changes neither the state nor trust()."""
    shuffled = data.draw(st.permutations(a))
    repeats = data.draw(st.lists(st.sampled_from(a), max_size=20)) if a else []
    reference = build(a, k)
    assert_same(build(shuffled + repeats, k), reference, pre)
    trust = reference.trust(NOW, pre)
    assert list(trust) == sorted(trust)
    assert all(v >= 0.0 for v in trust.values())
    assert math.isclose(sum(trust.values()), 1.0, abs_tol=1e-9)


@SETTINGS
@given(deliveries)
def test_newest_record_wins_per_key(a: list[LedgerRecord]) -> None:
    """Without eviction, each key holds the delivered record of highest (seq, digest)."""
    ledger = build(a)
    best: dict[tuple[str, str], LedgerRecord] = {}
    for record in a:
        key = (record.observer, record.subject)
        if key not in best or rank(record) > rank(best[key]):
            best[key] = record
    assert ledger.records() == [best[key] for key in sorted(best)]


@SETTINGS
@given(deliveries, bounds)
def test_record_count_never_exceeds_observers_times_k(a: list[LedgerRecord], k: int) -> None:
    """At most K records per observer, whatever arrives."""
    ledger = build(a, k)
    per_observer: dict[str, int] = {}
    for record in ledger.records():
        per_observer[record.observer] = per_observer.get(record.observer, 0) + 1
    observers = {r.observer for r in a}
    assert len(ledger) == len(ledger.records()) <= len(observers) * k
    assert all(n <= k for n in per_observer.values())


# --------------------------------------------------------------------------- rejection


def forged(record: LedgerRecord, index: int) -> LedgerRecord:
    sig = bytearray(record.signature)
    sig[index] ^= 0x01
    return dataclasses.replace(record, signature=bytes(sig))


bad_records = st.one_of(
    st.builds(forged, st.sampled_from(POOL), st.integers(0, 63)),
    st.sampled_from(WRONG_KEY),
    st.sampled_from(EXPIRED),
    st.sampled_from(SELF_RATINGS),
    st.builds(
        lambda r, s: dataclasses.replace(r, score=s),
        st.sampled_from(POOL),
        st.sampled_from([1.5, -0.5, math.nan, math.inf]),
    ),
)


@SETTINGS
@given(st.data(), deliveries, st.lists(bad_records, min_size=1, max_size=8), bounds, pretrusted)
def test_forged_wrong_key_expired_and_self_ratings_change_nothing(
    data: st.DataObject,
    a: list[LedgerRecord],
    bad: list[LedgerRecord],
    k: int,
    pre: list[str],
) -> None:
    """Invalid records are refused on arrival, wherever they fall among valid ones."""
    reference = build(a, k)
    for record in bad:
        probe = reference.copy()
        assert probe.apply(record, NOW) is False
        assert_same(probe, reference, pre)
    mixed = list(a)
    for record in bad:
        mixed.insert(data.draw(st.integers(0, len(mixed))), record)
    assert_same(build(mixed, k), reference, pre)


@SETTINGS
@given(deliveries, bounds, pretrusted)
def test_replayed_older_records_change_nothing(
    a: list[LedgerRecord], k: int, pre: list[str]
) -> None:
    """Replaying any record older than the one held for its key is a no-op."""
    ledger = build(a, k)
    reference = ledger.copy()
    for old in POOL:
        held = ledger.get(old.observer, old.subject)
        if held is not None and held.observer != LIAR.node_id and old.seq < held.seq:
            assert ledger.apply(old, NOW) is False
    for record in a:
        assert ledger.apply(record, NOW) is False
    assert_same(ledger, reference, pre)


# --------------------------------------------------------------------------- equivocation


@SETTINGS
@given(st.data(), st.lists(st.sampled_from(HONEST_POOL + LIAR_POOL), max_size=30), pretrusted)
def test_equivocation_same_outcome_in_every_order(
    data: st.DataObject, a: list[LedgerRecord], pre: list[str]
) -> None:
    """With conflicting records delivered, every order keeps the same winner and proof,
    and the liar's weight in trust is zero."""
    conflict = data.draw(
        st.sampled_from([(LIAR_POOL[0], CONFLICTS[0]), (LIAR_POOL[3], CONFLICTS[1])])
    )
    records = [*a, *conflict]
    first = build(data.draw(st.permutations(records)))
    second = build(data.draw(st.permutations(records)))
    assert_same(first, second, pre)
    assert first.equivocators() == [LIAR.node_id]
    low, high = first.equivocations()[0]
    assert low.observer == high.observer == LIAR.node_id
    assert low.seq == high.seq
    for record in conflict:
        held = first.get(record.observer, record.subject)
        contenders = [
            r for r in records if (r.observer, r.subject) == (record.observer, record.subject)
        ]
        assert held == max(contenders, key=rank)

    honest_only = build(r for r in records if LIAR.node_id not in (r.observer, r.subject))
    with_liar = first.trust(NOW, pre)
    without = honest_only.trust(NOW, pre)
    assert with_liar.get(LIAR.node_id, 0.0) == 0.0
    for node, value in with_liar.items():
        if node in without:
            assert abs(value - without[node]) <= 1e-12
        else:
            assert value == 0.0


@SETTINGS
@given(st.lists(st.sampled_from(POOL), max_size=30), st.permutations(CONFLICTS))
def test_three_way_equivocation_proof_is_canonical(
    a: list[LedgerRecord], conflicts: list[LedgerRecord]
) -> None:
    """All conflicts delivered in any order: the proof is the lowest-seq pair with the
    extreme digests, the same on every replica."""
    delivered = [*a, *conflicts]
    ledger = build(delivered)
    low, high = ledger.equivocations()[0]
    by_seq: dict[int, set[bytes]] = {}
    for record in delivered:
        if record.observer == LIAR.node_id:
            by_seq.setdefault(record.seq, set()).add(record_digest(record))
    lowest = min(seq for seq, digests in by_seq.items() if len(digests) > 1)
    assert low.seq == high.seq == lowest
    assert record_digest(low) == min(by_seq[lowest])
    assert record_digest(high) == max(by_seq[lowest])
    assert build(reversed(delivered)).equivocations() == ledger.equivocations()


# --------------------------------------------------------------------------- Sybil ring


@SETTINGS
@given(
    st.lists(st.sampled_from(HONEST_POOL), min_size=1, max_size=40),
    st.integers(10, RING_SIZE),
    st.integers(1, 3),
    st.booleans(),
    pretrusted,
)
def test_sybil_ring_gains_no_trust(
    honest: list[LedgerRecord], size: int, degree: int, praise: bool, pre: list[str]
) -> None:
    """A ring of fresh identities rating each other 1.0, with no inbound rating from an
    honest node, ends with total trust 0 and leaves the honest ranking unchanged."""
    base = build(honest, capped=False)
    ring = base.copy()
    for i in range(size):
        for step in range(1, degree + 1):
            assert ring.apply(ring_record(i, (i + step) % size), NOW)
        if praise:
            assert ring.apply(ring_praise(i, i % len(HONEST)), NOW)

    without = base.trust(NOW, pre)
    with_ring = ring.trust(NOW, pre)
    members = {r.node_id for r in RING[:size]}
    assert members <= set(with_ring)
    assert abs(sum(with_ring[m] for m in members)) <= 1e-12
    scores = ring.trust_scores(NOW, pre)
    assert all(scores[m] == 0.0 for m in members)
    for node, value in without.items():
        assert abs(with_ring[node] - value) <= 1e-12
    for a_node, a_value in without.items():
        for b_node, b_value in without.items():
            if a_value > b_value + 1e-9:
                assert with_ring[a_node] > with_ring[b_node]


# --------------------------------------------------------------------------- anti-entropy


@SETTINGS
@given(deliveries, deliveries, bounds)
def test_digest_delta_exchange_converges(
    a: list[LedgerRecord], b: list[LedgerRecord], k: int
) -> None:
    """Two replicas exchanging digests and deltas end equal, holding the merged records."""
    one, two = build(a, k), build(b, k)
    union = merged(one, two)
    for _ in range(3):
        to_one = two.delta_since(one.digests())
        to_two = one.delta_since(two.digests())
        one.apply_many(to_one, NOW)
        two.apply_many(to_two, NOW)
        if one.digests() == two.digests():
            break
    assert one == two
    assert one.records() == union.records()
    assert set(one.equivocators()) <= set(union.equivocators())


# --------------------------------------------------------------------------- caps


caps = st.tuples(st.integers(1, len(IDS)), st.integers(1, 30))
standings = st.lists(st.sampled_from(TIERS), min_size=len(IDS), max_size=len(IDS))


def capped(
    records: Iterable[LedgerRecord], cap: tuple[int, int], tiers: list[int], k: int = 256
) -> ReputationLedger:
    table = {i.node_id: t for i, t in zip(IDS, tiers, strict=True)}
    ledger = ReputationLedger(
        max_subjects=k, max_observers=cap[0], max_records=cap[1], standing=table.__getitem__
    )
    for record in records:
        ledger.apply(record, NOW)
    return ledger


@SETTINGS
@given(st.data(), deliveries, deliveries, caps, standings, bounds)
def test_counts_stay_within_the_caps_in_any_order_and_merge(
    data: st.DataObject,
    a: list[LedgerRecord],
    b: list[LedgerRecord],
    cap: tuple[int, int],
    tiers: list[int],
    k: int,
) -> None:
    """Whatever arrives, in whatever order, and after merging two capped replicas: at most
    ``max_observers`` observers, ``max_records`` records and K records per observer."""
    one = capped(data.draw(st.permutations(a)), cap, tiers, k)
    two = capped(b, cap, tiers, k)
    for ledger in (one, two, merged(one, two), merged(two, one)):
        assert len(ledger.observers()) <= cap[0]
        assert len(ledger) == len(ledger.records()) <= cap[1]
        per: dict[str, int] = {}
        for record in ledger.records():
            per[record.observer] = per.get(record.observer, 0) + 1
        assert all(n <= k for n in per.values())


@SETTINGS
@given(st.data(), deliveries, caps, standings)
def test_top_standing_records_that_fit_are_the_same_in_any_order(
    data: st.DataObject, a: list[LedgerRecord], cap: tuple[int, int], tiers: list[int]
) -> None:
    """The cap cuts from the bottom: if the highest-standing observers' winning records
    fit under both caps, every order of delivery holds exactly those records for them
    (only lower-standing observers' records depend on the order)."""
    top = max(tiers)
    top_ids = {i.node_id for i, t in zip(IDS, tiers, strict=True) if t == top}
    reference = build(a, capped=False)
    expected = [r for r in reference.records() if r.observer in top_ids]
    if len({r.observer for r in expected}) > cap[0] or len(expected) > cap[1]:
        return
    for order in (a, data.draw(st.permutations(a))):
        ledger = capped(order, cap, tiers)
        assert [r for r in ledger.records() if r.observer in top_ids] == expected
