"""A2A 1.0 for a mesh node, sans I/O: the agent card, JSON-RPC validation, task states.

Theory of operation
-------------------
Every node is an A2A agent (A2A protocol 1.0, JSON-RPC binding). This module decides
everything that does not need a socket, a clock or a database; the aiohttp routes in
:mod:`meshnode.runtime.a2a_server` carry it out.

* **Card** (:func:`build_card`): one skill per capability of the node's own signed
  manifest (id and name = the capability name, its description, tags, an example built
  from the input schema, ``application/json`` in and out, plus ``text/plain`` in for a
  capability whose input schema takes ``{"text": ...}``), then the gateway skill
  :data:`GATEWAY_SKILL` (route to the mesh), the JSON-RPC interface at
  :data:`JSONRPC_PATH` with ``protocolVersion`` :data:`PROTOCOL_VERSION`, streaming on,
  push notifications off, a bearer security scheme when the API has a token, and the
  request-signature scheme :data:`SIGNATURE_SCHEME` when mesh members may sign
  (:mod:`meshnode.core.request_auth`). The
  runtime signs it (:func:`protocol.jws.sign_card`). Every value in it is a non-empty
  string, list, object or ``true``/``false`` of an optional field, so a client that reads
  it through the A2A protobuf schema sees exactly the bytes that were signed.
* **Requests** (:func:`parse_call` and ``parse_*``): a JSON-RPC 2.0 request object with a
  string method and object params; the ``A2A-Version`` header must be ``1.0`` (a patch
  level is ignored; absent means 0.3, refused with :data:`VERSION_NOT_SUPPORTED`). A
  message has at most :data:`MAX_PARTS` parts, at most :data:`MAX_TEXT_CHARS` characters
  of text, metadata of at most :data:`MAX_METADATA_BYTES` once serialized, ids of at most
  :data:`MAX_ID_CHARS` characters; the body is at most :data:`MAX_BODY_BYTES` and nested
  at most :data:`MAX_JSON_DEPTH` deep (:func:`parse_request`; the runtime refuses a larger
  declared body with HTTP 413 before reading it).
* **What a message asks** (:class:`SendRequest`): the capability named by
  ``metadata.skill`` or ``metadata.capability`` (message or request metadata), the input
  from the first data part (else ``{"text": <all text parts>}``), the requester's terms
  ``metadata.max_cost_usd`` and ``metadata.deadline_s``. A message whose ``taskId`` names
  a task waiting in INPUT_REQUIRED confirms the counter-offer (``metadata.accept`` false
  declines it).
* **States** (:data:`NEGOTIATION_STATES`, :func:`state_for_response`): ACCEPTED →
  WORKING, REJECTED → REJECTED, COUNTERED → INPUT_REQUIRED (the counter terms in a data
  part), a result → COMPLETED with an artifact (a data part) or FAILED (the message says
  why), a cancel → CANCELED. Terminal states never change again.

Errors are :class:`A2AError` with the spec's codes (:class:`ErrorCode`).
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from protocol import Manifest
from protocol.limits import MAX_DEPTH, MAX_VALUE_BYTES
from protocol.messages import TaskStatus

__all__ = [
    "AGENT_CARD_PATH",
    "CARD_MAX_AGE_S",
    "DEFAULT_PAGE_SIZE",
    "GATEWAY_SKILL",
    "JSONRPC_PATH",
    "MAX_ARTIFACTS",
    "MAX_BODY_BYTES",
    "MAX_HISTORY",
    "MAX_ID_CHARS",
    "MAX_JSON_DEPTH",
    "MAX_METADATA_BYTES",
    "MAX_PAGE_SIZE",
    "MAX_PARTS",
    "MAX_REASON_CHARS",
    "MAX_TEXT_CHARS",
    "NEGOTIATION_STATES",
    "PROTOCOL_VERSION",
    "SIGNATURE_SCHEME",
    "TERMINAL_STATES",
    "A2AError",
    "ErrorCode",
    "ListQuery",
    "RpcCall",
    "SendRequest",
    "State",
    "build_card",
    "json_depth",
    "parse_call",
    "parse_id_params",
    "parse_list",
    "parse_request",
    "parse_send",
    "version_problem",
]

PROTOCOL_VERSION = "1.0"
"""The A2A protocol version served (major.minor; a patch level in a header is ignored)."""
JSONRPC_PATH = "/a2a"
"""Path of the JSON-RPC endpoint the card names."""
AGENT_CARD_PATH = "/.well-known/agent-card.json"
"""Where an A2A client looks for the card (A2A 1.0 well-known path)."""
CARD_MAX_AGE_S = 60
"""``Cache-Control: max-age`` of the card: a client re-validates (ETag, 304) after this
long, so a new manifest version reaches clients within a minute."""
MAX_BODY_BYTES = MAX_VALUE_BYTES + 64 * 1024
"""Largest JSON-RPC request body: a task input (at most ``MAX_VALUE_BYTES`` once packed)
plus the message's other fields, like ``POST /v1/delegate``."""
MAX_JSON_DEPTH = MAX_DEPTH
"""Deepest nesting of arrays and objects in a request (the wire format's own ceiling: a
deeper task input could never be sent anyway)."""
MAX_PARTS = 16
"""Most parts in one message (a request needs one data part or a few text parts)."""
MAX_TEXT_CHARS = 64_000
"""Most characters of text across a message's text parts (a task description, not a
document: larger inputs go in a data part, bounded by the body cap)."""
MAX_METADATA_BYTES = 4_096
"""Largest metadata object (message's or request's), serialized as compact JSON."""
MAX_ID_CHARS = 128
"""Longest task, context or message id accepted (ours are 32 hex characters)."""
MAX_HISTORY = 20
"""Messages kept in a task's history (the oldest are dropped beyond it)."""
MAX_ARTIFACTS = 4
"""Artifacts kept per task (one result artifact in practice)."""
MAX_REASON_CHARS = 500
"""Longest status text the node writes (a rejection or failure reason)."""
MAX_PAGE_SIZE = 100
"""Largest ListTasks page."""
DEFAULT_PAGE_SIZE = 50
"""ListTasks page size when the caller gives none."""
SIGNATURE_SCHEME = "meshnodeSignature"
"""Name of the card's security scheme for mesh members' signed requests."""
GATEWAY_SKILL = "meshnode.gateway"
"""Id of the card's last skill: the node as a gateway to the whole mesh (a message naming
it, or no skill, is routed by discovery)."""
MAX_SKILL_EXAMPLE_CHARS = 200
"""Longest example text put in a skill (built from the input schema's properties)."""


