"""The provider side of negotiation: admission, counters, reservations, idempotency,
deadlines, cancellation and signed results."""

from __future__ import annotations

from typing import Any

import pytest

from meshnode.core.negotiation import (
    COUNTER_SAFETY_FACTOR,
    COUNTER_SAFETY_MS,
    RESERVATION_HOLD_S,
    CancelOutcome,
    ProviderCore,
    RejectCode,
    reject_code,
)
from protocol import (
    Capability,
    FastSigner,
    Identity,
    TaskCancel,
    TaskConfirm,
    TaskRequest,
    TaskResponse,
    TaskResult,
    TaskStatus,
    decode,
    encode,
    public_key_from_node_id,
    signing_bytes,
    verify,
)
from tests.unit.requester_facts import EVERYONE

PROVIDER = Identity.from_seed(b"\x03" * 32)
ALICE = Identity.from_seed(b"\x04" * 32).node_id
BOB = Identity.from_seed(b"\x05" * 32).node_id
CAROL = Identity.from_seed(b"\x06" * 32).node_id

ECHO = Capability(
    name="echo",
    description="Echo text back",
    input_schema={
        "type": "object",
        "properties": {"text": {"type": "string"}},
        "required": ["text"],
    },
    avg_latency_ms=1000,
    cost_per_call_usd=0.01,
)
FREE = Capability(name="free", description="No schema, no cost")


def make(max_tasks: int = 2, **kwargs: Any) -> ProviderCore:
    kwargs.setdefault("facts", EVERYONE)
    return ProviderCore(PROVIDER, {"echo": ECHO, "free": FREE}, max_tasks, **kwargs)


def req(
    task_id: str = "t1",
    capability: str = "echo",
    task_input: Any = None,
    deadline_ms: int = 10_000,
    budget: float | None = None,
) -> TaskRequest:
    return TaskRequest(
        task_id=task_id,
        capability=capability,
        input={"text": "hi"} if task_input is None else task_input,
        deadline_ms=deadline_ms,
        budget_usd=budget,
        trace_id="trace",
    )


def result_verifies(result: TaskResult) -> bool:
    key = public_key_from_node_id(result.provider)
    return verify(key, signing_bytes(result), result.signature)


# --------------------------------------------------------------------------- admission

ADMISSION: list[tuple[str, TaskRequest, TaskStatus, RejectCode | None]] = [
    (
        "unknown capability",
        req(capability="nope"),
        TaskStatus.REJECTED,
        RejectCode.UNKNOWN_CAPABILITY,
    ),
    ("over budget", req(budget=0.001), TaskStatus.REJECTED, RejectCode.OVER_BUDGET),
    ("budget exactly the cost", req(budget=0.01), TaskStatus.ACCEPTED, None),
    ("no budget", req(budget=None), TaskStatus.ACCEPTED, None),
    ("zero budget, zero cost", req(capability="free", budget=0.0), TaskStatus.ACCEPTED, None),
    (
        "deadline below latency",
        req(deadline_ms=999),
        TaskStatus.REJECTED,
        RejectCode.DEADLINE_TOO_SHORT,
    ),
    ("deadline equal to latency", req(deadline_ms=1000), TaskStatus.ACCEPTED, None),
    (
        "input missing a property",
        req(task_input={"txt": "hi"}),
        TaskStatus.REJECTED,
        RejectCode.INVALID_INPUT,
    ),
    (
        "input of the wrong type",
        req(task_input={"text": 3}),
        TaskStatus.REJECTED,
        RejectCode.INVALID_INPUT,
    ),
    ("input not an object", req(task_input=[1]), TaskStatus.REJECTED, RejectCode.INVALID_INPUT),
    (
        "no schema accepts any input",
        req(capability="free", task_input=[1]),
        TaskStatus.ACCEPTED,
        None,
    ),
    # Cheap checks come first: an unaffordable request is refused before its input is read.
    (
        "budget before input",
        req(budget=0.0, task_input=5),
        TaskStatus.REJECTED,
        RejectCode.OVER_BUDGET,
    ),
]


