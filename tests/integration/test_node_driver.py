"""MeshNode drives one NodeCore: the lifecycle enum, and the one driver timer serving the
task side (a provider's deadline and a requester's timeout fire with no timer of their own).

Invariants: the lifecycle moves CREATED -> STARTING -> RUNNING -> STOPPING -> STOPPED and
health names it; a handler that overruns its deadline is stopped by the core at the
deadline the driver's timer serves, and the requester hears of it in time.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from meshnode import MeshNode, NodeConfig
from meshnode.runtime.node import Lifecycle, wait_for
from meshnode.runtime.tasks import DelegationError


def _config(**kw: object) -> NodeConfig:
    return NodeConfig.local(port=0, embedder="hashing", **kw)  # type: ignore[arg-type]


async def test_lifecycle_states() -> None:
    node = MeshNode(_config(name="n"))
    assert node.lifecycle is Lifecycle.CREATED and not node.running
    seen: list[Lifecycle] = []
    start = asyncio.create_task(node.start())
    await asyncio.sleep(0)
    seen.append(node.lifecycle)
    await start
    assert seen == [Lifecycle.STARTING]
    assert node.lifecycle is Lifecycle.RUNNING and node.health()["status"] == "ok"
    closing = asyncio.create_task(node.aclose())
    await asyncio.sleep(0)
    assert node.lifecycle is Lifecycle.STOPPING
    assert node.health()["status"] == "stopping"
    await closing
    await node.aclose()
    assert node.lifecycle is Lifecycle.STOPPED


async def test_one_timer_serves_provider_and_requester_deadlines() -> None:
    """A handler sleeps far past the task's deadline: the requester's core gives up at the
    attempt deadline (or the provider's core stops it at its own), the handler is
    cancelled, and the delegation fails well before the handler would have returned. No
    service arms a timer of its own: the driver's one timer at ``next_deadline()`` fires."""
    stopped = asyncio.Event()

    async def sleepy(payload: Any) -> Any:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            stopped.set()
            raise
        return {}

    provider = MeshNode(_config(name="provider"))
    provider.add_capability(sleepy, name="sleepy", description="sleeps")
    await provider.start()
    requester = MeshNode(_config(name="requester", seeds=(f"127.0.0.1:{provider.address[1]}",)))
    await requester.start()
    try:
        await wait_for(lambda: requester.core.manifests.get(provider.node_id) is not None, 10)
        await wait_for(lambda: provider.core.membership.member(requester.node_id) is not None, 10)
        await requester.discovery.settled()
        began = time.monotonic()
        try:
            await requester.delegate("sleepy", {}, deadline_s=1.5)
        except DelegationError as exc:
            outcome = exc.attempts[0].outcome.value
        else:
            raise AssertionError("the delegation should have failed")
        elapsed = time.monotonic() - began
        assert outcome in ("failed_result", "execution_timeout")
        assert elapsed < 5.0
        await asyncio.wait_for(stopped.wait(), 5)
        assert provider.core.provider.running == 0
        counts = provider.core.provider.counts
        # Whichever timer fired first stopped it: the requester's (a TaskCancel) or the
        # provider's own deadline; both are the driver's one timer at next_deadline().
        assert counts["deadline_exceeded"] + counts["cancelled"] == 1
    finally:
        await requester.aclose()
        await provider.aclose()
