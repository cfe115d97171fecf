"""Every node an A2A agent: the agent card and A2A 1.0 JSON-RPC (with SSE) on aiohttp.

Theory of operation
-------------------
Routes (registered by :func:`add_a2a_routes` from ``api.build_app``):

* ``GET /.well-known/agent-card.json``: the card of :func:`meshnode.core.a2a.build_card`
  from this node's own signed manifest, signed by the node's Ed25519 key
  (:func:`protocol.jws.sign_card`, ``kid`` = node id), with an ``ETag`` (``If-None-Match``
  gets 304) and ``Cache-Control: private, max-age=CARD_MAX_AGE_S``. It changes when the
  manifest version does. Access: :attr:`Access.READ` (like ``/v1/manifests``: the card
  lists the same capabilities), so loopback callers, the API token, or anyone with
  ``NodeConfig.api_open_reads``.
* ``POST /a2a``: JSON-RPC 2.0, methods ``SendMessage``, ``SendStreamingMessage`` (SSE),
  ``GetTask``, ``ListTasks``, ``CancelTask``, ``SubscribeToTask`` (SSE); the
  push-notification methods answer "push notifications not supported" (-32003). Every
  request needs ``A2A-Version: 1.0`` (-32009 otherwise). The caller must pass
  :attr:`Access.READ` before the body is read; ``SendMessage``, ``SendStreamingMessage``
  and ``CancelTask`` need :attr:`Access.WORK` (HTTP 401 otherwise) and are rate-limited
  per remote address like ``/v1/delegate``. Body at most :data:`MAX_A2A_BODY_BYTES`
  (413), JSON nested at most ``api.MAX_JSON_DEPTH`` deep; every other cap is in
  :mod:`meshnode.core.a2a`.

Signed requests (:mod:`meshnode.core.request_auth`): a caller may instead sign the
request with a node key. Form, freshness and the signer's admission (under a mesh
authority: certified; with a keyring: a current member) are checked before the body is
read; then the body is read, the signature verified and the nonce checked against
:attr:`A2AService.replays`. An admitted signer gets WORK access and sees only the tasks it
started (:attr:`A2AService.owners`); a signer that is not admitted is judged as unsigned;
a malformed, stale, replayed or non-verifying signature is refused (401). The card route
takes signatures too, and the card declares the scheme when a signature can be a
credential (:attr:`A2AService.signatures_admit`).

Tracing: each ``SendMessage``/``SendStreamingMessage`` opens a server span
(``invoke_agent {skill}``, GenAI and a2a attributes, :meth:`A2AService.open_span`) under
the caller's ``traceparent``; the response carries its traceparent; the local provider's
run (through the request's ``trace_id``) and the gateway's discovery and delegation (run
with the span as the current context) are its children; it ends when the task ends or
needs input.

Who sees which task: tasks carry task inputs and outputs, which are what the WORK access
protects, so only a caller with WORK access (the API token, or loopback while
``api_trust_loopback``) sees any task; every such caller is the node's operator and sees
them all. A caller that passes READ only because reads are open sees none (``GetTask``
says task not found, ``ListTasks`` is empty).

A task is served one of two ways:

* **Local**: the message names a capability this node serves. The node's own provider
  decides, exactly as for a peer (``NodeCore.task_message`` with this node as the
  requester; answers come back through ``TaskService.local_inbox``): ACCEPTED → WORKING,
  REJECTED → REJECTED, COUNTERED → INPUT_REQUIRED with the counter's terms in a data part
  (a later message with the same ``taskId`` confirms it, ``metadata.accept: false``
  declines; an unconfirmed counter lapses after the provider's hold and the confirm is
  then answered REJECTED), the signed result → COMPLETED with an artifact or FAILED.
  ``CancelTask`` sends the provider a ``TaskCancel`` (the handler is stopped).
* **Gateway**: the message names a capability this node does not serve, or only text.
  The node's own discovery ranks peers (by capability name, else by the text as a
  description), and ``TaskService.delegate`` negotiates with them in rank order with
  fallback. Progress streamed: WORKING "discovering", WORKING with the candidates, and
  WORKING "working with peer X" each time the delegation moves to another peer (read
  from ``NodeCore.attempt_node`` every :data:`GATEWAY_POLL_S`), then COMPLETED (the
  artifact names the provider) or FAILED/REJECTED with the attempts. Counters are
  settled by the requester's rule (:mod:`meshnode.core.requester`) without asking the
  caller. ``CancelTask`` cancels the delegation (the peer gets ``TaskCancel``).

Persistence: tasks are written to the data dir's ``a2a_tasks`` table
(:class:`~meshnode.runtime.store.NodeStore`), bounded by ``NodeConfig.a2a_max_tasks`` and
``NodeConfig.a2a_max_task_bytes`` (oldest finished first); without a data dir the same
bounds apply in memory. A task is
written when it ends, when it needs input, and before its id is first shown to anyone
(a reply, a stream, GetTask, ListTasks); its WORKING progress stays in memory while it
runs (GetTask and ListTasks read it from there). So a blocking ``SendMessage`` that
completes costs one synchronous write, and every id a caller has seen survives a crash. A
task that was not finished when the node stopped is FAILED at the next start ("the node
stopped while this task was running").
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from aiohttp import web

from meshnode.core import a2a
from meshnode.core.a2a import A2AError, ErrorCode, ListQuery, SendRequest, State
from meshnode.core.channel import RateLimiter
from meshnode.core.delegation import rank_candidates
from meshnode.core.effects import AttemptOutcome
from meshnode.core.node import DELEGATION_TOP_K
from meshnode.core.request_auth import (
    ReplayCache,
    RequestSignatureError,
    SignedRequest,
    check_signed,
    freshness_problem,
    parse_headers,
    signer_admitted,
)
from meshnode.core.tracing import (
    MAX_SPAN_NAME_CHARS,
    Span,
    SpanKind,
    SpanStatus,
    bounded_attributes,
    format_traceparent,
)
from meshnode.errors import DelegationError, InvalidRequest, NodeNotRunning
from meshnode.runtime.api import (
    RETRY_AFTER_S,
    Access,
    _is_loopback,
    _read_body,
    authorize,
)
from meshnode.runtime.logging import get_logger
from meshnode.runtime.tracing import TRACEPARENT, current_context, traced_delegation, use_context
from protocol import LocalProtocolError, Message, short_id
from protocol.codec import message_to_wire
from protocol.jws import sign_card
from protocol.messages import TaskCancel, TaskConfirm, TaskRequest, TaskResponse, TaskResult

if TYPE_CHECKING:
    from meshnode.runtime.node import MeshNode
    from meshnode.runtime.store import NodeStore

__all__ = ["A2A_SERVICE", "GATEWAY_POLL_S", "MAX_A2A_BODY_BYTES", "A2AService", "add_a2a_routes"]

MAX_A2A_BODY_BYTES = a2a.MAX_BODY_BYTES
"""Largest ``POST /a2a`` body (:data:`meshnode.core.a2a.MAX_BODY_BYTES`): HTTP 413 beyond."""
GATEWAY_POLL_S = 0.05
"""How often a gateway task looks at which peer its delegation is trying (a dict lookup)
to stream "working with peer X" when it changes."""
STREAM_QUEUE = 64
"""Events queued for one SSE stream; a reader that falls further behind is cut off (it
can ``SubscribeToTask`` or ``GetTask`` again)."""
COUNTER_LAPSE_SLACK_S = 1.0
"""Seconds past the provider's reservation hold (``ProviderCore.hold_s``) after which an
unconfirmed counter-offer is REJECTED, so an abandoned INPUT_REQUIRED task does not count
toward ``a2a_max_live_tasks`` forever."""
STOPPED_MESSAGE = "the node stopped while this task was running"
"""Status text of a task found unfinished when the node starts."""
DURABLE_STATES = a2a.TERMINAL_STATES | {State.INPUT_REQUIRED}
"""States written to the store when a task enters them (besides the first write, see
:meth:`A2AService.reveal`): a task's WORKING progress lives in memory only, since a task
found unfinished after a restart is FAILED whatever it last said, and each write is a
synchronous commit (about 0.4 ms)."""

log = get_logger("meshnode.a2a")

A2A_SERVICE: web.AppKey[A2AService] = web.AppKey("a2a_service")
"""The application's :class:`A2AService` (set at startup), for tools and benchmarks."""


