"""The agent economy (``--scenario economy``): seeded runs of delegations on the real cores.

Invariants:

* same seed and arguments, byte-identical JSON report, in two processes with different
  hash seeds;
* every provider kind is handled as the task cores say: a wrong, late, failed, garbled or
  missing answer is never taken as a good delivery, costs the provider its requesters'
  opinion, and the requester falls back to another candidate within its deadline;
* a caller's invalid input is refused by the provider and never lowers its trust;
* (Hypothesis, small economies) honest providers end ranked above always-failing ones by
  every honest requester within a bounded number of delegations, and a Sybil ring whose
  members fail every task gets no tasks once trust has formed.

The last two failed on the earlier trust model (each test's docstring gives the figures it
saw) and hold since three rules changed: EigenTrust weighs an opinion by its distance above
the 0.5 prior, direct experience moves the global view by its own distance from the prior,
and a node with no trust at all ranks after every trusted one and is not tried while any
candidate has some trust.

Examples are 8 to 30 nodes and a few hundred delegations, a few seconds of wall time each;
:data:`EXAMPLES` (``SIM_PROPERTY_EXAMPLES``) bounds the properties, and shrinking is off so
that a failure is reported at once with its figures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from meshnode.core.config import NodeConfig
from protocol import TaskCancel
from simulations.cli import parse_args, spec_from_args
from simulations.cluster import Cluster, SimNode
from simulations.economy import (
    BAD_KINDS,
    DELEGATION_DEADLINE_S,
    ROUTING_SHARE,
    Economy,
    capabilities_for,
    expected_answer,
    settled_from,
    simulate,
)
from simulations.network import LinkModel
from simulations.scenarios import Outcome, Spec

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = int(os.environ.get("SIM_PROPERTY_EXAMPLES", "4"))
"""Examples per property, a few seconds each (a failing one stops the run at once)."""
ROUNDS = 15
"""Delegations per requester in the properties: the bound within which trust must form."""
FORMED_ROUND = 8
"""Round after which the Sybil property asks that no request goes to the ring."""


def economy(**changes: Any) -> tuple[Outcome, Economy]:
    """A small economy on the local profile, joined through three seeds."""
    base: dict[str, Any] = {
        "scenario": "economy",
        "nodes": 16,
        "seed": 3,
        "profile": "local",
        "delegations": 240,
        "delegation_rate": 0.5,
        "bad_share": 0.25,
    }
    base.update(changes)
    return simulate(Spec(**base))


def kind_counters(result: dict[str, Any], kind: str) -> dict[str, int]:
    return result["counters"]["by_kind"].get(kind, {})


# ---------------------------------------------------------------------------- determinism


def _run_cli(tmp_path: Path, name: str, hash_seed: str, *args: str) -> bytes:
    out = tmp_path / f"{name}.json"
    result = subprocess.run(
        [sys.executable, "-m", "simulations", *args, "--json", str(out), "--quiet"],
        cwd=ROOT,
        env={**os.environ, "PYTHONHASHSEED": hash_seed},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode in (0, 2), result.stdout + result.stderr
    return out.read_bytes()


def test_same_seed_gives_byte_identical_json(tmp_path: Path) -> None:
    """Two processes, two hash seeds, one simulation seed: identical report bytes, with
    every provider kind, a Sybil ring and sloppy clients in the run."""
    args = (
        "--scenario", "economy", "--nodes", "14", "--seed", "21", "--profile", "local",
        "--delegations", "150", "--delegation-rate", "0.5", "--bad-share", "0.3",
        "--sybil", "2", "--bad-input", "0.1", "--loss", "0.02", "--no-timing",
    )  # fmt: skip
    first = _run_cli(tmp_path, "a", "1", *args)
    second = _run_cli(tmp_path, "b", "2", *args)
    assert first == second
    report = json.loads(first)
    assert report["results"]["delegations_started"] == 150
    assert report["results"]["kinds"]["sybil"] == 2


def test_another_seed_gives_another_economy() -> None:
    first, _ = economy(seed=1, delegations=60)
    second, _ = economy(seed=2, delegations=60)
    assert first.results["share_to_bad"] != second.results["share_to_bad"]


def test_cli_flags_reach_the_spec() -> None:
    argv = [
        "--scenario", "economy", "--delegations", "77", "--delegation-rate", "0.3",
        "--bad-share", "0.4", "--sybil", "5", "--bad-input", "0.2",
        "--bad-kinds", "lying,silent", "--seed", "1",
    ]  # fmt: skip
    args = parse_args(argv)
    spec = spec_from_args(args)
    assert (spec.delegations, spec.delegation_rate, spec.bad_share) == (77, 0.3, 0.4)
    assert (spec.sybil, spec.bad_input, spec.bad_kinds) == (5, 0.2, ("lying", "silent"))


@pytest.mark.parametrize(
    "changes",
    [
        {"bad_share": 1.0},
        {"bad_input": -0.1},
        {"delegations": -1},
        {"delegation_rate": 0.0},
        {"sybil": -2},
        {"bad_kinds": ("honest",)},
        {"bad_kinds": ()},
    ],
)
def test_bad_parameters_are_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Spec("economy", **changes)


# ---------------------------------------------------------------------------- model


def test_every_node_offers_two_distinct_capabilities() -> None:
    for slot in range(40):
        first, second = capabilities_for(slot)
        assert first.name != second.name
        assert first.input_schema is not None and first.output_schema is not None


def test_the_oracle_answer_depends_on_the_input() -> None:
    assert expected_answer({"text": "abc", "n": 1}) != expected_answer({"text": "abc", "n": 2})
    assert expected_answer({"text": "abc", "n": 1}) != expected_answer({"text": "ab", "n": 1})


def _point(round_: int, share: float | None) -> dict[str, Any]:
    return {"round": round_, "share_always_bad": share}


@pytest.mark.parametrize(
    ("shares", "settled"),
    [
        ([0.3, 0.1, 0.04, 0.0, 0.05], 2),
        ([0.3, 0.04, 0.2, 0.01], 3),
        ([0.3, 0.2, 0.1], None),
        ([None, 0.0, None, 0.0], 1),
        ([], None),
    ],
)
def test_routing_settles_at_the_first_round_that_stays_low(
    shares: list[float | None], settled: int | None
) -> None:
    """Routing convergence: the first round from which every later round sends at most
    5 % of its requests to always-bad providers (rounds without requests do not count)."""
    series = [_point(i, share) for i, share in enumerate(shares)]
    assert settled_from(series, ROUTING_SHARE) == settled


# ---------------------------------------------------------------------------- seeded, per kind


def test_honest_economy_completes_every_delegation() -> None:
    """With only honest providers every delegation completes with a good answer within
    its deadline (honest handlers fail 1 % of the time: the next candidate takes over)."""
    outcome, _ = economy(bad_share=0.0)
    tasks = outcome.results["tasks"]
    assert tasks["completed"] == 240
    assert tasks["completed_good"] == 240
    assert tasks["failed"] == tasks["deadline_missed"] == 0
    assert outcome.results["share_to_bad"]["all"] == 0.0


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_each_bad_kind_is_caught_and_routed_around(kind: str) -> None:
    """Each bad kind alone (a quarter of the providers): its answers are never taken as
    good, it is scored below the prior by every requester that used it, it gets a smaller
    share of requests in the last third of the run than in the first, and requesters fall
    back so that nearly all delegations still complete well. A lying provider's answer is
    well-formed, so the delegation ends with it (the oracle scores it afterwards): those
    are the only bad completions."""
    outcome, eco = economy(bad_kinds=(kind,), seed=5)
    r = outcome.results
    tasks = r["tasks"]
    assert r["kinds"][kind] >= 3
    lied = tasks["completed_by_kind"]["lying"]
    assert tasks["completed_bad_quality"] == lied
    assert tasks["completed_good"] + lied >= 0.95 * r["delegations_started"], tasks
    if kind in ("slow", "silent"):
        assert tasks["completed_by_kind"][kind] == 0, tasks
    series = [s for s in r["share_to_bad"]["series"] if s["requests"]]
    third = max(1, len(series) // 3)
    early = sum(s["to_bad"] for s in series[:third]) / sum(s["requests"] for s in series[:third])
    late = sum(s["to_bad"] for s in series[-third:]) / sum(s["requests"] for s in series[-third:])
    assert late < early, (early, late)
    bad_ids = {e.node_id for e in eco.nodes if e.kind == kind}
    held = [
        record
        for e in eco.nodes
        if e.requester and e.sim.core is not None
        for record in e.sim.core.ledger.records()
        if record.subject in bad_ids and record.observer == e.node_id
    ]
    assert held, "no requester holds an opinion of the bad providers"
    if kind != "flaky":  # a flaky provider delivers half the time
        assert all(record.score < 0.5 for record in held), [r.score for r in held]
    attempts = r["counters"]["total"]
    expected_failure = {
        "flaky": "attempt_failed_result",
        "slow": "attempt_execution_timeout",
        "silent": "attempt_response_timeout",
        "lying": "attempt_delivered",
    }[kind]
    assert attempts.get(expected_failure, 0) > 0
    if kind == "lying":
        assert tasks["completed_by_kind"]["lying"] == tasks["completed_bad_quality"] > 0


def test_sybil_garbage_is_refused_and_their_ring_opinions_spread() -> None:
    """Sybils' outputs break the output schema: every attempt with one ends as a refused
    result (never a delivery), and their 1.0 opinions of one another reach the honest
    nodes' ledgers through gossip.

    Seed 5: the test needs the sybils to be asked. Routing by distance (network
    coordinates and the latency factor) ranks the three sybils below the honest
    providers more often; over seeds 1-10 they get 0 to 7 requests, and seed 7, used
    before, gives them none. Seed 5 gives them the most."""
    outcome, eco = economy(bad_share=0.0, sybil=3, seed=5)
    r = outcome.results
    assert r["kinds"]["sybil"] == 3
    assert r["tasks"]["completed_by_kind"]["sybil"] == 0
    assert r["requests_by_kind"]["sybil"] > 0
    assert r["counters"]["total"]["attempt_failed_result"] >= 1
    ring = {e.node_id for e in eco.nodes if e.kind == "sybil"}
    for honest in eco.requesters:
        assert honest.sim.core is not None
        mates = [
            rec
            for rec in honest.sim.core.ledger.records()
            if rec.observer in ring and rec.subject in ring
        ]
        assert len(mates) == 6, honest.sim.name


def test_invalid_input_never_lowers_a_providers_trust() -> None:
    """A third of the requesters send invalid input: half of it breaks the input schema
    (providers refuse it, ``invalid_input``), half passes the schema but the handler
    refuses it (``InvalidInput``). Either ends the delegation with no verdict on the
    provider and no second provider asked (one request per delegation), and not one
    opinion or breaker failure comes of it. (Before the handler's refusal was its own
    outcome it was a failed result: a failure for the breaker and a 0 in the ledger.)"""
    outcome, eco = economy(bad_share=0.0, bad_input=0.34, seed=9)
    bad = outcome.results["bad_input"]
    assert bad["clients"] >= 4
    assert bad["delegations"] > 0
    assert bad["rejected_invalid_input"] == bad["requests"] == bad["delegations"]
    assert 0 < bad["refused_by_handler"] < bad["requests"]
    assert bad["opinions"] == bad["opinions_below_initial"] == 0
    for e in eco.requesters:
        if e.sends_bad_input:
            assert e.counters["breaker_opened"] == 0
            assert e.counters["opinions"] == 0
            assert e.sim.core is not None
            assert e.sim.core.direct_experience() == {}


def test_deadlines_hold_under_loss() -> None:
    """Under 5 % datagram loss (TCP legs retransmit) every delegation ends by its deadline;
    none is left running. (``deadline_missed`` counts delegations that ended after their
    deadline; one that ran out of time at its deadline, every candidate it tried having
    failed, counts as ``out_of_time``: before trust forms that happens on some seeds, on
    the earlier code too: of seeds 1–8 of this run, on 1, 2, 6 and 7 there (1–3 each),
    on 3, 4, 5 and 7 now that ties no longer follow the node ids.)"""
    outcome, eco = economy(loss=0.05, seed=4)
    r = outcome.results
    assert eco.live == 0
    assert r["tasks"]["duration_s_p99"] is not None
    assert r["tasks"]["duration_s_p99"] <= DELEGATION_DEADLINE_S
    assert r["tasks"]["deadline_missed"] == 0


# ---------------------------------------------------------------------------- properties


@st.composite
def small_economies(draw: Any) -> dict[str, Any]:
    nodes = draw(st.integers(8, 30))
    return {
        "nodes": nodes,
        "seed": draw(st.integers(0, 2**32 - 1)),
        "loss": draw(st.sampled_from([0.0, 0.01, 0.03])),
        "bad_share": draw(st.sampled_from([0.1, 0.2, 0.3])),
        "bad_kinds": tuple(
            draw(st.lists(st.sampled_from(("slow", "lying", "silent")), min_size=1, unique=True))
        ),
    }


PROPERTY_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    phases=(Phase.explicit, Phase.generate),
    suppress_health_check=[HealthCheck.too_slow],
)


def _property_run(case: dict[str, Any], **changes: Any) -> tuple[Outcome, Economy]:
    honest = case["nodes"] - round(case["bad_share"] * (case["nodes"] - 3))
    spec: dict[str, Any] = {
        **case,
        "profile": "local",
        "delegations": ROUNDS * max(1, honest),
        "delegation_rate": 0.5,
    }
    spec.update(changes)
    return economy(**spec)


@PROPERTY_SETTINGS
@given(small_economies())
def test_honest_providers_end_ranked_above_always_failing_ones(case: dict[str, Any]) -> None:
    """After ``ROUNDS`` delegations per requester, every honest requester ranks, for every
    capability, an honest provider first and every honest provider with any trust in its
    view above every always-failing provider.

    On the earlier trust model the first example failed: 8 nodes, seed 0, one slow
    provider: after 15 rounds all 7 honest requesters ranked it above an honest provider.
    Three rules fixed it, each found here: EigenTrust weighs an opinion by its distance
    above the 0.5 prior (a 0.45 opinion of a provider that failed is no vote of
    confidence); direct experience moves the global view by its own distance from the
    prior instead of averaging with it (which kept a once-failed provider at 0.225); and
    the router ranks a node with no trust at all after every trusted one (an idle lying
    provider outranked busy honest ones on availability: 12 of 15 requesters behind, 22
    nodes, seed 64700084).
    """
    outcome, eco = _property_run(case)
    behind = [e.sim.name for e in eco.requesters if e.up and not eco.ranks_honest_first(e)]
    assert not behind, (
        f"{len(behind)} of {len(eco.requesters)} honest requesters rank an always-failing "
        f"provider above an honest one after {ROUNDS} rounds: {behind}; "
        f"{outcome.results['trust_convergence']}"
    )


@PROPERTY_SETTINGS
@given(small_economies())
def test_a_sybil_ring_gets_no_tasks_once_trust_has_formed(case: dict[str, Any]) -> None:
    """A ring of Sybils (a fifth of the mesh, rating one another 1.0, delivering garbage)
    gets no request at all from round ``FORMED_ROUND`` on.

    On the earlier trust model the first example failed: 8 nodes, seed 0, a ring of 2 got
    30 of the 104 requests sent after round 8 (an honest requester's 0.45 opinion of a
    Sybil it tried once gave the ring inbound trust); with opinions weighted above the
    prior it still got 2 of 77, as fallbacks: a delegation now skips candidates with no
    trust while any candidate has some.
    """
    sybils = max(2, case["nodes"] // 5)
    outcome, _ = _property_run({**case, "bad_share": 0.0}, sybil=sybils)
    late = [s for s in outcome.results["share_to_bad"]["series"] if s["round"] > FORMED_ROUND]
    to_sybil = sum(s["to_sybil"] for s in late)
    requests = sum(s["requests"] for s in late)
    assert requests > 0
    assert to_sybil == 0, (
        f"the ring of {sybils} got {to_sybil} of the {requests} requests sent after round "
        f"{FORMED_ROUND}; ring trust {outcome.results['sybil_ring']['trust_mean_final']}"
    )


# ---------------------------------------------------------------------------- task channel


def _two_nodes(loss: float = 0.0) -> tuple[Cluster, SimNode, SimNode]:
    link = LinkModel(min_latency=0.001, mean_latency=0.003, loss=loss)
    cluster = Cluster(seed=5, config=NodeConfig.local(), link=link, strict=True)
    a, b = cluster.add_node(), cluster.add_node()
    cluster.start(a, [a])
    cluster.start(b, [a])
    cluster.run_until(5.0, stop=lambda: cluster.tracker.converged)
    return cluster, a, b


def _cancel(i: int) -> TaskCancel:
    return TaskCancel(f"t{i}", "test")


@pytest.mark.parametrize("loss", [0.0, 0.2])
def test_task_channel_delivers_in_order(loss: float) -> None:
    """Fifty frames sent back to back: each arrives once or its channel is reported
    broken (a handshake or a segment retransmitted past the TCP timeout), and those that
    arrive do so in the order sent (later frames wait for earlier ones). Without loss all
    arrive."""
    cluster, a, b = _two_nodes(loss)
    got: list[str] = []
    broken: list[str] = []
    start = cluster.now
    for i in range(50):
        cluster.task_send(
            a,
            b.node_id,
            (_cancel(i),),
            lambda dst, sender, msgs: got.extend(m.task_id for m in msgs),  # type: ignore[attr-defined]
            lambda src, peer: broken.append(peer),
        )
    cluster.run_until(start + 30.0)
    order = [int(task_id[1:]) for task_id in got]
    assert order == sorted(order)
    assert len(got) + len(broken) == 50
    if loss == 0.0:
        assert len(got) == 50
    else:
        assert len(got) >= 40


@pytest.mark.parametrize("fault", ["crash_before", "crash_in_flight", "partition", "unknown"])
def test_task_channel_breaks_like_a_connection(fault: str) -> None:
    """A channel to a crashed, unreachable or unknown node delivers nothing and tells the
    sender, once, within the TCP timeout."""
    cluster, a, b = _two_nodes()
    got: list[object] = []
    broken: list[str] = []
    target = "not-a-member" if fault == "unknown" else b.node_id
    if fault == "crash_before":
        cluster.crash(b)
    if fault == "partition":
        cluster.partition([[a], [b]])
    start = cluster.now
    cluster.task_send(
        a, target, (_cancel(1),), lambda *args: got.append(args), lambda s, p: broken.append(p)
    )
    if fault == "crash_in_flight":
        cluster.crash(b)
    cluster.run_until(start + cluster.config.tcp_timeout + 1.0)
    assert got == []
    assert broken == [target]


def test_task_channel_waits_for_a_paused_node() -> None:
    """Frames for a stalled process wait for it and arrive when it resumes."""
    cluster, a, b = _two_nodes()
    got: list[float] = []
    cluster.pause(b)
    start = cluster.now
    cluster.task_send(
        a, b.node_id, (_cancel(1),), lambda *args: got.append(cluster.now), lambda s, p: None
    )
    cluster.run_until(start + 3.0)
    assert got == []
    cluster.resume(b)
    assert len(got) == 1 and got[0] >= start + 3.0
