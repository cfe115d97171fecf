"""An agent economy on the simulated mesh: delegations, providers good and bad, trust.

Theory of operation
-------------------
The ``economy`` scenario runs the whole node on the virtual clock — membership, ledger,
trust, provider, delegations — and measures whether trust steers work away from bad
providers.

**Nodes.** Every simulated host runs one :class:`~meshnode.core.node.NodeCore`, the object
the runtime drives. The cluster carries its mesh effects (datagrams, push-pull, fetches,
persistence); :class:`EconomyNode` is the task side of the shell and carries the rest:
``SendTask`` over :meth:`Cluster.task_send` (a reliable ordered stream with the network's
latency, which a crash or a partition breaks, reported back as ``peer_failed``),
``RunHandler`` as a simulated handler of the node's kind (answered with ``handler_done``),
``StopHandler``, ``CheckPeer`` (the peer fails if its process cannot answer within
``task_liveness_timeout``) and ``DelegationFinished`` (to the judge). Every decision —
admission, fallback, scoring, breakers, opinion batching, the trust view — is the core's.

**Providers.** Every node offers two of the :data:`CAPABILITIES` (by slot), each with an
input and an output schema, and behaves as its *kind* says (:data:`BEHAVIOURS`): the
handler's latency is lognormal around a mean, it may fail (a signed failed result), answer
wrong (an output that fits the schema but that the requester's quality oracle refuses),
deliver garbage (an output that breaks the declared output schema), or never answer a
task message at all. Kinds: ``honest``, ``flaky`` (fails half the time), ``slow`` (misses
every deadline while advertising an honest latency), ``lying`` (wrong answers), ``silent``
(a SWIM member that never answers a task message) and ``sybil`` (a ring of fresh ids that
sign 1.0 opinions of one another and deliver garbage). Every draw comes from a stream
derived from the run seed, the node's slot and the purpose.

**Requesters.** Every honest node delegates: arrivals are a Poisson process of
``delegation_rate`` per second per requester, over the capabilities uniformly, until
``delegations`` have started in all. A requester ranks the candidates as the runtime's
discovery does for a name-only query: the index's hits (every manifest it holds offering
the capability) go through ``NodeCore.route`` (alive members only, their advertised load,
the core's trust view and open breakers, ``top_k`` = :data:`TOP_K`), and it
hands them to ``NodeCore.start_delegation``. A share ``bad_input`` of the requesters are
sloppy clients whose every input breaks the capability's input schema; providers refuse
it (``invalid_input``), and that refusal must not count against them.

**Evaluation and opinions** go through the core: a delivered result is scored by the
requester's ``OutputEvaluator`` (schema, then the per-capability quality oracle every
requester registers); the score moves the provider's breaker and is folded into the
requester's ELO opinion, signed, persisted and gossiped by SWIM to every other node's
ledger; a failed attempt scores 0; a refusal or a declined counter scores nothing. Each
requester routes by its core's trust view (personalised EigenTrust over its ledger,
blended with its direct experience).

**Measured.** A *round* is one delegation per requester: round ``k`` is reached when
``k × requesters`` delegations have started (with Poisson arrivals, requesters are at
round ``k`` on average). At every round the judge asks a sample of the honest requesters
(:data:`CONVERGENCE_SAMPLE`) for their ranking of every capability, exactly as they would
rank to delegate. A requester *ranks honest above bad* when, for every capability, its
first choice is honest and every honest provider its trust view gives any trust (an
unrated one has the router's prior, 0.5) ranks above every always-bad provider (``slow``,
``lying``, ``silent``, ``sybil``). Honest providers at zero trust in its view are left out:
no evidence reaches the requester about them through its own trust graph, and the router
then orders them with the bad ones by load and node id. *Trust convergence* is the first
round at which 95 % of the sampled requesters do. Also: the share of requests sent to bad
providers per round, breaker openings and flaps (a circuit that opens again after it had
closed), the Sybil ring's total trust in the requesters' views, tasks completed, deadline
misses, and what bad input did to the providers it was sent to.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import random
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from crdt import INITIAL_TRUST
from meshnode.core.breaker import BreakerBoard
from meshnode.core.config import NodeConfig
from meshnode.core.delegation import attempt_consequence, rank_candidates, result_consequence
from meshnode.core.effects import (
    AttemptOutcome,
    CheckPeer,
    DelegationFinished,
    Done,
    Failed,
    RunHandler,
    SendTask,
    StopHandler,
)
from meshnode.core.member import MemberState
from meshnode.core.node import NodeCore
from meshnode.core.router import DEFAULT_TRUST
from meshnode.core.task_wire import RejectCode, reject_code
from protocol import Capability, Manifest, Message, TaskRequest, TaskResponse, TaskResult
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
ROUTING_SHARE: Final = 0.05
"""Share of requests to always-bad providers under which routing counts as settled: the
*routing convergence* is the first round from which every later round stays at or under
it (the trailing partial window is not judged)."""
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
    """What the judge remembers of one delegation (the core holds the delegation)."""

    capability: str
    bad_input: bool
    round: int
    started_at: float


class EconomyNode:
    """The task side of one node's shell: it asks its ``NodeCore`` to delegate, carries the
    core's task effects out on the virtual clock (``SendTask`` over a task channel,
    ``RunHandler`` as a simulated handler of this node's kind, ``StopHandler``,
    ``CheckPeer``), and reports every ``DelegationFinished`` to the judge. It decides
    nothing about a task: admission, ranking rules, fallback, scoring, breakers and
    opinions are the core's.
    """

    def __init__(
        self, economy: Economy, sim: SimNode, kind: str, requester: bool, bad_input: bool
    ) -> None:
        self.economy = economy
        self.sim = sim
        self.kind = kind
        self.behaviour = BEHAVIOURS[kind]
        self.requester = requester
        self.sends_bad_input = bad_input
        self.rng = derive_rng(economy.seed, "economy", "handler", sim.slot)
        self.arrivals = derive_rng(economy.seed, "economy", "arrivals", sim.slot)
        self.delegations: dict[str, _Delegation] = {}
        self.counters: Counter[str] = Counter()
        self._handlers: dict[tuple[str, str], int] = {}
        """(requester, task id) -> token of the running simulated handler."""
        self._next_handler = 0
        self._opened_at: dict[str, float | None] = {}
        """Peer -> when its breaker last opened, as last seen (None: closed since)."""
        self._closed_after_open: set[str] = set()
        self.on_finished: Callable[[DelegationFinished], None] | None = None
        """Also told of every delegation of this node that ends (for tests)."""
        core = self.core
        for capability in CAPABILITIES:  # the requester's quality oracle
            core.evaluator.register(capability.name, _oracle)

    @property
    def core(self) -> NodeCore:
        core = self.sim.core
        assert core is not None, f"{self.sim.name} is not running"
        return core

    @property
    def node_id(self) -> str:
        return self.sim.node_id

    @property
    def up(self) -> bool:
        return self.sim.status is Status.RUNNING and self.sim.core is not None

    # ------------------------------------------------------------------ discovery

    def rank(self, capability: str, now: float) -> list[str]:
        """The candidates for ``capability`` in the order this node delegates to them, as
        the runtime's discovery gets them for a name-only query: the index's hits (every
        manifest this node holds that offers the capability) ranked by
        ``NodeCore.route``, then :func:`meshnode.core.delegation.rank_candidates`."""
        core = self.core
        manifests = core.manifests
        entries = self.economy.entries
        hits: list[tuple[_Entry, float]] = []
        for provider in self.economy.offering[capability]:
            manifest = manifests.get(provider)
            if manifest is None:
                continue
            known = entries.get((provider, capability))
            if known is None or known[0] is not manifest:  # the index entry of this manifest
                offered = manifest.capability(capability)
                entry = (
                    None
                    if offered is None
                    else _Entry(provider, offered, manifest.name, manifest.endpoint)
                )
                known = (manifest, entry)
                entries[(provider, capability)] = known
            if known[1] is not None:
                hits.append((known[1], 1.0))
        ranked = core.route(hits, now, capability_name=capability, name_only=True, top_k=TOP_K)
        chosen = rank_candidates(ranked, capability)
        return [] if chosen is None else chosen[1]

    # ------------------------------------------------------------------ requester side

    def delegate(
        self,
        capability: str,
        task_input: Any,
        round_: int,
        candidates: Sequence[str] | None = None,
    ) -> None:
        """Start one delegation of ``capability`` (what ``MeshNode.delegate`` does: rank,
        then hand the ordered candidates to the core; ``candidates`` skips the ranking, as
        ``TaskService.delegate`` takes them)."""
        economy = self.economy
        now = economy.cluster.now
        self.counters["delegations"] += 1
        if candidates is None:
            candidates = self.rank(capability, now)
        if not candidates:
            self.counters["delegations_no_candidate"] += 1
            economy.delegation_ended(self, None, None, self.sends_bad_input, now)
            return
        task_id = self.core.start_delegation(
            capability, task_input, candidates, now, deadline_s=DELEGATION_DEADLINE_S
        )
        self.delegations[task_id] = _Delegation(capability, self.sends_bad_input, round_, now)
        economy.live += 1
        economy.cluster.dispatch(self.sim)

    # ------------------------------------------------------------------ core effects

    def carry_out(self, effects: Sequence[object]) -> None:
        """Carry out the task effects of one drain of the core, in order. Consecutive
        messages to one peer travel in one frame (the runtime batches a loop round)."""
        batch: list[Message] = []
        batch_to: str | None = None
        for effect in effects:
            if isinstance(effect, SendTask):
                if batch and effect.node != batch_to:
                    self._send(batch_to, batch)
                    batch = []
                batch_to = effect.node
                batch.append(effect.message)
                if isinstance(effect.message, TaskRequest):
                    self._routed(effect.node, effect.task_id)
                continue
            if batch:
                self._send(batch_to, batch)
                batch, batch_to = [], None
            if isinstance(effect, RunHandler):
                self._run_handler(effect)
            elif isinstance(effect, StopHandler):
                if self._handlers.pop((effect.requester, effect.task_id), None) is not None:
                    self.counters["handlers_stopped"] += 1
            elif isinstance(effect, CheckPeer):
                self._check_peer(effect.node)
            elif isinstance(effect, DelegationFinished):
                self._finished(effect)
        if batch:
            self._send(batch_to, batch)

    def _routed(self, provider: str, task_id: str) -> None:
        delegation = self.delegations.get(task_id)
        if delegation is not None:
            self.economy.routed(self, provider, delegation)

    def _finished(self, finished: DelegationFinished) -> None:
        economy = self.economy
        now = economy.cluster.now
        delegation = self.delegations.pop(finished.task_id, None)
        if delegation is None:
            return
        if self.on_finished is not None:
            self.on_finished(finished)
        outcome = finished.outcome
        breakers = self.core.breakers
        for attempt in outcome.attempts:
            self.counters[f"attempt_{attempt.outcome.value}"] += 1
            if (
                attempt.outcome is AttemptOutcome.REJECTED
                and reject_code(attempt.detail) is RejectCode.INVALID_INPUT
            ):
                self.counters["rejected_invalid_input"] += 1
            consequence = attempt_consequence(attempt)
            if consequence.quality is not None:
                economy.opinion_recorded(self, attempt.node, consequence.quality, delegation)
            self._watch_breaker(breakers, attempt.node, now)
        if isinstance(outcome, Done) and finished.evaluation is not None:
            quality = result_consequence(finished.evaluation).quality
            assert quality is not None
            economy.opinion_recorded(self, outcome.provider, quality, delegation)
            self._watch_breaker(breakers, outcome.provider, now)
        quality_seen = finished.evaluation.quality if finished.evaluation is not None else None
        economy.delegation_ended(self, outcome, quality_seen, delegation.bad_input, now)

    def _watch_breaker(self, breakers: BreakerBoard, peer: str, now: float) -> None:
        """Count the openings, closings and flaps of ``peer``'s breaker, as the core left it."""
        opened_at = breakers.snapshot(now).get(peer)
        current = None if opened_at is None else opened_at.opened_at
        last = self._opened_at.get(peer)
        if current is not None and current != last:
            self.counters["breaker_opened"] += 1
            if peer in self._closed_after_open:
                self.counters["breaker_flaps"] += 1
        elif current is None and last is not None:
            self.counters["breaker_closed"] += 1
            self._closed_after_open.add(peer)
        self._opened_at[peer] = current

    def _check_peer(self, peer: str) -> None:
        """Membership says ``peer`` is dead while tasks with it are live: ask the channel.
        The peer fails only if its process cannot answer within ``task_liveness_timeout``."""
        cluster = self.economy.cluster
        slot = cluster.by_id.get(peer)
        alive = (
            slot is not None
            and cluster.nodes[slot].up
            and cluster.network.reachable(self.sim.slot, slot)
            and cluster.network.reachable(slot, self.sim.slot)
        )
        if not alive:
            cluster.engine.after(
                self.economy.config.task_liveness_timeout, self._peer_failed, self.sim.life, peer
            )

    def _peer_failed(self, life: int, peer: str) -> None:
        if life != self.sim.life or not self.up:
            return
        self.core.peer_failed(peer, "no answer on the task channel", self.economy.cluster.now)
        self.economy.cluster.dispatch(self.sim)

    # ------------------------------------------------------------------ messages

    def _send(self, node: str | None, messages: list[Message]) -> None:
        assert node is not None
        self.counters["task_messages_sent"] += len(messages)
        self.economy.cluster.task_send(
            self.sim, node, tuple(messages), self.economy.on_arrive, self.economy.on_broken
        )

    def receive(self, sender: str, messages: tuple[Message, ...]) -> None:
        """Task messages from ``sender`` arrived on a channel: into the core, in order (a
        silent provider reads nothing but the answers to its own delegations)."""
        core = self.core
        now = self.economy.cluster.now
        for message in messages:
            if self.behaviour.silent and not isinstance(message, TaskResponse | TaskResult):
                self.counters["task_messages_ignored"] += 1
                continue
            core.task_message(sender, message, now)
        self.economy.cluster.dispatch(self.sim)

    def channel_broken(self, peer: str) -> None:
        """The channel to ``peer`` broke (refused, timed out, or the peer went away)."""
        self.core.peer_failed(peer, "task channel lost", self.economy.cluster.now)
        self.economy.cluster.dispatch(self.sim)

    # ------------------------------------------------------------------ provider side

    def _run_handler(self, run: RunHandler) -> None:
        """A simulated handler of this node's kind: a latency, then an answer."""
        behaviour = self.behaviour
        rng = self.rng
        latency = lognormal_latency(rng, behaviour.latency_mean_s, behaviour.latency_sigma)
        draw = rng.random()
        output: Any = None
        error: str | None = None
        if draw < behaviour.fail:
            error = "handler failed"
        elif draw < behaviour.fail + behaviour.garbage:
            output = {"garbage": "x" * 16}
        else:
            answer = expected_answer(run.input)
            if draw < behaviour.fail + behaviour.garbage + behaviour.wrong:
                answer += 1
            output = {"answer": answer}
        self._next_handler += 1
        token = self._next_handler
        self._handlers[(run.requester, run.task_id)] = token
        self.counters["handlers_started"] += 1
        self.economy.cluster.engine.after(
            latency,
            self._handler_done,
            self.sim.life,
            token,
            run.requester,
            run.task_id,
            output,
            error,
        )

    def _handler_done(
        self,
        life: int,
        token: int,
        requester: str,
        task_id: str,
        output: Any,
        error: str | None,
    ) -> None:
        if life != self.sim.life or not self.up:
            return
        if self._handlers.get((requester, task_id)) != token:
            return  # stopped (cancelled, or its deadline passed)
        del self._handlers[(requester, task_id)]
        now = self.economy.cluster.now
        self.core.handler_done(requester, task_id, now, output=output, error=error)
        self.economy.cluster.dispatch(self.sim)

    def counters_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.sim.name, "kind": self.kind}
        out.update(sorted(self.counters.items()))
        core = self.sim.core
        if core is not None:
            out.update(sorted((f"provider_{k}", v) for k, v in core.provider.counts.items()))
            out.update(sorted(core.task_counters.items()))
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
        self,
        cluster: Cluster,
        nodes: Sequence[SimNode],
        seeds: Sequence[SimNode],
        plan: EconomyPlan,
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
        cluster.task_shell = self._task_shell
        self.offering: dict[str, list[str]] = {c.name: [] for c in CAPABILITIES}
        for e in self.nodes:
            for capability in e.sim.capabilities:
                if capability.name in self.offering:
                    self.offering[capability.name].append(e.node_id)
        self.entries: dict[tuple[str, str], tuple[Manifest, _Entry | None]] = {}
        """(provider, capability) -> the index entry built from that manifest (manifests are
        immutable and shared between hosts, so every node's index holds the same entry)."""
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
        self.checkpoints: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ lookup

    def node_by_id(self, node_id: str) -> EconomyNode:
        return self._by_id[node_id]

    def kind_of(self, node_id: str) -> str:
        node = self._by_id.get(node_id)
        return "unknown" if node is None else node.kind

    # ------------------------------------------------------------------ channel callbacks

    def _task_shell(self, sim: SimNode, effects: list[object]) -> None:
        node = self._by_slot.get(sim.slot)
        if node is not None:
            node.carry_out(effects)

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

    # ------------------------------------------------------------------ measurement hooks

    def routed(self, requester: EconomyNode, provider: str, delegation: _Delegation) -> None:
        """A request went to ``provider``. Requests of delegations with invalid input are
        counted apart: every provider refuses them, so they walk the whole candidate list
        and say nothing about routing."""
        if delegation.bad_input:
            self.bad_input["requests"] += 1
            return
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
        quality: float | None,
        bad_input: bool,
        now: float,
    ) -> None:
        outcomes = self.outcomes
        if outcome is not None:
            self.live -= 1
        if outcome is None:
            outcomes["no_candidate"] += 1
        elif isinstance(outcome, Done):
            outcomes["done"] += 1
            self.durations.append(outcome.elapsed_s)
            self.done_by_kind[self.kind_of(outcome.provider)] += 1
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
            trust = requester.core.trust_view(now)
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
        self, requester: EconomyNode, now: float, trust: Mapping[str, float]
    ) -> bool:
        for capability in CAPABILITY_NAMES:
            ranked = requester.rank(capability, now)
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
        core = requester.core
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
        return self._ranks_honest_first(requester, now, requester.core.trust_view(now))

    # ------------------------------------------------------------------ report

    def _routing_convergence(self) -> int | None:
        full = self.series[:-1] if len(self.series) > 1 else self.series  # the last is partial
        return _settled_from(full, ROUTING_SHARE)

    def results(self) -> dict[str, Any]:
        """Everything measured, JSON-ready and deterministic."""
        kinds = Counter(e.kind for e in self.nodes)
        totals: Counter[str] = Counter()
        per_kind: dict[str, Counter[str]] = {k: Counter() for k in KINDS}
        for e in self.nodes:
            totals.update(e.counters)
            per_kind[e.kind].update(e.counters)
            if e.sim.core is not None:
                counts = e.sim.core.provider.counts
                per_kind[e.kind].update({f"provider_{k}": v for k, v in counts.items()})
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
                "seconds": None
                if self.convergence_time is None
                else round(self.convergence_time, 6),
                "criterion": f"{CONVERGENCE_SHARE:.0%} of the judged requesters rank, for "
                "every capability, an honest provider first and every honest provider with "
                "trust above 0 in their view above every always-bad provider",
            },
            "routing_convergence": {
                "round": self._routing_convergence(),
                "criterion": f"from this round on, at most {ROUTING_SHARE:.0%} of the requests "
                "of every round go to always-bad providers",
            },
            "share_to_bad": {
                "all": round(bad_total / requests_total, 6) if requests_total else None,
                "series": self.series,
            },
            "requests_by_kind": {k: self.requests_by_kind[k] for k in KINDS},
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
                "rejected_invalid_input": sum(
                    e.counters["rejected_invalid_input"] for e in self.nodes
                ),
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


def _settled_from(series: list[dict[str, Any]], share: float) -> int | None:
    """The first round from which every round's share of requests to always-bad
    providers is at most ``share`` (rounds without requests are skipped)."""
    settled: int | None = None
    for point in series:
        value = point["share_always_bad"]
        if value is None:
            continue
        if value > share:
            settled = None
        elif settled is None:
            settled = point["round"]
    return settled


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
    run.run_until(limit, "economy", stop=lambda: economy.finished_starting and economy.live == 0)
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
        "routing_round": results["routing_convergence"]["round"],
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
