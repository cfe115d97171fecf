"""Gossip encryption against real ``meshnode run --keyring`` processes.

Invariants: a node without the mesh's key (none, or another key) can neither join, be
heard (its datagrams change nothing), read manifests over ``/v1/wire/manifests``, write
ledger records, nor open a task channel; keys rotate across a running mesh (install, use,
remove through any node) with every member alive throughout and the result persisted in
each node's keyring file; two meshes that share a key but not a label stay apart; a
running plaintext mesh is upgraded to sealed traffic by rolling restarts with no member
ever declared dead; a capture of loopback traffic during a delegation holds none of the
capability's name, input or output in clear.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from protocol import LedgerRecord
from protocol.keyring import SEAL_MAGIC, Keyring, fingerprint, format_key, generate_key
from protocol.messages import ChannelHello
from tests.adversarial.attack import Attacker, http_json, split_address, udp_send
from tests.integration.cluster import NodeProcess, wait_until

pytestmark = pytest.mark.slow

AGENT = str(Path(__file__).with_name("cli_agents.py")) + ":Upper"
CONVERGE_S = 30.0
"""Longest wait for a mesh to settle on loopback (joins, manifests, key operations)."""
QUIET_S = 3.0
"""How long a stranger is given to get in: ten push-pull intervals of the local profile
would be 20 s; three seconds are fifteen probe rounds and a push-pull."""


def meshnode(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshnode.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ring_file(path: Path, ring: Keyring) -> str:
    """Write ``ring`` to ``path`` (0600) the way ``meshnode keys init`` does."""
    from meshnode.runtime.store import save_keyring

    save_keyring(path, ring)
    return str(path)


def alive_ids(node: NodeProcess) -> set[str]:
    return {n for n, m in node.members().items() if m["state"] == "alive"}


@contextmanager
def running(nodes: list[NodeProcess]) -> Iterator[None]:
    """Stop every node in ``nodes`` (as it is at the end) when the block ends."""
    try:
        yield
    finally:
        for node in nodes:
            node.stop()


def keyed(name: str, base: Path, seeds: list[str], ring: Keyring, *extra: str) -> NodeProcess:
    path = ring_file(base / f"{name}.keyring.json", ring)
    return NodeProcess(
        name, base / name, seeds, extra=["--embedder", "hashing", "--keyring", path, *extra]
    ).start()


def test_a_node_without_the_key_gets_nothing(tmp_path: Path) -> None:
    """A keyed 3-node mesh; a stranger with no keyring and an outsider with another key
    (same label) both seeded at it. Neither ever appears in a member's table nor sees a
    member; their datagrams are counted as refused; the stranger's GET of a manifest
    returns only sealed bytes; its plaintext ledger record is refused (400) and stored
    nowhere; its plaintext task hello closes the socket."""
    ring = Keyring.new("prod")
    a = keyed("a", tmp_path, [], ring, "--agent", AGENT)
    nodes = [a]
    with running(nodes):
        b = keyed("b", tmp_path, [a.address], ring)
        nodes.append(b)
        nodes.append(keyed("c", tmp_path, [a.address], ring))
        members = {n.node_id for n in nodes}
        wait_until(lambda: all(alive_ids(n) == members for n in nodes), CONVERGE_S, "3 keyed join")
        stranger = NodeProcess(
            "stranger", tmp_path / "s", [a.address], extra=["--embedder", "hashing"]
        ).start()
        nodes.append(stranger)
        outsider = keyed("outsider", tmp_path, [a.address], Keyring.new("prod"))
        nodes.append(outsider)

        attacker = Attacker()
        host, port = split_address(a.address)
        for _ in range(20):  # the attacker's own Alive, signed, in clear
            udp_send(a.address, attacker.envelope([attacker.alive(host, port + 1)]))
        deadline = time.monotonic() + QUIET_S
        while time.monotonic() < deadline:
            for n in nodes[:3]:
                assert set(n.members()) == members
            assert set(stranger.members()) == {stranger.node_id}
            assert set(outsider.members()) == {outsider.node_id}
            time.sleep(0.2)
        seal = a.get("/v1/health")["seal"]
        assert seal["plaintext_refused"] >= 20
        assert seal["open_failed"] >= 1  # the outsider's sealed datagrams and push-pull
        assert a.get("/v1/health")["dropped"].get("SealRejected", 0) >= 20

        # Manifests: a stranger's GET gets sealed bytes only.
        status, body = _raw_get(b.address, f"/v1/wire/manifests/{a.node_id}")
        assert status == 200
        assert body[0] == SEAL_MAGIC
        assert b"uppercase_text" not in body
        assert b"upper case" not in body

        # Records: a plaintext signed record is refused and stored nowhere.
        record = attacker.sign(
            LedgerRecord(attacker.node_id, a.node_id, 0.01, 5, 1, time.time() + 3600, bytes(64))
        )
        before = b.get("/v1/health")["ledger_records"]
        status, _ = _raw_post(b.address, "/v1/wire/records", attacker.envelope([record]))
        assert status == 400
        assert b.get("/v1/health")["ledger_records"] == before

        # Tasks: a plaintext hello gets the socket closed, no channel.
        closed = asyncio.run(_plain_task_hello(a.address, attacker, a.node_id))
        assert closed
        assert a.get("/v1/health")["drops"].get("task_SealRejected", 0) >= 1


def _raw_get(address: str, path: str) -> tuple[int, bytes]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _raw_post(address: str, path: str, body: bytes) -> tuple[int, bytes]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        f"http://{address}{path}",
        data=body,
        headers={"Content-Type": "application/x-meshnode"},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def _plain_task_hello(address: str, attacker: Attacker, victim: str) -> bool:
    """Open a task WebSocket, send a plaintext signed hello; True when the node closes it
    without answering."""
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"http://{address}/v1/ws/tasks") as ws,
    ):
        await ws.send_bytes(attacker.envelope([ChannelHello(os.urandom(32), victim)]))
        msg = await ws.receive(timeout=10)
        return msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)


# ------------------------------------------------------------------------------ rotation


def _keys(node: NodeProcess, *args: str) -> tuple[int, dict[str, Any]]:
    done = meshnode("keys", *args, "--node", node.address, "--json")
    return done.returncode, json.loads(done.stdout) if done.stdout else {"stderr": done.stderr}


def test_rotation_across_five_nodes(tmp_path: Path) -> None:
    """Install, use and remove a key through different members of a 5-node mesh: every
    member acks each step, ``keys list`` counts 5/5, every member's keyring file ends up
    holding only the new key, nobody is ever suspected, and afterwards a node holding
    only the old key cannot join while one holding the new key can."""
    old = Keyring.new("rot")
    a = keyed("n0", tmp_path, [], old)
    nodes = [a]
    with running(nodes):
        for i in range(1, 5):
            nodes.append(keyed(f"n{i}", tmp_path, [a.address], old))
        ids = {n.node_id for n in nodes}
        wait_until(lambda: all(alive_ids(n) == ids for n in nodes), CONVERGE_S, "5 join")
        watch = _DeathWatch(nodes)
        with watch:
            new = generate_key()
            new_text, old_text = format_key(new), format_key(old.primary)

            code, out = _keys(nodes[1], "install", new_text)
            assert code == 0, out
            assert out["acked"] == 5 and out["unreachable"] == [] and out["failed"] == {}
            code, out = _keys(nodes[2], "install", new_text)  # idempotent
            assert code == 0 and out["acked"] == 5
            code, listed = _keys(nodes[3], "list")
            counts = {k["fingerprint"]: (k["members"], k["primary_of"]) for k in listed["keys"]}
            assert counts == {fingerprint(old.primary): (5, 5), fingerprint(new): (5, 0)}

            code, out = _keys(nodes[2], "remove", old_text)  # still everyone's primary
            assert code != 0

            code, out = _keys(nodes[3], "use", new_text)
            assert code == 0 and out["acked"] == 5, out
            code, out = _keys(nodes[4], "remove", old_text)
            assert code == 0 and out["acked"] == 5, out
            code, listed = _keys(nodes[0], "list")
            assert [(k["fingerprint"], k["members"], k["primary_of"]) for k in listed["keys"]] == [
                (fingerprint(new), 5, 5)
            ]
            for n in nodes:  # persisted
                on_disk = Keyring.from_text(Path(f"{n.data_dir}.keyring.json").read_text())
                assert on_disk.keys == (new,)
            # The mesh still works under the new key: a member's probes are answered.
            time.sleep(1.0)
        assert watch.bad == [], watch.bad

        late_old = keyed("late-old", tmp_path, [a.address], old)
        late_new = keyed("late-new", tmp_path, [a.address], Keyring((new,), "rot"))
        nodes += [late_old, late_new]
        wait_until(lambda: late_new.node_id in alive_ids(a), CONVERGE_S, "new-key node joins")
        assert late_old.node_id not in a.members()
        assert set(late_old.members()) == {late_old.node_id}


class _DeathWatch:
    """Polls every node's member table in a thread; records any member seen suspect or
    dead (a false death during a rotation or an upgrade)."""

    def __init__(self, nodes: list[NodeProcess], allowed: set[str] | None = None) -> None:
        self.nodes = nodes
        self.allowed = allowed if allowed is not None else set()
        self.bad: list[tuple[str, str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _DeathWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            for n in list(self.nodes):
                if n.node_id in self.allowed:
                    continue
                try:
                    table = n.members()
                except OSError:
                    continue
                for node_id, m in table.items():
                    if m["state"] in ("suspect", "dead") and node_id not in self.allowed:
                        self.bad.append((n.name, node_id[:10], m["state"]))
            self._stop.wait(0.2)


# -------------------------------------------------------------------------------- labels


def test_same_key_different_labels_stay_apart(tmp_path: Path) -> None:
    """Two 2-node meshes share one key but not the label, and are seeded at each other:
    each keeps exactly its own two members."""
    key = generate_key()
    blue, green = Keyring((key,), "blue"), Keyring((key,), "green")
    b0 = keyed("b0", tmp_path, [], blue)
    nodes = [b0]
    with running(nodes):
        g0 = keyed("g0", tmp_path, [b0.address], green)
        nodes.append(g0)
        nodes.append(keyed("b1", tmp_path, [b0.address, g0.address], blue))
        nodes.append(keyed("g1", tmp_path, [g0.address, b0.address], green))
        blues = {nodes[0].node_id, nodes[2].node_id}
        greens = {nodes[1].node_id, nodes[3].node_id}
        wait_until(
            lambda: alive_ids(nodes[0]) == blues and alive_ids(nodes[1]) == greens,
            CONVERGE_S,
            "each mesh forms",
        )
        deadline = time.monotonic() + QUIET_S
        while time.monotonic() < deadline:
            for n in nodes:
                own = blues if n.node_id in blues else greens
                assert set(n.members()) == own
            time.sleep(0.2)


# ------------------------------------------------------------------------------- upgrade


def test_upgrade_a_running_plaintext_mesh(tmp_path: Path) -> None:
    """A plaintext 3-node mesh is moved to sealed traffic in three rolling restarts
    (keyring with both switches off; then sealing outgoing; then requiring sealed input).
    No member is ever seen suspect or dead by another, and at the end every node refuses
    plaintext and every node's traffic is sealed."""
    ring = Keyring.new("up")
    names = ["u0", "u1", "u2"]
    nodes = [NodeProcess("u0", tmp_path / "u0", [], extra=["--embedder", "hashing"]).start()]
    with running(nodes):
        seed = nodes[0].address
        for name in names[1:]:
            nodes.append(
                NodeProcess(name, tmp_path / name, [seed], extra=["--embedder", "hashing"]).start()
            )
        ids = {n.node_id for n in nodes}
        wait_until(lambda: all(alive_ids(n) == ids for n in nodes), CONVERGE_S, "3 join")
        steps = [
            ["--no-encrypt-outgoing", "--no-encrypt-incoming"],
            ["--encrypt-outgoing", "--no-encrypt-incoming"],
            [],
        ]
        for step in steps:
            for i, name in enumerate(names):
                old = nodes[i]
                watch = _DeathWatch([n for n in nodes if n is not old], allowed={old.node_id})
                with watch:
                    old.stop()
                    path = ring_file(tmp_path / f"{name}.keyring.json", ring)
                    peers = [n.address for n in nodes if n is not old]
                    new = NodeProcess(
                        name,
                        tmp_path / name,
                        peers,
                        port=old.port,
                        extra=["--embedder", "hashing", "--keyring", path, *step],
                    ).start()
                    nodes[i] = new
                    wait_until(
                        lambda: all(alive_ids(n) == ids for n in nodes),
                        CONVERGE_S,
                        f"{name} back with {step}",
                    )
                assert watch.bad == [], (name, step, watch.bad)
        for n in nodes:
            seal = n.get("/v1/health")["seal"]
            assert seal["encrypt_incoming"] and seal["encrypt_outgoing"]
        before = [n.get("/v1/health")["seal"].get("opened", 0) for n in nodes]

        def all_opened_more() -> bool:
            after = [n.get("/v1/health")["seal"].get("opened", 0) for n in nodes]
            return all(b > a for a, b in zip(before, after, strict=True))

        wait_until(all_opened_more, 10, "every node opens sealed traffic after the upgrade")
        attacker = Attacker()
        host, port = split_address(nodes[0].address)
        udp_send(nodes[0].address, attacker.envelope([attacker.alive(host, port + 1)]))
        wait_until(
            lambda: nodes[0].get("/v1/health")["seal"].get("plaintext_refused", 0) >= 1,
            10,
            "plaintext refused after the upgrade",
        )


