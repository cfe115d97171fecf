"""Unit tests for crdt.trust: the ELO rule, the routing scale and EigenTrust on small graphs."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from crdt import (
    INITIAL_TRUST,
    TRUST_ALPHA,
    OpinionGraph,
    eigentrust,
    elo_update,
    relative_scores,
)

# --------------------------------------------------------------------------- ELO


@pytest.mark.parametrize(
    ("old", "quality", "rate", "expected"),
    [
        (0.5, 1.0, 0.1, 0.55),
        (0.5, 0.0, 0.1, 0.45),
        (0.5, 0.5, 0.1, 0.5),
        (0.0, 1.0, 0.1, 0.1),
        (1.0, 0.0, 0.1, 0.9),
        (1.0, 1.0, 0.1, 1.0),
        (0.0, 0.0, 0.1, 0.0),
        (0.3, 0.8, 0.0, 0.3),  # rate 0: nothing moves
        (0.3, 0.8, 1.0, 0.8),  # rate 1: jump to the quality
        (0.5, 2.0, 0.1, 0.55),  # quality clamped to 1
        (0.5, -3.0, 0.1, 0.45),  # quality clamped to 0
        (1.7, 1.0, 0.1, 1.0),  # old clamped to 1
        (-0.2, 0.0, 0.1, 0.0),  # old clamped to 0
        (INITIAL_TRUST, 1.0, 0.1, 0.55),
    ],
)
def test_elo_update_table(old: float, quality: float, rate: float, expected: float) -> None:
    """new = old + rate·(quality − old), inputs clamped to [0, 1], result in [0, 1]."""
    assert elo_update(old, quality, rate) == pytest.approx(expected, abs=1e-12)


def test_elo_update_converges_toward_quality() -> None:
    """Repeated outcomes of one quality move the score monotonically toward it."""
    score = INITIAL_TRUST
    history = []
    for _ in range(50):
        score = elo_update(score, 0.9)
        history.append(score)
    assert all(a < b for a, b in itertools.pairwise(history))
    assert 0.89 < history[-1] < 0.9


@pytest.mark.parametrize(
    ("old", "quality", "rate"),
    [
        (math.nan, 0.5, 0.1),
        (0.5, math.inf, 0.1),
        (0.5, 0.5, math.nan),
        (0.5, 0.5, -0.1),
        (0.5, 0.5, 1.5),
        (True, 0.5, 0.1),
    ],
)
def test_elo_update_rejects_bad_input(old: float, quality: float, rate: float) -> None:
    """Non-finite numbers, booleans and rates outside [0, 1] are programming errors."""
    with pytest.raises(ValueError, match="must"):
        elo_update(old, quality, rate)


# --------------------------------------------------------------------------- routing scale


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0.25, 0.25, 0.25, 0.25], [0.5, 0.5, 0.5, 0.5]),  # average → INITIAL_TRUST
        ([0.5, 0.5, 0.0], [0.5, 0.5, 0.0]),  # zero trust scores 0; N₊ = 2
        ([0.0, 0.0], [0.0, 0.0]),
        ([1.0], [0.5]),
        ([2 / 3, 1 / 3], [4 / 7, 0.4]),  # r = 4/3 → 4/7; r = 2/3 → 2/5
    ],
)
def test_relative_scores_table(values: list[float], expected: list[float]) -> None:
    """score = r / (1 + r) with r = t · (number of nodes holding any trust)."""
    got = relative_scores(np.asarray(values, dtype=np.float64))
    assert got.tolist() == pytest.approx(expected, abs=1e-12)
    assert ((got >= 0.0) & (got < 1.0)).all()


# --------------------------------------------------------------------------- EigenTrust

FAR = 1e9


def graph(*edges: tuple[str, str, float], excluded: tuple[str, ...] = ()) -> OpinionGraph:
    return OpinionGraph.build(sorted((o, s, w, FAR) for o, s, w in edges), excluded=excluded)


def test_lone_pretrusted_node_holds_everything() -> None:
    """With no opinions, all trust sits on the pre-trusted set, spread evenly."""
    assert eigentrust(graph(), 0.0, ["a"]).as_dict() == {"a": 1.0}
    assert eigentrust(graph(), 0.0, ["b", "a"]).as_dict() == {"a": 0.5, "b": 0.5}


def test_two_node_chain_matches_closed_form() -> None:
    """a → b, P = {a}: a = α + (1−α)·b (b is dangling), b = (1−α)·a."""
    a = TRUST_ALPHA / (1 - (1 - TRUST_ALPHA) ** 2)
    b = (1 - TRUST_ALPHA) * a
    got = eigentrust(graph(("a", "b", 0.7)), 0.0, ["a"])
    assert got.as_dict() == pytest.approx({"a": a, "b": b}, abs=1e-9)
    assert got.converged
    assert sum(got.as_dict().values()) == pytest.approx(1.0, abs=1e-12)


def test_scores_are_normalised_per_observer() -> None:
    """a rates b at 0.9 and c at 0.7: weights are the distances above the 0.5 prior (0.4
    and 0.2), so b receives twice c's share."""
    got = eigentrust(graph(("a", "b", 0.9), ("a", "c", 0.7)), 0.0, ["a"]).as_dict()
    assert got["b"] == pytest.approx(2 * got["c"], rel=1e-9)


