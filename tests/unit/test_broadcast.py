"""The transmit-limited broadcast queue: ordering, limits, replacement and byte budgets."""

from __future__ import annotations

import pytest

from meshnode.core.broadcast import (
    LANE_APP,
    LANE_MEMBERS,
    LANE_OWN,
    LANES,
    MAX_SKIPPED_PER_TAKE,
    BroadcastQueue,
)
from protocol import Message, Nack


def msg(i: int) -> Message:
    """A small distinct message (the queue never looks inside)."""
    return Nack(i)


def test_each_rumor_is_sent_at_most_limit_times() -> None:
    """After `limit` takes a rumor is gone."""
    q = BroadcastQueue()
    q.push("a", msg(1), 10)
    for _ in range(3):
        assert q.take(100, 3) == [msg(1)]
    assert q.take(100, 3) == []
    assert len(q) == 0
    assert not q


def test_fewest_transmitted_first_then_newest() -> None:
    """Fresh rumors go before ones already sent; among equals the newest goes first."""
    q = BroadcastQueue()
    q.push("old", msg(1), 10)
    assert q.take(10, 5) == [msg(1)]  # "old" now sent once
    q.push("b", msg(2), 10)
    q.push("c", msg(3), 10)
    assert q.take(20, 5) == [msg(3), msg(2)]
    assert q.take(100, 5) == [msg(3), msg(2), msg(1)]
    assert [(r.key, r.transmits) for r in q] == [("c", 2), ("b", 2), ("old", 2)]


def test_newer_rumor_replaces_older_with_same_key() -> None:
    """Pushing under an existing key drops the old rumor and resets the count."""
    q = BroadcastQueue()
    q.push("node-x", msg(1), 10)
    q.take(100, 4)
    q.take(100, 4)
    q.push("node-x", msg(2), 12)
    assert len(q) == 1
    item = q.get("node-x")
    assert item is not None
    assert (item.message, item.transmits, item.size) == (msg(2), 0, 12)
    assert q.take(100, 4) == [msg(2)]


def test_budget_is_respected_and_smaller_rumors_still_fit() -> None:
    """A rumor too big for the space left is skipped; a later smaller one is taken."""
    q = BroadcastQueue()
    q.push("small", msg(1), 30)
    q.push("big", msg(2), 80)
    q.push("mid", msg(3), 50)
    taken = q.take(90, 4)
    assert taken == [msg(3), msg(1)]  # newest first: mid (50), big skipped, small (30)
    assert q.get("big") is not None
    assert q.get("big").transmits == 0  # type: ignore[union-attr]
    assert q.take(79, 4) == [msg(3)]  # big never fits in 79; mid (sent once) does
    assert q.take(0, 4) == []


def test_limit_drop_expires_over_sent_rumors() -> None:
    """When the cluster shrinks and the limit drops, rumors already sent that often go."""
    q = BroadcastQueue()
    q.push("a", msg(1), 10)
    for _ in range(3):
        assert q.take(100, 8) == [msg(1)]
    q.push("b", msg(2), 10)
    assert q.take(100, 2) == [msg(2)]  # "a" (sent 3 ≥ 2 times) expired first
    assert "a" not in q
    assert q.take(100, 2) == [msg(2)]
    assert len(q) == 0


def test_exclude_and_discard() -> None:
    """The excluded key is left in place; discard removes a rumor."""
    q = BroadcastQueue()
    q.push("a", msg(1), 10)
    q.push("b", msg(2), 10)
    assert q.take(100, 4, exclude="b") == [msg(1)]
    assert q.get("b").transmits == 0  # type: ignore[union-attr]
    assert q.discard("b")
    assert not q.discard("b")
    q.clear()
    assert len(q) == 0


def test_take_gives_up_after_too_many_skips() -> None:
    """A queue of rumors too big for the space left does not make a take scan it all."""
    q = BroadcastQueue()
    q.push("tiny", msg(0), 5)
    for i in range(1, 1000):
        q.push(i, msg(i), 500)
    assert q.take(100, 4) == []  # "tiny" is the oldest, beyond the skip cap
    assert MAX_SKIPPED_PER_TAKE < 1000
    assert len(q) == 1000


def test_a_capped_rumor_stops_at_its_cap_below_the_limit() -> None:
    """A rumor with a cap is dropped after `cap` sends; an uncapped one goes on to the
    limit. The cap never raises the limit."""
    q = BroadcastQueue()
    q.push("capped", msg(1), 10, cap=2)
    q.push("free", msg(2), 10)
    q.push("high", msg(3), 10, cap=50)
    sent: dict[int, int] = {}
    for _ in range(10):
        for message in q.take(100, 5):
            assert isinstance(message, Nack)
            sent[message.seq] = sent.get(message.seq, 0) + 1
    assert sent == {1: 2, 2: 5, 3: 5}
    assert not q
    with pytest.raises(ValueError, match="cap must be at least 1"):
        q.push("bad", msg(4), 10, cap=0)
    assert "bad" not in q


def test_lanes_are_filled_in_order_whatever_the_transmit_counts() -> None:
    """A take fills the packet from lane 0, then lane 1, then lane 2: a rumor of an earlier
    lane goes first even after it was sent more often than fresh rumors of a later one."""
    q = BroadcastQueue()
    q.push("own", msg(1), 10, lane=LANE_OWN)
    q.push("member", msg(2), 10, lane=LANE_MEMBERS)
    assert q.take(20, 8) == [msg(1), msg(2)]
    for i in range(10):  # a flood of fresh application rumors, never sent
        q.push(("app", i), msg(100 + i), 10, lane=LANE_APP)
    assert q.take(40, 8) == [msg(1), msg(2), msg(109), msg(108)]
    assert [(r.key, r.lane, r.transmits) for r in q][:2] == [
        ("own", LANE_OWN, 2),
        ("member", LANE_MEMBERS, 2),
    ]
    # Limits apply per rumor in every lane: the earlier lanes run out, the app lane follows.
    for _ in range(6):
        q.take(20, 8)
    assert "own" not in q and "member" not in q
    assert q.take(20, 8) == [msg(107), msg(106)]


def test_a_bad_lane_is_refused() -> None:
    q = BroadcastQueue()
    for lane in (-1, LANES):
        with pytest.raises(ValueError, match="lane"):
            q.push("x", msg(1), 10, lane=lane)
    assert len(q) == 0
    with pytest.raises(ValueError, match="lanes"):
        BroadcastQueue(lanes=0)
