"""The router: each factor, each filter, the open-circuit rule, ordering and bounds."""

from __future__ import annotations

import dataclasses
import math

import pytest

from meshnode.core.router import (
    CANDIDATE_POOL_MIN,
    DEFAULT_TRUST,
    DEFAULT_WEIGHTS,
    MIN_SIMILARITY,
    OPEN_CIRCUIT_AVAILABILITY,
    REFERENCE_COST_USD,
    UNKNOWN_LOAD_AVAILABILITY,
    LoadInfo,
    RoutingWeights,
    ScoredCandidate,
    availability,
    candidate_pool,
    cost_factor,
    has_tags,
    rank,
)
from protocol.manifest import Capability


@dataclasses.dataclass(frozen=True)
class Entry:
    """A minimal routable entry (the index's IndexEntry has the same attributes)."""

    node_id: str
    capability: Capability
    node_name: str = ""
    endpoint: str = ""
    node_tags: tuple[str, ...] = ()


def entry(
    node_id: str,
    name: str = "translate_text",
    *,
    cost: float = 0.0,
    latency: float = 0.0,
    tags: tuple[str, ...] = (),
    node_tags: tuple[str, ...] = (),
) -> Entry:
    capability = Capability(
        name=name,
        description=f"{name} provided by {node_id}",
        cost_per_call_usd=cost,
        avg_latency_ms=latency,
        tags=tags,
    )
    return Entry(
        node_id=node_id,
        capability=capability,
        node_name=f"name-{node_id}",
        endpoint=f"10.0.0.1:{7900 + len(node_id)}",
        node_tags=node_tags,
    )


def rank_one(hit: tuple[Entry, float], **kwargs: object) -> ScoredCandidate:
    kwargs.setdefault("trust", {})
    kwargs.setdefault("load", {})
    (result,) = rank([hit], **kwargs)  # type: ignore[arg-type]
    return result


# --------------------------------------------------------------------------- factors


@pytest.mark.parametrize(
    ("in_flight", "max_concurrent", "expected"),
    [
        (0, 3, 1.0),
        (1, 3, 2 / 3),
        (3, 3, 0.0),
        (5, 3, 0.0),  # over capacity: clamped
        (-1, 3, 1.0),  # nonsense advertisement: clamped
        (0, 0, 0.0),  # cannot take any task
        (2, 4, 0.5),
    ],
)
def test_availability_table(in_flight: int, max_concurrent: int, expected: float) -> None:
    """availability = 1 − in_flight / max_concurrent, clamped to [0, 1]."""
    assert availability(in_flight, max_concurrent) == pytest.approx(expected)
    assert LoadInfo(in_flight, max_concurrent).availability == pytest.approx(expected)


@pytest.mark.parametrize(
    ("cost", "budget", "expected"),
    [
        (0.0, 0.01, 1.0),
        (0.005, 0.01, 0.5),
        (0.01, 0.01, 0.0),
        (0.0, 0.0, 1.0),  # zero budget: only free capabilities, which score 1
        (0.001, 0.0, 0.0),
        (0.0, None, 1.0),
        (REFERENCE_COST_USD, None, 0.5),
        (9 * REFERENCE_COST_USD, None, 0.1),
    ],
)
def test_cost_factor_table(cost: float, budget: float | None, expected: float) -> None:
    """Within a budget 1 − cost/budget; without one 1 / (1 + cost/REFERENCE_COST_USD)."""
    assert cost_factor(cost, budget) == pytest.approx(expected)


def test_cheaper_scores_higher_with_and_without_budget() -> None:
    """Cost factor strictly decreases with price, with and without a budget."""
    prices = [0.0, 0.001, 0.002, 0.004, 0.008]
    for budget in (0.01, None):
        factors = [cost_factor(p, budget) for p in prices]
        assert factors == sorted(factors, reverse=True)
        assert len(set(factors)) == len(factors)


