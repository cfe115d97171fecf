"""Attacks on a real ``meshnode run`` process through A2A import: a hostile "agent" serves
whatever card bytes it likes at the URL an operator was talked into importing, and a
local caller without the token tries the import route.

Invariants: a card declared or streamed past 256 KiB is refused without the node reading
more than the cap (its memory stays flat); a card trickled byte by byte is given up after
the fetch timeout; a redirect loop is cut after three hops; a card that points the node's
calls at another origin (an internal address) is refused; a non-JSON card is refused; in
every case nothing is published and the node stays healthy. An agent whose answer never
ends fails the task once 8 MiB have arrived, without filling the proxy's memory. A
legitimate large card sent in many chunks is read in full. The import route answers 401
to a caller without the token when loopback is not trusted.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("a2a")

from tests.adversarial.attack import NodeProcess, http_json, rss_mb
from tests.integration.cluster import wait_until

pytestmark = pytest.mark.slow

CARD_PATH = "/.well-known/agent-card.json"
TOKEN = "bridge-attack-token-0123456789"


def card(base: str, interface: str, description: str = "an agent") -> bytes:
    return json.dumps(
        {
            "name": "Hostile",
            "description": description,
            "version": "1",
            "supportedInterfaces": [
                {"url": interface, "protocolBinding": "JSONRPC", "protocolVersion": "1.0"}
            ],
            "skills": [{"id": "s", "name": "S", "description": "does s", "tags": ["t"]}],
        }
    ).encode()


class Hostile(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        return None

    def _head(self, status: int, content_type: str, headers: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()

    def do_GET(self) -> None:
        base = f"http://127.0.0.1:{self.server.server_address[1]}"
        kind = self.path.split("/")[1]
        try:
            if kind == "big":  # declares 10 MB, sends nothing
                self._head(200, "application/json", {"Content-Length": str(10_000_000)})
            elif kind == "endless":  # streams JSON-looking bytes forever, chunked
                self._head(200, "application/json", {"Transfer-Encoding": "chunked"})
                self.wfile.write(b'a\r\n{"name": "\r\n')
                chunk = b"x" * 65_536
                for _ in range(2_000):  # 128 MiB at most, far past any cap
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            elif kind == "slow":  # one byte a second
                body = card(base, f"{base}/slow/")
                self._head(200, "application/json", {"Content-Length": str(len(body))})
                for byte in body:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(1.0)
            elif kind == "loop":
                self._head(302, "text/plain", {"Location": self.path, "Content-Length": "0"})
            elif kind == "ssrf":
                body = card(base, "http://169.254.169.254/latest/")
                self._head(200, "application/json", {"Content-Length": str(len(body))})
                self.wfile.write(body)
            elif kind == "bloat":  # an honest card; its JSON-RPC answers are endless
                body = card(base, f"{base}/bloat/")
                self._head(200, "application/json", {"Content-Length": str(len(body))})
                self.wfile.write(body)
            elif kind == "html":
                body = b"<html>not a card</html>"
                self._head(200, "text/html", {"Content-Length": str(len(body))})
                self.wfile.write(body)
            elif kind == "chunked":  # a legitimate 150 KiB card in 1 KiB chunks
                body = card(base, f"{base}/chunked/", description="long " * 200)
                padding = json.loads(body)
                padding["documentationUrl"] = "http://example.org/" + "d" * 150_000
                body = json.dumps(padding).encode()
                self._head(200, "application/json", {"Transfer-Encoding": "chunked"})
                for i in range(0, len(body), 1024):
                    part = body[i : i + 1024]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
            else:
                self._head(404, "text/plain", {"Content-Length": "0"})
        except (BrokenPipeError, ConnectionResetError):
            return

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            self._head(200, "application/json", {"Transfer-Encoding": "chunked"})
            first = b'{"jsonrpc": "2.0", "id": 1, "result": {"message": {"parts": [{"text": "'
            self.wfile.write(b"%x\r\n%s\r\n" % (len(first), first))
            chunk = b"y" * 65_536
            for _ in range(4_000):  # 256 MiB at most
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except (BrokenPipeError, ConnectionResetError):
            return


@contextlib.contextmanager
def hostile_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeProcess]:
    proc = NodeProcess("victim", tmp_path / "victim", [], extra=["--embedder", "hashing"]).start()
    try:
        yield proc
    finally:
        proc.stop()


def _import(address: str, url: str, token: str | None = None) -> tuple[int, Any]:
    if token is None:
        return http_json(address, "/v1/a2a/import", {"url": url}, timeout=30)
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        f"http://{address}/v1/a2a/import",
        data=json.dumps({"url": url}).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_hostile_cards_are_refused_and_publish_nothing(node: NodeProcess) -> None:
    assert node.proc is not None
    with hostile_server() as base:
        cases = [
            ("big", 422, "larger than 262144 bytes"),
            ("endless", 422, "larger than 262144 bytes"),
            ("loop", 422, "redirects more than 3 times"),
            ("ssrf", 422, "another origin"),
            ("html", 422, "content type 'text/html'"),
        ]
        # Neither timed nor in the memory baseline: the node's first import loads the a2a
        # SDK (seconds and about 45 MB in a fresh virtual environment, seen in CI); the
        # bounds below are about refusing hostile cards, not about that.
        got, body = _import(node.address, f"{base}/no-such-card")
        assert got in (422, 502), body
        before_mb = rss_mb(node.proc.pid)
        for kind, status, message in cases:
            started = time.monotonic()
            got, body = _import(node.address, f"{base}/{kind}")
            assert (got, kind) == (status, kind), body
            assert message in body["error"], (kind, body)
            assert time.monotonic() - started < 5.0, f"{kind} took too long to refuse"

        started = time.monotonic()
        got, body = _import(node.address, f"{base}/slow")
        elapsed = time.monotonic() - started
        assert got == 502 and "did not answer within 10.0 s" in body["error"], body
        assert 9.0 <= elapsed < 15.0

        assert node.get("/v1/a2a/imports") == {"agents": []}
        own = [m for m in node.get("/v1/manifests")["manifests"] if m["node_id"] == node.node_id]
        assert own[0]["capabilities"] == []
        assert node.get("/v1/health")["status"] == "ok"
        assert rss_mb(node.proc.pid) - before_mb < 40, "the endless card was buffered"


def test_a_large_card_in_many_chunks_is_read_in_full(node: NodeProcess) -> None:
    """A legitimate 150 KiB card sent in 1 KiB chunks is read to its end and imported.

    On the unfixed code (one ``read(cap + 1)``, which returns what has arrived): the node
    answered 422 "the agent card is not JSON: Unterminated string ...", having parsed the
    first chunk alone."""
    with hostile_server() as base:
        got, body = _import(node.address, f"{base}/chunked")
        assert got == 200, body
        assert body["capabilities"] == ["Hostile.s"]


def test_import_route_needs_the_token_without_loopback_trust(tmp_path: Path) -> None:
    closed = NodeProcess(
        "closed",
        tmp_path / "closed",
        [],
        extra=["--embedder", "hashing", "--api-token", TOKEN, "--no-trust-loopback"],
    ).start()
    try:
        with hostile_server() as base:
            got, _ = _import(closed.address, f"{base}/chunked")
            assert got == 401
            got, _ = http_json(closed.address, "/v1/a2a/imports")
            assert got == 401
            got, body = _import(closed.address, f"{base}/chunked", token=TOKEN)
            assert got == 200, body
    finally:
        closed.stop()


def test_an_endless_answer_fails_the_task_without_filling_memory(tmp_path: Path) -> None:
    """An agent with an honest card whose SendMessage answer never ends: the task fails
    with a clear reason once 8 MiB have arrived, and the proxy's memory stays flat.

    On the unfixed code (an uncapped httpx client): the proxy read the answer until the
    task's deadline; the caller saw ``execution_timeout: no result within the agreed
    20000 ms`` after 20 s, the proxy buffering all the while."""
    proxy = NodeProcess("proxy", tmp_path / "proxy", [], extra=["--embedder", "hashing"]).start()
    caller = NodeProcess(
        "caller", tmp_path / "caller", [proxy.address], extra=["--embedder", "hashing"]
    ).start()
    try:
        assert proxy.proc is not None
        with hostile_server() as base:
            got, body = _import(proxy.address, f"{base}/bloat")
            assert got == 200, body

            def offered() -> bool:
                for manifest in caller.get("/v1/manifests")["manifests"]:
                    if manifest["node_id"] == proxy.node_id:
                        return any(c["name"] == "Hostile.s" for c in manifest["capabilities"])
                return False

            wait_until(offered, 30, "the caller sees the proxied skill")
            before_mb = rss_mb(proxy.proc.pid)
            got, body = http_json(
                caller.address,
                "/v1/delegate",
                {"capability": "Hostile.s", "input": {"text": "hi"}, "deadline_s": 30},
                timeout=40,
            )
            assert got == 502, body
            assert "larger than 8388608 bytes" in body["attempts"][0]["detail"], body
            assert rss_mb(proxy.proc.pid) - before_mb < 60, "the endless answer was buffered"
            assert proxy.get("/v1/health")["status"] == "ok"
    finally:
        caller.stop()
        proxy.stop()