# ------------------------------------------------------------------------------- capture


def test_loopback_capture_of_a_delegation_holds_nothing_in_clear(tmp_path: Path) -> None:
    """Capture every packet on ``lo`` (AF_PACKET raw socket) while a keyed requester
    delegates to a keyed provider: the peer traffic holds neither the capability name,
    the input, the output nor the manifest's description, in clear or WebSocket-masked.
    The same run without a keyring shows all of them, so the capture and the search
    work. (The test's own calls to the operator API are left out: they are a local
    process's plaintext HTTP by design.)"""
    if not hasattr(socket, "AF_PACKET") or os.geteuid() != 0:
        pytest.skip("needs root and AF_PACKET to capture loopback traffic")
    marker = "zebra-quartz-" + os.urandom(4).hex()
    for sealed in (True, False):
        base = tmp_path / ("sealed" if sealed else "plain")
        base.mkdir()
        ring = Keyring.new("cap")
        extra_a = ["--embedder", "hashing"]
        extra_b = ["--embedder", "hashing", "--agent", AGENT]
        if sealed:
            extra_a += ["--keyring", ring_file(base / "a.json", ring)]
            extra_b += ["--keyring", ring_file(base / "b.json", ring)]
        a = NodeProcess("a", base / "a", [], extra=extra_a).start()
        nodes = [a]
        with running(nodes):
            b = NodeProcess("b", base / "b", [a.address], extra=extra_b).start()
            nodes.append(b)
            with _capture() as packets:
                wait_until(
                    lambda node=a: len(node.get("/v1/manifests")["manifests"]) == 2,
                    CONVERGE_S,
                    "manifest",
                )
                status, result = http_json(
                    a.address,
                    "/v1/delegate",
                    {"capability": "uppercase_text", "input": {"text": marker}},
                    timeout=30,
                )
                assert status == 200, result
                assert result["output"] == {"text": marker.upper()}
            ports = {split_address(n.address)[1] for n in nodes}
            ours = _peer_traffic(packets, ports)
            assert len(ours) > 2_000  # gossip, push-pull, the task channel
            clear = [
                needle
                for needle in (
                    marker.encode(),
                    marker.upper().encode(),
                    b"uppercase_text",
                    b"Convert text to upper case",
                )
                if _contains_maybe_masked(ours, needle)
            ]
            if sealed:
                assert clear == []
            else:
                assert marker.encode() in clear and marker.upper().encode() in clear
                assert b"uppercase_text" in clear