@pytest.mark.parametrize(
    ("request_", "status", "code"), [c[1:] for c in ADMISSION], ids=[c[0] for c in ADMISSION]
)
def test_admission_table(
    request_: TaskRequest, status: TaskStatus, code: RejectCode | None
) -> None:
    """Each request gets the documented status and, when refused, the documented reason."""
    core = make()
    decision = core.on_request(ALICE, request_, now=0.0)
    assert decision.response.status == status
    assert decision.response.task_id == request_.task_id
    assert not decision.duplicate
    # What the core answers is valid on the wire, and survives a round trip unchanged.
    [decoded] = decode(encode([decision.response], PROVIDER)).messages
    assert decoded == decision.response
    if code is None:
        assert decision.start is not None
        assert decision.start.request == request_
        assert decision.start.remaining_ms == request_.deadline_ms
        assert core.running == 1
    else:
        assert reject_code(decision.response.reason) is code
        assert decision.start is None
        assert core.in_flight == 0


def test_accepted_carries_latency_estimate() -> None:
    """ACCEPTED names the capability's latency estimate and no counter."""
    response = make().on_request(ALICE, req(), 0.0).response
    assert response == TaskResponse("t1", TaskStatus.ACCEPTED, "", 1000.0, None)


def test_invalid_input_reason_names_the_problem() -> None:
    response = make().on_request(ALICE, req(task_input={"text": 3}), 0.0).response
    assert response.reason == "invalid_input: $.text: expected string, got integer"


# --------------------------------------------------------------------------- counters


def _counter_ms(finish_in_s: float) -> int:
    import math

    return math.ceil(finish_in_s * 1000 * COUNTER_SAFETY_FACTOR + COUNTER_SAFETY_MS)


@pytest.mark.parametrize(
    ("starts", "now", "queued", "deadline_ms", "expected_finish_in_s"),
    [
        # Two slots busy since 0 and 0.25 (1 s each): the earliest frees at 1.0, so a task
        # arriving at 0.5 finishes at 2.0, 1.5 s from now.
        ([0.0, 0.25], 0.5, 0, 1500, 1.5),
        # One reservation ahead takes the slot free at 1.0 (until 2.0); the next slot
        # frees at 1.25, so this task finishes at 2.25.
        ([0.0, 0.25], 0.5, 1, 1500, 1.75),
        # Two reservations ahead: slots at 1.0 and 1.25 go to them (ending 2.0 and 2.25),
        # this task starts at 2.0 and ends at 3.0.
        ([0.0, 0.25], 0.5, 2, 1500, 2.5),
        # The task started at 0 is running late at 1.125: one more second is assumed for it
        # (until 2.125); the other ends at 1.25, so this one runs 1.25 .. 2.25.
        ([0.0, 0.25], 1.125, 0, 1000, 1.125),
        # Both running late at 2.0: each is assumed to need one more second.
        ([0.0, 0.25], 2.0, 0, 1500, 2.0),
    ],
)
def test_counter_is_computed_from_the_queue(
    starts: list[float], now: float, queued: int, deadline_ms: int, expected_finish_in_s: float
) -> None:
    """At capacity the provider counters with its predicted finish plus the safety margin."""
    core = make(max_tasks=2)
    for i, t in enumerate(starts):
        assert core.on_request(ALICE, req(f"run{i}"), t).response.status == TaskStatus.ACCEPTED
    for i in range(queued):
        assert core.on_request(ALICE, req(f"q{i}"), now).response.status == TaskStatus.COUNTERED
    response = core.on_request(ALICE, req("new", deadline_ms=deadline_ms), now).response
    assert response.status == TaskStatus.COUNTERED
    assert response.counter_deadline_ms == _counter_ms(expected_finish_in_s)
    assert response.estimated_latency_ms == pytest.approx(expected_finish_in_s * 1000)
    assert core.reserved == queued + 1
    assert core.in_flight == 2 + queued + 1


def test_counter_never_undercuts_the_requested_deadline() -> None:
    """If the queue can still meet the requested deadline, the counter is that deadline."""
    core = make(max_tasks=1)
    core.on_request(ALICE, req("a"), 0.0)
    response = core.on_request(ALICE, req("b", deadline_ms=9000), 0.0).response
    assert response.status == TaskStatus.COUNTERED
    assert response.counter_deadline_ms == 9000


def test_queue_is_bounded() -> None:
    """Beyond the reservation queue's bound, requests are refused as busy."""
    core = make(max_tasks=1, max_reservations=2)
    core.on_request(ALICE, req("a"), 0.0)
    assert core.on_request(ALICE, req("b"), 0.0).response.status == TaskStatus.COUNTERED
    assert core.on_request(ALICE, req("c"), 0.0).response.status == TaskStatus.COUNTERED
    busy = core.on_request(ALICE, req("d"), 0.0).response
    assert busy.status == TaskStatus.REJECTED
    assert reject_code(busy.reason) is RejectCode.BUSY


