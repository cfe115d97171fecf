"""Local semantic discovery: embedders and the capability index.

Every node answers discovery queries from its own index of every manifest it knows; there
is no registry to ask. Plain thread-safe Python, no asyncio: the runtime calls it through
an executor. Ranking the hits is :mod:`meshnode.core.router`'s job.
"""

from __future__ import annotations

from meshnode.discovery.embedder import (
    DEFAULT_CACHE_ENTRIES,
    HASHING_DIM,
    INT8_MATCH_MIN_COSINE,
    MINILM_BATCH_SIZE,
    MINILM_DIM,
    MINILM_INT8_MODEL_ID,
    MINILM_MODEL_ID,
    MINILM_PRECISION,
    CachedEmbedder,
    Embedder,
    HashingEmbedder,
    MiniLMEmbedder,
    int8_dot_product_cpu,
    load_default_embedder,
)
from meshnode.discovery.index import (
    CapabilityIndex,
    IndexEntry,
    IndexFullError,
    ModelMismatchError,
    capability_text,
    entries_from_manifest,
)
from meshnode.discovery.rwlock import RWLock

__all__ = [
    "DEFAULT_CACHE_ENTRIES",
    "HASHING_DIM",
    "INT8_MATCH_MIN_COSINE",
    "MINILM_BATCH_SIZE",
    "MINILM_DIM",
    "MINILM_INT8_MODEL_ID",
    "MINILM_MODEL_ID",
    "MINILM_PRECISION",
    "CachedEmbedder",
    "CapabilityIndex",
    "Embedder",
    "HashingEmbedder",
    "IndexEntry",
    "IndexFullError",
    "MiniLMEmbedder",
    "ModelMismatchError",
    "RWLock",
    "capability_text",
    "entries_from_manifest",
    "int8_dot_product_cpu",
    "load_default_embedder",
]
