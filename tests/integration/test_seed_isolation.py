"""A ``meshnode run`` process whose only seed is a dead port says so, and stops saying so
once a node listens there.

Invariants: with every seed failing and no other member known, the node logs
``seeds_unreachable`` (naming the seed and the error) and ``/v1/health`` reads
``isolated: true``, status ``degraded``, with a reason starting ``isolated:`` (the kind
of error, not the seed's address: the route is open to anyone); once a seed
answers, ``isolated`` is false, the status ``ok``, and ``seeds_reachable`` is logged.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.integration.cluster import NodeProcess, wait_until

pytestmark = pytest.mark.slow

ISOLATED_S = 20.0
"""Seconds for the node to find its seed dead (a refused TCP connect: well under one)."""
REJOINED_S = 45.0
"""Seconds for the node to reach the seed once it listens (the join retry backoff of the
local profile, or the 10 s rejoin of a lone node, whichever comes first)."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_node_with_a_dead_seed_reports_it_isolated_until_the_seed_answers(
    tmp_path: Path,
) -> None:
    """On the unfixed code: ``/v1/health`` had no ``isolated`` field and its status stayed
    ``ok`` for the whole wait, and the log held no warning about the seed."""
    port = _free_port()
    seed_address = f"127.0.0.1:{port}"
    extra = ["--embedder", "hashing", "--log-level", "INFO"]  # the all-clear is INFO
    lonely = NodeProcess("lonely", tmp_path / "lonely", [seed_address], extra=extra)
    seed = NodeProcess("seed", tmp_path / "seed", [], port=port, extra=["--embedder", "hashing"])
    log = (tmp_path / "lonely").with_suffix(".log")
    try:
        lonely.start()
        wait_until(lambda: lonely.get("/v1/health")["isolated"] is True, ISOLATED_S, "isolated")
        health = lonely.get("/v1/health")
        assert health["status"] == "degraded"
        (reason,) = [r for r in health["reasons"] if r.startswith("isolated:")]
        assert "ClientConnectorError x1" in reason
        assert seed_address not in reason  # /v1/health is open: no mesh address in it
        wait_until(lambda: "seeds_unreachable" in log.read_text(), ISOLATED_S, "the warning")
        warning = next(line for line in log.read_text().splitlines() if "seeds_unreachable" in line)
        assert seed_address in warning and "Connect" in warning

        seed.start()
        wait_until(
            lambda: lonely.get("/v1/health")["isolated"] is False, REJOINED_S, "no longer isolated"
        )
        health = lonely.get("/v1/health")
        assert health["status"] == "ok", health["reasons"]
        assert health["members"]["alive"] == 2
        wait_until(lambda: "seeds_reachable" in log.read_text(), 5.0, "the all-clear")
    finally:
        lonely.stop()
        seed.stop()
