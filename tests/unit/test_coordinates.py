"""Vivaldi coordinates: the update rule, the latency filter, convergence on a known
network, and hostile coordinates off the wire (ignored and counted)."""

from __future__ import annotations

import dataclasses
import math
import random

import pytest

from meshnode.core import coordinates as vc
from meshnode.core.coordinates import Coordinate, VivaldiClient, coordinate_problem
from meshnode.core.effects import SendPacket
from meshnode.core.membership import Membership
from protocol import Ack, MalformedMessage, Ping, unpack
from protocol.codec import pack
from protocol.messages import NetworkCoordinate
from tests.unit.test_membership import alive_of, introduce, lonely, peer


def _at(*xs: float, error: float = 1.5, height: float = vc.HEIGHT_MIN) -> Coordinate:
    return Coordinate(tuple(xs) + (0.0,) * (vc.DIMENSIONS - len(xs)), error, 0.0, height)


# One update from a fresh coordinate against a peer at x = 10 ms, both errors 1.5, derived
# by hand from the formulas in the module docstring: weight 0.5, force 0.125 * (rtt -
# distance), height grown by its share, adjustment 1/40 of the residual, gravity's tiny pull.
UPDATES = [
    # (case, rtt_s, vec[0], error, height, adjustment)
    (
        "too close: pushed away",
        0.05,
        -0.004997498451940745,
        1.41245,
        1.99949907085468e-05,
        0.000874312625,
    ),
    ("too far: pulled toward", 0.002, 0.0010024999681104497, 1.5, 1e-05, -0.00017543749999999997),
]


@pytest.mark.parametrize(("case", "rtt", "x", "error", "height", "adjustment"), UPDATES)
def test_one_update_gives_the_known_coordinate(
    case: str, rtt: float, x: float, error: float, height: float, adjustment: float
) -> None:
    client = VivaldiClient(random.Random(1))
    new = client.update("peer", _at(0.01), rtt)
    assert new.vec[0] == pytest.approx(x, rel=1e-9), case
    assert new.vec[1:] == (0.0,) * (vc.DIMENSIONS - 1)
    assert new.error == pytest.approx(error, rel=1e-9)
    assert new.height == pytest.approx(height, rel=1e-9)
    assert new.adjustment == pytest.approx(adjustment, rel=1e-9)
    assert client.updates == 1


def test_coincident_points_move_apart_in_a_random_direction() -> None:
    """Two fresh nodes at the origin: the first update pushes ours off the origin by the
    force (0.125 * rtt, less the two heights), in a direction drawn from the rng."""
    a = VivaldiClient(random.Random(1)).update("p", Coordinate.origin(), 0.02)
    b = VivaldiClient(random.Random(2)).update("p", Coordinate.origin(), 0.02)
    assert math.dist(a.vec, (0.0,) * vc.DIMENSIONS) == pytest.approx(
        0.125 * (0.02 - 2e-5), rel=1e-6
    )
    assert a.vec != b.vec


def test_latency_filter_uses_the_median_of_the_last_three() -> None:
    """A lone 900 ms outlier among 20 ms round trips moves us as a 20 ms one would."""
    filtered = VivaldiClient(random.Random(1))
    plain = VivaldiClient(random.Random(1))
    other = _at(0.01)
    for rtt in (0.02, 0.02):
        filtered.update("p", other, rtt)
        plain.update("p", other, rtt)
    assert filtered.update("p", other, 0.9) == plain.update("p", other, 0.02)
    filtered.forget("p")
    assert filtered.peers() == 0


def test_converges_on_a_small_synthetic_network() -> None:
    """Six nodes at known points with known access delays; round trips are the true
    distances times 1 ± 5 % jitter. After 300 rounds every pair's estimate is within 15 %
    of the truth (the median within 5 %)."""
    points = [(0.0, 0.0), (0.03, 0.0), (0.0, 0.04), (0.03, 0.04), (0.015, 0.02), (0.05, 0.05)]
    access = [0.001, 0.002, 0.0005, 0.003, 0.001, 0.002]

    def truth(i: int, j: int) -> float:
        return math.dist(points[i], points[j]) + access[i] + access[j]

    rng = random.Random(1)
    clients = [VivaldiClient(random.Random(i)) for i in range(len(points))]
    for _ in range(300):
        for i, client in enumerate(clients):
            j = rng.choice([k for k in range(len(points)) if k != i])
            rtt = truth(i, j) * rng.uniform(0.95, 1.05)
            client.update(str(j), clients[j].coordinate, rtt)
    errors = [
        abs(clients[i].coordinate.distance_s(clients[j].coordinate) - truth(i, j)) / truth(i, j)
        for i in range(len(points))
        for j in range(i + 1, len(points))
    ]
    assert max(errors) <= 0.15, errors
    assert vc.median_relative_error([(e + 1.0, 1.0) for e in errors]) <= 0.05  # type: ignore[operator]
    assert all(c.coordinate.error < 0.3 for c in clients)


HOSTILE = [
    ("NaN component", dataclasses.replace(_at(0.01), vec=(math.nan,) + (0.0,) * 7)),
    ("infinite height", _at(0.01, height=math.inf)),
    ("huge component", _at(1e9)),
    ("component just beyond the bound", _at(vc.MAX_COMPONENT_S * 1.0001)),
    ("negative height", _at(0.01, height=-0.001)),
    ("huge height", _at(0.01, height=1e6)),
    ("error above the maximum", _at(0.01, error=1.6)),
    ("negative error", _at(0.01, error=-0.1)),
    ("NaN error", _at(0.01, error=math.nan)),
    ("huge adjustment", dataclasses.replace(_at(0.01), adjustment=-1e6)),
    ("wrong dimension", Coordinate((0.01, 0.0))),
    ("too many dimensions", Coordinate((0.0,) * 16)),
]


