"""Capability manifests: what a node offers, signed by that node.

A :class:`Manifest` lists a node's :class:`Capability` entries. It is valid only when
signed by the node it names (``node_id``); a higher ``version`` replaces a lower one.
Limits (checked on construction, so a bad manifest can be neither built nor decoded):

======================  ==================================================
node / capability name  1..128 characters (capability names: ``[A-Za-z0-9_.:-]``)
description             at most 1,024 characters
capabilities            at most 32 per manifest, names unique
tags                    at most 16 per manifest and per capability, 1..64 characters each
endpoint                at most 256 characters (``host:port`` of the node's TCP port)
avg_latency_ms          0 .. 86,400,000 (one day)
cost_per_call_usd       0 .. 1,000,000
max_concurrent_tasks    1 .. 10,000
input/output schema     free-form JSON (a JSON Schema), at most 32 KiB each (msgpack)
examples                optional: at most 5 per capability, 1..256 characters each
whole signed manifest   at most :data:`protocol.limits.MAX_MANIFEST_BYTES` (256 KiB, msgpack)
vectors (optional)      one embedder's ``model_id`` (1..128 characters), ``dim`` 1..
                        :data:`MAX_VECTOR_DIM`, at most :data:`MAX_MANIFEST_VECTORS`
                        int8 vectors of exactly ``dim`` bytes with a finite positive scale,
                        each naming a capability of this manifest and the 16-byte BLAKE2b
                        hash of the text it embeds, at most one per (name, hash)
======================  ==================================================

Vectors (see :class:`ManifestVectors`) are appended after the signature field and left
off the wire when absent, so a manifest without them encodes and signs exactly as before
they existed. They are covered by the signature like every other field. A manifest whose
vectors break a limit is refused whole, like any other field over its limit: its owner
signed it, so it is the owner's error, never a peer's.

The schema limit is checked on construction (a decoded manifest with a larger schema is
refused by the decoder). The whole-manifest limit needs the signed encoding, so it is
checked by :meth:`Manifest.create` and :meth:`Manifest.signed` (our own manifest: a local
error) and by whoever stores a received manifest (:class:`crdt.ManifestStore`), with
:meth:`Manifest.wire_bytes`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from typing import Annotated, Any, ClassVar, cast

import msgpack

from protocol.codec import pack
from protocol.errors import LocalProtocolError
from protocol.identity import Signer, Verifier, public_key_from_node_id
from protocol.identity import verify as ed25519_verify
from protocol.limits import MAX_MANIFEST_BYTES
from protocol.messages import Message, MessageType, register
from protocol.schema import (
    Appended,
    FixedLen,
    JsonValue,
    MaxItems,
    MaxLen,
    NodeId,
    Range,
    Signature,
    UInt,
    signing_bytes,
    wire_struct,
)

MAX_NAME_CHARS = 128
MAX_DESCRIPTION_CHARS = 1024
MAX_CAPABILITIES = 32
MAX_TAGS = 16
MAX_TAG_CHARS = 64
MAX_ENDPOINT_CHARS = 256
MAX_CONCURRENT_TASKS = 10_000
MAX_SCHEMA_BYTES = 32 * 1024
"""Largest ``input_schema`` or ``output_schema`` of one capability, measured as its msgpack
encoding: 32 KiB. Real JSON Schemas for a tool are a few hundred bytes to a few KiB; the
limit keeps one capability from taking most of the manifest's
:data:`~protocol.limits.MAX_MANIFEST_BYTES`, which still bounds the sum."""

MAX_EXAMPLES = 5
"""Most ``examples`` one capability carries: a few requests in the words a user would
use, which discovery matches as well as the description. An A2A skill lists two to five;
32 capabilities × 5 × 256 characters stay under 41 KB of the 256 KiB manifest."""
MAX_EXAMPLE_CHARS = 256
"""Longest example, in characters: one sentence of request, like a discovery query
(which is embedded whole, as an example is)."""

# --- vectors in manifests ---------------------------------------------------------------

MAX_VECTOR_DIM = 1_024
"""Largest embedding dimension a manifest may carry. Sentence embedders used for
discovery have 384 (MiniLM) to 1,024 dimensions; at int8 one vector of this size is 1 KiB
of the manifest's 256 KiB."""

MAX_MANIFEST_VECTORS = 4 * MAX_CAPABILITIES
"""Most vectors in one manifest: 128. Today one per capability (at most 32): a
capability's examples are summed into its one vector
(``meshnode.discovery.index.capability_vectors``); the rest is room for more texts per capability,
all keyed by capability name and text hash. At 384 dimensions, int8, that is 49 KiB; the
whole-manifest limit still bounds the sum."""

