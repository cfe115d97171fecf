"""Trace context parsing, child contexts and span attribute bounds (sans I/O)."""

from __future__ import annotations

import random

import pytest

from meshnode.core.tracing import (
    MAX_ATTRIBUTE_VALUE_CHARS,
    MAX_ATTRIBUTES,
    TraceContext,
    attempt_span_id,
    bounded_attributes,
    child_traceparent,
    format_traceparent,
    new_span_id,
    new_trace_id,
    parse_traceparent,
)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
GOOD = f"00-{TRACE}-{SPAN}-01"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (GOOD, TraceContext(TRACE, SPAN, True)),
        (f"00-{TRACE}-{SPAN}-00", TraceContext(TRACE, SPAN, False)),
        (f"00-{TRACE}-{SPAN}-03", TraceContext(TRACE, SPAN, True)),  # unknown flag bits
        (f"01-{TRACE}-{SPAN}-01", None),  # only version 00 is parsed strictly
        (f"ff-{TRACE}-{SPAN}-01", None),  # ff is forbidden
        (f"00-{TRACE.upper()}-{SPAN}-01", None),  # uppercase hex
        (f"00-{'0' * 32}-{SPAN}-01", None),  # all-zero trace id
        (f"00-{TRACE}-{'0' * 16}-01", None),  # all-zero span id
        (f"00-{TRACE[:-1]}-{SPAN}-01", None),  # short trace id
        (f"00-{TRACE}-{SPAN}0-01", None),  # long span id
        (f"00-{TRACE}-{SPAN}-01-extra", None),  # trailing fields (version 00 has none)
        (f"00_{TRACE}_{SPAN}_01", None),  # wrong separators
        (f"00-{TRACE[:-1]}g-{SPAN}-01", None),  # not hex
        (f"00-{TRACE}-{SPAN}-0g", None),  # flags not hex
        (f" 00-{TRACE}-{SPAN}-0", None),  # right length, shifted
        ("", None),
        (None, None),
        (12345, None),
        ("x" * 10_000, None),
        ("00-" + "é" * 32 + f"-{SPAN}-01", None),  # non-ASCII
    ],
)
def test_traceparent_parsing_is_strict(header: object, expected: TraceContext | None) -> None:
    """Invariant: only a version-00 traceparent with lowercase hex, the right lengths and
    non-zero ids yields a context; anything else is None (a new trace), never an error."""
    assert parse_traceparent(header) == expected


def test_format_round_trips_and_fresh_ids_are_valid() -> None:
    rng = random.Random(7)
    for _ in range(200):
        context = TraceContext(new_trace_id(rng), new_span_id(rng))
        assert parse_traceparent(format_traceparent(context)) == context


class _Zero(random.Random):
    """Returns 0 the first time it is asked for bits, then defers to a real stream."""

    def __init__(self) -> None:
        super().__init__(1)
        self.calls = 0

    def getrandbits(self, k: int) -> int:
        self.calls += 1
        return 0 if self.calls == 1 else super().getrandbits(k)


def test_zero_ids_are_never_issued() -> None:
    assert new_trace_id(_Zero()) != "0" * 32
    assert new_span_id(_Zero()) != "0" * 16


def test_child_traceparent_names_the_attempt_span_and_passes_old_ids_through() -> None:
    """Invariant: a request to a candidate carries the delegation's trace with the
    attempt's span as parent (the same id the shell records); a trace id that is not a
    traceparent (what peers without tracing send) goes on unchanged."""
    child = parse_traceparent(child_traceparent(GOOD, "node-b"))
    assert child is not None
    assert child.trace_id == TRACE
    assert child.span_id == attempt_span_id(SPAN, "node-b")
    assert child.span_id not in (SPAN, attempt_span_id(SPAN, "node-c"))
    assert child_traceparent("0123456789abcdef", "node-b") == "0123456789abcdef"
    assert child_traceparent("", "node-b") == ""


def test_attributes_are_bounded() -> None:
    """Invariant: at most MAX_ATTRIBUTES attributes, string values cut, keys too long or
    values of other types (or non-finite floats) left out."""
    many = {f"k{i}": i for i in range(MAX_ATTRIBUTES * 3)}
    assert len(bounded_attributes(many)) == MAX_ATTRIBUTES
    out = bounded_attributes(
        {
            "long": "x" * (MAX_ATTRIBUTE_VALUE_CHARS * 4),
            "k" * 65: "dropped",
            "nan": float("nan"),
            "list": [1, 2],
            "none": None,
            "ok": 1.5,
            "flag": True,
        }
    )
    assert out == {"long": "x" * MAX_ATTRIBUTE_VALUE_CHARS, "ok": 1.5, "flag": True}


def _s(span_id: str, parent: str | None, start: float, end: float, name: str) -> dict[str, object]:
    return {
        "trace_id": TRACE,
        "span_id": span_id,
        "parent_span_id": parent,
        "name": name,
        "kind": "internal",
        "node_id": "node-a" if span_id < "5" else "node-b",
        "peer_id": None,
        "start": start,
        "end": end,
        "status": "ok",
        "attributes": {},
    }


def test_timeline_indents_by_parent_in_start_order_and_roots_orphans() -> None:
    """Invariant: children print under their parent, earlier first, two spaces deeper; a
    span whose parent was not collected prints as a root; offsets count from the first
    span, in milliseconds."""
    from meshnode.cli import trace_timeline

    spans = [
        _s("1", None, 100.0, 100.5, "root"),
        _s("3", "1", 100.2, 100.3, "second"),
        _s("2", "1", 100.1, 100.15, "first"),
        _s("6", "2", 100.12, 100.13, "grandchild"),
        _s("7", "f" * 16, 100.4, 100.45, "orphan"),
    ]
    lines = trace_timeline(spans, {"node-a": "a", "node-b": "b"})
    names = [line.split(" ms ", 2)[2] for line in lines]
    assert names == [
        " root [internal] @a ok",
        "   first [internal] @a ok",
        "     grandchild [internal] @b ok",
        "   second [internal] @a ok",
        " orphan [internal] @b ok",
    ]
    assert lines[1].split(" ms")[0].strip() == "100.0"
    assert lines[0].split(" ms ")[1].strip() == "500.0"
    assert trace_timeline([], {}) == []


@pytest.mark.parametrize(
    ("overrides", "ok"),
    [
        ({}, True),
        ({"otlp_endpoint": "http://127.0.0.1:4318/v1/traces"}, True),
        ({"otlp_endpoint": "https://collector.example/v1/traces"}, True),
        ({"otlp_endpoint": "collector:4318"}, False),
        ({"otlp_endpoint": ""}, False),
        ({"metrics": 1}, False),
        ({"tracing": "yes"}, False),
        ({"metrics": False, "tracing": False}, True),
    ],
)
def test_observability_config_is_validated(overrides: dict[str, object], ok: bool) -> None:
    from meshnode import NodeConfig
    from meshnode.errors import ConfigError

    if ok:
        NodeConfig(**overrides)  # type: ignore[arg-type]
    else:
        with pytest.raises(ConfigError):
            NodeConfig(**overrides)  # type: ignore[arg-type]
