"""The wire format: signed msgpack envelopes, and the one decoder for untrusted bytes.

Frame layout (version 1)::

    msgpack([version, sender_public_key(bin 32), [[tag, field, ...], ...]])
    || 0xc4 0x40 || ed25519_signature(64 bytes over everything before it)

The signature is a fixed 66-byte suffix, so it is checked against the exact bytes that
arrived, with no re-encoding. :func:`decode` is the only way untrusted bytes become
objects, and it raises only :class:`~protocol.errors.RemoteProtocolError` subclasses,
whatever the input. Parse before verify is the attack to avoid, so the order is: size
first; then the envelope's fixed prefix read straight from the raw bytes (fixarray header,
version, ``bin8`` header and the 32-byte sender key, see :func:`_read_prefix`); then the
Ed25519 signature over the raw body; only then msgpack with per-type limits, structure,
a cheap depth walk over containers only, and each message's schema. A stranger's junk
therefore costs one bounded prefix check, and a forged frame one signature check (a hash
over the body), before anything is decoded or allocated.

One set of limits: the encoder refuses, with a :class:`~protocol.errors.LocalProtocolError`
naming the limit, anything the decoder would refuse (string, bytes, array and map lengths
of :mod:`protocol.limits`, nesting depth counting the envelope's own three levels, messages
per envelope, frame size), so an honest node never signs and sends a frame every receiver
drops.

Protocol versions (``MIN_VERSION`` .. ``MAX_VERSION`` accepted):

* 1 — SWIM probes and rumors, manifests, ledger records, push-pull, task negotiation.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Final, TypeVar, cast

import msgpack

from protocol.errors import (
    BadSignature,
    LimitExceeded,
    LocalProtocolError,
    MalformedMessage,
    UnknownMessageType,
    UnsupportedVersion,
)
from protocol.identity import (
    PUBLIC_KEY_BYTES,
    SIGNATURE_BYTES,
    Signer,
    Verifier,
    node_id_from_public_key,
)
from protocol.identity import verify as ed25519_verify
from protocol.limits import (
    ENVELOPE_DEPTH,
    MAX_ARRAY_LEN,
    MAX_BIN_BYTES,
    MAX_DEPTH,
    MAX_FRAME_BYTES,
    MAX_MAP_LEN,
    MAX_MESSAGES_PER_ENVELOPE,
    MAX_STR_BYTES,
)
from protocol.messages import MESSAGE_CLASSES, Message
from protocol.schema import _Invalid, remote_error, struct_from_wire, struct_to_wire

PROTOCOL_VERSION = 1
"""The version this build speaks."""
MIN_VERSION = 1
"""Oldest version accepted. 1: first release."""
MAX_VERSION = 1
"""Newest version accepted."""

_SIG_PREFIX = b"\xc4\x40"  # msgpack bin8 header, length 64
_SIG_SUFFIX_BYTES = len(_SIG_PREFIX) + SIGNATURE_BYTES

ENVELOPE_OVERHEAD = 1 + 1 + 2 + PUBLIC_KEY_BYTES + 3 + _SIG_SUFFIX_BYTES
"""Upper bound on the bytes an envelope adds around its messages (105)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Envelope:
    """A decoded, signature-checked frame."""

    version: int
    sender: str
    messages: tuple[Message, ...]


M = TypeVar("M", bound=Message)


def message_to_wire(message: Message) -> list[Any]:
    """``[tag, field, ...]`` for one message; raise ``LocalProtocolError`` if invalid or if
    a decoder would refuse it inside an envelope (see :func:`check_encodable`)."""
    try:
        wire = [int(message.TAG), *struct_to_wire(message)]
    except _Invalid as exc:
        raise LocalProtocolError(str(exc)) from None
    check_encodable(wire, depth=ENVELOPE_DEPTH)
    return wire


