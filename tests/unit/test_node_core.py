"""NodeCore: every policy moved out of the shells, as tables of cases.

The cores are driven with a virtual clock and real Ed25519 signers
(:mod:`tests.unit.nodecore_harness`); no asyncio, no sockets."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import pytest

from crdt import INITIAL_TRUST, elo_update
from meshnode.core.breaker import BreakerState, TaskVerdict
from meshnode.core.delegation import (
    COUNTER_RATIO,
    Consequence,
    attempt_consequence,
    attempt_deadline_ms,
    inherit_deadline,
    rank_candidates,
    result_consequence,
)
from meshnode.core.effects import (
    Attempt,
    AttemptOutcome,
    CheckPeer,
    CloseChannels,
    DelegationFinished,
    Done,
    Failed,
    PersistRecords,
    RunHandler,
    SendTask,
)
from meshnode.core.evaluator import Evaluation, Method
from meshnode.core.member import Member, MemberState
from meshnode.core.mesh import fetch_sources
from meshnode.core.node import NodeCore
from meshnode.core.router import ScoredCandidate
from meshnode.core.trust import (
    OPINION_FLUSH_S,
    TRUST_MAX_AGE_S,
    TRUST_REFRESH_S,
    GlobalTrust,
    blend,
    global_is_stale,
    pretrusted_set,
)
from protocol import (
    Alive,
    Capability,
    LocalProtocolError,
    Suspect,
    TaskRequest,
    TaskResult,
)
from protocol.schema import signing_bytes
from tests.unit.nodecore_harness import SILENT, Host, World, identity

ECHO = Capability(
    name="echo",
    description="Echo the input",
    input_schema={"type": "object"},
    avg_latency_ms=10,
)
TYPED = Capability(
    name="typed",
    description="Answers with a number",
    output_schema={"type": "object", "required": ["n"]},
    avg_latency_ms=10,
)


def _world(*kinds: Any) -> tuple[World, Host, list[Host]]:
    """A requester (slot 0) and one provider per handler in ``kinds`` (echo capability)."""
    world = World()
    requester = world.add(0)
    providers = []
    for i, handler in enumerate(kinds, start=1):
        host = world.add(i, (ECHO, TYPED))
        host.handlers["echo"] = handler
        host.handlers["typed"] = handler
        providers.append(host)
    return world, requester, providers


def _delegate(
    world: World, requester: Host, providers: list[Host], capability: str = "echo", **kw: Any
) -> str:
    task_id = requester.core.start_delegation(
        capability, {"x": 1}, [p.node_id for p in providers], world.now, **kw
    )
    world.drain(requester)
    return task_id


def _own_records(host: Host) -> list[PersistRecords]:
    return [e for e in host.effects if isinstance(e, PersistRecords) and e.durable]


# ============================================================================ trust blend


@pytest.mark.parametrize(
    ("direct", "global_scores", "weight", "expected"),
    [
        # rated and globally known: the global score moved by 2w x (direct - 0.5)
        ({"p": 0.9}, {"p": 0.5}, 0.5, {"p": 0.9}),
        ({"p": 0.9}, {"p": 0.3}, 0.5, {"p": 0.7}),
        ({"p": 0.9}, {"p": 0.5}, 1.0, {"p": 1.0}),  # clamped
        ({"p": 0.7}, {"p": 0.5}, 0.25, {"p": 0.6}),
        ({"p": 0.9}, {"p": 0.5}, 0.0, {"p": 0.5}),
        # a peer that failed us once (0.45): below its global score ...
        ({"p": 0.45}, {"p": 0.6}, 0.5, {"p": 0.55}),
        # ... and at 0 when nobody rates it above the prior, below any trusted peer
        (
            {"p": 0.45, "q": 0.55},
            {"p": 0.0, "q": 0.05, "r": 0.01},
            0.5,
            {"p": 0.0, "q": 0.1, "r": 0.01},
        ),
        # rated, unknown globally: the direct score stands in for the global part
        ({"p": 0.2}, {}, 0.5, {"p": 0.2}),
        # known globally only: the global score
        ({}, {"q": 0.4}, 0.5, {"q": 0.4}),
        # ourselves never appear
        ({"me": 1.0, "p": 0.6}, {"me": 0.9, "p": 0.6}, 0.5, {"p": 0.7}),
    ],
)
def test_blend(
    direct: dict[str, float],
    global_scores: dict[str, float],
    weight: float,
    expected: dict[str, float],
) -> None:
    """``global + 2w × (direct − 0.5)`` (clamped) per rated peer known globally, direct
    alone for a rated peer the mesh does not know, global alone for the others. With the
    earlier weighted average the once-failed ``p`` of the last case held 0.225, above
    ``q`` and ``r``."""
    view = blend("me", direct, global_scores, weight)
    assert view.keys() == expected.keys()
    for peer, score in expected.items():
        assert view[peer] == pytest.approx(score)


@pytest.mark.parametrize(
    ("direct", "expected"),
    [
        ({}, {"me"}),
        ({"a": INITIAL_TRUST}, {"me", "a"}),  # at the initial trust: included
        ({"a": 0.9, "b": 0.49}, {"me", "a"}),  # a peer seen failing is never pre-trusted
        ({"a": 0.0}, {"me"}),
    ],
)
def test_pretrusted_set(direct: dict[str, float], expected: set[str]) -> None:
    """Self plus the peers with our own opinion at least INITIAL_TRUST."""
    assert pretrusted_set("me", direct) == frozenset(expected)


_KNOWN = GlobalTrust(
    version=10, own_writes=3, computed_at=100.0, pretrusted=frozenset({"me"}), scores={}
)


@pytest.mark.parametrize(
    ("case", "pretrusted", "version", "own_writes", "now", "stale"),
    [
        ("nothing changed", {"me"}, 10, 3, 100.1, False),
        ("pre-trusted set changed", {"me", "a"}, 10, 3, 100.1, True),
        ("someone else's record", {"me"}, 11, 3, 100.1, True),
        ("only our own record, fresh", {"me"}, 11, 4, 100.0 + TRUST_REFRESH_S / 2, False),
        ("only our own record, refresh due", {"me"}, 11, 4, 100.0 + TRUST_REFRESH_S, True),
        ("unchanged but too old", {"me"}, 10, 3, 100.0 + TRUST_MAX_AGE_S, True),
    ],
)
def test_global_refresh_rules(
    case: str, pretrusted: set[str], version: int, own_writes: int, now: float, stale: bool
) -> None:
    """When the EigenTrust part is recomputed (see meshnode.core.trust)."""
    assert global_is_stale(_KNOWN, frozenset(pretrusted), version, own_writes, now) is stale, case
    assert global_is_stale(None, frozenset(pretrusted), version, own_writes, now)


def test_trust_view_blends_direct_experience_with_the_ledger() -> None:
    """A delivered task raises the requester's view of its provider above the prior, and a
    provider that timed out falls below it; the view is the blend of both parts."""
    world, a, (good, silent) = _world(lambda x: {"ok": x}, lambda x: SILENT)
    a.core.evaluator.expect("echo", schema={"required": ["ok"]})  # the requester's check
    task_id = _delegate(world, a, [silent, good], deadline_s=10)
    world.settle()
    assert isinstance(a.finished[task_id].outcome, Done)
    view = a.core.trust_view(world.now)
    direct = a.core.direct_experience()
    assert direct[good.node_id] == pytest.approx(elo_update(INITIAL_TRUST, 1.0))
    assert direct[silent.node_id] == pytest.approx(elo_update(INITIAL_TRUST, 0.0))
    assert view[good.node_id] > INITIAL_TRUST > view[silent.node_id]
    assert a.node_id not in view


# ============================================================================ opinion batching


def test_an_outcome_with_nothing_else_waiting_is_signed_at_once() -> None:
    """Not busy: one signed, durable record per outcome, at once."""
    world, a, (p,) = _world(lambda x: x)
    record = a.core.record_outcome(p.node_id, 1.0, world.now)
    world.drain(a)
    assert record is not None and record.outcomes == 1
    assert [r.records for r in _own_records(a)] == [(record,)]
    assert a.core.trust.flush_at is None


def test_outcomes_while_busy_are_batched_until_the_flush_timer() -> None:
    """While a delegation of ours waits on a peer, its outcomes stay unsigned (routing
    sees them at once) and are signed together OPINION_FLUSH_S after the first."""
    world, a, (p,) = _world(lambda x: SILENT)
    _delegate(world, a, [p], deadline_s=30)
    world.settle(world.now + 0.01)  # accepted, the handler runs and never answers
    assert a.core.waiting_on(p.node_id)
    start = world.now
    for _ in range(3):
        assert a.core.record_outcome(p.node_id, 1.0, world.now) is None
        world.drain(a)
    assert _own_records(a) == []
    assert a.core.opinion(p.node_id)[1] == 3
    assert a.core.trust_view(world.now)[p.node_id] > INITIAL_TRUST
    assert a.core.trust.flush_at == pytest.approx(start + OPINION_FLUSH_S)
    assert a.core.next_deadline() <= start + OPINION_FLUSH_S
    world.settle(start + OPINION_FLUSH_S + 0.001)
    (persist,) = _own_records(a)
    (record,) = persist.records
    assert record.outcomes == 3 and record.score == pytest.approx(a.core.opinion(p.node_id)[0])


def test_batched_outcomes_are_signed_when_the_last_delegation_ends() -> None:
    """The batch is signed as soon as nothing of ours waits on the peer any more, before
    the flush timer."""
    world, a, (p,) = _world(lambda x: {"ok": x})
    a.core.evaluator.expect("echo", schema={"required": ["ok"]})  # the requester's check
    world.handler_delay[p.node_id] = 0.1
    _delegate(world, a, [p], deadline_s=30)
    world.settle(world.now + 0.01)
    a.core.record_outcome(p.node_id, 1.0, world.now)  # folded, unsigned: busy
    world.drain(a)
    assert _own_records(a) == []
    world.settle(world.now + 0.095)  # the result arrives before the flush timer
    assert world.now < a.core.trust.flush_at if a.core.trust.flush_at else True
    (persist,) = _own_records(a)
    assert persist.records[0].outcomes == 2  # the manual outcome and the delivered task


def test_a_failed_durable_write_holds_back_further_opinions() -> None:
    """The durable-pending rule: once the durable write of an own record failed, no
    further opinion is signed (outcomes stay folded, unsigned) until it is written; then
    what waited is signed at once."""
    world, a, (p,) = _world(lambda x: x)
    a.fail_durable = True
    first = a.core.record_outcome(p.node_id, 1.0, world.now)
    world.drain(a)
    assert first is not None and a.core.durable_pending == (first,)
    a.fail_durable = False
    assert a.core.record_outcome(p.node_id, 1.0, world.now) is None
    a.core.sign_opinions(world.now)  # an explicit flush is held back too
    world.settle(world.now + 10 * OPINION_FLUSH_S)
    world.drain(a)
    assert len(_own_records(a)) == 1
    assert a.core.opinion(p.node_id) == (
        pytest.approx(elo_update(elo_update(INITIAL_TRUST, 1.0), 1.0)),
        2,
    )
    assert a.core.ledger.get(a.node_id, p.node_id) == first
    a.core.durable_written(world.now)
    world.drain(a)
    assert a.core.durable_pending == ()
    second = _own_records(a)[-1].records[0]
    assert second.outcomes == 2 and second.seq == first.seq + 1


def test_a_node_never_grades_itself() -> None:
    world, a, _ = _world()
    assert a.core.record_outcome(a.node_id, 1.0, world.now) is None
    world.drain(a)
    assert _own_records(a) == [] and a.core.opinion(a.node_id) == (INITIAL_TRUST, 0)


# ============================================================================ outcome mapping


def _attempt(outcome: AttemptOutcome) -> Attempt:
    return Attempt("peer", outcome, "", 1.0, 1.0, 2.0, 1000, None)


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        (AttemptOutcome.DELIVERED, Consequence(None, None)),  # scored by the evaluator
        (AttemptOutcome.SKIPPED, Consequence(None, None)),
        (AttemptOutcome.FAILED_RESULT, Consequence(TaskVerdict.FAILURE, 0.0)),
        (AttemptOutcome.RESPONSE_TIMEOUT, Consequence(TaskVerdict.FAILURE, 0.0)),
        (AttemptOutcome.EXECUTION_TIMEOUT, Consequence(TaskVerdict.FAILURE, 0.0)),
        (AttemptOutcome.PEER_FAILED, Consequence(TaskVerdict.FAILURE, 0.0)),
        (AttemptOutcome.FORGED_RESULT, Consequence(TaskVerdict.FAILURE, 0.0)),
        (AttemptOutcome.PROTOCOL_ERROR, Consequence(TaskVerdict.FAILURE, 0.0)),
        (AttemptOutcome.REJECTED, Consequence(TaskVerdict.ABANDONED, None)),
        (AttemptOutcome.DECLINED, Consequence(TaskVerdict.ABANDONED, None)),
        (AttemptOutcome.DEADLINE_EXCEEDED, Consequence(TaskVerdict.ABANDONED, None)),
        (AttemptOutcome.CANCELLED, Consequence(TaskVerdict.ABANDONED, None)),
    ],
)
def test_attempt_outcome_mapping(outcome: AttemptOutcome, expected: Consequence) -> None:
    """Each way an attempt ends -> breaker verdict and opinion."""
    assert attempt_consequence(_attempt(outcome)) == expected


def test_every_attempt_outcome_is_mapped() -> None:
    for outcome in AttemptOutcome:
        attempt_consequence(_attempt(outcome))  # raises for an unmapped one


@pytest.mark.parametrize(
    ("quality", "verdict"),
    [
        (1.0, TaskVerdict.SUCCESS),
        (0.5, TaskVerdict.SUCCESS),
        (0.49, TaskVerdict.FAILURE),
        (0.0, TaskVerdict.FAILURE),
    ],
)
def test_result_mapping(quality: float, verdict: TaskVerdict) -> None:
    """A delivered result: the evaluator's quality decides the breaker and is the opinion."""
    assert result_consequence(Evaluation(quality, Method.CUSTOM)) == Consequence(verdict, quality)


