"""The reputation ledger: signed opinions, replicated as a state-based CRDT.

Theory of operation
-------------------
A record (:class:`protocol.LedgerRecord`) is one observer's signed opinion of one subject:
a score in [0, 1], the number of outcomes behind it, the observer's own sequence number
(one counter across all its records) and an expiry on the mesh clock. Node ids are
self-certifying, so anyone can check a record against its observer's id; nobody can write
an opinion in someone else's name.

State. For each key (observer, subject) the ledger holds one record: the greatest by
*rank* ``(seq, digest, signature)``, where ``digest`` is BLAKE2b-256 of
:func:`protocol.signing_bytes` (``signature`` only breaks the tie between two signatures of
the same content, which only the observer itself could produce). Each observer keeps at most
``max_subjects`` (K) records: when a new record would make K + 1, the one with the lowest
rank — the subject it rated least recently — is evicted. Because the eviction order is the
merge order, the records held are always the top K, by rank, of the per-key winners among
every record delivered, whatever the order of delivery: merge is commutative, associative
and idempotent, and duplicates change nothing. (Expiry is the one input that depends on
time: a record superseded or evicted before its rival expired stays gone, so two replicas
are compared, and merged, as of one ``now`` — :meth:`~ReputationLedger.merge` prunes first
and ignores expired records on either side.)

Rejected by :meth:`ReputationLedger.apply` (it returns False and nothing changes): a
signature that does not verify against the observer's id (forged, or signed by another key),
observer == subject, ``expires_at <= now`` or more than :data:`MAX_RECORD_TTL` after
``now``, a score outside [0, 1] or not finite, any field
outside its wire schema, and records that lose to what is held (replays of older sequence
numbers).

Equivocation. An honest observer never signs two different records with the same sequence
number; two such records are transferable proof that it lied to someone. The ledger
remembers, per observer, the greatest-ranked record it has verified at each of the last
``seq_window`` sequence numbers (until they expire), so a conflicting record is caught even
after the first one was superseded; :meth:`~ReputationLedger.merge` checks the other
replica's remembered records against ours too (without adopting them). The proof kept per
observer is canonical — at the lowest equivocating sequence number, the records with the
lowest and the highest digest — so every replica that saw the same records holds the same
proof. Proofs are part of the replicated state: they are folded into the observer's
:class:`protocol.LedgerDigest`, shipped by :meth:`~ReputationLedger.delta_since` as the two
plain records, recognised again by :meth:`~ReputationLedger.apply_many` (two records, one
observer, one seq) and re-verified by :meth:`~ReputationLedger.apply_equivocation`. A proof
never expires: an equivocator's weight in :meth:`~ReputationLedger.trust` is 0 forever. Its
records are still merged (the higher digest wins, as for everyone), so replicas stay equal.
At most ``max_proofs`` are kept (the lowest observer ids), which bounds the memory an army
of equivocating identities can take.

Anti-entropy. :meth:`~ReputationLedger.digests` gives one :class:`protocol.LedgerDigest` per
observer (its highest held seq and a hash of its record digests, sorted, plus its proof). The
peer answers with :meth:`~ReputationLedger.delta_since`: every record of every observer whose
digest differs or is missing. Each side applying the other's delta ends with the same
records, and proofs spread until the digests agree. Deltas carry held records and proofs
only, so two conflicting records that are *both* already superseded on the replicas that
hold them are not compared by anti-entropy (a full :meth:`~ReputationLedger.merge` would);
the observer still cannot hide an equivocation in its current opinions.

Caps. Besides K per observer, the ledger holds at most ``max_observers`` observers and
``max_records`` records in total. Which observers deserve the room is the caller's
knowledge, given as a ``standing`` function (observer id -> :data:`STANDING_UNKNOWN`,
:data:`STANDING_DEPARTED`, :data:`STANDING_MEMBER`, :data:`STANDING_TRUSTED` or
:data:`STANDING_OWN`; without one every observer is a member). A record that needs room
(a new observer, or a new subject of an observer below K) when a cap is full evicts the
record — or, for the observer cap, every record — of the held observer with the lowest
standing (ties: the greatest observer id), but only if that standing is strictly lower than
the newcomer's; otherwise the newcomer is refused and what is held stays. Records of
observers with :data:`STANDING_OWN`, and of observers that signed through this ledger, are
never evicted and always admitted (the total may then exceed ``max_records`` by at most K
per own observer). Refusals and evictions are counted in :attr:`ReputationLedger.counters`.
The equivocation history is kept only for observers with held records, at most
``seq_window`` per observer and ``max_history`` in total. The caller tells the ledger that
standings changed with :meth:`~ReputationLedger.restanding`.

Caps and convergence. For replicas whose state stays within the caps, everything above
holds exactly: merge is a join. Once a cap is hit the replicated state is no longer a
function of the set of records delivered: a replica holds every record of the observers of
higher standing that fits, but among observers of the standing at which the cap cuts it
keeps those that arrived first; an evicted key forgets its winner, so an older record for
it may be admitted later. Two replicas at a cap may therefore hold different subsets of the
lowest-standing observers' records, and different standings (each node judges membership
itself) make them differ too; merge and anti-entropy still never exceed the caps, and
records of observers every replica ranks above the cut converge as before.

Time. ``now`` is an argument (seconds on the mesh clock). :meth:`~ReputationLedger.prune`
drops expired records; a record that expired but was not yet pruned takes no part in trust.

Sequence numbers. :meth:`~ReputationLedger.record_opinion` signs the observer's next seq:
one above the highest this ledger ever accepted from that observer (kept across eviction
and, for observers that signed through this ledger, across expiry), so a node restarted from
its persisted ledger continues its counter instead of equivocating with its former self.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from collections.abc import Callable, Container, Iterable, Mapping
from typing import NamedTuple

from crdt.trust import (
    TRUST_ALPHA,
    TRUST_MAX_ITERATIONS,
    TRUST_TOLERANCE,
    OpinionGraph,
    TrustVector,
    eigentrust,
)
from protocol import (
    LedgerDigest,
    LedgerRecord,
    LocalProtocolError,
    Signer,
    Verifier,
    is_node_id,
    public_key_from_node_id,
    signing_bytes,
)
from protocol import verify as ed25519_verify

DEFAULT_MAX_SUBJECTS = 256
"""K: most records (subjects) kept per observer. A node that rates more peers than this
keeps its K most recent opinions. Memory is about 0.5 KB per record, so 10,000 observers at
the cap hold at most 2.56 M records (~1.3 GB); real observers rate far fewer peers."""

DEFAULT_RECORD_TTL = 7 * 24 * 3600.0
"""Lifetime of an opinion signed by :meth:`ReputationLedger.record_opinion`: 7 days, in
seconds. Longer keeps a quiet peer's standing; shorter forgets misbehaviour sooner."""

