"""Persistence of one node's state to its data dir: what changed, when it is written.

Theory of operation
-------------------
:class:`Persistence` sits between the driver (which hands it the core's ``MemberChanged``,
``ManifestChanged`` and ``PersistRecords`` effects) and the SQLite :class:`NodeStore`:

* own ledger records (``PersistRecords(durable=True)``) are committed at once, before the
  driver sends any packet that could carry them; if the disk refuses, the core is told
  (``NodeCore.durable_failed``), which then signs no further opinion, and the records are
  retried by the next flush;
* the incarnation is written when a refutation raises it;
* members, manifests and peers' records are marked changed and written by :meth:`flush`,
  every :data:`PERSIST_INTERVAL` and on close.

A failed flush (full disk, I/O error) keeps everything it did not write and is retried
with a backoff (:data:`PERSIST_RETRY_INITIAL` … :data:`PERSIST_RETRY_MAX`); the loop never
stops. Once a flush commits, a held own record is durable: the core is told
(``NodeCore.durable_written``) and signs what waited. The stored ledger is compacted
(rows of records the ledger dropped are deleted) at most every
:data:`LEDGER_COMPACT_INTERVAL_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from meshnode.core.effects import MemberChanged, MemberEvent, PersistRecords
from meshnode.core.member import MemberRumor
from meshnode.core.node import NodeCore
from meshnode.runtime.store import NodeStore
from protocol import LedgerRecord, Manifest

__all__ = [
    "LEDGER_COMPACT_INTERVAL_S",
    "PERSIST_INTERVAL",
    "PERSIST_RETRY_INITIAL",
    "PERSIST_RETRY_MAX",
    "Persistence",
]

PERSIST_INTERVAL = 5.0
"""Seconds between flushes of learned state (members, manifests, peers' records)."""
PERSIST_RETRY_INITIAL = 0.5
"""Seconds before the first retry of a failed flush (full disk, I/O error); each further
failure doubles the wait up to :data:`PERSIST_RETRY_MAX`. Nothing unwritten is dropped
meanwhile: the changed members, manifests and records stay marked until a flush commits."""
PERSIST_RETRY_MAX = 30.0
"""Longest wait between retries of a failing flush, seconds."""
LEDGER_COMPACT_INTERVAL_S = 60.0
"""Least time between two compactions of the stored ledger: when the ledger dropped records
since the last one (evicted at a cap, or expired), a flush deletes their rows, so the SQLite
file stays as bounded as the ledger in memory. A compaction reads every stored key once."""


class Persistence:
    """What one node writes to its data dir, and when (see the module docstring)."""

    def __init__(
        self,
        store: NodeStore,
        core: Callable[[], NodeCore | None],
        *,
        log: Any,
        drops: Counter[str],
        dispatch: Callable[[], None],
        running: Callable[[], bool],
    ) -> None:
        self.store = store
        self._core = core
        self._log = log
        self._drops = drops
        self._dispatch = dispatch
        self._running = running
        self._dirty_members: set[str] = set()
        self._dirty_manifests: dict[str, Manifest | None] = {}
        self._pending_records: dict[tuple[str, str], LedgerRecord] = {}
        """Peers' records not yet written, by (observer, subject): bounded by the ledger."""
        self._pending_incarnation: int | None = None
        self.error: tuple[float, str] | None = None
        """(wall time of the first failure in a row, last error) while writes fail."""
        self._wake = asyncio.Event()
        self._ledger_dropped_seen = 0
        self._compacted_at = -math.inf
        """When (monotonic) the stored ledger was last compacted."""

    # ------------------------------------------------------------------ effects

    def carry_out(self, effect: PersistRecords) -> None:
        if effect.durable:
            self._persist_own(effect.records)
        else:
            for record in effect.records:
                self._pending_records[(record.observer, record.subject)] = record

    def _persist_own(self, records: tuple[LedgerRecord, ...]) -> None:
        """Commit own records at once. If the disk refuses, keep them for the persist
        loop (which retries with backoff), report it in health, and tell the core, which
        signs no further opinion until they are durable."""
        try:
            self.store.save_records(records, durable=True)
        except (sqlite3.Error, OSError) as exc:
            self.store.rollback()
            core = self._core()
            if core is not None:
                core.durable_failed(records)
            self.failed(exc)

    def member_changed(self, change: MemberChanged, own_id: str) -> None:
        self._dirty_members.add(change.node_id)
        if change.node_id == own_id and change.kind is MemberEvent.UPDATED:
            incarnation = change.member.incarnation
            try:
                self.store.set_incarnation(incarnation)
            except (sqlite3.Error, OSError) as exc:
                self.store.rollback()
                self._pending_incarnation = incarnation
                self.failed(exc)

    def manifest_changed(self, node: str, manifest: Manifest | None) -> None:
        self._dirty_manifests[node] = manifest

    # ------------------------------------------------------------------ loop and flush

    async def loop(self) -> None:
        """Flush every :data:`PERSIST_INTERVAL`; after a failure retry after
        :data:`PERSIST_RETRY_INITIAL`, doubling to :data:`PERSIST_RETRY_MAX`; a failed
        durable write wakes it at once. It never stops."""
        delay = PERSIST_INTERVAL
        while True:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
            try:
                self.flush()
            except Exception as exc:
                self.failed(exc)
                retry = PERSIST_RETRY_INITIAL if delay >= PERSIST_INTERVAL else delay * 2
                delay = min(PERSIST_RETRY_MAX, retry)
            else:
                delay = PERSIST_INTERVAL

    def failed(self, exc: BaseException) -> None:
        """Record a failed write for health and the log (one line when failures start)."""
        error = f"{type(exc).__name__}: {exc}"
        self._drops[f"persist_{type(exc).__name__}"] += 1
        if self.error is None:
            self.error = (time.time(), error)
            core = self._core()
            pending = len(core.durable_pending) if core is not None else 0
            self._log.error(
                "persist_failed",
                error=error,
                unwritten_members=len(self._dirty_members),
                unwritten_records=len(self._pending_records) + pending,
            )
            self._wake.set()
        else:
            self.error = (self.error[0], error)

    def flush(self, *, full: bool = False) -> None:
        """Write what changed since the last flush and commit. Members are written one row
        per member that changed (a flush in a large, busy mesh costs its changes, not its
        size); ``full`` rewrites the whole table, as on close. A member is marked changed
        by its membership events, and the core emits none when a suspect or dead member
        only gets a newer rumor in the same state: after a crash such a row may hold the
        older rumor of that state, which the rejoin's push-pull replaces."""
        store = self.store
        core = self._core()
        if core is None:
            return
        membership = core.membership
        held = core.durable_pending
        try:
            if self._pending_incarnation is not None:
                store.set_incarnation(self._pending_incarnation)
                self._pending_incarnation = None
            if full:
                store.save_members(membership.state_snapshot())
            elif self._dirty_members:
                changed: list[MemberRumor] = []
                gone: list[str] = []
                for node in self._dirty_members:
                    member = membership.member(node)
                    if member is None:
                        gone.append(node)
                    else:
                        changed.append(member.rumor)
                store.update_members(changed, gone)
            for node, manifest in self._dirty_manifests.items():
                if manifest is None:
                    store.delete_manifest(node)
                else:
                    store.save_manifest(manifest)
            records = [*held, *self._pending_records.values()]
            if records:
                store.save_records(records)
            compacted = self._compact_ledger(core, full)
            store.commit()
        except BaseException:
            store.rollback()
            raise
        # Nothing awaits above: what was marked is exactly what was just committed.
        self._dirty_members.clear()
        self._dirty_manifests.clear()
        self._pending_records.clear()
        if compacted is not None:
            self._ledger_dropped_seen = compacted
            self._compacted_at = time.monotonic()
        if self.error is not None:
            since, error = self.error
            self._log.info("persist_recovered", failing_since=since, last_error=error)
            self.error = None
        if held:
            if self._running():
                core.durable_written(time.time())
                self._dispatch()
            else:
                core.trust.durable_written(time.time(), sign=False)

    def _compact_ledger(self, core: NodeCore, force: bool) -> int | None:
        """Delete the stored records the ledger no longer holds, if it dropped any since the
        last compaction and :data:`LEDGER_COMPACT_INTERVAL_S` passed (``force``: on close);
        return the drop count it caught up with, or None if it did not run."""
        dropped = core.counters["records_evicted"] + core.counters["records_pruned"]
        if dropped == self._ledger_dropped_seen or (
            not force and time.monotonic() - self._compacted_at < LEDGER_COMPACT_INTERVAL_S
        ):
            return None
        held = {(r.observer, r.subject) for r in core.ledger.records()}
        self.store.delete_records(self.store.record_keys() - held)
        return dropped
