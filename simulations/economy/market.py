"""The economy of one run: who is what, the delegation workload, and the judge (see
:mod:`simulations.economy`)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from crdt import INITIAL_TRUST
from meshnode.core.config import NodeConfig
from meshnode.core.effects import Done, Failed
from meshnode.core.member import MemberState
from meshnode.core.router import DEFAULT_TRUST
from protocol import Manifest, Message
from simulations.cluster import Cluster, SimNode
from simulations.economy.model import (
    ALWAYS_BAD,
    CAPABILITIES,
    CAPABILITY_NAMES,
    CONVERGENCE_SAMPLE,
    CONVERGENCE_SHARE,
    DELEGATION_DEADLINE_S,
    KINDS,
    ROUTING_SHARE,
    SYBIL_OPINION_OUTCOMES,
    TOP_K,
    EconomyPlan,
)
from simulations.economy.node import EconomyNode, _Delegation, _Entry
from simulations.engine import derive_rng

__all__ = ["Economy", "settled_from"]


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
            task_input: Any = {"text": text, "n": n}
            if requester.sends_bad_input:
                # Half break the input schema (the provider refuses), half pass it with a
                # negative n (the handler refuses): neither is the provider's failure.
                task_input = {"text": n, "n": text} if n % 2 else {"text": text, "n": -1 - n}
            self.started += 1
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
            if outcome.elapsed_s > DELEGATION_DEADLINE_S:
                outcomes["deadline_missed"] += 1  # ended after its deadline
            elif outcome.reason == "deadline exceeded":
                outcomes["out_of_time"] += 1  # ended at it, every attempt having failed
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
            # Only always-bad providers somebody has rated: one nobody has tried yet has the
            # router's prior, and trust cannot rank what it has no evidence of.
            first_bad = next(
                (i for i, n in enumerate(ranked) if self.kind_of(n) in ALWAYS_BAD and n in trust),
                None,
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
        return settled_from(full, ROUTING_SHARE)

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
                "trust above 0 in their view above every always-bad provider someone has "
                "rated",
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
                "out_of_time": self.outcomes["out_of_time"],
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
                "refused_by_handler": sum(e.counters["handler_invalid_input"] for e in self.nodes),
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


def settled_from(series: list[dict[str, Any]], share: float) -> int | None:
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
