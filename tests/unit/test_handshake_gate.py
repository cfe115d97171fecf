"""The pre-handshake budget of task WebSockets is sized for the largest honest message.

Invariants: every envelope an opener sends before its channel is open (the hello, then
its auth), signed and sealed, fits in ``MAX_HANDSHAKE_MESSAGE_BYTES`` with room to spare;
the gate's frame-header walk finds message boundaries across fragments and split reads.
"""

from __future__ import annotations

import os
import struct
from typing import Any

from meshnode.core.channel import ChannelCore
from meshnode.runtime.handshake_gate import (
    HANDSHAKE_MESSAGES,
    MAX_HANDSHAKE_MESSAGE_BYTES,
    HandshakeGate,
)
from protocol import Identity, decode, encode
from protocol.limits import SEAL_OVERHEAD_BYTES

OPENER = Identity.from_seed(b"\x05" * 32)
LISTENER = Identity.from_seed(b"\x06" * 32)


def test_honest_handshake_envelopes_fit_with_room_to_spare() -> None:
    opener = ChannelCore(
        OPENER.node_id, os.urandom(32), peer=LISTENER.node_id, handshake_deadline=1e9
    )
    listener = ChannelCore(LISTENER.node_id, os.urandom(32), peer=None, handshake_deadline=1e9)
    hello = encode(opener.start(), OPENER)
    got = listener.receive(OPENER.node_id, list(_decoded(hello)))
    reply = encode(list(got.send), LISTENER)
    auth = opener.receive(LISTENER.node_id, list(_decoded(reply)))
    assert auth.opened == LISTENER.node_id
    final = encode(list(auth.send), OPENER)
    sizes = [len(hello), len(final)]
    assert len(sizes) == HANDSHAKE_MESSAGES
    assert max(sizes) + SEAL_OVERHEAD_BYTES < MAX_HANDSHAKE_MESSAGE_BYTES // 8


def _decoded(frame: bytes) -> Any:
    return decode(frame).messages


class Parser:
    """Collects what the gate lets through."""

    def __init__(self) -> None:
        self.data = b""
        self.eof = False

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self.data += data
        return False, b""

    def feed_eof(self) -> None:
        self.eof = True


def frame(payload_len: int, *, fin: bool = True, opcode: int = 2) -> bytes:
    first = (0x80 if fin else 0) | opcode
    if payload_len < 126:
        head = bytes([first, 0x80 | payload_len])
    elif payload_len < 65536:
        head = bytes([first, 0x80 | 126]) + struct.pack(">H", payload_len)
    else:
        head = bytes([first, 0x80 | 127]) + struct.pack(">Q", payload_len)
    return head + b"\x00" * 4 + b"j" * payload_len


def test_fragments_of_one_message_add_up() -> None:
    refused: list[str] = []
    gate = HandshakeGate(Parser(), None, refused.append)
    half = MAX_HANDSHAKE_MESSAGE_BYTES // 2 + 1
    gate.feed_data(frame(half, fin=False) + frame(10, opcode=9))  # a ping in between
    assert not refused
    gate.feed_data(frame(half, fin=True, opcode=0)[:3])  # a header split across reads
    assert not refused
    gate.feed_data(frame(half, fin=True, opcode=0)[3:8])  # the rest of the header
    assert refused and gate.refused


def test_two_small_messages_pass_then_the_gate_waits_for_open() -> None:
    refused: list[str] = []
    parser = Parser()
    gate = HandshakeGate(parser, None, refused.append)
    data = frame(300) + frame(300) + frame(10 * MAX_HANDSHAKE_MESSAGE_BYTES)[:100]
    gate.feed_data(data[:7])
    gate.feed_data(data[7:])
    assert not refused and gate.paused and parser.data == data
    gate.open()
    assert gate.opened and not gate.paused
