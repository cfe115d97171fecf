"""The task layer end to end over real sockets: in-process nodes on 127.0.0.1 talking over
pooled WebSockets, plus ``meshnode run`` subprocesses where a provider must really die.

Each test states its invariant in its docstring. Waits are on conditions with deadlines.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from meshnode import Allow
from meshnode.core.breaker import BreakerState
from meshnode.core.channel import NONCE_BYTES, ChannelCore
from meshnode.core.negotiation import AttemptOutcome, RejectCode, reject_code
from meshnode.runtime.node import MeshNode, wait_for
from meshnode.runtime.tasks import WS_PATH, DelegationError, current_task_deadline
from protocol import (
    Identity,
    TaskCancel,
    TaskRequest,
    TaskResponse,
    TaskResult,
    TaskStatus,
    decode,
    encode,
    public_key_from_node_id,
    signing_bytes,
    verify,
)
from tests.integration.agents import SLOW_ECHO, TEXT_SCHEMA, Cap, LocalMesh, echo
from tests.integration.cluster import NodeProcess

AGENTS = Path(__file__).with_name("agents.py")

GRADE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["grade"],
    "properties": {"grade": {"type": "integer"}},
}


@pytest.fixture
async def mesh() -> AsyncIterator[LocalMesh]:
    local = LocalMesh()
    try:
        yield local
    finally:
        await local.close()


def outcomes(attempts: Any) -> list[AttemptOutcome]:
    return [a.outcome for a in attempts]


def result_verifies(result: TaskResult) -> bool:
    key = public_key_from_node_id(result.provider)
    return verify(key, signing_bytes(result), result.signature)


# --------------------------------------------------------------------------- accept


async def test_accepted_task_returns_signed_result(mesh: LocalMesh) -> None:
    """ACCEPTED → the handler's output comes back signed by the provider, after one attempt;
    the requester scores it at once by its own expectation, and its signed opinion of the
    provider reaches the provider."""
    calls: list[Any] = []

    async def shout(payload: Any) -> Any:
        calls.append(payload)
        return {"text": payload["text"].upper()}

    a = await mesh.node("requester")
    p = await mesh.node("provider", [Cap("shout", shout, TEXT_SCHEMA, TEXT_SCHEMA)])
    await mesh.ready()

    result = await a.delegate("shout", {"text": "hi"}, deadline_s=5, expect=TEXT_SCHEMA)

    assert result.output == {"text": "HI"}
    assert result.provider == p.node_id
    assert outcomes(result.attempts) == [AttemptOutcome.DELIVERED]
    assert result.quality == 1.0
    assert result.result.requester == a.node_id and result_verifies(result.result)
    assert calls == [{"text": "hi"}]
    score, count = a.opinion(p.node_id)
    assert score > 0.5 and count == 1
    assert a.trust_view()[p.node_id] > 0.5
    await wait_for(lambda: a.core.ledger.get(a.node_id, p.node_id) is not None, 5)
    signed = a.core.ledger.get(a.node_id, p.node_id)
    assert signed is not None and (signed.score, signed.outcomes) == (score, count)
    await wait_for(lambda: p.core.ledger.get(a.node_id, p.node_id) == signed, 5)


async def test_concurrent_outcomes_share_signed_records(mesh: LocalMesh) -> None:
    """Twenty concurrent delegations to one provider all deliver; each outcome counts in the
    requester's opinion at once, and the signed ledger record that ends up gossiped carries
    all twenty, although fewer than twenty records were signed."""

    async def slow_echo(payload: Any) -> Any:
        await asyncio.sleep(0.05)
        return {"text": payload["text"]}

    a = await mesh.node("requester")
    p = await mesh.node(
        "provider", [Cap("echo", slow_echo, TEXT_SCHEMA, TEXT_SCHEMA)], max_concurrent_tasks=32
    )
    await mesh.ready()
    first_seq = a.core.ledger.next_seq(a.node_id)

    results = await asyncio.gather(
        *(
            a.delegate("echo", {"text": str(i)}, deadline_s=10, expect=TEXT_SCHEMA)
            for i in range(20)
        )
    )

    assert sorted(r.output["text"] for r in results) == sorted(str(i) for i in range(20))
    assert {r.provider for r in results} == {p.node_id}
    score, count = a.opinion(p.node_id)
    assert count == 20 and score > 0.8

    def outcomes_at_provider() -> int:
        record = p.core.ledger.get(a.node_id, p.node_id)
        return 0 if record is None else record.outcomes

    await wait_for(lambda: outcomes_at_provider() == 20, 5)
    signed = a.core.ledger.get(a.node_id, p.node_id)
    assert signed is not None and (signed.score, signed.outcomes) == (score, count)
    assert a.core.ledger.next_seq(a.node_id) - first_seq < 20


# --------------------------------------------------------------------------- reject


async def test_rejections_carry_their_reason(mesh: LocalMesh) -> None:
    """Each admission rule rejects with its own code, visible in DelegationError.attempts;
    the handler never runs and a refusal is no failure for the breaker or the ledger. An
    invalid input is its own outcome, and the error says the input was the problem."""
    calls: list[Any] = []

    async def priced(payload: Any) -> Any:
        calls.append(payload)
        return {"text": payload["text"]}

    a = await mesh.node("requester")
    p = await mesh.node(
        "provider",
        [
            Cap(
                "priced",
                priced,
                TEXT_SCHEMA,
                TEXT_SCHEMA,
                avg_latency_ms=500,
                cost_per_call_usd=0.01,
            )
        ],
    )
    await mesh.ready()
    target = [p.node_id]
    cases: list[tuple[RejectCode, str, Any, float, float | None]] = [
        (RejectCode.UNKNOWN_CAPABILITY, "no_such_thing", {"text": "x"}, 5.0, None),
        (RejectCode.INVALID_INPUT, "priced", {"text": 42}, 5.0, None),
        # 0.3 s overall: the request asks 200 ms, under the 500 ms the capability needs.
        (RejectCode.DEADLINE_TOO_SHORT, "priced", {"text": "x"}, 0.3, None),
        (RejectCode.OVER_BUDGET, "priced", {"text": "x"}, 5.0, 0.001),
    ]
    for code, cap, task_input, deadline_s, budget in cases:
        with pytest.raises(DelegationError) as info:
            await a.tasks.delegate(
                cap, task_input, target, deadline_s=deadline_s, max_cost_usd=budget
            )
        attempts = info.value.attempts
        invalid = code is RejectCode.INVALID_INPUT
        expected = AttemptOutcome.INVALID_INPUT if invalid else AttemptOutcome.REJECTED
        assert outcomes(attempts) == [expected], code
        assert info.value.invalid_input is invalid
        assert attempts[0].node == p.node_id
        assert reject_code(attempts[0].detail) is code, attempts[0].detail
        assert code.value in info.value.reason or (invalid and "invalid input" in info.value.reason)

    assert calls == []
    assert a.tasks.breakers.state(p.node_id, time.time()) is BreakerState.CLOSED
    assert a.opinion(p.node_id) == (0.5, 0)
    assert p.tasks.provider.counts["rejected"] == len(cases)


# --------------------------------------------------------------------------- counters


def _work_cap(calls: list[float]) -> Cap:
    async def work(payload: Any) -> Any:
        calls.append(payload["sleep_s"])
        await asyncio.sleep(payload["sleep_s"])
        return {"text": "done"}

    return Cap("work", work, None, TEXT_SCHEMA, avg_latency_ms=1000)


async def test_counter_within_ratio_is_confirmed(mesh: LocalMesh) -> None:
    """A busy provider (one slot, taken) counters; a counter within 1.5× the asked deadline
    and within the overall deadline is confirmed, and the same provider delivers."""
    calls: list[float] = []
    a = await mesh.node("requester")
    p = await mesh.node("provider", [_work_cap(calls)], max_concurrent_tasks=1)
    await mesh.ready()

    blocker = asyncio.create_task(
        a.tasks.delegate("work", {"sleep_s": 1.0}, [p.node_id], deadline_s=6, max_cost_usd=None)
    )
    await wait_for(lambda: p.tasks.provider.running == 1, 5)
    # 3 s overall → the request asks 2,000 ms; the slot frees in ~1 s and the task needs
    # ~1 s more: the counter is about (2 s × 1.25 + 50 ms) = 2,550 ms, within 1.5 × 2,000.
    result = await a.tasks.delegate(
        "work", {"sleep_s": 0.2}, [p.node_id], deadline_s=3.0, max_cost_usd=None
    )
    first = await blocker

    assert first.provider == p.node_id
    assert result.provider == p.node_id
    assert outcomes(result.attempts) == [AttemptOutcome.DELIVERED]
    attempt = result.attempts[0]
    assert attempt.deadline_ms == 2000
    assert attempt.counter_deadline_ms is not None
    assert attempt.deadline_ms <= attempt.counter_deadline_ms <= 1.5 * attempt.deadline_ms
    counts = p.tasks.provider.counts
    assert counts["countered"] == 1 and counts["confirmed"] == 1
    assert calls == [1.0, 0.2]


async def test_counter_beyond_ratio_falls_through(mesh: LocalMesh) -> None:
    """A counter over 1.5× the asked deadline is declined (the reservation is released, the
    busy provider never runs the task) and the next candidate delivers in time."""
    busy_calls: list[float] = []
    free_calls: list[float] = []
    a = await mesh.node("requester")
    busy = await mesh.node("busy", [_work_cap(busy_calls)], max_concurrent_tasks=1)
    free = await mesh.node("free", [_work_cap(free_calls)])
    await mesh.ready()

    blocker = asyncio.create_task(
        a.tasks.delegate("work", {"sleep_s": 1.0}, [busy.node_id], deadline_s=6, max_cost_usd=None)
    )
    await wait_for(lambda: busy.tasks.provider.running == 1, 5)
    # 1.8 s overall → asks 1,200 ms; the counter (~2,550 ms) is over 1.5 × 1,200 = 1,800.
    started = time.monotonic()
    result = await a.tasks.delegate(
        "work", {"sleep_s": 0.0}, [busy.node_id, free.node_id], deadline_s=1.8, max_cost_usd=None
    )
    elapsed = time.monotonic() - started
    await blocker

    assert result.provider == free.node_id
    assert outcomes(result.attempts) == [AttemptOutcome.DECLINED, AttemptOutcome.DELIVERED]
    declined = result.attempts[0]
    assert declined.node == busy.node_id
    assert declined.counter_deadline_ms is not None
    assert declined.counter_deadline_ms > 1.5 * declined.deadline_ms  # type: ignore[operator]
    assert "1.5" in declined.detail
    assert elapsed < 1.8
    await wait_for(lambda: busy.tasks.provider.counts["declined"] == 1, 5)
    assert busy.tasks.provider.reserved == 0
    assert busy_calls == [1.0] and free_calls == [0.0]
    assert a.tasks.breakers.state(busy.node_id, time.time()) is BreakerState.CLOSED


# --------------------------------------------------------------------------- breakers


async def test_breaker_opens_after_three_failures_then_one_probe(mesh: LocalMesh) -> None:
    """A provider that raises, then returns output failing its schema: each failure falls
    back to a good peer; its breaker opens after exactly 3 failures and traffic goes to the
    others; once the (shortened) recovery time passes exactly one half-open probe reaches
    it, and that probe's success closes the circuit."""
    good_calls: dict[str, int] = {"g1": 0, "g2": 0}
    bad_calls: list[float] = []
    broken = True

    def good(name: str) -> Any:
        async def grade(payload: Any) -> Any:
            good_calls[name] += 1
            return {"grade": 1}

        return grade

    async def bad_grade(payload: Any) -> Any:
        bad_calls.append(time.monotonic())
        if broken and len(bad_calls) == 1:
            raise RuntimeError("broken provider")
        if broken:
            return {"grade": "not a number"}
        await asyncio.sleep(0.3)  # keep the probe in flight while others are routed
        return {"grade": 2}

    def cap(handler: Any) -> Cap:
        return Cap("grade", handler, None, GRADE_SCHEMA)

    a = await mesh.node("requester", breaker_recovery_time=1.0)
    g1 = await mesh.node("g1", [cap(good("g1"))])
    g2 = await mesh.node("g2", [cap(good("g2"))])
    bad = await mesh.node("bad", [cap(bad_grade)])
    await mesh.ready()
    order = [bad.node_id, g1.node_id, g2.node_id]
    breakers = a.tasks.breakers

    for i in range(3):
        assert breakers.state(bad.node_id, time.time()) is BreakerState.CLOSED
        result = await a.tasks.delegate("grade", {"n": i}, order, deadline_s=5, max_cost_usd=None)
        assert result.provider == g1.node_id
        assert outcomes(result.attempts) == [
            AttemptOutcome.FAILED_RESULT,
            AttemptOutcome.DELIVERED,
        ]
        detail = result.attempts[0].detail
        assert ("RuntimeError" in detail) if i == 0 else ("output fails its schema" in detail)
    snapshot = breakers.snapshot(time.time())[bad.node_id]
    assert snapshot.state is BreakerState.OPEN and snapshot.consecutive_failures == 3
    assert len(bad_calls) == 3

    # Open: aimed at it first, it is skipped; routed by discovery, it is ranked last.
    skipped = await a.tasks.delegate("grade", {"n": 3}, order, deadline_s=5, max_cost_usd=None)
    assert outcomes(skipped.attempts) == [AttemptOutcome.SKIPPED, AttemptOutcome.DELIVERED]
    hits = await a.discover(capability_name="grade", top_k=5)
    assert hits[-1].node_id == bad.node_id and hits[-1].circuit_open
    providers = {(await a.delegate("grade", {"n": i})).provider for i in range(6)}
    assert providers <= {g1.node_id, g2.node_id}
    assert len(bad_calls) == 3
    assert sum(good_calls.values()) == 3 + 1 + 6  # every delegation so far, by the good ones

    # Half-open after the recovery time: three concurrent tasks, exactly one probe.
    await wait_for(lambda: breakers.state(bad.node_id, time.time()) is BreakerState.HALF_OPEN, 5)
    broken = False
    results = await asyncio.gather(
        *(
            a.tasks.delegate("grade", {"n": 10 + i}, order, deadline_s=5, max_cost_usd=None)
            for i in range(3)
        )
    )
    assert len(bad_calls) == 4
    assert sorted(r.provider == bad.node_id for r in results) == [False, False, True]
    assert sum(outcomes(r.attempts)[0] is AttemptOutcome.SKIPPED for r in results) == 2
    assert breakers.state(bad.node_id, time.time()) is BreakerState.CLOSED


