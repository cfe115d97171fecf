"""Circuit breakers: table-driven runs of the state machine, and the per-peer board."""

from __future__ import annotations

import pytest

from meshnode.core.breaker import (
    DEFAULT_FAILURE_THRESHOLD,
    DEFAULT_PROBE_LEASE_S,
    DEFAULT_RECOVERY_TIME_S,
    BreakerBoard,
    BreakerState,
    CircuitBreaker,
    TaskVerdict,
)

CLOSED, OPEN, HALF = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN
Step = tuple[str, float, object]  # (operation, now, expected return value)

# Three failures at t = 0, 1, 2 open the circuit at t = 2; a probe is allowed from t = 62.
OPEN_AT_2: list[Step] = [("fail", 0, CLOSED), ("fail", 1, CLOSED), ("fail", 2, OPEN)]

RUNS: dict[str, list[Step]] = {
    "opens after exactly three consecutive failures": [
        ("allow", 0, True),
        *OPEN_AT_2,
        ("allow", 2, False),
        ("state", 30, OPEN),
    ],
    "a success ends the run of failures": [
        ("fail", 0, CLOSED),
        ("fail", 1, CLOSED),
        ("ok", 2, CLOSED),
        ("fail", 3, CLOSED),
        ("fail", 4, CLOSED),
        ("allow", 4, True),
        ("fail", 5, OPEN),
    ],
    "one half-open probe, then success closes": [
        *OPEN_AT_2,
        ("allow", 61.9, False),
        ("state", 62, HALF),
        ("allow", 62, True),
        ("allow", 62.1, False),
        ("allow", 100, False),
        ("state", 100, HALF),
        ("ok", 101, CLOSED),
        ("allow", 101, True),
        ("allow", 101, True),
    ],
    "a failed probe reopens with a fresh timer": [
        *OPEN_AT_2,
        ("allow", 62, True),
        ("fail", 70, OPEN),
        ("allow", 129.9, False),
        ("state", 130, HALF),
        ("allow", 130, True),
        ("allow", 130, False),
    ],
    "an abandoned probe is handed back": [
        *OPEN_AT_2,
        ("allow", 62, True),
        ("abandon", 63, HALF),
        ("allow", 63, True),
        ("allow", 63, False),
    ],
    "a lost probe is presumed lost after its lease": [
        *OPEN_AT_2,
        ("allow", 62, True),
        ("allow", 62 + DEFAULT_PROBE_LEASE_S - 1, False),
        ("allow", 62 + DEFAULT_PROBE_LEASE_S, True),
    ],
    "late outcomes while open neither extend nor close it": [
        *OPEN_AT_2,
        ("fail", 30, OPEN),
        ("ok", 31, OPEN),
        ("allow", 61, False),
        ("allow", 62, True),
    ],
    "abandoned outcomes while closed change nothing": [
        ("fail", 0, CLOSED),
        ("fail", 1, CLOSED),
        ("abandon", 2, CLOSED),
        ("fail", 3, OPEN),
    ],
}


def _run(breaker: CircuitBreaker, steps: list[Step]) -> None:
    for i, (op, now, expected) in enumerate(steps):
        if op == "allow":
            got: object = breaker.allow(now)
        elif op == "state":
            got = breaker.state(now)
        elif op == "fail":
            got = breaker.record_failure(now)
        elif op == "ok":
            got = breaker.record_success(now)
        elif op == "abandon":
            got = breaker.record_abandoned(now)
        else:  # pragma: no cover - a typo in the table
            raise AssertionError(op)
        assert got == expected, f"step {i}: {op}@{now} gave {got}, expected {expected}"


@pytest.mark.parametrize("name", sorted(RUNS))
def test_breaker_runs(name: str) -> None:
    """Each run of outcomes drives the documented transitions, step by step."""
    _run(CircuitBreaker(), RUNS[name])


def test_defaults_are_the_documented_ones() -> None:
    """Three failures and sixty seconds, as the design states."""
    assert DEFAULT_FAILURE_THRESHOLD == 3
    assert DEFAULT_RECOVERY_TIME_S == 60.0


@pytest.mark.parametrize("threshold", [1, 2, 5])
def test_threshold_is_exact(threshold: int) -> None:
    """The circuit opens on exactly the threshold-th consecutive failure, not before."""
    breaker = CircuitBreaker(failure_threshold=threshold, recovery_time=10)
    for i in range(threshold - 1):
        assert breaker.record_failure(i) is CLOSED
    assert breaker.record_failure(threshold) is OPEN


def test_state_is_a_pure_read() -> None:
    """Asking for the state never consumes the half-open probe."""
    breaker = CircuitBreaker()
    _run(breaker, OPEN_AT_2)
    for _ in range(5):
        assert breaker.state(70) is HALF
    assert breaker.allow(70) is True


@pytest.mark.parametrize(
    "kwargs",
    [{"failure_threshold": 0}, {"recovery_time": -1.0}, {"probe_lease": 0.0}],
)
def test_bad_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(**kwargs)  # type: ignore[arg-type]


def test_board_tracks_peers_independently() -> None:
    """Each peer has its own breaker; unknown peers are closed and allowed."""
    board = BreakerBoard()
    assert board.allow("a", 0) is True
    assert board.state("a", 0) is CLOSED
    for t in (0, 1, 2):
        board.record_failure("a", t)
    board.record_failure("b", 2)
    assert board.state("a", 3) is OPEN
    assert board.state("b", 3) is CLOSED
    assert board.allow("a", 3) is False
    assert board.allow("b", 3) is True
    assert board.open_nodes(3) == {"a"}
    assert board.open_nodes(62) == {"a"}  # half-open is still degraded
    assert board.is_degraded("a", 62)
    assert not board.is_degraded("b", 62)
    assert board.allow("a", 62) is True
    assert board.allow("a", 62) is False
    assert board.record("a", TaskVerdict.SUCCESS, 63) is CLOSED
    assert board.open_nodes(63) == set()


def test_board_snapshot_and_pruning() -> None:
    """The snapshot shows every remembered peer; fresh-again peers are dropped."""
    board = BreakerBoard(recovery_time=10)
    for t in (0, 1, 2):
        board.record("a", TaskVerdict.FAILURE, t)
    board.record_failure("b", 0)
    snap = board.snapshot(5)
    assert list(snap) == ["a", "b"]
    assert snap["a"].state is OPEN
    assert snap["a"].opened_at == 2
    assert snap["a"].retry_at == 12
    assert snap["a"].consecutive_failures == 3
    assert snap["a"].total_failures == 3
    assert snap["b"].state is CLOSED
    assert snap["b"].retry_at is None
    board.record_success("b", 6)
    assert list(board) == ["a"]
    assert board.allow("a", 12)
    assert board.snapshot(12)["a"].probe_in_flight is True
    board.record("a", TaskVerdict.ABANDONED, 13)
    assert board.snapshot(13)["a"].probe_in_flight is False
    board.forget("a")
    assert len(board) == 0
    assert board.record_success("zzz", 1) is CLOSED
    assert board.record_abandoned("zzz", 1) is CLOSED
    assert len(board) == 0
