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
        self.index = CapabilityIndex(embedder.model_id, embedder.dim)
        self.embedder = embedder  # last: ``embedder is not None`` means both are ready

    def start(self) -> None:
        """Start indexing: every manifest already known, then each change."""
        if not self._loaded:
            raise NodeNotRunning("load() the embedder first")
        self._ready.set()
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
        self._idle.clear()
        self._changed.set()

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
        """Runs on the embedding thread: one embedding call for the whole batch."""
        if self.embedder is None:
            if not any(m is not None and m.capabilities for m in batch.values()):
                return  # nothing indexed yet and nothing to index
            self._materialize()
        assert self.embedder is not None and self.index is not None
        from meshnode.discovery.index import entries_from_manifest

        index = self.index
        plans: list[tuple[str, list[IndexEntry]]] = []
        texts: list[str] = []
        for node_id, manifest in batch.items():
            if manifest is None:
                index.remove_node(node_id)
                continue
            entries = entries_from_manifest(manifest)
            plans.append((node_id, entries))
            texts.extend(e.text for e in entries)
        started = time.perf_counter()
        vectors = self.embedder.embed(texts) if texts else None
        if texts:
            self._core().metrics.embedding.observe(time.perf_counter() - started)
        row = 0
        for node_id, entries in plans:
            if not entries:
                index.remove_node(node_id)
                continue
            assert vectors is not None
            index.upsert(
                node_id, entries, vectors[row : row + len(entries)], self.embedder.model_id
            )
            row += len(entries)

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
        embedder, index = self.embedder, self.index
        lexical: dict[tuple[str, str], float] | None = None
        if description:
            text = description

            def embed_and_search() -> list[HybridHit]:
                # Off the loop: the search waits for the index lock while a bulk update
                # holds it, and takes about 1 ms at 100,000 capabilities.
                vector = embedder.embed([text])
                return index.hybrid_search(
                    vector, text, pool, embedder.model_id, name=capability_name
                )

            found = await loop.run_in_executor(self._executor, embed_and_search)
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


def candidate_json(c: ScoredCandidate) -> dict[str, Any]:
    """A candidate for ``/v1/discover``: who, what, and its score broken down: ``total``
    blends ``relevance`` (fused from ``semantic`` and ``lexical``), ``trust``,
    ``availability`` (from ``task_availability`` and ``machine_pressure``),
    ``cost_factor`` and ``latency`` (from ``rtt_ms`` and ``avg_latency_ms``);
    ``similarity`` is the raw cosine."""
    return {
        "node_id": c.node_id,
        "name": c.node_name,
        "address": c.address,
        "capability": c.capability.name,
        "description": c.capability.description,
        "cost_per_call_usd": c.capability.cost_per_call_usd,
        "avg_latency_ms": c.capability.avg_latency_ms,
        "circuit_open": c.circuit_open,
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
