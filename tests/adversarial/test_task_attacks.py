"""Attacks on task channels and providers, against real ``meshnode run`` processes.

(a) a replayed envelope of an honest node must not make the attacker that node's task
channel; (b) a forged Dead from a member must not abort a task the provider is still
serving, nor lower its trust; (c) one identity flooding a provider must not starve another
requester; (d) a provider's remembered results stay within their byte budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from meshnode.runtime.store import save_identity
from protocol import Dead, Identity, PushPull, TaskRequest, TaskResponse, TaskResult, decode
from protocol.errors import RemoteProtocolError
from tests.adversarial.attack import (
    Attacker,
    NodeProcess,
    http_json,
    rss_mb,
    udp_send,
    wait_until,
)

pytestmark = pytest.mark.slow

AGENTS = Path(__file__).with_name("task_agents.py")
PROVIDER = ["--agent", f"{AGENTS}:TaskProvider"]
READY_S = 30.0


@contextlib.contextmanager
def processes() -> Iterator[list[NodeProcess]]:
    started: list[NodeProcess] = []
    try:
        yield started
    finally:
        for proc in started:
            proc.stop()


def start(
    running: list[NodeProcess],
    base: Path,
    name: str,
    seeds: list[str],
    extra: list[str] | None = None,
    identity: Identity | None = None,
) -> NodeProcess:
    data = base / name
    data.mkdir(parents=True, exist_ok=True)
    if identity is not None:
        save_identity(data / "node.key", identity)
    proc = NodeProcess(name, data, seeds, extra=extra or [])
    running.append(proc)
    return proc.start()


def knows_manifest(node: NodeProcess, provider: NodeProcess) -> bool:
    _, body = http_json(node.address, "/v1/manifests")
    return any(m["node_id"] == provider.node_id for m in body["manifests"])


def sees_alive(node: NodeProcess, *others: NodeProcess) -> bool:
    members = node.members()
    return all(members.get(o.node_id, {}).get("state") == "alive" for o in others)


def delegate(node: NodeProcess, capability: str, task_input: Any, deadline_s: float) -> Any:
    return http_json(
        node.address,
        "/v1/delegate",
        {"capability": capability, "input": task_input, "deadline_s": deadline_s},
        timeout=deadline_s + 15,
    )


def task_counter(node: NodeProcess, name: str) -> int:
    return int(node.get("/v1/health")["counters"]["tasks"].get(name, 0))


def trust_of(node: NodeProcess, peer: NodeProcess) -> dict[str, Any]:
    _, body = http_json(node.address, "/v1/trust")
    return next(p for p in body["peers"] if p["node_id"] == peer.node_id)


# --------------------------------------------------------------------------- (a) replay


async def test_replayed_envelope_does_not_hijack_the_task_channel(tmp_path: Path) -> None:
    """The attacker gets an envelope signed by honest A (A's answer to a push-pull the
    attacker sends it), opens a WebSocket to provider B and replays it, then A runs two
    tasks at B at once (B runs one at a time, so the second waits in B's queue and is
    answered later, not on the request's own connection). Both complete for A, and the
    attacker's socket never carries a task message.

    On the unfixed code: B bound the attacker's socket to A, and the queued task's
    signed TaskResult for A was sent to the attacker (1 task message leaked).
    """
    attacker = Attacker()
    with processes() as running:
        b = start(running, tmp_path, "b", [], [*PROVIDER, "--max-concurrent-tasks", "1"])
        a = start(running, tmp_path, "a", [b.address])
        await asyncio.to_thread(
            wait_until, lambda: knows_manifest(a, b), READY_S, "A knows B's manifest"
        )

        # Any envelope A ever signed will do: here, its answer to our push-pull.
        ask = attacker.envelope([PushPull(False, (), (), ())])
        async with aiohttp.ClientSession() as session:
            async with session.post(
                f"http://{a.address}/v1/wire/pushpull",
                data=ask,
                headers={"Content-Type": "application/x-meshnode"},
            ) as resp:
                assert resp.status == 200
                captured = await resp.read()
            assert decode(captured).sender == a.node_id

            received: list[Any] = []
            before = task_counter(b, "frames_received")
            async with session.ws_connect(f"http://{b.address}/v1/ws/tasks") as ws:
                await ws.send_bytes(captured)

                async def listen() -> None:
                    async for msg in ws:
                        if msg.type is aiohttp.WSMsgType.BINARY:
                            with contextlib.suppress(RemoteProtocolError):
                                received.extend(decode(msg.data).messages)

                listener = asyncio.create_task(listen())
                await asyncio.to_thread(
                    wait_until,
                    lambda: task_counter(b, "frames_received") > before,
                    10,
                    "B read the replayed envelope",
                )
                payload = {"text": "secret", "sleep_s": 1.0}
                first, second = await asyncio.gather(
                    asyncio.to_thread(delegate, a, "slow_echo", payload, 8.0),
                    asyncio.to_thread(delegate, a, "slow_echo", payload, 8.0),
                )
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener

    leaked = [m for m in received if isinstance(m, TaskRequest | TaskResponse | TaskResult)]
    assert leaked == [], f"{len(leaked)} task messages of A's reached the attacker"
    for status, body in (first, second):
        assert status == 200, body
        assert body["output"] == {"text": "secret"}
        assert body["provider"] == b.node_id


# --------------------------------------------------------------------------- (b) forged Dead


async def test_forged_dead_does_not_abort_a_live_task(tmp_path: Path) -> None:
    """M, a real member, signs ``Dead(B)`` and sends it to A by UDP (twice, so that A holds B
    dead, not only suspect) while A waits on a 4-second task at B. A checks B on their task
    channel (B answers), so the task completes and A's trust in B does not drop.

    On the unfixed code: A failed the attempt about 0.1 s after the Dead arrived
    (HTTP 502, ``all 1 candidates tried; last: peer_failed: member dead``), a failure
    charged to B.
    """
    m_key = Identity.generate()
    with processes() as running:
        b = start(running, tmp_path, "b", [], PROVIDER)
        a = start(running, tmp_path, "a", [b.address])
        m = start(running, tmp_path, "m", [b.address], identity=m_key)
        assert m.node_id == m_key.node_id
        await asyncio.to_thread(
            wait_until,
            lambda: knows_manifest(a, b) and sees_alive(a, b, m),
            READY_S,
            "A knows B's manifest and sees B and M alive",
        )
        before = trust_of(a, b)
        marker = tmp_path / "started"
        frames = task_counter(a, "frames_received")
        payload = {"text": "still here", "sleep_s": 4.0, "marker": str(marker)}
        job = asyncio.create_task(asyncio.to_thread(delegate, a, "slow_echo", payload, 20.0))
        await asyncio.to_thread(wait_until, marker.exists, 10, "B started the task")
        await asyncio.to_thread(
            wait_until,
            lambda: task_counter(a, "frames_received") > frames,
            10,
            "A got B's answer to the request",
        )
        incarnation = a.members()[b.node_id]["incarnation"]
        forged = Dead(b.node_id, incarnation, m.node_id, bytes(64))
        forged = Attacker(m_key).sign(forged)
        # Twice in one datagram: a gossiped Dead about a member A holds alive only makes
        # A suspect it; the second, arriving while A suspects B, declares B dead at A.
        udp_send(a.address, Attacker(m_key).envelope([forged, forged]))
        status, body = await job
        after = trust_of(a, b)
        refuted = task_counter(a, "dead_refuted_on_channel")

    assert status == 200, body
    assert body["output"] == {"text": "still here"}
    assert [t["outcome"] for t in body["attempts"]] == ["delivered"]
    assert after["trust"] >= before["trust"], (before, after)
    assert after["breaker"] == "closed"
    assert refuted >= 1  # the Dead did arrive, and the channel answered for B


# --------------------------------------------------------------------------- (c) flooding


async def test_one_flooding_identity_does_not_starve_another_requester(tmp_path: Path) -> None:
    """Flooder F keeps 12 delegations to B in flight without pause; L then asks B for 8
    tasks one after another. L gets them served.

    On the unfixed code: L got 0 of 8 served (all HTTP 502: B refused L ``busy`` while
    F's requests held its 3 slots and its whole reservation queue).
    """
    with processes() as running:
        b = start(running, tmp_path, "b", [], PROVIDER)
        f = start(running, tmp_path, "f", [b.address])
        legit = start(running, tmp_path, "l", [b.address])
        await asyncio.to_thread(
            wait_until,
            lambda: knows_manifest(f, b) and knows_manifest(legit, b),
            READY_S,
            "F and L know B's manifest",
        )
        stop = threading.Event()
        flooded = [0]

        def flood() -> None:
            while not stop.is_set():
                delegate(f, "slow_echo", {"text": "flood", "sleep_s": 0.5}, 5.0)
                flooded[0] += 1

        def legit_calls() -> list[int]:
            wait_until(lambda: flooded[0] >= 24, 30, "the flood is running")
            return [
                delegate(legit, "slow_echo", {"text": f"l{i}", "sleep_s": 0.2}, 10.0)[0]
                for i in range(8)
            ]

        with ThreadPoolExecutor(max_workers=13) as pool:
            for _ in range(12):
                pool.submit(flood)
            try:
                statuses = await asyncio.wrap_future(pool.submit(legit_calls))
            finally:
                stop.set()
        refused = b.get("/v1/health")["counters"]["tasks"]

    served = statuses.count(200)
    assert served >= 7, f"L got {served} of 8 served ({statuses}); B: {refused}"


# --------------------------------------------------------------------------- (d) memory


async def test_remembered_results_stay_within_the_byte_budget(tmp_path: Path) -> None:
    """A runs 300 tasks at B whose results are 500 kB each (150 MB in all). B keeps only
    ``task_memory_bytes`` (16 MiB) of them, so its RSS stays bounded.

    On the unfixed code: B's RSS grew by 123 MB over the 260 results (it kept every
    one); with the budget it grew by 1 MB.
    """
    with processes() as running:
        b = start(running, tmp_path, "b", [], PROVIDER)
        a = start(running, tmp_path, "a", [b.address])
        await asyncio.to_thread(
            wait_until, lambda: knows_manifest(a, b), READY_S, "A knows B's manifest"
        )
        assert b.proc is not None
        pid = b.proc.pid

        def run(count: int, start_at: int) -> list[int]:
            with ThreadPoolExecutor(max_workers=3) as pool:
                jobs = [
                    pool.submit(delegate, a, "blob", {"size": 500_000, "tag": str(i)}, 30.0)
                    for i in range(start_at, start_at + count)
                ]
                return [job.result()[0] for job in jobs]

        warm = await asyncio.to_thread(run, 40, 0)  # reach the budget and steady state
        assert warm.count(200) == 40
        baseline = rss_mb(pid)
        started = time.monotonic()
        statuses = await asyncio.to_thread(run, 260, 40)
        grown = rss_mb(pid) - baseline
        elapsed = time.monotonic() - started

    assert statuses.count(200) == 260
    assert grown < 40, f"B grew by {grown:.0f} MB over 260 results in {elapsed:.1f} s"
