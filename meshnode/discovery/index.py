"""The capability index: every capability this node knows, searchable by meaning and name.

Theory of operation
-------------------
Each capability of each known manifest is one :class:`IndexEntry`, identified by
``(node_id, capability name)``, with one embedding in an hnswlib HNSW graph (cosine space)
and one slot in an exact name map beside it. The node feeds it as manifests arrive and
leave: :meth:`CapabilityIndex.upsert` replaces everything a node had (a manifest is
replaced whole, never patched) and :meth:`CapabilityIndex.remove_node` drops it.

Labels and slots. hnswlib stores vectors in slots addressed by a caller-chosen label. Every
entry gets a fresh label from a counter that only goes up; a label is never reused, because
hnswlib maps labels to slots and re-using one while an old deleted slot still carries it
would corrupt that map. Slots, on the other hand, are recycled: removal marks a slot
deleted, and the next insert takes a deleted slot (``allow_replace_deleted``) before
growing the graph. When live entries would exceed the allocated slots the index doubles.

Search. :meth:`CapabilityIndex.search` returns the ``k`` nearest live entries (``k`` is
clamped to the number of live entries) with their cosine similarity. If hnswlib cannot
fill ``k`` results (a graph left sparse by heavy deletion can do that), the same query is
answered exactly by a scan, so a caller never gets fewer results than exist. A query
restricted to one capability name is always exact: it only scores that name's providers.

Words. Beside the graph, a :class:`~meshnode.discovery.lexical.LexicalIndex` holds every
entry's name, description, tags and examples for BM25, updated in the same locked step as
the graph (an upsert replaces both, a removal drops both), so it never holds an entry the
graph does not, and it is bounded by the same ``max_entries``.
:meth:`CapabilityIndex.hybrid_search` answers a query from both: the ``k`` nearest by
embedding and the ``k`` best by BM25, each with its cosine similarity and its normalised
BM25 score (a hit found only by words gets its exact cosine; one found only by meaning
scores 0 on words).

Vectors. The index holds one vector per entry, whatever made it: a node makes it with
:func:`capability_vectors` (a capability's whole text, and for one with examples each
example embedded alone, summed; :data:`EXAMPLE_HEAD_WEIGHT`), or takes it from the
owner's manifest (:mod:`meshnode.discovery.vectors`). One vector keeps the graph, its
limits and the manifest vectors one per capability.

Vector spaces. The index is built for one embedder (``model_id``, ``dim``); every upsert
and search states the ``model_id`` of its vectors and a different one is refused with
:class:`ModelMismatchError`, never compared.

Thread safety: one ``threading.Lock`` around every read and write of the index (hnswlib's
graph, the label maps and the name map), so a search never sees half an upsert and hnswlib
is never asked to search while it inserts, resizes or marks deletions. No asyncio: the
runtime calls this from an executor.

Why not a reader/writer lock (searches sharing it): nothing here has concurrent readers.
The node runs every upsert and every search on one executor thread; the event loop's own
reads (``by_name``, ``len``) are dictionary look-ups. And where several threads do search
at once, sharing gains nothing measurable: with 10,000 entries of 384 dimensions on a
2-core machine, two threads searching (k = 5) together ran 3,067-4,139 searches/s behind
a reader/writer lock and 2,760-3,652 behind this lock, against 3,053-4,181 for one thread
(three runs each, the spread being other load on the machine). A search holds the lock
for about 0.3 ms, so an upsert waits at most that long, and a single lock cannot starve
it.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Iterable, Sequence
from typing import Any

import hnswlib
import numpy as np

from meshnode.discovery.embedder import Embedder
from meshnode.discovery.lexical import LexicalIndex, capability_terms
from meshnode.errors import IndexFullError, ModelMismatchError
from protocol.manifest import MAX_CAPABILITIES, Capability, Manifest

__all__ = [
    "DEFAULT_INITIAL_CAPACITY",
    "EXAMPLE_HEAD_WEIGHT",
    "HNSW_EF_CONSTRUCTION",
    "HNSW_EF_SEARCH",
    "HNSW_M",
    "HNSW_SEED",
    "MAX_INDEX_ENTRIES",
    "CapabilityIndex",
    "HybridHit",
    "IndexEntry",
    "IndexFullError",
    "ModelMismatchError",
    "capability_text",
    "capability_texts",
    "capability_vectors",
    "combine_vectors",
    "entries_from_manifest",
]

HNSW_M = 16
"""Graph degree (hnswlib ``M``): links per node per layer, twice that on layer 0. 16 is
hnswlib's recommended value for 100–1,000-dimensional embeddings; measured here it gives
recall@5 >= 0.99 at 100,000 entries with the ``ef`` below. Memory per entry is about
``4 × dim + 8 × M × 1.1`` bytes plus the entry object."""

HNSW_EF_CONSTRUCTION = 200
"""Candidate list size while inserting (hnswlib ``ef_construction``). Higher builds a
better graph more slowly; 200 is hnswlib's default. Measured: 0.3 ms per insert at 10,000
entries (384 dimensions), 0.8 ms at 100,000 (512), less than embedding the text."""

HNSW_EF_SEARCH = 96
"""Candidate list size while searching (hnswlib ``ef``; the effective value is
``max(ef, k)``). Chosen with ``benchmarks/discovery.py`` at 100,000 entries: recall@5
against an exact scan 0.998 at ef 96, against 0.991 at 64 and 0.989 at 50, for a p50 of
0.50 ms instead of 0.35 ms (2-core machine under load); 128 and 200 add time, not recall."""

HNSW_SEED = 100
"""Seed of hnswlib's level generator, so the same inserts build the same graph."""

