"""An agent economy on the simulated mesh: delegations, providers good and bad, trust.

Theory of operation
-------------------
The ``economy`` scenario runs the whole task side of every node on the virtual clock, next
to its membership core, and measures whether trust steers work away from bad providers.

**Nodes.** Every simulated host runs its ``MeshCore`` (membership, manifests, ledger) as in
every scenario, and beside it the task side of a node, in :class:`EconomyNode`: a
``ProviderCore`` that answers task requests, one ``RequesterCore`` per delegation, a
``BreakerBoard`` and an ``OutputEvaluator``. :class:`EconomyNode` is the one place that
wires these cores together the way the runtime's task service does (rank, negotiate,
score, breaker, opinion), so that it can become one ``NodeCore`` per node without touching
the rest of this module. Task messages travel over :meth:`Cluster.task_send`, a reliable
ordered stream with the network's latency that a crash or a partition breaks.

**Providers.** Every node offers two of the :data:`CAPABILITIES` (by slot), each with an
input and an output schema, and behaves as its *kind* says (:data:`BEHAVIOURS`): the
handler's latency is lognormal around a mean, it may fail (a signed failed result), answer
wrong (an output that fits the schema but that the requester's quality oracle refuses),
deliver garbage (an output that breaks the declared output schema), or never answer a
task message at all. Kinds: ``honest``, ``flaky`` (fails half the time), ``slow`` (misses
every deadline while advertising an honest latency), ``lying`` (wrong answers), ``silent``
(a SWIM member that never answers a task message) and ``sybil`` (a ring of fresh ids that
rate each other 1.0 in signed ledger records and deliver garbage). Every draw comes from a
stream derived from the run seed, the node's slot and the purpose.

**Requesters.** Every honest node delegates: arrivals are a Poisson process of
``delegation_rate`` per second per requester, over the capabilities uniformly, until
``delegations`` have started in all. A requester ranks the candidates as the runtime's
discovery does (the live members holding a manifest with the capability, scored by
:func:`meshnode.core.router.rank` from its trust view, their advertised load and its open
breakers, ``top_k`` = :data:`TOP_K`), and negotiates in that order with a ``RequesterCore``.
A share ``bad_input`` of the requesters are sloppy clients whose every input breaks the
capability's input schema; providers refuse such a task (``invalid_input``), and that
refusal must not count against them.

**Evaluation and opinions** go through the real cores: a delivered result is scored by the
requester's ``OutputEvaluator`` (schema, then the per-capability quality oracle registered
by every requester); the score moves the provider's breaker (success at 0.5 and above) and
is folded into the requester's ELO opinion (``MeshCore.record_outcome``), which is signed,
persisted and gossiped by SWIM to every other node's ledger; a failed attempt (timeout,
failed or refused result, dropped channel) scores 0; a refusal or a declined counter scores
nothing. Each requester routes by its own trust view: personalised EigenTrust over its
ledger (pre-trusted: itself and the peers it rates at least 0.5), blended with its direct
experience.

**Measured.** A *round* is one delegation per requester: round ``k`` is reached when
``k × requesters`` delegations have started (with Poisson arrivals, requesters are at
round ``k`` on average). At every round the judge asks a sample of the honest requesters
(:data:`CONVERGENCE_SAMPLE`) for their ranking of every capability, exactly as they would
rank to delegate. A requester *ranks honest above bad* when, for every capability, its
first choice is honest and every honest provider its trust view gives any trust (an
unrated one has the router's prior, 0.5) ranks above every always-bad provider (``slow``,
``lying``, ``silent``, ``sybil``). Honest providers at zero trust in its view are left out:
no evidence reaches the requester about them through its own trust graph, and the router
then orders them with the bad ones by load and node id. *Trust convergence* is the first round at which 95 % of the
sampled requesters do. Also: the share of requests sent to bad providers per round, breaker
openings and flaps (a circuit that opens again after it had closed), the Sybil ring's
total trust in the requesters' views, tasks completed, deadline misses, and what bad
input did to the providers it was sent to.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import random
from collections import Counter
from collections.abc import Sequence
from typing import Any, Final

from crdt import INITIAL_TRUST
from meshnode.core.breaker import BreakerBoard, BreakerState, TaskVerdict
from meshnode.core.config import NodeConfig
from meshnode.core.evaluator import OutputEvaluator
from meshnode.core.membership import MemberState
from meshnode.core.negotiation import (
    COUNTER_ACCEPT_RATIO,
    AttemptEnded,
    AttemptOutcome,
    CancelOutcome,
    Done,
    Failed,
    ProviderCore,
    RejectCode,
    RequesterCore,
    RequesterEffect,
    SendCancel,
    SendConfirm,
    SendRequest,
    StartTask,
    reject_code,
)
from meshnode.core.router import DEFAULT_TRUST, LoadInfo, rank
from protocol import (
    Capability,
    Message,
    TaskCancel,
    TaskConfirm,
    TaskRequest,
    TaskResponse,
    TaskResult,
)
from simulations.cluster import Cluster, SimNode, Status
from simulations.engine import derive_rng
from simulations.progress import Progress
from simulations.scenarios import Outcome, Spec, _Run, make_config

__all__ = [
    "ALWAYS_BAD",
    "BAD_KINDS",
    "BEHAVIOURS",
    "CAPABILITIES",
    "KINDS",
    "Behaviour",
    "Economy",
    "EconomyNode",
    "EconomyPlan",
    "EconomyRun",
    "expected_answer",
    "run_economy",
    "simulate",
]

# ----------------------------------------------------------------------------- constants

KINDS: Final = ("honest", "flaky", "slow", "lying", "silent", "sybil")
"""Provider kinds, in report order."""
BAD_KINDS: Final = ("flaky", "slow", "lying", "silent")
"""Kinds handed out to the ``bad_share`` of the providers, in turn (Sybils are apart)."""
ALWAYS_BAD: Final = frozenset({"slow", "lying", "silent", "sybil"})
"""Kinds that fail every task they take: trust convergence asks that honest providers
rank above all of these (a flaky provider is half good; it is reported, not judged)."""

TOP_K: Final = 20
"""Candidates a requester ranks and tries, as the runtime's ``delegate`` asks discovery."""
DELEGATION_DEADLINE_S: Final = 5.0
"""Overall deadline of one delegation, all attempts included, seconds. Each attempt asks
for what is left divided by the counter ratio (as the runtime does), so a provider slower
than about 3 s misses it."""
CONVERGENCE_SHARE: Final = 0.95
"""Share of the sampled requesters that must rank honest above bad for trust to count as
converged."""
CONVERGENCE_SAMPLE: Final = 64
"""Most honest requesters whose rankings the judge inspects at each round (every
``ceil(R / 64)``-th by slot): a ranking costs a trust computation and a router pass over
every provider of each capability, so all of them at 1,000 nodes would cost more than the
economy itself."""
DRAIN_S: Final = 2 * DELEGATION_DEADLINE_S
"""Virtual seconds the run waits, after the last delegation started, for the ones in
flight to end (every delegation ends by its deadline)."""
TRUST_REFRESH_S: Final = 0.5
"""The runtime's reuse rule for the mesh-wide part of the trust view (see
``MeshNode.trust_view``): while only this node's own opinions changed the ledger, the
global part is reused for up to this many seconds."""
TRUST_MAX_AGE_S: Final = 10.0
"""...and any trust computation for at most this many seconds."""
SYBIL_OPINION_OUTCOMES: Final = 20
"""Outcomes a Sybil claims behind each of its 1.0 opinions of its ring mates."""