MAX_RECORD_TTL = 30 * 24 * 3600.0
"""Furthest expiry a record may claim, relative to the receiver's clock: 30 days, in
seconds. A record that claims to live longer is refused, so every record leaves the ledger
within this time of its last renewal: an identity that stops signing is forgotten, and a
flood of fresh identities costs memory only for as long as it keeps signing. Clocks that
disagree by seconds only matter for a record signed within seconds of the limit, which the
slower clock accepts moments later. Honest records use :data:`DEFAULT_RECORD_TTL`."""

DEFAULT_SEQ_WINDOW = 1024
"""Sequence numbers remembered per observer for equivocation detection. Detection is exact
(independent of delivery order) while an observer has at most this many unexpired records in
flight; beyond it, conflicts with older sequence numbers are caught on a best-effort basis."""

DEFAULT_MAX_PROOFS = 65_536
"""Most equivocation proofs kept (two records each, ~1 KB). Beyond it the proofs of the
highest observer ids are dropped."""

DEFAULT_MAX_OBSERVERS = 16_384
"""Most observers with held records: room for 10,000 members plus churn (a departed
member's opinions stay until they expire)."""

DEFAULT_MAX_RECORDS = 262_144
"""Most records held in total: 10,000 members rating 26 peers each on average, about
130 MB at ~0.5 KB per record (K per observer alone would allow 4 M at the observer cap)."""

DEFAULT_MAX_HISTORY = 262_144
"""Most records remembered for equivocation detection in total (held records count too;
``seq_window`` per observer alone would allow 16 M at the observer cap). Beyond it the
oldest sequence numbers of the observer with the longest history are forgotten first, so
detection of old conflicts becomes best-effort for the busiest observers."""

GRAPH_PATCH_MIN = 4096
"""Most changed keys for which :meth:`ReputationLedger.graph` patches the previous graph
whatever the ledger's size (above it, see :data:`GRAPH_PATCH_SHARE`). A patch costs Python
steps per changed key and vectorised passes over the edges; a fresh build costs Python
steps (and a sort) per edge. Also bounds the memory the change log takes."""

GRAPH_PATCH_SHARE = 4
"""A patch is used while at most one in this many held records changed (or
:data:`GRAPH_PATCH_MIN`, whichever is more); beyond, the graph is built afresh."""

STANDING_UNKNOWN = 0
"""Standing of an observer the caller does not know (not a member): evicted first."""
STANDING_DEPARTED = 1
"""Standing of an observer that left or was declared dead."""
STANDING_MEMBER = 2
"""Standing of a live member (alive or suspect): the default without a ``standing``."""
STANDING_TRUSTED = 3
"""Standing of an observer the caller trusts or has direct experience of."""
STANDING_OWN = 4
"""Standing of the caller itself: its records are never evicted."""

Standing = Callable[[str], int]

DIGEST_BYTES = 32

_UNSIGNED = b"\x00" * 64
_PROOF_TAG = b"meshnode-equivocation-v1"

Rank = tuple[int, bytes, bytes]


def record_digest(record: LedgerRecord) -> bytes:
    """BLAKE2b-256 of the record's signed content (everything but the signature)."""
    return hashlib.blake2b(signing_bytes(record), digest_size=DIGEST_BYTES).digest()


SIGNED_FORM_MEMO = 16_384
"""Most records whose signing bytes, digest and held entry :func:`signed_form` remembers (by
identity) before it forgets them all. A record object received by many ledgers of one
process (the replicas of a simulation share them) is encoded and hashed once, and all of
them hold one entry for it; in a node, a record is encoded once however often gossip brings
the same object back. Each entry keeps its record alive: about 0.5 KB each, 8 MB when
full."""

_signed_forms: dict[int, tuple[LedgerRecord, tuple[bytes, _Held] | None]] = {}


