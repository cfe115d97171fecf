"""A plain-text progress bar on stderr, for long runs.

Theory of operation
-------------------
The engine calls :meth:`Progress.update` every few thousand events. The bar shows the
virtual time reached within the current phase, an estimate of the wall time the phase
still needs, the events executed and the event rate; it is redrawn in place (carriage
return) on a terminal, or printed as a new line at every tenth of the phase and every half
minute otherwise, so that logs of long runs stay short. When a phase ends — at its end
time, or sooner because what it waits for happened (a converged bootstrap, a rumor that
reached everyone) — its bar is drawn once more at 100 % with the wall time it took.

The estimate assumes the rest of the phase runs at the pace of what ran so far: wall time
spent × (1 − fraction) / fraction. A phase that can end early (it stops on a condition)
says "at most", since it may need less. Wall time is read here only for the display; it
never feeds back into the simulation.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from simulations.cluster import Cluster

__all__ = ["Progress", "format_duration", "time_left"]

WIDTH = 30
"""Characters of the bar itself."""
LINE_EVERY = 30.0
"""Seconds of wall time between lines when stderr is not a terminal (besides each tenth)."""


def time_left(fraction: float, elapsed_s: float) -> float | None:
    """Wall seconds the rest of a phase should take, if it runs at the pace so far:
    ``elapsed_s × (1 − fraction) / fraction``; None before any progress (no pace yet)."""
    if fraction <= 0.0:
        return None
    if fraction >= 1.0:
        return 0.0
    return max(0.0, elapsed_s) * (1.0 - fraction) / fraction


def format_duration(seconds: float) -> str:
    """A wall-time span for a person: ``<1 s``, ``42 s``, ``3 min 05 s``, ``2 h 04 min``."""
    if seconds < 1.0:
        return "<1 s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


class Progress:
    """Progress of one run through its phases."""

    def __init__(
        self,
        *,
        enabled: bool = True,
        stream: TextIO | None = None,
        wall: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.cluster: Cluster | None = None
        self._stream = stream if stream is not None else sys.stderr
        self._enabled = enabled
        self._tty = enabled and self._stream.isatty()
        self._wall = wall
        self._label = ""
        self._start = 0.0
        self._end = 1.0
        self._open_ended = False
        self._running = False
        self._last_tenth = -1
        self._wall_start = wall()
        self._phase_wall_start = self._wall_start
        self._last_line = 0.0
        self._drawn = 0

    def bind(self, cluster: Cluster) -> None:
        """Follow a (new) simulation."""
        self.cluster = cluster

    def _clock(self) -> float:
        return self.cluster.now if self.cluster is not None else 0.0

    def _events(self) -> int:
        return self.cluster.engine.events if self.cluster is not None else 0

    def phase(self, label: str, start: float, end: float, *, open_ended: bool = False) -> None:
        """A new phase covering virtual times ``start..end``; ``open_ended`` when it may
        stop sooner (its time-left estimate is then an upper bound)."""
        self.finish()
        self._label = label
        self._start = start
        self._end = max(end, start + 1e-9)
        self._open_ended = open_ended
        self._running = True
        self._last_tenth = -1
        self._phase_wall_start = self._wall()

    def update(self) -> None:
        if not self._enabled or not self._running:
            return
        fraction = min(1.0, max(0.0, (self._clock() - self._start) / (self._end - self._start)))
        tenth = int(fraction * 10)
        wall = self._wall() - self._wall_start
        if not self._tty and tenth == self._last_tenth and wall - self._last_line < LINE_EVERY:
            return
        self._last_tenth = tenth
        self._last_line = wall
        self._draw(fraction, final=False)

    def _draw(self, fraction: float, *, final: bool) -> None:
        now = self._wall()
        wall = now - self._wall_start
        spent = now - self._phase_wall_start
        events = self._events()
        rate = events / wall if wall > 0 else 0.0
        filled = int(fraction * WIDTH)
        bar = "#" * filled + "." * (WIDTH - filled)
        if final:
            eta = f"done in {format_duration(spent)}"
        else:
            left = time_left(fraction, spent)
            bound = "at most " if self._open_ended else "~"
            shown = "?" if left is None else format_duration(left)
            eta = f"left {shown}" if shown[0] in "?<" else f"left {bound}{shown}"
        wrong = self.cluster.tracker.wrong_views if self.cluster is not None else 0
        line = (
            f"{self._label:<14} [{bar}] {fraction * 100:5.1f}%  {eta:<18}  "
            f"t={self._clock():9.2f}s  events={events:,}  {rate:,.0f}/s  "
            f"wall={format_duration(wall)}  wrong views={wrong:,}"
        )
        if self._tty:
            self._stream.write("\r" + line.ljust(self._drawn))
            self._drawn = len(line)
        else:
            self._stream.write(line + "\n")
        self._stream.flush()

    def finish(self) -> None:
        """End the current phase: its bar at 100 % with the wall time it took (once)."""
        if not self._enabled or not self._running:
            return
        self._running = False
        self._draw(1.0, final=True)
        if self._tty:
            self._stream.write("\n")
            self._stream.flush()
            self._drawn = 0