DEFAULT_INITIAL_CAPACITY = 1_024
"""Slots allocated up front; the index doubles when it needs more."""

MAX_INDEX_ENTRIES = 1_000_000
"""Hard ceiling on live entries (about 2 GB of vectors and graph at 384 dimensions). A
10,000-node mesh of full manifests (32 capabilities each) is 320,000 entries."""


EXAMPLE_HEAD_WEIGHT = 0.5
"""Weight of the capability's whole text (:func:`capability_text`) against each of its
examples, embedded on their own, in its one vector (:func:`combine_vectors`)::

    vector = unit(EXAMPLE_HEAD_WEIGHT × unit(text) + Σ_examples unit(example))

Chosen on the ``dev`` split of ``tests/data/retrieval_large.json`` with its capabilities
given three author examples each (``python -m benchmarks.retrieval``, condition "with
author examples"): dev recall@1 / recall@3 with all-MiniLM-L6-v2 fp32, through the
router, 0.889 / 0.970, against 0.837 / 0.941 with the examples only folded into the one
text; by exact scores 0.889 / 0.970 at 0.5, 0.889 / 0.956 at 1.0, 0.881 / 0.956 at 2.0
(int8 before its activations were smoothed: 0.881 / 0.978, 0.874 / 0.970, 0.881 /
0.963; smoothed, at 0.5: 0.889 / 0.963). Without author examples (the set's
10 capabilities with one example each) the weights from 0.5 to 2.0 are within two dev
queries of one another. A sentence embedding mean-pools its tokens, so one long text of
description and examples sits between them; an example embedded alone keeps the
phrasing of a request, and the sum points at every such phrasing at once. A capability
without examples is its text's vector, unchanged."""