# --------------------------------------------------------------------------- failures


async def _start_slow_agent(tmp_path: Path, name: str, seed: str) -> NodeProcess:
    proc = NodeProcess(name, tmp_path / name, [seed], extra=["--agent", f"{AGENTS}:SlowAgent"])
    return await asyncio.to_thread(proc.start)


async def test_provider_death_mid_task_aborts_the_wait(mesh: LocalMesh, tmp_path: Path) -> None:
    """A provider process SIGKILLed while running a task drops its WebSocket: the requester
    moves to the next candidate at once and meets its deadline. A provider frozen with
    SIGSTOP keeps its socket open; SWIM declaring it dead aborts the wait just the same,
    long before the attempt's own deadline."""
    a = await mesh.node("requester")
    backup = await mesh.node(
        "backup", [Cap(SLOW_ECHO, echo, TEXT_SCHEMA, TEXT_SCHEMA, avg_latency_ms=50)]
    )
    killed, frozen = await asyncio.gather(
        _start_slow_agent(tmp_path, "killed", mesh.seed),
        _start_slow_agent(tmp_path, "frozen", mesh.seed),
    )
    try:
        mesh.external += [killed.node_id, frozen.node_id]
        await mesh.ready(30)

        async def run_and_fail(victim: NodeProcess, sig: int, deadline_s: float) -> Any:
            marker = tmp_path / f"{victim.name}.started"
            payload = {"text": victim.name, "sleep_s": 60, "marker": str(marker)}
            frames_before = a.tasks.counters["frames_received"]
            task = asyncio.create_task(
                a.tasks.delegate(
                    SLOW_ECHO,
                    payload,
                    [victim.node_id, backup.node_id],
                    deadline_s=deadline_s,
                    max_cost_usd=None,
                )
            )
            await wait_for(marker.exists, 10)
            # The handler runs before its ACCEPTED frame is flushed: wait for the frame, so
            # the failure hits a task the requester knows is running.
            await wait_for(lambda: a.tasks.counters["frames_received"] > frames_before, 10)
            failed_at = time.monotonic()
            victim.signal(sig)
            result = await task
            return result, time.monotonic() - failed_at

        # 1. SIGKILL: the connection drops; the attempt would otherwise wait 8 s.
        result, waited = await run_and_fail(killed, signal.SIGKILL, 12.0)
        assert result.provider == backup.node_id and result.output == {"text": "killed"}
        assert outcomes(result.attempts) == [AttemptOutcome.PEER_FAILED, AttemptOutcome.DELIVERED]
        assert result.attempts[0].node == killed.node_id
        assert waited < 3.0, waited
        assert result.elapsed_ms < 12_000

        # 2. SIGSTOP: nothing drops; SWIM suspects, then declares it dead (~2–6 s here).
        result, waited = await run_and_fail(frozen, signal.SIGSTOP, 30.0)
        assert result.provider == backup.node_id
        assert outcomes(result.attempts) == [AttemptOutcome.PEER_FAILED, AttemptOutcome.DELIVERED]
        assert "dead" in result.attempts[0].detail
        assert waited < 15.0, waited  # the attempt itself had 20 s
        now = time.time()
        assert a.tasks.breakers.snapshot(now)[killed.node_id].consecutive_failures == 1
        assert a.tasks.breakers.snapshot(now)[frozen.node_id].consecutive_failures == 1
    finally:
        for proc in (killed, frozen):
            if proc.proc is not None and proc.proc.poll() is None:
                proc.proc.send_signal(signal.SIGKILL)
                proc.proc.wait(10)
            proc.stop()


