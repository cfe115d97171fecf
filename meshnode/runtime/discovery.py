"""Discovery inside a running node: manifests in, ranked candidates out, no network.

Theory of operation
-------------------
Every manifest the node learns (by gossip and TCP fetch) is indexed locally: its
capabilities' texts are embedded and inserted in a :class:`~meshnode.discovery.CapabilityIndex`.
Embedding never runs on the event loop: changed manifests are queued, and one worker task
takes the whole queue, embeds the texts in a single batch on a dedicated thread (the
:class:`~meshnode.discovery.CachedEmbedder` skips texts seen before), and updates the index
there too. Probes and acks keep flowing while a 1,000-manifest mesh is being indexed.
A manifest that disappears (its node left or died) is removed at once.

A query embeds its description on the same thread, asks the index for a candidate pool
by meaning and by words (:meth:`~meshnode.discovery.CapabilityIndex.hybrid_search`: the
nearest embeddings and the best BM25 matches, each with both scores), keeps only members
SWIM currently holds alive, and ranks the pool with :func:`meshnode.core.router.rank`
using the node's blended trust view, the load each peer advertises in its acks (with its
manifest's ``max_concurrent_tasks``), and the breakers that are open. This node itself is
never a candidate.

The embedder is chosen by ``NodeConfig.embedder``: ``"auto"`` (MiniLM from the
``semantic`` extra when installed, else the hashing embedder, with one warning),
``"minilm"`` or ``"hashing"``. Loaded models are shared by every node in a process.

Vectors in manifests. A manifest may carry its owner's embeddings of its capability texts
(:mod:`meshnode.discovery.vectors`). When they were made by this node's embedder (same
``model_id`` and dimension) and their text hashes match the texts this node builds, they
are inserted as they are, and only the rest is embedded: a node joining 10,000 agents
indexes them in seconds. A claimed vector is untrusted input: it may get its capability
into a query's candidate pool, but before the pool is ranked its best claimed vectors
(:data:`RERANK_CLAIMS`) are replaced by local embeddings of the same texts (cached, and
written back to the index) and the other claims are left out of that answer, so nothing is
ranked by a claim. This holds for every hit of the hybrid search: a hit found only by its
words is scored on its stored vector too, so its claim is verified (or dropped) the same
way; its BM25 score comes from the signed text this node reads, and is kept. A claim
whose cosine with the local embedding is below ``NodeConfig.forged_vector_min_cosine`` is
counted against its owner (:attr:`DiscoveryService.forged_vectors`, in ``/v1/health`` and
in each candidate's score breakdown); that owner's claims are ignored from then on and
its manifest is re-indexed from local embeddings. Once no manifest has changed for
:data:`VERIFY_IDLE_S`, :data:`VERIFY_BATCH_TEXTS` claimed vectors every
:data:`VERIFY_INTERVAL_S` are checked the same way, so the index converges to local
embeddings.

What stays here, and why: the query's size limits validate API input at the boundary; the
pool size comes from :func:`meshnode.core.router.candidate_pool` and the ranking from
``NodeCore.route``; which embedder runs, and on which thread, is a resource choice.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from meshnode.core.router import ScoredCandidate, candidate_pool
from meshnode.errors import InvalidRequest, NodeNotRunning
from meshnode.runtime.logging import get_logger
from protocol import Manifest
from protocol.manifest import MAX_NAME_CHARS, MAX_TAG_CHARS

if TYPE_CHECKING:
    from meshnode.core.config import NodeConfig
    from meshnode.core.node import NodeCore
    from meshnode.discovery import CachedEmbedder, Embedder
    from meshnode.discovery.index import CapabilityIndex, HybridHit, IndexEntry

EMBEDDERS = ("auto", "minilm", "hashing")
"""Accepted values of ``NodeConfig.embedder``."""

MAX_QUERY_TAGS = 16
"""Most tags a query may filter on (a manifest carries at most
``protocol.manifest.MAX_TAGS``, so more can never match better)."""

VERIFY_BATCH_TEXTS = 32
"""Claimed vectors checked against local embeddings per background step while the queue
is empty: 32 texts, about 0.1 s of MiniLM on one core."""

VERIFY_INTERVAL_S = 1.0
"""Seconds between background verification steps, default 1: with
:data:`VERIFY_BATCH_TEXTS` at most 32 texts/s, about a tenth of one core. 80,000 claimed
vectors (10,000 agents × 8) converge in about 42 minutes; queries re-rank their own pool
at once meanwhile."""

INDEX_BUILD_THREADS = 2
"""Threads hnswlib inserts one batch of manifests on (hnswlib releases the GIL while it
inserts). Inserting is what a join costs once vectors arrive with the manifests: 80,000
MiniLM vectors took 55 s on one thread and 25 s on two, on a loaded 2-core machine."""

RERANK_CLAIMS = 16
"""Claimed vectors a query verifies before ranking (one chunk; another after each chunk
that held a forgery): about 50 ms of MiniLM on a cold cache, nothing once verified.
Claimed hits beyond them are left out of that answer. A query's pool is 64
(``meshnode.core.router.candidate_pool``), so at most 16 of its claims are ranked while
a join is fresh; measured by ``benchmarks/discovery.py --join``."""

MAX_FORGERS_TRACKED = 4_096
"""Owners whose forged vectors :attr:`DiscoveryService.forged_vectors` counts, default
4,096. A forger with fresh keys adds one owner per key; beyond the cap the owner with the
fewest forgeries goes, the longest-counted first among equals (see
:func:`count_forgery`), so repeat forgers stay known. Forgetting an owner only means its
next claims are checked again before they rank anything, as any stranger's are. 4,096
entries are about 0.5 MiB."""

VERIFY_IDLE_S = 30.0
"""Seconds, default 30, without any manifest change before background verification
starts: a node joining a large mesh spends its time indexing first; queries re-rank
their own pool meanwhile."""

OWN_VECTOR_CACHE = 256
"""Own capability texts whose vectors are kept for republishing (8 manifests' worth of
full capability lists), so a changed manifest embeds only its new texts."""

_shared: dict[tuple[str, str], CachedEmbedder] = {}
_shared_lock = threading.Lock()
log = get_logger("meshnode.discovery")


def shared_embedder(kind: str, precision: str = "auto") -> CachedEmbedder:
    """The process-wide embedder of ``kind`` and MiniLM ``precision`` (loaded once;
    blocking: call off the loop)."""
    if kind not in EMBEDDERS:
        raise ValueError(f"embedder must be one of {EMBEDDERS}, got {kind!r}")
    from meshnode.discovery import (
        CachedEmbedder,
        HashingEmbedder,
        MiniLMEmbedder,
        load_default_embedder,
    )

    with _shared_lock:
        cached = _shared.get((kind, precision))
        if cached is None:
            inner: Embedder
            if kind == "hashing":
                inner = HashingEmbedder()
            elif kind == "minilm":
                inner = MiniLMEmbedder(precision=precision)
            else:
                inner = load_default_embedder(precision=precision)
            cached = _shared[kind, precision] = CachedEmbedder(inner)
        return cached


def count_forgery(counts: dict[str, int], node_id: str, cap: int = MAX_FORGERS_TRACKED) -> None:
    """Count one forged vector against ``node_id`` in ``counts``, keeping at most ``cap``
    owners: a new owner beyond it evicts the owner with the fewest forgeries, the one
    counted longest ago among equals (the dict's insertion order)."""
    if node_id in counts:
        counts[node_id] += 1
        return
    while len(counts) >= cap:
        victim = min(counts, key=counts.__getitem__)  # first of the smallest counts
        del counts[victim]
    counts[node_id] = 1


class DiscoveryService:
    """The local semantic index of one node and the queries against it."""

    def __init__(self, config: NodeConfig, core: Callable[[], NodeCore]) -> None:
        self.config = config
        self._core = core
        """The node's core (it exists once the node has bound its port, after :meth:`load`)."""
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="meshnode-embed"
        )
        self.embedder: CachedEmbedder | None = None
        self.index: CapabilityIndex | None = None
        self._pending: dict[str, Manifest | None] = {}
        self._changed = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._worker: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._loaded = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._claimed: dict[str, set[str]] = {}
        """Per node, the capabilities whose indexed vector is its owner's claim, not yet
        checked (touched on the embedding thread only)."""
        self.forged_vectors: dict[str, int] = {}
        """Per owner, claimed vectors found far from the local embedding of their text (at
        most :attr:`max_forgers_tracked` owners, see :func:`count_forgery`)."""
        self.max_forgers_tracked = MAX_FORGERS_TRACKED
        """Cap on the owners :attr:`forged_vectors` holds (:data:`MAX_FORGERS_TRACKED`)."""
        self.counters: dict[str, int] = {
            "texts_embedded": 0,
            "vectors_accepted": 0,
            "vectors_verified": 0,
            "vectors_forged": 0,
        }
        """``texts_embedded``: capability texts embedded while indexing manifests;
        ``vectors_accepted``: claimed vectors indexed without embedding;
        ``vectors_verified``: claims replaced by a local embedding (at query time or in
        the background); ``vectors_forged``: of those, claims below the threshold."""
        self._own_vectors: dict[str, Any] = {}
        self._last_change = time.monotonic()

    async def load(self) -> None:
        """Load (or reuse) the embedder off the loop. The node does this before it binds
        and joins: importing a model holds the GIL for seconds, and a member that cannot
        answer probes in time would be suspected.

        The hashing embedder is the exception: it loads in milliseconds, so it (and the
        index, with numpy and hnswlib) is set up on the embedding thread when the first
        capability arrives or the first query is asked. A node that never indexes
        anything, such as a membership-only node, never imports them."""
        self._loaded = True
        if self.config.embedder == "hashing":
            return
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._materialize)

    def _materialize(self) -> None:
        """Create the embedder and the index (on the embedding thread)."""
        if self.embedder is not None:
            return
        from meshnode.discovery.index import CapabilityIndex

        config = self.config
        embedder = shared_embedder(config.embedder, config.embedding_precision)
        self.index = CapabilityIndex(
            embedder.model_id, embedder.dim, build_threads=INDEX_BUILD_THREADS
        )
        self.embedder = embedder  # last: ``embedder is not None`` means both are ready

    def start(self) -> None:
        """Start indexing: every manifest already known, then each change."""
        if not self._loaded:
            raise NodeNotRunning("load() the embedder first")
        self._ready.set()
        self._loop = asyncio.get_running_loop()
        self._worker = asyncio.create_task(self._work(), name="meshnode-discovery")
        for manifest in self._core().manifests.manifests():
            self.manifest_changed(manifest.node_id, manifest)

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        self._executor.shutdown(wait=True, cancel_futures=True)

    # ------------------------------------------------------------------ updates

    def manifest_changed(self, node_id: str, manifest: Manifest | None) -> None:
        """Queue an index update (called for every ``ManifestChanged``)."""
        if node_id == self._core().node_id:
            return
        self._pending[node_id] = manifest
        self._last_change = time.monotonic()
        self._idle.clear()
        self._changed.set()

    def vectors_json(self) -> dict[str, Any]:
        """Counters of vectors in manifests and forgeries per owner (for ``/v1/health``)."""
        return {
            **self.counters,
            "claims_unchecked": sum(len(names) for names in list(self._claimed.values())),
            # dict() copies in one step: the embedding thread may count meanwhile
            "forged_by_node": dict(sorted(dict(self.forged_vectors).items())),
        }

    @property
    def queue_depth(self) -> int:
        """Manifests waiting to be embedded and indexed (for ``/metrics``)."""
        return len(self._pending)

    async def settled(self) -> None:
        """Wait until every queued manifest is in the index."""
        await self._idle.wait()

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self._claimed and not self._pending:
                quiet = self._last_change + VERIFY_IDLE_S - time.monotonic()
                try:
                    await asyncio.wait_for(self._changed.wait(), max(VERIFY_INTERVAL_S, quiet))
                except TimeoutError:
                    try:
                        await loop.run_in_executor(
                            self._executor, self._verify_some, VERIFY_BATCH_TEXTS
                        )
                    except Exception as exc:  # a failed check must not stop indexing
                        log.error("vector_check_failed", error=f"{type(exc).__name__}: {exc}")
                    continue
            else:
                await self._changed.wait()
            self._changed.clear()
            batch, self._pending = self._pending, {}
            try:
                await loop.run_in_executor(self._executor, self._apply_batch, batch)
            except Exception as exc:  # an index failure must not stop gossip
                log.error("index_update_failed", error=f"{type(exc).__name__}: {exc}")
            if not self._pending:
                self._idle.set()

    def _apply_batch(self, batch: dict[str, Manifest | None]) -> None:
        """Runs on the embedding thread: one embedding call for the whole batch, for the
        texts whose vectors the manifests do not already carry (see the module doc)."""
        if self.embedder is None:
            if not any(m is not None and m.capabilities for m in batch.values()):
                return  # nothing indexed yet and nothing to index
            self._materialize()
        assert self.embedder is not None and self.index is not None
        import numpy as np

        from meshnode.discovery.index import (
            capability_texts,
            capability_vectors,
            entries_from_manifest,
        )
        from meshnode.discovery.vectors import claimed_vector, claims, vector_text

        index, embedder = self.index, self.embedder
        plans: list[tuple[str, list[IndexEntry], np.ndarray, set[str]]] = []
        texts: list[Any] = []  # the capabilities to embed
        slots: list[tuple[int, int]] = []  # (plan, row) of each capability to embed
        for node_id, manifest in batch.items():
            self._claimed.pop(node_id, None)
            if manifest is None:
                index.remove_node(node_id)
                continue
            entries = entries_from_manifest(manifest)
            rows = np.zeros((len(entries), embedder.dim), dtype=np.float32)
            found = (
                claims(manifest.vectors, embedder.model_id, embedder.dim)
                if self.config.manifest_vectors and node_id not in self.forged_vectors
                else {}
            )
            claimed: set[str] = set()
            for row, entry in enumerate(entries):
                vector = (
                    claimed_vector(found, entry.name, vector_text(entry.capability))
                    if found
                    else None
                )
                if vector is None:
                    slots.append((len(plans), row))
                    texts.append(entry.capability)
                else:
                    rows[row] = vector
                    claimed.add(entry.name)
            plans.append((node_id, entries, rows, claimed))
        if texts:
            started = time.perf_counter()
            embedded = capability_vectors(embedder, texts)
            self._core().metrics.embedding.observe(time.perf_counter() - started)
            self.counters["texts_embedded"] += sum(len(capability_texts(c)) for c in texts)
            for (plan, row), vector in zip(slots, embedded, strict=True):
                plans[plan][2][row] = vector
        # One insert for the whole batch, on INDEX_BUILD_THREADS threads.
        index.upsert_many(
            [(node_id, entries, rows) for node_id, entries, rows, _ in plans], embedder.model_id
        )
        for node_id, _, _, claimed in plans:
            if claimed:
                self._claimed[node_id] = claimed
                self.counters["vectors_accepted"] += len(claimed)

    def _verify(self, entries: Sequence[IndexEntry]) -> dict[tuple[str, str], Any]:
        """Runs on the embedding thread: replace the claimed vectors of ``entries`` by
        local embeddings (cached), count forgeries against their owners, and return the
        local vectors by entry key. Entries holding no claim are left alone."""
        assert self.embedder is not None and self.index is not None
        import numpy as np

        todo = [e for e in entries if e.name in self._claimed.get(e.node_id, ())]
        if not todo:
            return {}
        embedder, index = self.embedder, self.index
        from meshnode.discovery.index import capability_vectors

        local = capability_vectors(embedder, [e.capability for e in todo])
        out: dict[tuple[str, str], Any] = {}
        forgers: set[str] = set()
        for entry, vector in zip(todo, local, strict=True):
            claimed = index.vector(entry.key)
            names = self._claimed.get(entry.node_id)
            if names is not None:
                names.discard(entry.name)
                if not names:
                    del self._claimed[entry.node_id]
            if claimed is None or not index.replace_vector(entry.key, vector, embedder.model_id):
                continue  # the entry went away meanwhile
            out[entry.key] = vector
            self.counters["vectors_verified"] += 1
            if float(np.dot(claimed, vector)) < self.config.forged_vector_min_cosine:
                self.counters["vectors_forged"] += 1
                count_forgery(self.forged_vectors, entry.node_id, self.max_forgers_tracked)
                forgers.add(entry.node_id)
        for node_id in forgers:
            log.warning(
                "forged_vector",
                node=node_id[:12],
                count=self.forged_vectors.get(node_id, 0),
            )
            self._claimed.pop(node_id, None)
            if self._loop is not None:
                # Re-index its whole manifest from local embeddings (its claims are now
                # ignored); the queue lives on the event loop.
                self._loop.call_soon_threadsafe(self._reindex, node_id)
        return out

    def _reindex(self, node_id: str) -> None:
        manifest = self._core().manifests.get(node_id)
        if manifest is not None:
            self.manifest_changed(node_id, manifest)

    def _verify_some(self, limit: int) -> int:
        """Runs on the embedding thread: check up to ``limit`` claimed vectors, oldest
        node first. Returns how many were checked."""
        if self.index is None or not self._claimed:
            return 0
        entries: list[IndexEntry] = []
        for node_id in list(self._claimed):
            names = self._claimed[node_id]
            live = [e for e in self.index.entries(node_id) if e.name in names]
            if not live:
                del self._claimed[node_id]  # its claims went with its old manifest
                continue
            entries.extend(live[: limit - len(entries)])
            if len(entries) >= limit:
                break
        return len(self._verify(entries))

    def search(
        self, description: str, pool: int, capability_name: str | None = None
    ) -> list[HybridHit]:
        """Runs on the embedding thread: the index's hybrid answer for ``description``
        (:meth:`~meshnode.discovery.CapabilityIndex.hybrid_search`: the ``pool`` nearest
        by meaning and the ``pool`` best by words, restricted to ``capability_name`` when
        given), every claimed vector among them replaced by a local embedding first
        (:meth:`rerank`)."""
        assert self.embedder is not None and self.index is not None
        vector = self.embedder.embed([description])
        found = self.index.hybrid_search(
            vector, description, pool, self.embedder.model_id, name=capability_name
        )
        return self.rerank(vector[0], found)

    def rerank(self, query: Any, hits: Sequence[HybridHit]) -> list[HybridHit]:
        """Runs on the embedding thread: ``hits`` with the similarity of every claimed
        vector recomputed against the unit ``query`` vector from a local embedding, best
        similarity first. Lexical scores are kept: they come from the signed text itself,
        which this node reads, not from a claim.

        Claimed hits are verified best first, by the better of their two ranks (by
        similarity, and by BM25 for hits that share words with the query), so the best
        hits found by words get verified as early as the nearest ones. At most
        :data:`RERANK_CLAIMS` per query, and one more such chunk after every chunk that
        held a forgery (so forgeries cannot crowd honest claims out). Claimed hits left
        unverified are dropped from this answer, whichever search found them: a claim is
        never ranked. Hits whose vectors are local keep their similarity."""
        import dataclasses

        import numpy as np

        claimed = [h.entry for h in hits if h.entry.name in self._claimed.get(h.entry.node_id, ())]
        if not claimed:
            return list(hits)
        by_meaning = {
            h.entry.key: rank for rank, h in enumerate(sorted(hits, key=lambda h: -h.similarity))
        }
        by_words = {
            h.entry.key: rank
            for rank, h in enumerate(
                sorted((h for h in hits if h.lexical > 0.0), key=lambda h: -h.lexical)
            )
        }
        claimed.sort(key=lambda e: min(by_meaning[e.key], by_words.get(e.key, len(hits))))
        local: dict[tuple[str, str], Any] = {}
        start = 0
        while start < len(claimed):
            forged_before = self.counters["vectors_forged"]
            local.update(self._verify(claimed[start : start + RERANK_CLAIMS]))
            start += RERANK_CLAIMS
            if self.counters["vectors_forged"] == forged_before:
                break
        unverified = {entry.key for entry in claimed[start:]}
        rescored = [
            dataclasses.replace(
                hit,
                similarity=max(-1.0, min(1.0, float(np.dot(query, local[hit.entry.key])))),
            )
            if hit.entry.key in local
            else hit
            for hit in hits
            if hit.entry.key not in unverified
        ]
        rescored.sort(key=lambda hit: -hit.similarity)
        return rescored

    def own_vectors(self, capabilities: Sequence[Any]) -> Any:
        """The vectors block for this node's own ``capabilities`` (blocking: embeds the
        texts not embedded before, about 3 ms each with MiniLM), or None when
        ``NodeConfig.manifest_vectors`` is off or there is nothing to ship."""
        if not self.config.manifest_vectors or not capabilities:
            return None
        from meshnode.discovery.index import capability_vectors
        from meshnode.discovery.vectors import manifest_vectors, vector_text

        embedder = shared_embedder(self.config.embedder, self.config.embedding_precision)
        texts = [vector_text(c) for c in capabilities]
        missing = {t: c for t, c in zip(texts, capabilities, strict=True)}
        missing = {t: c for t, c in missing.items() if t not in self._own_vectors}
        if missing:
            vectors = capability_vectors(embedder, list(missing.values()))
            for text, vector in zip(missing, vectors, strict=True):
                self._own_vectors[text] = vector
            while len(self._own_vectors) > OWN_VECTOR_CACHE:
                del self._own_vectors[next(iter(self._own_vectors))]
        return manifest_vectors(
            embedder.model_id,
            embedder.dim,
            [(c.name, t, self._own_vectors[t]) for c, t in zip(capabilities, texts, strict=True)],
        )

    # ------------------------------------------------------------------ queries

    async def discover(
        self,
        description: str | None = None,
        *,
        capability_name: str | None = None,
        min_trust: float = 0.0,
        max_cost_usd: float | None = None,
        max_latency_ms: float | None = None,
        tags: Iterable[str] = (),
        top_k: int = 5,
        max_rtt_ms: float | None = None,
    ) -> list[ScoredCandidate]:
        """Rank the known providers for a description and/or an exact capability name."""
        if not description and not capability_name:
            raise InvalidRequest("discover needs a description, a capability_name, or both")
        if isinstance(tags, str):
            raise TypeError("tags must be a collection of strings, not one string")
        tags = tuple(tags)
        check_query(description, capability_name, tags, max_chars=self.config.max_query_chars)
        pool = candidate_pool(top_k)  # validates top_k
        await self._ready.wait()
        loop = asyncio.get_running_loop()
        if self.embedder is None:
            await loop.run_in_executor(self._executor, self._materialize)
        assert self.embedder is not None and self.index is not None
        index = self.index
        lexical: dict[tuple[str, str], float] | None = None
        if description:
            # Off the loop: the search waits for the index lock while a bulk update holds
            # it, and takes about 1 ms at 100,000 capabilities.
            found = await loop.run_in_executor(
                self._executor, self.search, description, pool, capability_name
            )
            hits: Sequence[tuple[IndexEntry, float]] = [(h.entry, h.similarity) for h in found]
            lexical = {h.entry.key: h.lexical for h in found if h.lexical > 0.0}
        else:
            assert capability_name is not None
            hits = [(entry, 1.0) for entry in index.by_name(capability_name)]
        return self._core().route(
            hits,
            time.time(),
            min_trust=min_trust,
            max_cost_usd=max_cost_usd,
            max_latency_ms=max_latency_ms,
            tags=tags,
            capability_name=capability_name,
            name_only=not description,
            top_k=top_k,
            lexical=lexical,
            max_rtt_ms=max_rtt_ms,
        )


