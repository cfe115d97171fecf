"""meshnode's sans-I/O cores: configuration, SWIM membership with Lifeguard, suspicion
timers, local health, the broadcast queue, manifests and the ledger (MeshCore), task
negotiation, trust, and :class:`NodeCore`, the one core per node that both shells drive.
Nothing here touches a socket, a clock, a thread or global randomness: time, randomness
and signatures are passed in."""

from __future__ import annotations

from meshnode.core.config import NodeConfig
from meshnode.core.effects import (
    Deliver,
    Effect,
    MemberChanged,
    MemberEvent,
    SendPacket,
    StartPushPull,
    StartTcpPing,
)
from meshnode.core.membership import Member, Membership, MemberState
from meshnode.core.node import NodeCore

__all__ = [
    "Deliver",
    "Effect",
    "Member",
    "MemberChanged",
    "MemberEvent",
    "MemberState",
    "Membership",
    "NodeConfig",
    "NodeCore",
    "SendPacket",
    "StartPushPull",
    "StartTcpPing",
]