async def test_forged_result_is_rejected_and_counted(mesh: LocalMesh) -> None:
    """A result whose signature does not verify is refused: the attempt fails as forged,
    the next candidate delivers, and the forger takes a breaker failure and a 0 score."""
    a = await mesh.node("requester")
    forger = await mesh.node("forger", [Cap("echo", echo, TEXT_SCHEMA, TEXT_SCHEMA)])
    honest = await mesh.node("honest", [Cap("echo", echo, TEXT_SCHEMA, TEXT_SCHEMA)])
    await mesh.ready()
    complete = forger.tasks.provider.complete

    def tampered(*args: Any, **kwargs: Any) -> TaskResult | None:
        result = complete(*args, **kwargs)
        if result is None:
            return None
        signature = bytearray(result.signature)
        signature[0] ^= 0x01
        return dataclasses.replace(result, signature=bytes(signature))

    forger.tasks.provider.complete = tampered  # type: ignore[method-assign]

    result = await a.tasks.delegate(
        "echo", {"text": "x"}, [forger.node_id, honest.node_id], deadline_s=5, max_cost_usd=None
    )

    assert result.provider == honest.node_id
    assert outcomes(result.attempts) == [AttemptOutcome.FORGED_RESULT, AttemptOutcome.DELIVERED]
    assert "signature" in result.attempts[0].detail
    snapshot = a.tasks.breakers.snapshot(time.time())[forger.node_id]
    assert snapshot.consecutive_failures == 1 and snapshot.total_failures == 1
    score, count = a.opinion(forger.node_id)
    assert score < 0.5 and count == 1


