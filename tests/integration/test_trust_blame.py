"""Trust blames the right party, end to end: in-process nodes on 127.0.0.1 over real
sockets (pooled WebSockets for tasks, SWIM over UDP, ledger gossip).

* a caller's bad input (failing the declared input schema, or refused by the handler with
  ``InvalidInput``) is never the provider's failure, mesh-wide, and no second provider is
  bothered with it;
* the requester, not the provider, decides what a result is worth: a self-declared schema
  that garbage fits earns nothing, a squatter's fabricated numbers are unscored or scored
  down;
* routing ties go to the longer member, never to an id ground to sort first.

Each test states its invariant in its docstring and what it saw on the unfixed code.
Waits are on conditions with deadlines."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from meshnode import DelegationError, InvalidInput, MeshNode, NodeConfig
from meshnode.core.breaker import BreakerState
from meshnode.core.effects import AttemptOutcome
from meshnode.core.router import tie_key
from meshnode.runtime.node import wait_for
from protocol import Identity
from tests.integration.agents import Cap, LocalMesh

GRADE = "grade"
GRADE_INPUT: dict[str, Any] = {
    "type": "object",
    "required": ["n"],
    "properties": {"n": {"type": "integer"}},
}
GRADE_OUTPUT: dict[str, Any] = {
    "type": "object",
    "required": ["grade"],
    "properties": {"grade": {"type": "integer", "minimum": 0, "maximum": 4}},
}
CALLS = 5


@pytest.fixture
async def mesh() -> AsyncIterator[LocalMesh]:
    local = LocalMesh()
    try:
        yield local
    finally:
        await local.close()


async def good_grade(payload: Any) -> Any:
    return {"grade": int(payload["n"]) % 5}


def right_grade(task_input: Any, output: Any) -> float:
    """The requester's own check: it knows what the grade of ``n`` must be."""
    return 1.0 if output == {"grade": int(task_input["n"]) % 5} else 0.0


async def start_as(mesh: LocalMesh, name: str, identity: Identity, caps: list[Cap]) -> MeshNode:
    """Start a node of ``mesh`` with a chosen identity (LocalMesh.node draws a fresh one)."""

    class Chosen(MeshNode):
        def __init__(self, config: NodeConfig) -> None:
            super().__init__(config, identity=identity)

    return await mesh.node(name, caps, node_class=Chosen)


def ground_identity(requester: MeshNode, *beat: str) -> Identity:
    """An identity whose id sorts before every id in ``beat``, both as text and under the
    requester's own tie-break key: the best an attacker grinding ids could hope for (it
    cannot know the key; this one is handed it)."""
    secret = requester.core.tie_secret
    for i in range(10_000):
        candidate = Identity.from_seed(i.to_bytes(4, "big") + b"\x7f" * 28)
        node = candidate.node_id
        if all(node < other and tie_key(secret, node) < tie_key(secret, other) for other in beat):
            return candidate
    raise AssertionError("no ground identity found")


def trust_unchanged(observer: MeshNode, provider: MeshNode) -> bool:
    return observer.opinion(provider.node_id) == (0.5, 0)


