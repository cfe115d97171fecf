"""Admission of task sockets: the caps the core applies to the counts the shell keeps."""

from __future__ import annotations

import pytest

from meshnode.core.channel import connection_refusal, per_peer_refused
from meshnode.core.config import NodeConfig

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