@dataclasses.dataclass(eq=False)
class _Live:
    """A task not in a terminal state yet, and who follows it."""

    task: dict[str, Any]
    local: bool
    changed: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    streams: set[asyncio.Queue[dict[str, Any] | None]] = dataclasses.field(default_factory=set)
    runner: asyncio.Task[None] | None = None
    countered: bool = False
    stored: bool = False
    """Whether the task has been written to the store at least once (see
    :meth:`A2AService.reveal`)."""
    lapse: asyncio.TimerHandle | None = None
    """Fires when a counter-offer left unconfirmed has lapsed at the provider."""
    skill: str = a2a.GATEWAY_SKILL
    """The capability the task asked for (the gateway skill when routed by its text)."""
    span: Span | None = None
    """The server span of the message being served (``invoke_agent {skill}``): open
    until the task ends or needs input (see :meth:`A2AService.open_span`)."""


class _TaskBook:
    """Where tasks are kept: the store when the node has a data dir (plus a bounded
    in-memory copy otherwise). Bounded by ``cap`` (oldest finished first)."""

    def __init__(self, store: NodeStore | None, cap: int, max_bytes: int) -> None:
        self._store = store
        self._cap = cap
        self._max_bytes = max_bytes
        self._memory: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._sizes: dict[str, int] = {}
        """Task id → its document's size (in-memory book only)."""
        self._bytes = 0

    def recover(self, now: float) -> int:
        """Fail every task left unfinished by an earlier run; returns how many."""
        if self._store is None:
            return 0
        failed = 0
        for doc in self._store.a2a_unfinished():
            try:
                task = json.loads(doc)
                task["status"] = a2a.status(task, State.FAILED, now, STOPPED_MESSAGE)
            except (ValueError, KeyError, TypeError):
                continue
            self.put(task, now)
            failed += 1
        self._store.a2a_evict(self._cap, self._max_bytes)
        return failed

    def put(self, task: dict[str, Any], now: float, *, durable: bool = True) -> None:
        """Keep ``task``. With a store, only a ``durable`` change is written (see
        :data:`DURABLE_STATES`); the others live in memory until the next durable one."""
        state = a2a.state_of(task)
        terminal = state in a2a.TERMINAL_STATES
        if self._store is not None and not durable:
            return
        if self._store is None:
            task_id = task["id"]
            self._memory[task_id] = task
            self._memory.move_to_end(task_id)
            if durable or task_id not in self._sizes:  # WORKING steps hardly change it
                size = len(json.dumps(task, separators=(",", ":")).encode())
                self._bytes += size - self._sizes.get(task_id, 0)
                self._sizes[task_id] = size
            while terminal and (len(self._memory) > self._cap or self._bytes > self._max_bytes):
                oldest = next((k for k, t in self._memory.items() if _finished(t)), None)
                if oldest is None:
                    break
                del self._memory[oldest]
                self._bytes -= self._sizes.pop(oldest)
            return
        doc = json.dumps(task, separators=(",", ":"), ensure_ascii=False)
        self._store.a2a_put(task["id"], task["contextId"], state.value, terminal, now, doc)
        if terminal:
            self._store.a2a_evict(self._cap, self._max_bytes)

    def get(self, task_id: str) -> dict[str, Any] | None:
        if self._store is None:
            return self._memory.get(task_id)
        doc = self._store.a2a_get(task_id)
        return None if doc is None else dict(json.loads(doc))

    def page(
        self, query: ListQuery, live: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], int]:
        """One page of tasks matching ``query``, newest first, and how many match: the
        ``live`` tasks (as they stand in memory, newest first) ahead of the stored ones."""
        state = None if query.state is None else query.state.value

        def matches(t: dict[str, Any]) -> bool:
            return (query.context_id is None or t["contextId"] == query.context_id) and (
                state is None or t["status"]["state"] == state
            )

        if self._store is None:
            matching = [t for t in reversed(self._memory.values()) if matches(t)]
            return matching[query.offset : query.offset + query.page_size], len(matching)
        running = [t for t in live if matches(t)]
        head = running[query.offset : query.offset + query.page_size]
        docs, stored = self._store.a2a_list(
            query.context_id,
            state,
            max(0, query.offset - len(running)),
            query.page_size - len(head),
            exclude=[t["id"] for t in live],
        )
        return [*head, *(json.loads(d) for d in docs)], len(running) + stored


