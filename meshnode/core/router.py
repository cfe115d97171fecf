"""Routing: rank the capabilities that discovery found for one query.

Theory of operation
-------------------
Discovery (the capability index) answers "which capabilities are *about* this?" with
``(entry, cosine similarity)`` hits. The router answers "which of them should do it?". It
is a pure function of its inputs: no I/O, no clock, no randomness, and the same inputs
always give the same list in the same order.

1. Relevance. Each hit comes with the cosine similarity of its embedding to the query's
   and, when the caller has a lexical index, its normalised BM25 score ``lexical`` in
   [0, 1] (:mod:`meshnode.discovery.lexical`). They are fused by a weighted sum::

       relevance = min(1, max(0, similarity) + LEXICAL_WEIGHT × lexical)

   A weighted sum of scores rather than reciprocal rank fusion: RRF keeps only ranks, so
   a clear semantic winner and a near tie look alike, a hit found by one stray word ranks
   with the best semantic one (measured: see :data:`LEXICAL_WEIGHT`), and the router must
   weigh relevance against trust in units that mean something. Words only ever add: a
   paraphrase that shares no word with the description keeps its dense score.
2. Filter. A hit survives when its capability is called ``capability_name`` (if given,
   exact match), its node's trust is at least ``min_trust``, its price is within
   ``max_cost_usd``, its advertised latency within ``max_latency_ms``, it carries every
   requested tag (on the capability or on its node's manifest), and its relevance reaches
   the query's calibrated floor (:func:`relevance_floor`)::

       floor = max(min_similarity, min(best − RELEVANCE_MARGIN, mean + RELEVANCE_NOISE_Z × std))

   over the relevance of every hit of the query (``best`` the highest; ``mean`` and
   ``std`` of the pool, used when it has at least :data:`NOISE_MIN_POOL` hits). A hit
   within the margin of the best is kept however weak the best is, so a query whose best
   match is weak still returns its best few, ranked; a hit standing out of the pool's
   noise is kept even further from the best; ``min_similarity`` (default
   :data:`MIN_SIMILARITY`, low) drops only what resembles the query no more than unrelated
   text does. A name-only query (no description, ``name_only=True``) has no relevance to
   test: an exact name match scores 1.0.
3. Score each survivor on four factors in [0, 1] and blend them::

       total = 0.35 × relevance + 0.35 × trust + 0.15 × availability + 0.15 × cost_factor

   * relevance — above (the ``semantic`` weight applies to it); the candidate also
     reports its parts, ``semantic`` (the cosine clamped to [0, 1]) and ``lexical``;
   * trust — the caller's trust in the node (:data:`DEFAULT_TRUST` if unknown);
   * availability — ``1 − in_flight / max_concurrent`` from the node's advertised load,
     clamped to [0, 1]; a node whose circuit breaker is open is kept but scored at exactly
     :data:`OPEN_CIRCUIT_AVAILABILITY`;
   * cost_factor — cheaper scores higher: ``1 − cost / max_cost_usd`` within a budget, or
     ``1 / (1 + cost / REFERENCE_COST_USD)`` without one.

   Distance and machine load (``NodeCore.route`` passes them, with the weights of
   ``NodeConfig``; ``rank`` alone defaults both weights to 0, the four-factor score):

   * latency — ``1 / (1 + (rtt_ms + avg_latency_ms) / latency_reference_ms)``
     (:func:`latency_factor`): the round trip to the node (coordinate estimate, else the
     last probe, else :data:`UNKNOWN_RTT_MS`) plus the capability's advertised latency;
     ``total = (1 − latency_weight) × (the four weighted factors) + latency_weight ×
     latency``;
   * availability's second part — the node's machine pressure ``p`` in [0, 1]
     (``max(cpu, memory)`` it advertised): ``availability × (1 − pressure_weight × p)``
     (:func:`machine_availability`); ``max_rtt_ms`` drops nodes farther away or of
     unknown distance. See docs/routing.md for the defaults and their rationale.
4. Order by total (highest first); break ties by evidence, never by node id: first the
   caller's trust in the node (higher first), then how long the node has been a member
   as the caller saw it (``member_since``: the time it first saw the node alive, earlier
   first; unknown counts as newest), and only then a deterministic final key that cannot
   be aimed at: a keyed hash of the node id (:func:`tie_key`, BLAKE2b keyed with a
   secret of the caller's, so an id ground to sort first for one requester sorts
   anywhere for it and differently for every other); then the capability name. Keep
   ``top_k`` — except that a node the caller's membership holds *suspect* (it missed its
   probes: maybe down, maybe slow) comes after every node that is not, and a node with no
   trust at all (exactly 0: someone rated it, and nobody
   trusted vouches for it above the prior — a provider seen failing, a Sybil ring) comes
   after every node with some trust, whatever its other factors. Such a node is idle
   *because* nobody trusts it, so its availability must not lift it above a busy, trusted
   one. Discovery still lists it (filter it out with ``min_trust``); a delegation does not
   try it while any candidate has some trust (:func:`meshnode.core.delegation.rank_candidates`).

A node may appear more than once if several of its capabilities match: the result is a
list of (node, capability) choices, since the capability is what a task names.

The router only sees the hits it is given. The index returns the nearest ``k`` entries
before filtering, and trust or price can lift a less similar capability above a more
similar one, so callers should ask the index for :func:`candidate_pool` entries, not
``top_k``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import math
from collections.abc import Iterable, Mapping, MutableMapping
from collections.abc import Set as AbstractSet
from typing import Protocol

from protocol.manifest import Capability

__all__ = [
    "CANDIDATE_POOL_FACTOR",
    "CANDIDATE_POOL_MIN",
    "DEFAULT_TOP_K",
    "DEFAULT_TRUST",
    "DEFAULT_WEIGHTS",
    "LATENCY_REFERENCE_MS",
    "LEXICAL_WEIGHT",
    "MAX_TIE_SECRET_BYTES",
    "MAX_TOP_K",
    "MIN_SIMILARITY",
    "MIN_TOP_K",
    "NOISE_MIN_POOL",
    "OPEN_CIRCUIT_AVAILABILITY",
    "REFERENCE_COST_USD",
    "RELEVANCE_MARGIN",
    "RELEVANCE_NOISE_Z",
    "TIE_KEY_BYTES",
    "UNKNOWN_LOAD_AVAILABILITY",
    "UNKNOWN_RTT_MS",
    "LoadInfo",
    "RoutableEntry",
    "RoutingWeights",
    "ScoredCandidate",
    "availability",
    "candidate_pool",
    "cost_factor",
    "has_tags",
    "latency_factor",
    "machine_availability",
    "rank",
    "relevance",
    "relevance_floor",
    "tie_key",
]

# --------------------------------------------------------------------------- constants

MIN_SIMILARITY = 0.1
"""Absolute floor of relevance: a hit below it is never routable, whatever the rest of
the query's hits score. Low on purpose: the calibrated rule (:func:`relevance_floor`)
does the selection, this only drops what resembles the query no more than unrelated text
does. Chosen on the ``dev`` split of ``tests/data/retrieval_large.json`` with
all-MiniLM-L6-v2 (``python -m benchmarks.retrieval``): the expected capability's
relevance was 0.06 at the lowest and 0.13 at the 5th percentile, other capabilities' a
median of 0.10 — MiniLM's unrelated texts are not near 0, so no absolute value separates
the two; at 0.10 no dev query of either set came back empty, at 0.15 two of the new
set's did (dense scores alone). (The
previous absolute floor, 0.3, chosen on ``tests/data/retrieval.json``, left 25 % of the
new set's queries with no answer: "how many pounds is 3 kilograms" finds unit conversion
at 0.25, "directions from the station to the museum" a route planner at 0.22.) The
hashing embedder scores lower still; a caller using it may pass a lower
``min_similarity``."""

RELEVANCE_MARGIN = 0.15
"""A hit within this much relevance of the query's best hit is kept (see
:func:`relevance_floor`). On the dev splits with MiniLM (fp32 and int8), recall@3 after
the floor equals recall@3 with no floor at all on the old set for any margin from 0.10,
and on the new set from 0.15 at fp32 (0.20 at int8, one query more); 0.15 keeps a median
of 2-3 candidates on the old set and 5-6 on the new where 0.20 keeps 10-12, which a
trusted but irrelevant provider could then outrank."""

RELEVANCE_NOISE_Z = 2.0
"""A hit more than this many standard deviations above the mean relevance of the query's
pool stands out of its noise and is kept even beyond :data:`RELEVANCE_MARGIN` (several
good providers phrased differently). On the dev splits, with a margin of 0.10, 2.0 kept
one query's expected capability that 3.0 dropped; with 0.15 both give the same recall
(these sets rarely have several strong providers for one query)."""

NOISE_MIN_POOL = 8
"""Fewest hits whose mean and spread say anything about a query's noise; a smaller pool
is filtered by the margin and the floor alone."""

LEXICAL_WEIGHT = 0.05
"""Weight of the normalised BM25 score added to the cosine similarity (see the module
doc). Chosen on the dev splits: for MiniLM, whose paraphrase queries rarely share a word
with the capability they want (92 % of the new set's share none), every weight above
0.05 cost recall@1 (new set, fp32: 0.578 at 0, 0.585 at 0.05, 0.570 at 0.1, 0.504 at
0.25) because a stray shared word lifts the wrong capability; with three author
examples per capability the weights from 0.05 to 0.3 tie (0.874 at 0, 0.889 from 0.05);
for the hashing embedder words are the signal (old set: 0.33 at 0, 0.36 at 0.05, 0.40 at
0.1). 0.05 lets an exact name, acronym or product word decide between capabilities that
mean much the same. Reciprocal rank fusion was measured too and rejected: with
k = 20 or 60 it dropped MiniLM's dev recall@1 to 0.74 (old set) and 0.19 (new set),
because a word-only hit ranks as high as a semantic one."""

OPEN_CIRCUIT_AVAILABILITY = 0.3
"""Availability given to a node whose circuit breaker is open (after repeated failures):
it stays a candidate of last resort rather than disappearing, and is scored at this value
whatever its advertised load."""

DEFAULT_TRUST = 0.5
"""Trust assumed for a node the caller has no trust figure for (the ledger's starting
point for a stranger)."""

UNKNOWN_LOAD_AVAILABILITY = 1.0
"""Availability of a node whose load has not been advertised yet: treated as idle, as a
freshly joined node is."""

REFERENCE_COST_USD = 0.01
"""Price (USD per call) that scores cost_factor 0.5 when the query sets no budget: the
factor is ``1 / (1 + cost / REFERENCE_COST_USD)``, 1.0 for a free capability, 0.5 at one
cent, 0.09 at ten cents."""

MIN_TOP_K = 1
MAX_TOP_K = 20
"""Bounds of ``top_k``; anything else is a ValueError."""

DEFAULT_TOP_K = 5
"""``top_k`` when the caller does not say."""

CANDIDATE_POOL_MIN = 64
CANDIDATE_POOL_FACTOR = 8
""":func:`candidate_pool` asks the index for ``max(CANDIDATE_POOL_MIN, CANDIDATE_POOL_FACTOR
× top_k)`` hits: enough that filters and the non-semantic factors pick from a wide set,
small enough that an HNSW search stays well under a millisecond."""

LATENCY_REFERENCE_MS = 100.0
"""Expected milliseconds (network round trip plus the capability's advertised latency)
that score latency 0.5 (see :func:`latency_factor`): 1 ms scores 0.99, 300 ms 0.25."""

UNKNOWN_RTT_MS = 100.0
"""Round trip assumed for a node with neither an estimate nor a measured probe yet: a
typical wide-area figure, so a stranger ranks between near and far measured peers."""

_WEIGHT_SUM_TOLERANCE = 1e-9

TIE_KEY_BYTES = 8
"""Length of the keyed hash that breaks the last ties (:func:`tie_key`): 64 bits, so two
candidates tie on it with probability 2⁻⁶⁴."""

MAX_TIE_SECRET_BYTES = 64
"""Longest secret :func:`tie_key` is keyed with (BLAKE2b's key limit)."""


# --------------------------------------------------------------------------- types


@dataclasses.dataclass(frozen=True, slots=True)
class RoutingWeights:
    """Weights of the four factors; each in [0, 1], summing to 1."""

    semantic: float = 0.35
    trust: float = 0.35
    availability: float = 0.15
    cost: float = 0.15

    def __post_init__(self) -> None:
        values = (self.semantic, self.trust, self.availability, self.cost)
        for value in values:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError("routing weights must be numbers")
            if not 0.0 <= value <= 1.0:  # also refuses NaN
                raise ValueError(f"routing weights must be in [0, 1], got {value!r}")
        if abs(math.fsum(values) - 1.0) > _WEIGHT_SUM_TOLERANCE:
            raise ValueError(f"routing weights must sum to 1, got {math.fsum(values)!r}")


DEFAULT_WEIGHTS = RoutingWeights()
"""0.35 semantic + 0.35 trust + 0.15 availability + 0.15 cost."""


@dataclasses.dataclass(frozen=True, slots=True)
class LoadInfo:
    """A node's advertised load: tasks in flight and how many it accepts at once."""

    in_flight: int
    max_concurrent: int

    @property
    def availability(self) -> float:
        return availability(self.in_flight, self.max_concurrent)


class RoutableEntry(Protocol):
    """What the router needs of a hit (``meshnode.discovery.IndexEntry`` has it)."""

    @property
    def node_id(self) -> str: ...

    @property
    def capability(self) -> Capability: ...

    @property
    def node_name(self) -> str: ...

    @property
    def endpoint(self) -> str: ...

    @property
    def node_tags(self) -> tuple[str, ...]: ...


@dataclasses.dataclass(frozen=True, slots=True)
class ScoredCandidate:
    """One routable (node, capability) and its score, broken down by factor."""

    node_id: str
    node_name: str
    address: str
    """The node's ``host:port`` (manifest endpoint)."""
    capability: Capability
    similarity: float
    """The raw similarity the hit came with (1.0 for a name-only match)."""
    semantic: float
    """The similarity clamped to [0, 1]."""
    trust: float
    availability: float
    cost_factor: float
    total: float
    circuit_open: bool = False
    lexical: float = 0.0
    """The normalised BM25 score of the query against the capability's words, in [0, 1]."""
    relevance: float = 0.0
    """:func:`relevance` of ``semantic`` and ``lexical``: the factor ``total`` weighs."""
    latency: float = 1.0
    """:func:`latency_factor` of the round trip and the advertised latency, in [0, 1]."""
    rtt_ms: float | None = None
    """The round trip to the node the factor used (estimate, else last probe), ms; None
    when neither was known (then :data:`UNKNOWN_RTT_MS` was assumed)."""
    task_availability: float = 1.0
    """Availability's first part: ``1 − in_flight / max_concurrent`` (advertised load)."""
    machine_pressure: float | None = None
    """Availability's second part: the node's machine pressure, ``max(cpu, memory)`` in
    [0, 1], None when it has not advertised one (counted as 0)."""
    suspect: bool = False
    """The caller's membership holds the node suspect (it missed its probes and may be
    down): it is ranked after every candidate that is not."""

    @property
    def capability_name(self) -> str:
        return self.capability.name


# --------------------------------------------------------------------------- factors


def _clamp01(value: float) -> float:
    """``value`` bounded to [0, 1]; NaN (and −0.0) give 0.0."""
    if 0.0 < value <= 1.0:
        return value
    return 1.0 if value > 1.0 else 0.0


def relevance(similarity: float, lexical: float = 0.0, weight: float = LEXICAL_WEIGHT) -> float:
    """``min(1, max(0, similarity) + weight × lexical)`` (``weight`` defaults to
    :data:`LEXICAL_WEIGHT`); NaN inputs count as 0."""
    return _clamp01(_clamp01(similarity) + weight * _clamp01(lexical))


def relevance_floor(
    scores: Iterable[float],
    *,
    absolute_floor: float = MIN_SIMILARITY,
    margin: float = RELEVANCE_MARGIN,
    noise_z: float = RELEVANCE_NOISE_Z,
) -> float:
    """The lowest relevance kept among hits scoring ``scores`` (one query's pool)::

        max(absolute_floor, min(best − margin, mean + noise_z × std))

    The noise term applies when there are at least :data:`NOISE_MIN_POOL` scores. With
    no score, the floor is ``absolute_floor``."""
    values = [v for v in scores if not math.isnan(v)]
    if not values:
        return absolute_floor
    best = max(values)
    relative = best - margin
    if len(values) >= NOISE_MIN_POOL:
        mean = math.fsum(values) / len(values)
        spread = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / len(values))
        relative = min(relative, mean + noise_z * spread)
    return max(absolute_floor, relative)


def availability(in_flight: int, max_concurrent: int) -> float:
    """``1 − in_flight / max_concurrent`` clamped to [0, 1]; 0 if ``max_concurrent`` < 1."""
    if max_concurrent < 1:
        return 0.0
    return _clamp01(1.0 - in_flight / max_concurrent)


def machine_availability(task: float, pressure: float | None, weight: float) -> float:
    """Availability with machine load folded in: ``task × (1 − weight × pressure)``,
    ``pressure`` in [0, 1] (None: 0)."""
    if pressure is None:
        return _clamp01(task)
    return _clamp01(task * (1.0 - _clamp01(weight) * _clamp01(pressure)))


def latency_factor(
    rtt_ms: float | None,
    advertised_ms: float,
    reference_ms: float = LATENCY_REFERENCE_MS,
) -> float:
    """How soon an answer can come back, in (0, 1]; higher is sooner::

        latency = 1 / (1 + (rtt_ms + advertised_ms) / reference_ms)

    ``rtt_ms`` None counts as :data:`UNKNOWN_RTT_MS`; negative or NaN parts count as 0."""
    rtt = UNKNOWN_RTT_MS if rtt_ms is None else rtt_ms
    rtt = 0.0 if math.isnan(rtt) else max(0.0, rtt)
    advertised = 0.0 if math.isnan(advertised_ms) else max(0.0, advertised_ms)
    return 1.0 / (1.0 + (rtt + advertised) / reference_ms)


def cost_factor(cost_usd: float, max_cost_usd: float | None) -> float:
    """How cheap a call is, in [0, 1]; higher is cheaper.

    With a budget: ``1 − cost / max_cost_usd`` (0 at the budget; a zero budget admits only
    free capabilities, which score 1). Without one: ``1 / (1 + cost / REFERENCE_COST_USD)``.
    """
    cost = max(0.0, cost_usd)
    if max_cost_usd is not None:
        if max_cost_usd <= 0.0:
            return 1.0 if cost == 0.0 else 0.0
        return _clamp01(1.0 - cost / max_cost_usd)
    return 1.0 / (1.0 + cost / REFERENCE_COST_USD)


def has_tags(
    required: AbstractSet[str], capability_tags: Iterable[str], node_tags: Iterable[str]
) -> bool:
    """True if every required tag is on the capability or on its node's manifest."""
    if not required:
        return True
    return required <= {*capability_tags, *node_tags}


def tie_key(secret: bytes, node_id: str) -> bytes:
    """The final tie-break key of ``node_id`` for the caller holding ``secret``: BLAKE2b
    of the id keyed with the secret (its first :data:`MAX_TIE_SECRET_BYTES` bytes). Without
    the secret nobody can tell where an id sorts, so grinding ids buys nothing."""
    return hashlib.blake2b(
        node_id.encode("utf-8"), key=secret[:MAX_TIE_SECRET_BYTES], digest_size=TIE_KEY_BYTES
    ).digest()


def candidate_pool(top_k: int) -> int:
    """How many hits to ask the index for when the caller wants ``top_k`` results."""
    _check_top_k(top_k)
    return max(CANDIDATE_POOL_MIN, CANDIDATE_POOL_FACTOR * top_k)


def _check_top_k(top_k: int) -> None:
    if isinstance(top_k, bool) or not isinstance(top_k, int):
        raise TypeError(f"top_k must be an integer, got {type(top_k).__name__}")
    if not MIN_TOP_K <= top_k <= MAX_TOP_K:
        raise ValueError(f"top_k must be in {MIN_TOP_K}..{MAX_TOP_K}, got {top_k}")


def _load_availability(load: LoadInfo | tuple[int, int] | None) -> float:
    if load is None:
        return UNKNOWN_LOAD_AVAILABILITY
    if isinstance(load, LoadInfo):
        return load.availability
    in_flight, max_concurrent = load
    return availability(in_flight, max_concurrent)


# --------------------------------------------------------------------------- ranking


def rank(
    hits: Iterable[tuple[RoutableEntry, float]],
    *,
    trust: Mapping[str, float],
    load: Mapping[str, LoadInfo | tuple[int, int]],
    open_circuits: AbstractSet[str] = frozenset(),
    suspect: AbstractSet[str] = frozenset(),
    min_trust: float = 0.0,
    max_cost_usd: float | None = None,
    max_latency_ms: float | None = None,
    tags: Iterable[str] = (),
    capability_name: str | None = None,
    name_only: bool = False,
    top_k: int = DEFAULT_TOP_K,
    weights: RoutingWeights = DEFAULT_WEIGHTS,
    min_similarity: float = MIN_SIMILARITY,
    default_trust: float = DEFAULT_TRUST,
    member_since: Mapping[str, float] | None = None,
    tie_secret: bytes = b"",
    tie_keys: MutableMapping[str, bytes] | None = None,
    capability_trust: Mapping[tuple[str, str], float] | None = None,
    lexical: Mapping[tuple[str, str], float] | None = None,
    lexical_weight: float = LEXICAL_WEIGHT,
    rtt_ms: Mapping[str, float] | None = None,
    max_rtt_ms: float | None = None,
    pressure: Mapping[str, float] | None = None,
    latency_weight: float = 0.0,
    latency_reference_ms: float = LATENCY_REFERENCE_MS,
    pressure_weight: float = 0.0,
) -> list[ScoredCandidate]:
    """Filter, score and order ``hits``; return the best ``top_k`` (see the module doc).

    ``trust`` and ``load`` are keyed by node id; ``open_circuits`` holds the node ids whose
    breaker is open; ``suspect`` the node ids the caller's membership holds suspect (they
    rank after every other candidate). ``member_since`` gives, per node id, when the
    caller first saw it alive (its membership age breaks ties after trust); ``tie_secret``
    keys the final tie-break hash (:func:`tie_key`); ``tie_keys``, when given, remembers
    the keys made with that one secret by node id (the caller keeps it across calls and
    bounds it).
    ``capability_trust`` gives, per (node id, capability
    name), the caller's trust in the node *for that capability* (its own experience of
    it); where present it replaces ``trust`` for that choice. ``name_only`` says the query
    had no description, only ``capability_name``: the hits' similarities are then ignored
    and an exact name match scores semantic 1.0. ``lexical`` gives, per (node id,
    capability name), the normalised BM25 score of the query against that capability
    (absent: 0), weighted by ``lexical_weight`` in the relevance. A (node, capability)
    that appears in several hits is scored once, with its highest relevance.

    Distance and machine load: ``rtt_ms`` gives the round trip to each node in
    milliseconds (absent: unknown); ``max_rtt_ms`` drops nodes farther than that (and
    those whose round trip is unknown); ``pressure`` gives each node's machine pressure
    in [0, 1]. The total becomes ``(1 − latency_weight) × (the four weighted factors) +
    latency_weight × latency`` (:func:`latency_factor` with ``latency_reference_ms``),
    and availability becomes :func:`machine_availability` with ``pressure_weight``.
    Both weights default to 0: the four-factor score, unchanged.
    """
    _check_top_k(top_k)
    if not isinstance(weights, RoutingWeights):
        raise TypeError("weights must be a RoutingWeights")
    if not 0.0 <= min_trust <= 1.0:
        raise ValueError(f"min_trust must be in [0, 1], got {min_trust!r}")
    if max_cost_usd is not None and not 0.0 <= max_cost_usd < math.inf:
        raise ValueError(f"max_cost_usd must be a finite number >= 0, got {max_cost_usd!r}")
    if max_latency_ms is not None and not 0.0 <= max_latency_ms < math.inf:
        raise ValueError(f"max_latency_ms must be a finite number >= 0, got {max_latency_ms!r}")
    if not -1.0 <= min_similarity <= 1.0:
        raise ValueError(f"min_similarity must be in [-1, 1], got {min_similarity!r}")
    if not 0.0 <= lexical_weight <= 1.0:
        raise ValueError(f"lexical_weight must be in [0, 1], got {lexical_weight!r}")
    if max_rtt_ms is not None and not 0.0 <= max_rtt_ms < math.inf:
        raise ValueError(f"max_rtt_ms must be a finite number >= 0, got {max_rtt_ms!r}")
    if not 0.0 <= latency_weight <= 1.0:
        raise ValueError(f"latency_weight must be in [0, 1], got {latency_weight!r}")
    if not 0.0 <= pressure_weight <= 1.0:
        raise ValueError(f"pressure_weight must be in [0, 1], got {pressure_weight!r}")
    if not 0.0 < latency_reference_ms < math.inf:
        raise ValueError(
            f"latency_reference_ms must be a finite number > 0, got {latency_reference_ms!r}"
        )
    if name_only and not capability_name:
        raise ValueError("a name-only query needs a capability_name")
    rtts = rtt_ms if rtt_ms is not None else {}
    pressures = pressure if pressure is not None else {}
    if isinstance(tags, str):
        raise TypeError("tags must be a collection of strings, not one string")
    required_tags = frozenset(tags)

    words = lexical if lexical is not None and not name_only else {}
    best: dict[tuple[str, str], tuple[RoutableEntry, float, float, float]] = {}
    for entry, similarity in hits:
        cap = entry.capability
        if capability_name is not None and cap.name != capability_name:
            continue
        score = 1.0 if name_only else float(similarity)
        if math.isnan(score):
            continue
        key = (entry.node_id, cap.name)
        word_score = _clamp01(float(words.get(key, 0.0)))
        fused = relevance(score, word_score, lexical_weight)
        seen = best.get(key)
        if seen is None or fused > seen[3]:
            best[key] = (entry, score, word_score, fused)
    floor = relevance_floor((row[3] for row in best.values()), absolute_floor=min_similarity)

    since = member_since if member_since is not None else {}
    # Score into plain tuples, order, and build result objects for the top_k only.
    scored: list[
        tuple[
            bool,
            bool,
            float,
            float,
            float,
            bytes,
            str,
            str,
            RoutableEntry,
            float,
            float,
            float,
            float,
            bool,
            float,
            float,
            float,
            float | None,
            float,
            float | None,
        ]
    ] = []
    # The loop below runs for every hit of every query: the factor functions are inlined
    # where that is a plain bound (same values, fewer calls).
    trust_get = trust.get
    specific_get = None if capability_trust is None else capability_trust.get
    load_get = load.get
    rtt_get = rtts.get
    pressure_get = pressures.get
    since_get = since.get
    memo: MutableMapping[str, bytes] = tie_keys if tie_keys is not None else {}
    cheapness_of: dict[float, float] = {}
    clamped_pressure_weight = _clamp01(pressure_weight)
    w_semantic, w_trust = weights.semantic, weights.trust
    w_availability, w_cost = weights.availability, weights.cost
    fsum = math.fsum
    inf = math.inf
    for (node_id, name), (entry, similarity, word_score, fused) in best.items():
        if fused < floor:
            continue
        cap = entry.capability
        specific = None if specific_get is None else specific_get((node_id, name))
        if specific is None:
            specific = trust_get(node_id, default_trust)
        node_trust = float(specific)
        if not 0.0 < node_trust <= 1.0:
            node_trust = 1.0 if node_trust > 1.0 else 0.0
        if node_trust < min_trust:
            continue
        if max_cost_usd is not None and cap.cost_per_call_usd > max_cost_usd:
            continue
        if max_latency_ms is not None and cap.avg_latency_ms > max_latency_ms:
            continue
        if required_tags and not has_tags(required_tags, cap.tags, entry.node_tags):
            continue
        node_rtt = rtt_get(node_id)
        if node_rtt is not None and (math.isnan(node_rtt) or node_rtt < 0):
            node_rtt = None
        if max_rtt_ms is not None and (node_rtt is None or node_rtt > max_rtt_ms):
            continue
        circuit_open = node_id in open_circuits
        task_part = _load_availability(load_get(node_id))
        node_pressure = pressure_get(node_id)
        if node_pressure is not None:
            node_pressure = _clamp01(float(node_pressure))
        if circuit_open:
            node_availability = OPEN_CIRCUIT_AVAILABILITY
        elif node_pressure is None:
            node_availability = _clamp01(task_part)
        else:  # machine_availability, with the weight clamped once
            node_availability = _clamp01(
                task_part * (1.0 - clamped_pressure_weight * node_pressure)
            )
        price = cap.cost_per_call_usd
        cheapness = cheapness_of.get(price)
        if cheapness is None:
            cheapness = cheapness_of[price] = cost_factor(price, max_cost_usd)
        soon = latency_factor(node_rtt, cap.avg_latency_ms, latency_reference_ms)
        base = fsum(
            (
                w_semantic * fused,
                w_trust * node_trust,
                w_availability * node_availability,
                w_cost * cheapness,
            )
        )
        total = (
            base
            if latency_weight == 0.0
            else ((1.0 - latency_weight) * base + latency_weight * soon)
        )
        tie = memo.get(node_id)
        if tie is None:
            tie = memo[node_id] = tie_key(tie_secret, node_id)
        scored.append(
            (
                node_id in suspect,
                node_trust <= 0.0,
                -total,
                -node_trust,
                since_get(node_id, inf),
                tie,
                name,
                node_id,
                entry,
                similarity,
                node_trust,
                node_availability,
                cheapness,
                circuit_open,
                word_score,
                fused,
                soon,
                node_rtt,
                task_part,
                node_pressure,
            )
        )

    best_first = heapq.nsmallest(top_k, scored, key=lambda row: row[:7])
    return [
        ScoredCandidate(
            node_id=node_id,
            node_name=entry.node_name,
            address=entry.endpoint,
            capability=entry.capability,
            similarity=similarity,
            semantic=_clamp01(similarity),
            trust=node_trust,
            availability=node_availability,
            cost_factor=cheapness,
            total=-negative_total,
            circuit_open=circuit_open,
            lexical=word_score,
            relevance=fused,
            latency=soon,
            rtt_ms=node_rtt,
            task_availability=task_part,
            machine_pressure=node_pressure,
            suspect=is_suspect,
        )
        for (
            is_suspect,
            _untrusted,
            negative_total,
            _negative_trust,
            _since,
            _tie,
            _name,
            node_id,
            entry,
            similarity,
            node_trust,
            node_availability,
            cheapness,
            circuit_open,
            word_score,
            fused,
            soon,
            node_rtt,
            task_part,
            node_pressure,
        ) in best_first
    ]
