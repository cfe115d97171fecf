"""Unit tests for crdt.reputation: apply/reject rules, equivocation, eviction, anti-entropy."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import pytest

from crdt import MAX_RECORD_TTL, ReputationLedger, record_digest
from protocol import (
    FastSigner,
    Identity,
    LedgerDigest,
    LedgerRecord,
    LocalProtocolError,
    fast_verify,
    signing_bytes,
)

NOW = 1_000.0
LATER = NOW + 3_600.0
IDS = [Identity.from_seed(bytes([i + 1]) * 32) for i in range(6)]
A, B, C, D, E, F = IDS


def sign(
    observer: Identity,
    subject: Identity | str,
    score: float,
    seq: int,
    *,
    expires_at: float = LATER,
    outcomes: int = 1,
    signer: Identity | None = None,
) -> LedgerRecord:
    """A record by ``observer`` about ``subject``, signed by ``signer`` (default: observer)."""
    unsigned = LedgerRecord(
        observer=observer.node_id,
        subject=subject if isinstance(subject, str) else subject.node_id,
        score=score,
        outcomes=outcomes,
        seq=seq,
        expires_at=expires_at,
        signature=b"\x00" * 64,
    )
    key = signer or observer
    return dataclasses.replace(unsigned, signature=key.sign(signing_bytes(unsigned)))


def flip(record: LedgerRecord, index: int = 0) -> LedgerRecord:
    sig = bytearray(record.signature)
    sig[index] ^= 0x01
    return dataclasses.replace(record, signature=bytes(sig))


def ledger_of(*records: LedgerRecord, **kwargs: int) -> ReputationLedger:
    ledger = ReputationLedger(**kwargs)  # type: ignore[arg-type]
    for record in records:
        assert ledger.apply(record, NOW)
    return ledger


# --------------------------------------------------------------------------- apply / reject

BASE = sign(A, B, 0.8, 5)

REJECTED: list[tuple[str, Callable[[], object]]] = [
    ("forged signature", lambda: flip(BASE)),
    ("forged signature, last byte", lambda: flip(BASE, 63)),
    ("signed by another identity", lambda: sign(A, C, 0.8, 6, signer=C)),
    ("unsigned", lambda: dataclasses.replace(BASE, signature=b"\x00" * 64)),
    ("self-rating", lambda: sign(A, A, 1.0, 6)),
    ("expires exactly now", lambda: sign(A, C, 0.5, 6, expires_at=NOW)),
    ("expired", lambda: sign(A, C, 0.5, 6, expires_at=NOW - 1)),
    ("expires beyond the TTL cap", lambda: sign(A, C, 0.5, 6, expires_at=NOW + MAX_RECORD_TTL + 1)),
    ("score above 1", lambda: dataclasses.replace(BASE, subject=C.node_id, score=1.5)),
    ("score below 0", lambda: dataclasses.replace(BASE, subject=C.node_id, score=-0.1)),
    ("score NaN", lambda: dataclasses.replace(BASE, subject=C.node_id, score=math.nan)),
    ("score infinite", lambda: dataclasses.replace(BASE, subject=C.node_id, score=math.inf)),
    ("score is a bool", lambda: dataclasses.replace(BASE, subject=C.node_id, score=True)),
    ("seq over 64 bits", lambda: dataclasses.replace(BASE, seq=2**64)),
    ("negative outcomes", lambda: dataclasses.replace(BASE, outcomes=-1)),
    ("observer not a node id", lambda: dataclasses.replace(BASE, observer="alice")),
    ("subject not a node id", lambda: dataclasses.replace(BASE, subject="bob")),
    ("expiry NaN", lambda: dataclasses.replace(BASE, expires_at=math.nan)),
    ("not a record", lambda: ("observer", "subject", 0.5)),
    ("replay of an older seq", lambda: sign(A, B, 0.1, 4)),
    ("exact duplicate", lambda: BASE),
]


@pytest.mark.parametrize(("case", "make"), REJECTED, ids=[c for c, _ in REJECTED])
def test_invalid_or_stale_records_change_nothing(case: str, make: Callable[[], object]) -> None:
    """apply() returns False and the state (and trust) are exactly as before."""
    ledger = ledger_of(BASE, sign(B, C, 0.4, 1))
    before = ledger.copy()
    trust_before = ledger.trust(NOW, [A.node_id])
    assert ledger.apply(make(), NOW) is False  # type: ignore[arg-type]
    assert ledger == before
    assert ledger.records() == before.records()
    assert ledger.trust(NOW, [A.node_id]) == trust_before
    assert ledger.equivocators() == []


@pytest.mark.parametrize(
    ("first", "second", "held_seq"),
    [
        ((0.2, 1), (0.9, 2), 2),  # higher seq wins
        ((0.9, 2), (0.2, 1), 2),  # ... in either order
        ((0.2, 1), (0.2, 7), 7),  # same score, newer seq
    ],
)
def test_higher_seq_wins(
    first: tuple[float, int], second: tuple[float, int], held_seq: int
) -> None:
    """Per (observer, subject) the record with the higher seq is kept."""
    ledger = ReputationLedger()
    ledger.apply(sign(A, B, first[0], first[1]), NOW)
    ledger.apply(sign(A, B, second[0], second[1]), NOW)
    record = ledger.get(A.node_id, B.node_id)
    assert record is not None
    assert record.seq == held_seq
    assert len(ledger) == 1


def test_apply_reports_change_only_when_state_changes() -> None:
    """True on the first delivery of a record, False on every repeat."""
    ledger = ReputationLedger()
    record = sign(A, B, 0.5, 1)
    assert ledger.apply(record, NOW) is True
    assert [ledger.apply(record, NOW) for _ in range(3)] == [False, False, False]
    assert ledger.records() == [record]


# --------------------------------------------------------------------------- equivocation


def test_equivocation_same_key_picks_higher_digest_and_flags_observer() -> None:
    """Two records under one (observer, seq): the higher digest wins on every replica."""
    r1, r2 = sign(A, B, 0.1, 3), sign(A, B, 0.9, 3)
    winner = max((r1, r2), key=record_digest)
    forward = ledger_of(r1, r2)
    backward = ledger_of(r2, r1)
    assert forward == backward
    assert forward.get(A.node_id, B.node_id) == winner
    assert forward.equivocators() == [A.node_id]
    low, high = forward.equivocations()[0]
    assert {low, high} == {r1, r2}
    assert record_digest(low) < record_digest(high)


def test_equivocation_across_subjects_is_detected() -> None:
    """One seq used for two different subjects is equivocation too."""
    ledger = ledger_of(sign(A, B, 0.5, 4), sign(A, C, 0.5, 4))
    assert ledger.equivocators() == [A.node_id]
    assert len(ledger) == 2  # both are still the winners of their own keys


def test_equivocation_found_after_the_first_record_was_superseded() -> None:
    """A5, then A6 for the same subject, then a conflicting A5': still caught."""
    ledger = ledger_of(sign(A, B, 0.5, 5), sign(A, B, 0.6, 6))
    assert ledger.apply(sign(A, C, 0.7, 5), NOW) is True
    assert ledger.equivocators() == [A.node_id]


