"""Timing maths of the membership protocol: small pure functions, tested against tables.

Theory of operation
-------------------
Everything time-related that SWIM and Lifeguard decide is a function of a few numbers:
the cluster size ``n`` (members not dead or left, ourselves included), the configured base
durations, the local health score and how many independent confirmations a suspicion has
collected. Keeping those formulas here, free of state, lets the membership core stay a
plain state machine and lets each formula be checked against a table of hand-computed
cases.

The formulas follow hashicorp/memberlist (the reference users compare us with), with
two deliberate differences, both documented where they apply: times are float seconds
(no millisecond flooring), and the nack timeout is 80 % of the probe timeout as in the
Lifeguard paper (memberlist uses the full probe timeout, so with its LAN defaults the nacks
tend to arrive just after the asker stopped waiting for them).
"""

from __future__ import annotations

import math

__all__ = [
    "NACK_TIMEOUT_FRACTION",
    "PUSH_PULL_SCALE_THRESHOLD",
    "expected_confirmations",
    "health_scaled",
    "join_backoff",
    "nack_timeout",
    "node_scale",
    "probe_health_delta",
    "push_pull_interval",
    "retransmit_limit",
    "suspicion_bounds",
    "suspicion_timeout",
]

PUSH_PULL_SCALE_THRESHOLD = 32
"""Cluster size up to which the push-pull interval is used unscaled (memberlist's value)."""

NACK_TIMEOUT_FRACTION = 0.8
"""A relay sends its nack after this fraction of the probe timeout (Lifeguard's choice)."""


def node_scale(n: int) -> float:
    """``max(1, log10(n))``: how suspicion timeouts grow with the cluster size ``n``.

    Larger clusters need more time for a suspicion to reach the suspect (and for its
    refutation to come back), roughly logarithmically in ``n`` because gossip spreads
    epidemically.
    """
    return max(1.0, math.log10(max(1, n)))


def suspicion_bounds(
    suspicion_mult: int, max_timeout_mult: int, n: int, probe_interval: float
) -> tuple[float, float]:
    """``(min, max)`` suspicion timeouts in seconds for a cluster of ``n`` members.

    ``min = suspicion_mult × max(1, log10 n) × probe_interval`` and
    ``max = max_timeout_mult × min``. A fresh suspicion waits ``max``; each independent
    confirmation brings the wait closer to ``min`` (see :func:`suspicion_timeout`).
    """
    low = suspicion_mult * node_scale(n) * probe_interval
    return low, max_timeout_mult * low


def expected_confirmations(suspicion_mult: int, n: int) -> int:
    """How many independent confirmations (``k``) take a suspicion down to its minimum.

    ``k = suspicion_mult − 2``: with no known phase relation to the other probers we expect
    to hit the nominal timeout two probe intervals short of what the multiplier allows.
    When the cluster is too small to supply ``k`` confirmers (``n − 2 < k``: take out the
    suspect and ourselves) we expect none, and the suspicion runs at its minimum from the
    start.
    """
    k = suspicion_mult - 2
    if k < 1 or n - 2 < k:
        return 0
    return k


def suspicion_timeout(
    confirmations: int, expected: int, min_timeout: float, max_timeout: float
) -> float:
    """Total time a suspicion lasts (from its start) after ``confirmations`` arrived.

    memberlist's formula ``max − log(c + 1) / log(k + 1) × (max − min)``, floored at
    ``min``: the first confirmations shrink the timeout most, and ``k`` of them reach the
    minimum. With ``k = 0`` (nobody expected to confirm) the timeout is ``min``.
    """
    if expected < 1:
        return min_timeout
    c = max(0, min(confirmations, expected))
    fraction = math.log(c + 1.0) / math.log(expected + 1.0)
    raw = max_timeout - fraction * (max_timeout - min_timeout)
    return max(min_timeout, raw)


def retransmit_limit(retransmit_mult: int, n: int) -> int:
    """Most times one rumor is piggybacked: ``retransmit_mult × ceil(log10(n + 1))``.

    Epidemic dissemination reaches every member with high probability after
    ``O(log n)`` rounds; the multiplier buys margin against packet loss.
    """
    return retransmit_mult * math.ceil(math.log10(max(1, n) + 1))


def push_pull_interval(base: float, n: int) -> float:
    """The anti-entropy period for ``n`` members (memberlist's ``pushPullScale``).

    Up to :data:`PUSH_PULL_SCALE_THRESHOLD` members the base interval is used; beyond it
    the interval is multiplied by ``ceil(log2 n − log2 32) + 1`` (2× from 33 to 64
    members, 3× up to 128, …), so the total TCP state-exchange traffic, which grows with
    ``n`` per exchange, stays roughly flat per node as the cluster grows.
    """
    if n <= PUSH_PULL_SCALE_THRESHOLD:
        return base
    multiplier = math.ceil(math.log2(n) - math.log2(PUSH_PULL_SCALE_THRESHOLD)) + 1
    return base * multiplier


def health_scaled(duration: float, score: int) -> float:
    """Lifeguard's local-health-aware timeout: ``duration × (score + 1)``.

    A node that sees signs of its own slowness (missed nacks, refuting suspicions of
    itself) waits longer before blaming others.
    """
    return duration * (score + 1)


def probe_health_delta(acked: bool, expected_nacks: int, nacks: int) -> int:
    """Change of the local health score after one probe (Lifeguard's rules).

    * a probe that got an ack (direct or relayed): ``−1``;
    * a failed probe: ``+1``, plus ``+1`` for every relay that was asked for an indirect
      probe but did not even answer with a nack — a missing nack points at *our* network
      or CPU rather than at the target.

    memberlist differs slightly: when relays were asked it counts only the missing nacks
    (a failed probe with every nack back costs nothing). We follow the Lifeguard paper.
    """
    if acked:
        return -1
    return 1 + max(0, expected_nacks - nacks)


def nack_timeout(probe_timeout: float) -> float:
    """How long a relay waits for the target's ack before answering the asker with a nack.

    80 % of the probe timeout, so the nack reaches the asker before its own probe period
    (at least twice the probe timeout) runs out.
    """
    return NACK_TIMEOUT_FRACTION * probe_timeout


def join_backoff(attempt: int, initial: float, maximum: float) -> float:
    """Delay before join attempt ``attempt + 1``: ``min(maximum, initial × 2^attempt)``."""
    if attempt >= 63:
        return maximum
    attempt = max(0, attempt)
    return min(maximum, initial * float(1 << attempt))
