"""Lifeguard's local health multiplier: how much a node trusts its own timing.

Theory of operation
-------------------
SWIM assumes that a node which fails to hear an ack in time is looking at a failed peer.
On a starved machine (CPU contention, a long pause, a saturated link) it is often the
other way round: the *prober* is slow, and it floods the cluster with false suspicions.
Lifeguard keeps a small integer score per node, between 0 (healthy) and
``max_multiplier − 1``, raised by evidence of local trouble and lowered by evidence of
health:

* +1 for a failed probe, +1 for each missing nack from a relay that was asked for an
  indirect probe (:func:`meshnode.core.timing.probe_health_delta`);
* +1 when the node has to refute a suspicion about itself (others could not reach it);
* +1 when the node notices it was not scheduled for a long while (a stall);
* −1 for every successful probe.

Probe timeouts and probe intervals are multiplied by ``score + 1``
(:func:`meshnode.core.timing.health_scaled`), so an unhealthy node slows down and waits
longer before accusing anyone, and recovers to normal speed as probes succeed again.

Seed reachability
-----------------
:class:`SeedReachability` answers another question about the node itself: is it cut off
from the mesh it was told to join? A node that joined through seeds is *isolated* while it
knows no other live member and every one of its seeds failed its last exchange; it stops
being isolated as soon as a seed answers or any member becomes known. The shell logs a
warning when the node becomes isolated and every :data:`SEEDS_UNREACHABLE_WARN_INTERVAL_S`
while it stays so, and ``/v1/health`` reports it.
"""

from __future__ import annotations

import enum
from collections import Counter

from meshnode.core.timing import health_scaled

__all__ = [
    "MAX_SEED_ERRORS_SHOWN",
    "MAX_SEED_ERROR_CHARS",
    "SEEDS_UNREACHABLE_WARN_INTERVAL_S",
    "LocalHealth",
    "SeedReachability",
    "SeedTransition",
]

SEEDS_UNREACHABLE_WARN_INTERVAL_S = 60.0
"""Seconds between two ``seeds_unreachable`` warnings while a node stays isolated (the
first one is logged as soon as every seed has failed). Often enough that an operator
tailing the log sees it within a minute, rare enough not to flood it."""
MAX_SEED_ERRORS_SHOWN = 3
"""Seeds whose error ``/v1/health`` and the warning spell out; the rest are counted (a node
restarted from its data dir joins through every member it remembers, thousands at most)."""
MAX_SEED_ERROR_CHARS = 200
"""Longest error text kept per seed (the error of a failed exchange, shown in
``/v1/health`` and the warning); longer texts are cut."""


class LocalHealth:
    """A score in ``[0, max_multiplier − 1]`` that scales probe timing."""

    __slots__ = ("_limit", "_score")

    def __init__(self, max_multiplier: int) -> None:
        if max_multiplier < 1:
            raise ValueError(f"max_multiplier must be at least 1, got {max_multiplier}")
        self._limit = max_multiplier - 1
        self._score = 0

    @property
    def score(self) -> int:
        """The current score: 0 is healthy, ``max_multiplier − 1`` the worst."""
        return self._score

    @property
    def max_score(self) -> int:
        """The highest score the multiplier allows."""
        return self._limit

    def apply(self, delta: int) -> int:
        """Add ``delta``, clamp to the allowed range and return the new score."""
        self._score = min(self._limit, max(0, self._score + delta))
        return self._score

    def scale(self, duration: float) -> float:
        """``duration × (score + 1)``."""
        return health_scaled(duration, self._score)

    def __repr__(self) -> str:
        return f"<LocalHealth {self._score}/{self._limit}>"


class SeedTransition(enum.Enum):
    """What :meth:`SeedReachability.update` asks the shell to report."""

    ISOLATED = "isolated"
    """The node is isolated and a warning is due (the first, or one interval later)."""
    RECONNECTED = "reconnected"
    """The node was isolated and no longer is."""


Address = tuple[str, int]


