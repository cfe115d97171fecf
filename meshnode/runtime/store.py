"""Durable node state: the identity key and one SQLite file per data dir.

Theory of operation
-------------------
A data dir holds ``node.key`` (the Ed25519 seed, mode 0600) and ``meshnode.sqlite3`` with:

* ``meta``: this node's last incarnation (so a restart comes back *above* it);
* ``members``: the latest signed rumor per known member (for a warm rejoin);
* ``manifests``: every known signed manifest;
* ``ledger``: every reputation record held, own opinions included.

Objects are stored in their wire form (``protocol.pack``) and decoded with ``protocol.unpack``
on load, so a corrupt row is skipped with a warning rather than trusted: the cores verify the
signatures again when the state is restored.

Durability: the database runs in WAL mode with ``synchronous=FULL``. Writes that must never
be lost — the incarnation before it is announced, this node's own ledger records before they
are gossiped (re-using a sequence number after a crash would be equivocation) — are committed
at once with :meth:`NodeStore.commit`. Everything learned from peers is written in batches
(see ``MeshNode``), since peers can always send it again.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import TypeVar

import structlog

from protocol import (
    Alive,
    Dead,
    Identity,
    Leave,
    LedgerRecord,
    Manifest,
    Message,
    RemoteProtocolError,
    Suspect,
    pack,
    unpack,
)

KEY_FILE = "node.key"
DB_FILE = "meshnode.sqlite3"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS members (node_id TEXT PRIMARY KEY, rumor BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS manifests (node_id TEXT PRIMARY KEY, manifest BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS ledger (
    observer TEXT NOT NULL, subject TEXT NOT NULL, record BLOB NOT NULL,
    PRIMARY KEY (observer, subject)
);
"""

log = structlog.get_logger("meshnode.store")
M = TypeVar("M", bound=Message)
MemberRumor = Alive | Suspect | Dead | Leave


class NodeStore:
    """Identity key and SQLite state in one data dir. Not thread-safe: one owner."""

    def __init__(self, data_dir: str | Path) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._db = sqlite3.connect(self.data_dir / DB_FILE, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._db.execute("BEGIN")
        self._db.execute(
            "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)",
            (SCHEMA_VERSION,),
        )
        self.commit()

    # ------------------------------------------------------------------ identity

    def load_identity(self) -> Identity:
        """The node's key, created on first use."""
        return Identity.load_or_create(self.data_dir / KEY_FILE)

    # ------------------------------------------------------------------ transactions

    def commit(self) -> None:
        """Make every write so far durable."""
        if self._db.in_transaction:
            self._db.execute("COMMIT")

    def rollback(self) -> None:
        """Abandon the open transaction after a failed write (best effort: SQLite may
        already have rolled it back)."""
        if self._db.in_transaction:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error as exc:
                log.warning("store_rollback_failed", error=str(exc))

    def _begin(self) -> None:
        if not self._db.in_transaction:
            self._db.execute("BEGIN")

    # ------------------------------------------------------------------ meta

    def incarnation(self) -> int:
        return self.counter("incarnation")

    def set_incarnation(self, incarnation: int) -> None:
        """Record and commit at once: announcing an incarnation that a crash could forget
        would let the restarted node fall below its own old state."""
        self.set_counter("incarnation", incarnation)

    def counter(self, key: str) -> int:
        """A named integer kept in ``meta`` (0 if never set)."""
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return int(row[0]) if row else 0

    def set_counter(self, key: str, value: int) -> None:
        """Set and commit a named integer at once."""
        self._begin()
        self._db.execute(
            "INSERT INTO meta(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (key, value),
        )
        self.commit()

    # ------------------------------------------------------------------ members

    def save_members(self, rumors: Iterable[MemberRumor]) -> None:
        """Make the stored members exactly ``rumors`` (the last one per node wins)."""
        self._begin()
        self._db.execute("DELETE FROM members")
        self.update_members(rumors)

    def update_members(self, rumors: Iterable[MemberRumor], forget: Iterable[str] = ()) -> None:
        """Upsert ``rumors`` (the last one per node wins) and delete the nodes in ``forget``:
        a cost in the number of changes, not in the size of the membership."""
        self._begin()
        self._db.executemany(
            "INSERT OR REPLACE INTO members(node_id, rumor) VALUES (?, ?)",
            [(r.node, pack(r)) for r in rumors],
        )
        self._db.executemany("DELETE FROM members WHERE node_id=?", [(n,) for n in forget])

    def load_members(self) -> list[MemberRumor]:
        out: list[MemberRumor] = []
        classes: tuple[type[MemberRumor], ...] = (Alive, Suspect, Dead, Leave)
        for (blob,) in self._db.execute("SELECT rumor FROM members ORDER BY node_id"):
            for cls in classes:
                try:
                    out.append(unpack(blob, cls))
                    break
                except RemoteProtocolError:
                    continue
            else:
                log.warning("store_row_skipped", table="members")
        return out

    # ------------------------------------------------------------------ manifests

    def save_manifest(self, manifest: Manifest) -> None:
        self._begin()
        self._db.execute(
            "INSERT INTO manifests(node_id, manifest) VALUES (?, ?) "
            "ON CONFLICT(node_id) DO UPDATE SET manifest=excluded.manifest",
            (manifest.node_id, pack(manifest)),
        )

    def delete_manifest(self, node_id: str) -> None:
        self._begin()
        self._db.execute("DELETE FROM manifests WHERE node_id=?", (node_id,))

    def load_manifests(self) -> list[Manifest]:
        return self._load("SELECT manifest FROM manifests ORDER BY node_id", Manifest)

    # ------------------------------------------------------------------ ledger

    def save_records(self, records: Iterable[LedgerRecord], *, durable: bool = False) -> None:
        """Upsert ledger records; ``durable=True`` commits before returning (own records)."""
        self._begin()
        self._db.executemany(
            "INSERT INTO ledger(observer, subject, record) VALUES (?, ?, ?) "
            "ON CONFLICT(observer, subject) DO UPDATE SET record=excluded.record",
            [(r.observer, r.subject, pack(r)) for r in records],
        )
        if durable:
            self.commit()

    def replace_records(self, records: Iterable[LedgerRecord]) -> None:
        """Make the stored ledger exactly ``records`` (after pruning or eviction)."""
        self._begin()
        self._db.execute("DELETE FROM ledger")
        self.save_records(records)

    def load_records(self) -> list[LedgerRecord]:
        return self._load("SELECT record FROM ledger ORDER BY observer, subject", LedgerRecord)

    # ------------------------------------------------------------------ helpers

    def _load(self, query: str, cls: type[M]) -> list[M]:
        out: list[M] = []
        for (blob,) in self._db.execute(query):
            try:
                out.append(unpack(blob, cls))
            except RemoteProtocolError as exc:
                log.warning("store_row_skipped", table=cls.__name__, error=str(exc))
        return out

    def close(self) -> None:
        """Commit and close; safe to call twice."""
        try:
            self.commit()
            self._db.close()
        except sqlite3.ProgrammingError:
            pass
