"""The demo's guards: paths stay inside the data directory, URLs reach only public
addresses (checked after DNS, every answer, no redirects, bounded size and time), and the
code agent's runs are bounded in time, memory and output and inherit nothing.

No test sends traffic anywhere but loopback: blocked URLs are refused before any
connection, and the redirect, size and timeout rules are checked against a server on
127.0.0.1 with the address policy relaxed for that test only.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from meshnode.demo import guards
from meshnode.demo.guards import UnsafePath, UnsafeURL
from meshnode.demo.sandbox import RunLimits, run_python

# --------------------------------------------------------------------------- paths


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    """A data directory with a file, a nested file and a secret outside it."""
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    (root / "table.csv").write_text("a,b\n1,2\n")
    (root / "sub" / "nested.csv").write_text("a\n3\n")
    (tmp_path / "secret.txt").write_text("outside")
    return root


@pytest.mark.parametrize(
    "name",
    [
        "../secret.txt",
        "sub/../../secret.txt",
        "./../secret.txt",
        "sub/../../data/table.csv",
        "/etc/passwd",
        "",
        "table.csv\x00.txt",
        ".",
        "sub",
        "missing.csv",
    ],
)
def test_paths_outside_or_not_files_are_refused(data_root: Path, name: str) -> None:
    """Traversal, absolute paths, NUL bytes, the root, directories and missing files."""
    with pytest.raises(UnsafePath):
        guards.resolve_safe_path(data_root, name)
    with pytest.raises(UnsafePath):
        guards.read_safe_file(data_root, name, 1024)


@pytest.mark.parametrize("name", ["table.csv", "sub/nested.csv", "./table.csv"])
def test_files_inside_are_read(data_root: Path, name: str) -> None:
    real = guards.resolve_safe_path(data_root, name)
    assert real.is_relative_to(data_root.resolve())
    assert guards.read_safe_file(data_root, name, 1024) == real.read_bytes()


def test_symlink_pointing_out_is_refused(data_root: Path) -> None:
    """A link inside the root to a file outside is refused like a ``../`` path."""
    (data_root / "link.csv").symlink_to(data_root.parent / "secret.txt")
    (data_root / "outdir").symlink_to(data_root.parent)
    for name in ("link.csv", "outdir/secret.txt"):
        with pytest.raises(UnsafePath, match="outside"):
            guards.read_safe_file(data_root, name, 1024)
    # Confinement is by the resolved path: a detour that ends inside the root is fine.
    assert guards.read_safe_file(data_root, "outdir/data/table.csv", 1024) == b"a,b\n1,2\n"


def test_symlink_inside_the_root_is_followed(data_root: Path) -> None:
    (data_root / "alias.csv").symlink_to(data_root / "sub" / "nested.csv")
    assert guards.read_safe_file(data_root, "alias.csv", 1024) == b"a\n3\n"


def test_root_that_is_itself_a_symlink_works(tmp_path: Path, data_root: Path) -> None:
    """The root is compared by its resolved path, so a symlinked root still confines."""
    alias = tmp_path / "alias-root"
    alias.symlink_to(data_root)
    assert guards.read_safe_file(alias, "table.csv", 1024) == b"a,b\n1,2\n"
    with pytest.raises(UnsafePath):
        guards.read_safe_file(alias, "../secret.txt", 1024)


def test_file_over_the_size_cap_is_refused(data_root: Path) -> None:
    (data_root / "big.csv").write_bytes(b"x" * 2048)
    with pytest.raises(UnsafePath, match="limit"):
        guards.read_safe_file(data_root, "big.csv", 1024)
    assert len(guards.read_safe_file(data_root, "big.csv", 2048)) == 2048


# --------------------------------------------------------------------------- addresses

BLOCKED = [
    ("0.0.0.0", "unspecified"),
    ("127.0.0.1", "loopback"),
    ("127.255.0.9", "loopback"),
    ("10.1.2.3", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.254", "private"),
    ("192.168.1.1", "private"),
    ("169.254.169.254", "link-local"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "reserved"),
    ("100.64.0.1", "not globally routable"),
    ("192.0.2.1", "private"),
    ("198.18.0.1", "private"),
    ("::", "unspecified"),
    ("::1", "loopback"),
    ("fe80::1", "link-local"),
    ("fc00::1", "private"),
    ("fd12:3456::1", "private"),
    ("ff02::1", "multicast"),
    ("fec0::1", "site-local"),
    ("2001:db8::1", "private"),
    ("::ffff:127.0.0.1", "loopback"),
    ("::ffff:10.0.0.1", "private"),
    ("::ffff:169.254.169.254", "link-local"),
    ("64:ff9b::7f00:1", "loopback"),
    ("2002:7f00:1::", "loopback"),
    ("2002:c0a8:101::", "private"),
]


@pytest.mark.parametrize(("address", "reason"), BLOCKED)
def test_blocked_ranges(address: str, reason: str) -> None:
    """Every special-purpose range is refused, including IPv4 inside IPv6 forms."""
    got = guards.blocked_reason(ipaddress.ip_address(address))
    assert got is not None and got.startswith(reason), got


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert guards.blocked_reason(ipaddress.ip_address(address)) is None


def test_a_name_is_refused_if_any_answer_is_blocked() -> None:
    """All resolved addresses are checked: one private answer among public ones refuses."""
    guards.check_addresses("example.test", ["8.8.8.8", "2606:4700::1111"])
    with pytest.raises(UnsafeURL, match="private"):
        guards.check_addresses("example.test", ["8.8.8.8", "10.0.0.7"])
    with pytest.raises(UnsafeURL, match="did not resolve"):
        guards.check_addresses("example.test", [])


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/a.csv",
        "file:///etc/passwd",
        "gopher://example.com/",
        "http://user:secret@example.com/a.csv",
        "http:///a.csv",
        "http://example.com:99999/",
        "example.com/a.csv",
        "http://" + "a" * 3000 + ".com/",
    ],
)
def test_malformed_urls_are_refused(url: str) -> None:
    with pytest.raises(UnsafeURL):
        guards.split_url(url)


# --------------------------------------------------------------------------- fetching


class _Server:
    """A loopback HTTP server that counts the requests it receives."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        self.release = asyncio.Event()
        self.port = 0
        self.app = web.Application()
        self.app.router.add_get("/{name}", self.handle)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.hits.append(name)
        if name == "redirect":
            raise web.HTTPFound("/target")
        if name == "declared-big":
            return web.Response(body=b"x" * 5000)
        if name == "chunked-big":
            resp = web.StreamResponse()
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            for _ in range(10):
                await resp.write(b"y" * 1000)
            await resp.write_eof()
            return resp
        if name == "slow":
            await self.release.wait()
        return web.Response(body=b"a,b\n1,2\n")


