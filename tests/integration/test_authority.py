"""A mesh authority with real ``meshnode run`` processes (local profile, 127.0.0.1).

The authority is made and used through the ``meshnode authority`` commands; the nodes run
with ``--authority`` and ``--cert``. An outsider (a node without a certificate) can neither
join, be heard, read the mesh's manifests, write ledger records nor run tasks; a revoked
node is cut off everywhere, from a revocation handed to one node.
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
from typing import Any

import pytest

from meshnode.runtime.store import save_identity, save_keyring
from protocol import Identity, LedgerRecord
from protocol.keyring import Keyring, format_key, generate_key
from protocol.messages import RejoinRequest
from tests.adversarial.attack import Attacker, NodeProcess, http_json, udp_send, wait_until

pytestmark = pytest.mark.slow

AGENTS = Path(__file__).parents[1] / "adversarial" / "task_agents.py"
PROVIDER = ["--agent", f"{AGENTS}:TaskProvider"]
READY_S = 30.0


def cli(*args: str) -> str:
    """Run ``meshnode ARGS`` and return its stdout (fails the test on a non-zero exit)."""
    done = subprocess.run(
        [sys.executable, "-m", "meshnode.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def admission(node: NodeProcess) -> dict[str, Any]:
    body: dict[str, Any] = node.get("/v1/health")["admission"]
    return body


def delegate(node: NodeProcess, deadline_s: float) -> tuple[int, Any]:
    return http_json(
        node.address,
        "/v1/delegate",
        {"capability": "slow_echo", "input": {"text": "hi"}, "deadline_s": deadline_s},
        timeout=deadline_s + 15,
    )


def post_wire(address: str, path: str, data: bytes) -> Any:
    request = urllib.request.Request(
        f"http://{address}{path}", data=data, headers={"Content-Type": "application/x-meshnode"}
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read())


def served(node: NodeProcess) -> int:
    return int(node.get("/v1/health")["counters"]["tasks"].get("tasks_served", 0))


def manifests(node: NodeProcess) -> set[str]:
    _, body = http_json(node.address, "/v1/manifests")
    return {m["node_id"] for m in body["manifests"]}


def test_outsiders_are_kept_out_and_a_revoked_node_is_cut_off(tmp_path: Path) -> None:
    authority_dir = tmp_path / "authority"
    authority = cli("authority", "init", str(authority_dir))
    assert (authority_dir / "authority.key").stat().st_mode & 0o777 == 0o600

    def certified(name: str, seeds: list[str], extra: list[str] | None = None) -> NodeProcess:
        data = tmp_path / name
        data.mkdir()
        save_identity(data / "node.key", Identity.generate())
        node_id = cli("id", "--data-dir", str(data))
        cert = tmp_path / f"{name}.cert"
        issued = json.loads(
            cli(
                "authority",
                "issue",
                "--dir",
                str(authority_dir),
                "--node-id",
                node_id,
                "--role",
                "member",
                "--days",
                "1",
                "--name",
                name,
                "--out",
                str(cert),
                "--json",
            )
        )
        assert issued["node_id"] == node_id
        flags = ["--authority", authority, "--cert", str(cert), *(extra or [])]
        node = NodeProcess(name, data, seeds, extra=flags)
        running.append(node)
        return node.start()

    running: list[NodeProcess] = []
    try:
        provider = certified("provider", [], PROVIDER)
        member = certified("member", [provider.address])
        doomed = certified("doomed", [provider.address])
        outsider_dir = tmp_path / "outsider"
        outsider_dir.mkdir()
        outsider = NodeProcess("outsider", outsider_dir, [provider.address], extra=PROVIDER)
        running.append(outsider)
        outsider.start()
        certified_nodes = [provider, member, doomed]

        wait_until(
            lambda: all(provider.node_id in manifests(n) for n in (member, doomed)),
            READY_S,
            "the certified nodes know the provider's manifest",
        )
        status, body = delegate(doomed, 10.0)
        assert status == 200, body  # a certified node runs tasks

        # The outsider's joins (push-pulls to the provider) are refused ...
        wait_until(
            lambda: admission(provider)["counters"]["unadmitted_dropped"] >= 3,
            READY_S,
            "the provider refused the outsider's joins",
        )
        for node in certified_nodes:
            assert outsider.node_id not in node.members()
            assert outsider.node_id not in manifests(node)
        # ... so it learns nobody and reads no manifest of the mesh ...
        assert set(outsider.members()) == {outsider.node_id}
        assert manifests(outsider) == {outsider.node_id}
        # ... and has nobody to run a task on.
        status, _ = delegate(outsider, 2.0)
        assert status != 200

        # A stranger's own datagrams are dropped: it is not heard.
        stranger = Attacker()
        before = admission(provider)["counters"]["unadmitted_dropped"]
        host, port = provider.address.rsplit(":", 1)
        udp_send(provider.address, stranger.envelope([stranger.alive(host, int(port) + 1)]))
        wait_until(
            lambda: admission(provider)["counters"]["unadmitted_dropped"] > before,
            10,
            "the provider dropped the stranger's datagram",
        )
        assert stranger.node_id not in provider.members()

        # Nor can it write ledger records, signed by itself or about itself.
        record = stranger.sign(
            LedgerRecord(stranger.node_id, provider.node_id, 0.0, 5, 1, 4e9, bytes(64))
        )
        about = stranger.sign(
            LedgerRecord(stranger.node_id, stranger.node_id, 1.0, 5, 2, 4e9, bytes(64))
        )
        answer = post_wire(provider.address, "/v1/wire/records", stranger.envelope([record, about]))
        assert answer == {"applied": 0}

        # Revoke one member through one node: everyone drops it.
        revoked = json.loads(
            cli(
                "authority",
                "revoke",
                "--dir",
                str(authority_dir),
                "--node-id",
                doomed.node_id,
                "--node",
                member.address,
                "--out",
                str(tmp_path / "doomed.rev"),
                "--json",
            )
        )
        assert (tmp_path / "doomed.rev").is_file()
        assert revoked["accepted"] is True
        wait_until(
            lambda: all(doomed.node_id not in n.members() for n in (provider, member)),
            READY_S,
            "every node dropped the revoked member",
        )
        assert admission(provider)["revocations"] == 1
        # Its tasks are refused, and it is no longer heard: it sees the others fail.
        before_served = served(provider)
        status, _ = delegate(doomed, 3.0)
        assert status != 200
        assert served(provider) == before_served
        wait_until(
            lambda: (
                doomed.members().get(provider.node_id, {}).get("state", "dead")
                in ("suspect", "dead")
            ),
            READY_S,
            "the revoked node is no longer answered",
        )
        assert doomed.node_id not in provider.members()
        # The revoked node runs on, and says why in its health once it holds the
        # revocation (handed to it here; peers that expelled it may not gossip it there).
        again = json.loads(
            cli(
                "authority", "revoke", "--dir", str(authority_dir), "--node-id",
                doomed.node_id, "--node", doomed.address, "--out",
                str(tmp_path / "doomed-again.rev"), "--json",
            )
        )  # fmt: skip
        assert again["accepted"] is True
        health = doomed.get("/v1/health")
        assert health["status"] == "degraded"
        assert any(
            r.startswith("this node's certificate is revoked by the mesh authority")
            for r in health["reasons"]
        ), health["reasons"]
        assert health["admission"]["own_problem"] == (
            "this node's certificate is revoked by the mesh authority"
        )
    finally:
        for node in running:
            node.stop()


def _keys(node: NodeProcess, *args: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(cli("keys", *args, "--node", node.address, "--json"))
    return out


def _alive(node: NodeProcess) -> set[str]:
    return {n for n, m in node.members().items() if m["state"] == "alive"}


def _post_raw(address: str, path: str, data: bytes) -> int:
    request = urllib.request.Request(
        f"http://{address}{path}", data=data, headers={"Content-Type": "application/x-meshnode"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_a_node_down_during_a_key_rotation_rejoins_through_its_certificate(
    tmp_path: Path,
) -> None:
    """Five certified nodes sealed under one keyring; one is stopped, the others rotate to
    a new key (``meshnode keys install/use/remove``), then it restarts with its stale
    keyring file. Its push-pulls are refused (nobody can open them); it asks a member over
    ``POST /v1/wire/rejoin`` with its certificate, gets the new keyring sealed to its key,
    installs and persists it, and is alive everywhere again.

    Before the rejoin route, such a node stayed alone: with the driver never asking, the
    node was still not alive anywhere after the 30 s wait (as ``late-old`` in
    ``test_keyring.py::test_rotation_across_five_nodes`` never joins). A
    request signed by a stranger presenting that node's certificate is refused (403), and
    a burst of requests from one address is rate-limited (429)."""
    authority_dir = tmp_path / "authority"
    authority = cli("authority", "init", str(authority_dir))
    old = Keyring.new("rot")
    nodes: list[NodeProcess] = []
    certs: dict[str, Path] = {}

    def start(name: str, seeds: list[str]) -> NodeProcess:
        data = tmp_path / name
        data.mkdir()
        save_identity(data / "node.key", Identity.generate())
        node_id = cli("id", "--data-dir", str(data))
        certs[name] = tmp_path / f"{name}.cert"
        cli(
            "authority",
            "issue",
            "--dir",
            str(authority_dir),
            "--node-id",
            node_id,
            "--role",
            "member",
            "--days",
            "1",
            "--out",
            str(certs[name]),
        )
        ring = tmp_path / f"{name}.keyring.json"
        save_keyring(ring, old)
        flags = [
            "--authority",
            authority,
            "--cert",
            str(certs[name]),
            "--keyring",
            str(ring),
            "--embedder",
            "hashing",
        ]
        node = NodeProcess(name, data, seeds, extra=flags)
        nodes.append(node)
        return node.start()

    try:
        seed = start("n0", [])
        for i in range(1, 5):
            start(f"n{i}", [seed.address])
        ids = {n.node_id for n in nodes}
        wait_until(lambda: all(_alive(n) == ids for n in nodes), READY_S, "5 certified join")

        late = nodes[4]
        late.stop()
        others = nodes[:4]
        wait_until(
            lambda: all(late.node_id not in _alive(n) for n in others), READY_S, "n4 is gone"
        )
        new = generate_key()
        for action, node in (("install", others[1]), ("use", others[2]), ("remove", others[3])):
            key = new if action != "remove" else old.primary
            out = _keys(node, action, format_key(key))
            assert out["acked"] == 4, out

        late.start()  # same data dir, certificate and (stale) keyring file
        wait_until(
            lambda: all(_alive(n) == ids for n in nodes),
            READY_S,
            "the node that missed the rotation is alive everywhere again",
        )
        on_disk = Keyring.from_text((tmp_path / "n4.keyring.json").read_text())
        assert on_disk.keys == (new,)
        answered = sum(
            n.get("/v1/health")["admission"]["counters"]["rejoins_answered"] for n in others
        )
        assert answered >= 1

        # A stranger replaying n4's certificate in a request it signs is refused.
        stranger = Attacker()
        from meshnode.runtime.store import load_certificate

        request = RejoinRequest(load_certificate(certs["n4"]), time.time(), os.urandom(16))
        statuses = [
            _post_raw(seed.address, "/v1/wire/rejoin", stranger.envelope([request]))
            for _ in range(6)
        ]
        assert statuses[0] == 403
        assert 429 in statuses
    finally:
        for node in nodes:
            node.stop()


def test_run_without_a_valid_certificate_fails_at_start_with_the_fix(tmp_path: Path) -> None:
    """``meshnode run --authority`` with no certificate, or one for another node, exits at
    once with one line naming ``meshnode authority issue``."""
    authority_dir = tmp_path / "authority"
    authority = cli("authority", "init", str(authority_dir))
    other = Identity.generate()
    wrong = tmp_path / "other.cert"
    cli(
        "authority", "issue", "--dir", str(authority_dir), "--node-id", other.node_id,
        "--days", "1", "--out", str(wrong),
    )  # fmt: skip
    for extra in ([], ["--cert", str(wrong)]):
        done = subprocess.run(
            [
                sys.executable, "-m", "meshnode.cli", "run", "--profile", "local", "--port", "0",
                "--data-dir", str(tmp_path / "node"), "--embedder", "hashing",
                "--authority", authority, *extra,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )  # fmt: skip
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "meshnode authority issue" in lines[0], lines
        assert "listening" not in done.stdout
