"""The query cache: a bounded LRU of embeddings in front of another embedder.

A manifest that is re-announced, or a query that is repeated, is not embedded twice.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from meshnode.discovery.embedder import Embedder, check_texts, empty_rows

__all__ = ["DEFAULT_CACHE_ENTRIES", "CachedEmbedder"]

DEFAULT_CACHE_ENTRIES = 4_096
"""Default capacity of :class:`CachedEmbedder`, in texts. At 384 float32 values a row
this is about 6 MiB; it holds the texts of 128 full manifests (32 capabilities each), or
any mix of those and repeated queries."""


def _cache_key(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class CachedEmbedder:
    """A bounded LRU cache in front of another embedder.

    Keys are the 16-byte BLAKE2b digests of the texts (so the cache holds no text). A call
    looks every text up under a lock, embeds the misses (each distinct text once) in one
    batch outside the lock, then stores them. Two threads missing the same text at once
    may both embed it; the result is the same.
    """

    def __init__(self, inner: Embedder, max_entries: int = DEFAULT_CACHE_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self._inner = inner
        self._max_entries = max_entries
        self._entries: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def inner(self) -> Embedder:
        return self._inner

    @property
    def model_id(self) -> str:
        return self._inner.model_id

    @property
    def dim(self) -> int:
        return self._inner.dim

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __repr__(self) -> str:
        return (
            f"CachedEmbedder({self._inner!r}, entries={len(self)}/{self._max_entries}, "
            f"hits={self.hits}, misses={self.misses})"
        )

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        check_texts(texts)
        if not texts:
            return empty_rows(self.dim)
        keys = [_cache_key(text) for text in texts]
        found: dict[bytes, np.ndarray] = {}
        missing: dict[bytes, str] = {}
        with self._lock:
            for key, text in zip(keys, texts, strict=True):
                row = self._entries.get(key)
                if row is not None:
                    self._entries.move_to_end(key)
                    found[key] = row
                    self.hits += 1
                elif key in missing:
                    self.hits += 1  # repeated within this call: embedded once
                else:
                    missing[key] = text
                    self.misses += 1
        if missing:
            computed = self._inner.embed(list(missing.values()))
            with self._lock:
                for key, row in zip(missing, computed, strict=True):
                    row = row.copy()
                    row.flags.writeable = False
                    found[key] = row
                    self._entries[key] = row
                    self._entries.move_to_end(key)
                while len(self._entries) > self._max_entries:
                    self._entries.popitem(last=False)
        return np.stack([found[key] for key in keys]).astype(np.float32, copy=False)
