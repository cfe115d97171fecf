"""The ``economy`` scenario: bootstrap, workload, judge, report (see
:mod:`simulations.economy`)."""

from __future__ import annotations

from crdt import INITIAL_TRUST
from simulations.cluster import SimNode
from simulations.economy.market import Economy
from simulations.economy.model import (
    CONVERGENCE_SHARE,
    DRAIN_S,
    EconomyPlan,
    capabilities_for,
)
from simulations.progress import Progress
from simulations.scenarios import Outcome, Spec, _Run, make_config

__all__ = ["EconomyRun", "run_economy", "simulate"]


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

    def add_nodes(self, count: int) -> list[SimNode]:
        nodes = super().add_nodes(count)
        for node in nodes:
            node.capabilities = capabilities_for(node.slot)
        return nodes
