"""Capability ``examples``: an optional, bounded manifest field that old manifests do
without, embedded with the description and matched by words."""

from __future__ import annotations

from typing import Annotated

import numpy as np
import pytest

from meshnode.capability import make_capability
from meshnode.discovery import HashingEmbedder
from meshnode.discovery.index import (
    EXAMPLE_HEAD_WEIGHT,
    capability_text,
    capability_texts,
    capability_vectors,
    combine_vectors,
)
from meshnode.discovery.lexical import capability_terms
from protocol import LocalProtocolError
from protocol.codec import pack, unpack
from protocol.identity import Identity
from protocol.manifest import MAX_EXAMPLE_CHARS, MAX_EXAMPLES, Capability, Manifest
from protocol.schema import Appended, from_wire, to_wire, wire_struct

OLD_MANIFEST = bytes.fromhex(
    "9911c42003a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8a86f6c642d6e"
    "6f6465ae3132372e302e302e313a37303030039197ae7472616e736c6174655f74657874d92054726"
    "16e736c6174652074657874206265747765656e206c616e677561676573c0c0cb0000000000000000"
    "cb000000000000000091a36e6c709003c440e71dbbfb6892201ad797d20ebd2c42752027c3623fdc5"
    "4916afadea7cea3919a50cdf1ac33188da1aab5282513c0063ef51cd5497490390a79850660c937ae0a"
)
"""A manifest signed by the code before ``examples`` existed (seed bytes 0..31, one
capability ``translate_text``, version 3)."""


def test_a_manifest_from_before_the_field_decodes_verifies_and_encodes_the_same() -> None:
    """Old bytes decode (examples empty), the signature verifies, and re-encoding gives
    the very same bytes: a capability without examples is encoded as before."""
    manifest = unpack(OLD_MANIFEST, Manifest)
    assert manifest.verify()
    assert manifest.capabilities[0].examples == ()
    assert pack(manifest) == OLD_MANIFEST
    again = Manifest.create(
        Identity.from_seed(bytes(range(32))),
        name=manifest.name,
        endpoint=manifest.endpoint,
        capabilities=manifest.capabilities,
        version=3,
    )
    assert pack(again) == OLD_MANIFEST


def test_examples_travel_and_are_signed() -> None:
    """Examples round-trip on the wire, and changing one breaks the signature."""
    signer = Identity.from_seed(bytes(32))
    cap = Capability(name="shout", description="Shouts", examples=("say hi loudly",))
    manifest = Manifest.create(signer, name="n", capabilities=[cap])
    decoded = unpack(pack(manifest), Manifest)
    assert decoded.capabilities[0].examples == ("say hi loudly",)
    assert decoded.verify()
    forged_cap = Capability(name="shout", description="Shouts", examples=("say bye",))
    forged = Manifest(
        node_id=manifest.node_id,
        name="n",
        endpoint="",
        max_concurrent_tasks=manifest.max_concurrent_tasks,
        capabilities=(forged_cap,),
        tags=(),
        version=manifest.version,
        signature=manifest.signature,
    )
    assert not forged.verify()


@pytest.mark.parametrize(
    ("examples", "problem"),
    [
        (tuple(f"e{i}" for i in range(MAX_EXAMPLES)), None),
        (("x" * MAX_EXAMPLE_CHARS,), None),
        (tuple(f"e{i}" for i in range(MAX_EXAMPLES + 1)), "examples; the limit"),
        (("x" * (MAX_EXAMPLE_CHARS + 1),), "characters; the limit"),
        (("   ",), "must not be empty"),
        (["a list"], "must be a tuple"),
    ],
)
def test_examples_bounds(examples: tuple[str, ...], problem: str | None) -> None:
    """At most MAX_EXAMPLES, each 1..MAX_EXAMPLE_CHARS non-blank characters, as a tuple."""
    if problem is None:
        assert Capability(name="c", description="d", examples=examples).examples == examples
    else:
        with pytest.raises(LocalProtocolError, match=problem):
            Capability(name="c", description="d", examples=examples)


def test_decoder_refuses_too_many_examples_from_the_wire() -> None:
    """A peer's capability with more examples than allowed does not decode."""
    signer = Identity.from_seed(bytes(32))
    manifest = Manifest.create(
        signer, name="n", capabilities=[Capability(name="c", description="d", examples=("a",))]
    )
    raw = pack(manifest)
    assert raw.count(b"\x91\xa1a") == 1  # the one-example array
    bloated = raw.replace(b"\x91\xa1a", b"\x96" + b"\xa1a" * 6)
    with pytest.raises(Exception, match=r"examples|items"):
        unpack(bloated, Manifest)


