"""The JSON report: run parameters, a fixed summary, scenario details, and timing apart.

Theory of operation
-------------------
A report is a plain dict serialised with sorted keys, two-space indentation and floats
rounded where they are produced, so that **the same seed and arguments give byte-identical
JSON**. The one thing that differs between two runs of one spec is how long the machine
took: wall time and events per second live in the ``timing`` section, which
``--no-timing`` leaves out (the count of events is deterministic and stays in the body).
``tests/simulation/test_determinism.py`` runs the CLI twice in fresh processes, with
different ``PYTHONHASHSEED`` values, and compares the files byte for byte.

Layout::

    seed, scenario, nodes, command      how to replay the run
    config                              every NodeConfig field of the run
    network, crypto, wire, spec         the rest of the parameters
    summary                             the headline figures, the same keys for every
                                        scenario (null where a scenario does not measure
                                        it): membership convergence, rumor rounds and
                                        time, failure detection, false suspicions and
                                        deaths, traffic per node per second by channel,
                                        reconvergence after a partition heals
    results                             everything the scenario measured
    checks, violations, passed          liveness checks and safety invariant failures
    events, simulated_seconds           size of the run
    timing                              wall_s, events_per_s (absent with --no-timing)
"""

from __future__ import annotations

import dataclasses
import json
import shlex
from typing import Any

from meshnode.core.config import NodeConfig
from simulations.scenarios import Outcome, Spec, link_model

__all__ = ["build_report", "command_line", "dumps"]

_FLAG_FOR: dict[str, str] = {
    "duplicate": "--duplicate",
    "reorder": "--reorder",
    "seeds": "--seeds",
    "join_spread": "--join-spread",
    "bootstrap_limit": "--bootstrap-limit",
    "settle": "--settle",
    "crash_fraction": "--crash-fraction",
    "partition_s": "--partition-s",
    "churn_rate": "--churn-rate",
    "churn_crash": "--churn-crash",
    "quiet_s": "--quiet-s",
    "outcome_rate": "--outcome-rate",
    "byzantine": "--byzantine",
    "fake_members": "--fake-members",
    "flood_records": "--flood-records",
    "delegations": "--delegations",
    "delegation_rate": "--delegation-rate",
    "bad_share": "--bad-share",
    "sybil": "--sybil",
    "bad_input": "--bad-input",
}


def _num(x: float) -> str:
    return repr(x) if isinstance(x, float) and not x.is_integer() else str(int(x))


def command_line(spec: Spec) -> str:
    """The command that replays ``spec`` (every parameter that differs from the default,
    plus the core ones always)."""
    default = Spec(spec.scenario)
    parts = [
        "python -m simulations",
        f"--scenario {spec.scenario}",
        f"--nodes {spec.nodes}",
        f"--seed {spec.seed}",
        f"--loss {_num(spec.loss)}",
        f"--latency-ms {_num(spec.latency_min_ms)}:{_num(spec.latency_mean_ms)}",
        f"--duration {_num(spec.duration)}",
        f"--profile {spec.profile}",
        f"--crypto {spec.crypto}",
    ]
    for field, flag in _FLAG_FOR.items():
        value = getattr(spec, field)
        if value != getattr(default, field):
            parts.append(f"{flag} {_num(value)}")
    if spec.pause_s != default.pause_s:
        parts.append(f"--pause-s {_num(spec.pause_s[0])}:{_num(spec.pause_s[1])}")
    if spec.run_s != default.run_s:
        parts.append(f"--run-s {_num(spec.run_s[0])}:{_num(spec.run_s[1])}")
    if spec.start != default.start:
        parts.append(f"--start {spec.start}")
    if spec.topology != default.topology:
        parts.append(f"--topology {spec.topology}")
    if spec.attacks != default.attacks:
        parts.append(f"--attacks {','.join(spec.attacks) or 'none'}")
    if spec.bad_kinds != default.bad_kinds:
        parts.append(f"--bad-kinds {','.join(spec.bad_kinds)}")
    if spec.slow_mode != default.slow_mode:
        parts.append(f"--slow-mode {spec.slow_mode}")
    if not spec.lifeguard:
        parts.append("--lifeguard off")
    if spec.wire:
        parts.append("--wire")
    for key, value in spec.overrides:
        parts.append(f"--set {shlex.quote(f'{key}={value}')}")
    return " ".join(parts)


