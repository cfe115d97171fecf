"""MeshNode lifecycle in the caller's event loop.

Invariants: a node joins on its first push-pull with the seed (no retry needed); aclose()
twice is safe and leaves no task of the node running; a closed node cannot be restarted;
a failed start (port taken) releases what it had bound; HTTP health reflects the state.
"""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import pytest
from structlog.testing import capture_logs

from meshnode import BindError, InvalidRequest, MeshNode, NodeConfig, NodeNotRunning
from meshnode.runtime.node import wait_for


def _config(**kw: object) -> NodeConfig:
    return NodeConfig.local(port=0, embedder="hashing", **kw)  # type: ignore[arg-type]


async def test_join_needs_no_retry_and_close_leaves_nothing() -> None:
    before = asyncio.all_tasks()
    seed = MeshNode(_config(name="seed"))
    await seed.start()
    node = MeshNode(_config(name="joiner", seeds=(f"127.0.0.1:{seed.address[1]}",)))
    await node.start()
    await wait_for(lambda: seed.core.membership.member(node.node_id) is not None, 10)
    assert node.core.membership.counters["join_attempts"] == 1
    async with aiohttp.ClientSession() as session, session.get(f"{node.url}/v1/health") as r:
        health = await r.json()
    assert health["status"] == "ok"
    assert health["members"]["alive"] == 2
    counters = health["counters"]
    assert counters["membership"]["join_attempts"] == 1
    assert counters["membership"]["push_pull_merges"] >= 1  # the join's push-pull
    assert set(counters["mesh"]) == set(node.core.counters)
    assert counters["tasks"]["tasks_served"] == 0
    assert "alive=2" in repr(node)
    await node.aclose()
    await node.aclose()
    await seed.aclose()
    assert not node.running
    leftover = {t for t in asyncio.all_tasks() - before if t is not asyncio.current_task()}
    assert leftover == set()
    with pytest.raises(NodeNotRunning):
        await node.start()


async def test_failed_start_releases_the_port() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        node = MeshNode(NodeConfig.local(port=port, embedder="hashing"))
        with pytest.raises(BindError):
            await node.start()
    # The UDP socket it had bound was closed: the same port can be bound again.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", port))


async def test_seed_host_names_are_resolved_at_start() -> None:
    """A seed given as a host name joins through the address members advertise, so the
    node knows it has found that seed; a name that does not resolve is logged and skipped
    (``.invalid`` never resolves, RFC 6761)."""
    seed = MeshNode(_config(name="seed"))
    await seed.start()
    port = seed.address[1]
    names = (f"no-such-seed.invalid:{port}", f"localhost:{port}")
    node = MeshNode(_config(name="joiner", seeds=names))
    try:
        with capture_logs() as logs:
            await node.start()
        assert node.core.membership.join_seeds == (("127.0.0.1", port),)
        await wait_for(lambda: node.core.membership.member(seed.node_id) is not None, 10)
        assert node.core.membership.lost_seeds() == []
        unresolved = [e for e in logs if e["event"] == "seed_unresolved"]
        assert [e["seed"] for e in unresolved] == [f"no-such-seed.invalid:{port}"]
    finally:
        await node.aclose()
        await seed.aclose()


async def test_start_fails_when_no_seed_resolves() -> None:
    """Seeds were given and none resolves: start() fails with the names, and releases what
    it had bound."""
    node = MeshNode(_config(seeds=("no-such-seed.invalid:7946", "nor-this.invalid:7946")))
    with pytest.raises(BindError, match=r"no-such-seed\.invalid:7946, nor-this\.invalid:7946"):
        await node.start()
    assert not node.running


async def test_bad_calls_raise_the_public_errors() -> None:
    """What a caller gets wrong is a MeshError of its own kind (and the builtin it used to
    be, for callers that catch that); nothing was sent."""
    node = MeshNode(_config())
    with pytest.raises(NodeNotRunning):
        node.trust_view()
    await node.start()
    try:
        with pytest.raises(InvalidRequest, match="capability name or a description"):
            await node.delegate(None, {})
        with pytest.raises(InvalidRequest, match="positive number"):
            await node.delegate("echo", {}, deadline_s=-1)
        with pytest.raises(ValueError, match="limit"):
            await node.discover("x" * (node.config.max_query_chars + 1))
        counters = node.tasks.counters
        assert counters["delegations_ok"] == counters["delegations_failed"] == 0
    finally:
        await node.aclose()