# --------------------------------------------------------------------------- reservations


def test_confirmed_reservation_is_honoured_despite_newcomers() -> None:
    """A confirmed counter gets the next free slot; a request arriving meanwhile is
    countered behind it, never given the reserved slot."""
    core = make(max_tasks=1)
    core.on_request(ALICE, req("a"), 0.0)
    assert core.on_request(BOB, req("b"), 0.1).response.status == TaskStatus.COUNTERED
    ack = core.on_confirm(BOB, TaskConfirm("b", True), 0.2)
    assert ack is not None
    assert ack.status == TaskStatus.ACCEPTED
    assert core.start_ready(0.2) == []  # no slot yet
    late = core.on_request(CAROL, req("c"), 0.3).response
    assert late.status == TaskStatus.COUNTERED
    assert core.complete("a", True, {"text": "hi"}, "", 1.0) is not None
    started = core.start_ready(1.0)
    assert [s.request.task_id for s in started] == ["b"]
    assert started[0].requester == BOB
    assert core.running_tasks() == [(BOB, "b")]
    assert core.reserved == 1  # "c", still waiting for its confirm


def test_freed_slot_is_held_for_an_unconfirmed_reservation() -> None:
    """A slot that frees while the reservation ahead is unconfirmed stays held for it: a new
    request is countered, and the confirm then starts the reserved task at once."""
    core = make(max_tasks=1)
    core.on_request(ALICE, req("a"), 0.0)
    core.on_request(BOB, req("b"), 0.1)
    core.complete("a", True, {"text": "x"}, "", 0.5)
    assert core.start_ready(0.5) == []
    assert core.on_request(ALICE, req("c"), 0.6).response.status == TaskStatus.COUNTERED
    core.on_confirm(BOB, TaskConfirm("b", True), 0.7)
    assert [s.request.task_id for s in core.start_ready(0.7)] == ["b"]


def test_reservations_start_in_order_around_a_held_slot() -> None:
    """With two free slots, an unconfirmed head keeps one and a confirmed second starts."""
    core = make(max_tasks=2)
    core.on_request(ALICE, req("a"), 0.0)
    core.on_request(ALICE, req("b"), 0.0)
    core.on_request(ALICE, req("r1"), 0.1)
    core.on_request(ALICE, req("r2"), 0.1)
    core.on_confirm(ALICE, TaskConfirm("r2", True), 0.2)
    core.complete("a", True, 1, "", 0.5)
    core.complete("b", True, 1, "", 0.5)
    assert [s.request.task_id for s in core.start_ready(0.5)] == ["r2"]
    core.on_confirm(ALICE, TaskConfirm("r1", True), 0.6)
    assert [s.request.task_id for s in core.start_ready(0.6)] == ["r1"]


def test_unconfirmed_reservation_expires() -> None:
    """A counter not confirmed within the hold time lapses: the slot returns to the pool, a
    late confirm is refused and a retransmitted request learns why."""
    core = make(max_tasks=1)
    core.on_request(ALICE, req("a"), 0.0)
    core.on_request(BOB, req("b"), 1.0)
    assert core.next_deadline() == pytest.approx(1.0 + RESERVATION_HOLD_S)
    core.complete("a", True, 1, "", 2.0)
    assert core.tick(1.0 + RESERVATION_HOLD_S - 0.01) == []
    assert core.reserved == 1
    assert core.tick(1.0 + RESERVATION_HOLD_S) == []
    assert core.reserved == 0
    assert core.in_flight == 0
    late = core.on_confirm(BOB, TaskConfirm("b", True), 7.0)
    assert late is not None
    assert reject_code(late.reason) is RejectCode.RESERVATION_EXPIRED
    again = core.on_request(BOB, req("b"), 7.0)
    assert reject_code(again.response.reason) is RejectCode.RESERVATION_EXPIRED
    assert again.start is None
    assert core.on_request(ALICE, req("d"), 7.0).response.status == TaskStatus.ACCEPTED


def test_declined_counter_releases_the_reservation() -> None:
    core = make(max_tasks=1)
    core.on_request(ALICE, req("a"), 0.0)
    core.on_request(BOB, req("b"), 0.1)
    assert core.on_confirm(BOB, TaskConfirm("b", False), 0.2) is None
    assert core.reserved == 0
    again = core.on_request(BOB, req("b"), 0.3).response
    assert reject_code(again.reason) is RejectCode.COUNTER_DECLINED