# --------------------------------------------------------------------------- wire


async def open_raw_channel(
    ws: aiohttp.ClientWebSocketResponse, me: Identity, server: str
) -> ChannelCore:
    """Run the opener's side of the task channel handshake on a raw WebSocket."""
    core = ChannelCore(me.node_id, os.urandom(NONCE_BYTES), peer=server, handshake_deadline=1e12)
    await ws.send_bytes(encode(core.start(), me))
    msg = await ws.receive(timeout=5)
    assert msg.type is aiohttp.WSMsgType.BINARY, msg
    envelope = decode(msg.data)
    got = core.receive(envelope.sender, envelope.messages)
    assert got.opened == server, got.error
    await ws.send_bytes(encode(list(got.send), me))
    return core


def framed(core: ChannelCore, messages: list[Any], me: Identity) -> bytes:
    """One envelope of ``messages`` on an open channel, with its header."""
    return encode([core.seal(), *messages], me)


async def test_duplicate_task_id_runs_the_handler_once(mesh: LocalMesh) -> None:
    """The same signed TaskRequest sent twice (and again after it finished) over a raw
    WebSocket runs the handler once; every copy gets the same answer and the same signed
    result."""
    calls: list[Any] = []

    async def counted(payload: Any) -> Any:
        calls.append(payload)
        await asyncio.sleep(0.2)
        return {"text": payload["text"]}

    # The client below is a fresh key, not a member: the capability is public so that
    # the channel and duplicate rules are what is tested (authorization has its own).
    p = await mesh.node(
        "provider", [Cap("counted", counted, TEXT_SCHEMA, TEXT_SCHEMA, allow=Allow.anyone())]
    )
    client = Identity.generate()
    request = TaskRequest(
        task_id=uuid.uuid4().hex,
        capability="counted",
        input={"text": "once"},
        deadline_ms=5000,
        budget_usd=None,
        trace_id="dup",
    )
    responses: list[TaskResponse] = []
    results: list[TaskResult] = []

    async def read_until(ws: aiohttp.ClientWebSocketResponse, core: ChannelCore, n: int) -> None:
        while len(results) < n:
            msg = await ws.receive(timeout=5)
            assert msg.type is aiohttp.WSMsgType.BINARY, msg
            envelope = decode(msg.data)
            assert envelope.sender == p.node_id
            got = core.receive(envelope.sender, envelope.messages)
            assert got.error is None, got.error
            for message in got.deliver:
                if isinstance(message, TaskResponse):
                    responses.append(message)
                elif isinstance(message, TaskResult):
                    results.append(message)

    async with aiohttp.ClientSession() as session, session.ws_connect(p.url + WS_PATH) as ws:
        core = await open_raw_channel(ws, client, p.node_id)
        await ws.send_bytes(framed(core, [request], client))
        await ws.send_bytes(framed(core, [request], client))
        await read_until(ws, core, 1)
        await wait_for(lambda: len(responses) == 2, 5)
        await ws.send_bytes(framed(core, [request], client))  # after the result
        await read_until(ws, core, 2)
        await ws.close()

    assert calls == [{"text": "once"}]
    assert [r.status for r in responses] == [TaskStatus.ACCEPTED] * 3
    assert results[0] == results[1]
    assert results[0].ok and results[0].output == {"text": "once"}
    assert results[0].requester == client.node_id and result_verifies(results[0])
    assert p.tasks.provider.counts["duplicate"] == 2


