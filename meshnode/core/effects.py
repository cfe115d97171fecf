"""Every effect a core asks its shell to carry out, in one module.

Theory of operation
-------------------
The cores never perform I/O. Each input call appends effects to a list that the shell
drains with ``take_effects()`` and carries out in order. They are grouped by the core that
emits them; :class:`~meshnode.core.node.NodeCore` passes all of them through.

Membership (:class:`~meshnode.core.membership.Membership`):

* :class:`SendPacket` — encode ``messages`` into one signed envelope and send it as one
  UDP datagram to ``addr``. The core guarantees
  ``ENVELOPE_OVERHEAD + sum(wire_size(m)) <= max_packet_bytes``.
* :class:`StartPushPull` — open a TCP connection to ``addr`` and run one anti-entropy
  exchange (send our ``state_snapshot()``, merge the answer with ``merge_state``).
* :class:`MemberChanged` — a member joined, changed state, changed address or was
  forgotten; for logs, metrics, the manifest store and the capability index.
* :class:`Deliver` — a message that arrived piggybacked in a SWIM packet but is not
  membership's business (manifest rumors, ledger records, …), for the layer above.
* :class:`IdentityConflict` — another process holds our key: an ``Alive`` about us,
  signed with our key, names an address that is not ours, or our incarnation keeps
  being pushed up by someone else; for logs and the health report.

The core never emits a :class:`SendPacket` or :class:`StartPushPull` to an address that
``membership.address_problem`` refuses (defence in depth behind the checks on every
address read off the wire).

Mesh (:class:`~meshnode.core.mesh.MeshCore`): :class:`FetchManifest`,
:class:`ManifestChanged`, :class:`PersistRecords`.

Provider (:class:`~meshnode.core.provider.ProviderCore`, returned by its calls):
:class:`StartTask`, :class:`DeadlineExceeded`.

Requester (:class:`~meshnode.core.requester.RequesterCore`, returned by its calls):
:class:`SendRequest`, :class:`SendConfirm`, :class:`SendCancel`, :class:`AttemptEnded`,
and exactly one :class:`Done` or :class:`Failed` per delegation. :class:`Attempt` and
:class:`AttemptOutcome` are the record these carry.

Node (:class:`~meshnode.core.node.NodeCore`, which turns the two above into these):

* :class:`SendTask` — send ``message`` to ``node`` over the task channel (opening one if
  none is open). If it cannot be sent, tell the core with ``send_failed``.
* :class:`RunHandler` — run the handler of ``capability`` on ``input`` for ``requester``'s
  task; report its end with ``handler_done``. ``deadline_at`` is when the core will stop
  it (hand it to the handler so nested delegations inherit it).
* :class:`StopHandler` — stop that handler now; its answer (if any) was already sent.
* :class:`CheckPeer` — membership declared ``node`` dead while tasks with it are live:
  ping its task channel with ``token`` and report the pongs (``peer_answered``), or that
  no channel is open (``check_unsent``); the core fails the peer if no answer counts.
* :class:`CloseChannels` — close the task channels to ``node`` (it failed its check).
* :class:`DelegationFinished` — a delegation ended: ``outcome`` is :class:`Done` (with its
  ``evaluation``) or :class:`Failed`.

All effects are frozen, slotted dataclasses, so they can be logged, compared in tests
and handed across threads safely.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import Any

from meshnode.core.breaker import TaskVerdict
from meshnode.core.evaluator import Evaluation
from meshnode.core.member import Address, Member, MemberEvent, MemberState
from protocol import (
    LedgerRecord,
    Manifest,
    Message,
    TaskCancel,
    TaskConfirm,
    TaskRequest,
    TaskResult,
)

__all__ = [
    "Address",
    "Attempt",
    "AttemptEnded",
    "AttemptOutcome",
    "CheckPeer",
    "CloseChannels",
    "CoreEffect",
    "DeadlineExceeded",
    "DelegationFinished",
    "Deliver",
    "Done",
    "Effect",
    "Failed",
    "FetchManifest",
    "IdentityConflict",
    "ManifestChanged",
    "MemberChanged",
    "MemberEvent",
    "NodeEffect",
    "PersistRecords",
    "RequesterEffect",
    "RunHandler",
    "SendCancel",
    "SendConfirm",
    "SendPacket",
    "SendRequest",
    "SendTask",
    "StartPushPull",
    "StartTask",
    "StartTcpPing",
    "StopHandler",
]

# ============================================================================ membership


@dataclasses.dataclass(frozen=True, slots=True, init=False)
class SendPacket:
    """Send ``messages`` to ``addr`` in one signed envelope (one UDP datagram)."""

    addr: Address
    messages: tuple[Message, ...]

    def __init__(self, addr: Address, messages: tuple[Message, ...]) -> None:
        # One per datagram: set through the slot descriptors, as ``Deliver`` does.
        _set_send_addr(self, addr)
        _set_send_messages(self, messages)


_set_send_addr = SendPacket.__dict__["addr"].__set__
_set_send_messages = SendPacket.__dict__["messages"].__set__


@dataclasses.dataclass(frozen=True, slots=True)
class StartPushPull:
    """Run a TCP state exchange with ``addr``; ``join`` marks the first one with a seed.

    The shell sends ``PushPull(join, members=state_snapshot(), ...)`` and passes the
    ``members`` of the answer to ``merge_state``. A failed exchange needs no callback:
    join attempts are retried by the core until a member is known, and periodic
    exchanges simply happen again at the next interval.
    """

    addr: Address
    join: bool


@dataclasses.dataclass(frozen=True, slots=True)
class StartTcpPing:
    """Ping ``node`` at ``addr`` over TCP (the TCP fallback probe, beside the indirect
    probes): send one signed ``Ping(seq, node)`` and expect one ``Ack(seq)`` signed by
    ``node`` within ``timeout`` seconds. However it ends, the shell must call
    ``tcp_ping_done(node, seq, ack_or_None, now)`` exactly once: the core counts the
    pings in flight against ``NodeConfig.tcp_fallback_max_concurrent``."""

    addr: Address
    node: str
    seq: int
    timeout: float


@dataclasses.dataclass(frozen=True, slots=True)
class MemberChanged:
    """Membership event. ``old_state`` is None for a join, ``new_state`` None when
    forgotten; ``member`` is the record after the change (the last one when forgotten)."""

    kind: MemberEvent
    node_id: str
    old_state: MemberState | None
    new_state: MemberState | None
    member: Member


@dataclasses.dataclass(frozen=True, slots=True, init=False)
class Deliver:
    """A non-membership message received from ``sender`` (verified envelope sender) at
    ``addr``. The layer above validates it and, if it is news, re-broadcasts it with
    ``Membership.broadcast``."""

    sender: str
    addr: Address
    message: Message

    def __init__(self, sender: str, addr: Address, message: Message) -> None:
        # One is made for every copy of every ledger record gossip brings: the slots are
        # set through their descriptors, about half the cost of the generated frozen
        # __init__ (which goes through object.__setattr__ once per field).
        _set_deliver_sender(self, sender)
        _set_deliver_addr(self, addr)
        _set_deliver_message(self, message)


_set_deliver_sender = Deliver.__dict__["sender"].__set__
_set_deliver_addr = Deliver.__dict__["addr"].__set__
_set_deliver_message = Deliver.__dict__["message"].__set__


@dataclasses.dataclass(frozen=True, slots=True)
class IdentityConflict:
    """Our node id is alive somewhere else too: ``other_address`` is the address the other
    holder of our key announces (our own address when it is a refutation war at the same
    address). Emitted at most once per address per ``IDENTITY_CONFLICT_WINDOW``."""

    node_id: str
    other_address: Address


Effect = SendPacket | StartPushPull | StartTcpPing | MemberChanged | Deliver | IdentityConflict
"""Everything ``Membership.take_effects()`` can return."""

# ============================================================================ mesh


@dataclasses.dataclass(frozen=True, slots=True)
class FetchManifest:
    """Fetch ``node``'s signed manifest (``version`` or newer) over TCP from ``sources``,
    in order, and pass it to ``manifest_fetched`` (``fetch_failed`` if none delivered).
    The order is decided by :func:`meshnode.core.mesh.fetch_sources`."""

    node: str
    version: int
    sources: tuple[Address, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class ManifestChanged:
    """``node``'s manifest is now ``manifest`` (None: removed, the node left or died)."""

    node: str
    manifest: Manifest | None


