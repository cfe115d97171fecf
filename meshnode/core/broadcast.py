"""The transmit-limited broadcast queue: rumors waiting to ride on outgoing packets.

Theory of operation
-------------------
SWIM disseminates by infection: every packet a node sends anyway (probes, acks, ping-reqs)
and the dedicated gossip packets carry, in their spare bytes, a few rumors from this
queue. Each rumor is sent a limited number of times, ``retransmit_mult × ceil(log10(n+1))``
(:func:`meshnode.core.timing.retransmit_limit`, computed by the caller at each take so the
limit follows the cluster size), then dropped: with random peers each time, that many
transmissions reach every member with high probability.

Rules, as in memberlist's ``TransmitLimitedQueue``:

* **Fewest-transmitted first.** Rumors are kept in buckets by how often they were sent;
  a take scans the buckets from 0 upward, so fresh news always travels first.
* **Newest first** among rumors sent equally often: in a bucket, the rumor that entered
  it last (queued, or sent one more time) comes first.
* **Replacement.** Every rumor has a key (for membership, the subject's node id); queuing
  a rumor under a key already present drops the old one, so only the newest statement
  about a subject is ever in flight.
* **Size.** A take fills at most the byte budget it is given, using sizes computed once
  at enqueue time; a rumor that does not fit is skipped (a smaller one may still fit).
* **Caps.** A rumor may carry its own cap on transmissions, below the queue-wide limit:
  it is dropped after ``min(limit, cap)`` sends. Ledger records use it
  (:attr:`meshnode.core.config.NodeConfig.ledger_retransmit_cap`), so one opinion costs
  each node the same number of sends at any cluster size.

A take is ``O(rumors selected + rumors skipped)``; skipping is capped, so a queue flooded
with rumors never makes one packet expensive. The queue itself does not know the
packet format: the caller passes the bytes left in its packet.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator

from protocol import Message

__all__ = ["NO_CAP", "BroadcastQueue", "QueuedRumor"]

MAX_SKIPPED_PER_TAKE = 8
"""A take gives up after skipping this many rumors too big for the space left."""

NO_CAP = 1 << 30
"""The cap of a rumor that follows the queue-wide limit only."""


class QueuedRumor:
    """One queued rumor and how many times it has been sent."""

    __slots__ = ("cap", "key", "message", "size", "transmits")

    def __init__(self, key: Hashable, message: Message, size: int, cap: int = NO_CAP) -> None:
        self.key = key
        self.message = message
        self.size = size
        self.cap = cap
        self.transmits = 0

    def __repr__(self) -> str:
        return (
            f"<QueuedRumor {type(self.message).__name__} {self.key!r} "
            f"size={self.size} sent={self.transmits}"
            + (f" cap={self.cap}>" if self.cap != NO_CAP else ">")
        )


class BroadcastQueue:
    """Rumors keyed by subject, bucketed by transmit count."""

    __slots__ = ("_buckets", "_by_key", "_smallest")

    def __init__(self) -> None:
        self._by_key: dict[Hashable, QueuedRumor] = {}
        # A lower bound of every queued size: a take stops once less space than this is
        # left. It never grows (exact tracking would cost more than it saves).
        self._smallest = 1 << 30
        # _buckets[t] holds the rumors sent t times, in insertion order (oldest first).
        self._buckets: list[dict[Hashable, QueuedRumor]] = []

    def __len__(self) -> int:
        return len(self._by_key)

    def __bool__(self) -> bool:
        return bool(self._by_key)

    def __contains__(self, key: object) -> bool:
        return key in self._by_key

    def __iter__(self) -> Iterator[QueuedRumor]:
        """Queued rumors in the order a take would consider them (ignoring sizes)."""
        for bucket in self._buckets:
            yield from reversed(bucket.values())

    def get(self, key: Hashable) -> QueuedRumor | None:
        """The queued rumor under ``key``, if any."""
        return self._by_key.get(key)

    def push(self, key: Hashable, message: Message, size: int, *, cap: int | None = None) -> None:
        """Queue ``message`` (``size`` bytes on the wire) under ``key``, replacing any rumor
        already queued under the same key; it starts with zero transmissions. With ``cap``
        (at least 1) it is sent at most that many times, even when the limit is higher."""
        if cap is not None and cap < 1:
            raise ValueError(f"cap must be at least 1, got {cap}")
        self.discard(key)
        item = QueuedRumor(key, message, size, NO_CAP if cap is None else cap)
        self._by_key[key] = item
        self._smallest = min(self._smallest, size)
        if not self._buckets:
            self._buckets.append({})
        self._buckets[0][key] = item

    def discard(self, key: Hashable) -> bool:
        """Remove the rumor under ``key``; True if there was one."""
        item = self._by_key.pop(key, None)
        if item is None:
            return False
        del self._buckets[item.transmits][key]
        self._trim()
        return True

    def take(self, budget: int, limit: int, *, exclude: Hashable | None = None) -> list[Message]:
        """Pick rumors fitting in ``budget`` bytes and count one transmission for each.

        Rumors already sent ``limit`` times (the limit may have dropped since) are removed
        first. A rumor whose count reaches ``limit`` (or its own cap) is removed after this
        take. The rumor
        under ``exclude`` (already in the packet) is left alone.
        """
        self._expire(limit)
        selected: list[QueuedRumor] = []
        remaining = budget
        smallest = self._smallest
        skipped = 0
        for bucket in self._buckets:
            if not bucket:
                continue
            if remaining < smallest or skipped > MAX_SKIPPED_PER_TAKE:
                break
            for item in reversed(bucket.values()):
                if item.size <= remaining and item.key != exclude:
                    selected.append(item)
                    remaining -= item.size
                    if remaining < smallest:
                        break
                else:
                    skipped += 1
                    if skipped > MAX_SKIPPED_PER_TAKE:
                        break
        # Move the oldest first, so rumors taken together keep their relative order.
        for item in reversed(selected):
            del self._buckets[item.transmits][item.key]
            item.transmits += 1
            if item.transmits >= limit or item.transmits >= item.cap:
                del self._by_key[item.key]
                continue
            if item.transmits == len(self._buckets):
                self._buckets.append({})
            self._buckets[item.transmits][item.key] = item
        self._trim()
        return [item.message for item in selected]

    def clear(self) -> None:
        """Drop every queued rumor."""
        self._by_key.clear()
        self._buckets.clear()
        self._smallest = 1 << 30

    def _expire(self, limit: int) -> None:
        while len(self._buckets) > max(0, limit):
            for key in self._buckets.pop():
                del self._by_key[key]

    def _trim(self) -> None:
        while self._buckets and not self._buckets[-1]:
            self._buckets.pop()

    def __repr__(self) -> str:
        depths = [len(b) for b in self._buckets]
        return f"<BroadcastQueue {len(self._by_key)} rumors by transmits {depths}>"
