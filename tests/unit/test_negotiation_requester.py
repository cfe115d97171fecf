"""The requester side of negotiation: candidate order, counters, timeouts, peer failures,
result verification, cancellation, remaining-deadline propagation and breaker reports."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from meshnode.core.breaker import BreakerBoard, TaskVerdict
from meshnode.core.negotiation import (
    RESPONSE_TIMEOUT_S,
    AttemptEnded,
    AttemptOutcome,
    Done,
    Failed,
    RequesterCore,
    RequesterEffect,
    SendCancel,
    SendConfirm,
    SendRequest,
)
from protocol import (
    Identity,
    TaskCancel,
    TaskConfirm,
    TaskResponse,
    TaskResult,
    TaskStatus,
    signing_bytes,
    verify,
)

ME = Identity.from_seed(b"\x10" * 32)
P1 = Identity.from_seed(b"\x11" * 32)
P2 = Identity.from_seed(b"\x12" * 32)
P3 = Identity.from_seed(b"\x13" * 32)
NODES = [P1.node_id, P2.node_id, P3.node_id]
N1, N2, N3 = NODES
TASK = "task-1"


def make(**kwargs: Any) -> RequesterCore:
    kwargs.setdefault("task_id", TASK)
    kwargs.setdefault("verifier", verify)
    candidates = kwargs.pop("candidates", NODES)
    return RequesterCore(ME.node_id, "echo", {"text": "hi"}, candidates, **kwargs)


def accepted() -> TaskResponse:
    return TaskResponse(TASK, TaskStatus.ACCEPTED, "", 100.0, None)


def rejected(reason: str = "busy: full") -> TaskResponse:
    return TaskResponse(TASK, TaskStatus.REJECTED, reason, None, None)


def countered(ms: int) -> TaskResponse:
    return TaskResponse(TASK, TaskStatus.COUNTERED, "at capacity", float(ms), ms)


def result(
    by: Identity, ok: bool = True, *, task_id: str = TASK, requester: str | None = None
) -> TaskResult:
    unsigned = TaskResult(
        task_id=task_id,
        requester=ME.node_id if requester is None else requester,
        provider=by.node_id,
        ok=ok,
        output={"text": "hola"} if ok else None,
        error="" if ok else "handler raised",
        elapsed_ms=12.0,
        signature=b"\x00" * 64,
    )
    return dataclasses.replace(unsigned, signature=by.sign(signing_bytes(unsigned)))


def kinds(effects: list[RequesterEffect]) -> list[str]:
    return [type(e).__name__ for e in effects]


def sent_to(effects: list[RequesterEffect]) -> list[str]:
    return [e.node for e in effects if isinstance(e, SendRequest)]


def ended(effects: list[RequesterEffect]) -> list[AttemptOutcome]:
    return [e.attempt.outcome for e in effects if isinstance(e, AttemptEnded)]


def test_first_request_carries_everything() -> None:
    """start() sends the task to the best candidate with the whole remaining deadline."""
    core = make(deadline_s=30.0, budget_usd=0.5, trace_id="tr")
    [send] = core.start(100.0)
    assert isinstance(send, SendRequest)
    assert send.node == N1
    r = send.request
    assert (r.task_id, r.capability, r.input) == (TASK, "echo", {"text": "hi"})
    assert (r.deadline_ms, r.budget_usd, r.trace_id) == (30_000, 0.5, "tr")
    assert core.current_node == N1
    assert core.next_deadline() == 100.0 + RESPONSE_TIMEOUT_S


def test_reject_then_counter_within_ratio_is_confirmed() -> None:
    """REJECTED moves to the next candidate; a counter within 1.5× the asked deadline is
    confirmed automatically and its result ends the delegation."""
    core = make(deadline_s=30.0, attempt_deadline_ms=10_000)
    assert sent_to(core.start(0.0)) == [N1]
    effects = core.on_response(N1, rejected(), 0.1)
    assert ended(effects) == [AttemptOutcome.REJECTED]
    [send] = [e for e in effects if isinstance(e, SendRequest)]
    assert send.node == N2
    assert send.request.deadline_ms == 10_000
    effects = core.on_response(N2, countered(15_000), 0.2)
    assert effects == [SendConfirm(N2, TaskConfirm(TASK, True))]
    assert core.next_deadline() == pytest.approx(0.1 + 15.0)
    effects = core.on_result(N2, result(P2), 5.0)
    assert kinds(effects) == ["AttemptEnded", "Done"]
    done = effects[-1]
    assert isinstance(done, Done)
    assert done.provider == N2
    assert done.result.ok
    assert [a.outcome for a in done.attempts] == [
        AttemptOutcome.REJECTED,
        AttemptOutcome.DELIVERED,
    ]
    assert done.attempts[1].counter_deadline_ms == 15_000
    assert done.attempts[1].response_ms == pytest.approx(100.0)
    assert done.elapsed_s == 5.0
    assert core.finished
    assert core.outcome == done
    assert core.next_deadline() is None


@pytest.mark.parametrize(
    ("deadline_s", "cap_ms", "counter_ms", "confirmed"),
    [
        (30.0, 10_000, 15_000, True),  # exactly 1.5×
        (30.0, 10_000, 15_001, False),  # just over 1.5×
        (30.0, 10_000, 10_000, True),
        (12.0, 10_000, 12_000, True),  # within 1.5× and ends exactly at the deadline
        (12.0, 10_000, 12_001, False),  # within 1.5× but past the overall deadline
        (10.0, None, 10_000, True),  # no cap: the whole remaining time was asked
        (10.0, None, 10_001, False),
    ],
)
def test_counter_rule(
    deadline_s: float, cap_ms: int | None, counter_ms: int, confirmed: bool
) -> None:
    """A counter is confirmed iff ≤ 1.5× the asked deadline and within the overall time;
    a declined counter is answered with accept=False and the next candidate is tried."""
    core = make(deadline_s=deadline_s, attempt_deadline_ms=cap_ms)
    core.start(0.0)
    effects = core.on_response(N1, countered(counter_ms), 0.05)
    assert effects[0] == SendConfirm(N1, TaskConfirm(TASK, confirmed))
    if confirmed:
        assert len(effects) == 1
        assert core.current_node == N1
    else:
        assert ended(effects) == [AttemptOutcome.DECLINED]
        assert sent_to(effects) == [N2]
        assert effects[1].attempt.verdict is TaskVerdict.ABANDONED  # type: ignore[union-attr]


def test_remaining_deadline_propagates() -> None:
    """Each attempt's request asks for what is left of the overall deadline."""
    core = make(deadline_s=30.0)
    assert core.start(0.0)[0].request.deadline_ms == 30_000  # type: ignore[union-attr]
    effects = core.tick(2.0)  # response timeout on N1
    [send] = [e for e in effects if isinstance(e, SendRequest)]
    assert send.node == N2
    assert send.request.deadline_ms == 28_000
    effects = core.on_response(N2, rejected(), 2.5)
    [send] = [e for e in effects if isinstance(e, SendRequest)]
    assert send.node == N3
    assert send.request.deadline_ms == 27_500


