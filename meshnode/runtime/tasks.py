"""Tasks between peers: pooled WebSockets, the provider loop and delegations.

Theory of operation
-------------------
Every task message travels in a signed ``protocol`` envelope over **one pooled connection
per peer pair** (``GET /v1/ws/tasks``), one envelope per binary WebSocket frame. Either side
may have opened it. A connection is bound to a peer only by the challenge–response
handshake of :mod:`meshnode.core.channel` (fresh nonces from both sides, each answered in
an envelope signed by the other, naming both ids; the opener also checks that the listener
is the node it meant to reach); only then is it registered under the verified node id, and
both directions multiplex any number of tasks on it. Every later envelope starts with a
``ChannelFrame`` naming the channel, the recipient and the next sequence number of its
direction; a replayed, reordered or redirected envelope is a violation that is counted
and closes the channel. A socket that does not finish the handshake within
``task_handshake_timeout`` is closed.

Caps (``NodeConfig``): ``task_max_connections`` open sockets in all,
``task_max_unauthenticated`` of them still in their handshake (at most
``task_max_unauthenticated_per_address`` from one address) and
``task_max_connections_per_address`` from one remote address (refused with HTTP 503 before
the upgrade), and ``task_max_connections_per_peer`` authenticated channels per peer id (a
channel beyond it is closed once the handshake names its peer). Each refusal is counted.
Before its handshake completes a socket gets one chance: a first envelope that does not
decode, or is not a valid handshake step, closes it; and it may send only two small
messages (:mod:`meshnode.runtime.handshake_gate`: at most
``MAX_HANDSHAKE_MESSAGE_BYTES`` each, checked on frame headers before a payload is
buffered; nothing more is read until the handshake opens the channel).

With a keyring, every frame is sealed by the node's
:class:`~meshnode.runtime.transport.WireSeal` and opened before it is decoded; a frame
that does not open counts as one that does not decode (``task_SealRejected`` in drops).

A connection that drops is reported to the core (``peer_failed``) unless another live
connection to the same peer remains, so requesters move on without waiting for a timeout.
SWIM declaring the peer dead is an accusation that anyone in the mesh may make, so the
core asks for it to be checked on the channel itself (``CheckPeer(node, token)``): this
service sends ``ChannelPing(token)`` on the peer's channel (or reports ``check_unsent``
when none is open) and hands every ``ChannelPong`` the peer sends to the core
(``peer_answered``). The core alone decides what answer counts, the timeout
(``task_liveness_timeout``) and when the peer has failed; it then emits ``CloseChannels``
and the channels are closed without being reported again. A peer that left (its own
signed Leave) fails at once: the core decides that alone. The cap on sockets this node
opens itself is the core's too (:func:`meshnode.core.channel.outbound_refused`).

Batching. Messages are not written one by one: each connection has an outbox and a sender
task. Everything queued for a connection while the event loop runs one round of ready
callbacks goes out in one signed envelope (at most ``MAX_MESSAGES_PER_ENVELOPE`` messages
and ``MAX_FRAME_BYTES``, split otherwise). A provider starts a handler *before* queueing its
ACCEPTED response, so a handler that finishes at once sends its signed result in the same
frame; 32 concurrent requests from one requester travel as one frame, and so do their
answers. That is one signature and one verification per frame instead of per message.
Messages are converted to wire form when queued (the core has already refused a task input
that cannot be encoded, and turns an output that cannot into a failed result).

Deciding is done by the node's :class:`~meshnode.core.node.NodeCore`; this service
decides nothing. It hands the core every task message a verified peer sent
(``task_message``), every lost channel (``peer_failed``) and every handler's end
(``handler_done``), and carries out the core's task effects, which the driver routes here:
``SendTask`` (queued on the channel the request came in on while it is usable, else on the
pooled channel, else on a new one; ``send_failed`` if none can be opened), ``RunHandler``
(the capability's coroutine, in a task of its own, with the task's deadline in a context
variable), ``StopHandler`` (cancel it), ``CheckPeer`` (a ``ChannelPing`` on the peer's
channel, see above), ``CloseChannels`` and ``DelegationFinished`` (resolves the caller of
:meth:`delegate`).
Timers are the driver's: one, at ``NodeCore.next_deadline()``.

A handler that raises :class:`~meshnode.errors.InvalidInput` is reported to the core as a
refused input (``handler_done(..., invalid_input=True)``): the signed result says
``invalid_input``, and the requester neither blames this node nor asks another. Any other
exception is the task's failure. :meth:`TaskService.delegate` passes the caller's
expectation (expected output schema, evaluator) to the core, which scores the result by it;
a ``DelegationError`` for a refused input has ``invalid_input`` set.

Nested delegations inherit the remaining deadline: a handler runs with a context variable
holding its task's deadline, and :meth:`TaskService.delegate` passes it to the core, which
never asks for more.

What stays here, and why: ``WS_HEARTBEAT_S``, ``CONNECT_TIMEOUT_S``, ``CLOSE_TIMEOUT_S``
and ``TIMER_SLACK_S`` are socket options and timer slack; which open channel carries a
message (the one its request came in on, else the pooled one) is a transport choice; the
handshake deadline is armed here but judged by :meth:`ChannelCore.expired`, and every cap
on sockets is a :mod:`meshnode.core.channel` rule.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import aiohttp
from aiohttp import web

from meshnode.capability import CapabilitySpec
from meshnode.core.breaker import BreakerBoard
from meshnode.core.channel import (
    NONCE_BYTES,
    ChannelCore,
    connection_refusal,
    outbound_refused,
    per_peer_refused,
)
from meshnode.core.config import NodeConfig, format_address
from meshnode.core.delegation import COUNTER_RATIO as COUNTER_RATIO  # its old home
from meshnode.core.effects import (
    Attempt,
    CheckPeer,
    CloseChannels,
    DelegationFinished,
    Done,
    RunHandler,
    SendTask,
    StopHandler,
)
from meshnode.core.evaluator import Expectation, OutputEvaluator
from meshnode.core.node import NodeCore
from meshnode.core.provider import ProviderCore
from meshnode.core.tracing import SpanStatus
from meshnode.errors import DelegationError as DelegationError  # public home: meshnode
from meshnode.errors import InvalidInput
from meshnode.runtime.handshake_gate import GatedWebSocketResponse
from meshnode.runtime.logging import get_logger
from meshnode.runtime.tracing import Tracer, provider_span
from meshnode.runtime.transport import WireSeal
from protocol import (
    LocalProtocolError,
    Message,
    RemoteProtocolError,
    Signer,
    TaskResult,
    Verifier,
    decode,
    short_id,
)
from protocol.codec import encode, encode_wire_batch, message_to_wire
from protocol.limits import MAX_FRAME_BYTES, MAX_MESSAGES_PER_ENVELOPE, MAX_SEALED_FRAME_BYTES
from protocol.messages import ChannelPing, ChannelPong

WS_PATH = "/v1/ws/tasks"
WS_HEARTBEAT_S = 10.0
"""WebSocket ping interval; a peer silent for two of them is treated as gone."""
CONNECT_TIMEOUT_S = 3.0
"""Longest wait to open a task connection to a peer."""
CLOSE_TIMEOUT_S = 1.0
"""Longest wait for a peer to acknowledge the close of a task connection on shutdown."""
TIMER_SLACK_S = 0.001
"""Added to every timer so that it fires at or after the deadline it serves (the loop's
monotonic clock and ``time.time()`` tick differently)."""

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "meshnode_task_deadline", default=None
)

log = get_logger("meshnode.tasks")

Wire = list[Any]
"""One message in wire form (``protocol.codec.message_to_wire``)."""


@dataclasses.dataclass(frozen=True, slots=True)
class DelegationResult:
    """What ``delegate`` returns: the output, who produced it and how it went.
    ``quality`` is the requester's score of it, or None when nothing the requester trusts
    checked it (no expectation, evaluator or judge: see :mod:`meshnode.core.evaluator`)."""

    output: Any
    provider: str
    capability: str
    task_id: str
    quality: float | None
    attempts: tuple[Attempt, ...]
    elapsed_ms: float
    result: TaskResult
    trace_id: str | None = None
    """The trace this delegation was recorded under (``GET /v1/traces/{trace_id}``)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "trace_id": self.trace_id,
            "output": self.output,
            "provider": self.provider,
            "capability": self.capability,
            "task_id": self.task_id,
            "quality": self.quality,
            "elapsed_ms": round(self.elapsed_ms, 3),
            "attempts": [attempt_json(a) for a in self.attempts],
        }


