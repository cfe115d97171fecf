"""The plain-words helpers of the ``meshnode`` command, as tables of cases.

Invariants: text from other parties is flattened to one printable line and cut; a failed
delegation is summarised on one line (reason, who was tried, trace); a binding failure is
named only when it is one (an unrelated ``OSError`` is left as it is).
"""

from __future__ import annotations

import errno
import socket
from typing import Any

import pytest

from meshnode.cli import _bind_problem, delegation_failure, one_line
from meshnode.errors import BindError


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [
        ("plain", None, "plain"),
        ("two\nlines\r\n  and\tspace", None, "two lines and space"),
        ("\x1b[2J\x1b]0;owned\x07 erased", None, "[2J ]0;owned erased"),
        ("x" * 50, 10, "x" * 9 + "…"),
        (ValueError("bad\nthing"), None, "bad thing"),
    ],
)
def test_one_line(text: object, limit: int | None, expected: str) -> None:
    assert one_line(text, limit) == expected


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ({"error": "no alive peer offers 'x'"}, "delegation failed: no alive peer offers 'x'"),
        (
            {
                "error": "every candidate failed",
                "trace_id": "ab" * 16,
                "attempts": [
                    {"node": "n" * 52, "outcome": "timeout"},
                    {"node": "m" * 52, "outcome": "failed"},
                ],
            },
            f"delegation failed: every candidate failed; tried {'n' * 10}:timeout, "
            f"{'m' * 10}:failed; trace {'ab' * 16}",
        ),
        (
            {"error": "e", "attempts": [{"node": str(i), "outcome": "failed"} for i in range(8)]},
            "delegation failed: e; tried 0:failed, 1:failed, 2:failed, 3:failed, 4:failed "
            "and 3 more",
        ),
        ({"error": "evil\x1b[2J\nreason" + "!" * 1000}, None),
    ],
)
def test_delegation_failure_is_one_line(answer: dict[str, Any], expected: str | None) -> None:
    line = delegation_failure(answer)
    assert "\n" not in line and all(ch.isprintable() for ch in line)
    if expected is None:
        assert len(line) < 400
    else:
        assert line == expected


def _chained(outer: str, inner: OSError) -> OSError:
    exc = OSError(outer)
    exc.__cause__ = inner
    return exc


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (PermissionError(errno.EACCES, "Permission denied: 'node.db'"), None),
        (OSError("name or service not known"), None),
        (
            _chained("could not bind to local_addr", OSError(errno.EACCES, "Permission denied")),
            "no permission to bind port {port} on 127.0.0.1",
        ),
        (
            BindError("could not bind: [Errno 99] cannot assign requested address"),
            "127.0.0.1 is not an address of this machine",
        ),
        (
            OSError(errno.EADDRINUSE, "Address already in use"),
            "port {port} is in use (UDP or TCP) on 127.0.0.1",
        ),
    ],
)
def test_bind_problem(exc: OSError, expected: str | None) -> None:
    """Classification by the error itself, on a port nothing holds (so the probe finds
    neither protocol taken)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    said = _bind_problem("127.0.0.1", port, exc)
    if expected is None:
        assert said is None
    else:
        assert said is not None and said.startswith(expected.format(port=port)), said


def test_bind_problem_names_the_protocol_holding_the_port() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        port = udp.getsockname()[1]
        said = _bind_problem("127.0.0.1", port, OSError("could not bind to local_addr"))
    assert said is not None and said.startswith(f"port {port} is in use (UDP) on 127.0.0.1")
