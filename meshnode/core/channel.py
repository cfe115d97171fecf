"""Task channel binding: the handshake and the frame sequence, sans I/O.

Theory of operation
-------------------
A task channel is one WebSocket between two nodes that carries signed envelopes. A
signature alone says who *once* signed an envelope, not who is on the other end of this
socket: any envelope a node ever sent can be replayed by anyone who saw it. So a channel
is bound to a peer only by a fresh challenge–response, and every later envelope is tied to
this channel, this recipient and its place in the stream::

    opener (client)                                listener (server)
    [ChannelHello(nc, recipient=S)]          ──▶   checks recipient is itself
                                             ◀──   [ChannelAuth(ns, peer_nonce=nc, S, C)]
    checks: signed by S (the node it meant
    to reach), names nc, S and C
    [ChannelAuth(nc, peer_nonce=ns, C, S)]   ──▶   checks: signed by C (who said hello),
    OPEN                                           names ns, C and S; OPEN

``nc`` and ``ns`` are fresh random nonces (:data:`NONCE_BYTES`), one per handshake and side.
Each ChannelAuth is signed (by its envelope) by its sender and names the other side's fresh
nonce, so it cannot have been recorded earlier, and names both ids, so it cannot be relayed
to or from a third node. A handshake envelope carries its handshake message and nothing
else.

Once open, both sides know the channel id ``blake2b(domain || nc || ns)``
(:data:`CHANNEL_ID_BYTES`).
Every envelope then starts with a :class:`~protocol.messages.ChannelFrame` naming that id,
the recipient, and a sequence number per direction that starts at 1 and increases by
exactly one per envelope. An envelope whose sender, channel, recipient or sequence number
is wrong is a violation: it is refused with a reason (the runtime counts it and closes the
channel, since a stream with a gap can no longer be trusted to be complete). A replayed,
reordered, dropped-and-resent or redirected envelope therefore never reaches the task layer.

A handshake that is not complete by ``handshake_deadline`` (the runtime arms a timer with
the configured timeout) has failed: :meth:`ChannelCore.expired` says so and the runtime
closes the socket.

Admission of task sockets (:func:`connection_refusal`, :func:`per_peer_refused`) is
decided here too, from counts the shell keeps: ``NodeConfig.task_max_connections`` open
sockets in all, ``task_max_unauthenticated`` still in their handshake (at most
``task_max_unauthenticated_per_address`` from one address), ``task_max_connections_per_address``
from one remote address, and ``task_max_connections_per_peer`` authenticated channels
per peer id.

Nothing here reads a clock or touches a socket: nonces come in from the caller (the
runtime draws them from the operating system's random source), and every decision comes
back as a :class:`Received` value.
"""

from __future__ import annotations

import enum
import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from meshnode.core.config import NodeConfig
from protocol.messages import ChannelAuth, ChannelFrame, ChannelHello, Message

NONCE_BYTES = 32
"""Length of a handshake nonce: 256 random bits, never repeated in practice."""

CHANNEL_ID_BYTES = 16
"""Length of a channel id (a BLAKE2b digest of both nonces): 128 bits."""

_CHANNEL_ID_DOMAIN = b"meshnode-task-channel-v1"


def channel_id(opener_nonce: bytes, listener_nonce: bytes) -> bytes:
    """The id both sides derive for a channel from its two handshake nonces."""
    data = _CHANNEL_ID_DOMAIN + opener_nonce + listener_nonce
    return hashlib.blake2b(data, digest_size=CHANNEL_ID_BYTES).digest()


class Phase(enum.Enum):
    """Where a channel is in its life."""

    AWAIT_HELLO = "await_hello"
    """Listener: nothing received yet."""
    AWAIT_LISTENER_AUTH = "await_listener_auth"
    """Opener: hello sent, waiting for the listener's ChannelAuth."""
    AWAIT_OPENER_AUTH = "await_opener_auth"
    """Listener: its ChannelAuth sent, waiting for the opener's."""
    OPEN = "open"
    """Bound to a verified peer: framed envelopes flow both ways."""
    FAILED = "failed"
    """A violation or timeout ended it; the runtime closes the socket."""


