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
======================  ==================================================

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
