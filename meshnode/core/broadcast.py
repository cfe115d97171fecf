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

* **Lanes.** A rumor is pushed into a priority lane (0 first): a take fills the packet
  from lane 0, then from lane 1 with the space left, and so on; the rules above order the
  rumors inside a lane. The membership core puts its own ``Alive`` (a refutation) in
  :data:`LANE_OWN`, other membership rumors in :data:`LANE_MEMBERS` and application rumors
  (manifests, ledger records) in :data:`LANE_APP`, as memberlist sends its own broadcasts
  before asking the delegate for user ones. Membership rumors are at most one per member,
  so a flood of application rumors, which has no such bound, can no longer push a
  refutation out of every packet until the suspicion it answers expires.

A take is ``O(rumors selected + rumors skipped)``, plus dropped rumors it pops on the way
(each once: amortised ``O(1)`` per drop); skipping is capped, so a queue flooded with
rumors never makes one packet expensive. The queue itself does not know the
packet format: the caller passes the bytes left in its packet.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator

from protocol import Message

__all__ = [
    "LANES",
    "LANE_APP",
    "LANE_MEMBERS",
    "LANE_OWN",
    "NO_CAP",
    "BroadcastQueue",
    "QueuedRumor",
]

MAX_SKIPPED_PER_TAKE = 8
"""A take gives up after skipping this many rumors too big for the space left."""

MAX_DROPPED_SLACK = 64
"""Dropped rumors a queue may leave in its buckets beyond one per queued rumor before it
sweeps them out (see :class:`BroadcastQueue`)."""

NO_CAP = 1 << 30
"""The cap of a rumor that follows the queue-wide limit only."""

LANE_OWN = 0
"""Lane of a node's own ``Alive`` or ``Leave`` (a refutation must never wait)."""
LANE_MEMBERS = 1
"""Lane of the other membership rumors (at most one queued per member)."""
LANE_APP = 2
"""Lane of application rumors (manifests, ledger records): the space membership left."""
LANES = 3
"""Number of lanes."""


class QueuedRumor:
    """One queued rumor and how many times it has been sent."""

    __slots__ = ("cap", "key", "lane", "message", "queued", "size", "transmits")

    def __init__(
        self, key: Hashable, message: Message, size: int, cap: int = NO_CAP, lane: int = 0
    ) -> None:
        self.key = key
        self.message = message
        self.size = size
        self.cap = cap
        self.lane = lane
        self.transmits = 0
        self.queued = True
        """False once dropped (replaced, discarded, sent its last time or expired)."""

    def __repr__(self) -> str:
        return (
            f"<QueuedRumor {type(self.message).__name__} {self.key!r} "
            f"size={self.size} sent={self.transmits} lane={self.lane}"
            + (f" cap={self.cap}>" if self.cap != NO_CAP else ">")
        )