async def test_bad_input_leaves_the_provider_untouched_mesh_wide(mesh: LocalMesh) -> None:
    """Five calls missing a required field, then five a handler refuses with InvalidInput:
    each fails at once with a DelegationError saying the input was invalid (and why); the
    provider's breaker stays closed, the requester signs no opinion of it (so no other
    node's ledger hears anything), and the second provider of the capability is never
    asked.

    On the unfixed code (InvalidInput an ordinary exception there): the schema refusals
    also went to the second provider (5 extra requests); the handler's refusals were failed
    results at both providers: after three, both breakers were open (the last two calls
    failed with "every candidate's circuit is open"), and the opinion of each provider fell
    from 0.5 to 0.3645, signed and gossiped to the observer."""

    async def fussy(payload: Any) -> Any:
        if payload["n"] < 0:
            raise InvalidInput("n must not be negative")
        return {"grade": payload["n"] % 5}

    caps = [Cap(GRADE, fussy, GRADE_INPUT, GRADE_OUTPUT, description="grade a piece of work")]
    a = await mesh.node("requester")
    observer = await mesh.node("observer")
    first = await mesh.node("first", caps)
    second = await mesh.node("second", caps)
    await mesh.ready()
    targets = [first.node_id, second.node_id]

    for bad_input, why in (({"m": 1}, "missing required property 'n'"), ({"n": -1}, "negative")):
        for _ in range(CALLS):
            with pytest.raises(DelegationError) as info:
                await a.tasks.delegate(GRADE, bad_input, targets, deadline_s=5, max_cost_usd=None)
            error = info.value
            assert error.invalid_input
            assert error.reason.startswith("invalid input: ") and why in error.reason
            assert [(x.node, x.outcome) for x in error.attempts] == [
                (first.node_id, AttemptOutcome.INVALID_INPUT)
            ]

    assert a.tasks.breakers.state(first.node_id, time.time()) is BreakerState.CLOSED
    assert trust_unchanged(a, first) and trust_unchanged(a, second)
    assert first.tasks.provider.counts["rejected"] == CALLS
    assert first.tasks.provider.counts["completed_invalid_input"] == CALLS
    assert sum(second.tasks.provider.counts.values()) == 0
    # A good call afterwards is scored as usual, and that opinion (only that one) reaches
    # the observer: the bad calls left nothing in the ledger to gossip.
    a.expect(GRADE, schema=GRADE_OUTPUT, evaluator=right_grade)
    result = await a.tasks.delegate(GRADE, {"n": 7}, targets, deadline_s=5, max_cost_usd=None)
    assert result.quality == 1.0 and a.opinion(first.node_id)[1] == 1
    await wait_for(lambda: observer.core.ledger.get(a.node_id, first.node_id) is not None, 10)
    record = observer.core.ledger.get(a.node_id, first.node_id)
    assert record is not None and record.outcomes == 1 and record.score > 0.5


async def test_the_requester_scores_down_garbage_that_fits_the_providers_schema(
    mesh: LocalMesh,
) -> None:
    """A provider declares a loose output schema ({"type": "object"}) that its garbage
    fits. The requester expects a grade: each result is refused and the next candidate
    asked; the liar is scored down until its breaker opens (then skipped), and the honest
    provider delivers every task.

    On the unfixed code: the garbage passed the provider's own schema and scored 1.0 each
    time (opinion 0.5 → 0.705 after five), its breaker stayed closed, and the caller got
    the garbage five times; the honest provider was never asked."""

    async def garbage(payload: Any) -> Any:
        return {"answer": "forty-two"}

    a = await mesh.node("requester")
    liar = await mesh.node(
        "liar", [Cap(GRADE, garbage, GRADE_INPUT, {"type": "object"}, description="grade it")]
    )
    honest = await mesh.node(
        "honest", [Cap(GRADE, good_grade, GRADE_INPUT, GRADE_OUTPUT, description="grade it")]
    )
    await mesh.ready()
    a.expect(GRADE, schema=GRADE_OUTPUT)
    threshold = a.config.breaker_failure_threshold
    for i in range(CALLS):
        result = await a.tasks.delegate(
            GRADE, {"n": i}, [liar.node_id, honest.node_id], deadline_s=5, max_cost_usd=None
        )
        assert result.provider == honest.node_id and result.output == {"grade": i % 5}
        first = result.attempts[0]
        assert first.node == liar.node_id
        expected = AttemptOutcome.FAILED_RESULT if i < threshold else AttemptOutcome.SKIPPED
        assert first.outcome is expected, (i, first)
        assert result.quality == 1.0
    score, outcomes = a.opinion(liar.node_id)
    assert outcomes == threshold and score < 0.5
    assert a.opinion(honest.node_id) == (pytest.approx(1 - 0.5 * 0.9**CALLS), CALLS)
    assert a.tasks.breakers.state(liar.node_id, time.time()) is BreakerState.OPEN


