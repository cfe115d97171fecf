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
decode, or is not a valid handshake step, closes it.

A connection that drops fails every delegation waiting on that peer at once (unless
another live connection to the same peer remains), so requesters move on without waiting
for a timeout. SWIM declaring the peer dead is an accusation that anyone in the mesh may
make, so it is checked on the channel itself first: if a channel to the peer is open, a
``ChannelPing`` goes out and the peer's tasks fail only if no ``ChannelPong`` comes back
within ``task_liveness_timeout`` (the channel is then closed as dead). A peer that left
(its own signed Leave) fails at once.

Batching. Messages are not written one by one: each connection has an outbox and a sender
task. Everything queued for a connection while the event loop runs one round of ready
callbacks goes out in one signed envelope (at most ``MAX_MESSAGES_PER_ENVELOPE`` messages
and ``MAX_FRAME_BYTES``, split otherwise). A provider starts a handler *before* queueing its
ACCEPTED response, so a handler that finishes at once sends its signed result in the same
frame; 32 concurrent requests from one requester travel as one frame, and so do their
answers. That is one signature and one verification per frame instead of per message.
Messages are converted to wire form when queued, so a value that cannot be encoded raises
in the caller, not in the sender.

Deciding is done by the sans-I/O cores in :mod:`meshnode.core.negotiation`:

* :class:`~meshnode.core.negotiation.ProviderCore` answers requests (accept, reject with a
  reason, or counter with a deadline it can meet and a reserved slot); this module runs the
  capability handlers it starts, and sends back the results it signs, on the connection
  the request came in on. One timer, armed at ``ProviderCore.next_deadline()``, enforces
  deadlines: a handler past its deadline is cancelled and a signed failed result is sent.
* One :class:`~meshnode.core.negotiation.RequesterCore` per delegation negotiates in rank
  order; this module carries its messages and wakes it at its deadlines (a future and a
  timer handle per wait, no task per wait).

A result is taken only if its output satisfies the capability's declared output schema
(``RequesterCore(check_output=...)``): an output that breaks its own contract is a failed
attempt, and the next candidate is tried. After a delegation ends, the requester scores the
outcome with the :class:`~meshnode.core.evaluator.OutputEvaluator`: the quality drives the
local ELO opinion of the provider (``MeshNode.record_outcome``: folded at once, signed and
gossiped in batches) and the provider's circuit breaker. Attempts that failed (timeout,
dropped connection, forged, failed or refused result) score 0 for their provider;
rejections and declined counters score nothing.

Nested delegations inherit the remaining deadline: a handler runs with a context variable
holding its task's deadline, and :meth:`TaskService.delegate` never asks for more.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import itertools
import os
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import aiohttp
import structlog
from aiohttp import web

from meshnode.capability import CapabilitySpec
from meshnode.core.breaker import BreakerBoard, TaskVerdict
from meshnode.core.channel import NONCE_BYTES, ChannelCore
from meshnode.core.evaluator import Evaluation, OutputEvaluator
from meshnode.core.negotiation import (
    Attempt,
    AttemptEnded,
    AttemptOutcome,
    CancelOutcome,
    Done,
    Failed,
    ProviderCore,
    RequesterCore,
    RequesterEffect,
    SendCancel,
    SendConfirm,
    SendRequest,
    StartTask,
)
from meshnode.errors import DelegationError as DelegationError  # public home: meshnode
from protocol import (
    Capability,
    LocalProtocolError,
    Message,
    RemoteProtocolError,
    TaskCancel,
    TaskConfirm,
    TaskRequest,
    TaskResponse,
    TaskResult,
    TaskStatus,
    decode,
    short_id,
)
from protocol.codec import encode, encode_wire_batch, message_to_wire
from protocol.limits import MAX_FRAME_BYTES, MAX_MESSAGES_PER_ENVELOPE
from protocol.messages import ChannelPing, ChannelPong

if TYPE_CHECKING:
    from meshnode.runtime.node import MeshNode

WS_PATH = "/v1/ws/tasks"
WS_HEARTBEAT_S = 10.0
"""WebSocket ping interval; a peer silent for two of them is treated as gone."""
CONNECT_TIMEOUT_S = 3.0
"""Longest wait to open a task connection to a peer."""
CLOSE_TIMEOUT_S = 1.0
"""Longest wait for a peer to acknowledge the close of a task connection on shutdown."""
COUNTER_RATIO = 1.5
"""A counter-proposed deadline up to this multiple of the asked deadline is accepted."""
TIMER_SLACK_S = 0.001
"""Added to every timer so that it fires at or after the deadline it serves (the loop's
monotonic clock and ``time.time()`` tick differently)."""

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "meshnode_task_deadline", default=None
)

