"""A2A 1.0 against real ``meshnode run`` processes, driven by the official a2a-sdk client.

The card is resolved with the SDK's resolver and its JWS checked with the SDK's verifier;
messages are sent, streamed, listed, cancelled and confirmed through the SDK's JSON-RPC
transport; a restarted node still answers GetTask; a text-only message is routed by the
gateway to a capability on another node; the version header and the bearer token are
enforced.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.cluster import NodeProcess, wait_until

sdk_client = pytest.importorskip("a2a.client")
pytest.importorskip("jwt")
from a2a.client import A2ACardResolver, ClientConfig, ClientFactory  # noqa: E402
from a2a.client.errors import A2AClientError  # noqa: E402
from a2a.types import a2a_pb2 as pb  # noqa: E402
from a2a.utils.errors import TaskNotCancelableError  # noqa: E402
from a2a.utils.signing import create_signature_verifier  # noqa: E402
from google.protobuf.json_format import MessageToDict, ParseDict  # noqa: E402
from jwt import PyJWK  # noqa: E402

from protocol.jws import jwk_for_node  # noqa: E402

pytestmark = pytest.mark.slow

AGENTS = str(Path(__file__).with_name("a2a_agents.py"))
SETTLE_S = 20.0
"""Longest wait for a task state or a mesh condition."""
TOKEN = "a2a-test-token-0123456789"


def start(
    base: Path,
    name: str,
    agent: str | None,
    *extra: str,
    seeds: list[str] | None = None,
    port: int = 0,
) -> NodeProcess:
    args = ["--embedder", "hashing", *extra]
    if agent is not None:
        args = ["--agent", f"{AGENTS}:{agent}", *args]
    return NodeProcess(name, base / name, seeds or [], port=port, extra=args).start()


@pytest.fixture
def procs() -> Iterator[list[NodeProcess]]:
    started: list[NodeProcess] = []
    yield started
    for proc in started:
        proc.stop()


def discoverable(gateway: NodeProcess, provider: NodeProcess, capability: str) -> None:
    """Wait until the gateway's discovery offers ``capability`` on ``provider``."""

    def offered() -> bool:
        reply = httpx.post(
            f"http://{gateway.address}/v1/discover",
            json={"capability_name": capability, "top_k": 5},
            timeout=5,
        )
        return reply.status_code == 200 and any(
            c["node_id"] == provider.node_id for c in reply.json()["candidates"]
        )

    wait_until(offered, SETTLE_S, f"the gateway's discovery offers {capability}")


def verifier() -> Any:
    return create_signature_verifier(lambda kid, jku: PyJWK(jwk_for_node(kid)), ["EdDSA"])


