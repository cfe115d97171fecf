"""The provider side of task negotiation, sans I/O: admission, counters, reservations.

Theory of operation
-------------------
:class:`ProviderCore` decides what a node answers to task requests and keeps its slots.
It never reads a clock or touches a socket: time comes in as ``now``, signatures from an
injected signer. The conversation it takes part in is described in
:mod:`meshnode.core.negotiation`; its effects (:class:`~meshnode.core.effects.StartTask`,
:class:`~meshnode.core.effects.DeadlineExceeded`) are defined in :mod:`meshnode.core.effects`.

Provider decisions (checked in this order, the cheap checks first)
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
1. a live task of *another* requester already uses the id → REJECTED ``task_id_in_use``;
2. the same requester and task id seen before → the remembered answer (idempotent);
3. unknown capability → REJECTED ``unknown_capability``;
3a. the capability's :class:`~meshnode.core.authorization.Allow` rule refuses the
   requester (not a member, not listed, no such role, trust too low; see
   :mod:`meshnode.core.authorization`) → REJECTED ``forbidden`` (not remembered, see below);
4. ``budget_usd`` is set and the capability's ``cost_per_call_usd`` exceeds it → REJECTED
   ``over_budget``;
5. ``deadline_ms`` is smaller than the capability's ``avg_latency_ms`` (the provider's
   latency estimate) → REJECTED ``deadline_too_short``;
6. ``input`` fails the capability's ``input_schema`` (see :mod:`meshnode.core.json_schema`)
   → REJECTED ``invalid_input``;
6a. the requester already holds the capability's ``Quota.max_concurrent`` running and
   reserved tasks of it, or has used up its ``Quota.per_minute`` requests → REJECTED
   ``quota`` (a request refused for concurrency takes no token from the rate bucket);
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

Authorization and quotas. Each capability has a
:class:`~meshnode.core.authorization.CapabilityPolicy` (``policies``; a capability without
one gets :data:`~meshnode.core.authorization.DEFAULT_POLICY`, members only). The facts
about a requester (membership, certificate roles, our trust in it) come from the injected
:class:`~meshnode.core.authorization.RequesterFacts`; without one every requester counts
as a stranger with no roles and no trust, so only ``Allow.anyone()`` capabilities serve.
A ``forbidden`` refusal is not remembered: it ran nothing, costs nothing to decide again,
and a stranger's flood of task ids must not push honest members' remembered results out
of the byte budget. ``forbidden`` and ``quota`` are honest refusals: the requester moves
on to its next candidate without blaming the provider. Per-minute buckets are kept for at
most :data:`QUOTA_MAX_TRACKED` requesters per capability (the least recently seen are
forgotten first, and start again with a full bucket).

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
"""

from __future__ import annotations

import enum
import math
from collections import Counter, OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meshnode.core.authorization import (
    DEFAULT_POLICY,
    CapabilityPolicy,
    RequesterFacts,
    forbidden_reason,
)
from meshnode.core.channel import RateLimiter
from meshnode.core.effects import DeadlineExceeded, StartTask
from meshnode.core.json_schema import describe, validate
from meshnode.core.task_wire import (
    MAX_DEADLINE_MS,
    MAX_ELAPSED_MS,
    RejectCode,
    clip_reason,
    reject_reason,
    whole_ms,
)
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

__all__ = [
    "COUNTER_SAFETY_FACTOR",
    "COUNTER_SAFETY_MS",
    "FAIR_SHARE_MAX_TRACKED",
    "FAIR_SHARE_WINDOW_S",
    "QUOTA_MAX_TRACKED",
    "REMEMBER_BYTES",
    "REMEMBER_MAX",
    "REMEMBER_S",
    "RESERVATION_HOLD_S",
    "RESERVATION_QUEUE_FACTOR",
    "TOMBSTONE_BYTES",
    "CancelOutcome",
    "DeadlineExceeded",
    "ProviderCore",
    "RequestDecision",
    "StartTask",
]

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

QUOTA_MAX_TRACKED = 16_384
"""Most requesters whose per-minute bucket is kept, per capability with a
``Quota.per_minute``; the least recently seen are forgotten first (a forgotten one starts
again with a full bucket). Each costs about 150 bytes: 2.4 MB per rate-limited capability
at the cap, enough for every requester of a 10,000-member mesh."""


