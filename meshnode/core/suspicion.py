"""One suspicion about one member: its timer and the independent accusers confirming it.

Theory of operation
-------------------
When a member is first suspected (by our own failed probe, or by a signed ``Suspect``
from someone else) we start a suspicion at the member's incarnation. It ends in one of
two ways: the member refutes it with an ``Alive`` at a higher incarnation (the suspicion
is simply dropped), or its timer expires and we declare the member dead.

Lifeguard makes the timer adaptive. A fresh suspicion waits the *maximum* timeout,
``suspicion_max_timeout_mult × min``; every further ``Suspect`` about the same
incarnation signed by an accuser we have not heard from yet is an independent
confirmation and shortens the total wait along memberlist's logarithmic curve
(:func:`meshnode.core.timing.suspicion_timeout`), reaching the minimum after ``k``
confirmations. A node that only we cannot reach therefore gets plenty of time to refute,
while a node that everyone has lost is declared dead quickly.

The bounds and ``k`` are fixed when the suspicion starts (from the cluster size then),
as memberlist does, so a confirmation only ever moves the deadline earlier.
"""

from __future__ import annotations

from meshnode.core.timing import suspicion_timeout

__all__ = ["Suspicion"]


class Suspicion:
    """The timer of one suspicion. Times are seconds on the caller's clock."""

    __slots__ = (
        "_accusers",
        "_deadline",
        "incarnation",
        "k",
        "max_timeout",
        "min_timeout",
        "node_id",
        "start",
    )

    def __init__(
        self,
        node_id: str,
        incarnation: int,
        accuser: str,
        *,
        start: float,
        k: int,
        min_timeout: float,
        max_timeout: float,
    ) -> None:
        if min_timeout <= 0 or max_timeout < min_timeout:
            raise ValueError(f"bad suspicion bounds [{min_timeout}, {max_timeout}]")
        self.node_id = node_id
        """The suspected member."""
        self.incarnation = incarnation
        """The incarnation this suspicion is about."""
        self.start = start
        """When the suspicion started."""
        self.k = max(0, k)
        """Confirmations expected before the timeout reaches its minimum."""
        self.min_timeout = min_timeout
        self.max_timeout = max_timeout
        self._accusers: dict[str, None] = {accuser: None}
        self._deadline = start + suspicion_timeout(0, self.k, min_timeout, max_timeout)

    @property
    def confirmations(self) -> int:
        """Independent confirmations received (the first accuser does not count)."""
        return len(self._accusers) - 1

    @property
    def accusers(self) -> tuple[str, ...]:
        """Every accuser, first one first."""
        return tuple(self._accusers)

    def accused_by(self, node_id: str) -> bool:
        """True if ``node_id`` already accused (first or as a confirmation)."""
        return node_id in self._accusers

    @property
    def deadline(self) -> float:
        """When the member is to be declared dead unless it refutes first."""
        return self._deadline

    def confirm(self, accuser: str) -> bool:
        """Count ``accuser``'s suspicion; True if it was new and moved the deadline.

        Repeated accusers and accusers beyond the ``k`` expected are ignored.
        """
        if accuser in self._accusers or self.confirmations >= self.k:
            return False
        self._accusers[accuser] = None
        self._deadline = self.start + suspicion_timeout(
            self.confirmations, self.k, self.min_timeout, self.max_timeout
        )
        return True

    def shift(self, delta: float) -> None:
        """Move the whole timer later by ``delta`` seconds (used after a local stall)."""
        self.start += delta
        self._deadline += delta

    def __repr__(self) -> str:
        return (
            f"<Suspicion {self.node_id[:10]}@{self.incarnation} "
            f"{self.confirmations}/{self.k} deadline={self._deadline:.3f}>"
        )