def test_stale_conflicting_record_still_proves_equivocation() -> None:
    """A conflicting record that loses to a newer seq is still evidence."""
    ledger = ledger_of(sign(A, B, 0.5, 5), sign(A, B, 0.6, 6))
    assert ledger.apply(sign(A, B, 0.1, 5), NOW) is True
    assert ledger.equivocators() == [A.node_id]
    record = ledger.get(A.node_id, B.node_id)
    assert record is not None
    assert record.seq == 6


def test_proof_is_canonical_over_three_way_equivocation() -> None:
    """Three records under one seq: every order keeps the lowest and highest digests."""
    records = [sign(A, B, 0.1, 2), sign(A, B, 0.5, 2), sign(A, C, 0.9, 2)]
    ordered = sorted(records, key=record_digest)
    expected = (ordered[0], ordered[-1])
    for order in ([0, 1, 2], [2, 1, 0], [1, 0, 2], [1, 2, 0]):
        ledger = ledger_of(*[records[i] for i in order])
        assert ledger.equivocations() == [expected]


def test_lowest_equivocating_seq_is_the_proof() -> None:
    """Conflicts at seq 3 and seq 8: the seq-3 pair is the proof, in any order."""
    pairs = [sign(A, B, 0.1, 8), sign(A, C, 0.2, 8), sign(A, D, 0.3, 3), sign(A, E, 0.4, 3)]
    one = ledger_of(*pairs)
    two = ledger_of(*reversed(pairs))
    assert one == two
    assert one.equivocations()[0][0].seq == 3