class _Stranger:
    """The facts of a provider given none: nobody is a member, has roles or trust."""

    def is_member(self, node_id: str) -> bool:
        return False

    def roles_of(self, node_id: str) -> frozenset[str] | None:
        return None

    def trust_of(self, node_id: str, now: float) -> float:
        return 0.0


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
        policies: Mapping[str, CapabilityPolicy] | None = None,
        facts: RequesterFacts | None = None,
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
        self._policies: dict[str, CapabilityPolicy] = dict(policies or {})
        self._facts: RequesterFacts = facts if facts is not None else _Stranger()
        self._held_of: Counter[tuple[str, str]] = Counter()
        """(capability, requester) → its running plus reserved tasks of that capability."""
        self._rates: dict[str, RateLimiter] = {}
        """Capability → per-requester token buckets (``Quota.per_minute``)."""
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

    def set_policies(self, policies: Mapping[str, CapabilityPolicy]) -> None:
        """Replace the capabilities' policies (a capability without one gets
        :data:`~meshnode.core.authorization.DEFAULT_POLICY`). Rate buckets of a capability
        whose ``per_minute`` changed start again full."""
        policies = dict(policies)
        for name in list(self._rates):
            old = self._policy(name).quota.per_minute
            new = policies.get(name, DEFAULT_POLICY).quota.per_minute
            if old != new:
                del self._rates[name]
        self._policies = policies

    def policy(self, capability: str) -> CapabilityPolicy:
        """The policy capability ``capability`` is served under."""
        return self._policy(capability)

    def _policy(self, capability: str) -> CapabilityPolicy:
        return self._policies.get(capability, DEFAULT_POLICY)

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
        if not self._running and not self._reserved:
            return None  # asked after every input: the idle case costs no lists
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
        if capability is not None:
            why = self._policy(capability.name).allow.refusal(requester, self._facts, now)
            if why is not None:
                detail = forbidden_reason(capability.name, why)
                self.counts["rejected"] += 1
                self.counts["forbidden"] += 1
                # Not remembered (see the module docstring).
                return RequestDecision(self._rejection(request, RejectCode.FORBIDDEN, detail))
        rejection = self._admission_problem(request, capability)
        if rejection is None and capability is not None:
            rejection = self._quota_problem(requester, capability.name, now)
            if rejection is not None:
                self.counts["quota"] += 1
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
            self._hold(task)
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
        self._hold(self._reserved[task_id])
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

    def _quota_problem(
        self, requester: str, capability: str, now: float
    ) -> tuple[RejectCode, str] | None:
        """The capability's per-requester quota (check 6a), or None when within it."""
        quota = self._policy(capability).quota
        limit = quota.max_concurrent
        if limit is not None:
            held = self._held_of[(capability, requester)]
            if held >= limit:
                return RejectCode.QUOTA, f"holds {held} {capability!r} tasks; quota is {limit}"
        per_minute = quota.per_minute
        if per_minute is not None:
            bucket = self._rates.get(capability)
            if bucket is None:
                bucket = RateLimiter(per_minute / 60.0, per_minute, QUOTA_MAX_TRACKED)
                self._rates[capability] = bucket
            if not bucket.allow(requester, now):
                return RejectCode.QUOTA, f"over {per_minute} {capability!r} requests a minute"
        return None

    def held_of(self, requester: str, capability: str) -> int:
        """Running plus reserved tasks of ``capability`` that ``requester`` holds."""
        return self._held_of[(capability, requester)]

    def _rejection(self, request: TaskRequest, code: RejectCode, detail: str) -> TaskResponse:
        return TaskResponse(
            task_id=request.task_id,
            status=int(TaskStatus.REJECTED),
            reason=reject_reason(code, detail),
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
                    self._end(task, reject_reason(RejectCode.COUNTER_DECLINED, "by requester"), now)
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
            reason=reject_reason(RejectCode.UNKNOWN_TASK, "no reservation under this id"),
            estimated_latency_ms=None,
            counter_deadline_ms=None,
        )

    def on_cancel(self, requester: str, cancel: TaskCancel, now: float) -> CancelOutcome:
        """The requester gave up on a task: release its reservation or stop it."""
        self._prune(now)
        task_id = cancel.task_id
        detail = reject_reason(RejectCode.CANCELLED, cancel.reason or "by requester")
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
        *,
        invalid_input: bool = False,
    ) -> TaskResult | None:
        """A handler ended: sign its result and free the slot.

        Returns the signed :class:`TaskResult` to send, or None when the task is no longer
        running (it was cancelled, or its deadline passed and :meth:`tick` already answered).
        An output that cannot travel (not JSON-like, or over the size limits) turns into a
        failed result with an ``output_invalid`` error. ``invalid_input`` says the handler
        refused its input (``InvalidInput``): the result is failed and its error reads
        ``"invalid_input: <error>"``, which the requester tells apart from a failure.
        """
        task = self._running.pop(task_id, None)
        if task is None:
            return None
        self._release(task)
        if invalid_input:
            ok, output = False, None
            error = reject_reason(RejectCode.INVALID_INPUT, error or "refused by the handler")
        result, size = self._sign_result(task, ok, output, error, now)
        self._remember(task.requester, task.response, result, now, size)
        if invalid_input:
            self.counts["completed_invalid_input"] += 1
        else:
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
        error = reject_reason(RejectCode.DEADLINE_EXCEEDED, f"{limit} ms passed ({where})")
        result, size = self._sign_result(task, False, None, error, now)
        self._remember(task.requester, task.response, result, now, size)
        self.counts["deadline_exceeded"] += 1
        return DeadlineExceeded(task.requester, task.request.task_id, result, was_running)

    def _start_effect(self, task: _Task, now: float) -> StartTask:
        remaining = whole_ms(task.deadline_at - now)
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
                error=reject_reason(RejectCode.OUTPUT_INVALID, str(exc)),
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
                self._end(task, reject_reason(RejectCode.RESERVATION_EXPIRED, "not confirmed"), now)
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
                reason=reject_reason(
                    RejectCode.RESULT_FORGOTTEN, "finished; result no longer held"
                ),
                estimated_latency_ms=None,
                counter_deadline_ms=None,
            )
            self._memory[key] = _Remembered(tombstone, None, entry.expires_at, TOMBSTONE_BYTES)
            self._memory_bytes += TOMBSTONE_BYTES - entry.size
            self.counts["results_forgotten"] += 1
        while self._memory and self._memory_bytes > self.remember_bytes:
            self._forget(next(iter(self._memory)))
            self.counts["forgotten"] += 1

    def _hold(self, task: _Task) -> None:
        """``task`` entered the running or reserved set: its requester holds one slot more."""
        self._held[task.requester] += 1
        self._held_of[(task.capability.name, task.requester)] += 1

    def _release(self, task: _Task) -> None:
        """``task`` left the running or reserved set: its requester holds one slot less."""
        held = self._held[task.requester] - 1
        if held > 0:
            self._held[task.requester] = held
        else:
            del self._held[task.requester]
        key = (task.capability.name, task.requester)
        held = self._held_of[key] - 1
        if held > 0:
            self._held_of[key] = held
        else:
            del self._held_of[key]

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