@pytest.mark.parametrize(
    ("required", "cap_tags", "node_tags", "expected"),
    [
        (set(), (), (), True),
        ({"nlp"}, ("nlp",), (), True),
        ({"nlp"}, (), ("nlp",), True),  # on the manifest counts too
        ({"nlp", "fast"}, ("nlp",), ("fast",), True),  # split across both
        ({"nlp", "fast"}, ("nlp",), (), False),  # all requested tags are needed
        ({"nlp"}, ("NLP",), (), False),  # tags are exact
    ],
)
def test_has_tags_table(
    required: set[str], cap_tags: tuple[str, ...], node_tags: tuple[str, ...], expected: bool
) -> None:
    """A candidate must carry every requested tag, on the capability or its manifest."""
    assert has_tags(frozenset(required), cap_tags, node_tags) is expected


@pytest.mark.parametrize(
    ("weights", "ok"),
    [
        ((0.35, 0.35, 0.15, 0.15), True),
        ((1.0, 0.0, 0.0, 0.0), True),
        ((0.25, 0.25, 0.25, 0.25), True),
        ((0.5, 0.5, 0.5, 0.5), False),  # sums to 2
        ((0.4, 0.4, 0.1, 0.0), False),  # sums to 0.9
        ((1.2, -0.2, 0.0, 0.0), False),  # out of range
        ((math.nan, 0.35, 0.15, 0.15), False),
    ],
)
def test_routing_weights_validation(weights: tuple[float, ...], ok: bool) -> None:
    """Weights are each in [0, 1] and sum to 1; anything else is refused on construction."""
    if ok:
        RoutingWeights(*weights)
    else:
        with pytest.raises(ValueError, match="routing weights"):
            RoutingWeights(*weights)


def test_default_weights_are_the_design() -> None:
    """0.35 semantic + 0.35 trust + 0.15 availability + 0.15 cost."""
    assert RoutingWeights(0.35, 0.35, 0.15, 0.15) == DEFAULT_WEIGHTS


def test_total_is_the_weighted_sum() -> None:
    """total = 0.35 × semantic + 0.35 × trust + 0.15 × availability + 0.15 × cost_factor."""
    result = rank_one(
        (entry("n1", cost=0.002), 0.8),
        trust={"n1": 0.6},
        load={"n1": LoadInfo(1, 4)},
        max_cost_usd=0.01,
    )
    assert (result.semantic, result.trust, result.availability) == pytest.approx((0.8, 0.6, 0.75))
    assert result.cost_factor == pytest.approx(0.8)
    assert result.total == pytest.approx(0.35 * 0.8 + 0.35 * 0.6 + 0.15 * 0.75 + 0.15 * 0.8)
    assert result.node_name == "name-n1"
    assert result.address.startswith("10.0.0.1:")
    assert result.capability_name == "translate_text"


@pytest.mark.parametrize(
    ("trust", "load", "circuit", "expected_trust", "expected_availability"),
    [
        ({}, {}, False, DEFAULT_TRUST, UNKNOWN_LOAD_AVAILABILITY),  # strangers
        ({"n1": 0.9}, {"n1": (3, 3)}, False, 0.9, 0.0),  # tuple load form
        ({"n1": 1.7}, {"n1": LoadInfo(0, 2)}, False, 1.0, 1.0),  # trust clamped
        ({"n1": 0.9}, {"n1": LoadInfo(0, 5)}, True, 0.9, OPEN_CIRCUIT_AVAILABILITY),
        ({"n1": 0.9}, {"n1": LoadInfo(5, 5)}, True, 0.9, OPEN_CIRCUIT_AVAILABILITY),
        ({"n1": 0.9}, {}, True, 0.9, OPEN_CIRCUIT_AVAILABILITY),
    ],
)
def test_trust_and_availability_inputs(
    trust: dict[str, float],
    load: dict[str, object],
    circuit: bool,
    expected_trust: float,
    expected_availability: float,
) -> None:
    """Unknown peers get the defaults; a peer with an open circuit is kept and scored at
    availability 0.3 exactly, whatever its load."""
    result = rank_one(
        (entry("n1"), 0.9), trust=trust, load=load, open_circuits={"n1"} if circuit else set()
    )
    assert result.trust == pytest.approx(expected_trust)
    assert result.availability == pytest.approx(expected_availability)
    assert result.circuit_open is circuit