def test_result_mapping_treats_a_non_number_as_zero() -> None:
    assert result_consequence(Evaluation(math.nan, Method.CUSTOM)).quality == 0.0


@pytest.mark.parametrize(
    ("handler", "outcome", "breaker_failures", "opinion"),
    [
        (lambda x: {"n": 1}, AttemptOutcome.DELIVERED, 0, elo_update(INITIAL_TRUST, 1.0)),
        (lambda x: {"wrong": 1}, AttemptOutcome.FAILED_RESULT, 1, elo_update(INITIAL_TRUST, 0.0)),
        (lambda x: SILENT, AttemptOutcome.EXECUTION_TIMEOUT, 1, elo_update(INITIAL_TRUST, 0.0)),
        (lambda x: 1 / 0, AttemptOutcome.FAILED_RESULT, 1, elo_update(INITIAL_TRUST, 0.0)),
    ],
)
def test_outcome_reaches_breaker_and_opinion(
    handler: Any, outcome: AttemptOutcome, breaker_failures: int, opinion: float
) -> None:
    """End to end through NodeCore: the provider's answer -> the attempt's outcome -> the
    breaker's failure count and the requester's opinion of the provider."""
    world, a, (p,) = _world(handler)
    a.core.evaluator.expect("typed", schema={"type": "object"})  # the requester's check
    task_id = _delegate(world, a, [p], "typed", deadline_s=3)
    world.settle()
    finished = a.finished[task_id]
    attempts = finished.outcome.attempts
    assert attempts[0].outcome is outcome
    held = a.core.breakers.snapshot(world.now).get(p.node_id)
    assert (0 if held is None else held.consecutive_failures) == breaker_failures
    assert a.core.opinion(p.node_id) == (pytest.approx(opinion), 1)