@dataclasses.dataclass(frozen=True, slots=True)
class PersistRecords:
    """Ledger records to store; ``durable`` ones must be committed before anything else
    happens (they are this node's own opinions)."""

    records: tuple[LedgerRecord, ...]
    durable: bool


CoreEffect = Effect | FetchManifest | ManifestChanged | PersistRecords
"""Everything ``MeshCore.take_effects()`` can return."""

# ============================================================================ provider


@dataclass(frozen=True, slots=True)
class StartTask:
    """Run ``request`` now. ``deadline_at`` is on the provider's clock; ``remaining_ms`` is
    what is left of the deadline (hand it to the handler so nested delegations inherit it)."""

    requester: str
    request: TaskRequest
    deadline_at: float
    remaining_ms: int


@dataclass(frozen=True, slots=True)
class DeadlineExceeded:
    """A task ran out of time. Stop its handler if ``was_running``, send ``result``."""

    requester: str
    task_id: str
    result: TaskResult
    was_running: bool


# ============================================================================ requester


class AttemptOutcome(enum.Enum):
    """How one attempt with one candidate ended."""

    DELIVERED = "delivered"
    """A valid result signed by the peer, ``ok=True``."""
    FAILED_RESULT = "failed_result"
    """A valid result signed by the peer, ``ok=False`` (or ``ok=True`` with an output that
    ``check_output`` refused)."""
    REJECTED = "rejected"
    """The peer refused (or its reservation lapsed before our confirm)."""
    DECLINED = "declined"
    """We declined the peer's counter: too late for us."""
    RESPONSE_TIMEOUT = "response_timeout"
    """No response within the response timeout."""
    EXECUTION_TIMEOUT = "execution_timeout"
    """Accepted, but no result by the agreed deadline."""
    PEER_FAILED = "peer_failed"
    """The connection dropped or membership declared the peer dead."""
    FORGED_RESULT = "forged_result"
    """A result with a bad signature or the wrong task id, requester or provider."""
    PROTOCOL_ERROR = "protocol_error"
    """A malformed response (unknown status, a counter without a deadline)."""
    DEADLINE_EXCEEDED = "deadline_exceeded"
    """Our own overall deadline ran out while waiting for the peer's response."""
    CANCELLED = "cancelled"
    """The caller cancelled the delegation."""
    INVALID_INPUT = "invalid_input"
    """The peer refused the task's input (REJECTED ``invalid_input``: it fails the
    capability's input schema; or a signed failed result whose error carries that code:
    the handler raised ``InvalidInput``). The input is the problem: no verdict on the peer,
    and no other candidate is tried."""
    SKIPPED = "skipped"
    """Not tried: the peer's circuit breaker refused."""


