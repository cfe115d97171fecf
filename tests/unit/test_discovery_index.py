"""The capability index: upsert/replace/remove, growth, slot reuse, k clamping, model-id
checks, name lookup, the exact fallback, the index lock and concurrent use."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from meshnode.discovery import (
    CapabilityIndex,
    HashingEmbedder,
    IndexEntry,
    IndexFullError,
    ModelMismatchError,
    capability_text,
    entries_from_manifest,
)
from protocol.identity import Identity
from protocol.manifest import MAX_CAPABILITIES, Capability, Manifest

MODEL = "test-model-d16"
DIM = 16
WAIT_S = 10.0
"""Deadline for any thread in these tests to reach a condition."""


def unit(*hot: int, dim: int = DIM) -> np.ndarray:
    """A unit vector with equal weight on the ``hot`` coordinates."""
    vector = np.zeros(dim, dtype=np.float32)
    vector[list(hot)] = 1.0
    return vector / np.linalg.norm(vector)


def make_entries(node_id: str, *names: str) -> list[IndexEntry]:
    return [
        IndexEntry(
            node_id=node_id,
            capability=Capability(name=name, description=f"{name} on {node_id}"),
            text=name,
        )
        for name in names
    ]


def new_index(**kwargs: int) -> CapabilityIndex:
    return CapabilityIndex(MODEL, DIM, **kwargs)


def put(index: CapabilityIndex, node_id: str, spec: dict[str, int]) -> None:
    """Upsert ``node_id`` with one capability per name, each on its own axis."""
    entries = make_entries(node_id, *spec)
    vectors = np.stack([unit(axis) for axis in spec.values()])
    index.upsert(node_id, entries, vectors, MODEL)


def keys(hits: list[tuple[IndexEntry, float]]) -> list[tuple[str, str]]:
    return [entry.key for entry, _ in hits]


# --------------------------------------------------------------------------- text


@pytest.mark.parametrize(
    ("name", "description", "tags", "text"),
    [
        ("translate_text", "Translate text.", (), "translate text: Translate text."),
        ("ocr", "Read  scanned\npages.", ("image", "ocr"), "ocr: Read scanned pages. (image, ocr)"),
        ("billing.invoice:v2-beta", "", (), "billing invoice v2 beta"),
        ("a__b", "", ("x",), "a b (x)"),
    ],
)
def test_capability_text(name: str, description: str, tags: tuple[str, ...], text: str) -> None:
    """Name (separators as spaces), description (whitespace collapsed), then tags."""
    cap = Capability(name=name, description=description, tags=tags)
    assert capability_text(cap) == text


def test_entries_from_manifest() -> None:
    """One entry per capability, carrying the node's name, endpoint and tags."""
    identity = Identity.from_seed(bytes(32))
    caps = [
        Capability(name="translate_text", description="Translate text", tags=("nlp",)),
        Capability(name="detect_language", description="Which language is this"),
    ]
    manifest = Manifest.create(
        identity, name="polyglot", endpoint="10.0.0.7:7946", capabilities=caps, tags=["eu"]
    )
    entries = entries_from_manifest(manifest)
    assert [e.key for e in entries] == [
        (identity.node_id, "translate_text"),
        (identity.node_id, "detect_language"),
    ]
    assert entries[0].text == "translate text: Translate text (nlp)"
    assert {(e.node_name, e.endpoint, e.node_tags) for e in entries} == {
        ("polyglot", "10.0.0.7:7946", ("eu",))
    }


# --------------------------------------------------------------------------- updates


def test_upsert_and_search() -> None:
    """A query finds the nearest capability first, with cosine similarity ~1 for itself."""
    index = new_index()
    put(index, "n1", {"a": 0, "b": 1})
    put(index, "n2", {"c": 2})
    hits = index.search(unit(1), 3, MODEL)
    assert keys(hits)[0] == ("n1", "b")
    assert hits[0][1] == pytest.approx(1.0, abs=1e-5)
    assert [round(s, 5) for _, s in hits[1:]] == [0.0, 0.0]
    assert len(index) == 3
    assert ("n1", "a") in index
    assert index.node_ids() == ["n1", "n2"]


def test_similarity_is_cosine() -> None:
    """Similarities are cosines of the stored and query directions, best first; the
    query's norm does not matter."""
    index = new_index()
    put(index, "n1", {"a": 0, "b": 1})
    query = np.zeros(DIM, dtype=np.float32)
    query[:2] = (6.0, 3.0)  # 3 × (2e0 + e1)
    hits = index.search(query, 2, MODEL)
    assert keys(hits) == [("n1", "a"), ("n1", "b")]
    assert [s for _, s in hits] == pytest.approx([2 / 5**0.5, 1 / 5**0.5], abs=1e-5)