async def test_cancelling_the_caller_cancels_the_handler(mesh: LocalMesh) -> None:
    """Cancelling a delegate() call sends TaskCancel: the provider's handler is cancelled,
    its slot freed, and the provider is not blamed for it."""
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def hang(payload: Any) -> Any:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return {"text": "never"}

    a = await mesh.node("requester")
    p = await mesh.node("provider", [Cap("hang", hang, TEXT_SCHEMA, TEXT_SCHEMA)])
    await mesh.ready()

    task = asyncio.create_task(a.delegate("hang", {"text": "x"}, deadline_s=30))
    await wait_for(started.is_set, 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_for(cancelled.is_set, 2)

    assert p.tasks.provider.running == 0
    assert p.tasks.provider.counts["cancelled"] == 1
    assert p.tasks.counters["tasks_served"] == 0
    assert a.tasks.breakers.state(p.node_id, time.time()) is BreakerState.CLOSED
    assert a.opinion(p.node_id) == (0.5, 0)
    assert a.tasks.in_flight == 0


async def test_nested_delegation_inherits_the_remaining_deadline(mesh: LocalMesh) -> None:
    """A handler that delegates further passes on what is left of its own deadline, never
    the node's default."""
    holder: list[MeshNode] = []

    async def inner(payload: Any) -> Any:
        deadline = current_task_deadline()
        assert deadline is not None
        return {"left": deadline - time.time()}

    async def outer(payload: Any) -> Any:
        deadline = current_task_deadline()
        assert deadline is not None
        mine = deadline - time.time()
        nested = await holder[0].delegate("inner", {})
        return {"mine": mine, "inner": nested.output["left"], "via": nested.provider}

    a = await mesh.node("requester")
    middle = await mesh.node("middle", [Cap("outer", outer)])
    holder.append(middle)
    leaf = await mesh.node("leaf", [Cap("inner", inner)])
    await mesh.ready()

    result = await a.delegate("outer", {}, deadline_s=3.0)

    out = result.output
    assert out["via"] == leaf.node_id
    assert 0 < out["mine"] <= 2.0  # the outer request asked 3 s / 1.5
    assert 0 < out["inner"] < out["mine"]
    assert out["inner"] <= out["mine"] / 1.5 + 0.05
    assert middle.config.default_deadline_s == 30.0


# --------------------------------------------------------------------------- HTTP


async def test_http_delegate_from_loopback(mesh: LocalMesh) -> None:
    """POST /v1/delegate from 127.0.0.1 runs a delegation and returns its JSON; input the
    provider refuses answers 422 (the caller's error, not the mesh's) with every attempt
    and its reason."""
    a = await mesh.node("requester")
    p = await mesh.node("provider", [Cap("echo", echo, TEXT_SCHEMA, TEXT_SCHEMA)])
    await mesh.ready()

    async with aiohttp.ClientSession() as session:
        body = {"capability": "echo", "input": {"text": "over http"}, "deadline_s": 5}
        async with session.post(a.url + "/v1/delegate", json=body) as resp:
            assert resp.status == 200
            ok = await resp.json()
        bad = {"capability": "echo", "input": {"text": 1}, "deadline_s": 5}
        async with session.post(a.url + "/v1/delegate", json=bad) as resp:
            assert resp.status == 422
            failed = await resp.json()
        async with session.post(a.url + "/v1/delegate", json={"input": {}}) as resp:
            assert resp.status == 400
        negative = {"capability": "echo", "input": {"text": "x"}, "deadline_s": -1}
        async with session.post(a.url + "/v1/delegate", json=negative) as resp:
            assert resp.status == 400

    assert ok["output"] == {"text": "over http"}
    assert ok["provider"] == p.node_id
    assert [x["outcome"] for x in ok["attempts"]] == ["delivered"]
    assert [x["outcome"] for x in failed["attempts"]] == ["invalid_input"]
    assert failed["attempts"][0]["detail"].startswith("invalid_input")


# --------------------------------------------------------------------------- channel caps


async def _raw_ws(url: str, session: aiohttp.ClientSession) -> aiohttp.ClientWebSocketResponse:
    return await session.ws_connect(url + WS_PATH)


async def _refused(url: str, session: aiohttp.ClientSession) -> bool:
    try:
        ws = await _raw_ws(url, session)
    except aiohttp.WSServerHandshakeError as exc:
        return exc.status == 503
    await ws.close()
    return False


async def test_unauthenticated_sockets_are_capped_and_time_out(mesh: LocalMesh) -> None:
    """Sockets that never say hello: beyond ``task_max_unauthenticated`` they are refused
    (HTTP 503, counted); the ones let in are closed at ``task_handshake_timeout``; then a
    real handshake gets through.

    On the unfixed code: all 5 sockets were accepted and none was ever closed.
    """
    p = await mesh.node("provider", task_max_unauthenticated=3, task_handshake_timeout=0.5)
    async with aiohttp.ClientSession() as session:
        idle = [await _raw_ws(p.url, session) for _ in range(3)]
        assert [await _refused(p.url, session) for _ in range(2)] == [True, True]
        for ws in idle:
            msg = await ws.receive(timeout=5)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), msg
        await wait_for(lambda: not p.tasks._open, 5)
        assert p.tasks.counters["handshake_timeouts"] == 3
        assert p.tasks.counters["connections_refused"] == 2
        async with session.ws_connect(p.url + WS_PATH) as ws:
            core = await open_raw_channel(ws, Identity.generate(), p.node_id)
            assert core.is_open


