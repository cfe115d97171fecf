"""The router's relevance: fusion of the cosine with BM25, and the calibrated floor that
replaced the absolute 0.3 similarity cut."""

from __future__ import annotations

import dataclasses
import math

import pytest

from meshnode.core.router import (
    DEFAULT_WEIGHTS,
    LEXICAL_WEIGHT,
    MIN_SIMILARITY,
    NOISE_MIN_POOL,
    RELEVANCE_MARGIN,
    RELEVANCE_NOISE_Z,
    rank,
    relevance,
    relevance_floor,
)
from protocol.manifest import Capability


@dataclasses.dataclass(frozen=True)
class Entry:
    node_id: str
    capability: Capability
    node_name: str = ""
    endpoint: str = ""
    node_tags: tuple[str, ...] = ()


def entry(node_id: str, name: str = "cap") -> Entry:
    return Entry(node_id, Capability(name=name, description=f"{name} of {node_id}"))


@pytest.mark.parametrize(
    ("similarity", "lexical", "expected"),
    [
        (0.5, 0.0, 0.5),
        (0.5, 1.0, 0.5 + LEXICAL_WEIGHT),
        (0.99, 1.0, 1.0),
        (-0.3, 0.0, 0.0),
        (-0.3, 1.0, LEXICAL_WEIGHT),
        (math.nan, 0.5, 0.5 * LEXICAL_WEIGHT),
        (0.4, math.nan, 0.4),
        (0.4, 2.0, 0.4 + LEXICAL_WEIGHT),
    ],
)
def test_relevance_table(similarity: float, lexical: float, expected: float) -> None:
    """relevance = min(1, max(0, cos) + LEXICAL_WEIGHT × lexical), each part clamped to
    [0, 1] and NaN counted as 0."""
    assert relevance(similarity, lexical) == pytest.approx(expected)


def pool(best: float, rest: float, n: int) -> list[float]:
    return [best] + [rest] * (n - 1)


@pytest.mark.parametrize(
    ("scores", "floor"),
    [
        ([], MIN_SIMILARITY),
        ([0.7], 0.7 - RELEVANCE_MARGIN),
        ([0.2], MIN_SIMILARITY),  # a weak best: the absolute floor decides
        ([0.05], MIN_SIMILARITY),  # below it: nothing passes
        ([0.7, 0.65, 0.3], 0.7 - RELEVANCE_MARGIN),  # under NOISE_MIN_POOL: margin only
        # A clear winner over a flat pool: the noise line, below best − margin, decides.
        (pool(0.7, 0.2, 64), 0.2 + 0.5 / 64 + RELEVANCE_NOISE_Z * 0.5 * math.sqrt(63) / 64),
        ([math.nan, 0.6], 0.6 - RELEVANCE_MARGIN),
    ],
)
def test_relevance_floor_table(scores: list[float], floor: float) -> None:
    """floor = max(MIN_SIMILARITY, min(best − margin, mean + z·std))."""
    assert relevance_floor(scores) == pytest.approx(floor)


def test_noise_term_keeps_several_that_stand_out() -> None:
    """Three strong hits over a pool of noise: the third is further than the margin from
    the best but far above the pool's noise, so it is kept."""
    scores = [0.8, 0.7, 0.6] + [0.1 + 0.001 * i for i in range(40)]
    mean = sum(scores) / len(scores)
    std = math.sqrt(sum((s - mean) ** 2 for s in scores) / len(scores))
    assert 0.8 - RELEVANCE_MARGIN > 0.6
    assert mean + RELEVANCE_NOISE_Z * std <= 0.6
    assert relevance_floor(scores) == pytest.approx(mean + RELEVANCE_NOISE_Z * std)
    assert len(scores) >= NOISE_MIN_POOL


def test_weak_query_still_returns_its_best_few_ranked() -> None:
    """A query whose best match scores 0.25 (the old 0.3 cut returned nothing) gets its
    best hits within the margin, best first, and nothing from the noise below."""
    hits = [(entry("n1", "a"), 0.25), (entry("n2", "b"), 0.22), (entry("n3", "c"), 0.18)]
    hits += [(entry(f"z{i}", f"noise{i}"), 0.05) for i in range(30)]
    results = rank(hits, trust={}, load={}, top_k=5)
    assert [r.capability_name for r in results] == ["a", "b", "c"]
    old = [h for h in hits if h[1] >= 0.3]
    assert old == []  # what the previous rule kept


def test_trust_cannot_lift_a_capability_far_below_the_best() -> None:
    """A fully trusted provider of a capability well outside the margin of the best match
    is not a candidate at all: relevance is filtered before trust is weighed."""
    hits = [(entry("stranger", "right"), 0.6), (entry("friend", "wrong"), 0.3)]
    results = rank(hits, trust={"stranger": 0.1, "friend": 1.0}, load={}, top_k=5)
    assert [r.capability_name for r in results] == ["right"]


def test_lexical_lifts_the_exact_word_and_is_shown() -> None:
    """Two capabilities equally close in meaning: the one whose words match the query
    comes first, and the candidate shows semantic, lexical and relevance; total weighs
    relevance."""
    hits = [(entry("n1", "a"), 0.5), (entry("n2", "b"), 0.5)]
    results = rank(hits, trust={}, load={}, lexical={("n2", "b"): 0.8})
    assert [r.capability_name for r in results] == ["b", "a"]
    best = results[0]
    assert (best.semantic, best.lexical) == (0.5, 0.8)
    assert best.relevance == pytest.approx(0.5 + LEXICAL_WEIGHT * 0.8)
    expected_total = (
        DEFAULT_WEIGHTS.semantic * best.relevance
        + DEFAULT_WEIGHTS.trust * best.trust
        + DEFAULT_WEIGHTS.availability * best.availability
        + DEFAULT_WEIGHTS.cost * best.cost_factor
    )
    assert best.total == pytest.approx(expected_total)
    assert results[1].lexical == 0.0


def test_lexical_weight_bounds_and_name_only() -> None:
    """lexical_weight outside [0, 1] is refused; a name-only query ignores lexical."""
    with pytest.raises(ValueError, match="lexical_weight"):
        rank([], trust={}, load={}, lexical_weight=1.5)
    results = rank(
        [(entry("n1", "a"), 0.0)],
        trust={},
        load={},
        capability_name="a",
        name_only=True,
        lexical={("n1", "a"): 1.0},
    )
    assert (results[0].relevance, results[0].lexical) == (1.0, 0.0)