def test_a_rejection_scores_nothing_and_hands_the_probe_back() -> None:
    """Rejected (the input breaks the capability's schema): the breaker records an
    abandoned attempt, our opinion of the provider does not move, and the delegation
    fails as invalid input."""
    world, a, (p,) = _world(lambda x: x)
    task_id = a.core.start_delegation("echo", ["not an object"], [p.node_id], world.now)
    world.drain(a)
    world.settle()
    outcome = a.finished[task_id].outcome
    assert isinstance(outcome, Failed) and outcome.invalid_input
    assert outcome.attempts[0].outcome is AttemptOutcome.INVALID_INPUT
    assert a.core.opinion(p.node_id) == (INITIAL_TRUST, 0)
    assert a.core.breakers.state(p.node_id, world.now) is BreakerState.CLOSED


def test_three_failures_open_the_breaker_and_the_peer_is_skipped() -> None:
    """The breaker filter: after breaker_failure_threshold failures the peer's circuit is
    open and the next delegation skips it for the next candidate."""
    world, a, (bad, good) = _world(lambda x: 1 / 0, lambda x: {"ok": 1})
    for _ in range(world.config.breaker_failure_threshold):
        _delegate(world, a, [bad], deadline_s=3)
        world.settle(world.now + 1)
    assert a.core.breakers.state(bad.node_id, world.now) is BreakerState.OPEN
    task_id = _delegate(world, a, [bad, good], deadline_s=3)
    world.settle(world.now + 1)
    outcome = a.finished[task_id].outcome
    assert isinstance(outcome, Done) and outcome.provider == good.node_id
    assert outcome.attempts[0].outcome is AttemptOutcome.SKIPPED


