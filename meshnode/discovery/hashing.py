"""The hashing embedder: deterministic, numpy only, no model.

Theory of operation
-------------------
Word unigrams, word bigrams and character trigrams of a text, each hashed with BLAKE2b into
a signed bucket (the "hashing trick"), summed and L2-normalised. It finds texts that share
words, not paraphrases; it is for tests, simulations and installs without the ``semantic``
extra, and the fallback of :func:`~meshnode.discovery.load_default_embedder`.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
from collections import Counter
from collections.abc import Sequence
from itertools import pairwise

import numpy as np

from meshnode.discovery.embedder import check_texts, empty_rows, normalise_rows

__all__ = [
    "HASHING_DIM",
    "HASHING_VERSION",
    "HASH_FEATURE_CACHE",
    "HASH_WEIGHT_BIGRAM",
    "HASH_WEIGHT_TRIGRAM",
    "HASH_WEIGHT_UNIGRAM",
    "STOP_WORDS",
    "HashingEmbedder",
]

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

_WORD = re.compile(r"[^\W_]+")
_BASE_WEIGHTS = {"w": HASH_WEIGHT_UNIGRAM, "b": HASH_WEIGHT_BIGRAM, "c": HASH_WEIGHT_TRIGRAM}


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
        check_texts(texts)
        if not texts:
            return empty_rows(self._dim)
        matrix = np.zeros((len(texts), self._dim), dtype=np.float32)
        for row, text in enumerate(texts):
            vector = matrix[row]
            for feature, weight in self.features(text).items():
                bucket, sign = _bucket(feature, self._dim)
                vector[bucket] += sign * weight
        return normalise_rows(matrix)
