"""Task negotiation between a requester and a provider: both sides, sans I/O.

Theory of operation
-------------------
A delegation is a short conversation over one connection between two peers::

    requester                              provider
    TaskRequest(task_id, deadline_ms) ──▶  on_request
                                      ◀──  TaskResponse ACCEPTED | REJECTED | COUNTERED
    (after COUNTERED) TaskConfirm     ──▶  on_confirm
                                      ◀──  TaskResponse ACCEPTED (ack) | REJECTED (too late)
                                      ◀──  TaskResult, signed by the provider
    (giving up) TaskCancel            ──▶  on_cancel

:class:`~meshnode.core.provider.ProviderCore` decides what a node answers and keeps its
slots; a :class:`~meshnode.core.requester.RequesterCore` runs one delegation over a ranked
list of candidates. Neither reads a clock or touches a socket: time comes in as ``now``
(seconds, any monotonic origin, each node on its own clock), signatures from an injected
signer and verifier, and every decision comes back as a value for the runtime to carry out.

Deadlines
~~~~~~~~~
A deadline travels as a budget in milliseconds, never as an instant, so no clocks need to
agree. The requester counts ``deadline_ms`` from when it *sent* the request, the provider
from when it *received* it; the provider's deadline is therefore the later one by the
one-way delay, and a provider that meets its own deadline is on time for the requester up
to that delay. A counter's ``counter_deadline_ms`` replaces ``deadline_ms`` and is counted
from the same two instants. Every request carries what is left of the requester's overall
deadline (optionally capped per attempt), so a handler that delegates further inherits it.

The provider's rules are in :mod:`meshnode.core.provider`, the requester's in
:mod:`meshnode.core.requester`, what both share in :mod:`meshnode.core.task_wire`, and their
effects in :mod:`meshnode.core.effects`. This module only re-exports them under the names
they always had.
"""

from __future__ import annotations

from meshnode.core.effects import (
    Attempt,
    AttemptEnded,
    AttemptOutcome,
    DeadlineExceeded,
    Done,
    Failed,
    RequesterEffect,
    SendCancel,
    SendConfirm,
    SendRequest,
    StartTask,
)
from meshnode.core.provider import (
    COUNTER_SAFETY_FACTOR,
    COUNTER_SAFETY_MS,
    FAIR_SHARE_MAX_TRACKED,
    FAIR_SHARE_WINDOW_S,
    REMEMBER_BYTES,
    REMEMBER_MAX,
    REMEMBER_S,
    RESERVATION_HOLD_S,
    RESERVATION_QUEUE_FACTOR,
    TOMBSTONE_BYTES,
    CancelOutcome,
    ProviderCore,
    RequestDecision,
    _response_bytes,
)
from meshnode.core.requester import (
    COUNTER_ACCEPT_RATIO,
    DEFAULT_DEADLINE_S,
    MIN_ATTEMPT_MS,
    RESPONSE_TIMEOUT_S,
    AllowFn,
    OutputCheck,
    RequesterCore,
)
from meshnode.core.task_wire import (
    MAX_DEADLINE_MS,
    MAX_ELAPSED_MS,
    MAX_REASON_BYTES,
    RejectCode,
    clip_reason,
    reject_code,
)

__all__ = [
    "COUNTER_ACCEPT_RATIO",
    "COUNTER_SAFETY_FACTOR",
    "COUNTER_SAFETY_MS",
    "DEFAULT_DEADLINE_S",
    "FAIR_SHARE_MAX_TRACKED",
    "FAIR_SHARE_WINDOW_S",
    "MAX_DEADLINE_MS",
    "MAX_ELAPSED_MS",
    "MAX_REASON_BYTES",
    "MIN_ATTEMPT_MS",
    "REMEMBER_BYTES",
    "REMEMBER_MAX",
    "REMEMBER_S",
    "RESERVATION_HOLD_S",
    "RESERVATION_QUEUE_FACTOR",
    "RESPONSE_TIMEOUT_S",
    "TOMBSTONE_BYTES",
    "AllowFn",
    "Attempt",
    "AttemptEnded",
    "AttemptOutcome",
    "CancelOutcome",
    "DeadlineExceeded",
    "Done",
    "Failed",
    "OutputCheck",
    "ProviderCore",
    "RejectCode",
    "RequestDecision",
    "RequesterCore",
    "RequesterEffect",
    "SendCancel",
    "SendConfirm",
    "SendRequest",
    "StartTask",
    "_response_bytes",
    "clip_reason",
    "reject_code",
]
