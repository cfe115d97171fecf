"""Discovery with distance and machine load against real ``meshnode run`` processes: the
score shows latency, the measured round trip and availability's parts (JSON and the CLI
table), the provider's machine pressure arrives from its acks, and ``--max-rtt-ms``
filters: a loopback peer's measured round trip is well under 500 ms and above 0."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.cluster import NodeProcess, wait_until
from tests.integration.test_cli import AGENT, meshnode

pytestmark = pytest.mark.slow

QUERY = "make this text upper case"


def test_discover_shows_distance_and_load(tmp_path: Path) -> None:
    a = NodeProcess("a", tmp_path / "a", [], extra=["--embedder", "hashing"]).start()
    b = NodeProcess(
        "b", tmp_path / "b", [a.address], extra=["--embedder", "hashing", "--agent", AGENT]
    ).start()
    try:

        def scored() -> dict[str, object] | None:
            out = meshnode("discover", QUERY, "--node", a.address, "--json")
            hits = json.loads(out.stdout)
            if not hits or hits[0]["score"]["rtt_ms"] is None:
                return None
            if hits[0]["score"]["machine_pressure"] is None:
                return None
            return dict(hits[0]["score"])

        wait_until(lambda: scored() is not None, 30, "a ranks b with its round trip and load")
        score = scored()
        assert score is not None
        assert 0.0 < float(score["rtt_ms"]) < 100.0  # type: ignore[arg-type]
        assert 0.5 < float(score["latency"]) <= 1.0  # type: ignore[arg-type]
        assert 0.0 <= float(score["machine_pressure"]) <= 1.0  # type: ignore[arg-type]
        assert score["task_availability"] == 1.0  # nothing running
        assert float(score["availability"]) <= float(score["task_availability"])  # type: ignore[arg-type]

        kept = json.loads(
            meshnode("discover", QUERY, "--node", a.address, "--max-rtt-ms", "500", "--json").stdout
        )
        assert [h["node_id"] for h in kept] == [b.node_id]
        none = json.loads(
            meshnode("discover", QUERY, "--node", a.address, "--max-rtt-ms", "0", "--json").stdout
        )
        assert none == []
        bad = meshnode("discover", QUERY, "--node", a.address, "--max-rtt-ms", "-1")
        assert bad.returncode != 0
        assert "max_rtt_ms" in bad.stdout + bad.stderr

        header = meshnode("discover", QUERY, "--node", a.address).stdout.splitlines()[0]
        assert header.split()[9:13] == ["LAT", "RTT_MS", "TASKS", "PRESS"]
    finally:
        b.stop()
        a.stop()
