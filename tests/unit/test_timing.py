"""Tables of cases for the timing maths of SWIM and Lifeguard, local health and the
suspicion timer."""

from __future__ import annotations

import math

import pytest

from meshnode.core import timing
from meshnode.core.health import LocalHealth
from meshnode.core.suspicion import Suspicion

LOG2_OVER_LOG3 = math.log(2) / math.log(3)


@pytest.mark.parametrize(
    ("n", "expected"),
    [(0, 1.0), (1, 1.0), (5, 1.0), (10, 1.0), (100, 2.0), (1000, 3.0), (50, math.log10(50))],
)
def test_node_scale(n: int, expected: float) -> None:
    """The cluster-size factor of suspicion timeouts is max(1, log10 n)."""
    assert timing.node_scale(n) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("mult", "max_mult", "n", "interval", "low", "high"),
    [
        (4, 6, 1, 1.0, 4.0, 24.0),  # LAN, alone
        (4, 6, 10, 1.0, 4.0, 24.0),  # log10 10 = 1
        (4, 6, 50, 1.0, 4 * math.log10(50), 24 * math.log10(50)),
        (4, 6, 100, 1.0, 8.0, 48.0),
        (4, 6, 1000, 1.0, 12.0, 72.0),
        (6, 6, 10, 5.0, 30.0, 180.0),  # WAN
        (4, 4, 20, 0.2, 0.8 * math.log10(20), 3.2 * math.log10(20)),  # local
        (4, 4, 5, 0.2, 0.8, 3.2),
    ],
)
def test_suspicion_bounds(
    mult: int, max_mult: int, n: int, interval: float, low: float, high: float
) -> None:
    """min = mult × max(1, log10 n) × probe_interval; max = max_mult × min."""
    assert timing.suspicion_bounds(mult, max_mult, n, interval) == pytest.approx((low, high))


@pytest.mark.parametrize(
    ("mult", "n", "k"),
    [
        (4, 2, 0),  # only us and the suspect: nobody else can confirm
        (4, 3, 0),  # n − 2 = 1 < 2
        (4, 4, 2),
        (4, 1000, 2),
        (3, 2, 0),
        (3, 3, 1),
        (6, 5, 0),  # n − 2 = 3 < 4
        (6, 6, 4),
        (2, 100, 0),  # mult 2 expects no confirmations at all
        (1, 100, 0),
    ],
)
def test_expected_confirmations(mult: int, n: int, k: int) -> None:
    """k = suspicion_mult − 2, or 0 when the cluster cannot supply k confirmers."""
    assert timing.expected_confirmations(mult, n) == k


@pytest.mark.parametrize(
    ("c", "k", "low", "high", "expected"),
    [
        # memberlist's own table (suspicion_test.go), as totals from the start:
        (0, 3, 2.0, 30.0, 30.0),
        (1, 3, 2.0, 30.0, 16.0),
        (2, 3, 2.0, 30.0, 30.0 - math.log(3) / math.log(4) * 28.0),
        (3, 3, 2.0, 30.0, 2.0),
        (4, 3, 2.0, 30.0, 2.0),  # more than k: floored at the minimum
        (5, 3, 2.0, 30.0, 2.0),
        # LAN defaults, k = 2:
        (0, 2, 4.0, 24.0, 24.0),
        (1, 2, 4.0, 24.0, 24.0 - LOG2_OVER_LOG3 * 20.0),
        (2, 2, 4.0, 24.0, 4.0),
        # no confirmations expected: straight to the minimum
        (0, 0, 4.0, 24.0, 4.0),
        (3, 0, 4.0, 24.0, 4.0),
    ],
)
def test_suspicion_timeout(c: int, k: int, low: float, high: float, expected: float) -> None:
    """timeout = max − log(c+1)/log(k+1) × (max − min), floored at min."""
    assert timing.suspicion_timeout(c, k, low, high) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("mult", "n", "limit"),
    [
        (4, 0, 4),  # never below one round
        (4, 1, 4),
        (4, 9, 4),
        (4, 10, 8),
        (4, 99, 8),
        (4, 100, 12),
        (4, 999, 12),
        (4, 1000, 16),
        (3, 1, 3),  # memberlist's TestRetransmitLimit
        (3, 99, 6),
    ],
)
def test_retransmit_limit(mult: int, n: int, limit: int) -> None:
    """limit = retransmit_mult × ceil(log10(n + 1))."""
    assert timing.retransmit_limit(mult, n) == limit


