"""The runtime's limits, as tables of cases: JSON depth, token buckets, connection
admission, the descriptor reserve, query texts, capped body reads, and the new
``NodeConfig`` fields' validation.

Invariants: each limit admits exactly up to its documented value and refuses beyond it
with a reason; refusals change no state.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import StreamReader
from aiohttp.base_protocol import BaseProtocol

from meshnode import NodeConfig
from meshnode.runtime.api import MAX_JSON_DEPTH, RateLimiter, json_depth
from meshnode.runtime.discovery import MAX_QUERY_TAGS, check_query
from meshnode.runtime.transport import (
    NOFILE_RESERVE_MIN,
    BodyTooLarge,
    ConnectionGuard,
    effective_connection_limit,
    read_capped,
)


def _nested(depth: int) -> Any:
    value: Any = 1
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


@pytest.mark.parametrize(
    ("value", "depth"),
    [
        (1, 0),
        ("text", 0),
        ([], 1),
        ({}, 1),
        ({"a": [1, {"b": []}]}, 4),
        ([[], [[[]]], []], 4),
        (_nested(MAX_JSON_DEPTH), MAX_JSON_DEPTH),
    ],
)
def test_json_depth(value: Any, depth: int) -> None:
    assert json_depth(value) == depth


def test_json_depth_stops_early_past_the_limit() -> None:
    """A very deep value is measured without recursion and reported as over the limit."""
    assert json_depth(_nested(50_000)) > MAX_JSON_DEPTH


@pytest.mark.parametrize(
    ("rate", "burst", "times", "allowed"),
    [
        # (refill/s, burst, request instants, which are allowed)
        (1.0, 3, [0, 0, 0, 0], [True, True, True, False]),
        (1.0, 3, [0, 0, 0, 0, 1.0], [True, True, True, False, True]),
        (2.0, 1, [0, 0.25, 0.5, 0.6, 1.0], [True, False, True, False, True]),
        (10.0, 2, [0, 0, 0, 100], [True, True, False, True]),
    ],
)
def test_token_bucket(rate: float, burst: int, times: list[float], allowed: list[bool]) -> None:
    limiter = RateLimiter(rate, burst)
    assert [limiter.allow("10.0.0.1", t) for t in times] == allowed
    assert limiter.refused == allowed.count(False)


def test_token_buckets_are_per_address_and_bounded() -> None:
    limiter = RateLimiter(1.0, 1, max_buckets=2)
    assert limiter.allow("a", 0)
    assert not limiter.allow("a", 0)
    assert limiter.allow("b", 0)  # another address has its own bucket
    assert limiter.allow("c", 0)  # evicts "a", the least recently seen
    assert limiter.allow("a", 0)  # forgotten: comes back with a full bucket
    assert len(limiter._buckets) == 2


def test_connection_guard_admits_up_to_its_limits() -> None:
    guard = ConnectionGuard(per_address=2, total=3, header_timeout=1.0)
    assert [guard.admit("a") for _ in range(3)] == [None, None, "per_address"]
    assert guard.admit("b") is None
    assert guard.admit("c") == "total"
    assert guard.open == 3
    guard.release("a")
    assert guard.admit("c") is None
    for host in ("a", "b", "c"):
        guard.release(host)
    assert guard.open == 0
    assert not guard.open_by_address


@pytest.mark.parametrize(
    ("configured", "soft", "effective"),
    [
        (4096, 1_048_576, 4096),
        (4096, 20_000, 4096),
        (4096, 4096, 4096 - 1024),
        (4096, 1024, 1024 - NOFILE_RESERVE_MIN),
        (100, 1024, 100),
        (4096, 200, 1),
    ],
)
def test_effective_connection_limit_keeps_a_reserve(
    configured: int, soft: int, effective: int
) -> None:
    assert effective_connection_limit(configured, soft) == effective


@pytest.mark.parametrize(
    ("description", "name", "tags", "error"),
    [
        ("x" * 100, None, (), None),
        ("x" * 101, None, (), "description is 101 characters; the limit is 100"),
        (None, "n" * 128, (), None),
        (None, "n" * 129, (), "capability_name is 129 characters"),
        ("q", None, ("t",) * MAX_QUERY_TAGS, None),
        ("q", None, ("t",) * (MAX_QUERY_TAGS + 1), f"{MAX_QUERY_TAGS + 1} tags"),
        ("q", None, ("t" * 65,), "tag of 65 characters"),
    ],
)
def test_query_texts_are_bounded(
    description: str | None, name: str | None, tags: tuple[str, ...], error: str | None
) -> None:
    if error is None:
        check_query(description, name, tags, max_chars=100)
    else:
        with pytest.raises(ValueError, match=error):
            check_query(description, name, tags, max_chars=100)


def _stream(chunks: list[bytes]) -> StreamReader:
    loop = asyncio.get_running_loop()
    reader = StreamReader(BaseProtocol(loop), 2**16, loop=loop)
    for chunk in chunks:
        reader.feed_data(chunk)
    reader.feed_eof()
    return reader


@pytest.mark.parametrize(
    ("chunks", "declared", "cap", "result"),
    [
        ([b"abc", b"def"], None, 6, b"abcdef"),
        ([b"abc", b"defg"], None, 6, None),
        ([b"abc"], 3, 3, b"abc"),
        ([b"abc"], 7, 6, None),  # refused on the declared length, nothing read
        ([], None, 0, b""),
    ],
)
async def test_read_capped(
    chunks: list[bytes], declared: int | None, cap: int, result: bytes | None
) -> None:
    stream = _stream(chunks)
    if result is None:
        with pytest.raises(BodyTooLarge):
            await read_capped(stream, cap, declared, chunk=2)
    else:
        assert await read_capped(stream, cap, declared, chunk=2) == result


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("http_header_timeout", 0),
        ("http_keepalive_timeout", -1.0),
        ("max_connections_per_address", 0),
        ("max_connections_total", 0),
        ("max_connections_per_address", 5000),  # above the total of 4096
        ("api_rate_per_s", 0),
        ("api_rate_per_s", float("inf")),
        ("api_rate_burst", 0),
        ("max_query_chars", 0),
    ],
)
def test_runtime_config_fields_are_validated(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        NodeConfig(**{field: value})


def test_the_descriptor_soft_limit_is_raised_to_the_hard_limit() -> None:
    """In a process started with a low soft ``RLIMIT_NOFILE``, the runtime raises it to
    the hard limit (a real child process; the limit is per process)."""
    import resource
    import subprocess
    import sys

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(256, hard)
    code = (
        "import resource\n"
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({low}, {hard}))\n"
        "from meshnode.runtime.transport import raise_nofile_limit\n"
        "print(*raise_nofile_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    expected = hard if hard != resource.RLIM_INFINITY else 1 << 20
    assert [int(x) for x in out] == [expected, hard, expected]
