"""A plain-text progress bar on stderr, for long runs.

Theory of operation
-------------------
The engine calls :meth:`Progress.update` every few thousand events. The bar shows the
virtual time reached within the current phase, the events executed and the event rate,
and is redrawn in place (carriage return) on a terminal, or printed as a new line at every
tenth of the phase otherwise, so that logs of long runs stay short. Wall time is read
here only to show the rate; it never feeds back into the simulation.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

__all__ = ["Progress"]

WIDTH = 30


class Progress:
    """Progress of one run through its phases."""

    def __init__(self, *, enabled: bool = True, stream: TextIO | None = None) -> None:
        self._clock: Callable[[], float] = lambda: 0.0
        self._events: Callable[[], int] = lambda: 0
        self._stream = stream if stream is not None else sys.stderr
        self._enabled = enabled
        self._tty = enabled and self._stream.isatty()
        self._label = ""
        self._start = 0.0
        self._end = 1.0
        self._last_tenth = -1
        self._wall_start = time.perf_counter()
        self._drawn = False

    def bind(self, clock: Callable[[], float], events: Callable[[], int]) -> None:
        """Follow a (new) simulation: its virtual clock and its event count."""
        self._clock = clock
        self._events = events

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
        if not self._tty and tenth == self._last_tenth:
            return
        self._last_tenth = tenth
        events = self._events()
        wall = time.perf_counter() - self._wall_start
        rate = events / wall if wall > 0 else 0.0
        filled = int(fraction * WIDTH)
        bar = "#" * filled + "." * (WIDTH - filled)
        line = (
            f"{self._label:<14} [{bar}] {fraction * 100:5.1f}%  t={self._clock():9.2f}s  "
            f"events={events:,}  {rate:,.0f}/s  wall={wall:,.0f}s"
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