def attempt_json(a: Attempt) -> dict[str, Any]:
    return {
        "node": a.node,
        "outcome": a.outcome.name.lower(),
        "detail": a.detail,
        "duration_ms": round(a.duration_ms, 3),
    }


WebSocket = web.WebSocketResponse | aiohttp.ClientWebSocketResponse


class _Channel:
    """One WebSocket to a peer (client or server side) with its outbox and sender task.

    ``peer`` is None until the handshake has verified who is on the other end."""

    __slots__ = (
        "address",
        "alive",
        "core",
        "handshake_timer",
        "outbox",
        "peer",
        "ready",
        "sender",
        "wake",
        "ws",
    )

    def __init__(self, ws: WebSocket, core: ChannelCore, address: str) -> None:
        self.ws = ws
        self.core = core
        self.address = address
        self.peer: str | None = None
        self.alive = True
        """False once the reader saw the connection end (or a send failed)."""
        self.outbox: list[Wire] = []
        self.wake = asyncio.Event()
        self.ready = asyncio.Event()
        """Set when the handshake completes (or the channel is lost before it does)."""
        self.sender: asyncio.Task[None] | None = None
        self.handshake_timer: asyncio.TimerHandle | None = None

    @property
    def usable(self) -> bool:
        return self.alive and not self.ws.closed and self.core.is_open

    def queue(self, wire: Sequence[Wire]) -> None:
        """Queue messages (already in wire form) for the next frame."""
        self.outbox.extend(wire)
        self.wake.set()

    def __repr__(self) -> str:
        peer = short_id(self.peer) if self.peer else "?"
        return (
            f"<_Channel {peer} {self.core.phase.value} alive={self.alive} "
            f"queued={len(self.outbox)}>"
        )


