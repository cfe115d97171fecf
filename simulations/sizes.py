"""Exact wire sizes of simulated traffic, computed with the real codec and cached.

Theory of operation
-------------------
The simulator never puts bytes on a wire, but it must count them exactly as the runtime
would send them. Every figure comes from :func:`protocol.wire_size` (the length of the
msgpack encoding of one message) and the envelope layout of :mod:`protocol.codec`; the cost
of encoding is what this module saves, without approximating anything:

* **Probe messages** (``Ping``, ``Ack``, ``Nack``, ``PingReq``) are new objects on every
  packet, but their encoding length depends only on the *size class* of each field: a
  msgpack unsigned integer takes 1, 2, 3, 5 or 9 bytes according to its bit length, a
  string or byte string its length plus a header that depends on that length, and a node
  id is always 32 raw bytes. The cache key is the message type plus those size classes
  (``int.bit_length()`` and UTF-8 lengths), and a miss calls the real ``wire_size`` on the
  message at hand, so the cached value is exact by construction.
* **Rumors and records** (``Alive``, ``Suspect``, ``Dead``, ``Leave``, ``ManifestRumor``,
  ``LedgerRecord``, ``LedgerDigest``) are immutable and shared by reference between
  simulated nodes, or equal by value when rebuilt: they are cached by identity first (the
  cache holds a reference, so an identity cannot be reused while it is cached), then by
  value.
* **Envelopes** add ``1 + 1 + 34 + array header + 66`` bytes around their messages (a
  fixarray of three, the version, the bin8 public key, the message array, the bin8
  signature). :data:`protocol.ENVELOPE_OVERHEAD` is the upper bound of that (with a
  three-byte array header); :func:`envelope_size` is the exact figure.
* **Push-pull** messages hold up to tens of thousands of rumors. Their size is the size of
  the same message with empty tuples, plus, per tuple, the growth of its msgpack array
  header and the sizes of its items: a union-typed item (a member rumor) is encoded with
  its tag, exactly as a top-level message; a struct-typed item (manifest rumor, ledger
  digest, ledger record) without it, one byte less. A long tuple's sum is remembered by
  the tuple's identity: replicas that share a table (the manifest store's rumors) send
  the very same tuple.
* A fetched **manifest** is served as ``protocol.pack(manifest)``; its length is cached by
  signature.

``tests/simulation/test_sizes.py`` checks every path against a real encode on random
messages.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Final

from protocol import (
    Ack,
    LedgerRecord,
    Manifest,
    Message,
    Nack,
    Ping,
    PingReq,
    PushPull,
    pack,
    wire_size,
)
from protocol.identity import PUBLIC_KEY_BYTES, SIGNATURE_BYTES

__all__ = ["SizeModel", "array_header_bytes", "envelope_size"]

_ENVELOPE_FIXED: Final = 1 + 1 + (2 + PUBLIC_KEY_BYTES) + (2 + SIGNATURE_BYTES)
"""fixarray(3) + version (positive fixint) + bin8 public key + bin8 signature."""

MAX_CACHED: Final = 1 << 17
"""Entries kept in each cache before it is cleared (sizes stay exact either way). The
identity cache holds a reference to every message in it, so it is kept small."""


MIN_TABLE_CACHED: Final = 64
"""Push-pull tuples at least this long have their size sum remembered by identity."""

MAX_TABLES_CACHED: Final = 256
"""Push-pull tuples remembered at once (each kept alive while remembered); the cache is
cleared when full."""


def array_header_bytes(length: int) -> int:
    """Bytes of the msgpack header of an array of ``length`` items."""
    if length < 16:
        return 1
    if length < 65_536:
        return 3
    return 5


def envelope_size(message_count: int, payload: int) -> int:
    """Exact bytes of a signed envelope holding ``message_count`` messages whose encodings
    total ``payload`` bytes."""
    return _ENVELOPE_FIXED + array_header_bytes(message_count) + payload


class SizeModel:
    """Caches of exact encoded sizes. One per simulation (not thread-safe)."""

    __slots__ = (
        "_by_id",
        "_by_shape",
        "_by_value",
        "_held",
        "_manifests",
        "_push_pull_base",
        "_tuples",
    )

    def __init__(self) -> None:
        self._by_id: dict[int, int] = {}
        """Size by ``id()`` of a message in :attr:`_held` (so the id cannot be reused while
        it is here): one lookup per item, no identity check, for push-pull's long tuples."""
        self._held: dict[int, Message] = {}
        self._tuples: dict[int, tuple[tuple[Message, ...], int]] = {}
        """The item sizes summed of a push-pull tuple, by ``id()``, with the tuple itself
        (so the id cannot be reused while it is here): replicas share their tables, so
        many exchanges carry the very same tuple."""
        self._by_shape: dict[Hashable, int] = {}
        self._by_value: dict[Message, int] = {}
        self._manifests: dict[bytes, int] = {}
        self._push_pull_base: dict[bool, int] = {}

    def message(self, message: Message) -> int:
        """``protocol.wire_size(message)``."""
        cls = type(message)
        if cls is Ping:
            assert isinstance(message, Ping)
            key: Hashable = (1, message.seq.bit_length())
        elif cls is Ack:
            assert isinstance(message, Ack)
            coordinate = message.coordinate
            key = (
                3,
                message.seq.bit_length(),
                message.load.bit_length(),
                message.members.bit_length(),
                # Floats are always float64 (9 bytes): only the vector's length matters.
                -1 if coordinate is None else len(coordinate.vec),
            )
        elif cls is Nack:
            assert isinstance(message, Nack)
            key = (4, message.seq.bit_length())
        elif cls is PingReq:
            assert isinstance(message, PingReq)
            key = (
                2,
                message.seq.bit_length(),
                len(message.host.encode("utf-8")),
                message.port.bit_length(),
            )
        else:
            ident = id(message)
            known = self._by_id.get(ident)
            if known is not None:
                return known
            cached = self._by_value.get(message)
            if cached is None:
                if len(self._by_value) >= MAX_CACHED:
                    self._by_value.clear()
                cached = self._by_value[message] = wire_size(message)
            if len(self._by_id) >= MAX_CACHED:
                self._by_id.clear()
                self._held.clear()
            self._by_id[ident] = cached
            self._held[ident] = message
            return cached
        size = self._by_shape.get(key)
        if size is None:
            size = self._by_shape[key] = wire_size(message)
        return size

    def packet(self, messages: Sequence[Message]) -> int:
        """Exact bytes of the signed envelope carrying ``messages`` (one UDP datagram)."""
        return envelope_size(len(messages), self._sum(messages))

    def frame(self, messages: Sequence[Message]) -> int:
        """Exact bytes of a TCP frame (one signed envelope) carrying ``messages``; push-pull
        messages are measured item by item."""
        total = 0
        for m in messages:
            total += self.push_pull(m) if type(m) is PushPull else self.message(m)
        return envelope_size(len(messages), total)

    def push_pull(self, message: PushPull) -> int:
        """``protocol.wire_size(message)`` for a push-pull state exchange."""
        base = self._push_pull_base.get(message.join)
        if base is None:
            base = self._push_pull_base[message.join] = wire_size(
                PushPull(message.join, (), (), (), ())
            )
        total = base
        members = message.members
        total += array_header_bytes(len(members)) - 1 + self._sum_table(members)
        for items in (
            message.manifests,
            message.ledger,
            message.records,
            message.certificates,
            message.revocations,
        ):
            # Struct-typed items are encoded without their type tag: one byte less each.
            total += array_header_bytes(len(items)) - 1 + self._sum_table(items) - len(items)
        return total

    def _sum_table(self, items: Sequence[Message]) -> int:
        """:meth:`_sum` of one of a push-pull's tuples, remembered by the tuple's identity
        when it is long (tuples and their items are immutable, so the sum cannot change)."""
        if type(items) is not tuple or len(items) < MIN_TABLE_CACHED:
            return self._sum(items)
        known = self._tuples.get(id(items))
        if known is not None:
            return known[1]
        total = self._sum(items)
        if len(self._tuples) >= MAX_TABLES_CACHED:
            self._tuples.clear()
        self._tuples[id(items)] = (items, total)
        return total

    def _sum(self, messages: Sequence[Message]) -> int:
        """The sizes of ``messages`` added up (each as a top-level message)."""
        get = self._by_id.get
        if len(messages) <= 4:  # a datagram's few messages: no lists
            total = 0
            for m in messages:
                known = get(id(m))
                total += known if known is not None else self.message(m)
            return total
        sizes = list(map(get, map(id, messages)))
        if None not in sizes:
            return sum(sizes)  # type: ignore[arg-type]
        size = self.message
        return sum(
            known if known is not None else size(m)
            for m, known in zip(messages, sizes, strict=True)
        )

    def records(self, records: Sequence[LedgerRecord]) -> int:
        """Exact bytes of one envelope of ledger records (the third push-pull leg)."""
        return self.packet(records)

    def manifest(self, manifest: Manifest) -> int:
        """Bytes of ``protocol.pack(manifest)``, the body of a manifest fetch response."""
        size = self._manifests.get(manifest.signature)
        if size is None:
            size = self._manifests[manifest.signature] = len(pack(manifest))
        return size
