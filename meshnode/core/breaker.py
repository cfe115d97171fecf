"""Per-peer circuit breakers, kept locally by each node.

Theory of operation
-------------------
A node keeps one :class:`CircuitBreaker` per peer it hands tasks to, in a
:class:`BreakerBoard` keyed by node id. A breaker only ever hears about *task outcomes*
(:meth:`~CircuitBreaker.record_success`, :meth:`~CircuitBreaker.record_failure`,
:meth:`~CircuitBreaker.record_abandoned`). Heartbeats, SWIM acks, gossip and manifest
updates never touch it: a peer that answers pings but fails its tasks stays degraded, and
nothing but a successful task closes an open circuit. (A registry-based design that let
heartbeats reset the breaker undid every opening within seconds.) It is local: it is never
gossiped, and another node's view of a peer never changes ours.

States::

            failure_threshold consecutive failures
    CLOSED ────────────────────────────────────────▶ OPEN (degraded)
      ▲                                               │ recovery_time passes
      │ probe succeeds                                ▼
      └──────────────────────────────────────── HALF_OPEN ──probe fails──▶ OPEN
                                                       (timer restarts at the failure)

* CLOSED: every task is allowed. Each failure adds to a run of consecutive failures; a
  success ends the run. The run reaching ``failure_threshold`` opens the circuit.
* OPEN: no task is allowed until ``recovery_time`` has passed since the circuit opened.
  The router still lists the peer, ranked as degraded.
* HALF_OPEN: ``recovery_time`` has passed. :meth:`~CircuitBreaker.allow` returns True
  exactly once — that task is the probe — and then False until the probe's outcome is
  recorded. Success closes the circuit; failure opens it again with a fresh timer. A probe
  that ends with no verdict on the peer (the caller cancelled, the peer declined the task)
  is recorded with :meth:`~CircuitBreaker.record_abandoned`, which hands the probe back.
  A probe whose outcome never arrives at all is presumed lost after ``probe_lease`` and
  another probe is allowed, so a forgotten outcome can never wedge a peer as degraded.

While the circuit is OPEN or HALF_OPEN, outcomes of tasks admitted *before* it opened can
still arrive. A late failure is ignored (the circuit is already open; it does not extend
the timer). In HALF_OPEN the breaker cannot tell the probe from a straggler, so the first
outcome recorded decides; in OPEN before the probe, a late success is ignored too — only a
probe closes the circuit.

Everything takes ``now`` (seconds, any monotonic origin) and nothing reads a clock.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass

DEFAULT_FAILURE_THRESHOLD = 3
"""Consecutive task failures that open a circuit. Lower reacts faster to a broken peer but
opens on bad luck; 3 is the classic value and what users of agent meshes expect."""

DEFAULT_RECOVERY_TIME_S = 60.0
"""Seconds an open circuit waits before one probe task is allowed. Longer spares a broken
peer more load; shorter brings a recovered peer back sooner."""

DEFAULT_PROBE_LEASE_S = 600.0
"""Seconds after which a half-open probe with no recorded outcome is presumed lost and
another probe is allowed. A safety net only: callers record every outcome, and tasks
normally end well within it (it exceeds the default task deadline many times over)."""


class BreakerState(enum.Enum):
    """Where a circuit stands; OPEN and HALF_OPEN both mean the peer is degraded."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class TaskVerdict(enum.Enum):
    """What one task attempt says about the peer that handled it."""

    SUCCESS = "success"
    """The peer delivered a valid result."""
    FAILURE = "failure"
    """The peer failed: no answer, a dropped connection, a timeout, a failed or forged
    result."""
    ABANDONED = "abandoned"
    """No verdict on the peer (cancelled by us, honestly refused or declined)."""


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    """A breaker as shown to an operator. Times are on the caller's clock."""

    state: BreakerState
    consecutive_failures: int
    opened_at: float | None
    """When the circuit last opened (None while closed)."""
    retry_at: float | None
    """When a probe is (or was) first allowed (None while closed)."""
    probe_in_flight: bool
    total_failures: int
    total_successes: int


