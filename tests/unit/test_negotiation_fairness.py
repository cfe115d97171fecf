"""Provider fairness and memory: the fair share per requester and the byte budget for
remembered answers (``ProviderCore``)."""

from __future__ import annotations

from typing import Any

import pytest

from meshnode.core.negotiation import (
    TOMBSTONE_BYTES,
    ProviderCore,
    RejectCode,
    _response_bytes,
    reject_code,
)
from protocol import Capability, Identity, TaskConfirm, TaskRequest, TaskResponse, TaskStatus
from protocol.codec import wire_size
from tests.unit.requester_facts import EVERYONE

PROVIDER = Identity.from_seed(b"\x13" * 32)
FLOODER = Identity.from_seed(b"\x14" * 32).node_id
ALICE = Identity.from_seed(b"\x15" * 32).node_id
BOB = Identity.from_seed(b"\x16" * 32).node_id
CAROL = Identity.from_seed(b"\x17" * 32).node_id

SLOW = Capability(name="slow", description="Takes a second", avg_latency_ms=1000)


def make(max_tasks: int = 3, **kwargs: Any) -> ProviderCore:
    kwargs.setdefault("facts", EVERYONE)
    return ProviderCore(PROVIDER, {"slow": SLOW}, max_tasks, **kwargs)


def req(task_id: str, deadline_ms: int = 30_000, data: Any = None) -> TaskRequest:
    return TaskRequest(
        task_id=task_id,
        capability="slow",
        input=data,
        deadline_ms=deadline_ms,
        budget_usd=None,
        trace_id="",
    )


# --------------------------------------------------------------------------- fair share


@pytest.mark.parametrize(
    ("max_tasks", "others", "expected"),
    [
        (3, [], 3),  # alone: every slot
        (3, [ALICE], 1),  # 3 // 2
        (8, [ALICE], 4),
        (8, [ALICE, BOB], 2),  # 8 // 3
        (2, [ALICE, BOB, CAROL], 1),  # never below one
    ],
)
def test_share_is_capacity_over_competitors(
    max_tasks: int, others: list[str], expected: int
) -> None:
    """Each requester holding a task or asking recently competes; the share is the slots
    divided among them, at least one."""
    core = make(max_tasks)
    for i, who in enumerate(others):
        core.on_request(who, req(f"o{i}"), 0.0)
    assert core.fair_share(FLOODER, 0.5) == expected


def test_a_recent_ask_counts_as_competing_only_within_the_window() -> None:
    core = make(4, fair_share_window_s=10.0)
    decision = core.on_request(ALICE, req("a"), 0.0)
    core.complete("a", True, 1, "", 0.5)
    assert decision.start is not None
    assert core.fair_share(FLOODER, 9.0) == 2  # ALICE asked 9 s ago
    assert core.fair_share(FLOODER, 10.5) == 4  # ALICE's ask is too old


def test_a_lone_requester_uses_every_slot_and_the_queue() -> None:
    """Work-conserving: with nobody else asking, one requester gets every slot and may
    queue as before."""
    core = make(3, max_reservations=6)
    statuses = [core.on_request(FLOODER, req(f"f{i}"), 0.0).response.status for i in range(9)]
    assert statuses == [TaskStatus.ACCEPTED] * 3 + [TaskStatus.COUNTERED] * 6
    last = core.on_request(FLOODER, req("f9"), 0.0).response
    assert reject_code(last.reason) is RejectCode.BUSY


def test_a_requester_over_its_share_is_refused_while_another_competes() -> None:
    """Once someone else asks, a requester holding its share is refused with
    ``fair_share`` (not queued), and the newcomer is queued even past a full queue."""
    core = make(3, max_reservations=6)
    for i in range(9):
        core.on_request(FLOODER, req(f"f{i}"), 0.0)
    newcomer = core.on_request(ALICE, req("a"), 0.1).response
    assert newcomer.status == TaskStatus.COUNTERED
    refused = core.on_request(FLOODER, req("f-more"), 0.2).response
    assert refused.status == TaskStatus.REJECTED
    assert reject_code(refused.reason) is RejectCode.FAIR_SHARE
    assert "share is 1" in refused.reason
    # The newcomer holds its share now: a second ask is refused too, the queue stays
    # bounded by one share per newcomer.
    again = core.on_request(ALICE, req("a2"), 0.3).response
    assert reject_code(again.reason) is RejectCode.FAIR_SHARE
    assert core.reserved == 7