MAX_MODEL_ID_CHARS = 128
"""Longest embedder ``model_id`` a manifest may name."""

TEXT_HASH_BYTES = 16
"""Length of the BLAKE2b hash of the text a vector embeds (:func:`text_hash`)."""

MAX_VECTOR_SCALE = 1.0
"""Largest per-vector int8 scale. Vectors are unit length, so no component exceeds 1 and
the scale (largest absolute component / 127) is at most 1/127; 1.0 leaves room for any
unit vector and refuses absurd values."""


def text_hash(text: str) -> bytes:
    """The :data:`TEXT_HASH_BYTES`-byte BLAKE2b hash naming the text a vector embeds."""
    return hashlib.blake2b(
        text.encode("utf-8", "surrogatepass"), digest_size=TEXT_HASH_BYTES
    ).digest()


@wire_struct
class CapabilityVector:
    """The embedding of one text of one capability, int8-quantised: component ``i`` is
    ``int8(values[i]) * scale``. ``text_hash`` names the text (:func:`text_hash`), so a
    receiver that builds a different text for the capability does not use it."""

    capability: Annotated[str, MaxLen(MAX_NAME_CHARS, 1)]
    text_hash: Annotated[bytes, FixedLen(TEXT_HASH_BYTES)]
    scale: Annotated[float, Range(0.0, MAX_VECTOR_SCALE)]
    values: Annotated[bytes, MaxLen(MAX_VECTOR_DIM)]

    def __post_init__(self) -> None:
        if not isinstance(self.capability, str) or not _CAPABILITY_NAME.match(self.capability):
            raise LocalProtocolError(f"vector for an invalid capability name {self.capability!r}")
        if not isinstance(self.text_hash, bytes) or len(self.text_hash) != TEXT_HASH_BYTES:
            raise LocalProtocolError(f"text_hash must be {TEXT_HASH_BYTES} bytes")
        if isinstance(self.scale, bool) or not isinstance(self.scale, int | float):
            raise LocalProtocolError("vector scale must be a number")
        if not 0.0 < self.scale <= MAX_VECTOR_SCALE:  # also refuses NaN and infinities
            raise LocalProtocolError(
                f"vector scale must be in (0, {MAX_VECTOR_SCALE:g}], got {self.scale}"
            )
        object.__setattr__(self, "scale", float(self.scale))
        if not isinstance(self.values, bytes) or not 1 <= len(self.values) <= MAX_VECTOR_DIM:
            raise LocalProtocolError(f"vector values must be 1..{MAX_VECTOR_DIM} bytes")

    def floats(self) -> list[float]:
        """The dequantised components (not normalised)."""
        return [(byte - 256 if byte > 127 else byte) * self.scale for byte in self.values]


@wire_struct
class ManifestVectors:
    """The embeddings of a manifest's capability texts by one embedder, so that a
    receiver running the same embedder (same ``model_id``) need not embed them. Claims
    only: a receiver checks them against its own embeddings before trusting a ranking."""

    model_id: Annotated[str, MaxLen(4 * MAX_MODEL_ID_CHARS, 1)]
    dim: Annotated[int, Range(1, MAX_VECTOR_DIM)]
    vectors: Annotated[tuple[CapabilityVector, ...], MaxItems(MAX_MANIFEST_VECTORS)]

    def __post_init__(self) -> None:
        _check_text("vectors model_id", self.model_id, MAX_MODEL_ID_CHARS)
        if isinstance(self.dim, bool) or not isinstance(self.dim, int):
            raise LocalProtocolError("vectors dim must be an integer")
        if not 1 <= self.dim <= MAX_VECTOR_DIM:
            raise LocalProtocolError(f"vectors dim is {self.dim}; the limit is {MAX_VECTOR_DIM}")
        if not isinstance(self.vectors, tuple):
            raise LocalProtocolError("vectors must be a tuple")
        if len(self.vectors) > MAX_MANIFEST_VECTORS:
            raise LocalProtocolError(
                f"{len(self.vectors)} vectors; the limit is {MAX_MANIFEST_VECTORS}"
            )
        keys = set()
        for vector in self.vectors:
            if not isinstance(vector, CapabilityVector):
                raise LocalProtocolError("vectors must be CapabilityVector entries")
            if len(vector.values) != self.dim:
                raise LocalProtocolError(
                    f"vector for {vector.capability!r} has {len(vector.values)} values; "
                    f"dim is {self.dim}"
                )
            key = (vector.capability, vector.text_hash)
            if key in keys:
                raise LocalProtocolError(
                    f"two vectors for the same text of capability {vector.capability!r}"
                )
            keys.add(key)

    def lookup(self, capability: str, hashed: bytes) -> CapabilityVector | None:
        """The vector claimed for ``capability``'s text with hash ``hashed``, if any."""
        return next(
            (v for v in self.vectors if v.capability == capability and v.text_hash == hashed),
            None,
        )