def test_response_timeout_moves_on_and_cancels() -> None:
    """No response within the timeout: TaskCancel to the silent peer, failure, next one."""
    core = make()
    core.start(0.0)
    assert core.tick(RESPONSE_TIMEOUT_S - 0.001) == []
    effects = core.tick(RESPONSE_TIMEOUT_S)
    assert kinds(effects) == ["SendCancel", "AttemptEnded", "SendRequest"]
    assert effects[0] == SendCancel(N1, TaskCancel(TASK, "no response in time"))
    assert ended(effects) == [AttemptOutcome.RESPONSE_TIMEOUT]
    assert effects[1].attempt.verdict is TaskVerdict.FAILURE  # type: ignore[union-attr]
    # A late answer from the abandoned peer is ignored.
    assert core.on_response(N1, accepted(), 2.1) == []
    assert core.on_result(N1, result(P1), 2.2) == []


def test_execution_timeout_moves_on() -> None:
    """Accepted but no result by the asked deadline: cancel, failure, next candidate."""
    core = make(deadline_s=30.0, attempt_deadline_ms=5_000)
    core.start(0.0)
    assert core.on_response(N1, accepted(), 0.1) == []
    assert core.next_deadline() == 5.0
    assert core.tick(4.99) == []
    effects = core.tick(5.0)
    assert kinds(effects) == ["SendCancel", "AttemptEnded", "SendRequest"]
    assert ended(effects) == [AttemptOutcome.EXECUTION_TIMEOUT]
    assert sent_to(effects) == [N2]


