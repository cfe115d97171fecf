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
