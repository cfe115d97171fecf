"""What a member is: its state, its immutable snapshot and why it changed.

Theory of operation
-------------------
These types are shared by the membership core (which makes them), the effects module
(which carries them to the shells) and every layer above (which reads them). They live
in their own module so that :mod:`meshnode.core.effects` and
:mod:`meshnode.core.membership` do not import each other.

* :class:`MemberState` orders rumors at equal incarnation: alive < suspect < dead < left.
* :class:`Member` is an immutable snapshot; membership makes a new one on every change.
* :class:`MemberEvent` says why a ``MemberChanged`` effect was emitted.
* ``MemberRumor`` is the union of the signed statements that make up a member's state.
"""

from __future__ import annotations

import dataclasses
import enum

from protocol import Alive, Dead, Leave, Suspect, short_id

__all__ = ["Address", "Member", "MemberEvent", "MemberRumor", "MemberState"]

Address = tuple[str, int]
"""A ``(host, port)`` pair: UDP for packets, TCP (same port) for push-pull and tasks."""

MemberRumor = Alive | Suspect | Dead | Leave
"""The signed statements that make up a member's state."""


class MemberState(enum.IntEnum):
    """A member's state. The values order rumors at equal incarnation:
    alive < suspect < dead < left."""

    ALIVE = 1
    SUSPECT = 2
    DEAD = 3
    LEFT = 4

    @property
    def label(self) -> str:
        """Lower-case name, for logs and JSON."""
        return self.name.lower()


class MemberEvent(enum.Enum):
    """Why a ``MemberChanged`` effect was emitted."""

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
class Member:
    """An immutable snapshot of one member. A new object is made on every change."""

    node_id: str
    """The member's node id (its public key)."""
    host: str
    """Where to reach it, from its latest ``Alive``."""
    port: int
    incarnation: int
    """The incarnation of its current state."""
    state: MemberState
    state_change: float
    """When we last saw its state change (seconds, the core's clock)."""
    rumor: MemberRumor
    """The latest signed rumor that justifies ``state``."""
    alive: Alive
    """The latest signed ``Alive`` (the source of the address)."""
    load: int | None = None
    """Tasks in flight it advertised in its last ack to us; None until one arrives."""
    rtt: float | None = None
    """Round-trip time of our last direct probe it answered, in seconds."""
    pressure: tuple[int, int] | None = None
    """Its machine pressure ``(cpu, memory)`` in percent (0..100 each), from the last
    signed ``Pressure`` it sent us beside an ack; None until one arrives."""

    @property
    def address(self) -> Address:
        """``(host, port)``."""
        return self.host, self.port

    def with_ack(self, load: int | None, rtt: float | None) -> Member:
        """This member with the ``load`` and ``rtt`` of a probe it answered, as
        ``dataclasses.replace(self, load=load, rtt=rtt)`` gives but without its field
        introspection (a copy per acknowledged probe)."""
        return Member(
            self.node_id,
            self.host,
            self.port,
            self.incarnation,
            self.state,
            self.state_change,
            self.rumor,
            self.alive,
            load,
            rtt,
            self.pressure,
        )

    def __repr__(self) -> str:
        return (
            f"<Member {short_id(self.node_id)} {self.state.label}@{self.incarnation} "
            f"{self.host}:{self.port}>"
        )
