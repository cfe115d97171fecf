"""What a stranger can make a node buffer on task WebSockets before any handshake:
real ``meshnode run`` processes and raw sockets on 127.0.0.1.

Invariants: a socket that upgrades to ``/v1/ws/tasks`` and declares a 16 MiB first frame
is closed once the frame header arrives (``task_handshake_too_large`` counted), whatever
it keeps sending; a socket that sends two small junk messages and then a 16 MiB frame is
closed without the frame being read; the victim's RSS stays within 32 MiB of where it
was across eight such sockets at once (the most one address may hold in their handshake),
and it keeps answering health; two honest nodes still open a channel and run a task.
"""

from __future__ import annotations

import base64
import os
import socket
import struct
import threading
import time
from pathlib import Path

import pytest

from meshnode.runtime.handshake_gate import MAX_HANDSHAKE_MESSAGE_BYTES
from tests.adversarial.attack import NodeProcess, http_json, rss_mb, split_address, wait_until

pytestmark = pytest.mark.slow

AGENT = str(Path(__file__).resolve().parents[1] / "integration" / "cli_agents.py") + ":Upper"
FRAME_BYTES = 16 * 1024 * 1024 - 64
SOCKETS = 8
RSS_GROWTH_LIMIT_MIB = 32
SEND_DEADLINE_S = 20.0


def _upgrade(address: str) -> socket.socket:
    """A raw socket upgraded to the task WebSocket (HTTP 101 checked)."""
    host, port = split_address(address)
    sock = socket.create_connection((host, port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /v1/ws/tasks HTTP/1.1\r\nHost: {address}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(4096)
        assert chunk, "the node closed the socket during the upgrade"
        answer += chunk
    assert answer.startswith(b"HTTP/1.1 101"), answer[:200]
    return sock


def _frame_header(length: int) -> bytes:
    """A masked, final, binary frame header declaring ``length`` payload bytes."""
    return b"\x82" + bytes([0x80 | 127]) + struct.pack(">Q", length) + os.urandom(4)


def _small_frame(payload: bytes) -> bytes:
    assert len(payload) < 126
    return b"\x82" + bytes([0x80 | len(payload)]) + os.urandom(4) + payload


def _push(sock: socket.socket, length: int, outcome: dict[str, int], key: int) -> None:
    """Send ``length`` junk bytes (the frame's payload); record how many went out before
    the node hung up (or all of them)."""
    sent = 0
    piece = os.urandom(64 * 1024)
    deadline = time.monotonic() + SEND_DEADLINE_S
    sock.settimeout(1.0)
    try:
        while sent < length and time.monotonic() < deadline:
            try:
                sent += sock.send(piece[: min(len(piece), length - sent)])
            except TimeoutError:
                continue  # the node stopped reading: the kernel buffers are full
    except OSError:
        outcome[key] = sent  # reset or broken pipe: closed by the node
        return
    outcome[key] = -1 if sent >= length else -2  # all sent, or stalled until the deadline


def _closed_by_peer(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except (TimeoutError, OSError):
        return False


def _drops(node: NodeProcess) -> dict[str, int]:
    _, body = http_json(node.address, "/v1/health")
    return dict(body["drops"])


def test_oversized_first_frames_are_refused_at_their_header(tmp_path: Path) -> None:
    """On the unfixed code: the victim's RSS grew by 123 MiB (188 to 311 MiB) and all
    eight sockets sent their whole 16 MiB frame, the junk-first ones included (the
    frame was read while the first junk message was being refused); nothing was
    counted. With the gate: no measurable growth, each socket reset after at most the
    kernel's socket buffers' worth."""
    node = NodeProcess("victim", tmp_path / "victim", [], extra=["--agent", AGENT]).start()
    try:
        assert node.proc is not None
        pid = node.proc.pid
        baseline = rss_mb(pid)
        socks = [_upgrade(node.address) for _ in range(SOCKETS)]
        outcome: dict[str, int] = {}
        peak = [baseline]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.05):
                peak[0] = max(peak[0], rss_mb(pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        threads = []
        for i, sock in enumerate(socks):
            if i % 2:  # two small junk messages first, then the big frame
                sock.sendall(_small_frame(b"junk-1") + _small_frame(b"junk-2"))
            sock.sendall(_frame_header(FRAME_BYTES))
            thread = threading.Thread(target=_push, args=(sock, FRAME_BYTES, outcome, i))
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join(SEND_DEADLINE_S + 5)
        done.set()
        sampler.join()
        peak[0] = max(peak[0], rss_mb(pid))
        for sock in socks:
            assert _closed_by_peer(sock, 5.0)
            sock.close()
        assert peak[0] - baseline < RSS_GROWTH_LIMIT_MIB, (baseline, peak[0])
        assert all(v != -1 for v in outcome.values()), outcome  # nobody got 16 MiB in
        drops = _drops(node)
        assert drops.get("task_handshake_too_large") == SOCKETS // 2, drops
        assert MAX_HANDSHAKE_MESSAGE_BYTES == 4_096
    finally:
        node.stop()


def test_honest_nodes_still_open_channels_and_run_tasks(tmp_path: Path) -> None:
    """The gate lets the two handshake messages through and opens for the task frames:
    a delegation whose input is far over the pre-handshake limit runs on a fresh
    channel."""
    provider = NodeProcess("provider", tmp_path / "p", [], extra=["--agent", AGENT]).start()
    try:
        requester = NodeProcess("requester", tmp_path / "r", [provider.address]).start()
        try:
            wait_until(
                lambda: any(
                    m["node_id"] == provider.node_id
                    for m in http_json(requester.address, "/v1/manifests")[1]["manifests"]
                ),
                30,
                "the requester knows the provider",
            )
            text = "x" * (4 * MAX_HANDSHAKE_MESSAGE_BYTES)
            status, body = http_json(
                requester.address,
                "/v1/delegate",
                {"capability": "uppercase_text", "input": {"text": text}, "deadline_s": 10},
                timeout=20,
            )
            assert status == 200, body
            assert body["output"] == {"text": text.upper()}
            assert "task_handshake_too_large" not in _drops(provider)
        finally:
            requester.stop()
    finally:
        provider.stop()
