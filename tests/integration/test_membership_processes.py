"""Ten real ``meshnode run`` processes on 127.0.0.1 (local profile), real UDP and TCP.

Invariants, in one cluster's life:
1. every node sees every other node alive;
2. SIGKILL one → every survivor marks it dead;
3. restart it with the same data dir → alive again everywhere, same id, higher incarnation;
4. SIGTERM another → every survivor marks it left, not dead;
5. random bytes, a forged signature and a replayed old-incarnation alive sent to a node's
   UDP port change nothing, and are counted as dropped.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
from pathlib import Path

import pytest

from meshnode.runtime.store import load_identity
from protocol import Alive, Identity, encode, signing_bytes
from tests.integration.cluster import NodeProcess, cluster, wait_until

N = 10
CONVERGE_S = 30.0
DETECT_S = 30.0

pytestmark = pytest.mark.slow


def _states(nodes: list[NodeProcess], subject: str) -> set[str]:
    return {n.members()[subject]["state"] for n in nodes if subject in n.members()}


def _all_see(nodes: list[NodeProcess], subject: str, state: str) -> bool:
    return all(n.members().get(subject, {}).get("state") == state for n in nodes)


def _udp_send(address: str, data: bytes) -> None:
    host, port = address.rsplit(":", 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(data, (host, int(port)))


def test_ten_process_lifecycle(tmp_path: Path) -> None:
    with cluster(tmp_path, N) as nodes:
        ids = {n.node_id for n in nodes}
        wait_until(
            lambda: all(
                {i for i, m in n.members().items() if m["state"] == "alive"} == ids for n in nodes
            ),
            CONVERGE_S,
            "every node sees all ten alive",
        )

        # 2. SIGKILL one: no Leave is sent, so survivors must detect the failure.
        victim = nodes[3]
        survivors = [n for n in nodes if n is not victim]
        old_incarnation = survivors[0].members()[victim.node_id]["incarnation"]
        victim.signal(signal.SIGKILL)
        victim.wait()
        wait_until(
            lambda: _all_see(survivors, victim.node_id, "dead"),
            DETECT_S,
            "every survivor marks the killed node dead",
        )

        # 3. Restart with the same data dir: same id, back alive with a higher incarnation.
        restarted = NodeProcess(victim.name, victim.data_dir, [nodes[0].address]).start()
        nodes[3] = restarted
        assert restarted.node_id == victim.node_id
        wait_until(
            lambda: all(
                n.members().get(victim.node_id, {}).get("state") == "alive"
                and n.members()[victim.node_id]["incarnation"] > old_incarnation
                for n in nodes
            ),
            CONVERGE_S,
            "the restarted node is alive everywhere with a higher incarnation",
        )

        # 4. SIGTERM another: a graceful leave is "left", never "dead".
        leaver = nodes[5]
        leaver.signal(signal.SIGTERM)
        assert leaver.wait() == 0
        rest = [n for n in nodes if n is not leaver]
        wait_until(
            lambda: _all_see(rest, leaver.node_id, "left"),
            CONVERGE_S,
            "every survivor marks the SIGTERMed node left",
        )
        assert _states(rest, leaver.node_id) == {"left"}

        # 5. Hostile datagrams change nothing.
        target = nodes[1]
        before = {i: (m["state"], m["incarnation"]) for i, m in target.members().items()}
        dropped_before = target.get("/v1/health")["dropped"]
        _udp_send(target.address, os.urandom(200))
        stranger = Identity.generate()
        frame = bytearray(
            encode([Alive(stranger.node_id, 1, "127.0.0.1", 1, b"\0" * 64)], stranger)
        )
        frame[-1] ^= 0xFF
        _udp_send(target.address, bytes(frame))
        key = load_identity(restarted.data_dir / "node.key")
        stale = Alive(key.node_id, old_incarnation, "127.0.0.1", 9, b"\0" * 64)
        stale = dataclasses.replace(stale, signature=key.sign(signing_bytes(stale)))
        _udp_send(target.address, encode([stale], key))

        def counted() -> bool:
            dropped = target.get("/v1/health")["dropped"]
            return (
                dropped.get("MalformedMessage", 0) + dropped.get("BadSignature", 0)
                >= dropped_before.get("MalformedMessage", 0)
                + dropped_before.get("BadSignature", 0)
                + 2
            )

        wait_until(counted, 10, "the two bad datagrams are counted as dropped")
        after = {i: (m["state"], m["incarnation"]) for i, m in target.members().items()}
        assert stranger.node_id not in after
        assert after[restarted.node_id] == before[restarted.node_id]
        assert target.members()[restarted.node_id]["address"] == restarted.address
        assert {k: v for k, v in after.items()} == before