@pytest.mark.parametrize(
    ("who", "task_id", "accept", "expected"),
    [
        (BOB, "zzz", True, RejectCode.UNKNOWN_TASK),
        (ALICE, "b", True, RejectCode.UNKNOWN_TASK),  # someone else's reservation
        (BOB, "zzz", False, None),
    ],
)
def test_confirm_for_nothing(
    who: str, task_id: str, accept: bool, expected: RejectCode | None
) -> None:
    """A confirm that matches no reservation of that requester is refused (or ignored)."""
    core = make(max_tasks=1)
    core.on_request(ALICE, req("a"), 0.0)
    core.on_request(BOB, req("b"), 0.1)
    answer = core.on_confirm(who, TaskConfirm(task_id, accept), 0.2)
    if expected is None:
        assert answer is None
    else:
        assert answer is not None
        assert reject_code(answer.reason) is expected
    assert core.reserved == 1


# --------------------------------------------------------------------------- idempotency


def test_duplicate_requests_get_the_first_answer_and_one_run() -> None:
    """A retransmitted request is answered from the first outcome: the same response while
    running, then the same signed result; the handler is started once."""
    core = make()
    first = core.on_request(ALICE, req("a"), 0.0)
    assert first.start is not None
    dup = core.on_request(ALICE, req("a"), 0.1)
    assert dup.duplicate
    assert dup.start is None
    assert dup.response == first.response
    result = core.complete("a", True, {"text": "hi"}, "", 0.5)
    assert result is not None
    after = core.on_request(ALICE, req("a"), 0.6)
    assert after.duplicate
    assert after.start is None
    assert after.response == first.response
    assert after.result == result
    assert after.result is not None
    assert after.result.signature == result.signature
    assert core.complete("a", True, {"text": "again"}, "", 0.7) is None
    assert core.counts["accepted"] == 1


def test_duplicate_of_a_counter_is_the_same_counter() -> None:
    core = make(max_tasks=1)
    core.on_request(ALICE, req("a"), 0.0)
    first = core.on_request(BOB, req("b"), 0.1).response
    assert core.on_request(BOB, req("b"), 0.2).response == first
    assert core.reserved == 1


def test_duplicate_rejection_is_the_same_rejection() -> None:
    core = make()
    first = core.on_request(ALICE, req(capability="nope"), 0.0).response
    assert core.on_request(ALICE, req(capability="nope"), 1.0).response == first


def test_task_ids_are_scoped_by_requester() -> None:
    """Another requester cannot hijack a live task id; once it ended, the id is free to it."""
    core = make()
    core.on_request(ALICE, req("a"), 0.0)
    clash = core.on_request(BOB, req("a"), 0.1)
    assert reject_code(clash.response.reason) is RejectCode.TASK_ID_IN_USE
    assert clash.start is None
    core.complete("a", True, 1, "", 0.5)
    fresh = core.on_request(BOB, req("a"), 0.6)
    assert fresh.start is not None
    assert not fresh.duplicate


def test_memory_is_bounded_by_count_and_time() -> None:
    """Ended tasks are remembered for a bounded time and count; then they are forgotten."""
    core = make(max_tasks=5, remember_max=2, remember_s=100.0)
    for i, t in enumerate((0.0, 1.0, 2.0)):
        core.on_request(ALICE, req(f"t{i}"), t)
        core.complete(f"t{i}", True, i, "", t)
    assert core.on_request(ALICE, req("t0"), 3.0).start is not None  # evicted: runs again
    core.complete("t0", True, 0, "", 3.0)
    assert core.on_request(ALICE, req("t2"), 50.0).duplicate
    assert core.on_request(ALICE, req("t2"), 102.0).start is not None  # expired


# --------------------------------------------------------------------------- results


def test_complete_signs_the_result() -> None:
    """A result carries every field and a signature that verifies under the provider's id."""
    core = make()
    core.on_request(ALICE, req("a"), 10.0)
    result = core.complete("a", True, {"text": "hi"}, "", 10.25)
    assert result is not None
    assert (result.task_id, result.requester, result.provider) == ("a", ALICE, PROVIDER.node_id)
    assert result.ok
    assert result.output == {"text": "hi"}
    assert result.error == ""
    assert result.elapsed_ms == pytest.approx(250.0)
    assert result_verifies(result)
    assert core.in_flight == 0


def test_unencodable_output_becomes_a_failed_result() -> None:
    """An output that cannot travel is replaced by a signed failure, not a crash."""
    core = make()
    core.on_request(ALICE, req("a"), 0.0)
    result = core.complete("a", True, {"bad": {1, 2}}, "", 0.1)
    assert result is not None
    assert not result.ok
    assert result.output is None
    assert reject_code(result.error) is RejectCode.OUTPUT_INVALID
    assert result_verifies(result)