def test_open_circuit_lowers_rank_but_keeps_the_peer() -> None:
    """Two identical peers: the one whose circuit is open comes second, not absent."""
    hits = [(entry("a"), 0.9), (entry("b"), 0.9)]
    results = rank(hits, trust={}, load={}, open_circuits={"a"})
    assert [r.node_id for r in results] == ["b", "a"]
    assert results[1].availability == OPEN_CIRCUIT_AVAILABILITY


def test_a_suspect_node_comes_after_every_other_but_stays_listed() -> None:
    """A suspect node ranks after every node that is not, however good its factors (more
    trust, idle, more similar) and even after a node with no trust at all; among suspects
    the usual order holds. It is listed, marked ``suspect``, not dropped."""
    hits = [
        (entry("suspect-good"), 0.95),
        (entry("suspect-worse"), 0.9),
        (entry("alive"), 0.9),
        (entry("alive-untrusted"), 0.9),
    ]
    results = rank(
        hits,
        trust={"suspect-good": 1.0, "suspect-worse": 0.6, "alive": 0.2, "alive-untrusted": 0.0},
        load={"alive": (3, 4)},
        suspect={"suspect-good", "suspect-worse"},
    )
    assert [r.node_id for r in results] == [
        "alive",
        "alive-untrusted",
        "suspect-good",
        "suspect-worse",
    ]
    assert [r.suspect for r in results] == [False, False, True, True]
    assert results[2].total > results[0].total  # its factors alone would put it first


# --------------------------------------------------------------------------- filters


@pytest.mark.parametrize(
    ("kwargs", "survivors"),
    [
        ({}, ["cheap", "dear", "slow", "tagged", "other"]),
        ({"capability_name": "translate_text"}, ["cheap", "dear", "slow", "tagged"]),
        ({"capability_name": "translate"}, []),  # exact, not a prefix
        ({"min_trust": 0.5}, ["cheap", "slow", "tagged", "other"]),
        ({"max_cost_usd": 0.005}, ["cheap", "slow", "tagged", "other"]),
        ({"max_latency_ms": 1000.0}, ["cheap", "dear", "tagged", "other"]),
        ({"tags": ["nlp"]}, ["tagged", "other"]),
        ({"tags": ["nlp", "gpu"]}, ["tagged"]),
        ({"tags": ["nlp"], "min_trust": 0.5, "max_cost_usd": 0.005}, ["tagged", "other"]),
    ],
)
def test_filters(kwargs: dict[str, object], survivors: list[str]) -> None:
    """Each filter drops exactly the candidates that fail it."""
    hits = [
        (entry("cheap", cost=0.001), 0.9),
        (entry("dear", cost=0.05), 0.9),
        (entry("slow", latency=5000.0), 0.9),
        (entry("tagged", tags=("nlp",), node_tags=("gpu",)), 0.9),
        (entry("other", name="detect_language", node_tags=("nlp",)), 0.9),
    ]
    trust = {"cheap": 0.9, "dear": 0.2, "slow": 0.9, "tagged": 0.9, "other": 0.9}
    results = rank(hits, trust=trust, load={}, top_k=20, **kwargs)  # type: ignore[arg-type]
    assert sorted(r.node_id for r in results) == sorted(survivors)


def test_min_trust_is_inclusive() -> None:
    """A peer exactly at min_trust passes."""
    assert rank([(entry("n1"), 0.9)], trust={"n1": 0.4}, load={}, min_trust=0.4)


