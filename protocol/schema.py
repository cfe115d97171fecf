"""Declarative wire schemas for frozen, slotted dataclasses.

Theory of operation
-------------------
Every message and record is a ``@dataclass(frozen=True, slots=True)`` whose field
annotations say exactly what may travel on the wire. :func:`wire_struct` compiles those
annotations once into a list of field codecs; an object goes on the wire as a msgpack array
of its field values in declaration order (a message is prefixed by its type tag).

Field types understood:

* ``int`` with :class:`Range` — integers (``bool`` is refused where ``int`` is expected);
* ``float`` with optional :class:`Range` — finite floats (an int is accepted and widened);
* ``bool``; ``str`` with :class:`MaxLen` (UTF-8 bytes); ``bytes`` with :class:`MaxLen`
  or :class:`FixedLen`;
* :data:`NodeId` — text node id in Python, the raw 32-byte public key on the wire;
* :data:`JsonValue` — free-form JSON-like data (None, bool, int, float, str, list, dict
  with str keys) bounded by depth and encoded size;
* ``X | None``; ``tuple[X, ...]`` with :class:`MaxItems`; a nested wire struct; a union of
  messages (encoded with their tags).

Compatibility: a decoder accepts *more* trailing fields than it knows (they are ignored), so
a later protocol version may append optional fields; it refuses fewer, except fields marked
:class:`Appended`: such a field (always after every unmarked one, with a default) is left
out of the encoding, and so out of the signed bytes, while it and every field after it
hold their defaults, and a decoder that finds it missing uses the default. A struct made
before the field existed therefore encodes, signs and verifies exactly as it did. Fields
are never removed or reordered.

:func:`signing_bytes` gives the one canonical encoding that is signed: a domain string, the
struct's name, and every field but ``signature`` in declaration order.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable
from typing import (
    Annotated,
    Any,
    ClassVar,
    TypeVar,
    Union,
    cast,
    dataclass_transform,
    get_args,
    get_origin,
)

import msgpack

from protocol.errors import LimitExceeded, LocalProtocolError, MalformedMessage
from protocol.identity import PUBLIC_KEY_BYTES, node_id_from_public_key, public_key_from_node_id
from protocol.limits import MAX_DEPTH, MAX_MAP_LEN, MAX_VALUE_BYTES

SIGNING_DOMAIN = b"meshnode-sig-v1"
"""Prefix of every signed encoding, so a signature can never be replayed as another kind."""


# --------------------------------------------------------------------------- annotations


@dataclasses.dataclass(frozen=True, slots=True)
class MaxLen:
    """Largest length: UTF-8 bytes for ``str``, bytes for ``bytes``; ``min`` the smallest."""

    max: int
    min: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class FixedLen:
    """Exact length of a ``bytes`` field."""

    length: int


@dataclasses.dataclass(frozen=True, slots=True)
class MaxItems:
    """Most items in a ``tuple[X, ...]`` field."""

    max: int


@dataclasses.dataclass(frozen=True, slots=True)
class Range:
    """Inclusive bounds of an ``int`` or ``float`` field."""

    min: float
    max: float


@dataclasses.dataclass(frozen=True, slots=True)
class Appended:
    """Marks a field added by a later protocol version: omitted from the encoding while it
    (and every later field) equals its default; a missing one decodes as the default."""


class _NodeIdMarker:
    pass


class _JsonMarker:
    pass


NodeId = Annotated[str, _NodeIdMarker()]
"""A node id: text in Python, 32 raw bytes on the wire."""
JsonValue = Annotated[Any, _JsonMarker()]
"""Free-form JSON-like data, bounded by :data:`~protocol.limits.MAX_DEPTH` and
:data:`~protocol.limits.MAX_VALUE_BYTES`."""
UInt = Annotated[int, Range(0, 2**64 - 1)]
"""An unsigned 64-bit integer."""
Signature = Annotated[bytes, FixedLen(64)]
"""An Ed25519 signature."""
Digest = Annotated[bytes, FixedLen(32)]
"""A BLAKE2b-256 digest."""


# --------------------------------------------------------------------------- field codecs


class _Invalid(Exception):
    """Internal: a value broke a schema rule. Translated at the public boundary."""

    def __init__(self, message: str, *, too_large: bool = False) -> None:
        super().__init__(message)
        self.too_large = too_large


Codec = tuple[Callable[[Any], Any], Callable[[Any], Any]]  # (to_wire, from_wire)


def _int_codec(rng: Range | None) -> Codec:
    lo, hi = (rng.min, rng.max) if rng else (-(2**63), 2**64 - 1)

    def check(v: Any) -> int:
        if type(v) is not int:
            # IntEnum members (TaskStatus, MessageType) are ints; bool is not a number here.
            if not isinstance(v, int) or isinstance(v, bool):
                raise _Invalid(f"expected int, got {type(v).__name__}")
            v = int(v)
        n = cast(int, v)
        if not lo <= n <= hi:
            raise _Invalid(f"integer {n} outside [{lo}, {hi}]")
        return n

    return check, check


def _float_codec(rng: Range | None) -> Codec:
    def check(v: Any) -> float:
        if type(v) is int:
            v = float(v)
        elif type(v) is not float:
            raise _Invalid(f"expected float, got {type(v).__name__}")
        f = cast(float, v)
        if not math.isfinite(f):
            raise _Invalid("float must be finite")
        if rng is not None and not rng.min <= f <= rng.max:
            raise _Invalid(f"number {f} outside [{rng.min}, {rng.max}]")
        return f

    return check, check


def _bool_codec() -> Codec:
    def check(v: Any) -> bool:
        if type(v) is not bool:
            raise _Invalid(f"expected bool, got {type(v).__name__}")
        return v

    return check, check


def _str_codec(limit: MaxLen | None) -> Codec:
    hi, lo = (limit.max, limit.min) if limit else (2**31, 0)

    def check(v: Any) -> str:
        if type(v) is not str:
            raise _Invalid(f"expected str, got {type(v).__name__}")
        n = len(v) if v.isascii() else len(v.encode("utf-8", "surrogatepass"))
        if n > hi:
            raise _Invalid(f"string of {n} bytes over its limit of {hi}", too_large=True)
        if n < lo:
            raise _Invalid(f"string shorter than {lo} bytes")
        return v

    return check, check


def _bytes_codec(limit: MaxLen | FixedLen | None) -> Codec:
    def check(v: Any) -> bytes:
        if type(v) is bytearray:
            v = bytes(v)
        if type(v) is not bytes:
            raise _Invalid(f"expected bytes, got {type(v).__name__}")
        if isinstance(limit, FixedLen) and len(v) != limit.length:
            raise _Invalid(f"expected exactly {limit.length} bytes, got {len(v)}")
        if isinstance(limit, MaxLen) and not limit.min <= len(v) <= limit.max:
            raise _Invalid(f"{len(v)} bytes outside [{limit.min}, {limit.max}]", too_large=True)
        return v

    return check, check


def _node_id_codec() -> Codec:
    def to_wire(v: Any) -> bytes:
        try:
            return public_key_from_node_id(v)
        except LocalProtocolError as exc:
            raise _Invalid(str(exc)) from None

    def from_wire(v: Any) -> str:
        if type(v) is not bytes or len(v) != PUBLIC_KEY_BYTES:
            raise _Invalid("a node id is 32 raw bytes on the wire")
        return node_id_from_public_key(v)

    return to_wire, from_wire


def check_json_value(value: Any) -> Any:
    """Validate free-form data: JSON-like types only, bounded depth, map and encoded size.

    Returns the value unchanged; raises ``_Invalid``. Iterative, so hostile depth cannot
    exhaust the Python stack.
    """
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        t = type(v)
        if v is None or t is bool or t is int or t is str:
            continue
        if t is float:
            if not math.isfinite(v):
                raise _Invalid("float must be finite")
            continue
        if depth >= MAX_DEPTH:
            raise _Invalid(f"value nested deeper than {MAX_DEPTH}", too_large=True)
        if t is list or t is tuple:
            stack.extend((item, depth + 1) for item in v)
        elif t is dict:
            if len(v) > MAX_MAP_LEN:
                raise _Invalid(f"map of {len(v)} keys over {MAX_MAP_LEN}", too_large=True)
            for key, item in v.items():
                if type(key) is not str:
                    raise _Invalid("map keys must be strings")
                stack.append((item, depth + 1))
        else:
            raise _Invalid(f"{t.__name__} is not a JSON-like value")
    return value


def _json_codec() -> Codec:
    def to_wire(v: Any) -> Any:
        check_json_value(v)
        try:
            size = len(msgpack.packb(v, use_bin_type=True))
        except (TypeError, ValueError, OverflowError) as exc:
            raise _Invalid(f"value cannot be encoded: {exc}") from None
        if size > MAX_VALUE_BYTES:
            raise _Invalid(f"value of {size} bytes over {MAX_VALUE_BYTES}", too_large=True)
        return v

    def from_wire(v: Any) -> Any:
        # The frame as a whole is already bounded by MAX_FRAME_BYTES.
        return check_json_value(v)

    return to_wire, from_wire


def _optional_codec(inner: Codec) -> Codec:
    to_inner, from_inner = inner

    def to_wire(v: Any) -> Any:
        return None if v is None else to_inner(v)

    def from_wire(v: Any) -> Any:
        return None if v is None else from_inner(v)

    return to_wire, from_wire


def _tuple_codec(inner: Codec, limit: MaxItems | None) -> Codec:
    to_inner, from_inner = inner
    hi = limit.max if limit else 2**31

    def to_wire(v: Any) -> list[Any]:
        if not isinstance(v, tuple | list):
            raise _Invalid(f"expected a sequence, got {type(v).__name__}")
        if len(v) > hi:
            raise _Invalid(f"{len(v)} items over the limit of {hi}", too_large=True)
        return [to_inner(item) for item in v]

    def from_wire(v: Any) -> tuple[Any, ...]:
        if type(v) is not list:
            raise _Invalid(f"expected an array, got {type(v).__name__}")
        if len(v) > hi:
            raise _Invalid(f"{len(v)} items over the limit of {hi}", too_large=True)
        return tuple(from_inner(item) for item in v)

    return to_wire, from_wire


def _struct_codec(cls: type) -> Codec:
    def to_wire(v: Any) -> list[Any]:
        if type(v) is not cls:
            raise _Invalid(f"expected {cls.__name__}, got {type(v).__name__}")
        return struct_to_wire(v)

    def from_wire(v: Any) -> Any:
        return struct_from_wire(cls, v)

    return to_wire, from_wire


def _union_codec(classes: tuple[type, ...]) -> Codec:
    by_tag = {c.TAG: c for c in classes}  # type: ignore[attr-defined]

    def to_wire(v: Any) -> list[Any]:
        if type(v) not in classes:
            raise _Invalid(f"{type(v).__name__} not allowed here")
        return [int(v.TAG), *struct_to_wire(v)]

    def from_wire(v: Any) -> Any:
        if type(v) is not list or not v or type(v[0]) is not int:
            raise _Invalid("expected a tagged message")
        cls = by_tag.get(v[0])
        if cls is None:
            raise _Invalid(f"message tag {v[0]} not allowed here")
        return struct_from_wire(cls, v, offset=1)

    return to_wire, from_wire


# --------------------------------------------------------------------------- compilation


@dataclasses.dataclass(frozen=True, slots=True)
class _Field:
    name: str
    to_wire: Callable[[Any], Any]
    from_wire: Callable[[Any], Any]
    appended: bool = False
    default: Any = None


def _codec_for(hint: Any, owner: type) -> Codec:
    meta: tuple[Any, ...] = ()
    if get_origin(hint) is Annotated:
        hint, *rest = get_args(hint)
        meta = tuple(rest)
    if any(isinstance(m, _NodeIdMarker) for m in meta):
        return _node_id_codec()
    if any(isinstance(m, _JsonMarker) for m in meta):
        return _json_codec()
    limit = next((m for m in meta if isinstance(m, MaxLen | FixedLen)), None)
    rng = next((m for m in meta if isinstance(m, Range)), None)
    items = next((m for m in meta if isinstance(m, MaxItems)), None)
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        args = get_args(hint)
        non_none = tuple(a for a in args if a is not type(None))
        if len(non_none) == 1 and len(args) == 2:
            return _optional_codec(_codec_for(non_none[0], owner))
        if all(hasattr(a, "TAG") for a in non_none) and len(non_none) == len(args):
            return _union_codec(non_none)
        raise TypeError(f"{owner.__name__}: unsupported union {hint}")
    if origin is tuple:
        args = get_args(hint)
        if len(args) != 2 or args[1] is not Ellipsis:
            raise TypeError(f"{owner.__name__}: only tuple[X, ...] is supported")
        return _tuple_codec(_codec_for(args[0], owner), items)
    if hint is bool:
        return _bool_codec()
    if hint is int:
        return _int_codec(rng)
    if hint is float:
        return _float_codec(rng)
    if hint is str:
        return _str_codec(limit if isinstance(limit, MaxLen) else None)
    if hint is bytes:
        return _bytes_codec(limit)
    if isinstance(hint, type) and hasattr(hint, "__wire_fields__"):
        return _struct_codec(hint)
    raise TypeError(f"{owner.__name__}: unsupported field type {hint!r}")


def _compile(cls: type) -> tuple[_Field, ...]:
    compiled: tuple[_Field, ...] | None = cls.__dict__.get("__wire_compiled__")
    if compiled is None:
        hints = typing.get_type_hints(cls, include_extras=True)
        fields: list[_Field] = []
        for f in dataclasses.fields(cast(Any, cls)):
            hint = hints[f.name]
            appended = get_origin(hint) is Annotated and any(
                isinstance(m, Appended) for m in get_args(hint)[1:]
            )
            if appended and f.default is dataclasses.MISSING:
                raise TypeError(f"{cls.__name__}.{f.name}: an Appended field needs a default")
            if fields and fields[-1].appended and not appended:
                raise TypeError(f"{cls.__name__}.{f.name}: Appended fields must come last")
            fields.append(_Field(f.name, *_codec_for(hint, cls), appended, f.default))
        compiled = tuple(fields)
        cls.__wire_compiled__ = compiled  # type: ignore[attr-defined]
    return compiled


T = TypeVar("T")


@dataclass_transform(frozen_default=True)
def wire_struct(cls: type[T]) -> type[T]:
    """Class decorator: make ``cls`` a frozen, slotted dataclass with a wire schema."""
    new = dataclasses.dataclass(frozen=True, slots=True)(cls)
    new.__wire_fields__ = tuple(f.name for f in dataclasses.fields(cast(Any, new)))  # type: ignore[attr-defined]
    return new


class WireStruct:
    """Marker base for annotations; concrete classes are made by :func:`wire_struct`."""

    __slots__ = ()
    __wire_fields__: ClassVar[tuple[str, ...]]


def struct_to_wire(obj: Any, *, skip_signature: bool = False) -> list[Any]:
    """Encode ``obj``'s fields (not its tag) to msgpack-ready values; raise ``_Invalid``."""
    out = []
    fields = _compile(type(obj))
    for field in fields:
        if skip_signature and field.name == "signature":
            continue
        try:
            out.append(field.to_wire(getattr(obj, field.name)))
        except _Invalid as exc:
            message = f"{type(obj).__name__}.{field.name}: {exc}"
            raise _Invalid(message, too_large=exc.too_large) from None
    # Appended fields at their defaults, from the end, are left out (see the module doc).
    for field in reversed(fields):
        if not field.appended or getattr(obj, field.name) != field.default:
            break
        out.pop()
    return out


