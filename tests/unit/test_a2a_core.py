"""The sans-I/O A2A rules: the card from a manifest, JSON-RPC validation and its caps,
the version header, the state mapping."""

from __future__ import annotations

import json
from typing import Any

import pytest

from meshnode.capability import make_capability
from meshnode.core import a2a
from meshnode.core.a2a import A2AError, ErrorCode, State
from protocol import Identity, Manifest
from protocol.messages import TaskStatus

TEXT = {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}}
NUMS = {"type": "object", "required": ["a"], "properties": {"a": {"type": "number"}}}


def manifest(version: int = 1) -> Manifest:
    return Manifest.create(
        Identity.generate(),
        name="worker",
        endpoint="127.0.0.1:7000",
        capabilities=[
            make_capability(name="echo", description="Echo text", input_schema=TEXT, tags=["t"]),
            make_capability(name="add", description="Add numbers", input_schema=NUMS),
        ],
        max_concurrent_tasks=4,
        version=version,
    )


# ---------------------------------------------------------------------- card


def test_card_has_one_skill_per_capability_and_the_interface() -> None:
    m = manifest(7)
    card = a2a.build_card(m, "http://127.0.0.1:7000/a2a", bearer=False)
    assert [s["id"] for s in card["skills"]] == ["echo", "add", a2a.GATEWAY_SKILL]
    echo, add, _gateway = card["skills"]
    assert echo["description"] == "Echo text"
    assert echo["tags"] == ["t"]
    assert echo["inputModes"] == ["application/json", "text/plain"]  # takes {"text": ...}
    assert add["inputModes"] == ["application/json"]
    assert json.loads(add["examples"][0]) == {
        "metadata": {"skill": "add"},
        "data": {"a": "<number>"},
    }
    assert card["supportedInterfaces"] == [
        {"url": "http://127.0.0.1:7000/a2a", "protocolBinding": "JSONRPC", "protocolVersion": "1.0"}
    ]
    assert card["capabilities"]["streaming"] is True
    assert card["version"] == "7"
    assert "securitySchemes" not in card


def test_card_declares_bearer_when_a_token_is_set() -> None:
    card = a2a.build_card(manifest(), "http://h/a2a", bearer=True)
    assert card["securitySchemes"]["bearer"]["httpAuthSecurityScheme"]["scheme"] == "Bearer"
    assert card["securityRequirements"] == [{"schemes": {"bearer": {"list": []}}}]


def test_card_round_trips_through_the_sdk_schema() -> None:
    """Every field we write survives the SDK's protobuf parse: what we sign is what a
    client re-serializes."""
    pb = pytest.importorskip("a2a.types.a2a_pb2")
    from google.protobuf.json_format import MessageToDict, ParseDict

    from protocol.jws import drop_empty

    card = a2a.build_card(manifest(), "http://h/a2a", bearer=True)
    parsed = MessageToDict(ParseDict(card, pb.AgentCard()))
    assert drop_empty(parsed) == drop_empty(card)


# ---------------------------------------------------------------------- version


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        ("1.0", True),
        ("1.0.3", True),
        (" 1.0 ", True),
        (None, False),
        ("", False),
        ("0.3", False),
        ("1.1", False),
        ("2.0", False),
        ("1", False),
        ("x" * 500, False),
    ],
)
def test_version_header(header: str | None, ok: bool) -> None:
    assert (a2a.version_problem(header) is None) is ok


# ---------------------------------------------------------------------- JSON-RPC envelope


def rpc(method: str = "GetTask", params: Any = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"jsonrpc": "2.0", "id": 1, "method": method}
    if params is not None:
        body["params"] = params
    body.update(extra)
    return body


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ([], ErrorCode.INVALID_REQUEST),
        ({"id": 1, "method": "GetTask"}, ErrorCode.INVALID_REQUEST),
        (rpc(jsonrpc="1.0"), ErrorCode.INVALID_REQUEST),
        (rpc(id=True), ErrorCode.INVALID_REQUEST),
        (rpc(id="x" * 500), ErrorCode.INVALID_REQUEST),
        (rpc(method=5), ErrorCode.INVALID_REQUEST),
        (rpc(method="tasks/get"), ErrorCode.METHOD_NOT_FOUND),
        (rpc(params=[1]), ErrorCode.INVALID_PARAMS),
    ],
)
def test_bad_envelopes(body: Any, code: ErrorCode) -> None:
    with pytest.raises(A2AError) as err:
        a2a.parse_call(body)
    assert err.value.code is code


