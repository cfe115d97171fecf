"""Vectors in manifests: a node's own capability embeddings, quantised for the wire.

Theory of operation
-------------------
A node embeds its own capability texts once and ships the vectors in its signed manifest
(:class:`protocol.manifest.ManifestVectors`), so a receiver running the same embedder can
index them without embedding: joining a mesh of 10,000 agents then costs an index insert
per capability, not a model run per capability.

Encoding: int8 with one scale per vector, ``scale = max|v| / 127`` and
``q = round(v / scale)``. A 384-dimensional MiniLM vector is 384 bytes plus 9 for the
scale (float32 would be 1,536). Dequantised and re-normalised, the vector keeps a cosine
of at least :data:`MIN_ROUND_TRIP_COSINE` with the original (rounding moves each component
by at most ``scale / 2``); the recall cost measured by ``benchmarks/discovery.py`` is in
``docs/discovery.md``.

Which text a vector embeds. A capability's vector is
:func:`~meshnode.discovery.index.capability_vectors`: the embedding of its whole text
(:func:`~meshnode.discovery.index.capability_text`) for a capability without examples,
and for one with examples the sum of that and of each example embedded alone
(:data:`~meshnode.discovery.index.EXAMPLE_HEAD_WEIGHT`). A vector is keyed by the hash of
:func:`vector_text`: the whole text, followed for a capability with examples by
:data:`VECTOR_RECIPE`. So a vector made the earlier way (the whole text embedded once)
never matches the key a receiver looks up for a capability with examples, and the other
way round: either side embeds such a capability itself rather than take a vector made
another way for a forgery.

A shipped vector is a claim by its owner, never trusted for ranking: see
:class:`meshnode.runtime.discovery.DiscoveryService`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from meshnode.discovery.index import EXAMPLE_HEAD_WEIGHT, capability_text
from protocol.manifest import (
    MAX_MANIFEST_VECTORS,
    MAX_VECTOR_DIM,
    Capability,
    CapabilityVector,
    ManifestVectors,
    text_hash,
)

__all__ = [
    "INT8_LEVELS",
    "MIN_ROUND_TRIP_COSINE",
    "VECTOR_RECIPE",
    "claimed_vector",
    "claims",
    "decode_vector",
    "encode_vector",
    "manifest_vectors",
    "vector_text",
]

INT8_LEVELS = 127
"""Largest quantised magnitude: components map to -127..127 (−128 is never produced)."""

MIN_ROUND_TRIP_COSINE = 0.999
"""Least cosine between a unit vector of :data:`~protocol.manifest.MAX_VECTOR_DIM` or
fewer dimensions and its int8 round trip that the unit tests accept; measured on MiniLM
vectors the worst is above 0.9999."""


VECTOR_RECIPE = f"\n[vector: the whole text × {EXAMPLE_HEAD_WEIGHT:g} + each example]"
"""Appended to the whole text of a capability with examples in :func:`vector_text`: it
names how that capability's vector is made, so its key differs from the key of the whole
text embedded once (the earlier rule)."""


def vector_text(capability: Capability) -> str:
    """The text whose hash keys ``capability``'s vector in a manifest: its whole text
    (:func:`~meshnode.discovery.index.capability_text`), plus :data:`VECTOR_RECIPE` when
    it has examples (then its vector sums several embeddings)."""
    text = capability_text(capability)
    if capability.examples:
        text += VECTOR_RECIPE
    return text


def encode_vector(capability: str, text: str, vector: np.ndarray) -> CapabilityVector:
    """``vector`` (one row, finite) as an int8 :class:`CapabilityVector` for ``text``.
    Raises ``ValueError`` for a vector that is not finite, empty, too long or all zero."""
    row = np.asarray(vector, dtype=np.float64).reshape(-1)
    if not 1 <= row.size <= MAX_VECTOR_DIM:
        raise ValueError(f"vector has {row.size} dimensions; the limit is {MAX_VECTOR_DIM}")
    if not np.isfinite(row).all():
        raise ValueError("vector must be finite")
    norm = float(np.linalg.norm(row))
    if norm == 0.0:
        raise ValueError("a zero vector embeds nothing")
    row = row / norm
    scale = float(np.abs(row).max()) / INT8_LEVELS
    quantised = np.clip(np.rint(row / scale), -INT8_LEVELS, INT8_LEVELS).astype(np.int8)
    return CapabilityVector(
        capability=capability, text_hash=text_hash(text), scale=scale, values=quantised.tobytes()
    )


def decode_vector(vector: CapabilityVector) -> np.ndarray:
    """The unit ``float32`` row a :class:`CapabilityVector` carries (zero stays zero)."""
    row = np.frombuffer(vector.values, dtype=np.int8).astype(np.float32) * vector.scale
    norm = float(np.linalg.norm(row))
    if norm > 0.0:
        row /= norm
    return row


def manifest_vectors(
    model_id: str, dim: int, items: Sequence[tuple[str, str, np.ndarray]]
) -> ManifestVectors | None:
    """The vectors block for ``items`` (capability name, embedded text, vector); None
    when there is nothing to ship. At most :data:`MAX_MANIFEST_VECTORS` are kept."""
    encoded = []
    seen: set[tuple[str, bytes]] = set()
    for capability, text, vector in items[:MAX_MANIFEST_VECTORS]:
        try:
            item = encode_vector(capability, text, vector)
        except ValueError:
            continue  # a text that embeds to nothing: the receiver embeds it itself
        if (item.capability, item.text_hash) in seen:
            continue
        seen.add((item.capability, item.text_hash))
        encoded.append(item)
    if not encoded:
        return None
    return ManifestVectors(model_id=model_id, dim=dim, vectors=tuple(encoded))


def claims(
    vectors: ManifestVectors | None, model_id: str, dim: int
) -> dict[tuple[str, bytes], CapabilityVector]:
    """The vectors of ``vectors`` keyed by (capability name, text hash), if they were
    made by the embedder ``model_id`` with ``dim`` dimensions; else none (embed them)."""
    if vectors is None or vectors.model_id != model_id or vectors.dim != dim:
        return {}
    return {(v.capability, v.text_hash): v for v in vectors.vectors}


def claimed_vector(
    found: dict[tuple[str, bytes], CapabilityVector], capability: str, text: str
) -> np.ndarray | None:
    """The unit vector claimed for ``capability``'s ``text`` among ``found``
    (:func:`claims`), or None: not claimed, or claimed as all zeros."""
    vector = found.get((capability, text_hash(text)))
    if vector is None:
        return None
    row = decode_vector(vector)
    if not np.any(row):
        return None
    return row
