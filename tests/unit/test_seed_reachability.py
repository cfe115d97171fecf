"""When a node counts as cut off from its seeds, and when it says so.

Rule (meshnode.core.health.SeedReachability): a node that joined through seeds is isolated
while it knows no other live member and every seed failed its last exchange; the shell
warns when it becomes isolated and every SEEDS_UNREACHABLE_WARN_INTERVAL_S while it stays
so, and reports once when a seed (or any member) is heard again.
"""

from __future__ import annotations

import pytest

from meshnode.core.health import (
    MAX_SEED_ERROR_CHARS,
    MAX_SEED_ERRORS_SHOWN,
    SEEDS_UNREACHABLE_WARN_INTERVAL_S,
    SeedReachability,
    SeedTransition,
)

A = ("127.0.0.1", 7946)
B = ("127.0.0.1", 7947)


@pytest.mark.parametrize(
    ("seeds", "failed", "alone", "isolated"),
    [
        ((), (), True, False),  # the first node of a mesh has no seeds: never isolated
        ((A,), (), True, False),  # no exchange has failed yet (the join is under way)
        ((A,), (A,), True, True),  # its only seed failed and nobody else is known
        ((A, B), (A,), True, False),  # one seed left that has not failed
        ((A, B), (A, B), True, True),  # every seed failed
        ((A,), (A,), False, False),  # a member is known (someone joined through us)
        ((A,), (B,), True, False),  # a failure of an address that is not a seed
    ],
)
def test_isolated_when_every_seed_failed_and_no_member_is_known(
    seeds: tuple[tuple[str, int], ...],
    failed: tuple[tuple[str, int], ...],
    alone: bool,
    isolated: bool,
) -> None:
    reach = SeedReachability()
    for addr in failed:
        reach.exchange_failed(addr, "ClientConnectorError: refused")
    transition = reach.update(seeds, alone, now=100.0)
    assert reach.isolated is isolated
    assert transition is (SeedTransition.ISOLATED if isolated else None)
    assert (reach.reason(100.0) is not None) is isolated


def test_warns_at_once_then_every_interval_and_reports_the_reconnection() -> None:
    reach = SeedReachability()
    reach.exchange_failed(A, "ClientConnectorError: refused")
    interval = SEEDS_UNREACHABLE_WARN_INTERVAL_S
    seen = {
        t: reach.update((A,), True, now=t)
        for t in (0.0, 1.0, interval - 0.1, interval, interval + 1, 2 * interval)
    }
    assert seen == {
        0.0: SeedTransition.ISOLATED,
        1.0: None,
        interval - 0.1: None,
        interval: SeedTransition.ISOLATED,
        interval + 1: None,
        2 * interval: SeedTransition.ISOLATED,
    }
    assert reach.isolated_for(2 * interval) == 2 * interval
    reason = reach.reason(2 * interval, detail=True)
    assert reason is not None
    assert "127.0.0.1:7946: ClientConnectorError: refused" in reason
    assert "none of the 1 seed(s) answered for 120 s" in reason
    public = reach.reason(2 * interval)  # what /v1/health shows anyone: no address
    assert public is not None and "127.0.0.1" not in public
    assert "(ClientConnectorError x1)" in public
    reach.exchange_succeeded(A)
    assert reach.update((A,), True, now=2 * interval + 1) is SeedTransition.RECONNECTED
    assert not reach.isolated and reach.reason(0.0) is None and reach.errors() == {}
    assert reach.update((A,), True, now=2 * interval + 2) is None  # reported once


def test_a_member_heard_of_clears_isolation_and_a_new_failure_starts_it_again() -> None:
    reach = SeedReachability()
    reach.exchange_failed(A, "TimeoutError: ")
    assert reach.update((A,), True, now=0.0) is SeedTransition.ISOLATED
    assert reach.update((A,), False, now=5.0) is SeedTransition.RECONNECTED
    # the member died and the seed still fails: isolated again, warned at once
    assert reach.update((A,), True, now=6.0) is SeedTransition.ISOLATED
    assert reach.isolated_for(16.0) == 10.0


def test_error_texts_are_bounded_and_forgotten_for_addresses_no_longer_seeds() -> None:
    reach = SeedReachability()
    reach.exchange_failed(A, "x" * 10_000)
    reach.exchange_failed(B, "refused")
    assert len(reach.errors()["127.0.0.1:7946"]) == MAX_SEED_ERROR_CHARS
    reach.update((B,), True, now=0.0)
    assert reach.errors() == {"127.0.0.1:7947": "refused"}


@pytest.mark.parametrize("interval", [0.0, -1.0, float("nan")])
def test_warn_interval_must_be_positive(interval: float) -> None:
    with pytest.raises(ValueError, match="warn_interval"):
        SeedReachability(interval)


def test_a_node_with_thousands_of_seeds_shows_a_bounded_reason() -> None:
    """A node restarted from its data dir joins through every member it remembers."""
    seeds = tuple(("10.0.0.1", 1000 + i) for i in range(2_000))
    reach = SeedReachability()
    for addr in seeds[:-1]:
        reach.exchange_failed(addr, "TimeoutError: ")
    assert reach.update(seeds, True, now=0.0) is None  # one seed has not failed yet
    reach.exchange_failed(seeds[-1], "TimeoutError: ")
    assert reach.update(seeds, True, now=1.0) is SeedTransition.ISOLATED
    assert len(reach.errors()) == MAX_SEED_ERRORS_SHOWN
    reason = reach.reason(1.0, detail=True)
    assert reason is not None and reason.count("TimeoutError") == MAX_SEED_ERRORS_SHOWN
    assert f"and {2_000 - MAX_SEED_ERRORS_SHOWN} more" in reason
    assert "none of the 2000 seed(s)" in reason
    assert "(TimeoutError x2000)" in str(reach.reason(1.0))
