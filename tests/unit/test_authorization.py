"""Capability authorization and per-requester quotas, decided by the provider core.

Tables: every :class:`Allow` combination against every kind of requester (member,
stranger, role holder, member without the role, listed node id, low and high trust, no
mesh authority); quotas (concurrency and rate, per requester and per capability); the
order of the checks; and, through :class:`NodeCore`, that ``forbidden`` and ``quota`` are
honest refusals: the delegation moves on, the breaker never opens, no opinion is formed.
"""

from __future__ import annotations

from typing import Any

import pytest

from meshnode import Allow, CapabilityPolicy, Quota
from meshnode.capability import capability, collect_capabilities, make_policy
from meshnode.core.authorization import DEFAULT_POLICY
from meshnode.core.breaker import BreakerState
from meshnode.core.effects import AttemptOutcome, Done
from meshnode.core.evaluator import Expectation
from meshnode.core.member import Member, MemberState
from meshnode.core.provider import ProviderCore
from meshnode.core.router import DEFAULT_TRUST
from meshnode.core.task_wire import RejectCode, reject_code
from protocol import Alive, Capability, Identity, TaskRequest, TaskStatus
from tests.unit.nodecore_harness import PUBLIC, Host, World
from tests.unit.requester_facts import Facts

PROVIDER = Identity.from_seed(b"\x31" * 32)


def _id(seed: int) -> str:
    return Identity.from_seed(bytes([seed]) * 32).node_id


MEMBER = _id(0x41)  # a member, no roles, nobody rated it
STRANGER = _id(0x42)  # never joined
ANALYST = _id(0x43)  # a member certified "analyst"
LISTED = _id(0x44)  # a member named in the allow list
LOW = _id(0x45)  # a member we trust little
HIGH = _id(0x46)  # a member we trust a lot
LISTED_STRANGER = _id(0x47)  # named in the allow list, never joined

ROLES = {MEMBER: (), ANALYST: ("analyst",), LISTED: (), LOW: (), HIGH: ("analyst",)}
TRUST = {LOW: 0.1, HIGH: 0.9, ANALYST: 0.7}
WITH_AUTHORITY = Facts.of(members=ROLES, roles=ROLES, trust=TRUST)
NO_AUTHORITY = Facts.of(members=ROLES, roles=None, trust=TRUST)

ECHO = Capability(name="echo", description="Echo", avg_latency_ms=100)
OTHER = Capability(name="other", description="Another", avg_latency_ms=100)


def provider(
    allow: Allow | None = None,
    quota: Quota | None = None,
    facts: Facts = WITH_AUTHORITY,
    max_tasks: int = 10,
    **kwargs: Any,
) -> ProviderCore:
    policy = make_policy(allow, quota)
    return ProviderCore(
        PROVIDER,
        {"echo": ECHO, "other": OTHER},
        max_tasks,
        policies={"echo": policy, "other": policy},
        facts=facts,
        **kwargs,
    )


def request(task_id: str = "t1", capability: str = "echo", **kw: Any) -> TaskRequest:
    fields: dict[str, Any] = {
        "task_id": task_id,
        "capability": capability,
        "input": {"text": "hi"},
        "deadline_ms": 5_000,
        "budget_usd": None,
        "trace_id": "trace",
    }
    fields.update(kw)
    return TaskRequest(**fields)


def outcome(core: ProviderCore, requester: str, task_id: str = "t1", **kw: Any) -> str:
    """``accepted``, or the rejection code's value."""
    response = core.on_request(requester, request(task_id, **kw), 1_000.0).response
    if response.status == TaskStatus.ACCEPTED:
        return "accepted"
    assert response.status == TaskStatus.REJECTED, response
    code = reject_code(response.reason)
    assert code is not None, response.reason
    return code.value


# --------------------------------------------------------------------------- who may call

