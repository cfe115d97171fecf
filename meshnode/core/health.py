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
"""

from __future__ import annotations

from meshnode.core.timing import health_scaled

__all__ = ["LocalHealth"]


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
