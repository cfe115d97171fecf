"""UDP endpoint for SWIM: signed datagrams in, signed datagrams out.

Theory of operation
-------------------
Every datagram is one ``protocol`` envelope. Incoming bytes go through
``protocol.decode`` (bounded by ``MAX_DATAGRAM_BYTES``) in the protocol callback; a datagram
that fails for any reason is dropped and counted by error class, and nothing else happens.
Valid envelopes are handed to ``on_envelope`` synchronously (the core's ``receive`` is cheap
and non-blocking). Outgoing messages are encoded and signed here, so the cores only ever
deal in message objects.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Sequence

from protocol import Envelope, Message, RemoteProtocolError, Signer, Verifier, decode, encode
from protocol import verify as ed25519_verify
from protocol.limits import MAX_DATAGRAM_BYTES

Address = tuple[str, int]
EnvelopeHandler = Callable[[Envelope, Address], None]


class UdpEndpoint(asyncio.DatagramProtocol):
    """The node's UDP socket. Counts what it drops; never raises out of a callback."""

    def __init__(
        self,
        signer: Signer,
        on_envelope: EnvelopeHandler,
        *,
        verifier: Verifier = ed25519_verify,
    ) -> None:
        self._signer = signer
        self._on_envelope = on_envelope
        self._verifier = verifier
        self._transport: asyncio.DatagramTransport | None = None
        self.dropped: Counter[str] = Counter()
        self.received = 0
        self.sent = 0
        self.bytes_sent = 0
        self.bytes_received = 0

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        signer: Signer,
        on_envelope: EnvelopeHandler,
        *,
        verifier: Verifier = ed25519_verify,
    ) -> UdpEndpoint:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: cls(signer, on_envelope, verifier=verifier), local_addr=(host, port)
        )
        protocol._transport = transport  # connection_made runs later, via call_soon
        return protocol

    # asyncio callbacks ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport is not an asyncio.DatagramTransport subclass.
        self._transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.bytes_received += len(data)
        try:
            envelope = decode(data, verifier=self._verifier, max_bytes=MAX_DATAGRAM_BYTES)
        except RemoteProtocolError as exc:
            self.dropped[type(exc).__name__] += 1
            return
        self.received += 1
        self._on_envelope(envelope, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and friends: the failure detector handles silence.
        self.dropped["socket_error"] += 1

    # sending ---------------------------------------------------------------------------

    def send(self, addr: Address, messages: Sequence[Message]) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        data = encode(list(messages), self._signer)
        self._transport.sendto(data, addr)
        self.sent += 1
        self.bytes_sent += len(data)

    def send_raw(self, addr: Address, data: bytes) -> None:
        """Send pre-encoded bytes (tests of hostile input use this)."""
        if self._transport is not None and not self._transport.is_closing():
            self._transport.sendto(data, addr)

    @property
    def local_address(self) -> Address:
        assert self._transport is not None
        host, port = self._transport.get_extra_info("sockname")[:2]
        return str(host), int(port)

    @property
    def family(self) -> int:
        """The socket's address family (``socket.AF_INET`` or ``socket.AF_INET6``)."""
        assert self._transport is not None
        return int(self._transport.get_extra_info("socket").family)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