def test_a_good_envelope() -> None:
    call = a2a.parse_call(rpc("SendMessage", {"message": {}}))
    assert (call.id, call.method, call.params) == (1, "SendMessage", {"message": {}})


# ---------------------------------------------------------------------- SendMessage params


def send(parts: Any = None, meta: Any = None, **msg: Any) -> dict[str, Any]:
    message: dict[str, Any] = {
        "messageId": "m1",
        "role": "ROLE_USER",
        "parts": parts if parts is not None else [{"data": {"text": "hi"}}],
    }
    if meta is not None:
        message["metadata"] = meta
    message.update(msg)
    return {"message": message}


def test_send_reads_skill_input_and_terms() -> None:
    req = a2a.parse_send(
        send(meta={"skill": "echo", "max_cost_usd": 0.5, "deadline_s": 3}, taskId="t1")
    )
    assert req.capability == "echo"
    assert req.task_input == {"text": "hi"}
    assert (req.max_cost_usd, req.deadline_s, req.task_id) == (0.5, 3.0, "t1")
    text_only = a2a.parse_send(send(parts=[{"text": "summarize"}, {"text": "this"}]))
    assert text_only.capability is None
    assert text_only.task_input == {"text": "summarize\nthis"}
    assert a2a.parse_send({**send(), "metadata": {"capability": "add"}}).capability == "add"
    gateway = a2a.parse_send(send(parts=[{"text": "x"}], meta={"skill": a2a.GATEWAY_SKILL}))
    assert gateway.capability is None


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({}, ErrorCode.INVALID_PARAMS),
        (send(parts=[]), ErrorCode.INVALID_PARAMS),
        (send(parts=[{"text": "x"}] * (a2a.MAX_PARTS + 1)), ErrorCode.INVALID_PARAMS),
        (send(parts=[{"text": "x" * (a2a.MAX_TEXT_CHARS + 1)}]), ErrorCode.INVALID_PARAMS),
        (send(meta={"pad": "x" * a2a.MAX_METADATA_BYTES}), ErrorCode.INVALID_PARAMS),
        (
            send(parts=[{"text": "x", "metadata": {"p": "x" * a2a.MAX_METADATA_BYTES}}]),
            ErrorCode.INVALID_PARAMS,
        ),
        (send(messageId="x" * (a2a.MAX_ID_CHARS + 1)), ErrorCode.INVALID_PARAMS),
        (send(messageId=None), ErrorCode.INVALID_PARAMS),
        (send(taskId=7), ErrorCode.INVALID_PARAMS),
        (send(role="ROLE_AGENT"), ErrorCode.INVALID_PARAMS),
        (send(parts=[{"url": "http://x/y"}]), ErrorCode.CONTENT_TYPE_NOT_SUPPORTED),
        (send(parts=[{"nothing": 1}]), ErrorCode.INVALID_PARAMS),
        (send(parts=[{"text": 5}]), ErrorCode.INVALID_PARAMS),
        (send(parts=[{"text": "  "}]), ErrorCode.INVALID_PARAMS),
        (send(meta={"skill": 3}), ErrorCode.INVALID_PARAMS),
        (send(meta={"max_cost_usd": -1}), ErrorCode.INVALID_PARAMS),
        (send(meta={"deadline_s": float("inf")}), ErrorCode.INVALID_PARAMS),
        (send(meta={"deadline_s": True}), ErrorCode.INVALID_PARAMS),
        (send(meta={"accept": "no"}), ErrorCode.INVALID_PARAMS),
        (
            {**send(), "configuration": {"taskPushNotificationConfig": {"url": "http://x"}}},
            ErrorCode.PUSH_NOT_SUPPORTED,
        ),
        (
            {**send(), "configuration": {"historyLength": a2a.MAX_HISTORY + 1}},
            ErrorCode.INVALID_PARAMS,
        ),
        ({**send(), "configuration": {"returnImmediately": "yes"}}, ErrorCode.INVALID_PARAMS),
    ],
)
def test_send_caps_and_refusals(params: Any, code: ErrorCode) -> None:
    with pytest.raises(A2AError) as err:
        a2a.parse_send(params)
    assert err.value.code is code


# ---------------------------------------------------------------------- other params


