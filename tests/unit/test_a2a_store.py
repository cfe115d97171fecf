"""The A2A task book on a real SQLite store: bounded, restart-safe, paged with the running
tasks held in memory ahead of the stored ones."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshnode.core import a2a
from meshnode.core.a2a import State
from meshnode.runtime.a2a_server import STOPPED_MESSAGE, _TaskBook
from meshnode.runtime.store import NodeStore


def task(task_id: str, state: State, context: str = "c", now: float = 0.0) -> dict[str, object]:
    t = a2a.new_task(task_id, context, {"messageId": "m", "parts": [{"text": "x"}]}, now)
    t["status"] = a2a.status(t, state, now)
    return t


@pytest.fixture
def store(tmp_path: Path) -> Iterator[NodeStore]:
    s = NodeStore(tmp_path / "d")
    yield s
    s.close()


@pytest.mark.parametrize("with_store", [True, False])
def test_the_oldest_finished_tasks_go_beyond_the_cap(store: NodeStore, with_store: bool) -> None:
    book = _TaskBook(store if with_store else None, cap=5, max_bytes=2**30)
    book.put(task("running", State.WORKING), 0.0)
    for i in range(10):
        book.put(task(f"t{i}", State.COMPLETED, now=float(i + 1)), float(i + 1))
    kept = {t["id"] for t in book.page(a2a.parse_list({"pageSize": 100}), [])[0]}
    assert kept == {"running", "t6", "t7", "t8", "t9"}  # running is never evicted
    assert book.get("t0") is None
    assert book.get("t9") is not None


def test_unfinished_tasks_fail_on_restart(tmp_path: Path) -> None:
    first = NodeStore(tmp_path / "d")
    book = _TaskBook(first, cap=100, max_bytes=2**30)
    book.put(task("done", State.COMPLETED), 1.0)
    book.put(task("running", State.WORKING), 2.0)
    book.put(task("asked", State.INPUT_REQUIRED), 3.0)
    first.close()
    again = NodeStore(tmp_path / "d")
    try:
        book = _TaskBook(again, cap=100, max_bytes=2**30)
        assert book.recover(10.0) == 2
        assert a2a.state_of(book.get("done") or {}) is State.COMPLETED
        for task_id in ("running", "asked"):
            failed = book.get(task_id)
            assert failed is not None
            assert a2a.state_of(failed) is State.FAILED
            assert failed["status"]["message"]["parts"][0]["text"] == STOPPED_MESSAGE
        assert book.recover(11.0) == 0  # nothing left unfinished
    finally:
        again.close()


def test_a_change_that_is_not_durable_is_not_written(store: NodeStore) -> None:
    book = _TaskBook(store, cap=100, max_bytes=2**30)
    book.put(task("t", State.SUBMITTED), 1.0)
    book.put(task("t", State.WORKING), 2.0, durable=False)
    stored = store.a2a_get("t")
    assert stored is not None
    assert json.loads(stored)["status"]["state"] == State.SUBMITTED.value


def test_pages_put_running_tasks_first_and_filter(store: NodeStore) -> None:
    book = _TaskBook(store, cap=100, max_bytes=2**30)
    for i in range(4):
        book.put(task(f"old{i}", State.COMPLETED, context="a" if i % 2 else "b"), float(i))
    # A running task whose stored copy is stale: the live copy is what pages show.
    book.put(task("live", State.SUBMITTED, context="a"), 9.0)
    live = [task("live", State.WORKING, context="a")]
    first, total = book.page(a2a.parse_list({"pageSize": 2}), live)
    assert total == 5
    assert [t["id"] for t in first] == ["live", "old3"]
    assert first[0]["status"]["state"] == State.WORKING.value
    rest, _ = book.page(a2a.parse_list({"pageSize": 2, "pageToken": "2"}), live)
    assert [t["id"] for t in rest] == ["old2", "old1"]
    last, _ = book.page(a2a.parse_list({"pageSize": 2, "pageToken": "4"}), live)
    assert [t["id"] for t in last] == ["old0"]
    working, n = book.page(a2a.parse_list({"status": "TASK_STATE_WORKING"}), live)
    assert ([t["id"] for t in working], n) == (["live"], 1)
    ctx, n = book.page(a2a.parse_list({"contextId": "a"}), live)
    assert ([t["id"] for t in ctx], n) == (["live", "old3", "old1"], 3)


@pytest.mark.parametrize("with_store", [True, False])
def test_the_oldest_finished_tasks_go_beyond_the_byte_budget(
    store: NodeStore, with_store: bool
) -> None:
    """Ten finished tasks of about 100 KiB each under a 350 KiB budget: the newest three
    stay (a running task of the same size counts toward the budget but is never
    evicted)."""
    big = "x" * 100_000
    book = _TaskBook(store if with_store else None, cap=1_000, max_bytes=350_000)
    running = task("running", State.WORKING)
    running["artifacts"] = [{"artifactId": "a", "parts": [{"text": big}]}]
    book.put(running, 0.0)
    for i in range(10):
        t = task(f"t{i}", State.COMPLETED, now=float(i + 1))
        t["artifacts"] = [{"artifactId": "a", "parts": [{"text": big}]}]
        book.put(t, float(i + 1))
    kept = {t["id"] for t in book.page(a2a.parse_list({"pageSize": 100}), [])[0]}
    assert kept == {"running", "t8", "t9"}
    if with_store:  # the running count and bytes agree with the table
        count, size = store._db.execute("SELECT COUNT(*), SUM(size) FROM a2a_tasks").fetchone()
        assert store._a2a_totals == [count, size]
