"""The wire codec: round trips, every error class, limits and canonical signing bytes."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest

from protocol import (
    ENVELOPE_OVERHEAD,
    Alive,
    BadSignature,
    Capability,
    Identity,
    LimitExceeded,
    LocalProtocolError,
    MalformedMessage,
    Manifest,
    ManifestRumor,
    MessageType,
    Ping,
    RemoteProtocolError,
    TaskRequest,
    UnknownMessageType,
    UnsupportedVersion,
    decode,
    encode,
    pack,
    signing_bytes,
    unpack,
    wire_size,
)
from protocol.messages import MESSAGE_CLASSES
from tests.messages_factory import ALICE, BOB, one_of_each


def _frame(body: list[object], signer: Identity = ALICE) -> bytes:
    raw = msgpack.packb(body, use_bin_type=True)
    return raw + b"\xc4\x40" + signer.sign(raw)


def test_every_registered_type_has_a_sample() -> None:
    """The sample list covers every tag, so the round-trip test covers every type."""
    assert {m.TAG for m in one_of_each()} == set(MESSAGE_CLASSES)
    assert {int(t) for t in MessageType} == set(MESSAGE_CLASSES)


@pytest.mark.parametrize("message", one_of_each(), ids=lambda m: type(m).__name__)
def test_round_trip_each_message(message: object) -> None:
    """Every message survives encode → decode unchanged, with its sender."""
    envelope = decode(encode([message], BOB))  # type: ignore[list-item]
    assert envelope.sender == BOB.node_id
    assert envelope.messages == (message,)
    assert unpack(pack(message), type(message)) == message  # type: ignore[arg-type]


def test_round_trip_batch_and_overhead_bound() -> None:
    """A batch keeps order, and the envelope adds at most ENVELOPE_OVERHEAD bytes."""
    batch = one_of_each()
    frame = encode(batch, ALICE)
    assert decode(frame).messages == tuple(batch)
    assert len(frame) <= ENVELOPE_OVERHEAD + sum(wire_size(m) for m in batch)
    small = [Ping(1, BOB.node_id)]
    assert len(encode(small, ALICE)) <= ENVELOPE_OVERHEAD + wire_size(small[0])


def test_forged_envelope_signature() -> None:
    frame = bytearray(encode([Ping(1, BOB.node_id)], ALICE))
    frame[-1] ^= 0x01
    with pytest.raises(BadSignature):
        decode(bytes(frame))


def test_sender_swapped_for_another_key() -> None:
    """Re-labelling a frame with another sender's key fails verification."""
    body = [1, BOB.public_key, [[int(MessageType.NACK), 1]]]
    raw = msgpack.packb(body, use_bin_type=True)
    with pytest.raises(BadSignature):
        decode(raw + b"\xc4\x40" + ALICE.sign(raw))


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ([1, ALICE.public_key], MalformedMessage),
        ("not an array", MalformedMessage),
        ([99, ALICE.public_key, []], UnsupportedVersion),
        ([0, ALICE.public_key, []], UnsupportedVersion),
        (["1", ALICE.public_key, []], MalformedMessage),
        ([1, b"short", []], MalformedMessage),
        ([1, ALICE.public_key, "x"], MalformedMessage),
        ([1, ALICE.public_key, [[250, 1]]], UnknownMessageType),
        ([1, ALICE.public_key, [["1", 1]]], MalformedMessage),
        ([1, ALICE.public_key, [[1]]], MalformedMessage),
        ([1, ALICE.public_key, [[1, -1, ALICE.public_key]]], MalformedMessage),
        ([1, ALICE.public_key, [[1, True, ALICE.public_key]]], MalformedMessage),
        ([1, ALICE.public_key, [[1, 1, b"\x00" * 31]]], MalformedMessage),
        ([1, ALICE.public_key, [[3, 1, 2**40]]], MalformedMessage),
        ([1, ALICE.public_key, [[1, 1, ALICE.public_key]] * 2000], LimitExceeded),
        (
            [1, ALICE.public_key, [[12, "t", "c", {"x": float("nan")}, 5, None, ""]]],
            MalformedMessage,
        ),
        ([1, ALICE.public_key, [[12, "t" * 65, "c", None, 5, None, ""]]], LimitExceeded),
        ([1, ALICE.public_key, [[12, "t", "c", None, 0, None, ""]]], MalformedMessage),
    ],
)
def test_each_error_class(body: list[object], error: type[Exception]) -> None:
    """Well-signed frames with bad contents raise the specific RemoteProtocolError."""
    with pytest.raises(error):
        decode(_frame(body))


def test_trailing_fields_are_ignored_for_forward_compatibility() -> None:
    """A newer peer may append fields to a message; this version ignores them."""
    env = decode(_frame([1, ALICE.public_key, [[int(MessageType.NACK), 7, "future", 1]]]))
    assert env.messages[0].seq == 7  # type: ignore[attr-defined]