def test_upsert_replaces_a_nodes_previous_entries() -> None:
    """A changed manifest replaces the node's entries whole: removed capabilities vanish
    from search and name lookup, kept ones get their new vectors."""
    index = new_index()
    put(index, "n1", {"a": 0, "b": 1})
    put(index, "n1", {"b": 2, "c": 3})
    assert len(index) == 2
    assert [e.name for e in index.entries("n1")] == ["b", "c"]
    assert index.by_name("a") == []
    assert set(keys(index.search(unit(0), 5, MODEL))) == {("n1", "b"), ("n1", "c")}
    assert keys(index.search(unit(2), 1, MODEL)) == [("n1", "b")]
    assert index.deleted_slots == 0  # the two freed slots were reused at once


def test_upsert_with_no_entries_removes_the_node() -> None:
    """An empty capability list leaves the node with nothing indexed."""
    index = new_index()
    put(index, "n1", {"a": 0})
    index.upsert("n1", [], np.zeros((0, DIM), dtype=np.float32), MODEL)
    assert len(index) == 0
    assert index.node_ids() == []


def test_remove_node() -> None:
    """remove_node drops every entry of that node and only those; removing twice is a
    no-op that reports 0."""
    index = new_index()
    put(index, "n1", {"a": 0, "b": 1})
    put(index, "n2", {"a": 2})
    assert index.remove_node("n1") == 2
    assert index.remove_node("n1") == 0
    assert index.remove_node("never-seen") == 0
    assert len(index) == 1
    assert keys(index.search(unit(0), 10, MODEL)) == [("n2", "a")]
    assert [e.node_id for e in index.by_name("a")] == ["n2"]


def test_resize_doubles_capacity() -> None:
    """The index starts small and doubles when live entries need more slots."""
    index = new_index(initial_capacity=4)
    for n in range(10):
        put(index, f"n{n}", {"a": n % DIM, "b": (n + 1) % DIM})
    assert len(index) == 20
    assert index.capacity == 32  # 4 → 8 → 16 → 32
    assert len(index.search(unit(0), 100, MODEL)) == 20


def test_deleted_slots_are_reused() -> None:
    """Removed entries' slots are taken by later inserts before the index grows."""
    index = new_index(initial_capacity=8)
    for n in range(4):
        put(index, f"n{n}", {"a": n, "b": n + 4})
    assert (len(index), index.capacity) == (8, 8)
    index.remove_node("n0")
    index.remove_node("n1")
    assert index.deleted_slots == 4
    for n in range(4, 6):
        put(index, f"n{n}", {"a": n + 6, "b": 0})
    assert (len(index), index.capacity, index.deleted_slots) == (8, 8, 0)
    found = {e.node_id for e, _ in index.search(unit(0), 8, MODEL)}
    assert found == {"n2", "n3", "n4", "n5"}


def test_churn_keeps_the_index_bounded_and_correct() -> None:
    """Many replace/remove rounds: capacity never exceeds what the live set needs, and
    search over everything returns exactly the live entries."""
    rng = np.random.default_rng(7)
    index = new_index(initial_capacity=16)
    live: dict[str, int] = {}
    for step in range(300):
        node = f"n{rng.integers(0, 12)}"
        if rng.random() < 0.3:
            index.remove_node(node)
            live.pop(node, None)
        else:
            count = int(rng.integers(1, 4))
            names = [f"cap{i}" for i in range(count)]
            vectors = rng.normal(size=(count, DIM)).astype(np.float32)
            index.upsert(node, make_entries(node, *names), vectors, MODEL)
            live[node] = count
        assert len(index) == sum(live.values()), step
    # At most 12 nodes × 3 entries live at once: capacity doubled from 16 to 32 or 64.
    assert index.capacity in (32, 64)
    everything = index.search(unit(0), 1000, MODEL)
    assert len(everything) == sum(live.values())
    assert {e.node_id for e, _ in everything} == set(live)


def test_index_full() -> None:
    """An upsert past max_entries is refused and changes nothing."""
    index = new_index(initial_capacity=2, max_entries=3)
    put(index, "n1", {"a": 0, "b": 1})
    with pytest.raises(IndexFullError):
        put(index, "n2", {"a": 2, "b": 3})
    assert len(index) == 2
    put(index, "n1", {"a": 0, "b": 1, "c": 2})  # replacing counts the old entries out
    assert len(index) == 3


# --------------------------------------------------------------------------- validation