@pytest.mark.parametrize(
    ("opinion", "trusted"),
    [(0.0, False), (0.45, False), (0.5, False), (0.5001, True), (0.9, True)],
)
def test_only_opinions_above_the_prior_pass_trust_on(opinion: float, trusted: bool) -> None:
    """An observer whose delegation failed holds 0.45 of the provider (one ELO step down
    from the 0.5 prior). That is no vote of confidence: the provider gets no trust from it.
    When every edge weighed its raw score, such a provider got a share of the observer's
    trust and outranked the unrated prior (found by the simulated economy: a failing
    provider ranked above honest ones)."""
    got = eigentrust(graph(("a", "b", opinion), ("a", "c", 0.9)), 0.0, ["a"]).as_dict()
    assert (got["b"] > 0) is trusted


def test_sybil_ring_without_inbound_trust_gets_exactly_zero() -> None:
    """A ring rating itself 1.0 and rating honest nodes, with nothing pointing in, holds 0."""
    ring = [f"s{i}" for i in range(5)]
    edges = [("h1", "h2", 0.8), ("h2", "h1", 0.6)]
    edges += [(ring[i], ring[(i + 1) % 5], 1.0) for i in range(5)]
    edges += [(r, "h2", 1.0) for r in ring]
    with_ring = eigentrust(graph(*edges), 0.0, ["h1"]).as_dict()
    without = eigentrust(graph(*edges[:2]), 0.0, ["h1"]).as_dict()
    assert all(with_ring[r] == 0.0 for r in ring)
    for node, value in without.items():
        assert with_ring[node] == pytest.approx(value, abs=1e-15)


def test_equivocators_are_cut_out() -> None:
    """An equivocator's opinions weigh nothing, opinions of it are dropped, it holds 0."""
    edges = [("a", "b", 0.5), ("a", "x", 1.0), ("x", "c", 1.0), ("b", "c", 0.2)]
    got = eigentrust(graph(*edges, excluded=("x",)), 0.0, ["a", "x"]).as_dict()
    clean = eigentrust(graph(("a", "b", 0.5), ("b", "c", 0.2)), 0.0, ["a"]).as_dict()
    assert got["x"] == 0.0
    for node, value in clean.items():
        assert got[node] == pytest.approx(value, abs=1e-15)


def test_only_equivocators_pretrusted_gives_no_trust() -> None:
    """If every pre-trusted id is an equivocator there is no basis for trust."""
    got = eigentrust(graph(("x", "b", 1.0), excluded=("x",)), 0.0, ["x"])
    assert got.as_dict() == {"b": 0.0, "x": 0.0}
    assert got.iterations == 0