# ============================================================================ deadlines


@pytest.mark.parametrize(
    ("case", "deadline_s", "inherited", "now", "expected"),
    [
        ("no inherited deadline", 30.0, None, 100.0, 30.0),
        ("inherited shorter", 30.0, 105.0, 100.0, 5.0),
        ("inherited longer", 3.0, 200.0, 100.0, 3.0),
        ("inherited expired", 30.0, 99.0, 100.0, 0.0),
        ("inherited exactly now", 30.0, 100.0, 100.0, 0.0),
    ],
)
def test_deadline_inheritance(
    case: str, deadline_s: float, inherited: float | None, now: float, expected: float
) -> None:
    assert inherit_deadline(deadline_s, inherited, now) == pytest.approx(expected), case


@pytest.mark.parametrize(
    ("deadline_s", "expected_ms"),
    [(3.0, 2000), (30.0, 20000), (0.0015, 1), (0.0001, 1)],
)
def test_attempt_deadline(deadline_s: float, expected_ms: int) -> None:
    """Each attempt asks for 1 / COUNTER_RATIO of the whole deadline, at least 1 ms."""
    assert COUNTER_RATIO == 1.5
    assert attempt_deadline_ms(deadline_s) == expected_ms


@pytest.mark.parametrize(
    ("inherited_in", "asked_ms"),
    [(None, 2000), (1.5, 1000), (60.0, 2000)],
)
def test_a_nested_delegation_never_asks_for_more_than_is_left(
    inherited_in: float | None, asked_ms: int
) -> None:
    """The request's deadline_ms comes from the inherited deadline when it is shorter."""
    world, a, (p,) = _world(lambda x: x)
    inherited = None if inherited_in is None else world.now + inherited_in
    _delegate(world, a, [p], deadline_s=3.0, inherited_deadline=inherited)
    (request,) = [
        e.message
        for e in a.effects
        if isinstance(e, SendTask) and isinstance(e.message, TaskRequest)
    ]
    assert request.deadline_ms == asked_ms


def test_an_expired_inherited_deadline_fails_at_once() -> None:
    """No time left: the delegation ends at once, nothing is sent."""
    world, a, (p,) = _world(lambda x: x)
    task_id = _delegate(world, a, [p], inherited_deadline=world.now - 1)
    outcome = a.finished[task_id].outcome
    assert isinstance(outcome, Failed) and outcome.reason == "no time left for this delegation"
    assert not [e for e in a.effects if isinstance(e, SendTask)]
    assert a.core.delegations == 0