@pytest.mark.parametrize(
    ("n", "factor"),
    [(1, 1), (32, 1), (33, 2), (64, 2), (65, 3), (128, 3), (129, 4), (256, 4), (1024, 6)],
)
def test_push_pull_interval(n: int, factor: int) -> None:
    """interval × (ceil(log2 n − log2 32) + 1) past 32 members (memberlist's table)."""
    assert timing.push_pull_interval(30.0, n) == pytest.approx(30.0 * factor)


@pytest.mark.parametrize(
    ("duration", "score", "expected"),
    [(1.0, 0, 1.0), (0.5, 1, 1.0), (0.5, 3, 2.0), (0.2, 7, 1.6)],
)
def test_health_scaled(duration: float, score: int, expected: float) -> None:
    """Lifeguard scales timeouts by score + 1."""
    assert timing.health_scaled(duration, score) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("acked", "expected_nacks", "nacks", "delta"),
    [
        (True, 0, 0, -1),  # direct ack
        (True, 3, 0, -1),  # relayed ack
        (False, 0, 0, 1),  # failed, nobody to ask
        (False, 3, 3, 1),  # failed, every relay answered: the target is the problem
        (False, 3, 2, 2),  # one missing nack
        (False, 3, 0, 4),  # no relay answered: we are probably the problem
        (False, 2, 5, 1),  # more nacks than asked (duplicates) never lower the penalty
    ],
)
def test_probe_health_delta(acked: bool, expected_nacks: int, nacks: int, delta: int) -> None:
    """−1 on success; +1 on failure plus +1 per missing nack."""
    assert timing.probe_health_delta(acked, expected_nacks, nacks) == delta


@pytest.mark.parametrize(("timeout", "expected"), [(0.5, 0.4), (3.0, 2.4), (0.1, 0.08)])
def test_nack_timeout(timeout: float, expected: float) -> None:
    """Relays answer a nack after 80 % of the probe timeout."""
    assert timing.nack_timeout(timeout) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("attempt", "initial", "maximum", "expected"),
    [
        (0, 1.0, 30.0, 1.0),
        (1, 1.0, 30.0, 2.0),
        (4, 1.0, 30.0, 16.0),
        (5, 1.0, 30.0, 30.0),
        (200, 1.0, 30.0, 30.0),
        (-1, 1.0, 30.0, 1.0),
        (3, 0.1, 1.0, 0.8),
    ],
)
def test_join_backoff(attempt: int, initial: float, maximum: float, expected: float) -> None:
    """Exponential backoff, capped."""
    assert timing.join_backoff(attempt, initial, maximum) == pytest.approx(expected)


def test_local_health_is_clamped_and_scales() -> None:
    """The score stays in [0, max − 1] and multiplies durations by score + 1."""
    health = LocalHealth(8)
    assert health.apply(-1) == 0
    for expected in range(1, 8):
        assert health.apply(1) == expected
    assert health.apply(5) == 7
    assert health.scale(0.5) == pytest.approx(4.0)
    assert health.apply(-3) == 4
    assert health.scale(1.0) == pytest.approx(5.0)
    assert LocalHealth(1).apply(10) == 0  # multiplier 1 disables awareness
    with pytest.raises(ValueError, match="max_multiplier"):
        LocalHealth(0)


def test_suspicion_confirmations_shrink_the_deadline() -> None:
    """Each new accuser moves the deadline along the log curve; repeats and extras don't."""
    s = Suspicion("n", 3, "a", start=100.0, k=3, min_timeout=2.0, max_timeout=30.0)
    assert s.deadline == pytest.approx(130.0)
    assert not s.confirm("a")  # the first accuser is not a confirmation
    assert s.confirm("b")
    assert s.deadline == pytest.approx(116.0)
    assert not s.confirm("b")
    assert s.confirm("c")
    assert s.deadline == pytest.approx(100.0 + timing.suspicion_timeout(2, 3, 2.0, 30.0))
    assert s.confirm("d")
    assert s.deadline == pytest.approx(102.0)
    assert not s.confirm("e")  # k reached
    assert s.confirmations == 3
    assert s.accusers == ("a", "b", "c", "d")
    s.shift(5.0)
    assert (s.start, s.deadline) == pytest.approx((105.0, 107.0))


def test_suspicion_without_expected_confirmations_runs_at_minimum() -> None:
    """k = 0: the timer starts at the minimum and confirmations change nothing."""
    s = Suspicion("n", 0, "a", start=0.0, k=0, min_timeout=4.0, max_timeout=24.0)
    assert s.deadline == 4.0
    assert not s.confirm("b")
    assert s.deadline == 4.0
    with pytest.raises(ValueError, match="bounds"):
        Suspicion("n", 0, "a", start=0.0, k=0, min_timeout=0.0, max_timeout=1.0)
