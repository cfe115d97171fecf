"""A small reader/writer lock.

Theory of operation
-------------------
Many threads may hold the lock for reading at once; a writer holds it alone. The lock
prefers writers: once a writer is waiting, new readers wait too, so a steady stream of
queries cannot starve a manifest update. One :class:`threading.Condition` guards three
counters; every release wakes all waiters, which re-check their own condition.

The lock is not reentrant: a thread that holds it must not acquire it again (a reader
re-entering while a writer waits would deadlock).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["RWLock"]


class RWLock:
    """Writer-preferring reader/writer lock; use :meth:`read` and :meth:`write`."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    def __repr__(self) -> str:
        return (
            f"RWLock(readers={self._readers}, writer={self._writer}, "
            f"writers_waiting={self._writers_waiting})"
        )

    @contextmanager
    def read(self) -> Iterator[None]:
        """Hold the lock shared for the ``with`` block."""
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        """Hold the lock exclusively for the ``with`` block."""
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()
