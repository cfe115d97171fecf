"""Prometheus export of a node's metrics, and the history of its trust view.

Theory of operation
-------------------
Each :class:`~meshnode.runtime.node.MeshNode` has its own ``CollectorRegistry`` holding one
:class:`NodeCollector`, so several nodes in one process never share a metric. Nothing is
copied into Prometheus objects as it happens: the cores keep plain counters and
histograms (:mod:`meshnode.core.metrics`, the counter tables of membership, the mesh and
the task side) and the collector reads them when ``GET /metrics`` is scraped, so an
unscraped node pays nothing for the export.

Gossip metrics follow memberlist's names (``memberlist.msg.alive`` →
``meshnode_msg_alive_total``, ``memberlist.health.score`` → ``meshnode_health_score``,
``memberlist.probeNode`` → ``meshnode_probe_duration_seconds``,
``memberlist.pushPullNode`` → ``meshnode_push_pull_duration_seconds``), so dashboards
built for Consul translate by prefix. Every label has a documented bound
(:data:`meshnode.core.metrics.LABEL_BOUNDS`); no label carries a value a peer chooses
except ``peer`` on ``meshnode_trust_score``, which is limited to the
:data:`~meshnode.core.metrics.TRUST_EXPORT_PEERS` most and least trusted peers.

:class:`TrustHistory` samples the trust view every :data:`TRUST_SAMPLE_INTERVAL_S` and keeps
a point per peer whose score moved by more than :data:`TRUST_CHANGE_EPSILON` since its last
point, at most :data:`MAX_TRUST_POINTS_PER_PEER` points per peer (oldest dropped) for at
most :data:`MAX_TRUST_HISTORY_PEERS` peers (the peer whose history went longest without a
new point is dropped for a new one).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import aiohttp
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from meshnode.core.breaker import BreakerState
from meshnode.core.member import MemberState
from meshnode.core.metrics import (
    LABEL_BOUNDS,
    OTHER_LABEL,
    TCP_FALLBACK_RESULTS,
    TRUST_EXPORT_PEERS,
    Histogram,
)
from meshnode.runtime.logging import get_logger
from meshnode.runtime.store import ObservabilityStore

if TYPE_CHECKING:
    from meshnode.runtime.node import MeshNode

log = get_logger("meshnode.metrics")

__all__ = [
    "MAX_TRUST_HISTORY_PEERS",
    "MAX_TRUST_POINTS_PER_PEER",
    "METRIC_NAMES",
    "TRUST_CHANGE_EPSILON",
    "TRUST_SAMPLE_INTERVAL_S",
    "NodeCollector",
    "Observability",
    "TrustHistory",
    "node_registry",
    "render",
]

PREFIX = "meshnode_"

METRIC_NAMES: dict[str, tuple[str, ...]] = {
    "meshnode_msg_alive_total": (),
    "meshnode_msg_suspect_total": (),
    "meshnode_msg_dead_total": (),
    "meshnode_health_score": (),
    "meshnode_members": ("state",),
    "meshnode_probe_duration_seconds": (),
    "meshnode_tcp_fallback_total": ("result",),
    "meshnode_push_pull_duration_seconds": (),
    "meshnode_packets_total": ("transport", "direction"),
    "meshnode_bytes_total": ("transport", "direction"),
    "meshnode_dropped_packets_total": ("drop",),
    "meshnode_manifests": (),
    "meshnode_index_entries": (),
    "meshnode_embedding_queue": (),
    "meshnode_embedding_duration_seconds": (),
    "meshnode_discovery_duration_seconds": (),
    "meshnode_tasks_total": ("outcome",),
    "meshnode_task_rejections_total": ("reason",),
    "meshnode_delegations_total": ("outcome",),
    "meshnode_delegation_duration_seconds": (),
    "meshnode_breakers": ("breaker",),
    "meshnode_ledger_records": (),
    "meshnode_ledger_observers": (),
    "meshnode_trust_score": ("peer",),
    "meshnode_spans_stored": (),
    "meshnode_events_total": ("counter",),
}
"""Every metric family :class:`NodeCollector` yields, with its labels (each bounded in
:data:`~meshnode.core.metrics.LABEL_BOUNDS`)."""

MAX_DROP_REASONS = LABEL_BOUNDS["drop"] - 1
"""Distinct drop reasons exported by name; the rest are summed under ``other``."""

TRUST_SAMPLE_INTERVAL_S = 10.0
"""Seconds between samples of the trust view (also the least time between two points of
one peer). The view is cached between ledger changes, so a sample of an idle node is a
dictionary comparison."""
TRUST_CHANGE_EPSILON = 1e-4
"""Smallest change of a peer's score that makes a new point."""
MAX_TRUST_POINTS_PER_PEER = 360
"""Points kept per peer (an hour of changes at one per sample); the oldest go first."""
MAX_TRUST_HISTORY_PEERS = 1_024
"""Peers with a history (about 10 KB of SQLite each at the cap); a new peer replaces the
one whose history went longest without a point."""