def check_encodable(obj: Any, *, depth: int = 0) -> None:
    """Raise ``LocalProtocolError`` naming the limit if :func:`decode` would refuse ``obj``
    found ``depth`` levels deep (0: the whole body; ``ENVELOPE_DEPTH``: one message).

    Iterative; visits each container once and measures strings by their UTF-8 length.
    """
    stack: list[tuple[Any, int]] = [(obj, depth + 1)]
    while stack:
        value, level = stack.pop()
        t = type(value)
        if t is str:
            n = len(value) if value.isascii() else len(value.encode("utf-8", "surrogatepass"))
            if n > MAX_STR_BYTES:
                raise LocalProtocolError(
                    f"string of {n} bytes over MAX_STR_BYTES ({MAX_STR_BYTES})"
                )
        elif t is bytes or t is bytearray:
            if len(value) > MAX_BIN_BYTES:
                raise LocalProtocolError(
                    f"byte string of {len(value)} bytes over MAX_BIN_BYTES ({MAX_BIN_BYTES})"
                )
        elif t is list or t is tuple:
            if level > MAX_DEPTH:
                raise LocalProtocolError(f"nesting deeper than MAX_DEPTH ({MAX_DEPTH})")
            if len(value) > MAX_ARRAY_LEN:
                raise LocalProtocolError(
                    f"array of {len(value)} items over MAX_ARRAY_LEN ({MAX_ARRAY_LEN})"
                )
            stack.extend((v, level + 1) for v in value if type(v) not in _SCALARS)
        elif t is dict:
            if level > MAX_DEPTH:
                raise LocalProtocolError(f"nesting deeper than MAX_DEPTH ({MAX_DEPTH})")
            if len(value) > MAX_MAP_LEN:
                raise LocalProtocolError(
                    f"map of {len(value)} keys over MAX_MAP_LEN ({MAX_MAP_LEN})"
                )
            for key, item in value.items():
                if type(key) is not str:
                    raise LocalProtocolError("map keys must be strings")
                stack.append((key, level + 1))
                if type(item) not in _SCALARS:
                    stack.append((item, level + 1))


_SCALARS: Final = frozenset((int, float, bool, type(None)))
"""Types that need no limit check on encoding (their msgpack form is at most 9 bytes)."""


def wire_size(message: Message) -> int:
    """Encoded size of one message inside an envelope, in bytes."""
    return len(_packb(message_to_wire(message)))


def encode(
    messages: list[Message] | tuple[Message, ...],
    signer: Signer,
    *,
    max_bytes: int = MAX_FRAME_BYTES,
) -> bytes:
    """Sign and encode a batch of messages from ``signer``; raise ``LocalProtocolError``
    for anything a decoder with the same ``max_bytes`` would refuse."""
    _check_count(len(messages))
    return _seal([message_to_wire(m) for m in messages], signer, max_bytes)


def encode_wire_batch(
    wire_messages: list[list[Any]], signer: Signer, *, max_bytes: int = MAX_FRAME_BYTES
) -> bytes:
    """Like :func:`encode` for messages already converted by :func:`message_to_wire`
    (checked again here, since a caller may have built or changed them)."""
    _check_count(len(wire_messages))
    for wire in wire_messages:
        if type(wire) is not list or not wire or type(wire[0]) is not int:
            raise LocalProtocolError("a wire message is a list starting with its type tag")
        check_encodable(wire, depth=ENVELOPE_DEPTH)
    return _seal(wire_messages, signer, max_bytes)


def _check_count(count: int) -> None:
    if count > MAX_MESSAGES_PER_ENVELOPE:
        raise LocalProtocolError(
            f"{count} messages over MAX_MESSAGES_PER_ENVELOPE ({MAX_MESSAGES_PER_ENVELOPE})"
        )


def _seal(wire_messages: list[list[Any]], signer: Signer, max_bytes: int) -> bytes:
    body = _packb([PROTOCOL_VERSION, signer.public_key, wire_messages])
    size = len(body) + _SIG_SUFFIX_BYTES
    if size > max_bytes:
        raise LocalProtocolError(f"frame of {size} bytes over its limit of {max_bytes}")
    return body + _SIG_PREFIX + signer.sign(body)


def _packb(obj: Any) -> bytes:
    return cast(bytes, msgpack.packb(obj, use_bin_type=True))


def _unpack(data: bytes) -> Any:
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_str_len=MAX_STR_BYTES,
            max_bin_len=MAX_BIN_BYTES,
            max_array_len=MAX_ARRAY_LEN,
            max_map_len=MAX_MAP_LEN,
            max_ext_len=0,
            timestamp=0,
        )
    except Exception as exc:  # msgpack raises a wide variety; translate them all here.
        text = str(exc)
        if "exceeds max" in text or "max_" in text or isinstance(exc, MemoryError):
            raise LimitExceeded(f"msgpack limit: {text}") from None
        raise MalformedMessage(f"not valid msgpack: {type(exc).__name__}: {text}") from None


def _check_depth(obj: Any, limit: int = MAX_DEPTH) -> None:
    """Refuse nesting deeper than ``limit``. Only containers are pushed on the stack, so
    the walk costs one type test per item and one stack entry per container; the
    container count is bounded by the frame size (each takes at least one byte)."""
    if type(obj) is not list and type(obj) is not dict:
        return
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            raise LimitExceeded(f"nesting deeper than {limit}")
        items = value if type(value) is list else value.values()
        stack.extend((v, depth + 1) for v in items if type(v) is list or type(v) is dict)