def test_overall_deadline_ends_everything() -> None:
    """When the accepted deadline is the overall one, its expiry fails the delegation."""
    core = make(deadline_s=10.0)
    core.start(0.0)
    core.on_response(N1, accepted(), 0.1)
    effects = core.tick(10.0)
    assert kinds(effects) == ["SendCancel", "AttemptEnded", "Failed"]
    failed = effects[-1]
    assert isinstance(failed, Failed)
    assert failed.reason == "deadline exceeded"
    assert core.tick(11.0) == []


def test_short_remaining_time_cuts_the_response_wait() -> None:
    """With less than the response timeout left, the wait ends at the overall deadline and
    the attempt is not held against the peer."""
    core = make(deadline_s=1.0)
    core.start(0.0)
    assert core.next_deadline() == 1.0
    effects = core.tick(1.0)
    assert ended(effects) == [AttemptOutcome.DEADLINE_EXCEEDED]
    assert effects[1].attempt.verdict is TaskVerdict.ABANDONED  # type: ignore[union-attr]
    assert isinstance(effects[-1], Failed)


def test_peer_failure_mid_task() -> None:
    """A dropped connection or dead peer aborts that attempt at once and moves on."""
    core = make()
    core.start(0.0)
    core.on_response(N1, accepted(), 0.1)
    assert core.on_peer_failed(N3, "unrelated", 0.2) == []
    effects = core.on_peer_failed(N1, "connection reset", 0.3)
    assert kinds(effects) == ["AttemptEnded", "SendRequest"]
    attempt = effects[0].attempt  # type: ignore[union-attr]
    assert attempt.outcome is AttemptOutcome.PEER_FAILED
    assert attempt.detail == "connection reset"
    assert attempt.verdict is TaskVerdict.FAILURE
    assert sent_to(effects) == [N2]


def _flip(sig: bytes) -> bytes:
    return bytes([sig[0] ^ 1]) + sig[1:]


BAD_RESULTS: list[tuple[str, TaskResult]] = [
    (
        "flipped signature byte",
        dataclasses.replace(result(P1), signature=_flip(result(P1).signature)),
    ),
    ("tampered output", dataclasses.replace(result(P1), output={"text": "evil"})),
    ("signed by another provider", result(P3)),
    ("other requester", result(P1, requester=P2.node_id)),
    ("other task id", result(P1, task_id="task-2")),
]


@pytest.mark.parametrize("bad", [b[1] for b in BAD_RESULTS], ids=[b[0] for b in BAD_RESULTS])
def test_forged_or_mismatched_result_is_a_failure(bad: TaskResult) -> None:
    """A result that does not verify, or names the wrong task, requester or provider, counts
    as a failure of the peer that sent it, and the next candidate is tried."""
    core = make()
    core.start(0.0)
    core.on_response(N1, accepted(), 0.1)
    effects = core.on_result(N1, bad, 0.5)
    assert ended(effects) == [AttemptOutcome.FORGED_RESULT]
    assert effects[0].attempt.verdict is TaskVerdict.FAILURE  # type: ignore[union-attr]
    assert sent_to(effects) == [N2]
    assert not core.finished