_CAPABILITY_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_UNSIGNED = b"\x00" * 64

Tag = Annotated[str, MaxLen(4 * MAX_TAG_CHARS, 1)]
Tags = Annotated[tuple[Tag, ...], MaxItems(MAX_TAGS)]
Example = Annotated[str, MaxLen(4 * MAX_EXAMPLE_CHARS, 1)]


def _check_text(what: str, value: str, max_chars: int, *, allow_empty: bool = False) -> None:
    if not isinstance(value, str):
        raise LocalProtocolError(f"{what} must be a string")
    if not allow_empty and not value.strip():
        raise LocalProtocolError(f"{what} must not be empty")
    if len(value) > max_chars:
        raise LocalProtocolError(f"{what} is {len(value)} characters; the limit is {max_chars}")


def _check_tags(what: str, tags: tuple[str, ...]) -> None:
    if not isinstance(tags, tuple):
        raise LocalProtocolError(f"{what} must be a tuple")
    if len(tags) > MAX_TAGS:
        raise LocalProtocolError(f"{what}: {len(tags)} tags; the limit is {MAX_TAGS}")
    for tag in tags:
        _check_text(f"{what} tag", tag, MAX_TAG_CHARS)


@wire_struct
class Capability:
    """One thing a node can do."""

    name: Annotated[str, MaxLen(MAX_NAME_CHARS, 1)]
    description: Annotated[str, MaxLen(4 * MAX_DESCRIPTION_CHARS)]
    input_schema: JsonValue = None
    output_schema: JsonValue = None
    avg_latency_ms: Annotated[float, Range(0.0, 86_400_000.0)] = 0.0
    cost_per_call_usd: Annotated[float, Range(0.0, 1_000_000.0)] = 0.0
    tags: Tags = ()
    # Added after protocol version 1, optional: a capability without examples encodes,
    # signs and verifies exactly as before the field existed (see protocol.schema.Appended).
    examples: Annotated[tuple[Example, ...], MaxItems(MAX_EXAMPLES), Appended()] = ()
    """A few requests this capability answers, phrased as a user would ask (at most
    :data:`MAX_EXAMPLES`, each 1..:data:`MAX_EXAMPLE_CHARS` characters). Discovery embeds
    them with the description and matches their words."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _CAPABILITY_NAME.match(self.name):
            raise LocalProtocolError(
                f"capability name {self.name!r} must be 1..128 of [A-Za-z0-9_.:-]"
            )
        _check_text("description", self.description, MAX_DESCRIPTION_CHARS, allow_empty=True)
        for what, value, hi in (
            ("avg_latency_ms", self.avg_latency_ms, 86_400_000.0),
            ("cost_per_call_usd", self.cost_per_call_usd, 1_000_000.0),
        ):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise LocalProtocolError(f"{what} must be a number")
            if not 0.0 <= value <= hi:  # also refuses NaN
                raise LocalProtocolError(f"{what} must be in [0, {hi:g}], got {value}")
            object.__setattr__(self, what, float(value))
        _check_tags("capability", self.tags)
        _check_examples(self.examples)
        for what, schema in (
            ("input_schema", self.input_schema),
            ("output_schema", self.output_schema),
        ):
            _check_schema(what, schema)


def _check_examples(examples: tuple[str, ...]) -> None:
    if not isinstance(examples, tuple):
        raise LocalProtocolError("examples must be a tuple")
    if len(examples) > MAX_EXAMPLES:
        raise LocalProtocolError(f"{len(examples)} examples; the limit is {MAX_EXAMPLES}")
    for example in examples:
        _check_text("example", example, MAX_EXAMPLE_CHARS)


def _check_schema(what: str, schema: object) -> None:
    """Refuse a schema whose msgpack encoding is over :data:`MAX_SCHEMA_BYTES`."""
    if schema is None:
        return
    try:
        size = len(msgpack.packb(schema, use_bin_type=True))
    except (TypeError, ValueError, OverflowError) as exc:
        raise LocalProtocolError(f"{what} cannot be encoded: {exc}") from None
    if size > MAX_SCHEMA_BYTES:
        raise LocalProtocolError(f"{what} is {size} bytes; the limit is {MAX_SCHEMA_BYTES}")


@wire_struct
class Manifest(Message):
    """A node's signed list of capabilities. Build with :meth:`create`, check with
    :meth:`verify`."""

    TAG: ClassVar[MessageType] = MessageType.MANIFEST
    node_id: NodeId
    name: Annotated[str, MaxLen(4 * MAX_NAME_CHARS, 1)]
    endpoint: Annotated[str, MaxLen(MAX_ENDPOINT_CHARS)]
    max_concurrent_tasks: Annotated[int, Range(1, MAX_CONCURRENT_TASKS)]
    capabilities: Annotated[tuple[Capability, ...], MaxItems(MAX_CAPABILITIES)]
    tags: Tags
    version: UInt
    signature: Signature = _UNSIGNED
    vectors: Annotated[ManifestVectors | None, Appended()] = None
    """Optional embeddings of the capability texts (appended; see :class:`ManifestVectors`)."""

    def __post_init__(self) -> None:
        public_key_from_node_id(self.node_id)
        _check_text("manifest name", self.name, MAX_NAME_CHARS)
        _check_text("endpoint", self.endpoint, MAX_ENDPOINT_CHARS, allow_empty=True)
        if isinstance(self.max_concurrent_tasks, bool) or not (
            isinstance(self.max_concurrent_tasks, int)
            and 1 <= self.max_concurrent_tasks <= MAX_CONCURRENT_TASKS
        ):
            raise LocalProtocolError(f"max_concurrent_tasks must be 1..{MAX_CONCURRENT_TASKS}")
        if not isinstance(self.capabilities, tuple):
            raise LocalProtocolError("capabilities must be a tuple")
        if len(self.capabilities) > MAX_CAPABILITIES:
            raise LocalProtocolError(
                f"{len(self.capabilities)} capabilities; the limit is {MAX_CAPABILITIES}"
            )
        names = [c.name for c in self.capabilities]
        if len(set(names)) != len(names):
            raise LocalProtocolError("capability names must be unique within a manifest")
        _check_tags("manifest", self.tags)
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 0:
            raise LocalProtocolError("version must be a non-negative integer")
        if self.vectors is not None:
            if not isinstance(self.vectors, ManifestVectors):
                raise LocalProtocolError("vectors must be ManifestVectors or None")
            for vector in self.vectors.vectors:
                if vector.capability not in names:
                    raise LocalProtocolError(
                        f"a vector names capability {vector.capability!r}, "
                        "which this manifest does not offer"
                    )

    @classmethod
    def create(
        cls,
        signer: Signer,
        *,
        name: str,
        endpoint: str = "",
        capabilities: tuple[Capability, ...] | list[Capability] = (),
        tags: tuple[str, ...] | list[str] = (),
        max_concurrent_tasks: int = 3,
        version: int = 1,
        vectors: ManifestVectors | None = None,
    ) -> Manifest:
        """Build and sign a manifest for ``signer``'s node.

        Raises ``LocalProtocolError`` for any field over its limit, including a signed
        manifest over :data:`~protocol.limits.MAX_MANIFEST_BYTES`.
        """
        unsigned = cls(
            node_id=signer.node_id,
            name=name,
            endpoint=endpoint,
            max_concurrent_tasks=max_concurrent_tasks,
            capabilities=tuple(capabilities),
            tags=tuple(tags),
            version=version,
            vectors=vectors,
        )
        return unsigned.signed(signer)

    def signed(self, signer: Signer) -> Manifest:
        """This manifest signed by ``signer``, which must be the node it names."""
        if signer.node_id != self.node_id:
            raise LocalProtocolError("a manifest can only be signed by the node it describes")
        signature = signer.sign(signing_bytes(self))
        signed = cast(Manifest, dataclasses.replace(cast(Any, self), signature=signature))
        size = signed.wire_bytes()
        if size > MAX_MANIFEST_BYTES:
            raise LocalProtocolError(
                f"the signed manifest is {size} bytes; the limit is {MAX_MANIFEST_BYTES}"
            )
        return signed

    def wire_bytes(self) -> int:
        """Size of this manifest's bare msgpack encoding (what a fetch transfers and what
        :data:`~protocol.limits.MAX_MANIFEST_BYTES` bounds), in bytes."""
        return len(pack(self))

    def verify(self, verifier: Verifier = ed25519_verify) -> bool:
        """True if signed by the node it names."""
        return verifier(public_key_from_node_id(self.node_id), signing_bytes(self), self.signature)

    def digest(self) -> bytes:
        """BLAKE2b-256 of the signed content: what a manifest rumor announces."""
        return hashlib.blake2b(signing_bytes(self), digest_size=32).digest()

    def capability(self, name: str) -> Capability | None:
        return next((c for c in self.capabilities if c.name == name), None)


register(Manifest)