def test_list_query() -> None:
    q = a2a.parse_list(
        {"contextId": "c", "status": "TASK_STATE_WORKING", "pageSize": 5, "pageToken": "10"}
    )
    assert (q.context_id, q.state, q.page_size, q.offset) == ("c", State.WORKING, 5, 10)
    assert a2a.parse_list({}).page_size == a2a.DEFAULT_PAGE_SIZE
    for bad in (
        {"pageSize": a2a.MAX_PAGE_SIZE + 1},
        {"pageSize": 0},
        {"status": "DONE"},
        {"pageToken": "abc"},
        {"pageToken": "9" * 20},
        {"includeArtifacts": 1},
    ):
        with pytest.raises(A2AError):
            a2a.parse_list(bad)


def test_page_token_walks_the_list() -> None:
    tasks = [a2a.new_task(f"t{i}", "c", {"messageId": "m", "parts": []}, 0.0) for i in range(3)]
    first = a2a.page(tasks[:2], a2a.parse_list({"pageSize": 2}), total=3)
    assert first["nextPageToken"] == "2"
    last = a2a.page(tasks[2:], a2a.parse_list({"pageSize": 2, "pageToken": "2"}), total=3)
    assert last["nextPageToken"] == ""


def test_id_params() -> None:
    assert a2a.parse_id_params({"id": "t", "historyLength": 2}) == ("t", 2)
    for bad in ({}, {"id": 3}, {"id": "t", "historyLength": -1}):
        with pytest.raises(A2AError):
            a2a.parse_id_params(bad)


# ---------------------------------------------------------------------- states


@pytest.mark.parametrize(
    ("status", "state"),
    [
        (TaskStatus.ACCEPTED, State.WORKING),
        (TaskStatus.REJECTED, State.REJECTED),
        (TaskStatus.COUNTERED, State.INPUT_REQUIRED),
        (99, None),
    ],
)
def test_negotiation_maps_to_states(status: int, state: State | None) -> None:
    assert a2a.state_for_response(status) is state


def test_results_and_terminal_states() -> None:
    assert a2a.state_for_result(True) is State.COMPLETED
    assert a2a.state_for_result(False) is State.FAILED
    assert {State.COMPLETED, State.FAILED, State.CANCELED, State.REJECTED} == a2a.TERMINAL_STATES


def test_history_is_bounded_and_status_text_clipped() -> None:
    task = a2a.new_task("t", "c", {"messageId": "m0", "parts": []}, 0.0)
    for i in range(a2a.MAX_HISTORY + 5):
        a2a.add_history(task, {"messageId": f"m{i + 1}", "parts": []})
    assert len(task["history"]) == a2a.MAX_HISTORY
    assert task["history"][-1]["messageId"] == f"m{a2a.MAX_HISTORY + 5}"
    st = a2a.status(task, State.FAILED, 0.0, "x" * 10_000)
    assert len(st["message"]["parts"][0]["text"]) == a2a.MAX_REASON_CHARS
    assert st["timestamp"] == "1970-01-01T00:00:00.000Z"
    assert a2a.view(task, 2)["history"] == task["history"][-2:]
    assert a2a.view(task, 0)["history"] == []


# ---------------------------------------------------------------------- raw bodies


@pytest.mark.parametrize(
    ("raw", "code", "request_id"),
    [
        (b"{nope", ErrorCode.PARSE_ERROR, None),
        (b"\xff\xfe", ErrorCode.PARSE_ERROR, None),
        (b"[" * 100_000 + b"]" * 100_000, ErrorCode.INVALID_REQUEST, None),
        (
            b'{"jsonrpc":"2.0","id":9,"method":"GetTask","params":'
            + b"[" * a2a.MAX_JSON_DEPTH
            + b"]" * a2a.MAX_JSON_DEPTH
            + b"}",
            ErrorCode.INVALID_REQUEST,
            9,
        ),
        (b'{"jsonrpc":"2.0","id":"r","method":"Nope"}', ErrorCode.METHOD_NOT_FOUND, "r"),
        (b" " * (a2a.MAX_BODY_BYTES + 1), ErrorCode.INVALID_REQUEST, None),
    ],
)
def test_raw_bodies(raw: bytes, code: ErrorCode, request_id: object) -> None:
    with pytest.raises(A2AError) as err:
        a2a.parse_request(raw)
    assert err.value.code is code
    assert err.value.to_json()["id"] == request_id


def test_depth_at_the_cap_is_accepted() -> None:
    params: object = {"id": "t"}
    while a2a.json_depth({"params": params}) < a2a.MAX_JSON_DEPTH:
        params = {"id": "t", "x": [params]}
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": params})
    assert a2a.parse_request(body.encode()).method == "GetTask"