def struct_from_wire(cls: type[T], raw: Any, *, offset: int = 0) -> T:
    """Build ``cls`` from decoded msgpack values (after ``offset`` leading items)."""
    fields = _compile(cls)
    required = sum(1 for field in fields if not field.appended)
    if type(raw) is not list or len(raw) - offset < required:
        raise _Invalid(f"{cls.__name__}: expected an array of at least {required} fields")
    values = {}
    for i, field in enumerate(fields):
        if offset + i >= len(raw):
            break  # the rest are Appended fields left at their defaults
        try:
            values[field.name] = field.from_wire(raw[offset + i])
        except _Invalid as exc:
            message = f"{cls.__name__}.{field.name}: {exc}"
            raise _Invalid(message, too_large=exc.too_large) from None
    try:
        return cls(**values)
    except (LocalProtocolError, ValueError, TypeError) as exc:
        raise _Invalid(f"{cls.__name__}: {exc}") from None


def to_wire(obj: Any) -> list[Any]:
    """Public: the msgpack-ready form of a wire struct; raise ``LocalProtocolError``."""
    try:
        return struct_to_wire(obj)
    except _Invalid as exc:
        raise LocalProtocolError(str(exc)) from None


def from_wire(cls: type[T], raw: Any) -> T:
    """Public: build ``cls`` from msgpack values; raise a ``RemoteProtocolError``."""
    try:
        return struct_from_wire(cls, raw)
    except _Invalid as exc:
        raise remote_error(exc) from None


def remote_error(exc: _Invalid) -> MalformedMessage | LimitExceeded:
    return LimitExceeded(str(exc)) if exc.too_large else MalformedMessage(str(exc))


def signing_bytes(obj: Any) -> bytes:
    """The canonical bytes that ``obj.signature`` signs: one encoding for one content."""
    try:
        body = struct_to_wire(obj, skip_signature=True)
    except _Invalid as exc:
        raise LocalProtocolError(str(exc)) from None
    return cast(bytes, msgpack.packb([SIGNING_DOMAIN, type(obj).__name__, body], use_bin_type=True))
