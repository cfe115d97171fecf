"""The requester side of task negotiation, sans I/O: one delegation over ranked candidates.

Theory of operation
-------------------
A :class:`RequesterCore` runs one delegation: it tries candidates in rank order until one
delivers or time runs out. It never reads a clock or touches a socket. The conversation it
takes part in is described in :mod:`meshnode.core.negotiation`; its effects
(:class:`~meshnode.core.effects.SendRequest`, ..., :class:`~meshnode.core.effects.Done`,
:class:`~meshnode.core.effects.Failed`) are defined in :mod:`meshnode.core.effects`.

Requester rules
~~~~~~~~~~~~~~~
Candidates are tried in rank order, skipping any whose circuit breaker refuses. A counter
is confirmed automatically when ``counter_deadline_ms ≤ COUNTER_ACCEPT_RATIO × deadline_ms``
of that request *and* ``counter_deadline_ms`` is no more than what was left of the overall
deadline when the request was sent (both count from sending); otherwise it is declined
(``TaskConfirm(accept=False)``) and the next candidate is tried. Unless the caller caps each
attempt (``attempt_deadline_ms``), a request asks for everything that is left, so the
overall deadline is then the binding rule: a provider that cannot finish in the time left
is declined, since confirming it would guarantee a late answer. The requester also moves on
after REJECTED, no response within :data:`RESPONSE_TIMEOUT_S` (or what is left, if less), no
result by the accepted deadline, a dropped connection or dead peer, a forged or mismatched
result, a malformed response, (unless told otherwise) a signed failed result, and a
successful result whose output the caller's ``check_output`` refuses (the runtime checks it
against the capability's declared output schema: an output that breaks its own contract is
a failed result, not a delivery; with retries of failed results turned off, a refused
output ends the delegation as :class:`Failed`, never as :class:`Done`). When it leaves a
peer that may still hold the task (a timeout, a malformed response, the overall deadline,
:meth:`RequesterCore.cancel`) it sends TaskCancel so the provider frees the slot; after a
dropped connection or a dead peer it sends nothing. Each attempt is recorded with
its timings and a :class:`~meshnode.core.breaker.TaskVerdict` for the runtime's breaker:
SUCCESS for a delivered result; FAILURE for silence, timeouts, drops, forged or failed
results and malformed responses; ABANDONED (no verdict on the peer, but a half-open probe
is handed back) for refusals, declined counters and our own cancellation.

Invalid input. A refusal with the code ``invalid_input`` (the input fails the capability's
declared input schema) and a signed failed result whose error starts with that code (the
handler raised ``InvalidInput``) end the attempt as INVALID_INPUT (ABANDONED: no verdict)
and the whole delegation at once as :class:`Failed` with ``invalid_input=True`` and the
reason ``"invalid input: <why>"``: the input is the problem, so no other candidate is
asked (it would refuse it too, or, worse, run a handler that fails on it), whatever
``retry_failed_results`` says. A refusal is checked first: the provider's check is the
input schema its signed manifest declares, which the requester holds too
(``input_claim``), so a refusal ``invalid_input`` of an input that matches that schema
is a false claim: the attempt ends as PROTOCOL_ERROR (FAILURE: breaker and opinion 0)
and the next candidate is asked. Without this a provider ranked first could refuse every
input as invalid, end every delegation at once and never be blamed. A failed result
marked ``invalid_input`` comes from the handler, after the schema passed; no one else can
check it, so it stands: the peer escapes blame for that one task, earns nothing by it (no
positive opinion either), and the caller sees the claim.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from meshnode.core.effects import (
    Attempt,
    AttemptEnded,
    AttemptOutcome,
    Done,
    Failed,
    RequesterEffect,
    SendCancel,
    SendConfirm,
    SendRequest,
)
from meshnode.core.json_schema import validate
from meshnode.core.task_wire import (
    MAX_DEADLINE_MS,
    RejectCode,
    clip_reason,
    reject_code,
    whole_ms,
)
from meshnode.core.tracing import child_traceparent
from protocol import (
    LocalProtocolError,
    TaskCancel,
    TaskConfirm,
    TaskRequest,
    TaskResponse,
    TaskResult,
    TaskStatus,
    Verifier,
    public_key_from_node_id,
    signing_bytes,
)
from protocol.manifest import Capability

__all__ = [
    "COUNTER_ACCEPT_RATIO",
    "DEFAULT_DEADLINE_S",
    "MIN_ATTEMPT_MS",
    "RESPONSE_TIMEOUT_S",
    "AllowFn",
    "InputClaimCheck",
    "OutputCheck",
    "RequesterCore",
    "false_input_claim",
]

DEFAULT_DEADLINE_S = 30.0
"""Overall time a delegation may take, all attempts included, unless the caller says."""

RESPONSE_TIMEOUT_S = 2.0
"""Seconds to wait for a TaskResponse before moving on (or less when less time is left).
A healthy peer answers in one round trip; the answer needs no work from the handler."""

COUNTER_ACCEPT_RATIO = 1.5
"""A counter up to this multiple of the requested deadline is confirmed automatically."""

MIN_ATTEMPT_MS = 10
"""An attempt is not started with less than this many milliseconds left overall."""

AllowFn = Callable[[str, float], bool]
"""``allow(node, now)``: may a task go to ``node`` now? (``BreakerBoard.allow`` fits.)"""
OutputCheck = Callable[[TaskResult], str | None]
"""``check_output(result)`` for a verified ``ok`` result: None to take it, or why not (the
attempt then ends as FAILED_RESULT)."""
InputClaimCheck = Callable[[str], str | None]
"""``input_claim(node)`` when ``node`` refused the input as ``invalid_input``: None if the
claim may stand, or why it is false (the input matches the input schema ``node``'s
manifest declares); the attempt then ends as PROTOCOL_ERROR."""


class _Phase(enum.Enum):
    NEW = "new"
    AWAIT_RESPONSE = "await_response"
    AWAIT_RESULT = "await_result"
    OVER = "over"


@dataclass(slots=True)
class _Live:
    node: str
    sent_at: float
    deadline_ms: int
    remaining_ms: int
    response_deadline: float
    result_deadline: float | None = None
    responded_at: float | None = None
    counter_ms: int | None = None


def false_input_claim(capability: Capability | None, task_input: Any) -> str | None:
    """Why a refusal ``invalid_input`` of ``task_input`` by the provider of ``capability``
    is false, or None if it may stand. A provider refuses an input before running it only
    when the input fails the ``input_schema`` of its capability; the requester holds that
    capability from the provider's signed manifest and runs the same check. Without the
    manifest (``capability`` None) nothing can be checked and the claim stands. (A provider
    that tightened its schema is judged by the manifest the requester holds until its new
    one arrives, within a gossip round or a push-pull.)"""
    if capability is None or validate(task_input, capability.input_schema, max_violations=1):
        return None
    return "the input matches the input schema of its signed manifest"


class RequesterCore:
    """One delegation: a task tried on ranked candidates until one delivers or time ends.

    Drive it like this: call :meth:`start` once, then feed it every TaskResponse and
    TaskResult from the peers it talks to (:meth:`on_response`, :meth:`on_result`), every
    lost connection or dead peer (:meth:`on_peer_failed`), :meth:`tick` at
    :meth:`next_deadline`, and :meth:`cancel` if the caller gives up. Each call returns the
    effects to carry out in order: messages to send, attempts to record on the breaker, and
    finally exactly one :class:`Done` or :class:`Failed`. Messages about other task ids, or
    from peers other than the one being tried, are ignored.
    """

    def __init__(
        self,
        requester_id: str,
        capability: str,
        task_input: Any,
        candidates: Sequence[str],
        *,
        task_id: str,
        verifier: Verifier,
        deadline_s: float = DEFAULT_DEADLINE_S,
        budget_usd: float | None = None,
        trace_id: str = "",
        allow: AllowFn | None = None,
        attempt_deadline_ms: int | None = None,
        response_timeout_s: float = RESPONSE_TIMEOUT_S,
        counter_ratio: float = COUNTER_ACCEPT_RATIO,
        retry_failed_results: bool = True,
        check_output: OutputCheck | None = None,
        input_claim: InputClaimCheck | None = None,
    ) -> None:
        if not deadline_s > 0:
            raise ValueError("deadline_s must be positive")
        if not response_timeout_s > 0:
            raise ValueError("response_timeout_s must be positive")
        if attempt_deadline_ms is not None and attempt_deadline_ms < 1:
            raise ValueError("attempt_deadline_ms must be at least 1")
        self.requester_id = requester_id
        self.capability = capability
        self.task_input = task_input
        self.task_id = task_id
        self.budget_usd = budget_usd
        self.trace_id = trace_id
        self.deadline_s = deadline_s
        self.attempt_deadline_ms = attempt_deadline_ms
        self.response_timeout_s = response_timeout_s
        self.counter_ratio = counter_ratio
        self.retry_failed_results = retry_failed_results
        self._check_output = check_output
        self._input_claim = input_claim
        self._verifier = verifier
        self._allow = allow
        seen: set[str] = set()
        self._queue: list[str] = []
        for node in candidates:
            if node not in seen and node != requester_id:
                seen.add(node)
                self._queue.append(node)
        self._phase = _Phase.NEW
        self._begun = False
        self._started_at = 0.0
        self._deadline_at = 0.0
        self._live: _Live | None = None
        self._attempts: list[Attempt] = []
        self._last_failed: TaskResult | None = None
        self.outcome: Done | Failed | None = None

    # ------------------------------------------------------------------ queries

    @property
    def attempts(self) -> tuple[Attempt, ...]:
        return tuple(self._attempts)

    @property
    def current_node(self) -> str | None:
        """The candidate being tried now."""
        return None if self._live is None else self._live.node

    @property
    def finished(self) -> bool:
        return self._phase is _Phase.OVER

    @property
    def deadline_at(self) -> float:
        """The overall deadline on the requester's clock (valid after :meth:`start`)."""
        return self._deadline_at

    def next_deadline(self) -> float | None:
        """When :meth:`tick` must next be called (None once finished)."""
        live = self._live
        if self._phase is _Phase.OVER or live is None:
            return None
        if self._phase is _Phase.AWAIT_RESPONSE:
            return live.response_deadline
        return live.result_deadline

    # ------------------------------------------------------------------ inputs

    def start(self, now: float) -> list[RequesterEffect]:
        """Begin: send the request to the first candidate its breaker allows."""
        if self._begun:
            raise RuntimeError("start() was already called")
        self._begun = True
        self._started_at = now
        self._deadline_at = now + self.deadline_s
        effects: list[RequesterEffect] = []
        self._advance(now, effects)
        return effects

    def on_response(self, node: str, response: TaskResponse, now: float) -> list[RequesterEffect]:
        """A TaskResponse arrived from ``node``."""
        live = self._live
        if (
            self._phase not in (_Phase.AWAIT_RESPONSE, _Phase.AWAIT_RESULT)
            or live is None
            or node != live.node
            or response.task_id != self.task_id
        ):
            return []
        effects: list[RequesterEffect] = []
        status = response.status
        if self._phase is _Phase.AWAIT_RESULT:
            # After a confirm: ACCEPTED is its acknowledgement; REJECTED means the
            # reservation lapsed before our confirm arrived.
            if status == TaskStatus.REJECTED:
                self._rejected(response.reason, now, effects)
            return effects
        live.responded_at = now
        if status == TaskStatus.ACCEPTED:
            self._phase = _Phase.AWAIT_RESULT
            live.result_deadline = min(live.sent_at + live.deadline_ms / 1000.0, self._deadline_at)
        elif status == TaskStatus.REJECTED:
            self._rejected(response.reason, now, effects)
        elif status == TaskStatus.COUNTERED and response.counter_deadline_ms is not None:
            self._on_counter(live, response.counter_deadline_ms, now, effects)
        else:
            effects.append(self._cancel_effect(live.node, "malformed response"))
            detail = f"status {status} without a usable counter deadline"
            self._end(AttemptOutcome.PROTOCOL_ERROR, detail, now, effects)
            self._advance(now, effects)
        return effects

    def _rejected(self, reason: str, now: float, effects: list[RequesterEffect]) -> None:
        """The peer said no: move on, unless it refused the input itself."""
        if reject_code(reason) is RejectCode.INVALID_INPUT:
            live = self._live
            false = None
            if live is not None and self._input_claim is not None:
                false = self._input_claim(live.node)
            if false is None:
                self._invalid_input(reason, now, effects)
                return
            detail = clip_reason(f"false invalid_input refusal: {false}")
            self._end(AttemptOutcome.PROTOCOL_ERROR, detail, now, effects)
            self._advance(now, effects)
            return
        self._end(AttemptOutcome.REJECTED, reason, now, effects)
        self._advance(now, effects)

    def _invalid_input(self, reason: str, now: float, effects: list[RequesterEffect]) -> None:
        """The input is the problem: no verdict on the peer, no other candidate asked (it
        would refuse the same input, and each refusal costs a round trip)."""
        why = reason.split(":", 1)[1].strip() if ":" in reason else reason
        self._end(AttemptOutcome.INVALID_INPUT, reason, now, effects)
        elapsed = now - self._started_at
        failed = Failed(
            clip_reason(f"invalid input: {why}"),
            self.attempts,
            elapsed,
            self._last_failed,
            invalid_input=True,
        )
        self._finish(failed, effects)

    def _on_counter(
        self, live: _Live, counter_ms: int, now: float, effects: list[RequesterEffect]
    ) -> None:
        live.counter_ms = counter_ms
        within_ratio = counter_ms <= self.counter_ratio * live.deadline_ms
        within_time = counter_ms <= live.remaining_ms  # both counted from sending
        if within_ratio and within_time:
            effects.append(SendConfirm(live.node, TaskConfirm(self.task_id, True)))
            self._phase = _Phase.AWAIT_RESULT
            live.result_deadline = min(live.sent_at + counter_ms / 1000.0, self._deadline_at)
            return
        effects.append(SendConfirm(live.node, TaskConfirm(self.task_id, False)))
        why = (
            f"more than {self.counter_ratio:g}× the {live.deadline_ms} ms asked"
            if not within_ratio
            else "beyond the overall deadline"
        )
        self._end(AttemptOutcome.DECLINED, f"counter {counter_ms} ms is {why}", now, effects)
        self._advance(now, effects)

    def on_result(self, node: str, result: TaskResult, now: float) -> list[RequesterEffect]:
        """A TaskResult arrived from ``node``; it is verified before it counts."""
        live = self._live
        if (
            self._phase not in (_Phase.AWAIT_RESPONSE, _Phase.AWAIT_RESULT)
            or live is None
            or node != live.node
        ):
            return []
        effects: list[RequesterEffect] = []
        if live.responded_at is None:
            live.responded_at = now
        problem = self._result_problem(node, result)
        if problem is not None:
            self._end(AttemptOutcome.FORGED_RESULT, problem, now, effects)
            self._advance(now, effects)
            return effects
        if not result.ok and reject_code(result.error) is RejectCode.INVALID_INPUT:
            self._last_failed = result
            self._invalid_input(result.error, now, effects)
            return effects
        refused = (
            None if not result.ok or self._check_output is None else self._check_output(result)
        )
        if result.ok and refused is None:
            self._end(AttemptOutcome.DELIVERED, "", now, effects)
            self._finish(Done(result, node, self.attempts, now - self._started_at), effects)
            return effects
        self._last_failed = result
        detail = result.error if refused is None else f"output refused: {refused}"
        self._end(AttemptOutcome.FAILED_RESULT, detail, now, effects)
        elapsed = now - self._started_at
        if self.retry_failed_results:
            self._advance(now, effects)
        elif refused is not None:  # never report a refused output as done
            self._finish(Failed(detail, self.attempts, elapsed, last_result=result), effects)
        else:
            self._finish(Done(result, node, self.attempts, elapsed), effects)
        return effects

    def _result_problem(self, node: str, result: TaskResult) -> str | None:
        if result.task_id != self.task_id:
            return f"result for task {result.task_id!r}, expected {self.task_id!r}"
        if result.requester != self.requester_id:
            return "result addressed to another requester"
        if result.provider != node:
            return "result signed as another provider than the peer that sent it"
        try:
            key = public_key_from_node_id(result.provider)
            body = signing_bytes(result)
        except LocalProtocolError as exc:
            return f"result cannot be checked: {exc}"
        if not self._verifier(key, body, result.signature):
            return "result signature does not verify"
        return None

    def on_peer_failed(self, node: str, reason: str, now: float) -> list[RequesterEffect]:
        """The connection to ``node`` dropped, or membership declared it dead."""
        live = self._live
        if self._phase is _Phase.OVER or live is None or node != live.node:
            return []
        effects: list[RequesterEffect] = []
        self._end(AttemptOutcome.PEER_FAILED, reason, now, effects)
        self._advance(now, effects)
        return effects

    def tick(self, now: float) -> list[RequesterEffect]:
        """Fire whichever timer is due: response timeout, execution timeout, deadline."""
        live = self._live
        if self._phase is _Phase.OVER or live is None:
            return []
        effects: list[RequesterEffect] = []
        if self._phase is _Phase.AWAIT_RESPONSE and now >= live.response_deadline:
            effects.append(self._cancel_effect(live.node, "no response in time"))
            if now >= live.sent_at + self.response_timeout_s:
                detail = f"no response in {self.response_timeout_s:g} s"
                self._end(AttemptOutcome.RESPONSE_TIMEOUT, detail, now, effects)
            else:
                detail = "overall deadline passed before a response"
                self._end(AttemptOutcome.DEADLINE_EXCEEDED, detail, now, effects)
            self._advance(now, effects)
        elif (
            self._phase is _Phase.AWAIT_RESULT
            and live.result_deadline is not None
            and now >= live.result_deadline
        ):
            effects.append(self._cancel_effect(live.node, "deadline exceeded"))
            agreed = live.counter_ms if live.counter_ms is not None else live.deadline_ms
            detail = f"no result within the agreed {agreed} ms"
            self._end(AttemptOutcome.EXECUTION_TIMEOUT, detail, now, effects)
            self._advance(now, effects)
        return effects

    def cancel(self, now: float, reason: str = "cancelled by caller") -> list[RequesterEffect]:
        """Give up: cancel the current attempt (TaskCancel to its peer) and fail."""
        if self._phase is _Phase.OVER:
            return []
        effects: list[RequesterEffect] = []
        live = self._live
        if live is not None:
            effects.append(self._cancel_effect(live.node, reason))
            self._end(AttemptOutcome.CANCELLED, reason, now, effects)
        self._fail(clip_reason(reason), now, effects)
        return effects

    # ------------------------------------------------------------------ internals

    def _cancel_effect(self, node: str, reason: str) -> SendCancel:
        return SendCancel(node, TaskCancel(self.task_id, clip_reason(reason)))

    def _remaining_ms(self, now: float) -> int:
        return whole_ms(self._deadline_at - now)

    def _advance(self, now: float, effects: list[RequesterEffect]) -> None:
        """Send the request to the next allowed candidate, or fail if none is left."""
        while self._queue:
            remaining = self._remaining_ms(now)
            if remaining < MIN_ATTEMPT_MS:
                self._fail("deadline exceeded", now, effects)
                return
            node = self._queue.pop(0)
            if self._allow is not None and not self._allow(node, now):
                self._attempts.append(
                    Attempt(
                        node, AttemptOutcome.SKIPPED, "circuit open", None, None, now, None, None
                    )
                )
                continue
            asked = min(remaining, MAX_DEADLINE_MS)
            if self.attempt_deadline_ms is not None:
                asked = min(asked, self.attempt_deadline_ms)
            request = TaskRequest(
                task_id=self.task_id,
                capability=self.capability,
                input=self.task_input,
                deadline_ms=asked,
                budget_usd=self.budget_usd,
                trace_id=child_traceparent(self.trace_id, node),
            )
            response_deadline = min(now + self.response_timeout_s, self._deadline_at)
            self._live = _Live(node, now, asked, remaining, response_deadline)
            self._phase = _Phase.AWAIT_RESPONSE
            effects.append(SendRequest(node, request))
            return
        if self._attempts and self._remaining_ms(now) < MIN_ATTEMPT_MS:
            self._fail("deadline exceeded", now, effects)
        else:
            self._fail(self._exhaustedreject_reason(), now, effects)

    def _exhaustedreject_reason(self) -> str:
        tried = [a for a in self._attempts if a.outcome is not AttemptOutcome.SKIPPED]
        if not self._attempts:
            return "no candidates"
        if not tried:
            return "every candidate's circuit is open"
        last = tried[-1]
        text = f"all {len(tried)} candidates tried; last: {last.outcome.value}"
        return clip_reason(f"{text}: {last.detail}" if last.detail else text)

    def _end(
        self, outcome: AttemptOutcome, detail: str, now: float, effects: list[RequesterEffect]
    ) -> None:
        live = self._live
        assert live is not None
        attempt = Attempt(
            node=live.node,
            outcome=outcome,
            detail=clip_reason(detail),
            sent_at=live.sent_at,
            responded_at=live.responded_at,
            ended_at=now,
            deadline_ms=live.deadline_ms,
            counter_deadline_ms=live.counter_ms,
        )
        self._attempts.append(attempt)
        self._live = None
        self._phase = _Phase.NEW
        effects.append(AttemptEnded(attempt))

    def _fail(self, reason: str, now: float, effects: list[RequesterEffect]) -> None:
        self._finish(
            Failed(reason, self.attempts, now - self._started_at, self._last_failed), effects
        )

    def _finish(self, outcome: Done | Failed, effects: list[RequesterEffect]) -> None:
        self._live = None
        self._phase = _Phase.OVER
        self.outcome = outcome
        effects.append(outcome)

    def __repr__(self) -> str:
        return (
            f"<RequesterCore task={self.task_id} phase={self._phase.value} "
            f"node={self.current_node} attempts={len(self._attempts)}>"
        )