def candidate_json(c: ScoredCandidate, forged_vectors: int = 0) -> dict[str, Any]:
    """A candidate for ``/v1/discover``: who, what, and its score broken down: ``total``
    blends ``relevance`` (fused from ``semantic`` and ``lexical``), ``trust``,
    ``availability`` (from ``task_availability`` and ``machine_pressure``),
    ``cost_factor`` and ``latency`` (from ``rtt_ms`` and ``avg_latency_ms``);
    ``similarity`` is the raw cosine; ``forged_vectors`` is how many of its owner's claimed
    vectors this node found forged (:attr:`DiscoveryService.forged_vectors`)."""
    return {
        "node_id": c.node_id,
        "name": c.node_name,
        "address": c.address,
        "capability": c.capability.name,
        "description": c.capability.description,
        "cost_per_call_usd": c.capability.cost_per_call_usd,
        "avg_latency_ms": c.capability.avg_latency_ms,
        "circuit_open": c.circuit_open,
        "suspect": c.suspect,
        "score": {
            "total": round(c.total, 6),
            "relevance": round(c.relevance, 6),
            "semantic": round(c.semantic, 6),
            "lexical": round(c.lexical, 6),
            "trust": round(c.trust, 6),
            "availability": round(c.availability, 6),
            "cost_factor": round(c.cost_factor, 6),
            "similarity": round(c.similarity, 6),
            "latency": round(c.latency, 6),
            "rtt_ms": None if c.rtt_ms is None else round(c.rtt_ms, 3),
            "task_availability": round(c.task_availability, 6),
            "machine_pressure": (
                None if c.machine_pressure is None else round(c.machine_pressure, 6)
            ),
            "forged_vectors": forged_vectors,
        },
    }


def check_query(
    description: str | None,
    capability_name: str | None,
    tags: Iterable[str],
    *,
    max_chars: int,
) -> None:
    """Refuse, with a ``ValueError`` naming the limit, a query whose texts are longer than
    anything a manifest can hold or than ``max_chars`` (``NodeConfig.max_query_chars``)
    for the description this node embeds."""
    if description is not None and len(description) > max_chars:
        raise InvalidRequest(
            f"description is {len(description)} characters; the limit is {max_chars}"
        )
    if capability_name is not None and len(capability_name) > MAX_NAME_CHARS:
        raise InvalidRequest(
            f"capability_name is {len(capability_name)} characters; the limit is {MAX_NAME_CHARS}"
        )
    tag_list = list(tags)
    if len(tag_list) > MAX_QUERY_TAGS:
        raise InvalidRequest(f"{len(tag_list)} tags; the limit is {MAX_QUERY_TAGS}")
    for tag in tag_list:
        if len(tag) > MAX_TAG_CHARS:
            raise InvalidRequest(f"tag of {len(tag)} characters; the limit is {MAX_TAG_CHARS}")