class State(enum.StrEnum):
    """A2A 1.0 task states, as they travel in JSON."""

    SUBMITTED = "TASK_STATE_SUBMITTED"
    WORKING = "TASK_STATE_WORKING"
    COMPLETED = "TASK_STATE_COMPLETED"
    FAILED = "TASK_STATE_FAILED"
    CANCELED = "TASK_STATE_CANCELED"
    INPUT_REQUIRED = "TASK_STATE_INPUT_REQUIRED"
    REJECTED = "TASK_STATE_REJECTED"
    AUTH_REQUIRED = "TASK_STATE_AUTH_REQUIRED"


TERMINAL_STATES = frozenset({State.COMPLETED, State.FAILED, State.CANCELED, State.REJECTED})
"""States a task never leaves."""

NEGOTIATION_STATES: Mapping[TaskStatus, State] = {
    TaskStatus.ACCEPTED: State.WORKING,
    TaskStatus.REJECTED: State.REJECTED,
    TaskStatus.COUNTERED: State.INPUT_REQUIRED,
}
"""The A2A state a provider's negotiation answer puts the task in."""


def state_for_response(status: int) -> State | None:
    """The A2A state for a ``TaskResponse.status`` (None for a status that is unknown)."""
    try:
        return NEGOTIATION_STATES[TaskStatus(status)]
    except ValueError:
        return None


