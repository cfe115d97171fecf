"""The simulator's remembered signature checks answer exactly what the verifier answers.

Invariant: for any sequence of checks, ``CachedVerifier(v)(k, d, s) == v(k, d, s)`` — in
particular a check the verifier refuses is never accepted because a *related* check (same
key and signature over other bytes, same bytes under another key or signature) was
accepted before. Both the Ed25519 verifier and the fast stand-in are covered.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import FastSigner, Identity, Verifier, fast_verify, verify
from simulations.cluster import Cluster
from simulations.network import LinkModel
from simulations.scenarios import Spec, make_config
from simulations.verify_cache import CachedVerifier

SIGNERS: dict[str, tuple[Callable[[bytes], FastSigner | Identity], Verifier]] = {
    "fast": (FastSigner.from_seed, fast_verify),
    "real": (Identity.from_seed, verify),
}


def _flip(value: bytes, bit: int) -> bytes:
    if not value:
        return b"\x01"
    i = (bit // 8) % len(value)
    return value[:i] + bytes([value[i] ^ (1 << (bit % 8))]) + value[i + 1 :]


@pytest.mark.parametrize("crypto", sorted(SIGNERS))
@given(
    messages=st.lists(st.binary(max_size=64), min_size=1, max_size=4),
    seeds=st.lists(st.integers(0, 3), min_size=1, max_size=4),
    bits=st.lists(st.integers(0, 8 * 64 - 1), min_size=3, max_size=3),
    order=st.randoms(use_true_random=False),
)
def test_cached_answers_equal_the_verifier(
    crypto: str, messages: list[bytes], seeds: list[int], bits: list[int], order: object
) -> None:
    """Valid checks, then every tampering of them (other bytes, other key, other or
    flipped signature), in a random order and each asked twice: always the verifier's
    answer, and every refused check stays refused when it is asked again."""
    make, verifier = SIGNERS[crypto]
    signers = [make(bytes([s]) * 32) for s in seeds]
    cached = CachedVerifier(verifier)
    checks: list[tuple[bytes, bytes, bytes]] = []
    for signer, data in zip(signers * len(messages), messages, strict=False):
        signature = signer.sign(data)
        key = signer.public_key
        checks.append((key, data, signature))
        checks.append((key, _flip(data, bits[0]), signature))  # same signature, other bytes
        checks.append((key, data, _flip(signature, bits[1])))  # a forged signature
        checks.append((_flip(key, bits[2]), data, signature))  # another key
        for other in messages:
            checks.append((key, other, signature))  # a signature moved to other bytes
    order.shuffle(checks)  # type: ignore[attr-defined]
    for key, data, signature in checks + checks:
        assert cached(key, data, signature) == verifier(key, data, signature)
    assert cached.hits >= len(checks)  # the second round came from the cache


def test_a_valid_signature_does_not_vouch_for_other_bytes() -> None:
    """The cache is keyed by the bytes too: after the genuine check is cached, the same
    key and signature over different bytes are refused."""
    signer = FastSigner.from_seed(b"k" * 32)
    cached = CachedVerifier(fast_verify)
    signature = signer.sign(b"score=0.1")
    assert cached(signer.public_key, b"score=0.1", signature)
    assert not cached(signer.public_key, b"score=0.9", signature)
    assert not cached(FastSigner.from_seed(b"x" * 32).public_key, b"score=0.1", signature)
    assert cached.hits == 0 and cached.misses == 3


def test_mutable_arguments_are_checked_every_time() -> None:
    """A bytearray could change after its answer was stored: never cached."""
    signer = FastSigner.from_seed(b"k" * 32)
    cached = CachedVerifier(fast_verify)
    data = bytearray(b"payload")
    signature = signer.sign(bytes(data))
    assert cached(signer.public_key, data, signature)  # type: ignore[arg-type]
    data[0] ^= 1
    assert not cached(signer.public_key, data, signature)  # type: ignore[arg-type]
    assert len(cached) == 0 and cached.hits == 0


def test_the_cache_is_bounded() -> None:
    signer = FastSigner.from_seed(b"k" * 32)
    cached = CachedVerifier(fast_verify, limit=8)
    for i in range(50):
        data = i.to_bytes(4, "big")
        assert cached(signer.public_key, data, signer.sign(data))
        assert len(cached) <= 8
    with pytest.raises(ValueError, match="positive"):
        CachedVerifier(fast_verify, limit=0)


@pytest.mark.parametrize("crypto", ["fast", "real"])
def test_a_join_checks_each_signed_object_once(crypto: str) -> None:
    """20 nodes join through 3 seeds: every node verifies every other node's ``Alive`` and
    manifest, yet each distinct signature is computed once for the whole run."""
    spec = Spec("join", nodes=20, seed=3, crypto=crypto)
    cluster = Cluster(seed=3, config=make_config(spec), link=LinkModel(), crypto=crypto)
    nodes = [cluster.add_node() for _ in range(20)]
    for node in nodes:
        cluster.start(node, nodes[:3])
    cluster.run_until(20.0)
    assert cluster.tracker.converged
    assert all(n.core is not None and len(n.core.manifests) == 20 for n in nodes)
    # Per node: its provider's check of its own signer, its Alive, its manifest.
    assert cluster.verifier.misses == 3 * 20
    assert cluster.verifier.hits >= 20 * 19  # at least every manifest held elsewhere
    assert cluster.verifier.verifier is (verify if crypto == "real" else fast_verify)