_VERDICTS: dict[AttemptOutcome, TaskVerdict | None] = {
    AttemptOutcome.DELIVERED: TaskVerdict.SUCCESS,
    AttemptOutcome.FAILED_RESULT: TaskVerdict.FAILURE,
    AttemptOutcome.RESPONSE_TIMEOUT: TaskVerdict.FAILURE,
    AttemptOutcome.EXECUTION_TIMEOUT: TaskVerdict.FAILURE,
    AttemptOutcome.PEER_FAILED: TaskVerdict.FAILURE,
    AttemptOutcome.FORGED_RESULT: TaskVerdict.FAILURE,
    AttemptOutcome.PROTOCOL_ERROR: TaskVerdict.FAILURE,
    AttemptOutcome.REJECTED: TaskVerdict.ABANDONED,
    AttemptOutcome.DECLINED: TaskVerdict.ABANDONED,
    AttemptOutcome.DEADLINE_EXCEEDED: TaskVerdict.ABANDONED,
    AttemptOutcome.CANCELLED: TaskVerdict.ABANDONED,
    AttemptOutcome.INVALID_INPUT: TaskVerdict.ABANDONED,
    AttemptOutcome.SKIPPED: None,
}


@dataclass(frozen=True, slots=True)
class Attempt:
    """One candidate tried (or skipped). Times are on the requester's clock, in seconds."""

    node: str
    outcome: AttemptOutcome
    detail: str
    sent_at: float | None
    responded_at: float | None
    ended_at: float
    deadline_ms: int | None
    """The deadline this attempt's request asked for."""
    counter_deadline_ms: int | None

    @property
    def verdict(self) -> TaskVerdict | None:
        """What the attempt says about the peer, for its breaker (None: nothing to record)."""
        return _VERDICTS[self.outcome]

    @property
    def response_ms(self) -> float | None:
        if self.sent_at is None or self.responded_at is None:
            return None
        return (self.responded_at - self.sent_at) * 1000.0

    @property
    def duration_ms(self) -> float:
        return 0.0 if self.sent_at is None else (self.ended_at - self.sent_at) * 1000.0