@pytest.mark.parametrize(("case", "coord"), HOSTILE)
def test_hostile_coordinates_are_refused_by_the_rule(case: str, coord: Coordinate) -> None:
    assert coordinate_problem(coord) is not None, case
    client = VivaldiClient(random.Random(1))
    with pytest.raises(ValueError):
        client.update("p", coord, 0.01)
    assert client.coordinate == Coordinate.origin()
    assert client.updates == 0 and client.peers() == 0


@pytest.mark.parametrize("rtt", [math.nan, -0.001, math.inf, vc.MAX_RTT_S * 1.01])
def test_unusable_round_trips_are_refused(rtt: float) -> None:
    client = VivaldiClient(random.Random(1))
    with pytest.raises(ValueError):
        client.update("p", _at(0.01), rtt)
    assert client.coordinate == Coordinate.origin()


def test_bounds_accept_the_extremes() -> None:
    assert coordinate_problem(Coordinate.origin()) is None
    edge = Coordinate((vc.MAX_COMPONENT_S,) * 8, vc.VIVALDI_ERROR_MAX, -vc.MAX_ADJUSTMENT_S, 0.0)
    assert coordinate_problem(edge) is None


# ---------------------------------------------------------------------------- in membership


def _wire(c: Coordinate) -> NetworkCoordinate:
    return NetworkCoordinate(c.vec, c.error, c.adjustment, c.height)


def _probe_and_ack(m: Membership, coord: NetworkCoordinate | None, rtt: float) -> str:
    """Run ``m`` to its next probe of peer 1 and answer it directly after ``rtt``."""
    for _ in range(100):
        now = m.next_deadline()
        m.tick(now)
        pings = [
            (e.addr, msg)
            for e in m.take_effects()
            if isinstance(e, SendPacket)
            for msg in e.messages
            if isinstance(msg, Ping)
        ]
        if pings:
            break
    else:
        raise AssertionError("no probe was sent")
    addr, ping = pings[0]
    m.receive(ping.target, [Ack(ping.seq, 0, 2, coord)], addr, now + rtt)
    m.take_effects()
    return ping.target


def _member_pair() -> Membership:
    m, _ = lonely()
    introduce(m, [alive_of(peer(1))], 0.0)
    m.take_effects()
    return m


def test_a_direct_ack_moves_our_coordinate_and_gives_an_estimate() -> None:
    m = _member_pair()
    assert m.estimated_rtt(peer(1).node_id) is None
    theirs = _at(0.01, error=0.2)
    target = _probe_and_ack(m, _wire(theirs), 0.02)
    assert m.counters["coordinate_updates"] == 1
    assert m.peer_coordinate(target) == theirs
    assert m.coordinate() != Coordinate.origin()
    estimate = m.estimated_rtt(target)
    assert estimate is not None and estimate == m.coordinate().distance_s(theirs)
    assert m.estimated_rtt(m.node_id) == 0.0


def test_an_ack_without_a_coordinate_still_counts_and_changes_no_coordinate() -> None:
    """An older peer's ack (no coordinate) answers the probe as before."""
    m = _member_pair()
    target = _probe_and_ack(m, None, 0.02)
    member = m.member(target)
    assert member is not None and member.rtt == pytest.approx(0.02)
    assert m.coordinate() == Coordinate.origin()
    assert m.counters["coordinate_updates"] == 0 and m.peer_coordinate(target) is None


@pytest.mark.parametrize(("case", "coord"), HOSTILE)
def test_a_hostile_coordinate_in_an_ack_is_ignored_and_counted(
    case: str, coord: Coordinate
) -> None:
    """The ack itself still answers the probe (the peer is alive); its coordinate is
    dropped: ours does not move, none is stored for the peer, the refusal is counted."""
    m = _member_pair()
    target = _probe_and_ack(m, _wire(coord), 0.02)
    assert m.counters["coordinates_rejected"] == 1, case
    assert m.counters["coordinate_updates"] == 0
    assert m.coordinate() == Coordinate.origin()
    assert m.peer_coordinate(target) is None and m.estimated_rtt(target) is None
    member = m.member(target)
    assert member is not None and member.rtt == pytest.approx(0.02)
    assert m.counters["probes_failed"] == 0


def test_acks_carry_our_coordinate_and_old_acks_still_decode() -> None:
    """Our ack carries the coordinate as a trailing field; an ack without it encodes as
    before and decodes with ``coordinate`` None."""
    m, _ = lonely()
    m.receive(peer(1).node_id, [Ping(3, m.node_id)], ("10.1.1.1", 7946), 0.0)
    (packet,) = [e for e in m.take_effects() if isinstance(e, SendPacket)]
    ack = packet.messages[0]  # piggybacked rumors follow
    assert isinstance(ack, Ack) and ack.coordinate == _wire(m.coordinate())
    assert unpack(pack(ack), Ack) == ack
    old = Ack(3, 1, 2)
    assert unpack(pack(old), Ack).coordinate is None
    assert len(pack(old)) < len(pack(ack))


def test_a_nan_coordinate_off_the_wire_is_malformed() -> None:
    """The codec admits only finite floats: a NaN coordinate makes the ack malformed."""
    import msgpack

    raw = msgpack.packb([3, 1, 0, 1, [[math.nan] * 8, 1.0, 0.0, 1e-5]])
    good = msgpack.packb([3, 1, 0, 1, [[0.0] * 8, 1.0, 0.0, 1e-5]])
    assert unpack(good, Ack).coordinate is not None
    with pytest.raises(MalformedMessage):
        unpack(raw, Ack)