def _contains_maybe_masked(data: bytes, needle: bytes) -> bool:
    """Whether ``needle`` is in ``data`` in clear or XORed with a repeating 4-byte key, as
    RFC 6455 masks every WebSocket frame a client sends (masking hides nothing: the key
    travels in the frame; this finds the requester's frames to the provider)."""
    if needle in data:
        return True
    head, rest = needle[:4], needle[4:]
    for i in range(len(data) - len(needle) + 1):
        key = bytes(a ^ b for a, b in zip(data[i : i + 4], head, strict=True))
        if all(data[i + 4 + j] ^ key[j % 4] == c for j, c in enumerate(rest)):
            return True
    return False


OPERATOR_REQUESTS = (b"POST /v1/delegate ", b"GET /v1/manifests ", b"GET /v1/health ")
"""Request lines of this test's own calls to the operator API (plaintext by design: a
local process's HTTP, not peer traffic); their connections are left out of the check."""


def _ports(packet: bytes) -> tuple[int, int, bytes] | None:
    """``(source port, destination port, payload)`` of an Ethernet-framed IPv4 TCP or UDP
    packet, else None."""
    if len(packet) < 14 + 20 + 8 or packet[12:14] != b"\x08\x00":
        return None
    ihl = (packet[14] & 0x0F) * 4
    proto = packet[14 + 9]
    off = 14 + ihl
    src = int.from_bytes(packet[off : off + 2], "big")
    dst = int.from_bytes(packet[off + 2 : off + 4], "big")
    if proto == 17:
        return src, dst, packet[off + 8 :]
    if proto == 6:
        return src, dst, packet[off + (packet[off + 12] >> 4) * 4 :]
    return None


