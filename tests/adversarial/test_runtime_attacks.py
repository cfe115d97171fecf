"""Attacks on the asyncio shell of real ``meshnode run`` processes, by a stranger with
access to one node's port on 127.0.0.1 (and a local account for the data dir cases).

Invariants: a flood of silent TCP connections neither stops the API nor joins through the
victim, and its descriptors are released after the header timeout; a 16 MB frame with a
zero signature is refused without stalling the victim (it keeps answering health and is
never suspected); big or deep JSON bodies are refused at once; a second process on a data
dir fails
with one line naming the first, whose capabilities stay visible; the data dir and key are
private and a planted temp-file symlink is never followed. (A send the socket refuses is
contained by the driver: ``tests/integration/test_runtime_hardening.py``; the addresses
that made uvloop refuse one are refused off the wire: ``test_membership_attacks.py``.)
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest

from protocol.codec import PROTOCOL_VERSION
from tests.adversarial.attack import (
    Attacker,
    NodeProcess,
    cluster,
    fd_count,
    http_json,
    split_address,
    wait_until,
)

pytestmark = pytest.mark.slow

AGENT = str(Path(__file__).resolve().parents[1] / "integration" / "cli_agents.py") + ":Upper"


def _pid(node: NodeProcess) -> int:
    assert node.proc is not None
    return node.proc.pid


def _zero_signature_frame(attacker: Attacker, size: int) -> bytes:
    """A frame of about ``size`` bytes: a well-formed envelope body full of small
    integers (the most objects per byte), with an all-zero signature."""
    per_array = 200_000
    arrays = max(1, size // per_array)
    body = msgpack.packb(
        [PROTOCOL_VERSION, attacker.identity.public_key, [[0] * per_array] * arrays]
    )
    return body + b"\xc4\x40" + bytes(64)


def _post(address: str, path: str, body: bytes, *, chunked: bool = False) -> int | None:
    """POST ``body`` (declared or chunked); the status, or None if the victim hung up
    while we were still sending (it refused the rest)."""
    host, port = split_address(address)
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        if chunked:
            conn.putrequest("POST", path)
            conn.putheader("Content-Type", "application/x-meshnode")
            conn.putheader("Transfer-Encoding", "chunked")
            conn.endheaders()
            step = 256 * 1024
            for start in range(0, len(body), step):
                part = body[start : start + step]
                conn.send(b"%x\r\n%s\r\n" % (len(part), part))
            conn.send(b"0\r\n\r\n")
        else:
            conn.request(
                "POST", path, body=body, headers={"Content-Type": "application/x-meshnode"}
            )
        return conn.getresponse().status
    except (ConnectionError, OSError):
        return None
    finally:
        conn.close()


def _health(node: NodeProcess) -> dict[str, Any]:
    status, body = http_json(node.address, "/v1/health", timeout=3.0)
    assert status == 200, body
    assert isinstance(body, dict)
    return body


def _sees_alive(observer: NodeProcess, node_id: str) -> bool:
    member = observer.members().get(node_id)
    return member is not None and member["state"] == "alive"


# ---------------------------------------------------------------------------- connections


def test_a_half_open_flood_is_shed_and_released(tmp_path: Path) -> None:
    """3,000 sockets connect from another loopback address and send nothing. The victim
    keeps answering health, a new node joins through it, and once the header timeout
    (10 s) has passed its descriptor count is back near its baseline while the attacker
    still holds every socket.

    On the unfixed code: the victim's descriptors went from 24 to 1,123 during the flood
    and were 1,259 after 25 s more (none released)."""
    with cluster(tmp_path, 2) as nodes:
        victim, peer = nodes
        wait_until(lambda: _sees_alive(victim, peer.node_id), 15, "the cluster formed")
        baseline = fd_count(_pid(victim))
        host, port = split_address(victim.address)
        socks: list[socket.socket] = []
        joiner: NodeProcess | None = None
        try:
            for _ in range(3_000):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.bind(("127.0.0.2", 0))
                sock.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    sock.connect((host, port))
                socks.append(sock)
            _health(victim)
            joiner = NodeProcess("joiner", tmp_path / "joiner", [victim.address]).start()
            wait_until(
                lambda: _sees_alive(victim, joiner.node_id) and _sees_alive(joiner, victim.node_id),
                20,
                "a new node joined through the flooded victim",
            )
            wait_until(
                lambda: fd_count(_pid(victim)) <= baseline + 40,
                25,
                f"the victim's descriptors back near {baseline}",
            )
            connections = _health(victim)["connections"]
            assert connections["refused_per_address"] > 2_000
            assert connections["header_timeouts"] >= 1
        finally:
            for sock in socks:
                sock.close()
            if joiner is not None:
                joiner.stop()


# ---------------------------------------------------------------------------- big frames


def test_a_16mb_zero_signature_pushpull_does_not_stall_the_victim(tmp_path: Path) -> None:
    """Three senders post 16 MB zero-signature frames to ``/v1/wire/pushpull`` for 6 s,
    declared and chunked. Every one is refused (413, or cut off), the victim answers
    every health check meanwhile, and no peer ever sees it other than alive.

    On the unfixed code: the frames were read and decoded on the victim's loop; a health
    check during the attack timed out (3 s)."""
    attacker = Attacker()
    frame = _zero_signature_frame(attacker, 16 * 1024 * 1024)
    assert len(frame) >= 16_000_000
    with cluster(tmp_path, 3) as nodes:
        victim, *peers = nodes
        wait_until(
            lambda: all(_sees_alive(p, victim.node_id) for p in peers), 15, "the cluster formed"
        )
        statuses: list[int | None] = []
        stop = time.monotonic() + 6.0

        def flood(chunked: bool) -> None:
            while time.monotonic() < stop:
                statuses.append(_post(victim.address, "/v1/wire/pushpull", frame, chunked=chunked))

        senders = [threading.Thread(target=flood, args=(i == 2,)) for i in range(3)]
        for sender in senders:
            sender.start()
        try:
            while time.monotonic() < stop:
                _health(victim)
                for peer in peers:
                    state = peer.members()[victim.node_id]["state"]
                    assert state == "alive", f"{peer.name} sees the victim {state}"
        finally:
            for sender in senders:
                sender.join(60)
        assert statuses and all(s in (413, None) for s in statuses), statuses
        assert _health(victim)["drops"].get("http_body_too_large", 0) >= 1


def test_big_and_deep_json_bodies_are_refused_at_once(tmp_path: Path) -> None:
    """An 8 MB ``/v1/discover`` body is refused with 413, a 3,000-character description
    with 400, and JSON nested 100,000 deep with 400 (never 500); the node stays healthy.

    On the unfixed code: the 8 MB body was embedded and answered 200 (and, measured
    separately, the deep JSON gave HTTP 500)."""
    with cluster(tmp_path, 1) as nodes:
        (victim,) = nodes
        status, _ = http_json(victim.address, "/v1/discover", {"description": "x" * 8_000_000})
        assert status == 413
        status, body = http_json(victim.address, "/v1/discover", {"description": "y" * 3_000})
        assert status == 400
        assert "limit is 2000" in str(body)
        deep = ('{"capability": "x", "input": ' + "[" * 100_000 + "]" * 100_000 + "}").encode()
        host, port = split_address(victim.address)
        conn = http.client.HTTPConnection(host, port, timeout=10)
        try:
            conn.request("POST", "/v1/delegate", body=deep)
            resp = conn.getresponse()
            assert resp.status == 400
            assert b"nested deeper" in resp.read()
        finally:
            conn.close()
        assert _health(victim)["status"] == "ok"


# ---------------------------------------------------------------------------- effects


# ---------------------------------------------------------------------------- data dir


def _has_capability(observer: NodeProcess, node_id: str, name: str) -> bool:
    manifests = observer.get("/v1/manifests")["manifests"]
    return any(
        m["node_id"] == node_id and any(c["name"] == name for c in m["capabilities"])
        for m in manifests
    )


def test_a_second_process_on_a_data_dir_fails_and_changes_nothing(tmp_path: Path) -> None:
    """A second ``meshnode run`` on a running node's data dir exits non-zero at once with
    one line naming the running process; a third node keeps seeing the first node's
    capability. The lock goes with its process: after a SIGKILL the dir starts again.

    On the unfixed code: the second process started under the same node id and was still
    running 30 s later."""
    owner = NodeProcess("owner", tmp_path / "owner", [], extra=["--agent", AGENT]).start()
    third: NodeProcess | None = None
    try:
        third = NodeProcess("third", tmp_path / "third", [owner.address]).start()
        wait_until(
            lambda: _has_capability(third, owner.node_id, "uppercase_text"),
            20,
            "the third node sees the owner's capability",
        )
        started = time.monotonic()
        second = subprocess.run(
            [
                sys.executable,
                "-m",
                "meshnode.cli",
                "run",
                "--name",
                "intruder",
                "--port",
                "0",
                "--profile",
                "local",
                "--data-dir",
                str(tmp_path / "owner"),
                "--log-level",
                "WARNING",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert second.returncode != 0
        assert "listening" not in second.stdout
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, second.stderr
        assert f"in use by process {_pid(owner)}" in lines[0]
        assert time.monotonic() - started < 15
        # The owner's capability stays visible through several push-pull rounds (2 s).
        until = time.monotonic() + 5.0
        while time.monotonic() < until:
            assert _has_capability(third, owner.node_id, "uppercase_text")
            time.sleep(0.25)
        # The lock dies with its process: after a SIGKILL the dir can be used again.
        owner.signal(signal.SIGKILL)
        owner.wait()
        again = NodeProcess("owner", tmp_path / "owner", [], extra=["--agent", AGENT]).start()
        try:
            assert again.node_id == owner.node_id
        finally:
            again.stop()
    finally:
        if third is not None:
            third.stop()
        owner.stop()


def test_data_dir_key_and_database_are_private(tmp_path: Path) -> None:
    """A node started on an existing 0777 data dir narrows it to 0700; its key, SQLite
    file and companions are 0600.

    On the unfixed code: the dir stayed 0777 and the SQLite file was 0644."""
    data_dir = tmp_path / "node"
    data_dir.mkdir()
    os.chmod(data_dir, 0o777)
    node = NodeProcess("private", data_dir, []).start()
    try:
        assert data_dir.stat().st_mode & 0o777 == 0o700
        for name in ("node.key", "meshnode.sqlite3", "meshnode.sqlite3-wal", "meshnode.lock"):
            assert (data_dir / name).stat().st_mode & 0o777 == 0o600, name
    finally:
        node.stop()


def test_a_planted_temp_key_symlink_is_not_followed(tmp_path: Path) -> None:
    """Before a node's first start, ``node.key.tmp`` is a symlink to a file of another
    user's choosing. The node starts, the target is unchanged, and ``node.key`` is a
    regular 0600 file holding the key the node runs under.

    On the unfixed code: the key (64 hex digits) was written through the symlink into
    the target file."""
    data_dir = tmp_path / "node"
    data_dir.mkdir(mode=0o700)
    target = tmp_path / "target"
    target.write_text("precious\n")
    (data_dir / "node.key.tmp").symlink_to(target)
    node = NodeProcess("planted", data_dir, []).start()
    try:
        assert target.read_text() == "precious\n"
        key = data_dir / "node.key"
        assert not key.is_symlink()
        assert key.stat().st_mode & 0o777 == 0o600
        from meshnode.runtime.store import load_identity

        assert load_identity(key).node_id == node.node_id
    finally:
        node.stop()


def test_health_is_json_for_the_attack_tests(tmp_path: Path) -> None:
    """The health fields the attack tests read exist on a fresh node (a guard against a
    renamed field making the assertions above vacuous)."""
    with cluster(tmp_path, 1) as nodes:
        health = _health(nodes[0])
        for key in ("status", "reasons", "drops", "effect_failures", "connections"):
            assert key in health, key
        assert json.dumps(health)
