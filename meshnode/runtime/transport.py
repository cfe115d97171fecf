"""UDP endpoint for SWIM: signed datagrams in, signed datagrams out.

Theory of operation
-------------------
Every datagram is one ``protocol`` envelope. Incoming bytes go through
``protocol.decode`` (bounded by ``MAX_DATAGRAM_BYTES``) in the protocol callback; a datagram
that fails for any reason is dropped and counted by error class, and nothing else happens.
Valid envelopes are handed to ``on_envelope`` synchronously (the core's ``receive`` is cheap
and non-blocking). Outgoing messages are encoded and signed here, so the cores only ever
deal in message objects.

The TCP side (aiohttp) is served through :class:`GuardedSite`: every inbound connection is
admitted by a :class:`ConnectionGuard`, which keeps the counts and applies the core's rule
(:func:`meshnode.core.channel.tcp_connection_refusal`: a limit per remote address and in
total, excess closed at once and counted) and must deliver its first request's headers within
``NodeConfig.http_header_timeout``; idle keep-alive connections close after
``NodeConfig.http_keepalive_timeout``. The total limit is kept below the process's
descriptor limit (raised to its hard limit at start) so that the node's own outgoing
connections keep working while a flood holds every inbound slot.

Sealing (the keyring, :mod:`protocol.keyring`): one :class:`WireSeal` per node is the
single place where peer bytes are sealed and opened — UDP datagrams here, the
``/v1/wire/*`` bodies (``api``, ``driver``) and the task WebSocket frames (``tasks``).
Input is opened *before* it is decoded; what to do with plaintext or sealed input is the
rule of :func:`meshnode.core.keys.inbound_rule`. A datagram that does not open costs at
most one AEAD attempt per installed key, then it is dropped and counted
(``seal`` in ``/v1/health``).

What stays here, and why: :func:`effective_connection_limit` sizes the total limit from
the process's descriptor limit (an operating-system resource, read at bind); the header
timeout is a socket deadline armed on the transport; the datagram size check is the
decoder's bound on raw bytes, before anything reaches a core.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable, Sequence
from typing import cast

from aiohttp import StreamReader, web

from meshnode.core.channel import tcp_connection_refusal
from meshnode.core.keys import Inbound, inbound_rule, seal_outgoing
from protocol import (
    Envelope,
    LimitExceeded,
    Message,
    RemoteProtocolError,
    Signer,
    Verifier,
    decode,
    encode,
)
from protocol import verify as ed25519_verify
from protocol.errors import SealRejected
from protocol.keyring import Keyring, is_sealed
from protocol.limits import MAX_DATAGRAM_BYTES, SEAL_OVERHEAD_BYTES

Address = tuple[str, int]
EnvelopeHandler = Callable[[Envelope, Address], None]


class WireSeal:
    """The node's keyring and its two switches, applied to every byte a peer sends or
    receives. Mutable: a key operation replaces the keyring (:meth:`replace`), and the
    listeners (persisting it to the keyring file) are told. Counts what it refuses."""

    def __init__(
        self,
        keyring: Keyring | None = None,
        *,
        encrypt_outgoing: bool = True,
        encrypt_incoming: bool = True,
    ) -> None:
        self._keyring = keyring
        self.encrypt_outgoing = encrypt_outgoing
        self.encrypt_incoming = encrypt_incoming
        self.listeners: list[Callable[[Keyring], None]] = []
        """Called with the new keyring after :meth:`replace` (persistence)."""
        self.counters: Counter[str] = Counter()
        """``opened``, ``sealed``, ``plaintext_accepted`` and one counter per refusal
        (``plaintext_refused``, ``sealed_without_keyring``, ``open_failed``)."""

    @property
    def keyring(self) -> Keyring | None:
        return self._keyring

    @property
    def sealing(self) -> bool:
        """Whether output is sealed now."""
        return seal_outgoing(
            have_keyring=self._keyring is not None, encrypt_outgoing=self.encrypt_outgoing
        )

    @property
    def overhead(self) -> int:
        """Bytes sealing adds to each output now (0 when not sealing)."""
        return SEAL_OVERHEAD_BYTES if self.sealing else 0

    def replace(self, keyring: Keyring) -> None:
        """Swap in ``keyring`` (after a key operation) and tell the listeners; a listener's
        failure is counted and does not undo the swap."""
        self._keyring = keyring
        for listener in list(self.listeners):
            try:
                listener(keyring)
            except Exception:  # one listener's failure never stops the others
                self.counters["listener_failed"] += 1

    def seal(self, data: bytes) -> bytes:
        """``data`` as it goes on the wire: sealed under the primary key when sealing."""
        ring = self._keyring
        if ring is None or not self.encrypt_outgoing:
            return data
        self.counters["sealed"] += 1
        return ring.seal(data)

    def open(self, data: bytes) -> bytes:
        """The plaintext of ``data`` received from a peer, before it is decoded. Raises
        :class:`~protocol.errors.SealRejected` (counted) when the rule refuses it or it
        opens under no installed key."""
        ring = self._keyring
        rule = inbound_rule(
            sealed=is_sealed(data),
            have_keyring=ring is not None,
            require_sealed=self.encrypt_incoming,
        )
        if rule is Inbound.PLAIN:
            if ring is not None:
                self.counters["plaintext_accepted"] += 1
            return data
        if rule is not Inbound.OPEN or ring is None:
            self.counters[rule.value] += 1
            raise SealRejected(f"input refused: {rule.value.replace('_', ' ')}")
        try:
            plain = ring.open(data)
        except SealRejected:
            self.counters["open_failed"] += 1
            raise
        self.counters["opened"] += 1
        return plain

    def snapshot(self) -> dict[str, object]:
        """For ``/v1/health``: whether sealing is on, the key fingerprints, the counters."""
        ring = self._keyring
        return {
            "keyring": ring is not None,
            "label": ring.label if ring is not None else None,
            "keys": ring.fingerprints() if ring is not None else [],
            "encrypt_outgoing": self.encrypt_outgoing,
            "encrypt_incoming": self.encrypt_incoming,
            **dict(sorted(self.counters.items())),
        }


class UdpEndpoint(asyncio.DatagramProtocol):
    """The node's UDP socket. Counts what it drops; never raises out of a callback."""

    def __init__(
        self,
        signer: Signer,
        on_envelope: EnvelopeHandler,
        *,
        verifier: Verifier = ed25519_verify,
        seal: WireSeal | None = None,
    ) -> None:
        self._seal = seal or WireSeal()
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
        seal: WireSeal | None = None,
    ) -> UdpEndpoint:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: cls(signer, on_envelope, verifier=verifier, seal=seal),
            local_addr=(host, port),
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
            plain = self._seal.open(data)
            envelope = decode(plain, verifier=self._verifier, max_bytes=MAX_DATAGRAM_BYTES)
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
        data = self._seal.seal(encode(list(messages), self._signer))
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


