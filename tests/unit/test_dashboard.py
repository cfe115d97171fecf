"""The dashboard's pure parts: the delta between two views and its application, and the
stream tickets (a MAC, an expiry, one use each)."""

from __future__ import annotations

from typing import Any

import pytest

from meshnode.runtime.dashboard import (
    MAX_TICKET_CHARS,
    TicketBook,
    apply_delta,
    diff,
    wire_view,
)


def _m(node_id: str, state: str = "alive", rtt: float | None = None) -> dict[str, Any]:
    return {"node_id": node_id, "state": state, "rtt_ms": rtt}


BASE: dict[str, Any] = {
    "node": {"status": "ok"},
    "metrics": {"members": {"alive": 2}},
    "members": {"a": _m("a"), "b": _m("b")},
    "trust": {"b": {"node_id": "b", "trust": 0.5}},
    "tasks": {"in_flight": [], "recent": []},
}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({}, {}),
        (
            {"members": {"a": _m("a"), "b": _m("b", "suspect")}},
            {"members": {"upsert": [_m("b", "suspect")], "remove": []}},
        ),
        (
            {"members": {"a": _m("a")}},
            {"members": {"upsert": [], "remove": ["b"]}},
        ),
        (
            {"members": {"a": _m("a"), "b": _m("b"), "c": _m("c", rtt=1.5)}},
            {"members": {"upsert": [_m("c", rtt=1.5)], "remove": []}},
        ),
        ({"node": {"status": "degraded"}}, {"node": {"status": "degraded"}}),
        (
            {"trust": {"b": {"node_id": "b", "trust": 0.6}}},
            {"trust": {"upsert": [{"node_id": "b", "trust": 0.6}], "remove": []}},
        ),
    ],
    ids=["nothing", "suspected", "forgotten", "joined", "section-whole", "trust-moved"],
)
def test_a_delta_carries_only_what_changed_and_applies_exactly(
    change: dict[str, Any], expected: dict[str, Any]
) -> None:
    new = {**BASE, **change}
    delta = diff(BASE, new)
    assert delta == expected
    assert apply_delta(BASE, delta) == new


def test_one_change_among_a_thousand_members_is_one_entry() -> None:
    """The page gets one upsert when one of 1,000 members changes, not 1,000 entries."""
    old = {"members": {f"n{i:04}": _m(f"n{i:04}", rtt=1.0) for i in range(1000)}}
    new = {"members": dict(old["members"])}
    new["members"]["n0500"] = _m("n0500", "suspect", rtt=1.0)
    delta = diff(old, new)
    assert delta == {"members": {"upsert": [_m("n0500", "suspect", rtt=1.0)], "remove": []}}
    assert len(wire_view(new)["members"]) == 1000


def test_a_ticket_opens_one_stream_within_its_lifetime() -> None:
    book = TicketBook(ttl=30)
    ticket = book.issue(1_000.0)
    assert len(ticket) <= MAX_TICKET_CHARS
    assert book.redeem(ticket, 1_010.0) is None
    assert book.redeem(ticket, 1_011.0) == "ticket already used"
    late = book.issue(1_000.0)
    assert book.redeem(late, 1_031.0) == "expired ticket"


@pytest.mark.parametrize(
    ("forge", "reason"),
    [
        (lambda t: t[:-1] + ("0" if t[-1] != "0" else "1"), "invalid ticket"),
        (lambda t: "9999999999" + t[t.index(".") :], "invalid ticket"),
        (lambda t: t + ".x", "malformed ticket"),
        (lambda t: "x" * (MAX_TICKET_CHARS + 1), "malformed ticket"),
        (lambda t: "", "malformed ticket"),
        (lambda t: TicketBook().issue(1_000.0), "invalid ticket"),  # another node's key
    ],
    ids=["mac-flipped", "expiry-extended", "extra-part", "too-long", "empty", "foreign-key"],
)
def test_a_forged_ticket_is_refused(forge: Any, reason: str) -> None:
    book = TicketBook()
    assert book.redeem(forge(book.issue(1_000.0)), 1_001.0) == reason


def test_used_tickets_are_remembered_within_a_bound() -> None:
    """Used nonces are kept until they expire, at most ``max_used``; when the book is full
    of live ones a new stream waits (and it frees itself once they expire)."""
    book = TicketBook(ttl=30, max_used=3)
    for _ in range(3):
        assert book.redeem(book.issue(1_000.0), 1_000.0) is None
    assert book.redeem(book.issue(1_000.0), 1_000.0) == "too many streams opened recently"
    assert book.redeem(book.issue(1_040.0), 1_040.0) is None  # the old ones expired
