"""Hostile input to the decoder: only ProtocolError ever escapes, allocation stays bounded.

Two verifiers are used: the real one (what nodes run), and an accept-all one, so that
mutated bodies get past the signature check and exercise every later stage of decoding.
"""

from __future__ import annotations

import tracemalloc
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import (
    Envelope,
    LocalProtocolError,
    MessageType,
    Nack,
    ProtocolError,
    TaskRequest,
    decode,
    encode,
)
from protocol.codec import encode_wire_batch
from protocol.limits import MAX_ARRAY_LEN, MAX_DATAGRAM_BYTES, MAX_MAP_LEN
from tests.messages_factory import ALICE, one_of_each

VALID_FRAMES = [encode([m], ALICE) for m in one_of_each()] + [encode(one_of_each(), ALICE)]


def accept_all(public_key: bytes, data: bytes, signature: bytes) -> bool:
    return True


def _decode_or_protocol_error(data: bytes, **kw: Any) -> Envelope | None:
    try:
        return decode(data, **kw)
    except ProtocolError:
        return None


def _peak_bytes(data: bytes) -> int:
    tracemalloc.start()
    try:
        _decode_or_protocol_error(data, verifier=accept_all)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@given(st.binary(max_size=4096))
def test_random_bytes_only_raise_protocol_error(data: bytes) -> None:
    """Any byte string either decodes or raises a ProtocolError subclass."""
    _decode_or_protocol_error(data)
    _decode_or_protocol_error(data, verifier=accept_all)
    _decode_or_protocol_error(data + b"\xc4\x40" + bytes(64), verifier=accept_all)


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    frame = bytearray(draw(st.sampled_from(VALID_FRAMES)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, max(0, len(frame) - 1)))
        if op == "flip" and frame:
            frame[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and frame:
            frame[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            frame[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and frame:
            del frame[pos : pos + draw(st.integers(1, 8))]
        elif op == "truncate":
            del frame[pos:]
    return bytes(frame)


@given(mutated_frames())
def test_mutated_frames_only_raise_protocol_error(data: bytes) -> None:
    """Mutations of valid frames never crash the decoder, whatever stage they reach."""
    _decode_or_protocol_error(data)
    _decode_or_protocol_error(data, verifier=accept_all)


@given(mutated_frames())
def test_real_verifier_rejects_every_body_mutation(data: bytes) -> None:
    """With real signatures, a frame whose signed part changed never decodes."""
    original = {f[:-66]: f for f in VALID_FRAMES}
    env = _decode_or_protocol_error(data)
    if env is not None:
        assert data[:-66] in original


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=40)
    | st.binary(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=40,
)


@given(st.integers(0, 40), msgpack_values)
def test_structured_garbage_in_a_valid_envelope(tag: int, fields: Any) -> None:
    """Arbitrary msgpack values under any tag raise ProtocolError or build a valid message."""
    body = msgpack.packb(
        [1, ALICE.public_key, [[tag, *(fields if isinstance(fields, list) else [fields])]]]
    )
    frame = body + b"\xc4\x40" + ALICE.sign(body)
    env = _decode_or_protocol_error(frame)
    if env is not None:
        # Whatever decoded is valid enough to be re-encoded by us.
        assert decode(encode(list(env.messages), ALICE)).messages == env.messages


@given(st.one_of(mutated_frames(), st.binary(max_size=2048)))
def test_allocation_is_bounded_by_input_size(data: bytes) -> None:
    """Peak allocation while decoding stays within a small multiple of the input size."""
    assert _peak_bytes(data) <= 64 * len(data) + 256 * 1024


def test_length_headers_claiming_huge_sizes_allocate_nothing_large() -> None:
    """Headers announcing 4 GiB strings, arrays or maps are refused without allocating."""
    for header in (
        b"\xdb\xff\xff\xff\xff",
        b"\xc6\xff\xff\xff\xff",
        b"\xdd\xff\xff\xff\xff",
        b"\xdf\xff\xff\xff\xff",
    ):
        data = b"\x93\x01" + header + b"\x00" * 16 + b"\xc4\x40" + bytes(64)
        assert _decode_or_protocol_error(data, verifier=accept_all) is None
        assert _peak_bytes(data) < 256 * 1024


def test_datagram_sized_flood_of_small_objects() -> None:
    """A maximal datagram of tiny nested arrays is refused and allocates boundedly."""
    data = b"\x93\x01\xc4\x20" + bytes(32) + b"\xdc\xff\xff" + b"\x91" * (MAX_DATAGRAM_BYTES - 200)
    data += b"\xc4\x40" + bytes(64)
    assert (
        _decode_or_protocol_error(data, verifier=accept_all, max_bytes=MAX_DATAGRAM_BYTES) is None
    )
    assert _peak_bytes(data) <= 64 * len(data) + 256 * 1024


# --------------------------------------------------------------------------- encoder = decoder

_STR_LENGTHS = st.sampled_from([0, 1, 100, 1024 * 1024 - 4, 1024 * 1024, 1024 * 1024 + 1])


@st.composite
def _edge_strings(draw: st.DrawFn) -> str:
    """Short random text, or ASCII / two-byte strings right around MAX_STR_BYTES."""
    if draw(st.booleans()):
        return draw(st.text(max_size=8))
    n = draw(_STR_LENGTHS)
    return "é" * (n // 2) if draw(st.booleans()) else "x" * n


def _json_values() -> st.SearchStrategy[Any]:
    scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | _edge_strings()
    scalars = scalars | st.floats(allow_nan=False, allow_infinity=False)
    return st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
        ),
        max_leaves=40,
    )


@st.composite
def _deep(draw: st.DrawFn) -> Any:
    value = draw(_json_values())
    for _ in range(draw(st.integers(0, 34))):
        value = [value] if draw(st.booleans()) else {"k": value}
    return value


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_deep(), st.integers(1, 3))
def test_whatever_the_encoder_accepts_the_decoder_accepts(value: Any, copies: int) -> None:
    """encode() either refuses with LocalProtocolError or produces a frame that decode()
    accepts and that round-trips to the same messages (strings, depth and map sizes at
    and around every limit).

    On the unfixed code: falsified by a string just over MAX_STR_BYTES (encoded and
    signed, then refused by the decoder)."""
    messages = [TaskRequest(f"t{i}", "c", value, 5, None, "") for i in range(copies)]
    try:
        frame = encode(messages, ALICE)
    except LocalProtocolError:
        return
    assert decode(frame).messages == tuple(messages)