def state_for_result(ok: bool) -> State:
    """A signed result ends the task: COMPLETED when ``ok``, else FAILED."""
    return State.COMPLETED if ok else State.FAILED


class ErrorCode(enum.IntEnum):
    """JSON-RPC error codes of A2A 1.0."""

    PARSE_ERROR = -32700
    INVALID_REQUEST = -32600
    METHOD_NOT_FOUND = -32601
    INVALID_PARAMS = -32602
    INTERNAL_ERROR = -32603
    TASK_NOT_FOUND = -32001
    TASK_NOT_CANCELABLE = -32002
    PUSH_NOT_SUPPORTED = -32003
    UNSUPPORTED_OPERATION = -32004
    CONTENT_TYPE_NOT_SUPPORTED = -32005
    VERSION_NOT_SUPPORTED = -32009


class A2AError(Exception):
    """A JSON-RPC error answer: ``code`` (:class:`ErrorCode`), a one-line message, and the
    id of the request it answers when that was readable."""

    def __init__(self, code: ErrorCode, message: str, request_id: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id

    def to_json(self, request_id: Any = None) -> dict[str, Any]:
        if request_id is None:
            request_id = self.request_id
        return {
            "jsonrpc": "2.0",
            "id": request_id,
            "error": {"code": int(self.code), "message": self.message},
        }


PUSH_METHODS = frozenset(
    {
        "CreateTaskPushNotificationConfig",
        "GetTaskPushNotificationConfig",
        "ListTaskPushNotificationConfigs",
        "DeleteTaskPushNotificationConfig",
    }
)
"""Push-notification methods: answered :attr:`ErrorCode.PUSH_NOT_SUPPORTED`."""
METHODS = frozenset(
    {
        "SendMessage",
        "SendStreamingMessage",
        "GetTask",
        "ListTasks",
        "CancelTask",
        "SubscribeToTask",
        "GetExtendedAgentCard",
        *PUSH_METHODS,
    }
)
"""Every method name this endpoint knows (others: :attr:`ErrorCode.METHOD_NOT_FOUND`)."""
WORK_METHODS = frozenset({"SendMessage", "SendStreamingMessage", "CancelTask"})
"""Methods that make or stop work (``Access.WORK``); the others read (``Access.READ``)."""


# ---------------------------------------------------------------------- version, envelope


def version_problem(header: str | None) -> str | None:
    """Why the ``A2A-Version`` header value is refused (None: it is 1.0). Absent or empty
    means 0.3, which is refused."""
    text = (header or "").strip()
    if not text:
        return f"A2A-Version header missing (means 0.3); this agent speaks {PROTOCOL_VERSION}"
    parts = text.split(".")
    if len(parts) < 2 or parts[:2] != PROTOCOL_VERSION.split("."):
        return f"A2A version {text[:20]!r} is not supported; this agent speaks {PROTOCOL_VERSION}"
    return None


def json_depth(value: Any, limit: int = MAX_JSON_DEPTH) -> int:
    """Nesting depth of a decoded JSON value (a scalar is 0, ``[]`` is 1), measured
    without recursion and given up as soon as it passes ``limit``."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        depth += 1
        if depth > deepest:
            deepest = depth
            if deepest > limit:
                return deepest
        stack.extend((child, depth) for child in children)
    return deepest


def parse_request(raw: bytes) -> RpcCall:
    """The JSON-RPC request in the body ``raw``: at most :data:`MAX_BODY_BYTES`, JSON
    (else :attr:`ErrorCode.PARSE_ERROR`), nested at most :data:`MAX_JSON_DEPTH` deep,
    then :func:`parse_call`. Errors carry the request's id when it could be read."""
    if len(raw) > MAX_BODY_BYTES:
        raise A2AError(ErrorCode.INVALID_REQUEST, f"body over {MAX_BODY_BYTES} bytes")
    try:
        body = json.loads(raw)
    except RecursionError:
        raise A2AError(ErrorCode.INVALID_REQUEST, "JSON nested too deep") from None
    except ValueError:
        raise A2AError(ErrorCode.PARSE_ERROR, "the body is not JSON") from None
    request_id = body.get("id") if isinstance(body, dict) else None
    if isinstance(request_id, bool) or not isinstance(request_id, str | int):
        request_id = None
    if json_depth(body) > MAX_JSON_DEPTH:
        raise A2AError(
            ErrorCode.INVALID_REQUEST, f"JSON nested deeper than {MAX_JSON_DEPTH}", request_id
        )
    try:
        return parse_call(body)
    except A2AError as exc:
        exc.request_id = request_id
        raise


@dataclasses.dataclass(frozen=True, slots=True)
class RpcCall:
    """One validated JSON-RPC request."""

    id: str | int | None
    method: str
    params: dict[str, Any]


def parse_call(body: Any) -> RpcCall:
    """The JSON-RPC request in ``body`` (already decoded JSON), or :class:`A2AError`
    (:attr:`ErrorCode.INVALID_REQUEST`, or METHOD_NOT_FOUND for an unknown method)."""
    if not isinstance(body, dict):
        raise A2AError(ErrorCode.INVALID_REQUEST, "a JSON-RPC request must be an object")
    if body.get("jsonrpc") != "2.0":
        raise A2AError(ErrorCode.INVALID_REQUEST, 'jsonrpc must be "2.0"')
    request_id = body.get("id")
    if request_id is not None and (
        isinstance(request_id, bool)
        or not isinstance(request_id, str | int)
        or (isinstance(request_id, str) and len(request_id) > MAX_ID_CHARS)
    ):
        raise A2AError(ErrorCode.INVALID_REQUEST, "id must be a short string or an integer")
    method = body.get("method")
    if not isinstance(method, str) or not method:
        raise A2AError(ErrorCode.INVALID_REQUEST, "method must be a string")
    if method not in METHODS:
        raise A2AError(ErrorCode.METHOD_NOT_FOUND, f"no method {method[:64]!r}")
    params = body.get("params", {})
    if not isinstance(params, dict):
        raise A2AError(ErrorCode.INVALID_PARAMS, "params must be an object")
    return RpcCall(request_id, method, params)


# ---------------------------------------------------------------------- params


def _invalid(text: str) -> A2AError:
    return A2AError(ErrorCode.INVALID_PARAMS, text)


def _opt_id(obj: Mapping[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > MAX_ID_CHARS:
        raise _invalid(f"{key} must be a string of at most {MAX_ID_CHARS} characters")
    return value


def _metadata(obj: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = obj.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _invalid(f"{key} must be an object")
    size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
    if size > MAX_METADATA_BYTES:
        raise _invalid(f"{key} is {size} bytes; at most {MAX_METADATA_BYTES}")
    return value


def _opt_positive(meta: Mapping[str, Any], key: str) -> float | None:
    value = meta.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _invalid(f"metadata.{key} must be a number")
    if value <= 0:
        raise _invalid(f"metadata.{key} must be positive")
    return float(value)


def _opt_int(obj: Mapping[str, Any], key: str, low: int, high: int) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _invalid(f"{key} must be an integer in [{low}, {high}]")
    return value


@dataclasses.dataclass(frozen=True, slots=True)
class SendRequest:
    """What a ``SendMessage`` asks (see the module docstring)."""

    message: dict[str, Any]
    """The message as received (validated; kept in the task's history)."""
    message_id: str
    task_id: str | None
    context_id: str | None
    capability: str | None
    text: str
    data: Any
    has_data: bool
    max_cost_usd: float | None
    deadline_s: float | None
    accept: bool
    """For a message confirming a counter-offer: False declines it."""
    return_immediately: bool
    history_length: int | None

    @property
    def task_input(self) -> Any:
        """The capability's input: the data part, else ``{"text": text}``."""
        return self.data if self.has_data else {"text": self.text}


def parse_send(params: Mapping[str, Any]) -> SendRequest:
    """The ``SendMessage``/``SendStreamingMessage`` params, checked against every cap."""
    message = params.get("message")
    if not isinstance(message, dict):
        raise _invalid("message must be an object")
    message_id = _opt_id(message, "messageId")
    if message_id is None:
        raise _invalid("message.messageId is required")
    role = message.get("role")
    if role not in (None, "ROLE_USER", "user", 1):
        raise _invalid("message.role must be ROLE_USER")
    parts = message.get("parts")
    if not isinstance(parts, list) or not parts:
        raise _invalid("message.parts must be a non-empty list")
    if len(parts) > MAX_PARTS:
        raise _invalid(f"message has {len(parts)} parts; at most {MAX_PARTS}")
    texts: list[str] = []
    data: Any = None
    has_data = False
    for part in parts:
        if not isinstance(part, dict):
            raise _invalid("every part must be an object")
        _metadata(part, "metadata")
        if "text" in part:
            if not isinstance(part["text"], str):
                raise _invalid("a text part's text must be a string")
            texts.append(part["text"])
        elif "data" in part:
            if not has_data:
                data, has_data = part["data"], True
        elif "url" in part or "raw" in part:
            raise A2AError(
                ErrorCode.CONTENT_TYPE_NOT_SUPPORTED,
                "file parts are not supported: send text or a data part",
            )
        else:
            raise _invalid("a part must hold text or data")
    text = "\n".join(texts)
    if len(text) > MAX_TEXT_CHARS:
        raise _invalid(f"message text is {len(text)} characters; at most {MAX_TEXT_CHARS}")
    meta = {**_metadata(params, "metadata"), **_metadata(message, "metadata")}
    capability = meta.get("skill", meta.get("capability"))
    if capability is not None and (not isinstance(capability, str) or not capability):
        raise _invalid("metadata.skill must be a capability name")
    if capability == GATEWAY_SKILL:
        capability = None  # route by the text
    accept = meta.get("accept", True)
    if not isinstance(accept, bool):
        raise _invalid("metadata.accept must be true or false")
    config = params.get("configuration") or {}
    if not isinstance(config, dict):
        raise _invalid("configuration must be an object")
    if config.get("taskPushNotificationConfig"):
        raise A2AError(ErrorCode.PUSH_NOT_SUPPORTED, "push notifications are not supported")
    return_immediately = config.get("returnImmediately", False)
    if not isinstance(return_immediately, bool):
        raise _invalid("configuration.returnImmediately must be a boolean")
    if not has_data and not text.strip() and capability is None:
        raise _invalid("the message has neither a data part nor text")
    return SendRequest(
        message=message,
        message_id=message_id,
        task_id=_opt_id(message, "taskId"),
        context_id=_opt_id(message, "contextId"),
        capability=capability,
        text=text,
        data=data,
        has_data=has_data,
        max_cost_usd=_opt_positive(meta, "max_cost_usd"),
        deadline_s=_opt_positive(meta, "deadline_s"),
        accept=accept,
        return_immediately=return_immediately,
        history_length=_opt_int(config, "historyLength", 0, MAX_HISTORY),
    )


def parse_id_params(params: Mapping[str, Any]) -> tuple[str, int | None]:
    """``(task id, historyLength)`` of GetTask/CancelTask/SubscribeToTask params."""
    task_id = _opt_id(params, "id")
    if task_id is None:
        raise _invalid("id (the task id) is required")
    return task_id, _opt_int(params, "historyLength", 0, MAX_HISTORY)


@dataclasses.dataclass(frozen=True, slots=True)
class ListQuery:
    """A checked ``ListTasks`` query."""

    context_id: str | None
    state: State | None
    page_size: int
    offset: int
    history_length: int
    include_artifacts: bool


def parse_list(params: Mapping[str, Any]) -> ListQuery:
    """The ``ListTasks`` params: ``contextId``, ``status``, ``pageSize`` (at most
    :data:`MAX_PAGE_SIZE`), ``pageToken`` (an opaque offset from a previous page),
    ``historyLength``, ``includeArtifacts``."""
    status = params.get("status")
    state: State | None = None
    if status not in (None, "", "TASK_STATE_UNSPECIFIED", 0):
        try:
            state = State(status)
        except ValueError:
            raise _invalid("status must be a TASK_STATE_* name") from None
    token = params.get("pageToken") or ""
    if not isinstance(token, str) or len(token) > 12 or (token and not token.isdigit()):
        raise _invalid("pageToken is not one this agent issued")
    include = params.get("includeArtifacts", False)
    if not isinstance(include, bool):
        raise _invalid("includeArtifacts must be a boolean")
    return ListQuery(
        context_id=_opt_id(params, "contextId"),
        state=state,
        page_size=_opt_int(params, "pageSize", 1, MAX_PAGE_SIZE) or DEFAULT_PAGE_SIZE,
        offset=int(token) if token else 0,
        history_length=_opt_int(params, "historyLength", 0, MAX_HISTORY) or 0,
        include_artifacts=include,
    )


# ---------------------------------------------------------------------- task documents


def timestamp(now: float) -> str:
    """RFC 3339 UTC timestamp of UNIX time ``now`` (millisecond precision)."""
    moment = datetime.datetime.fromtimestamp(now, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def agent_message(
    task_id: str, context_id: str, message_id: str, parts: list[Any]
) -> dict[str, Any]:
    """A message from this agent (in a status or the history)."""
    return {
        "messageId": message_id,
        "contextId": context_id,
        "taskId": task_id,
        "role": "ROLE_AGENT",
        "parts": parts,
    }


def status(
    task: Mapping[str, Any], state: State, now: float, text: str = "", data: Any = None
) -> dict[str, Any]:
    """A TaskStatus for ``task`` in ``state`` at ``now``, with an agent message holding
    ``text`` (clipped to :data:`MAX_REASON_CHARS`) and/or a data part."""
    out: dict[str, Any] = {"state": state.value, "timestamp": timestamp(now)}
    parts: list[Any] = []
    if text:
        parts.append({"text": text[:MAX_REASON_CHARS]})
    if data is not None:
        parts.append({"data": data})
    if parts:
        count = len(task.get("history", ())) + 1
        out["message"] = agent_message(
            task["id"], task["contextId"], f"{task['id']}-s{count}-{state.name.lower()}", parts
        )
    return out


def new_task(
    task_id: str, context_id: str, message: Mapping[str, Any], now: float
) -> dict[str, Any]:
    """A SUBMITTED task holding ``message`` (with the task and context ids filled in)."""
    task: dict[str, Any] = {"id": task_id, "contextId": context_id, "artifacts": [], "history": []}
    add_history(task, message)
    task["status"] = status(task, State.SUBMITTED, now)
    return task


def add_history(task: dict[str, Any], message: Mapping[str, Any]) -> None:
    """Append ``message`` to the task's history (ids filled in), keeping the last
    :data:`MAX_HISTORY`."""
    entry = {**message, "taskId": task["id"], "contextId": task["contextId"]}
    history = [*task.get("history", []), entry]
    task["history"] = history[-MAX_HISTORY:]


def result_artifact(task_id: str, output: Any, provider: str) -> dict[str, Any]:
    """The artifact of a delivered result: one data part, the provider in metadata."""
    return {
        "artifactId": f"{task_id}-result",
        "name": "result",
        "parts": [{"data": output}],
        "metadata": {"provider": provider},
    }


def state_of(task: Mapping[str, Any]) -> State:
    return State(task["status"]["state"])


def view(
    task: Mapping[str, Any], history_length: int | None, include_artifacts: bool = True
) -> dict[str, Any]:
    """The task as returned to a caller: the last ``history_length`` messages (all kept
    if None), artifacts unless ``include_artifacts`` is False."""
    out = dict(task)
    history = list(task.get("history", []))
    if history_length is not None:
        history = history[-history_length:] if history_length else []
    out["history"] = history
    if not include_artifacts:
        out["artifacts"] = []
    return out


# ---------------------------------------------------------------------- card


def _takes_text(schema: Mapping[str, Any] | None) -> bool:
    """Whether an input schema accepts ``{"text": <string>}`` (or anything at all)."""
    if not schema:
        return True
    props = schema.get("properties")
    required = schema.get("required") or []
    if not isinstance(props, Mapping):
        return False
    text = props.get("text")
    if not isinstance(text, Mapping) or text.get("type") != "string":
        return False
    return all(r == "text" for r in required)


def _example(name: str, schema: Mapping[str, Any] | None) -> str:
    if not schema or not isinstance(schema.get("properties"), Mapping):
        return ""
    fields = {
        k: f"<{v.get('type', 'value')}>" if isinstance(v, Mapping) else "<value>"
        for k, v in list(schema["properties"].items())[:8]
    }
    text = json.dumps({"metadata": {"skill": name}, "data": fields}, separators=(",", ":"))
    return text if len(text) <= MAX_SKILL_EXAMPLE_CHARS else ""


def build_card(
    manifest: Manifest,
    url: str,
    *,
    bearer: bool,
    description: str = "",
    signed_requests: bool = False,
) -> dict[str, Any]:
    """The (unsigned) agent card of the node whose signed ``manifest`` this is, serving
    JSON-RPC at ``url``; ``bearer`` declares the API token's bearer scheme,
    ``signed_requests`` the mesh members' request signatures
    (:mod:`meshnode.core.request_auth`; either scheme is enough)."""
    skills = []
    for cap in manifest.capabilities:
        input_modes = ["application/json"]
        if _takes_text(cap.input_schema):
            input_modes.append("text/plain")
        skill: dict[str, Any] = {
            "id": cap.name,
            "name": cap.name,
            "description": cap.description or cap.name,
            "tags": list(cap.tags) or ["meshnode"],
            "inputModes": input_modes,
            "outputModes": ["application/json"],
        }
        example = _example(cap.name, cap.input_schema)
        if example:
            skill["examples"] = [example]
        skills.append(skill)
    skills.append(
        {
            "id": GATEWAY_SKILL,
            "name": "mesh gateway",
            "description": "Routes a request to the best peer of the mesh, with fallback: "
            "name a capability in metadata.skill, or describe the task in text",
            "tags": ["gateway", "mesh"],
            "inputModes": ["text/plain", "application/json"],
            "outputModes": ["application/json"],
        }
    )
    card: dict[str, Any] = {
        "name": manifest.name or manifest.node_id[:16],
        "description": description
        or f"meshnode agent {manifest.name}: its own capabilities, and a gateway to the mesh",
        "supportedInterfaces": [
            {"url": url, "protocolBinding": "JSONRPC", "protocolVersion": PROTOCOL_VERSION}
        ],
        "version": str(manifest.version),
        "capabilities": {"streaming": True, "pushNotifications": False},
        "defaultInputModes": ["application/json", "text/plain"],
        "defaultOutputModes": ["application/json"],
        "skills": skills,
    }
    schemes: dict[str, Any] = {}
    if bearer:
        schemes["bearer"] = {
            "httpAuthSecurityScheme": {
                "scheme": "Bearer",
                "description": "the node's API token (meshnode run --api-token)",
            }
        }
    if signed_requests:
        schemes[SIGNATURE_SCHEME] = {
            "apiKeySecurityScheme": {
                "location": "header",
                "name": "Meshnode-Signature",
                "description": "a mesh member's Ed25519 request signature "
                "(headers Meshnode-Node, Meshnode-Timestamp, Meshnode-Nonce, "
                "Meshnode-Signature; scheme meshnode-ed25519-v1, docs/interop.md)",
            }
        }
    if schemes:
        card["securitySchemes"] = schemes
        card["securityRequirements"] = [{"schemes": {name: {"list": []}}} for name in schemes]
    return card


def page(tasks: Sequence[dict[str, Any]], query: ListQuery, total: int) -> dict[str, Any]:
    """A ListTasks result for one page of ``tasks`` (already filtered and ordered)."""
    next_offset = query.offset + len(tasks)
    return {
        "tasks": [view(t, query.history_length, query.include_artifacts) for t in tasks],
        "nextPageToken": str(next_offset) if next_offset < total else "",
        "pageSize": query.page_size,
        "totalSize": total,
    }