def capability_text(capability: Capability) -> str:
    """The capability's whole text: its name as words, its description, its tags and its
    examples.

    ``translate_text`` + "Translate text between languages" + tags (nlp,) gives
    ``"translate text: Translate text between languages (nlp)"``; with examples ("say
    hello in French",) it ends ``" Examples: say hello in French"``. It is embedded
    (first of :func:`capability_texts`), shown in explanations, and BM25 matches the
    examples' words exactly.
    """
    name = capability.name
    for separator in "_.:-":
        name = name.replace(separator, " ")
    name = " ".join(name.split())
    text = name
    description = " ".join(capability.description.split())
    if description:
        text = f"{text}: {description}"
    if capability.tags:
        text = f"{text} ({', '.join(capability.tags)})"
    examples = [" ".join(example.split()) for example in capability.examples]
    if examples:
        text = f"{text} Examples: {'; '.join(examples)}"
    return text


def capability_texts(capability: Capability) -> list[str]:
    """The texts embedded for ``capability``: :func:`capability_text` first, then each of
    its examples on its own (at most :data:`~protocol.manifest.MAX_EXAMPLES`, so at most
    six texts). One text for a capability without examples. A full manifest of 32
    capabilities with 5 examples of 256 characters each is 192 texts: measured 2.6 s of
    MiniLM int8 against 1.1 s for its 32 whole texts (2 loaded cores)."""
    return [capability_text(capability)] + [
        " ".join(example.split()) for example in capability.examples
    ]


def combine_vectors(rows: np.ndarray) -> np.ndarray:
    """The capability's one unit vector from the rows embedding its
    :func:`capability_texts` (the whole text first): see :data:`EXAMPLE_HEAD_WEIGHT`.
    One row is returned as it is; rows are normalised before they are summed (a zero row
    adds nothing), and a sum of zero stays zero."""
    matrix = np.asarray(rows, dtype=np.float32)
    if matrix.ndim != 2 or matrix.shape[0] < 1:
        raise ValueError(f"expected a matrix of one or more rows, got shape {matrix.shape}")
    if matrix.shape[0] == 1:
        only: np.ndarray = matrix[0].copy()
        return only
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    units = np.divide(matrix, norms, out=np.zeros_like(matrix), where=norms > 0.0)
    total = EXAMPLE_HEAD_WEIGHT * units[0] + units[1:].sum(axis=0)
    norm = float(np.linalg.norm(total))
    if norm > 0.0:
        total = total / norm
    combined: np.ndarray = total.astype(np.float32)
    return combined


def capability_vectors(embedder: Embedder, capabilities: Sequence[Capability]) -> np.ndarray:
    """One vector per capability (a ``(len(capabilities), dim)`` matrix), each the
    :func:`combine_vectors` of its :func:`capability_texts`, embedded in one call."""
    texts: list[str] = []
    counts: list[int] = []
    for capability in capabilities:
        mine = capability_texts(capability)
        texts += mine
        counts.append(len(mine))
    out = np.zeros((len(capabilities), embedder.dim), dtype=np.float32)
    if not texts:
        return out
    rows = np.asarray(embedder.embed(texts), dtype=np.float32)
    start = 0
    for i, count in enumerate(counts):
        out[i] = combine_vectors(rows[start : start + count])
        start += count
    return out


@dataclasses.dataclass(frozen=True, slots=True)
class IndexEntry:
    """One capability of one node, as the index holds it."""

    node_id: str
    capability: Capability
    text: str = ""
    """The text that was embedded (:func:`capability_text`), kept for explanations."""
    node_name: str = ""
    endpoint: str = ""
    """The node's ``host:port`` from its manifest."""
    node_tags: tuple[str, ...] = ()
    """The manifest's own tags (a query's tags may match these or the capability's)."""

    @property
    def name(self) -> str:
        """The capability's name."""
        return self.capability.name

    @property
    def key(self) -> tuple[str, str]:
        """``(node_id, capability name)``: the entry's identity."""
        return (self.node_id, self.capability.name)


@dataclasses.dataclass(frozen=True, slots=True)
class HybridHit:
    """One entry found for a query by meaning, by words, or both."""

    entry: IndexEntry
    similarity: float
    """Cosine similarity of the query's and the entry's embeddings, in [-1, 1]."""
    lexical: float
    """BM25 of the query against the entry's words, normalised to [0, 1] (0: no shared
    term); see :mod:`meshnode.discovery.lexical`."""