_MIB = 1024 * 1024


def _edge_leaves() -> st.SearchStrategy[Any]:
    """Leaves right at and just over each per-type limit of the decoder."""
    return st.one_of(
        st.sampled_from([_MIB - 1, _MIB, _MIB + 1]).map(bytes),
        st.sampled_from([MAX_ARRAY_LEN, MAX_ARRAY_LEN + 1]).map(lambda n: [0] * n),
        st.sampled_from([MAX_MAP_LEN, MAX_MAP_LEN + 1]).map(
            lambda n: {f"k{i}": i for i in range(n)}
        ),
        st.integers(-(2**63), 2**64 - 1),
        st.binary(max_size=8),
        st.text(max_size=8),
    )


@st.composite
def _wire_extras(draw: st.DrawFn) -> Any:
    value = draw(
        st.recursive(
            _edge_leaves(),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(st.text(max_size=3), inner, max_size=3)
            ),
            max_leaves=4,
        )
    )
    for _ in range(draw(st.integers(0, 32))):
        value = [value]
    return value


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_wire_extras())
def test_prebuilt_wire_batches_obey_the_decoders_limits(extra: Any) -> None:
    """Any structure a peer may append to a message (here after a Nack's fields, which a
    decoder ignores) is refused by encode_wire_batch exactly when decode would refuse it:
    bytes, array and map lengths and depth at and just over each limit.

    On the unfixed code: falsified by an array of MAX_ARRAY_LEN + 1 items and by nesting
    deeper than MAX_DEPTH (encoded and signed, then refused by the decoder)."""
    wire = [int(MessageType.NACK), 7, extra]
    try:
        frame = encode_wire_batch([wire], ALICE)
    except LocalProtocolError:
        with pytest.raises(ProtocolError):
            decode(_sign_body([1, ALICE.public_key, [wire]]))
        return
    assert decode(frame).messages == (Nack(7),)


def _sign_body(body: list[Any]) -> bytes:
    raw = msgpack.packb(body, use_bin_type=True)
    return raw + b"\xc4\x40" + ALICE.sign(raw)
