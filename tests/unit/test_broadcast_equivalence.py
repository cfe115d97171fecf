"""The broadcast queue takes exactly what its earlier form took, on any sequence of pushes,
discards, takes and clears (a Hypothesis property against that form, kept here as the
reference), and its dropped leftovers stay bounded."""

from __future__ import annotations

from collections.abc import Hashable, Iterator

from hypothesis import given, settings
from hypothesis import strategies as st

from meshnode.core.broadcast import (
    LANES,
    MAX_DROPPED_SLACK,
    MAX_SKIPPED_PER_TAKE,
    NO_CAP,
    BroadcastQueue,
    QueuedRumor,
)
from protocol import Message, Nack


class ReferenceQueue:
    """The queue as it was before its buckets became stacks (dicts deleted from)."""

    __slots__ = ("_by_key", "_lanes", "_smallest")

    def __init__(self, lanes: int = LANES) -> None:
        if lanes < 1:
            raise ValueError(f"lanes must be at least 1, got {lanes}")
        self._by_key: dict[Hashable, QueuedRumor] = {}
        # A lower bound of every queued size: a take stops once less space than this is
        # left. It never grows (exact tracking would cost more than it saves).
        self._smallest = 1 << 30
        # _lanes[l][t] holds the rumors of lane l sent t times, in insertion order (oldest
        # first).
        self._lanes: list[list[dict[Hashable, QueuedRumor]]] = [[] for _ in range(lanes)]

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
                yield from reversed(bucket.values())

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
        self.discard(key)
        item = QueuedRumor(key, message, size, NO_CAP if cap is None else cap, lane)
        self._by_key[key] = item
        self._smallest = min(self._smallest, size)
        buckets = self._lanes[lane]
        if not buckets:
            buckets.append({})
        buckets[0][key] = item

    def discard(self, key: Hashable) -> bool:
        """Remove the rumor under ``key``; True if there was one."""
        item = self._by_key.pop(key, None)
        if item is None:
            return False
        buckets = self._lanes[item.lane]
        del buckets[item.transmits][key]
        self._trim(buckets)
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
        for buckets in self._lanes:
            self._expire(buckets, limit)
            lane_start = len(selected)
            for bucket in buckets:
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
            for item in reversed(selected[lane_start:]):
                del buckets[item.transmits][item.key]
                item.transmits += 1
                if item.transmits >= limit or item.transmits >= item.cap:
                    del self._by_key[item.key]
                    continue
                if item.transmits == len(buckets):
                    buckets.append({})
                buckets[item.transmits][item.key] = item
            self._trim(buckets)
        return [item.message for item in selected]

    def clear(self) -> None:
        """Drop every queued rumor."""
        self._by_key.clear()
        for buckets in self._lanes:
            buckets.clear()
        self._smallest = 1 << 30

    def _expire(self, buckets: list[dict[Hashable, QueuedRumor]], limit: int) -> None:
        while len(buckets) > max(0, limit):
            for key in buckets.pop():
                del self._by_key[key]

    @staticmethod
    def _trim(buckets: list[dict[Hashable, QueuedRumor]]) -> None:
        while buckets and not buckets[-1]:
            buckets.pop()

    def __repr__(self) -> str:
        depths = [[len(b) for b in buckets] for buckets in self._lanes]
        return f"<BroadcastQueue {len(self._by_key)} rumors by lane and transmits {depths}>"


OPERATION = st.one_of(
    st.tuples(
        st.just("push"),
        st.integers(0, 12),
        st.integers(1, 60),
        st.one_of(st.none(), st.integers(1, 4)),
        st.integers(0, LANES - 1),
    ),
    st.tuples(st.just("discard"), st.integers(0, 12)),
    st.tuples(
        st.just("take"),
        st.integers(0, 200),
        st.integers(0, 6),
        st.one_of(st.none(), st.integers(0, 12)),
    ),
    st.tuples(st.just("clear")),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(OPERATION, max_size=120))
def test_takes_what_the_reference_queue_takes(operations: list[tuple[object, ...]]) -> None:
    queue, reference = BroadcastQueue(), ReferenceQueue()
    serial = 0
    for op in operations:
        if op[0] == "push":
            _, key, size, cap, lane = op
            serial += 1
            for q in (queue, reference):
                q.push(key, Nack(serial), size, cap=cap, lane=lane)  # type: ignore[arg-type]
        elif op[0] == "discard":
            assert queue.discard(op[1]) == reference.discard(op[1])
        elif op[0] == "take":
            _, budget, limit, exclude = op
            got = queue.take(budget, limit, exclude=exclude)  # type: ignore[arg-type]
            assert got == reference.take(budget, limit, exclude=exclude)  # type: ignore[arg-type]
        else:
            queue.clear()
            reference.clear()
        assert len(queue) == len(reference)
        assert [(i.key, i.transmits) for i in queue] == [(i.key, i.transmits) for i in reference]
        assert all(queue.get(i.key) is i for i in queue)


def test_dropped_rumors_left_in_buckets_stay_bounded() -> None:
    """Replacing rumors deep in a bucket leaves them behind until a sweep: never more than
    one per queued rumor plus the slack."""
    queue = BroadcastQueue()
    for i in range(100):
        queue.push(i, Nack(i), 10, lane=2)
    for round_ in range(50):
        for i in range(100):
            queue.push(i, Nack(round_ * 100 + i), 10, lane=2)
        held = sum(len(bucket) for buckets in queue._lanes for bucket in buckets)
        assert held <= 2 * len(queue) + MAX_DROPPED_SLACK + 1
    assert len(queue) == 100
    assert [item.key for item in queue] == list(reversed(range(100)))
