"""Spans in a running node: the current context, the span store and the OTLP export.

Theory of operation
-------------------
The current trace context lives in a context variable (:func:`current_context`), so it
follows the work through ``await`` and into the tasks a coroutine starts: the HTTP
middleware sets it from a request's ``traceparent`` header, a span sets it to itself while
it runs, and a capability handler runs inside its provider span, so a handler that
delegates again continues its parent's trace. Outbound HTTP requests made while a context
is current carry it in a ``traceparent`` header (:func:`client_trace_config`); task
requests carry it in their ``trace_id`` field (see :mod:`meshnode.core.tracing`).

:class:`Tracer` opens spans (:meth:`Tracer.span`, a context manager that marks the span
failed when its body raises) and records finished ones (:meth:`Tracer.record`, for spans
timed after the fact, like a delegation's negotiation with each candidate). Finished spans
go to SQLite (:class:`~meshnode.runtime.store.ObservabilityStore`: a file in the data dir,
else memory), at most :data:`MAX_SPANS` of them and none older than
:data:`MAX_SPAN_AGE_S` (the oldest go first), served by ``GET /v1/traces/{trace_id}``.

With ``opentelemetry-sdk`` and ``opentelemetry-exporter-otlp-proto-http`` installed (the
``ops`` extra) and an endpoint configured (``NodeConfig.otlp_endpoint``, else
``OTEL_EXPORTER_OTLP_ENDPOINT``), every finished span is also handed to a batching OTLP/HTTP
exporter on its own thread (:class:`OtlpExport`). Spans that invoke another agent are
named and attributed after the OpenTelemetry GenAI conventions: ``invoke_agent
{capability}``, a client span on the requester and a server span on the provider, with
``gen_ai.operation.name``, ``gen_ai.agent.name`` and ``gen_ai.agent.id``.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import json
import os
import random
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import aiohttp

from meshnode.core.effects import AttemptOutcome
from meshnode.core.tracing import (
    MAX_ATTRIBUTE_VALUE_CHARS,
    Span,
    SpanKind,
    SpanStatus,
    TraceContext,
    attempt_span_id,
    bounded_attributes,
    format_traceparent,
    is_trace_id,
    new_span_id,
    new_trace_id,
    parse_traceparent,
)
from meshnode.runtime.logging import get_logger
from meshnode.runtime.store import ObservabilityStore, SpanRow

if TYPE_CHECKING:
    from meshnode.runtime.node import MeshNode
    from meshnode.runtime.tasks import DelegationResult

__all__ = [
    "MAX_SPANS",
    "MAX_SPANS_PER_TRACE_SERVED",
    "MAX_SPAN_AGE_S",
    "OtlpExport",
    "SpanKind",
    "Tracer",
    "client_trace_config",
    "current_context",
    "use_context",
]

MAX_SPANS = 20_000
"""Most spans a node keeps (about 500 bytes each in SQLite: 10 MB); beyond it the oldest
are evicted. A delegation makes five or six spans per node it touches, so this holds the
last few thousand delegations of a busy node."""
MAX_SPAN_AGE_S = 3_600.0
"""Seconds a finished span is kept (one hour): long enough to look into what just went
wrong, short enough that an idle node's store empties."""
EVICT_EVERY_S = 10.0
"""Seconds between evictions by age (eviction by count runs whenever the count is over)."""
MAX_SPANS_PER_TRACE_SERVED = 1_000
"""Most spans ``GET /v1/traces/{trace_id}`` returns for one trace (the earliest)."""
MAX_RECENT_TRACES = 200
"""Most trace ids ``GET /v1/traces`` lists."""

OTLP_ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"
"""The standard environment variable naming an OTLP collector (``http://host:4318``)."""
OTLP_TRACES_PATH = "/v1/traces"
"""Appended to a base endpoint from :data:`OTLP_ENDPOINT_ENV`, as the OTLP/HTTP spec says."""

TRACEPARENT = "traceparent"

_current: contextvars.ContextVar[TraceContext | None] = contextvars.ContextVar(
    "meshnode_trace_context", default=None
)

log = get_logger("meshnode.tracing")


def current_context() -> TraceContext | None:
    """The trace context of the work this coroutine does, if any."""
    return _current.get()


@contextlib.contextmanager
def use_context(context: TraceContext | None) -> Iterator[None]:
    """Make ``context`` current for the body (None: no trace)."""
    token = _current.set(context)
    try:
        yield
    finally:
        _current.reset(token)