def test_model_id_mismatch_is_refused() -> None:
    """Vectors of another embedder are never stored or compared."""
    index = new_index()
    put(index, "n1", {"a": 0})
    with pytest.raises(ModelMismatchError, match="other-model"):
        index.search(unit(0), 1, "other-model")
    with pytest.raises(ModelMismatchError):
        index.upsert("n2", make_entries("n2", "x"), unit(1)[None, :], "other-model")
    assert len(index) == 1
    assert isinstance(ModelMismatchError("x"), ValueError)


@pytest.mark.parametrize(
    ("entries", "vectors", "message"),
    [
        (make_entries("n1", "a"), np.zeros((2, DIM)), "shape"),
        (make_entries("n1", "a"), np.zeros((1, DIM + 1)), "shape"),
        (make_entries("n1", "a"), np.full((1, DIM), np.nan), "finite"),
        (make_entries("n2", "a"), np.ones((1, DIM)), "upserted as"),
        (make_entries("n1", "a", "a"), np.ones((2, DIM)), "twice"),
        (
            make_entries("n1", *[f"c{i}" for i in range(MAX_CAPABILITIES + 1)]),
            np.ones((MAX_CAPABILITIES + 1, DIM)),
            "limit",
        ),
    ],
)
def test_bad_upserts_change_nothing(
    entries: list[IndexEntry], vectors: np.ndarray, message: str
) -> None:
    """Malformed upserts raise before touching the node's existing entries."""
    index = new_index()
    put(index, "n1", {"old": 0})
    with pytest.raises(ValueError, match=message):
        index.upsert("n1", entries, vectors, MODEL)
    assert [e.name for e in index.entries("n1")] == ["old"]


@pytest.mark.parametrize("k", [0, -3, True])
def test_bad_k(k: int) -> None:
    """k must be a positive integer."""
    with pytest.raises(ValueError, match="k must be"):
        new_index().search(unit(0), k, MODEL)


def test_bad_query_shape() -> None:
    """A query of the wrong dimension is refused; a (1, dim) row is accepted."""
    index = new_index()
    put(index, "n1", {"a": 0})
    with pytest.raises(ValueError, match="shape"):
        index.search(np.ones(DIM + 1), 1, MODEL)
    assert keys(index.search(unit(0)[None, :], 1, MODEL)) == [("n1", "a")]


# --------------------------------------------------------------------------- queries


@pytest.mark.parametrize(("k", "expected"), [(1, 1), (3, 3), (4, 3), (1000, 3)])
def test_k_is_clamped_to_the_live_count(k: int, expected: int) -> None:
    """Asking for more results than live entries gives all of them, never an error."""
    index = new_index()
    put(index, "n1", {"a": 0, "b": 1, "c": 2})
    put(index, "n2", {"d": 3})
    index.remove_node("n2")
    assert len(index.search(unit(0), k, MODEL)) == expected


def test_search_on_an_empty_index() -> None:
    """No entries, no hits."""
    assert new_index().search(unit(0), 5, MODEL) == []


def test_by_name_is_exact_and_sorted() -> None:
    """Name lookup matches whole names only, across nodes, sorted by node id."""
    index = new_index()
    put(index, "n2", {"translate_text": 0})
    put(index, "n1", {"translate_text": 1, "translate": 2})
    assert [e.node_id for e in index.by_name("translate_text")] == ["n1", "n2"]
    assert [e.key for e in index.by_name("translate")] == [("n1", "translate")]
    assert index.by_name("Translate_Text") == []


def test_search_restricted_to_a_name_is_exact() -> None:
    """name= scores only that capability's providers, with exact cosine similarities."""
    index = new_index()
    put(index, "n1", {"translate_text": 0, "other": 1})
    put(index, "n2", {"translate_text": 1})
    hits = index.search(unit(1), 10, MODEL, name="translate_text")
    assert keys(hits) == [("n2", "translate_text"), ("n1", "translate_text")]
    assert [s for _, s in hits] == pytest.approx([1.0, 0.0], abs=1e-5)
    assert index.search(unit(1), 10, MODEL, name="missing") == []


def test_hnsw_agrees_with_exact_search() -> None:
    """On a few hundred random vectors the graph search returns the exact top 5."""
    rng = np.random.default_rng(1)
    index = new_index()
    for n in range(100):
        names = [f"c{i}" for i in range(4)]
        vectors = rng.normal(size=(4, DIM)).astype(np.float32)
        index.upsert(f"n{n:03d}", make_entries(f"n{n:03d}", *names), vectors, MODEL)
    agree = 0
    for _ in range(50):
        query = rng.normal(size=DIM).astype(np.float32)
        approx = set(keys(index.search(query, 5, MODEL)))
        exact = set(keys(index.search(query, 5, MODEL, exact=True)))
        agree += len(approx & exact)
    assert agree / 250 >= 0.98


