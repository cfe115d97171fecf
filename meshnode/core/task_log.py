"""The node's own delegations, in flight and recently finished: what an operator sees.

Theory of operation
-------------------
:class:`TaskLog` is a view, not a decision: :class:`~meshnode.core.node.NodeCore` tells it
when one of its delegations starts (:meth:`TaskLog.started`) and how it ended
(:meth:`TaskLog.finished`), with the core's clock. It keeps every delegation in flight
(the core already caps those at ``NodeCore.max_delegations``) and the last
:data:`RECENT_TASKS_MAX` finished ones, newest first; older ones fall off. Nothing here
is read off the wire by anyone but this node's own core: capability names come from our
own callers and provider ids from signed results, and both are bounded by the protocol's
limits.

The entries are plain JSON-ready dictionaries (``task_id``, ``capability``, ``trace_id``,
``started_at``, ``provider`` and, once finished, ``outcome`` (``ok`` or ``failed``),
``reason``, ``ended_at``, ``attempts``, ``quality``: the requester's score or None), so
the dashboard and ``meshnode status`` show them as they are.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from meshnode.core.tracing import parse_traceparent

__all__ = ["RECENT_TASKS_MAX", "TaskLog"]

RECENT_TASKS_MAX = 100
"""Finished delegations a node remembers for its dashboard, newest first, default 100.
Each costs about 300 bytes; an operator looks at the last few dozen. More keeps a longer
history on screen, fewer saves memory on nodes that delegate thousands of tasks a
minute (the metrics keep the totals)."""


class TaskLog:
    """Delegations in flight and the last ``recent_max`` finished (see the module
    docstring)."""

    def __init__(self, recent_max: int = RECENT_TASKS_MAX) -> None:
        if recent_max < 1:
            raise ValueError(f"recent_max must be at least 1, got {recent_max}")
        self._in_flight: dict[str, dict[str, Any]] = {}
        self._recent: deque[dict[str, Any]] = deque(maxlen=recent_max)
        self.version = 0
        """Bumped on every change: a reader compares it to know whether to look again."""

    def started(self, task_id: str, capability: str, trace_id: str, now: float) -> None:
        """Delegation ``task_id`` of ``capability`` began at ``now``. ``trace_id`` is what
        the task request carries: a W3C traceparent when tracing is on (the entry keeps its
        32-digit trace id, the one ``GET /v1/traces/{trace_id}`` serves), else an opaque
        string kept as it is."""
        context = parse_traceparent(trace_id)
        if context is not None:
            trace_id = context.trace_id
        self._in_flight[task_id] = {
            "task_id": task_id,
            "capability": capability,
            "trace_id": trace_id,
            "started_at": now,
            "provider": None,
        }
        self.version += 1

    def trying(self, task_id: str, provider: str | None) -> None:
        """Delegation ``task_id`` is now with ``provider`` (None: between candidates)."""
        entry = self._in_flight.get(task_id)
        if entry is not None and entry["provider"] != provider:
            entry["provider"] = provider
            self.version += 1

    def finished(
        self,
        task_id: str,
        *,
        ok: bool,
        provider: str | None,
        reason: str,
        attempts: int,
        now: float,
        quality: float | None = None,
        capability: str = "",
        trace_id: str = "",
    ) -> None:
        """Delegation ``task_id`` ended at ``now``; it moves to the recent list.
        ``capability`` and ``trace_id`` serve a delegation refused before it started."""
        entry = self._in_flight.pop(task_id, None)
        if entry is None:
            entry = {
                "task_id": task_id,
                "capability": capability,
                "trace_id": trace_id,
                "started_at": now,
                "provider": None,
            }
        entry.update(
            outcome="ok" if ok else "failed",
            provider=provider if provider is not None else entry["provider"],
            reason=reason,
            attempts=attempts,
            quality=quality,
            ended_at=now,
        )
        self._recent.appendleft(entry)
        self.version += 1

    def in_flight(self) -> list[dict[str, Any]]:
        """Copies of the delegations in flight, oldest first."""
        return [dict(e) for e in self._in_flight.values()]

    def recent(self) -> list[dict[str, Any]]:
        """Copies of the finished delegations remembered, newest first."""
        return [dict(e) for e in self._recent]

    def __len__(self) -> int:
        return len(self._in_flight) + len(self._recent)
