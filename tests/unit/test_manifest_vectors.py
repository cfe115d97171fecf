"""Vectors in manifests: the wire field, its bounds, its signature, its encoding.

Invariants:
1. a manifest without vectors encodes and signs exactly as before the field existed, so
   manifests signed by older nodes still decode and verify;
2. the vectors travel inside the signed bytes: changing one byte breaks the signature;
3. every bound (dimension cap, count cap, values length = dim, finite positive scale,
   known capability, one vector per (name, text hash)) refuses the whole manifest with a
   clear error, on construction (local error) and on decoding (remote error);
4. the int8 encoding keeps a cosine of at least ``MIN_ROUND_TRIP_COSINE`` with the
   original vector.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

import msgpack
import numpy as np
import pytest

from meshnode.discovery.vectors import (
    MIN_ROUND_TRIP_COSINE,
    claimed_vector,
    claims,
    decode_vector,
    encode_vector,
    manifest_vectors,
)
from protocol import (
    Capability,
    Identity,
    LimitExceeded,
    LocalProtocolError,
    MalformedMessage,
    Manifest,
    pack,
    unpack,
)
from protocol.codec import message_to_wire
from protocol.manifest import (
    MAX_MANIFEST_VECTORS,
    MAX_VECTOR_DIM,
    CapabilityVector,
    ManifestVectors,
    text_hash,
)
from protocol.schema import SIGNING_DOMAIN, Appended, signing_bytes, struct_to_wire, wire_struct

SIGNER = Identity.from_seed(b"\x0b" * 32)
CAPS = (
    Capability(name="translate", description="Translate text"),
    Capability(name="summarise", description="Summarise a document"),
)


def unit(dim: int, seed: int) -> np.ndarray:
    row = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return row / np.linalg.norm(row)


def block(dim: int = 8, names: tuple[str, ...] = ("translate", "summarise")) -> ManifestVectors:
    return ManifestVectors(
        model_id="test-model",
        dim=dim,
        vectors=tuple(encode_vector(n, f"text of {n}", unit(dim, i)) for i, n in enumerate(names)),
    )


def with_vectors(vectors: ManifestVectors | None = None) -> Manifest:
    return Manifest.create(SIGNER, name="n", capabilities=CAPS, vectors=vectors or block())


def wire(manifest: Manifest) -> list[Any]:
    return msgpack.unpackb(pack(manifest), raw=False)


def repack(raw: list[Any]) -> bytes:
    return msgpack.packb(raw, use_bin_type=True)


# ----------------------------------------------------------------- compatibility


def test_manifest_without_vectors_encodes_and_signs_as_before() -> None:
    plain = Manifest.create(SIGNER, name="n", capabilities=CAPS)
    raw = wire(plain)
    # tag + the eight fields a manifest had before vectors (node_id .. signature)
    assert len(raw) == 1 + 8
    body = [raw[1:8]]  # every field but the signature
    assert signing_bytes(plain) == msgpack.packb(
        [SIGNING_DOMAIN, "Manifest", *body], use_bin_type=True
    )
    again = unpack(pack(plain), Manifest)
    assert again == plain and again.vectors is None and again.verify()


def test_manifest_with_vectors_round_trips_and_verifies() -> None:
    manifest = with_vectors()
    assert len(wire(manifest)) == 1 + 9
    again = unpack(pack(manifest), Manifest)
    assert again == manifest
    assert again.verify()
    assert again.vectors is not None and len(again.vectors.vectors) == 2


def test_signature_covers_vectors() -> None:
    manifest = with_vectors()
    assert manifest.vectors is not None
    first = manifest.vectors.vectors[0]
    flipped = bytes([first.values[0] ^ 0x01]) + first.values[1:]
    forged_block = dataclasses.replace(
        manifest.vectors,
        vectors=(dataclasses.replace(first, values=flipped), *manifest.vectors.vectors[1:]),
    )
    forged = dataclasses.replace(manifest, vectors=forged_block)  # signature kept
    assert not forged.verify()
    dropped = dataclasses.replace(manifest, vectors=None)
    assert not dropped.verify()
    # and on the wire: the same byte changed in transit
    raw = wire(manifest)
    raw[9][2][0][3] = flipped
    assert not unpack(repack(raw), Manifest).verify()


@wire_struct
class NoDefault:
    a: int
    b: Annotated[int | None, Appended()]


@wire_struct
class NotLast:
    a: Annotated[int | None, Appended()] = None
    b: int = 0


def test_appended_fields_must_have_a_default_and_come_last() -> None:
    with pytest.raises(TypeError, match="needs a default"):
        struct_to_wire(NoDefault(1, 2))
    with pytest.raises(TypeError, match="must come last"):
        struct_to_wire(NotLast())


# ----------------------------------------------------------------- bounds


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: CapabilityVector("translate", text_hash("t"), float("nan"), b"\x01"), "scale"),
        (lambda: CapabilityVector("translate", text_hash("t"), float("inf"), b"\x01"), "scale"),
        (lambda: CapabilityVector("translate", text_hash("t"), 0.0, b"\x01"), "scale"),
        (lambda: CapabilityVector("translate", text_hash("t"), 2.0, b"\x01"), "scale"),
        (lambda: CapabilityVector("translate", b"short", 0.01, b"\x01"), "text_hash"),
        (lambda: CapabilityVector("bad name!", text_hash("t"), 0.01, b"\x01"), "capability"),
        (lambda: CapabilityVector("translate", text_hash("t"), 0.01, b""), "values"),
        (
            lambda: CapabilityVector("translate", text_hash("t"), 0.01, b"\x01" * 1025),
            "values",
        ),
        (lambda: ManifestVectors("m", MAX_VECTOR_DIM + 1, ()), "dim is 1025"),
        (lambda: ManifestVectors("m", 0, ()), "dim"),
        (lambda: ManifestVectors("", 8, ()), "model_id"),
        (lambda: ManifestVectors("m", 4, block(8).vectors), "has 8 values; dim is 4"),
        (
            lambda: ManifestVectors("m", 8, (encode_vector("translate", "t", unit(8, 1)),) * 2),
            "two vectors",
        ),
        (
            lambda: ManifestVectors(
                "m",
                1,
                tuple(
                    CapabilityVector("translate", text_hash(str(i)), 0.01, b"\x01")
                    for i in range(MAX_MANIFEST_VECTORS + 1)
                ),
            ),
            "129 vectors",
        ),
        (lambda: with_vectors(block(names=("translate", "not_offered"))), "not_offered"),
    ],
)
def test_construction_refuses_out_of_bounds(build: Any, message: str) -> None:
    with pytest.raises(LocalProtocolError, match=message):
        build()


def _mutated(mutate: Any) -> bytes:
    raw = wire(with_vectors())
    mutate(raw[9])
    return repack(raw)


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (lambda v: v[2][0].__setitem__(2, float("nan")), MalformedMessage),
        (lambda v: v[2][0].__setitem__(2, float("inf")), MalformedMessage),
        (lambda v: v.__setitem__(1, MAX_VECTOR_DIM * 1000), MalformedMessage),
        (lambda v: v[2][0].__setitem__(3, b"\x01" * 7), MalformedMessage),  # wrong count
        (lambda v: v[2][0].__setitem__(3, b"\x01" * 100_000), LimitExceeded),
        (lambda v: v[2][0].__setitem__(0, "not_offered"), MalformedMessage),
        (lambda v: v.__setitem__(2, v[2] * 100), LimitExceeded),
        (lambda v: v.__setitem__(2, "nonsense"), MalformedMessage),
    ],
)
def test_decoding_refuses_the_whole_manifest(mutate: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        unpack(_mutated(mutate), Manifest)


def test_vectors_fit_the_manifest_limit_at_the_caps() -> None:
    """32 capabilities with four 384-dimensional vectors each fit easily."""
    caps = tuple(Capability(name=f"c{i}", description="x" * 200) for i in range(32))
    vectors = ManifestVectors(
        "m",
        384,
        tuple(
            encode_vector(f"c{i}", f"text {i} {j}", unit(384, i * 4 + j))
            for i in range(32)
            for j in range(4)
        ),
    )
    manifest = Manifest.create(SIGNER, name="n", capabilities=caps, vectors=vectors)
    assert manifest.wire_bytes() < 64 * 1024
    assert message_to_wire(manifest)[0] == message_to_wire(Manifest.create(SIGNER, name="n"))[0]


# ----------------------------------------------------------------- encoding


@pytest.mark.parametrize("dim", [1, 8, 384, MAX_VECTOR_DIM])
def test_int8_round_trip_keeps_the_direction(dim: int) -> None:
    worst = 1.0
    for seed in range(20):
        original = unit(dim, seed)
        decoded = decode_vector(encode_vector("c", "t", original))
        assert decoded.dtype == np.float32
        assert abs(float(np.linalg.norm(decoded)) - 1.0) < 1e-5
        worst = min(worst, float(decoded @ original))
    assert worst >= MIN_ROUND_TRIP_COSINE


@pytest.mark.parametrize(
    "bad",
    [np.array([np.nan, 1.0]), np.array([np.inf, 1.0]), np.zeros(4), np.ones(MAX_VECTOR_DIM + 1)],
)
def test_encoding_refuses_what_cannot_be_shipped(bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        encode_vector("c", "t", bad)


def test_claims_match_model_dimension_and_text() -> None:
    vectors = block()
    found = claims(vectors, "test-model", 8)
    assert claimed_vector(found, "translate", "text of translate") is not None
    assert claimed_vector(found, "translate", "another text") is None  # hash differs
    assert claimed_vector(found, "summarise", "text of translate") is None
    assert claims(vectors, "other-model", 8) == {}
    assert claims(vectors, "test-model", 16) == {}
    assert claims(None, "test-model", 8) == {}


def test_manifest_vectors_skips_zero_rows_and_duplicates() -> None:
    built = manifest_vectors(
        "m",
        4,
        [("a", "x", unit(4, 0)), ("a", "x", unit(4, 1)), ("b", "y", np.zeros(4))],
    )
    assert built is not None and [v.capability for v in built.vectors] == ["a"]
    assert manifest_vectors("m", 4, [("b", "y", np.zeros(4))]) is None
