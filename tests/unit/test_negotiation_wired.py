"""A RequesterCore and ProviderCores wired together in memory, with every message going
through a signed envelope (``protocol.encode`` / ``protocol.decode``) and a virtual clock.

The little event loop below is what a shell does: deliver messages, run handlers for a
virtual duration, call ``tick`` at each core's ``next_deadline``, record breaker verdicts.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from meshnode.core.breaker import BreakerBoard
from meshnode.core.negotiation import (
    AttemptEnded,
    AttemptOutcome,
    CancelOutcome,
    Done,
    Failed,
    ProviderCore,
    RequesterCore,
    SendCancel,
    SendConfirm,
    SendRequest,
    StartTask,
)
from protocol import (
    Capability,
    Identity,
    Message,
    TaskCancel,
    TaskConfirm,
    TaskRequest,
    TaskResponse,
    TaskResult,
    decode,
    encode,
    verify,
)
from tests.unit.requester_facts import EVERYONE

LATENCY_S = 0.01
"""One-way network delay in the simulated network."""

ECHO = Capability(
    name="echo",
    description="Echo",
    input_schema={"type": "object", "required": ["text"]},
    avg_latency_ms=1000,
)


@dataclass
class Node:
    identity: Identity
    core: ProviderCore
    duration_s: float | None  # None: the handler hangs forever
    runs: list[str] = field(default_factory=list)


class Mesh:
    """An in-memory network of providers and one requester, on a virtual clock."""

    def __init__(self, requester: Identity, nodes: list[Node], *, duplicate: bool = False):
        self.requester = requester
        self.nodes = {n.identity.node_id: n for n in nodes}
        self.duplicate = duplicate
        self.now = 0.0
        self.queue: list[tuple[float, int, Callable[[], None]]] = []
        self.seq = itertools.count()
        self.board = BreakerBoard()
        self.core: RequesterCore | None = None
        self.wire_bytes = 0

    def at(self, when: float, action: Callable[[], None]) -> None:
        heapq.heappush(self.queue, (when, next(self.seq), action))

    def send(self, sender: Identity, message: Message, deliver: Callable[[str, Any], None]) -> None:
        frame = encode([message], sender)
        self.wire_bytes += len(frame)
        copies = 2 if self.duplicate else 1
        for _ in range(copies):

            def arrive(frame: bytes = frame) -> None:
                envelope = decode(frame, verifier=verify)
                [decoded] = envelope.messages
                deliver(envelope.sender, decoded)

            self.at(self.now + LATENCY_S, arrive)

    # ------------------------------------------------------------------ provider side

    def to_provider(self, node_id: str) -> Callable[[str, Any], None]:
        node = self.nodes[node_id]

        def deliver(sender: str, message: Any) -> None:
            core = node.core
            if isinstance(message, TaskRequest):
                decision = core.on_request(sender, message, self.now)
                self.send(node.identity, decision.response, self.to_requester)
                if decision.result is not None:
                    self.send(node.identity, decision.result, self.to_requester)
                if decision.start is not None:
                    self.run(node, decision.start)
            elif isinstance(message, TaskConfirm):
                answer = core.on_confirm(sender, message, self.now)
                if answer is not None:
                    self.send(node.identity, answer, self.to_requester)
            elif isinstance(message, TaskCancel):
                core.on_cancel(sender, message, self.now)
            self.provider_housekeeping(node)

        return deliver

    def run(self, node: Node, start: StartTask) -> None:
        node.runs.append(start.request.task_id)
        if node.duration_s is None:
            return

        def finish() -> None:
            task_id = start.request.task_id
            out = node.core.complete(task_id, True, start.request.input, "", self.now)
            if out is not None:
                self.send(node.identity, out, self.to_requester)
            self.provider_housekeeping(node)

        self.at(self.now + node.duration_s, finish)

    def provider_housekeeping(self, node: Node) -> None:
        for start in node.core.start_ready(self.now):
            self.run(node, start)
        deadline = node.core.next_deadline()
        if deadline is not None:
            self.at(deadline, lambda: self.provider_tick(node))

    def provider_tick(self, node: Node) -> None:
        for event in node.core.tick(self.now):
            self.send(node.identity, event.result, self.to_requester)
        self.provider_housekeeping(node)

    # ------------------------------------------------------------------ requester side

    def to_requester(self, sender: str, message: Any) -> None:
        assert self.core is not None
        if isinstance(message, TaskResponse):
            self.apply(self.core.on_response(sender, message, self.now))
        elif isinstance(message, TaskResult):
            self.apply(self.core.on_result(sender, message, self.now))

    def apply(self, effects: list[Any]) -> None:
        core = self.core
        assert core is not None
        for effect in effects:
            if isinstance(effect, SendRequest):
                self.send(self.requester, effect.request, self.to_provider(effect.node))
            elif isinstance(effect, SendConfirm):
                self.send(self.requester, effect.confirm, self.to_provider(effect.node))
            elif isinstance(effect, SendCancel):
                self.send(self.requester, effect.cancel, self.to_provider(effect.node))
            elif isinstance(effect, AttemptEnded) and effect.attempt.verdict is not None:
                self.board.record(effect.attempt.node, effect.attempt.verdict, self.now)
        deadline = core.next_deadline()
        if deadline is not None:
            self.at(deadline, lambda: self.apply(core.tick(self.now)))

    def delegate(self, candidates: list[str], **kwargs: Any) -> Done | Failed:
        self.core = RequesterCore(
            self.requester.node_id,
            "echo",
            {"text": "hi"},
            candidates,
            task_id=kwargs.pop("task_id", "job-1"),
            verifier=verify,
            allow=self.board.allow,
            **kwargs,
        )
        self.apply(self.core.start(self.now))
        while self.queue and not self.core.finished:
            when, _, action = heapq.heappop(self.queue)
            self.now = max(self.now, when)
            action()
        assert self.core.outcome is not None
        return self.core.outcome

    def drain(self, until: float) -> None:
        while self.queue and self.queue[0][0] <= until:
            when, _, action = heapq.heappop(self.queue)
            self.now = max(self.now, when)
            action()


ALICE = Identity.from_seed(b"\x20" * 32)


def provider(seed: int, max_tasks: int = 1, duration_s: float | None = 0.5) -> Node:
    identity = Identity.from_seed(bytes([seed]) * 32)
    core = ProviderCore(identity, {"echo": ECHO}, max_tasks, verifier=verify, facts=EVERYONE)
    return Node(identity, core, duration_s)


def occupy(node: Node) -> None:
    """Fill one slot of ``node`` with someone else's task (it ends only when told)."""
    other = Identity.from_seed(b"\x77" * 32).node_id
    request = TaskRequest("filler", "echo", {"text": "x"}, 60_000, None, "")
    decision = node.core.on_request(other, request, 0.0)
    assert decision.start is not None
    node.runs.append("filler")