class TaskService:
    """The task side of one node: the connection pool, handler tasks and the callers of
    :meth:`delegate`. Every decision is the core's (see the module docstring)."""

    def __init__(
        self,
        core: NodeCore,
        *,
        config: NodeConfig,
        signer: Signer,
        verifier: Verifier,
        session: Callable[[], aiohttp.ClientSession],
        specs: Callable[[], Mapping[str, CapabilitySpec]],
        poke: Callable[[], None],
        count_drop: Callable[[str], None],
        seal: WireSeal | None = None,
    ) -> None:
        self.core = core
        self._seal = seal or WireSeal()
        self.config = config
        self._signer = signer
        self._verifier = verifier
        self._session = session
        self._specs = specs
        self._poke = poke
        self._count_drop = count_drop
        self._channels: dict[str, _Channel] = {}
        self._open: set[_Channel] = set()
        self._connecting: dict[str, asyncio.Lock] = {}
        self._handlers: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._origin: dict[tuple[str, str], _Channel] = {}
        """(requester, task id) -> the channel its request came in on, while it runs."""
        self._inbound: _Channel | None = None
        """The channel whose frame is being handed to the core right now."""
        self._waiting: dict[str, asyncio.Future[DelegationFinished]] = {}
        self.local_inbox: Callable[[Message], None] | None = None
        """Receives the task messages the core addresses to this node itself (answers to
        requests this node made of its own provider, as the A2A server does); without
        one they are dropped."""
        self.tracer: Tracer | None = None
        """Records a server span per handler run (set by the node)."""
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        self._counters: dict[str, int] = {
            "frames_sent": 0,
            "frames_received": 0,
            "frames_dropped": 0,
            "channels_opened": 0,
            "channel_violations": 0,
            "handshake_timeouts": 0,
            "handshake_too_large": 0,
            "connections_refused": 0,
        }

    # ------------------------------------------------------------------ views

    @property
    def counters(self) -> dict[str, int]:
        """The channel counters and the core's task counters (delegations, tasks served)."""
        return {**self.core.task_counters, **self._counters}

    @property
    def provider(self) -> ProviderCore:
        return self.core.provider

    @property
    def breakers(self) -> BreakerBoard:
        return self.core.breakers

    @property
    def evaluator(self) -> OutputEvaluator:
        return self.core.evaluator

    @property
    def in_flight(self) -> int:
        return self.core.in_flight

    def waiting_on(self, peer: str) -> bool:
        """Is one of our delegations negotiating with ``peer`` or waiting for its result?"""
        return self.core.waiting_on(peer)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Nothing to arm: the driver's timer serves the core's deadlines."""

    async def close(self) -> None:
        self._closed = True
        self.core.close_tasks(time.time())
        self._poke()
        # Close every connection first (readers still running, so the close handshake can
        # complete); a reader cancelled first would drop its channel from the pool and
        # leave its socket open.
        if self._open:
            await asyncio.gather(
                *(_close_ws(c.ws) for c in list(self._open)), return_exceptions=True
            )
        tasks = [*self._tasks, *self._handlers.values()]
        self._handlers.clear()
        for _ in range(3):  # tasks spawned while the first ones wind down, if any
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            tasks = list(self._tasks)
            if not tasks:
                break
        self._channels.clear()
        self._open.clear()
        self._origin.clear()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def capabilities_changed(self) -> None:
        self.core.set_capabilities({n: s.capability for n, s in self._specs().items()})

    # ------------------------------------------------------------------ connections

    def _refusal(self, address: str) -> str | None:
        """Why a new connection from ``address`` must be refused, if it must (the core's
        rule, :func:`meshnode.core.channel.connection_refusal`, on our counts)."""
        pending = [c for c in self._open if not c.core.is_open]
        return connection_refusal(
            self.config,
            open_total=len(self._open),
            handshaking=len(pending),
            handshaking_from_address=sum(1 for c in pending if c.address == address),
            open_from_address=sum(1 for c in self._open if c.address == address),
        )

    def _refuse(self, why: str) -> None:
        self._counters["connections_refused"] += 1
        self._count_drop(f"task_connection_{why}")

    async def handle_ws(self, request: web.Request) -> web.StreamResponse:
        """Server side of a task connection."""
        address = request.remote or "?"
        why = self._refusal(address)
        if why is not None or self._closed:
            self._refuse(why or "closing")
            return web.Response(status=503, text=f"task connection refused: {why or 'closing'}")
        ws = GatedWebSocketResponse(
            self._handshake_refused, max_msg_size=MAX_SEALED_FRAME_BYTES, heartbeat=WS_HEARTBEAT_S
        )
        channel = self._adopt(ws, None, address)
        try:
            await ws.prepare(request)
            await self._read(channel)
        finally:
            self._channel_lost(channel, "connection closed")
            await _close_ws(ws)
        return ws

    def _handshake_refused(self, reason: str) -> None:
        """A socket broke the pre-handshake budget (:mod:`.handshake_gate`)."""
        self._counters["handshake_too_large"] += 1
        self._count_drop("task_handshake_too_large")
        log.info("task_handshake_too_large", error=reason)

    def _adopt(self, ws: WebSocket, peer: str | None, address: str) -> _Channel:
        """Track a new socket: a channel in its handshake, with its sender and timer."""
        timeout = self.config.task_handshake_timeout
        core = ChannelCore(
            self.core.node_id,
            os.urandom(NONCE_BYTES),
            peer=peer,
            handshake_deadline=time.time() + timeout,
        )
        channel = _Channel(ws, core, address)
        self._open.add(channel)
        channel.sender = self._spawn(self._send_loop(channel))
        channel.handshake_timer = asyncio.get_running_loop().call_later(
            timeout + TIMER_SLACK_S, self._handshake_timer, channel
        )
        return channel

    def _handshake_timer(self, channel: _Channel) -> None:
        channel.handshake_timer = None
        if not channel.alive or channel.core.is_open:
            return
        now = time.time()
        if not channel.core.expired(now):  # the loop's clock ran ahead of time.time()
            channel.handshake_timer = asyncio.get_running_loop().call_later(
                channel.core.handshake_deadline - now + TIMER_SLACK_S,
                self._handshake_timer,
                channel,
            )
            return
        self._counters["handshake_timeouts"] += 1
        self._count_drop("task_handshake_timeout")
        self._spawn(_close_ws(channel.ws))
        self._channel_lost(channel, "handshake timed out")

    def _live_channel(self, peer: str) -> _Channel | None:
        channel = self._channels.get(peer)
        return channel if channel is not None and channel.usable else None

    async def _channel(self, peer: str) -> _Channel:
        channel = self._live_channel(peer)
        if channel is not None:
            return channel
        lock = self._connecting.setdefault(peer, asyncio.Lock())
        async with lock:
            channel = self._live_channel(peer)
            if channel is not None:
                return channel
            if self._closed:
                raise ConnectionError("node is closing")
            member = self.core.membership.member(peer)
            if member is None:
                raise ConnectionError(f"unknown peer {short_id(peer)}")
            if outbound_refused(self.config, len(self._open)):
                self._refuse("total")
                raise ConnectionError("too many task connections open")
            ws = await asyncio.wait_for(
                self._session().ws_connect(
                    f"http://{format_address(member.address)}{WS_PATH}",
                    max_msg_size=MAX_SEALED_FRAME_BYTES,
                    heartbeat=WS_HEARTBEAT_S,
                ),
                CONNECT_TIMEOUT_S,
            )
            channel = self._adopt(ws, peer, member.address[0])
            try:
                await ws.send_bytes(self._seal.seal(encode(channel.core.start(), self._signer)))
            except (ConnectionError, aiohttp.ClientError, RuntimeError, OSError) as exc:
                self._channel_lost(channel, "handshake send failed")
                self._spawn(_close_ws(ws))
                raise ConnectionError(f"handshake with {short_id(peer)} failed: {exc}") from None
            self._spawn(self._read_client(channel))
            await channel.ready.wait()  # set on open or loss; the handshake timer bounds it
            if not channel.usable:
                raise ConnectionError(f"handshake with {short_id(peer)} failed")
            return channel

    async def _read_client(self, channel: _Channel) -> None:
        try:
            await self._read(channel)
        finally:
            self._channel_lost(channel, "connection closed")
            await _close_ws(channel.ws)

    async def _read(self, channel: _Channel) -> None:
        """Read envelopes until the socket ends or the peer breaks the channel's rules."""
        async for msg in channel.ws:
            if msg.type is not aiohttp.WSMsgType.BINARY:
                continue
            self._counters["frames_received"] += 1
            try:
                envelope = decode(self._seal.open(msg.data), verifier=self._verifier)
            except RemoteProtocolError as exc:
                self._counters["frames_dropped"] += 1
                self._count_drop(f"task_{type(exc).__name__}")
                if not channel.core.is_open:
                    # Before the handshake nobody has earned a second try.
                    self._counters["channel_violations"] += 1
                    return
                continue
            got = channel.core.receive(envelope.sender, envelope.messages)
            if got.error is not None:
                self._counters["frames_dropped"] += 1
                self._counters["channel_violations"] += 1
                self._count_drop("task_channel_violation")
                log.info(
                    "task_channel_violation",
                    peer=short_id(envelope.sender),
                    address=channel.address,
                    error=got.error,
                )
                return
            if got.send:
                try:
                    await channel.ws.send_bytes(
                        self._seal.seal(encode(list(got.send), self._signer))
                    )
                except (ConnectionError, aiohttp.ClientError, RuntimeError, OSError) as exc:
                    log.debug("task_handshake_send_failed", error=str(exc))
                    return
            if got.opened is not None and not self._register(channel, got.opened):
                return
            if got.deliver and channel.peer is not None:
                self._dispatch(channel.peer, got.deliver, channel)

    def _register(self, channel: _Channel, peer: str) -> bool:
        """The handshake verified ``peer``: pool the channel (within the per-peer cap)."""
        if channel.handshake_timer is not None:
            channel.handshake_timer.cancel()
            channel.handshake_timer = None
        others = sum(1 for c in self._open if c is not channel and c.peer == peer and c.usable)
        if per_peer_refused(self.config, others):
            self._refuse("per_peer")
            return False
        channel.peer = peer
        if isinstance(channel.ws, GatedWebSocketResponse) and channel.ws.gate is not None:
            channel.ws.gate.open()  # full-size frames from now on
        self._counters["channels_opened"] += 1
        if self._live_channel(peer) is None:
            self._channels[peer] = channel
        channel.ready.set()
        return True

    def _channel_lost(self, channel: _Channel, reason: str, *, report: bool = True) -> None:
        """Forget a channel that ended; tell the core (``peer_failed``) when it was the
        peer's last usable one, unless ``report`` is False (the core closed it)."""
        if not channel.alive:
            return
        channel.alive = False
        channel.ready.set()
        channel.outbox.clear()
        self._open.discard(channel)
        if channel.handshake_timer is not None:
            channel.handshake_timer.cancel()
            channel.handshake_timer = None
        if channel.sender is not None:
            channel.sender.cancel()
        peer = channel.peer
        if peer is None:
            return
        survivor = next((c for c in self._open if c.peer == peer and c.usable), None)
        if self._channels.get(peer) is channel:
            if survivor is None:
                del self._channels[peer]
            else:
                self._channels[peer] = survivor
        if survivor is None and report and not self._closed:
            self.core.peer_failed(peer, reason, time.time())
            self._poke()

    async def _send_loop(self, channel: _Channel) -> None:
        """Write the outbox: everything queued in one loop round goes in one envelope."""
        ws = channel.ws
        await channel.ready.wait()
        while channel.usable:
            await channel.wake.wait()
            # Let the tasks made ready in the same round (handlers that finish at once,
            # other delegations) add their messages to this frame.
            await asyncio.sleep(0)
            channel.wake.clear()
            batch, channel.outbox = channel.outbox, []
            try:
                frames = _frames(batch, self._signer, channel.core)
                for frame in frames:
                    await ws.send_bytes(self._seal.seal(frame))
                    self._counters["frames_sent"] += 1
            except (ConnectionError, aiohttp.ClientError, RuntimeError, OSError) as exc:
                log.debug("task_send_failed", peer=short_id(channel.peer or ""), error=str(exc))
                self._spawn(_close_ws(ws))
                self._channel_lost(channel, f"send failed: {exc}")
                return

    # ------------------------------------------------------------------ inbound

    def _dispatch(self, sender: str, messages: Sequence[Message], channel: _Channel) -> None:
        """Hand one frame's messages to the core (channel pings are answered here)."""
        now = time.time()
        core = self.core
        self._inbound = channel
        try:
            for message in messages:
                if isinstance(message, ChannelPing):
                    channel.queue([message_to_wire(ChannelPong(message.token))])
                elif isinstance(message, ChannelPong):
                    if core.peer_answered(sender, message.token, now):
                        log.info("dead_refuted_on_channel", peer=short_id(sender))
                else:
                    core.task_message(sender, message, now)
            self._poke()  # replies leave while the channel is still the preferred one
        finally:
            self._inbound = None

    # ------------------------------------------------------------------ core effects

    def carry_out(self, effect: object) -> None:
        """Carry out one task effect of the core (the driver routes them here)."""
        if isinstance(effect, SendTask):
            self._send(effect)
        elif isinstance(effect, RunHandler):
            self._start_handler(effect)
        elif isinstance(effect, StopHandler):
            key = (effect.requester, effect.task_id)
            self._origin.pop(key, None)
            handler = self._handlers.pop(key, None)
            if handler is not None:
                handler.cancel()
        elif isinstance(effect, CheckPeer):
            self._check_peer(effect)
        elif isinstance(effect, CloseChannels):
            for channel in [c for c in self._open if c.peer == effect.node]:
                self._spawn(_close_ws(channel.ws))
                self._channel_lost(channel, effect.reason, report=False)
        elif isinstance(effect, DelegationFinished):
            waiter = self._waiting.pop(effect.task_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(effect)

    def _send(self, effect: SendTask) -> None:
        """Queue a message to ``effect.node``: on the channel the task's request came in on
        (or the frame being handled) while it is usable, else on the pooled channel, else
        on a new one."""
        node, message = effect.node, effect.message
        if node == self.core.node_id:  # our own provider answering us: no socket
            if self.local_inbox is not None:
                self.local_inbox(message)
            return
        wire = message_to_wire(message)
        key = (node, effect.task_id)
        prefer = self._inbound
        if prefer is None or prefer.peer != node:
            prefer = self._origin.get(key)
        if isinstance(message, TaskResult):
            self._origin.pop(key, None)  # the task's last word
        if prefer is not None and prefer.usable and prefer.peer == node:
            prefer.queue([wire])
            return
        channel = self._live_channel(node)
        if channel is not None:
            channel.queue([wire])
            return
        if self._closed:
            return
        self._spawn(self._connect_and_send(effect, wire))

    async def _connect_and_send(self, effect: SendTask, wire: Wire) -> None:
        node = effect.node
        try:
            channel = await self._channel(node)
        except (ConnectionError, aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.debug("task_send_failed", peer=short_id(node), error=str(exc))
            self.core.send_failed(node, effect.task_id, str(exc) or "unreachable", time.time())
            self._poke()
            return
        if not self.core.send_still_due(effect):
            return  # the delegation moved on while we connected
        channel.queue([wire])

    def _check_peer(self, check: CheckPeer) -> None:
        """Ping ``check.node``'s task channel with the core's token (the pong goes back to
        the core in :meth:`_dispatch`); tell the core if no channel is open."""
        channel = self._live_channel(check.node)
        if channel is None:
            self.core.check_unsent(check.node, time.time())
            self._poke()
            return
        channel.queue([message_to_wire(ChannelPing(check.token))])

    def peer_failed(self, peer: str, reason: str) -> None:
        """A connection dropped or ``peer`` is confirmed gone: fail its waits at once."""
        self.core.peer_failed(peer, reason, time.time())
        self._poke()

    # ------------------------------------------------------------------ handlers

    def _start_handler(self, run: RunHandler) -> None:
        key = (run.requester, run.task_id)
        inbound = self._inbound
        if inbound is not None and inbound.peer == run.requester:
            self._origin[key] = inbound
        spec = self._specs().get(run.capability)
        self._handlers[key] = self._spawn(self._run_handler(run, spec))

    async def _run_handler(self, run: RunHandler, spec: CapabilitySpec | None) -> None:
        key = (run.requester, run.task_id)
        output: Any = None
        error: str | None = None
        invalid_input = False
        _deadline.set(run.deadline_at)
        with provider_span(
            self.tracer, run.trace_id, run.capability, run.requester, run.task_id
        ) as span:
            try:
                if spec is None:
                    error = "capability withdrawn"
                else:
                    output = await spec.handler(run.input)
            except asyncio.CancelledError:
                # Stopped by a TaskCancel, the deadline, a lost requester or shutdown;
                # whoever stopped it has answered (or nobody is left to answer).
                self._handlers.pop(key, None)
                self._origin.pop(key, None)
                raise
            except InvalidInput as exc:  # the caller's input is the problem, not this node
                invalid_input = True
                error = str(exc) or "the handler refused its input"
            except Exception as exc:  # a handler's own failure is the task's result
                error = f"{type(exc).__name__}: {exc}"
            if span is not None and error is not None:
                span.status = SpanStatus.ERROR
                span.attributes["error.type"] = (
                    "invalid_input" if invalid_input else "handler_failed"
                )
        self._handlers.pop(key, None)
        self.core.handler_done(
            run.requester,
            run.task_id,
            time.time(),
            output=output,
            error=error,
            invalid_input=invalid_input,
        )
        self._poke()
        self._origin.pop(key, None)

    # ------------------------------------------------------------------ requester

    async def delegate(
        self,
        capability: str,
        task_input: Any,
        candidates: Sequence[str],
        *,
        deadline_s: float | None,
        max_cost_usd: float | None,
        trace_id: str = "",
        expectation: Expectation | None = None,
        task_id: str | None = None,
    ) -> DelegationResult:
        """Negotiate ``capability`` with ``candidates`` in order until one delivers (the
        core decides everything; this waits for its ``DelegationFinished``). The result is
        scored by ``expectation``, else the one registered for the capability. ``task_id``
        (default: 128 random bits) lets the caller follow it (``core.attempt_node``)."""
        task_id = task_id or uuid.uuid4().hex
        waiter: asyncio.Future[DelegationFinished] = asyncio.get_running_loop().create_future()
        self._waiting[task_id] = waiter
        try:
            self.core.start_delegation(
                capability,
                task_input,
                candidates,
                time.time(),
                deadline_s=deadline_s,
                inherited_deadline=_deadline.get(),
                max_cost_usd=max_cost_usd,
                trace_id=trace_id,
                task_id=task_id,
                expectation=expectation,
            )
        except BaseException:
            self._waiting.pop(task_id, None)
            raise
        self._poke()
        try:
            finished = await waiter
        except asyncio.CancelledError:
            self._waiting.pop(task_id, None)
            self.core.cancel_delegation(task_id, time.time())
            self._poke()
            raise
        outcome = finished.outcome
        if not isinstance(outcome, Done):
            raise DelegationError(
                outcome.reason, outcome.attempts, invalid_input=outcome.invalid_input
            )
        evaluation = finished.evaluation
        assert evaluation is not None
        return DelegationResult(
            output=outcome.result.output,
            provider=outcome.provider,
            capability=capability,
            task_id=task_id,
            quality=evaluation.quality,
            attempts=outcome.attempts,
            elapsed_ms=outcome.elapsed_s * 1000,
            result=outcome.result,
        )

    def __repr__(self) -> str:
        return (
            f"<TaskService connections={len(self._open)} "
            f"handshaking={sum(1 for c in self._open if not c.core.is_open)} "
            f"delegations={self.core.delegations} "
            f"running={self.provider.running} reserved={self.provider.reserved}>"
        )


def _frames(batch: list[Wire], signer: Any, core: ChannelCore) -> list[bytes]:
    """Signed envelopes carrying ``batch`` in order: as few as the limits allow, each
    headed by the channel's next ``ChannelFrame`` (the sequence numbers are consumed)."""
    frames: list[bytes] = []
    step = MAX_MESSAGES_PER_ENVELOPE - 1  # one place for the header
    pending = [batch[i : i + step] for i in range(0, len(batch), step)]
    first = core.next_send_seq
    while pending:
        chunk = pending.pop(0)
        header = message_to_wire(core.header(first + len(frames)))
        try:
            frame = encode_wire_batch([header, *chunk], signer, max_bytes=MAX_FRAME_BYTES)
        except LocalProtocolError:
            if len(chunk) == 1:
                raise  # one message is at most MAX_VALUE_BYTES plus a little: unreachable
            half = len(chunk) // 2
            pending[:0] = [chunk[:half], chunk[half:]]
            continue
        frames.append(frame)
    core.advance(len(frames))
    return frames


async def _close_ws(ws: WebSocket) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(ws.close(), CLOSE_TIMEOUT_S)


def current_task_deadline() -> float | None:
    """The UNIX time by which the task this coroutine serves must finish, if any."""
    return _deadline.get()
