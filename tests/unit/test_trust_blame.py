"""Trust blames the right party: what each outcome of a delegation does to the provider's
circuit breaker, to the requester's opinion of it, and whether the next candidate is tried;
and how routing breaks ties (trust, then membership age, then a keyed hash, never the id).

The tables run through the real cores: :class:`NodeCore` pairs on the in-memory harness
(real signatures, a virtual clock) for handlers' outcomes, :class:`RequesterCore` for
refusal codes a provider core here does not emit (another part of the node decides
``forbidden`` and quotas; the requester must treat any refusal but ``invalid_input`` as
"try the next one")."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from crdt import INITIAL_TRUST, elo_update
from meshnode import InvalidInput
from meshnode.core.breaker import TaskVerdict
from meshnode.core.delegation import attempt_consequence
from meshnode.core.effects import AttemptOutcome, Done, Failed
from meshnode.core.evaluator import Expectation
from meshnode.core.member import Member, MemberState
from meshnode.core.requester import RequesterCore, false_input_claim
from meshnode.core.router import RoutingWeights, rank, tie_key
from meshnode.core.trust import MemberAges
from protocol import (
    Alive,
    Capability,
    Identity,
    Manifest,
    TaskResponse,
    TaskResult,
    TaskStatus,
    signing_bytes,
    verify,
)
from tests.unit.nodecore_harness import SILENT, World, identity

STRICT = Capability(
    name="strict",
    description="needs a positive x",
    input_schema={"type": "object", "required": ["x"]},
    avg_latency_ms=10,
)
OWNED = Capability(
    name="owned",
    description="declares its own output",
    output_schema={"type": "object", "required": ["n"]},
    avg_latency_ms=10,
)
PLAIN = Capability(name="plain", description="declares nothing", avg_latency_ms=10)
OBJECT = {"type": "object", "required": ["n"]}

DOWN = elo_update(INITIAL_TRUST, 0.0)
UP = elo_update(INITIAL_TRUST, 1.0)


def refuse(payload: Any) -> Any:
    raise InvalidInput("x must be positive")


def crash(payload: Any) -> Any:
    return 1 / 0


def good(payload: Any) -> Any:
    return {"n": 1}


OUTCOMES = [
    # (case, capability, input, first provider's handler, expectation,
    #  first attempt's outcome, breaker failures, opinion (None: unchanged),
    #  second candidate tried, how the delegation ends)
    ("invalid_input (schema)", STRICT, {}, good, None,
     AttemptOutcome.INVALID_INPUT, 0, None, False, "invalid"),
    ("InvalidInput raised", PLAIN, {"x": -1}, refuse, None,
     AttemptOutcome.INVALID_INPUT, 0, None, False, "invalid"),
    ("provider contract broken", OWNED, {"x": 1}, lambda p: {"wrong": 1}, None,
     AttemptOutcome.FAILED_RESULT, 1, DOWN, True, "done"),
    ("requester schema failed", PLAIN, {"x": 1}, lambda p: 42, Expectation(OBJECT),
     AttemptOutcome.FAILED_RESULT, 1, DOWN, True, "done"),
    ("requester evaluator scores 0", PLAIN, {"x": 1}, good,
     Expectation(evaluator=lambda i, o: 0.0),
     AttemptOutcome.DELIVERED, 1, DOWN, False, "done"),
    ("scored by the requester", PLAIN, {"x": 1}, good, Expectation(OBJECT),
     AttemptOutcome.DELIVERED, 0, UP, False, "done"),
    ("unscored: its own schema passed", OWNED, {"x": 1}, good, None,
     AttemptOutcome.DELIVERED, 0, None, False, "done"),
    ("unscored: no schema, fabricated", PLAIN, {"x": 1}, lambda p: {"n": 12345}, None,
     AttemptOutcome.DELIVERED, 0, None, False, "done"),
    ("handler bug", PLAIN, {"x": 1}, crash, None,
     AttemptOutcome.FAILED_RESULT, 1, DOWN, True, "done"),
    ("deadline missed", PLAIN, {"x": 1}, lambda p: SILENT, None,
     AttemptOutcome.EXECUTION_TIMEOUT, 1, DOWN, True, "done"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("capability", "task_input", "handler", "expectation", "outcome", "failures", "opinion",
     "next_tried", "ends"),
    [c[1:] for c in OUTCOMES],
    ids=[c[0] for c in OUTCOMES],
)  # fmt: skip
def test_outcome_table(
    capability: Capability,
    task_input: Any,
    handler: Any,
    expectation: Expectation | None,
    outcome: AttemptOutcome,
    failures: int,
    opinion: float | None,
    next_tried: bool,
    ends: str,
) -> None:
    """Two providers of the capability; the first behaves as the case says, the second is
    honest. The first one's attempt outcome, its breaker's failure count, our opinion of it,
    and whether the second was asked."""
    world = World()
    requester = world.add(0)
    first = world.add(1, (STRICT, OWNED, PLAIN))
    second = world.add(2, (STRICT, OWNED, PLAIN))
    for name in ("strict", "owned", "plain"):
        first.handlers[name] = handler
        second.handlers[name] = good
    task_id = requester.core.start_delegation(
        capability.name,
        task_input,
        [first.node_id, second.node_id],
        world.now,
        deadline_s=3,
        expectation=expectation,
    )
    world.drain(requester)
    world.settle()
    finished = requester.finished[task_id].outcome
    attempts = finished.attempts
    assert attempts[0].node == first.node_id
    assert attempts[0].outcome is outcome
    held = requester.core.breakers.snapshot(world.now).get(first.node_id)
    assert (0 if held is None else held.consecutive_failures) == failures
    if opinion is None:
        assert requester.core.opinion(first.node_id) == (INITIAL_TRUST, 0)
    else:
        assert requester.core.opinion(first.node_id) == (pytest.approx(opinion), 1)
    assert any(a.node == second.node_id for a in attempts) is next_tried
    if ends == "invalid":
        assert isinstance(finished, Failed) and finished.invalid_input
        assert finished.reason.startswith("invalid input: ")
        assert requester.core.opinion(second.node_id) == (INITIAL_TRUST, 0)
    else:
        assert isinstance(finished, Done)


def test_five_calls_with_bad_input_change_nothing() -> None:
    """Five delegations whose input lacks a required field, and five whose handler raises
    InvalidInput: the provider's breaker stays closed with no failure, our opinion of it
    stays at the prior with no outcome, and no second provider is ever asked.

    On the unfixed code (the handler's exception an ordinary one there): the schema
    refusals already left breaker and opinion alone but asked the second provider too
    (10 requests for 5 delegations); the handler's refusals were failed results at both
    providers: the first one's breaker opened (5 consecutive failures) and our opinion of
    it fell from 0.5 to 0.295, and the second one's the same."""
    world = World()
    requester = world.add(0)
    first = world.add(1, (STRICT, PLAIN))
    second = world.add(2, (STRICT, PLAIN))
    first.handlers["plain"] = refuse
    second.handlers["plain"] = refuse
    for name, task_input in (("strict", {"y": 1}), ("plain", {"x": -1})):
        for _ in range(5):
            task_id = requester.core.start_delegation(
                name, task_input, [first.node_id, second.node_id], world.now, deadline_s=3
            )
            world.drain(requester)
            world.settle()
            finished = requester.finished[task_id].outcome
            assert isinstance(finished, Failed) and finished.invalid_input
            assert [a.node for a in finished.attempts] == [first.node_id]
    assert requester.core.breakers.snapshot(world.now).get(first.node_id) is None or (
        requester.core.breakers.snapshot(world.now)[first.node_id].consecutive_failures == 0
    )
    assert requester.core.opinion(first.node_id) == (INITIAL_TRUST, 0)
    assert second.core.provider.counts["accepted"] == 0
    assert second.core.provider.counts["rejected"] == 0
    assert first.core.provider.counts["completed_invalid_input"] == 5


# ============================================================================ refusal codes

ME = Identity.from_seed(b"\x50" * 32)
P1 = Identity.from_seed(b"\x51" * 32)
P2 = Identity.from_seed(b"\x52" * 32)
TASK = "task-blame"


def _requester(**kwargs: Any) -> RequesterCore:
    return RequesterCore(
        ME.node_id,
        "plain",
        {"x": 1},
        [P1.node_id, P2.node_id],
        task_id=TASK,
        verifier=verify,
        **kwargs,
    )


def _signed_failure(error: str) -> TaskResult:
    unsigned = TaskResult(TASK, ME.node_id, P1.node_id, False, None, error, 1.0, b"\0" * 64)
    return dataclasses.replace(unsigned, signature=P1.sign(signing_bytes(unsigned)))


REFUSALS = [
    # (case, reason, outcome, verdict, next tried)
    ("invalid_input", "invalid_input: $: missing required property 'x'",
     AttemptOutcome.INVALID_INPUT, TaskVerdict.ABANDONED, False),
    ("forbidden", "forbidden: not authorized for plain",
     AttemptOutcome.REJECTED, TaskVerdict.ABANDONED, True),
    ("quota", "quota_exceeded: 10 per minute", AttemptOutcome.REJECTED,
     TaskVerdict.ABANDONED, True),
    ("busy", "busy: full", AttemptOutcome.REJECTED, TaskVerdict.ABANDONED, True),
    ("no code", "go away", AttemptOutcome.REJECTED, TaskVerdict.ABANDONED, True),
]  # fmt: skip


@pytest.mark.parametrize(
    ("reason", "outcome", "verdict", "next_tried"),
    [c[1:] for c in REFUSALS],
    ids=[c[0] for c in REFUSALS],
)
def test_refusals(
    reason: str, outcome: AttemptOutcome, verdict: TaskVerdict, next_tried: bool
) -> None:
    """A refusal is never the provider's failure (no breaker failure, no opinion); only
    ``invalid_input`` stops the delegation, with the provider's reason in the error."""
    core = _requester()
    core.start(100.0)
    effects = core.on_response(
        P1.node_id, TaskResponse(TASK, TaskStatus.REJECTED, reason, None, None), 100.1
    )
    attempt = core.attempts[0]
    assert (attempt.outcome, attempt.verdict) == (outcome, verdict)
    consequence = attempt_consequence(attempt)
    assert consequence.quality is None and consequence.verdict is not TaskVerdict.FAILURE
    assert (core.current_node == P2.node_id) is next_tried
    if not next_tried:
        (failed,) = [e for e in effects if isinstance(e, Failed)]
        assert failed.invalid_input and "missing required property" in failed.reason


@pytest.mark.parametrize("retry", [True, False])
def test_a_result_marked_invalid_input_stops_whatever_the_retry_setting(retry: bool) -> None:
    core = _requester(retry_failed_results=retry)
    core.start(100.0)
    core.on_response(P1.node_id, TaskResponse(TASK, TaskStatus.ACCEPTED, "", 1.0, None), 100.1)
    effects = core.on_result(P1.node_id, _signed_failure("invalid_input: x must be > 0"), 100.2)
    (failed,) = [e for e in effects if isinstance(e, Failed)]
    assert failed.invalid_input and failed.reason == "invalid input: x must be > 0"
    assert failed.last_result is not None
    assert [a.outcome for a in core.attempts] == [AttemptOutcome.INVALID_INPUT]
    assert attempt_consequence(core.attempts[0]).quality is None


def test_invalid_input_reason_is_bounded() -> None:
    core = _requester()
    core.start(100.0)
    long = "invalid_input: " + "é" * 5000
    effects = core.on_response(
        P1.node_id, TaskResponse(TASK, TaskStatus.REJECTED, long, None, None), 100.1
    )
    (failed,) = [e for e in effects if isinstance(e, Failed)]
    assert len(failed.reason.encode()) <= 512


# ============================================================================ tie-breaks


@dataclasses.dataclass(frozen=True)
class _Entry:
    node_id: str
    capability: Capability
    node_name: str = "n"
    endpoint: str = "127.0.0.1:1"
    node_tags: tuple[str, ...] = ()


IDS = [identity(i).node_id for i in range(20, 40)]
SECRET_A = b"a" * 64
SECRET_B = b"b" * 64


def _ranked(ids: list[str], **kwargs: Any) -> list[str]:
    hits = [(_Entry(node, PLAIN), 0.9) for node in ids]
    kwargs.setdefault("trust", {})
    kwargs.setdefault("load", {})
    return [c.node_id for c in rank(hits, capability_name="plain", top_k=20, **kwargs)]


def test_tie_breaks_follow_the_evidence_in_order() -> None:
    """Equal factors: the longer member first, whatever the ids; then the keyed hash,
    which does not follow the id and differs from one requester's secret to another's."""
    young, old = sorted(IDS[:2])
    assert _ranked([young, old], member_since={young: 200.0, old: 100.0}) == [old, young]
    # A member we have no age for counts as the newest.
    assert _ranked([young, old], member_since={old: 100.0}) == [old, young]
    order_a = _ranked(IDS, tie_secret=SECRET_A)
    order_b = _ranked(IDS, tie_secret=SECRET_B)
    assert order_a == sorted(IDS, key=lambda n: tie_key(SECRET_A, n))
    assert order_a != sorted(IDS) and order_a != order_b


def test_trust_breaks_a_tie_of_totals() -> None:
    """Two totals equal to the last bit, one made of more trust and less availability: the
    more trusted one first, even though the other is the older member."""
    a, b = sorted(IDS[:2])
    weights = RoutingWeights(semantic=0.25, trust=0.25, availability=0.25, cost=0.25)
    candidates = rank(
        [(_Entry(a, PLAIN), 0.9), (_Entry(b, PLAIN), 0.9)],
        trust={a: 0.5, b: 1.0},
        load={a: (0, 2), b: (1, 2)},  # a idle (1.0), b half busy (0.5)
        weights=weights,
        member_since={a: 1.0, b: 2.0},
        capability_name="plain",
    )
    assert candidates[0].total == candidates[1].total
    assert [c.node_id for c in candidates] == [b, a]


def test_a_ground_id_gains_nothing() -> None:
    """An id ground to sort first (the smallest hash under the secret it guessed, and the
    smallest id) still loses a tie to an older member, and under the requester's real
    secret it sorts where that secret puts it, not first."""
    guessed = b"guess" * 8
    ground = min(IDS, key=lambda n: (tie_key(guessed, n), n))
    others = [n for n in IDS if n != ground]
    honest = others[0]
    since = {honest: 10.0, ground: 20.0}
    assert _ranked([ground, honest], member_since=since, tie_secret=guessed) == [honest, ground]
    real = _ranked(IDS, tie_secret=SECRET_A)
    assert real.index(ground) == sorted(IDS, key=lambda n: tie_key(SECRET_A, n)).index(ground)
    assert real[0] != ground


def test_member_ages_keep_the_first_sighting() -> None:
    ages = MemberAges()
    ages.observe("n", MemberState.ALIVE, 10.0)
    ages.observe("n", MemberState.SUSPECT, 20.0)
    ages.observe("n", MemberState.DEAD, 30.0)  # an accusation: the age stays
    ages.observe("n", MemberState.ALIVE, 40.0)
    assert ages.since("n") == 10.0
    ages.observe("n", None, 50.0)  # forgotten: a return starts afresh
    assert ages.since("n") is None
    assert ages.seen_alive("n", 60.0) == 60.0 and ages.seen_alive("n", 70.0) == 60.0
    ages.observe("m", MemberState.DEAD, 1.0)  # first heard of as dead: no age
    assert ages.since("m") is None and len(ages) == 1


def test_route_prefers_the_member_seen_first() -> None:
    """Through NodeCore.route: two equal providers; the one this node saw alive first wins,
    although the other one's id and keyed hash both sort first (which is what decides when
    both were first seen at the same instant)."""
    worlds = [World(), World()]
    hosts = [w.add(0) for w in worlds]
    tie = hosts[0].core.tie_secret
    assert hosts[1].core.tie_secret == tie  # same key: the secret is a function of the key
    pair = next(
        (x, y)
        for x in (identity(i).node_id for i in range(1, 40))
        for y in (identity(j).node_id for j in range(1, 40))
        if x < y and tie_key(tie, x) < tie_key(tie, y)
    )
    young, old = pair
    hits = [(_Entry(node, PLAIN), 0.9) for node in (young, old)]
    for world, host in zip(worlds, hosts, strict=True):
        members = {}
        for node in (young, old):
            alive = Alive(node, 0, "127.0.0.1", 7100, b"\0" * 64)
            members[node] = Member(node, "127.0.0.1", 7100, 0, MemberState.ALIVE, 0.0, alive, alive)
        host.core.mesh.membership.adopt_converged(members, world.now)
    hosts[0].core.member_ages.observe(old, MemberState.ALIVE, worlds[0].now - 60.0)
    first = hosts[0].core.route(hits, worlds[0].now, capability_name="plain", top_k=5)
    assert [c.node_id for c in first] == [old, young]
    same_age = hosts[1].core.route(hits, worlds[1].now, capability_name="plain", top_k=5)
    assert [c.node_id for c in same_age] == [young, old]
    assert hosts[1].core.member_ages.since(young) == worlds[1].now


# ============================================================================ per capability

TRANSLATE = Capability(name="translate", description="translate text", avg_latency_ms=10)
SQL = Capability(name="sql", description="write sql", avg_latency_ms=10)


def test_trust_is_per_capability_on_the_requester_side() -> None:
    """A provider that served ``translate`` well three times and ``sql`` badly twice: its
    per-peer view (the one number the ledger gossips) stays above an unrated stranger's
    prior, but routing blends our experience *for each capability*: for ``translate`` it
    ranks first with more trust than its per-peer view, for ``sql`` below the stranger.
    Trust earned on one capability is not spent on another.

    On the unfixed code (one number per provider): it ranked first for both, at 0.580."""
    world = World()
    a = world.add(0)
    mixed = world.add(1, (TRANSLATE, SQL))
    stranger = world.add(2, (TRANSLATE, SQL))
    for host in (mixed, stranger):
        host.handlers["translate"] = lambda p: {"text": "hola"}
        host.handlers["sql"] = lambda p: {"sql": "DROP TABLE"}
    a.core.evaluator.expect("translate", schema={"required": ["text"]})
    a.core.evaluator.expect("sql", evaluator=lambda i, o: 0.0)
    for name, times in (("translate", 3), ("sql", 2)):
        for _ in range(times):
            a.core.start_delegation(name, {}, [mixed.node_id], world.now, deadline_s=3)
            world.drain(a)
            world.settle()
    assert a.core.trust.capability_opinion(mixed.node_id, "translate") == (
        pytest.approx(0.6355),
        3,
    )
    assert a.core.trust.capability_opinion(mixed.node_id, "sql") == (pytest.approx(0.405), 2)
    per_peer = a.core.trust_view(world.now)[mixed.node_id]
    assert per_peer > 0.5  # one number per provider would rank it first for both
    members = {}
    for node in (mixed.node_id, stranger.node_id):
        alive = Alive(node, 0, "127.0.0.1", 7100, b"\0" * 64)
        members[node] = Member(node, "127.0.0.1", 7100, 0, MemberState.ALIVE, 0.0, alive, alive)
    a.core.mesh.membership.adopt_converged(members, world.now)

    def ranked(cap: Capability) -> list[tuple[str, float]]:
        hits = [(_Entry(n, cap), 0.9) for n in (mixed.node_id, stranger.node_id)]
        out = a.core.route(hits, world.now, capability_name=cap.name, top_k=5)
        return [(c.node_id, c.trust) for c in out]

    (first, first_trust), second = ranked(TRANSLATE)
    assert first == mixed.node_id and first_trust > per_peer
    assert second == (stranger.node_id, 0.5)
    (first, _), (last, last_trust) = ranked(SQL)
    assert first == stranger.node_id
    assert last == mixed.node_id and last_trust < 0.5 < per_peer


def test_capability_opinions_are_bounded() -> None:
    """The per-capability opinions stay within MAX_CAPABILITY_OPINIONS, the least
    recently updated forgotten first."""
    import meshnode.core.trust as trust_module

    world = World()
    a = world.add(0)
    policy = a.core.trust
    limit = 4
    original = trust_module.MAX_CAPABILITY_OPINIONS
    trust_module.MAX_CAPABILITY_OPINIONS = limit
    try:
        for i in range(6):
            policy.record_capability_outcome(f"peer{i}", f"cap{i % 2}", 1.0)
        policy.record_capability_outcome("peer2", "cap0", 1.0)  # refreshed: kept
        policy.record_capability_outcome("peer6", "cap1", 1.0)
    finally:
        trust_module.MAX_CAPABILITY_OPINIONS = original
    kept = {
        (p, c)
        for p in (f"peer{i}" for i in range(7))
        for c in ("cap0", "cap1")
        if policy.capability_opinion(p, c) is not None
    }
    assert kept == {("peer2", "cap0"), ("peer4", "cap0"), ("peer5", "cap1"), ("peer6", "cap1")}
    policy.record_capability_outcome(a.node_id, "cap0", 1.0)  # never about ourselves
    assert policy.capability_opinion(a.node_id, "cap0") is None


# ============================================================================ false refusals

NEEDS_Y = dataclasses.replace(STRICT, input_schema={"type": "object", "required": ["y"]})


@pytest.mark.parametrize(
    ("capability", "task_input", "false"),
    [
        (None, {"x": 1}, False),  # no manifest held: nothing to check, the claim stands
        (STRICT, {}, False),  # the input fails the declared schema: a true claim
        (STRICT, {"x": 1}, True),  # it matches: a false claim
        (PLAIN, {"anything": [1, 2]}, True),  # no schema declared: nothing can fail it
    ],
)
def test_false_input_claim_table(
    capability: Capability | None, task_input: Any, false: bool
) -> None:
    reason = false_input_claim(capability, task_input)
    assert (reason is not None) is false
    if false:
        assert reason == "the input matches the input schema of its signed manifest"


def test_a_refusal_of_input_its_manifest_accepts_is_blamed_and_the_next_one_asked() -> None:
    """A provider whose signed manifest declares ``strict`` with ``x`` required, but whose
    core refuses anything without ``y``: it refuses ``{"x": 1}`` as ``invalid_input``.
    The requester holds that manifest, checks the claim, finds it false: the attempt is a
    PROTOCOL_ERROR (breaker failure, opinion 0) and the honest second provider serves.
    On the code before the check: INVALID_INPUT, no blame, the delegation failed at once
    (a liar ranked first could fail every delegation without losing trust)."""
    world = World()
    requester = world.add(0)
    liar = world.add(1, (NEEDS_Y,))
    honest = world.add(2, (STRICT,))
    liar.handlers["strict"] = good
    honest.handlers["strict"] = good
    promise = Manifest.create(
        identity(1), name="n1", endpoint="127.0.0.1:7001", capabilities=[STRICT], version=2
    )
    requester.core.manifests.apply(promise, world.now)
    assert requester.core.provider_capability(liar.node_id, "strict") == STRICT
    task_id = requester.core.start_delegation(
        "strict", {"x": 1}, [liar.node_id, honest.node_id], world.now, deadline_s=3
    )
    world.drain(requester)
    world.settle()
    finished = requester.finished[task_id].outcome
    first, second = finished.attempts
    assert (first.node, first.outcome) == (liar.node_id, AttemptOutcome.PROTOCOL_ERROR)
    assert "false invalid_input refusal" in first.detail
    assert (second.node, second.outcome) == (honest.node_id, AttemptOutcome.DELIVERED)
    assert isinstance(finished, Done)
    held = requester.core.breakers.snapshot(world.now)[liar.node_id]
    assert held.consecutive_failures == 1
    assert requester.core.opinion(liar.node_id) == (pytest.approx(DOWN), 1)


def test_a_true_refusal_through_the_core_still_stops_without_blame() -> None:
    """The same pair with the manifest the liar really publishes (``y`` required): its
    refusal of ``{"x": 1}`` is true, so the delegation ends as invalid input, no blame."""
    world = World()
    requester = world.add(0)
    strict_y = world.add(1, (NEEDS_Y,))
    honest = world.add(2, (NEEDS_Y,))
    task_id = requester.core.start_delegation(
        "strict", {"x": 1}, [strict_y.node_id, honest.node_id], world.now, deadline_s=3
    )
    world.drain(requester)
    world.settle()
    finished = requester.finished[task_id].outcome
    assert isinstance(finished, Failed) and finished.invalid_input
    assert [a.outcome for a in finished.attempts] == [AttemptOutcome.INVALID_INPUT]
    assert requester.core.opinion(strict_y.node_id) == (INITIAL_TRUST, 0)
