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
from protocol.codec import encode_wire_batch, message_to_wire
from protocol.limits import MAX_DATAGRAM_BYTES
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


# --------------------------------------------------------------------------- verify first

_HUGE_STRING = "x" * (2 * 1024 * 1024)  # over MAX_STR_BYTES: the decoder refuses it


def _task(value: object, task_id: str = "t") -> TaskRequest:
    return TaskRequest(task_id, "c", value, 5, None, "")


def test_signature_is_checked_before_anything_is_decoded() -> None:
    """A 16 MB frame with a zero signature fails with BadSignature, not with a limit: the
    signature is checked over the raw body before msgpack sees a byte.

    On the unfixed code: LimitExceeded (msgpack refused the 2 MiB string first, after
    decoding up to it; a 16 MB body cost ~4.7 s of decoding and depth walking)."""
    body = msgpack.packb(
        [1, ALICE.public_key, [[12, "t", "c", [_HUGE_STRING] * 7, 5, None, ""]]],
        use_bin_type=True,
    )
    assert len(body) > 14 * 1024 * 1024
    calls: list[int] = []

    def counting(key: bytes, data: bytes, signature: bytes) -> bool:
        calls.append(len(data))
        return False

    with pytest.raises(BadSignature):
        decode(body + b"\xc4\x40" + bytes(64), verifier=counting)
    assert calls == [len(body)]


@pytest.mark.parametrize(
    ("body", "error"),
    [
        # a valid prefix, then bytes that are not msgpack
        (b"\x93\x01\xc4\x20" + ALICE.public_key + b"\xc1" * 100, MalformedMessage),
        # a valid prefix, then a string over MAX_STR_BYTES
        (
            msgpack.packb([1, ALICE.public_key, [[12, "t", "c", _HUGE_STRING, 5, None, ""]]]),
            LimitExceeded,
        ),
        # a valid prefix, then a truncated array
        (b"\x93\x01\xc4\x20" + ALICE.public_key + b"\x9f", MalformedMessage),
    ],
)
def test_valid_signature_over_junk_fails_with_the_right_error(
    body: bytes, error: type[Exception]
) -> None:
    """A good signature gets junk past the first check; decoding then refuses it."""
    with pytest.raises(error):
        decode(body + b"\xc4\x40" + ALICE.sign(body))


@pytest.mark.parametrize(
    "prefix",
    [
        b"\x00" * 40,  # not an array
        b"\x92\x01\xc4\x20" + bytes(32),  # an array of two
        b"\xdc\x00\x03\x01\xc4\x20" + bytes(32),  # array16: not the envelope layout
        b"\x93\xa1\x31\xc4\x20" + bytes(32),  # version is a string
        b"\x93\x01\xc4\x1f" + bytes(32),  # a 31-byte key
        b"\x93\x01\xc5\x00\x20" + bytes(32),  # bin16 key header
    ],
)
def test_malformed_prefix_is_refused_without_a_signature_check(prefix: bytes) -> None:
    """Junk whose fixed prefix is wrong is refused at once: the verifier never runs and
    msgpack never sees it (a 64 KB junk datagram costs a few byte comparisons)."""
    calls: list[int] = []

    def counting(key: bytes, data: bytes, signature: bytes) -> bool:
        calls.append(1)
        return True

    junk = prefix + bytes(64 * 1024 - len(prefix) - 66) + b"\xc4\x40" + bytes(64)
    with pytest.raises(MalformedMessage):
        decode(junk, verifier=counting)
    assert calls == []


def test_version_beyond_a_fixint_is_unsupported() -> None:
    body = msgpack.packb([300, ALICE.public_key, []], use_bin_type=True)
    with pytest.raises(UnsupportedVersion):
        decode(body + b"\xc4\x40" + ALICE.sign(body))


def test_depth_walk_is_cheap_on_wide_flat_values() -> None:
    """A wide value of scalars pushes nothing on the depth walk's stack (only containers
    are visited); 150,000 integers decode and round-trip."""
    value = list(range(150_000))
    frame = encode([_task(value)], ALICE)
    assert decode(frame).messages[0].input == value  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- one set of limits


def _nested(levels: int) -> object:
    value: object = 1
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("value", "limit"),
    [
        ("x" * (1024 * 1024 + 1), "MAX_STR_BYTES"),
        ("é" * (512 * 1024 + 1), "MAX_STR_BYTES"),
        ({"k" * (1024 * 1024 + 1): 1}, "MAX_STR_BYTES"),
        (list(range(200_001)), "MAX_ARRAY_LEN"),
        # depth: envelope (1), batch (2), message (3), then the value's own levels
        (_nested(30), "MAX_DEPTH"),
    ],
)
def test_encoder_refuses_what_the_decoder_refuses(value: object, limit: str) -> None:
    """Values the schema allows (under MAX_VALUE_BYTES, under its own depth bound) but the
    decoder would refuse are refused when encoding, naming the limit.

    On the unfixed code: every one of these encoded, was signed, and then failed to
    decode at every receiver."""
    message = _task(value)
    for attempt in (
        lambda: encode([message], ALICE),
        lambda: message_to_wire(message),
        lambda: wire_size(message),
        lambda: pack(message),
    ):
        with pytest.raises(LocalProtocolError, match=limit):
            attempt()


def test_deepest_value_the_encoder_accepts_decodes() -> None:
    frame = encode([_task(_nested(29))], ALICE)
    assert decode(frame).messages[0].input == _nested(29)  # type: ignore[attr-defined]


def test_encode_refuses_too_many_messages_and_too_big_frames() -> None:
    ping = Ping(1, BOB.node_id)
    with pytest.raises(LocalProtocolError, match="MAX_MESSAGES_PER_ENVELOPE"):
        encode([ping] * 1025, ALICE)
    with pytest.raises(LocalProtocolError, match="MAX_MESSAGES_PER_ENVELOPE"):
        encode_wire_batch([message_to_wire(ping)] * 1025, ALICE)
    frame = encode([ping], ALICE)
    with pytest.raises(LocalProtocolError, match="limit of"):
        encode([ping], ALICE, max_bytes=len(frame) - 1)
    assert decode(encode([ping], ALICE, max_bytes=len(frame)), max_bytes=len(frame))
    big = _task(["y" * 1_000_000] * 4)
    with pytest.raises(LocalProtocolError, match="limit of"):
        encode([big], ALICE, max_bytes=MAX_DATAGRAM_BYTES)
    with pytest.raises(LocalProtocolError, match="limit of"):
        pack(big, max_bytes=1_000_000)


def test_encode_wire_batch_checks_prebuilt_messages() -> None:
    with pytest.raises(LocalProtocolError, match="MAX_STR_BYTES"):
        encode_wire_batch([[int(MessageType.NACK), 1, "z" * (1024 * 1024 + 1)]], ALICE)
    with pytest.raises(LocalProtocolError, match="type tag"):
        encode_wire_batch([["not a tag"]], ALICE)  # type: ignore[list-item]
