"""The asyncio shell keeps working when an effect fails, a peer is hostile or the disk is
full, and says so in ``/v1/health``.

Invariants (real nodes on 127.0.0.1, real UDP, TCP and SQLite):

* one effect that raises (a UDP send the socket refuses) is counted, the driver keeps
  probing, and health says ``degraded`` with the reason;
* a driver that dies is restarted (with a counted restart) and probing resumes;
* inbound TCP connections are capped per address and in total (excess closed at once and
  counted), a silent connection is closed after the header timeout, and the node's own
  outgoing connections keep working while every inbound slot is held;
* peer routes refuse bodies over their caps with 413 before reading them, JSON routes
  refuse big (413) and deep (400) bodies and over-long query texts (400);
* a full disk neither stops persistence nor loses what was not written, holds back new
  opinions until the failed own record is durable, and is reported in health.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import uvloop
from aiohttp import web

from meshnode import MeshNode, NodeConfig, capability
from meshnode.core.effects import SendPacket
from meshnode.core.mesh import FetchManifest
from meshnode.runtime.node import wait_for
from meshnode.runtime.store import DB_FILE, NodeStore
from protocol import Alive, Identity, Ping, signing_bytes
from tests.integration.cluster import non_loopback_address


class Echo(MeshNode):
    @capability(name="echo", description="Echo the payload back")
    async def echo(self, payload: dict[str, Any]) -> dict[str, Any]:
        return payload


def _config(name: str, seeds: tuple[str, ...] = (), **overrides: Any) -> NodeConfig:
    return NodeConfig.local(name=name, port=0, seeds=seeds, embedder="hashing", **overrides)


def _seed(node: MeshNode) -> tuple[str, ...]:
    return (f"127.0.0.1:{node.address[1]}",)


def _signed_alive(identity: Identity, host: str, port: int) -> Alive:
    alive = Alive(identity.node_id, 0, host, port, bytes(64))
    return Alive(identity.node_id, 0, host, port, identity.sign(signing_bytes(alive)))


def _run_on_uvloop(coro: Any) -> Any:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


# ---------------------------------------------------------------------------- item 1


def test_a_send_that_raises_is_counted_and_probing_goes_on(tmp_path: Path) -> None:
    """A send the socket refuses (an IPv6 address on a node bound on IPv4: under uvloop the
    UDP send raises inside the driver). The core refuses such addresses off the wire, so the
    packet is put in the core's effect list directly, a stand-in for any effect that fails.
    The failure is counted per effect kind and error class, health turns ``degraded``
    naming it, and the node keeps probing.

    On the unfixed code (with a stranger's ``Alive`` at ``::1``, which it accepted): the
    driver task died with the first send (``ValueError: ('::1', 9): socket family
    mismatch``); the probe counter stayed at 0 for 6 s and for good, while health said
    ``ok``."""

    async def scenario() -> None:
        peer = MeshNode(_config("peer"))
        await peer.start()
        node = MeshNode(_config("victim", _seed(peer)))
        await node.start()
        try:
            await wait_for(lambda: node.core.membership.member(peer.node_id) is not None, 5)
            bad = SendPacket(("::1", 9), (Ping(1, peer.node_id),))
            node.core._effects.append(bad)
            node._dispatch()
            await wait_for(lambda: any(k == "SendPacket" for k, _ in node.effect_failures), 10)
            probes = node.core.membership.counters["probes"]
            await wait_for(lambda: node.core.membership.counters["probes"] >= probes + 5, 10)
            health = node.health()
            assert health["status"] == "degraded"
            assert any("SendPacket" in reason for reason in health["reasons"])
            assert any(key.startswith("SendPacket/") for key in health["effect_failures"])
            assert peer.core.membership.member(node.node_id).state.name == "ALIVE"
        finally:
            try:
                await node.aclose()
            finally:
                await peer.aclose()

    _run_on_uvloop(scenario())


class _TickFailsOnce(MeshNode):
    """A node whose core tick raises once (a stand-in for a bug in the core)."""

    failed = False

    def _tick(self, now: float) -> None:
        if not self.failed:
            self.failed = True
            raise RuntimeError("tick failed")
        super()._tick(now)


async def test_a_dead_driver_is_restarted_and_reported() -> None:
    """The driver task is supervised: when it dies it is restarted after a backoff, the
    restart is counted, health is ``degraded`` with the error, and probing goes on.

    On the unfixed code: no supervision, the driver ended with the exception and the
    restart count (absent) never moved."""
    peer = MeshNode(_config("peer"))
    await peer.start()
    node = _TickFailsOnce(_config("victim", _seed(peer)))
    await node.start()
    try:
        await wait_for(lambda: getattr(node, "driver_restarts", 0) == 1, 5)
        probes = node.core.membership.counters["probes"]
        await wait_for(lambda: node.core.membership.counters["probes"] >= probes + 3, 10)
        health = node.health()
        assert health["status"] == "degraded"
        assert any("tick failed" in reason for reason in health["reasons"])
        assert health["driver_restarts"] == 1
    finally:
        await node.aclose()
        await peer.aclose()


# ---------------------------------------------------------------------------- item 3


def _open_from(source: str, port: int, n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((source, 0))
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            sock.connect(("127.0.0.1", port))
        socks.append(sock)
    return socks


def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


HELD_HEADER_TIMEOUT_S = 8.0
"""The header timeout of the connection-cap test: the held connections must outlive the
counting, then be closed by it."""


async def test_connections_are_capped_per_address_and_in_total() -> None:
    """With 30 per address and 40 in total: 30 connections from one address are held,
    the next ones from it are closed at once (``refused_per_address``), a second address
    gets the remaining 10 and then ``refused_total``; silent connections are closed after
    the header timeout; while every slot is held the node still fetches a peer's new
    manifest over its own outgoing connection.

    On the unfixed code (which has no such settings; measured with its defaults): 0 of the
    80 connections were closed after 3 s."""
    peer = Echo(_config("peer"))
    await peer.start()
    node = MeshNode(
        _config(
            "victim",
            _seed(peer),
            max_connections_per_address=30,
            max_connections_total=40,
            # Long enough that no held connection times out before the counts are read,
            # on a loaded machine too (1.5 s did, once).
            http_header_timeout=HELD_HEADER_TIMEOUT_S,
        )
    )
    await node.start()
    socks: list[socket.socket] = []
    try:
        await wait_for(lambda: node.core.manifests.get(peer.node_id) is not None, 10)
        socks = _open_from("127.0.0.2", node.address[1], 40)
        socks += _open_from("127.0.0.3", node.address[1], 40)
        await wait_for(
            lambda: (
                node.health()["connections"].get("refused_total", 0) >= 30
                and node.health()["connections"].get("refused_per_address", 0) >= 10
            ),
            5,
        )
        guard = node.health()["connections"]
        assert guard["open"] == 40
        assert guard["refused_per_address"] == 10
        assert sum(_closed_by_peer(s) for s in socks) >= 40  # refused ones, closed at once
        assert guard["refused_total"] >= 30  # and any peer connection meanwhile
        # The node's own outgoing connections still work: it fetches a changed manifest.
        peer.add_capability(_noop, name="late", description="added while flooded")
        await wait_for(
            lambda: any(
                c.name == "late" for c in node.core.manifests.get(peer.node_id).capabilities
            ),
            10,
        )
        # Silent connections are closed after the header timeout.
        await wait_for(
            lambda: node.health()["connections"].get("header_timeouts", 0) >= 30,
            HELD_HEADER_TIMEOUT_S + 5,
        )
        # What is left open is the peer's own exchanges, which come and go.
        await wait_for(lambda: node.health()["connections"]["open"] <= 5, 10)
        await wait_for(lambda: all(_closed_by_peer(s) for s in socks), 5)
    finally:
        for sock in socks:
            sock.close()
        await node.aclose()
        await peer.aclose()


async def _noop(payload: dict[str, Any]) -> dict[str, Any]:
    return payload


async def test_an_idle_keep_alive_connection_is_closed() -> None:
    """A client that made one request and then stays idle is disconnected after
    ``http_keepalive_timeout``.

    On the unfixed code: the idle connection was still open after 3 s (aiohttp's 3630 s
    default applied)."""
    node = MeshNode(_config("victim", http_keepalive_timeout=0.5))
    await node.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", node.address[1])
        writer.write(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert b"200" in head.split(b"\r\n")[0]
        length = int(
            next(
                line.split(b":")[1]
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
        )
        await reader.readexactly(length)
        assert await asyncio.wait_for(reader.read(1), 5) == b""  # closed by the server
        writer.close()
    finally:
        await node.aclose()


# ---------------------------------------------------------------------------- items 2, 4, 5


async def test_oversized_and_hostile_bodies_are_refused_early() -> None:
    """Peer routes: a declared 16 MiB push-pull and a 2 MiB records post get 413 without
    the body being read; a chunked push-pull body is cut off with 413 past its cap. JSON
    routes: an 8 MB discover body is 413, 100,000-deep JSON is 400, an over-long
    description is 400 (in Python: ValueError), and each says why.

    On the unfixed code: the 16 MiB push-pull was read whole and decoded (400, not 413),
    the 8 MB discover was embedded (200 after 2.1 s with the hashing embedder), and the
    deep JSON bodies gave 500 (RecursionError)."""
    node = MeshNode(_config("victim"))
    await node.start()
    url = node.url
    try:
        async with aiohttp.ClientSession() as session:

            async def post(path: str, data: Any, **kw: Any) -> tuple[int, str]:
                async with session.post(url + path, data=data, **kw) as resp:
                    return resp.status, await resp.text()

            zero_sig = io.BytesIO(b"\x00" * (16 * 1024 * 1024))
            status, _ = await post("/v1/wire/pushpull", zero_sig)
            assert status == 413

            async def chunks() -> Any:
                for _ in range(12):
                    yield b"\x00" * (1024 * 1024)

            status, _ = await post("/v1/wire/pushpull", chunks())
            assert status == 413
            status, _ = await post("/v1/wire/records", io.BytesIO(b"\x00" * (2 * 1024 * 1024)))
            assert status == 413

            big = json.dumps({"description": "x" * 8_000_000})
            status, _ = await post("/v1/discover", io.BytesIO(big.encode()))
            assert status == 413
            deep = '{"description": ' + "[" * 30_000 + "]" * 30_000 + "}"
            status, text = await post("/v1/discover", deep)
            assert status == 400
            assert "nested deeper" in text
            deeper = '{"capability": "echo", "input": ' + "[" * 100_000 + "]" * 100_000 + "}"
            status, text = await post("/v1/delegate", deeper)
            assert status == 400
            assert "nested deeper" in text
            shallow_but_deep = {"description": "x", "tags": []}
            value: Any = []
            for _ in range(40):
                value = [value]
            shallow_but_deep["tags"] = value
            status, text = await post("/v1/discover", json.dumps(shallow_but_deep))
            assert status == 400
            assert "nested deeper" in text
            status, text = await post("/v1/discover", json.dumps({"description": "y" * 2_001}))
            assert status == 400
            assert "limit is 2000" in text
            status, text = await post(
                "/v1/delegate", json.dumps({"capability": "echo", "input": value})
            )
            assert status == 400
        with pytest.raises(ValueError, match="limit is 2000"):
            await node.discover("z" * 2_001)
        assert node.drops["http_body_too_large"] >= 3
    finally:
        await node.aclose()


async def test_discover_is_rate_limited_for_remote_callers_not_loopback() -> None:
    """A non-loopback caller gets ``api_rate_burst`` discovers back to back, then 429 with
    Retry-After; a loopback caller is not limited.

    On the unfixed code: all 8 remote requests were answered 200 (measured with
    ``api_rate_burst`` absent, i.e. without any limit)."""
    address = non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    token = "remote-caller-token-0123"  # remote callers need the api token to discover
    node = MeshNode(
        _config(
            "victim",
            host="0.0.0.0",
            advertise_host="127.0.0.1",
            api_rate_burst=3,
            api_token=token,
            open=True,
        )
    )
    await node.start()
    port = node.address[1]
    body = {"description": "echo"}
    auth = {"Authorization": f"Bearer {token}"}
    try:
        async with aiohttp.ClientSession() as session:
            remote = []
            for _ in range(8):
                url = f"http://{address}:{port}/v1/discover"
                async with session.post(url, json=body, headers=auth) as r:
                    remote.append((r.status, r.headers.get("Retry-After")))
            local = []
            for _ in range(8):
                async with session.post(f"http://127.0.0.1:{port}/v1/discover", json=body) as r:
                    local.append(r.status)
        assert [s for s, _ in remote[:3]] == [200, 200, 200]
        assert all(s == 429 and retry is not None for s, retry in remote[3:5])
        assert local == [200] * 8
    finally:
        await node.aclose()


# ---------------------------------------------------------------------------- item 6


@contextlib.contextmanager
def _small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
            check=True,
            capture_output=True,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {exc}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def _fill(path: Path) -> None:
    """Write zeros to ``path`` until the file system is full."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    block = b"\x00" * 4096
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, block)
    finally:
        os.close(fd)


