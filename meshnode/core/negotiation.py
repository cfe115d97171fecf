"""Task negotiation between a requester and a provider: both sides, sans I/O.

Theory of operation
-------------------
A delegation is a short conversation over one connection between two peers::

    requester                              provider
    TaskRequest(task_id, deadline_ms) ──▶  on_request
                                      ◀──  TaskResponse ACCEPTED | REJECTED | COUNTERED
    (after COUNTERED) TaskConfirm     ──▶  on_confirm
                                      ◀──  TaskResponse ACCEPTED (ack) | REJECTED (too late)
                                      ◀──  TaskResult, signed by the provider
    (giving up) TaskCancel            ──▶  on_cancel

:class:`ProviderCore` decides what a node answers and keeps its slots; a
:class:`RequesterCore` runs one delegation over a ranked list of candidates. Neither reads a
clock or touches a socket: time comes in as ``now`` (seconds, any monotonic origin, each
node on its own clock), signatures from an injected signer and verifier, and every decision
comes back as a value for the runtime to carry out.

Deadlines
~~~~~~~~~
A deadline travels as a budget in milliseconds, never as an instant, so no clocks need to
agree. The requester counts ``deadline_ms`` from when it *sent* the request, the provider
from when it *received* it; the provider's deadline is therefore the later one by the
one-way delay, and a provider that meets its own deadline is on time for the requester up
to that delay. A counter's ``counter_deadline_ms`` replaces ``deadline_ms`` and is counted
from the same two instants. Every request carries what is left of the requester's overall
deadline (optionally capped per attempt), so a handler that delegates further inherits it.

Provider decisions (checked in this order, the cheap checks first)
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
1. a live task of *another* requester already uses the id → REJECTED ``task_id_in_use``;
2. the same requester and task id seen before → the remembered answer (idempotent);
3. unknown capability → REJECTED ``unknown_capability``;
4. ``budget_usd`` is set and the capability's ``cost_per_call_usd`` exceeds it → REJECTED
   ``over_budget``;
5. ``deadline_ms`` is smaller than the capability's ``avg_latency_ms`` (the provider's
   latency estimate) → REJECTED ``deadline_too_short``;
6. ``input`` fails the capability's ``input_schema`` (see :mod:`meshnode.core.json_schema`)
   → REJECTED ``invalid_input``;
7. the requester already holds its fair share while others compete, and the free slots
   are no more than the others are owed → REJECTED ``fair_share`` (see below);
8. a slot is free (running + reserved < ``max_concurrent_tasks``) → ACCEPTED with
   ``estimated_latency_ms`` = ``avg_latency_ms``; the runtime starts the handler at once;
9. the reservation queue is full (:data:`RESERVATION_QUEUE_FACTOR`) and nobody else
   competes → REJECTED ``busy``;
10. otherwise → COUNTERED with a deadline computed from the queue, and a slot reserved.

Fair share. One identity must not hold every slot while others wait. A requester
*competes* while it holds a running or reserved task, or has asked (with a request that
passed the checks 1–6) within the last :data:`FAIR_SHARE_WINDOW_S`. With ``n`` competing
requesters (the asking one included) each one's share is
``max(1, max_concurrent_tasks // n)`` slots, running and reserved together. A requester
that holds its share or more is refused (``fair_share``), never queued, unless more slots
are free than the other competitors are owed (the sum of ``share − held`` over them):
spare capacity nobody is entitled to is still used, and a lone requester may use every
slot and queue as before. So a flood from one identity cannot grow the queue or take the
slot a competitor is about to ask for. Only requesters with competitors can pass a full
queue, and only while under their share (so at most ``max_concurrent_tasks`` beyond
``max_reservations``). Running tasks are not pre-empted, so a newcomer waits at most for
the queue ahead of it to drain (bounded by the deadlines already promised).

Limits: fairness is per node id. Many identities (a Sybil attack) each get a share;
bounding how many identities one party controls is the job of admission control into the
mesh, which this rule does not do. A recent ask is owed its share for
:data:`FAIR_SHARE_WINDOW_S`, so ``k`` identities that each ask once per window can keep up
to ``k`` free slots away from a requester over its share (never from one under it).

The counter. Each running task is expected to end at ``started + avg_latency``; one already
past that is assumed to need one more ``avg_latency``; none beyond its deadline, where it is
stopped. Slots are replayed in time order: reservations ahead take the earliest free slot
in turn, and this task takes the next one. With ``finish`` the predicted end of this task::

    counter_deadline_ms = max(deadline_ms,
                              ceil((finish − now) × COUNTER_SAFETY_FACTOR + COUNTER_SAFETY_MS))

The task is reserved at the back of the queue. Unconfirmed, the reservation holds its place
(and any slot that frees for it) for :data:`RESERVATION_HOLD_S`; confirmed, it keeps its
place until it starts, so a confirmed counter is never refused for capacity: a request
arriving meanwhile counts the reservation as taken. Reserved tasks start strictly in
reservation order as slots free: :meth:`ProviderCore.start_ready` hands the runtime each
task that may start now.

Deadlines are enforced: :meth:`ProviderCore.tick` stops every running task past its
deadline and signs its failed result (and fails a confirmed reservation that could not
start in time). Answers are remembered per (requester, task id) for
:data:`REMEMBER_S` after the task ends, at most :data:`REMEMBER_MAX` of them and at most
``remember_bytes`` (:data:`REMEMBER_BYTES`) of encoded answers (the signed result as
encoded, the response by a bound on its encoding), so a
retransmitted request gets the same response and, once finished, the same signed result,
and the handler runs once. The remembered answer is the current one: a counter that lapsed,
was declined or cancelled is remembered as REJECTED with that reason. Beyond the byte
budget the oldest entries are forgotten first; an entry whose result is evicted leaves a
small tombstone (counted in the budget too), so a duplicate request for it is answered
REJECTED ``result_forgotten`` and the handler is never run twice. Once the tombstone is
gone as well, the task id is simply unknown (a new request runs again).

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
"""

