"""Both shells drive NodeCore to the same decisions.

Invariant: a requester that runs the same script of delegations — same capability, same
inputs, same candidates in the same order, providers whose handlers fail, garble, lie or
answer right — decides the same in the asyncio runtime (in-process ``MeshNode`` objects on
127.0.0.1, real UDP and WebSockets, real time) and in the simulator (``NodeCore`` objects
driven by :mod:`simulations.economy` on the virtual clock): the same attempts with the same
outcomes, the same delegation outcomes and qualities, the same breaker states, and the same
opinions (score and number of outcomes) of every provider.

Timing is left out on purpose (the runtime's clock is real); every step of the script
leaves a margin of seconds around the core's timers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from meshnode.core.config import NodeConfig
from meshnode.core.effects import Attempt, DelegationFinished, Done
from meshnode.runtime.tasks import DelegationError
from simulations.cluster import Cluster, SimNode
from simulations.economy import (
    CAPABILITIES,
    Behaviour,
    Economy,
    EconomyPlan,
    expected_answer,
    quality_oracle,
)
from simulations.network import LinkModel
from tests.integration.agents import Cap, LocalMesh

CAPABILITY = CAPABILITIES[0]
ROLES = ("requester", "failing", "garbling", "lying", "good")
DEADLINE_S = 5.0

SCRIPT: tuple[tuple[tuple[str, ...], bool], ...] = (
    (("failing", "good"), True),
    (("garbling", "good"), True),
    (("lying",), True),
    (("failing", "garbling"), True),
    (("failing", "good"), True),  # the failing provider's third failure in a row
    (("failing", "good"), True),  # its circuit is open: skipped
    (("good",), False),  # input that breaks the input schema: invalid_input, no verdict
    (("lying", "good"), True),
)
"""(candidates by role, valid input?) for each delegation, in order."""

BEHAVIOURS: dict[str, Behaviour] = {
    "requester": Behaviour(0.02, 0.1),
    "failing": Behaviour(0.02, 0.1, fail=1.0),
    "garbling": Behaviour(0.02, 0.1, garbage=1.0),
    "lying": Behaviour(0.02, 0.1, wrong=1.0),
    "good": Behaviour(0.02, 0.1),
}


def task_input(step: int, valid: bool) -> dict[str, Any]:
    return {"text": "x" * (step + 1), "n": step} if valid else {"text": step, "n": "x"}


def attempt_row(attempt: Attempt, role_of: dict[str, str]) -> tuple[str, str]:
    return role_of[attempt.node], attempt.outcome.value


Decision = tuple[tuple[tuple[str, str], ...], str, str | None, float | None]


def final_state(
    breakers: Any, opinion: Callable[[str], tuple[float, int]], ids: dict[str, str], now: float
) -> dict[str, Any]:
    return {
        role: {
            "breaker": breakers.state(ids[role], now).value,
            "opinion": tuple(round(x, 9) for x in opinion(ids[role])),
        }
        for role in ROLES[1:]
    }


# ---------------------------------------------------------------------------- simulator


def simulator_run() -> tuple[list[Decision], dict[str, Any]]:
    link = LinkModel(min_latency=0.0005, mean_latency=0.001)
    cluster = Cluster(seed=3, config=NodeConfig.local(), link=link, strict=True)
    nodes: dict[str, SimNode] = {}
    for role in ROLES:
        node = cluster.add_node(role)
        node.capabilities = () if role == "requester" else (CAPABILITY,)
        nodes[role] = node
    seeds = [nodes["requester"]]
    for node in nodes.values():
        cluster.start(node, seeds)
    cluster.run_until(30.0, stop=lambda: cluster.tracker.converged)
    assert cluster.tracker.converged
    economy = Economy(cluster, list(nodes.values()), seeds, EconomyPlan(bad_share=0.0))
    by_role = {e.sim.name: e for e in economy.nodes}
    for role, node in by_role.items():
        node.behaviour = BEHAVIOURS[role]
    requester = by_role["requester"]
    ids = {role: n.node_id for role, n in nodes.items()}
    role_of = {v: k for k, v in ids.items()}
    finished: list[DelegationFinished] = []
    requester.on_finished = finished.append
    decisions: list[Decision] = []
    for step, (candidates, valid) in enumerate(SCRIPT):
        requester.delegate(
            CAPABILITY.name, task_input(step, valid), 0, [ids[r] for r in candidates]
        )
        cluster.run_until(cluster.now + 2 * DEADLINE_S, stop=lambda step=step: len(finished) > step)
        assert len(finished) == step + 1
        decisions.append(decision(finished[step], role_of))
    core = requester.core
    return decisions, final_state(core.breakers, core.opinion, ids, cluster.now)


def decision(finished: DelegationFinished, role_of: dict[str, str]) -> Decision:
    outcome = finished.outcome
    rows = tuple(attempt_row(a, role_of) for a in outcome.attempts)
    quality = None if finished.evaluation is None else finished.evaluation.quality
    if isinstance(outcome, Done):
        return rows, "done", role_of[outcome.provider], quality
    return rows, "failed", None, quality


# ---------------------------------------------------------------------------- runtime


def handler(role: str) -> Callable[[Any], Any]:
    async def run(payload: Any) -> Any:
        await asyncio.sleep(0.02)
        if role == "failing":
            raise RuntimeError("handler failed")
        if role == "garbling":
            return {"garbage": "x" * 16}
        answer = expected_answer(payload)
        return {"answer": answer + 1 if role == "lying" else answer}

    return run


@pytest.fixture
async def mesh() -> AsyncIterator[LocalMesh]:
    local = LocalMesh()
    try:
        yield local
    finally:
        await local.close()


async def runtime_run(mesh: LocalMesh) -> tuple[list[Decision], dict[str, Any]]:
    nodes = {}
    for role in ROLES:
        caps = (
            []
            if role == "requester"
            else [
                Cap(
                    CAPABILITY.name,
                    handler(role),
                    CAPABILITY.input_schema,  # type: ignore[arg-type]
                    CAPABILITY.output_schema,  # type: ignore[arg-type]
                    avg_latency_ms=CAPABILITY.avg_latency_ms,
                    cost_per_call_usd=CAPABILITY.cost_per_call_usd,
                )
            ]
        )
        nodes[role] = await mesh.node(role, caps)
    await mesh.ready()
    requester = nodes["requester"]
    requester.core.evaluator.register(CAPABILITY.name, quality_oracle)
    ids = {role: n.node_id for role, n in nodes.items()}
    role_of = {v: k for k, v in ids.items()}
    decisions: list[Decision] = []
    for step, (candidates, valid) in enumerate(SCRIPT):
        try:
            result = await requester.tasks.delegate(
                CAPABILITY.name,
                task_input(step, valid),
                [ids[r] for r in candidates],
                deadline_s=DEADLINE_S,
                max_cost_usd=None,
            )
        except DelegationError as exc:
            rows = tuple(attempt_row(a, role_of) for a in exc.attempts)
            decisions.append((rows, "failed", None, None))
        else:
            rows = tuple(attempt_row(a, role_of) for a in result.attempts)
            decisions.append((rows, "done", role_of[result.provider], result.quality))
    core = requester.core
    return decisions, final_state(core.breakers, requester.opinion, ids, time.time())


# ---------------------------------------------------------------------------- the test


async def test_runtime_and_simulator_decide_the_same(mesh: LocalMesh) -> None:
    """The same script, both shells: identical decisions and end state (see the module
    docstring); the script exercises a failed result, a refused output, a wrong answer, a
    delegation with no delivery, an open circuit and a refused input."""
    simulated = simulator_run()
    real = await runtime_run(mesh)
    assert real[0] == simulated[0]
    assert real[1] == simulated[1]
    outcomes = [row[1] for d in simulated[0] for row in d[0]]
    assert {"failed_result", "delivered", "skipped", "invalid_input"} <= set(outcomes)
    assert simulated[1]["failing"]["breaker"] == "open"
    assert [d[1] for d in simulated[0]].count("failed") == 2
