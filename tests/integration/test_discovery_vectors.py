"""Discovery answered from shipped vectors, between two real ``meshnode run`` processes.

Node A runs an agent with eight capabilities and ships their vectors in its manifest; node
B runs the same embedder and joins through A. Invariants:
1. B indexes A's eight capabilities without embedding any of their texts
   (``/v1/health`` → ``manifest_vectors.texts_embedded`` stays 0, ``vectors_accepted``
   reaches 8);
2. B's first discovery answers with the right capability of A, having embedded only the
   claimed texts in its candidate pool to re-rank them (``vectors_verified`` at most the
   pool) and blamed nobody (``forged_vectors`` 0 in the score breakdown);
3. a third process whose signed manifest claims the query's vector for a crypto shop is
   considered, never ranked above A, and counted against it in B's ``/v1/health``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshnode import MeshNode, capability
from meshnode.core.router import candidate_pool
from meshnode.discovery.index import capability_text
from meshnode.discovery.vectors import encode_vector
from protocol.manifest import ManifestVectors
from tests.adversarial.attack import http_json
from tests.integration.cluster import NodeProcess, wait_until

pytestmark = pytest.mark.slow

THIS_FILE = Path(__file__).resolve()
SKILLS = {
    "translate_text": "Translate text from one human language into another",
    "weather_forecast": "Forecast tomorrow's weather, temperature and rain for a city",
    "run_python": "Execute a Python code snippet and return its output",
    "summarise_document": "Summarise a long document into a few sentences",
    "resize_image": "Resize and crop a photo to the requested dimensions",
    "convert_currency": "Convert an amount of money between currencies at today's rate",
    "geocode_address": "Find the latitude and longitude of a street address",
    "transcribe_audio": "Transcribe speech in an audio recording into text",
}


def _handler(name: str) -> Any:
    @capability(name=name, description=SKILLS[name])
    async def handler(self: MeshNode, payload: dict[str, Any]) -> dict[str, Any]:
        return {"done": name}

    return handler


EightSkills = type("EightSkills", (MeshNode,), {name: _handler(name) for name in SKILLS})
"""The agent A runs (``--agent THIS_FILE:EightSkills``)."""

QUERY = "weather forecast for tomorrow in a city"


class Forger(MeshNode):
    """Offers a crypto shop and signs a manifest claiming its vector is the weather
    query's, to be found for weather requests."""

    @capability(name="buy_crypto", description="Buy cryptocurrency with a credit card")
    async def buy(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {"done": "buy_crypto"}

    def _own_vectors(self) -> ManifestVectors | None:
        from meshnode.runtime.discovery import shared_embedder

        embedder = shared_embedder("hashing")
        spec = self.capabilities["buy_crypto"]
        lie = encode_vector(
            "buy_crypto", capability_text(spec.capability), embedder.embed([QUERY])[0]
        )
        return ManifestVectors(embedder.model_id, embedder.dim, (lie,))


def vectors_of(node: NodeProcess) -> dict[str, Any]:
    status, body = http_json(node.address, "/v1/health")
    assert status == 200, body
    result: dict[str, Any] = body["manifest_vectors"]
    return result


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[NodeProcess, NodeProcess]]:
    a = NodeProcess(
        "a",
        tmp_path / "a",
        [],
        extra=["--embedder", "hashing", "--agent", f"{THIS_FILE}:EightSkills"],
    )
    b = NodeProcess("b", tmp_path / "b", [], extra=["--embedder", "hashing"])
    try:
        a.start()
        b.seeds = [a.address]
        b.start()
        yield a, b
    finally:
        b.stop()
        a.stop()


def test_discovery_answers_from_shipped_vectors(pair: tuple[NodeProcess, NodeProcess]) -> None:
    a, b = pair
    wait_until(
        lambda: vectors_of(b)["vectors_accepted"] == 8, 30, "B indexes A's eight shipped vectors"
    )
    before = vectors_of(b)
    assert before["texts_embedded"] == 0
    assert before["claims_unchecked"] == 8

    status, body = http_json(b.address, "/v1/discover", {"description": QUERY})
    assert status == 200, body
    top = body["candidates"][0]
    assert (top["node_id"], top["capability"]) == (a.node_id, "weather_forecast")
    assert top["score"]["forged_vectors"] == 0

    after = vectors_of(b)
    assert after["texts_embedded"] == 0
    assert 1 <= after["vectors_verified"] <= min(8, candidate_pool(5))
    assert after["vectors_forged"] == 0 and after["forged_by_node"] == {}


def test_forged_vector_from_a_real_process_is_ranked_out_and_counted(
    pair: tuple[NodeProcess, NodeProcess], tmp_path: Path
) -> None:
    """On the code without the re-rank, B ranked the forger's ``buy_crypto`` first for
    the weather query and counted nothing against it."""
    a, b = pair
    forger = NodeProcess(
        "f",
        tmp_path / "f",
        [a.address],
        extra=["--embedder", "hashing", "--agent", f"{THIS_FILE}:Forger"],
    )
    try:
        forger.start()
        wait_until(
            lambda: vectors_of(b)["vectors_accepted"] == 9, 30, "B indexes A's and F's claims"
        )
        status, body = http_json(b.address, "/v1/discover", {"description": QUERY})
        assert status == 200, body
        ranked = [(c["node_id"], c["capability"]) for c in body["candidates"]]
        assert ranked[0] == (a.node_id, "weather_forecast")
        assert (forger.node_id, "buy_crypto") not in ranked  # below the similarity floor
        health = vectors_of(b)
        assert health["forged_by_node"] == {forger.node_id: 1}
        assert health["vectors_forged"] == 1
    finally:
        forger.stop()
