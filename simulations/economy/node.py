"""The task side of a simulated node's shell: it carries out its ``NodeCore``'s task
effects on the virtual clock (see :mod:`simulations.economy`)."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from meshnode.core.breaker import BreakerBoard
from meshnode.core.delegation import attempt_consequence, rank_candidates, result_consequence
from meshnode.core.effects import (
    AttemptOutcome,
    CheckPeer,
    DelegationFinished,
    Done,
    RunHandler,
    SendTask,
    StopHandler,
)
from meshnode.core.node import NodeCore
from protocol import Capability, Message, TaskRequest, TaskResponse, TaskResult
from simulations.cluster import SimNode, Status
from simulations.economy.model import (
    BEHAVIOURS,
    CAPABILITIES,
    DELEGATION_DEADLINE_S,
    HANDLER_REFUSAL_S,
    TOP_K,
    expected_answer,
    input_problem,
    lognormal_latency,
    quality_oracle,
)
from simulations.engine import derive_rng

if TYPE_CHECKING:
    from simulations.economy.market import Economy

__all__ = ["EconomyNode"]


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
            core.evaluator.register(capability.name, quality_oracle)

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
            if attempt.outcome is AttemptOutcome.INVALID_INPUT:
                # Refused by the input schema or by the handler: the input's fault.
                self.counters["rejected_invalid_input"] += 1
            consequence = attempt_consequence(attempt)
            if consequence.quality is not None:
                economy.opinion_recorded(self, attempt.node, consequence.quality, delegation)
            self._watch_breaker(breakers, attempt.node, now)
        if isinstance(outcome, Done) and finished.evaluation is not None:
            quality = result_consequence(finished.evaluation).quality
            if quality is not None:  # every requester registers its oracle: always scored
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
        refused = input_problem(run.input)
        if refused is not None:  # before any draw: valid inputs see the same streams
            self._schedule(run, HANDLER_REFUSAL_S, None, refused, invalid_input=True)
            return
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
        self._schedule(run, latency, output, error)

    def _schedule(
        self,
        run: RunHandler,
        latency: float,
        output: Any,
        error: str | None,
        *,
        invalid_input: bool = False,
    ) -> None:
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
            invalid_input,
        )

    def _handler_done(
        self,
        life: int,
        token: int,
        requester: str,
        task_id: str,
        output: Any,
        error: str | None,
        invalid_input: bool = False,
    ) -> None:
        if life != self.sim.life or not self.up:
            return
        if self._handlers.get((requester, task_id)) != token:
            return  # stopped (cancelled, or its deadline passed)
        del self._handlers[(requester, task_id)]
        now = self.economy.cluster.now
        if invalid_input:
            self.counters["handler_invalid_input"] += 1
        self.core.handler_done(
            requester, task_id, now, output=output, error=error, invalid_input=invalid_input
        )
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
