"""The forged-vector evidence per owner is bounded (``MAX_FORGERS_TRACKED``).

Invariants: :func:`count_forgery` never holds more than its cap of owners; a new owner
beyond it evicts the owner with the fewest forgeries, the one counted longest ago among
equals, so a repeat forger outlives a crowd of one-off fresh keys; a real
:class:`DiscoveryService` verifying forged claims from more owners than its cap keeps
only the cap.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from meshnode.core import NodeConfig
from meshnode.core.node import NodeCore
from meshnode.discovery import CachedEmbedder, CapabilityIndex, HashingEmbedder
from meshnode.discovery.index import capability_text
from meshnode.discovery.vectors import encode_vector
from meshnode.runtime.discovery import MAX_FORGERS_TRACKED, DiscoveryService, count_forgery
from protocol import Capability, Identity, Manifest
from protocol.manifest import ManifestVectors

NOW = 1_000_000.0
ME = Identity.from_seed(b"\x01" * 32)
QUERY = "translate a letter from French into English"


@pytest.mark.parametrize(
    ("before", "owner", "cap", "after"),
    [
        ({}, "a", 3, {"a": 1}),
        ({"a": 1}, "a", 3, {"a": 2}),
        ({"a": 1, "b": 1}, "c", 3, {"a": 1, "b": 1, "c": 1}),
        # full: the oldest of the smallest counts goes
        ({"a": 1, "b": 1, "c": 1}, "d", 3, {"b": 1, "c": 1, "d": 1}),
        # full: a repeat forger stays, the one-off goes
        ({"a": 5, "b": 1, "c": 2}, "d", 3, {"a": 5, "c": 2, "d": 1}),
        # full, and a known owner: counted, nobody evicted
        ({"a": 5, "b": 1, "c": 2}, "b", 3, {"a": 5, "b": 2, "c": 2}),
        # cap 1
        ({"a": 9}, "b", 1, {"b": 1}),
    ],
)
def test_count_forgery_table(
    before: dict[str, int], owner: str, cap: int, after: dict[str, int]
) -> None:
    counts = dict(before)
    count_forgery(counts, owner, cap)
    assert counts == after
    assert len(counts) <= cap


def test_a_crowd_of_fresh_keys_stays_within_the_cap_and_keeps_the_repeat_forger() -> None:
    counts: dict[str, int] = {}
    for _ in range(3):
        count_forgery(counts, "repeat", 64)
    for i in range(10_000):
        count_forgery(counts, f"fresh-{i}", 64)
    assert len(counts) == 64
    assert counts["repeat"] == 3
    assert MAX_FORGERS_TRACKED == 4_096


@pytest.fixture
def service() -> Iterator[DiscoveryService]:
    config = NodeConfig.local(embedder="hashing")
    core = NodeCore(config, ME, host="127.0.0.1", port=7946, rng=random.Random(0), now=NOW)
    svc = DiscoveryService(config, lambda: core)
    model = HashingEmbedder()
    svc.embedder = CachedEmbedder(model)
    svc.index = CapabilityIndex(model.model_id, model.dim)
    yield svc
    svc._executor.shutdown(wait=True)


def test_the_service_keeps_at_most_its_cap_of_forgers(service: DiscoveryService) -> None:
    """Five owners each claim the query's own vector for an unrelated capability; one
    query verifies all five claims and finds them forged. With a cap of 2, two owners are
    counted. On the unfixed code: all 5 were kept (the map grew by one per fresh key,
    without bound)."""
    model = HashingEmbedder()
    forgers = [Identity.from_seed(bytes([10 + i]) * 32) for i in range(5)]
    batch: dict[str, Manifest | None] = {}
    for i, forger in enumerate(forgers):
        cap = Capability(name=f"buy_crypto_{i}", description=f"Buy cryptocurrency number {i}")
        lie = ManifestVectors(
            model.model_id,
            model.dim,
            (encode_vector(cap.name, capability_text(cap), model.embed([QUERY])[0]),),
        )
        batch[forger.node_id] = Manifest.create(
            forger, name=f"f{i}", endpoint="127.0.0.1:9", capabilities=(cap,), vectors=lie
        )
    service.max_forgers_tracked = 2
    service._apply_batch(batch)
    service.search(QUERY, 10)
    assert service.counters["vectors_forged"] == 5
    assert len(service.forged_vectors) == 2
    assert set(service.forged_vectors) <= {f.node_id for f in forgers}
    assert len(service.vectors_json()["forged_by_node"]) == 2