def _simulate(core: ProviderCore, until: float) -> dict[str, int]:
    """FLOODER asks 5 times every 0.1 s; ALICE asks every 0.1 s while she holds no task
    (one at a time). Counters are confirmed at once; a running task ends one second after
    it started. Returns the tasks started per requester."""
    started: dict[str, int] = {FLOODER: 0, ALICE: 0}
    ends: dict[str, float] = {}
    alice_holds: set[str] = set()
    n = 0
    step = 0
    while step * 0.1 < until:
        now = round(step * 0.1, 6)
        step += 1
        for task_id, end in list(ends.items()):
            if end <= now:
                del ends[task_id]
                alice_holds.discard(task_id)
                core.complete(task_id, True, 1, "", now)
        for start in core.start_ready(now):
            started[start.requester] += 1
            ends[start.request.task_id] = now + 1.0
        asks = [FLOODER] * 5
        if not alice_holds:
            asks.append(ALICE)
        for who in asks:
            n += 1
            task_id = f"t{n}"
            decision = core.on_request(who, req(task_id, deadline_ms=60_000), now)
            status = decision.response.status
            if decision.start is not None:
                started[who] += 1
                ends[task_id] = now + 1.0
            elif status == TaskStatus.COUNTERED:
                core.on_confirm(who, TaskConfirm(task_id, True), now)
            if who == ALICE and status != TaskStatus.REJECTED:
                alice_holds.add(task_id)
        core.tick(now)
        holders = [t for t in (*core._running.values(), *core._reserved.values())]
        assert {who: core.held_by(who) for who in (FLOODER, ALICE)} == {
            who: sum(1 for t in holders if t.requester == who) for who in (FLOODER, ALICE)
        }
    return started


def test_a_flooding_identity_cannot_starve_another_requester() -> None:
    """One identity asking 50 times a second cannot keep a second requester (one task at a
    time, once a second) from its slots.

    On the unfixed code: ALICE started 1 task in 30 s (every later ask REJECTED busy: the
    flooder kept the reservation queue full); FLOODER started 89. Fixed: 29 and 61.
    """
    started = _simulate(make(3, max_reservations=6), until=30.0)
    assert started[ALICE] >= 25
    assert started[FLOODER] >= 40  # the flooder still gets the rest


# --------------------------------------------------------------------------- byte budget


def _finish(core: ProviderCore, who: str, task_id: str, output: Any, now: float) -> None:
    decision = core.on_request(who, req(task_id), now)
    assert decision.start is not None, decision.response
    assert core.complete(task_id, True, output, "", now) is not None


def _remembered_result_bytes(core: ProviderCore, who: str, ids: list[str], now: float) -> int:
    """Bytes of the signed results a duplicate request gets back, over ``ids``."""
    total = 0
    for task_id in ids:
        result = core.on_request(who, req(task_id), now).result
        if result is not None:
            total += wire_size(result)
    return total


def test_remembered_results_stay_within_the_byte_budget() -> None:
    """60 results of 100 kB each against a 1 MB budget: what is remembered never exceeds
    the budget, and the newest results are the ones kept.

    On the unfixed code: all 60 results (6,009,350 bytes) were still returned to
    duplicates.
    """
    budget = 1_000_000
    core = make(1, remember_bytes=budget)
    ids = [f"t{i}" for i in range(60)]
    for i, task_id in enumerate(ids):
        _finish(core, ALICE, task_id, "x" * 100_000, float(i))
        assert core.remembered_bytes <= budget
    held = _remembered_result_bytes(core, ALICE, ids, 61.0)
    assert held <= budget
    assert held >= budget // 2  # the budget is used, not thrown away
    newest = core.on_request(ALICE, req(ids[-1]), 61.0)
    assert newest.result is not None and newest.result.output == "x" * 100_000


def test_a_forgotten_result_is_answered_result_forgotten_and_not_rerun() -> None:
    core = make(1, remember_bytes=300_000)
    for i in range(5):
        _finish(core, ALICE, f"t{i}", "x" * 100_000, float(i))
    duplicate = core.on_request(ALICE, req("t0"), 10.0)
    assert duplicate.duplicate
    assert duplicate.start is None  # the handler is not run a second time
    assert duplicate.result is None
    assert reject_code(duplicate.response.reason) is RejectCode.RESULT_FORGOTTEN
    assert core.counts["results_forgotten"] >= 1


@pytest.mark.parametrize(
    ("budget", "remembered"),
    [
        (0, 0),  # nothing fits, not even a tombstone
        (TOMBSTONE_BYTES * 3, 3),  # three tombstones, no result
    ],
)
def test_tiny_budgets(budget: int, remembered: int) -> None:
    core = make(1, remember_bytes=budget)
    for i in range(5):
        _finish(core, ALICE, f"t{i}", "x" * 1_000, float(i))
    assert core.remembered_bytes <= budget
    assert core.remembered == remembered


def test_bad_budget_is_refused() -> None:
    with pytest.raises(ValueError, match="remember_bytes"):
        make(1, remember_bytes=-1)


@pytest.mark.parametrize(
    "response",
    [
        TaskResponse("t" * 64, 2, "r" * 512, None, None),
        TaskResponse("é" * 32, 3, "ü" * 256, 1e9, 86_400_000),
        TaskResponse("t", 1, "", 0.5, None),
    ],
)
def test_response_size_bound_covers_the_encoding(response: TaskResponse) -> None:
    """What the byte budget charges for a response is never less than its encoding."""
    assert _response_bytes(response) >= wire_size(response)


def test_result_size_charged_is_close_to_its_encoding() -> None:
    core = make(1)
    decision = core.on_request(ALICE, req("t"), 0.0)
    assert decision.start is not None
    result = core.complete("t", True, {"text": "y" * 5000}, "", 0.1)
    assert result is not None
    charged = core.remembered_bytes - _response_bytes(decision.response)
    assert abs(charged - wire_size(result)) <= 64