def _histogram(name: str, doc: str, hist: Histogram) -> HistogramMetricFamily:
    buckets = [
        ("+Inf" if math.isinf(bound) else repr(float(bound)), float(count))
        for bound, count in hist.cumulative()
    ]
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=hist.sum)


class NodeCollector(Collector):
    """Reads one node's cores and runtime at scrape time (see the module docstring)."""

    def __init__(self, node: MeshNode) -> None:
        self._node = node

    def describe(self) -> Iterable[Metric]:
        return ()  # collected live: nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        node = self._node
        if node._core is None:  # not started, or closed
            return
        core = node.core
        membership = core.membership
        mc = membership.counters
        now = time.time()
        for kind in ("alive", "suspect", "dead"):
            c = CounterMetricFamily(
                f"meshnode_msg_{kind}",
                f"{kind.capitalize()} messages received (memberlist.msg.{kind})",
            )
            c.add_metric([], float(mc.get(f"recv_{kind}", 0)))
            yield c
        yield GaugeMetricFamily(
            "meshnode_health_score",
            "Lifeguard local health, 0 (healthy) to awareness_max_multiplier - 1 (8 at most)",
            value=float(membership.health),
        )
        members = GaugeMetricFamily("meshnode_members", "Known members by state", labels=["state"])
        for state in MemberState:
            members.add_metric([state.name.lower()], float(membership.count(state)))
        yield members
        yield _histogram(
            "meshnode_probe_duration_seconds",
            "Round trip of acked probes (memberlist.probeNode)",
            membership.probe_seconds,
        )
        fallback = CounterMetricFamily(
            "meshnode_tcp_fallback",
            "TCP fallback pings run beside indirect probes, by result: ok (the only ack: "
            "no suspicion), redundant (a UDP or relayed ack came first), late, failed, "
            "skipped (the concurrency cap was reached)",
            labels=["result"],
        )
        for result in TCP_FALLBACK_RESULTS:
            fallback.add_metric([result], float(mc.get(f"tcp_fallback_{result}", 0)))
        yield fallback
        metrics = core.metrics
        yield _histogram(
            "meshnode_push_pull_duration_seconds",
            "Push-pull exchanges this node started, all legs (memberlist.pushPullNode)",
            metrics.push_pull,
        )
        yield from self._transport(node)
        yield GaugeMetricFamily(
            "meshnode_manifests", "Signed manifests held", value=float(len(core.manifests))
        )
        discovery = node._discovery
        index = getattr(discovery, "index", None) if discovery is not None else None
        yield GaugeMetricFamily(
            "meshnode_index_entries",
            "Capabilities in the discovery index",
            value=float(len(index)) if index is not None else 0.0,
        )
        yield GaugeMetricFamily(
            "meshnode_embedding_queue",
            "Manifests waiting to be embedded and indexed",
            value=float(discovery.queue_depth if discovery is not None else 0),
        )
        yield _histogram(
            "meshnode_embedding_duration_seconds",
            "One embedding batch (manifest texts) on the embedding thread",
            metrics.embedding,
        )
        yield _histogram(
            "meshnode_discovery_duration_seconds",
            "Discovery queries against the local index",
            metrics.discovery,
        )
        tasks = CounterMetricFamily(
            "meshnode_tasks",
            "Task requests answered and results sent as a provider, by outcome",
            labels=["outcome"],
        )
        for outcome, n in metrics.tasks.counts.items():
            if outcome != OTHER_LABEL:
                tasks.add_metric([outcome], float(n))
        yield tasks
        rejections = CounterMetricFamily(
            "meshnode_task_rejections",
            "Task requests refused as a provider, by reason code",
            labels=["reason"],
        )
        for reason, n in metrics.rejections.counts.items():
            rejections.add_metric([reason], float(n))
        yield rejections
        delegations = CounterMetricFamily(
            "meshnode_delegations", "Delegations ended, by outcome", labels=["outcome"]
        )
        tc = core.task_counters
        delegations.add_metric(["ok"], float(tc["delegations_ok"]))
        delegations.add_metric(["failed"], float(tc["delegations_failed"]))
        yield delegations
        yield _histogram(
            "meshnode_delegation_duration_seconds",
            "Whole delegations, start to end (any outcome)",
            metrics.delegations,
        )
        breakers = GaugeMetricFamily(
            "meshnode_breakers", "Peers' circuit breakers by state", labels=["breaker"]
        )
        circuits = dict.fromkeys(BreakerState, 0)
        for snapshot in core.breakers.snapshot(now).values():
            circuits[snapshot.state] += 1
        for circuit, n in circuits.items():
            breakers.add_metric([circuit.value], float(n))
        yield breakers
        yield GaugeMetricFamily(
            "meshnode_ledger_records", "Reputation records held", value=float(len(core.ledger))
        )
        yield GaugeMetricFamily(
            "meshnode_ledger_observers",
            "Observers with records held",
            value=float(len(core.ledger.observers())),
        )
        trust = GaugeMetricFamily(
            "meshnode_trust_score",
            f"Trust of the {TRUST_EXPORT_PEERS} most and least trusted peers",
            labels=["peer"],
        )
        for peer, score in trust_extremes(core.trust_view(now), TRUST_EXPORT_PEERS):
            trust.add_metric([peer], score)
        yield trust
        tracer = node.tracer
        yield GaugeMetricFamily(
            "meshnode_spans_stored",
            "Spans held for GET /v1/traces",
            value=float(tracer.stored if tracer is not None else 0),
        )
        events = CounterMetricFamily(
            "meshnode_events",
            "Every counter of the membership, mesh and task cores and the task channels "
            "(WebSocket frames sent, received and dropped), by name",
            labels=["counter"],
        )
        for table, counters in (
            ("membership", mc),
            ("mesh", core.counters),
            ("tasks", core.task_counters),
            ("channels", _channel_counters(node)),
        ):
            for name in sorted(counters)[: LABEL_BOUNDS["counter"]]:
                events.add_metric([f"{table}.{name}"], float(counters[name]))
        yield events

    def _transport(self, node: MeshNode) -> Iterator[Metric]:
        packets = CounterMetricFamily(
            "meshnode_packets",
            "UDP datagrams, and HTTP requests served and made, by direction",
            labels=["transport", "direction"],
        )
        volume = CounterMetricFamily(
            "meshnode_bytes",
            "UDP datagram bytes, and HTTP body bytes served and fetched, by direction",
            labels=["transport", "direction"],
        )
        udp = node.udp
        if udp is not None:
            packets.add_metric(["udp", "sent"], float(udp.sent))
            packets.add_metric(["udp", "received"], float(udp.received))
            volume.add_metric(["udp", "sent"], float(udp.bytes_sent))
            volume.add_metric(["udp", "received"], float(udp.bytes_received))
        tcp = node.tcp_counts
        packets.add_metric(["tcp", "sent"], float(tcp["requests_sent"]))
        packets.add_metric(["tcp", "received"], float(tcp["requests_received"]))
        volume.add_metric(["tcp", "sent"], float(tcp["bytes_sent"]))
        volume.add_metric(["tcp", "received"], float(tcp["bytes_received"]))
        yield packets
        yield volume
        drops = CounterMetricFamily(
            "meshnode_dropped_packets",
            "Datagrams, bodies and frames dropped, by reason",
            labels=["drop"],
        )
        reasons: dict[str, int] = {}
        if udp is not None:
            for reason, n in udp.dropped.items():
                reasons[f"udp_{reason}"] = reasons.get(f"udp_{reason}", 0) + n
        for reason, n in node.drops.items():
            reasons[reason] = reasons.get(reason, 0) + n
        for reason, n in bounded_reasons(reasons, MAX_DROP_REASONS).items():
            drops.add_metric([reason], float(n))
        yield drops