def client_trace_config() -> aiohttp.TraceConfig:
    """An aiohttp trace config that puts the current context in every request's
    ``traceparent`` header (unless the request sets one)."""

    async def on_request_start(
        session: aiohttp.ClientSession, ctx: SimpleNamespace, params: Any
    ) -> None:
        context = _current.get()
        if context is not None and TRACEPARENT not in params.headers:
            params.headers[TRACEPARENT] = format_traceparent(context)

    config = aiohttp.TraceConfig()
    config.on_request_start.append(on_request_start)
    return config


class Tracer:
    """Opens, records and serves one node's spans (see the module docstring)."""

    def __init__(
        self,
        node_id: str,
        store: ObservabilityStore,
        *,
        enabled: bool = True,
        rng: random.Random | None = None,
        export: OtlpExport | None = None,
        max_spans: int = MAX_SPANS,
        max_age_s: float = MAX_SPAN_AGE_S,
    ) -> None:
        self.node_id = node_id
        self.enabled = enabled
        self._store = store
        self.rng = rng or random.Random()
        self._export = export
        self.max_spans = max_spans
        self.max_age_s = max_age_s
        self._count = store.span_count()
        self._next_age_evict = 0.0
        self.recorded = 0
        self.evicted = 0
        self.failed = 0

    def new_context(self, parent: TraceContext | None) -> tuple[str, str]:
        """``(trace_id, span_id)`` for a span under ``parent`` (a new trace on None)."""
        trace_id = parent.trace_id if parent is not None else new_trace_id(self.rng)
        return trace_id, new_span_id(self.rng)

    @contextlib.contextmanager
    def span(
        self,
        name: str,
        kind: SpanKind = SpanKind.INTERNAL,
        *,
        parent: TraceContext | bool | None = True,
        peer_id: str | None = None,
        attributes: Mapping[str, object] | None = None,
    ) -> Iterator[Span]:
        """Run the body inside a new span, current while it runs. ``parent`` True (the
        default) hangs it from the current context; None starts a new trace. The span ends
        when the body does, failed (status error) if it raised."""
        if parent is True:
            parent = _current.get()
        elif parent is False:
            parent = None
        assert parent is None or isinstance(parent, TraceContext)
        trace_id, span_id = self.new_context(parent)
        span = Span(
            trace_id,
            span_id,
            parent.span_id if parent is not None else None,
            name,
            kind,
            self.node_id,
            time.time(),
            peer_id=peer_id,
            attributes=bounded_attributes(attributes),
        )
        token = _current.set(span.context)
        try:
            yield span
        except BaseException as exc:
            span.status = SpanStatus.ERROR
            span.attributes = bounded_attributes(
                {**span.attributes, "error.type": type(exc).__name__}
            )
            raise
        finally:
            _current.reset(token)
            span.end = time.time()
            if span.status is SpanStatus.UNSET:
                span.status = SpanStatus.OK
            self.record(span)

    def record(self, span: Span) -> None:
        """Keep a finished span (and export it). Never raises: a span that cannot be
        stored is counted in :attr:`failed`."""
        if not self.enabled:
            return
        try:
            self._store.add_spans([_row(span)])
            self._count += 1
            self.recorded += 1
            now = time.time()
            if self._count > self.max_spans or now >= self._next_age_evict:
                self._next_age_evict = now + EVICT_EVERY_S
                gone = self._store.evict_spans(keep=self.max_spans, older_than=now - self.max_age_s)
                self.evicted += gone
                self._count = self._store.span_count()
        except Exception as exc:  # a full disk must not fail the work being traced
            self.failed += 1
            log.warning("span_not_stored", error=f"{type(exc).__name__}: {exc}")
            return
        if self._export is not None:
            self._export.export(span)

    def trace(self, trace_id: str) -> list[dict[str, Any]]:
        """This node's spans of ``trace_id`` (empty for an id that is not one)."""
        if not is_trace_id(trace_id):
            return []
        return [_span_json(row) for row in self._store.trace(trace_id, MAX_SPANS_PER_TRACE_SERVED)]

    def recent(self, limit: int) -> list[dict[str, Any]]:
        """The newest traces: id, its earliest span here (the root, as far as this node
        knows) with name and status, and how many spans this node holds."""
        out: list[dict[str, Any]] = []
        for trace_id, newest, count in self._store.recent_traces(min(limit, MAX_RECENT_TRACES)):
            rows = self._store.trace(trace_id, 1)
            root = _span_json(rows[0]) if rows else None
            out.append(
                {
                    "trace_id": trace_id,
                    "root": root["name"] if root else None,
                    "status": root["status"] if root else None,
                    "start": root["start"] if root else None,
                    "latest": newest,
                    "spans": count,
                }
            )
        return out

    @property
    def stored(self) -> int:
        return self._count

    def close(self) -> None:
        if self._export is not None:
            self._export.close()


