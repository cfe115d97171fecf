"""Durable node state: the identity key and one SQLite file per data dir.

Theory of operation
-------------------
A data dir holds ``node.key`` (the Ed25519 seed, mode 0600: :func:`save_identity`,
:func:`load_identity`, :func:`load_or_create_identity`, the only code that touches key
files) and ``meshnode.sqlite3`` with:

* ``meta``: this node's last incarnation (so a restart comes back *above* it);
* ``members``: the latest signed rumor per known member (for a warm rejoin);
* ``manifests``: every known signed manifest;
* ``ledger``: every reputation record held, own opinions included;
* ``a2a_tasks``: the A2A tasks this node answered (:mod:`meshnode.runtime.a2a_server`),
  each as its A2A JSON document, with its context, state, last update time and size;
  bounded in count and bytes by :meth:`NodeStore.a2a_evict` (the oldest finished ones go
  first).

Objects are stored in their wire form (``protocol.pack``) and decoded with ``protocol.unpack``
on load, so a corrupt row is skipped with a warning rather than trusted: the cores verify the
signatures again when the state is restored.

One process per data dir: :class:`NodeStore` takes an exclusive lock on ``meshnode.lock``
(``filelock``, an ``flock`` the kernel releases when the process dies) before it opens
anything else, and writes its pid to ``meshnode.pid``. A second process — or a second node
in the same process — fails at once with :class:`DataDirInUse` naming the holder: two
processes under one node id would contradict each other mesh-wide.

Permissions: the data dir is made 0700 when this user owns it (a wider mode is narrowed, and
logged), and the SQLite file, its ``-wal`` and ``-shm`` companions, the lock and pid files
are created 0600 (existing ones are narrowed to 0600).

Durability: the database runs in WAL mode with ``synchronous=FULL``. Writes that must never
be lost — the incarnation before it is announced, this node's own ledger records before they
are gossiped (re-using a sequence number after a crash would be equivocation) — are committed
at once with :meth:`NodeStore.commit`. Everything learned from peers is written in batches
(see ``MeshNode``), since peers can always send it again.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

import filelock

from meshnode.errors import DataDirInUse, KeyFileError, KeyringFileError
from meshnode.runtime.logging import get_logger
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
from protocol.errors import KeyringError, MeshError
from protocol.identity import SEED_BYTES
from protocol.keyring import MAX_TEXT_BYTES, Keyring
from protocol.messages import SignedCertificate, SignedRevocation

KEY_FILE = "node.key"
"""The identity key's file in the data dir: the hex of the 32-byte seed and a newline."""
MAX_KEY_FILE_BYTES = 4_096
"""Largest key file read (one is 65 bytes): a larger file is refused as not a key, and a
hostile one costs no more than this to reject."""
MAX_KEYRING_FILE_BYTES = MAX_TEXT_BYTES
"""Largest keyring file read (8 keys and a label are under 1 KiB)."""
DB_FILE = "meshnode.sqlite3"
DB_COMPANIONS = ("-wal", "-shm")
"""Files SQLite keeps beside :data:`DB_FILE` in WAL mode."""
LOCK_FILE = "meshnode.lock"
"""The data dir's lock: held (``flock``) by the one process using the dir."""
PID_FILE = "meshnode.pid"
"""The pid of the process holding :data:`LOCK_FILE`, for the error a second one gets."""
PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS members (node_id TEXT PRIMARY KEY, rumor BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS manifests (node_id TEXT PRIMARY KEY, manifest BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS ledger (
    observer TEXT NOT NULL, subject TEXT NOT NULL, record BLOB NOT NULL,
    PRIMARY KEY (observer, subject)
);
CREATE TABLE IF NOT EXISTS a2a_tasks (
    id TEXT PRIMARY KEY, context_id TEXT NOT NULL, state TEXT NOT NULL,
    terminal INTEGER NOT NULL, updated REAL NOT NULL, size INTEGER NOT NULL,
    task TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS a2a_tasks_by_time ON a2a_tasks (terminal, updated);
"""

log = get_logger("meshnode.store")
M = TypeVar("M", bound=Message)
MemberRumor = Alive | Suspect | Dead | Leave


class NodeStore:
    """Identity key and SQLite state in one data dir. Not thread-safe: one owner.

    Raises :class:`DataDirInUse` at once if another process holds the dir."""

    def __init__(self, data_dir: str | Path) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
        _narrow_dir(self.data_dir)
        self._lock = _lock_data_dir(self.data_dir)
        self._a2a_totals: list[int] | None = None
        """[count, bytes] of the ``a2a_tasks`` table, read once, then kept up to date."""
        try:
            db_path = self.data_dir / DB_FILE
            _private_file(db_path)
            self._db = sqlite3.connect(db_path, isolation_level=None)
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
                self._db.executescript(_SCHEMA)
                self._db.execute("BEGIN")
                self._db.execute(
                    "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)",
                    (SCHEMA_VERSION,),
                )
                self.commit()
                for suffix in DB_COMPANIONS:
                    _narrow_file(self.data_dir / (DB_FILE + suffix))
            except BaseException:
                self._db.close()
                raise
        except BaseException:
            _unlock_data_dir(self.data_dir, self._lock)
            raise

    # ------------------------------------------------------------------ identity

    def load_identity(self) -> Identity:
        """The node's key, created on first use."""
        return load_or_create_identity(self.data_dir / KEY_FILE)

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

    def record_keys(self) -> set[tuple[str, str]]:
        """The (observer, subject) of every stored ledger record."""
        return {
            (str(o), str(s)) for o, s in self._db.execute("SELECT observer, subject FROM ledger")
        }

    def delete_records(self, keys: Iterable[tuple[str, str]]) -> None:
        """Delete the stored records with these (observer, subject) keys."""
        self._begin()
        self._db.executemany("DELETE FROM ledger WHERE observer=? AND subject=?", list(keys))

    def load_records(self) -> list[LedgerRecord]:
        return self._load("SELECT record FROM ledger ORDER BY observer, subject", LedgerRecord)

    # ------------------------------------------------------------------ a2a tasks

    def a2a_put(
        self, task_id: str, context_id: str, state: str, terminal: bool, updated: float, doc: str
    ) -> None:
        """Insert or replace one A2A task (its JSON document) and commit."""
        size = len(doc.encode())
        totals = self._a2a_count_and_bytes()
        old = self._db.execute("SELECT size FROM a2a_tasks WHERE id=?", (task_id,)).fetchone()
        self._begin()
        self._db.execute(
            "INSERT INTO a2a_tasks(id, context_id, state, terminal, updated, size, task) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
            "context_id=excluded.context_id, state=excluded.state, "
            "terminal=excluded.terminal, updated=excluded.updated, size=excluded.size, "
            "task=excluded.task",
            (task_id, context_id, state, int(terminal), updated, size, doc),
        )
        self.commit()
        totals[0] += old is None
        totals[1] += size - (int(old[0]) if old else 0)

    def _a2a_count_and_bytes(self) -> list[int]:
        if self._a2a_totals is None:
            row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM a2a_tasks")
            count, size = row.fetchone()
            self._a2a_totals = [int(count), int(size)]
        return self._a2a_totals

    def a2a_get(self, task_id: str) -> str | None:
        """The JSON document of A2A task ``task_id``, if stored."""
        row = self._db.execute("SELECT task FROM a2a_tasks WHERE id=?", (task_id,)).fetchone()
        return str(row[0]) if row else None

    def a2a_list(
        self,
        context_id: str | None,
        state: str | None,
        offset: int,
        limit: int,
        exclude: list[str] | None = None,
    ) -> tuple[list[str], int]:
        """One page of A2A task documents, newest update first, optionally only those of
        ``context_id`` and/or in ``state`` and none of the ids in ``exclude``; and how
        many match in all."""
        where: list[str] = []
        args: list[object] = []
        if exclude:
            where.append(f"id NOT IN ({','.join('?' * len(exclude))})")
            args.extend(exclude)
        if context_id is not None:
            where.append("context_id=?")
            args.append(context_id)
        if state is not None:
            where.append("state=?")
            args.append(state)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        total = int(self._db.execute(f"SELECT COUNT(*) FROM a2a_tasks{clause}", args).fetchone()[0])
        rows = self._db.execute(
            f"SELECT task FROM a2a_tasks{clause} ORDER BY updated DESC, id LIMIT ? OFFSET ?",
            [*args, limit, offset],
        ).fetchall()
        return [str(r[0]) for r in rows], total

    def a2a_unfinished(self) -> list[str]:
        """Documents of every stored A2A task not in a terminal state."""
        rows = self._db.execute("SELECT task FROM a2a_tasks WHERE terminal=0").fetchall()
        return [str(r[0]) for r in rows]

    def a2a_evict(self, cap: int, max_bytes: int) -> int:
        """Delete the oldest finished A2A tasks while more than ``cap`` are stored or
        their documents take more than ``max_bytes``; returns how many went. Running
        tasks are never evicted. Within both bounds this reads nothing (the count and
        the bytes are kept up to date by :meth:`a2a_put`)."""
        totals = self._a2a_count_and_bytes()
        count, total = totals
        if count <= cap and total <= max_bytes:
            return 0
        victims: list[tuple[str]] = []
        rows = self._db.execute(
            "SELECT id, size FROM a2a_tasks WHERE terminal=1 ORDER BY updated ASC"
        )
        for task_id, size in rows:
            if count <= cap and total <= max_bytes:
                break
            victims.append((task_id,))
            count -= 1
            total -= int(size)
        self._begin()
        self._db.executemany("DELETE FROM a2a_tasks WHERE id=?", victims)
        self.commit()
        totals[:] = [count, total]
        return len(victims)

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
        """Commit, close and release the data dir's lock; safe to call twice."""
        try:
            try:
                self.commit()
            except sqlite3.OperationalError as exc:  # e.g. a full disk: state is kept
                log.error("store_commit_failed_on_close", error=str(exc))
                self.rollback()
            self._db.close()
        except sqlite3.ProgrammingError:
            pass
        if self._lock.is_locked:
            _unlock_data_dir(self.data_dir, self._lock)


# ---------------------------------------------------------------------------- key file


def save_identity(path: str | os.PathLike[str], identity: Identity) -> None:
    """Write ``identity``'s key to ``path`` with mode 0600, atomically and durably.

    The key goes to ``<path>.tmp``, created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` (a stale
    temp file, or a symlink planted in its place, is unlinked first and never followed),
    is fsynced, renamed over ``path`` (a rename replaces a symlink at ``path`` itself, never
    its target), and the directory is fsynced so the rename survives a crash. A missing
    parent directory is created 0700."""
    _write_secret(path, identity.to_seed().hex().encode("ascii") + b"\n")


def _write_secret(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600, atomically and durably (see
    :func:`save_identity`): a crash or a full disk leaves the old file or the new one,
    never a mix."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
    _write_atomic(target, data, PRIVATE_FILE_MODE)


def _write_atomic(target: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``target`` with ``mode`` through ``<target>.tmp``, created with
    ``O_CREAT | O_EXCL | O_NOFOLLOW`` (a stale temp file or a symlink planted in its place
    is unlinked first, never followed), fsynced, renamed over ``target`` (a symlink at
    ``target`` is replaced, never followed), and the directory fsynced."""
    tmp = target.with_name(target.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)  # unlink removes a symlink itself, never its target
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        try:
            os.fchmod(fd, mode)
            while data:
                data = data[os.write(fd, data) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _read_secret(
    path: str | os.PathLike[str], what: str, max_bytes: int, error: type[MeshError]
) -> bytes:
    """The bytes of the secret file at ``path`` (``what`` names it in errors), refused with
    ``error`` if missing, a symlink, not a regular file (a FIFO, a device), accessible by
    group or others, or larger than ``max_bytes``. The checks are made on the opened file
    (``fstat``), so the file cannot be swapped between the check and the read."""
    source = Path(path)
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError as exc:
        raise error(f"no {what} at {source}") from exc
    except OSError as exc:
        if os.path.islink(source):  # O_NOFOLLOW refuses a symlink with ELOOP
            raise error(
                f"{what} {source} is a symlink; a key file must be a regular file "
                f"(replace the link with the file it points to)"
            ) from None
        raise error(f"cannot open {what} {source}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{what} {source} is not a regular file")
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise error(
                f"{what} {source} is accessible by other users "
                f"(mode {stat.S_IMODE(st.st_mode):o}); run: chmod 600 {source}"
            )
        raw = os.read(fd, max_bytes + 1)
    finally:
        os.close(fd)
    if len(raw) > max_bytes:
        raise error(f"{what} {source} is larger than {max_bytes} bytes")
    return raw


def load_identity(path: str | os.PathLike[str]) -> Identity:
    """Read a key written by :func:`save_identity`.

    Raises :class:`~meshnode.errors.KeyFileError` if the file is missing, is a symlink or
    not a regular file, is readable or writable by group or others (fix with ``chmod
    600``), is larger than :data:`MAX_KEY_FILE_BYTES`, or does not hold a hex 32-byte
    seed. The checks are made on the opened file (``fstat``), so the file cannot be
    swapped between the check and the read."""
    source = Path(path)
    raw = _read_secret(source, "identity key", MAX_KEY_FILE_BYTES, KeyFileError)
    text = raw.decode("ascii", errors="replace").strip()
    try:
        seed = bytes.fromhex(text)
    except ValueError:
        raise KeyFileError(f"identity key {source} is not hex") from None
    if len(seed) != SEED_BYTES:
        raise KeyFileError(f"identity key {source} does not hold a {SEED_BYTES}-byte seed")
    return Identity.from_seed(seed)


# ---------------------------------------------------------------------------- keyring file


def save_keyring(path: str | os.PathLike[str], keyring: Keyring) -> None:
    """Write ``keyring`` to ``path`` (JSON, base64 keys, primary first; mode 0600),
    atomically and durably, never through a symlink (as :func:`save_identity`)."""
    _write_secret(path, keyring.to_text().encode("utf-8"))


def load_keyring(path: str | os.PathLike[str]) -> Keyring:
    """Read a keyring written by :func:`save_keyring` (or ``meshnode keys init``).

    Raises :class:`~meshnode.errors.KeyringFileError` when the file is missing, a symlink,
    not a regular file (a FIFO), readable or writable by group or others, larger than
    :data:`MAX_KEYRING_FILE_BYTES`, or not a valid keyring (the message says what)."""
    raw = _read_secret(path, "keyring", MAX_KEYRING_FILE_BYTES, KeyringFileError)
    try:
        return Keyring.from_text(raw)
    except KeyringError as exc:
        raise KeyringFileError(f"keyring {path} is invalid: {exc}") from None


def load_or_create_identity(path: str | os.PathLike[str]) -> Identity:
    """Load the key at ``path``, or generate and save one if nothing is there. Anything at
    ``path`` (a dangling symlink included) is loaded, and refused if it is not a valid key:
    a node never silently replaces a key it cannot read with a new identity."""
    if os.path.lexists(path):
        return load_identity(path)
    identity = Identity.generate()
    save_identity(path, identity)
    return identity


# ---------------------------------------------------------------------------- data dir


def _lock_data_dir(data_dir: Path) -> filelock.BaseFileLock:
    """Take the data dir's lock at once and record our pid, or raise DataDirInUse."""
    lock = filelock.FileLock(
        data_dir / LOCK_FILE, timeout=0, mode=PRIVATE_FILE_MODE, thread_local=False
    )
    try:
        lock.acquire()
    except filelock.Timeout:
        holder = _read_pid(data_dir / PID_FILE)
        who = f"process {holder}" if holder is not None else "another process"
        raise DataDirInUse(f"data dir {data_dir} is in use by {who}") from None
    try:
        _write_private(data_dir / PID_FILE, f"{os.getpid()}\n".encode())
    except BaseException:
        lock.release()
        raise
    return lock


def _unlock_data_dir(data_dir: Path, lock: filelock.BaseFileLock) -> None:
    with contextlib.suppress(OSError):
        if _read_pid(data_dir / PID_FILE) == os.getpid():
            (data_dir / PID_FILE).unlink()
    lock.release(force=True)


def _read_pid(path: Path) -> int | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        text = os.read(fd, 32).decode("ascii", "replace").strip()
    finally:
        os.close(fd)
    return int(text) if text.isdigit() else None


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (0600), never through a symlink planted there."""
    with contextlib.suppress(FileNotFoundError):
        if path.is_symlink():
            path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, PRIVATE_FILE_MODE)
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)
        os.write(fd, data)
    finally:
        os.close(fd)


def _narrow_dir(path: Path) -> None:
    """Make the data dir 0700 if we own it and it is open to others (logged)."""
    st = path.stat()
    mode = stat.S_IMODE(st.st_mode)
    if not mode & (stat.S_IRWXG | stat.S_IRWXO):
        return
    if st.st_uid == os.geteuid():
        os.chmod(path, PRIVATE_DIR_MODE)
        log.warning("data_dir_mode_narrowed", path=str(path), was=f"{mode:o}", now="700")
    else:
        log.warning("data_dir_open_to_others", path=str(path), mode=f"{mode:o}", owner=st.st_uid)


def _private_file(path: Path) -> None:
    """Create ``path`` 0600 if missing (not through a symlink), else narrow it to 0600."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, PRIVATE_FILE_MODE)
    except FileExistsError:
        _narrow_file(path)
        return
    os.close(fd)


def _narrow_file(path: Path) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) & 0o077 and st.st_uid == os.geteuid():
        os.chmod(path, PRIVATE_FILE_MODE)


# ---------------------------------------------------------------------------- mesh authority

AUTHORITY_KEY_FILE = "authority.key"
"""The authority's private key in its directory (same format and mode as a node key)."""
ISSUED_LOG_FILE = "issued.log"
"""One line per certificate the authority issued: ``serial node_id expires_at``. Read by
``meshnode authority revoke`` to keep a revocation exactly as long as what it revokes."""
MAX_CREDENTIAL_FILE_BYTES = 4_096
"""Largest certificate or revocation file read (a certificate is at most about 1.1 KB)."""
MAX_ISSUED_LOG_BYTES = 64 * 1024 * 1024
"""Largest issued log read (about 800,000 certificates)."""
PUBLIC_FILE_MODE = 0o644
"""Mode of certificate and revocation files: they hold nothing secret."""


def save_authority_key(directory: str | os.PathLike[str], identity: Identity) -> Path:
    """Write the authority key into ``directory`` (created 0700), like a node key (0600,
    atomic, never through a symlink). Returns its path."""
    path = Path(directory) / AUTHORITY_KEY_FILE
    save_identity(path, identity)
    return path


def load_authority_key(directory: str | os.PathLike[str]) -> Identity:
    """Read the authority key of ``directory`` (refused as :func:`load_identity` refuses
    a node key: symlink, open to others, malformed)."""
    return load_identity(Path(directory) / AUTHORITY_KEY_FILE)


def write_public_file(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` (0644) atomically and durably: through a temp file
    created with ``O_EXCL | O_NOFOLLOW``, fsynced and renamed over ``path`` (a symlink at
    ``path`` is replaced, never followed)."""
    _write_atomic(Path(path), data, PUBLIC_FILE_MODE)


def read_public_file(path: str | os.PathLike[str], max_bytes: int, what: str) -> bytes:
    """Read a regular file of at most ``max_bytes``; raise
    :class:`~meshnode.errors.KeyFileError` (naming ``what``) if it is missing, a symlink,
    not a regular file, or larger."""
    source = Path(path)
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise KeyFileError(f"no {what} at {source}") from None
    except OSError as exc:
        if os.path.islink(source):
            raise KeyFileError(f"{what} {source} is a symlink; use the file itself") from None
        raise KeyFileError(f"cannot open {what} {source}: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise KeyFileError(f"{what} {source} is not a regular file")
        chunks: list[bytes] = []
        size = 0
        while size <= max_bytes:
            chunk = os.read(fd, max_bytes + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > max_bytes:
        raise KeyFileError(f"{what} {source} is larger than {max_bytes} bytes")
    return data


def save_certificate(path: str | os.PathLike[str], signed: SignedCertificate) -> None:
    """Write a certificate file (the packed :class:`~protocol.messages.SignedCertificate`)."""
    write_public_file(path, pack(signed))


def load_certificate(path: str | os.PathLike[str]) -> SignedCertificate:
    """Read a certificate file; raise :class:`~meshnode.errors.KeyFileError` if it cannot
    be read or does not hold one (whether it is valid is the admission core's check)."""
    data = read_public_file(path, MAX_CREDENTIAL_FILE_BYTES, "certificate")
    try:
        return unpack(data, SignedCertificate, max_bytes=MAX_CREDENTIAL_FILE_BYTES)
    except MeshError as exc:
        raise KeyFileError(f"certificate {path} is not a certificate file: {exc}") from None


def save_revocation(path: str | os.PathLike[str], signed: SignedRevocation) -> None:
    """Write a revocation file (the packed :class:`~protocol.messages.SignedRevocation`)."""
    write_public_file(path, pack(signed))


def load_revocation(path: str | os.PathLike[str]) -> SignedRevocation:
    """Read a revocation file (see :func:`load_certificate`)."""
    data = read_public_file(path, MAX_CREDENTIAL_FILE_BYTES, "revocation")
    try:
        return unpack(data, SignedRevocation, max_bytes=MAX_CREDENTIAL_FILE_BYTES)
    except MeshError as exc:
        raise KeyFileError(f"revocation {path} is not a revocation file: {exc}") from None


def log_issued(
    directory: str | os.PathLike[str], serial: int, node_id: str, expires_at: float
) -> None:
    """Append one issued certificate to the authority's log (0600, never through a
    symlink), fsynced."""
    path = Path(directory) / ISSUED_LOG_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, PRIVATE_FILE_MODE)
    try:
        os.write(fd, f"{serial} {node_id} {expires_at!r}\n".encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)


def issued_expiry(
    directory: str | os.PathLike[str], *, serial: int | None = None, node_id: str | None = None
) -> float | None:
    """The latest expiry among issued certificates matching ``serial`` and/or ``node_id``
    (None: none logged)."""
    path = Path(directory) / ISSUED_LOG_FILE
    if not os.path.lexists(path):
        return None
    text = read_public_file(path, MAX_ISSUED_LOG_BYTES, "issued log").decode("ascii", "replace")
    latest: float | None = None
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 3 or not parts[0].isdigit():
            continue
        if serial is not None and int(parts[0]) != serial:
            continue
        if node_id is not None and parts[1] != node_id:
            continue
        try:
            expires = float(parts[2])
        except ValueError:
            continue
        latest = expires if latest is None else max(latest, expires)
    return latest


# ---------------------------------------------------------------------------- observability

OBSERVABILITY_DB_FILE = "observability.sqlite3"
"""The data dir's file for recent spans and trust history (apart from the node's state, so
that recording them never waits on, or delays, a durable write; losing it loses nothing the
mesh needs)."""

_OBSERVABILITY_SCHEMA = """
CREATE TABLE IF NOT EXISTS spans (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    trace_id TEXT NOT NULL,
    span_id TEXT NOT NULL,
    parent_span_id TEXT,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    node_id TEXT NOT NULL,
    peer_id TEXT,
    start REAL NOT NULL,
    "end" REAL,
    status TEXT NOT NULL,
    attributes TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS spans_by_trace ON spans(trace_id);
CREATE INDEX IF NOT EXISTS spans_by_end ON spans("end");
CREATE TABLE IF NOT EXISTS trust_history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    node_id TEXT NOT NULL,
    at REAL NOT NULL,
    score REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS trust_history_by_node ON trust_history(node_id, seq);
"""

SpanRow = tuple[str, str, str | None, str, str, str, str | None, float, float | None, str, str]
"""``(trace_id, span_id, parent_span_id, name, kind, node_id, peer_id, start, end, status,
attributes as JSON)``."""


class ObservabilityStore:
    """Recent spans and trust history in SQLite: a file in the data dir, or memory.

    Bounds are the caller's (:mod:`meshnode.runtime.tracing`,
    :class:`meshnode.runtime.tracing.TrustHistory`): this class inserts, evicts oldest
    first when told, and reads. Not thread-safe: one owner (the node's event loop)."""

    def __init__(self, data_dir: str | Path | None = None) -> None:
        if data_dir is None:
            self._db = sqlite3.connect(":memory:", isolation_level=None)
        else:
            path = Path(data_dir) / OBSERVABILITY_DB_FILE
            _private_file(path)
            self._db = sqlite3.connect(path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=OFF")  # a lost span costs nothing
        self._db.executescript(_OBSERVABILITY_SCHEMA)

    def add_spans(self, rows: Iterable[SpanRow]) -> None:
        with self._transaction():
            self._db.executemany(
                "INSERT INTO spans(trace_id, span_id, parent_span_id, name, kind, node_id, "
                'peer_id, start, "end", status, attributes) VALUES (?,?,?,?,?,?,?,?,?,?,?)',
                rows,
            )

    def evict_spans(self, *, keep: int, older_than: float) -> int:
        """Delete spans that ended before ``older_than`` and all but the newest ``keep``;
        returns how many went."""
        with self._transaction():
            cur = self._db.execute('DELETE FROM spans WHERE "end" < ?', (older_than,))
            gone = cur.rowcount
            cur = self._db.execute(
                "DELETE FROM spans WHERE seq <= (SELECT seq FROM spans ORDER BY seq DESC "
                "LIMIT 1 OFFSET ?)",
                (keep,),
            )
            return gone + cur.rowcount

    def span_count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM spans").fetchone()[0])

    def trace(self, trace_id: str, limit: int) -> list[SpanRow]:
        """The spans of ``trace_id`` this node holds (at most ``limit``), by start time."""
        return self._db.execute(
            'SELECT trace_id, span_id, parent_span_id, name, kind, node_id, peer_id, start, "end", '
            "status, attributes FROM spans WHERE trace_id = ? ORDER BY start, seq LIMIT ?",
            (trace_id, limit),
        ).fetchall()

    def recent_traces(self, limit: int) -> list[tuple[str, float, int]]:
        """The ``limit`` traces with the newest spans: ``(trace_id, newest start, spans)``."""
        return self._db.execute(
            "SELECT trace_id, MAX(start) AS newest, COUNT(*) FROM spans GROUP BY trace_id "
            "ORDER BY newest DESC LIMIT ?",
            (limit,),
        ).fetchall()

    def add_trust_points(self, points: Iterable[tuple[str, float, float]]) -> None:
        with self._transaction():
            self._db.executemany(
                "INSERT INTO trust_history(node_id, at, score) VALUES (?,?,?)", points
            )

    def trust_points(self, node_id: str) -> list[tuple[float, float]]:
        return self._db.execute(
            "SELECT at, score FROM trust_history WHERE node_id = ? ORDER BY seq", (node_id,)
        ).fetchall()

    def trim_trust_history(self, node_id: str, keep: int) -> None:
        """Keep only the newest ``keep`` points of ``node_id``."""
        with self._transaction():
            self._db.execute(
                "DELETE FROM trust_history WHERE node_id = ? AND seq <= (SELECT seq FROM "
                "trust_history WHERE node_id = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                (node_id, node_id, keep),
            )

    def forget_trust_history(self, node_id: str) -> None:
        with self._transaction():
            self._db.execute("DELETE FROM trust_history WHERE node_id = ?", (node_id,))

    def trust_history_peers(self) -> list[str]:
        """Peers with history, the longest unchanged first (by their newest point)."""
        return [
            row[0]
            for row in self._db.execute(
                "SELECT node_id FROM trust_history GROUP BY node_id ORDER BY MAX(seq)"
            )
        ]

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()
