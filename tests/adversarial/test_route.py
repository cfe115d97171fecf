"""Attacks on the TCP fallback route, ``POST /v1/wire/ping``, of a real ``meshnode run``
with a mesh authority: a stranger with a fresh key gets no ack, junk and oversized
bodies are refused before any work, and an admitted signer does get its signed ``Ack``.

Without the admission check in ``NodeCore.answer_tcp_ping`` the stranger's first ping
got HTTP 200 and a signed ``Ack`` (checked by disabling the check).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from meshnode.runtime.api import MAX_TCP_PING_REQUEST_BYTES
from meshnode.runtime.store import load_identity, save_identity
from protocol import Ack, Identity, Ping, decode, encode
from tests.adversarial.attack import Attacker, NodeProcess, fd_count
from tests.integration.test_authority import cli

pytestmark = pytest.mark.slow

PINGS = 200
"""Valid pings a stranger sends in the flood (each refused)."""
FD_SLACK = 10
"""Descriptors the victim may hold above its count before the flood (sockets closing)."""


def post(address: str, data: bytes) -> tuple[int, bytes]:
    request = urllib.request.Request(
        f"http://{address}/v1/wire/ping",
        data=data,
        headers={"Content-Type": "application/x-meshnode"},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_wire_ping_answers_only_admitted_signers(tmp_path: Path) -> None:
    authority_dir = tmp_path / "authority"
    authority = cli("authority", "init", str(authority_dir))
    data = tmp_path / "victim"
    data.mkdir()
    save_identity(data / "node.key", Identity.generate())
    node_id = cli("id", "--data-dir", str(data))
    cert = tmp_path / "victim.cert"
    cli(
        "authority", "issue", "--dir", str(authority_dir), "--node-id", node_id,
        "--role", "member", "--days", "1", "--out", str(cert), "--json",
    )  # fmt: skip
    victim = NodeProcess("victim", data, [], extra=["--authority", authority, "--cert", str(cert)])
    try:
        victim.start()
        assert victim.proc is not None
        stranger = Attacker()
        fds_before = fd_count(victim.proc.pid)

        # A correctly signed ping from a key without a certificate: refused, no ack.
        for seq in range(PINGS):
            status, body = post(victim.address, stranger.envelope([Ping(seq, victim.node_id)]))
            assert status == 403, body
        # Junk, two messages, a body over the cap, a ping naming another node.
        assert post(victim.address, b"\x00" * 64)[0] == 400
        two = stranger.envelope([Ping(1, victim.node_id), Ping(2, victim.node_id)])
        assert post(victim.address, two)[0] == 400
        assert post(victim.address, b"\x01" * (MAX_TCP_PING_REQUEST_BYTES + 1024))[0] == 413
        own = load_identity(data / "node.key")
        assert post(victim.address, encode([Ping(3, stranger.node_id)], own))[0] == 403

        # The node's own key is admitted (it holds its certificate): a signed Ack back.
        status, body = post(victim.address, encode([Ping(77, victim.node_id)], own))
        assert status == 200
        envelope = decode(body)
        assert envelope.sender == victim.node_id
        (ack,) = envelope.messages
        assert isinstance(ack, Ack) and ack.seq == 77

        health = json.loads(
            urllib.request.urlopen(f"http://{victim.address}/v1/health", timeout=5).read()
        )
        assert health["status"] in ("ok", "isolated"), health
        assert fd_count(victim.proc.pid) <= fds_before + FD_SLACK
    finally:
        victim.stop()