def test_cost_at_budget_passes_and_scores_zero() -> None:
    """A price equal to the budget is within it, with cost_factor 0."""
    result = rank_one((entry("n1", cost=0.01), 0.9), max_cost_usd=0.01)
    assert result.cost_factor == 0.0


@pytest.mark.parametrize(
    ("similarity", "min_similarity", "kept"),
    [
        (MIN_SIMILARITY, MIN_SIMILARITY, True),
        (MIN_SIMILARITY - 1e-6, MIN_SIMILARITY, False),
        (0.1, 0.05, True),
        (-0.2, -1.0, True),
        (math.nan, -1.0, False),
    ],
)
def test_min_similarity(similarity: float, min_similarity: float, kept: bool) -> None:
    """Hits below min_similarity (or NaN) are dropped; a kept negative scores semantic 0."""
    results = rank([(entry("n1"), similarity)], trust={}, load={}, min_similarity=min_similarity)
    assert bool(results) is kept
    if results:
        assert 0.0 <= results[0].semantic <= 1.0


def test_name_only_query_scores_exact_matches_at_one() -> None:
    """Without a description, an exact name match is semantic 1.0 whatever the hit says,
    and min_similarity does not apply."""
    hits = [(entry("a"), 0.0), (entry("b", name="translate_textual"), 0.0)]
    results = rank(hits, trust={}, load={}, capability_name="translate_text", name_only=True)
    assert [(r.node_id, r.semantic) for r in results] == [("a", 1.0)]


def test_name_only_needs_a_name() -> None:
    """A name-only query without a name is a caller bug."""
    with pytest.raises(ValueError, match="capability_name"):
        rank([], trust={}, load={}, name_only=True)


def test_duplicate_hits_are_scored_once_with_the_best_similarity() -> None:
    """The same (node, capability) twice in the hits gives one candidate."""
    e = entry("n1")
    results = rank([(e, 0.5), (e, 0.8), (e, 0.6)], trust={}, load={})
    assert len(results) == 1
    assert results[0].semantic == pytest.approx(0.8)


def test_one_node_may_offer_several_matching_capabilities() -> None:
    """Results are (node, capability) choices; a node can appear once per capability."""
    hits = [(entry("n1", "translate_text"), 0.9), (entry("n1", "translate_document"), 0.8)]
    results = rank(hits, trust={}, load={})
    assert [r.capability_name for r in results] == ["translate_text", "translate_document"]


# --------------------------------------------------------------------------- ordering


def test_order_by_total_then_node_id_then_capability_name() -> None:
    """Ties on total are broken by node id, then by capability name; the input order
    never matters."""
    hits = [
        (entry("b", "x_cap"), 0.9),
        (entry("a", "y_cap"), 0.9),
        (entry("a", "x_cap"), 0.9),
        (entry("c", "x_cap"), 0.95),
    ]
    expected = [("c", "x_cap"), ("a", "x_cap"), ("a", "y_cap"), ("b", "x_cap")]
    for order in (hits, hits[::-1], hits[1:] + hits[:1]):
        results = rank(order, trust={}, load={}, top_k=10)
        assert [(r.node_id, r.capability_name) for r in results] == expected


def test_trust_can_outrank_similarity() -> None:
    """Semantic similarity is only one factor: a trusted, idle, cheap peer beats a slightly
    closer match from a distrusted, busy, expensive one."""
    hits = [(entry("close", cost=0.009), 0.85), (entry("trusted", cost=0.0), 0.75)]
    results = rank(
        hits,
        trust={"close": 0.2, "trusted": 0.9},
        load={"close": (3, 3), "trusted": (0, 3)},
        max_cost_usd=0.01,
    )
    assert [r.node_id for r in results] == ["trusted", "close"]


