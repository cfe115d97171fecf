"""Typed metrics the cores keep: counters by bounded label, and fixed-bucket histograms.

Theory of operation
-------------------
The cores count what they decide and time what they see (``now`` comes in with every
input), and know nothing of Prometheus: this module holds plain numbers. The runtime turns
them into the Prometheus exposition at scrape time (:mod:`meshnode.runtime.metrics`), so a
node that is never scraped pays only for the additions.

Two types:

* :class:`Histogram`: cumulative-at-export, fixed upper bounds chosen when it is made
  (seconds), a running sum and count. ``observe`` is a bisect and two additions.
* :class:`LabelledCounter`: monotonic counts keyed by one label whose values are a closed
  set given when it is made; any other value is counted under :data:`OTHER_LABEL`, so no
  input can grow the set.

:class:`CoreMetrics` is what one :class:`~meshnode.core.node.NodeCore` keeps (the task
outcomes, delegation latency) plus what the shells time on its behalf (push-pull,
discovery, embedding): the runtime observes those into the same objects, so one place
holds every histogram a node exports. :data:`LABEL_BOUNDS` names every label any exported
metric carries and the most values it can take; a unit test holds the exporter to it.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterable, Sequence

from meshnode.core.task_wire import RejectCode, reject_code

__all__ = [
    "DELEGATION_BUCKETS_S",
    "DISCOVERY_BUCKETS_S",
    "LABEL_BOUNDS",
    "OTHER_LABEL",
    "PROBE_BUCKETS_S",
    "PUSH_PULL_BUCKETS_S",
    "TASK_OUTCOMES",
    "TCP_FALLBACK_RESULTS",
    "TRUST_EXPORT_PEERS",
    "CoreMetrics",
    "Histogram",
    "LabelledCounter",
]

OTHER_LABEL = "other"
"""The label value a :class:`LabelledCounter` counts anything outside its set under."""

PROBE_BUCKETS_S: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0
)  # fmt: skip
"""Upper bounds (seconds) for a probe's round trip: loopback is under a millisecond, a WAN
probe timeout is 3 s; twelve buckets keep the exposition small."""

PUSH_PULL_BUCKETS_S: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
"""Upper bounds (seconds) for one push-pull exchange (all legs), up to the 10 s TCP timeout."""

DISCOVERY_BUCKETS_S: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5
)  # fmt: skip
"""Upper bounds (seconds) for a discovery query against the local index (and for one
embedding), which is answered without a network round trip."""

DELEGATION_BUCKETS_S: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0
)  # fmt: skip
"""Upper bounds (seconds) for a whole delegation, from start to its one end."""

TASK_OUTCOMES: tuple[str, ...] = ("accepted", "rejected", "countered", "completed", "failed")
"""The ``outcome`` label of ``meshnode_tasks_total`` (this node as a provider)."""

TRUST_EXPORT_PEERS = 10
"""Peers whose trust score is exported per side: the ``TRUST_EXPORT_PEERS`` most and least
trusted (so at most twice this many ``peer`` label values, whatever the mesh size)."""

_REJECT_REASONS: tuple[str, ...] = tuple(code.value for code in RejectCode)

TCP_FALLBACK_RESULTS: tuple[str, ...] = ("ok", "redundant", "late", "failed", "skipped")
"""Results of the TCP fallback probe (``meshnode_tcp_fallback_total{result}``), as
:meth:`meshnode.core.membership.Membership.tcp_ping_done` counts them."""

LABEL_BOUNDS: dict[str, int] = {
    "state": 4,  # alive, suspect, dead, left
    "outcome": len(TASK_OUTCOMES),
    "reason": len(_REJECT_REASONS) + 1,  # a RejectCode, or "other"
    "breaker": 3,  # closed, open, half_open
    "peer": 2 * TRUST_EXPORT_PEERS,
    "direction": 2,  # sent, received
    "transport": 2,  # udp, tcp
    "counter": 256,  # the names of the cores' fixed counter tables
    "drop": 257,  # the first 256 drop reasons seen, then "other"
    "result": len(TCP_FALLBACK_RESULTS),
}
"""Every label an exported metric carries, with the most values it can take. ``counter``
values are the keys of the cores' counter tables (fixed at import, about 120); ``drop``
reasons are named by the code, never by a peer, and the exporter folds any beyond the
first 256 into ``other``."""


class Histogram:
    """Counts of observations at or under each fixed upper bound, with their sum.

    ``counts[i]`` counts observations in ``(bounds[i-1], bounds[i]]``; the last slot
    counts those above every bound (Prometheus's ``+Inf``). A non-finite or negative
    observation is ignored (counted in :attr:`refused`)."""

    __slots__ = ("bounds", "count", "counts", "refused", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        if not bounds or any(b <= a for a, b in itertools.pairwise(bounds)):
            raise ValueError("histogram bounds must be a non-empty increasing sequence")
        self.bounds: tuple[float, ...] = tuple(float(b) for b in bounds)
        self.counts: list[int] = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0
        self.refused = 0

    def observe(self, value: float) -> None:
        if not math.isfinite(value) or value < 0:
            self.refused += 1
            return
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations at or under it)`` per bucket, ending with
        ``(inf, count)``: the Prometheus form."""
        out: list[tuple[float, int]] = []
        running = 0
        for bound, n in zip((*self.bounds, math.inf), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


class LabelledCounter:
    """Monotonic counts under one label whose values are fixed when it is made."""

    __slots__ = ("counts",)

    def __init__(self, values: Iterable[str]) -> None:
        self.counts: dict[str, int] = dict.fromkeys((*values, OTHER_LABEL), 0)

    def add(self, value: str, n: int = 1) -> None:
        key = value if value in self.counts else OTHER_LABEL
        self.counts[key] += n


class CoreMetrics:
    """Metrics one node keeps beside its cores' counter tables (see the module docstring).

    ``tasks`` counts this node's answers and results as a provider by outcome;
    ``rejections`` its refusals by :class:`~meshnode.core.task_wire.RejectCode`;
    ``delegations`` times whole delegations (requester side). ``push_pull``,
    ``discovery`` and ``embedding`` are timed by the shell that runs them."""

    __slots__ = ("delegations", "discovery", "embedding", "push_pull", "rejections", "tasks")

    def __init__(self) -> None:
        self.tasks = LabelledCounter(TASK_OUTCOMES)
        self.rejections = LabelledCounter(_REJECT_REASONS)
        self.delegations = Histogram(DELEGATION_BUCKETS_S)
        self.push_pull = Histogram(PUSH_PULL_BUCKETS_S)
        self.discovery = Histogram(DISCOVERY_BUCKETS_S)
        self.embedding = Histogram(DISCOVERY_BUCKETS_S)

    def task_answered(self, status: int, reason: str) -> None:
        """Count a provider's answer to a request: ``status`` is a ``TaskStatus`` value
        (1 accepted, 2 rejected, 3 countered), ``reason`` the refusal's text."""
        if status == 1:
            self.tasks.add("accepted")
        elif status == 3:
            self.tasks.add("countered")
        else:
            self.tasks.add("rejected")
            code = reject_code(reason)
            self.rejections.add(code.value if code is not None else OTHER_LABEL)

    def task_finished(self, ok: bool) -> None:
        """Count a signed result this node sent as a provider."""
        self.tasks.add("completed" if ok else "failed")
