"""Indexing shipped vectors, and never ranking by them: the discovery service's rules.

A real :class:`DiscoveryService` over a real :class:`NodeCore` and a real capability
index, with the hashing embedder wrapped to count the texts it embeds. Invariants:
1. a receiver running the manifest's embedder indexes its vectors without embedding;
   another model, another dimension, a text whose hash differs, or ``manifest_vectors``
   off: the texts are embedded as before;
2. before a query's pool (the hybrid search's hits, by meaning and by words) is ranked,
   every claimed vector in it is replaced by a local embedding: a forged vector gets its
   capability into the pool but never ranks it, and is counted against its owner, whose
   later claims are ignored;
3. an honest claim is replaced too, with no blame;
4. background verification converges the index to local embeddings, a bounded number of
   texts per step.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

import numpy as np
import pytest

from meshnode.core import NodeConfig
from meshnode.core.node import NodeCore
from meshnode.discovery import CachedEmbedder, CapabilityIndex, HashingEmbedder, IndexEntry
from meshnode.discovery.index import capability_text, capability_texts, capability_vectors
from meshnode.discovery.vectors import encode_vector, manifest_vectors, vector_text
from meshnode.runtime.discovery import RERANK_CLAIMS, VERIFY_BATCH_TEXTS, DiscoveryService
from protocol import Capability, Identity, Manifest
from protocol.manifest import ManifestVectors

NOW = 1_000_000.0
ME = Identity.from_seed(b"\x01" * 32)
HONEST = Identity.from_seed(b"\x02" * 32)
FORGER = Identity.from_seed(b"\x03" * 32)
QUERY = "translate a letter from French into English"

TRANSLATE = Capability(
    name="translate_text", description="Translate text between human languages", tags=("nlp",)
)
CRYPTO = Capability(name="buy_crypto", description="Buy cryptocurrency with a credit card")


class CountingEmbedder:
    """The hashing embedder, counting the texts it is asked to embed."""

    def __init__(self) -> None:
        self.inner = HashingEmbedder()
        self.texts: list[str] = []

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    @property
    def dim(self) -> int:
        return self.inner.dim

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.texts.extend(texts)
        return self.inner.embed(texts)


@pytest.fixture
def counting() -> CountingEmbedder:
    return CountingEmbedder()


@pytest.fixture
def service(counting: CountingEmbedder) -> Iterator[DiscoveryService]:
    config = NodeConfig.local(embedder="hashing")
    core = NodeCore(config, ME, host="127.0.0.1", port=7946, rng=random.Random(0), now=NOW)
    svc = DiscoveryService(config, lambda: core)
    svc.embedder = CachedEmbedder(counting)
    svc.index = CapabilityIndex(counting.model_id, counting.dim)
    yield svc
    svc._executor.shutdown(wait=True)


def own_manifest(
    signer: Identity,
    capabilities: Sequence[Capability],
    vectors: ManifestVectors | None,
    version: int = 1,
) -> Manifest:
    return Manifest.create(
        signer,
        name="peer",
        endpoint="127.0.0.1:9",
        capabilities=tuple(capabilities),
        vectors=vectors,
        version=version,
    )


def honest_vectors(capabilities: Sequence[Capability], model: HashingEmbedder) -> ManifestVectors:
    texts = [vector_text(c) for c in capabilities]
    vectors = capability_vectors(model, capabilities)
    built = manifest_vectors(
        model.model_id,
        model.dim,
        [(c.name, t, v) for c, t, v in zip(capabilities, texts, vectors, strict=True)],
    )
    assert built is not None
    return built


def many_capabilities(n: int) -> list[Capability]:
    topics = ["weather", "invoices", "images", "poems", "python", "maps", "music", "stocks"]
    return [
        Capability(name=f"cap_{i}", description=f"Work with {topics[i % 8]} number {i}")
        for i in range(n)
    ]


# ----------------------------------------------------------------- ingestion


def test_same_model_receiver_indexes_shipped_vectors_without_embedding(
    service: DiscoveryService, counting: CountingEmbedder
) -> None:
    caps = many_capabilities(8)
    manifest = own_manifest(HONEST, caps, honest_vectors(caps, HashingEmbedder()))
    service._apply_batch({HONEST.node_id: manifest})
    assert counting.texts == []
    assert service.counters["texts_embedded"] == 0
    assert service.counters["vectors_accepted"] == 8
    assert service.index is not None and len(service.index) == 8
    # the shipped vectors are what the index holds (within the int8 round trip)
    local = HashingEmbedder().embed([capability_text(caps[3])])[0]
    stored = service.index.vector((HONEST.node_id, "cap_3"))
    assert stored is not None and float(stored @ local) > 0.999


@pytest.mark.parametrize(
    ("vectors", "why"),
    [
        (
            lambda caps: ManifestVectors(
                "some-other-model:v2",
                HashingEmbedder().dim,
                honest_vectors(caps, HashingEmbedder()).vectors,
            ),
            "another model",
        ),
        (
            lambda caps: ManifestVectors(
                HashingEmbedder().model_id,
                8,
                tuple(encode_vector(c.name, capability_text(c), np.ones(8)) for c in caps),
            ),
            "another dimension",
        ),
        (
            lambda caps: ManifestVectors(
                HashingEmbedder().model_id,
                HashingEmbedder().dim,
                tuple(
                    encode_vector(
                        c.name, "a text this node never builds", np.ones(HashingEmbedder().dim)
                    )
                    for c in caps
                ),
            ),
            "text hash differs",
        ),
        (lambda caps: None, "no vectors"),
    ],
)
def test_receiver_embeds_what_it_cannot_use(
    service: DiscoveryService, counting: CountingEmbedder, vectors: object, why: str
) -> None:
    caps = many_capabilities(4)
    if why == "another dimension":
        assert HashingEmbedder().dim != 8
    block = vectors(caps)  # type: ignore[operator]
    service._apply_batch({HONEST.node_id: own_manifest(HONEST, caps, block)})
    assert sorted(counting.texts) == sorted(capability_text(c) for c in caps), why
    assert service.counters["vectors_accepted"] == 0


def test_manifest_vectors_off_embeds_everything(counting: CountingEmbedder) -> None:
    config = NodeConfig.local(embedder="hashing", manifest_vectors=False)
    core = NodeCore(config, ME, host="127.0.0.1", port=7946, rng=random.Random(0), now=NOW)
    svc = DiscoveryService(config, lambda: core)
    svc.embedder = CachedEmbedder(counting)
    svc.index = CapabilityIndex(counting.model_id, counting.dim)
    try:
        caps = many_capabilities(4)
        svc._apply_batch(
            {HONEST.node_id: own_manifest(HONEST, caps, honest_vectors(caps, HashingEmbedder()))}
        )
        assert len(counting.texts) == 4
        assert svc.own_vectors(caps) is None
    finally:
        svc._executor.shutdown(wait=True)


# ----------------------------------------------------------------- re-rank


def forged_setup(service: DiscoveryService) -> None:
    """An honest translator, and a forger whose crypto capability claims the query's own
    vector (so the index finds it first)."""
    model = HashingEmbedder()
    honest = own_manifest(HONEST, [TRANSLATE], honest_vectors([TRANSLATE], model))
    lie = ManifestVectors(
        model.model_id,
        model.dim,
        (encode_vector(CRYPTO.name, capability_text(CRYPTO), model.embed([QUERY])[0]),),
    )
    forged = own_manifest(FORGER, [CRYPTO], lie)
    service._apply_batch({HONEST.node_id: honest, FORGER.node_id: forged})


def test_forged_vector_is_considered_but_never_ranked_by_its_lie(
    service: DiscoveryService, counting: CountingEmbedder
) -> None:
    """On the code without the re-rank (search returning the index's hits as they are),
    the forger came first (similarity 0.99+, the translator 0.26) and nothing was
    counted against it. With it: translator 0.263, forger 0.001."""
    forged_setup(service)
    assert service.index is not None and service.embedder is not None
    raw = service.index.search(service.embedder.embed([QUERY]), 10, service.embedder.model_id)
    assert raw[0][0].node_id == FORGER.node_id and raw[0][1] > 0.99  # the lie works on the index

    counting.texts.clear()
    hits = service.search(QUERY, 10)
    by_node = {hit.entry.node_id: hit.similarity for hit in hits}
    assert hits[0].entry.node_id == HONEST.node_id
    assert by_node[FORGER.node_id] < 0.2 < by_node[HONEST.node_id]
    # only the pool's claimed texts were embedded (the query was cached above)
    assert sorted(counting.texts) == sorted([capability_text(CRYPTO), capability_text(TRANSLATE)])
    assert service.forged_vectors == {FORGER.node_id: 1}
    assert service.counters["vectors_forged"] == 1
    assert service.counters["vectors_verified"] == 2
    # the index now holds the local vector: the lie is gone for every later query too
    raw = service.index.search(service.embedder.embed([QUERY]), 10, service.embedder.model_id)
    assert raw[0][0].node_id == HONEST.node_id


def test_forger_later_claims_are_ignored(
    service: DiscoveryService, counting: CountingEmbedder
) -> None:
    forged_setup(service)
    service.search(QUERY, 10)
    assert FORGER.node_id in service.forged_vectors
    counting.texts.clear()
    caps = many_capabilities(3)
    honest_now = own_manifest(FORGER, caps, honest_vectors(caps, HashingEmbedder()), version=2)
    service._apply_batch({FORGER.node_id: honest_now})
    assert sorted(counting.texts) == sorted(capability_text(c) for c in caps)
    # the translator's claim and the forger's first one, nothing since
    assert service.counters["vectors_accepted"] == 2
    assert service.vectors_json()["forged_by_node"] == {FORGER.node_id: 1}


def test_honest_claim_is_replaced_without_blame(service: DiscoveryService) -> None:
    forged_setup(service)
    service.search("translate text between languages", 10)
    assert HONEST.node_id not in service.forged_vectors
    assert service.vectors_json()["claims_unchecked"] == 0


def test_background_verification_converges_a_bounded_step_at_a_time(
    service: DiscoveryService, counting: CountingEmbedder
) -> None:
    model = HashingEmbedder()
    manifests = {}
    for i in range(10):
        signer = Identity.from_seed(bytes([10 + i]) * 32)
        caps = many_capabilities(8)
        manifests[signer.node_id] = own_manifest(signer, caps, honest_vectors(caps, model))
    service._apply_batch(manifests)
    assert counting.texts == []
    assert service.vectors_json()["claims_unchecked"] == 80
    steps = 0
    while service.vectors_json()["claims_unchecked"]:
        checked = service._verify_some(VERIFY_BATCH_TEXTS)
        assert 0 < checked <= VERIFY_BATCH_TEXTS
        steps += 1
    assert steps == -(-80 // VERIFY_BATCH_TEXTS)
    assert service.counters["vectors_verified"] == 80
    assert service.forged_vectors == {}
    assert service._verify_some(VERIFY_BATCH_TEXTS) == 0
    # every indexed vector is now exactly the local embedding
    assert service.index is not None
    node_id = next(iter(manifests))
    local = model.embed([capability_text(many_capabilities(8)[5])])[0]
    stored = service.index.vector((node_id, "cap_5"))
    assert stored is not None and np.allclose(stored, local, atol=1e-6)


def test_own_vectors_are_shipped_for_the_model_this_node_runs(service: DiscoveryService) -> None:
    caps = [TRANSLATE, CRYPTO]
    block = service.own_vectors(caps)
    assert block is not None
    assert block.model_id == HashingEmbedder().model_id and block.dim == HashingEmbedder().dim
    assert [v.capability for v in block.vectors] == ["translate_text", "buy_crypto"]
    manifest = own_manifest(ME, caps, block)
    assert manifest.verify()


def test_a_query_verifies_a_bounded_number_of_claims_and_ranks_no_other(
    service: DiscoveryService, counting: CountingEmbedder
) -> None:
    model = HashingEmbedder()
    manifests = {}
    for i in range(40):
        signer = Identity.from_seed(bytes([40 + i]) * 32)
        caps = [Capability(name="translate_text", description=f"Translate text, offer {i}")]
        manifests[signer.node_id] = own_manifest(signer, caps, honest_vectors(caps, model))
    service._apply_batch(manifests)
    counting.texts.clear()
    hits = service.search("translate text", 64)
    assert service.counters["vectors_verified"] == RERANK_CLAIMS
    assert len(counting.texts) == RERANK_CLAIMS + 1  # the claims and the query
    assert len(hits) == RERANK_CLAIMS  # the unverified claims are left out
    assert service.index is not None
    for hit in hits:  # every ranked hit now holds its local vector
        stored = service.index.vector(hit.entry.key)
        local = model.embed([hit.entry.text])[0]
        assert stored is not None and np.allclose(stored, local, atol=1e-6)


def test_forgeries_cannot_crowd_honest_claims_out(service: DiscoveryService) -> None:
    """A chunk of forgeries is followed by another chunk: the honest claim that the
    forgers pushed down is verified and ranked first in the same answer."""
    model = HashingEmbedder()
    lie_vector = model.embed([QUERY])[0]
    manifests = {}
    forgers = []
    for i in range(RERANK_CLAIMS):
        signer = Identity.from_seed(bytes([100 + i]) * 32)
        forgers.append(signer.node_id)
        cap = Capability(name=f"buy_crypto_{i}", description="Buy cryptocurrency")
        lie = ManifestVectors(
            model.model_id,
            model.dim,
            (encode_vector(cap.name, capability_text(cap), lie_vector),),
        )
        manifests[signer.node_id] = own_manifest(signer, [cap], lie)
    manifests[HONEST.node_id] = own_manifest(
        HONEST, [TRANSLATE], honest_vectors([TRANSLATE], model)
    )
    service._apply_batch(manifests)
    hits = service.search(QUERY, 64)
    assert hits[0].entry.node_id == HONEST.node_id
    assert sorted(service.forged_vectors) == sorted(forgers)


def test_index_replaces_one_entry_vector_in_place() -> None:
    model = HashingEmbedder()
    index = CapabilityIndex(model.model_id, model.dim)
    caps = many_capabilities(3)
    entries = [IndexEntry(node_id="n", capability=c, text=capability_text(c)) for c in caps]
    index.upsert("n", entries, model.embed([e.text for e in entries]), model.model_id)
    other = model.embed(["something else entirely"])[0]
    assert index.replace_vector(("n", "cap_1"), other, model.model_id)
    stored = index.vector(("n", "cap_1"))
    assert stored is not None and np.allclose(stored, other, atol=1e-6)
    assert len(index) == 3 and index.deleted_slots == 0
    assert index.search(other, 1, model.model_id)[0][0].name == "cap_1"
    assert not index.replace_vector(("n", "gone"), other, model.model_id)
    assert index.vector(("n", "gone")) is None
    with pytest.raises(ValueError):
        index.replace_vector(("n", "cap_1"), np.full(model.dim, np.nan), model.model_id)


def test_index_upserts_a_batch_of_nodes_all_or_nothing() -> None:
    model = HashingEmbedder()
    index = CapabilityIndex(model.model_id, model.dim, build_threads=2)

    def item(node: str, n: int) -> tuple[str, list[IndexEntry], np.ndarray]:
        entries = [
            IndexEntry(node_id=node, capability=c, text=capability_text(c))
            for c in many_capabilities(n)
        ]
        return node, entries, model.embed([e.text for e in entries])

    index.upsert_many([item("a", 3), item("b", 2), item("c", 0)], model.model_id)
    assert len(index) == 5 and index.node_ids() == ["a", "b"]
    with pytest.raises(ValueError, match="twice"):
        index.upsert_many([item("d", 1), item("d", 1)], model.model_id)
    bad = item("e", 2)
    with pytest.raises(ValueError):
        index.upsert_many([item("d", 1), (bad[0], bad[1], bad[2][:1])], model.model_id)
    assert len(index) == 5 and index.node_ids() == ["a", "b"]  # nothing changed
    index.upsert_many([item("a", 1), item("b", 0)], model.model_id)
    assert index.node_ids() == ["a"] and len(index) == 1
    hits = index.search(model.embed([capability_text(many_capabilities(1)[0])]), 1, model.model_id)
    assert hits[0][0].key == ("a", "cap_0")


def test_a_claim_found_only_by_words_is_verified_before_it_ranks(
    service: DiscoveryService,
) -> None:
    """The re-rank covers every hit of the hybrid search, not only the nearest ones. With
    a pool of one, the forger's lie fills the search by meaning and the translator is
    found only by its words: both claims are verified, the forger is counted, and the
    translator ranks first on its local vector, its BM25 score kept.

    On the search without the words (the index's nearest only, then the re-rank) the
    answer held the forger alone; on the hybrid search without the re-rank the forger
    came first with its claimed similarity 1.0."""
    forged_setup(service)
    assert service.index is not None and service.embedder is not None
    model_id = service.embedder.model_id
    raw = service.index.hybrid_search(service.embedder.embed([QUERY]), QUERY, 1, model_id)
    assert [hit.entry.node_id for hit in raw] == [FORGER.node_id, HONEST.node_id]
    assert raw[0].similarity > 0.99 and raw[0].lexical == 0.0 < raw[1].lexical

    hits = service.search(QUERY, 1)
    assert [hit.entry.node_id for hit in hits] == [HONEST.node_id, FORGER.node_id]
    local = HashingEmbedder().embed([capability_text(TRANSLATE)])[0]
    query = HashingEmbedder().embed([QUERY])[0]
    assert hits[0].similarity == pytest.approx(float(np.dot(query, local)), abs=1e-5)
    assert hits[0].lexical == raw[1].lexical
    assert hits[1].similarity < 0.2
    assert service.counters["vectors_verified"] == 2
    assert service.forged_vectors == {FORGER.node_id: 1}


def test_upsert_many_keeps_the_words_in_step_as_upsert_does() -> None:
    """A batch insert, replacement and removal leave the lexical index exactly as the
    same changes made one node at a time with ``upsert``.

    On the merge without the lexical step in ``upsert_many``, the batch-inserted entries
    had no words (lexical 0.0 for every hit, none found by words)."""
    model = HashingEmbedder()
    weather = Capability(name="weather", description="Forecast the weather for a city")

    def item(node: str, caps: Sequence[Capability]) -> tuple[str, list[IndexEntry], np.ndarray]:
        entries = [IndexEntry(node_id=node, capability=c, text=capability_text(c)) for c in caps]
        vectors = (
            model.embed([e.text for e in entries])
            if entries
            else np.zeros((0, model.dim), dtype=np.float32)
        )
        return node, entries, vectors

    batched = CapabilityIndex(model.model_id, model.dim)
    single = CapabilityIndex(model.model_id, model.dim)

    def apply(items: list[tuple[str, list[IndexEntry], np.ndarray]]) -> None:
        batched.upsert_many(items, model.model_id)
        for node, entries, vectors in items:
            single.upsert(node, entries, vectors, model.model_id)

    def words(index: CapabilityIndex, query: str) -> dict[tuple[str, str], float]:
        found = index.hybrid_search(model.embed([query]), query, 3, model.model_id)
        return {hit.entry.key: hit.lexical for hit in found if hit.lexical > 0.0}

    queries = ("cryptocurrency credit card", "human languages", "weather forecast")
    apply([item("a", [TRANSLATE]), item("b", [CRYPTO])])
    assert set(words(batched, queries[0])) == {("b", "buy_crypto")}
    assert set(words(batched, queries[1])) == {("a", "translate_text")}
    assert words(batched, queries[2]) == {}
    assert all(words(batched, q) == words(single, q) for q in queries)

    apply([item("b", [weather]), item("a", [])])  # b replaced, a removed
    assert words(batched, queries[0]) == {} and words(batched, queries[1]) == {}
    assert set(words(batched, queries[2])) == {("b", "weather")}
    assert all(words(batched, q) == words(single, q) for q in queries)
    assert len(batched) == len(single) == 1


def test_a_vector_names_how_a_capability_with_examples_is_embedded(
    service: DiscoveryService, counting: CountingEmbedder
) -> None:
    """A capability with examples has one vector that sums its whole text's embedding and
    each example's (``capability_vectors``), keyed by ``vector_text`` (the whole text and
    the rule). A vector under that key is indexed without embedding; one keyed by the
    whole text alone (how such a vector was made before: the whole text embedded once)
    or by the text without examples names another key, so it is not used and the
    capability is embedded here: its whole text and each example."""
    model = HashingEmbedder()
    with_examples = Capability(
        name="translate_text",
        description="Translate text between human languages",
        examples=("say hello in French", "put this letter into English"),
    )
    assert "Examples: say hello in French" in capability_text(with_examples)
    assert vector_text(with_examples) != capability_text(with_examples)
    assert capability_texts(with_examples) == [
        capability_text(with_examples),
        "say hello in French",
        "put this letter into English",
    ]
    whole = model.embed([capability_text(with_examples)])[0]
    stale = ManifestVectors(
        model.model_id,
        model.dim,
        (encode_vector(with_examples.name, capability_text(with_examples), whole),),
    )
    bare_text = capability_text(Capability(with_examples.name, with_examples.description))
    bare = ManifestVectors(
        model.model_id, model.dim, (encode_vector(with_examples.name, bare_text, whole),)
    )
    third = Identity.from_seed(b"\x07" * 32)
    service._apply_batch(
        {
            HONEST.node_id: own_manifest(
                HONEST, [with_examples], honest_vectors([with_examples], model)
            ),
            FORGER.node_id: own_manifest(FORGER, [with_examples], stale),
            third.node_id: own_manifest(third, [with_examples], bare),
        }
    )
    # The stale and the bare claims only: the capability's three texts, embedded once
    # for both (the service's embedder caches texts).
    assert counting.texts == capability_texts(with_examples)
    assert service.counters["texts_embedded"] == 2 * len(capability_texts(with_examples))
    assert service.counters["vectors_accepted"] == 1
    assert service.vectors_json()["claims_unchecked"] == 1
    index = service.index
    assert index is not None
    local = capability_vectors(model, [with_examples])[0]
    assert float(np.dot(local, whole)) < 0.99  # the two rules give different vectors
    for node_id in (FORGER.node_id, third.node_id):
        stored = index.vector((node_id, with_examples.name))
        assert stored is not None and float(np.dot(stored, local)) > 0.999