def _row(span: Span) -> SpanRow:
    return (
        span.trace_id,
        span.span_id,
        span.parent_span_id,
        span.name,
        span.kind.value,
        span.node_id,
        span.peer_id,
        span.start,
        span.end,
        span.status.value,
        json.dumps(span.attributes, separators=(",", ":")),
    )


def _span_json(row: SpanRow) -> dict[str, Any]:
    trace_id, span_id, parent, name, kind, node_id, peer_id, start, end, status, attrs = row
    return {
        "trace_id": trace_id,
        "span_id": span_id,
        "parent_span_id": parent,
        "name": name,
        "kind": kind,
        "node_id": node_id,
        "peer_id": peer_id,
        "start": start,
        "end": end,
        "status": status,
        "attributes": json.loads(attrs),
    }


def otlp_endpoint(configured: str | None) -> str | None:
    """The OTLP/HTTP traces URL: ``configured`` as given, else
    :data:`OTLP_ENDPOINT_ENV` with :data:`OTLP_TRACES_PATH` appended, else None."""
    if configured:
        return configured
    base = os.environ.get(OTLP_ENDPOINT_ENV, "").strip()
    if not base:
        return None
    return base.rstrip("/") + OTLP_TRACES_PATH


class OtlpExport:
    """Hands finished spans to OpenTelemetry's batching OTLP/HTTP exporter (protobuf over
    HTTP, on the SDK's own thread). Build it with :meth:`create`, which returns None when
    the SDK is not installed."""

    def __init__(self, processor: Any, resource: Any, node_id: str) -> None:
        self._processor = processor
        self._resource = resource
        self._node_id = node_id

    @classmethod
    def create(cls, endpoint: str, node_id: str, service_name: str) -> OtlpExport | None:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError:
            log.warning("otlp_unavailable", fix='pip install "meshnode[ops]"')
            return None
        processor = BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint))
        resource = Resource.create(
            {"service.name": service_name or "meshnode", "service.instance.id": node_id}
        )
        return cls(processor, resource, node_id)

    def export(self, span: Span) -> None:
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.trace import SpanContext, Status, StatusCode, TraceFlags
        from opentelemetry.trace import SpanKind as OtelKind

        try:
            context = SpanContext(
                int(span.trace_id, 16),
                int(span.span_id, 16),
                is_remote=False,
                trace_flags=TraceFlags(TraceFlags.SAMPLED),
            )
            parent = None
            if span.parent_span_id is not None:
                parent = SpanContext(
                    int(span.trace_id, 16),
                    int(span.parent_span_id, 16),
                    is_remote=True,
                    trace_flags=TraceFlags(TraceFlags.SAMPLED),
                )
            kind = {
                SpanKind.INTERNAL: OtelKind.INTERNAL,
                SpanKind.SERVER: OtelKind.SERVER,
                SpanKind.CLIENT: OtelKind.CLIENT,
            }[span.kind]
            code = {
                SpanStatus.UNSET: StatusCode.UNSET,
                SpanStatus.OK: StatusCode.OK,
                SpanStatus.ERROR: StatusCode.ERROR,
            }[span.status]
            attributes: dict[str, Any] = {"meshnode.node_id": span.node_id, **span.attributes}
            if span.peer_id is not None:
                attributes["meshnode.peer_id"] = span.peer_id
            readable = ReadableSpan(
                name=span.name,
                context=context,
                parent=parent,
                resource=self._resource,
                attributes=attributes,
                kind=kind,
                status=Status(code),
                start_time=int(span.start * 1e9),
                end_time=int((span.end or span.start) * 1e9),
            )
            self._processor.on_end(readable)
        except Exception as exc:  # an exporter's failure never fails the work
            log.warning("span_not_exported", error=f"{type(exc).__name__}: {exc}")

    def close(self) -> None:
        """Send what is queued (the SDK waits up to its own export timeout) and stop."""
        with contextlib.suppress(Exception):
            self._processor.shutdown()