class CircuitBreaker:
    """The breaker of one peer. See the module docstring for the state machine."""

    __slots__ = (
        "_failures",
        "_opened_at",
        "_probe_started",
        "failure_threshold",
        "probe_lease",
        "recovery_time",
        "total_failures",
        "total_successes",
    )

    def __init__(
        self,
        failure_threshold: int = DEFAULT_FAILURE_THRESHOLD,
        recovery_time: float = DEFAULT_RECOVERY_TIME_S,
        probe_lease: float = DEFAULT_PROBE_LEASE_S,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if not recovery_time >= 0.0:
            raise ValueError("recovery_time must be a non-negative number of seconds")
        if not probe_lease > 0.0:
            raise ValueError("probe_lease must be a positive number of seconds")
        self.failure_threshold = failure_threshold
        self.recovery_time = recovery_time
        self.probe_lease = probe_lease
        self._failures = 0
        self._opened_at: float | None = None
        self._probe_started: float | None = None
        self.total_failures = 0
        self.total_successes = 0

    # ------------------------------------------------------------------ queries

    def state(self, now: float) -> BreakerState:
        """The state at ``now`` (a pure read: it never consumes the probe)."""
        if self._opened_at is None:
            return BreakerState.CLOSED
        if now >= self._opened_at + self.recovery_time:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def is_idle(self) -> bool:
        """True when the breaker holds no information a fresh one would not."""
        return self._opened_at is None and self._failures == 0

    def snapshot(self, now: float) -> BreakerSnapshot:
        opened = self._opened_at
        return BreakerSnapshot(
            state=self.state(now),
            consecutive_failures=self._failures,
            opened_at=opened,
            retry_at=None if opened is None else opened + self.recovery_time,
            probe_in_flight=self._probe_live(now),
            total_failures=self.total_failures,
            total_successes=self.total_successes,
        )

    # ------------------------------------------------------------------ admission

    def allow(self, now: float) -> bool:
        """May a task go to this peer now? In HALF_OPEN, True once: the caller then owes the
        probe's outcome (success, failure or abandoned)."""
        state = self.state(now)
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN or self._probe_live(now):
            return False
        self._probe_started = now
        return True

    def _probe_live(self, now: float) -> bool:
        started = self._probe_started
        return started is not None and now < started + self.probe_lease

    # ------------------------------------------------------------------ outcomes

    def record_success(self, now: float) -> BreakerState:
        """A task to this peer succeeded. Returns the new state."""
        self.total_successes += 1
        state = self.state(now)
        if state is BreakerState.CLOSED:
            self._failures = 0
        elif state is BreakerState.HALF_OPEN:
            self._close()
        return self.state(now)

    def record_failure(self, now: float) -> BreakerState:
        """A task to this peer failed. Returns the new state."""
        self.total_failures += 1
        state = self.state(now)
        if state is BreakerState.CLOSED:
            self._failures += 1
            if self._failures >= self.failure_threshold:
                self._open(now)
        elif state is BreakerState.HALF_OPEN:
            self._failures += 1
            self._open(now)
        return self.state(now)

    def record_abandoned(self, now: float) -> BreakerState:
        """A task to this peer ended with no verdict; a probe slot, if taken, is handed back."""
        self._probe_started = None
        return self.state(now)

    def record(self, verdict: TaskVerdict, now: float) -> BreakerState:
        """Dispatch on a :class:`TaskVerdict`."""
        if verdict is TaskVerdict.SUCCESS:
            return self.record_success(now)
        if verdict is TaskVerdict.FAILURE:
            return self.record_failure(now)
        return self.record_abandoned(now)

    def _open(self, now: float) -> None:
        self._opened_at = now
        self._probe_started = None

    def _close(self) -> None:
        self._opened_at = None
        self._probe_started = None
        self._failures = 0

    def __repr__(self) -> str:
        opened = "" if self._opened_at is None else f" opened_at={self._opened_at:g}"
        return f"<CircuitBreaker failures={self._failures}{opened}>"


class BreakerBoard:
    """The breakers of all peers, keyed by node id, created on first failure.

    A peer with no entry is CLOSED. Entries that return to a fresh state (closed, no
    failures) are dropped, so the board holds only peers with something to remember;
    :meth:`forget` drops a peer that left the mesh.
    """

    __slots__ = ("_breakers", "failure_threshold", "probe_lease", "recovery_time")

    def __init__(
        self,
        failure_threshold: int = DEFAULT_FAILURE_THRESHOLD,
        recovery_time: float = DEFAULT_RECOVERY_TIME_S,
        probe_lease: float = DEFAULT_PROBE_LEASE_S,
    ) -> None:
        CircuitBreaker(failure_threshold, recovery_time, probe_lease)  # validates the settings
        self.failure_threshold = failure_threshold
        self.recovery_time = recovery_time
        self.probe_lease = probe_lease
        self._breakers: dict[str, CircuitBreaker] = {}

    def _get(self, node: str) -> CircuitBreaker:
        breaker = self._breakers.get(node)
        if breaker is None:
            breaker = CircuitBreaker(self.failure_threshold, self.recovery_time, self.probe_lease)
            self._breakers[node] = breaker
        return breaker

    def _settle(self, node: str, breaker: CircuitBreaker) -> None:
        if breaker.is_idle():
            self._breakers.pop(node, None)

    def allow(self, node: str, now: float) -> bool:
        """May a task go to ``node`` now? (Consumes the half-open probe; see
        :meth:`CircuitBreaker.allow`.)"""
        breaker = self._breakers.get(node)
        return True if breaker is None else breaker.allow(now)

    def record_success(self, node: str, now: float) -> BreakerState:
        breaker = self._breakers.get(node)
        if breaker is None:
            return BreakerState.CLOSED
        state = breaker.record_success(now)
        self._settle(node, breaker)
        return state

    def record_failure(self, node: str, now: float) -> BreakerState:
        return self._get(node).record_failure(now)

    def record_abandoned(self, node: str, now: float) -> BreakerState:
        breaker = self._breakers.get(node)
        return BreakerState.CLOSED if breaker is None else breaker.record_abandoned(now)

    def record(self, node: str, verdict: TaskVerdict, now: float) -> BreakerState:
        """Dispatch on a :class:`TaskVerdict`; returns the peer's new state."""
        if verdict is TaskVerdict.SUCCESS:
            return self.record_success(node, now)
        if verdict is TaskVerdict.FAILURE:
            return self.record_failure(node, now)
        return self.record_abandoned(node, now)

    def state(self, node: str, now: float) -> BreakerState:
        breaker = self._breakers.get(node)
        return BreakerState.CLOSED if breaker is None else breaker.state(now)

    def is_degraded(self, node: str, now: float) -> bool:
        """True while ``node``'s circuit is OPEN or HALF_OPEN."""
        return self.state(node, now) is not BreakerState.CLOSED

    def open_nodes(self, now: float) -> set[str]:
        """Every degraded peer (OPEN or HALF_OPEN): what the router scores at reduced
        availability."""
        return {
            node for node, b in self._breakers.items() if b.state(now) is not BreakerState.CLOSED
        }

    def forget(self, node: str) -> None:
        """Drop what is known about ``node`` (it left the mesh or was declared dead)."""
        self._breakers.pop(node, None)

    def snapshot(self, now: float) -> dict[str, BreakerSnapshot]:
        """Every remembered peer's breaker, sorted by node id, for display."""
        return {node: self._breakers[node].snapshot(now) for node in sorted(self._breakers)}

    def __len__(self) -> int:
        return len(self._breakers)

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._breakers))

    def __repr__(self) -> str:
        return f"<BreakerBoard peers={len(self._breakers)}>"