A, F = "accepted", "forbidden"
REQUESTERS = (MEMBER, STRANGER, ANALYST, LISTED, LOW, HIGH, LISTED_STRANGER)
ALLOWS: list[tuple[str, Allow, Facts, tuple[str, ...]]] = [
    # name, rule, facts, outcome for MEMBER, STRANGER, ANALYST, LISTED, LOW, HIGH, L_STRANGER
    ("default: members", Allow(), WITH_AUTHORITY, (A, F, A, A, A, A, F)),
    ("anyone", Allow.anyone(), WITH_AUTHORITY, (A, A, A, A, A, A, A)),
    ("one node id", Allow.only(LISTED), WITH_AUTHORITY, (F, F, F, A, F, F, F)),
    (
        "node ids, members or not",
        Allow(nodes=frozenset({LISTED, LISTED_STRANGER}), members=False),
        WITH_AUTHORITY,
        (F, F, F, A, F, F, A),
    ),
    ("role", Allow(roles=frozenset({"analyst"})), WITH_AUTHORITY, (F, F, A, F, F, A, F)),
    ("role, no authority", Allow(roles=frozenset({"analyst"})), NO_AUTHORITY, (F,) * 7),
    (
        "role or node id",
        Allow(roles=frozenset({"analyst"}), nodes=frozenset({LISTED})),
        WITH_AUTHORITY,
        (F, F, A, A, F, A, F),
    ),
    (
        "role or node id, no authority",
        Allow(roles=frozenset({"analyst"}), nodes=frozenset({LISTED})),
        NO_AUTHORITY,
        (F, F, F, A, F, F, F),
    ),
    (
        "role, members or not",
        Allow(roles=frozenset({"analyst"}), members=False),
        WITH_AUTHORITY,
        (F, F, A, F, F, A, F),
    ),
    ("min trust 0.6", Allow(min_trust=0.6), WITH_AUTHORITY, (F, F, A, F, F, A, F)),
    (
        "min trust at the default",
        Allow(min_trust=DEFAULT_TRUST),
        WITH_AUTHORITY,
        (A, F, A, A, F, A, F),
    ),
    (
        "role and min trust 0.8",
        Allow(roles=frozenset({"analyst"}), min_trust=0.8),
        WITH_AUTHORITY,
        (F, F, F, F, F, A, F),
    ),
    (
        "node id and min trust",
        Allow(nodes=frozenset({LISTED, LOW}), min_trust=0.3),
        WITH_AUTHORITY,
        (F, F, F, A, F, F, F),
    ),
]


@pytest.mark.parametrize(("name", "allow", "facts", "expected"), ALLOWS, ids=[a[0] for a in ALLOWS])
def test_allow_table(name: str, allow: Allow, facts: Facts, expected: tuple[str, ...]) -> None:
    core = provider(allow, facts=facts)
    got = tuple(outcome(core, who, f"t{i}") for i, who in enumerate(REQUESTERS))
    assert got == expected, name
    assert core.counts["forbidden"] == expected.count(F)


@pytest.mark.parametrize(
    ("requester", "allow", "facts", "words"),
    [
        (STRANGER, Allow(), WITH_AUTHORITY, "not a current member"),
        (MEMBER, Allow.only(LISTED), WITH_AUTHORITY, "not among the nodes allowed"),
        (MEMBER, Allow(roles=frozenset({"analyst"})), WITH_AUTHORITY, "none of the roles"),
        (ANALYST, Allow(roles=frozenset({"analyst"})), NO_AUTHORITY, "roles unknown"),
        (LOW, Allow(min_trust=0.6), WITH_AUTHORITY, "trust 0.100 below the 0.6"),
    ],
)
def test_a_refusal_says_which_rule_failed_and_never_lists_who_is_allowed(
    requester: str, allow: Allow, facts: Facts, words: str
) -> None:
    response = provider(allow, facts=facts).on_request(requester, request(), 1_000.0).response
    assert response.reason.startswith("forbidden: 'echo': ")
    assert words in response.reason
    assert LISTED not in response.reason and "analyst" not in response.reason


def test_without_facts_every_requester_is_a_stranger() -> None:
    """A provider core given no facts fails closed: members-only capabilities serve
    nobody; only a deliberately public one serves."""
    closed = ProviderCore(PROVIDER, {"echo": ECHO}, 2)
    assert outcome(closed, MEMBER) == F
    public = ProviderCore(
        PROVIDER, {"echo": ECHO}, 2, policies={"echo": CapabilityPolicy(Allow.anyone())}
    )
    assert outcome(public, STRANGER) == A


# --------------------------------------------------------------------------- order of checks


@pytest.mark.parametrize(
    ("case", "requester", "kw", "expected"),
    [
        (
            "unknown capability before forbidden",
            STRANGER,
            {"capability": "nope"},
            "unknown_capability",
        ),
        ("forbidden before over budget", STRANGER, {"budget_usd": -1.0}, F),
        ("forbidden before deadline too short", STRANGER, {"deadline_ms": 1}, F),
        ("allowed: over budget still applies", MEMBER, {"budget_usd": -1.0}, "over_budget"),
    ],
)
def test_order_of_checks(case: str, requester: str, kw: dict[str, Any], expected: str) -> None:
    costly = Capability(name="echo", description="Echo", avg_latency_ms=100, cost_per_call_usd=0.5)
    core = ProviderCore(PROVIDER, {"echo": costly}, 2, facts=WITH_AUTHORITY)
    assert outcome(core, requester, **kw) == expected, case