CAPABILITY_NAMES: Final = ("translate_text", "summarize", "extract_entities", "generate_sql")
INPUT_SCHEMA: Final = {
    "type": "object",
    "required": ["text", "n"],
    "properties": {"text": {"type": "string"}, "n": {"type": "integer"}},
}
OUTPUT_SCHEMA: Final = {
    "type": "object",
    "required": ["answer"],
    "properties": {"answer": {"type": "integer"}},
}
ADVERTISED_LATENCY_MS: Final = 300.0
"""Latency every provider advertises (the mean of an honest handler); a slow provider
advertises it too."""
COST_USD: Final = 0.002
"""Price of every capability: equal prices keep cost out of the ranking, so that what
orders providers of one capability is trust, load and the breakers."""


def _capability(name: str) -> Capability:
    return Capability(
        name=name,
        description=f"economy capability {name}",
        input_schema=INPUT_SCHEMA,
        output_schema=OUTPUT_SCHEMA,
        avg_latency_ms=ADVERTISED_LATENCY_MS,
        cost_per_call_usd=COST_USD,
        tags=("economy",),
    )


CAPABILITIES: Final = tuple(_capability(name) for name in CAPABILITY_NAMES)
"""What the economy trades; each node offers two of them (:func:`capabilities_for`)."""


