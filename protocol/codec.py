"""The wire format: signed msgpack envelopes, and the one decoder for untrusted bytes.

Frame layout (version 1)::

    msgpack([version, sender_public_key(bin 32), [[tag, field, ...], ...]])
    || 0xc4 0x40 || ed25519_signature(64 bytes over everything before it)

The signature is a fixed 66-byte suffix, so it is checked against the exact bytes that
arrived, with no re-encoding. :func:`decode` is the only way untrusted bytes become
objects, and it raises only :class:`~protocol.errors.RemoteProtocolError` subclasses,
whatever the input: size first, then msgpack with per-type limits, then structure and
depth, then the signature, then each message's schema.

Protocol versions (``MIN_VERSION`` .. ``MAX_VERSION`` accepted):

* 1 — SWIM probes and rumors, manifests, ledger records, push-pull, task negotiation.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar, cast

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
    """``[tag, field, ...]`` for one message; raise ``LocalProtocolError`` if invalid."""
    try:
        return [int(message.TAG), *struct_to_wire(message)]
    except _Invalid as exc:
        raise LocalProtocolError(str(exc)) from None


def wire_size(message: Message) -> int:
    """Encoded size of one message inside an envelope, in bytes."""
    return len(_packb(message_to_wire(message)))


def encode(messages: list[Message] | tuple[Message, ...], signer: Signer) -> bytes:
    """Sign and encode a batch of messages from ``signer``."""
    if len(messages) > MAX_MESSAGES_PER_ENVELOPE:
        raise LocalProtocolError(f"{len(messages)} messages over {MAX_MESSAGES_PER_ENVELOPE}")
    body = _packb([PROTOCOL_VERSION, signer.public_key, [message_to_wire(m) for m in messages]])
    return body + _SIG_PREFIX + signer.sign(body)


def encode_wire_batch(wire_messages: list[list[Any]], signer: Signer) -> bytes:
    """Like :func:`encode` for messages already converted by :func:`message_to_wire`."""
    body = _packb([PROTOCOL_VERSION, signer.public_key, wire_messages])
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
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if type(value) is list:
            if depth > limit:
                raise LimitExceeded(f"nesting deeper than {limit}")
            stack.extend((v, depth + 1) for v in value)
        elif type(value) is dict:
            if depth > limit:
                raise LimitExceeded(f"nesting deeper than {limit}")
            stack.extend((v, depth + 1) for v in value.values())


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
    raw = _unpack(body)
    if type(raw) is not list or len(raw) < 3:
        raise MalformedMessage("envelope must be an array [version, sender, messages, ...]")
    version, sender, batch = raw[0], raw[1], raw[2]
    if type(version) is not int:
        raise MalformedMessage("envelope version must be an integer")
    if not MIN_VERSION <= version <= MAX_VERSION:
        raise UnsupportedVersion(
            f"protocol version {version} not in [{MIN_VERSION}, {MAX_VERSION}]"
        )
    if type(sender) is not bytes or len(sender) != PUBLIC_KEY_BYTES:
        raise MalformedMessage("envelope sender must be a 32-byte public key")
    if type(batch) is not list:
        raise MalformedMessage("envelope messages must be an array")
    if len(batch) > MAX_MESSAGES_PER_ENVELOPE:
        raise LimitExceeded(f"{len(batch)} messages over {MAX_MESSAGES_PER_ENVELOPE}")
    _check_depth(raw)
    if not verifier(sender, body, signature):
        raise BadSignature("envelope signature does not match its sender")
    return Envelope(version, node_id_from_public_key(sender), tuple(_build(m) for m in batch))


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


def pack(message: Message) -> bytes:
    """Encode one message without an envelope (for objects signed on their own, such as a
    manifest served over HTTP)."""
    return _packb(message_to_wire(message))


def unpack(data: bytes, expected: type[M], *, max_bytes: int = MAX_FRAME_BYTES) -> M:
    """Decode one bare message of type ``expected``; raise ``RemoteProtocolError``."""
    _check_size(data, max_bytes)
    raw = _unpack(bytes(data))
    _check_depth(raw)
    message = _build(raw)
    if type(message) is not expected:
        raise MalformedMessage(f"expected {expected.__name__}, got {type(message).__name__}")
    return message
