"""Task channel binding (``meshnode.core.channel``): the handshake state machine and the
per-direction frame sequence, as tables."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from meshnode.core.channel import ChannelCore, Phase, channel_id
from protocol import Identity, TaskCancel
from protocol.messages import ChannelAuth, ChannelFrame, ChannelHello, Message

C = Identity.from_seed(b"\x21" * 32).node_id  # opener
S = Identity.from_seed(b"\x22" * 32).node_id  # listener
M = Identity.from_seed(b"\x23" * 32).node_id  # a third node (the attacker)
NC = b"\x01" * 32
NS = b"\x02" * 32
OLD = b"\x09" * 32  # a nonce from an earlier handshake


def opener() -> ChannelCore:
    return ChannelCore(C, NC, peer=S, handshake_deadline=5.0)


def listener() -> ChannelCore:
    return ChannelCore(S, NS, handshake_deadline=5.0)


def open_pair() -> tuple[ChannelCore, ChannelCore]:
    client, server = opener(), listener()
    hello = client.start()
    got = server.receive(C, hello)
    back = client.receive(S, got.send)
    assert back.opened == S
    done = server.receive(C, back.send)
    assert done.opened == C
    return client, server


def test_a_full_handshake_binds_both_sides_to_the_same_channel() -> None:
    client, server = open_pair()
    assert client.is_open and server.is_open
    assert client.peer == S and server.peer == C
    assert client.channel == server.channel == channel_id(NC, NS)
    frame = client.seal()
    assert frame == ChannelFrame(channel_id(NC, NS), S, 1)
    got = server.receive(C, [frame, TaskCancel("t", "x")])
    assert got.error is None
    assert got.deliver == (TaskCancel("t", "x"),)


@pytest.mark.parametrize(
    ("signer", "messages", "error"),
    [
        (C, [ChannelHello(NC, S)], None),
        (C, [ChannelHello(NC, M)], "hello_misdirected"),  # meant for another node
        (C, [ChannelAuth(NC, NS, C, S)], "not_hello"),  # skips the hello
        (C, [ChannelFrame(b"\0" * 16, S, 1)], "not_hello"),  # a replayed data frame
        (C, [TaskCancel("t", "x")], "not_hello"),  # old-style unframed task message
        (C, [ChannelHello(NC, S), TaskCancel("t", "x")], "handshake_shape"),
        (C, [], "handshake_shape"),
        (S, [ChannelHello(NC, S)], "hello_from_self"),
    ],
)
def test_listener_first_envelope(signer: str, messages: list[Message], error: str | None) -> None:
    server = listener()
    got = server.receive(signer, messages)
    if error is None:
        assert got.error is None
        assert got.send == (ChannelAuth(NS, NC, S, C),)
        assert server.phase is Phase.AWAIT_OPENER_AUTH
    else:
        assert got.error is not None and got.error.startswith(error)
        assert got.send == () and got.deliver == ()
        assert server.phase is Phase.FAILED


@pytest.mark.parametrize(
    ("signer", "auth", "error"),
    [
        (C, ChannelAuth(NC, NS, C, S), None),
        # A replay of C's auth from an earlier handshake: it answers another nonce.
        (C, ChannelAuth(NC, OLD, C, S), "bad_auth"),
        # The attacker replayed C's hello and now must sign the auth itself.
        (M, ChannelAuth(NC, NS, C, S), "bad_auth"),
        (M, ChannelAuth(NC, NS, M, S), "bad_auth"),
        (C, ChannelAuth(NC, NS, M, S), "bad_auth"),  # names another sender
        (C, ChannelAuth(NC, NS, C, M), "bad_auth"),  # meant for another listener
        (C, ChannelAuth(OLD, NS, C, S), "bad_auth"),  # not the hello's nonce
        (C, ChannelAuth(NS, NS, C, S), "bad_auth"),  # echoes our nonce as its own
    ],
)
def test_listener_second_envelope(signer: str, auth: ChannelAuth, error: str | None) -> None:
    """A replayed hello (from anyone who saw one) gets an answer, but only the node that
    holds the hello's key can answer the listener's fresh nonce."""
    server = listener()
    server.receive(C, [ChannelHello(NC, S)])
    got = server.receive(signer, [auth])
    if error is None:
        assert got.opened == C and server.is_open
    else:
        assert got.error is not None and got.error.startswith(error)
        assert got.opened is None and not server.is_open


@pytest.mark.parametrize(
    ("signer", "auth", "error"),
    [
        (S, ChannelAuth(NS, NC, S, C), None),
        (M, ChannelAuth(NS, NC, M, C), "bad_auth"),  # not the node we meant to reach
        (M, ChannelAuth(NS, NC, S, C), "bad_auth"),
        (S, ChannelAuth(NS, OLD, S, C), "bad_auth"),  # a replay from an earlier handshake
        (S, ChannelAuth(NS, NC, S, M), "bad_auth"),  # S's answer to someone else's hello
        (S, ChannelAuth(NC, NC, S, C), "bad_auth"),  # echoes our nonce
    ],
)
def test_opener_checks_the_listener(signer: str, auth: ChannelAuth, error: str | None) -> None:
    client = opener()
    client.start()
    got = client.receive(signer, [auth])
    if error is None:
        assert got.opened == S
        assert got.send == (ChannelAuth(NC, NS, C, S),)
    else:
        assert got.error is not None and got.error.startswith(error)
        assert got.send == () and not client.is_open


def _frame(
    change: Callable[[ChannelFrame], ChannelFrame],
) -> tuple[ChannelCore, ChannelCore, ChannelFrame]:
    client, server = open_pair()
    return client, server, change(client.seal())


@pytest.mark.parametrize(
    ("signer", "change", "error"),
    [
        (C, lambda f: f, None),
        (M, lambda f: f, "wrong_sender"),
        (C, lambda f: ChannelFrame(b"\x07" * 16, f.recipient, f.seq), "wrong_channel"),
        (C, lambda f: ChannelFrame(f.channel, M, f.seq), "wrong_recipient"),
        (C, lambda f: ChannelFrame(f.channel, f.recipient, 2), "bad_seq"),  # a gap
        (C, lambda f: ChannelFrame(f.channel, f.recipient, 0), "bad_seq"),
    ],
)
def test_framed_envelope_rules(
    signer: str, change: Callable[[ChannelFrame], ChannelFrame], error: str | None
) -> None:
    _, server, frame = _frame(change)
    got = server.receive(signer, [frame, TaskCancel("t", "x")])
    if error is None:
        assert got.deliver == (TaskCancel("t", "x"),)
    else:
        assert got.error is not None and got.error.startswith(error)
        assert got.deliver == ()
        assert server.phase is Phase.FAILED
        assert server.counts[error] == 1


@pytest.mark.parametrize(
    ("messages", "error"),
    [
        ([TaskCancel("t", "x")], "unframed"),
        ([], "unframed"),
        ([ChannelHello(NC, S)], "unframed"),
    ],
)
def test_unframed_envelopes_are_refused_once_open(messages: list[Message], error: str) -> None:
    _, server = open_pair()
    got = server.receive(C, messages)
    assert got.error is not None and got.error.startswith(error)


def test_replayed_and_reordered_frames_are_refused() -> None:
    """Each frame is accepted once, in order: a replay of frame 1 after it was taken, or
    frame 3 before frame 2, is a violation."""
    client, server = open_pair()
    f1, f2, f3 = client.seal(), client.seal(), client.seal()
    assert server.receive(C, [f1]).error is None
    replay = server.receive(C, [f1])
    assert replay.error is not None and replay.error.startswith("bad_seq")
    _, server2 = open_pair()
    server2.receive(C, [f1])
    early = server2.receive(C, [f3])
    assert early.error is not None and early.error.startswith("bad_seq")
    assert f2.seq == 2


def test_a_frame_from_another_channel_between_the_same_nodes_is_refused() -> None:
    """Frames recorded on one channel cannot be replayed into a later one between the same
    two nodes: the channel id comes from fresh nonces."""
    old_client, _ = open_pair()
    old = old_client.seal()
    client = ChannelCore(C, b"\x05" * 32, peer=S, handshake_deadline=5.0)
    server = ChannelCore(S, b"\x06" * 32, handshake_deadline=5.0)
    back = client.receive(S, server.receive(C, client.start()).send)
    server.receive(C, back.send)
    got = server.receive(C, [old])
    assert got.error is not None and got.error.startswith("wrong_channel")


def test_control_messages_inside_a_frame_are_refused() -> None:
    client, server = open_pair()
    got = server.receive(C, [client.seal(), ChannelHello(NC, S)])
    assert got.error is not None and got.error.startswith("nested_control")


@pytest.mark.parametrize(
    ("now", "expired"),
    [(4.99, False), (5.0, True)],
)
def test_handshake_timeout(now: float, expired: bool) -> None:
    server = listener()
    assert server.expired(now) is expired
    assert (server.phase is Phase.FAILED) is expired


def test_an_open_channel_never_expires() -> None:
    _, server = open_pair()
    assert server.expired(1e9) is False


def test_sending_before_open_and_bad_arguments_raise() -> None:
    with pytest.raises(RuntimeError):
        opener().seal()
    with pytest.raises(ValueError):
        ChannelCore(C, b"short", peer=S, handshake_deadline=1.0)
    with pytest.raises(ValueError):
        ChannelCore(C, NC, peer=C, handshake_deadline=1.0)
    with pytest.raises(RuntimeError):
        listener().start()


def test_header_and_advance_stamp_consecutive_sequence_numbers() -> None:
    client, server = open_pair()
    headers = [client.header(client.next_send_seq + i) for i in range(3)]
    client.advance(3)
    for header in headers:
        assert server.receive(C, [header]).error is None
    assert client.seal().seq == 4