def test_expired_edges_are_ignored_and_their_nodes_dropped() -> None:
    """An edge with expires_at <= now takes no part, and a node only it touched is absent."""
    g = OpinionGraph.build([("a", "b", 1.0, 10.0), ("a", "c", 1.0, 20.0)])
    at_5 = eigentrust(g, 5.0, ["a"]).as_dict()
    at_10 = eigentrust(g, 10.0, ["a"]).as_dict()
    assert at_5["b"] == pytest.approx(at_5["c"])
    assert "b" not in at_10
    assert at_10 == eigentrust(graph(("a", "c", 1.0)), 10.0, ["a"]).as_dict()


def test_zero_score_opinion_lists_the_node_but_gives_it_nothing() -> None:
    """A live opinion of 0 puts the subject in the result with trust 0."""
    got = eigentrust(graph(("a", "b", 0.0)), 0.0, ["a"]).as_dict()
    assert got == {"a": 1.0, "b": 0.0}


def test_unknown_pretrusted_ids_are_included() -> None:
    """A pre-trusted id nobody has rated still receives its restart share."""
    got = eigentrust(graph(("b", "c", 1.0)), 0.0, ["a", "b"]).as_dict()
    assert list(got) == ["a", "b", "c"]
    assert got["a"] > 0.0
    assert sum(got.values()) == pytest.approx(1.0, abs=1e-12)


def test_result_is_bit_identical_across_calls() -> None:
    """Same graph, instant and set: the same floats, in the same (sorted) order."""
    edges = [(f"n{i}", f"n{(i * 7 + 3) % 13}", ((i * 37) % 11) / 10) for i in range(13)]
    g = graph(*edges)
    first = eigentrust(g, 0.0, ["n1", "n2"]).as_dict()
    assert list(first) == sorted(first)
    for _ in range(3):
        assert eigentrust(g, 0.0, ["n2", "n1", "n2"]).as_dict() == first


@pytest.mark.parametrize(
    ("kwargs", "pretrusted"),
    [
        ({}, []),
        ({"alpha": 0.0}, ["a"]),
        ({"alpha": 1.5}, ["a"]),
        ({"tolerance": 0.0}, ["a"]),
        ({"max_iterations": 0}, ["a"]),
    ],
)
def test_eigentrust_rejects_bad_arguments(kwargs: dict[str, float], pretrusted: list[str]) -> None:
    """An empty pre-trusted set or out-of-range parameters are programming errors."""
    with pytest.raises(ValueError, match=r"must|needs"):
        eigentrust(graph(("a", "b", 1.0)), 0.0, pretrusted, **kwargs)  # type: ignore[arg-type]


def test_max_iterations_caps_the_work() -> None:
    """With one round allowed, the result is one step from p and reports not converged."""
    got = eigentrust(graph(("a", "b", 1.0), ("b", "a", 1.0)), 0.0, ["a"], max_iterations=1)
    assert got.iterations == 1
    assert not got.converged
    assert got.as_dict() == pytest.approx({"a": TRUST_ALPHA, "b": 1 - TRUST_ALPHA})


def test_cached_edges_follow_now_across_expiries() -> None:
    """The graph reuses its normalised edges only while no edge crosses its expiry, in
    either direction of time: every answer equals one from a freshly built graph."""
    edges = [("a", "b", 1.0, 10.0), ("a", "c", 0.5, 20.0), ("b", "c", 1.0, 30.0)]
    cached = OpinionGraph.build(edges)
    for now in (5.0, 9.9, 10.0, 15.0, 5.0, 25.0, 19.99, 30.0, 0.0, 31.0):
        fresh = eigentrust(OpinionGraph.build(edges), now, ["a"]).as_dict()
        assert eigentrust(cached, now, ["a"]).as_dict() == fresh, now