async def test_a_full_disk_is_retried_reported_and_loses_nothing(tmp_path: Path) -> None:
    """The data dir's disk fills up: flushes fail and are retried (the loop never stops),
    health is ``degraded`` with the error, a peer that joins meanwhile and our own opinion
    are not lost, and no further opinion is signed while our own record is not durable.
    Once space is back, everything is written and health is ``ok`` again.

    On the unfixed code: ``record_outcome`` raised ``sqlite3.OperationalError: database
    or disk is full`` to its caller; and (measured with the same full tmpfs, no opinion)
    the first failed flush ended the persist loop (0 tasks left) with health ``ok``, and
    7 s after space was back the member that joined meanwhile was still unwritten."""
    with _small_tmpfs(tmp_path / "disk", "2m") as disk:
        data_dir = disk / "node"
        provider = Echo(_config("provider"))
        await provider.start()
        node = MeshNode(_config("keeper", _seed(provider), data_dir=str(data_dir)))
        await node.start()
        late: MeshNode | None = None
        filler = disk / "filler"
        try:
            await wait_for(lambda: node.core.manifests.get(provider.node_id) is not None, 10)
            await node.discovery.settled()
            node._flush()
            _fill(filler)
            # An own opinion whose durable write fails, and a member that joins.
            before = node.core.ledger.get(node.node_id, provider.node_id)
            node.record_outcome(provider.node_id, 1.0)
            late = MeshNode(_config("late", _seed(node)))
            await late.start()
            await wait_for(lambda: node.core.membership.member(late.node_id) is not None, 10)
            await wait_for(lambda: node.health()["status"] == "degraded", 15)
            reasons = " ".join(node.health()["reasons"])
            assert "persistence failing" in reasons
            # Held back: a second outcome is folded into the view but not signed.
            held = node.core.ledger.get(node.node_id, provider.node_id)
            node.record_outcome(provider.node_id, 1.0)
            assert node.core.ledger.get(node.node_id, provider.node_id) == held
            assert node.opinion(provider.node_id)[1] == (held.outcomes if held else 0) + 1
            assert before != held  # the first one was signed (and is queued for gossip)
            filler.unlink()
            await wait_for(lambda: node.health()["status"] == "ok", 15)
            signed = node.core.ledger.get(node.node_id, provider.node_id)
            assert signed is not None and held is not None
            assert signed.outcomes == held.outcomes + 1
        finally:
            with contextlib.suppress(OSError):
                filler.unlink()
            if late is not None:
                await late.aclose()
            await node.aclose()
            await provider.aclose()
        store = NodeStore(data_dir)
        try:
            assert late.node_id in {r.node for r in store.load_members()}
            mine = [r for r in store.load_records() if r.observer == node.node_id]
            assert mine and max(r.outcomes for r in mine) == signed.outcomes
        finally:
            store.close()