def test_proof_transfers_and_is_reverified() -> None:
    """A proof from one replica convinces another; a tampered proof does not."""
    r1, r2 = sign(A, B, 0.1, 3), sign(A, C, 0.9, 3)
    source = ledger_of(r1, r2)
    low, high = source.equivocations()[0]
    target = ReputationLedger()
    assert target.apply_equivocation(flip(low), high) is False
    assert target.apply_equivocation(low, low) is False
    assert target.apply_equivocation(low, sign(A, C, 0.9, 4)) is False  # different seq
    assert target.apply_equivocation(sign(B, C, 0.9, 3), high) is False  # different observer
    assert target.equivocators() == []
    assert target.apply_equivocation(low, high) is True
    assert target.apply_equivocation(high, low) is False
    assert target.equivocators() == [A.node_id]


def test_proof_of_expired_records_still_counts() -> None:
    """A proof never expires: expired records still prove equivocation, forever."""
    r1 = sign(A, B, 0.1, 3, expires_at=NOW - 10)
    r2 = sign(A, C, 0.9, 3, expires_at=NOW - 10)
    ledger = ReputationLedger()
    assert ledger.apply_many([r1, r2], NOW) == 1  # the pair; each record alone is expired
    assert ledger.equivocators() == [A.node_id]
    assert len(ledger) == 0
    ledger.prune(NOW + 1e9)
    assert ledger.equivocators() == [A.node_id]


def test_equivocator_has_no_weight_in_trust() -> None:
    """An equivocator's opinions are ignored and it scores exactly 0."""
    honest = [sign(B, C, 0.9, 1), sign(C, B, 0.4, 1), sign(B, A, 0.8, 2)]
    lies = [sign(A, D, 1.0, 1), sign(A, E, 1.0, 1)]
    ledger = ledger_of(*honest, *lies)
    clean = ledger_of(sign(B, C, 0.9, 1), sign(C, B, 0.4, 1))
    trust = ledger.trust(NOW, [B.node_id])
    assert trust[A.node_id] == 0.0
    assert trust[D.node_id] == 0.0
    assert trust[E.node_id] == 0.0
    for node, value in clean.trust(NOW, [B.node_id]).items():
        assert trust[node] == pytest.approx(value, abs=1e-15)


def test_proofs_are_bounded() -> None:
    """At most max_proofs proofs; the lowest observer ids are kept, in any order."""
    pairs = [(sign(o, F, 0.1, 1), sign(o, F, 0.2, 1)) for o in (A, B, C, D, E)]
    keep = sorted(o.node_id for o in (A, B, C, D, E))[:2]
    for order in (pairs, pairs[::-1]):
        ledger = ReputationLedger(max_proofs=2)
        for low, high in order:
            ledger.apply_equivocation(low, high)
        assert ledger.equivocators() == keep


# --------------------------------------------------------------------------- bounds and expiry


def test_eviction_keeps_the_k_most_recent_subjects() -> None:
    """K = 2: rating a third subject evicts the least recently rated (lowest seq)."""
    ledger = ledger_of(sign(A, B, 0.5, 1), sign(A, C, 0.5, 2), max_subjects=2)
    assert ledger.apply(sign(A, D, 0.5, 3), NOW) is True
    assert [r.subject for r in ledger.records()] == sorted([C.node_id, D.node_id])
    assert ledger.apply(sign(A, B, 0.5, 1), NOW) is False  # evicted again at once
    assert ledger.apply(sign(A, B, 0.6, 4), NOW) is True  # a newer opinion gets back in
    assert {r.seq for r in ledger.records()} == {3, 4}


@pytest.mark.parametrize("k", [1, 2, 3])
def test_eviction_is_order_independent(k: int) -> None:
    """Whatever the order of delivery, the same top-K records remain."""
    records = [sign(A, s, 0.1 * i, i) for i, s in enumerate((B, C, D, E, F), start=1)]
    forward = ledger_of(*records[:k], max_subjects=k)
    for record in records[k:]:
        forward.apply(record, NOW)
    backward = ReputationLedger(max_subjects=k)
    for record in reversed(records):
        backward.apply(record, NOW)
    assert forward == backward
    assert len(forward) == k
    assert {r.seq for r in forward.records()} == set(range(6 - k, 6))