class BroadcastQueue:
    """Rumors keyed by subject, in priority lanes, bucketed by transmit count.

    A bucket is a stack (a list, oldest first): a push or a move appends, a take pops from
    the end. A rumor dropped from the middle of a bucket (replaced or discarded) is only
    marked (:attr:`QueuedRumor.queued`) and left where it is; takes pop such leftovers as
    they reach them, and the buckets are compacted once the leftovers outnumber the queued
    rumors (plus :data:`MAX_DROPPED_SLACK`), so they never hold more than about twice the
    queue. (Buckets as insertion-ordered dicts, deleted from as rumors leave, made a take
    step over every deleted slot at the end of a bucket's table: tens of microseconds per
    packet once a busy bucket had grown.)
    """

    __slots__ = ("_by_key", "_dropped", "_lanes", "_smallest")

    def __init__(self, lanes: int = LANES) -> None:
        if lanes < 1:
            raise ValueError(f"lanes must be at least 1, got {lanes}")
        self._by_key: dict[Hashable, QueuedRumor] = {}
        # A lower bound of every queued size: a take stops once less space than this is
        # left. It never grows (exact tracking would cost more than it saves).
        self._smallest = 1 << 30
        # _lanes[l][t] holds the rumors of lane l sent t times, oldest first, with the
        # dropped ones not yet swept (see the class docstring).
        self._lanes: list[list[list[QueuedRumor]]] = [[] for _ in range(lanes)]
        self._dropped = 0
        """Dropped rumors still in a bucket."""

    def __len__(self) -> int:
        return len(self._by_key)

    def __bool__(self) -> bool:
        return bool(self._by_key)

    def __contains__(self, key: object) -> bool:
        return key in self._by_key

    def __iter__(self) -> Iterator[QueuedRumor]:
        """Queued rumors in the order a take would consider them (ignoring sizes)."""
        for buckets in self._lanes:
            for bucket in buckets:
                yield from (item for item in reversed(bucket) if item.queued)

    def get(self, key: Hashable) -> QueuedRumor | None:
        """The queued rumor under ``key``, if any."""
        return self._by_key.get(key)

    def push(
        self,
        key: Hashable,
        message: Message,
        size: int,
        *,
        cap: int | None = None,
        lane: int = 0,
    ) -> None:
        """Queue ``message`` (``size`` bytes on the wire) under ``key`` in ``lane``,
        replacing any rumor already queued under the same key; it starts with zero
        transmissions. With ``cap`` (at least 1) it is sent at most that many times, even
        when the limit is higher."""
        if cap is not None and cap < 1:
            raise ValueError(f"cap must be at least 1, got {cap}")
        if not 0 <= lane < len(self._lanes):
            raise ValueError(f"lane must be in [0, {len(self._lanes)}), got {lane}")
        by_key = self._by_key
        if key in by_key:
            self.discard(key)
        item = QueuedRumor(key, message, size, NO_CAP if cap is None else cap, lane)
        by_key[key] = item
        if size < self._smallest:
            self._smallest = size
        buckets = self._lanes[lane]
        if not buckets:
            buckets.append([])
        buckets[0].append(item)

    def discard(self, key: Hashable) -> bool:
        """Remove the rumor under ``key``; True if there was one."""
        item = self._by_key.pop(key, None)
        if item is None:
            return False
        item.queued = False
        self._dropped += 1
        if self._dropped > len(self._by_key) + MAX_DROPPED_SLACK:
            self._sweep()
        return True

    def take(self, budget: int, limit: int, *, exclude: Hashable | None = None) -> list[Message]:
        """Pick rumors fitting in ``budget`` bytes and count one transmission for each.

        Lanes are filled in order (lane 0 first). Rumors already sent ``limit`` times (the
        limit may have dropped since) are removed first. A rumor whose count reaches
        ``limit`` (or its own cap) is removed after this take. The rumor under ``exclude``
        (already in the packet) is left alone.
        """
        selected: list[QueuedRumor] = []
        remaining = budget
        smallest = self._smallest
        skipped = 0
        by_key = self._by_key
        for buckets in self._lanes:
            if not buckets:
                continue
            if len(buckets) > (limit if limit > 0 else 0):
                self._expire(buckets, limit)
            lane_start = len(selected)
            for bucket in buckets:
                if not bucket:
                    continue
                if remaining < smallest or skipped > MAX_SKIPPED_PER_TAKE:
                    break
                kept: list[QueuedRumor] = []
                while bucket:
                    item = bucket.pop()
                    if not item.queued:
                        self._dropped -= 1
                        continue
                    if item.size <= remaining and item.key != exclude:
                        selected.append(item)
                        remaining -= item.size
                        if remaining < smallest:
                            break
                    else:
                        kept.append(item)
                        skipped += 1
                        if skipped > MAX_SKIPPED_PER_TAKE:
                            break
                if kept:
                    kept.reverse()
                    bucket.extend(kept)
            # Move the oldest first, so rumors taken together keep their relative order.
            for item in reversed(selected[lane_start:]):
                item.transmits += 1
                if item.transmits >= limit or item.transmits >= item.cap:
                    del by_key[item.key]
                    item.queued = False
                    continue
                while item.transmits >= len(buckets):
                    buckets.append([])
                buckets[item.transmits].append(item)
            self._trim(buckets)
        return [item.message for item in selected]

    def clear(self) -> None:
        """Drop every queued rumor."""
        for item in self._by_key.values():
            item.queued = False
        self._by_key.clear()
        for buckets in self._lanes:
            buckets.clear()
        self._smallest = 1 << 30
        self._dropped = 0

    def _expire(self, buckets: list[list[QueuedRumor]], limit: int) -> None:
        while len(buckets) > max(0, limit):
            for item in buckets.pop():
                if item.queued:
                    del self._by_key[item.key]
                    item.queued = False
                else:
                    self._dropped -= 1

    def _sweep(self) -> None:
        """Forget the dropped rumors left in the buckets."""
        for buckets in self._lanes:
            for bucket in buckets:
                bucket[:] = [item for item in bucket if item.queued]
            self._trim(buckets)
        self._dropped = 0

    @staticmethod
    def _trim(buckets: list[list[QueuedRumor]]) -> None:
        while buckets and not buckets[-1]:
            buckets.pop()

    def __repr__(self) -> str:
        depths = [[sum(i.queued for i in b) for b in buckets] for buckets in self._lanes]
        return f"<BroadcastQueue {len(self._by_key)} rumors by lane and transmits {depths}>"