# ---------------------------------------------------------------------------- items 7, 8


async def test_data_dir_and_database_are_private(tmp_path: Path) -> None:
    """An existing 0777 data dir we own becomes 0700; the SQLite file and its -wal and
    -shm companions are 0600.

    On the unfixed code: the dir stayed 0777 and the database was 0644."""
    data_dir = tmp_path / "d"
    data_dir.mkdir()
    os.chmod(data_dir, 0o777)
    node = MeshNode(_config("private", data_dir=str(data_dir)))
    await node.start()
    try:
        assert data_dir.stat().st_mode & 0o777 == 0o700
        for name in (DB_FILE, DB_FILE + "-wal", DB_FILE + "-shm", "node.key"):
            assert (data_dir / name).stat().st_mode & 0o777 == 0o600, name
    finally:
        await node.aclose()


async def test_a_second_node_on_the_same_data_dir_fails_at_once(tmp_path: Path) -> None:
    """The data dir is locked while a node runs: a second one on it fails at start with
    an error naming the holder's pid; once the first closes, the dir can be used again.

    On the unfixed code: the second node started under the same node id."""
    first = MeshNode(_config("first", data_dir=str(tmp_path)))
    await first.start()
    second = MeshNode(_config("second", data_dir=str(tmp_path)))
    try:
        started = time.monotonic()
        with pytest.raises(Exception, match=f"in use by process {os.getpid()}"):
            await second.start()
        assert time.monotonic() - started < 5
    finally:
        await first.aclose()
    third = MeshNode(_config("third", data_dir=str(tmp_path)))
    await third.start()
    try:
        assert third.node_id == first.node_id
    finally:
        await third.aclose()