@pytest.mark.parametrize("deadline_s", [0.0, -1.0, math.inf, math.nan])
def test_a_bad_deadline_is_refused_and_changes_nothing(deadline_s: float) -> None:
    world, a, (p,) = _world(lambda x: x)
    with pytest.raises(ValueError, match="deadline_s"):
        a.core.start_delegation("echo", {}, [p.node_id], world.now, deadline_s=deadline_s)
    assert a.core.take_effects() == [] and a.core.delegations == 0


def test_an_input_that_cannot_travel_is_refused_before_any_peer_is_asked() -> None:
    world, a, (p,) = _world(lambda x: x)
    with pytest.raises(LocalProtocolError):
        a.core.start_delegation("echo", {"x": object()}, [p.node_id], world.now)
    assert a.core.take_effects() == [] and a.core.delegations == 0
    assert a.core.breakers.snapshot(world.now) == {}


# ============================================================================ rank order, caps


def _candidate(node: str, capability: str, total: float, trust: float = 0.5) -> ScoredCandidate:
    cap = Capability(name=capability, description=capability)
    return ScoredCandidate(node, node, "127.0.0.1:1", cap, 1.0, 1.0, trust, 1.0, 1.0, total)


@pytest.mark.parametrize(
    ("candidates", "name", "expected"),
    [
        ([], "echo", None),
        ([("a", "echo", 0.9), ("b", "echo", 0.8)], "echo", ("echo", ["a", "b"])),
        # the discovery order is kept, other capabilities are left out
        (
            [("b", "echo", 0.9), ("a", "other", 0.8), ("c", "echo", 0.1)],
            "echo",
            ("echo", ["b", "c"]),
        ),
        # a description only: the best candidate's capability
        (
            [("a", "other", 0.9), ("b", "echo", 0.8), ("c", "other", 0.7)],
            None,
            ("other", ["a", "c"]),
        ),
        ([("a", "other", 0.9)], "echo", None),
        # no trust at all (a provider seen failing, a Sybil): not tried while any
        # candidate has some trust (before, the ring got fallbacks in the economy)
        (
            [("a", "echo", 0.9, 0.2), ("s", "echo", 0.5, 0.0), ("b", "echo", 0.4, 0.01)],
            "echo",
            ("echo", ["a", "b"]),
        ),
        # ... and all tried when none has any
        ([("s", "echo", 0.5, 0.0), ("t", "echo", 0.4, 0.0)], "echo", ("echo", ["s", "t"])),
    ],
)
def test_rank_candidates(
    candidates: list[tuple[Any, ...]], name: str | None, expected: Any
) -> None:
    ranked = rank_candidates([_candidate(*c) for c in candidates], name)
    assert ranked == expected


def test_delegations_beyond_the_cap_fail_at_once() -> None:
    world = World()
    a_signer = identity(0)
    core = NodeCore(
        world.config,
        a_signer,
        host="127.0.0.1",
        port=7000,
        rng=__import__("random").Random(0),
        max_delegations=2,
    )
    peer = identity(1).node_id
    ids = [core.start_delegation("echo", {}, [peer], world.now) for _ in range(3)]
    finished = {e.task_id: e for e in core.take_effects() if isinstance(e, DelegationFinished)}
    assert list(finished) == [ids[2]]
    assert finished[ids[2]].outcome.reason == "too many delegations in flight"  # type: ignore[union-attr]
    assert core.task_counters["delegations_refused_cap"] == 1 and core.delegations == 2
    with pytest.raises(ValueError):
        NodeCore(
            world.config,
            a_signer,
            host="127.0.0.1",
            port=7000,
            rng=__import__("random").Random(0),
            max_delegations=0,
        )


# ============================================================================ provider side


def test_a_request_runs_the_handler_and_sends_the_signed_result() -> None:
    world, a, (p,) = _world(lambda x: {"echo": x})
    task_id = _delegate(world, a, [p])
    world.settle()
    runs = [e for e in p.effects if isinstance(e, RunHandler)]
    assert [(r.requester, r.task_id, r.capability) for r in runs] == [(a.node_id, task_id, "echo")]
    results = [
        e.message
        for e in p.effects
        if isinstance(e, SendTask) and isinstance(e.message, TaskResult)
    ]
    assert len(results) == 1 and results[0].ok and results[0].output == {"echo": {"x": 1}}
    assert p.core.task_counters["tasks_served"] == 1
    assert a.core.task_counters["delegations_ok"] == 1


def test_a_handler_past_its_deadline_is_stopped_and_a_failed_result_sent() -> None:
    world, a, (p,) = _world(lambda x: SILENT)
    task_id = _delegate(world, a, [p], deadline_s=3)
    world.settle()
    assert [(s.requester, s.task_id) for s in p.stopped] == [(a.node_id, task_id)]
    results = [
        e.message
        for e in p.effects
        if isinstance(e, SendTask) and isinstance(e.message, TaskResult)
    ]
    assert len(results) == 1 and not results[0].ok and "deadline_exceeded" in results[0].error


def test_a_lost_requester_stops_its_running_handlers() -> None:
    world, a, (p,) = _world(lambda x: SILENT)
    task_id = _delegate(world, a, [p], deadline_s=30)
    world.settle(world.now + 0.01)
    p.core.peer_failed(a.node_id, "connection closed", world.now)
    world.drain(p)
    assert [(s.requester, s.task_id) for s in p.stopped] == [(a.node_id, task_id)]
    assert p.core.provider.running == 0


