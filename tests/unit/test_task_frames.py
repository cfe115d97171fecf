"""Envelopes on a task channel (``meshnode.runtime.tasks._frames``): a batch is split into
as few signed envelopes as the limits allow, each headed by the channel's next
``ChannelFrame``, and the receiving side takes them all, in order."""

from __future__ import annotations

import pytest

from meshnode.core.channel import ChannelCore
from meshnode.runtime.tasks import _frames
from protocol import Identity, TaskCancel, decode
from protocol.codec import message_to_wire
from protocol.limits import MAX_MESSAGES_PER_ENVELOPE

C = Identity.from_seed(b"\x31" * 32)
S = Identity.from_seed(b"\x32" * 32)


def open_pair() -> tuple[ChannelCore, ChannelCore]:
    client = ChannelCore(C.node_id, b"\x01" * 32, peer=S.node_id, handshake_deadline=1.0)
    server = ChannelCore(S.node_id, b"\x02" * 32, handshake_deadline=1.0)
    back = client.receive(S.node_id, server.receive(C.node_id, client.start()).send)
    server.receive(C.node_id, back.send)
    return client, server


@pytest.mark.parametrize(
    ("messages", "envelopes"),
    [
        (1, 1),
        (MAX_MESSAGES_PER_ENVELOPE - 1, 1),  # one place is the header's
        (MAX_MESSAGES_PER_ENVELOPE, 2),
        (2 * MAX_MESSAGES_PER_ENVELOPE, 3),
    ],
)
def test_batches_split_into_framed_envelopes(messages: int, envelopes: int) -> None:
    client, server = open_pair()
    batch = [message_to_wire(TaskCancel(f"t{i}", "")) for i in range(messages)]
    frames = _frames(batch, C, client)
    assert len(frames) == envelopes
    delivered: list[str] = []
    for frame in frames:
        envelope = decode(frame)
        got = server.receive(envelope.sender, envelope.messages)
        assert got.error is None, got.error
        delivered += [m.task_id for m in got.deliver if isinstance(m, TaskCancel)]
    assert delivered == [f"t{i}" for i in range(messages)]
    assert client.next_send_seq == envelopes + 1