def entries_from_manifest(manifest: Manifest) -> list[IndexEntry]:
    """One entry per capability of ``manifest``, in manifest order."""
    return [
        IndexEntry(
            node_id=manifest.node_id,
            capability=capability,
            text=capability_text(capability),
            node_name=manifest.name,
            endpoint=manifest.endpoint,
            node_tags=tuple(manifest.tags),
        )
        for capability in manifest.capabilities
    ]


class CapabilityIndex:
    """Every known capability in an HNSW graph, plus an exact name map. Thread-safe."""

    def __init__(
        self,
        embedder_model_id: str,
        dim: int,
        *,
        initial_capacity: int = DEFAULT_INITIAL_CAPACITY,
        max_entries: int = MAX_INDEX_ENTRIES,
        m: int = HNSW_M,
        ef_construction: int = HNSW_EF_CONSTRUCTION,
        ef_search: int = HNSW_EF_SEARCH,
        seed: int = HNSW_SEED,
        build_threads: int = 1,
    ) -> None:
        """``build_threads`` > 1 lets one large upsert insert in parallel (bulk loads);
        the default keeps inserts on the calling thread and the graph reproducible."""
        if not embedder_model_id:
            raise ValueError("embedder_model_id must not be empty")
        if dim < 1:
            raise ValueError("dim must be >= 1")
        if not 1 <= initial_capacity <= max_entries:
            raise ValueError("initial_capacity must be in [1, max_entries]")
        if m < 2 or ef_construction < 1 or ef_search < 1 or build_threads < 1:
            raise ValueError("m must be >= 2; ef_construction, ef_search, build_threads >= 1")
        self._model_id = embedder_model_id
        self._dim = dim
        self._max_entries = max_entries
        self._build_threads = build_threads
        self._index: Any = hnswlib.Index(space="cosine", dim=dim)
        self._index.init_index(
            max_elements=initial_capacity,
            M=m,
            ef_construction=ef_construction,
            random_seed=seed,
            allow_replace_deleted=True,
        )
        self._index.set_ef(ef_search)
        self._ef_search = ef_search
        self._lock = threading.Lock()
        self._by_label: dict[int, IndexEntry] = {}
        self._labels_by_node: dict[str, tuple[int, ...]] = {}
        self._label_by_key: dict[tuple[str, str], int] = {}
        self._by_name: dict[str, dict[str, IndexEntry]] = {}
        self._next_label = 0
        self._deleted_slots = 0
        self._lexical = LexicalIndex(max_documents=max_entries)

    # ------------------------------------------------------------------ introspection

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def ef_search(self) -> int:
        """hnswlib's search candidate list size (see :data:`HNSW_EF_SEARCH`)."""
        with self._lock:
            return self._ef_search

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"ef_search must be a positive integer, got {value!r}")
        with self._lock:
            self._index.set_ef(value)
            self._ef_search = value

    @property
    def capacity(self) -> int:
        """Slots currently allocated (live + deleted + free)."""
        with self._lock:
            return int(self._index.get_max_elements())

    @property
    def deleted_slots(self) -> int:
        """Slots holding a removed entry, waiting to be reused."""
        with self._lock:
            return self._deleted_slots

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_label)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._label_by_key

    def __repr__(self) -> str:
        with self._lock:
            return (
                f"CapabilityIndex(model_id={self._model_id!r}, live={len(self._by_label)}, "
                f"nodes={len(self._labels_by_node)}, deleted_slots={self._deleted_slots}, "
                f"capacity={self._index.get_max_elements()})"
            )

    def node_ids(self) -> list[str]:
        """Nodes with at least one entry, sorted."""
        with self._lock:
            return sorted(self._labels_by_node)

    def entries(self, node_id: str) -> list[IndexEntry]:
        """``node_id``'s entries in the order they were upserted."""
        with self._lock:
            return [self._by_label[label] for label in self._labels_by_node.get(node_id, ())]

    def by_name(self, name: str) -> list[IndexEntry]:
        """Every live entry whose capability is called exactly ``name``, by node id."""
        with self._lock:
            providers = self._by_name.get(name, {})
            return [providers[node_id] for node_id in sorted(providers)]

    # ------------------------------------------------------------------ updates

    def upsert(
        self,
        node_id: str,
        entries: Sequence[IndexEntry],
        vectors: np.ndarray,
        model_id: str,
    ) -> None:
        """Make ``entries`` (row ``i`` of ``vectors`` embeds ``entries[i]``) the whole of
        ``node_id``'s capabilities, replacing whatever it had. Empty ``entries`` removes
        the node. Everything is validated before anything changes."""
        self.upsert_many([(node_id, entries, vectors)], model_id)

    def upsert_many(
        self,
        items: Sequence[tuple[str, Sequence[IndexEntry], np.ndarray]],
        model_id: str,
    ) -> None:
        """:meth:`upsert` for several nodes at once, ``(node_id, entries, vectors)`` each
        (each node at most once), in one hnswlib insert: with ``build_threads`` > 1 a
        batch of manifests is inserted in parallel. All or nothing: everything is
        validated before anything changes."""
        self._check_model(model_id)
        matrices: list[np.ndarray] = []
        nodes: set[str] = set()
        for node_id, entries, vectors in items:
            if node_id in nodes:
                raise ValueError(f"node {node_id!r} appears twice in one upsert")
            nodes.add(node_id)
            matrices.append(self._check_vectors(vectors, rows=len(entries)))
            self._check_entries(node_id, entries)
        # Each entry's BM25 words, tokenised before the lock is taken: the lexical index
        # takes every inserted entry in the same locked step as the graph.
        words = [
            [capability_terms(entry.capability) for entry in entries] for _, entries, _ in items
        ]

        with self._lock:
            removed = sum(len(self._labels_by_node.get(node_id, ())) for node_id in nodes)
            added = sum(len(entries) for _, entries, _ in items)
            live_after = len(self._by_label) - removed + added
            if live_after > self._max_entries:
                raise IndexFullError(
                    f"upsert would hold {live_after} entries; the limit is {self._max_entries}"
                )
            for node_id in nodes:
                self._remove_locked(node_id)
            if not added:
                return
            self._grow_locked(live_after)
            labels = tuple(range(self._next_label, self._next_label + added))
            self._next_label += added
            matrix = np.ascontiguousarray(np.concatenate([m for m in matrices if len(m)], axis=0))
            try:
                self._index.add_items(
                    matrix,
                    np.asarray(labels, dtype=np.uint64),
                    num_threads=self._build_threads,
                    replace_deleted=True,
                )
            except BaseException:
                self._forget_partial_insert_locked(labels)
                raise
            self._deleted_slots -= min(self._deleted_slots, len(labels))
            start = 0
            for (node_id, entries, _), terms in zip(items, words, strict=True):
                if not entries:
                    continue
                mine = labels[start : start + len(entries)]
                start += len(entries)
                self._labels_by_node[node_id] = mine
                for label, entry, document in zip(mine, entries, terms, strict=True):
                    self._by_label[label] = entry
                    self._label_by_key[entry.key] = label
                    self._by_name.setdefault(entry.name, {})[node_id] = entry
                    self._lexical.add(entry.key, document)

    def _check_entries(self, node_id: str, entries: Sequence[IndexEntry]) -> None:
        if len(entries) > MAX_CAPABILITIES:
            raise ValueError(
                f"{len(entries)} entries for one node; the limit is {MAX_CAPABILITIES}"
            )
        names: set[str] = set()
        for entry in entries:
            if not isinstance(entry, IndexEntry):
                raise TypeError(f"entries must be IndexEntry, got {type(entry).__name__}")
            if entry.node_id != node_id:
                raise ValueError(f"entry for node {entry.node_id!r} upserted as {node_id!r}")
            if entry.name in names:
                raise ValueError(f"capability {entry.name!r} appears twice for one node")
            names.add(entry.name)

    def vector(self, key: tuple[str, str]) -> np.ndarray | None:
        """The unit vector stored for entry ``key`` (``(node_id, capability name)``), or
        None when there is no such entry."""
        with self._lock:
            label = self._label_by_key.get(key)
            if label is None:
                return None
            row: np.ndarray = np.asarray(self._index.get_items([label]), dtype=np.float32)[0]
            return row

    def replace_vector(self, key: tuple[str, str], vector: np.ndarray, model_id: str) -> bool:
        """Store ``vector`` for the live entry ``key`` in place of the one it has (a claimed
        vector replaced by a local embedding). False when the entry is gone (its node was
        removed or re-upserted meanwhile): nothing changes."""
        self._check_model(model_id)
        matrix = self._check_vectors(vector, rows=1)
        with self._lock:
            label = self._label_by_key.get(key)
            if label is None:
                return False
            self._index.add_items(
                matrix, np.asarray([label], dtype=np.uint64), num_threads=1, replace_deleted=False
            )
            return True

    def remove_node(self, node_id: str) -> int:
        """Drop every entry of ``node_id``; returns how many there were."""
        with self._lock:
            return self._remove_locked(node_id)

    def _remove_locked(self, node_id: str) -> int:
        labels = self._labels_by_node.pop(node_id, ())
        for label in labels:
            entry = self._by_label.pop(label)
            del self._label_by_key[entry.key]
            self._lexical.remove(entry.key)
            providers = self._by_name[entry.name]
            del providers[node_id]
            if not providers:
                del self._by_name[entry.name]
            self._index.mark_deleted(label)
        self._deleted_slots += len(labels)
        return len(labels)

    def _grow_locked(self, live_after: int) -> None:
        # Inserts fill deleted slots first and append only when none is left, so the graph
        # needs exactly ``live_after`` slots.
        capacity = int(self._index.get_max_elements())
        if live_after > capacity:
            new_capacity = min(max(2 * capacity, live_after), self._max_entries)
            self._index.resize_index(new_capacity)

    def _forget_partial_insert_locked(self, labels: Iterable[int]) -> None:
        present = set(int(label) for label in self._index.get_ids_list())
        for label in labels:
            if label in present:
                self._index.mark_deleted(label)
                self._deleted_slots += 1

    # ------------------------------------------------------------------ queries

    def search(
        self,
        vector: np.ndarray,
        k: int,
        model_id: str,
        *,
        name: str | None = None,
        exact: bool = False,
    ) -> list[tuple[IndexEntry, float]]:
        """The ``k`` live entries most similar to ``vector``, best first, with their cosine
        similarity in [-1, 1]. ``k`` is clamped to the number of candidates. ``name``
        restricts the search to providers of that capability (scored exactly); ``exact``
        scans every entry instead of walking the graph (for checks and tests)."""
        self._check_model(model_id)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        query = self._check_vectors(vector, rows=1)[0]
        norm = float(np.linalg.norm(query))
        if norm > 0.0:
            query = query / norm
        with self._lock:
            if name is not None:
                providers = self._by_name.get(name, {})
                labels = [self._label_by_key[(node_id, name)] for node_id in sorted(providers)]
                return self._exact_locked(query, k, labels)
            live = len(self._by_label)
            if live == 0:
                return []
            k = min(k, live)
            if exact:
                return self._exact_locked(query, k, list(self._by_label))
            try:
                found, distances = self._index.knn_query(query, k=k, num_threads=1)
            except RuntimeError:
                # hnswlib found fewer than k live entries in the graph (possible after
                # heavy deletion): answer exactly rather than short.
                return self._exact_locked(query, k, list(self._by_label))
            return [
                (self._by_label[int(label)], _similarity(float(distance)))
                for label, distance in zip(found[0], distances[0], strict=True)
            ]

    def hybrid_search(
        self,
        vector: np.ndarray,
        text: str,
        k: int,
        model_id: str,
        *,
        name: str | None = None,
    ) -> list[HybridHit]:
        """The union of the ``k`` entries nearest to ``vector`` (:meth:`search`) and the
        ``k`` best by BM25 for ``text``, each with both scores; nearest first, then the
        entries found by words only (best BM25 first). ``name`` restricts both to that
        capability's providers."""
        dense = self.search(vector, k, model_id, name=name)
        query = self._check_vectors(vector, rows=1)[0]
        norm = float(np.linalg.norm(query))
        if norm > 0.0:
            query = query / norm
        with self._lock:
            keys = None
            if name is not None:
                keys = [(node_id, name) for node_id in self._by_name.get(name, {})]
            words = self._lexical.search(text, k, keys=keys)
            by_key = {key: normalised for key, _, normalised in words}
            hits = [
                HybridHit(entry, similarity, by_key.pop(entry.key, 0.0))
                for entry, similarity in dense
            ]
            extra = [
                (self._label_by_key[key], normalised)
                for key, normalised in by_key.items()
                if key in self._label_by_key
            ]
            if extra:
                stored = np.asarray(
                    self._index.get_items([label for label, _ in extra]), dtype=np.float32
                )
                for (label, normalised), similarity in zip(extra, stored @ query, strict=True):
                    cosine = max(-1.0, min(1.0, float(similarity)))
                    hits.append(HybridHit(self._by_label[label], cosine, normalised))
        return hits

    def _exact_locked(
        self, query: np.ndarray, k: int, labels: list[int]
    ) -> list[tuple[IndexEntry, float]]:
        if not labels:
            return []
        stored = np.asarray(self._index.get_items(labels), dtype=np.float32)
        similarities = stored @ query
        k = min(k, len(labels))
        if k < len(labels):
            top = np.argpartition(-similarities, k - 1)[:k]
        else:
            top = np.arange(len(labels))
        # Best first; equal scores in label (insertion) order, so the result is stable.
        order = sorted(top.tolist(), key=lambda i: (-float(similarities[i]), labels[i]))
        return [
            (self._by_label[labels[i]], max(-1.0, min(1.0, float(similarities[i])))) for i in order
        ]

    # ------------------------------------------------------------------ checks

    def _check_model(self, model_id: str) -> None:
        if model_id != self._model_id:
            raise ModelMismatchError(
                f"vectors from embedder {model_id!r} cannot be used with an index of "
                f"{self._model_id!r}: different embedders' vectors are not comparable "
                f"(re-embed the texts with {self._model_id!r} or build a new index)"
            )

    def _check_vectors(self, vectors: np.ndarray, *, rows: int) -> np.ndarray:
        matrix = np.asarray(vectors, dtype=np.float32)
        if rows == 1 and matrix.ndim == 1:
            matrix = matrix.reshape(1, -1)
        if matrix.ndim != 2 or matrix.shape != (rows, self._dim):
            raise ValueError(
                f"expected vectors of shape ({rows}, {self._dim}), got {np.shape(vectors)}"
            )
        if rows and not np.isfinite(matrix).all():
            raise ValueError("vectors must be finite")
        return np.ascontiguousarray(matrix)


def _similarity(cosine_distance: float) -> float:
    """hnswlib's cosine distance ``1 − cos`` back to a similarity clamped to [-1, 1]."""
    similarity = 1.0 - cosine_distance
    if math.isnan(similarity):
        return 0.0
    return max(-1.0, min(1.0, similarity))