class Agent:
    """The SDK client for one node, with its verified card."""

    def __init__(self, address: str, token: str | None = None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.AsyncClient(headers=headers, timeout=30)
        self.base = f"http://{address}"
        self.card: Any = None

    async def __aenter__(self) -> Agent:
        resolver = A2ACardResolver(self.http, self.base)
        try:
            self.card = await resolver.get_agent_card(signature_verifier=verifier())
        except BaseException:
            await self.http.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()

    def client(self, streaming: bool = False) -> Any:
        config = ClientConfig(streaming=streaming, httpx_client=self.http)
        return ClientFactory(config).create(self.card)


def message(
    *,
    data: Any = None,
    text: str | None = None,
    skill: str | None = None,
    task_id: str | None = None,
    immediately: bool = False,
    **meta: Any,
) -> Any:
    parts: list[dict[str, Any]] = []
    if data is not None:
        parts.append({"data": data})
    if text is not None:
        parts.append({"text": text})
    msg: dict[str, Any] = {"messageId": uuid.uuid4().hex, "role": "ROLE_USER", "parts": parts}
    if skill is not None:
        meta["skill"] = skill
    if meta:
        msg["metadata"] = meta
    if task_id is not None:
        msg["taskId"] = task_id
    body: dict[str, Any] = {"message": msg}
    if immediately:
        body["configuration"] = {"returnImmediately": True}
    return ParseDict(body, pb.SendMessageRequest())


async def send(client: Any, request: Any) -> Any:
    """The task a non-streaming SendMessage answers with."""
    tasks = [ev.task async for ev in client.send_message(request)]
    assert len(tasks) == 1
    return tasks[0]


async def until_state(client: Any, task_id: str, state: int) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SETTLE_S
    while True:
        task = await client.get_task(pb.GetTaskRequest(id=task_id))
        if task.status.state == state:
            return task
        assert loop.time() < deadline, f"task {task_id} stuck in {task.status.state}"
        await asyncio.sleep(0.05)


def artifact_data(task: Any) -> Any:
    return MessageToDict(task.artifacts[0].parts[0])["data"]


async def test_card_send_stream_get_list_cancel(tmp_path: Path, procs: list[NodeProcess]) -> None:
    worker = start(tmp_path, "w", "A2AWorker")
    procs.append(worker)
    async with Agent(worker.address) as agent:
        card = agent.card
        assert [s.id for s in card.skills] == ["slow_echo", "meshnode.gateway"]
        assert card.supported_interfaces[0].url == f"http://{worker.address}/a2a"
        assert card.supported_interfaces[0].protocol_version == "1.0"
        assert card.capabilities.streaming
        # ETag and Cache-Control; a matching If-None-Match is answered 304.
        first = await agent.http.get(f"{agent.base}/.well-known/agent-card.json")
        assert "max-age" in first.headers["cache-control"]
        again = await agent.http.get(
            f"{agent.base}/.well-known/agent-card.json",
            headers={"If-None-Match": first.headers["etag"]},
        )
        assert again.status_code == 304

        client = agent.client()
        done = await send(client, message(data={"text": "hello"}, skill="slow_echo"))
        assert done.status.state == pb.TASK_STATE_COMPLETED
        assert artifact_data(done) == {"text": "hello"}
        assert MessageToDict(done.artifacts[0])["metadata"]["provider"] == worker.node_id

        streaming = agent.client(streaming=True)
        events = [
            ev
            async for ev in streaming.send_message(
                message(data={"text": "streamed", "sleep_s": 0.3}, skill="slow_echo")
            )
        ]
        kinds = [ev.WhichOneof("payload") for ev in events]
        assert kinds[0] == "task"
        assert "artifactUpdate" in [
            k if k != "artifact_update" else "artifactUpdate" for k in kinds
        ]
        states = [ev.status_update.status.state for ev in events if ev.HasField("status_update")]
        assert states[-1] == pb.TASK_STATE_COMPLETED
        streamed_id = events[0].task.id

        got = await client.get_task(pb.GetTaskRequest(id=streamed_id))
        assert got.status.state == pb.TASK_STATE_COMPLETED
        assert artifact_data(got) == {"text": "streamed"}
        listed = await client.list_tasks(pb.ListTasksRequest())
        assert {t.id for t in listed.tasks} >= {done.id, streamed_id}
        only_ctx = await client.list_tasks(pb.ListTasksRequest(context_id=done.context_id))
        assert [t.id for t in only_ctx.tasks] == [done.id]

        followed = await send(
            client,
            message(data={"text": "followed", "sleep_s": 0.5}, skill="slow_echo", immediately=True),
        )
        running = await client.list_tasks(pb.ListTasksRequest(status=pb.TASK_STATE_WORKING))
        assert [t.id for t in running.tasks] == [followed.id]
        updates = [
            ev async for ev in streaming.subscribe(pb.SubscribeToTaskRequest(id=followed.id))
        ]
        assert updates[0].task.id == followed.id
        assert updates[-1].status_update.status.state == pb.TASK_STATE_COMPLETED
        page = await client.list_tasks(pb.ListTasksRequest(page_size=2))
        assert len(page.tasks) == 2
        assert page.total_size == 3
        rest = await client.list_tasks(
            pb.ListTasksRequest(page_size=2, page_token=page.next_page_token)
        )
        assert {t.id for t in rest.tasks} | {t.id for t in page.tasks} == {
            done.id,
            streamed_id,
            followed.id,
        }

        slow = await send(
            client,
            message(data={"text": "never", "sleep_s": 60}, skill="slow_echo", immediately=True),
        )
        await until_state(client, slow.id, pb.TASK_STATE_WORKING)
        cancelled = await client.cancel_task(pb.CancelTaskRequest(id=slow.id))
        assert cancelled.status.state == pb.TASK_STATE_CANCELED
        assert (await client.get_task(pb.GetTaskRequest(id=slow.id))).status.state == (
            pb.TASK_STATE_CANCELED
        )
        with pytest.raises(TaskNotCancelableError):
            await client.cancel_task(pb.CancelTaskRequest(id=slow.id))
        # The slot is free again: the handler was stopped.
        after = await send(client, message(data={"text": "next"}, skill="slow_echo"))
        assert after.status.state == pb.TASK_STATE_COMPLETED


async def test_counter_offer_is_input_required_then_confirmed(
    tmp_path: Path, procs: list[NodeProcess]
) -> None:
    worker = start(tmp_path, "w", "A2AWorker", "--max-concurrent-tasks", "1")
    procs.append(worker)
    async with Agent(worker.address) as agent:
        client = agent.client()
        busy = await send(
            client,
            message(data={"text": "busy", "sleep_s": 1.5}, skill="slow_echo", immediately=True),
        )
        await until_state(client, busy.id, pb.TASK_STATE_WORKING)
        countered = await send(client, message(data={"text": "queued"}, skill="slow_echo"))
        assert countered.status.state == pb.TASK_STATE_INPUT_REQUIRED
        terms = MessageToDict(countered.status.message)["parts"]
        offer = next(p["data"] for p in terms if "data" in p)
        assert offer["counter_deadline_ms"] >= 1
        confirmed = await send(client, message(text="ok", task_id=countered.id))
        assert confirmed.id == countered.id
        assert confirmed.status.state == pb.TASK_STATE_COMPLETED
        assert artifact_data(confirmed) == {"text": "queued"}
        assert (await until_state(client, busy.id, pb.TASK_STATE_COMPLETED)).id == busy.id


async def test_a_restarted_node_answers_get_task(tmp_path: Path, procs: list[NodeProcess]) -> None:
    worker = start(tmp_path, "w", "A2AWorker")
    procs.append(worker)
    async with Agent(worker.address) as agent:
        client = agent.client()
        done = await send(client, message(data={"text": "kept"}, skill="slow_echo"))
        running = await send(
            client,
            message(data={"text": "lost", "sleep_s": 60}, skill="slow_echo", immediately=True),
        )
        await until_state(client, running.id, pb.TASK_STATE_WORKING)
    worker.signal(signal.SIGKILL)
    worker.wait()
    again = start(tmp_path, "w", "A2AWorker", port=worker.port)
    procs.append(again)
    assert again.node_id == worker.node_id
    async with Agent(again.address) as agent:
        client = agent.client()
        kept = await client.get_task(pb.GetTaskRequest(id=done.id))
        assert kept.status.state == pb.TASK_STATE_COMPLETED
        assert artifact_data(kept) == {"text": "kept"}
        assert kept.context_id == done.context_id
        lost = await client.get_task(pb.GetTaskRequest(id=running.id))
        assert lost.status.state == pb.TASK_STATE_FAILED
        assert "stopped while this task was running" in lost.status.message.parts[0].text


async def test_gateway_routes_text_to_another_node(
    tmp_path: Path, procs: list[NodeProcess]
) -> None:
    gateway = start(tmp_path, "g", None)
    procs.append(gateway)
    summarizer = start(tmp_path, "s", "Summarizer", seeds=[gateway.address])
    procs.append(summarizer)
    discoverable(gateway, summarizer, "summarize_text")
    async with Agent(gateway.address) as agent:
        # The gateway serves nothing itself: its only skill is the mesh.
        assert [s.id for s in agent.card.skills] == ["meshnode.gateway"]
        text = "please summarize this long text into a short summary for me"
        done = await send(agent.client(), message(text=text))
        assert done.status.state == pb.TASK_STATE_COMPLETED, done.status
        assert artifact_data(done) == {"summary": "please summarize this long"}
        assert MessageToDict(done.artifacts[0])["metadata"]["provider"] == summarizer.node_id

        events = [ev async for ev in agent.client(streaming=True).send_message(message(text=text))]
        texts = [
            ev.status_update.status.message.parts[0].text
            for ev in events
            if ev.HasField("status_update") and ev.status_update.status.message.parts
        ]
        assert any(t.startswith("working with peer") for t in texts), texts
        assert events[-1].status_update.status.state == pb.TASK_STATE_COMPLETED


async def test_version_header_and_bearer_token(tmp_path: Path, procs: list[NodeProcess]) -> None:
    worker = start(tmp_path, "w", "A2AWorker", "--api-token", TOKEN, "--no-trust-loopback")
    procs.append(worker)
    url = f"http://{worker.address}/a2a"
    body = {"jsonrpc": "2.0", "id": 7, "method": "ListTasks", "params": {}}
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(timeout=10) as http:
        bare = (await http.post(url, json=body, headers=auth)).json()
        assert bare["error"]["code"] == -32009
        assert bare["id"] == 7
        ok = (await http.post(url, json=body, headers={**auth, "A2A-Version": "1.0"})).json()
        assert ok["result"]["tasks"] == []
        no_token = await http.post(url, json=body, headers={"A2A-Version": "1.0"})
        assert no_token.status_code == 401
        card = await http.get(f"http://{worker.address}/.well-known/agent-card.json")
        assert card.status_code == 401
    with pytest.raises(A2AClientError, match="401"):
        async with Agent(worker.address, token="wrong-token-0123456789"):
            pass
    async with Agent(worker.address, token=TOKEN) as agent:
        assert "bearer" in agent.card.security_schemes
        client = agent.client()
        done = await send(client, message(data={"text": "authorized"}, skill="slow_echo"))
        assert done.status.state == pb.TASK_STATE_COMPLETED
    wrong = httpx.AsyncClient(headers={"Authorization": "Bearer wrong", "A2A-Version": "1.0"})
    async with wrong:
        refused = await wrong.post(url, json=body)
        assert refused.status_code == 401
        sent = await wrong.post(
            url,
            json={
                "jsonrpc": "2.0",
                "id": 1,
                "method": "SendMessage",
                "params": MessageToDict(message(data={"text": "x"}, skill="slow_echo")),
            },
        )
        assert sent.status_code == 401


async def test_the_card_follows_the_manifest_version() -> None:
    """In process: adding a capability re-signs the manifest, and the card changes with
    it (new skill, new version, new ETag; the old ETag no longer gets 304)."""
    from meshnode import MeshNode, NodeConfig

    async def shout(payload: dict[str, Any]) -> dict[str, Any]:
        return {"text": str(payload["text"]).upper()}

    config = NodeConfig.local(embedder="hashing", port=0)
    async with MeshNode(config) as node, httpx.AsyncClient(timeout=10) as http:
        url = f"{node.url}/.well-known/agent-card.json"
        before = await http.get(url)
        node.add_capability(shout, name="shout", description="Upper-case the text")
        after = await http.get(url, headers={"If-None-Match": before.headers["etag"]})
        assert after.status_code == 200
        assert after.headers["etag"] != before.headers["etag"]
        assert int(after.json()["version"]) > int(before.json()["version"])
        assert "shout" in [s["id"] for s in after.json()["skills"]]
        verifier()(ParseDict(after.json(), pb.AgentCard(), ignore_unknown_fields=True))


async def test_gateway_cancel_reaches_the_peer(tmp_path: Path, procs: list[NodeProcess]) -> None:
    """A gateway task cancelled over A2A cancels the delegation: the peer's handler is
    stopped (its single slot is free again at once)."""
    gateway = start(tmp_path, "g", None)
    procs.append(gateway)
    worker = start(
        tmp_path, "w", "A2AWorker", "--max-concurrent-tasks", "1", seeds=[gateway.address]
    )
    procs.append(worker)
    discoverable(gateway, worker, "slow_echo")
    async with Agent(gateway.address) as agent:
        client = agent.client()
        slow = await send(
            client,
            message(data={"text": "slow", "sleep_s": 60}, skill="slow_echo", immediately=True),
        )
        working = await until_state(client, slow.id, pb.TASK_STATE_WORKING)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SETTLE_S
        while not working.status.message.parts[0].text.startswith("working with peer"):
            assert loop.time() < deadline, working.status
            await asyncio.sleep(0.05)
            working = await client.get_task(pb.GetTaskRequest(id=slow.id))
        cancelled = await client.cancel_task(pb.CancelTaskRequest(id=slow.id))
        assert cancelled.status.state == pb.TASK_STATE_CANCELED
        # The worker's only slot is free: a new task is accepted, not countered.
        # (Were the handler still sleeping, the counter would be confirmed and the
        # task would fail at its 5 s deadline.)
        after = await send(client, message(data={"text": "next"}, skill="slow_echo", deadline_s=5))
        assert after.status.state == pb.TASK_STATE_COMPLETED, after.status
        assert artifact_data(after) == {"text": "next"}


async def test_running_tasks_and_streams_are_capped() -> None:
    """In process: beyond ``a2a_max_live_tasks`` a SendMessage is refused (and nothing is
    started); beyond ``a2a_max_streams`` a stream gets HTTP 503."""
    from meshnode import MeshNode, NodeConfig

    async def wait(payload: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(float(payload["sleep_s"]))
        return {"ok": True}

    config = NodeConfig.local(embedder="hashing", port=0, a2a_max_live_tasks=1, a2a_max_streams=1)
    async with MeshNode(config) as node:
        node.add_capability(wait, name="wait")
        url = f"{node.url}/a2a"

        def body(method: str, sleep_s: float) -> dict[str, Any]:
            req = MessageToDict(message(data={"sleep_s": sleep_s}, skill="wait", immediately=True))
            return {"jsonrpc": "2.0", "id": 1, "method": method, "params": req}

        async with httpx.AsyncClient(headers={"A2A-Version": "1.0"}, timeout=10) as http:
            first = (await http.post(url, json=body("SendMessage", 0.5))).json()
            assert first["result"]["task"]["status"]["state"] == "TASK_STATE_WORKING"
            second = (await http.post(url, json=body("SendMessage", 0.0))).json()
            assert second["error"]["code"] == -32603
            assert "a2a_max_live_tasks" in second["error"]["message"]
            listed = {"jsonrpc": "2.0", "id": 2, "method": "ListTasks", "params": {}}
            assert len((await http.post(url, json=listed)).json()["result"]["tasks"]) == 1
            sub = {
                "jsonrpc": "2.0",
                "id": 3,
                "method": "SubscribeToTask",
                "params": {"id": first["result"]["task"]["id"]},
            }
            async with http.stream("POST", url, json=sub) as stream:
                assert stream.status_code == 200
                extra = await http.post(url, json=sub)
                assert extra.status_code == 503
                lines = [line async for line in stream.aiter_lines() if line.startswith("data:")]
            assert "TASK_STATE_COMPLETED" in lines[-1]
