"""The span store keeps at most its count and age bounds (oldest evicted) and serves one
trace's spans in start order."""

from __future__ import annotations

import random
import time

import pytest

from meshnode.core.tracing import Span, SpanKind, SpanStatus
from meshnode.runtime.store import ObservabilityStore
from meshnode.runtime.tracing import (
    MAX_SPAN_AGE_S,
    MAX_SPANS,
    Tracer,
    current_context,
    provider_span,
)


def _span(tracer: Tracer, trace_id: str, start: float, name: str = "s") -> Span:
    return Span(
        trace_id,
        f"{tracer.rng.getrandbits(64) | 1:016x}",
        None,
        name,
        SpanKind.INTERNAL,
        tracer.node_id,
        start,
        start + 0.001,
        SpanStatus.OK,
    )


def test_span_store_is_bounded_by_count_oldest_first() -> None:
    """Invariant: never more than ``max_spans`` spans after a record; the ones evicted are
    the oldest recorded."""
    store = ObservabilityStore()
    tracer = Tracer("n", store, rng=random.Random(3), max_spans=50)
    now = time.time()
    traces = [f"{i + 1:032x}" for i in range(120)]
    for i, trace_id in enumerate(traces):
        tracer.record(_span(tracer, trace_id, now + i * 0.001))
        assert store.span_count() <= 50
    assert tracer.stored == 50
    assert tracer.trace(traces[0]) == []
    assert len(tracer.trace(traces[-1])) == 1
    assert {t["trace_id"] for t in tracer.recent(200)} == set(traces[-50:])
    assert tracer.evicted == 70


def test_span_store_evicts_by_age() -> None:
    """Invariant: a span that ended more than ``max_age_s`` ago is gone after the next
    eviction; recent ones stay."""
    store = ObservabilityStore()
    tracer = Tracer("n", store, rng=random.Random(4), max_age_s=60.0)
    old, fresh = "a" * 32, "b" * 32
    tracer.record(_span(tracer, old, time.time() - 120.0))
    tracer._next_age_evict = 0.0  # the next record runs the age eviction
    tracer.record(_span(tracer, fresh, time.time()))
    assert tracer.trace(old) == []
    assert len(tracer.trace(fresh)) == 1


def test_trace_is_served_in_start_order_with_its_shape() -> None:
    store = ObservabilityStore()
    tracer = Tracer("node-1", store, rng=random.Random(5))
    trace_id = "c" * 32
    with tracer.span("root", parent=None) as root:
        pass
    with tracer.span("child", SpanKind.CLIENT, parent=root.context, peer_id="node-2") as child:
        child.attributes["k"] = "v"
    spans = tracer.trace(root.trace_id)
    assert [s["name"] for s in spans] == ["root", "child"]
    assert spans[1]["parent_span_id"] == root.span_id
    assert set(spans[1]) == {
        "trace_id",
        "span_id",
        "parent_span_id",
        "name",
        "kind",
        "node_id",
        "peer_id",
        "start",
        "end",
        "status",
        "attributes",
    }
    assert (spans[1]["kind"], spans[1]["peer_id"], spans[1]["attributes"]) == (
        "client",
        "node-2",
        {"k": "v"},
    )
    assert tracer.trace(trace_id) == []
    assert tracer.trace("not a trace id") == []


def test_a_failing_body_marks_its_span_failed_and_disabled_tracing_records_nothing() -> None:
    store = ObservabilityStore()
    tracer = Tracer("n", store, rng=random.Random(6))
    try:
        with tracer.span("boom") as span:
            raise RuntimeError("x")
    except RuntimeError:
        pass
    (row,) = tracer.trace(span.trace_id)
    assert row["status"] == "error" and row["attributes"]["error.type"] == "RuntimeError"
    off = Tracer("n", ObservabilityStore(), enabled=False)
    with off.span("quiet"):
        pass
    assert off.stored == 0


def test_default_bounds_are_what_the_docs_say() -> None:
    assert (MAX_SPANS, MAX_SPAN_AGE_S) == (20_000, 3_600.0)


@pytest.mark.parametrize(
    ("sent", "continued"),
    [
        ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", True),
        ("0123456789abcdef", False),  # what a peer without tracing sends: a task id prefix
        ("", False),
        ("00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01", False),
    ],
)
def test_a_provider_span_continues_only_a_valid_context(sent: str, continued: bool) -> None:
    """Invariant: the handler's server span hangs from the request's traceparent when it
    is one, and starts a new trace otherwise (old peers interoperate); while it runs it is
    the current context, so a nested delegation continues it."""
    tracer = Tracer("provider", ObservabilityStore(), rng=random.Random(8))
    with provider_span(tracer, sent, "cap", "requester", "task-1") as span:
        assert span is not None
        assert current_context() == span.context
    assert current_context() is None
    (row,) = tracer.trace(span.trace_id)
    assert (row["kind"], row["peer_id"], row["name"]) == ("server", "requester", "invoke_agent cap")
    if continued:
        assert (row["trace_id"], row["parent_span_id"]) == (
            "0af7651916cd43dd8448eb211c80319c",
            "b7ad6b7169203331",
        )
    else:
        assert row["parent_span_id"] is None
        assert row["attributes"]["meshnode.context"] == "new"