def test_trust_is_looked_up_only_when_every_cheaper_rule_passed() -> None:
    facts = Facts.of(members=ROLES, roles=ROLES, trust=TRUST)
    core = provider(Allow(roles=frozenset({"analyst"}), min_trust=0.5), facts=facts)
    for i, who in enumerate((STRANGER, MEMBER, LISTED, LOW)):
        outcome(core, who, f"t{i}")
    assert facts.trust_asked == 0
    assert outcome(core, HIGH, "t9") == A
    assert facts.trust_asked == 1


def test_a_forbidden_request_leaves_no_trace() -> None:
    """A stranger's refused requests are not remembered (they cannot push members'
    results out of the byte budget) and do not make it a competitor for the fair share:
    a member alone still gets every slot."""
    core = provider(max_tasks=3)
    for i in range(500):
        assert outcome(core, STRANGER, f"s{i}") == F
    assert core.remembered == 0 and core.remembered_bytes == 0
    assert core.fair_share(MEMBER, 1_000.0) == 3
    assert [outcome(core, MEMBER, f"m{i}") for i in range(3)] == [A, A, A]


def test_a_retransmitted_forbidden_request_is_decided_again() -> None:
    """Not remembered, so once the requester joins, the same task id is served."""
    facts = Facts.of(members=[MEMBER])
    core = provider(facts=facts)
    assert outcome(core, STRANGER) == F
    assert facts.members is not None
    facts.members.add(STRANGER)
    assert outcome(core, STRANGER) == A


def test_policies_can_be_replaced_live() -> None:
    core = provider(Allow.only(LISTED))
    assert outcome(core, MEMBER, "t1") == F
    core.set_policies({"echo": DEFAULT_POLICY})
    assert outcome(core, MEMBER, "t2") == A
    assert core.policy("other") is DEFAULT_POLICY


# --------------------------------------------------------------------------- quotas


def test_concurrency_quota_per_requester_and_capability() -> None:
    core = provider(quota=Quota(max_concurrent=2))
    assert [outcome(core, MEMBER, f"m{i}") for i in range(3)] == [A, A, "quota"]
    # another requester and another capability have their own count
    assert outcome(core, LISTED, "l1") == A
    assert outcome(core, MEMBER, "o1", capability="other") == A
    assert core.held_of(MEMBER, "echo") == 2
    # a task ending frees the quota
    assert core.complete("m0", True, {"ok": 1}, "", 1_001.0) is not None
    assert core.held_of(MEMBER, "echo") == 1
    assert outcome(core, MEMBER, "m9") == A
    assert core.counts["quota"] == 1


def test_concurrency_quota_counts_reservations() -> None:
    """A countered (reserved) task holds quota like a running one."""
    core = provider(quota=Quota(max_concurrent=2), max_tasks=1)
    assert outcome(core, MEMBER, "m0") == A
    response = core.on_request(MEMBER, request("m1"), 1_000.0).response
    assert response.status == TaskStatus.COUNTERED
    assert outcome(core, MEMBER, "m2") == "quota"


@pytest.mark.parametrize(
    ("per_minute", "times", "expected"),
    [
        (2, [0, 0, 0], [A, A, "quota"]),
        (2, [0, 0, 30], [A, A, A]),  # 30 s refill one token at 2 a minute
        (2, [0, 0, 29], [A, A, "quota"]),
        (60, [0] * 61, [A] * 60 + ["quota"]),
        (1, [0, 59, 60], [A, "quota", A]),
    ],
)
def test_rate_quota_table(per_minute: int, times: list[float], expected: list[str]) -> None:
    core = provider(quota=Quota(per_minute=per_minute), max_tasks=100)
    got = []
    for i, at in enumerate(times):
        response = core.on_request(MEMBER, request(f"t{i}"), 1_000.0 + at).response
        code = reject_code(response.reason)
        got.append(A if response.status == TaskStatus.ACCEPTED else code.value if code else "?")
    assert got == expected


def test_rate_quota_is_per_requester_and_capability() -> None:
    core = provider(quota=Quota(per_minute=1), max_tasks=100)
    assert outcome(core, MEMBER, "a1") == A
    assert outcome(core, MEMBER, "a2") == "quota"
    assert outcome(core, LISTED, "b1") == A
    assert outcome(core, MEMBER, "c1", capability="other") == A


