"""Size limits of a manifest: per schema (on construction and decoding) and per signed
manifest (``Manifest.create`` / ``signed`` raise a local error).

Invariant: a manifest whose capability schema encodes to more than ``MAX_SCHEMA_BYTES``
can be neither built nor decoded, and our own node cannot publish a signed manifest over
``MAX_MANIFEST_BYTES``.
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from protocol import (
    Capability,
    FastSigner,
    LocalProtocolError,
    Manifest,
    RemoteProtocolError,
    pack,
    unpack,
)
from protocol.codec import message_to_wire
from protocol.limits import MAX_MANIFEST_BYTES
from protocol.manifest import MAX_SCHEMA_BYTES

SIGNER = FastSigner.from_seed(b"\x07" * 32)


def schema_of(size: int) -> dict[str, str]:
    """A schema whose msgpack encoding is exactly ``size`` bytes (for size >= 40)."""
    base = len(msgpack.packb({"pad": ""}, use_bin_type=True))
    pad = size - base
    value = {"pad": "x" * pad}
    while len(msgpack.packb(value, use_bin_type=True)) > size:  # longer str headers
        pad -= 1
        value = {"pad": "x" * pad}
    return value


@pytest.mark.parametrize(
    ("size", "ok"),
    [(100, True), (MAX_SCHEMA_BYTES, True), (MAX_SCHEMA_BYTES + 1, False), (200_000, False)],
)
@pytest.mark.parametrize("field", ["input_schema", "output_schema"])
def test_schema_limit_on_construction(size: int, ok: bool, field: str) -> None:
    schema = schema_of(size)
    if size == MAX_SCHEMA_BYTES:
        assert len(msgpack.packb(schema, use_bin_type=True)) <= MAX_SCHEMA_BYTES
    kwargs: dict[str, Any] = {field: schema}
    if ok:
        Capability(name="c", description="", **kwargs)
    else:
        with pytest.raises(LocalProtocolError, match=field):
            Capability(name="c", description="", **kwargs)


def test_schema_limit_on_decoding() -> None:
    """A peer's manifest with an oversized schema is refused by the decoder."""
    good = Manifest.create(
        SIGNER, name="n", capabilities=[Capability(name="c", description="", input_schema={})]
    )
    wire = message_to_wire(good)
    wire[5][0][2] = schema_of(MAX_SCHEMA_BYTES + 100)
    with pytest.raises(RemoteProtocolError, match="input_schema"):
        unpack(msgpack.packb(wire, use_bin_type=True), Manifest)
    assert unpack(pack(good), Manifest) == good


@pytest.mark.parametrize(("count", "ok"), [(7, True), (9, False)])
def test_create_refuses_a_signed_manifest_over_the_limit(count: int, ok: bool) -> None:
    """Capabilities of ~30 KiB schemas each: 7 fit in 256 KiB, 9 do not."""
    caps = [
        Capability(name=f"c{i}", description="", input_schema=schema_of(30_000))
        for i in range(count)
    ]
    if ok:
        manifest = Manifest.create(SIGNER, name="n", capabilities=caps)
        assert manifest.wire_bytes() == len(pack(manifest)) <= MAX_MANIFEST_BYTES
    else:
        with pytest.raises(LocalProtocolError, match="limit is 262144"):
            Manifest.create(SIGNER, name="n", capabilities=caps)