async def test_a_squatter_neither_wins_ties_nor_earns_trust(mesh: LocalMesh) -> None:
    """A squatter copies a real agent's capability (same name, text, price and latency),
    declares no output schema, and uses an id ground to sort before the real agent's, both
    as text and under the requester's own tie-break key. It joined later, so with equal
    trust the real agent (the longer member) wins the routing tie and gets the task. Aimed
    at directly, its fabricated numbers are unscored for a requester with no expectation
    (its opinion does not move) and scored down by one with an evaluator.

    On the unfixed code: the tie (equal totals) went to the smaller node id, so the
    squatter ranked first, got every one of the 5 inputs and scored 1.0 for each
    fabricated number (opinion 0.5 → 0.705)."""

    async def fabricate(payload: Any) -> Any:
        return {"grade": 3}

    description = "grade a piece of work"
    real_cap = Cap(GRADE, good_grade, GRADE_INPUT, GRADE_OUTPUT, description=description)
    # Distance and machine load are measured and differ between processes: neither
    # requester weighs them, so the two providers tie in every other factor.
    even = {"routing_latency_weight": 0.0, "routing_pressure_weight": 0.0}
    a = await mesh.node("requester", **even)
    checker = await mesh.node("checker", **even)
    real = await mesh.node("real", [real_cap])
    await mesh.ready()
    await wait_for(lambda: a.core.member_ages.since(real.node_id) is not None, 5)
    squatter_id = ground_identity(a, real.node_id)
    copied = Cap(GRADE, fabricate, GRADE_INPUT, None, description=description)
    squatter = await start_as(mesh, "squatter", squatter_id, [copied])
    await mesh.ready()
    assert squatter.node_id < real.node_id
    since_real = a.core.member_ages.since(real.node_id)
    since_squatter = a.core.member_ages.since(squatter.node_id)
    assert since_real is not None and since_squatter is not None
    assert since_real < since_squatter

    ranked = await a.discover(capability_name=GRADE, top_k=5)
    assert [c.node_id for c in ranked] == [real.node_id, squatter.node_id]
    assert ranked[0].total == ranked[1].total  # a true tie, decided by membership age
    for i in range(CALLS):
        result = await a.delegate(GRADE, {"n": i}, deadline_s=5)
        assert result.provider == real.node_id
        assert result.quality is None  # no expectation registered: unscored
    assert a.opinion(real.node_id) == (0.5, 0)

    # Aimed at the squatter directly: no expectation → unscored; an evaluator → 0.
    for i in range(CALLS):
        result = await a.tasks.delegate(
            GRADE, {"n": i}, [squatter.node_id], deadline_s=5, max_cost_usd=None
        )
        assert result.quality is None
    assert a.opinion(squatter.node_id) == (0.5, 0)
    checker.expect(GRADE, evaluator=right_grade)
    threshold = checker.config.breaker_failure_threshold
    for i in range(threshold):  # grades 0, 1, 2: never the 3 it fabricates
        result = await checker.tasks.delegate(
            GRADE, {"n": i}, [squatter.node_id], deadline_s=5, max_cost_usd=None
        )
        assert result.quality == 0.0
    score, outcomes = checker.opinion(squatter.node_id)
    assert score < 0.5 and outcomes == threshold
    assert checker.tasks.breakers.state(squatter.node_id, time.time()) is BreakerState.OPEN


async def test_a_tie_between_equal_providers_goes_to_the_longer_member(
    mesh: LocalMesh,
) -> None:
    """Two honest providers, identical in every routing factor; the younger one's id is
    ground to sort first (as text and under the requester's key). Every requester that saw
    both join ranks the older one first, and the first delegation goes to it. Distance and
    machine load are measured, and differ between two processes however alike, so this
    requester weighs neither (``routing_latency_weight`` and ``routing_pressure_weight``
    0): the tie is in every other factor.

    On the unfixed code: the younger one won the tie on its smaller node id."""
    caps = [Cap(GRADE, good_grade, GRADE_INPUT, GRADE_OUTPUT, description="grade it")]
    a = await mesh.node("requester", routing_latency_weight=0.0, routing_pressure_weight=0.0)
    old = await mesh.node("old", caps)
    await mesh.ready()
    await wait_for(lambda: a.core.member_ages.since(old.node_id) is not None, 5)
    young = await start_as(mesh, "young", ground_identity(a, old.node_id), caps)
    await mesh.ready()
    ranked = await a.discover(capability_name=GRADE, top_k=5)
    assert [c.node_id for c in ranked] == [old.node_id, young.node_id]
    assert ranked[0].total == ranked[1].total
    result = await a.delegate(GRADE, {"n": 1}, deadline_s=5)
    assert result.provider == old.node_id