def signed_form(record: LedgerRecord) -> tuple[bytes, bytes] | None:
    """``(signing_bytes(record), record_digest(record))``, or None if the record cannot be
    encoded (a field outside its wire schema).

    Remembered by identity: the entry holds a reference to the record, so its ``id`` cannot
    be reused while the entry lives, and records are immutable, so a remembered answer is
    the one a fresh encoding would give."""
    signed = _signed(record)
    return None if signed is None else (signed[0], signed[1].digest)


def _signed(record: LedgerRecord) -> tuple[bytes, _Held] | None:
    """The signing bytes of ``record`` and its (immutable) :class:`_Held` entry, remembered
    as :func:`signed_form` says; every ledger of the process holds the same entry object."""
    entry = _signed_forms.get(id(record))
    if entry is not None and entry[0] is record:
        return entry[1]
    try:
        data = signing_bytes(record)
    except LocalProtocolError:
        answer: tuple[bytes, _Held] | None = None
    else:
        digest = hashlib.blake2b(data, digest_size=DIGEST_BYTES).digest()
        answer = (data, _Held(record.seq, digest, record))
    if len(_signed_forms) >= SIGNED_FORM_MEMO:
        _signed_forms.clear()
    _signed_forms[id(record)] = (record, answer)
    return answer


@functools.lru_cache(maxsize=65_536)
def _public_key(node_id: str) -> bytes:
    return public_key_from_node_id(node_id)


class _Held(NamedTuple):
    """A verified record with its digest (computed once)."""

    seq: int
    digest: bytes
    record: LedgerRecord

    @property
    def rank(self) -> Rank:
        return (self.seq, self.digest, self.record.signature)


class _Proof(NamedTuple):
    """Two verified records of one observer under one seq; ``low.digest < high.digest``."""

    low: _Held
    high: _Held

    @property
    def seq(self) -> int:
        return self.low.seq

    def join(self, other: _Proof) -> _Proof:
        """The canonical proof of the two: lowest seq; at equal seq the digest extremes."""
        if other.seq != self.seq:
            return self if self.seq < other.seq else other
        return self.extend(other.low).extend(other.high)

    def extend(self, held: _Held) -> _Proof:
        """Widen the proof with another record under the same seq (no-op otherwise)."""
        if held.seq != self.seq:
            return self
        return _Proof(
            min(self.low, held, key=_digest_order), max(self.high, held, key=_digest_order)
        )


def _digest_order(held: _Held) -> tuple[bytes, bytes]:
    return (held.digest, held.record.signature)


def _proof_of(a: _Held, b: _Held) -> _Proof:
    return _Proof(a, b) if _digest_order(a) < _digest_order(b) else _Proof(b, a)


def _check_score(score: object) -> bool:
    if type(score) is float:  # the usual case: NaN and the infinities fail the comparison
        return 0.0 <= score <= 1.0
    return (
        isinstance(score, int | float)
        and not isinstance(score, bool)
        and math.isfinite(score)
        and 0.0 <= score <= 1.0
    )