from __future__ import annotations

import enum
import math
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from meshnode.core.breaker import TaskVerdict
from meshnode.core.json_schema import describe, validate
from protocol import (
    Capability,
    LocalProtocolError,
    Signer,
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

# ----------------------------------------------------------------------------- constants

MAX_DEADLINE_MS = 86_400_000
"""Largest deadline the wire carries (one day, the range of ``deadline_ms``)."""

MAX_REASON_BYTES = 512
"""Longest reason or error string the wire carries (UTF-8 bytes); longer text is clipped."""

MAX_ELAPSED_MS = 1e9
"""Largest ``elapsed_ms`` the wire carries."""

RESERVATION_HOLD_S = 5.0
"""Seconds a countered task's reservation waits for its TaskConfirm before it lapses. It must
exceed the requester's confirm round trip (the requester confirms as soon as the counter
arrives); longer keeps a slot idle longer for a requester that went away."""

RESERVATION_QUEUE_FACTOR = 2
"""At most ``RESERVATION_QUEUE_FACTOR × max_concurrent_tasks`` reservations are queued; beyond
that requests are REJECTED ``busy``. Bounds the state a burst of requests can create and the
wait a counter can promise."""

COUNTER_SAFETY_FACTOR = 1.25
"""Multiplier on the predicted time to finish a countered task: latency estimates are
averages, and a counter the provider then misses costs the requester its whole wait."""

COUNTER_SAFETY_MS = 50.0
"""Milliseconds added to every counter, for scheduling and the confirm round trip."""

REMEMBER_S = 600.0
"""Seconds an ended task's answer (response and signed result) is remembered for duplicate
requests. It outlives any retransmission of a request by far."""

REMEMBER_MAX = 10_000
"""Most ended tasks remembered; the oldest are forgotten first beyond it."""

REMEMBER_BYTES = 16 * 1024 * 1024
"""Default budget, in encoded bytes (response + signed result as they travel), for
remembered answers: 16 MiB. Results may be megabytes each, so a count alone does not bound
memory; decoded Python objects take a few times their encoded size, so this keeps the
provider's memory for answers well under 100 MB. Smaller forgets results sooner (a late
duplicate request then gets ``result_forgotten``)."""

TOMBSTONE_BYTES = 160
"""Bytes charged to the memory budget for the tombstone of a forgotten result (its key and
the short rejection that answers it)."""

FAIR_SHARE_WINDOW_S = 10.0
"""Seconds a requester counts as competing for a provider's slots after its last request
that passed admission. Longer protects an occasional caller's share for longer; shorter
gives a lone heavy caller the whole node back sooner."""

FAIR_SHARE_MAX_TRACKED = 4_096
"""Most requesters whose last request time is tracked for the fair share; the oldest are
forgotten first (each costs about 150 bytes)."""

DEFAULT_DEADLINE_S = 30.0
"""Overall time a delegation may take, all attempts included, unless the caller says."""

RESPONSE_TIMEOUT_S = 2.0
"""Seconds to wait for a TaskResponse before moving on (or less when less time is left).
A healthy peer answers in one round trip; the answer needs no work from the handler."""

COUNTER_ACCEPT_RATIO = 1.5
"""A counter up to this multiple of the requested deadline is confirmed automatically."""

MIN_ATTEMPT_MS = 10
"""An attempt is not started with less than this many milliseconds left overall."""


def clip_reason(text: str, limit: int = MAX_REASON_BYTES) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes (with an ellipsis when cut)."""
    raw = text.encode("utf-8", "replace")
    if len(raw) <= limit:
        return text
    return raw[: limit - 3].decode("utf-8", "ignore") + "..."


class RejectCode(enum.Enum):
    """Why a provider said no. A REJECTED reason reads ``"<code>: <detail>"``."""

    UNKNOWN_CAPABILITY = "unknown_capability"
    OVER_BUDGET = "over_budget"
    DEADLINE_TOO_SHORT = "deadline_too_short"
    INVALID_INPUT = "invalid_input"
    BUSY = "busy"
    TASK_ID_IN_USE = "task_id_in_use"
    COUNTER_DECLINED = "counter_declined"
    RESERVATION_EXPIRED = "reservation_expired"
    CANCELLED = "cancelled"
    UNKNOWN_TASK = "unknown_task"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    OUTPUT_INVALID = "output_invalid"
    FAIR_SHARE = "fair_share"
    RESULT_FORGOTTEN = "result_forgotten"


def reject_code(reason: str) -> RejectCode | None:
    """The :class:`RejectCode` a reason or error string starts with, if any."""
    code = reason.split(":", 1)[0].strip()
    try:
        return RejectCode(code)
    except ValueError:
        return None


def _reason(code: RejectCode, detail: str) -> str:
    return clip_reason(f"{code.value}: {detail}")


def _whole_ms(seconds: float) -> int:
    """Whole milliseconds in ``seconds``, rounding down (after absorbing float noise, so
    that 30.0 − 2.5 s is 27,500 ms and not 27,499)."""
    return math.floor(round(seconds * 1000.0, 6))


# ============================================================================ provider


@dataclass(frozen=True, slots=True)
class StartTask:
    """Run ``request`` now. ``deadline_at`` is on the provider's clock; ``remaining_ms`` is
    what is left of the deadline (hand it to the handler so nested delegations inherit it)."""

    requester: str
    request: TaskRequest
    deadline_at: float
    remaining_ms: int


@dataclass(frozen=True, slots=True)
class RequestDecision:
    """What :meth:`ProviderCore.on_request` decided.

    Send ``response``; then, if ``result`` is set (a duplicate of a finished task), send it
    too; if ``start`` is set, run the handler. A duplicate never carries ``start``.
    """

    response: TaskResponse
    start: StartTask | None = None
    result: TaskResult | None = None
    duplicate: bool = False


class CancelOutcome(enum.Enum):
    """What :meth:`ProviderCore.on_cancel` did."""

    NOT_FOUND = "not_found"
    """Nothing live under that requester and task id (already ended, or never seen)."""
    RELEASED = "released"
    """A reservation was dropped; no handler was running."""
    STOP_HANDLER = "stop_handler"
    """The task was running: the runtime stops its handler and sends nothing."""


@dataclass(frozen=True, slots=True)
class DeadlineExceeded:
    """A task ran out of time. Stop its handler if ``was_running``, send ``result``."""

    requester: str
    task_id: str
    result: TaskResult
    was_running: bool


@dataclass(slots=True)
class _Task:
    requester: str
    request: TaskRequest
    capability: Capability
    received_at: float
    deadline_at: float
    response: TaskResponse
    started_at: float | None = None
    confirmed: bool = False
    hold_until: float | None = None

    @property
    def latency_s(self) -> float:
        return self.capability.avg_latency_ms / 1000.0


@dataclass(slots=True)
class _Remembered:
    response: TaskResponse
    result: TaskResult | None
    expires_at: float
    size: int
    """Bytes charged to the memory budget (encoded response and result)."""


class ProviderCore:
    """The provider side of negotiation: admission, counters, reservations, results.

    Drive it like this (see the module docstring for the decisions):

    * on a TaskRequest: ``d = on_request(requester, request, now)``; send ``d.response``,
      then ``d.result`` if set; if ``d.start`` is set, run the handler;
    * on a TaskConfirm: send the returned response, if any;
    * on a TaskCancel: stop the handler if it returns ``STOP_HANDLER``;
    * when a handler ends: ``complete(...)`` and send the returned signed result, if any;
    * at ``next_deadline()``: ``tick(now)``; for each event stop the handler if it was
      running and send its result;
    * after each of those calls: ``start_ready(now)`` and run every task it returns.
    """

    def __init__(
        self,
        signer: Signer,
        capabilities: Mapping[str, Capability],
        max_concurrent_tasks: int,
        *,
        verifier: Verifier | None = None,
        hold_s: float = RESERVATION_HOLD_S,
        max_reservations: int | None = None,
        remember_s: float = REMEMBER_S,
        remember_max: int = REMEMBER_MAX,
        remember_bytes: int = REMEMBER_BYTES,
        fair_share_window_s: float = FAIR_SHARE_WINDOW_S,
    ) -> None:
        if max_concurrent_tasks < 1:
            raise ValueError("max_concurrent_tasks must be at least 1")
        if not hold_s > 0 or not remember_s >= 0 or remember_max < 0:
            raise ValueError("hold_s must be positive; remember_s and remember_max >= 0")
        if remember_bytes < 0 or not fair_share_window_s >= 0:
            raise ValueError("remember_bytes and fair_share_window_s must be >= 0")
        if verifier is not None:
            probe = b"meshnode provider key check"
            key = public_key_from_node_id(signer.node_id)
            if not verifier(key, probe, signer.sign(probe)):
                raise ValueError("the signer's signatures do not verify under its node id")
        self._signer = signer
        self._capabilities: dict[str, Capability] = dict(capabilities)
        self.max_concurrent_tasks = max_concurrent_tasks
        self.max_reservations = (
            RESERVATION_QUEUE_FACTOR * max_concurrent_tasks
            if max_reservations is None
            else max_reservations
        )
        self.hold_s = hold_s
        self.remember_s = remember_s
        self.remember_max = remember_max
        self.remember_bytes = remember_bytes
        self.fair_share_window_s = fair_share_window_s
        self._memory_bytes = 0
        self._held: Counter[str] = Counter()
        """Requester → its running plus reserved tasks."""
        self._asked: OrderedDict[str, float] = OrderedDict()
        """Requester → last time it asked (a request that passed the checks)."""
        self._running: dict[str, _Task] = {}
        self._reserved: dict[str, _Task] = {}  # insertion order is reservation order
        self._memory: OrderedDict[tuple[str, str], _Remembered] = OrderedDict()
        self.counts: Counter[str] = Counter()
        """Decisions and events by name (accepted, rejected, countered, ...), for metrics."""

    # ------------------------------------------------------------------ configuration

    @property
    def node_id(self) -> str:
        return self._signer.node_id

    def set_capabilities(self, capabilities: Mapping[str, Capability]) -> None:
        """Replace the offered capabilities (live tasks keep the one they started with)."""
        self._capabilities = dict(capabilities)

    # ------------------------------------------------------------------ load

    @property
    def in_flight(self) -> int:
        """Tasks holding capacity: running plus reserved. The load a node advertises."""
        return len(self._running) + len(self._reserved)

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def reserved(self) -> int:
        return len(self._reserved)

    @property
    def remembered_bytes(self) -> int:
        """Encoded bytes of the remembered answers (within ``remember_bytes``)."""
        return self._memory_bytes

    @property
    def remembered(self) -> int:
        """Number of remembered answers (tombstones included)."""
        return len(self._memory)

    def held_by(self, requester: str) -> int:
        """Slots ``requester`` holds now: its running plus reserved tasks."""
        return self._held[requester]

    def fair_share(self, requester: str, now: float) -> int:
        """Slots ``requester`` may hold while others compete (see the module docstring)."""
        return max(1, self.max_concurrent_tasks // len(self._competitors(requester, now)))

    def _competitors(self, requester: str, now: float) -> set[str]:
        while self._asked:
            who, at = next(iter(self._asked.items()))
            if at + self.fair_share_window_s > now:
                break
            del self._asked[who]
        return {requester, *self._asked, *self._held}

    def _note_asked(self, requester: str, now: float) -> None:
        self._asked.pop(requester, None)
        self._asked[requester] = now
        while len(self._asked) > FAIR_SHARE_MAX_TRACKED:
            self._asked.popitem(last=False)

    def running_tasks(self) -> list[tuple[str, str]]:
        """(requester, task id) of every running task, in start order."""
        return [(t.requester, tid) for tid, t in self._running.items()]

    def next_deadline(self) -> float | None:
        """When :meth:`tick` next has work: a task deadline or a reservation hold."""
        times = [t.deadline_at for t in self._running.values()]
        times += [
            t.deadline_at if t.hold_until is None else t.hold_until for t in self._reserved.values()
        ]
        return min(times, default=None)

    # ------------------------------------------------------------------ requests

    def on_request(self, requester: str, request: TaskRequest, now: float) -> RequestDecision:
        """Decide on a task request from ``requester`` (the envelope's verified sender)."""
        self._prune(now)
        self._lapse_holds(now)
        task_id = request.task_id
        live = self._running.get(task_id) or self._reserved.get(task_id)
        if live is not None:
            if live.requester == requester:
                self.counts["duplicate"] += 1
                return RequestDecision(live.response, duplicate=True)
            self.counts["rejected"] += 1
            detail = "another requester's task is live under this id"
            return RequestDecision(self._rejection(request, RejectCode.TASK_ID_IN_USE, detail))
        remembered = self._memory.get((requester, task_id))
        if remembered is not None:
            self.counts["duplicate"] += 1
            return RequestDecision(remembered.response, result=remembered.result, duplicate=True)

        capability = self._capabilities.get(request.capability)
        rejection = self._admission_problem(request, capability)
        if rejection is not None or capability is None:
            code, detail = rejection or (RejectCode.UNKNOWN_CAPABILITY, request.capability)
            response = self._rejection(request, code, detail)
            self._remember(requester, response, None, now)
            self.counts["rejected"] += 1
            return RequestDecision(response)

        competitors = self._competitors(requester, now)
        self._note_asked(requester, now)
        share = max(1, self.max_concurrent_tasks // len(competitors))
        holders = self._held
        held = holders[requester]
        free = self.max_concurrent_tasks - self.in_flight
        if len(competitors) > 1 and held >= share:
            owed = sum(max(0, share - holders[c]) for c in competitors if c != requester)
            if free <= owed:
                detail = (
                    f"holds {held} of {self.max_concurrent_tasks} slots; share is {share} "
                    f"while {len(competitors)} requesters compete"
                )
                response = self._rejection(request, RejectCode.FAIR_SHARE, detail)
                self._remember(requester, response, None, now)
                self.counts["rejected"] += 1
                self.counts["fair_share"] += 1
                return RequestDecision(response)
        if free > 0:
            response = TaskResponse(
                task_id=task_id,
                status=int(TaskStatus.ACCEPTED),
                reason="",
                estimated_latency_ms=capability.avg_latency_ms,
                counter_deadline_ms=None,
            )
            task = _Task(
                requester,
                request,
                capability,
                received_at=now,
                deadline_at=now + request.deadline_ms / 1000.0,
                response=response,
                started_at=now,
                confirmed=True,
            )
            self._running[task_id] = task
            self._held[requester] += 1
            self.counts["accepted"] += 1
            return RequestDecision(response, start=self._start_effect(task, now))

        if len(self._reserved) >= self.max_reservations and len(competitors) == 1:
            response = self._rejection(
                request, RejectCode.BUSY, f"{len(self._reserved)} tasks already queued"
            )
            self._remember(requester, response, None, now)
            self.counts["rejected"] += 1
            return RequestDecision(response)

        finish = self._predict_start(now) + capability.avg_latency_ms / 1000.0
        needed_ms = (finish - now) * 1000.0 * COUNTER_SAFETY_FACTOR + COUNTER_SAFETY_MS
        counter_ms = max(request.deadline_ms, math.ceil(needed_ms))
        if counter_ms > MAX_DEADLINE_MS:
            response = self._rejection(request, RejectCode.BUSY, "queue longer than a day")
            self._remember(requester, response, None, now)
            self.counts["rejected"] += 1
            return RequestDecision(response)
        response = TaskResponse(
            task_id=task_id,
            status=int(TaskStatus.COUNTERED),
            reason=clip_reason(
                f"at capacity ({len(self._running)} running, {len(self._reserved)} queued)"
            ),
            estimated_latency_ms=round((finish - now) * 1000.0, 3),
            counter_deadline_ms=counter_ms,
        )
        self._reserved[task_id] = _Task(
            requester,
            request,
            capability,
            received_at=now,
            deadline_at=now + counter_ms / 1000.0,
            response=response,
            hold_until=now + self.hold_s,
        )
        self._held[requester] += 1
        self.counts["countered"] += 1
        return RequestDecision(response)

    def _admission_problem(
        self, request: TaskRequest, capability: Capability | None
    ) -> tuple[RejectCode, str] | None:
        if capability is None:
            return RejectCode.UNKNOWN_CAPABILITY, f"no capability named {request.capability!r}"
        budget = request.budget_usd
        if budget is not None and capability.cost_per_call_usd > budget:
            return (
                RejectCode.OVER_BUDGET,
                f"costs {capability.cost_per_call_usd:g} USD, budget {budget:g} USD",
            )
        if request.deadline_ms < capability.avg_latency_ms:
            return (
                RejectCode.DEADLINE_TOO_SHORT,
                f"needs about {capability.avg_latency_ms:g} ms, deadline {request.deadline_ms} ms",
            )
        violations = validate(request.input, capability.input_schema)
        if violations:
            return RejectCode.INVALID_INPUT, describe(violations)
        return None

    def _rejection(self, request: TaskRequest, code: RejectCode, detail: str) -> TaskResponse:
        return TaskResponse(
            task_id=request.task_id,
            status=int(TaskStatus.REJECTED),
            reason=_reason(code, detail),
            estimated_latency_ms=None,
            counter_deadline_ms=None,
        )

    def _predict_start(self, now: float) -> float:
        """When the next reservation after the current queue is expected to get a slot."""
        frees = [self._expected_end(t, now) for t in self._running.values()]
        frees += [now] * (self.max_concurrent_tasks - len(self._running))
        frees.sort()
        for task in self._reserved.values():
            start = max(frees.pop(0), now)
            end = min(start + task.latency_s, task.deadline_at)
            _insort(frees, max(end, start))
        return max(frees[0], now)

    @staticmethod
    def _expected_end(task: _Task, now: float) -> float:
        started = task.started_at if task.started_at is not None else now
        expected = started + task.latency_s
        if expected <= now:  # running late: assume one more average latency
            expected = now + task.latency_s
        return max(now, min(expected, task.deadline_at))

    # ------------------------------------------------------------------ confirm / cancel

    def on_confirm(self, requester: str, confirm: TaskConfirm, now: float) -> TaskResponse | None:
        """Take or release a countered reservation; returns the response to send, if any.

        Accepting a held reservation answers ACCEPTED (an acknowledgement; the task starts
        through :meth:`start_ready`). Accepting one that lapsed or never existed answers
        REJECTED. Declining answers nothing.
        """
        self._prune(now)
        self._lapse_holds(now)
        task_id = confirm.task_id
        task = self._reserved.get(task_id) or self._running.get(task_id)
        if task is not None and task.requester == requester:
            if not confirm.accept:
                if task.started_at is None:
                    del self._reserved[task_id]
                    self._release(task)
                    self._end(task, _reason(RejectCode.COUNTER_DECLINED, "by requester"), now)
                    self.counts["declined"] += 1
                return None
            if not task.confirmed:
                task.confirmed = True
                task.hold_until = None
                self.counts["confirmed"] += 1
            return TaskResponse(
                task_id=task_id,
                status=int(TaskStatus.ACCEPTED),
                reason="",
                estimated_latency_ms=round(max(0.0, task.deadline_at - now) * 1000.0, 3),
                counter_deadline_ms=task.response.counter_deadline_ms,
            )
        if not confirm.accept:
            return None
        remembered = self._memory.get((requester, task_id))
        if remembered is not None:
            if remembered.response.status == TaskStatus.REJECTED:
                return remembered.response
            return None  # ended already; a duplicate request fetches the result
        return TaskResponse(
            task_id=task_id,
            status=int(TaskStatus.REJECTED),
            reason=_reason(RejectCode.UNKNOWN_TASK, "no reservation under this id"),
            estimated_latency_ms=None,
            counter_deadline_ms=None,
        )

    def on_cancel(self, requester: str, cancel: TaskCancel, now: float) -> CancelOutcome:
        """The requester gave up on a task: release its reservation or stop it."""
        self._prune(now)
        task_id = cancel.task_id
        detail = _reason(RejectCode.CANCELLED, cancel.reason or "by requester")
        task = self._running.get(task_id)
        if task is not None and task.requester == requester:
            del self._running[task_id]
            self._release(task)
            self._end(task, detail, now)
            self.counts["cancelled"] += 1
            return CancelOutcome.STOP_HANDLER
        task = self._reserved.get(task_id)
        if task is not None and task.requester == requester:
            del self._reserved[task_id]
            self._release(task)
            self._end(task, detail, now)
            self.counts["cancelled"] += 1
            return CancelOutcome.RELEASED
        return CancelOutcome.NOT_FOUND

    # ------------------------------------------------------------------ running

    def start_ready(self, now: float) -> list[StartTask]:
        """Move each reserved task that may start now into a slot, in reservation order.

        A confirmed reservation starts when a slot is free for it; an unconfirmed one ahead
        of it keeps a freed slot for itself until it is confirmed or lapses.
        """
        self._lapse_holds(now)
        free = self.max_concurrent_tasks - len(self._running)
        started: list[StartTask] = []
        for task_id, task in list(self._reserved.items()):
            if free <= 0:
                break
            free -= 1
            if task.confirmed:
                del self._reserved[task_id]
                task.started_at = now
                self._running[task_id] = task
                started.append(self._start_effect(task, now))
                self.counts["started_from_queue"] += 1
        return started

    def complete(
        self,
        task_id: str,
        ok: bool,
        output: Any,
        error: str,
        now: float,
    ) -> TaskResult | None:
        """A handler ended: sign its result and free the slot.

        Returns the signed :class:`TaskResult` to send, or None when the task is no longer
        running (it was cancelled, or its deadline passed and :meth:`tick` already answered).
        An output that cannot travel (not JSON-like, or over the size limits) turns into a
        failed result with an ``output_invalid`` error.
        """
        task = self._running.pop(task_id, None)
        if task is None:
            return None
        self._release(task)
        result, size = self._sign_result(task, ok, output, error, now)
        self._remember(task.requester, task.response, result, now, size)
        self.counts["completed_ok" if result.ok else "completed_failed"] += 1
        return result

    def tick(self, now: float) -> list[DeadlineExceeded]:
        """Enforce deadlines and lapse unconfirmed reservations; returns the failed tasks."""
        self._prune(now)
        self._lapse_holds(now)
        events: list[DeadlineExceeded] = []
        for task_id, task in list(self._running.items()):
            if now >= task.deadline_at:
                del self._running[task_id]
                self._release(task)
                events.append(self._expire(task, now, was_running=True))
        for task_id, task in list(self._reserved.items()):
            if task.confirmed and now >= task.deadline_at:
                del self._reserved[task_id]
                self._release(task)
                events.append(self._expire(task, now, was_running=False))
        return events

    def _expire(self, task: _Task, now: float, *, was_running: bool) -> DeadlineExceeded:
        limit = task.response.counter_deadline_ms or task.request.deadline_ms
        where = "running" if was_running else "queued, never started"
        error = _reason(RejectCode.DEADLINE_EXCEEDED, f"{limit} ms passed ({where})")
        result, size = self._sign_result(task, False, None, error, now)
        self._remember(task.requester, task.response, result, now, size)
        self.counts["deadline_exceeded"] += 1
        return DeadlineExceeded(task.requester, task.request.task_id, result, was_running)

    def _start_effect(self, task: _Task, now: float) -> StartTask:
        remaining = _whole_ms(task.deadline_at - now)
        return StartTask(task.requester, task.request, task.deadline_at, max(0, remaining))

    def _sign_result(
        self, task: _Task, ok: bool, output: Any, error: str, now: float
    ) -> tuple[TaskResult, int]:
        """The signed result and its encoded size (the signed encoding plus the
        signature: within a few bytes of its size on the wire, without encoding it twice)."""
        started = task.started_at if task.started_at is not None else task.received_at
        elapsed = min(MAX_ELAPSED_MS, max(0.0, (now - started) * 1000.0))
        unsigned = TaskResult(
            task_id=task.request.task_id,
            requester=task.requester,
            provider=self._signer.node_id,
            ok=bool(ok),
            output=output,
            error=clip_reason(error),
            elapsed_ms=elapsed,
            signature=b"\x00" * 64,
        )
        try:
            body = signing_bytes(unsigned)
        except LocalProtocolError as exc:
            unsigned = TaskResult(
                task_id=unsigned.task_id,
                requester=unsigned.requester,
                provider=unsigned.provider,
                ok=False,
                output=None,
                error=_reason(RejectCode.OUTPUT_INVALID, str(exc)),
                elapsed_ms=elapsed,
                signature=unsigned.signature,
            )
            body = signing_bytes(unsigned)
        signed = TaskResult(
            task_id=unsigned.task_id,
            requester=unsigned.requester,
            provider=unsigned.provider,
            ok=unsigned.ok,
            output=unsigned.output,
            error=unsigned.error,
            elapsed_ms=unsigned.elapsed_ms,
            signature=self._signer.sign(body),
        )
        return signed, len(body) + len(signed.signature)

    # ------------------------------------------------------------------ bookkeeping

    def _lapse_holds(self, now: float) -> None:
        for task_id, task in list(self._reserved.items()):
            if task.hold_until is not None and now >= task.hold_until:
                del self._reserved[task_id]
                self._release(task)
                self._end(task, _reason(RejectCode.RESERVATION_EXPIRED, "not confirmed"), now)
                self.counts["hold_lapsed"] += 1

    def _end(self, task: _Task, reason: str, now: float) -> None:
        """Remember a task that ended without a result as REJECTED with ``reason``."""
        response = TaskResponse(
            task_id=task.request.task_id,
            status=int(TaskStatus.REJECTED),
            reason=reason,
            estimated_latency_ms=None,
            counter_deadline_ms=None,
        )
        self._remember(task.requester, response, None, now)

    def _remember(
        self,
        requester: str,
        response: TaskResponse,
        result: TaskResult | None,
        now: float,
        result_size: int = 0,
    ) -> None:
        """Remember the answer to (requester, task id); ``result_size`` is the result's
        encoded size as :meth:`_sign_result` measured it."""
        if self.remember_max == 0:
            return
        key = (requester, response.task_id)
        self._forget(key)
        size = _response_bytes(response) + (result_size if result is not None else 0)
        self._memory[key] = _Remembered(response, result, now + self.remember_s, size)
        self._memory_bytes += size
        while len(self._memory) > self.remember_max:
            self._forget(next(iter(self._memory)))
        self._fit_budget()

    def _fit_budget(self) -> None:
        """Forget the oldest answers until the remembered bytes fit ``remember_bytes``.

        First the oldest results are replaced, in place, by tombstones (a rejection saying
        the result is forgotten); if that is not enough, the oldest entries go entirely.
        """
        if self._memory_bytes <= self.remember_bytes:
            return
        for key, entry in list(self._memory.items()):
            if self._memory_bytes <= self.remember_bytes:
                break
            if entry.result is None:
                continue
            tombstone = TaskResponse(
                task_id=key[1],
                status=int(TaskStatus.REJECTED),
                reason=_reason(RejectCode.RESULT_FORGOTTEN, "finished; result no longer held"),
                estimated_latency_ms=None,
                counter_deadline_ms=None,
            )
            self._memory[key] = _Remembered(tombstone, None, entry.expires_at, TOMBSTONE_BYTES)
            self._memory_bytes += TOMBSTONE_BYTES - entry.size
            self.counts["results_forgotten"] += 1
        while self._memory and self._memory_bytes > self.remember_bytes:
            self._forget(next(iter(self._memory)))
            self.counts["forgotten"] += 1

    def _release(self, task: _Task) -> None:
        """``task`` left the running or reserved set: its requester holds one slot less."""
        held = self._held[task.requester] - 1
        if held > 0:
            self._held[task.requester] = held
        else:
            del self._held[task.requester]

    def _forget(self, key: tuple[str, str]) -> None:
        entry = self._memory.pop(key, None)
        if entry is not None:
            self._memory_bytes -= entry.size

    def _prune(self, now: float) -> None:
        while self._memory:
            key, entry = next(iter(self._memory.items()))
            if entry.expires_at > now:
                break
            self._forget(key)

    def __repr__(self) -> str:
        return (
            f"<ProviderCore running={len(self._running)}/{self.max_concurrent_tasks} "
            f"reserved={len(self._reserved)} remembered={len(self._memory)} "
            f"({self._memory_bytes} B)>"
        )


RESPONSE_FIXED_BYTES = 32
"""Upper bound on a TaskResponse's encoded size apart from its two strings (array and
string headers, tag, status, a float and an int in msgpack)."""


def _response_bytes(response: TaskResponse) -> int:
    """An upper bound on ``response``'s encoded size, without encoding it."""
    text = len(response.task_id.encode()) + len(response.reason.encode())
    return RESPONSE_FIXED_BYTES + text


def _insort(values: list[float], value: float) -> None:
    lo, hi = 0, len(values)
    while lo < hi:
        mid = (lo + hi) // 2
        if values[mid] <= value:
            lo = mid + 1
        else:
            hi = mid
    values.insert(lo, value)


# ============================================================================ requester


class AttemptOutcome(enum.Enum):
    """How one attempt with one candidate ended."""

    DELIVERED = "delivered"
    """A valid result signed by the peer, ``ok=True``."""
    FAILED_RESULT = "failed_result"
    """A valid result signed by the peer, ``ok=False`` (or ``ok=True`` with an output that
    ``check_output`` refused)."""
    REJECTED = "rejected"
    """The peer refused (or its reservation lapsed before our confirm)."""
    DECLINED = "declined"
    """We declined the peer's counter: too late for us."""
    RESPONSE_TIMEOUT = "response_timeout"
    """No response within the response timeout."""
    EXECUTION_TIMEOUT = "execution_timeout"
    """Accepted, but no result by the agreed deadline."""
    PEER_FAILED = "peer_failed"
    """The connection dropped or membership declared the peer dead."""
    FORGED_RESULT = "forged_result"
    """A result with a bad signature or the wrong task id, requester or provider."""
    PROTOCOL_ERROR = "protocol_error"
    """A malformed response (unknown status, a counter without a deadline)."""
    DEADLINE_EXCEEDED = "deadline_exceeded"
    """Our own overall deadline ran out while waiting for the peer's response."""
    CANCELLED = "cancelled"
    """The caller cancelled the delegation."""
    SKIPPED = "skipped"
    """Not tried: the peer's circuit breaker refused."""


_VERDICTS: dict[AttemptOutcome, TaskVerdict | None] = {
    AttemptOutcome.DELIVERED: TaskVerdict.SUCCESS,
    AttemptOutcome.FAILED_RESULT: TaskVerdict.FAILURE,
    AttemptOutcome.RESPONSE_TIMEOUT: TaskVerdict.FAILURE,
    AttemptOutcome.EXECUTION_TIMEOUT: TaskVerdict.FAILURE,
    AttemptOutcome.PEER_FAILED: TaskVerdict.FAILURE,
    AttemptOutcome.FORGED_RESULT: TaskVerdict.FAILURE,
    AttemptOutcome.PROTOCOL_ERROR: TaskVerdict.FAILURE,
    AttemptOutcome.REJECTED: TaskVerdict.ABANDONED,
    AttemptOutcome.DECLINED: TaskVerdict.ABANDONED,
    AttemptOutcome.DEADLINE_EXCEEDED: TaskVerdict.ABANDONED,
    AttemptOutcome.CANCELLED: TaskVerdict.ABANDONED,
    AttemptOutcome.SKIPPED: None,
}


@dataclass(frozen=True, slots=True)
class Attempt:
    """One candidate tried (or skipped). Times are on the requester's clock, in seconds."""

    node: str
    outcome: AttemptOutcome
    detail: str
    sent_at: float | None
    responded_at: float | None
    ended_at: float
    deadline_ms: int | None
    """The deadline this attempt's request asked for."""
    counter_deadline_ms: int | None

    @property
    def verdict(self) -> TaskVerdict | None:
        """What the attempt says about the peer, for its breaker (None: nothing to record)."""
        return _VERDICTS[self.outcome]

    @property
    def response_ms(self) -> float | None:
        if self.sent_at is None or self.responded_at is None:
            return None
        return (self.responded_at - self.sent_at) * 1000.0

    @property
    def duration_ms(self) -> float:
        return 0.0 if self.sent_at is None else (self.ended_at - self.sent_at) * 1000.0


@dataclass(frozen=True, slots=True)
class SendRequest:
    node: str
    request: TaskRequest


@dataclass(frozen=True, slots=True)
class SendConfirm:
    node: str
    confirm: TaskConfirm


@dataclass(frozen=True, slots=True)
class SendCancel:
    node: str
    cancel: TaskCancel


@dataclass(frozen=True, slots=True)
class AttemptEnded:
    """An attempt ended: record ``attempt.verdict`` (if not None) on the peer's breaker."""

    attempt: Attempt


@dataclass(frozen=True, slots=True)
class Done:
    """The delegation succeeded: ``result`` is verified and came from ``provider``."""

    result: TaskResult
    provider: str
    attempts: tuple[Attempt, ...]
    elapsed_s: float


@dataclass(frozen=True, slots=True)
class Failed:
    """The delegation gave up. ``last_result`` is the last signed failed result, if any."""

    reason: str
    attempts: tuple[Attempt, ...]
    elapsed_s: float
    last_result: TaskResult | None = None


RequesterEffect = SendRequest | SendConfirm | SendCancel | AttemptEnded | Done | Failed
AllowFn = Callable[[str, float], bool]
"""``allow(node, now)``: may a task go to ``node`` now? (``BreakerBoard.allow`` fits.)"""
OutputCheck = Callable[[TaskResult], str | None]
"""``check_output(result)`` for a verified ``ok`` result: None to take it, or why not (the
attempt then ends as FAILED_RESULT)."""


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
                self._end(AttemptOutcome.REJECTED, response.reason, now, effects)
                self._advance(now, effects)
            return effects
        live.responded_at = now
        if status == TaskStatus.ACCEPTED:
            self._phase = _Phase.AWAIT_RESULT
            live.result_deadline = min(live.sent_at + live.deadline_ms / 1000.0, self._deadline_at)
        elif status == TaskStatus.REJECTED:
            self._end(AttemptOutcome.REJECTED, response.reason, now, effects)
            self._advance(now, effects)
        elif status == TaskStatus.COUNTERED and response.counter_deadline_ms is not None:
            self._on_counter(live, response.counter_deadline_ms, now, effects)
        else:
            effects.append(self._cancel_effect(live.node, "malformed response"))
            detail = f"status {status} without a usable counter deadline"
            self._end(AttemptOutcome.PROTOCOL_ERROR, detail, now, effects)
            self._advance(now, effects)
        return effects

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
        return _whole_ms(self._deadline_at - now)

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
                trace_id=self.trace_id,
            )
            response_deadline = min(now + self.response_timeout_s, self._deadline_at)
            self._live = _Live(node, now, asked, remaining, response_deadline)
            self._phase = _Phase.AWAIT_RESPONSE
            effects.append(SendRequest(node, request))
            return
        if self._attempts and self._remaining_ms(now) < MIN_ATTEMPT_MS:
            self._fail("deadline exceeded", now, effects)
        else:
            self._fail(self._exhausted_reason(), now, effects)

    def _exhausted_reason(self) -> str:
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
