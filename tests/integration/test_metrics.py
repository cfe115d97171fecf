"""``GET /metrics`` on real nodes: counters move as a mesh probes, suspects a stopped node
and runs delegations; the exposition parses; the route obeys the read access rule."""

from __future__ import annotations

import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from meshnode import MeshNode, NodeConfig
from tests.adversarial.attack import http_json
from tests.integration.cluster import NodeProcess, wait_until

UPPER = str(Path(__file__).with_name("cli_agents.py")) + ":Upper"


def scrape(address: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a node's ``/metrics``: (name, sorted labels) → value."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.mark.slow
def test_counters_move_with_probes_suspicion_and_delegations(tmp_path: Path) -> None:
    """Invariant: on a real three-process mesh, the requester's probe and push-pull
    histograms and UDP counters grow, a SIGSTOPped member is suspected (its
    ``meshnode_msg_suspect_total`` and ``meshnode_members{state="suspect"}`` or dead move),
    delegations are counted by outcome on both sides (accepted and completed on the
    provider, refused inputs by reason) and timed on the requester, and the requester's
    trust history of the provider gets a point."""
    hashing = ["--embedder", "hashing"]
    provider = NodeProcess("p", tmp_path / "p", [], extra=[*hashing, "--agent", UPPER]).start()
    nodes = [provider]
    stopped: NodeProcess | None = None
    try:
        asker = NodeProcess("r", tmp_path / "r", [provider.address], extra=hashing)
        nodes.append(asker.start())
        victim = NodeProcess("v", tmp_path / "v", [provider.address], extra=hashing)
        nodes.append(victim.start())
        wait_until(lambda: len(asker.members()) == 3, 30, "three members")

        def probed() -> bool:
            s = scrape(asker.address)
            return (
                value(s, "meshnode_probe_duration_seconds_count") >= 3
                and value(s, "meshnode_push_pull_duration_seconds_count") >= 1
            )

        wait_until(probed, 30, "probes and a push-pull timed")
        before = scrape(asker.address)
        assert value(before, "meshnode_members", state="alive") == 3
        assert value(before, "meshnode_packets_total", transport="udp", direction="sent") > 0
        assert value(before, "meshnode_bytes_total", transport="udp", direction="received") > 0
        assert value(before, "meshnode_bytes_total", transport="tcp", direction="sent") > 0
        assert value(before, "meshnode_msg_alive_total") >= 1
        assert 0 <= value(before, "meshnode_health_score") <= 8

        victim.signal(signal.SIGSTOP)
        stopped = victim

        def suspected() -> bool:
            s = scrape(asker.address)
            return value(s, "meshnode_msg_suspect_total") > value(
                before, "meshnode_msg_suspect_total"
            ) and (
                value(s, "meshnode_members", state="suspect")
                + value(s, "meshnode_members", state="dead")
                >= 1
            )

        wait_until(suspected, 30, "the stopped member suspected, by the metrics")
        victim.signal(signal.SIGCONT)
        stopped = None

        def indexed() -> bool:
            status, hits = http_json(
                asker.address, "/v1/discover", {"capability_name": "uppercase_text"}
            )
            return status == 200 and bool(hits["candidates"])

        wait_until(indexed, 30, "the asker indexes the provider")
        for i in range(3):
            status, done = http_json(
                asker.address,
                "/v1/delegate",
                {
                    "capability": "uppercase_text",
                    "input": {"text": f"x{i}"},
                    "expect": {"type": "object", "required": ["text"]},  # scored: trust moves
                },
                timeout=30,
            )
            assert status == 200, done
        status, refused = http_json(
            asker.address,
            "/v1/delegate",
            {"capability": "uppercase_text", "input": {"wrong": 1}},
            timeout=30,
        )
        assert status == 422, refused  # the input is the problem

        mine = scrape(asker.address)
        assert value(mine, "meshnode_delegations_total", outcome="ok") == 3
        assert value(mine, "meshnode_delegations_total", outcome="failed") == 1
        assert value(mine, "meshnode_delegation_duration_seconds_count") == 4
        assert value(mine, "meshnode_discovery_duration_seconds_count") >= 4
        assert value(mine, "meshnode_spans_stored") > 0
        assert value(mine, "meshnode_events_total", counter="channels.frames_sent") > 0
        assert value(mine, "meshnode_events_total", counter="tasks.delegations_ok") == 3
        assert value(mine, "meshnode_trust_score", peer=provider.node_id) > 0
        theirs = scrape(provider.address)
        assert value(theirs, "meshnode_tasks_total", outcome="accepted") == 3
        assert value(theirs, "meshnode_tasks_total", outcome="completed") == 3
        assert value(theirs, "meshnode_task_rejections_total", reason="invalid_input") == 1
        assert value(theirs, "meshnode_manifests") == 3
        assert value(theirs, "meshnode_index_entries") >= 0

        def history() -> list[dict[str, float]]:
            status, body = http_json(asker.address, f"/v1/trust/{provider.node_id}/history")
            assert status == 200 and body["node_id"] == provider.node_id
            return list(body["points"])

        # The trust view is sampled every TRUST_SAMPLE_INTERVAL_S (10 s).
        wait_until(lambda: bool(history()), 30, "a trust history point for the provider")
        (point,) = history()[:1]
        assert 0.0 < point["score"] <= 1.0
        assert abs(point["at"] - time.time()) < 60
    finally:
        if stopped is not None:
            stopped.signal(signal.SIGCONT)
        for node in nodes:
            node.stop()


def _config(name: str, seeds: tuple[str, ...] = (), **overrides: Any) -> NodeConfig:
    return NodeConfig.local(name=name, port=0, seeds=seeds, embedder="hashing", **overrides)


async def test_metrics_and_traces_follow_the_read_rule_with_a_registry_per_node() -> None:
    """Invariant: ``/metrics``, ``/v1/traces``, ``/v1/traces/{id}`` and
    ``/v1/trust/{id}/history`` answer 401 without the token when loopback is not trusted
    and 200 with it; two nodes in one process each export their own registry (no
    duplicate-series clash); a node with metrics off answers 404."""
    token = "metrics-reader-token-0123"
    closed = MeshNode(_config("closed", api_trust_loopback=False, api_token=token))
    await closed.start()
    other = MeshNode(_config("other", seeds=(f"127.0.0.1:{closed.address[1]}",), metrics=False))
    await other.start()
    try:
        base = f"http://127.0.0.1:{closed.address[1]}"
        paths = [
            "/metrics",
            "/v1/traces",
            f"/v1/traces/{'ab' * 16}",
            f"/v1/trust/{other.node_id}/history",
        ]
        async with aiohttp.ClientSession() as session:
            for path in paths:
                async with session.get(base + path) as resp:
                    assert resp.status == 401, path
                auth = {"Authorization": f"Bearer {token}"}
                async with session.get(base + path, headers=auth) as resp:
                    assert resp.status == 200, path
            async with session.get(f"http://127.0.0.1:{other.address[1]}/metrics") as resp:
                assert resp.status == 404
            async with session.get(base + "/v1/traces/XYZ", headers=auth) as resp:
                assert resp.status == 400
            async with session.get(base + "/v1/traces?limit=0", headers=auth) as resp:
                assert resp.status == 400
        assert closed.obs is not None and other.obs is not None
        assert closed.obs.registry is not None and other.obs.registry is None
        twin = MeshNode(_config("twin"))
        await twin.start()
        try:
            started = time.monotonic()
            async with aiohttp.ClientSession() as session:
                url = f"http://127.0.0.1:{twin.address[1]}/metrics"
                async with session.get(url) as resp:
                    assert resp.status == 200
                    names = {f.name for f in text_string_to_metric_families(await resp.text())}
            assert "meshnode_msg_alive" in names and "meshnode_members" in names
            assert time.monotonic() - started < 30
            assert twin.obs is not None and twin.obs.registry is not closed.obs.registry
        finally:
            await twin.aclose()
    finally:
        await other.aclose()
        await closed.aclose()