async def traced_delegation(
    node: MeshNode,
    tracer: Tracer,
    capability: str | None,
    trace_id: str,
    run: Callable[[str], Awaitable[DelegationResult]],
) -> DelegationResult:
    """Run one delegation (``run(traceparent)``) inside its span, then record what it did:
    a client span per candidate asked (named by the GenAI conventions, with the id the
    request carried, :func:`~meshnode.core.tracing.attempt_span_id`, so the provider's
    span hangs from it), the evaluation of the result and the opinion it moved. The
    result, or the :class:`~meshnode.errors.DelegationError`, carries the trace id."""
    from meshnode.errors import DelegationError

    parent = parse_traceparent(trace_id) if trace_id else None
    if parent is None:
        parent = _current.get()
    label = capability or "by description"
    with tracer.span(
        f"delegate {label}",
        SpanKind.INTERNAL,
        parent=parent,
        attributes={"meshnode.capability": label},
    ) as span:
        try:
            result = await run(format_traceparent(span.context))
        except DelegationError as exc:
            _record_attempts(tracer, span, label, exc.attempts)
            exc.trace_id = span.trace_id
            span.status = SpanStatus.ERROR
            span.attributes["meshnode.error"] = exc.reason[:MAX_ATTRIBUTE_VALUE_CHARS]
            raise
        _record_attempts(tracer, span, result.capability, result.attempts)
        now = time.time()
        tracer.record(
            Span(
                span.trace_id,
                new_span_id(tracer.rng),
                span.span_id,
                f"evaluate {result.capability}",
                SpanKind.INTERNAL,
                tracer.node_id,
                now,
                now,
                SpanStatus.OK,
                peer_id=result.provider,
                attributes=bounded_attributes(
                    {"meshnode.quality": result.quality, "meshnode.task_id": result.task_id}
                ),
            )
        )
        if result.quality is not None:
            score, outcomes = node.opinion(result.provider)
            tracer.record(
                Span(
                    span.trace_id,
                    new_span_id(tracer.rng),
                    span.span_id,
                    "opinion",
                    SpanKind.INTERNAL,
                    tracer.node_id,
                    now,
                    time.time(),
                    SpanStatus.OK,
                    peer_id=result.provider,
                    attributes={
                        "meshnode.quality": result.quality,
                        "meshnode.opinion": score,
                        "meshnode.outcomes": outcomes,
                    },
                )
            )
        span.attributes["meshnode.task_id"] = result.task_id
        span.attributes["meshnode.provider"] = result.provider
        return dataclasses.replace(result, trace_id=span.trace_id)


def _record_attempts(tracer: Tracer, parent: Span, capability: str, attempts: Any) -> None:
    for attempt in attempts:
        if attempt.sent_at is None:
            continue  # skipped (circuit open): nothing was sent
        delivered = attempt.outcome is AttemptOutcome.DELIVERED
        tracer.record(
            Span(
                parent.trace_id,
                attempt_span_id(parent.span_id, attempt.node),
                parent.span_id,
                f"invoke_agent {capability}",
                SpanKind.CLIENT,
                tracer.node_id,
                attempt.sent_at,
                attempt.ended_at,
                SpanStatus.OK if delivered else SpanStatus.ERROR,
                peer_id=attempt.node,
                attributes=bounded_attributes(
                    {
                        "gen_ai.operation.name": "invoke_agent",
                        "gen_ai.agent.name": capability,
                        "gen_ai.agent.id": attempt.node,
                        "meshnode.outcome": attempt.outcome.value,
                        "meshnode.detail": attempt.detail,
                    }
                ),
            )
        )


@contextlib.contextmanager
def provider_span(
    tracer: Tracer | None, traceparent: str, capability: str, requester: str, task_id: str
) -> Iterator[Span | None]:
    """The server span of a handler run: under the request's traceparent (a new trace when
    it is missing or not one), current while the handler runs, so a handler that
    delegates continues the trace."""
    if tracer is None:
        yield None
        return
    parent = parse_traceparent(traceparent)
    with tracer.span(
        f"invoke_agent {capability}",
        SpanKind.SERVER,
        parent=parent,
        peer_id=requester,
        attributes={
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": capability,
            "gen_ai.agent.id": tracer.node_id,
            "meshnode.task_id": task_id,
            "meshnode.context": "continued" if parent is not None else "new",
        },
    ) as span:
        yield span
