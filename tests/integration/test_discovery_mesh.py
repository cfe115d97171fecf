"""Discovery across a real mesh: manifests arrive by gossip, queries are answered locally.

Three providers with different capabilities and a fourth node, on 127.0.0.1 with real UDP
and TCP, the MiniLM embedder from the ``semantic`` extra. Invariants:
1. the fourth node finds each capability by a paraphrased description and by exact name;
2. a capability withdrawn from a manifest disappears from every node's results;
3. filters (max cost, tags, min trust, top_k) are honoured;
4. HTTP ``POST /v1/discover`` answers the same as the Python call.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from meshnode import MeshNode, NodeConfig, capability
from meshnode.core.router import LEXICAL_WEIGHT
from meshnode.runtime.node import wait_for

pytestmark = [pytest.mark.semantic]


class Translator(MeshNode):
    @capability(
        name="translate_text",
        description="Translate text from one human language into another",
        cost_per_call_usd=0.002,
        tags=["nlp", "language"],
    )
    async def translate(self, payload: dict[str, object]) -> dict[str, object]:
        return {"text": str(payload.get("text", ""))[::-1]}


class Weather(MeshNode):
    @capability(
        name="weather_forecast",
        description="Forecast tomorrow's weather, temperature and rain for a city",
        cost_per_call_usd=0.0,
        tags=["weather"],
    )
    async def forecast(self, payload: dict[str, object]) -> dict[str, object]:
        return {"forecast": "sunny"}

    @capability(
        name="air_quality",
        description="Report the current air pollution index for a location",
        tags=["weather"],
    )
    async def air(self, payload: dict[str, object]) -> dict[str, object]:
        return {"aqi": 12}


class Coder(MeshNode):
    @capability(
        name="run_python",
        description="Execute a Python code snippet and return its output",
        cost_per_call_usd=0.01,
        tags=["code"],
    )
    async def run(self, payload: dict[str, object]) -> dict[str, object]:
        return {"stdout": ""}


@pytest.fixture
async def mesh() -> AsyncIterator[list[MeshNode]]:
    client = MeshNode(NodeConfig.local(name="client", port=0, embedder="minilm"))
    await client.start()
    seed = (f"127.0.0.1:{client.address[1]}",)
    nodes: list[MeshNode] = [client]
    try:
        for cls, name in ((Translator, "translator"), (Weather, "weather"), (Coder, "coder")):
            node = cls(NodeConfig.local(name=name, port=0, seeds=seed, embedder="minilm"))
            await node.start()
            nodes.append(node)
        await wait_for(lambda: all(len(n.core.manifests) == 4 for n in nodes), 20)
        for node in nodes:
            await node.discovery.settled()
        yield nodes
    finally:
        for node in nodes:
            await node.aclose()


async def _top(node: MeshNode, text: str, **kw: object) -> list[str]:
    return [c.capability.name for c in await node.discover(text, **kw)]  # type: ignore[arg-type]


async def test_discover_by_description_and_name(mesh: list[MeshNode]) -> None:
    client, translator, weather, coder = mesh
    cases = {
        "turn this English sentence into Spanish": ("translate_text", translator),
        "will it rain in Paris tomorrow?": ("weather_forecast", weather),
        "how polluted is the air in Delhi right now": ("air_quality", weather),
        "evaluate this python script and give me what it prints": ("run_python", coder),
    }
    for query, (expected, provider) in cases.items():
        hits = await client.discover(query, top_k=3)
        assert hits, query
        assert hits[0].capability.name == expected, (query, [h.capability.name for h in hits])
        assert hits[0].node_id == provider.node_id
        assert hits[0].address == f"127.0.0.1:{provider.address[1]}"
        assert 0.0 < hits[0].semantic <= 1.0
        assert hits[0].relevance == pytest.approx(
            min(1.0, hits[0].semantic + LEXICAL_WEIGHT * hits[0].lexical)
        )
        latency_weight = NodeConfig().routing_latency_weight
        assert hits[0].total == pytest.approx(
            (1 - latency_weight)
            * (
                0.35 * hits[0].relevance
                + 0.35 * hits[0].trust
                + 0.15 * hits[0].availability
                + 0.15 * hits[0].cost_factor
            )
            + latency_weight * hits[0].latency
        )
    by_name = await client.discover(capability_name="air_quality")
    assert [(h.node_id, h.capability.name) for h in by_name] == [(weather.node_id, "air_quality")]
    assert by_name[0].semantic == 1.0
    assert await client.discover(capability_name="no_such_capability") == []


async def test_withdrawn_capability_disappears_everywhere(mesh: list[MeshNode]) -> None:
    client, translator, weather, coder = mesh
    others = [client, translator, coder]
    for node in others:
        assert "air_quality" in await _top(node, "air pollution index", top_k=5)
    weather.remove_capability("air_quality")

    async def gone() -> bool:
        for node in others:
            await node.discovery.settled()
            if "air_quality" in await _top(node, "air pollution index", top_k=5):
                return False
            if await node.discover(capability_name="air_quality"):
                return False
        return True

    await wait_for(gone, 20)
    # The other capability of the same node is still found.
    assert (await client.discover(capability_name="weather_forecast"))[0].node_id == (
        weather.node_id
    )


async def test_filters(mesh: list[MeshNode]) -> None:
    client = mesh[0]
    free = await client.discover("translate or forecast or run code", max_cost_usd=0.0, top_k=20)
    assert free
    assert all(h.capability.cost_per_call_usd == 0.0 for h in free)
    tagged = await client.discover("do something useful", tags=["code"], top_k=20)
    assert {h.capability.name for h in tagged} <= {"run_python"}
    assert await client.discover("translate", min_trust=0.9) == []  # nobody earned 0.9 yet
    one = await client.discover("weather", top_k=1)
    assert len(one) == 1
    with pytest.raises(ValueError):
        await client.discover("weather", top_k=21)
    with pytest.raises(ValueError):
        await client.discover()


async def test_http_discover_matches_python(mesh: list[MeshNode]) -> None:
    client = mesh[0]
    query = {"description": "translate a sentence to German", "top_k": 2}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{client.url}/v1/discover", json=query) as resp,
    ):
        assert resp.status == 200
        body = await resp.json()
    expected = await client.discover("translate a sentence to German", top_k=2)
    assert [c["node_id"] for c in body["candidates"]] == [c.node_id for c in expected]
    assert body["candidates"][0]["capability"] == "translate_text"
    assert set(body["candidates"][0]["score"]) >= {
        "relevance",
        "semantic",
        "lexical",
        "trust",
        "availability",
        "cost_factor",
        "total",
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{client.url}/v1/discover", json={"top_k": 99, "description": "x"}) as bad,
    ):
        assert bad.status == 400