def _peer_traffic(packets: list[bytes], ports: set[int]) -> bytes:
    """The payloads of every packet to or from the nodes' ``ports``, without the
    connections that carried this test's operator API calls."""
    parsed = [p for p in map(_ports, packets) if p is not None]
    operator = {
        src
        for src, dst, payload in parsed
        if dst in ports and payload.startswith(OPERATOR_REQUESTS)
    }
    return b"".join(
        payload
        for src, dst, payload in parsed
        if (src in ports or dst in ports) and src not in operator and dst not in operator
    )


@contextmanager
def _capture() -> Iterator[list[bytes]]:
    """Every frame seen on ``lo`` while the block runs."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0003))
    sock.bind(("lo", 0))
    sock.settimeout(0.1)
    packets: list[bytes] = []
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            try:
                packets.append(sock.recv(65_535))
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield packets
    finally:
        stop.set()
        thread.join(5)
        sock.close()


def test_run_refuses_a_keyring_file_it_must_not_trust(tmp_path: Path) -> None:
    """``meshnode run --keyring`` with a world-readable keyring file exits 1 at once with
    one line naming the file and the fix; with ``--encrypt-incoming`` but no keyring it
    exits 2."""
    path = tmp_path / "ring.json"
    ring_file(path, Keyring.new())
    path.chmod(0o644)
    base = ["run", "--port", "0", "--data-dir", str(tmp_path / "d"), "--embedder", "hashing"]
    done = meshnode(*base, "--keyring", str(path))
    assert done.returncode == 1
    assert "accessible by other users" in done.stderr and "chmod 600" in done.stderr
    done = meshnode(*base, "--encrypt-incoming")
    assert done.returncode == 2
    assert "needs --keyring" in done.stderr
    init = meshnode("keys", "init", str(path))
    assert init.returncode == 2 and "exists" in init.stderr


def test_a_stale_keyring_without_an_authority_says_what_fixes_it(tmp_path: Path) -> None:
    """A node that missed a key rotation (it holds only the old key) and runs without a
    mesh authority cannot be handed the new keys: its ``/v1/health`` turns degraded with
    one line naming the fix, and its log says it too.

    On the code before the rule: its push-pulls failed silently (health "ok")."""
    old = Keyring.new("prod")
    current = Keyring((generate_key(),), "prod")
    nodes: list[NodeProcess] = []
    with running(nodes):
        member = keyed("member", tmp_path, [], current)
        nodes.append(member)
        stale = keyed("stale", tmp_path, [member.address], old)
        nodes.append(stale)

        def says_fix() -> bool:
            health = stale.get("/v1/health")
            return any("--keyring FILE" in r for r in health.get("reasons", []))

        wait_until(says_fix, 30, "the stale node's health names the fix")
        (reason,) = [r for r in stale.get("/v1/health")["reasons"] if "--keyring" in r]
        assert "\n" not in reason and "keyring is likely stale" in reason
        assert stale.get("/v1/health")["status"] == "degraded"
        assert member.node_id not in alive_ids(stale)
    log = (tmp_path / "stale.log").read_text()
    assert "keyring_stale" in log