def test_a_concurrency_refusal_takes_no_rate_token() -> None:
    core = provider(quota=Quota(max_concurrent=1, per_minute=2), max_tasks=100)
    assert outcome(core, MEMBER, "t0") == A
    assert [outcome(core, MEMBER, f"x{i}") for i in range(5)] == ["quota"] * 5
    core.complete("t0", True, None, "", 1_000.0)
    assert outcome(core, MEMBER, "t1") == A  # the second token is still there


def test_a_quota_refusal_is_remembered_like_other_rejections() -> None:
    core = provider(quota=Quota(per_minute=1))
    assert outcome(core, MEMBER, "t0") == A
    first = core.on_request(MEMBER, request("t1"), 1_000.0)
    again = core.on_request(MEMBER, request("t1"), 1_100.0)
    assert reject_code(first.response.reason) is RejectCode.QUOTA
    assert again.duplicate and again.response == first.response


def test_no_quota_leaves_the_fair_share_as_the_only_bound() -> None:
    """Default quota: a lone member may use every slot and the queue, as before."""
    core = provider(max_tasks=2)
    statuses = [
        core.on_request(MEMBER, request(f"t{i}"), 1_000.0).response.status for i in range(4)
    ]
    assert statuses == [TaskStatus.ACCEPTED] * 2 + [TaskStatus.COUNTERED] * 2


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda: Allow(members=False), ValueError),
        (lambda: Allow.only(), ValueError),
        (lambda: Allow(public=True), ValueError),
        (lambda: Allow(public=True, members=False, min_trust=0.2), ValueError),
        (lambda: Allow(min_trust=1.5), ValueError),
        (lambda: Allow(min_trust=-0.1), ValueError),
        (lambda: Allow(min_trust=float("nan")), ValueError),
        (lambda: Allow(min_trust=True), ValueError),
        (lambda: Allow(nodes="abc"), TypeError),  # type: ignore[arg-type]
        (lambda: Allow(roles=frozenset({""})), TypeError),
        (lambda: Allow(nodes=frozenset({1})), TypeError),  # type: ignore[arg-type]
        (lambda: Quota(max_concurrent=0), ValueError),
        (lambda: Quota(per_minute=True), ValueError),
        (lambda: Quota(per_minute=1.5), ValueError),  # type: ignore[arg-type]
        (lambda: CapabilityPolicy(allow="members"), TypeError),  # type: ignore[arg-type]
        (lambda: make_policy(quota=3), TypeError),  # type: ignore[arg-type]
    ],
)
def test_bad_rules_are_refused(make: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        make()


def test_sets_become_frozen() -> None:
    allow = Allow(nodes={LISTED}, roles=["analyst"])  # type: ignore[arg-type]
    assert allow.nodes == frozenset({LISTED}) and allow.roles == frozenset({"analyst"})
    assert hash(allow) == hash(Allow(nodes=frozenset({LISTED}), roles=frozenset({"analyst"})))


def test_the_decorator_carries_the_policy_and_the_manifest_does_not() -> None:
    class Node:
        @capability(allow=Allow.only(LISTED), quota=Quota(per_minute=5))
        async def secret(self, task_input: Any) -> Any:
            """Only for LISTED."""
            return task_input

        @capability()
        async def plain(self, task_input: Any) -> Any:
            """Anyone in the mesh."""
            return task_input

    specs = {s.capability.name: s for s in collect_capabilities(Node())}
    assert specs["secret"].policy == CapabilityPolicy(Allow.only(LISTED), Quota(per_minute=5))
    assert specs["plain"].policy == DEFAULT_POLICY
    assert LISTED not in repr(specs["secret"].capability)


# --------------------------------------------------------------------------- through NodeCore


def _member(host: Host) -> Member:
    alive = Alive(host.node_id, 0, "127.0.0.1", 7100, b"\0" * 64)
    return Member(host.node_id, "127.0.0.1", 7100, 0, MemberState.ALIVE, 0.0, alive, alive)


def test_node_core_facts() -> None:
    """A member alive in the provider's membership is a member; a stranger is not; roles
    are unknown (no authority yet); trust is the routing view."""
    world = World()
    a, b, p = world.add(0), world.add(1), world.add(2, (ECHO,))
    p.core.membership.adopt_converged({a.node_id: _member(a)}, world.now)
    assert p.core.is_member(a.node_id) and not p.core.is_member(b.node_id)
    assert p.core.roles_of(a.node_id) is None
    assert p.core.trust_of(a.node_id, world.now) == DEFAULT_TRUST


def test_the_default_policy_through_node_core_serves_members_only() -> None:
    world = World()
    a, stranger, p = world.add(0), world.add(1), world.add(2, (ECHO,))
    p.core.membership.adopt_converged({a.node_id: _member(a)}, world.now)
    p.handlers["echo"] = lambda x: {"ok": 1}
    p.core.set_policies({})  # what a capability declared without allow= gets
    finished = {}
    for host in (a, stranger):
        task_id = host.core.start_delegation("echo", {"x": 1}, [p.node_id], world.now)
        world.drain(host)
        world.settle(world.now + 1)
        finished[host.node_id] = host.finished[task_id].outcome
    assert isinstance(finished[a.node_id], Done)
    refused = finished[stranger.node_id]
    assert not isinstance(refused, Done)
    assert refused.attempts[0].outcome is AttemptOutcome.REJECTED
    assert refused.attempts[0].detail.startswith("forbidden:")


EXPECT_OK = Expectation(schema={"type": "object", "required": ["ok"]})
"""The requester's expectation of ``echo``: served results are scored (not unscored)."""


@pytest.mark.parametrize(
    ("policy", "code"),
    [
        (CapabilityPolicy(Allow.only("0" * 64, members=False)), "forbidden"),
        (CapabilityPolicy(Allow.anyone(), Quota(per_minute=1)), "quota"),
    ],
)
def test_forbidden_and_quota_move_on_without_blaming_the_provider(
    policy: CapabilityPolicy, code: str
) -> None:
    """Many delegations (more than the breaker's threshold) to [P, Q] where P refuses
    every one (``forbidden``, or ``quota`` after the first): each goes on to Q, P's circuit
    never opens and our opinion of P never moves."""
    world = World()
    a = world.add(0)
    p = world.add(1, (ECHO,))
    q = world.add(2, (ECHO,))
    for host in (p, q):
        host.handlers["echo"] = lambda x: {"ok": 1}
    p.core.set_policies({"echo": policy})
    q.core.set_policies({"echo": PUBLIC})
    rounds = 3 * world.config.breaker_failure_threshold
    refused = 0
    for _ in range(rounds):
        task_id = a.core.start_delegation(
            "echo", {"x": 1}, [p.node_id, q.node_id], world.now, expectation=EXPECT_OK
        )
        world.drain(a)
        world.settle(world.now + 1)
        done = a.finished[task_id].outcome
        assert isinstance(done, Done)
        first = done.attempts[0]
        if done.provider == q.node_id:
            refused += 1
            assert first.node == p.node_id and first.outcome is AttemptOutcome.REJECTED
            assert first.detail.startswith(f"{code}:")
        assert a.core.breakers.state(p.node_id, world.now) is BreakerState.CLOSED
    assert refused >= rounds - 1
    _, count = a.core.opinion(p.node_id)
    served_by_p = rounds - refused
    assert count == served_by_p  # only tasks P actually served are scored
    if served_by_p == 0:
        assert a.core.trust_of(p.node_id, world.now) == DEFAULT_TRUST


def test_the_readme_example_runs() -> None:
    """The README's ``allow=`` example runs as written and declares what it says."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text("utf-8")
    blocks = [b.split("```", 1)[0] for b in readme.split("```python\n")[1:]]
    (block,) = [b for b in blocks if "allow=" in b]
    namespace: dict[str, Any] = {}
    exec(compile(block, "README.md", "exec"), namespace)
    node = namespace["Warehouse"]()
    specs = node.capabilities
    assert specs["run_sql"].policy.allow == Allow.only(namespace["ORCHESTRATOR"])
    assert specs["run_sql"].policy.quota == Quota(max_concurrent=2, per_minute=30)
    assert specs["ping"].policy.allow == Allow.anyone()


@pytest.mark.parametrize(
    ("given", "token", "expected"),
    [
        ("s3cret-token-0123456789", "s3cret-token-0123456789", True),
        ("s3cret-token-012345678", "s3cret-token-0123456789", False),  # a prefix
        ("s3cret-token-01234567890", "s3cret-token-0123456789", False),  # longer
        ("S3CRET-token-0123456789", "s3cret-token-0123456789", False),
        ("", "s3cret-token-0123456789", False),
        ("anything-at-all-here", None, False),  # no token configured: nothing matches
        ("\udcff-not-utf8-token", "s3cret-token-0123456789", False),
    ],
)
def test_token_matches(given: str, token: str | None, expected: bool) -> None:
    from meshnode.runtime.api import token_matches

    assert token_matches(given, token) is expected