async def test_total_and_per_address_caps_refuse_new_sockets(mesh: LocalMesh) -> None:
    """``task_max_connections_per_address`` authenticated channels from 127.0.0.1, then the
    next socket is refused; ``task_max_connections`` likewise."""
    p = await mesh.node("provider", task_max_connections_per_address=2)
    q = await mesh.node("other", task_max_connections=2)
    async with aiohttp.ClientSession() as session:
        for node in (p, q):
            held = [await _raw_ws(node.url, session) for _ in range(2)]
            for ws in held:
                await open_raw_channel(ws, Identity.generate(), node.node_id)
            assert await _refused(node.url, session)
            assert node.tasks.counters["connections_refused"] == 1
            for ws in held:
                await ws.close()
    assert p.drops["task_connection_per_address"] == 1
    assert q.drops["task_connection_total"] == 1


async def test_per_peer_cap_closes_the_extra_channel(mesh: LocalMesh) -> None:
    """A second channel from the same identity beyond ``task_max_connections_per_peer`` is
    closed once its handshake names the peer; the first keeps working."""
    p = await mesh.node("provider", [Cap("echo", echo)], task_max_connections_per_peer=1)
    me = Identity.generate()
    request = TaskRequest(uuid.uuid4().hex, "echo", {"text": "hi"}, 5000, None, "")
    async with aiohttp.ClientSession() as session:
        first = await _raw_ws(p.url, session)
        core = await open_raw_channel(first, me, p.node_id)
        second = await _raw_ws(p.url, session)
        await open_raw_channel(second, me, p.node_id)
        msg = await second.receive(timeout=5)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), msg
        assert p.tasks.counters["connections_refused"] == 1
        await first.send_bytes(framed(core, [request], me))
        msg = await first.receive(timeout=5)
        envelope = decode(msg.data)
        got = core.receive(envelope.sender, envelope.messages)
        assert any(isinstance(m, TaskResponse | TaskResult) for m in got.deliver), got
        await first.close()


