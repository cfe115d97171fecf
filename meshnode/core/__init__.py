"""meshnode's sans-I/O cores: configuration, SWIM membership with Lifeguard, suspicion
timers, local health and the broadcast queue. Nothing here touches a socket, a clock, a
thread or global randomness: time, randomness and signatures are passed in."""

from __future__ import annotations

from meshnode.core.config import NodeConfig
from meshnode.core.effects import (
    Deliver,
    Effect,
    MemberChanged,
    MemberEvent,
    SendPacket,
    StartPushPull,
)
from meshnode.core.membership import Member, Membership, MemberState

__all__ = [
    "Deliver",
    "Effect",
    "Member",
    "MemberChanged",
    "MemberEvent",
    "MemberState",
    "Membership",
    "NodeConfig",
    "SendPacket",
    "StartPushPull",
]