def _check_size(data: bytes, max_bytes: int) -> None:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedMessage(f"expected bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise LimitExceeded(f"frame of {len(data)} bytes over the limit of {max_bytes}")


def decode(
    data: bytes,
    *,
    verifier: Verifier = ed25519_verify,
    max_bytes: int = MAX_FRAME_BYTES,
) -> Envelope:
    """Decode and verify one signed frame. Raises only ``RemoteProtocolError`` subclasses."""
    _check_size(data, max_bytes)
    data = bytes(data)
    if len(data) <= _SIG_SUFFIX_BYTES or data[-_SIG_SUFFIX_BYTES:-SIGNATURE_BYTES] != _SIG_PREFIX:
        raise MalformedMessage("frame does not end with a 64-byte signature")
    body, signature = data[:-_SIG_SUFFIX_BYTES], data[-SIGNATURE_BYTES:]
    version, sender = _read_prefix(body)
    if not verifier(sender, body, signature):
        raise BadSignature("envelope signature does not match its sender")
    raw = _unpack(body)
    # The prefix was read from these very bytes, so raw[0] and raw[1] are what it said.
    if type(raw) is not list or len(raw) < 3:
        raise MalformedMessage("envelope must be an array [version, sender, messages, ...]")
    batch = raw[2]
    if type(batch) is not list:
        raise MalformedMessage("envelope messages must be an array")
    if len(batch) > MAX_MESSAGES_PER_ENVELOPE:
        raise LimitExceeded(f"{len(batch)} messages over {MAX_MESSAGES_PER_ENVELOPE}")
    _check_depth(raw)
    return Envelope(version, node_id_from_public_key(sender), tuple(_build(m) for m in batch))


_FIXARRAY_MIN: Final = 0x93  # fixarray of 3 items: [version, sender, messages]
_FIXARRAY_MAX: Final = 0x9F  # fixarray of 15: later versions may append envelope fields
_BIN8_KEY: Final = b"\xc4" + bytes((PUBLIC_KEY_BYTES,))  # bin8 header, length 32
_INT_MARKERS: Final = frozenset((*range(0xCC, 0xD4), *range(0xE0, 0x100)))
_PREFIX_BYTES: Final = 2 + len(_BIN8_KEY) + PUBLIC_KEY_BYTES


def _read_prefix(body: bytes) -> tuple[int, bytes]:
    """``(version, sender key)`` read from the fixed layout at the start of ``body``,
    without decoding anything: a fixarray header (3 to 15 items), the version as a
    positive fixint, then ``0xc4 0x20`` and the 32-byte key. O(1)."""
    if len(body) < _PREFIX_BYTES or not _FIXARRAY_MIN <= body[0] <= _FIXARRAY_MAX:
        raise MalformedMessage("envelope must be an array [version, sender, messages, ...]")
    version = body[1]
    if version > 0x7F:
        if version in _INT_MARKERS:
            raise UnsupportedVersion(f"protocol version not in [{MIN_VERSION}, {MAX_VERSION}]")
        raise MalformedMessage("envelope version must be an integer")
    if not MIN_VERSION <= version <= MAX_VERSION:
        raise UnsupportedVersion(
            f"protocol version {version} not in [{MIN_VERSION}, {MAX_VERSION}]"
        )
    if body[2:4] != _BIN8_KEY:
        raise MalformedMessage("envelope sender must be a 32-byte public key")
    return version, body[4 : 4 + PUBLIC_KEY_BYTES]


def _build(raw: Any) -> Message:
    if type(raw) is not list or not raw or type(raw[0]) is not int:
        raise MalformedMessage("a message must be an array starting with its type tag")
    cls = MESSAGE_CLASSES.get(raw[0])
    if cls is None:
        raise UnknownMessageType(f"unknown message type tag {raw[0]}")
    try:
        return struct_from_wire(cls, raw, offset=1)
    except _Invalid as exc:
        raise remote_error(exc) from None


def pack(message: Message, *, max_bytes: int = MAX_FRAME_BYTES) -> bytes:
    """Encode one message without an envelope (for objects signed on their own, such as a
    manifest served over HTTP); raise ``LocalProtocolError`` for anything :func:`unpack`
    with the same ``max_bytes`` would refuse."""
    data = _packb(message_to_wire(message))
    if len(data) > max_bytes:
        raise LocalProtocolError(f"message of {len(data)} bytes over its limit of {max_bytes}")
    return data


def unpack(data: bytes, expected: type[M], *, max_bytes: int = MAX_FRAME_BYTES) -> M:
    """Decode one bare message of type ``expected``; raise ``RemoteProtocolError``."""
    _check_size(data, max_bytes)
    raw = _unpack(bytes(data))
    _check_depth(raw)
    message = _build(raw)
    if type(message) is not expected:
        raise MalformedMessage(f"expected {expected.__name__}, got {type(message).__name__}")
    return message
