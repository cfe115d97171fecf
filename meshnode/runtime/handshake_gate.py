"""What a stranger can make a node buffer on a task WebSocket before it is authenticated.

Theory of operation
-------------------
A task connection (``GET /v1/ws/tasks``) carries frames of up to
``protocol.limits.MAX_SEALED_FRAME_BYTES`` (16 MiB) once its handshake
(:mod:`meshnode.core.channel`) has bound it to a peer. Before that, the opener sends
exactly two messages, its ``ChannelHello`` and its ``ChannelAuth``: one small signed (and
maybe sealed) envelope each, a few hundred bytes. aiohttp takes one ``max_msg_size`` for
the life of a socket and buffers a frame whole before the node can look at it, so without
a gate anyone who reaches the port could make the node hold 16 MiB per socket (times
``task_max_unauthenticated``) before a single signature is checked.

:class:`HandshakeGate` sits between the socket and aiohttp's WebSocket parser on the
listening side (:class:`GatedWebSocketResponse`). Until the service calls
:meth:`HandshakeGate.open` (the handshake verified the peer), it reads the frame headers
of everything that arrives, without copying payloads:

* each of the first :data:`HANDSHAKE_MESSAGES` data messages may hold at most
  :data:`MAX_HANDSHAKE_MESSAGE_BYTES` (summed over its fragments): a larger one closes
  the connection as soon as its header arrives, before its payload is buffered, and is
  counted (``task_handshake_too_large`` in ``/v1/health``'s drops);
* once both have arrived, the socket stops being read (the kernel's buffer holds what
  follows, not the node's memory) until the handshake opens the channel, or fails and
  the socket is closed. An honest opener that sends its first task right after its own
  ``ChannelAuth`` loses nothing: the frame is read once the channel is open.

So an unauthenticated socket costs at most two small messages plus one read of the
socket (256 KiB) however much the other side sends. Control frames (ping, pong, close)
are at most 125 bytes by the protocol and pass.

What stays here, and why: this is a socket-level byte budget, judged on raw frame
headers before anything is decoded; who may open a channel is the core's rule.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import web

from meshnode.runtime.logging import get_logger

MAX_HANDSHAKE_MESSAGE_BYTES = 4_096
"""Largest WebSocket message accepted on a task connection before its handshake completes,
bytes: 4 KiB. A handshake envelope (protocol version, the 32-byte sender key, one
``ChannelHello`` or ``ChannelAuth`` with two 16-byte nonces and one or two node ids, the
64-byte signature) packs to about 250 bytes, 290 sealed; 4 KiB leaves room for growth of
the handshake while a stranger's first frame costs a thousandth of the 16 MiB a framed
envelope may take."""
HANDSHAKE_MESSAGES = 2
"""Data messages the opener sends before the channel is open: its hello and its auth."""

_CONTROL_OPCODES = 0x8
"""WebSocket opcodes at or above this are control frames (close, ping, pong)."""

log = get_logger("meshnode.tasks")


class HandshakeGate:
    """Feeds aiohttp's WebSocket parser, holding the other side to the pre-handshake
    budget (see the module docstring). ``on_refused`` is called once with the reason
    when the budget is broken (the connection is then closed)."""

    __slots__ = (
        "_frame_ends_message",
        "_header",
        "_message_bytes",
        "_messages",
        "_on_refused",
        "_parser",
        "_skip",
        "_transport",
        "opened",
        "paused",
        "refused",
    )

    def __init__(
        self, parser: Any, transport: asyncio.Transport | None, on_refused: Callable[[str], None]
    ) -> None:
        self._parser = parser
        self._transport = transport
        self._on_refused = on_refused
        self._header = bytearray()
        self._skip = 0
        self._frame_ends_message = False
        self._message_bytes = 0
        self._messages = 0
        self.opened = False
        """Set by :meth:`open`: the handshake verified the peer; frames pass unread."""
        self.paused = False
        """The socket is not being read until the handshake ends."""
        self.refused = False

    def open(self) -> None:
        """The handshake verified the peer: stop checking and read the socket again."""
        self.opened = True
        if self.paused:
            self.paused = False
            if self._transport is not None and not self._transport.is_closing():
                self._transport.resume_reading()

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if self.refused:
            return True, b""
        if not self.opened and self._messages < HANDSHAKE_MESSAGES:
            problem = self._inspect(data)
            if problem is not None:
                self.refused = True
                self._on_refused(problem)
                self._parser.feed_eof()  # the reader sees the end at once
                if self._transport is not None:
                    self._transport.abort()  # whatever else is on its way is dropped
                return True, b""
        result: tuple[bool, bytes] = self._parser.feed_data(data)
        return result

    def feed_eof(self) -> None:
        if not self.refused:
            self._parser.feed_eof()

    def _inspect(self, data: bytes) -> str | None:
        """Walk the frame headers in ``data``; the reason to refuse, or None."""
        i, n = 0, len(data)
        while i < n and self._messages < HANDSHAKE_MESSAGES:
            if self._skip:
                step = min(self._skip, n - i)
                self._skip -= step
                i += step
                if self._skip == 0 and self._frame_ends_message:
                    self._message_done()
                continue
            self._header.append(data[i])
            i += 1
            needed = _header_length(self._header)
            if needed is None or len(self._header) < needed:
                continue
            opcode, fin, length = _parse_header(self._header)
            self._header.clear()
            ends = False
            if opcode < _CONTROL_OPCODES:
                self._message_bytes += length
                if self._message_bytes > MAX_HANDSHAKE_MESSAGE_BYTES:
                    return (
                        f"a message of over {MAX_HANDSHAKE_MESSAGE_BYTES} bytes before the "
                        "handshake"
                    )
                ends = fin
            self._skip, self._frame_ends_message = length, ends
            if length == 0 and ends:
                self._message_done()
        if self._messages >= HANDSHAKE_MESSAGES and not self.opened and not self.paused:
            self.paused = True
            if self._transport is not None and not self._transport.is_closing():
                self._transport.pause_reading()
        return None

    def _message_done(self) -> None:
        self._messages += 1
        self._message_bytes = 0
        self._frame_ends_message = False


def _header_length(header: bytearray) -> int | None:
    """Bytes of the frame header that starts ``header`` (None: not known yet)."""
    if len(header) < 2:
        return None
    length7 = header[1] & 0x7F
    extended = 2 if length7 == 126 else 8 if length7 == 127 else 0
    return 2 + extended + (4 if header[1] & 0x80 else 0)


def _parse_header(header: bytearray) -> tuple[int, bool, int]:
    """``(opcode, fin, payload length)`` of a complete frame header."""
    opcode, fin = header[0] & 0x0F, bool(header[0] & 0x80)
    length = header[1] & 0x7F
    if length == 126:
        length = int.from_bytes(header[2:4], "big")
    elif length == 127:
        length = int.from_bytes(header[2:10], "big")
    return opcode, fin, length


class GatedWebSocketResponse(web.WebSocketResponse):
    """The listening side of a task connection, read through a :class:`HandshakeGate`
    (:attr:`gate`, set once the upgrade is done) until the handshake opens it.

    aiohttp (3.14) hands the socket's bytes to one parser object on the request's
    protocol; the gate is put in its place, and bytes that arrived with the upgrade
    request are fed through the gate too. If a later aiohttp keeps them elsewhere, the
    gate is left out (logged once) and ``tests/adversarial/test_preauth.py`` fails."""

    def __init__(self, on_refused: Callable[[str], None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._on_refused = on_refused
        self.gate: HandshakeGate | None = None

    def _post_start(self, request: web.BaseRequest, protocol: Any, writer: Any) -> None:
        handler = request.protocol
        if not (hasattr(handler, "_message_tail") and hasattr(handler, "_payload_parser")):
            super()._post_start(request, protocol, writer)
            _warn_ungated()
            return
        tail: bytes = handler._message_tail
        handler._message_tail = b""
        super()._post_start(request, protocol, writer)
        gate = HandshakeGate(handler._payload_parser, request.transport, self._on_refused)
        handler._payload_parser = gate
        self.gate = gate
        if tail:
            eof, _ = gate.feed_data(tail)
            if eof:
                handler.close()


_warned: list[bool] = []


def _warn_ungated() -> None:
    if not _warned:
        _warned.append(True)
        log.warning(
            "task_handshake_gate_unavailable",
            error="this aiohttp keeps its WebSocket parser elsewhere: pre-handshake frames "
            "are capped at the full frame size only",
        )
