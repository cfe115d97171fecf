"""Three real ``meshnode run`` processes on 127.0.0.1: their probes carry Vivaldi
coordinates, ``/v1/members`` shows each member's coordinate with the estimated and the
measured round trip, and ``meshnode rtt`` prints the estimate."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.cluster import NodeProcess, cluster, wait_until

CONVERGE_S = 30.0
LOOPBACK_MAX_MS = 100.0
"""A loose ceiling for a loopback round trip estimate (the real ones are well under 1 ms;
the coordinates start from nothing)."""

pytestmark = pytest.mark.slow


def _holds_coordinates(node: NodeProcess, others: list[NodeProcess]) -> bool:
    members = node.members()
    return all(
        members.get(o.node_id, {}).get("coordinate") is not None
        and members[o.node_id].get("measured_rtt_ms") is not None
        for o in others
    )


def _rtt(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshnode.cli", "rtt", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_coordinates_in_members_and_meshnode_rtt(tmp_path: Path) -> None:
    with cluster(tmp_path, 3) as nodes:
        for node in nodes:
            others = [o for o in nodes if o is not node]
            wait_until(
                lambda node=node, others=others: _holds_coordinates(node, others),  # type: ignore[misc]
                CONVERGE_S,
                f"{node.name} holds the others' coordinates and measured round trips",
            )
        a, b, c = nodes
        data = a.get("/v1/members")
        assert data["node_id"] == a.node_id
        by_id: dict[str, dict[str, Any]] = {m["node_id"]: m for m in data["members"]}
        assert by_id[a.node_id]["estimated_rtt_ms"] == 0.0
        for other in (b, c):
            m = by_id[other.node_id]
            coord = m["coordinate"]
            assert len(coord["vec"]) == 8
            assert all(math.isfinite(x) for x in coord["vec"])
            assert 0.0 <= coord["error"] <= 1.5 and coord["height"] > 0.0
            assert 0.0 < m["estimated_rtt_ms"] < LOOPBACK_MAX_MS
            assert 0.0 < m["measured_rtt_ms"] < LOOPBACK_MAX_MS

        # meshnode rtt NODE (by name): the asked node to NODE, estimate and measurement.
        plain = _rtt(b.name, "--node", a.address)
        assert plain.returncode == 0, plain.stderr
        assert plain.stdout.startswith(f"{a.name} -> {b.name}: estimated ")
        assert "ms" in plain.stdout and "measured" in plain.stdout

        # NODE by id prefix, NODE2 by name, as JSON: between two other nodes.
        between = _rtt(b.node_id[:12], c.name, "--node", a.address, "--json")
        assert between.returncode == 0, between.stderr
        out = json.loads(between.stdout)
        assert (out["from"], out["to"]) == (c.node_id, b.node_id)
        assert 0.0 < out["estimated_rtt_ms"] < LOOPBACK_MAX_MS
        assert out["measured_rtt_ms"] is None

        unknown = _rtt("no-such-node", "--node", a.address)
        assert unknown.returncode == 1
        assert "no member named 'no-such-node'" in unknown.stderr
