"""Traces across hops, against real processes: a nested delegation (A asks B, whose
handler asks C) is recorded on all three nodes and assembled by ``meshnode trace``."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from aiohttp import web
from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanProto

from meshnode import DelegationError, MeshNode, NodeConfig, capability
from meshnode.runtime.node import wait_for
from tests.adversarial.attack import http_json
from tests.integration.cluster import NodeProcess, wait_until

HERE = Path(__file__).parent
UPPER = str(HERE / "cli_agents.py") + ":Upper"
RELAY = str(HERE / "trace_agents.py") + ":Relay"
TEXT_SCHEMA = {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}}

SpanKindProto = SpanProto.SpanKind


def meshnode(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshnode.cli", *args], capture_output=True, text=True, timeout=60
    )


def _one(spans: list[dict[str, Any]], node: str, name: str) -> dict[str, Any]:
    found = [s for s in spans if s["node_id"] == node and s["name"] == name]
    assert len(found) == 1, (node[:10], name, [(s["node_id"][:10], s["name"]) for s in spans])
    return found[0]


@pytest.mark.slow
def test_nested_delegation_is_one_trace_across_three_nodes(tmp_path: Path) -> None:
    """Invariant: every span of a two-hop delegation carries the trace id that
    ``/v1/delegate`` returned, hangs from the span that caused it (HTTP → delegate →
    negotiation → provider run → nested delegate → negotiation → provider run), and
    ``meshnode trace`` run against A alone collects them from A, B and C and prints them
    indented under their parents in start order."""
    hashing = ["--embedder", "hashing"]
    c = NodeProcess("c", tmp_path / "c", [], extra=[*hashing, "--agent", UPPER]).start()
    nodes = [c]
    try:
        b = NodeProcess("b", tmp_path / "b", [c.address], extra=[*hashing, "--agent", RELAY])
        nodes.append(b.start())
        a = NodeProcess("a", tmp_path / "a", [c.address], extra=hashing)
        nodes.append(a.start())

        def indexed(node: NodeProcess, capability: str) -> bool:
            status, hits = http_json(node.address, "/v1/discover", {"capability_name": capability})
            return status == 200 and bool(hits["candidates"])

        wait_until(lambda: indexed(a, "relay_upper"), 30, "a indexes b's relay")
        wait_until(lambda: indexed(b, "uppercase_text"), 30, "b indexes c's upper")

        status, done = http_json(
            a.address,
            "/v1/delegate",
            {"capability": "relay_upper", "input": {"text": "hi"}, "expect": TEXT_SCHEMA},
            timeout=30,
        )
        assert status == 200, done
        assert done["output"] == {"text": "HI"}
        trace_id = done["trace_id"]
        assert isinstance(trace_id, str) and len(trace_id) == 32

        out = meshnode("trace", trace_id, "--node", a.address, "--json")
        assert out.returncode == 0, out.stderr
        assembled = json.loads(out.stdout)
        spans = assembled["spans"]
        assert assembled["missing"] == []
        assert {s["trace_id"] for s in spans} == {trace_id}
        assert {s["node_id"] for s in spans} == {a.node_id, b.node_id, c.node_id}

        http = _one(spans, a.node_id, "POST /v1/delegate")
        a_delegate = _one(spans, a.node_id, "delegate relay_upper")
        a_discover = _one(spans, a.node_id, "discover")
        a_ask = _one(spans, a.node_id, "invoke_agent relay_upper")
        a_eval = _one(spans, a.node_id, "evaluate relay_upper")
        a_opinion = _one(spans, a.node_id, "opinion")
        b_serve = _one(spans, b.node_id, "invoke_agent relay_upper")
        b_delegate = _one(spans, b.node_id, "delegate uppercase_text")
        b_ask = _one(spans, b.node_id, "invoke_agent uppercase_text")
        b_eval = _one(spans, b.node_id, "evaluate uppercase_text")
        b_opinion = _one(spans, b.node_id, "opinion")
        c_serve = _one(spans, c.node_id, "invoke_agent uppercase_text")
        assert len(spans) == 13  # the twelve above and b's discover

        parent_of = {
            id(a_delegate): http,
            id(a_discover): a_delegate,
            id(a_ask): a_delegate,
            id(a_eval): a_delegate,
            id(a_opinion): a_delegate,
            id(b_serve): a_ask,
            id(b_delegate): b_serve,
            id(b_ask): b_delegate,
            id(b_eval): b_delegate,
            id(b_opinion): b_delegate,
            id(c_serve): b_ask,
        }
        assert http["parent_span_id"] is None
        for child in (a_delegate, a_discover, a_ask, a_eval, a_opinion, b_serve):
            assert child["parent_span_id"] == parent_of[id(child)]["span_id"], child["name"]
        for child in (b_delegate, b_ask, b_eval, b_opinion, c_serve):
            assert child["parent_span_id"] == parent_of[id(child)]["span_id"], child["name"]
        b_discover = [s for s in spans if s["node_id"] == b.node_id and s["name"] == "discover"]
        assert [s["parent_span_id"] for s in b_discover] == [b_delegate["span_id"]]

        assert (a_ask["kind"], a_ask["peer_id"]) == ("client", b.node_id)
        assert (b_serve["kind"], b_serve["peer_id"]) == ("server", a.node_id)
        assert (b_ask["kind"], b_ask["peer_id"]) == ("client", c.node_id)
        assert (c_serve["kind"], c_serve["peer_id"]) == ("server", b.node_id)
        assert c_serve["attributes"]["gen_ai.operation.name"] == "invoke_agent"
        assert all(s["status"] == "ok" for s in spans), [(s["name"], s["status"]) for s in spans]
        # Causes start before their effects (one machine, one clock).
        assert http["start"] <= a_ask["start"] <= b_serve["start"] <= b_ask["start"]
        assert b_ask["start"] <= c_serve["start"] <= c_serve["end"] <= b_ask["end"]

        text = meshnode("trace", trace_id, "--node", a.address)
        assert text.returncode == 0, text.stderr
        lines = text.stdout.splitlines()
        assert lines[0].startswith(f"trace {trace_id}: 13 spans on 3 nodes")

        def line_of(name: str, who: str) -> tuple[int, int]:
            for i, line in enumerate(lines[1:]):
                body = line.split(" ms ", 2)[2]
                if name in body and f"@{who}" in body:
                    return i, len(body) - len(body.lstrip())
            raise AssertionError(f"{name} @{who} not in {lines}")

        order = [
            line_of("POST /v1/delegate", "a"),
            line_of("delegate relay_upper", "a"),
            line_of("invoke_agent relay_upper [client]", "a"),
            line_of("invoke_agent relay_upper [server]", "b"),
            line_of("delegate uppercase_text", "b"),
            line_of("invoke_agent uppercase_text [client]", "b"),
            line_of("invoke_agent uppercase_text [server]", "c"),
        ]
        assert [i for i, _ in order] == sorted(i for i, _ in order)
        assert [depth for _, depth in order] == [1, 3, 5, 7, 9, 11, 13]  # two per level
    finally:
        for node in nodes:
            node.stop()


class _Echo(MeshNode):
    @capability(
        name="echo_text",
        description="Return the text it is given",
        input_schema=TEXT_SCHEMA,
        output_schema=TEXT_SCHEMA,
    )
    async def echo_text(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {"text": payload["text"]}


async def test_spans_are_exported_over_otlp_http_with_genai_names() -> None:
    """Invariant: with an OTLP endpoint configured, the spans a delegation makes reach an
    OTLP/HTTP receiver as protobuf, the negotiation as an ``invoke_agent {capability}``
    client span and the handler run as the matching server span, with ``gen_ai.*``
    attributes and the trace id ``delegate`` returned."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    received: list[ExportTraceServiceRequest] = []

    async def collect(request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        received.append(message)
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", collect)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    endpoint = f"http://127.0.0.1:{port}/v1/traces"
    config = NodeConfig.local(port=0, embedder="hashing", otlp_endpoint=endpoint)
    provider = _Echo(dataclasses.replace(config, name="echo"))
    asker: MeshNode | None = None
    try:
        await provider.start()
        seeds = (f"127.0.0.1:{provider.address[1]}",)
        asker = MeshNode(dataclasses.replace(config, name="asker", seeds=seeds))
        await asker.start()
        await wait_for(lambda: len(asker.core.manifests) == 2, 20)
        deadline = time.monotonic() + 20
        while True:  # the index is built off the loop: retry until it has the capability
            try:
                result = await asker.delegate("echo_text", {"text": "hi"})
                break
            except DelegationError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
        assert result.trace_id is not None
    finally:
        if asker is not None:
            await asker.aclose()  # closing flushes each node's exporter
        await provider.aclose()
        await runner.cleanup()
    spans = [
        (span, {kv.key: kv.value.string_value for kv in span.attributes})
        for request in received
        for resource_spans in request.resource_spans
        for scope in resource_spans.scope_spans
        for span in scope.spans
    ]
    ours = [(s, a) for s, a in spans if s.trace_id.hex() == result.trace_id]
    by_kind = {s.kind: (s, a) for s, a in ours if s.name == "invoke_agent echo_text"}
    client, client_attrs = by_kind[SpanKindProto.SPAN_KIND_CLIENT]
    server, server_attrs = by_kind[SpanKindProto.SPAN_KIND_SERVER]
    assert server.parent_span_id == client.span_id
    for attrs in (client_attrs, server_attrs):
        assert attrs["gen_ai.operation.name"] == "invoke_agent"
        assert attrs["gen_ai.agent.name"] == "echo_text"
    assert client_attrs["gen_ai.agent.id"] == provider.node_id
    names = {s.name for s, _ in ours}
    assert {"delegate echo_text", "discover", "evaluate echo_text"} <= names


async def test_http_trace_context_is_taken_strictly_and_refused_callers_make_no_span() -> None:
    """Invariant: a valid ``traceparent`` on ``POST /v1/discover`` is continued (the
    server span has its trace id and parent, and the response names the span); a malformed
    one starts a new trace and the request still succeeds; a caller refused with 401
    leaves no span behind, however many times it tries.

    Without the authorization check before the span (measured): 20 refused requests left
    20 spans in the store."""
    token = "trace-reader-token-012345"
    node = MeshNode(
        NodeConfig.local(
            name="t", port=0, embedder="hashing", api_trust_loopback=False, api_token=token
        )
    )
    await node.start()
    try:
        assert node.tracer is not None
        url = f"http://127.0.0.1:{node.address[1]}/v1/discover"
        body = {"capability_name": "nothing"}
        auth = {"Authorization": f"Bearer {token}"}
        parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        async with aiohttp.ClientSession() as session:
            for _ in range(20):
                async with session.post(url, json=body, headers={"traceparent": parent}) as r:
                    assert r.status == 401
            assert node.tracer.stored == 0
            async with session.post(url, json=body, headers={**auth, "traceparent": parent}) as r:
                assert r.status == 200
                echoed = r.headers["traceparent"]
            async with session.post(
                url, json=body, headers={**auth, "traceparent": parent.upper()}
            ) as r:
                assert r.status == 200
                fresh = r.headers["traceparent"]
        (span,) = node.tracer.trace("0af7651916cd43dd8448eb211c80319c")
        assert span["parent_span_id"] == "b7ad6b7169203331"
        assert span["name"] == "POST /v1/discover" and span["kind"] == "server"
        assert echoed == f"00-{span['trace_id']}-{span['span_id']}-01"
        assert fresh.split("-")[1] != "0af7651916cd43dd8448eb211c80319c"
        (other,) = node.tracer.trace(fresh.split("-")[1])
        assert other["parent_span_id"] is None
        assert node.tracer.stored == 2
    finally:
        await node.aclose()


A2A_AGENTS = str(HERE / "a2a_agents.py")
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


def _a2a_send(address: str, message: dict[str, Any], traceparent: str) -> tuple[int, Any, str]:
    """POST one blocking ``SendMessage`` with ``traceparent``; (status, body, the
    response's traceparent)."""
    body = {"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {"message": message}}
    headers = {"A2A-Version": "1.0", "traceparent": traceparent}
    reply = httpx.post(f"http://{address}/a2a", json=body, headers=headers, timeout=30)
    return reply.status_code, reply.json(), reply.headers.get("traceparent", "")


@pytest.mark.slow
def test_a2a_send_through_the_gateway_is_one_trace_with_the_callers_id(tmp_path: Path) -> None:
    """Invariant: an A2A ``SendMessage`` carrying a ``traceparent`` continues the caller's
    trace: the gateway's server span (``invoke_agent meshnode.gateway``, GenAI and a2a
    attributes) hangs from the caller's span, its discovery and delegation hang from it,
    the provider's run on the other node hangs from the delegation's negotiation, and
    ``meshnode trace`` with the caller's trace id assembles all of it from both nodes.
    A message naming a capability of the node itself gets a server span whose provider
    run is its child.

    On the unfixed code: the A2A call made no span, so the response carried no
    traceparent (the first assertion saw ``''``)."""
    hashing = ["--embedder", "hashing"]
    gateway = NodeProcess(
        "g", tmp_path / "g", [], extra=[*hashing, "--agent", f"{A2A_AGENTS}:A2AWorker"]
    )
    nodes = [gateway.start()]
    try:
        summarizer = NodeProcess(
            "s",
            tmp_path / "s",
            [gateway.address],
            extra=[*hashing, "--agent", f"{A2A_AGENTS}:Summarizer"],
        )
        nodes.append(summarizer.start())

        def offered() -> bool:
            status, hits = http_json(
                gateway.address, "/v1/discover", {"capability_name": "summarize_text"}
            )
            return status == 200 and any(
                c["node_id"] == summarizer.node_id for c in hits["candidates"]
            )

        wait_until(offered, 30, "the gateway's discovery offers summarize_text")
        message = {
            "messageId": "m-trace-1",
            "role": "ROLE_USER",
            "parts": [{"text": "summarize this fairly long text for the trace test"}],
            "metadata": {"skill": "summarize_text"},
        }
        status, done, echoed = _a2a_send(
            gateway.address, message, f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
        )
        assert status == 200, done
        task = done["result"]["task"]
        assert task["status"]["state"] == "TASK_STATE_COMPLETED", task["status"]
        assert echoed.startswith(f"00-{CALLER_TRACE}-"), echoed

        out = meshnode("trace", CALLER_TRACE, "--node", gateway.address, "--json")
        assert out.returncode == 0, out.stderr
        assembled = json.loads(out.stdout)
        spans = assembled["spans"]
        assert assembled["missing"] == []
        assert {s["trace_id"] for s in spans} == {CALLER_TRACE}
        assert {s["node_id"] for s in spans} == {gateway.node_id, summarizer.node_id}

        g, s = gateway.node_id, summarizer.node_id
        (server,) = [x for x in spans if x["node_id"] == g and x["kind"] == "server"]
        assert server["name"] == "invoke_agent summarize_text"
        assert server["parent_span_id"] == CALLER_SPAN
        assert echoed == f"00-{CALLER_TRACE}-{server['span_id']}-01"
        attrs = server["attributes"]
        assert attrs["gen_ai.operation.name"] == "invoke_agent"
        assert attrs["gen_ai.agent.name"] == "summarize_text"
        assert attrs["gen_ai.agent.id"] == g
        assert attrs["a2a.method"] == "SendMessage"
        assert attrs["a2a.task.id"] == task["id"]
        assert attrs["a2a.context.id"] == task["contextId"]
        assert attrs["a2a.task.state"] == "TASK_STATE_COMPLETED"
        discover = _one(spans, g, "discover")
        delegate = _one(spans, g, "delegate summarize_text")
        ask = [x for x in spans if x["node_id"] == g and x["kind"] == "client"]
        assert len(ask) == 1 and ask[0]["peer_id"] == s
        serve = _one(spans, s, "invoke_agent summarize_text")
        assert discover["parent_span_id"] == server["span_id"]
        assert delegate["parent_span_id"] == server["span_id"]
        assert ask[0]["parent_span_id"] == delegate["span_id"]
        assert serve["parent_span_id"] == ask[0]["span_id"]
        assert serve["kind"] == "server" and serve["peer_id"] == g
        assert server["start"] <= ask[0]["start"] <= serve["start"] <= serve["end"] <= server["end"]

        text = meshnode("trace", CALLER_TRACE, "--node", gateway.address)
        assert text.returncode == 0, text.stderr
        assert text.stdout.splitlines()[0].startswith(f"trace {CALLER_TRACE}: ")
        assert "invoke_agent summarize_text [server] @s" in text.stdout

        # Streaming: the same span, named after the method.
        stream_trace = "6cf92f3577b34da6a3ce929d0e0e4736"
        call = {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "SendStreamingMessage",
            "params": {"message": {**message, "messageId": "m-trace-3"}},
        }
        headers = {"A2A-Version": "1.0", "traceparent": f"00-{stream_trace}-{CALLER_SPAN}-01"}
        with httpx.stream(
            "POST", f"http://{gateway.address}/a2a", json=call, headers=headers, timeout=30
        ) as streamed:
            assert streamed.status_code == 200
            assert streamed.headers["traceparent"].startswith(f"00-{stream_trace}-")
            events = [line for line in streamed.iter_lines() if line.startswith("data: ")]
        assert '"TASK_STATE_COMPLETED"' in events[-1]
        status, streamed_spans = http_json(gateway.address, f"/v1/traces/{stream_trace}")
        (stream_server,) = [x for x in streamed_spans["spans"] if x["kind"] == "server"]
        assert stream_server["parent_span_id"] == CALLER_SPAN
        assert stream_server["attributes"]["a2a.method"] == "SendStreamingMessage"
        assert stream_server["name"] == "invoke_agent summarize_text"

        # A capability of the gateway itself: its own provider's run is the span's child.
        local_trace = "5cf92f3577b34da6a3ce929d0e0e4736"
        local = {
            "messageId": "m-trace-2",
            "role": "ROLE_USER",
            "parts": [{"data": {"text": "hi"}}],
            "metadata": {"skill": "slow_echo"},
        }
        status, done, _ = _a2a_send(gateway.address, local, f"00-{local_trace}-{CALLER_SPAN}-01")
        assert status == 200 and done["result"]["task"]["status"]["state"] == "TASK_STATE_COMPLETED"
        status, mine = http_json(gateway.address, f"/v1/traces/{local_trace}")
        assert status == 200
        servers = [x for x in mine["spans"] if x["name"] == "invoke_agent slow_echo"]
        assert len(servers) == 2, mine["spans"]
        outer = next(x for x in servers if x["parent_span_id"] == CALLER_SPAN)
        inner = next(x for x in servers if x is not outer)
        assert outer["attributes"]["a2a.method"] == "SendMessage"
        assert inner["parent_span_id"] == outer["span_id"]
    finally:
        for node in nodes:
            node.stop()


async def test_an_a2a_span_is_bounded_whatever_skill_the_caller_names() -> None:
    """Invariant: the A2A server span's name and attributes stay within the span bounds
    when the caller names a 3,000-character skill (routed by the gateway, which finds no
    peer: the task fails and the span says so).

    On the unfixed code: the span's name was 3,013 characters long."""
    from meshnode.core.tracing import MAX_ATTRIBUTE_VALUE_CHARS, MAX_SPAN_NAME_CHARS

    node = MeshNode(NodeConfig.local(name="t", port=0, embedder="hashing"))
    await node.start()
    try:
        assert node.tracer is not None
        skill = "s" * 3_000
        message = {
            "messageId": "m-long",
            "role": "ROLE_USER",
            "parts": [{"text": "anything"}],
            "metadata": {"skill": skill},
        }
        call = {"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {"message": message}}
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"http://127.0.0.1:{node.address[1]}/a2a",
                json=call,
                headers={"A2A-Version": "1.0"},
            ) as resp,
        ):
            assert resp.status == 200
            body = await resp.json()
            traceparent = resp.headers["traceparent"]
        assert body["result"]["task"]["status"]["state"] == "TASK_STATE_FAILED"
        (span,) = [s for s in node.tracer.trace(traceparent.split("-")[1]) if s["kind"] == "server"]
        assert span["name"].startswith("invoke_agent sss")
        assert len(span["name"]) <= MAX_SPAN_NAME_CHARS
        assert span["status"] == "error"
        assert len(span["attributes"]["gen_ai.agent.name"]) <= MAX_ATTRIBUTE_VALUE_CHARS
    finally:
        await node.aclose()
