"""A plain-text progress bar on stderr, for long runs.

Theory of operation
-------------------
The engine calls :meth:`Progress.update` every few thousand events. The bar shows the
virtual time reached within the current phase, the events executed and the event rate,
and is redrawn in place (carriage return) on a terminal, or printed as a new line at every
tenth of the phase and every half minute otherwise, so that logs of long runs stay short.
Wall time is read here only to show the rate; it never feeds back into the simulation.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from simulations.cluster import Cluster

__all__ = ["Progress"]

WIDTH = 30
LINE_EVERY = 30.0
"""Seconds of wall time between lines when stderr is not a terminal (besides each tenth)."""


class Progress:
    """Progress of one run through its phases."""

    def __init__(self, *, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.cluster: Cluster | None = None
        self._stream = stream if stream is not None else sys.stderr
        self._enabled = enabled
        self._tty = enabled and self._stream.isatty()
        self._label = ""
        self._start = 0.0
        self._end = 1.0
        self._last_tenth = -1
        self._wall_start = time.perf_counter()
        self._last_line = 0.0
        self._drawn = False

    def bind(self, cluster: Cluster) -> None:
        """Follow a (new) simulation."""
        self.cluster = cluster

    def _clock(self) -> float:
        return self.cluster.now if self.cluster is not None else 0.0

    def _events(self) -> int:
        return self.cluster.engine.events if self.cluster is not None else 0

    def phase(self, label: str, start: float, end: float) -> None:
        """A new phase covering virtual times ``start..end``."""
        self.finish()
        self._label = label
        self._start = start
        self._end = max(end, start + 1e-9)
        self._last_tenth = -1

    def update(self) -> None:
        if not self._enabled:
            return
        fraction = min(1.0, max(0.0, (self._clock() - self._start) / (self._end - self._start)))
        tenth = int(fraction * 10)
        wall = time.perf_counter() - self._wall_start
        if not self._tty and tenth == self._last_tenth and wall - self._last_line < LINE_EVERY:
            return
        self._last_tenth = tenth
        self._last_line = wall
        events = self._events()
        rate = events / wall if wall > 0 else 0.0
        filled = int(fraction * WIDTH)
        bar = "#" * filled + "." * (WIDTH - filled)
        wrong = self.cluster.tracker.wrong_views if self.cluster is not None else 0
        line = (
            f"{self._label:<14} [{bar}] {fraction * 100:5.1f}%  t={self._clock():9.2f}s  "
            f"events={events:,}  {rate:,.0f}/s  wall={wall:,.0f}s  wrong views={wrong:,}"
        )
        if self._tty:
            self._stream.write("\r" + line)
            self._drawn = True
        else:
            self._stream.write(line + "\n")
        self._stream.flush()

    def finish(self) -> None:
        """End the current line (terminal mode)."""
        if self._enabled and self._label:
            self.update()
        if self._tty and self._drawn:
            self._stream.write("\n")
            self._stream.flush()
            self._drawn = False