def test_a_peer_failure_moves_the_delegation_on() -> None:
    world, a, (silent, good) = _world(lambda x: SILENT, lambda x: {"ok": 1})
    task_id = _delegate(world, a, [silent, good], deadline_s=30)
    world.settle(world.now + 0.01)
    assert a.core.attempt_node(task_id) == silent.node_id
    a.core.peer_failed(silent.node_id, "connection closed", world.now)
    world.drain(a)
    world.settle()
    outcome = a.finished[task_id].outcome
    assert isinstance(outcome, Done) and outcome.provider == good.node_id
    assert outcome.attempts[0].outcome is AttemptOutcome.PEER_FAILED


def test_send_failed_moves_only_that_delegation_on() -> None:
    world, a, (p,) = _world(lambda x: x)
    stranger = identity(9).node_id
    task_id = a.core.start_delegation("echo", {}, [stranger, p.node_id], world.now)
    world.drain(a)  # the harness has no route to the stranger: send_failed
    world.settle()
    outcome = a.finished[task_id].outcome
    assert isinstance(outcome, Done) and outcome.provider == p.node_id
    assert outcome.attempts[0].outcome is AttemptOutcome.PEER_FAILED


def test_cancel_and_close() -> None:
    """A cancelled delegation sends TaskCancel and ends Failed; after close_tasks every
    delegation ends and new ones fail at once with ``node is closing``."""
    world, a, (p,) = _world(lambda x: SILENT)
    first = _delegate(world, a, [p], deadline_s=30)
    second = _delegate(world, a, [p], deadline_s=30)
    world.settle(world.now + 0.01)
    a.core.cancel_delegation(first, world.now)
    world.drain(a)
    assert isinstance(a.finished[first].outcome, Failed)
    a.core.close_tasks(world.now)
    world.drain(a)
    assert a.finished[second].outcome.reason == "node closing"  # type: ignore[union-attr]
    third = _delegate(world, a, [p])
    assert a.finished[third].outcome.reason == "node is closing"  # type: ignore[union-attr]
    world.settle()
    assert p.core.provider.running == 0  # both cancels reached the provider


# ============================================================================ departures


def _member_event(core: NodeCore, peer: Any, kind: str) -> None:
    """Hand the core the ``MemberChanged`` its membership emits when ``peer`` is declared
    dead or leaves (membership's own rules for that are tested in test_membership.py)."""
    from meshnode.core.effects import MemberChanged, MemberEvent

    alive = Alive(peer.node_id, 0, "127.0.0.1", 7999, b"\0" * 64)
    member = Member(peer.node_id, "127.0.0.1", 7999, 0, MemberState.ALIVE, 0.0, alive, alive)
    event = MemberEvent.LEFT if kind == "left" else MemberEvent.DEAD
    state = MemberState.LEFT if kind == "left" else MemberState.DEAD
    core.mesh._effects.append(MemberChanged(event, peer.node_id, MemberState.ALIVE, state, member))


@pytest.mark.parametrize(
    ("kind", "check", "failed_at_once"), [("left", False, True), ("dead", True, False)]
)
def test_a_leave_fails_tasks_at_once_a_death_is_checked_first(
    kind: str, check: bool, failed_at_once: bool
) -> None:
    """A signed Leave fails the peer's tasks at once; a Dead (an accusation) makes the
    core ask the shell to check the task channel first."""
    world, a, (p, q) = _world(lambda x: SILENT, lambda x: {"ok": 1})
    task_id = _delegate(world, a, [p, q], deadline_s=30)
    world.settle(world.now + 0.01)
    _member_event(a.core, p, kind)
    effects = a.core.take_effects()
    assert any(isinstance(e, CheckPeer) and e.node == p.node_id for e in effects) is check
    assert (a.core.attempt_node(task_id) != p.node_id) is failed_at_once


def _checks(effects: list[Any]) -> list[CheckPeer]:
    return [e for e in effects if isinstance(e, CheckPeer)]


def _dead_with_task() -> tuple[World, Host, Host, str, CheckPeer]:
    """Requester A waits on P's result (P never answers), then P is declared dead."""
    world, a, (p, q) = _world(lambda x: SILENT, lambda x: {"ok": 1})
    task_id = _delegate(world, a, [p, q], deadline_s=30)
    world.settle(world.now + 0.01)
    a.core.tick(world.now)  # the core's clock is the world's when the Dead arrives
    world.drain(a)
    _member_event(a.core, p, "dead")
    (check,) = _checks(a.core.take_effects())
    return world, a, p, task_id, check


