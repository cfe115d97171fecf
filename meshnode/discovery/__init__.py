"""Local semantic discovery: embedders and the capability index.

Every node answers discovery queries from its own index of every manifest it knows; there
is no registry to ask. Plain thread-safe Python, no asyncio: the runtime calls it through
an executor. Ranking the hits is :mod:`meshnode.core.router`'s job.

One concern per module: :mod:`~meshnode.discovery.embedder` (the protocol),
:mod:`~meshnode.discovery.hashing`, :mod:`~meshnode.discovery.minilm` (MiniLM and the
default) with :mod:`~meshnode.discovery.model` (the model's facts),
:mod:`~meshnode.discovery.onnx_backend` and :mod:`~meshnode.discovery.torch_backend` (how it
runs), :mod:`~meshnode.discovery.onnx_export` and :mod:`~meshnode.discovery.quantize` (the
graphs it runs), :mod:`~meshnode.discovery.graph_cache` (where they are kept, and the lock
that makes one process export them), :mod:`~meshnode.discovery.cached` (the query cache)
and :mod:`~meshnode.discovery.index` (the capability index) with
:mod:`~meshnode.discovery.lexical` (BM25 over its words).
"""

from __future__ import annotations

from meshnode.discovery.cached import DEFAULT_CACHE_ENTRIES, CachedEmbedder
from meshnode.discovery.embedder import Embedder
from meshnode.discovery.hashing import HASHING_DIM, HashingEmbedder
from meshnode.discovery.index import (
    CapabilityIndex,
    HybridHit,
    IndexEntry,
    IndexFullError,
    ModelMismatchError,
    capability_text,
    entries_from_manifest,
)
from meshnode.discovery.lexical import LexicalIndex
from meshnode.discovery.minilm import (
    MINILM_BATCH_SIZE,
    MINILM_PRECISION,
    MiniLMEmbedder,
    load_default_embedder,
)
from meshnode.discovery.model import MINILM_DIM, MINILM_INT8_MODEL_ID, MINILM_MODEL_ID
from meshnode.discovery.quantize import INT8_MATCH_MIN_COSINE, int8_dot_product_cpu

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
    "HybridHit",
    "IndexEntry",
    "IndexFullError",
    "LexicalIndex",
    "MiniLMEmbedder",
    "ModelMismatchError",
    "capability_text",
    "entries_from_manifest",
    "int8_dot_product_cpu",
    "load_default_embedder",
]
