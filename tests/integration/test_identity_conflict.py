"""One node id alive at two addresses is reported by the node that holds it.

Invariant: when two processes run with the same key (a copied data dir or key file), each
learns from the mesh that its id is announced at another address; it logs
``identity_conflict`` naming that address and ``/v1/health`` reports ``degraded`` with the
reason, instead of the two silently pushing each other's incarnation up.
"""

from __future__ import annotations

import aiohttp
from structlog.testing import capture_logs

from meshnode import MeshNode, NodeConfig
from meshnode.runtime.node import wait_for
from protocol import Identity


def _config(**kw: object) -> NodeConfig:
    return NodeConfig.local(port=0, embedder="hashing", **kw)  # type: ignore[arg-type]


async def test_two_nodes_with_one_key_report_the_conflict() -> None:
    seed = MeshNode(_config(name="seed"))
    await seed.start()
    seeds = (f"127.0.0.1:{seed.address[1]}",)
    key = Identity.generate()
    first = MeshNode(_config(name="first", seeds=seeds), identity=key)
    second = MeshNode(_config(name="second", seeds=seeds), identity=key)
    try:
        with capture_logs() as logs:
            await first.start()
            await wait_for(lambda: seed.core.membership.member(key.node_id) is not None, 10)
            await second.start()
            await wait_for(lambda: bool(first.degraded_reasons()), 20)
        reason = " ".join(first.degraded_reasons())
        assert "identity conflict" in reason
        assert f"127.0.0.1:{second.address[1]}" in reason
        conflicts = [e for e in logs if e["event"] == "identity_conflict"]
        assert conflicts
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{first.url}/v1/health") as resp,
        ):
            health = await resp.json()
        assert health["status"] == "degraded"
        assert first.core.membership.counters["identity_conflicts"] >= 1
    finally:
        await second.aclose()
        await first.aclose()
        await seed.aclose()