@pytest.mark.parametrize(
    ("answer", "after_s", "refuted"),
    [
        ("right_token", 0.1, True),
        ("right_token_at_the_deadline", None, True),
        ("wrong_token", 0.1, False),
        ("other_peer", 0.1, False),
        ("right_token_too_late", None, False),
        ("silence", None, False),
    ],
)
def test_what_counts_as_alive_on_the_task_channel(
    answer: str, after_s: float | None, refuted: bool
) -> None:
    """Only a pong from the accused peer, with the token of the check's ping, no later
    than ``task_liveness_timeout`` after the Dead, refutes it. Otherwise, once the
    deadline passes, the core closes the peer's channels and the delegation moves on."""
    world, a, p, task_id, check = _dead_with_task()
    timeout = world.config.task_liveness_timeout
    assert a.core.checks == {p.node_id: world.now + timeout}
    assert a.core.task_deadline() is not None
    assert a.core.task_deadline() <= world.now + timeout  # type: ignore[operator]
    at = world.now + (timeout if after_s is None else after_s)
    if answer == "right_token_too_late":
        a.core.tick(at + 0.001)
        at += 0.001
    sender = world.hosts[2].node_id if answer == "other_peer" else p.node_id
    token = check.token + 1 if answer == "wrong_token" else check.token
    if answer != "silence":
        assert a.core.peer_answered(sender, token, at) is refuted
    world.now = at
    world.settle(at + timeout + 1)
    effects = a.effects + a.core.take_effects()
    closed = [e for e in effects if isinstance(e, CloseChannels)]
    assert (a.core.attempt_node(task_id) == p.node_id) is refuted
    assert a.core.task_counters["dead_refuted_on_channel"] == int(refuted)
    assert a.core.task_counters["dead_confirmed_on_channel"] == int(not refuted)
    assert [c.node for c in closed] == ([] if refuted else [p.node_id])
    assert a.core.checks == {}


def test_with_no_channel_to_ping_the_peer_fails_at_once() -> None:
    world, a, p, task_id, _ = _dead_with_task()
    a.core.check_unsent(p.node_id, world.now)
    assert a.core.attempt_node(task_id) != p.node_id
    assert a.core.task_counters["dead_without_channel"] == 1
    assert a.core.checks == {}


def test_one_check_at_a_time_per_peer_and_close_ends_them() -> None:
    world, a, p, _, first = _dead_with_task()
    _member_event(a.core, p, "dead")
    assert _checks(a.core.take_effects()) == []  # the pending check covers it
    assert a.core.peer_answered(p.node_id, first.token, world.now)
    _member_event(a.core, p, "dead")
    (second,) = _checks(a.core.take_effects())
    assert second.token != first.token  # an old pong cannot answer a new check
    assert not a.core.peer_answered(p.node_id, first.token, world.now)
    a.core.close_tasks(world.now)
    assert a.core.checks == {}


def test_a_departure_with_no_task_emits_nothing() -> None:
    _, a, (p,) = _world(lambda x: x)
    for kind in ("dead", "left"):
        _member_event(a.core, p, kind)
        effects = a.core.take_effects()
        assert [type(e).__name__ for e in effects] == ["MemberChanged"]


# ==================================================================== fetch sources, restore


@pytest.mark.parametrize(
    ("source", "owner", "expected"),
    [
        (("10.0.0.1", 1), ("10.0.0.2", 2), (("10.0.0.1", 1), ("10.0.0.2", 2))),
        (("10.0.0.2", 2), ("10.0.0.2", 2), (("10.0.0.2", 2),)),  # the owner told us
        (None, ("10.0.0.2", 2), (("10.0.0.2", 2),)),  # learned by push-pull, no sender
        (("10.0.0.1", 1), None, (("10.0.0.1", 1),)),
        (None, None, ()),
    ],
)
def test_fetch_sources(source: Any, owner: Any, expected: tuple[Any, ...]) -> None:
    """The peer that told us first (it holds that version), then the owner; each once."""
    assert fetch_sources(source, owner) == expected


def test_restore_keeps_known_state_and_returns_remembered_members_as_seeds() -> None:
    """Records of this node and of remembered members are kept, others dropped; the
    remembered members (not this node) come back as extra seeds."""
    world = World()
    a, b, stranger = identity(0), identity(1), identity(2)
    source = NodeCore(
        world.config, a, host="127.0.0.1", port=7000, rng=__import__("random").Random(0)
    )
    mine = source.mesh.ledger.record_opinion(a, b.node_id, 0.8, 1, world.now)
    other = NodeCore(
        world.config, stranger, host="127.0.0.1", port=7002, rng=__import__("random").Random(2)
    )
    foreign = other.mesh.ledger.record_opinion(stranger, b.node_id, 0.1, 1, world.now)
    by_b = NodeCore(
        world.config, b, host="127.0.0.1", port=7001, rng=__import__("random").Random(1)
    )
    from_b = by_b.mesh.ledger.record_opinion(b, a.node_id, 0.9, 1, world.now)

    def alive(signer: Any, port: int) -> Alive:
        return Alive(signer.node_id, 3, "127.0.0.1", port, b"\0" * 64)

    restored = NodeCore(
        world.config,
        a,
        host="127.0.0.1",
        port=7000,
        rng=__import__("random").Random(5),
        incarnation=4,
    )
    seeds = restored.restore(
        [], [mine, foreign, from_b], [alive(a, 7000), alive(b, 7001)], world.now
    )
    assert seeds == [("127.0.0.1", 7001)]
    held = {(r.observer, r.subject) for r in restored.ledger.records()}
    assert held == {(a.node_id, b.node_id), (b.node_id, a.node_id)}


