"""A signature verifier that remembers its answers, for the thousands of nodes of one run.

Theory of operation
-------------------
A signature check is a pure function of three byte strings: the public key, the signed
bytes and the signature. In a simulation every node checks the same signed objects — each
of N nodes verifies every manifest and every ledger record it accepts — so the same check
runs up to N times. :class:`CachedVerifier` wraps the real verifier (Ed25519 or the fast
stand-in) and answers a repeated check from a dictionary keyed by **all three** values,
compared by content: a cached answer is only ever reused for the very same key, data and
signature, so it is exactly what the wrapped verifier would answer again. Refusals are
cached like acceptances (they are as pure).

Arguments that are not exactly ``bytes`` (a ``bytearray`` or ``memoryview``: mutable, or
unhashable) are passed through uncached. The dictionary holds at most
:data:`MAX_CACHED_CHECKS` entries and is emptied when full (answers stay exact either way;
only the hit rate drops), so a run that signs a fresh envelope per packet (``--wire``)
cannot grow it without bound.

The cache lives in one :class:`~simulations.cluster.Cluster` (one run), never inside a
core: the cores take any ``Verifier``, and the runtime gives them the plain one.
"""

from __future__ import annotations

from typing import Final

from protocol import Verifier

__all__ = ["MAX_CACHED_CHECKS", "CachedVerifier"]

MAX_CACHED_CHECKS: Final = 1 << 17
"""Most remembered checks (131,072) before the cache is emptied. An entry holds references
to the three byte strings (shared with the messages that carry them) plus about 200 bytes
of dictionary slot and key tuple; the distinct signed objects alive in a 10,000-node run
(10,000 manifests, the ledger records of the workload) fit."""


class CachedVerifier:
    """``verifier`` with its answers remembered (see the module docstring). Call it as a
    :data:`protocol.Verifier`: ``(public_key, data, signature) -> bool``."""

    __slots__ = ("_cache", "_limit", "_verifier", "hits", "misses")

    def __init__(self, verifier: Verifier, *, limit: int = MAX_CACHED_CHECKS) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a positive integer, got {limit!r}")
        self._verifier = verifier
        self._limit = limit
        self._cache: dict[tuple[bytes, bytes, bytes], bool] = {}
        self.hits = 0
        """Checks answered from the cache."""
        self.misses = 0
        """Checks passed to the wrapped verifier (uncacheable arguments included)."""

    @property
    def verifier(self) -> Verifier:
        """The wrapped verifier."""
        return self._verifier

    def __len__(self) -> int:
        """Checks remembered now."""
        return len(self._cache)

    def __call__(self, public_key: bytes, data: bytes, signature: bytes) -> bool:
        if type(public_key) is not bytes or type(data) is not bytes or type(signature) is not bytes:
            self.misses += 1
            return bool(self._verifier(public_key, data, signature))
        key = (public_key, signature, data)
        cache = self._cache
        answer = cache.get(key)
        if answer is not None:
            self.hits += 1
            return answer
        self.misses += 1
        answer = bool(self._verifier(public_key, data, signature))
        if len(cache) >= self._limit:
            cache.clear()
        cache[key] = answer
        return answer
