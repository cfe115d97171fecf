"""Admission of sockets (task channels in and out, every inbound TCP connection) and of
delegation deadlines: the rules the core applies to the counts and values the shell
hands it."""

from __future__ import annotations

import pytest

from meshnode.core.channel import (
    connection_refusal,
    outbound_refused,
    per_peer_refused,
    tcp_connection_refusal,
)
from meshnode.core.config import NodeConfig
from meshnode.core.node import deadline_problem

CONFIG = NodeConfig.local(
    task_max_connections=10,
    task_max_unauthenticated=4,
    task_max_unauthenticated_per_address=2,
    task_max_connections_per_address=3,
    task_max_connections_per_peer=2,
)


@pytest.mark.parametrize(
    ("open_total", "handshaking", "handshaking_here", "open_here", "expected"),
    [
        (0, 0, 0, 0, None),
        (9, 3, 1, 2, None),  # one below every cap
        (10, 0, 0, 0, "total"),
        (10, 4, 2, 3, "total"),  # the first rule that applies is named
        (5, 4, 0, 0, "unauthenticated"),
        (5, 2, 2, 2, "unauthenticated_per_address"),
        (5, 1, 1, 3, "per_address"),
    ],
)
def test_connection_refusal(
    open_total: int, handshaking: int, handshaking_here: int, open_here: int, expected: str | None
) -> None:
    assert (
        connection_refusal(
            CONFIG,
            open_total=open_total,
            handshaking=handshaking,
            handshaking_from_address=handshaking_here,
            open_from_address=open_here,
        )
        == expected
    )


@pytest.mark.parametrize(("others", "refused"), [(0, False), (1, False), (2, True), (5, True)])
def test_per_peer_cap(others: int, refused: bool) -> None:
    assert per_peer_refused(CONFIG, others) is refused


@pytest.mark.parametrize(
    ("open_total", "refused"), [(0, False), (9, False), (10, True), (11, True)]
)
def test_outbound_cap(open_total: int, refused: bool) -> None:
    """A node opens no task socket of its own once ``task_max_connections`` are open."""
    assert outbound_refused(CONFIG, open_total) is refused


@pytest.mark.parametrize(
    ("open_total", "open_here", "expected"),
    [
        (0, 0, None),
        (99, 7, None),  # one below both limits
        (100, 0, "total"),
        (100, 8, "total"),  # the first rule that applies is named
        (50, 8, "per_address"),
    ],
)
def test_tcp_connection_refusal(open_total: int, open_here: int, expected: str | None) -> None:
    assert (
        tcp_connection_refusal(
            open_total=open_total, open_from_address=open_here, total=100, per_address=8
        )
        == expected
    )


@pytest.mark.parametrize(
    ("deadline_s", "usable"),
    [
        (0.001, True),
        (30, True),
        (0, False),
        (-1.0, False),
        (float("inf"), False),
        (float("nan"), False),
        (True, False),
        ("5", False),
        (None, False),
    ],
)
def test_deadline_problem(deadline_s: object, usable: bool) -> None:
    """The one rule both ``MeshNode.delegate`` and ``NodeCore.start_delegation`` apply."""
    assert (deadline_problem(deadline_s) is None) is usable