@pytest.fixture
async def server() -> AsyncIterator[_Server]:
    srv = _Server()
    runner = web.AppRunner(srv.app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    assert site._server is not None
    srv.port = site._server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    try:
        yield srv
    finally:
        srv.release.set()
        await runner.cleanup()


@pytest.mark.parametrize(
    "host",
    ["localhost", "127.0.0.1", "127.1", "2130706433", "0.0.0.0", "[::1]", "[::ffff:127.0.0.1]"],
)
async def test_loopback_urls_are_refused_before_connecting(server: _Server, host: str) -> None:
    """ "localhost" and other spellings of loopback are refused after resolution, and the
    server on that port never sees a request."""
    with pytest.raises(UnsafeURL, match=r"loopback|unspecified"):
        await guards.fetch_url(f"http://{host}:{server.port}/table.csv")
    assert server.hits == []


async def test_loopback_server_is_reachable_when_the_policy_allows(server: _Server) -> None:
    """The control: with the address policy relaxed, the same server answers."""
    body = await guards.fetch_url(
        f"http://localhost:{server.port}/table.csv", is_blocked=lambda _: None
    )
    assert body == b"a,b\n1,2\n"
    assert server.hits == ["table.csv"]


async def test_redirects_are_not_followed(server: _Server) -> None:
    with pytest.raises(UnsafeURL, match="redirects are not followed"):
        await guards.fetch_url(
            f"http://127.0.0.1:{server.port}/redirect", is_blocked=lambda _: None
        )
    assert server.hits == ["redirect"]


@pytest.mark.parametrize("name", ["declared-big", "chunked-big"])
async def test_bodies_over_the_cap_are_refused(server: _Server, name: str) -> None:
    with pytest.raises(UnsafeURL, match="limit"):
        await guards.fetch_url(
            f"http://127.0.0.1:{server.port}/{name}", max_bytes=4096, is_blocked=lambda _: None
        )


async def test_slow_answers_time_out(server: _Server) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(UnsafeURL, match="no answer"):
        await guards.fetch_url(
            f"http://127.0.0.1:{server.port}/slow", timeout_s=0.3, is_blocked=lambda _: None
        )
    assert loop.time() - started < 3.0


# --------------------------------------------------------------------------- code runs


async def test_run_reports_output_and_exit_status() -> None:
    result = await run_python(
        "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"
    )
    assert (result.exit_code, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert not result.timed_out and not result.output_truncated and not result.ok


async def test_run_is_isolated_with_an_empty_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """``python -I``, no inherited variables, a fresh working directory removed after."""
    monkeypatch.setenv("MESHNODE_TEST_SECRET", "do-not-leak")
    code = (
        "import json, os, sys; "
        "print(json.dumps({'isolated': sys.flags.isolated, 'env': dict(os.environ), "
        "'cwd': os.getcwd(), 'files': os.listdir('.')}))"
    )
    result = await run_python(code)
    assert result.ok, result.stderr
    seen = json.loads(result.stdout)
    assert seen["isolated"] == 1
    assert "MESHNODE_TEST_SECRET" not in seen["env"]
    assert not set(seen["env"]) - {"LC_CTYPE"}  # only the interpreter's locale coercion
    assert seen["files"] == []
    assert not _exists(seen["cwd"])


async def test_run_is_killed_at_its_timeout() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await run_python("while True:\n    pass", RunLimits(timeout_s=0.5))
    assert result.timed_out and result.exit_code == -9 and not result.ok
    assert loop.time() - started < 3.0


async def test_timeout_kills_what_the_run_started(tmp_path: Path) -> None:
    """The whole process group dies: a child the snippet spawned does not outlive it."""
    code = (
        "import subprocess, sys, time\n"
        f"p = subprocess.Popen([{sys.executable!r}, '-c', 'import time; time.sleep(60)'])\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    result = await run_python(code, RunLimits(timeout_s=1.0))
    assert result.timed_out
    child = int(result.stdout.split()[0])
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5.0
    while _alive(child):
        assert loop.time() < deadline, f"child {child} outlived the run"
        await asyncio.sleep(0.05)


def _exists(path: str) -> bool:
    return Path(path).exists()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except OSError:
        return False


async def test_memory_limit_stops_large_allocations() -> None:
    result = await run_python(
        "x = bytearray(400 * 1024 * 1024)", RunLimits(memory_bytes=128 * 1024 * 1024)
    )
    assert result.exit_code == 1 and "MemoryError" in result.stderr
    small = await run_python("x = bytearray(16 * 1024 * 1024); print(len(x))")
    assert small.ok and small.stdout.strip() == str(16 * 1024 * 1024)


async def test_output_over_the_cap_is_cut_and_the_run_killed() -> None:
    limits = RunLimits(output_bytes=4096)
    result = await run_python("import sys\nwhile True:\n    sys.stdout.write('z' * 1000)", limits)
    assert result.output_truncated and not result.ok
    assert len(result.stdout) == 4096 and set(result.stdout) == {"z"}


@pytest.mark.parametrize(
    "kwargs",
    [{"timeout_s": 0}, {"timeout_s": 1000}, {"memory_bytes": 0}, {"output_bytes": -1}],
)
def test_run_limits_are_validated(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RunLimits(**kwargs)  # type: ignore[arg-type]


async def test_code_must_be_text_within_bounds() -> None:
    with pytest.raises(ValueError):
        await run_python("print(1)\x00")
    with pytest.raises(ValueError):
        await run_python("#" * 200_000)
