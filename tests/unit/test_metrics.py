"""Core metrics (histograms, bounded label sets, task outcome mapping), the exporter's
label bounds, and the trust history's bounds."""

from __future__ import annotations

import math

import pytest

from meshnode.core.metrics import (
    LABEL_BOUNDS,
    OTHER_LABEL,
    TASK_OUTCOMES,
    TRUST_EXPORT_PEERS,
    CoreMetrics,
    Histogram,
    LabelledCounter,
)
from meshnode.core.task_wire import RejectCode, reject_reason
from meshnode.runtime.metrics import (
    MAX_DROP_REASONS,
    TrustHistory,
    bounded_reasons,
    trust_extremes,
)
from meshnode.runtime.store import ObservabilityStore


def test_histogram_buckets_are_cumulative_and_refuse_garbage() -> None:
    h = Histogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 2.0, 3.0, float("nan"), -1.0, float("inf")):
        h.observe(v)
    assert h.cumulative() == [(0.1, 2), (1.0, 3), (math.inf, 5)]
    assert (h.count, h.refused) == (5, 3)
    assert h.sum == pytest.approx(5.65)
    with pytest.raises(ValueError):
        Histogram((1.0, 1.0))
    with pytest.raises(ValueError):
        Histogram(())


def test_labelled_counter_never_grows_past_its_values() -> None:
    c = LabelledCounter(("a", "b"))
    for i in range(1_000):
        c.add(f"peer-chosen-{i}")
    c.add("a")
    assert c.counts == {"a": 1, "b": 0, OTHER_LABEL: 1_000}


@pytest.mark.parametrize(
    ("status", "reason", "outcome", "rejection"),
    [
        (1, "", "accepted", None),
        (3, "", "countered", None),
        (2, reject_reason(RejectCode.BUSY, "full"), "rejected", "busy"),
        (2, reject_reason(RejectCode.INVALID_INPUT, "no"), "rejected", "invalid_input"),
        (2, "made-up: reason", "rejected", OTHER_LABEL),
    ],
)
def test_task_answers_are_counted_by_outcome_and_reason(
    status: int, reason: str, outcome: str, rejection: str | None
) -> None:
    m = CoreMetrics()
    m.task_answered(status, reason)
    assert m.tasks.counts[outcome] == 1 and sum(m.tasks.counts.values()) == 1
    assert sum(m.rejections.counts.values()) == (0 if rejection is None else 1)
    if rejection is not None:
        assert m.rejections.counts[rejection] == 1
    m.task_finished(True)
    m.task_finished(False)
    assert (m.tasks.counts["completed"], m.tasks.counts["failed"]) == (1, 1)


def test_label_bounds_cover_the_fixed_sets() -> None:
    assert LABEL_BOUNDS["outcome"] == len(TASK_OUTCOMES)
    assert LABEL_BOUNDS["reason"] == len(RejectCode) + 1
    assert LABEL_BOUNDS["peer"] == 2 * TRUST_EXPORT_PEERS


def test_drop_reasons_are_folded_past_the_bound() -> None:
    counts = {f"reason_{i:04d}": 1 for i in range(1_000)}
    out = bounded_reasons(counts, MAX_DROP_REASONS)
    assert len(out) == MAX_DROP_REASONS + 1 <= LABEL_BOUNDS["drop"]
    assert out[OTHER_LABEL] == 1_000 - MAX_DROP_REASONS
    assert sum(out.values()) == 1_000


def test_trust_export_keeps_the_extremes_only() -> None:
    view = {f"p{i:05d}": i / 10_000 for i in range(10_000)}
    out = trust_extremes(view, TRUST_EXPORT_PEERS)
    assert len(out) == 2 * TRUST_EXPORT_PEERS
    assert out[0] == ("p09999", 0.9999) and out[-1] == ("p00000", 0.0)
    small = {"a": 0.5, "b": 0.7}
    assert trust_extremes(small, TRUST_EXPORT_PEERS) == [("b", 0.7), ("a", 0.5)]


class _View:
    """A trust view that the test sets by hand (the input TrustHistory samples)."""

    def __init__(self) -> None:
        self.scores: dict[str, float] = {}

    def __call__(self, now: float) -> dict[str, float]:
        return dict(self.scores)


def test_trust_history_samples_on_change_with_a_minimum_interval() -> None:
    """Invariant: a point only when the score moved more than epsilon, at most one per
    peer per ``min_interval_s``."""
    view = _View()
    history = TrustHistory(ObservabilityStore(), view, min_interval_s=10.0, epsilon=1e-4)
    view.scores = {"p": 0.5}
    assert history.sample(0.0) == 1
    view.scores = {"p": 0.6}
    assert history.sample(5.0) == 0  # changed, but within 10 s of the last point
    assert history.sample(12.0) == 1
    assert history.sample(40.0) == 0  # unchanged
    view.scores = {"p": 0.60001}
    assert history.sample(60.0) == 0  # under epsilon
    assert history.points("p") == [{"at": 0.0, "score": 0.5}, {"at": 12.0, "score": 0.6}]


def test_trust_history_is_bounded_per_peer_and_in_peers() -> None:
    """Invariant: at most ``max_points`` per peer (the newest kept) and ``max_peers``
    peers (a new peer replaces the one longest without a point); a restart reloads it."""
    store = ObservabilityStore()
    view = _View()
    history = TrustHistory(store, view, max_points=5, max_peers=3, min_interval_s=1.0)
    for step in range(20):
        view.scores = {"p": step / 100}
        history.sample(float(step * 2))
    points = history.points("p")
    assert [p["score"] for p in points] == [0.15, 0.16, 0.17, 0.18, 0.19]
    view.scores = {"p": 0.5, "q": 0.5, "r": 0.5}
    history.sample(100.0)
    view.scores = {"q": 0.9, "r": 0.9, "s": 0.9}  # p has gone longest without a point
    history.sample(200.0)
    assert history.peers == 3
    assert history.points("p") == []
    assert [p["score"] for p in history.points("s")] == [0.9]
    again = TrustHistory(store, view, max_points=5, max_peers=3)
    assert again.peers == 3