def _channel_counters(node: MeshNode) -> dict[str, int]:
    """The task service's own counters (frames, connections), without the core's."""
    tasks = node.tasks_or_none
    if tasks is None:
        return {}
    own = node.core.task_counters
    return {k: v for k, v in tasks.counters.items() if k not in own}


def bounded_reasons(counts: Mapping[str, int], limit: int) -> dict[str, int]:
    """``counts`` with at most ``limit`` names (the first ones, by name) and the rest
    summed under ``other``."""
    out: dict[str, int] = {}
    other = 0
    for i, name in enumerate(sorted(counts)):
        if i < limit and name != OTHER_LABEL:
            out[name] = counts[name]
        else:
            other += counts[name]
    if other:
        out[OTHER_LABEL] = other
    return out


def trust_extremes(view: Mapping[str, float], n: int) -> list[tuple[str, float]]:
    """The ``n`` most and ``n`` least trusted peers of ``view`` (each once), ties broken
    by node id."""
    ranked = sorted(view.items(), key=lambda kv: (-kv[1], kv[0]))
    if len(ranked) <= 2 * n:
        return ranked
    return ranked[:n] + ranked[-n:]


def node_registry(node: MeshNode) -> CollectorRegistry:
    """A registry of its own for ``node`` (no process-wide default metrics)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(node))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The Prometheus text exposition of ``registry``."""
    return generate_latest(registry)