def test_failed_result_retries_or_ends() -> None:
    """A signed failed result moves on by default; with retries off it ends the delegation."""
    core = make()
    core.start(0.0)
    core.on_response(N1, accepted(), 0.1)
    effects = core.on_result(N1, result(P1, ok=False), 0.5)
    assert ended(effects) == [AttemptOutcome.FAILED_RESULT]
    assert sent_to(effects) == [N2]
    core.on_response(N2, rejected(), 0.6)
    effects = core.on_response(N3, rejected(), 0.7)
    failed = effects[-1]
    assert isinstance(failed, Failed)
    assert failed.reason.startswith("all 3 candidates tried; last: rejected")
    assert failed.last_result is not None
    assert failed.last_result.provider == N1

    once = make(retry_failed_results=False)
    once.start(0.0)
    effects = once.on_result(N1, result(P1, ok=False), 0.5)
    assert isinstance(effects[-1], Done)
    assert not effects[-1].result.ok


def test_refused_output_moves_on_to_the_next_candidate() -> None:
    """A verified ``ok`` result whose output ``check_output`` refuses is a failed attempt
    (with the reason), and the next candidate is tried; an accepted one ends the task."""
    seen: list[str] = []

    def check(res: TaskResult) -> str | None:
        seen.append(res.provider)
        return "missing field 'text'" if res.provider == N1 else None

    core = make(check_output=check)
    core.start(0.0)
    core.on_response(N1, accepted(), 0.1)
    effects = core.on_result(N1, result(P1), 0.5)
    assert ended(effects) == [AttemptOutcome.FAILED_RESULT]
    [attempt] = [e.attempt for e in effects if isinstance(e, AttemptEnded)]
    assert attempt.detail == "output refused: missing field 'text'"
    assert sent_to(effects) == [N2]
    core.on_response(N2, accepted(), 0.6)
    effects = core.on_result(N2, result(P2), 0.9)
    assert ended(effects) == [AttemptOutcome.DELIVERED]
    done = effects[-1]
    assert isinstance(done, Done)
    assert done.provider == N2
    assert seen == [N1, N2]


def test_check_output_sees_only_verified_successes() -> None:
    """Failed results and forged ones never reach ``check_output``; with retries off a
    refused output ends the delegation as failed, carrying the refused result."""
    seen: list[str] = []

    def check(res: TaskResult) -> str | None:
        seen.append(res.provider)
        return "wrong shape"

    core = make(check_output=check)
    core.start(0.0)
    core.on_response(N1, accepted(), 0.1)
    core.on_result(N1, result(P1, ok=False), 0.2)  # failed: not checked
    core.on_response(N2, accepted(), 0.3)
    core.on_result(N2, result(P3), 0.4)  # signed by someone else: forged, not checked
    assert seen == []

    once = make(check_output=check, retry_failed_results=False)
    once.start(0.0)
    effects = once.on_result(N1, result(P1), 0.5)
    assert seen == [N1]
    assert ended(effects) == [AttemptOutcome.FAILED_RESULT]
    failed = effects[-1]
    assert isinstance(failed, Failed)
    assert failed.reason == "output refused: wrong shape"
    assert failed.last_result is not None
    assert failed.last_result.ok


def test_cancel_sends_task_cancel() -> None:
    """cancel() sends TaskCancel to the current peer, records it, and fails; later inputs
    are ignored."""
    core = make()
    core.start(0.0)
    core.on_response(N1, accepted(), 0.1)
    effects = core.cancel(0.5)
    assert effects[0] == SendCancel(N1, TaskCancel(TASK, "cancelled by caller"))
    assert ended(effects) == [AttemptOutcome.CANCELLED]
    assert isinstance(effects[-1], Failed)
    assert effects[-1].reason == "cancelled by caller"
    assert core.on_result(N1, result(P1), 0.6) == []
    assert core.cancel(0.7) == []
    assert core.next_deadline() is None


