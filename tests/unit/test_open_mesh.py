"""A node reachable from other hosts needs admission, or ``open`` said on purpose.

Invariants: :func:`meshnode.core.config.admission_problem` returns None for a node bound
and advertised on loopback (zero-config on one machine), for one with a keyring or a mesh
authority, and for ``open=True``; for any other it returns one line naming the commands
that fix it (``meshnode keys init``, ``--keyring``, ``--authority``, ``--open``).
"""

from __future__ import annotations

import pytest

from meshnode.core.config import NodeConfig, admission_problem, is_loopback_host

AUTHORITY = "a" * 52


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("192.168.1.2", False),
        ("fe80::1%eth0", False),
        ("example.org", False),
        ("localhost.example.org", False),
        ("", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


@pytest.mark.parametrize(
    ("host", "advertise", "keyring", "authority", "open_", "refused"),
    [
        ("127.0.0.1", None, False, False, False, False),
        ("::1", None, False, False, False, False),
        ("0.0.0.0", None, False, False, False, True),
        ("10.0.0.5", None, False, False, False, True),
        ("127.0.0.1", "203.0.113.7", False, False, False, True),  # advertised to others
        ("0.0.0.0", "127.0.0.1", False, False, False, True),  # bound where others reach
        ("0.0.0.0", None, True, False, False, False),
        ("0.0.0.0", None, False, True, False, False),
        ("0.0.0.0", None, True, True, False, False),
        ("0.0.0.0", None, False, False, True, False),
    ],
)
def test_admission_table(
    host: str,
    advertise: str | None,
    keyring: bool,
    authority: bool,
    open_: bool,
    refused: bool,
) -> None:
    config = NodeConfig.local(
        host=host,
        advertise_host=advertise,
        authority=AUTHORITY if authority else None,
        open=open_,
    )
    problem = admission_problem(config, has_keyring=keyring)
    assert (problem is not None) is refused
    if problem is not None:
        assert "\n" not in problem
        for fix in ("meshnode keys init", "--keyring", "--authority", "--open"):
            assert fix in problem