def test_short_graph_answer_falls_back_to_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    """If hnswlib cannot fill k results, the query is answered exactly, not short."""
    index = new_index()
    put(index, "n1", {"a": 0, "b": 1, "c": 2})

    class ShortGraph:
        """hnswlib as it behaves when the graph cannot produce k live results."""

        def __init__(self, real: object) -> None:
            self._real = real

        def __getattr__(self, name: str) -> object:
            return getattr(self._real, name)

        def knn_query(self, *args: object, **kwargs: object) -> None:
            raise RuntimeError("Cannot return the results in a contiguous 2D array")

    monkeypatch.setattr(index, "_index", ShortGraph(index._index))
    hits = index.search(unit(1), 3, MODEL)
    assert keys(hits)[0] == ("n1", "b")
    assert len(hits) == 3


def test_text_round_trip_with_hashing_embedder() -> None:
    """End to end with a real embedder: the capability whose words a query uses is found."""
    embedder = HashingEmbedder()
    index = CapabilityIndex(embedder.model_id, embedder.dim)
    caps = {
        "n1": [Capability(name="translate_text", description="Translate text between languages")],
        "n2": [Capability(name="weather_forecast", description="Forecast rain and wind")],
    }
    for node_id, capabilities in caps.items():
        entries = [
            IndexEntry(node_id=node_id, capability=c, text=capability_text(c)) for c in capabilities
        ]
        index.upsert(node_id, entries, embedder.embed([e.text for e in entries]), embedder.model_id)
    (best, _), _ = index.search(embedder.embed(["rain forecast"])[0], 2, embedder.model_id)
    assert best.name == "weather_forecast"
    assert "CapabilityIndex(" in repr(index)


# --------------------------------------------------------------------------- concurrency


def test_searches_and_updates_wait_for_the_index_lock() -> None:
    """Every search and every update takes the index's one lock: while it is held (as an
    upsert in progress holds it), neither a search nor an upsert gets through, and both
    finish once it is released, the search seeing the index as a whole."""
    index = new_index()
    put(index, "n1", {"a": 0})
    done: dict[str, object] = {}

    def search() -> None:
        done["search"] = keys(index.search(unit(0), 5, MODEL))

    def upsert() -> None:
        put(index, "n2", {"b": 1})
        done["upsert"] = True

    workers = [threading.Thread(target=search), threading.Thread(target=upsert)]
    with index._lock:
        for t in workers:
            t.start()
        for t in workers:
            t.join(0.2)  # bounded: they must still be waiting for the lock
        assert done == {}
        assert all(t.is_alive() for t in workers)
    for t in workers:
        t.join(WAIT_S)
        assert not t.is_alive()
    assert done["upsert"] is True
    assert done["search"] in ([("n1", "a")], [("n1", "a"), ("n2", "b")])


def test_concurrent_readers_and_a_writer() -> None:
    """Searches running while another thread upserts and removes nodes never fail and
    always see a consistent index: every hit is a live entry of a known node, each
    result is sorted, unique and no longer than k."""
    rng = np.random.default_rng(3)
    index = new_index(initial_capacity=4)
    nodes = [f"n{i}" for i in range(20)]
    vectors = {n: rng.normal(size=(3, DIM)).astype(np.float32) for n in nodes}
    for n in nodes[:10]:
        index.upsert(n, make_entries(n, "a", "b", "c"), vectors[n], MODEL)
    errors: list[BaseException] = []
    writer_done = threading.Event()
    searches = [0] * 4

    def write() -> None:
        try:
            local = np.random.default_rng(4)
            for _ in range(400):
                n = nodes[int(local.integers(0, len(nodes)))]
                if local.random() < 0.4:
                    index.remove_node(n)
                else:
                    index.upsert(n, make_entries(n, "a", "b", "c"), vectors[n], MODEL)
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            writer_done.set()

    def read(slot: int) -> None:
        local = np.random.default_rng(10 + slot)
        try:
            while not writer_done.is_set() or searches[slot] < 50:
                query = local.normal(size=DIM).astype(np.float32)
                hits = index.search(query, 8, MODEL)
                sims = [s for _, s in hits]
                assert len(hits) <= 8
                assert sims == sorted(sims, reverse=True)
                assert len(set(keys(hits))) == len(hits)
                assert all(e.node_id in vectors for e, _ in hits)
                index.by_name("a")
                searches[slot] += 1
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=read, args=(i,)) for i in range(4)]
    threads.append(threading.Thread(target=write))
    for t in threads:
        t.start()
    for t in threads:
        t.join(60.0)
        assert not t.is_alive(), "a thread did not finish in time"
    assert not errors, errors
    assert min(searches) >= 50
    live = sum(len(index.entries(n)) for n in index.node_ids())
    assert len(index) == live
    assert len(index.search(unit(0), 1000, MODEL)) == live
