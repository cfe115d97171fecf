"""The discrete-event engine: a virtual clock, an event heap and derived seeds.

Theory of operation
-------------------
A simulation is a single thread of control stepping from event to event. Every event is a
callback with its arguments, stored in a binary heap under the key ``(time, sequence)``:
``time`` is virtual seconds, ``sequence`` a counter that grows with every scheduling. Two
events at the same instant therefore run in the order they were scheduled, and the order
of the whole run is a function of the seed alone — the heap never compares callbacks, and
nothing in the simulator iterates over a ``set`` or over a ``dict`` filled in an order that
depends on hashing.

The clock (:attr:`Engine.now`) only moves forward, to the time of the event being run;
nothing reads the wall clock except the reporting of wall time and events per second.

Randomness never comes from the global ``random``. One run seed is expanded into as many
independent streams as needed by :func:`derive_seed`, a BLAKE2b hash of the run seed and a
label path (``("node", 17, "core", 2)``, ``("network",)``, ``("faults",)``, …). A stream per
node and per subsystem keeps a change in one place (one more packet lost, one more fault)
from shifting every other random choice of the run, which makes runs comparable across
small changes of the scenario.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
from collections.abc import Callable
from typing import Any

__all__ = ["Engine", "derive_rng", "derive_seed"]


def derive_seed(seed: int, *labels: object) -> int:
    """A 64-bit seed for the stream named by ``labels`` within run ``seed``."""
    text = "/".join([str(seed), *(str(label) for label in labels)])
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def derive_rng(seed: int, *labels: object) -> random.Random:
    """A ``random.Random`` seeded with :func:`derive_seed`."""
    return random.Random(derive_seed(seed, *labels))


class Engine:
    """Virtual clock and event heap. ``run_until`` executes events in ``(time, seq)`` order."""

    __slots__ = ("_heap", "_seq", "events", "now")

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        """The current virtual time, seconds."""
        self.events = 0
        """Events executed so far."""
        self._heap: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = 0

    def at(self, when: float, callback: Callable[..., None], *args: Any) -> None:
        """Run ``callback(*args)`` at virtual time ``when`` (not before now)."""
        if when < self.now:
            when = self.now
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, callback, args))

    def after(self, delay: float, callback: Callable[..., None], *args: Any) -> None:
        """Run ``callback(*args)`` ``delay`` seconds from now."""
        self.at(self.now + delay, callback, *args)

    @property
    def pending(self) -> int:
        """Events waiting in the heap."""
        return len(self._heap)

    def next_time(self) -> float:
        """Time of the next event, ``math.inf`` if none."""
        return self._heap[0][0] if self._heap else math.inf

    def run_until(
        self,
        until: float,
        *,
        stop: Callable[[], bool] | None = None,
        every: int = 4096,
        on_progress: Callable[[], None] | None = None,
    ) -> bool:
        """Run every event with time ``<= until``, then set the clock to ``until``.

        ``stop`` is checked after every event; when it returns True the run stops at that
        event's time and this returns True. ``on_progress`` is called every ``every``
        events (for progress bars). Returns False when ``until`` was reached.
        """
        heap = self._heap
        pop = heapq.heappop
        count = 0
        while heap and heap[0][0] <= until:
            when, _, callback, args = pop(heap)
            self.now = when
            callback(*args)
            count += 1
            if stop is not None and stop():
                self.events += count
                return True
            if on_progress is not None and count % every == 0:
                self.events += count
                count = 0
                on_progress()
        self.events += count
        if until > self.now and math.isfinite(until):
            self.now = until
        return False
