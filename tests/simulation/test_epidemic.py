"""The analytic reference curve and bound, against hand-computed values."""

from __future__ import annotations

import itertools
import math

import pytest

from simulations.epidemic import mean_field_curve, rounds_bound


@pytest.mark.parametrize(
    ("n", "fanout", "expected"),
    [
        (1, 3, 0.0),
        (1000, 3, math.log(1000, 4) + math.log(1000) / 3),  # 4.983 + 2.303
        (1000, 1, math.log2(1000) + math.log(1000)),  # Pittel, fanout 1
        (10_000, 3, math.log(10_000, 4) + math.log(10_000) / 3),
    ],
)
def test_rounds_bound(n: int, fanout: int, expected: float) -> None:
    assert rounds_bound(n, fanout) == pytest.approx(expected)


def test_rounds_bound_for_1000_nodes_is_about_seven() -> None:
    assert rounds_bound(1000, 3) == pytest.approx(7.285, abs=1e-3)
    assert 1.25 * rounds_bound(1000, 3) == pytest.approx(9.1, abs=0.01)


def test_mean_field_curve_rises_to_one() -> None:
    curve = mean_field_curve(1000, 3, 12)
    assert curve[0] == pytest.approx(0.001)
    assert all(b > a for a, b in itertools.pairwise(curve))
    assert curve[-1] > 0.9999
    # By the bound's round count, essentially everyone is informed.
    assert curve[math.ceil(rounds_bound(1000, 3))] > 0.995