# ---------------------------------------------------------------------------- TCP bodies


class BodyTooLarge(LimitExceeded):
    """An HTTP body (a peer's request or reply) is over the cap for its route."""


async def read_capped(
    stream: StreamReader, cap: int, declared: int | None, chunk: int = 64 * 1024
) -> bytes:
    """Read an HTTP body of at most ``cap`` bytes from ``stream``. Raises
    :class:`BodyTooLarge` before reading anything when the declared Content-Length is over
    the cap, and as soon as more than ``cap`` bytes have arrived otherwise (the caller then
    drops the connection)."""
    if declared is not None and declared > cap:
        raise BodyTooLarge(f"body of {declared} bytes is over the {cap}-byte cap")
    parts: list[bytes] = []
    size = 0
    while True:
        part = await stream.read(chunk)
        if not part:
            break
        size += len(part)
        if size > cap:
            raise BodyTooLarge(f"body is over the {cap}-byte cap")
        parts.append(part)
    return b"".join(parts)


# ---------------------------------------------------------------------------- TCP server

NOFILE_RESERVE_MIN = 256
"""Fewest descriptors kept out of the inbound connection limit for the node's own use
(outgoing push-pulls, manifest fetches and task connections, the SQLite files, the UDP
socket, model files). The reserve is the larger of this and a quarter of the soft
``RLIMIT_NOFILE``."""

HEADER_END = b"\r\n\r\n"
"""End of an HTTP/1.1 request head: the first request's headers are complete when seen."""