log = structlog.get_logger("meshnode.tasks")

Wire = list[Any]
"""One message in wire form (``protocol.codec.message_to_wire``)."""


@dataclasses.dataclass(frozen=True, slots=True)
class DelegationResult:
    """What ``delegate`` returns: the output, who produced it and how it went."""

    output: Any
    provider: str
    capability: str
    task_id: str
    quality: float
    attempts: tuple[Attempt, ...]
    elapsed_ms: float
    result: TaskResult

    def to_json(self) -> dict[str, Any]:
        return {
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
        "pongs",
        "probe",
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
        self.pongs: dict[int, asyncio.Future[None]] = {}
        self.probe: asyncio.Task[None] | None = None

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


@dataclasses.dataclass(slots=True)
class _Delegation:
    core: RequesterCore
    capability: str
    task_input: Any
    inbox: list[tuple[str, Message]] = dataclasses.field(default_factory=list)
    waiter: asyncio.Future[None] | None = None

    def notify(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class TaskService:
    """The task side of one node: provider loop, delegations and the connection pool."""

    def __init__(self, node: MeshNode) -> None:
        self.node = node
        cfg = node.config
        self.provider = ProviderCore(
            node.identity,
            {name: spec.capability for name, spec in node.capabilities.items()},
            cfg.max_concurrent_tasks,
            verifier=node.verifier,
            remember_bytes=cfg.task_memory_bytes,
        )
        self.breakers = BreakerBoard(
            failure_threshold=cfg.breaker_failure_threshold,
            recovery_time=cfg.breaker_recovery_time,
        )
        self.evaluator = OutputEvaluator()
        self._specs: dict[str, CapabilitySpec] = node.capabilities
        self._channels: dict[str, _Channel] = {}
        self._open: set[_Channel] = set()
        self._connecting: dict[str, asyncio.Lock] = {}
        self._ping_tokens = itertools.count(1)
        self._handlers: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._delegations: dict[str, _Delegation] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._closed = False
        self.counters: dict[str, int] = {
            "delegations_ok": 0,
            "delegations_failed": 0,
            "tasks_served": 0,
            "frames_sent": 0,
            "frames_received": 0,
            "frames_dropped": 0,
            "channels_opened": 0,
            "channel_violations": 0,
            "handshake_timeouts": 0,
            "connections_refused": 0,
            "dead_refuted_on_channel": 0,
            "dead_confirmed_on_channel": 0,
        }

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._arm(self.provider.next_deadline())

    async def close(self) -> None:
        self._closed = True
        for delegation in self._delegations.values():
            delegation.notify()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
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

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def capabilities_changed(self) -> None:
        self._specs = self.node.capabilities
        self.provider.set_capabilities({n: s.capability for n, s in self._specs.items()})

    @property
    def in_flight(self) -> int:
        return self.provider.in_flight + len(self._delegations)

    def waiting_on(self, peer: str) -> bool:
        """Is one of our delegations negotiating with ``peer`` or waiting for its result?"""
        return any(d.core.current_node == peer for d in self._delegations.values())

    def _set_load(self) -> None:
        self.node.core.membership.set_load(self.provider.in_flight + len(self._delegations))

    # ------------------------------------------------------------------ connections

    def _refusal(self, address: str) -> str | None:
        """Why a new connection from ``address`` must be refused, if it must."""
        cfg = self.node.config
        if len(self._open) >= cfg.task_max_connections:
            return "total"
        pending = [c for c in self._open if not c.core.is_open]
        if len(pending) >= cfg.task_max_unauthenticated:
            return "unauthenticated"
        if sum(1 for c in pending if c.address == address) >= (
            cfg.task_max_unauthenticated_per_address
        ):
            return "unauthenticated_per_address"
        if sum(1 for c in self._open if c.address == address) >= (
            cfg.task_max_connections_per_address
        ):
            return "per_address"
        return None

    def _refuse(self, why: str) -> None:
        self.counters["connections_refused"] += 1
        self.node.count_drop(f"task_connection_{why}")

    async def handle_ws(self, request: web.Request) -> web.StreamResponse:
        """Server side of a task connection."""
        address = request.remote or "?"
        why = self._refusal(address)
        if why is not None or self._closed:
            self._refuse(why or "closing")
            return web.Response(status=503, text=f"task connection refused: {why or 'closing'}")
        ws = web.WebSocketResponse(max_msg_size=MAX_FRAME_BYTES, heartbeat=WS_HEARTBEAT_S)
        channel = self._adopt(ws, None, address)
        try:
            await ws.prepare(request)
            await self._read(channel)
        finally:
            self._channel_lost(channel, "connection closed")
            await _close_ws(ws)
        return ws

    def _adopt(self, ws: WebSocket, peer: str | None, address: str) -> _Channel:
        """Track a new socket: a channel in its handshake, with its sender and timer."""
        timeout = self.node.config.task_handshake_timeout
        core = ChannelCore(
            self.node.node_id,
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
        self.counters["handshake_timeouts"] += 1
        self.node.count_drop("task_handshake_timeout")
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
            member = self.node.core.membership.member(peer)
            if member is None:
                raise ConnectionError(f"unknown peer {short_id(peer)}")
            if len(self._open) >= self.node.config.task_max_connections:
                self._refuse("total")
                raise ConnectionError("too many task connections open")
            session = self.node.http_session
            ws = await asyncio.wait_for(
                session.ws_connect(
                    self.node.peer_url(member.address, WS_PATH),
                    max_msg_size=MAX_FRAME_BYTES,
                    heartbeat=WS_HEARTBEAT_S,
                ),
                CONNECT_TIMEOUT_S,
            )
            channel = self._adopt(ws, peer, member.address[0])
            try:
                await ws.send_bytes(encode(channel.core.start(), self.node.identity))
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
        identity = self.node.identity
        async for msg in channel.ws:
            if msg.type is not aiohttp.WSMsgType.BINARY:
                continue
            self.counters["frames_received"] += 1
            try:
                envelope = decode(msg.data, verifier=self.node.verifier)
            except RemoteProtocolError as exc:
                self.counters["frames_dropped"] += 1
                self.node.count_drop(f"task_{type(exc).__name__}")
                if not channel.core.is_open:
                    # Before the handshake nobody has earned a second try.
                    self.counters["channel_violations"] += 1
                    return
                continue
            got = channel.core.receive(envelope.sender, envelope.messages)
            if got.error is not None:
                self.counters["frames_dropped"] += 1
                self.counters["channel_violations"] += 1
                self.node.count_drop("task_channel_violation")
                log.info(
                    "task_channel_violation",
                    peer=short_id(envelope.sender),
                    address=channel.address,
                    error=got.error,
                )
                return
            if got.send:
                try:
                    await channel.ws.send_bytes(encode(list(got.send), identity))
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
        if others >= self.node.config.task_max_connections_per_peer:
            self._refuse("per_peer")
            return False
        channel.peer = peer
        self.counters["channels_opened"] += 1
        if self._live_channel(peer) is None:
            self._channels[peer] = channel
        channel.ready.set()
        return True

    def _channel_lost(self, channel: _Channel, reason: str) -> None:
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
        for pong in channel.pongs.values():
            if not pong.done():
                pong.set_exception(ConnectionError("task channel lost"))
        peer = channel.peer
        if peer is None:
            return
        survivor = next((c for c in self._open if c.peer == peer and c.usable), None)
        if self._channels.get(peer) is channel:
            if survivor is None:
                del self._channels[peer]
            else:
                self._channels[peer] = survivor
        if survivor is None:
            self.peer_failed(peer, reason)

    async def _send_loop(self, channel: _Channel) -> None:
        """Write the outbox: everything queued in one loop round goes in one envelope."""
        ws, identity = channel.ws, self.node.identity
        await channel.ready.wait()
        while channel.usable:
            await channel.wake.wait()
            # Let the tasks made ready in the same round (handlers that finish at once,
            # other delegations) add their messages to this frame.
            await asyncio.sleep(0)
            channel.wake.clear()
            batch, channel.outbox = channel.outbox, []
            try:
                frames = _frames(batch, identity, channel.core)
                for frame in frames:
                    await ws.send_bytes(frame)
                    self.counters["frames_sent"] += 1
            except (ConnectionError, aiohttp.ClientError, RuntimeError, OSError) as exc:
                log.debug("task_send_failed", peer=short_id(channel.peer or ""), error=str(exc))
                self._spawn(_close_ws(ws))
                self._channel_lost(channel, f"send failed: {exc}")
                return

    def _reply(self, peer: str, messages: Sequence[Message], prefer: _Channel | None) -> None:
        """Queue messages to ``peer``: on ``prefer`` (the connection the request came on)
        while it is usable, else on the pooled connection, else on a new one."""
        wire = [message_to_wire(m) for m in messages]
        channel = prefer if prefer is not None and prefer.usable else self._live_channel(peer)
        if channel is not None:
            channel.queue(wire)
            return

        async def connect_and_send() -> None:
            try:
                (await self._channel(peer)).queue(wire)
            except (ConnectionError, aiohttp.ClientError, TimeoutError, OSError) as exc:
                log.debug("task_send_failed", peer=short_id(peer), error=str(exc))

        self._spawn(connect_and_send())

    # ------------------------------------------------------------------ inbound

    def _dispatch(self, sender: str, messages: Sequence[Message], channel: _Channel) -> None:
        now = time.time()
        provider_touched = False
        for message in messages:
            if isinstance(message, ChannelPing):
                channel.queue([message_to_wire(ChannelPong(message.token))])
            elif isinstance(message, ChannelPong):
                pong = channel.pongs.pop(message.token, None)
                if pong is not None and not pong.done():
                    pong.set_result(None)
            elif isinstance(message, TaskResponse | TaskResult):
                delegation = self._delegations.get(message.task_id)
                if delegation is not None:
                    delegation.inbox.append((sender, message))
                    delegation.notify()
            elif isinstance(message, TaskRequest):
                provider_touched = True
                decision = self.provider.on_request(sender, message, now)
                if decision.start is not None:
                    # Started first: a handler that finishes at once shares this frame.
                    self._start_handler(decision.start, channel)
                out: list[Message] = [decision.response]
                if decision.result is not None:
                    out.append(decision.result)
                self._reply(sender, out, channel)
                response = decision.response
                if response.status == TaskStatus.COUNTERED and response.counter_deadline_ms:
                    hold = min(self.provider.hold_s, response.counter_deadline_ms / 1000.0)
                    self._arm(now + hold)
            elif isinstance(message, TaskConfirm):
                provider_touched = True
                answer = self.provider.on_confirm(sender, message, now)
                if answer is not None:
                    self._reply(sender, [answer], channel)
            elif isinstance(message, TaskCancel):
                provider_touched = True
                if self.provider.on_cancel(sender, message, now) is CancelOutcome.STOP_HANDLER:
                    handler = self._handlers.pop((sender, message.task_id), None)
                    if handler is not None:
                        handler.cancel()
        if provider_touched:
            self._provider_changed(now)

    def member_gone(self, peer: str, *, left: bool) -> None:
        """Membership says ``peer`` is dead (``left=False``) or left (``left=True``).

        A Leave is signed by the peer itself: its tasks fail at once. A Dead is an
        accusation: while a channel to the peer is open, the peer's tasks fail only if the
        channel does not answer a ChannelPing within ``task_liveness_timeout``.
        """
        channel = self._live_channel(peer)
        if left or channel is None:
            self.peer_failed(peer, "member left" if left else "member dead")
            return
        if channel.probe is None or channel.probe.done():
            channel.probe = self._spawn(self._check_alive(channel, peer))

    async def _check_alive(self, channel: _Channel, peer: str) -> None:
        token = next(self._ping_tokens)
        pong: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        channel.pongs[token] = pong
        channel.queue([message_to_wire(ChannelPing(token))])
        try:
            await asyncio.wait_for(pong, self.node.config.task_liveness_timeout)
        except TimeoutError:
            if channel.alive:
                self.counters["dead_confirmed_on_channel"] += 1
                self._spawn(_close_ws(channel.ws))
                self._channel_lost(channel, "member dead; silent on its task channel")
            return
        except ConnectionError:
            return  # the channel was lost meanwhile; its tasks have failed with it
        finally:
            channel.pongs.pop(token, None)
        self.counters["dead_refuted_on_channel"] += 1
        log.info("dead_refuted_on_channel", peer=short_id(peer))

    def peer_failed(self, peer: str, reason: str) -> None:
        """A connection dropped or SWIM declared ``peer`` dead: fail its waits at once."""
        now = time.time()
        for delegation in self._delegations.values():
            if delegation.core.current_node == peer:
                delegation.inbox.append((peer, _PeerFailed(reason)))
                delegation.notify()
        stopped = False
        for (requester, task_id), handler in list(self._handlers.items()):
            if requester == peer:
                # Nobody is left to receive the result; stop the work.
                if self.provider.on_cancel(peer, TaskCancel(task_id, reason), now) is (
                    CancelOutcome.STOP_HANDLER
                ):
                    handler.cancel()
                self._handlers.pop((requester, task_id), None)
                stopped = True
        if stopped:
            self._provider_changed(now)

    # ------------------------------------------------------------------ provider

    def _provider_changed(self, now: float) -> None:
        """After any provider-side event: start what may start, publish the load."""
        for start in self.provider.start_ready(now):
            self._start_handler(start, None)
        self._set_load()

    def _start_handler(self, start: StartTask, channel: _Channel | None) -> None:
        key = (start.requester, start.request.task_id)
        spec = self._specs.get(start.request.capability)
        self._handlers[key] = self._spawn(self._run_handler(start, spec, channel))
        self._arm(start.deadline_at)

    async def _run_handler(
        self, start: StartTask, spec: CapabilitySpec | None, channel: _Channel | None
    ) -> None:
        request = start.request
        key = (start.requester, request.task_id)
        ok, output, error = False, None, ""
        _deadline.set(start.deadline_at)
        try:
            if spec is None:
                error = "capability withdrawn"
            else:
                output = await spec.handler(request.input)
                ok = True
        except asyncio.CancelledError:
            # Stopped by a TaskCancel, the deadline timer, a lost requester or shutdown;
            # whoever stopped it has answered (or nobody is left to answer).
            self._handlers.pop(key, None)
            raise
        except Exception as exc:  # a handler's own failure is the task's result
            error = f"{type(exc).__name__}: {exc}"
        self._handlers.pop(key, None)
        now = time.time()
        result = self.provider.complete(request.task_id, ok, output, error, now)
        if result is not None:
            self.counters["tasks_served"] += 1
            self._reply(start.requester, [result], channel)
        self._provider_changed(now)

    def _arm(self, when: float | None) -> None:
        """Make sure the provider timer fires no later than ``when`` (UNIX time)."""
        if when is None or self._closed:
            return
        if self._timer is not None and self._timer_at is not None and self._timer_at <= when:
            return
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        delay = max(0.0, when - time.time()) + TIMER_SLACK_S
        self._timer_at = when
        self._timer = loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        now = time.time()
        for event in self.provider.tick(now):
            handler = self._handlers.pop((event.requester, event.task_id), None)
            if handler is not None and event.was_running:
                handler.cancel()
            self._reply(event.requester, [event.result], None)
        self._provider_changed(now)
        self._arm(self.provider.next_deadline())

    # ------------------------------------------------------------------ requester

    async def delegate(
        self,
        capability: str,
        task_input: Any,
        candidates: Sequence[str],
        *,
        deadline_s: float,
        max_cost_usd: float | None,
        trace_id: str = "",
    ) -> DelegationResult:
        """Negotiate ``capability`` with ``candidates`` in order until one delivers."""
        if self._closed:
            raise DelegationError("node is closing")
        inherited = _deadline.get()
        if inherited is not None:
            deadline_s = min(deadline_s, max(0.0, inherited - time.time()))
        if deadline_s <= 0:
            raise DelegationError("no time left for this delegation")
        task_id = uuid.uuid4().hex
        remaining_ms = int(deadline_s * 1000)
        core = RequesterCore(
            self.node.node_id,
            capability,
            task_input,
            list(candidates),
            task_id=task_id,
            verifier=self.node.verifier,
            deadline_s=deadline_s,
            budget_usd=max_cost_usd,
            trace_id=trace_id or task_id[:16],
            allow=self.breakers.allow,
            attempt_deadline_ms=max(1, int(remaining_ms / COUNTER_RATIO)),
            counter_ratio=COUNTER_RATIO,
            check_output=lambda result: self.evaluator.contract_violation(
                self._provider_capability(result.provider, capability), result.output
            ),
        )
        delegation = _Delegation(core, capability, task_input)
        self._delegations[task_id] = delegation
        self._set_load()
        started = time.time()
        try:
            outcome = await self._negotiate(delegation)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._apply(delegation, core.cancel(time.time())))
            raise
        finally:
            self._delegations.pop(task_id, None)
            self._set_load()
        elapsed_ms = (time.time() - started) * 1000
        if isinstance(outcome, Failed):
            self.counters["delegations_failed"] += 1
            raise DelegationError(outcome.reason, outcome.attempts)
        evaluation = self._score(delegation, outcome)
        self.counters["delegations_ok"] += 1
        return DelegationResult(
            output=outcome.result.output,
            provider=outcome.provider,
            capability=capability,
            task_id=task_id,
            quality=evaluation.quality,
            attempts=outcome.attempts,
            elapsed_ms=elapsed_ms,
            result=outcome.result,
        )

    async def _negotiate(self, delegation: _Delegation) -> Done | Failed:
        core = delegation.core
        loop = asyncio.get_running_loop()
        await self._apply(delegation, core.start(time.time()))
        while core.outcome is None:
            if not delegation.inbox and not self._closed:
                waiter: asyncio.Future[None] = loop.create_future()
                deadline = core.next_deadline()
                timer = (
                    None
                    if deadline is None
                    else loop.call_later(
                        max(0.0, deadline - time.time()) + TIMER_SLACK_S, _wake, waiter
                    )
                )
                delegation.waiter = waiter
                try:
                    await waiter
                finally:
                    delegation.waiter = None
                    if timer is not None:
                        timer.cancel()
            now = time.time()
            effects: list[RequesterEffect] = []
            inbox, delegation.inbox = delegation.inbox, []
            for sender, message in inbox:
                if isinstance(message, TaskResponse):
                    effects += core.on_response(sender, message, now)
                elif isinstance(message, TaskResult):
                    effects += core.on_result(sender, message, now)
                elif isinstance(message, _PeerFailed):
                    effects += core.on_peer_failed(sender, message.reason, now)
            if self._closed:
                effects += core.cancel(now, "node closing")
            effects += core.tick(now)
            await self._apply(delegation, effects)
        return core.outcome

    async def _apply(self, delegation: _Delegation, effects: list[RequesterEffect]) -> None:
        for effect in effects:
            if isinstance(effect, SendRequest | SendConfirm):
                message: Message = (
                    effect.request if isinstance(effect, SendRequest) else effect.confirm
                )
                try:
                    wire = message_to_wire(message)
                except LocalProtocolError:
                    # The caller's input cannot travel: give up before anything was sent
                    # (handing back a half-open probe), and tell the caller why.
                    for ended in delegation.core.cancel(time.time(), "input cannot be encoded"):
                        if isinstance(ended, AttemptEnded):
                            self._attempt_ended(ended.attempt)
                    raise
                channel = self._live_channel(effect.node)
                if channel is None:
                    try:
                        channel = await self._channel(effect.node)
                    except (ConnectionError, aiohttp.ClientError, TimeoutError, OSError) as exc:
                        delegation.inbox.append(
                            (effect.node, _PeerFailed(str(exc) or "unreachable"))
                        )
                        continue
                channel.queue([wire])
            elif isinstance(effect, SendCancel):
                # Only over a live connection: if it dropped, the provider already stopped.
                channel = self._live_channel(effect.node)
                if channel is not None:
                    channel.queue([message_to_wire(effect.cancel)])
            elif isinstance(effect, AttemptEnded):
                self._attempt_ended(effect.attempt)

    def _attempt_ended(self, attempt: Attempt) -> None:
        verdict = attempt.verdict
        if verdict is None or verdict is TaskVerdict.SUCCESS:
            return  # successes are scored by the evaluator once the result is in
        now = time.time()
        self.breakers.record(attempt.node, verdict, now)
        if verdict is TaskVerdict.FAILURE:
            self.node.record_outcome(attempt.node, 0.0)

    def _provider_capability(self, provider: str, name: str) -> Capability | None:
        manifest = self.node.core.manifests.get(provider)
        return manifest.capability(name) if manifest else None

    def _score(self, delegation: _Delegation, done: Done) -> Evaluation:
        cap = self._provider_capability(done.provider, delegation.capability)
        delivered = bool(done.attempts) and done.attempts[-1].outcome is AttemptOutcome.DELIVERED
        evaluation = self.evaluator.evaluate(
            cap or delegation.capability,
            delegation.task_input,
            done.result,
            output_checked=delivered,  # check_output already passed it
        )
        now = time.time()
        if evaluation.success:
            self.breakers.record_success(done.provider, now)
        else:
            self.breakers.record_failure(done.provider, now)
        self.node.record_outcome(done.provider, evaluation.quality)
        return evaluation

    def __repr__(self) -> str:
        return (
            f"<TaskService connections={len(self._open)} "
            f"handshaking={sum(1 for c in self._open if not c.core.is_open)} "
            f"delegations={len(self._delegations)} "
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


@dataclasses.dataclass(frozen=True, slots=True)
class _PeerFailed(Message):
    """Internal inbox marker (never on the wire): the peer's connection failed."""

    reason: str


def current_task_deadline() -> float | None:
    """The UNIX time by which the task this coroutine serves must finish, if any."""
    return _deadline.get()