# ---------------------------------------------------------------------------- item 2, client


class _Firehose:
    """A hostile peer's HTTP server: answers every request with ``size`` bytes of zeros,
    streamed (no Content-Length), and counts how many bytes it got to send."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.sent = 0
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        async def handler(request: web.Request) -> web.StreamResponse:
            await request.read()
            resp = web.StreamResponse()
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            block = b"\x00" * (256 * 1024)
            with contextlib.suppress(ConnectionError, OSError):
                while self.sent < self.size:
                    await resp.write(block)
                    self.sent += len(block)
                await resp.write_eof()
            return resp

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        self.runner = web.AppRunner(app, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def test_a_peer_cannot_make_us_read_an_endless_reply() -> None:
    """A hostile peer answers a push-pull and a manifest fetch with 256 MiB streamed
    bodies. The node stops reading past its caps (16 MiB for a push-pull reply,
    ``MAX_MANIFEST_BYTES`` for a manifest), aborts the connection and counts it.

    On the unfixed code: the push-pull reply was read whole (268,435,456 bytes in memory)
    before the frame was refused as too large; no drop was counted for the size."""
    firehose = _Firehose(256 * 1024 * 1024)
    await firehose.start()
    node = MeshNode(_config("victim", tcp_timeout=20.0))
    await node.start()
    try:
        await node._push_pull(("127.0.0.1", firehose.port), False)
        assert node.drops["push_pull_BodyTooLarge"] == 1
        assert firehose.sent < 48 * 1024 * 1024
        firehose.sent = 0
        await node._fetch_manifest(FetchManifest("x" * 52, 1, (("127.0.0.1", firehose.port),)))
        assert node.drops["fetch_BodyTooLarge"] == 1
        assert firehose.sent < 24 * 1024 * 1024
    finally:
        await node.aclose()
        await firehose.close()


async def test_a_slow_body_is_cut_off() -> None:
    """A peer that declares a 1 MB push-pull body and then trickles it is answered 408
    after ``tcp_timeout`` (it cannot hold one of the few large-body slots), and counted.

    On the unfixed code: no answer came within 5 s (the read waited for the rest)."""
    node = MeshNode(_config("victim", tcp_timeout=1.0))
    await node.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", node.address[1])
        writer.write(
            b"POST /v1/wire/pushpull HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/x-meshnode\r\nContent-Length: 1000000\r\n\r\n"
            + b"\x00"
            * 100
        )
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 5)
        assert b" 408 " in status_line
        assert node.drops["http_body_too_slow"] == 1
        writer.close()
    finally:
        await node.aclose()
