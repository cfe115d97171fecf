"""Trace context and spans, sans I/O: W3C ``traceparent`` and the span model.

Theory of operation
-------------------
A trace follows one piece of work across nodes: a delegation, the negotiations with each
candidate, the handler run on the provider (which may delegate again), the evaluation of
the result and the opinion it moved. Context crosses a hop in the W3C Trace Context form
``traceparent: 00-<trace id, 32 hex>-<parent span id, 16 hex>-<flags, 2 hex>``: in an
HTTP header, and inside a ``TaskRequest``'s ``trace_id`` field (64 characters on the wire
since protocol version 1; a traceparent is 55), since the task WebSocket has no
per-message headers. A peer that predates tracing sends any string there (it used to be a
task id prefix) and ignores what it gets: :func:`parse_traceparent` refuses anything that
is not a strict version-00 traceparent, and a refused context starts a new trace — it is
never an error.

Parsing is strict (the header is read off the wire): exactly 55 characters, version
``00``, lowercase hex only, neither id all zeros. Ids are made from an injected
``random.Random`` (:func:`new_trace_id`, :func:`new_span_id`) or, for the span a
requester opens per candidate, derived from the delegation's span and the candidate
(:func:`attempt_span_id`) so the core and the shell name the same span without sharing
state.

A :class:`Span` is plain data with bounded fields (:func:`bounded_attributes`); where it
is kept and exported is the runtime's business (:mod:`meshnode.runtime.tracing`).
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import math
import random
from collections.abc import Mapping
from typing import Any

__all__ = [
    "MAX_ATTRIBUTES",
    "MAX_ATTRIBUTE_KEY_CHARS",
    "MAX_ATTRIBUTE_VALUE_CHARS",
    "MAX_SPAN_NAME_CHARS",
    "TRACEPARENT_CHARS",
    "Span",
    "SpanKind",
    "SpanStatus",
    "TraceContext",
    "attempt_span_id",
    "bounded_attributes",
    "child_traceparent",
    "format_traceparent",
    "is_span_id",
    "is_trace_id",
    "new_span_id",
    "new_trace_id",
    "parse_traceparent",
]

TRACEPARENT_CHARS = 55
"""Length of a version-00 traceparent: ``2 + 1 + 32 + 1 + 16 + 1 + 2``."""
MAX_SPAN_NAME_CHARS = 128
"""Longest span name kept (longer names are cut)."""
MAX_ATTRIBUTES = 16
"""Most attributes one span keeps (the first ones given, in order)."""
MAX_ATTRIBUTE_KEY_CHARS = 64
"""Longest attribute key kept; longer keys drop the attribute."""
MAX_ATTRIBUTE_VALUE_CHARS = 256
"""Longest string attribute value kept (longer values are cut)."""

_HEX = frozenset("0123456789abcdef")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


def _hex(text: str, n: int) -> bool:
    return len(text) == n and all(c in _HEX for c in text)


def is_trace_id(text: object) -> bool:
    """A 32-character lowercase hex trace id, not all zeros."""
    return isinstance(text, str) and _hex(text, 32) and text != _ZERO_TRACE


def is_span_id(text: object) -> bool:
    """A 16-character lowercase hex span id, not all zeros."""
    return isinstance(text, str) and _hex(text, 16) and text != _ZERO_SPAN


@dataclasses.dataclass(frozen=True, slots=True)
class TraceContext:
    """Where a new span hangs: its trace and its parent span."""

    trace_id: str
    span_id: str
    sampled: bool = True


def parse_traceparent(header: object) -> TraceContext | None:
    """The context a ``traceparent`` value carries, or None when it is not a strict
    version-00 traceparent (wrong length or version, uppercase or non-hex, an all-zero
    id, a non-string). The caller starts a new trace on None."""
    if not isinstance(header, str) or len(header) != TRACEPARENT_CHARS:
        return None
    version, trace_id, span_id, flags = header[0:2], header[3:35], header[36:52], header[53:55]
    if header[2] != "-" or header[35] != "-" or header[52] != "-":
        return None
    if version != "00" or not _hex(flags, 2):
        return None
    if not is_trace_id(trace_id) or not is_span_id(span_id):
        return None
    return TraceContext(trace_id, span_id, bool(int(flags, 16) & 1))


def format_traceparent(context: TraceContext) -> str:
    """``context`` as a version-00 traceparent value."""
    return f"00-{context.trace_id}-{context.span_id}-{'01' if context.sampled else '00'}"


def new_trace_id(rng: random.Random) -> str:
    """A fresh, non-zero trace id from ``rng``."""
    while True:
        value = f"{rng.getrandbits(128):032x}"
        if value != _ZERO_TRACE:
            return value


def new_span_id(rng: random.Random) -> str:
    """A fresh, non-zero span id from ``rng``."""
    while True:
        value = f"{rng.getrandbits(64):016x}"
        if value != _ZERO_SPAN:
            return value


def attempt_span_id(parent_span_id: str, node: str) -> str:
    """The span id of a delegation's negotiation with ``node``: a hash of the delegation's
    span (unique per delegation) and the candidate (asked at most once per delegation), so
    the requester core (which puts it in the request) and the shell (which records the
    span) agree without sharing state."""
    digest = hashlib.blake2b(
        f"{parent_span_id}/{node}".encode(), digest_size=8, person=b"meshnode-span"
    ).hexdigest()
    return digest if digest != _ZERO_SPAN else "0" * 15 + "1"


def child_traceparent(traceparent: str, node: str) -> str:
    """The traceparent a request to ``node`` carries when the delegation's is
    ``traceparent``: same trace, the attempt's span (:func:`attempt_span_id`) as parent.
    Anything that is not a traceparent (an old-style trace id) is passed on unchanged."""
    context = parse_traceparent(traceparent)
    if context is None:
        return traceparent
    span = attempt_span_id(context.span_id, node)
    return format_traceparent(TraceContext(context.trace_id, span, context.sampled))


class SpanKind(enum.Enum):
    """OpenTelemetry's span kinds (the ones this node emits)."""

    INTERNAL = "internal"
    SERVER = "server"
    CLIENT = "client"