def test_breaker_skips_open_candidates() -> None:
    """A candidate whose breaker refuses is skipped (recorded, no message, no verdict)."""
    board = BreakerBoard()
    for t in (0.0, 1.0, 2.0):
        board.record_failure(N1, t)
    core = make(allow=board.allow)
    assert sent_to(core.start(3.0)) == [N2]
    [skipped] = core.attempts
    assert skipped.outcome is AttemptOutcome.SKIPPED
    assert skipped.verdict is None


def test_half_open_probe_and_verdicts_drive_the_board() -> None:
    """The half-open probe is taken by the core's allow call; the runtime records verdicts."""
    board = BreakerBoard()
    for t in (0.0, 1.0, 2.0):
        board.record_failure(N1, t)
    first = make(allow=board.allow, candidates=[N1])
    first.start(62.0)  # the probe
    second = make(allow=board.allow, candidates=[N1], task_id="task-2")
    effects = second.start(62.0)
    assert isinstance(effects[-1], Failed)
    assert effects[-1].reason == "every candidate's circuit is open"
    first.on_response(N1, accepted(), 62.1)
    for effect in first.on_result(N1, result(P1), 63.0):
        if isinstance(effect, AttemptEnded) and effect.attempt.verdict is not None:
            board.record(effect.attempt.node, effect.attempt.verdict, 63.0)
    assert board.allow(N1, 63.0)


def test_candidates_are_deduplicated_and_exclude_self() -> None:
    core = make(candidates=[N1, ME.node_id, N1, N2])
    core.start(0.0)
    core.on_response(N1, rejected(), 0.1)
    effects = core.on_response(N2, rejected(), 0.2)
    assert isinstance(effects[-1], Failed)
    assert [a.node for a in core.attempts] == [N1, N2]


def test_no_candidates() -> None:
    effects = make(candidates=[]).start(0.0)
    assert len(effects) == 1
    assert isinstance(effects[0], Failed)
    assert effects[0].reason == "no candidates"


def test_malformed_counter_is_a_protocol_error() -> None:
    """A counter without a deadline is a protocol error of that peer."""
    core = make()
    core.start(0.0)
    bad = TaskResponse(TASK, TaskStatus.COUNTERED, "", None, None)
    effects = core.on_response(N1, bad, 0.1)
    assert kinds(effects) == ["SendCancel", "AttemptEnded", "SendRequest"]
    assert ended(effects) == [AttemptOutcome.PROTOCOL_ERROR]


def test_rejection_after_confirm_moves_on() -> None:
    """If the reservation lapsed before the confirm arrived, the provider's REJECTED moves
    the delegation on; an ACCEPTED acknowledgement changes nothing."""
    core = make(attempt_deadline_ms=10_000)
    core.start(0.0)
    core.on_response(N1, countered(12_000), 0.1)
    assert core.on_response(N1, accepted(), 0.2) == []
    effects = core.on_response(N1, rejected("reservation_expired: not confirmed"), 0.3)
    assert ended(effects) == [AttemptOutcome.REJECTED]
    assert sent_to(effects) == [N2]


def test_messages_for_other_tasks_are_ignored() -> None:
    core = make()
    core.start(0.0)
    other = TaskResponse("other", TaskStatus.REJECTED, "", None, None)
    assert core.on_response(N1, other, 0.1) == []
    assert core.on_response(N2, rejected(), 0.1) == []
    assert core.current_node == N1


def test_start_twice_is_an_error() -> None:
    core = make()
    core.start(0.0)
    with pytest.raises(RuntimeError):
        core.start(1.0)


@pytest.mark.parametrize("start", [0.1, 0.7, 1234.567])
def test_remaining_deadline_has_no_float_noise(start: float) -> None:
    """Asked deadlines are whole milliseconds of what is left, without float noise."""
    core = make(deadline_s=30.0)
    assert core.start(start)[0].request.deadline_ms == 30_000  # type: ignore[union-attr]
    effects = core.on_response(N1, rejected(), start + 0.3)
    assert [e.request.deadline_ms for e in effects if isinstance(e, SendRequest)] == [29_700]
