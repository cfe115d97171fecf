"""What the membership core asks its shell to do, and what it tells the layers above.

Theory of operation
-------------------
The core never performs I/O. Each call (``receive``, ``tick``, ``join``, ``leave``,
``merge_state``, ``broadcast``) appends effects to a list that the shell drains with
``take_effects()`` and carries out in order:

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

All effects are frozen, slotted dataclasses, so they can be logged, compared in tests
and handed across threads safely.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import TYPE_CHECKING

from protocol import Message

if TYPE_CHECKING:
    from meshnode.core.membership import Member, MemberState

__all__ = [
    "Address",
    "Deliver",
    "Effect",
    "IdentityConflict",
    "MemberChanged",
    "MemberEvent",
    "SendPacket",
    "StartPushPull",
]

Address = tuple[str, int]
"""A ``(host, port)`` pair: UDP for packets, TCP (same port) for push-pull."""


@dataclasses.dataclass(frozen=True, slots=True)
class SendPacket:
    """Send ``messages`` to ``addr`` in one signed envelope (one UDP datagram)."""

    addr: Address
    messages: tuple[Message, ...]


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


class MemberEvent(enum.Enum):
    """Why a :class:`MemberChanged` was emitted."""

    JOINED = "joined"
    """A member we did not know (or had forgotten) appeared, alive."""
    ALIVE = "alive"
    """A suspect, dead or left member is alive again (it refuted, or it rejoined)."""
    SUSPECT = "suspect"
    """A member is suspected of having failed."""
    DEAD = "dead"
    """A member was declared dead (its suspicion expired somewhere)."""
    LEFT = "left"
    """A member left gracefully."""
    UPDATED = "updated"
    """An alive member announced a new incarnation or a new address (ourselves included,
    after a refutation)."""
    FORGOTTEN = "forgotten"
    """A dead or left member was removed from the table after the retention time."""


@dataclasses.dataclass(frozen=True, slots=True)
class MemberChanged:
    """Membership event. ``old_state`` is None for a join, ``new_state`` None when
    forgotten; ``member`` is the record after the change (the last one when forgotten)."""

    kind: MemberEvent
    node_id: str
    old_state: MemberState | None
    new_state: MemberState | None
    member: Member


@dataclasses.dataclass(frozen=True, slots=True)
class Deliver:
    """A non-membership message received from ``sender`` (verified envelope sender) at
    ``addr``. The layer above validates it and, if it is news, re-broadcasts it with
    ``Membership.broadcast``."""

    sender: str
    addr: Address
    message: Message


@dataclasses.dataclass(frozen=True, slots=True)
class IdentityConflict:
    """Our node id is alive somewhere else too: ``other_address`` is the address the other
    holder of our key announces (our own address when it is a refutation war at the same
    address). Emitted at most once per address per ``IDENTITY_CONFLICT_WINDOW``."""

    node_id: str
    other_address: Address


Effect = SendPacket | StartPushPull | MemberChanged | Deliver | IdentityConflict
"""Everything ``take_effects()`` can return."""