@pytest.mark.parametrize("seq_shift", [0, 1])
async def test_replayed_or_skipped_frame_closes_the_channel(
    mesh: LocalMesh, seq_shift: int
) -> None:
    """On an open channel, a frame sent again (the same bytes: a replay) or one that skips
    a sequence number is counted as a violation and the channel is closed; only the frame
    taken reaches the provider (its task is then stopped with the lost channel)."""
    calls: list[Any] = []

    async def counted(payload: Any) -> Any:
        calls.append(payload)
        return {"text": payload["text"]}

    # The client below is a fresh key, not a member: the capability is public so that
    # the channel and duplicate rules are what is tested (authorization has its own).
    p = await mesh.node(
        "provider", [Cap("counted", counted, TEXT_SCHEMA, TEXT_SCHEMA, allow=Allow.anyone())]
    )
    me = Identity.generate()
    request = TaskRequest(uuid.uuid4().hex, "counted", {"text": "x"}, 5000, None, "")
    other = TaskRequest(uuid.uuid4().hex, "counted", {"text": "y"}, 5000, None, "")
    async with aiohttp.ClientSession() as session, session.ws_connect(p.url + WS_PATH) as ws:
        core = await open_raw_channel(ws, me, p.node_id)
        frame = framed(core, [request], me)
        await ws.send_bytes(frame)
        if seq_shift:
            core.seal()  # skip one sequence number
            await ws.send_bytes(framed(core, [other], me))
        else:
            await ws.send_bytes(frame)
        while True:
            msg = await ws.receive(timeout=5)
            if msg.type is not aiohttp.WSMsgType.BINARY:
                break
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), msg
    assert p.tasks.counters["channel_violations"] == 1
    assert p.tasks.provider.counts["accepted"] == 1
    assert p.tasks.provider.counts["duplicate"] == 0
    assert len(calls) <= 1