def test_semantic_decides_between_equal_peers() -> None:
    """All else equal, the closer match wins."""
    results = rank([(entry("a"), 0.6), (entry("b"), 0.7)], trust={}, load={})
    assert [r.node_id for r in results] == ["b", "a"]


# --------------------------------------------------------------------------- bounds


@pytest.mark.parametrize("top_k", [1, 5, 20])
def test_top_k_limits_the_result(top_k: int) -> None:
    """At most top_k results, the best ones (all 30 hits within RELEVANCE_MARGIN of the
    best, so the calibrated floor keeps every one)."""
    hits = [(entry(f"n{i:02d}"), 0.5 + i / 1000) for i in range(30)]
    results = rank(hits, trust={}, load={}, top_k=top_k)
    assert len(results) == top_k
    assert results[0].node_id == "n29"


@pytest.mark.parametrize("top_k", [0, -1, 21, 100])
def test_top_k_out_of_bounds(top_k: int) -> None:
    """top_k outside 1..20 is a ValueError."""
    with pytest.raises(ValueError, match="top_k"):
        rank([], trust={}, load={}, top_k=top_k)
    with pytest.raises(ValueError, match="top_k"):
        candidate_pool(top_k)


def test_top_k_must_be_an_int() -> None:
    """top_k=True or 2.0 is refused, not silently converted."""
    for bad in (True, 2.0):
        with pytest.raises(TypeError, match="top_k"):
            rank([], trust={}, load={}, top_k=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_trust": 1.5},
        {"min_trust": -0.1},
        {"max_cost_usd": -1.0},
        {"max_cost_usd": math.inf},
        {"max_latency_ms": -1.0},
        {"min_similarity": 1.5},
    ],
)
def test_bad_query_parameters(kwargs: dict[str, float]) -> None:
    """Out-of-range query parameters are refused."""
    with pytest.raises(ValueError):
        rank([], trust={}, load={}, **kwargs)  # type: ignore[arg-type]


def test_tags_must_not_be_a_string() -> None:
    """tags="nlp" would silently mean {"n", "l", "p"}."""
    with pytest.raises(TypeError, match="tags"):
        rank([], trust={}, load={}, tags="nlp")


@pytest.mark.parametrize(("top_k", "pool"), [(1, CANDIDATE_POOL_MIN), (5, 64), (20, 160)])
def test_candidate_pool(top_k: int, pool: int) -> None:
    """The index is asked for a wider pool than top_k."""
    assert candidate_pool(top_k) == pool


def test_empty_hits() -> None:
    """No hits, no candidates."""
    assert rank([], trust={}, load={}) == []


def test_rank_is_deterministic() -> None:
    """The same inputs give equal outputs."""
    hits = [(entry(f"n{i}", cost=i / 1000), 0.4 + (i % 5) / 10) for i in range(12)]
    kwargs = {"trust": {f"n{i}": (i % 3) / 3 for i in range(12)}, "load": {}, "top_k": 10}
    assert rank(hits, **kwargs) == rank(list(reversed(hits)), **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("trust_idle", "idle_first"),
    [(0.0, False), (0.001, True), (0.5, True)],
)
def test_a_node_with_no_trust_comes_after_every_trusted_one(
    trust_idle: float, idle_first: bool
) -> None:
    """An idle node nobody trusts (0) ranks after a busy node with a little trust, though
    its availability alone scores more (0.15 against 0.35 x 0.05); with any trust at all
    the factors decide as before. Found by the simulated economy: idle lying providers
    outranked busy honest ones and got tasks."""
    hits = [(entry("idle"), 1.0), (entry("busy"), 1.0)]
    ranked = rank(
        hits,
        trust={"idle": trust_idle, "busy": 0.05},
        load={"idle": (0, 3), "busy": (3, 3)},
        capability_name="translate_text",
        name_only=True,
    )
    assert ranked[0].node_id == ("idle" if idle_first else "busy")
    assert len(ranked) == 2  # ranked last, not filtered out