def test_depth_limit() -> None:
    """Nesting deeper than MAX_DEPTH is refused before any message is built."""
    deep: object = 1
    for _ in range(40):
        deep = [deep]
    with pytest.raises(LimitExceeded):
        decode(_frame([1, ALICE.public_key, [[12, "t", "c", deep, 5, None, ""]]]))


def test_frame_size_limit() -> None:
    frame = encode([Ping(1, BOB.node_id)], ALICE)
    with pytest.raises(LimitExceeded):
        decode(frame, max_bytes=len(frame) - 1)
    assert decode(frame, max_bytes=len(frame)).messages


def test_wrong_input_type() -> None:
    with pytest.raises(MalformedMessage):
        decode("text")  # type: ignore[arg-type]


def test_encode_refuses_invalid_local_messages() -> None:
    """We never put on the wire what a peer would refuse."""
    with pytest.raises(LocalProtocolError):
        encode([Ping(-1, BOB.node_id)], ALICE)
    with pytest.raises(LocalProtocolError):
        encode([Ping(1, "not-a-node-id")], ALICE)
    with pytest.raises(LocalProtocolError):
        encode([TaskRequest("t", "c", {"x": object()}, 5, None, "")], ALICE)


def test_signing_bytes_are_canonical() -> None:
    """Equal content gives equal signing bytes; any change of content changes them."""
    a = Alive(ALICE.node_id, 1, "h", 1, b"\x00" * 64)
    assert signing_bytes(a) == signing_bytes(dataclasses.replace(a, signature=b"\x01" * 64))
    assert signing_bytes(a) != signing_bytes(dataclasses.replace(a, incarnation=2))
    assert signing_bytes(a) != signing_bytes(dataclasses.replace(a, port=2))


def test_unpack_type_mismatch() -> None:
    with pytest.raises(MalformedMessage):
        unpack(pack(Ping(1, BOB.node_id)), ManifestRumor)
    with pytest.raises(RemoteProtocolError):
        unpack(b"\xc1", Ping)


# ------------------------------------------------------------------- manifests


def _cap(**kw: object) -> Capability:
    base: dict[str, object] = {"name": "do_thing", "description": "Does a thing"}
    base.update(kw)
    return Capability(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": ""},
        {"name": "x" * 129},
        {"name": "has space"},
        {"description": "d" * 1025},
        {"avg_latency_ms": -1},
        {"cost_per_call_usd": -0.01},
        {"cost_per_call_usd": float("nan")},
        {"tags": tuple(f"t{i}" for i in range(17))},
        {"tags": ("x" * 65,)},
        {"tags": ("",)},
    ],
)
def test_capability_limits(kwargs: dict[str, object]) -> None:
    """Each documented capability limit is enforced on construction."""
    with pytest.raises(LocalProtocolError):
        _cap(**kwargs)


def test_capability_at_limits_is_valid() -> None:
    cap = _cap(name="x" * 128, description="d" * 1024, tags=tuple(f"t{i}" for i in range(16)))
    assert unpack(pack(Manifest.create(ALICE, name="n", capabilities=[cap])), Manifest)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": ""},
        {"name": "n" * 129},
        {"capabilities": [_cap(name=f"c{i}") for i in range(33)]},
        {"capabilities": [_cap(), _cap()]},
        {"tags": [f"t{i}" for i in range(17)]},
        {"max_concurrent_tasks": 0},
        {"version": -1},
    ],
)
def test_manifest_limits(kwargs: dict[str, object]) -> None:
    base: dict[str, object] = {"name": "node"}
    base.update(kwargs)
    with pytest.raises(LocalProtocolError):
        Manifest.create(ALICE, **base)  # type: ignore[arg-type]


def test_manifest_signature_binds_content_and_owner() -> None:
    """A manifest verifies only when signed by the node it names, over its exact content."""
    m = Manifest.create(ALICE, name="a", capabilities=[_cap()], version=3)
    assert m.verify()
    assert not dataclasses.replace(m, version=4).verify()
    assert not dataclasses.replace(m, name="b").verify()
    forged = dataclasses.replace(m, node_id=BOB.node_id)
    assert not forged.verify()
    with pytest.raises(LocalProtocolError):
        m.signed(BOB)
    assert m.digest() == dataclasses.replace(m).digest()
    assert m.digest() != Manifest.create(ALICE, name="a", capabilities=[_cap()], version=4).digest()


def test_remote_manifest_over_limits_is_a_remote_error() -> None:
    """Limits checked on construction surface as RemoteProtocolError when decoding."""
    m = Manifest.create(ALICE, name="a", capabilities=[_cap()])
    wire = msgpack.unpackb(pack(m))
    wire[5] = [wire[5][0], wire[5][0]]  # duplicate capability names
    with pytest.raises(MalformedMessage):
        unpack(msgpack.packb(wire, use_bin_type=True), Manifest)