def test_happy_path_through_the_wire() -> None:
    """A free provider accepts, runs once, and returns a result the requester verifies."""
    p = provider(1)
    mesh = Mesh(ALICE, [p])
    outcome = mesh.delegate([p.identity.node_id])
    assert isinstance(outcome, Done)
    assert outcome.provider == p.identity.node_id
    assert outcome.result.output == {"text": "hi"}
    assert p.runs == ["job-1"]
    assert outcome.elapsed_s == pytest.approx(0.5 + 2 * LATENCY_S)
    assert mesh.wire_bytes > 0


def test_counter_confirm_and_run_from_the_queue() -> None:
    """A busy provider counters, the requester confirms, the reservation starts when the
    slot frees, and the task runs exactly once there."""
    busy = provider(1, max_tasks=1, duration_s=0.5)
    occupy(busy)
    mesh = Mesh(ALICE, [busy])

    def free_the_slot() -> None:  # at 0.3 s, after the counter went out and was confirmed
        assert busy.core.complete("filler", True, 1, "", mesh.now) is not None
        mesh.provider_housekeeping(busy)

    mesh.at(0.3, free_the_slot)
    outcome = mesh.delegate([busy.identity.node_id], deadline_s=30.0, attempt_deadline_ms=2_000)
    assert isinstance(outcome, Done), outcome
    [attempt] = outcome.attempts
    assert attempt.outcome is AttemptOutcome.DELIVERED
    assert attempt.counter_deadline_ms is not None
    assert attempt.counter_deadline_ms <= 3_000
    assert busy.runs == ["filler", "job-1"]
    assert outcome.elapsed_s == pytest.approx(0.3 + 0.5 + LATENCY_S)


