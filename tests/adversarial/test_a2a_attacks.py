"""Hostile A2A callers against a real ``meshnode run`` process.

Malformed, oversized and deeply nested JSON-RPC bodies get the spec's error (or HTTP 413)
and change nothing; a caller that may only read (open reads, no token) sees no task; an
abandoned counter-offer does not hold a live task forever; the node stays healthy
throughout.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from meshnode.core import a2a
from meshnode.runtime.a2a_server import COUNTER_LAPSE_SLACK_S, MAX_A2A_BODY_BYTES
from tests.adversarial.attack import NodeProcess, wait_until

pytestmark = pytest.mark.slow

AGENTS = str(Path(__file__).parents[1] / "integration" / "a2a_agents.py")
TOKEN = "adversarial-a2a-token-0123"
HOLD_S = 5.0
"""The provider's reservation hold (``provider.RESERVATION_HOLD_S``)."""


@pytest.fixture(scope="module")
def victim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    base = tmp_path_factory.mktemp("a2a")
    node = NodeProcess(
        "v",
        base / "v",
        [],
        extra=[
            "--agent",
            f"{AGENTS}:A2AWorker",
            "--embedder",
            "hashing",
            "--max-concurrent-tasks",
            "1",
            "--api-token",
            TOKEN,
            "--no-trust-loopback",
            "--open-reads",
        ],
    ).start()
    yield node
    node.stop()


def call(
    node: NodeProcess,
    body: Any,
    *,
    token: str | None = TOKEN,
    raw: bytes | None = None,
    version: str | None = "1.0",
) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if version:
        headers["A2A-Version"] = version
    url = f"http://{node.address}/a2a"
    if raw is not None:
        return httpx.post(url, content=raw, headers=headers, timeout=10)
    return httpx.post(url, json=body, headers=headers, timeout=10)


def send_body(data: Any, **meta: Any) -> dict[str, Any]:
    message = {
        "messageId": uuid.uuid4().hex,
        "role": "ROLE_USER",
        "parts": [{"data": data}],
        "metadata": {"skill": "slow_echo", **meta},
    }
    return {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "SendMessage",
        "params": {"message": message, "configuration": {"returnImmediately": True}},
    }


def error_code(response: httpx.Response) -> int:
    assert response.status_code == 200, response.text
    return int(response.json()["error"]["code"])


def healthy(node: NodeProcess) -> bool:
    return bool(node.get("/v1/health")["status"] in ("ok", "degraded"))


@pytest.mark.parametrize(
    ("what", "raw", "code"),
    [
        ("not JSON", b"{nope", -32700),
        ("nested 10,000 deep", b"[" * 10_000 + b"]" * 10_000, -32600),
        ("an array", b"[1, 2]", -32600),
        ("unknown method", b'{"jsonrpc":"2.0","id":1,"method":"message/send"}', -32601),
        (
            "push config",
            b'{"jsonrpc":"2.0","id":1,"method":"CreateTaskPushNotificationConfig","params":{}}',
            -32003,
        ),
        (
            "unknown task",
            b'{"jsonrpc":"2.0","id":1,"method":"GetTask","params":{"id":"x"}}',
            -32001,
        ),
        ("parts flood", None, -32602),
        ("huge metadata", None, -32602),
    ],
)
def test_malformed_requests_get_the_spec_error(
    victim: NodeProcess, what: str, raw: bytes | None, code: int
) -> None:
    if what == "parts flood":
        body = send_body({"text": "x"})
        body["params"]["message"]["parts"] = [{"text": "x"}] * 10_000
        response = call(victim, body)
    elif what == "huge metadata":
        response = call(victim, send_body({"text": "x"}, pad="x" * (a2a.MAX_METADATA_BYTES * 50)))
    else:
        response = call(victim, None, raw=raw)
    assert error_code(response) == code, what
    assert healthy(victim)


def test_an_oversized_body_is_refused_before_it_is_read(victim: NodeProcess) -> None:
    response = call(victim, None, raw=b" " * (MAX_A2A_BODY_BYTES + 1))
    assert response.status_code == 413
    assert healthy(victim)


def test_a_reader_without_work_access_sees_no_task(victim: NodeProcess) -> None:
    started = call(victim, send_body({"text": "secret"})).json()["result"]["task"]
    listed = {"jsonrpc": "2.0", "id": 2, "method": "ListTasks", "params": {}}
    get = {"jsonrpc": "2.0", "id": 3, "method": "GetTask", "params": {"id": started["id"]}}
    # Open reads let anyone read the card and call the read methods...
    assert httpx.get(f"http://{victim.address}/.well-known/agent-card.json").status_code == 200
    assert call(victim, listed, token=None).json()["result"]["tasks"] == []
    assert error_code(call(victim, get, token=None)) == -32001
    # ...but the tasks (inputs and outputs) are for the token's holder only.
    assert call(victim, get).json()["result"]["id"] == started["id"]
    assert started["id"] in {t["id"] for t in call(victim, listed).json()["result"]["tasks"]}
    # And work needs the token.
    assert call(victim, send_body({"text": "x"}), token=None).status_code == 401
    assert call(victim, send_body({"text": "x"}), token="wrong-token-0123456789").status_code == 401


def test_an_abandoned_counter_offer_lapses(victim: NodeProcess) -> None:
    busy = call(victim, send_body({"text": "busy", "sleep_s": 3})).json()["result"]["task"]
    body = send_body({"text": "queued"})
    body["params"]["configuration"] = {}
    countered = call(victim, body).json()["result"]["task"]
    assert countered["status"]["state"] == "TASK_STATE_INPUT_REQUIRED"
    get = {"jsonrpc": "2.0", "id": 3, "method": "GetTask", "params": {"id": countered["id"]}}
    started = time.monotonic()
    wait_until(
        lambda: call(victim, get).json()["result"]["status"]["state"] == "TASK_STATE_REJECTED",
        HOLD_S + COUNTER_LAPSE_SLACK_S + 10,
        "the unconfirmed counter-offer is rejected",
    )
    assert time.monotonic() - started >= HOLD_S * 0.5
    confirm = send_body({"text": "late"})
    confirm["params"]["message"]["taskId"] = countered["id"]
    assert error_code(call(victim, confirm)) == -32004  # the task has ended
    get_busy = {"jsonrpc": "2.0", "id": 4, "method": "GetTask", "params": {"id": busy["id"]}}
    wait_until(
        lambda: (
            call(victim, get_busy).json()["result"]["status"]["state"] == "TASK_STATE_COMPLETED"
        ),
        10,
        "the busy task completes",
    )