def capabilities_for(slot: int) -> tuple[Capability, ...]:
    """The two capabilities the node in ``slot`` offers (every pair in turn)."""
    count = len(CAPABILITIES)
    first = slot % count
    second = (first + 1 + (slot // count) % (count - 1)) % count
    return (CAPABILITIES[first], CAPABILITIES[second])


def expected_answer(task_input: Any) -> int:
    """The right answer to a task: what the requester's quality oracle expects."""
    text = task_input["text"]
    return (int(task_input["n"]) * 7 + len(text) * 13) % 1000


def _oracle(task_input: Any, output: Any) -> float:
    """The requester's quality check (registered for every capability)."""
    if not isinstance(output, dict) or not isinstance(task_input, dict):
        return 0.0
    try:
        return 1.0 if output.get("answer") == expected_answer(task_input) else 0.0
    except (KeyError, TypeError, ValueError):
        return 0.0


@dataclasses.dataclass(frozen=True, slots=True)
class Behaviour:
    """How a provider's handlers behave. Probabilities are per task, drawn in this order:
    fail, garbage, wrong; otherwise the right answer."""

    latency_mean_s: float
    """Mean handler latency, seconds (lognormal)."""
    latency_sigma: float
    """Shape of the lognormal (the standard deviation of its logarithm)."""
    fail: float = 0.0
    """A signed failed result (``ok=False``)."""
    garbage: float = 0.0
    """An output that breaks the declared output schema."""
    wrong: float = 0.0
    """A well-formed output with the wrong answer (only the requester's oracle sees it)."""
    silent: bool = False
    """Never answers a task message (requests are dropped unread)."""


BEHAVIOURS: Final[dict[str, Behaviour]] = {
    "honest": Behaviour(0.3, 0.5, fail=0.01),
    "flaky": Behaviour(0.3, 0.5, fail=0.5),
    "slow": Behaviour(8.0, 0.3),
    "lying": Behaviour(0.3, 0.5, wrong=1.0),
    "silent": Behaviour(0.3, 0.5, silent=True),
    "sybil": Behaviour(0.05, 0.3, garbage=1.0),
}
"""Each kind's handler behaviour (see the module docstring)."""


def lognormal_latency(rng: random.Random, mean: float, sigma: float) -> float:
    """A lognormal draw whose mean is ``mean`` seconds."""
    mu = math.log(mean) - sigma * sigma / 2.0
    return rng.lognormvariate(mu, sigma)


# ----------------------------------------------------------------------------- plan


@dataclasses.dataclass(frozen=True, slots=True)
class EconomyPlan:
    """The economy's parameters (the scenario's ``Spec`` fields of the same names)."""

    delegations: int = 2000
    """Delegations started in all."""
    delegation_rate: float = 0.2
    """Delegations per second per requester (Poisson)."""
    bad_share: float = 0.2
    """Share of the providers (all nodes but the seeds and the Sybils) that are bad, of
    the kinds in ``bad_kinds`` in turn."""
    bad_kinds: tuple[str, ...] = BAD_KINDS
    sybil: int = 0
    """Sybil ring size (nodes of the mesh, never seeds)."""
    bad_input: float = 0.0
    """Share of the requesters whose every input breaks the input schema."""

    def __post_init__(self) -> None:
        if self.delegations < 0:
            raise ValueError("delegations must not be negative")
        if not self.delegation_rate > 0 or not math.isfinite(self.delegation_rate):
            raise ValueError("delegation_rate must be a positive number per second")
        if not 0.0 <= self.bad_share < 1.0:
            raise ValueError(f"bad_share must be in [0, 1), got {self.bad_share}")
        if not 0.0 <= self.bad_input < 1.0:
            raise ValueError(f"bad_input must be in [0, 1), got {self.bad_input}")
        if self.sybil < 0:
            raise ValueError("sybil must not be negative")
        unknown = [k for k in self.bad_kinds if k not in BAD_KINDS]
        if unknown or not self.bad_kinds:
            raise ValueError(f"bad_kinds must be some of {BAD_KINDS}, got {self.bad_kinds}")


# ----------------------------------------------------------------------------- nodes


@dataclasses.dataclass(slots=True)
class _Delegation:
    core: RequesterCore
    capability: str
    task_input: Any
    bad_input: bool
    round: int
    started_at: float
    tick_gen: int = 0


@dataclasses.dataclass(slots=True)
class _TrustCache:
    version: int
    own_writes: int
    computed_at: float
    pretrusted: frozenset[str]
    scores: dict[str, float]


class EconomyNode:
    """The task side of one node: provider, delegations, breakers, evaluator, trust view.

    This class is the seam between the simulator and the node's decisions: it drives the
    sans-I/O cores the way the runtime's task service and ``MeshNode`` do, and nothing
    else in this module decides anything about a task.
    """

    def __init__(
        self, economy: Economy, sim: SimNode, kind: str, requester: bool, bad_input: bool
    ) -> None:
        config = economy.config
        self.economy = economy
        self.sim = sim
        self.kind = kind
        self.behaviour = BEHAVIOURS[kind]
        self.requester = requester
        self.sends_bad_input = bad_input
        self.rng = derive_rng(economy.seed, "economy", "handler", sim.slot)
        self.arrivals = derive_rng(economy.seed, "economy", "arrivals", sim.slot)
        self.provider = ProviderCore(
            sim.signer, {c.name: c for c in sim.capabilities}, config.max_concurrent_tasks
        )
        self.breakers = BreakerBoard(config.breaker_failure_threshold, config.breaker_recovery_time)
        self.evaluator = OutputEvaluator()
        for capability in CAPABILITIES:
            self.evaluator.register(capability.name, _oracle)
        self.delegations: dict[str, _Delegation] = {}
        self.counters: Counter[str] = Counter()
        self._next_task = 0
        self._provider_tick_at = math.inf
        self._provider_gen = 0
        self._trust: _TrustCache | None = None
        self._own_writes = 0
        self._ever_opened: set[str] = set()
        self._closed_after_open: set[str] = set()

    @property
    def node_id(self) -> str:
        return self.sim.node_id

    @property
    def up(self) -> bool:
        return self.sim.status is Status.RUNNING and self.sim.core is not None

    # ------------------------------------------------------------------ trust and ranking

    def trust_view(self, now: float) -> dict[str, float]:
        """The trust this node routes by, in [0, 1]: the runtime's rule (personalised
        EigenTrust over the ledger, pre-trusted = this node and the peers it rates at
        least :data:`~crdt.INITIAL_TRUST`, blended ``w × direct + (1 − w) × global`` with
        ``w`` = ``direct_trust_weight``) and its reuse rule (:data:`TRUST_REFRESH_S`,
        :data:`TRUST_MAX_AGE_S`)."""
        core = self.sim.core
        assert core is not None
        direct = core.direct_experience()
        pretrusted = frozenset(
            {self.node_id, *(peer for peer, score in direct.items() if score >= INITIAL_TRUST)}
        )
        ledger = core.ledger
        version = ledger.version
        known = self._trust
        if (
            known is None
            or known.pretrusted != pretrusted
            or now - known.computed_at >= TRUST_MAX_AGE_S
            or version - known.version != self._own_writes - known.own_writes
            or (known.version != version and now - known.computed_at >= TRUST_REFRESH_S)
        ):
            scores = ledger.trust_scores(now, pretrusted)
            known = _TrustCache(version, self._own_writes, now, pretrusted, scores)
            self._trust = known
            self.counters["trust_computations"] += 1
        w = self.economy.config.direct_trust_weight
        view = dict(known.scores)
        for peer, score in direct.items():
            view[peer] = w * score + (1 - w) * known.scores.get(peer, score)
        view.pop(self.node_id, None)
        return view

    def rank(self, capability: str, now: float, trust: dict[str, float] | None = None) -> list[str]:
        """The candidates for ``capability`` in the order this node would try them: live
        members holding a manifest that offers it, ranked by the router from the trust
        view, the advertised load and the open breakers (the runtime's discovery)."""
        core = self.sim.core
        assert core is not None
        membership = core.membership
        hits: list[tuple[_Entry, float]] = []
        load: dict[str, LoadInfo] = {}
        for provider in self.economy.offering[capability]:
            if provider == self.node_id:
                continue
            member = membership.member(provider)
            if member is None or member.state is not MemberState.ALIVE:
                continue
            manifest = core.manifests.get(provider)
            if manifest is None:
                continue
            offered = manifest.capability(capability)
            if offered is None:
                continue
            hits.append((_Entry(provider, offered, manifest.name, manifest.endpoint), 1.0))
            if member.load is not None:
                load[provider] = LoadInfo(member.load, manifest.max_concurrent_tasks)
        ranked = rank(
            hits,
            trust=self.trust_view(now) if trust is None else trust,
            load=load,
            open_circuits=self.breakers.open_nodes(now),
            capability_name=capability,
            name_only=True,
            top_k=TOP_K,
            weights=self.economy.config.routing_weights,
        )
        return [c.node_id for c in ranked]

    # ------------------------------------------------------------------ requester side

    def delegate(self, capability: str, task_input: Any, round_: int) -> None:
        """Start one delegation of ``capability`` (the runtime's ``MeshNode.delegate``)."""
        economy = self.economy
        now = economy.cluster.now
        self.counters["delegations"] += 1
        candidates = self.rank(capability, now)
        if not candidates:
            self.counters["delegations_no_candidate"] += 1
            economy.delegation_ended(self, None, capability, self.sends_bad_input, now)
            return
        self._next_task += 1
        task_id = f"{self.sim.slot:x}-{self._next_task:x}"
        deadline_ms = int(DELEGATION_DEADLINE_S * 1000)
        core = RequesterCore(
            self.node_id,
            capability,
            task_input,
            candidates,
            task_id=task_id,
            verifier=economy.cluster.verifier,
            deadline_s=DELEGATION_DEADLINE_S,
            trace_id=task_id,
            allow=self.breakers.allow,
            attempt_deadline_ms=max(1, int(deadline_ms / COUNTER_ACCEPT_RATIO)),
            counter_ratio=COUNTER_ACCEPT_RATIO,
            check_output=lambda result: self.evaluator.contract_violation(
                self._capability_of(result.provider, capability), result.output
            ),
        )
        delegation = _Delegation(core, capability, task_input, self.sends_bad_input, round_, now)
        self.delegations[task_id] = delegation
        economy.live += 1
        self._apply(delegation, core.start(now))

    def _capability_of(self, provider: str, name: str) -> Capability | None:
        core = self.sim.core
        manifest = None if core is None else core.manifests.get(provider)
        return manifest.capability(name) if manifest is not None else None

    def _apply(self, delegation: _Delegation, effects: list[RequesterEffect]) -> None:
        economy = self.economy
        now = economy.cluster.now
        for effect in effects:
            if isinstance(effect, SendRequest):
                economy.routed(self, effect.node, delegation)
                self._send(effect.node, (effect.request,))
            elif isinstance(effect, SendConfirm):
                self._send(effect.node, (effect.confirm,))
            elif isinstance(effect, SendCancel):
                self._send(effect.node, (effect.cancel,))
            elif isinstance(effect, AttemptEnded):
                self._attempt_ended(delegation, effect.attempt.node, effect.attempt.verdict, now)
                self.counters[f"attempt_{effect.attempt.outcome.value}"] += 1
                if effect.attempt.outcome is AttemptOutcome.REJECTED:
                    code = reject_code(effect.attempt.detail)
                    if code is RejectCode.INVALID_INPUT:
                        self.counters["rejected_invalid_input"] += 1
            elif isinstance(effect, Done):
                self._score(delegation, effect, now)
            elif isinstance(effect, Failed):
                self._finished(delegation, effect, now)
        self._arm_delegation(delegation)

    def _attempt_ended(
        self, delegation: _Delegation, node: str, verdict: TaskVerdict | None, now: float
    ) -> None:
        """The runtime's rule: a failure moves the breaker and scores 0; a refusal, a
        declined counter or our cancellation only hands a half-open probe back; a success
        is scored once the result is evaluated."""
        if verdict is None or verdict is TaskVerdict.SUCCESS:
            return
        self._breaker(node, verdict, now)
        if verdict is TaskVerdict.FAILURE:
            self._opinion(delegation, node, 0.0)

    def _score(self, delegation: _Delegation, done: Done, now: float) -> None:
        cap = self._capability_of(done.provider, delegation.capability)
        delivered = bool(done.attempts) and done.attempts[-1].outcome is AttemptOutcome.DELIVERED
        evaluation = self.evaluator.evaluate(
            cap or delegation.capability,
            delegation.task_input,
            done.result,
            output_checked=delivered,
        )
        verdict = TaskVerdict.SUCCESS if evaluation.success else TaskVerdict.FAILURE
        self._breaker(done.provider, verdict, now)
        self._opinion(delegation, done.provider, evaluation.quality)
        self._finished(delegation, done, now, quality=evaluation.quality)

    def _breaker(self, node: str, verdict: TaskVerdict, now: float) -> None:
        board = self.breakers
        before = board.state(node, now)
        after = board.record(node, verdict, now)
        if before is BreakerState.CLOSED and after is not BreakerState.CLOSED:
            self.counters["breaker_opened"] += 1
            if node in self._closed_after_open:
                self.counters["breaker_flaps"] += 1
            self._ever_opened.add(node)
        elif before is not BreakerState.CLOSED and after is BreakerState.CLOSED:
            self.counters["breaker_closed"] += 1
            self._closed_after_open.add(node)
        elif before is BreakerState.HALF_OPEN and after is BreakerState.OPEN:
            self.counters["breaker_reopened"] += 1

    def _opinion(self, delegation: _Delegation, subject: str, quality: float) -> None:
        """Fold one scored outcome into our signed, gossiped opinion of ``subject``."""
        economy = self.economy
        core = self.sim.core
        if core is None or subject == self.node_id:
            return
        before = core.ledger.version
        economy.cluster.record_outcome(self.sim, economy.node_by_id(subject).sim, quality)
        self._own_writes += core.ledger.version - before
        self.counters["opinions"] += 1
        economy.opinion_recorded(self, subject, quality, delegation)

    def _finished(
        self,
        delegation: _Delegation,
        outcome: Done | Failed,
        now: float,
        quality: float | None = None,
    ) -> None:
        self.delegations.pop(delegation.core.task_id, None)
        self.economy.delegation_ended(
            self, outcome, delegation.capability, delegation.bad_input, now, quality
        )

    def _arm_delegation(self, delegation: _Delegation) -> None:
        deadline = delegation.core.next_deadline()
        if deadline is None:
            return
        delegation.tick_gen += 1
        self.economy.cluster.engine.at(
            deadline, self._delegation_tick, delegation, delegation.tick_gen
        )

    def _delegation_tick(self, delegation: _Delegation, gen: int) -> None:
        if gen != delegation.tick_gen or delegation.core.finished or not self.up:
            return
        self._apply(delegation, delegation.core.tick(self.economy.cluster.now))

    # ------------------------------------------------------------------ messages

    def _send(self, node: str, messages: tuple[Message, ...]) -> None:
        self.counters["task_messages_sent"] += len(messages)
        self.economy.cluster.task_send(
            self.sim, node, messages, self.economy.on_arrive, self.economy.on_broken
        )

    def receive(self, sender: str, messages: tuple[Message, ...]) -> None:
        """Task messages from ``sender`` arrived on a channel."""
        now = self.economy.cluster.now
        for message in messages:
            if isinstance(message, TaskResponse | TaskResult):
                delegation = self.delegations.get(message.task_id)
                if delegation is None:
                    continue
                core = delegation.core
                if isinstance(message, TaskResponse):
                    effects = core.on_response(sender, message, now)
                else:
                    effects = core.on_result(sender, message, now)
                self._apply(delegation, effects)
            elif self.behaviour.silent:
                self.counters["task_messages_ignored"] += 1
            elif isinstance(message, TaskRequest):
                self._on_request(sender, message, now)
            elif isinstance(message, TaskConfirm):
                response = self.provider.on_confirm(sender, message, now)
                if response is not None:
                    self._send(sender, (response,))
            elif isinstance(message, TaskCancel):
                if self.provider.on_cancel(sender, message, now) is CancelOutcome.STOP_HANDLER:
                    self.counters["handlers_stopped"] += 1
        self._provider_changed(now)

    def channel_broken(self, peer: str) -> None:
        """The channel to ``peer`` broke: fail the delegations waiting on it."""
        now = self.economy.cluster.now
        for task_id in sorted(self.delegations):
            delegation = self.delegations.get(task_id)
            if delegation is not None and delegation.core.current_node == peer:
                self._apply(delegation, delegation.core.on_peer_failed(peer, "channel lost", now))

    # ------------------------------------------------------------------ provider side

    def _on_request(self, sender: str, request: TaskRequest, now: float) -> None:
        decision = self.provider.on_request(sender, request, now)
        if decision.start is not None:
            self._run_handler(decision.start, now)
        messages: tuple[Message, ...] = (decision.response,)
        if decision.result is not None:
            messages += (decision.result,)
        self._send(sender, messages)

    def _run_handler(self, start: StartTask, now: float) -> None:
        behaviour = self.behaviour
        rng = self.rng
        latency = lognormal_latency(rng, behaviour.latency_mean_s, behaviour.latency_sigma)
        draw = rng.random()
        ok, output, error = True, None, ""
        task_input = start.request.input
        if draw < behaviour.fail:
            ok, error = False, "handler failed"
        elif draw < behaviour.fail + behaviour.garbage:
            output = {"garbage": "x" * 16}
        else:
            answer = expected_answer(task_input)
            if draw < behaviour.fail + behaviour.garbage + behaviour.wrong:
                answer += 1
            output = {"answer": answer}
        self.counters["handlers_started"] += 1
        self.economy.cluster.engine.at(
            now + latency,
            self._handler_done,
            self.sim.life,
            start.request.task_id,
            start.requester,
            ok,
            output,
            error,
        )

    def _handler_done(
        self, life: int, task_id: str, requester: str, ok: bool, output: Any, error: str
    ) -> None:
        if life != self.sim.life or not self.up:
            return
        now = self.economy.cluster.now
        result = self.provider.complete(task_id, ok, output, error, now)
        if result is not None:
            self._send(requester, (result,))
        self._provider_changed(now)

    def _provider_changed(self, now: float) -> None:
        """After any provider input: start what may start, arm the deadline timer and
        advertise the load."""
        for start in self.provider.start_ready(now):
            self._run_handler(start, now)
        core = self.sim.core
        if core is not None:
            core.membership.set_load(self.provider.in_flight)
        deadline = self.provider.next_deadline()
        if deadline is not None and deadline < self._provider_tick_at:
            self._provider_gen += 1
            self._provider_tick_at = deadline
            self.economy.cluster.engine.at(deadline, self._provider_tick, self._provider_gen)

    def _provider_tick(self, gen: int) -> None:
        if gen != self._provider_gen or not self.up:
            return
        self._provider_tick_at = math.inf
        now = self.economy.cluster.now
        for event in self.provider.tick(now):
            self._send(event.requester, (event.result,))
        self._provider_changed(now)

    def counters_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.sim.name, "kind": self.kind}
        out.update(sorted(self.counters.items()))
        out.update(sorted((f"provider_{k}", v) for k, v in self.provider.counts.items()))
        return out


@dataclasses.dataclass(frozen=True, slots=True)
class _Entry:
    """A routable (node, capability), as discovery's index hands it to the router."""

    node_id: str
    capability: Capability
    node_name: str
    endpoint: str
    node_tags: tuple[str, ...] = ("sim",)


# ----------------------------------------------------------------------------- economy


class Economy:
    """The task workload over a running cluster, and its judge."""

    def __init__(
        self, cluster: Cluster, nodes: Sequence[SimNode], seeds: Sequence[SimNode], plan: EconomyPlan
    ) -> None:
        self.cluster = cluster
        self.config: NodeConfig = cluster.config
        self.seed = cluster.seed
        self.plan = plan
        rng = derive_rng(cluster.seed, "economy", "roles")
        others = [n for n in nodes if n not in seeds]
        rng.shuffle(others)
        sybil_count = min(plan.sybil, len(others))
        sybils = others[:sybil_count]
        rest = others[sybil_count:]
        bad_count = min(len(rest), round(plan.bad_share * (len(nodes) - sybil_count)))
        kinds: dict[int, str] = {n.slot: "honest" for n in nodes}
        for node in sybils:
            kinds[node.slot] = "sybil"
        for i, node in enumerate(rest[:bad_count]):
            kinds[node.slot] = plan.bad_kinds[i % len(plan.bad_kinds)]
        honest = [n for n in nodes if kinds[n.slot] == "honest"]
        sloppy_count = round(plan.bad_input * len(honest))
        sloppy = {n.slot for n in rng.sample(honest, sloppy_count)} if sloppy_count else set()
        self.nodes: list[EconomyNode] = [
            EconomyNode(
                self,
                n,
                kinds[n.slot],
                requester=kinds[n.slot] == "honest",
                bad_input=n.slot in sloppy,
            )
            for n in sorted(nodes, key=lambda n: n.slot)
        ]
        self._by_id = {e.node_id: e for e in self.nodes}
        self._by_slot = {e.sim.slot: e for e in self.nodes}
        self.offering: dict[str, list[str]] = {c.name: [] for c in CAPABILITIES}
        for e in self.nodes:
            for capability in e.sim.capabilities:
                if capability.name in self.offering:
                    self.offering[capability.name].append(e.node_id)
        self.requesters = [e for e in self.nodes if e.requester]
        self.judged = [e for e in self.requesters if not e.sends_bad_input]
        step = max(1, math.ceil(len(self.judged) / CONVERGENCE_SAMPLE))
        self.sample = self.judged[::step]
        self.started = 0
        self.live = 0
        """Delegations in flight."""
        self.start_time = 0.0
        self.last_start = 0.0
        self.round = 0
        # measurements
        self.series: list[dict[str, Any]] = []
        self._window: Counter[str] = Counter()
        self.convergence_round: int | None = None
        self.convergence_time: float | None = None
        self.outcomes: Counter[str] = Counter()
        self.done_by_kind: Counter[str] = Counter()
        self.requests_by_kind: Counter[str] = Counter()
        self.bad_input: Counter[str] = Counter()
        self.durations: list[float] = []
        self.rounds_after_convergence: Counter[str] = Counter()
        self.checkpoints: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ lookup

    def node_by_id(self, node_id: str) -> EconomyNode:
        return self._by_id[node_id]

    def kind_of(self, node_id: str) -> str:
        node = self._by_id.get(node_id)
        return "unknown" if node is None else node.kind

    # ------------------------------------------------------------------ channel callbacks

    def on_arrive(self, dst: SimNode, sender: str, messages: tuple[Message, ...]) -> None:
        node = self._by_slot.get(dst.slot)
        if node is not None and node.up:
            node.receive(sender, messages)

    def on_broken(self, src: SimNode, peer: str) -> None:
        node = self._by_slot.get(src.slot)
        if node is not None and node.up:
            node.channel_broken(peer)

    # ------------------------------------------------------------------ workload

    def start(self) -> None:
        """Sybils sign their ring's opinions; requesters' arrival processes begin."""
        cluster = self.cluster
        self.start_time = cluster.now
        ring = [e for e in self.nodes if e.kind == "sybil"]
        for member in ring:
            for mate in ring:
                if mate is not member and member.up:
                    cluster.publish_opinion(member.sim, mate.sim, 1.0, SYBIL_OPINION_OUTCOMES)
        self.checkpoint()
        if self.plan.delegations == 0:
            return
        for requester in self.requesters:
            delay = requester.arrivals.expovariate(self.plan.delegation_rate)
            cluster.engine.after(delay, self._arrival, requester)

    def _arrival(self, requester: EconomyNode) -> None:
        if self.started >= self.plan.delegations:
            return
        if requester.up:
            rng = requester.arrivals
            capability = CAPABILITY_NAMES[rng.randrange(len(CAPABILITY_NAMES))]
            text = "".join(rng.choice("abcdefghij") for _ in range(rng.randint(1, 12)))
            n = rng.randrange(1000)
            task_input: Any = (
                {"text": n, "n": text} if requester.sends_bad_input else {"text": text, "n": n}
            )
            self.started += 1
            self.last_start = self.cluster.now
            requester.delegate(capability, task_input, self.round)
            if self.started >= len(self.requesters) * (self.round + 1):
                self.round += 1
                self.checkpoint()
        delay = requester.arrivals.expovariate(self.plan.delegation_rate)
        self.cluster.engine.after(delay, self._arrival, requester)

    @property
    def finished_starting(self) -> bool:
        return self.started >= self.plan.delegations

    def in_flight(self) -> int:
        return sum(len(e.delegations) for e in self.nodes)

    # ------------------------------------------------------------------ measurement hooks

    def routed(self, requester: EconomyNode, provider: str, delegation: _Delegation) -> None:
        kind = self.kind_of(provider)
        self.requests_by_kind[kind] += 1
        window = self._window
        window["requests"] += 1
        if kind != "honest":
            window["to_bad"] += 1
        if kind in ALWAYS_BAD:
            window["to_always_bad"] += 1
        if kind == "sybil":
            window["to_sybil"] += 1
        if self.convergence_round is not None and delegation.round >= self.convergence_round:
            self.rounds_after_convergence["requests"] += 1
            if kind == "sybil":
                self.rounds_after_convergence["to_sybil"] += 1
            if kind in ALWAYS_BAD:
                self.rounds_after_convergence["to_always_bad"] += 1
        if delegation.bad_input:
            self.bad_input["requests"] += 1

    def opinion_recorded(
        self, requester: EconomyNode, subject: str, quality: float, delegation: _Delegation
    ) -> None:
        if delegation.bad_input:
            self.bad_input["opinions"] += 1
            if quality < INITIAL_TRUST:
                self.bad_input["opinions_below_initial"] += 1
                if self.kind_of(subject) == "honest":
                    self.bad_input["honest_providers_lowered"] += 1

    def delegation_ended(
        self,
        requester: EconomyNode,
        outcome: Done | Failed | None,
        capability: str,
        bad_input: bool,
        now: float,
        quality: float | None = None,
    ) -> None:
        outcomes = self.outcomes
        if outcome is not None:
            self.live -= 1
        if outcome is None:
            outcomes["no_candidate"] += 1
        elif isinstance(outcome, Done):
            outcomes["done"] += 1
            self.durations.append(outcome.elapsed_s)
            kind = self.kind_of(outcome.provider)
            self.done_by_kind[kind] += 1
            if quality is not None and quality >= 0.5:
                outcomes["done_good"] += 1
            else:
                outcomes["done_bad_quality"] += 1
            if outcome.elapsed_s > DELEGATION_DEADLINE_S:
                outcomes["deadline_missed"] += 1
        else:
            outcomes["failed"] += 1
            if outcome.reason == "deadline exceeded":
                outcomes["deadline_missed"] += 1
        if bad_input:
            self.bad_input["delegations"] += 1

    # ------------------------------------------------------------------ judge

    def checkpoint(self) -> None:
        """Close the current round's window and judge the sampled requesters' rankings."""
        now = self.cluster.now
        converged = 0
        sybil_trust: list[float] = []
        sybils = [e.node_id for e in self.nodes if e.kind == "sybil"]
        checked = 0
        for requester in self.sample:
            if not requester.up:
                continue
            checked += 1
            trust = requester.trust_view(now)
            sybil_trust.append(sum(trust.get(s, DEFAULT_TRUST) for s in sybils))
            if self._ranks_honest_first(requester, now, trust):
                converged += 1
        share = converged / checked if checked else 0.0
        window = self._window
        requests = window["requests"]
        self.series.append(
            {
                "round": self.round,
                "t": round(now - self.start_time, 6),
                "requests": requests,
                "to_bad": window["to_bad"],
                "to_always_bad": window["to_always_bad"],
                "to_sybil": window["to_sybil"],
                "share_bad": round(window["to_bad"] / requests, 6) if requests else None,
                "share_always_bad": round(window["to_always_bad"] / requests, 6)
                if requests
                else None,
                "ranking_converged_share": round(share, 6),
                "sybil_ring_trust_mean": round(sum(sybil_trust) / len(sybil_trust), 6)
                if sybil_trust and sybils
                else None,
            }
        )
        self._window = Counter()
        if self.convergence_round is None and checked and share >= CONVERGENCE_SHARE:
            self.convergence_round = self.round
            self.convergence_time = now - self.start_time

    def _ranks_honest_first(
        self, requester: EconomyNode, now: float, trust: dict[str, float]
    ) -> bool:
        for capability in CAPABILITY_NAMES:
            ranked = requester.rank(capability, now, trust)
            known = self._known_honest(requester, capability)
            if known and self.kind_of(ranked[0]) != "honest":
                return False
            first_bad = next(
                (i for i, n in enumerate(ranked) if self.kind_of(n) in ALWAYS_BAD), None
            )
            if first_bad is None:
                continue
            trusted = [n for n in known if trust.get(n, DEFAULT_TRUST) > 0.0]
            ahead = set(ranked[:first_bad])
            if any(n not in ahead for n in trusted):
                return False
        return True

    def _known_honest(self, requester: EconomyNode, capability: str) -> list[str]:
        """The honest providers of ``capability`` that ``requester`` could rank: alive
        members whose manifest it holds."""
        core = requester.sim.core
        assert core is not None
        known: list[str] = []
        for provider in self.offering[capability]:
            if provider == requester.node_id or self.kind_of(provider) != "honest":
                continue
            member = core.membership.member(provider)
            if (
                member is not None
                and member.state is MemberState.ALIVE
                and core.manifests.get(provider) is not None
            ):
                known.append(provider)
        return known

    def ranks_honest_first(self, requester: EconomyNode) -> bool:
        """Whether ``requester`` now ranks every known honest provider of every capability
        above every always-bad one (the judge's criterion, for tests)."""
        now = self.cluster.now
        return self._ranks_honest_first(requester, now, requester.trust_view(now))

    # ------------------------------------------------------------------ report

    def results(self) -> dict[str, Any]:
        """Everything measured, JSON-ready and deterministic."""
        kinds = Counter(e.kind for e in self.nodes)
        totals: Counter[str] = Counter()
        per_kind: dict[str, Counter[str]] = {k: Counter() for k in KINDS}
        for e in self.nodes:
            totals.update(e.counters)
            per_kind[e.kind].update(e.counters)
            per_kind[e.kind].update({f"provider_{k}": v for k, v in e.provider.counts.items()})
        sybils = [e.node_id for e in self.nodes if e.kind == "sybil"]
        final_sybil = self.series[-1]["sybil_ring_trust_mean"] if self.series else None
        requests_total = sum(self.requests_by_kind.values())
        bad_total = requests_total - self.requests_by_kind["honest"]
        durations = sorted(self.durations)
        return {
            "plan": {
                "delegations": self.plan.delegations,
                "delegation_rate": self.plan.delegation_rate,
                "bad_share": self.plan.bad_share,
                "bad_kinds": list(self.plan.bad_kinds),
                "sybil": self.plan.sybil,
                "bad_input": self.plan.bad_input,
                "deadline_s": DELEGATION_DEADLINE_S,
                "top_k": TOP_K,
            },
            "kinds": {k: kinds[k] for k in KINDS},
            "requesters": len(self.requesters),
            "requesters_judged": len(self.sample),
            "round_definition": "round k: k x requesters delegations started "
            "(one delegation per requester on average)",
            "delegations_started": self.started,
            "rounds": self.round,
            "trust_convergence": {
                "round": self.convergence_round,
                "seconds": None if self.convergence_time is None else round(self.convergence_time, 6),
                "criterion": f"{CONVERGENCE_SHARE:.0%} of the judged requesters rank, for "
                "every capability, an honest provider first and every honest provider with "
                "trust above 0 in their view above every always-bad provider",
            },
            "share_to_bad": {
                "all": round(bad_total / requests_total, 6) if requests_total else None,
                "series": self.series,
            },
            "requests_by_kind": {k: self.requests_by_kind[k] for k in KINDS},
            "after_convergence": {
                "requests": self.rounds_after_convergence["requests"],
                "to_always_bad": self.rounds_after_convergence["to_always_bad"],
                "to_sybil": self.rounds_after_convergence["to_sybil"],
            },
            "tasks": {
                "completed": self.outcomes["done"],
                "completed_good": self.outcomes["done_good"],
                "completed_bad_quality": self.outcomes["done_bad_quality"],
                "failed": self.outcomes["failed"],
                "no_candidate": self.outcomes["no_candidate"],
                "deadline_missed": self.outcomes["deadline_missed"],
                "execution_timeouts": totals["attempt_execution_timeout"],
                "response_timeouts": totals["attempt_response_timeout"],
                "completed_by_kind": {k: self.done_by_kind[k] for k in KINDS},
                "duration_s_p50": _percentile(durations, 50),
                "duration_s_p99": _percentile(durations, 99),
            },
            "breakers": {
                "opened": totals["breaker_opened"],
                "closed": totals["breaker_closed"],
                "reopened_after_probe": totals["breaker_reopened"],
                "flaps": totals["breaker_flaps"],
            },
            "sybil_ring": {
                "size": len(sybils),
                "trust_mean_final": final_sybil,
                "definition": "sum of the ring's trust in a judged requester's view "
                "(router default for an unrated id), mean over the judged requesters",
            },
            "bad_input": {
                "clients": sum(1 for e in self.requesters if e.sends_bad_input),
                "delegations": self.bad_input["delegations"],
                "requests": self.bad_input["requests"],
                "rejected_invalid_input": sum(e.counters["rejected_invalid_input"] for e in self.nodes),
                "opinions": self.bad_input["opinions"],
                "opinions_below_initial": self.bad_input["opinions_below_initial"],
                "honest_providers_lowered": self.bad_input["honest_providers_lowered"],
            },
            "counters": {
                "total": dict(sorted(totals.items())),
                "by_kind": {k: dict(sorted(per_kind[k].items())) for k in KINDS if kinds[k]},
                "per_node": [e.counters_json() for e in self.nodes],
            },
        }


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    index = max(1, math.ceil(q / 100.0 * len(values)))
    return round(values[index - 1], 6)


# ----------------------------------------------------------------------------- scenario


def run_economy(spec: Spec, progress: Progress | None) -> Outcome:
    """The ``economy`` scenario: bootstrap, then the delegation workload until
    ``spec.delegations`` have started and every one has ended; judged as the module
    docstring says."""
    return simulate(spec, progress)[0]


def simulate(spec: Spec, progress: Progress | None = None) -> tuple[Outcome, Economy]:
    """:func:`run_economy`, also handing back the economy (its nodes, for tests)."""
    run = EconomyRun(spec, make_config(spec), progress)
    cluster = run.cluster
    boot = run.bootstrap()
    plan = EconomyPlan(
        delegations=spec.delegations,
        delegation_rate=spec.delegation_rate,
        bad_share=spec.bad_share,
        sybil=spec.sybil,
        bad_input=spec.bad_input,
        bad_kinds=spec.bad_kinds,
    )
    economy = Economy(cluster, cluster.live_nodes(), run.seed_nodes, plan)
    economy.start()
    requesters = max(1, len(economy.requesters))
    expected = spec.delegations / (requesters * spec.delegation_rate)
    limit = cluster.now + 3.0 * expected + DRAIN_S + 60.0
    run.run_until(
        limit, "economy", stop=lambda: economy.finished_starting and economy.live == 0
    )
    economy.checkpoint()
    results = economy.results()
    converged = results["trust_convergence"]["round"]
    run.check(
        "trust_converged",
        converged is not None,
        f"{CONVERGENCE_SHARE:.0%} of the judged requesters ranked honest providers first "
        f"at round {converged}"
        if converged is not None
        else f"not within {economy.round} rounds",
    )
    bad_input = results["bad_input"]
    run.check(
        "bad_input_does_not_lower_honest_trust",
        bad_input["honest_providers_lowered"] == 0,
        f"{bad_input['honest_providers_lowered']} opinions of honest providers below "
        f"{INITIAL_TRUST} came from delegations with invalid input (of "
        f"{bad_input['opinions_below_initial']} below it in all: a silent provider fails "
        "any request, valid or not)",
    )
    run.check(
        "all_delegations_ended",
        economy.live == 0 and economy.finished_starting,
        f"{economy.started} of {spec.delegations} started, {economy.live} still running",
    )
    results["bootstrap"] = boot
    curve = {
        "kind": "economy",
        "series": results["share_to_bad"]["series"],
        "convergence_round": converged,
        "title": f"economy: {spec.nodes} nodes, seed {spec.seed}",
    }
    return run.finish(results, curve), economy


class EconomyRun(_Run):
    """The scenario machinery, with the economy's capabilities on every node."""

    def start_nodes(self, count: int) -> list[SimNode]:
        nodes = super().start_nodes(count)
        for node in nodes:  # read when the process starts, after this returns
            node.capabilities = capabilities_for(node.slot)
        return nodes

    def start_converged(self) -> dict[str, Any]:
        cluster = self.cluster
        tracker = cluster.tracker
        nodes = [cluster.add_node() for _ in range(self.spec.nodes)]
        for node in nodes:
            node.capabilities = capabilities_for(node.slot)
        self.seed_nodes = nodes[: self.spec.seeds]
        cluster.start_converged(nodes, self.seed_nodes)
        gc.freeze()  # as the base class does: N² table slots that live for the whole run
        tracker.mark()
        converged = tracker.converged
        self.check(
            "bootstrap_converged",
            converged,
            "started converged" if converged else "a converged start is not converged",
        )
        return self._bootstrap_report("converged", converged)