def _config_dict(config: NodeConfig) -> dict[str, Any]:
    out = dataclasses.asdict(config)
    out["seeds"] = list(config.seeds)
    return out


def _summary(spec: Spec, results: dict[str, Any]) -> dict[str, Any]:
    """The fixed headline figures, pulled out of a scenario's results."""
    source = results
    if spec.scenario == "slow-node":
        source = results.get("lifeguard_on", {})
    traffic = source.get("traffic") or source.get("traffic_after_heal") or {}
    per_node = traffic.get("per_node_per_s", {})
    if spec.scenario == "join":
        membership = results.get("membership_convergence_s")
    else:
        membership = (source.get("bootstrap") or {}).get("membership_s")
    rumor = None
    if spec.scenario == "rumor":
        rumor = {
            "rounds": results["applied_rounds"],
            "time_s": results["applied_s"],
            "heard_rounds": results["heard_rounds"],
            "heard_time_s": results["heard_s"],
            "analytic_rounds": results["analytic_rounds"],
        }
    detection = None
    if "failure_detection" in results:
        fd = results["failure_detection"]
        detection = {"first_node_s": fd["first_node_s"], "all_nodes_s": fd["all_nodes_s"]}
    reconvergence = None
    if "reconvergence" in results:
        rc = results["reconvergence"]
        reconvergence = {
            k: rc[k] for k in ("membership_s", "manifests_s", "ledger_s", "all_s", "budget_s")
        }
    if spec.scenario == "slow-node":
        false_suspicions: Any = {
            k: results[k]["false_suspicions_total"] for k in ("lifeguard_on", "lifeguard_off")
        }
        false_deaths: Any = {
            k: results[k]["false_deaths_total"] for k in ("lifeguard_on", "lifeguard_off")
        }
    else:
        false_suspicions = (results.get("false_suspicions") or {}).get("false")
        false_deaths = (results.get("false_deaths") or {}).get("false")
    return {
        "membership_convergence_s": membership,
        "rumor": rumor,
        "failure_detection": detection,
        "false_suspicions": false_suspicions,
        "false_deaths": false_deaths,
        "traffic_per_node_per_s": {
            "gossip": per_node.get("gossip"),
            "probe": per_node.get("probe"),
            "udp": per_node.get("udp"),
            "push_pull": per_node.get("push_pull"),
            "manifest_fetch": per_node.get("manifest_fetch"),
        },
        "reconvergence_after_heal": reconvergence,
    }


def build_report(
    spec: Spec,
    config: NodeConfig,
    outcome: Outcome,
    *,
    wall_s: float | None,
) -> dict[str, Any]:
    """The report dict; ``wall_s`` None leaves the timing section out."""
    link = link_model(spec)
    spec_dict = dataclasses.asdict(spec)
    spec_dict["overrides"] = {k: v for k, v in spec.overrides}
    spec_dict["pause_s"] = list(spec.pause_s)
    spec_dict["run_s"] = list(spec.run_s)
    report: dict[str, Any] = {
        "seed": spec.seed,
        "scenario": spec.scenario,
        "nodes": spec.nodes,
        "command": command_line(spec),
        "config": _config_dict(config),
        "network": link.describe(),
        "crypto": spec.crypto,
        "wire": spec.wire,
        "spec": spec_dict,
        "summary": _summary(spec, outcome.results),
        "results": outcome.results,
        "checks": outcome.checks,
        "violations": outcome.violations,
        "passed": not outcome.failed,
        "events": outcome.events,
        "simulated_seconds": outcome.simulated_seconds,
    }
    if wall_s is not None:
        report["timing"] = {
            "wall_s": round(wall_s, 3),
            "events_per_s": round(outcome.events / wall_s, 1) if wall_s > 0 else None,
        }
    return report


def dumps(report: dict[str, Any]) -> str:
    """Canonical JSON text of a report (sorted keys, newline-terminated)."""
    return json.dumps(report, indent=2, sort_keys=True, allow_nan=False) + "\n"
