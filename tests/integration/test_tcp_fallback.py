"""The TCP fallback probe with real packet drops: two ``meshnode run`` processes in a
private network namespace, an nftables rule dropping every UDP datagram to one of them.

The namespace belongs to one thread of the test (``unshare(CLONE_NEWNET)`` is per
thread): the processes started from that thread, the ``nft`` rule and the HTTP queries
all live in it, and it disappears with them. Needs root (or CAP_NET_ADMIN) and ``nft``;
skipped otherwise.
"""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from tests.integration.cluster import NodeProcess, wait_until

pytestmark = pytest.mark.slow

CLONE_NEWNET = 0x40000000
"""``unshare`` flag of a new network namespace (linux/sched.h)."""
TABLE = "meshnode_fallback_test"
JOIN_S = 20.0
DROP_S = 6.0
"""Seconds of dropped UDP watched: on the local profile (probe every 0.3 s, 0.1 s
timeout, suspicion after 1.2 s with two members) a member whose probes all fail is
suspected within about half a second and dead within two."""

SUSPICIONS = 'counter="membership.suspicions_raised"'

T = TypeVar("T")


def _in_private_netns(body: Callable[[], T]) -> T:
    """Run ``body`` in a thread moved into a fresh network namespace (loopback up)."""
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.unshare(CLONE_NEWNET) != 0:
                raise PermissionError(ctypes.get_errno(), "unshare(CLONE_NEWNET) refused")
            subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
            result.append(body())
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=run, name="private-netns")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def _metric(text: str, name: str, labels: str = "") -> float:
    pattern = re.escape(name + (("{" + labels + "}") if labels else "")) + r" ([0-9.e+]+)"
    match = re.search(r"^" + pattern + "$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def _scrape(node: NodeProcess) -> str:
    with urllib.request.urlopen(f"http://{node.address}/metrics", timeout=5) as resp:
        return resp.read().decode()


def _nft(*args: str) -> str:
    return subprocess.run(["nft", *args], check=True, capture_output=True, text=True).stdout


@pytest.mark.skipif(shutil.which("nft") is None or shutil.which("ip") is None, reason="no nft/ip")
def test_a_member_whose_udp_is_dropped_stays_alive_through_tcp(tmp_path: Path) -> None:
    """n1's UDP port drops everything (nftables, input hook): n0's UDP pings never reach
    it, nor do n0's acks to n1's pings. With two members there is no relay, so only the
    TCP ping can answer a probe. n0 must keep n1 alive for the whole window, its failed
    direct probes saved by TCP acks (``meshnode_tcp_fallback_total{result="ok"}``), no
    suspicion raised. Seen here: 78 datagrams dropped, 19 probes saved in 6 s, 0
    suspicions, n1 alive throughout.

    Without the fallback (``tcp_fallback_max_concurrent=0``, the behaviour before it):
    73 datagrams dropped, 0 saved, 3 suspicions raised, and n0 saw n1 go alive →
    suspect → dead within the window."""

    def body() -> dict[str, float | str]:
        try:
            _nft("list", "tables")
        except (subprocess.CalledProcessError, OSError) as exc:
            pytest.skip(f"nftables unusable here: {exc}")
        n0 = NodeProcess("n0", tmp_path / "n0", []).start()
        n1 = NodeProcess("n1", tmp_path / "n1", [n0.address])
        try:
            n1.start()
            wait_until(
                lambda: (
                    n0.members().get(n1.node_id, {}).get("state") == "alive"
                    and n1.members().get(n0.node_id, {}).get("state") == "alive"
                ),
                JOIN_S,
                "both nodes see each other alive",
            )
            before = _scrape(n0)
            _nft("add", "table", "inet", TABLE)
            _nft(
                "add chain inet",
                TABLE,
                "input { type filter hook input priority 0 ; policy accept ; }",
            )
            _nft("add rule inet", TABLE, "input", "udp dport", str(n1.port), "counter drop")
            started = time.monotonic()
            states = set()
            while time.monotonic() - started < DROP_S:
                states.add(n0.members()[n1.node_id]["state"])
                time.sleep(0.1)
            after = _scrape(n0)
            dropped = re.search(r"packets (\d+)", _nft("list", "table", "inet", TABLE))
            return {
                "states": ",".join(sorted(states)),
                "dropped": float(dropped.group(1)) if dropped else 0.0,
                "ok": _metric(after, "meshnode_tcp_fallback_total", 'result="ok"')
                - _metric(before, "meshnode_tcp_fallback_total", 'result="ok"'),
                "suspicions": _metric(after, "meshnode_events_total", SUSPICIONS)
                - _metric(before, "meshnode_events_total", SUSPICIONS),
                "answered": _metric(
                    _scrape(n1), "meshnode_events_total", 'counter="membership.tcp_pings_answered"'
                ),
            }
        finally:
            n1.stop()
            n0.stop()

    try:
        seen = _in_private_netns(body)
    except PermissionError as exc:
        pytest.skip(f"no private network namespace here (needs CAP_NET_ADMIN): {exc}")
    assert seen["dropped"] > 10, seen  # the rule really dropped datagrams
    assert seen["states"] == "alive", seen
    assert seen["suspicions"] == 0, seen
    # Each probe period (0.3 s, stretched by Lifeguard) with a lost ping is saved by TCP.
    assert seen["ok"] >= 5, seen
    assert seen["answered"] >= seen["ok"], seen
