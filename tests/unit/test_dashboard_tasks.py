"""The node's task log (what the dashboard and ``meshnode status`` list as tasks in flight
and recent): fed by the core itself, bounded, newest first.

Cores are driven by the in-memory harness of :mod:`tests.unit.nodecore_harness` (real
signers, a virtual clock, no sockets)."""

from __future__ import annotations

import pytest

from meshnode.core.task_log import RECENT_TASKS_MAX, TaskLog
from tests.unit.nodecore_harness import SILENT
from tests.unit.test_node_core import _delegate, _world


def test_a_delegation_is_in_flight_then_recent_with_its_outcome() -> None:
    """While the provider works the task is in flight with that provider named; once the
    result arrives it is in the recent list as ``ok``, with its trace id kept."""
    world, a, (p,) = _world(lambda x: SILENT)
    task_id = _delegate(world, a, [p], deadline_s=30, trace_id="feedc0de" * 4)
    world.settle(world.now + 0.01)
    (entry,) = a.core.task_log.in_flight()
    assert entry["task_id"] == task_id and entry["capability"] == "echo"
    assert entry["provider"] == p.node_id and entry["trace_id"] == "feedc0de" * 4
    assert a.core.task_log.recent() == []
    # The provider answers now.
    run = p.running.pop((a.node_id, task_id))
    p.core.handler_done(run.requester, run.task_id, world.now, output={"ok": True})
    world.drain(p)
    world.settle()
    assert a.core.task_log.in_flight() == []
    (done,) = a.core.task_log.recent()
    assert done["outcome"] == "ok" and done["provider"] == p.node_id
    assert done["attempts"] == 1 and done["ended_at"] >= done["started_at"]


def test_a_failed_and_a_refused_delegation_are_recent_with_their_reason() -> None:
    """A task whose handler raises ends ``failed`` with the core's reason; a delegation the
    core refuses at once (no time left) is listed too, never stuck in flight."""
    world, a, (p,) = _world(lambda x: 1 / 0)
    failed = _delegate(world, a, [p], deadline_s=30)
    world.settle()
    refused = a.core.start_delegation(
        "echo", {}, [p.node_id], world.now, inherited_deadline=world.now - 1
    )
    world.drain(a)
    recent = a.core.task_log.recent()
    assert [e["task_id"] for e in recent] == [refused, failed]  # newest first
    assert recent[0]["outcome"] == "failed" and "no time left" in recent[0]["reason"]
    assert recent[1]["outcome"] == "failed" and recent[1]["reason"]
    assert a.core.task_log.in_flight() == []


def test_the_recent_list_is_capped_and_keeps_the_newest() -> None:
    log = TaskLog(recent_max=3)
    for i in range(10):
        log.started(f"t{i}", "echo", f"tr{i}", float(i))
        log.finished(f"t{i}", ok=i % 2 == 0, provider="p", reason="", attempts=1, now=i + 0.5)
    assert [e["task_id"] for e in log.recent()] == ["t9", "t8", "t7"]
    assert len(log) == 3
    assert TaskLog().recent() == [] and RECENT_TASKS_MAX >= 10


def test_copies_are_returned_and_the_version_moves_on_change() -> None:
    log = TaskLog()
    v0 = log.version
    log.started("t", "echo", "tr", 1.0)
    log.in_flight()[0]["capability"] = "tampered"
    assert log.in_flight()[0]["capability"] == "echo"
    v1 = log.version
    log.trying("t", "p1")
    log.trying("t", "p1")  # no change, no new version
    assert v0 < v1 < log.version == v1 + 1
    with pytest.raises(ValueError):
        TaskLog(recent_max=0)


def test_a_traced_delegation_is_listed_under_the_trace_id_the_trace_route_serves() -> None:
    """With tracing on, the runtime hands the core a W3C traceparent; the task log keeps
    its 32-digit trace id, the key of ``GET /v1/traces/{trace_id}`` (the dashboard's
    trace link). On the unfixed merge the entry held the whole traceparent, a link to a
    trace no node serves."""
    world, a, (p,) = _world(lambda x: SILENT)
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    _delegate(world, a, [p], deadline_s=30, trace_id=f"00-{trace}-00f067aa0ba902b7-01")
    world.settle(world.now + 0.01)
    (entry,) = a.core.task_log.in_flight()
    assert entry["trace_id"] == trace
