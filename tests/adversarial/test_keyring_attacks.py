"""Attacks on a keyed mesh, against real ``meshnode run --keyring`` processes.

Invariants: datagrams that look sealed but open under no key cost the victim at most one
AEAD attempt per installed key each, are all counted, and change nothing (no member is
suspected, the victim keeps answering); a captured key operation replayed later is
refused and the keyring stays as the operator left it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from meshnode.core.keys import Action
from meshnode.runtime.store import KEY_FILE, load_identity, load_keyring, save_keyring
from protocol import decode, encode
from protocol.keyring import SEAL_MAGIC, SEAL_VERSION, Keyring, format_key, generate_key
from protocol.messages import KeyOp, KeyOpReply
from tests.adversarial.attack import NodeProcess, udp_send, wait_until

pytestmark = pytest.mark.slow

CONVERGE_S = 30.0
"""Longest wait for the mesh to form or a count to show (loopback)."""
FLOOD = 5_000
"""Junk datagrams sent in the flood test."""
BURST = 50
"""Junk datagrams sent before waiting for them to be counted: a default kernel receive
buffer (about 208 KiB, some 2.3 KiB of it per 1.2 KB datagram) holds about 90; the rest
would be lost before the node sees them."""


def _mesh(tmp_path: Path, ring: Keyring, n: int) -> list[NodeProcess]:
    nodes: list[NodeProcess] = []
    for i in range(n):
        path = tmp_path / f"k{i}.keyring.json"
        save_keyring(path, ring)
        seeds = [nodes[0].address] if nodes else []
        nodes.append(
            NodeProcess(
                f"k{i}",
                tmp_path / f"k{i}",
                seeds,
                extra=["--embedder", "hashing", "--keyring", str(path)],
            ).start()
        )
    ids = {node.node_id for node in nodes}
    wait_until(
        lambda: all(
            {k for k, m in node.members().items() if m["state"] == "alive"} == ids for node in nodes
        ),
        CONVERGE_S,
        "the keyed mesh forms",
    )
    return nodes


def test_a_flood_of_sealed_junk_is_counted_and_changes_nothing(tmp_path: Path) -> None:
    """5,000 datagrams with a valid seal header and random bodies at a node holding the
    most keys a ring allows: every one is counted as ``open_failed``, none reaches the
    decoder, and no member is suspected."""
    keys = tuple(generate_key() for _ in range(8))
    nodes = _mesh(tmp_path, Keyring(keys, "flood"), 3)
    try:
        victim = nodes[1]
        before = victim.get("/v1/health")["seal"].get("open_failed", 0)
        header = bytes((SEAL_MAGIC, SEAL_VERSION))
        sent = 0
        while sent < FLOOD:  # in bursts the socket buffer holds, so none is lost in it
            for _ in range(BURST):
                udp_send(victim.address, header + os.urandom(1_200))
            sent += BURST
            wait_until(
                lambda total=sent: (
                    victim.get("/v1/health")["seal"].get("open_failed", 0) - before >= total
                ),
                CONVERGE_S,
                f"{sent} junk datagrams counted",
            )
        health = victim.get("/v1/health")
        assert health["seal"]["open_failed"] - before == FLOOD
        assert "MalformedMessage" not in health["dropped"]  # nothing reached the decoder
        time.sleep(1.0)
        for node in nodes:
            states = {m["state"] for m in node.members().values()}
            assert states == {"alive"}, (node.name, states)
    finally:
        for node in nodes:
            node.stop()


def _post(address: str, body: bytes) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://{address}/v1/wire/keys", data=body)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_a_replayed_key_operation_is_refused(tmp_path: Path) -> None:
    """A sealed ``install K2`` from member k1 is applied by k0; the operator then removes
    K2 mesh-wide; the same captured bytes sent again are refused as a replay and K2 stays
    out of k0's keyring and its file."""
    ring = Keyring((generate_key(),), "replay")
    nodes = _mesh(tmp_path, ring, 2)
    try:
        k0, k1 = nodes
        member = load_identity(k1.data_dir / KEY_FILE)
        k2 = generate_key()
        op = KeyOp(os.urandom(16), int(Action.INSTALL), k2, time.time())
        captured = ring.seal(encode([op], member))

        status, raw = _post(k0.address, captured)
        assert status == 200
        first = decode(ring.open(raw)).messages[0]
        assert isinstance(first, KeyOpReply) and first.ok
        assert k2 in load_keyring(tmp_path / "k0.keyring.json").keys

        command = ["keys", "remove", format_key(k2), "--node", k0.address, "--json"]
        done = subprocess.run(
            [sys.executable, "-m", "meshnode.cli", *command],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert json.loads(done.stdout)["acked"] == 2

        status, raw = _post(k0.address, captured)
        assert status == 200
        again = decode(ring.open(raw)).messages[0]
        assert isinstance(again, KeyOpReply)
        assert not again.ok and "replay" in again.error
        assert load_keyring(tmp_path / "k0.keyring.json").keys == ring.keys
        assert k0.get("/v1/health")["seal"]["keys"] == ring.fingerprints()
    finally:
        for node in nodes:
            node.stop()