def _finished(task: dict[str, Any]) -> bool:
    return a2a.state_of(task) in a2a.TERMINAL_STATES


class A2AService:
    """The A2A side of one node: its tasks, their runners and streams."""

    def __init__(self, node: MeshNode, store: NodeStore | None) -> None:
        self.node = node
        self.config = node.config
        self.book = _TaskBook(store, node.config.a2a_max_tasks, node.config.a2a_max_task_bytes)
        self.live: dict[str, _Live] = {}
        self.streams = 0
        self.limiter = RateLimiter(node.config.api_rate_per_s, node.config.api_rate_burst)
        self._card: tuple[tuple[int, str, bool, bool], bytes, str] | None = None
        self.replays = ReplayCache()
        """Nonces of signed requests seen within the freshness window."""
        self.owners: OrderedDict[str, str] = OrderedDict()
        """Task id → the node that signed the request that started it (only tasks
        started by a signed request; at most ``a2a_max_tasks``, the oldest forgotten)."""
        self.recovered = self.book.recover(time.time())
        if self.recovered:
            log.warning("a2a_tasks_failed_on_restart", count=self.recovered)
        self._hooked = False

    # ------------------------------------------------------------------ card

    def card(self) -> tuple[bytes, str]:
        """The signed card's JSON bytes and its ETag (cached per manifest version)."""
        node = self.node
        manifest = node.core.manifests.get(node.node_id)
        if manifest is None:
            raise web.HTTPServiceUnavailable(text="the node has not published its manifest yet")
        url = node.url + a2a.JSONRPC_PATH
        key = (manifest.version, url, node.config.api_token is not None, self.signatures_admit)
        if self._card is None or self._card[0] != key:
            card = a2a.build_card(manifest, url, bearer=key[2], signed_requests=key[3])
            body = json.dumps(sign_card(card, node.identity), separators=(",", ":")).encode()
            etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            self._card = (key, body, etag)
        return self._card[1], self._card[2]

    # ------------------------------------------------------------------ signed requests

    @property
    def signatures_admit(self) -> bool:
        """Can a request signature be a credential here? Only with admission: a mesh
        authority, or a keyring with sealed input required (see
        :func:`meshnode.core.request_auth.signer_admitted`)."""
        node = self.node
        sealed = node.seal.keyring is not None and node.seal.encrypt_incoming
        return node.config.authority is not None or sealed

    def admitted(self, signed: SignedRequest, now: float) -> bool:
        node = self.node
        sealed = node.seal.keyring is not None and node.seal.encrypt_incoming
        return signer_admitted(node.core, signed.node_id, now, sealed=sealed)

    def own(self, task_id: str, signer: str) -> None:
        self.owners[task_id] = signer
        while len(self.owners) > self.config.a2a_max_tasks:
            self.owners.popitem(last=False)

    # ------------------------------------------------------------------ state changes

    def _hook(self) -> None:
        if not self._hooked:
            self.node.tasks.local_inbox = self._local_message
            self._hooked = True

    def _update(
        self,
        live: _Live,
        state: State,
        text: str = "",
        data: Any = None,
        artifact: dict[str, Any] | None = None,
    ) -> None:
        """Move ``live``'s task to ``state`` (never out of a terminal one), store it and
        tell its streams."""
        task = live.task
        if a2a.state_of(task) in a2a.TERMINAL_STATES:
            return
        now = time.time()
        task["status"] = a2a.status(task, state, now, text, data)
        if artifact is not None:
            task["artifacts"] = [*task.get("artifacts", []), artifact][-a2a.MAX_ARTIFACTS :]
        try:
            durable = state in DURABLE_STATES
            self.book.put(task, now, durable=durable)
            live.stored = live.stored or durable
        except Exception as exc:  # a failing write must not stop the task's progress
            log.error("a2a_task_write_failed", task=task["id"], error=str(exc))
            self.node.count_drop("a2a_task_write_failed")
        events: list[dict[str, Any]] = []
        if artifact is not None:
            events.append(
                {
                    "artifactUpdate": {
                        "taskId": task["id"],
                        "contextId": task["contextId"],
                        "artifact": artifact,
                        "lastChunk": True,
                    }
                }
            )
        events.append(
            {
                "statusUpdate": {
                    "taskId": task["id"],
                    "contextId": task["contextId"],
                    "status": task["status"],
                }
            }
        )
        ends = state in a2a.TERMINAL_STATES
        if ends or state is State.INPUT_REQUIRED:
            self._end_span(live, state)
        for queue in list(live.streams):
            for event in events:
                self._offer(live, queue, event)
            if ends or state is State.INPUT_REQUIRED:
                self._offer(live, queue, None)
        if ends:
            self.live.pop(task["id"], None)
            live.countered = False
            if live.lapse is not None:
                live.lapse.cancel()
                live.lapse = None
        live.changed.set()

    @staticmethod
    def _offer(live: _Live, queue: asyncio.Queue[dict[str, Any] | None], event: Any) -> None:
        try:
            queue.put_nowait(event)
        except asyncio.QueueFull:  # too slow a reader: cut it off
            live.streams.discard(queue)
            with contextlib.suppress(asyncio.QueueEmpty):
                queue.get_nowait()
            queue.put_nowait(None)

    # ------------------------------------------------------------------ spans

    def open_span(self, live: _Live, method: str, skill: str) -> None:
        """Open ``live``'s server span for one ``SendMessage``/``SendStreamingMessage``:
        named and attributed after the OpenTelemetry GenAI conventions, under the
        caller's ``traceparent`` (the current context, set by the API middleware) or in a
        new trace. The local provider's run and the gateway's delegation hang from it;
        it ends when the task ends or needs input (:meth:`_end_span`)."""
        tracer = self.node.tracer
        if tracer is None or not tracer.enabled:
            return
        parent = current_context()
        trace_id, span_id = tracer.new_context(parent)
        task = live.task
        live.span = Span(
            trace_id,
            span_id,
            parent.span_id if parent is not None else None,
            f"invoke_agent {skill}"[:MAX_SPAN_NAME_CHARS],  # the skill is the caller's
            SpanKind.SERVER,
            tracer.node_id,
            time.time(),
            attributes=bounded_attributes(
                {
                    "gen_ai.operation.name": "invoke_agent",
                    "gen_ai.agent.name": skill,
                    "gen_ai.agent.id": tracer.node_id,
                    "gen_ai.conversation.id": task["contextId"],
                    "a2a.method": method,
                    "a2a.task.id": task["id"],
                    "a2a.context.id": task["contextId"],
                    "meshnode.a2a.route": "local" if live.local else "gateway",
                    "meshnode.context": "continued" if parent is not None else "new",
                }
            ),
        )

    def _end_span(self, live: _Live, state: State) -> None:
        span, live.span = live.span, None
        tracer = self.node.tracer
        if span is None or tracer is None:
            return
        span.end = time.time()
        ok = state in (State.COMPLETED, State.INPUT_REQUIRED)
        span.status = SpanStatus.OK if ok else SpanStatus.ERROR
        span.attributes["a2a.task.state"] = state.value
        tracer.record(span)

    def reveal(self, live: _Live) -> None:
        """The caller is about to learn this running task's id: make sure it is stored,
        so that after a crash the id still answers (FAILED). A task whose id nobody has
        seen is not written until it ends or needs input: a blocking ``SendMessage``
        that completes costs one write."""
        if not live.stored and a2a.state_of(live.task) not in a2a.TERMINAL_STATES:
            self.book.put(live.task, time.time())
            live.stored = True

    # ------------------------------------------------------------------ SendMessage

    async def send(
        self, req: SendRequest, method: str = "SendMessage", signer: str | None = None
    ) -> _Live:
        """Start a task for ``req`` (or continue the one its ``taskId`` names), inside a
        server span for ``method`` (:meth:`open_span`). ``signer``: the admitted node
        that signed the request (None: the operator), who alone may continue it."""
        node = self.node
        if not node.running:
            raise A2AError(ErrorCode.INTERNAL_ERROR, "the node is not running")
        if req.task_id is not None:
            if signer is not None and self.owners.get(req.task_id) != signer:
                raise A2AError(ErrorCode.TASK_NOT_FOUND, f"no task {req.task_id}")
            return self._continue(req, method)
        if len(self.live) >= self.config.a2a_max_live_tasks:
            raise A2AError(
                ErrorCode.INTERNAL_ERROR,
                f"{len(self.live)} A2A tasks already running (a2a_max_live_tasks)",
            )
        local = req.capability is not None and req.capability in node.capabilities
        if local:
            self._check_input(req)
        task_id = uuid.uuid4().hex
        task = a2a.new_task(task_id, req.context_id or uuid.uuid4().hex, req.message, time.time())
        live = _Live(task, local, skill=req.capability or a2a.GATEWAY_SKILL)
        self.live[task_id] = live
        if signer is not None:
            self.own(task_id, signer)
        self.book.put(task, time.time(), durable=False)
        self.open_span(live, method, live.skill)
        if local:
            self._start_local(live, req)
        else:
            with use_context(live.span.context if live.span is not None else current_context()):
                live.runner = asyncio.create_task(self._gateway(live, req))
        return live

    def _check_input(self, req: SendRequest) -> None:
        try:
            message_to_wire(self._request(uuid.uuid4().hex, req))
        except LocalProtocolError as exc:
            raise A2AError(ErrorCode.INVALID_PARAMS, f"input cannot be sent: {exc}") from None

    def _request(self, task_id: str, req: SendRequest, span: Span | None = None) -> TaskRequest:
        """The request this node's own provider gets; its ``trace_id`` carries ``span``'s
        traceparent, so the provider's run hangs from the A2A server span."""
        deadline_s = req.deadline_s or self.config.default_deadline_s
        return TaskRequest(
            task_id=task_id,
            capability=req.capability or "",
            input=req.task_input,
            deadline_ms=max(1, min(int(deadline_s * 1000), 86_400_000)),
            budget_usd=req.max_cost_usd,
            trace_id=format_traceparent(span.context) if span is not None else task_id[:16],
        )

    def _continue(self, req: SendRequest, method: str) -> _Live:
        assert req.task_id is not None
        live = self.live.get(req.task_id)
        if live is None:
            if self.book.get(req.task_id) is None:
                raise A2AError(ErrorCode.TASK_NOT_FOUND, f"no task {req.task_id}")
            raise A2AError(ErrorCode.UNSUPPORTED_OPERATION, "the task has ended; start a new one")
        if not live.countered:
            raise A2AError(
                ErrorCode.UNSUPPORTED_OPERATION,
                "the task is not waiting for input (only a counter-offer is)",
            )
        a2a.add_history(live.task, req.message)
        self.open_span(live, method, live.skill)
        live.countered = False
        if live.lapse is not None:
            live.lapse.cancel()
            live.lapse = None
        task_id = live.task["id"]
        self._feed(TaskConfirm(task_id, req.accept))
        if not req.accept:
            self._update(live, State.CANCELED, "counter-offer declined by the caller")
        return live

    # ------------------------------------------------------------------ local tasks

    def _feed(self, message: Message) -> None:
        """Hand a task message to this node's own provider, as its requester."""
        node = self.node
        node.core.task_message(node.node_id, message, time.time())
        driver = node.driver
        if driver is not None:
            driver.poke()

    def _start_local(self, live: _Live, req: SendRequest) -> None:
        self._hook()
        self._feed(self._request(live.task["id"], req, live.span))

    def _lapse(self, live: _Live) -> None:
        """A counter-offer nobody confirmed in time: the task is REJECTED (and the
        provider told, in case its reservation still holds)."""
        live.lapse = None
        if not live.countered:
            return
        live.countered = False
        self._feed(TaskConfirm(live.task["id"], False))
        self._update(live, State.REJECTED, "counter-offer lapsed: not confirmed in time")

    def _local_message(self, message: Message) -> None:
        """An answer of our own provider to one of our local tasks."""
        live = self.live.get(getattr(message, "task_id", ""))
        if live is None or not live.local:
            return
        if isinstance(message, TaskResponse):
            state = a2a.state_for_response(message.status)
            if state is State.INPUT_REQUIRED:
                live.countered = True
                terms = {
                    "counter_deadline_ms": message.counter_deadline_ms,
                    "estimated_latency_ms": message.estimated_latency_ms,
                    "reason": message.reason,
                    "confirm": "send a message with this taskId to confirm "
                    "(metadata.accept false declines)",
                }
                self._update(live, state, f"counter-offer: {message.reason}", data=terms)
                hold = self.node.core.provider.hold_s + COUNTER_LAPSE_SLACK_S
                live.lapse = asyncio.get_running_loop().call_later(hold, self._lapse, live)
            elif state is State.WORKING:
                self._update(live, state, f"accepted by {short_id(self.node.node_id)}")
            elif state is State.REJECTED:
                self._update(live, state, message.reason or "rejected")
        elif isinstance(message, TaskResult):
            if message.ok:
                artifact = a2a.result_artifact(live.task["id"], message.output, message.provider)
                self._update(live, State.COMPLETED, "done", artifact=artifact)
            else:
                self._update(live, State.FAILED, message.error or "the task failed")

    # ------------------------------------------------------------------ gateway tasks

    async def _gateway(self, live: _Live, req: SendRequest) -> None:
        node = self.node
        try:
            self._update(live, State.WORKING, "discovering providers in the mesh")
            description = req.text.strip() or None
            tracer = node.tracer
            if tracer is None:
                raise NodeNotRunning("the node is not started")
            with tracer.span("discover", SpanKind.INTERNAL) as found:
                candidates = await node.discover(
                    description if req.capability is None else None,
                    capability_name=req.capability,
                    max_cost_usd=req.max_cost_usd,
                    top_k=DELEGATION_TOP_K,
                )
                found.attributes["meshnode.candidates"] = len(candidates)
            candidates = [c for c in candidates if c.node_id != node.node_id]
            ranked = rank_candidates(candidates, req.capability)
            if ranked is None:
                wanted = req.capability or "the request"
                self._update(live, State.FAILED, f"no peer in the mesh offers {wanted!r}")
                return
            capability, ordered = ranked
            names = ", ".join(short_id(n) for n in ordered)
            self._update(
                live,
                State.WORKING,
                f"negotiating {capability!r} with {len(ordered)} candidates: {names}",
                data={"capability": capability, "candidates": ordered},
            )
            delegation_id = uuid.uuid4().hex
            job = asyncio.create_task(
                traced_delegation(
                    node,
                    tracer,
                    capability,
                    "",  # under the current context: this task's server span
                    lambda traceparent: node.tasks.delegate(
                        capability,
                        req.task_input,
                        ordered,
                        deadline_s=req.deadline_s,
                        max_cost_usd=req.max_cost_usd,
                        trace_id=traceparent,
                        task_id=delegation_id,
                    ),
                )
            )
            peer: str | None = None
            try:
                await asyncio.sleep(0)  # let the delegation send its first request
                while not job.done():
                    now_peer = node.core.attempt_node(delegation_id)
                    if now_peer is not None and now_peer != peer:
                        peer = now_peer
                        self._update(
                            live,
                            State.WORKING,
                            f"working with peer {short_id(peer)}",
                            data={"peer": peer, "capability": capability},
                        )
                    await asyncio.wait({job}, timeout=GATEWAY_POLL_S)
            except asyncio.CancelledError:
                job.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await job
                raise
            try:
                result = job.result()
            except DelegationError as exc:
                outcomes = {a.outcome for a in exc.attempts}
                state = State.REJECTED if outcomes == {AttemptOutcome.REJECTED} else State.FAILED
                attempts = [
                    {"node": a.node, "outcome": a.outcome.value, "detail": a.detail}
                    for a in exc.attempts
                ]
                self._update(live, state, exc.reason, data={"attempts": attempts})
                return
            artifact = a2a.result_artifact(live.task["id"], result.output, result.provider)
            self._update(
                live,
                State.COMPLETED,
                f"done by peer {short_id(result.provider)} after {len(result.attempts)} attempts",
                artifact=artifact,
            )
        except asyncio.CancelledError:
            self._update(live, State.CANCELED, "canceled by the caller")
            raise
        except (InvalidRequest, ValueError, TypeError, LocalProtocolError) as exc:
            self._update(live, State.FAILED, f"invalid request: {exc}")
        except NodeNotRunning:
            self._update(live, State.FAILED, STOPPED_MESSAGE)
        except Exception as exc:  # one task's failure never stops the service
            log.error("a2a_gateway_failed", task=live.task["id"], error=repr(exc))
            self._update(live, State.FAILED, f"internal error: {type(exc).__name__}")

    # ------------------------------------------------------------------ cancel, close

    async def cancel(self, task_id: str) -> dict[str, Any]:
        live = self.live.get(task_id)
        if live is None:
            if self.book.get(task_id) is None:
                raise A2AError(ErrorCode.TASK_NOT_FOUND, f"no task {task_id}")
            raise A2AError(ErrorCode.TASK_NOT_CANCELABLE, "the task has already ended")
        if live.local:
            if live.lapse is not None:
                live.lapse.cancel()
            live.countered = False
            self._feed(TaskCancel(task_id, "canceled by the A2A caller"))
            self._update(live, State.CANCELED, "canceled by the caller")
        elif live.runner is not None:
            live.runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await live.runner
        return live.task

    async def close(self) -> None:
        """Stop every gateway runner and end every stream (the node is closing): the
        tasks still running are FAILED with :data:`STOPPED_MESSAGE`."""
        lives = list(self.live.values())
        for live in lives:
            self._update(live, State.FAILED, STOPPED_MESSAGE)  # also ends their streams
        runners = [lv.runner for lv in lives if lv.runner is not None]
        for runner in runners:
            runner.cancel()
        if runners:
            await asyncio.gather(*runners, return_exceptions=True)

    # ------------------------------------------------------------------ waiting, streams

    async def wait_settled(self, live: _Live, within: float) -> None:
        """Until ``live``'s task ends or needs input, or ``within`` seconds pass."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while a2a.state_of(live.task) not in a2a.TERMINAL_STATES and not live.countered:
            left = deadline - loop.time()
            if left <= 0:
                return
            live.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(live.changed.wait(), left)

    def follow(self, live: _Live) -> asyncio.Queue[dict[str, Any] | None]:
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(STREAM_QUEUE)
        live.streams.add(queue)
        return queue


async def _events(
    queue: asyncio.Queue[dict[str, Any] | None],
) -> AsyncIterator[dict[str, Any]]:
    while True:
        event = await queue.get()
        if event is None:
            return
        yield event


def _rpc_result(request_id: Any, result: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "result": result}


def add_a2a_routes(app: web.Application, node: MeshNode) -> None:
    """Register the agent card and the JSON-RPC endpoint of ``node`` on ``app``."""
    service: A2AService | None = None

    def get_service() -> A2AService:
        nonlocal service
        if service is None:
            service = A2AService(node, getattr(node, "_store", None))
            app[A2A_SERVICE] = service
        return service

    async def on_cleanup(_app: web.Application) -> None:
        if service is not None:
            await service.close()

    app.on_shutdown.append(on_cleanup)
    app.on_startup.append(lambda _app: _ensure(get_service))

    def allowed(request: web.Request, access: Access) -> None:
        try:
            authorize(request, node.config, access)
        except web.HTTPUnauthorized:
            node.count_drop("api_unauthorized")
            raise

    def sees_tasks(request: web.Request) -> bool:
        try:
            authorize(request, node.config, Access.WORK)
        except web.HTTPUnauthorized:
            return False
        return True

    async def agent_card(request: web.Request) -> web.Response:
        svc = get_service()
        signer, _ = await signed_by(request, svc)
        if signer is None:
            allowed(request, Access.READ)
        body, etag = svc.card()
        headers = {
            "ETag": etag,
            "Cache-Control": f"private, max-age={a2a.CARD_MAX_AGE_S}",
        }
        if etag in request.headers.get("If-None-Match", ""):
            return web.Response(status=304, headers=headers)
        return web.Response(body=body, content_type="application/json", headers=headers)

    def rate_limit(request: web.Request, svc: A2AService) -> None:
        if not _is_loopback(request.remote) and not svc.limiter.allow(
            request.remote or "?", time.monotonic()
        ):
            node.count_drop("api_rate_limited")
            raise web.HTTPTooManyRequests(
                text="too many requests from this address; slow down",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )

    def refuse_signature(why: str) -> web.HTTPUnauthorized:
        node.count_drop("a2a_signature_refused")
        return web.HTTPUnauthorized(
            text=f"{a2a.JSONRPC_PATH}: {why}",
            headers={"WWW-Authenticate": 'Meshnode-Ed25519 realm="meshnode"'},
        )

    async def signed_by(request: web.Request, svc: A2AService) -> tuple[str | None, bytes | None]:
        """The admitted node that signed ``request`` and the body it signed, or (None,
        None) for a request that is not signed by an admitted member (judged by the
        usual rule). Form, freshness and admission are checked before the body is read;
        a bad signature, a replay or a malformed header is refused (401)."""
        try:
            signed = parse_headers(request.headers)
        except RequestSignatureError as exc:
            raise refuse_signature(str(exc)) from None
        if signed is None:
            return None, None
        now = time.time()
        stale = freshness_problem(signed.timestamp, now)
        if stale is not None:
            raise refuse_signature(stale)
        if not svc.admitted(signed, now):
            return None, None
        rate_limit(request, svc)
        raw = await _read_body(request, node, MAX_A2A_BODY_BYTES)
        problem = check_signed(
            signed, node.node_id, request.method, request.raw_path, raw, now, svc.replays
        )
        if problem is not None:
            raise refuse_signature(problem)
        return signed.node_id, raw

    async def jsonrpc(request: web.Request) -> web.StreamResponse:
        svc = get_service()
        signer, raw = await signed_by(request, svc)
        if signer is None:
            allowed(request, Access.READ)
            raw = await _read_body(request, node, MAX_A2A_BODY_BYTES)
        assert raw is not None
        request_id: Any = None
        try:
            call = a2a.parse_request(raw)
            request_id = call.id
            problem = a2a.version_problem(request.headers.get("A2A-Version"))
            if problem is not None:
                raise A2AError(ErrorCode.VERSION_NOT_SUPPORTED, problem)
            if call.method in a2a.WORK_METHODS and signer is None:
                allowed(request, Access.WORK)
                rate_limit(request, svc)
            sees = signer is not None or sees_tasks(request)
            return await _dispatch(request, svc, call, sees, signer)
        except A2AError as exc:
            return web.json_response(exc.to_json(request_id))

    app.router.add_get(a2a.AGENT_CARD_PATH, agent_card)
    app.router.add_post(a2a.JSONRPC_PATH, jsonrpc)


async def _ensure(get: Any) -> None:
    get()


async def _dispatch(
    request: web.Request,
    svc: A2AService,
    call: a2a.RpcCall,
    sees: bool,
    signer: str | None = None,
) -> web.StreamResponse:
    """Run one call. ``sees``: the caller may see tasks; ``signer``: an admitted node
    that signed the call, who sees only the tasks it started."""
    method, params, rid = call.method, call.params, call.id
    if method in a2a.PUSH_METHODS:
        raise A2AError(ErrorCode.PUSH_NOT_SUPPORTED, "push notifications are not supported")
    if method == "GetExtendedAgentCard":
        raise A2AError(ErrorCode.UNSUPPORTED_OPERATION, "this agent has no extended card")
    if method in ("SendMessage", "SendStreamingMessage"):
        req = a2a.parse_send(params)
        if method == "SendStreamingMessage":
            return await _stream_send(request, svc, req, rid, signer)
        started = await svc.send(req, method, signer)
        headers = _traceparent_header(started)
        if not req.return_immediately:
            await svc.wait_settled(started, svc.config.a2a_blocking_wait_s)
        svc.reveal(started)
        return web.json_response(
            _rpc_result(rid, {"task": a2a.view(started.task, req.history_length)}),
            headers=headers,
        )
    if method == "ListTasks":
        query = a2a.parse_list(params)
        running = sorted(
            (lv.task for lv in svc.live.values()),
            key=lambda t: str(t["status"].get("timestamp", "")),
            reverse=True,
        )
        # A signer sees its own tasks by id (GetTask); listing them is the operator's.
        tasks, total = svc.book.page(query, running) if sees and signer is None else ([], 0)
        for listed in tasks:
            shown = svc.live.get(listed["id"])
            if shown is not None:
                svc.reveal(shown)
        return web.json_response(_rpc_result(rid, a2a.page(tasks, query, total)))
    task_id, history_length = a2a.parse_id_params(params)
    if signer is not None and svc.owners.get(task_id) != signer:
        sees = False  # another caller's task: as if it did not exist
    live = svc.live.get(task_id) if sees else None
    if live is not None:
        svc.reveal(live)
    task = live.task if live is not None else (svc.book.get(task_id) if sees else None)
    if task is None:
        raise A2AError(ErrorCode.TASK_NOT_FOUND, f"no task {task_id}")
    if method == "GetTask":
        return web.json_response(_rpc_result(rid, a2a.view(task, history_length)))
    if method == "CancelTask":
        return web.json_response(_rpc_result(rid, a2a.view(await svc.cancel(task_id), None)))
    # SubscribeToTask
    if live is None:
        raise A2AError(ErrorCode.UNSUPPORTED_OPERATION, "the task has ended; use GetTask")
    return await _stream(request, svc, live, rid)


async def _stream_send(
    request: web.Request, svc: A2AService, req: SendRequest, rid: Any, signer: str | None
) -> web.StreamResponse:
    if svc.streams >= svc.config.a2a_max_streams:
        raise web.HTTPServiceUnavailable(
            text="too many A2A streams open", headers={"Retry-After": str(RETRY_AFTER_S)}
        )
    live = await svc.send(req, "SendStreamingMessage", signer)
    return await _stream(request, svc, live, rid, _traceparent_header(live))


def _traceparent_header(live: _Live) -> dict[str, str]:
    """The ``traceparent`` of ``live``'s server span, for the response (none untraced)."""
    if live.span is None:
        return {}
    return {TRACEPARENT: format_traceparent(live.span.context)}


async def _stream(
    request: web.Request,
    svc: A2AService,
    live: _Live,
    rid: Any,
    headers: dict[str, str] | None = None,
) -> web.StreamResponse:
    """SSE: the task as it stands, then each update until it ends or needs input."""
    if svc.streams >= svc.config.a2a_max_streams:
        raise web.HTTPServiceUnavailable(
            text="too many A2A streams open", headers={"Retry-After": str(RETRY_AFTER_S)}
        )
    svc.reveal(live)
    queue = svc.follow(live)
    svc.streams += 1
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            **(headers or {}),
        }
    )
    try:
        await response.prepare(request)
        await _sse(response, _rpc_result(rid, {"task": a2a.view(live.task, None)}))
        if a2a.state_of(live.task) not in a2a.TERMINAL_STATES and not live.countered:
            async for event in _events(queue):
                await _sse(response, _rpc_result(rid, event))
        await response.write_eof()
    except (ConnectionError, RuntimeError):
        pass  # the caller went away; the task goes on
    finally:
        live.streams.discard(queue)
        svc.streams -= 1
    return response


async def _sse(response: web.StreamResponse, payload: dict[str, Any]) -> None:
    data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    await response.write(f"data: {data}\n\n".encode())
