"""The trust view of one node and the batching of its own opinions, sans I/O.

Theory of operation
-------------------
A node routes by a trust view per peer in [0, 1]: mesh-wide EigenTrust (computed over the
replicated ledger by :meth:`crdt.ReputationLedger.trust_scores`) personalised to a
*pre-trusted set*, blended with the node's own direct experience.

* **Pre-trusted set** (:func:`pretrusted_set`): this node and the peers it has good direct
  experience of (its own opinion at least :data:`~crdt.INITIAL_TRUST`). Never a uniform
  vector over every known id (Sybils would share it), and never a peer it has seen fail,
  whose opinions would otherwise be trusted by construction.
* **Blend** (:func:`blend`): ``global + 2w × (direct − ½)``, clamped to [0, 1], with
  ``w`` = ``NodeConfig.direct_trust_weight``, for every peer we have rated (our own
  experience moves the mesh's view by as far as it moved us from the prior); the global
  score alone for the others; ourselves left out.
* **Refresh of the global part** (:func:`global_is_stale`): recomputed at once when the
  pre-trusted set changed or any record but our own changed the ledger; while only our
  own opinions change it, at most every :data:`TRUST_REFRESH_S`; and every
  :data:`TRUST_MAX_AGE_S` regardless, as records expire with time. Direct experience is
  always current in the view.

Opinion batching. Every scored outcome is folded into this node's opinion of the peer at
once (by the ELO rule, :func:`crdt.elo_update`), so routing sees it immediately. With
nothing else of ours waiting on that peer it is signed at once; while other delegations of
ours to the same peer are running (``busy``), outcomes stay *unsigned* and are signed
together as one record when the last of them ends, or :data:`OPINION_FLUSH_S` after the
first, whichever comes first. Signing goes through :meth:`MeshCore.publish_opinion`, which
emits a durable ``PersistRecords`` before the record is queued for gossip.

The durable-pending rule: when the shell reports that the durable write of own records
failed (:meth:`TrustPolicy.durable_failed`), no further opinion is signed until it reports
them written (:meth:`TrustPolicy.durable_written`); outcomes stay folded into the unsigned
opinions meanwhile (routing uses them). A restarted node must never sign a second record
with a sequence number it has already used; holding back keeps the damage of a crash to at
most that one unwritten record.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping

from crdt import INITIAL_TRUST, elo_update
from meshnode.core.member import MemberState
from meshnode.core.mesh import MeshCore
from protocol import LedgerRecord

__all__ = [
    "MAX_CAPABILITY_OPINIONS",
    "OPINION_FLUSH_S",
    "TRUST_MAX_AGE_S",
    "TRUST_REFRESH_S",
    "GlobalTrust",
    "MemberAges",
    "TrustPolicy",
    "blend",
    "global_is_stale",
    "pretrusted_set",
]

OPINION_FLUSH_S = 0.25
"""Longest a scored outcome waits for the signed ledger record that carries it, while other
delegations of ours to the same peer are still running, seconds. Lower: fresher replicas
elsewhere, but up to a signature, a durable write and a gossiped record (verified by every
node) per task; higher: the reverse."""

TRUST_REFRESH_S = 0.5
"""Longest the mesh-wide (EigenTrust) part of the trust view is reused while only this
node's own opinions change the ledger, seconds. Any other change of the ledger, and any
change of the pre-trusted set, recomputes at once."""

MAX_CAPABILITY_OPINIONS = 65_536
"""Most (peer, capability) opinions a node keeps of its own experience, least recently
updated forgotten first (about 200 bytes each: some 13 MB at the cap). A requester that
deals with 10,000 providers of a few capabilities each stays below it; beyond it the
oldest fall back to the per-peer view."""

TRUST_MAX_AGE_S = 10.0
"""Longest any trust computation is reused, even with an unchanged ledger, seconds (records
expire with time)."""


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class GlobalTrust:
    """One EigenTrust computation: the ledger version (and how many of its changes were
    our own) and the instant it was made at, from which pre-trusted set, and the routing
    scores it gave."""

    version: int
    own_writes: int
    computed_at: float
    pretrusted: frozenset[str]
    scores: Mapping[str, float]


def pretrusted_set(node_id: str, direct: Mapping[str, float]) -> frozenset[str]:
    """This node and every peer whose direct opinion is at least ``INITIAL_TRUST``."""
    return frozenset({node_id, *(peer for peer, score in direct.items() if score >= INITIAL_TRUST)})


def blend(
    node_id: str,
    direct: Mapping[str, float],
    global_scores: Mapping[str, float],
    weight: float,
) -> dict[str, float]:
    """``global + 2 × weight × (direct − prior)``, clamped to [0, 1], for every rated peer
    the global computation knows; the direct score alone for a rated peer it does not
    know; the global score for the rest; ``node_id`` itself is left out.

    Direct experience moves the mesh's view of a peer by how far it moved us from the
    prior (:data:`~crdt.INITIAL_TRUST`), so a peer we saw fail ends *below* its global
    score, and a peer nobody rates above the prior (global 0) that failed us ends at 0:
    below every peer with any trust we have no bad experience of. (A weighted average
    ``w × direct + (1 − w) × global`` kept such a peer at ``0.5 × 0.45 ≈ 0.23``, above
    honest peers known through one mild opinion: the simulated economy ranked an
    always-failing provider first that way.) With ``weight`` 0.5 a peer of average global
    trust (0.5) gets exactly our direct score."""
    view = dict(global_scores)
    scale = 2.0 * weight
    for peer, score in direct.items():
        known = global_scores.get(peer)
        if known is None:
            view[peer] = score
        else:
            view[peer] = min(1.0, max(0.0, known + scale * (score - INITIAL_TRUST)))
    view.pop(node_id, None)
    return view


def global_is_stale(
    known: GlobalTrust | None,
    pretrusted: frozenset[str],
    version: int,
    own_writes: int,
    now: float,
) -> bool:
    """Whether the global part must be recomputed (see the module docstring)."""
    if known is None or known.pretrusted != pretrusted:
        return True
    age = now - known.computed_at
    if age >= TRUST_MAX_AGE_S:
        return True
    if version - known.version != own_writes - known.own_writes:
        return True  # someone else's record changed the ledger
    return known.version != version and age >= TRUST_REFRESH_S


class TrustPolicy:
    """Direct experience, opinion batching and the trust view of one node."""

    def __init__(self, mesh: MeshCore, weight: float) -> None:
        self._mesh = mesh
        self.weight = weight
        self._global: GlobalTrust | None = None
        self._direct_cache: tuple[int, dict[str, float]] | None = None
        self._view_cache: tuple[GlobalTrust, tuple[int, int], dict[str, float]] | None = None
        self._unsigned: dict[str, tuple[float, int]] = {}
        """Own opinions folded since the last signed record: peer -> (score, outcomes)."""
        self._unsigned_stamp = 0
        self._own_writes = 0
        """Ledger version changes caused by this node's own records."""
        self.flush_at: float | None = None
        """When the unsigned opinions are signed at the latest (None: nothing waits)."""
        self._durable_pending: dict[tuple[str, str], LedgerRecord] = {}
        self._by_capability: dict[str, dict[str, tuple[float, int]]] = {}
        """Our own experience per capability, per peer: (score, outcomes). Local only: the
        ledger gossips one opinion per peer."""
        self._capability_order: OrderedDict[tuple[str, str], None] = OrderedDict()
        """(peer, capability) pairs, least recently updated first (for the cap)."""

    @property
    def node_id(self) -> str:
        return self._mesh.node_id

    @property
    def unsigned(self) -> dict[str, tuple[float, int]]:
        """Peers with outcomes not yet signed: peer -> (score, outcomes)."""
        return dict(self._unsigned)

    @property
    def durable_pending(self) -> tuple[LedgerRecord, ...]:
        """Own records whose durable write failed and is not yet retried successfully."""
        return tuple(self._durable_pending.values())

    # ------------------------------------------------------------------ opinions

    def record_outcome(
        self, subject: str, quality: float, now: float, *, busy: bool
    ) -> LedgerRecord | None:
        """Fold one scored outcome into our opinion of ``subject``; sign it at once unless
        ``busy`` (other delegations of ours to ``subject`` are running), other outcomes of
        ``subject`` are unsigned, or an own record is not durable yet. Returns the record
        signed for this outcome alone, if one was."""
        if subject == self.node_id:
            return None  # a node never grades itself
        if not busy and subject not in self._unsigned and not self._durable_pending:
            return self._write(lambda: self._mesh.record_outcome(subject, quality, now))
        score, outcomes = self.opinion(subject)
        self._unsigned[subject] = (elo_update(score, quality), outcomes + 1)
        self._unsigned_stamp += 1
        if not busy:
            self.sign(now, (subject,))
        elif self.flush_at is None:
            self.flush_at = now + OPINION_FLUSH_S
        return None

    def record_capability_outcome(self, subject: str, capability: str, quality: float) -> None:
        """Fold one scored outcome into our own opinion of ``subject`` *for* ``capability``
        (never signed, never gossiped; routing blends it, see :meth:`capability_view`)."""
        if subject == self.node_id:
            return
        peers = self._by_capability.setdefault(capability, {})
        score, outcomes = peers.get(subject, (INITIAL_TRUST, 0))
        peers[subject] = (elo_update(score, quality), outcomes + 1)
        order = self._capability_order
        order.pop((subject, capability), None)
        order[(subject, capability)] = None
        while len(order) > MAX_CAPABILITY_OPINIONS:
            (old_peer, old_name), _ = order.popitem(last=False)
            held = self._by_capability[old_name]
            del held[old_peer]
            if not held:
                del self._by_capability[old_name]

    def capability_opinion(self, subject: str, capability: str) -> tuple[float, int] | None:
        """Our own opinion of ``subject`` for ``capability``: (score, outcomes), or None."""
        return self._by_capability.get(capability, {}).get(subject)

    def capability_view(self, now: float, capability: str) -> dict[str, float]:
        """The trust to route ``capability`` by, for each peer we have experience of *for
        that capability*: the mesh's view with our direct part taken from that experience
        alone, ``global + 2w × (direct_for_capability − prior)`` clamped to [0, 1] (the
        capability score alone when the mesh knows nothing of the peer). Peers without
        such experience are absent: routing uses :meth:`view` for them."""
        self.view(now)  # refreshes the global part if due
        known = self._global
        scores: Mapping[str, float] = {} if known is None else known.scores
        scale = 2.0 * self.weight
        out: dict[str, float] = {}
        for peer, (score, _) in self._by_capability.get(capability, {}).items():
            base = scores.get(peer)
            if base is None:
                out[peer] = score
            else:
                out[peer] = min(1.0, max(0.0, base + scale * (score - INITIAL_TRUST)))
        return out

    def opinion(self, subject: str) -> tuple[float, int]:
        """Our current opinion of ``subject``: (score, outcomes behind it), signed or not."""
        unsigned = self._unsigned.get(subject)
        if unsigned is not None:
            return unsigned
        held = self._mesh.ledger.get(self.node_id, subject)
        return (held.score, held.outcomes) if held is not None else (INITIAL_TRUST, 0)

    def sign(self, now: float, subjects: Iterable[str] | None = None) -> int:
        """Sign one record per peer with unsigned outcomes (all, or ``subjects``); returns
        how many were signed. Nothing is signed while an own record is not durable."""
        if self._durable_pending:
            if subjects is None:
                self.flush_at = None  # signed once the held record is written
            return 0
        if subjects is None:
            unsigned, self._unsigned = self._unsigned, {}
        else:
            unsigned = {s: self._unsigned.pop(s) for s in subjects if s in self._unsigned}
        if not self._unsigned:
            self.flush_at = None
        mesh = self._mesh
        before = mesh.ledger.version
        for subject, (score, outcomes) in unsigned.items():
            mesh.publish_opinion(subject, score, outcomes, now)
        self._own_writes += mesh.ledger.version - before
        return len(unsigned)

    def _write(self, sign: Callable[[], LedgerRecord]) -> LedgerRecord:
        before = self._mesh.ledger.version
        record = sign()
        self._own_writes += self._mesh.ledger.version - before
        return record

    def tick(self, now: float) -> None:
        """Sign the batched opinions once :attr:`flush_at` has passed."""
        if self.flush_at is not None and now >= self.flush_at:
            self.sign(now)

    def durable_failed(self, records: Iterable[LedgerRecord]) -> None:
        """The shell could not make ``records`` (own, just signed) durable."""
        for record in records:
            self._durable_pending[(record.observer, record.subject)] = record

    def durable_written(self, now: float, *, sign: bool = True) -> None:
        """The held own records are durable now; sign what waited (if ``sign``)."""
        held = bool(self._durable_pending)
        self._durable_pending.clear()
        if held and sign:
            self.sign(now)

    # ------------------------------------------------------------------ views

    def direct_experience(self) -> dict[str, float]:
        """Our own current opinion of every peer we have rated (signed or not yet)."""
        version = self._mesh.ledger.version
        cached = self._direct_cache
        if cached is None or cached[0] != version:
            cached = (version, self._mesh.direct_experience())
            self._direct_cache = cached
        if not self._unsigned:
            return cached[1]
        return {**cached[1], **{peer: s for peer, (s, _) in self._unsigned.items()}}

    def view(self, now: float) -> dict[str, float]:
        """The trust this node routes by, per peer, in [0, 1] (see the module docstring)."""
        direct = self.direct_experience()
        pretrusted = pretrusted_set(self.node_id, direct)
        ledger = self._mesh.ledger
        version = ledger.version
        known = self._global
        if global_is_stale(known, pretrusted, version, self._own_writes, now):
            scores = ledger.trust_scores(now, pretrusted)
            known = GlobalTrust(version, self._own_writes, now, pretrusted, scores)
            self._global = known
        assert known is not None
        stamp = (version, self._unsigned_stamp)
        cached = self._view_cache
        if cached is not None and cached[0] is known and cached[1] == stamp:
            return cached[2]
        view = blend(self.node_id, direct, known.scores, self.weight)
        self._view_cache = (known, stamp, view)
        return view