@dataclass(frozen=True, slots=True)
class SendRequest:
    node: str
    request: TaskRequest


@dataclass(frozen=True, slots=True)
class SendConfirm:
    node: str
    confirm: TaskConfirm


@dataclass(frozen=True, slots=True)
class SendCancel:
    node: str
    cancel: TaskCancel


@dataclass(frozen=True, slots=True)
class AttemptEnded:
    """An attempt ended: record ``attempt.verdict`` (if not None) on the peer's breaker."""

    attempt: Attempt


@dataclass(frozen=True, slots=True)
class Done:
    """The delegation succeeded: ``result`` is verified and came from ``provider``."""

    result: TaskResult
    provider: str
    attempts: tuple[Attempt, ...]
    elapsed_s: float


@dataclass(frozen=True, slots=True)
class Failed:
    """The delegation gave up. ``last_result`` is the last signed failed result, if any;
    ``invalid_input`` says a provider refused the input itself (the reason then reads
    ``"invalid input: <why>"``)."""

    reason: str
    attempts: tuple[Attempt, ...]
    elapsed_s: float
    last_result: TaskResult | None = None
    invalid_input: bool = False


RequesterEffect = SendRequest | SendConfirm | SendCancel | AttemptEnded | Done | Failed
"""Everything a ``RequesterCore`` call can return."""

# ============================================================================ node


@dataclass(frozen=True, slots=True)
class SendTask:
    """Send ``message`` to ``node`` over the task channel; ``task_id`` is the task it is
    about (a shell that cannot send it calls ``NodeCore.send_failed(node, task_id, ...)``).
    A reply to a request is best sent on the channel the request came in on."""

    node: str
    task_id: str
    message: Message


@dataclass(frozen=True, slots=True)
class RunHandler:
    """Run the handler of ``capability`` on ``input`` for ``requester``'s task ``task_id``;
    call ``NodeCore.handler_done`` when it ends. ``deadline_at`` is on this node's clock."""

    requester: str
    task_id: str
    capability: str
    input: Any
    deadline_at: float
    trace_id: str = ""
    """The request's trace context (a traceparent when the requester traces; see
    :mod:`meshnode.core.tracing`), unchecked: the shell parses it."""


@dataclass(frozen=True, slots=True)
class StopHandler:
    """Stop the handler of ``requester``'s task ``task_id`` (its answer, if one is owed,
    is in a :class:`SendTask` of the same batch)."""

    requester: str
    task_id: str


@dataclass(frozen=True, slots=True)
class CheckPeer:
    """Membership declared ``node`` dead (an accusation anyone may make) while tasks
    with it are live: send a ``ChannelPing(token)`` on its task channel and hand every
    ``ChannelPong`` it sends back to ``NodeCore.peer_answered``; if no channel is open,
    call ``NodeCore.check_unsent``. The core decides the rest (what answer counts, the
    timeout, when the peer has failed)."""

    node: str
    token: int = 0


@dataclass(frozen=True, slots=True)
class CloseChannels:
    """Close every task channel to ``node`` without reporting it back: the core already
    holds the peer failed (it did not answer a liveness check)."""

    node: str
    reason: str


@dataclass(frozen=True, slots=True)
class DelegationFinished:
    """Delegation ``task_id`` ended. ``outcome`` is :class:`Done` (then ``evaluation`` is
    its score, already folded into the breaker and our opinion) or :class:`Failed`."""

    task_id: str
    capability: str
    outcome: Done | Failed
    evaluation: Evaluation | None


NodeEffect = (
    CoreEffect
    | SendTask
    | RunHandler
    | StopHandler
    | CheckPeer
    | CloseChannels
    | DelegationFinished
)
"""Everything ``NodeCore.take_effects()`` can return."""
