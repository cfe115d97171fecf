"""Discovery answered from shipped vectors, between two real ``meshnode run`` processes.

Node A runs an agent with eight capabilities and ships their vectors in its manifest; node
B runs the same embedder and joins through A. Invariants:
1. B indexes A's eight capabilities without embedding any of their texts
   (``/v1/health`` → ``manifest_vectors.texts_embedded`` stays 0, ``vectors_accepted``
   reaches 8);
2. B's first discovery answers with the right capability of A, having embedded only the
   claimed texts in its candidate pool to re-rank them (``vectors_verified`` at most the
   pool) and blamed nobody (``forged_vectors`` 0 in the score breakdown).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshnode import MeshNode, capability
from meshnode.core.router import candidate_pool
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

    status, body = http_json(
        b.address, "/v1/discover", {"description": "weather forecast for tomorrow in a city"}
    )
    assert status == 200, body
    top = body["candidates"][0]
    assert (top["node_id"], top["capability"]) == (a.node_id, "weather_forecast")
    assert top["score"]["forged_vectors"] == 0

    after = vectors_of(b)
    assert after["texts_embedded"] == 0
    assert 1 <= after["vectors_verified"] <= min(8, candidate_pool(5))
    assert after["vectors_forged"] == 0 and after["forged_by_node"] == {}