class MemberAges:
    """When this node first saw each member alive: the membership age routing breaks ties
    by (:func:`meshnode.core.router.rank`, ``member_since``).

    Local evidence only: an age cannot be gossiped (anyone could claim to be old), so
    each node counts from when *it* first saw the member alive or suspect. A member keeps
    its age through suspicion, death and return (a death is an accusation anyone may make;
    resetting on it would let an accuser make an old member young), and loses it only when
    membership forgets it. So the map holds at most one float per known member."""

    __slots__ = ("_since",)

    def __init__(self) -> None:
        self._since: dict[str, float] = {}

    def observe(self, node_id: str, state: MemberState | None, now: float) -> None:
        """A member changed state (None: membership forgot it)."""
        if state is None:
            self._since.pop(node_id, None)
        elif state in (MemberState.ALIVE, MemberState.SUSPECT):
            self._since.setdefault(node_id, now)

    def seen_alive(self, node_id: str, now: float) -> float:
        """When ``node_id`` was first seen alive (``now`` if this is the first time)."""
        return self._since.setdefault(node_id, now)

    def since(self, node_id: str) -> float | None:
        return self._since.get(node_id)

    @property
    def known(self) -> Mapping[str, float]:
        """Node id -> when first seen alive (a read-only view)."""
        return self._since

    def __len__(self) -> int:
        return len(self._since)
