"""Vivaldi network coordinates (sans-I/O).

Each node keeps a point in an 8-dimensional Euclidean space plus a *height* (the cost of
its access link) and an *adjustment* (a learned offset). The estimated round trip between
two nodes is the distance between their points plus both heights plus both adjustments.
Every measured direct round trip to a peer, together with the coordinate that peer put in
its ack, moves our point a little along the line between the two points: away when we are
estimated too close, toward it when too far. The step is weighted by how sure we are of
our own position (``error``) relative to the peer's, so a new node (error at its maximum)
moves a lot toward settled ones and settled nodes barely move for a newcomer.

The constants are Serf's defaults (see docs/coordinates.md). Units are seconds throughout.

Everything read off the wire passes :func:`coordinate_problem` first: a coordinate with
the wrong dimension, a non-finite number, a component or height outside the bounds or an
error outside ``[0, VIVALDI_ERROR_MAX]`` is ignored (the caller counts it) and changes
nothing. Measured round trips pass :func:`rtt_problem`.

No I/O, no clock, no global randomness: ``rng`` is injected.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections import deque
from collections.abc import Sequence
from typing import Final

DIMENSIONS: Final = 8
"""Euclidean dimensions of a coordinate (Serf: 8). More fit odd topologies better; each
costs 9 bytes in every ack."""
VIVALDI_ERROR_MAX: Final = 1.5
"""Upper bound of a coordinate's error estimate, also the error of a fresh coordinate
(Serf: 1.5). The error is a relative figure: 1.0 means the estimates are off by 100 %."""
VIVALDI_CE: Final = 0.25
"""Weight of a new sample in the moving error estimate (Serf's VivaldiCE)."""
VIVALDI_CC: Final = 0.25
"""Largest fraction of the estimate's mismatch moved in one update (Serf's VivaldiCC)."""
ADJUSTMENT_WINDOW: Final = 20
"""Samples in the adjustment term's window (Serf: 20): the adjustment is half the mean of
the last 20 (measured - raw estimated) residuals; it absorbs what the space cannot fit."""
LATENCY_FILTER_SIZE: Final = 3
"""Per-peer round trips kept; the median of them is used (Serf: 3). Drops a lone outlier
(a round trip slowed by a busy peer) at the cost of reacting one sample late."""
GRAVITY_RHO: Final = 150.0
"""Gravity's scale in seconds (Serf: 150): a pull toward the origin of (d/rho)**2 keeps the
whole mesh from drifting away together; negligible at real distances."""
HEIGHT_MIN: Final = 10.0e-6
"""Smallest height, seconds (Serf: 10 µs), also the height of a fresh coordinate."""
ZERO_THRESHOLD: Final = 1.0e-6
"""Below this (seconds) a distance or error sum counts as zero (Serf: 1e-6)."""

MAX_COMPONENT_S: Final = 10.0
"""Bound on each vector component read off the wire, seconds. Half the diameter of the
space any real mesh needs (no round trip on Earth is near 10 s); a component beyond it
is a hostile or corrupt coordinate."""
MAX_HEIGHT_S: Final = 10.0
"""Bound on a height read off the wire, seconds (same reasoning as ``MAX_COMPONENT_S``)."""
MAX_ADJUSTMENT_S: Final = 10.0
"""Bound on ``|adjustment|`` read off the wire, seconds."""
MAX_RTT_S: Final = 10.0
"""A measured round trip above this (seconds) is not used (Serf rejects the same)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Coordinate:
    """A node's position: ``vec`` (``DIMENSIONS`` floats), ``error`` (relative, in
    ``[0, VIVALDI_ERROR_MAX]``), ``adjustment`` and ``height`` (seconds)."""

    vec: tuple[float, ...]
    error: float = VIVALDI_ERROR_MAX
    adjustment: float = 0.0
    height: float = HEIGHT_MIN

    @classmethod
    def origin(cls) -> Coordinate:
        """A fresh coordinate: at the origin, maximal error, minimal height."""
        return cls((0.0,) * DIMENSIONS)

    def raw_distance_s(self, other: Coordinate) -> float:
        """Euclidean distance plus both heights, seconds (no adjustment)."""
        return _magnitude(_diff(self.vec, other.vec)) + self.height + other.height

    def distance_s(self, other: Coordinate) -> float:
        """Estimated round trip to ``other`` in seconds: the raw distance plus both
        adjustments, unless that would not be positive (then the raw distance)."""
        raw = self.raw_distance_s(other)
        adjusted = raw + self.adjustment + other.adjustment
        return adjusted if adjusted > 0.0 else raw


def coordinate_problem(coord: Coordinate) -> str | None:
    """Why ``coord`` (read off the wire) must not be used, or None when it is sound."""
    if len(coord.vec) != DIMENSIONS:
        return f"dimension {len(coord.vec)}, expected {DIMENSIONS}"
    # Plain loops rather than all()/any() over generators: checked twice per ack.
    isfinite = math.isfinite
    for v in (*coord.vec, coord.error, coord.adjustment, coord.height):
        if type(v) is not float or not isfinite(v):
            return "a component is not a finite float"
    for v in coord.vec:
        if abs(v) > MAX_COMPONENT_S:
            return f"a component is beyond ±{MAX_COMPONENT_S} s"
    if not 0.0 <= coord.error <= VIVALDI_ERROR_MAX:
        return f"error {coord.error} outside [0, {VIVALDI_ERROR_MAX}]"
    if not 0.0 <= coord.height <= MAX_HEIGHT_S:
        return f"height {coord.height} outside [0, {MAX_HEIGHT_S}] s"
    if abs(coord.adjustment) > MAX_ADJUSTMENT_S:
        return f"adjustment beyond ±{MAX_ADJUSTMENT_S} s"
    return None


def rtt_problem(rtt_s: float) -> str | None:
    """Why a measured round trip must not be used, or None."""
    if not math.isfinite(rtt_s) or rtt_s < 0.0:
        return "not a finite non-negative number"
    if rtt_s > MAX_RTT_S:
        return f"above {MAX_RTT_S} s"
    return None


def _diff(a: Sequence[float], b: Sequence[float]) -> list[float]:
    return [x - y for x, y in zip(a, b, strict=True)]


def _magnitude(v: Sequence[float]) -> float:
    return math.sqrt(sum([x * x for x in v]))  # a list: same sum, no generator


def _unit_vector_at(
    a: Sequence[float], b: Sequence[float], rng: random.Random
) -> tuple[list[float], float]:
    """The unit vector from ``b`` to ``a`` and the distance; a random direction (and 0)
    when the points coincide, so two nodes at the origin can move apart."""
    d = _diff(a, b)
    mag = _magnitude(d)
    if mag > ZERO_THRESHOLD:
        return [x / mag for x in d], mag
    d = [rng.random() - 0.5 for _ in d]
    mag = _magnitude(d)
    if mag > ZERO_THRESHOLD:
        return [x / mag for x in d], 0.0
    return [1.0] + [0.0] * (len(d) - 1), 0.0


def apply_force(
    coord: Coordinate, force: float, other: Coordinate, rng: random.Random
) -> Coordinate:
    """Move ``coord`` by ``force`` seconds away from ``other`` (toward it when negative);
    the height takes its share of the move, never below ``HEIGHT_MIN``."""
    unit, mag = _unit_vector_at(coord.vec, other.vec, rng)
    vec = tuple([x + u * force for x, u in zip(coord.vec, unit, strict=True)])
    height = coord.height
    if mag > ZERO_THRESHOLD:
        height = max((coord.height + other.height) * force / mag + coord.height, HEIGHT_MIN)
    # Built directly rather than with dataclasses.replace (several times slower): this runs
    # twice per acknowledged probe.
    return Coordinate(vec, coord.error, coord.adjustment, height)


class VivaldiClient:
    """Our coordinate and the per-peer latency filters; feed it with :meth:`update`.

    Peer state is bounded by the caller: :meth:`forget` a peer when it leaves the view.
    """

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._coord = Coordinate.origin()
        self._origin = Coordinate.origin()
        self._samples: dict[str, deque[float]] = {}
        self._adjustments = [0.0] * ADJUSTMENT_WINDOW
        self._adjustment_index = 0
        self.updates = 0
        """Updates applied."""
        self.resets = 0
        """Times our coordinate went invalid and was reset to the origin."""

    @property
    def coordinate(self) -> Coordinate:
        """Our current coordinate."""
        return self._coord

    def forget(self, node: str) -> None:
        """Drop the latency filter of ``node``."""
        self._samples.pop(node, None)

    def peers(self) -> int:
        """Peers with a latency filter."""
        return len(self._samples)

    def _filtered(self, node: str, rtt_s: float) -> float:
        samples = self._samples.get(node)
        if samples is None:
            samples = self._samples[node] = deque(maxlen=LATENCY_FILTER_SIZE)
        samples.append(rtt_s)
        ordered = sorted(samples)
        return ordered[len(ordered) // 2]

    def update(self, node: str, other: Coordinate, rtt_s: float) -> Coordinate:
        """Take one measured round trip ``rtt_s`` to ``node``, whose coordinate is
        ``other``; returns our new coordinate. Raises ValueError (changing nothing) when
        ``other`` or ``rtt_s`` is unusable: check with :func:`coordinate_problem` and
        :func:`rtt_problem` first."""
        problem = coordinate_problem(other) or rtt_problem(rtt_s)
        if problem is not None:
            raise ValueError(problem)
        rtt = self._filtered(node, rtt_s)
        self._update_vivaldi(other, rtt)
        self._update_adjustment(other, rtt)
        self._update_gravity()
        if coordinate_problem(self._coord) is not None:
            # Cannot happen with bounded inputs; if it does, start over rather than
            # spread a broken coordinate in every ack.
            self._coord = Coordinate.origin()
            self.resets += 1
        self.updates += 1
        return self._coord

    def _update_vivaldi(self, other: Coordinate, rtt: float) -> None:
        coord = self._coord
        rtt = max(rtt, ZERO_THRESHOLD)
        dist = coord.distance_s(other)
        wrongness = abs(dist - rtt) / rtt
        total_error = max(coord.error + other.error, ZERO_THRESHOLD)
        weight = coord.error / total_error
        error = VIVALDI_CE * weight * wrongness + coord.error * (1.0 - VIVALDI_CE * weight)
        coord = Coordinate(coord.vec, min(error, VIVALDI_ERROR_MAX), coord.adjustment, coord.height)
        force = VIVALDI_CC * weight * (rtt - dist)
        self._coord = apply_force(coord, force, other, self._rng)

    def _update_adjustment(self, other: Coordinate, rtt: float) -> None:
        self._adjustments[self._adjustment_index] = rtt - self._coord.raw_distance_s(other)
        self._adjustment_index = (self._adjustment_index + 1) % ADJUSTMENT_WINDOW
        adjustment = sum(self._adjustments) / (2.0 * ADJUSTMENT_WINDOW)
        coord = self._coord
        self._coord = Coordinate(coord.vec, coord.error, adjustment, coord.height)

    def _update_gravity(self) -> None:
        dist = self._origin.distance_s(self._coord)
        force = -((dist / GRAVITY_RHO) ** 2)
        self._coord = apply_force(self._coord, force, self._origin, self._rng)


def median_relative_error(pairs: Sequence[tuple[float, float]]) -> float | None:
    """Median of ``|estimated - measured| / measured`` over ``(estimated, measured)``
    pairs with a positive measured value; None when there is none."""
    errors = sorted(abs(e - m) / m for e, m in pairs if m > 0.0)
    if not errors:
        return None
    mid = len(errors) // 2
    return errors[mid] if len(errors) % 2 else (errors[mid - 1] + errors[mid]) / 2.0