class SeedReachability:
    """Whether a node that joined through seeds is cut off from all of them (see the
    module docstring). Time comes in as ``now``, in seconds on any monotonic clock."""

    __slots__ = ("_failed", "_interval", "_isolated_since", "_seed_set", "_seeds", "_warned_at")

    def __init__(self, warn_interval: float = SEEDS_UNREACHABLE_WARN_INTERVAL_S) -> None:
        if not warn_interval > 0:
            raise ValueError(f"warn_interval must be positive, got {warn_interval}")
        self._interval = warn_interval
        self._seeds: tuple[Address, ...] = ()
        self._seed_set: frozenset[Address] = frozenset()
        self._failed: dict[Address, str] = {}
        self._isolated_since: float | None = None
        self._warned_at: float | None = None

    def exchange_failed(self, addr: Address, error: str) -> None:
        """An exchange with ``addr`` failed with ``error`` (only seeds are remembered, and
        only until one of them answers)."""
        self._failed[addr] = error[:MAX_SEED_ERROR_CHARS]

    def exchange_succeeded(self, addr: Address) -> None:
        """``addr`` answered: the node is reachable, and every failure is forgotten."""
        del addr
        self._failed.clear()

    def update(self, seeds: tuple[Address, ...], alone: bool, now: float) -> SeedTransition | None:
        """Re-evaluate with the node's current ``seeds`` and whether it knows no other live
        member; return what to report now, if anything. O(1) while the node knows a member
        or fewer seeds failed than it has (the common case, checked on every loop turn);
        O(seeds) only for a node that is alone with every seed failing."""
        if seeds is not self._seeds:
            self._seeds = seeds
            self._seed_set = frozenset(seeds)
        isolated = bool(seeds) and alone and len(self._failed) >= len(self._seed_set)
        if isolated:
            for addr in [a for a in self._failed if a not in self._seed_set]:
                del self._failed[addr]  # addresses that are no longer seeds
            isolated = len(self._failed) == len(self._seed_set)
        if not isolated:
            was = self._isolated_since is not None
            self._isolated_since = self._warned_at = None
            return SeedTransition.RECONNECTED if was else None
        if self._isolated_since is None:
            self._isolated_since = now
        if self._warned_at is None or now - self._warned_at >= self._interval:
            self._warned_at = now
            return SeedTransition.ISOLATED
        return None

    @property
    def isolated(self) -> bool:
        """Whether the last :meth:`update` found the node isolated."""
        return self._isolated_since is not None

    def isolated_for(self, now: float) -> float:
        """Seconds the node has been isolated (0 when it is not)."""
        return 0.0 if self._isolated_since is None else max(0.0, now - self._isolated_since)

    def errors(self) -> dict[str, str]:
        """The last error of each seed that failed, by ``host:port`` (at most
        :data:`MAX_SEED_ERRORS_SHOWN` of them)."""
        shown = list(self._failed.items())[:MAX_SEED_ERRORS_SHOWN]
        return {_text(addr): error for addr, error in shown}

    def reason(self, now: float, *, detail: bool = False) -> str | None:
        """One line saying the node is isolated (None when it is not). Without ``detail``
        (``/v1/health``, which anyone may read) it names only the kinds of error, never a
        seed's address; with it (the caller's own ``WaitTimeout``) the first few seeds and
        their errors."""
        if self._isolated_since is None:
            return None
        if detail:
            shown = "; ".join(f"{addr}: {error}" for addr, error in self.errors().items())
            more = len(self._failed) - MAX_SEED_ERRORS_SHOWN
            if more > 0:
                shown += f"; and {more} more"
        else:
            kinds = Counter(error.split(":", 1)[0] for error in self._failed.values())
            shown = ", ".join(f"{kind} x{n}" for kind, n in sorted(kinds.items()))
        return (
            f"isolated: none of the {len(self._seeds)} seed(s) answered for "
            f"{self.isolated_for(now):.0f} s and no other member is known ({shown}); "
            "the seeds are retried with backoff"
        )


def _text(addr: Address) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