async def test_one_address_cannot_take_every_handshake_slot(mesh: LocalMesh) -> None:
    """``task_max_unauthenticated_per_address`` pending sockets from one address, then that
    address is refused (counted) although the node-wide pending cap is not reached."""
    p = await mesh.node("provider", task_max_unauthenticated_per_address=2)
    async with aiohttp.ClientSession() as session:
        idle = [await _raw_ws(p.url, session) for _ in range(2)]
        assert await _refused(p.url, session)
        for ws in idle:
            await ws.close()
    assert p.drops["task_connection_unauthenticated_per_address"] == 1


@pytest.mark.parametrize("first", [b"\x00garbage", b"stranger"])
async def test_a_bad_first_frame_closes_the_socket(mesh: LocalMesh, first: bytes) -> None:
    """Before the handshake a socket gets one chance: a first frame that does not decode,
    or decodes to anything but a hello, closes it at once (no waiting for the timeout)."""
    p = await mesh.node("provider", task_handshake_timeout=30.0)
    stranger = Identity.generate()
    data = encode([TaskCancel("t", "x")], stranger) if first == b"stranger" else first
    async with aiohttp.ClientSession() as session, session.ws_connect(p.url + WS_PATH) as ws:
        await ws.send_bytes(data)
        msg = await ws.receive(timeout=5)
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), msg
    assert p.tasks.counters["channel_violations"] == 1
    assert p.tasks.counters["handshake_timeouts"] == 0
