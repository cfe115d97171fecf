"""The :class:`Embedder` protocol: texts in, one unit vector per text out.

Theory of operation
-------------------
Discovery compares a query with every known capability by the cosine of their embeddings.
An :class:`Embedder` turns texts into a ``float32`` matrix with one L2-normalised row per
text (a text with nothing to embed may give the zero row, similar to nothing). Every
embedder names its vector space with ``model_id``; vectors from two different spaces are
never compared (the capability index refuses them).

The implementations live one per module:

* :mod:`meshnode.discovery.hashing` — :class:`~meshnode.discovery.HashingEmbedder`,
  deterministic and numpy-only, for tests, simulations and minimal installs;
* :mod:`meshnode.discovery.minilm` — :class:`~meshnode.discovery.MiniLMEmbedder`,
  all-MiniLM-L6-v2 on ONNX Runtime (:mod:`~meshnode.discovery.onnx_backend`) or torch
  (:mod:`~meshnode.discovery.torch_backend`), and :func:`~meshnode.discovery.load_default_embedder`;
* :mod:`meshnode.discovery.cached` — :class:`~meshnode.discovery.CachedEmbedder`, a bounded
  LRU cache in front of either.

The small helpers below are shared by all of them, so every embedder refuses the same
bad input the same way.

Thread safety: every embedder may be called from several threads at once (the asyncio
runtime calls them through an executor).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["Embedder", "check_texts", "empty_rows", "normalise_rows"]


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


def empty_rows(dim: int) -> np.ndarray:
    """The result of embedding no texts: a ``(0, dim)`` ``float32`` matrix."""
    return np.zeros((0, dim), dtype=np.float32)


def normalise_rows(matrix: np.ndarray) -> np.ndarray:
    """Scale every non-zero row of ``matrix`` to norm 1, in place; zero rows stay zero."""
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    np.divide(matrix, norms, out=matrix, where=norms > 0.0)
    return matrix


def check_texts(texts: Sequence[str]) -> None:
    """Raise ``TypeError`` unless ``texts`` is a sequence of strings (not one string)."""
    if isinstance(texts, str):
        raise TypeError("embed() takes a sequence of texts, not one string")
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"texts must be strings, got {type(text).__name__}")