def test_make_capability_takes_examples_and_discovery_uses_them() -> None:
    """make_capability passes examples through (one string is refused); they are in the
    embedded text and in the lexical document."""
    cap = make_capability(name="shout", description="Shouts", examples=["yell hello"])
    assert cap.examples == ("yell hello",)
    assert capability_text(cap) == "shout: Shouts Examples: yell hello"
    assert "yell" in capability_terms(cap)
    with pytest.raises(TypeError):
        make_capability(name="shout", examples="yell hello")


def test_appended_fields_must_have_defaults_and_come_last() -> None:
    """The schema refuses an Appended field without a default or followed by an ordinary
    field (either would make old encodings ambiguous); a struct with one at its default
    encodes without it and decodes from bytes that lack it."""

    @wire_struct
    class Good:
        a: int
        b: Annotated[int, Appended()] = 0
        c: Annotated[int, Appended()] = 0

    assert to_wire(Good(1)) == [1]
    assert to_wire(Good(1, 0, 5)) == [1, 0, 5]
    assert from_wire(Good, [1]) == Good(1)
    assert from_wire(Good, [1, 2]) == Good(1, 2)

    @wire_struct
    class NoDefault:
        a: Annotated[int, Appended()]

    @wire_struct
    class NotLast:
        a: Annotated[int, Appended()] = 0
        b: int = 0

    for cls in (NoDefault, NotLast):
        with pytest.raises(TypeError, match="Appended"):
            to_wire(cls(1))


def _unit(*values: float) -> list[float]:
    row = np.asarray(values, dtype=np.float64)
    return list(row / np.linalg.norm(row))


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        # One row (no examples): the text's vector as it is, not even re-normalised.
        ([[0.6, 0.8]], [0.6, 0.8]),
        ([[3.0, 4.0]], [3.0, 4.0]),
        # Text and one example: EXAMPLE_HEAD_WEIGHT × text + example, normalised.
        ([[1.0, 0.0], [0.0, 1.0]], _unit(EXAMPLE_HEAD_WEIGHT, 1.0)),
        # Rows are normalised first: a longer row does not weigh more.
        ([[2.0, 0.0], [0.0, 5.0]], _unit(EXAMPLE_HEAD_WEIGHT, 1.0)),
        # Three examples outweigh the text: they point where requests are phrased.
        ([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]], _unit(EXAMPLE_HEAD_WEIGHT, 3.0)),
        # A zero row (a text that embeds to nothing) adds nothing.
        ([[1.0, 0.0], [0.0, 0.0]], [1.0, 0.0]),
        # A sum of zero stays zero (never NaN).
        ([[0.0, 0.0], [0.0, 0.0]], [0.0, 0.0]),
    ],
)
def test_combine_vectors(rows: list[list[float]], expected: list[float]) -> None:
    """A capability's one vector from its texts' rows: the rule of EXAMPLE_HEAD_WEIGHT."""
    combined = combine_vectors(np.asarray(rows, dtype=np.float32))
    assert combined.dtype == np.float32 and combined.shape == (2,)
    assert np.allclose(combined, expected, atol=1e-6)


@pytest.mark.parametrize("shape", [(0, 4), (4,), (1, 2, 2)])
def test_combine_vectors_refuses_what_is_not_rows(shape: tuple[int, ...]) -> None:
    """No rows, or not a matrix: a clear error."""
    with pytest.raises(ValueError, match="one or more rows"):
        combine_vectors(np.zeros(shape, dtype=np.float32))


def test_capability_vectors_embed_each_example_alone_and_change_nothing_without() -> None:
    """A capability without examples gets its whole text's embedding, bit for bit (so a
    node's vectors and the manifests carrying them are what they were); one with examples
    gets the sum of its whole text's and each example's, which is closer to a request
    phrased like an example than the whole text embedded once."""
    model = HashingEmbedder()
    plain = Capability(name="convert_units", description="Convert between units")
    rich = Capability(
        name="translate_text",
        description="Translate text between human languages",
        examples=("say good morning in Italian", "what is the German word for cheese"),
    )
    vectors = capability_vectors(model, [plain, rich])
    assert vectors.shape == (2, model.dim)
    assert np.array_equal(vectors[0], model.embed([capability_text(plain)])[0])
    rows = model.embed(capability_texts(rich))
    assert np.allclose(vectors[1], combine_vectors(rows), atol=1e-6)
    query = model.embed(["what is the German word for cheese"])[0]
    one_text = model.embed([capability_text(rich)])[0]
    assert float(query @ vectors[1]) > float(query @ one_text)
    assert capability_vectors(model, []).shape == (0, model.dim)
