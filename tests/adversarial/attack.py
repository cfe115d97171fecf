"""The attacker's toolkit for the adversarial tests: a stranger with a fresh Ed25519 key and
access to one node's port on 127.0.0.1, crafting traffic with the project's own ``protocol``
package, plus probes of what a victim process costs (RSS, open descriptors).

The tests in this directory run real ``meshnode run`` processes (see
:mod:`tests.integration.cluster`) and assert what a user would notice: a killed node is
still detected in its normal time, the victim stays alive in every view, memory and record
counts stay bounded, health answers, the honest provider is not blamed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import urllib.request
from pathlib import Path
from typing import Any

from protocol import Alive, Dead, Identity, Leave, Message, Suspect, encode, signing_bytes
from tests.integration.cluster import NodeProcess, cluster, wait_until

__all__ = [
    "Attacker",
    "NodeProcess",
    "cluster",
    "fd_count",
    "http_json",
    "rss_mb",
    "split_address",
    "udp_send",
    "wait_until",
]


def split_address(address: str) -> tuple[str, int]:
    """``"127.0.0.1:7946"`` → ``("127.0.0.1", 7946)``."""
    host, port = address.rsplit(":", 1)
    return host.strip("[]"), int(port)


def udp_send(address: str, data: bytes) -> None:
    """Send one datagram to ``address`` from a throw-away socket."""
    host, port = split_address(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.sendto(data, (host, port))


def http_json(
    address: str, path: str, body: Any = None, *, timeout: float = 5.0
) -> tuple[int, Any]:
    """GET (or POST ``body`` as JSON) and return ``(status, decoded body or text)``."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://{address}{path}",
        data=data,
        headers={"Content-Type": "application/json"} if data is not None else {},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            raw = resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode("utf-8", "replace")


def rss_mb(pid: int) -> float:
    """Resident set size of process ``pid`` in MiB (from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def fd_count(pid: int) -> int:
    """Open file descriptors of process ``pid``."""
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclasses.dataclass
class Attacker:
    """A stranger: a fresh key nobody has seen, able to sign whatever it likes."""

    identity: Identity = dataclasses.field(default_factory=Identity.generate)

    @property
    def node_id(self) -> str:
        return self.identity.node_id

    def envelope(self, messages: list[Message]) -> bytes:
        """One signed envelope from the attacker carrying ``messages``."""
        return encode(messages, self.identity)

    def sign(self, message: Any) -> Any:
        """``message`` with its ``signature`` field signed by the attacker's key."""
        return dataclasses.replace(message, signature=self.identity.sign(signing_bytes(message)))

    def alive(self, host: str, port: int, incarnation: int = 0) -> Alive:
        """The attacker's own signed ``Alive`` claiming ``host:port``."""
        return self.sign(Alive(self.node_id, incarnation, host, port, bytes(64)))

    def suspect(self, victim: str, incarnation: int) -> Suspect:
        return self.sign(Suspect(victim, incarnation, self.node_id, bytes(64)))

    def dead(self, victim: str, incarnation: int) -> Dead:
        return self.sign(Dead(victim, incarnation, self.node_id, bytes(64)))

    def leave(self, incarnation: int = 0) -> Leave:
        return self.sign(Leave(self.node_id, incarnation, bytes(64)))