# ============================================================================ routing


@dataclass(frozen=True)
class _Entry:
    node_id: str
    capability: Capability
    node_name: str = "n"
    endpoint: str = "127.0.0.1:1"
    node_tags: tuple[str, ...] = ()


def test_route_ranks_only_alive_members_with_their_load_and_breakers() -> None:
    """Candidates are indexed capabilities of members membership holds alive (never this
    node, never a stranger); a busier member ranks lower, an open circuit lowest."""
    world, a, (idle, busy, tripped) = _world(lambda x: x, lambda x: x, lambda x: x)
    members = {}
    for host, load in ((idle, 0), (busy, 2), (tripped, 0)):
        alive = Alive(host.node_id, 0, "127.0.0.1", 7100, b"\0" * 64)
        members[host.node_id] = Member(
            host.node_id, "127.0.0.1", 7100, 0, MemberState.ALIVE, 0.0, alive, alive, load=load
        )
    a.core.mesh.membership.adopt_converged(members, world.now)
    for _ in range(world.config.breaker_failure_threshold):
        a.core.breakers.record_failure(tripped.node_id, world.now)
    stranger = identity(9).node_id
    hits = [
        (_Entry(node, ECHO), 0.9)
        for node in (tripped.node_id, busy.node_id, stranger, a.node_id, idle.node_id)
    ]
    ranked = a.core.route(hits, world.now, capability_name="echo", top_k=10)
    assert [c.node_id for c in ranked] == [idle.node_id, busy.node_id, tripped.node_id]
    assert ranked[-1].circuit_open and ranked[1].availability == pytest.approx(1 / 3)


def test_route_ranks_a_suspect_member_last_and_leaves_out_a_dead_one() -> None:
    """A member held suspect (an accuser says it missed probes: maybe down) stays a
    candidate, ranked after every alive one, so a capability whose every provider is
    suspect for a moment is still found; once its suspicion ends in death it is no
    candidate. On the unfixed code the suspect member was left out like a dead one: the
    query naming it alone answered nothing."""
    world, a, (fine, doubted) = _world(lambda x: x, lambda x: x)
    members = {}
    for host in (fine, doubted):
        alive = Alive(host.node_id, 0, "127.0.0.1", 7100, b"\0" * 64)
        members[host.node_id] = Member(
            host.node_id, "127.0.0.1", 7100, 0, MemberState.ALIVE, 0.0, alive, alive, load=0
        )
    membership = a.core.mesh.membership
    membership.adopt_converged(members, world.now)
    accusation = Suspect(doubted.node_id, 0, fine.node_id, bytes(64))
    accusation = dataclasses.replace(
        accusation, signature=identity(1).sign(signing_bytes(accusation))
    )
    membership.receive(fine.node_id, [accusation], ("127.0.0.1", 7001), world.now)
    assert membership.member(doubted.node_id).state is MemberState.SUSPECT
    hits = [(_Entry(node.node_id, ECHO), 0.9) for node in (doubted, fine)]
    ranked = a.core.route(hits, world.now, capability_name="echo", top_k=10)
    assert [(c.node_id, c.suspect) for c in ranked] == [
        (fine.node_id, False),
        (doubted.node_id, True),
    ]
    alone = a.core.route(hits[:1], world.now, capability_name="echo", top_k=10)
    assert [c.node_id for c in alone] == [doubted.node_id]
    suspicion = membership.suspicion(doubted.node_id)
    assert suspicion is not None
    now = world.now
    while now <= suspicion.deadline + 1.0 and (
        membership.member(doubted.node_id).state is MemberState.SUSPECT
    ):
        now = max(now + 0.01, min(membership.next_deadline(), suspicion.deadline + 0.01))
        membership.tick(now)
    assert membership.member(doubted.node_id).state is MemberState.DEAD
    later = a.core.route(hits, now, capability_name="echo", top_k=10)
    assert doubted.node_id not in [c.node_id for c in later]


def test_a_request_held_up_while_connecting_is_sent_only_if_still_due() -> None:
    """Opening a channel takes time: a request to P that the delegation gave up on
    meanwhile (it moved on to Q) is stale and must not reach P; the request to Q, and a
    provider's answers, are due."""
    world, a, (p, q) = _world(lambda x: x, lambda x: x)
    world.dropped.add(p.node_id)
    task_id = _delegate(world, a, [p, q], deadline_s=30)
    to_p = next(e for e in a.effects if isinstance(e, SendTask) and e.node == p.node_id)
    assert a.core.send_still_due(to_p)
    a.core.send_failed(p.node_id, task_id, "unreachable", world.now)
    effects = a.core.take_effects()
    to_q = next(e for e in effects if isinstance(e, SendTask) and e.node == q.node_id)
    assert not a.core.send_still_due(to_p)
    assert a.core.send_still_due(to_q)
    world.dropped.clear()
    world._carry_out(a, effects)
    world.settle()
    answers = [e for e in q.effects if isinstance(e, SendTask)]
    assert answers and all(a.core.send_still_due(e) for e in answers)