@dataclass(frozen=True, slots=True)
class Received:
    """What to do with one envelope that arrived on the channel.

    ``send``: handshake messages to send at once, alone in one envelope (no frame header).
    ``deliver``: the envelope's task messages, from the verified ``peer``.
    ``opened``: set (to the peer's id) on the envelope that completed the handshake.
    ``error``: a violation; nothing is delivered, count it and close the channel.
    """

    send: tuple[Message, ...] = ()
    deliver: tuple[Message, ...] = ()
    opened: str | None = None
    error: str | None = None


class ChannelCore:
    """The handshake and sequence rules of one task channel (see the module docstring).

    An opener (``peer`` given: the node it means to reach) calls :meth:`start` and sends
    what it returns; a listener starts with nothing. Each side hands every verified
    envelope to :meth:`receive`, and asks :meth:`seal` for the header of each envelope it
    sends once the channel is open.
    """

    def __init__(
        self,
        me: str,
        nonce: bytes,
        *,
        peer: str | None = None,
        handshake_deadline: float,
    ) -> None:
        if len(nonce) != NONCE_BYTES:
            raise ValueError(f"a nonce is {NONCE_BYTES} bytes, got {len(nonce)}")
        if peer == me:
            raise ValueError("a channel to oneself")
        self.me = me
        self.opener = peer is not None
        self.peer = peer
        """The expected peer (opener) or the one that said hello (listener); verified
        only once :attr:`is_open`."""
        self.handshake_deadline = handshake_deadline
        self._nonce = nonce
        self._peer_nonce: bytes | None = None
        self.phase = Phase.AWAIT_LISTENER_AUTH if self.opener else Phase.AWAIT_HELLO
        self.channel: bytes | None = None
        self._sent = 0
        self._received = 0
        self.counts: Counter[str] = Counter()
        """Violations by kind, for metrics."""
        self._started = False

    # ------------------------------------------------------------------ state

    @property
    def is_open(self) -> bool:
        return self.phase is Phase.OPEN

    @property
    def next_send_seq(self) -> int:
        """Sequence number of the next envelope :meth:`seal` stamps."""
        return self._sent + 1

    def expired(self, now: float) -> bool:
        """Has the handshake failed to finish by its deadline? (Then it is FAILED.)"""
        if self.phase in (Phase.OPEN, Phase.FAILED):
            return self.phase is Phase.FAILED
        if now >= self.handshake_deadline:
            self._fail("handshake_timeout")
            return True
        return False

    # ------------------------------------------------------------------ opener

    def start(self) -> list[Message]:
        """The opener's first envelope: its hello. (A listener sends nothing first.)"""
        if not self.opener or self._started:
            raise RuntimeError("start() is for an opener, once")
        self._started = True
        assert self.peer is not None
        return [ChannelHello(self._nonce, self.peer)]

    # ------------------------------------------------------------------ receiving

    def receive(self, sender: str, messages: Sequence[Message]) -> Received:
        """Judge one envelope, signed by ``sender``, that arrived on this channel."""
        phase = self.phase
        if phase is Phase.FAILED:
            return Received(error="channel already failed")
        if phase is Phase.OPEN:
            return self._framed(sender, messages)
        if len(messages) != 1:
            return self._violation("handshake_shape", "a handshake envelope holds one message")
        message = messages[0]
        if phase is Phase.AWAIT_HELLO:
            if not isinstance(message, ChannelHello):
                return self._violation("not_hello", "expected a ChannelHello first")
            if message.recipient != self.me:
                return self._violation("hello_misdirected", "hello names another recipient")
            if sender == self.me:
                return self._violation("hello_from_self", "hello signed with our own key")
            self.peer = sender
            self._peer_nonce = message.nonce
            self.phase = Phase.AWAIT_OPENER_AUTH
            auth = ChannelAuth(self._nonce, message.nonce, self.me, sender)
            return Received(send=(auth,))
        if not isinstance(message, ChannelAuth):
            return self._violation("not_auth", "expected a ChannelAuth")
        problem = self._auth_problem(sender, message)
        if problem is not None:
            return self._violation("bad_auth", problem)
        self._peer_nonce = message.nonce
        self.phase = Phase.OPEN
        if self.opener:
            self.channel = channel_id(self._nonce, message.nonce)
            reply = ChannelAuth(self._nonce, message.nonce, self.me, sender)
            return Received(send=(reply,), opened=sender)
        assert self._peer_nonce is not None
        self.channel = channel_id(message.nonce, self._nonce)
        return Received(opened=sender)

    def _auth_problem(self, sender: str, auth: ChannelAuth) -> str | None:
        if sender != self.peer:
            who = "the node this channel was opened to" if self.opener else "the hello's sender"
            return f"signed by another node than {who}"
        if auth.sender != sender:
            return "names another sender than its signer"
        if auth.recipient != self.me:
            return "names another recipient"
        if auth.peer_nonce != self._nonce:
            return "does not answer this channel's nonce"
        if not self.opener and auth.nonce != self._peer_nonce:
            return "nonce differs from the hello's"
        if auth.nonce == self._nonce:
            return "echoes our own nonce as its own"
        return None

    def _framed(self, sender: str, messages: Sequence[Message]) -> Received:
        if sender != self.peer:
            return self._violation("wrong_sender", "envelope signed by another node")
        if not messages or not isinstance(messages[0], ChannelFrame):
            return self._violation("unframed", "envelope does not start with a ChannelFrame")
        frame = messages[0]
        if frame.channel != self.channel:
            return self._violation("wrong_channel", "frame belongs to another channel")
        if frame.recipient != self.me:
            return self._violation("wrong_recipient", "frame names another recipient")
        expected = self._received + 1
        if frame.seq != expected:
            return self._violation("bad_seq", f"frame sequence {frame.seq}, expected {expected}")
        rest = messages[1:]
        if any(isinstance(m, ChannelHello | ChannelAuth | ChannelFrame) for m in rest):
            return self._violation("nested_control", "channel control message inside a frame")
        self._received = expected
        return Received(deliver=tuple(rest))

    # ------------------------------------------------------------------ sending

    def seal(self) -> ChannelFrame:
        """The header of the next envelope this side sends (consumes a sequence number)."""
        frame = self.header(self.next_send_seq)
        self._sent += 1
        return frame

    def header(self, seq: int) -> ChannelFrame:
        """The header an envelope with sequence number ``seq`` carries (nothing consumed;
        call :meth:`advance` once the envelopes are sent)."""
        if self.phase is not Phase.OPEN or self.channel is None or self.peer is None:
            raise RuntimeError("the channel is not open")
        return ChannelFrame(self.channel, self.peer, seq)

    def advance(self, count: int) -> None:
        """``count`` envelopes stamped with :meth:`header` went out."""
        self._sent += count

    # ------------------------------------------------------------------ failing

    def _violation(self, kind: str, detail: str) -> Received:
        self._fail(kind)
        return Received(error=f"{kind}: {detail}")

    def _fail(self, kind: str) -> None:
        self.phase = Phase.FAILED
        self.counts[kind] += 1

    def __repr__(self) -> str:
        role = "opener" if self.opener else "listener"
        return f"<ChannelCore {role} {self.phase.value} sent={self._sent} got={self._received}>"


def connection_refusal(
    config: NodeConfig,
    *,
    open_total: int,
    handshaking: int,
    handshaking_from_address: int,
    open_from_address: int,
) -> str | None:
    """Why a new task socket from an address must be refused (None: accept it), given the
    sockets open now: in all, still in their handshake (in all and from that address), and
    from that address. The reasons, checked in this order: ``total``, ``unauthenticated``,
    ``unauthenticated_per_address``, ``per_address``."""
    if open_total >= config.task_max_connections:
        return "total"
    if handshaking >= config.task_max_unauthenticated:
        return "unauthenticated"
    if handshaking_from_address >= config.task_max_unauthenticated_per_address:
        return "unauthenticated_per_address"
    if open_from_address >= config.task_max_connections_per_address:
        return "per_address"
    return None


def per_peer_refused(config: NodeConfig, others: int) -> bool:
    """Whether a channel whose handshake just named a peer that already has ``others``
    usable channels must be closed (``task_max_connections_per_peer``)."""
    return others >= config.task_max_connections_per_peer