class TrustHistory:
    """Per-peer history of the trust view (see the module docstring)."""

    def __init__(
        self,
        store: ObservabilityStore,
        view: Callable[[float], Mapping[str, float]],
        *,
        max_points: int = MAX_TRUST_POINTS_PER_PEER,
        max_peers: int = MAX_TRUST_HISTORY_PEERS,
        min_interval_s: float = TRUST_SAMPLE_INTERVAL_S,
        epsilon: float = TRUST_CHANGE_EPSILON,
    ) -> None:
        self._store = store
        self._view = view
        self.max_points = max_points
        self.max_peers = max_peers
        self.min_interval_s = min_interval_s
        self.epsilon = epsilon
        self._last: dict[str, tuple[float, float]] = {}  # peer → (at, score) of its last point
        self._points: dict[str, int] = {}
        for peer in store.trust_history_peers():
            points = store.trust_points(peer)
            if points:
                self._last[peer] = points[-1]
                self._points[peer] = len(points)

    def sample(self, now: float) -> int:
        """Record a point for every peer whose score moved since its last point (at most
        one per peer per ``min_interval_s``); returns how many were recorded."""
        fresh: list[tuple[str, float, float]] = []
        for peer, score in self._view(now).items():
            last = self._last.get(peer)
            if last is not None and (
                abs(score - last[1]) <= self.epsilon or now - last[0] < self.min_interval_s
            ):
                continue
            if last is None and len(self._last) >= self.max_peers:
                self._evict_one()
            fresh.append((peer, now, float(score)))
            self._last[peer] = (now, float(score))
            self._points[peer] = self._points.get(peer, 0) + 1
        if fresh:
            self._store.add_trust_points(fresh)
            for peer, _, _ in fresh:
                if self._points[peer] > self.max_points:
                    self._store.trim_trust_history(peer, self.max_points)
                    self._points[peer] = self.max_points
        return len(fresh)

    def _evict_one(self) -> None:
        stalest = min(self._last, key=lambda p: (self._last[p][0], p))
        del self._last[stalest]
        self._points.pop(stalest, None)
        self._store.forget_trust_history(stalest)

    def points(self, peer: str) -> list[dict[str, float]]:
        return [{"at": at, "score": score} for at, score in self._store.trust_points(peer)]

    @property
    def peers(self) -> int:
        return len(self._last)


def history_json(history: TrustHistory | None, node_id: str) -> dict[str, Any]:
    """The body of ``GET /v1/trust/{node_id}/history``."""
    return {"node_id": node_id, "points": history.points(node_id) if history else []}


class Observability:
    """One node's metrics registry, tracer, span store and trust history, with the loop
    that samples the trust view. Made by :meth:`MeshNode.start`, closed by its shutdown."""

    def __init__(self, node: MeshNode, *, data_dir: str | None) -> None:
        from meshnode.runtime.tracing import OtlpExport, Tracer, otlp_endpoint

        cfg = node.config
        self.store = ObservabilityStore(data_dir)
        export = None
        endpoint = otlp_endpoint(cfg.otlp_endpoint) if cfg.tracing else None
        if endpoint is not None:
            export = OtlpExport.create(endpoint, node.node_id, cfg.name)
        self.tracer = Tracer(node.node_id, self.store, enabled=cfg.tracing, export=export)
        self.history = TrustHistory(self.store, node.core.trust_view)
        self.registry = node_registry(node) if cfg.metrics else None
        self.tcp: dict[str, int] = dict.fromkeys(
            ("requests_sent", "requests_received", "bytes_sent", "bytes_received"), 0
        )
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._sample_loop(), name="meshnode-trust-history")

    async def _sample_loop(self) -> None:
        while True:
            await asyncio.sleep(TRUST_SAMPLE_INTERVAL_S)
            try:
                self.history.sample(time.time())
            except Exception as exc:  # one failed sample never stops the next
                log.warning("trust_history_failed", error=f"{type(exc).__name__}: {exc}")

    def client_trace_configs(self) -> list[aiohttp.TraceConfig]:
        """For the node's client session: the ``traceparent`` header, and the TCP counts."""
        from meshnode.runtime.tracing import client_trace_config

        tcp = self.tcp

        async def sent(session: Any, ctx: Any, params: Any) -> None:
            tcp["bytes_sent"] += len(params.chunk)

        async def received(session: Any, ctx: Any, params: Any) -> None:
            tcp["bytes_received"] += len(params.chunk)

        async def started(session: Any, ctx: Any, params: Any) -> None:
            tcp["requests_sent"] += 1

        counting = aiohttp.TraceConfig()
        counting.on_request_start.append(started)
        counting.on_request_chunk_sent.append(sent)
        counting.on_response_chunk_received.append(received)
        return [client_trace_config(), counting]

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await asyncio.to_thread(self.tracer.close)  # the exporter may flush over HTTP
        self.store.close()