class SpanStatus(enum.Enum):
    """How a span ended."""

    UNSET = "unset"
    OK = "ok"
    ERROR = "error"


@dataclasses.dataclass(slots=True)
class Span:
    """One timed piece of work on one node. ``start``/``end`` are UNIX seconds; ``end`` is
    None while it runs. ``peer_id`` is the other node of a client or server span."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: SpanKind
    node_id: str
    start: float
    end: float | None = None
    status: SpanStatus = SpanStatus.UNSET
    peer_id: str | None = None
    attributes: dict[str, str | int | float | bool] = dataclasses.field(default_factory=dict)

    @property
    def context(self) -> TraceContext:
        """The context children of this span hang from."""
        return TraceContext(self.trace_id, self.span_id)

    def to_json(self) -> dict[str, Any]:
        return {
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "parent_span_id": self.parent_span_id,
            "name": self.name,
            "kind": self.kind.value,
            "node_id": self.node_id,
            "peer_id": self.peer_id,
            "start": self.start,
            "end": self.end,
            "status": self.status.value,
            "attributes": dict(self.attributes),
        }


def bounded_attributes(
    attributes: Mapping[str, object] | None,
) -> dict[str, str | int | float | bool]:
    """At most :data:`MAX_ATTRIBUTES` attributes: keys up to
    :data:`MAX_ATTRIBUTE_KEY_CHARS`, values a bool, int, finite float or string (cut to
    :data:`MAX_ATTRIBUTE_VALUE_CHARS`); None values and other types are left out."""
    out: dict[str, str | int | float | bool] = {}
    for key, value in (attributes or {}).items():
        if len(out) >= MAX_ATTRIBUTES:
            break
        if not isinstance(key, str) or not key or len(key) > MAX_ATTRIBUTE_KEY_CHARS:
            continue
        if isinstance(value, bool | int):
            out[key] = value
        elif isinstance(value, float):
            if math.isfinite(value):
                out[key] = value
        elif isinstance(value, str):
            out[key] = value[:MAX_ATTRIBUTE_VALUE_CHARS]
    return out