HTTP_LISTEN_BACKLOG = 1_024
"""Pending (not yet accepted) TCP connections the kernel queues for the HTTP server."""


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the process's soft ``RLIMIT_NOFILE`` to its hard limit (best effort) and
    return ``(soft, hard)`` as they are afterwards. A node holds one descriptor per
    connection; the default soft limit (often 1024) is far below what a busy node needs
    and below what an attacker can open."""
    try:
        import resource
    except ImportError:  # not on this platform: nothing to raise
        return (1 << 20, 1 << 20)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):  # best effort: keep the old limit
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return int(soft), int(hard)


def effective_connection_limit(configured: int, nofile_soft: int) -> int:
    """The inbound connection limit that fits below ``nofile_soft`` descriptors with the
    reserve for the node's own files and outgoing connections (at least 1)."""
    reserve = max(NOFILE_RESERVE_MIN, nofile_soft // 4)
    return max(1, min(configured, nofile_soft - reserve))


class ConnectionGuard:
    """Admission of inbound TCP connections: at most ``per_address`` open at once from one
    remote IP and ``total`` in all; a connection must complete its first request's headers
    within ``header_timeout`` seconds. Refused and timed-out connections are closed at
    once and counted in :attr:`counters`."""

    def __init__(self, *, per_address: int, total: int, header_timeout: float) -> None:
        self.per_address = per_address
        self.total = total
        self.header_timeout = header_timeout
        self.open_by_address: Counter[str] = Counter()
        self.open = 0
        self.counters: Counter[str] = Counter()

    def admit(self, host: str) -> str | None:
        """Reserve a slot for a connection from ``host``; the reason if it is refused."""
        why = tcp_connection_refusal(
            open_total=self.open,
            open_from_address=self.open_by_address[host],
            total=self.total,
            per_address=self.per_address,
        )
        if why is not None:
            return why
        self.open += 1
        self.open_by_address[host] += 1
        self.counters["accepted"] += 1
        return None

    def release(self, host: str) -> None:
        self.open -= 1
        left = self.open_by_address[host] - 1
        if left > 0:
            self.open_by_address[host] = left
        else:
            del self.open_by_address[host]

    def snapshot(self) -> dict[str, int]:
        return {
            "open": self.open,
            "limit_total": self.total,
            "limit_per_address": self.per_address,
            **dict(sorted(self.counters.items())),
        }


class GuardedConnection(asyncio.Protocol):
    """One inbound TCP connection: admitted by a :class:`ConnectionGuard`, then handed to
    the aiohttp request handler it wraps (every callback is forwarded), with a deadline on
    the first request's headers."""

    def __init__(self, inner: asyncio.Protocol, guard: ConnectionGuard) -> None:
        self._inner = inner
        self._guard = guard
        self._host: str | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._tail = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A TCP server's transport (uvloop's is not an asyncio.Transport subclass).
        transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        host = str(peer[0]) if peer else "?"
        refused = self._guard.admit(host)
        if refused is not None:
            self._guard.counters[f"refused_{refused}"] += 1
            transport.abort()
            return
        self._host = host
        self._transport = transport
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._guard.header_timeout, self._header_timeout)
        self._inner.connection_made(transport)

    def _header_timeout(self) -> None:
        self._timer = None
        if self._transport is not None and not self._transport.is_closing():
            self._guard.counters["header_timeouts"] += 1
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._host is None:
            return
        if self._timer is not None:
            seen = self._tail + data
            if HEADER_END in seen:
                self._timer.cancel()
                self._timer = None
            else:
                self._tail = seen[-(len(HEADER_END) - 1) :]
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self._host is None:
            return None
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        if self._host is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._host is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        host, self._host = self._host, None
        if host is None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._transport = None
        self._guard.release(host)
        self._inner.connection_lost(exc)


class GuardedSite(web.BaseSite):
    """An aiohttp TCP site whose every connection passes a :class:`ConnectionGuard`."""

    __slots__ = ("_guard", "_host", "_port")

    def __init__(
        self, runner: web.BaseRunner, host: str, port: int, guard: ConnectionGuard
    ) -> None:
        super().__init__(runner, backlog=HTTP_LISTEN_BACKLOG)
        self._guard = guard
        self._host = host
        self._port = port

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        guard = self._guard
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: GuardedConnection(server(), guard),
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=True,
        )
