"""Analytic reference for rumor spreading: the push-gossip epidemic.

Theory of operation
-------------------
In push gossip every informed node sends the rumor to ``f`` random peers per round. With
``x_r`` the informed fraction after round ``r``, an uninformed node escapes all
``f · n · x_r`` transmissions of round ``r + 1`` with probability
``(1 − 1/n)^(f n x_r) ≈ exp(−f x_r)``, which gives the mean-field recursion

    x_{r+1} = 1 − (1 − x_r) · exp(−f · x_r),      x_0 = 1 / n.

The number of rounds until everyone is informed is, with high probability, about
``log_{f+1} n + ln(n) / f`` (Pittel's result for ``f = 1`` is ``log2 n + ln n``; the first
term is the exponential growth phase, the second the coupon-collector tail). For ``n =
1,000`` and ``f = 3`` that is 4.98 + 2.30 = 7.3 rounds.

SWIM's dissemination differs from the ideal in three ways, all visible in the plot that
compares them: a node forwards a rumor only a limited number of times
(``retransmit_mult × ceil(log10(n + 1))``), rumors also ride on probe traffic, and a
manifest rumor only spreads further after the node fetched the manifest over TCP.
"""

from __future__ import annotations

import math

__all__ = ["mean_field_curve", "rounds_bound"]


def rounds_bound(n: int, fanout: int) -> float:
    """``log_{f+1}(n) + ln(n) / f``: rounds for push gossip to reach all ``n`` nodes."""
    if n <= 1:
        return 0.0
    if fanout < 1:
        raise ValueError("fanout must be at least 1")
    return math.log(n) / math.log(fanout + 1) + math.log(n) / fanout


def mean_field_curve(n: int, fanout: int, rounds: int) -> list[float]:
    """Informed fraction after each round ``0..rounds`` of push gossip (mean field)."""
    x = 1.0 / max(1, n)
    out = [x]
    for _ in range(rounds):
        x = 1.0 - (1.0 - x) * math.exp(-fanout * x)
        out.append(x)
    return out