def test_prune_drops_expired_records() -> None:
    """prune(now) removes records with expires_at <= now and reports how many."""
    ledger = ledger_of(sign(A, B, 0.5, 1, expires_at=NOW + 10), sign(A, C, 0.5, 2))
    assert ledger.prune(NOW + 5) == 0
    assert ledger.prune(NOW + 10) == 1
    assert [r.subject for r in ledger.records()] == [C.node_id]


def test_expired_but_unpruned_records_take_no_part_in_trust() -> None:
    """Trust at an instant ignores records that have expired by then."""
    ledger = ledger_of(sign(A, B, 0.5, 1, expires_at=NOW + 10), sign(A, C, 0.5, 2))
    trust = ledger.trust(NOW + 10, [A.node_id])
    assert B.node_id not in trust
    pruned = ledger.copy()
    pruned.prune(NOW + 10)
    assert pruned.trust(NOW + 10, [A.node_id]) == trust


@pytest.mark.parametrize(
    "kwargs", [{"max_subjects": 0}, {"seq_window": 0}, {"max_proofs": -1}, {"max_subjects": True}]
)
def test_constructor_validates_bounds(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="positive integer"):
        ReputationLedger(**kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- record_opinion


def test_record_opinion_signs_next_seq_and_applies() -> None:
    """Each opinion takes the next seq; the signed record verifies and is held."""
    ledger = ReputationLedger()
    first = ledger.record_opinion(A, B.node_id, 0.7, 3, NOW)
    second = ledger.record_opinion(A, C.node_id, 0.2, 1, NOW, ttl=60)
    third = ledger.record_opinion(A, B.node_id, 0.9, 4, NOW)
    assert (first.seq, second.seq, third.seq) == (1, 2, 3)
    assert second.expires_at == NOW + 60
    assert ledger.get(A.node_id, B.node_id) == third
    assert ReputationLedger().apply(third, NOW)


def test_record_opinion_continues_after_restart() -> None:
    """A node restored from its persisted records continues its counter, never repeats."""
    old = ReputationLedger()
    for subject in (B, C, D):
        old.record_opinion(A, subject.node_id, 0.5, 1, NOW)
    restored = ReputationLedger()
    assert restored.apply_many(old.records(), NOW) == 3
    assert restored.next_seq(A.node_id) == 4
    record = restored.record_opinion(A, E.node_id, 0.5, 1, NOW)
    assert record.seq == 4
    restored.merge(old, NOW)
    assert restored.equivocators() == []


def test_record_opinion_counter_survives_eviction_and_expiry() -> None:
    """The seq high-water mark outlives evicted and expired records of our own."""
    ledger = ReputationLedger(max_subjects=1)
    ledger.record_opinion(A, B.node_id, 0.5, 1, NOW, ttl=10)
    ledger.record_opinion(A, C.node_id, 0.5, 1, NOW, ttl=10)
    ledger.prune(NOW + 100)
    assert len(ledger) == 0
    assert ledger.record_opinion(A, D.node_id, 0.5, 1, NOW + 100).seq == 3


@pytest.mark.parametrize(
    ("subject", "score", "outcomes", "ttl"),
    [
        (A.node_id, 0.5, 1, 60.0),  # self
        ("not-a-node", 0.5, 1, 60.0),
        (B.node_id, 1.1, 1, 60.0),
        (B.node_id, math.nan, 1, 60.0),
        (B.node_id, 0.5, -1, 60.0),
        (B.node_id, 0.5, 1, 0.0),
        (B.node_id, 0.5, 1, math.inf),
        (B.node_id, 0.5, 1, 2e12),  # expiry beyond the wire range
        (B.node_id, 0.5, 1, MAX_RECORD_TTL + 1),
    ],
)
def test_record_opinion_rejects_bad_input(
    subject: str, score: float, outcomes: int, ttl: float
) -> None:
    ledger = ReputationLedger()
    with pytest.raises(LocalProtocolError):
        ledger.record_opinion(A, subject, score, outcomes, NOW, ttl=ttl)
    assert len(ledger) == 0
    assert ledger.next_seq(A.node_id) == 1


def test_record_opinion_refuses_a_signer_the_verifier_rejects() -> None:
    """A FastSigner against the Ed25519 verifier is a wiring bug, reported loudly."""
    fake = FastSigner.from_seed(b"x")
    with pytest.raises(LocalProtocolError, match="verifier"):
        ReputationLedger().record_opinion(fake, B.node_id, 0.5, 1, NOW)
    ledger = ReputationLedger(verifier=fast_verify)
    assert ledger.record_opinion(fake, B.node_id, 0.5, 1, NOW).seq == 1


# --------------------------------------------------------------------------- anti-entropy


def reconcile(one: ReputationLedger, two: ReputationLedger, now: float = NOW) -> int:
    """Push-pull until both sides' digests agree; return the number of rounds."""
    for rounds in range(1, 5):
        to_one = two.delta_since(one.digests())
        to_two = one.delta_since(two.digests())
        one.apply_many(to_one, now)
        two.apply_many(to_two, now)
        if one.digests() == two.digests():
            return rounds
    raise AssertionError("anti-entropy did not converge")


def test_digests_are_one_per_observer_and_sorted() -> None:
    ledger = ledger_of(sign(B, A, 0.5, 9), sign(A, B, 0.5, 2), sign(A, C, 0.5, 4))
    digests = ledger.digests()
    assert [d.observer for d in digests] == sorted([A.node_id, B.node_id])
    assert [d.max_seq for d in digests] == ([4, 9] if A.node_id < B.node_id else [9, 4])
    assert all(isinstance(d, LedgerDigest) and len(d.digest) == 32 for d in digests)


def test_delta_since_sends_only_differing_observers() -> None:
    """Observers whose digest matches are skipped; missing or different ones are sent."""
    shared = [sign(A, B, 0.5, 1), sign(A, C, 0.5, 2)]
    one = ledger_of(*shared, sign(B, C, 0.1, 1))
    two = ledger_of(*shared, sign(C, D, 0.2, 1))
    delta = one.delta_since(two.digests())
    assert {r.observer for r in delta} == {B.node_id}
    assert one.delta_since(one.digests()) == []
    assert one.delta_since([]) == one.records()


def test_digests_and_deltas_reconcile_two_ledgers() -> None:
    """Two replicas exchanging digests and deltas end equal, and equal to their merge."""
    one = ledger_of(sign(A, B, 0.5, 1), sign(A, C, 0.5, 2), sign(B, C, 0.1, 1))
    two = ledger_of(sign(A, B, 0.9, 3), sign(C, D, 0.2, 1), sign(B, D, 0.3, 2))
    merged = one.copy()
    merged.merge(two, NOW)
    assert reconcile(one, two) == 1
    assert one == two == merged
    assert one.records() == merged.records()


def test_anti_entropy_spreads_equivocation_proofs() -> None:
    """A replica holding a proof passes it on, even once the records have expired."""
    r1 = sign(A, B, 0.1, 3, expires_at=NOW + 5)
    r2 = sign(A, C, 0.9, 3, expires_at=NOW + 5)
    knows = ledger_of(r1, r2, sign(B, C, 0.5, 1))
    knows.prune(NOW + 10)
    unaware = ledger_of(sign(B, C, 0.5, 1))
    assert knows.digests() != unaware.digests()
    assert reconcile(knows, unaware, NOW + 10) == 1
    assert len(unaware) == 1
    assert unaware.equivocators() == [A.node_id]
    assert knows == unaware


def test_delta_since_limit_keeps_whole_observers() -> None:
    ledger = ledger_of(sign(A, B, 0.5, 1), sign(A, C, 0.5, 2), sign(B, C, 0.5, 1))
    first = sorted([A.node_id, B.node_id])[0]
    size = 2 if first == A.node_id else 1
    assert len(ledger.delta_since([], limit=size)) == size
    assert len(ledger.delta_since([], limit=1)) == 1
    assert ledger.delta_since([], limit=10) == ledger.records()


# --------------------------------------------------------------------------- merge


def test_merge_reverifies_with_its_own_verifier() -> None:
    """A ledger that trusts FastSigner records cannot push them into an Ed25519 ledger."""
    fake = FastSigner.from_seed(b"y")
    lax = ReputationLedger(verifier=fast_verify)
    lax.record_opinion(fake, B.node_id, 1.0, 1, NOW)
    strict = ReputationLedger()
    assert strict.merge(lax, NOW) is False
    assert len(strict) == 0


def test_merge_leaves_the_other_replica_alone_and_is_idempotent() -> None:
    one = ledger_of(sign(A, B, 0.5, 1))
    two = ledger_of(sign(B, C, 0.5, 1))
    snapshot = two.copy()
    assert one.merge(two, NOW) is True
    assert one.merge(two, NOW) is False
    assert two == snapshot
    assert len(one) == 2


def test_trust_graph_is_cached_until_the_state_changes() -> None:
    ledger = ledger_of(sign(A, B, 0.5, 1))
    graph = ledger.graph()
    assert ledger.graph() is graph
    ledger.apply(sign(A, B, 0.5, 1), NOW)  # duplicate: no change
    assert ledger.graph() is graph
    ledger.apply(sign(B, C, 0.5, 1), NOW)
    assert ledger.graph() is not graph


def test_trust_scores_put_the_average_node_at_one_half() -> None:
    """A symmetric triangle: every node holds 1/3 of the trust and scores 0.5."""
    ring = [sign(A, B, 1.0, 1), sign(B, C, 1.0, 1), sign(C, A, 1.0, 1)]
    ledger = ledger_of(*ring)
    pretrusted = [A.node_id, B.node_id, C.node_id]
    assert ledger.trust_scores(NOW, pretrusted) == pytest.approx(
        dict.fromkeys(sorted(pretrusted), 0.5), abs=1e-9
    )


def test_a_record_at_the_ttl_cap_is_accepted_and_one_past_it_later() -> None:
    """The cap is relative to the receiver's clock: a record just past it is accepted as
    soon as the receiver's clock catches up (a signer's clock a little ahead)."""
    ledger = ReputationLedger()
    assert ledger.apply(sign(A, B, 0.5, 1, expires_at=NOW + MAX_RECORD_TTL), NOW)
    ahead = sign(A, C, 0.5, 2, expires_at=NOW + MAX_RECORD_TTL + 5)
    assert not ledger.apply(ahead, NOW)
    assert ledger.apply(ahead, NOW + 5)
    assert ledger.record_opinion(D, B.node_id, 0.5, 1, NOW, ttl=MAX_RECORD_TTL).expires_at == (
        NOW + MAX_RECORD_TTL
    )


def test_trust_scores_leave_out_peers_nobody_rated() -> None:
    """A peer that only rates others is as unknown as one never heard of (absent: the
    router's prior applies); a peer rated badly, or rated only by untrusted ids, is in the
    result with its low score; a rating that has expired no longer counts."""
    ledger = ledger_of(
        sign(A, B, 1.0, 1),
        sign(A, C, 0.0, 2),
        sign(D, E, 1.0, 1),  # D: rater only, itself untrusted
        sign(B, F, 1.0, 1, expires_at=NOW + 10),
    )
    scores = ledger.trust_scores(NOW, [A.node_id])
    assert set(scores) == {B.node_id, C.node_id, E.node_id, F.node_id}
    assert scores[B.node_id] > 0.0
    assert scores[C.node_id] == 0.0 and scores[E.node_id] == 0.0
    later = ledger.trust_scores(NOW + 10, [A.node_id])
    assert set(later) == {B.node_id, C.node_id, E.node_id}


def test_merge_checks_remembered_records_for_conflicts_but_never_adopts_them() -> None:
    """A record the other replica only remembers (it lost there) proves equivocation here,
    yet is not held until it arrives on its own and wins."""
    superseded = sign(A, B, 0.3, 1, expires_at=NOW + 1_000)
    newer = sign(A, B, 0.4, 2, expires_at=NOW + 10)
    other = ledger_of(superseded, newer)
    mine = ledger_of(sign(A, B, 0.2, 0), sign(A, C, 0.9, 1))  # seq 1 reused: a conflict
    later = NOW + 20  # ``newer`` has expired
    assert mine.merge(other, later) is True
    assert mine.equivocators() == [A.node_id]
    held = mine.get(A.node_id, B.node_id)
    assert held is not None
    assert held.seq == 0
    assert mine.apply(superseded, later) is True
    assert mine.get(A.node_id, B.node_id) == superseded
