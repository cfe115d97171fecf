"""A member that answers probes with hostile Vivaldi coordinates, against a real
``meshnode run`` process: every coordinate is refused and counted, the node's own
coordinate does not move, and the member's acks still count (it stays alive)."""

from __future__ import annotations

import math
import socket
import time
import urllib.request
from pathlib import Path

import pytest

from protocol import Ack, Ping, decode
from protocol.messages import NetworkCoordinate
from tests.adversarial.attack import Attacker, cluster, udp_send, wait_until

JOIN_S = 15.0
ANSWER_S = 20.0
HOSTILE_ACKS = 4

pytestmark = pytest.mark.slow

HOSTILE = [
    NetworkCoordinate((1e9,) * 8, 0.1, 0.0, 1e-5),  # far beyond any real position
    NetworkCoordinate((0.01,) + (0.0,) * 7, 0.1, 0.0, -1.0),  # negative height
    NetworkCoordinate((0.01,) + (0.0,) * 7, 99.0, 0.0, 1e-5),  # error out of range
    NetworkCoordinate((0.01,) * 3, 0.1, 0.0, 1e-5),  # wrong dimension
]


def _counter(address: str, name: str) -> float:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    for line in text.splitlines():
        if line.startswith(f'meshnode_events_total{{counter="membership.{name}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_hostile_coordinates_in_acks_are_refused_and_counted(tmp_path: Path) -> None:
    with cluster(tmp_path, 1) as (node,):
        attacker = Attacker()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(0.5)
        port = sock.getsockname()[1]
        try:
            # Join first-hand: our own Alive, sent from the address it advertises.
            sock.sendto(attacker.envelope([attacker.alive("127.0.0.1", port)]), _addr(node.address))
            wait_until(
                lambda: node.members().get(attacker.node_id, {}).get("state") == "alive",
                JOIN_S,
                "the node holds the attacker alive",
            )
            answered = 0
            deadline = time.monotonic() + ANSWER_S
            while answered < HOSTILE_ACKS and time.monotonic() < deadline:
                try:
                    data, src = sock.recvfrom(65_536)
                except TimeoutError:
                    continue
                for message in decode(data).messages:
                    if isinstance(message, Ping) and message.target == attacker.node_id:
                        hostile = HOSTILE[answered % len(HOSTILE)]
                        frame = attacker.envelope([Ack(message.seq, 0, 2, hostile)])
                        udp_send(f"{src[0]}:{src[1]}", frame)
                        answered += 1
            assert answered == HOSTILE_ACKS, "the node did not probe the attacker"
            wait_until(
                lambda: _counter(node.address, "coordinates_rejected") >= HOSTILE_ACKS,
                5.0,
                "every hostile coordinate counted",
            )
            members = node.members()
            assert members[attacker.node_id]["state"] == "alive"  # its acks still count
            assert members[attacker.node_id]["coordinate"] is None
            assert members[attacker.node_id]["estimated_rtt_ms"] is None
            own = members[node.node_id]["coordinate"]
            assert own["vec"] == [0.0] * 8 and own["error"] == 1.5  # never moved
            assert all(math.isfinite(x) for x in own["vec"])
            assert _counter(node.address, "coordinate_updates") == 0
        finally:
            sock.close()


def _addr(address: str) -> tuple[str, int]:
    host, port = address.rsplit(":", 1)
    return host, int(port)
