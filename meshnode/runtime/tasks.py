"""Tasks between peers: pooled WebSockets, the provider loop and delegations.

Theory of operation
-------------------
Every task message travels in a signed ``protocol`` envelope, one per binary WebSocket
frame, over **one pooled connection per peer pair** (``GET /v1/ws/tasks``). Either side may
have opened it; once a peer's first envelope arrives the connection is registered under its
verified node id, and both directions multiplex any number of tasks on it. A connection
that drops fails every delegation waiting on that peer at once (as does SWIM declaring the
peer dead), so requesters move on without waiting for a timeout.

Deciding is done by the sans-I/O cores in :mod:`meshnode.core.negotiation`:

* :class:`~meshnode.core.negotiation.ProviderCore` answers requests (accept, reject with a
  reason, or counter with a deadline it can meet and a reserved slot); this module runs the
  capability handlers it starts, cancels those past their deadline, and sends back the
  results it signs.
* One :class:`~meshnode.core.negotiation.RequesterCore` per delegation negotiates in rank
  order; this module carries its messages and wakes it at its deadlines.

After a delegation ends, the requester scores the outcome with the
:class:`~meshnode.core.evaluator.OutputEvaluator`: the quality drives the local ELO opinion
of the provider (signed, persisted, gossiped into the ledger through ``MeshCore``) and the
provider's circuit breaker. Attempts that failed (timeout, dropped connection, forged or
failed result) score 0 for their provider; rejections and declined counters score nothing.

Nested delegations inherit the remaining deadline: a handler runs with a context variable
holding its task's deadline, and :meth:`TaskService.delegate` never asks for more.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import aiohttp
import structlog
from aiohttp import web

from meshnode.core.breaker import BreakerBoard, TaskVerdict
from meshnode.core.evaluator import Evaluation, OutputEvaluator
from meshnode.core.negotiation import (
    Attempt,
    AttemptEnded,
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
from protocol import (
    Message,
    RemoteProtocolError,
    TaskCancel,
    TaskConfirm,
    TaskRequest,
    TaskResponse,
    TaskResult,
    decode,
    encode,
    short_id,
)
from protocol.limits import MAX_FRAME_BYTES

if TYPE_CHECKING:
    from meshnode.runtime.node import MeshNode

WS_PATH = "/v1/ws/tasks"
WS_HEARTBEAT_S = 10.0
"""WebSocket ping interval; a peer silent for two of them is treated as gone."""
CONNECT_TIMEOUT_S = 3.0
"""Longest wait to open a task connection to a peer."""
COUNTER_RATIO = 1.5
"""A counter-proposed deadline up to this multiple of the asked deadline is accepted."""

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "meshnode_task_deadline", default=None
)

log = structlog.get_logger("meshnode.tasks")


class DelegationError(Exception):
    """No candidate completed the task. ``attempts`` says who was tried and what happened."""

    def __init__(self, reason: str, attempts: Sequence[Attempt] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.attempts = tuple(attempts)


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


class _Channel:
    """One WebSocket to a peer (client or server side)."""

    def __init__(self, ws: web.WebSocketResponse | aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.peer: str | None = None

    async def send(self, messages: Sequence[Message], signer: Any) -> None:
        await self.ws.send_bytes(encode(list(messages), signer))


@dataclasses.dataclass
class _Delegation:
    core: RequesterCore
    capability: str
    task_input: Any
    wake: asyncio.Event
    inbox: list[tuple[str, Message]]


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
        )
        self.breakers = BreakerBoard(
            failure_threshold=cfg.breaker_failure_threshold,
            recovery_time=cfg.breaker_recovery_time,
        )
        self.evaluator = OutputEvaluator()
        self._channels: dict[str, _Channel] = {}
        self._connecting: dict[str, asyncio.Lock] = {}
        self._handlers: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._delegations: dict[str, _Delegation] = {}
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        self.counters: dict[str, int] = {
            "delegations_ok": 0,
            "delegations_failed": 0,
            "tasks_served": 0,
            "frames_dropped": 0,
        }

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._spawn(self._provider_clock())

    async def close(self) -> None:
        self._closed = True
        for delegation in self._delegations.values():
            delegation.wake.set()
        tasks = [*self._tasks, *self._handlers.values()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for channel in list(self._channels.values()):
            with contextlib.suppress(Exception):
                await channel.ws.close()
        self._channels.clear()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def capabilities_changed(self) -> None:
        caps = {name: spec.capability for name, spec in self.node.capabilities.items()}
        self.provider.set_capabilities(caps)

    @property
    def in_flight(self) -> int:
        return self.provider.in_flight + len(self._delegations)

    # ------------------------------------------------------------------ connections

    async def handle_ws(self, request: web.Request) -> web.WebSocketResponse:
        """Server side of a task connection."""
        ws = web.WebSocketResponse(max_msg_size=MAX_FRAME_BYTES, heartbeat=WS_HEARTBEAT_S)
        await ws.prepare(request)
        await self._read(_Channel(ws))
        return ws

    async def _channel(self, peer: str) -> _Channel:
        channel = self._channels.get(peer)
        if channel is not None and not channel.ws.closed:
            return channel
        lock = self._connecting.setdefault(peer, asyncio.Lock())
        async with lock:
            channel = self._channels.get(peer)
            if channel is not None and not channel.ws.closed:
                return channel
            member = self.node.core.membership.member(peer)
            if member is None:
                raise ConnectionError(f"unknown peer {short_id(peer)}")
            session = self.node.http_session
            ws = await asyncio.wait_for(
                session.ws_connect(
                    self.node.peer_url(member.address, WS_PATH),
                    max_msg_size=MAX_FRAME_BYTES,
                    heartbeat=WS_HEARTBEAT_S,
                ),
                CONNECT_TIMEOUT_S,
            )
            channel = _Channel(ws)
            channel.peer = peer
            self._channels[peer] = channel
            self._spawn(self._read(channel))
            return channel

    async def _read(self, channel: _Channel) -> None:
        try:
            async for msg in channel.ws:
                if msg.type != aiohttp.WSMsgType.BINARY:
                    continue
                try:
                    envelope = decode(msg.data, verifier=self.node.verifier)
                except RemoteProtocolError as exc:
                    self.counters["frames_dropped"] += 1
                    self.node.count_drop(f"task_{type(exc).__name__}")
                    continue
                if channel.peer is None:
                    channel.peer = envelope.sender
                    old = self._channels.get(envelope.sender)
                    if old is None or old.ws.closed:
                        self._channels[envelope.sender] = channel
                elif channel.peer != envelope.sender:
                    self.counters["frames_dropped"] += 1
                    continue
                await self._dispatch(envelope.sender, envelope.messages, channel)
        finally:
            peer = channel.peer
            if peer is not None and self._channels.get(peer) is channel:
                del self._channels[peer]
            if peer is not None:
                self.peer_failed(peer, "connection closed")

    async def _send(self, peer: str, messages: Sequence[Message]) -> None:
        channel = await self._channel(peer)
        await channel.send(messages, self.node.identity)

    def _send_soon(self, peer: str, messages: Sequence[Message], channel: _Channel | None) -> None:
        """Send without blocking the reader; on the connection the request came on if any."""

        async def go() -> None:
            try:
                if channel is not None and not channel.ws.closed:
                    await channel.send(messages, self.node.identity)
                else:
                    await self._send(peer, messages)
            except (ConnectionError, aiohttp.ClientError, TimeoutError, OSError) as exc:
                log.debug("task_send_failed", peer=short_id(peer), error=str(exc))

        self._spawn(go())

    # ------------------------------------------------------------------ inbound

    async def _dispatch(self, sender: str, messages: Sequence[Message], channel: _Channel) -> None:
        now = time.time()
        for message in messages:
            if isinstance(message, TaskRequest):
                decision = self.provider.on_request(sender, message, now)
                out: list[Message] = [decision.response]
                if decision.result is not None:
                    out.append(decision.result)
                self._send_soon(sender, out, channel)
                if decision.start is not None:
                    self._start_handler(decision.start)
            elif isinstance(message, TaskConfirm):
                response = self.provider.on_confirm(sender, message, now)
                if response is not None:
                    self._send_soon(sender, [response], channel)
            elif isinstance(message, TaskCancel):
                if self.provider.on_cancel(sender, message, now) is CancelOutcome.STOP_HANDLER:
                    handler = self._handlers.pop((sender, message.task_id), None)
                    if handler is not None:
                        handler.cancel()
            elif isinstance(message, TaskResponse | TaskResult):
                delegation = self._delegations.get(message.task_id)
                if delegation is not None:
                    delegation.inbox.append((sender, message))
                    delegation.wake.set()
        self._start_ready(now)
        self._wake.set()

    def peer_failed(self, peer: str, reason: str) -> None:
        """A connection dropped or SWIM declared ``peer`` dead: fail its waits at once."""
        now = time.time()
        for delegation in self._delegations.values():
            if delegation.core.current_node == peer:
                delegation.inbox.append((peer, _PeerFailed(reason)))
                delegation.wake.set()
        for (requester, task_id), handler in list(self._handlers.items()):
            if requester == peer:
                # Nobody is left to receive the result; stop the work.
                if self.provider.on_cancel(peer, TaskCancel(task_id, reason), now) is (
                    CancelOutcome.STOP_HANDLER
                ):
                    handler.cancel()
                self._handlers.pop((requester, task_id), None)

    # ------------------------------------------------------------------ provider

    def _start_ready(self, now: float) -> None:
        for start in self.provider.start_ready(now):
            self._start_handler(start)
        self.node.core.membership.set_load(self.in_flight)

    def _start_handler(self, start: StartTask) -> None:
        key = (start.requester, start.request.task_id)
        spec = self.node.capabilities.get(start.request.capability)
        self._handlers[key] = self._spawn(self._run_handler(start, spec))

    async def _run_handler(self, start: StartTask, spec: Any) -> None:
        request = start.request
        ok, output, error = False, None, ""
        _deadline.set(start.deadline_at)
        try:
            if spec is None:
                error = "capability withdrawn"
            else:
                async with asyncio.timeout(max(0.0, start.deadline_at - time.time())):
                    output = await spec.handler(request.input)
                ok = True
        except TimeoutError:
            error = "deadline exceeded"
        except asyncio.CancelledError:
            self._handlers.pop((start.requester, request.task_id), None)
            raise
        except Exception as exc:  # a handler's own failure is the task's result
            error = f"{type(exc).__name__}: {exc}"
        finally:
            pass
        self._handlers.pop((start.requester, request.task_id), None)
        now = time.time()
        result = self.provider.complete(request.task_id, ok, output, error, now)
        if result is not None:
            self.counters["tasks_served"] += 1
            self._send_soon(start.requester, [result], None)
        self._start_ready(now)
        self._wake.set()

    async def _provider_clock(self) -> None:
        while True:
            now = time.time()
            for event in self.provider.tick(now):
                handler = self._handlers.pop((event.requester, event.task_id), None)
                if handler is not None and event.was_running:
                    handler.cancel()
                self._send_soon(event.requester, [event.result], None)
            self._start_ready(now)
            deadline = self.provider.next_deadline()
            self._wake.clear()
            timeout = None if deadline is None else max(0.0, deadline - time.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

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
            trace_id=trace_id or uuid.uuid4().hex[:16],
            allow=lambda node, now: self.breakers.allow(node, now),
            attempt_deadline_ms=max(1, int(remaining_ms / COUNTER_RATIO)),
            counter_ratio=COUNTER_RATIO,
        )
        delegation = _Delegation(core, capability, task_input, asyncio.Event(), [])
        self._delegations[task_id] = delegation
        self.node.core.membership.set_load(self.in_flight)
        started = time.time()
        try:
            outcome = await self._negotiate(delegation)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                effects = core.cancel(time.time())
                await asyncio.shield(self._apply(delegation, effects))
            raise
        finally:
            self._delegations.pop(task_id, None)
            self.node.core.membership.set_load(self.in_flight)
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
        await self._apply(delegation, core.start(time.time()))
        while core.outcome is None:
            deadline = core.next_deadline()
            delegation.wake.clear()
            if not delegation.inbox and not self._closed:
                timeout = None if deadline is None else max(0.0, deadline - time.time())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(delegation.wake.wait(), timeout)
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
            if isinstance(effect, SendRequest | SendConfirm | SendCancel):
                message = (
                    effect.request
                    if isinstance(effect, SendRequest)
                    else effect.confirm
                    if isinstance(effect, SendConfirm)
                    else effect.cancel
                )
                try:
                    await self._send(effect.node, [message])
                except (ConnectionError, aiohttp.ClientError, TimeoutError, OSError) as exc:
                    if not isinstance(effect, SendCancel):
                        delegation.inbox.append(
                            (effect.node, _PeerFailed(str(exc) or "unreachable"))
                        )
                        delegation.wake.set()
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

    def _score(self, delegation: _Delegation, done: Done) -> Evaluation:
        manifest = self.node.core.manifests.get(done.provider)
        cap = manifest.capability(delegation.capability) if manifest else None
        evaluation = self.evaluator.evaluate(
            cap or delegation.capability, delegation.task_input, done.result
        )
        now = time.time()
        if evaluation.success:
            self.breakers.record_success(done.provider, now)
        else:
            self.breakers.record_failure(done.provider, now)
        self.node.record_outcome(done.provider, evaluation.quality)
        return evaluation


@dataclasses.dataclass(frozen=True, slots=True)
class _PeerFailed(Message):
    """Internal inbox marker (never on the wire): the peer's connection failed."""

    reason: str


def current_task_deadline() -> float | None:
    """The UNIX time by which the task this coroutine serves must finish, if any."""
    return _deadline.get()