def test_long_errors_are_clipped_to_the_wire_limit() -> None:
    core = make()
    core.on_request(ALICE, req("a"), 0.0)
    result = core.complete("a", False, None, "é" * 1000, 0.1)
    assert result is not None
    assert len(result.error.encode()) <= 512
    assert result_verifies(result)


def test_verifier_catches_a_signer_that_does_not_match_its_id() -> None:
    """With a verifier, a signer whose signatures do not verify under its id is refused."""
    ProviderCore(PROVIDER, {}, 1, verifier=verify)
    with pytest.raises(ValueError):
        ProviderCore(FastSigner.from_seed(b"x"), {}, 1, verifier=verify)


# --------------------------------------------------------------------------- deadlines


def test_running_task_past_its_deadline_is_failed() -> None:
    """tick reports a running task past its deadline with a signed failed result, frees the
    slot, and a late completion sends nothing."""
    core = make()
    core.on_request(ALICE, req("a", deadline_ms=2000), 0.0)
    assert core.next_deadline() == 2.0
    assert core.tick(1.99) == []
    [event] = core.tick(2.0)
    assert (event.requester, event.task_id, event.was_running) == (ALICE, "a", True)
    assert not event.result.ok
    assert reject_code(event.result.error) is RejectCode.DEADLINE_EXCEEDED
    assert result_verifies(event.result)
    assert core.in_flight == 0
    assert core.next_deadline() is None
    assert core.complete("a", True, 1, "", 2.5) is None
    assert core.on_request(ALICE, req("a", deadline_ms=2000), 3.0).result == event.result


def test_confirmed_reservation_that_cannot_start_in_time_fails() -> None:
    """A confirmed reservation whose deadline passes while queued is failed, not started."""
    core = make(max_tasks=1)
    core.on_request(ALICE, req("a", deadline_ms=60_000), 0.0)
    counter = core.on_request(BOB, req("b", deadline_ms=3000), 0.0).response
    assert counter.counter_deadline_ms == 3000
    core.on_confirm(BOB, TaskConfirm("b", True), 0.1)
    assert core.next_deadline() == 3.0
    [event] = core.tick(3.0)
    assert (event.task_id, event.was_running) == ("b", False)
    assert core.start_ready(3.0) == []


# --------------------------------------------------------------------------- cancel


@pytest.mark.parametrize(
    ("who", "task_id", "expected"),
    [
        (ALICE, "a", CancelOutcome.STOP_HANDLER),
        (BOB, "b", CancelOutcome.RELEASED),
        (BOB, "a", CancelOutcome.NOT_FOUND),  # not Bob's task
        (ALICE, "zzz", CancelOutcome.NOT_FOUND),
    ],
)
def test_cancel(who: str, task_id: str, expected: CancelOutcome) -> None:
    """Cancel stops a running task or drops a reservation, only for its own requester."""
    core = make(max_tasks=1)
    core.on_request(ALICE, req("a"), 0.0)
    core.on_request(BOB, req("b"), 0.0)
    assert core.on_cancel(who, TaskCancel(task_id, "gave up"), 0.5) is expected
    if expected is CancelOutcome.STOP_HANDLER:
        assert core.running == 0
        assert core.complete("a", True, 1, "", 0.6) is None
        again = core.on_request(ALICE, req("a"), 0.7)
        assert reject_code(again.response.reason) is RejectCode.CANCELLED
    elif expected is CancelOutcome.RELEASED:
        assert core.reserved == 0
    else:
        assert core.in_flight == 2


@pytest.mark.parametrize("now", [0.1, 0.3, 1234.567, 1e6 + 0.1])
def test_remaining_deadline_is_exact_in_whole_milliseconds(now: float) -> None:
    """The handler is told the whole deadline, whatever float noise the clock adds."""
    decision = make().on_request(ALICE, req(deadline_ms=10_000), now)
    assert decision.start is not None
    assert decision.start.remaining_ms == 10_000


@pytest.mark.parametrize(
    ("reason", "code"),
    [
        ("busy: 4 tasks already queued", RejectCode.BUSY),
        ("over_budget:x", RejectCode.OVER_BUDGET),
        ("something else", None),
        ("", None),
    ],
)
def test_reject_code_parses_reasons(reason: str, code: RejectCode | None) -> None:
    assert reject_code(reason) is code