class ReputationLedger:
    """Signed opinions, merged deterministically. See the module docstring.

    ``verifier`` checks signatures (``protocol.verify`` by default; simulations inject
    ``protocol.fast_verify``). ``max_subjects`` is K, the most records kept per observer;
    ``seq_window`` and ``max_proofs`` bound equivocation bookkeeping; ``max_observers``
    and ``max_records`` cap the held records, evicting by ``standing`` (see the module
    docstring).
    """

    __slots__ = (
        "_count",
        "_epoch",
        "_graph",
        "_graph_version",
        "_high_water",
        "_history",
        "_max_history",
        "_max_observers",
        "_max_proofs",
        "_max_records",
        "_max_subjects",
        "_own",
        "_proofs",
        "_seen",
        "_seq_window",
        "_standing",
        "_subjects",
        "_touched",
        "_verifier",
        "_version",
        "_victim_cache",
        "counters",
    )

    def __init__(
        self,
        *,
        verifier: Verifier = ed25519_verify,
        max_subjects: int = DEFAULT_MAX_SUBJECTS,
        seq_window: int = DEFAULT_SEQ_WINDOW,
        max_proofs: int = DEFAULT_MAX_PROOFS,
        max_observers: int = DEFAULT_MAX_OBSERVERS,
        max_records: int = DEFAULT_MAX_RECORDS,
        standing: Standing | None = None,
        max_history: int = DEFAULT_MAX_HISTORY,
    ) -> None:
        for name, value in (
            ("max_subjects", max_subjects),
            ("seq_window", seq_window),
            ("max_proofs", max_proofs),
            ("max_observers", max_observers),
            ("max_records", max_records),
            ("max_history", max_history),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self._verifier = verifier
        self._max_subjects = max_subjects
        self._seq_window = seq_window
        self._max_proofs = max_proofs
        self._max_observers = max_observers
        self._max_records = max_records
        self._max_history = max_history
        self._history = 0  # entries in _seen
        self._standing = standing
        self._epoch = 0
        self._victim_cache: tuple[int, str | None] | None = None
        self.counters: dict[str, int] = {
            "refused_observer_cap": 0,
            "refused_record_cap": 0,
            "evicted_records": 0,
        }
        """Records refused because a cap was full and no lower-standing observer could
        make room, and records evicted to make room for higher-standing observers."""
        self._subjects: dict[str, dict[str, _Held]] = {}
        self._seen: dict[str, dict[int, _Held]] = {}
        self._proofs: dict[str, _Proof] = {}
        self._high_water: dict[str, int] = {}
        self._own: set[str] = set()
        self._count = 0
        self._version = 0
        self._graph: OpinionGraph | None = None
        self._graph_version = -1
        self._touched: dict[tuple[str, str], tuple[float, float] | None] | None = {}
        """Keys whose held record changed since :attr:`_graph` was made, with the edge each
        gives now: ``(score, expires_at)``, or None when it holds no record (None: too many
        to patch, rebuild it)."""

    # ------------------------------------------------------------------ properties

    @property
    def max_subjects(self) -> int:
        return self._max_subjects

    @property
    def max_observers(self) -> int:
        return self._max_observers

    @property
    def max_records(self) -> int:
        return self._max_records

    @property
    def version(self) -> int:
        """A counter that changes whenever the replicated state changes (for caches)."""
        return self._version

    def restanding(self) -> None:
        """The ``standing`` function now answers differently for some observer (membership
        or trust changed): forget the cached eviction candidate."""
        self._epoch += 1

    def __len__(self) -> int:
        return self._count

    def __repr__(self) -> str:
        return (
            f"<ReputationLedger observers={len(self._subjects)} records={self._count} "
            f"equivocators={len(self._proofs)}>"
        )

    def __eq__(self, other: object) -> bool:
        """Equal replicated state: the same records (by content) and the same proofs."""
        if not isinstance(other, ReputationLedger):
            return NotImplemented
        return self._fingerprint() == other._fingerprint()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def _fingerprint(self) -> tuple[dict[str, dict[str, bytes]], dict[str, tuple[bytes, bytes]]]:
        records = {
            o: {s: held.digest for s, held in subjects.items()}
            for o, subjects in self._subjects.items()
        }
        proofs = {o: (p.low.digest, p.high.digest) for o, p in self._proofs.items()}
        return records, proofs

    def copy(self) -> ReputationLedger:
        """An independent replica with the same state and settings."""
        twin = ReputationLedger(
            verifier=self._verifier,
            max_subjects=self._max_subjects,
            seq_window=self._seq_window,
            max_proofs=self._max_proofs,
            max_observers=self._max_observers,
            max_records=self._max_records,
            standing=self._standing,
            max_history=self._max_history,
        )
        twin._subjects = {o: dict(s) for o, s in self._subjects.items()}
        twin._seen = {o: dict(s) for o, s in self._seen.items()}
        twin._history = self._history
        twin._proofs = dict(self._proofs)
        twin._high_water = dict(self._high_water)
        twin._own = set(self._own)
        twin._count = self._count
        return twin

    # ------------------------------------------------------------------ reading

    def records(self) -> list[LedgerRecord]:
        """Every held record, sorted by (observer, subject)."""
        return [
            subjects[s].record
            for o, subjects in sorted(self._subjects.items())
            for s in sorted(subjects)
        ]

    def get(self, observer: str, subject: str) -> LedgerRecord | None:
        held = self._subjects.get(observer, {}).get(subject)
        return held.record if held is not None else None

    def split_copies(
        self, messages: Iterable[object], observers: Container[str]
    ) -> tuple[int, list[object] | None]:
        """``(n, rest)``: how many of ``messages`` are copies of held records, and the
        other messages in order; ``(0, None)`` when there are none, or when taking them out
        could change what applying the packet does.

        A copy is equal to (or that very object) the record held for its key, by an
        observer in ``observers``: :meth:`apply` refuses it at once, changing nothing. It
        may be taken out of a packet wherever it stands unless another record of the packet
        could displace its held record before it comes; that takes a cap, so copies are
        taken out only while the packet's other records fit under every cap (records,
        observers, and records per observer) without evicting anything. The mesh asks
        this for every packet before anything else is done with it."""
        subjects_of = self._subjects
        count = 0
        rest: list[object] = []
        fresh: list[str] = []  # observers of the records that are not copies
        for message in messages:
            if type(message) is LedgerRecord:
                observer = message.observer
                subjects = subjects_of.get(observer)
                if subjects is not None and observer in observers:
                    held = subjects.get(message.subject)
                    if held is not None and (held.record is message or held.record == message):
                        count += 1
                        continue
                fresh.append(observer)
            elif isinstance(message, LedgerRecord):
                fresh.append(message.observer)
            rest.append(message)
        if not count:
            return 0, None
        if fresh:
            k = len(fresh)
            if self._count + k > self._max_records or len(subjects_of) + k > self._max_observers:
                return 0, None
            limit = self._max_subjects - k
            for observer in fresh:
                subjects = subjects_of.get(observer)
                if subjects is not None and len(subjects) > limit:
                    return 0, None
        return count, rest

    def opinions_of(self, observer: str) -> dict[str, float]:
        """``{subject: score}`` of every record ``observer`` holds here, sorted by subject:
        the same as filtering :meth:`records` by observer, in ``O(K log K)`` for the
        observer's K records instead of a pass over the whole ledger."""
        subjects = self._subjects.get(observer)
        if not subjects:
            return {}
        return {subject: subjects[subject].record.score for subject in sorted(subjects)}

    def observers(self) -> list[str]:
        """Observers with at least one held record, sorted."""
        return sorted(self._subjects)

    def equivocators(self) -> list[str]:
        """Observers with proof of equivocation, sorted."""
        return sorted(self._proofs)

    def equivocations(self) -> list[tuple[LedgerRecord, LedgerRecord]]:
        """The proof pairs ``(lower digest, higher digest)``, sorted by observer.

        Each pair is two records signed by one observer under one seq; any replica can
        re-check it with :meth:`apply_equivocation`.
        """
        return [(p.low.record, p.high.record) for _, p in sorted(self._proofs.items())]

    def next_seq(self, observer: str) -> int:
        """The seq :meth:`record_opinion` will sign for ``observer`` next."""
        return self._high_water.get(observer, 0) + 1

    # ------------------------------------------------------------------ writing

    def record_opinion(
        self,
        identity: Signer,
        subject_id: str,
        score: float,
        outcomes: int,
        now: float,
        ttl: float = DEFAULT_RECORD_TTL,
    ) -> LedgerRecord:
        """Sign ``identity``'s opinion of ``subject_id`` at its next seq, apply it, return it.

        Raises ``LocalProtocolError`` for a self-rating, a score outside [0, 1], a negative
        outcome count, a ``ttl`` not in (0, :data:`MAX_RECORD_TTL`], or a signer the ledger's
        verifier rejects.
        """
        observer = identity.node_id
        if subject_id == observer:
            raise LocalProtocolError("a node cannot rate itself")
        if not is_node_id(subject_id):
            raise LocalProtocolError(f"not a node id: {subject_id!r}")
        if not _check_score(score):
            raise LocalProtocolError(f"score must be a finite number in [0, 1], got {score!r}")
        if isinstance(outcomes, bool) or not isinstance(outcomes, int) or outcomes < 0:
            raise LocalProtocolError(f"outcomes must be a non-negative integer, got {outcomes!r}")
        if not (isinstance(ttl, int | float) and math.isfinite(ttl) and 0 < ttl <= MAX_RECORD_TTL):
            raise LocalProtocolError(
                f"ttl must be a positive number of seconds up to {MAX_RECORD_TTL:.0f}, got {ttl!r}"
            )
        unsigned = LedgerRecord(
            observer=observer,
            subject=subject_id,
            score=float(score),
            outcomes=outcomes,
            seq=self.next_seq(observer),
            expires_at=float(now) + float(ttl),
            signature=_UNSIGNED,
        )
        data = signing_bytes(unsigned)  # raises LocalProtocolError for out-of-range fields
        record = dataclasses.replace(unsigned, signature=identity.sign(data))
        if not self._verifier(_public_key(observer), data, record.signature):
            raise LocalProtocolError("the signer's signature does not pass this ledger's verifier")
        self._own.add(observer)
        digest = hashlib.blake2b(data, digest_size=DIGEST_BYTES).digest()
        self._insert(_Held(record.seq, digest, record))
        return record

    def apply(self, record: LedgerRecord, now: float) -> bool:
        """Add one received record; True if the replicated state changed.

        Invalid records (see the module docstring) and records that lose to what is held
        return False and change nothing.
        """
        return self._receive(record, now, admit=True)

    def apply_many(self, records: Iterable[LedgerRecord], now: float) -> int:
        """Apply a batch (an anti-entropy delta); return how many records changed the state.

        Two records in the batch from one observer under one seq are first offered to
        :meth:`apply_equivocation` — that is how a proof travels — so the pair proves
        equivocation even if the records have expired.
        """
        batch = [r for r in records if isinstance(r, LedgerRecord)]
        groups: dict[tuple[str, int], list[LedgerRecord]] = {}
        for record in batch:
            groups.setdefault((record.observer, record.seq), []).append(record)
        changed = 0
        for key in sorted(k for k, group in groups.items() if len(group) > 1):
            group = groups[key]
            for i in range(1, len(group)):
                if group[i] != group[0] and self.apply_equivocation(group[0], group[i]):
                    changed += 1
        for record in batch:
            if self.apply(record, now):
                changed += 1
        return changed

    def apply_equivocation(self, first: LedgerRecord, second: LedgerRecord) -> bool:
        """Check a proof of equivocation and keep it; True if the state changed.

        Valid when both records are well formed, come from one observer, share one seq,
        differ in content and both verify. Expiry does not matter: the proof stands forever.
        """
        if not (isinstance(first, LedgerRecord) and isinstance(second, LedgerRecord)):
            return False
        if first.observer != second.observer or first.seq != second.seq:
            return False
        pair: list[_Held] = []
        for record in (first, second):
            try:
                data = signing_bytes(record)
            except LocalProtocolError:
                return False
            if not self._verifier(_public_key(record.observer), data, record.signature):
                return False
            digest = hashlib.blake2b(data, digest_size=DIGEST_BYTES).digest()
            pair.append(_Held(record.seq, digest, record))
        if pair[0].digest == pair[1].digest:
            return False
        if self._join_proof(_proof_of(pair[0], pair[1])):
            self._version += 1
            return True
        return False

    def merge(self, other: ReputationLedger, now: float) -> bool:
        """Fold another replica into this one; True if this ledger changed.

        Both sides are taken as of ``now``: expired records on either side take no part.
        ``other``'s held records and proofs are applied, re-verified with this ledger's
        verifier; the older records it remembers for equivocation detection are checked
        against ours for conflicts but never become held records here (they lost on
        ``other``). ``other`` is not modified.
        """
        changed = self.prune(now) > 0
        for _, proof in sorted(other._proofs.items()):
            changed |= self.apply_equivocation(proof.low.record, proof.high.record)
        for _, subjects in sorted(other._subjects.items()):
            for _, held in sorted(subjects.items()):
                changed |= self._receive(held.record, now, admit=True)
        for _, by_seq in sorted(other._seen.items()):
            for _, held in sorted(by_seq.items()):
                changed |= self._receive(held.record, now, admit=False)
        return changed

    def prune(self, now: float) -> int:
        """Drop records with ``expires_at <= now``; return how many held records went."""
        dropped = 0
        for observer in list(self._subjects):
            subjects = self._subjects[observer]
            stale = [s for s, held in subjects.items() if held.record.expires_at <= now]
            for subject in stale:
                del subjects[subject]
                self._touch(observer, subject)
            dropped += len(stale)
            if not subjects:
                del self._subjects[observer]
                self._observer_gone(observer)
        for observer in list(self._seen):
            by_seq = self._seen[observer]
            for seq in [q for q, held in by_seq.items() if held.record.expires_at <= now]:
                del by_seq[seq]
                self._history -= 1
            if not by_seq:
                del self._seen[observer]
        for observer in list(self._high_water):
            if (
                observer not in self._own
                and observer not in self._subjects
                and observer not in self._seen
            ):
                del self._high_water[observer]
        if dropped:
            self._count -= dropped
            self._version += 1
        return dropped

    # ------------------------------------------------------------------ anti-entropy

    def digests(self) -> list[LedgerDigest]:
        """One digest per observer with records or a proof, sorted by observer."""
        out = []
        for observer in sorted(self._subjects.keys() | self._proofs.keys()):
            held = list(self._subjects.get(observer, {}).values())
            proof = self._proofs.get(observer)
            h = hashlib.blake2b(digest_size=DIGEST_BYTES)
            for digest in sorted(x.digest for x in held):
                h.update(digest)
            if proof is not None:
                h.update(_PROOF_TAG + proof.low.digest + proof.high.digest)
            max_seq = max((x.seq for x in held), default=proof.seq if proof else 0)
            out.append(LedgerDigest(observer=observer, max_seq=max_seq, digest=h.digest()))
        return out

    def delta_since(
        self, digests: Iterable[LedgerDigest], limit: int | None = None
    ) -> list[LedgerRecord]:
        """What a peer that sent ``digests`` lacks: every record (and both records of the
        proof) of each observer whose digest differs from or is missing in ``digests``.

        Sorted by observer, then subject, proof records last; at most ``limit`` records
        (whole observers only, unless one observer alone is over the limit).
        """
        theirs: Mapping[str, bytes] = {d.observer: d.digest for d in digests}
        out: list[LedgerRecord] = []
        for mine in self.digests():
            if theirs.get(mine.observer) == mine.digest:
                continue
            chunk = [
                held.record for _, held in sorted(self._subjects.get(mine.observer, {}).items())
            ]
            proof = self._proofs.get(mine.observer)
            if proof is not None:
                chunk.extend(r for r in (proof.low.record, proof.high.record) if r not in chunk)
            if limit is not None and out and len(out) + len(chunk) > limit:
                break
            out.extend(chunk)
        return out if limit is None else out[:limit]

    # ------------------------------------------------------------------ trust

    def graph(self) -> OpinionGraph:
        """The opinion graph of the current state (cached until the state changes).

        After a change the previous graph is patched with the keys whose held record
        changed since (:meth:`crdt.trust.OpinionGraph.patch`, the same arrays as a fresh
        build); it is built afresh when there is none, or when more keys changed than
        :data:`GRAPH_PATCH_MIN` and a :data:`GRAPH_PATCH_SHARE`-th of the records."""
        if self._graph is not None and self._graph_version == self._version:
            return self._graph
        touched = self._touched
        if self._graph is None or touched is None:
            edges = [
                (observer, subject, held.record.score, held.record.expires_at)
                for observer, subjects in sorted(self._subjects.items())
                for subject, held in sorted(subjects.items())
            ]
            self._graph = OpinionGraph.build(edges, excluded=self._proofs.keys())
        else:  # the change log holds each key's edge as it is now
            self._graph = self._graph.patch(touched, self._proofs.keys())
        self._touched = {}
        self._graph_version = self._version
        return self._graph

    def trust_vector(
        self,
        now: float,
        pretrusted: Iterable[str],
        *,
        alpha: float = TRUST_ALPHA,
        tolerance: float = TRUST_TOLERANCE,
        max_iterations: int = TRUST_MAX_ITERATIONS,
    ) -> TrustVector:
        """EigenTrust at ``now`` from ``pretrusted`` (see :mod:`crdt.trust`), with diagnostics."""
        return eigentrust(
            self.graph(),
            now,
            pretrusted,
            alpha=alpha,
            tolerance=tolerance,
            max_iterations=max_iterations,
        )

    def trust(
        self,
        now: float,
        pretrusted: Iterable[str],
        *,
        alpha: float = TRUST_ALPHA,
        tolerance: float = TRUST_TOLERANCE,
        max_iterations: int = TRUST_MAX_ITERATIONS,
    ) -> dict[str, float]:
        """``{node_id: global trust}``: a distribution (sums to 1) over every node with a
        live record and every pre-trusted id. Deterministic for a state, ``now`` and set.

        ``pretrusted`` is the caller's own id plus the peers it has direct experience with —
        never every known id. Equivocators get 0 and their opinions weigh nothing.
        """
        return self.trust_vector(
            now, pretrusted, alpha=alpha, tolerance=tolerance, max_iterations=max_iterations
        ).as_dict()

    def trust_scores(
        self,
        now: float,
        pretrusted: Iterable[str],
        *,
        alpha: float = TRUST_ALPHA,
    ) -> dict[str, float]:
        """Trust on a [0, 1] scale for routing: 0.5 is the average trusted node, 0 no trust.

        See :func:`crdt.trust.relative_scores`. Only peers that someone rated (the subject of
        a live record whose observer is not an equivocator) are in the result: a peer that
        only rates others, and so appears in the graph with a trust of 0, is as unknown as
        a peer the ledger never heard of, and the router gives both its prior. A peer rated
        badly, or rated only by identities nobody trusts (a ring of fresh ids), stays in the
        result with its low score. The router blends this with its own direct experience of
        a peer (an :func:`crdt.trust.elo_update` score starting at
        :data:`crdt.trust.INITIAL_TRUST`); a peer absent from the result has no global trust.
        """
        graph = self.graph()
        rated = graph.prepared(now).rated
        index = graph.index
        scores = self.trust_vector(now, pretrusted, alpha=alpha).scores()
        return {
            node: score
            for node, score in scores.items()
            if (i := index.get(node)) is not None and rated[i]
        }

    # ------------------------------------------------------------------ internals

    def _receive(self, record: LedgerRecord, now: float, *, admit: bool) -> bool:
        """Validate, deduplicate, verify, then insert (``admit=False``: history only)."""
        if not isinstance(record, LedgerRecord):
            return False
        observer = record.observer
        subjects = self._subjects.get(observer)
        held = None if subjects is None else subjects.get(record.subject)
        if held is not None and (held.record is record or held.record == record):
            return False  # exact duplicate of a held record: no hashing, no signature check
        by_seq = self._seen.get(observer)
        known = None if by_seq is None else by_seq.get(record.seq)
        seen_before = known is not None and known.record == record
        if seen_before and (not admit or (held is not None and held.seq > record.seq)):
            return False  # seen before, and a newer record holds its key
        signed = self._valid_bytes(record, now)
        if signed is None:
            return False
        data, entry = signed
        free = False
        if admit:
            # Room without evicting anyone (the common case) stays free until _insert: the
            # signature check in between changes nothing here.
            if subjects is not None and (
                record.subject in subjects or len(subjects) >= self._max_subjects
            ):
                free = True
            else:
                free = self._count < self._max_records and (
                    subjects is not None or len(self._subjects) < self._max_observers
                )
            if not free and not self._room_for(observer, record.subject, evict=False):
                return False  # a cap is full: refused before paying for the signature check
        elif subjects is None:
            return False  # history is kept only for observers with held records
        if not self._verifier(_public_key(observer), data, record.signature):
            return False
        return self._insert(entry, admit=admit, room=free)

    @staticmethod
    def _valid_bytes(record: LedgerRecord, now: float) -> tuple[bytes, _Held] | None:
        """The signing bytes and the entry of a record that passes every rule but the
        signature."""
        if record.observer == record.subject or not _check_score(record.score):
            return None
        expires_at = record.expires_at
        if type(expires_at) is not float and not isinstance(expires_at, int | float):
            return None
        if not now < expires_at <= now + MAX_RECORD_TTL:
            return None
        return _signed(record)

    def _insert(self, held: _Held, *, admit: bool = True, room: bool = False) -> bool:
        """Add a verified record: room under the caps (``room``: known to be free without
        evicting anyone), equivocation check, history, then (if ``admit``) the per-key
        register."""
        observer = held.record.observer
        changed = False
        if admit and not room and not self._room_for(observer, held.record.subject, evict=True):
            return False
        by_seq = self._seen.get(observer)
        if by_seq is None:
            by_seq = self._seen[observer] = {}
        known = by_seq.get(held.seq)
        if known is not None and known.digest != held.digest:
            changed |= self._join_proof(_proof_of(known, held))
        proof = self._proofs.get(observer)
        if proof is not None and proof.seq == held.seq:
            changed |= self._join_proof(proof.extend(held))
        if known is None or held.rank > known.rank:
            by_seq[held.seq] = held
            if known is None:
                self._history += 1
                if len(by_seq) > self._seq_window:
                    del by_seq[min(by_seq)]
                    self._history -= 1
                if self._history > self._max_history:
                    self._trim_history(observer)
        if held.seq > self._high_water.get(observer, -1):
            self._high_water[observer] = held.seq
        if admit:
            changed |= self._put(held)
        if changed:
            self._version += 1
        return changed

    def _put(self, held: _Held) -> bool:
        """The per-key register with top-K eviction; True if the held records changed."""
        record = held.record
        observer, subject = record.observer, record.subject
        subjects = self._subjects.get(observer)
        if subjects is None:
            subjects = self._subjects[observer] = {}
            self._observer_added(observer)
        current = subjects.get(subject)
        if current is not None and (  # rank order; seq first, without building the tuples
            current.seq > held.seq or (current.seq == held.seq and current.rank >= held.rank)
        ):
            return False
        subjects[subject] = held
        touched = self._touched
        if touched is not None:  # _touch, inlined: this runs for every record applied
            touched[(observer, subject)] = (record.score, record.expires_at)
            if len(touched) > GRAPH_PATCH_MIN:
                self._touch_overflow()
        if current is not None:
            return True
        self._count += 1
        if len(subjects) > self._max_subjects:
            victim = min(subjects, key=lambda s: subjects[s].rank)
            del subjects[victim]
            self._touch(observer, victim)
            self._count -= 1
            return victim != subject
        return True

    def _touch(self, observer: str, subject: str) -> None:
        """Note that the held record of a key went, for the next :meth:`graph` (every
        caller has just removed it; :meth:`_put` notes the records it holds)."""
        touched = self._touched
        if touched is not None:
            touched[(observer, subject)] = None
            if len(touched) > GRAPH_PATCH_MIN:
                self._touch_overflow()

    def _touch_overflow(self) -> None:
        """Past :data:`GRAPH_PATCH_MIN` changed keys: give up the change log once they are
        also more than a :data:`GRAPH_PATCH_SHARE`-th of the records (a fresh build is
        cheaper than a patch this large)."""
        touched = self._touched
        if touched is not None and len(touched) > self._count // GRAPH_PATCH_SHARE:
            self._touched = None

    def _standing_of(self, observer: str) -> int:
        if observer in self._own:
            return STANDING_OWN
        return STANDING_MEMBER if self._standing is None else self._standing(observer)

    def _room_for(self, observer: str, subject: str, *, evict: bool) -> bool:
        """Whether a new record of ``observer`` about ``subject`` may be held under the
        caps, counting a refusal; with ``evict``, make the room (evicting lower-standing
        observers' records). Without ``evict`` nothing else changes."""
        subjects = self._subjects.get(observer)
        if subjects is not None and (subject in subjects or len(subjects) >= self._max_subjects):
            return True  # replaces a key or evicts within the observer: the count stays
        tier: int | None = None
        while True:
            over_observers = subjects is None and len(self._subjects) >= self._max_observers
            over_records = self._count >= self._max_records
            if not (over_observers or over_records):
                return True
            if tier is None:
                tier = self._standing_of(observer)
            victim = self._victim()
            if victim is None or self._standing_of(victim) >= tier:
                if tier >= STANDING_OWN:
                    return True  # our own records are always admitted
                key = "refused_observer_cap" if over_observers else "refused_record_cap"
                self.counters[key] += 1
                return False
            if not evict:
                return True
            self._evict(victim, whole=over_observers)
            subjects = self._subjects.get(observer)

    def _victim_key(self, observer: str) -> tuple[int, str] | None:
        """Eviction order: the greatest key goes first (lowest standing, then greatest
        id); None for observers that are never evicted."""
        tier = self._standing_of(observer)
        return None if tier >= STANDING_OWN else (-tier, observer)

    def _victim(self) -> str | None:
        """The held observer to evict first (see :meth:`_victim_key`). Found by a scan
        once per standing epoch and kept up to date as observers come and go."""
        cached = self._victim_cache
        if cached is not None and cached[0] == self._epoch:
            return cached[1]
        victim: str | None = None
        best: tuple[int, str] | None = None
        for observer in self._subjects:
            key = self._victim_key(observer)
            if key is not None and (best is None or key > best):
                best, victim = key, observer
        self._victim_cache = (self._epoch, victim)
        return victim

    def _observer_added(self, observer: str) -> None:
        """Keep the cached eviction candidate right when a new observer is held."""
        cached = self._victim_cache
        if cached is None or cached[0] != self._epoch:
            return
        key = self._victim_key(observer)
        if key is None:
            return
        current = cached[1]
        if current is None or key > (-self._standing_of(current), current):
            self._victim_cache = (self._epoch, observer)

    def _observer_gone(self, observer: str) -> None:
        """Forget the cached eviction candidate if it was ``observer``."""
        cached = self._victim_cache
        if cached is not None and cached[1] == observer:
            self._victim_cache = None

    def _evict(self, observer: str, *, whole: bool) -> None:
        """Drop ``observer``'s lowest-ranked record (``whole``: all of its records); its
        history goes with its last record."""
        subjects = self._subjects[observer]
        gone = list(subjects) if whole else [min(subjects, key=lambda s: subjects[s].rank)]
        for subject in gone:
            del subjects[subject]
            self._touch(observer, subject)
        self._count -= len(gone)
        self.counters["evicted_records"] += len(gone)
        if not subjects:
            del self._subjects[observer]
            self._history -= len(self._seen.pop(observer, {}))
            self._high_water.pop(observer, None)
            self._observer_gone(observer)
        self._version += 1

    def _trim_history(self, observer: str) -> None:
        """Forget one remembered record: the lowest seq of ``observer`` if its history is
        over its fair share, else of the observer with the longest history."""
        seen = self._seen
        share = max(1, self._max_history // len(seen))
        if len(seen[observer]) <= share:
            observer = max(seen, key=lambda o: (len(seen[o]), o))
        by_seq = seen[observer]
        del by_seq[min(by_seq)]
        self._history -= 1
        if not by_seq:
            del seen[observer]

    def _join_proof(self, proof: _Proof) -> bool:
        """Fold a verified proof into the observer's canonical one; True if it changed."""
        observer = proof.low.record.observer
        known = self._seen.get(observer, {}).get(proof.seq)
        if known is not None:
            proof = proof.extend(known)
        current = self._proofs.get(observer)
        joined = proof if current is None else current.join(proof)
        if joined == current:
            return False
        self._proofs[observer] = joined
        if len(self._proofs) > self._max_proofs:
            dropped = max(self._proofs)
            del self._proofs[dropped]
            return dropped != observer
        return True