def test_far_counter_is_declined_and_next_candidate_delivers() -> None:
    """A counter beyond 1.5× is declined (the reservation released at once) and the next
    candidate runs the task."""
    busy = provider(1, max_tasks=1)
    occupy(busy)
    free = provider(2)
    mesh = Mesh(ALICE, [busy, free])
    outcome = mesh.delegate(
        [busy.identity.node_id, free.identity.node_id], attempt_deadline_ms=1_000
    )
    assert isinstance(outcome, Done)
    assert outcome.provider == free.identity.node_id
    assert [a.outcome for a in outcome.attempts] == [
        AttemptOutcome.DECLINED,
        AttemptOutcome.DELIVERED,
    ]
    assert busy.core.reserved == 0
    assert busy.runs == ["filler"]


def test_hung_provider_is_cut_at_the_deadline_and_the_breaker_counts_it() -> None:
    """A provider whose handler never returns is failed by the requester at the accepted
    deadline (its breaker counts a failure), and the next candidate delivers."""
    stuck = provider(1, duration_s=None)
    good = provider(2)
    mesh = Mesh(ALICE, [stuck, good])
    outcome = mesh.delegate(
        [stuck.identity.node_id, good.identity.node_id], attempt_deadline_ms=3_000
    )
    assert isinstance(outcome, Done)
    assert outcome.provider == good.identity.node_id
    assert [a.outcome for a in outcome.attempts] == [
        AttemptOutcome.EXECUTION_TIMEOUT,
        AttemptOutcome.DELIVERED,
    ]
    assert mesh.board.snapshot(mesh.now)[stuck.identity.node_id].consecutive_failures == 1
    # The cancel reached the stuck provider and freed its slot.
    mesh.drain(mesh.now + 1.0)
    assert stuck.core.in_flight == 0


def test_duplicated_network_runs_the_handler_once() -> None:
    """Every frame delivered twice: the provider answers duplicates from memory, the
    requester ignores repeated answers, and the handler runs once."""
    p = provider(1)
    mesh = Mesh(ALICE, [p], duplicate=True)
    outcome = mesh.delegate([p.identity.node_id])
    assert isinstance(outcome, Done)
    mesh.drain(mesh.now + 5.0)
    assert p.runs == ["job-1"]
    assert p.core.counts["duplicate"] >= 1


def test_three_failures_open_the_circuit_and_it_is_skipped() -> None:
    """Three delegations failing on the same peer open its circuit; the fourth skips it."""
    stuck = provider(1, duration_s=None, max_tasks=10)
    good = provider(2)
    mesh = Mesh(ALICE, [stuck, good])
    ids = [stuck.identity.node_id, good.identity.node_id]
    for i in range(3):
        outcome = mesh.delegate(ids, task_id=f"job-{i}", attempt_deadline_ms=1_000)
        assert isinstance(outcome, Done)
        assert outcome.attempts[0].outcome is AttemptOutcome.EXECUTION_TIMEOUT
    assert mesh.board.open_nodes(mesh.now) == {stuck.identity.node_id}
    outcome = mesh.delegate(ids, task_id="job-3", attempt_deadline_ms=1_000)
    assert isinstance(outcome, Done)
    assert outcome.attempts[0].outcome is AttemptOutcome.SKIPPED
    assert stuck.runs == ["job-0", "job-1", "job-2"]
    assert stuck.core.on_cancel(ALICE.node_id, TaskCancel("job-9", ""), mesh.now) is (
        CancelOutcome.NOT_FOUND
    )


def test_both_sides_enforce_the_deadline() -> None:
    """A hung handler is given up on by the requester at its deadline and stopped by the
    provider at its own (one one-way delay later), which frees the slot."""
    stuck = provider(1, duration_s=None)
    mesh = Mesh(ALICE, [stuck])
    outcome = mesh.delegate([stuck.identity.node_id], deadline_s=5.0, attempt_deadline_ms=2_000)
    assert isinstance(outcome, Failed)
    # Both sides count 2 s: the requester from sending (gives up at 2.0 s), the provider
    # from receiving (stops the task at 2.01 s, just before the cancel lands there).
    assert outcome.attempts[0].outcome is AttemptOutcome.EXECUTION_TIMEOUT
    assert outcome.attempts[0].ended_at == 2.0
    mesh.drain(mesh.now + 1.0)
    assert stuck.core.in_flight == 0
    assert stuck.core.counts["deadline_exceeded"] == 1
