"""Scenarios: what happens to the mesh, in phases, and what is measured.

Theory of operation
-------------------
Every scenario follows TigerBeetle's VOPR shape: build a cluster from one seed, bring it up,
inject faults while safety invariants are checked from outside the nodes (the
:class:`~simulations.metrics.Tracker` and the cluster check every effect), then stop the
faults and require convergence within a time budget (a *liveness check*). Each returns a
JSON-ready dict; :mod:`simulations.report` wraps it with the run parameters.

Bootstrap (all but ``join`` use it as a preamble): the first ``seeds`` nodes start at time
0, every other node at a random instant in ``[0, join_spread)``, each joining through the
seeds; the run continues until membership, manifests and the ledger have converged (or the
bootstrap limit passes), then for ``settle`` more seconds, so that the broadcast queues
left full by the join drain before anything is measured.

* ``join`` — the bootstrap itself is measured: time until every node sees every other
  alive, holds every manifest and the same ledger. ``duration`` bounds it.
* ``crash`` — ``crash_fraction`` of the non-seed nodes crash at once; failure detection
  times (first suspicion, first and last ``Dead``), false positives, traffic.
* ``partition-heal`` — the nodes split into two random halves for ``partition_s``
  seconds; each half publishes a manifest update and records opinions; then the network
  heals and the time to full reconvergence (membership, manifests, ledger) is measured
  against the budget of two push-pull intervals.
* ``churn`` — for ``duration`` seconds nodes join (fresh identities) and leave
  (gracefully, or by crashing with probability ``churn_crash``) as a Poisson process of
  ``churn_rate`` events per second; then a quiet period must bring convergence back.
* ``rumor`` — one node publishes a new manifest version; the time at which every other
  node first hears the rumor (asks for the manifest) and applies it, in seconds and in
  gossip rounds, against the push-gossip bound ``log_{f+1} n + ln n / f``. The outcome
  workload keeps running (``--outcome-rate 0`` for an idle mesh): on an idle mesh a node
  whose broadcast queue was empty forwards a fresh rumor at once (its gossip timer lapsed
  while there was nothing to send), so a rumor crosses an idle mesh at network speed,
  while a busy mesh forwards it on the gossip cadence.
* ``slow-node`` — one node stalls again and again (pauses of ``pause_s``, runs of
  ``run_s``, both uniform; by default 0.1–2 s each, a process starved about half the time,
  in stalls both shorter and longer than the probe interval) under the configured loss.
  With ``slow_mode = "lag"`` the node is slow rather than stalled: everything that arrives
  for it is delayed by ``U(pause_s)`` while its timers keep running, so it sees acks too
  late and accuses healthy peers — the failure Lifeguard's local health is built for. The
  run is done twice with the same fault schedule, Lifeguard on and off, and false
  suspicions and deaths are compared.
* ``steady`` — a converged mesh with no faults: after the bootstrap, the run waits until
  every broadcast queue is empty (the join's rumors have all been sent), then measures the
  base cost of membership per node over ``duration`` seconds (probes, push-pull, and the
  gossip of the task-outcome workload, if ``outcome_rate`` is not 0).
* ``byzantine`` — after the bootstrap, ``byzantine`` (a fraction) of the non-seed nodes
  turn hostile for ``duration`` seconds: members with real keys that keep running their
  cores and, beside them, forge accusations, flood fake members and ledger records, and
  replay honest packets (``attacks``; see :mod:`simulations.byzantine`). Judged from
  outside: honest nodes declared dead by honest nodes while alive and reachable, the peak
  member and record counts of honest nodes against the bounds named after the caps, and
  the time for the honest nodes to converge again once the attack stops (budget
  ``quiet_s``).
* ``economy`` — after the bootstrap, an agent economy runs on every node's ``NodeCore``:
  requesters delegate (Poisson arrivals, ``delegations`` in all) to providers of several
  kinds, honest and bad, and a Sybil ring; judged by trust and routing convergence, the
  share of requests to bad providers per round, and what invalid input does to trust (see
  :mod:`simulations.economy`).

Lifeguard *off* is approximated with the configuration the core offers:
``awareness_max_multiplier = 1`` (no local health scaling of probe timing) and
``suspicion_max_timeout_mult = 1`` (suspicion timeouts fixed at their minimum, so
confirmations cannot shorten or lengthen them). The buddy system (a suspect gets its
``Suspect`` with the ping) and nacks cannot be switched off.

A background workload of task outcomes (``outcome_rate`` per second over the whole
mesh, observer and subject picked at random among running nodes, quality uniform) keeps the
ledger busy during fault phases, so that its convergence is measured too.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import random
from collections.abc import Callable
from typing import Any, Final

from meshnode.core import timing
from meshnode.core.config import NodeConfig
from simulations.byzantine import ATTACKS, AttackPlan, run_attack
from simulations.cluster import Cluster, SimNode, Status
from simulations.engine import derive_rng
from simulations.epidemic import mean_field_curve, rounds_bound
from simulations.metrics import Accusations, Detection
from simulations.network import LinkModel, Traffic
from simulations.progress import Progress

__all__ = [
    "SCENARIOS",
    "STARTS",
    "Outcome",
    "Spec",
    "lifeguard_config",
    "make_config",
    "run_scenario",
]

SCENARIOS = (
    "join",
    "crash",
    "partition-heal",
    "churn",
    "rumor",
    "slow-node",
    "steady",
    "byzantine",
    "economy",
    "coordinates",
)
STARTS = ("join", "converged")
TOPOLOGIES = ("flat", "two-regions")
"""Link models: ``flat`` (every link alike, ``--latency-ms``) or ``two-regions`` (hosts
dealt into two regions: about 1 ms round trip inside one, 40 ms between; see
:func:`link_model`)."""
TWO_REGIONS_MIN_MS: Final = 0.25
"""two-regions: smallest one-way delay inside a region, ms."""
TWO_REGIONS_MEAN_MS: Final = 0.5
"""two-regions: mean one-way delay inside a region, ms (round trip about 1 ms; the
exponential tail above the minimum is the jitter)."""
TWO_REGIONS_SPREAD_MS: Final = 0.1
"""two-regions: range of each host's access delay, ms (hosts of a region differ a little)."""
TWO_REGIONS_BETWEEN_MS: Final = 19.5
"""two-regions: extra one-way delay between the regions, ms (round trip about 40 ms)."""
COORDINATE_SAMPLE_EVERY_S: Final = 10.0
"""coordinates: seconds between two measurements of the coordinates' error."""
COORDINATE_MAX_PAIRS: Final = 20_000
"""coordinates: most node pairs measured (all of them up to 200 nodes; a seeded sample
above, so a 10,000-node run does not compute 50 million distances)."""
COORDINATE_ERROR_GOAL: Final = 0.2
"""coordinates: the median relative round-trip error the run must reach by its end."""


@dataclasses.dataclass(frozen=True, slots=True)
class Spec:
    """Everything that determines a run. Same spec, same seed: same run, bit for bit."""

    scenario: str
    nodes: int = 50
    seed: int = 1
    loss: float = 0.0
    latency_min_ms: float = 0.5
    latency_mean_ms: float = 1.0
    duplicate: float = 0.0
    reorder: float = 0.0
    duration: float = 60.0
    """Seconds of the measured phase (for ``join``: the whole run)."""
    profile: str = "lan"
    crypto: str = "fast"
    lifeguard: bool = True
    wire: bool = False
    seeds: int = 3
    join_spread: float = 1.0
    bootstrap_limit: float = 600.0
    settle: float = 5.0
    topology: str = "flat"
    """The link model, one of :data:`TOPOLOGIES`."""
    crash_fraction: float = 0.1
    partition_s: float = 30.0
    churn_rate: float = 1.0
    churn_crash: float = 0.0
    quiet_s: float = 60.0
    outcome_rate: float = 1.0
    pause_s: tuple[float, float] = (0.1, 2.0)
    run_s: tuple[float, float] = (0.1, 2.0)
    slow_mode: str = "pause"
    """slow-node: ``pause`` (stalls of ``pause_s`` between runs of ``run_s``) or ``lag``
    (everything arriving at the node is delayed by ``U(pause_s)``, its timers run)."""
    overrides: tuple[tuple[str, Any], ...] = ()
    start: str = "join"
    """How the mesh comes up before the measured phase (not for ``join``): ``join``
    (every node joins through the seeds; the bootstrap preamble) or ``converged`` (every
    node starts already knowing every other alive, with its manifest: the steady state,
    for meshes too large to simulate a join storm of)."""
    byzantine: float = 0.1
    """byzantine: the fraction of nodes that turn hostile (at least one when above 0;
    never a seed node)."""
    attacks: tuple[str, ...] = ATTACKS
    """byzantine: what the hostile nodes do (see :data:`simulations.byzantine.ATTACKS`)."""
    fake_members: int = 2000
    """byzantine: fresh identities each hostile node invents (fake-members)."""
    flood_records: int = 2000
    """byzantine: records from fresh keys each hostile node signs (ledger-flood)."""
    delegations: int = 2000
    """economy: delegations started in all (see :mod:`simulations.economy`)."""
    delegation_rate: float = 0.2
    """economy: delegations per second per requester (Poisson arrivals)."""
    bad_share: float = 0.2
    """economy: share of the providers that are bad (flaky, slow, lying, silent in turn)."""
    sybil: int = 0
    """economy: size of the Sybil ring (fresh members rating each other, delivering
    garbage)."""
    bad_input: float = 0.0
    """economy: share of the requesters whose every input breaks the input schema."""
    bad_kinds: tuple[str, ...] = ("flaky", "slow", "lying", "silent")
    """economy: the kinds handed out to the bad providers, in turn."""

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {self.scenario!r}; pick one of {SCENARIOS}")
        if self.nodes < 1:
            raise ValueError("nodes must be at least 1")
        if self.seeds < 1:
            raise ValueError("seeds must be at least 1")
        if self.duration <= 0:
            raise ValueError("duration must be positive")
        if self.profile not in ("lan", "wan", "local"):
            raise ValueError(f"profile must be lan, wan or local, got {self.profile!r}")
        if self.slow_mode not in ("pause", "lag"):
            raise ValueError(f"slow_mode must be pause or lag, got {self.slow_mode!r}")
        if self.topology not in TOPOLOGIES:
            raise ValueError(f"topology must be one of {TOPOLOGIES}, got {self.topology!r}")
        if self.start not in STARTS:
            raise ValueError(f"start must be join or converged, got {self.start!r}")
        if not 0.0 <= self.byzantine < 1.0:
            raise ValueError(f"byzantine must be a fraction in [0, 1), got {self.byzantine}")
        unknown = [a for a in self.attacks if a not in ATTACKS]
        if unknown:
            raise ValueError(f"unknown attacks {unknown}; pick from {ATTACKS}")
        if self.fake_members < 0 or self.flood_records < 0:
            raise ValueError("fake_members and flood_records must not be negative")
        if self.delegations < 0 or self.sybil < 0:
            raise ValueError("delegations and sybil must not be negative")
        if not 0.0 < self.delegation_rate < math.inf:
            raise ValueError(f"delegation_rate must be positive, got {self.delegation_rate}")
        if not 0.0 <= self.bad_share < 1.0 or not 0.0 <= self.bad_input < 1.0:
            raise ValueError("bad_share and bad_input must be fractions in [0, 1)")
        bad_kinds = ("flaky", "slow", "lying", "silent")
        if not self.bad_kinds or any(k not in bad_kinds for k in self.bad_kinds):
            raise ValueError(f"bad_kinds must be some of {bad_kinds}, got {self.bad_kinds}")
        if self.start == "converged" and self.scenario == "join":
            raise ValueError("the join scenario measures the join: it cannot start converged")


def make_config(spec: Spec, *, lifeguard: bool | None = None) -> NodeConfig:
    """The ``NodeConfig`` of a run: the profile, the overrides, then the Lifeguard switch."""
    factory = {"lan": NodeConfig.lan, "wan": NodeConfig.wan, "local": NodeConfig.local}
    config = factory[spec.profile](**dict(spec.overrides))
    on = spec.lifeguard if lifeguard is None else lifeguard
    return config if on else lifeguard_config(config, on=False)


def lifeguard_config(config: NodeConfig, *, on: bool) -> NodeConfig:
    """``config`` with Lifeguard's switchable parts off (see the module docstring)."""
    if on:
        return config
    return dataclasses.replace(config, awareness_max_multiplier=1, suspicion_max_timeout_mult=1)


@dataclasses.dataclass(slots=True)
class Outcome:
    """What a scenario run produced."""

    results: dict[str, Any]
    """Scenario figures (JSON-ready)."""
    checks: list[dict[str, Any]]
    """Liveness checks: name, passed, detail."""
    violations: list[str]
    """Failed safety invariants."""
    events: int
    simulated_seconds: float
    curve: dict[str, Any] | None = None
    """Dissemination data for the plot (rumor scenario)."""

    @property
    def failed(self) -> bool:
        return bool(self.violations) or any(not c["passed"] for c in self.checks)


# ---------------------------------------------------------------------------- helpers


def _r(x: float | None, digits: int = 6) -> float | None:
    return None if x is None else round(x, digits)


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in [0, 100]) of ``values``; None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


def stats(values: list[float]) -> dict[str, float | int | None]:
    """count, p50, p99 and max of ``values``, rounded."""
    return {
        "count": len(values),
        "p50": _r(percentile(values, 50)),
        "p99": _r(percentile(values, 99)),
        "max": _r(max(values) if values else None),
    }


def link_model(spec: Spec) -> LinkModel:
    """The network of a run: ``--latency-ms`` on every link (``flat``), or two regions."""
    if spec.topology == "two-regions":
        return LinkModel(
            min_latency=TWO_REGIONS_MIN_MS / 1e3,
            mean_latency=TWO_REGIONS_MEAN_MS / 1e3,
            spread=TWO_REGIONS_SPREAD_MS / 1e3,
            regions=2,
            region_latency=TWO_REGIONS_BETWEEN_MS / 1e3,
            loss=spec.loss,
            duplicate=spec.duplicate,
            reorder=spec.reorder,
        )
    return LinkModel(
        min_latency=spec.latency_min_ms / 1e3,
        mean_latency=spec.latency_mean_ms / 1e3,
        loss=spec.loss,
        duplicate=spec.duplicate,
        reorder=spec.reorder,
    )


def coordinate_error(cluster: Cluster, rng: random.Random) -> dict[str, Any]:
    """How well the live nodes' coordinates predict the network's mean round trips: the
    relative error ``|estimated - expected| / expected`` over every pair of live nodes (a
    sample of ``COORDINATE_MAX_PAIRS`` when there are more), as median and p90, and the
    median within and between regions."""
    nodes = [n for n in cluster.live_nodes() if n.core is not None]
    pairs: list[tuple[SimNode, SimNode]]
    if len(nodes) * (len(nodes) - 1) // 2 <= COORDINATE_MAX_PAIRS:
        pairs = [(a, b) for i, a in enumerate(nodes) for b in nodes[i + 1 :]]
    else:
        pairs = []
        for _ in range(COORDINATE_MAX_PAIRS):
            a, b = rng.sample(nodes, 2)
            pairs.append((a, b))
    network = cluster.network
    errors: list[float] = []
    inside: list[float] = []
    between: list[float] = []
    for a, b in pairs:
        assert a.core is not None and b.core is not None
        expected = network.expected_rtt(a.slot, b.slot)
        estimated = a.core.coordinate().distance_s(b.core.coordinate())
        error = abs(estimated - expected) / expected
        errors.append(error)
        (inside if network.region(a.slot) == network.region(b.slot) else between).append(error)
    return {
        "pairs": len(errors),
        "median_relative_error": _r(percentile(errors, 50), 4),
        "p90_relative_error": _r(percentile(errors, 90), 4),
        "median_inside_region": _r(percentile(inside, 50), 4),
        "median_between_regions": _r(percentile(between, 50), 4),
    }


class _Run:
    """Shared machinery of one scenario run on one cluster."""

    def __init__(self, spec: Spec, config: NodeConfig, progress: Progress | None) -> None:
        self.spec = spec
        self.config = config
        link = link_model(spec)
        self.cluster = Cluster(
            seed=spec.seed,
            config=config,
            link=link,
            crypto=spec.crypto,
            wire=spec.wire,
            strict=False,
        )
        self.faults = derive_rng(spec.seed, "faults")
        self.progress = progress
        if progress is not None:
            progress.bind(self.cluster)
        self.checks: list[dict[str, Any]] = []
        self.seed_nodes: list[SimNode] = []
        self._outcomes_until = -math.inf

    # -- running

    def run_until(self, until: float, label: str, stop: Callable[[], bool] | None = None) -> bool:
        progress = self.progress
        if progress is not None:
            progress.phase(label, self.cluster.now, until, open_ended=stop is not None)
        done = self.cluster.run_until(
            until, stop=stop, on_progress=progress.update if progress else None
        )
        if progress is not None:
            progress.finish()
        return done

    def check(self, name: str, passed: bool, detail: str) -> None:
        self.checks.append({"name": name, "passed": passed, "detail": detail})

    # -- bootstrap

    def start_nodes(self, count: int) -> list[SimNode]:
        cluster = self.cluster
        nodes = [cluster.add_node() for _ in range(count)]
        self.seed_nodes = nodes[: self.spec.seeds]
        for i, node in enumerate(nodes):
            delay = 0.0 if i < self.spec.seeds else self.faults.uniform(0.0, self.spec.join_spread)
            cluster.engine.at(cluster.now + delay, self._start, node)
        return nodes

    def _start(self, node: SimNode) -> None:
        self.cluster.start(node, self.seed_nodes)

    def bootstrap(self) -> dict[str, Any]:
        """Start the mesh and wait for convergence (plus the settle time), or, with
        ``start = "converged"``, start it converged (no settle: nothing is in flight)."""
        spec = self.spec
        cluster = self.cluster
        tracker = cluster.tracker
        if spec.start == "converged":
            return self.start_converged()
        self.start_nodes(spec.nodes)
        self.run_until(spec.join_spread, "start")  # every node has started
        tracker.mark(origin=0.0)
        self.run_until(spec.bootstrap_limit, "bootstrap", stop=lambda: tracker.converged)
        converged = tracker.converged
        self.check(
            "bootstrap_converged",
            converged,
            f"membership, manifests and ledger converged at t={cluster.now:.3f}s"
            if converged
            else f"not converged within {spec.bootstrap_limit}s",
        )
        out = self._bootstrap_report("join", converged)
        if spec.settle > 0:
            self.run_until(cluster.now + spec.settle, "settle")
        return out

    def add_nodes(self, count: int) -> list[SimNode]:
        """Add ``count`` nodes to the cluster, not started (a scenario may equip them)."""
        return [self.cluster.add_node() for _ in range(count)]

    def start_converged(self) -> dict[str, Any]:
        """Every node starts at time 0 already converged (see ``Cluster.start_converged``)."""
        cluster = self.cluster
        tracker = cluster.tracker
        nodes = self.add_nodes(self.spec.nodes)
        self.seed_nodes = nodes[: self.spec.seeds]
        cluster.start_converged(nodes, self.seed_nodes)
        # N² table slots that live for the whole run: keep the cyclic garbage collector
        # from walking them again at every full collection.
        gc.freeze()
        tracker.mark()
        converged = tracker.converged
        self.check(
            "bootstrap_converged",
            converged,
            "started converged" if converged else "a converged start is not converged",
        )
        return self._bootstrap_report("converged", converged)

    def _bootstrap_report(self, start: str, converged: bool) -> dict[str, Any]:
        tracker = self.cluster.tracker
        return {
            "start": start,
            "converged": converged,
            "membership_s": _r(tracker.since_mark("membership")),
            "manifests_s": _r(tracker.since_mark("manifests")),
            "converged_s": _r(tracker.since_mark("all")),
            "wrong_member_views": tracker.wrong_views,
            "wrong_manifest_copies": tracker.wrong_manifests,
            "ledger_missing_copies": tracker.ledger_missing,
        }

    # -- workload

    def outcomes(self, until: float) -> None:
        """Record task outcomes at ``outcome_rate`` per second until ``until``."""
        rate = self.spec.outcome_rate
        self._outcomes_until = until
        if rate > 0:
            rng = self.cluster.workload_rng
            self.cluster.engine.after(rng.expovariate(rate), self._outcome)

    def _outcome(self) -> None:
        cluster = self.cluster
        if cluster.now >= self._outcomes_until:
            return
        rng = cluster.workload_rng
        pair = cluster.random_pair()
        if pair is not None:
            cluster.record_outcome(pair[0], pair[1], round(rng.random(), 3))
        cluster.engine.after(rng.expovariate(self.spec.outcome_rate), self._outcome)

    # -- measurements

    def traffic_window(self, before: Traffic, start: float, live: list[int]) -> dict[str, Any]:
        """Per-node, per-second traffic since ``before`` (``live``: live counts sampled)."""
        cluster = self.cluster
        window = cluster.now - start
        delta = cluster.traffic.minus(before)
        mean_live = sum(live) / len(live) if live else 0.0
        scale = 1.0 / (mean_live * window) if window > 0 and mean_live > 0 else 0.0
        return traffic_summary(delta, window, mean_live, scale)

    def accusations(self) -> dict[str, Any]:
        tracker = self.cluster.tracker
        return {
            "false_suspicions": accusation_dict(tracker.suspicions, self.cluster),
            "false_deaths": accusation_dict(tracker.deaths, self.cluster),
        }

    def finish(self, results: dict[str, Any], curve: dict[str, Any] | None = None) -> Outcome:
        cluster = self.cluster
        cluster.check_final_state()
        results.setdefault("live_nodes", cluster.tracker.live_count)
        return Outcome(
            results=results,
            checks=self.checks,
            violations=list(cluster.violations),
            events=cluster.engine.events,
            simulated_seconds=_r(cluster.now) or 0.0,
            curve=curve,
        )

    def sample_live(self, samples: list[int], every: float, until: float) -> None:
        """Sample the live-node count every ``every`` seconds (for per-node averages)."""
        cluster = self.cluster

        def sample() -> None:
            samples.append(cluster.tracker.live_count)
            if cluster.now + every <= until:
                cluster.engine.after(every, sample)

        sample()


def traffic_summary(
    delta: Traffic, window: float, mean_live: float, scale: float
) -> dict[str, Any]:
    """Traffic counters over a window, totals and per node per second."""

    def rate(x: int) -> float | None:
        return _r(x * scale, 3)

    udp_bytes = delta.probe_bytes + delta.gossip_bytes
    return {
        "window_s": _r(window),
        "mean_live_nodes": _r(mean_live, 3),
        "per_node_per_s": {
            "udp": {
                "packets": rate(delta.probe_packets + delta.gossip_packets),
                "messages": rate(delta.probe_messages + delta.gossip_messages),
                "bytes": rate(udp_bytes),
            },
            "gossip": {
                "packets": rate(delta.gossip_packets),
                "messages": rate(delta.gossip_messages),
                "bytes": rate(delta.gossip_bytes),
            },
            "probe": {
                "packets": rate(delta.probe_packets),
                "messages": rate(delta.probe_messages),
                "bytes": rate(delta.probe_bytes),
            },
            "push_pull": {
                "exchanges": rate(delta.push_pull_exchanges),
                "frames": rate(delta.push_pull_frames),
                "bytes": rate(delta.push_pull_bytes),
                # Exchanges are rare (every push_pull_interval, minutes at scale), so over a
                # short window the rate is noisy; the size of one exchange is not.
                "bytes_per_exchange": _r(delta.push_pull_bytes / delta.push_pull_exchanges, 1)
                if delta.push_pull_exchanges
                else None,
            },
            "manifest_fetch": {
                "requests": rate(delta.fetch_requests),
                "bytes": rate(delta.fetch_bytes),
            },
        },
        "totals": delta.as_dict(),
    }


def accusation_dict(tally: Accusations, cluster: Cluster) -> dict[str, Any]:
    return {
        "false": tally.false,
        "partitioned": tally.partitioned,
        "correct": tally.correct,
        "false_views": tally.false_views,
        "false_by_node": {
            cluster.nodes[slot].name: count for slot, count in tally.false_subjects.items()
        },
        "false_by_accuser": {
            cluster.nodes[slot].name: count for slot, count in tally.false_accusers.items()
        },
    }


def detection_dict(detections: list[Detection]) -> dict[str, Any]:
    def rel(t: float | None, d: Detection) -> float | None:
        return None if t is None else t - d.crashed_at

    first_suspect = [x for d in detections if (x := rel(d.first_suspect, d)) is not None]
    first_dead = [x for d in detections if (x := rel(d.first_dead, d)) is not None]
    all_nodes = [x for d in detections if (x := rel(d.all_gone, d)) is not None]
    return {
        "crashes": len(detections),
        "detected_by_all": len(all_nodes),
        "first_suspicion_s": stats(first_suspect),
        "first_node_s": stats(first_dead),
        "all_nodes_s": stats(all_nodes),
    }


# ---------------------------------------------------------------------------- scenarios


def run_join(spec: Spec, progress: Progress | None) -> Outcome:
    run = _Run(spec, make_config(spec), progress)
    cluster = run.cluster
    tracker = cluster.tracker
    samples: list[int] = []
    run.start_nodes(spec.nodes)
    run.sample_live(samples, 1.0, spec.duration)
    run.outcomes(min(spec.duration, spec.join_spread + 10.0))
    before = cluster.traffic.copy()
    run.run_until(min(spec.join_spread, spec.duration), "start")
    tracker.mark(origin=0.0)
    run.run_until(spec.duration, "join", stop=lambda: tracker.converged)
    converged = tracker.converged
    run.check(
        "join_converged",
        converged,
        f"converged at t={cluster.now:.3f}s"
        if converged
        else f"not converged within {spec.duration}s ({tracker.wrong_views} wrong member views)",
    )
    results = {
        "membership_convergence_s": _r(tracker.since_mark("membership")),
        "manifests_convergence_s": _r(tracker.since_mark("manifests")),
        "ledger_convergence_s": _r(tracker.since_mark("ledger")),
        "convergence_s": _r(tracker.since_mark("all")),
        "wrong_member_views_at_end": tracker.wrong_views,
        "wrong_manifest_copies_at_end": tracker.wrong_manifests,
        "traffic": run.traffic_window(before, 0.0, samples),
        **run.accusations(),
    }
    return run.finish(results)


def run_crash(spec: Spec, progress: Progress | None) -> Outcome:
    run = _Run(spec, make_config(spec), progress)
    cluster = run.cluster
    tracker = cluster.tracker
    boot = run.bootstrap()
    start = cluster.now
    end = start + spec.duration
    candidates = [n for n in cluster.live_nodes() if n not in run.seed_nodes]
    count = min(len(candidates), max(1, round(spec.crash_fraction * spec.nodes)))
    victims = sorted(run.faults.sample(candidates, count), key=lambda n: n.slot)
    samples: list[int] = []
    before = cluster.traffic.copy()
    tracker.reset_accusations()
    for node in victims:
        cluster.crash(node)
    tracker.mark()
    run.sample_live(samples, 1.0, end)
    run.outcomes(end)
    run.run_until(end, "crash")
    detection = detection_dict(tracker.detections)
    run.check(
        "crashes_detected",
        detection["detected_by_all"] == len(victims),
        f"{detection['detected_by_all']} of {len(victims)} crashes seen by every live node "
        f"within {spec.duration}s",
    )
    run.check(
        "membership_converged",
        tracker.membership_converged,
        f"{tracker.wrong_views} wrong member views at the end",
    )
    results = {
        "bootstrap": boot,
        "crashed": [n.name for n in victims],
        "failure_detection": detection,
        "membership_convergence_s": _r(tracker.since_mark("membership")),
        "traffic": run.traffic_window(before, start, samples),
        **run.accusations(),
    }
    return run.finish(results)


def run_partition_heal(spec: Spec, progress: Progress | None) -> Outcome:
    run = _Run(spec, make_config(spec), progress)
    cluster = run.cluster
    tracker = cluster.tracker
    boot = run.bootstrap()
    live = cluster.live_nodes()
    order = list(live)
    run.faults.shuffle(order)
    half = len(order) // 2
    side_a = sorted(order[:half], key=lambda n: n.slot)
    side_b = sorted(order[half:], key=lambda n: n.slot)
    split_at = cluster.now
    heal_at = split_at + spec.partition_s
    samples: list[int] = []
    run.sample_live(samples, 1.0, heal_at + spec.duration)
    tracker.reset_accusations()
    cluster.partition([side_a, side_b])
    run.outcomes(heal_at)
    # Each side changes a manifest while cut off from the other.
    for side in (side_a, side_b):
        if side:
            node = side[run.faults.randrange(len(side))]
            cluster.engine.at(split_at + spec.partition_s / 2, _publish_if_up, cluster, node)
    run.run_until(heal_at, "partition")
    during = {
        "membership_converged_at_heal": tracker.membership_converged,
        **run.accusations(),
    }
    cluster.heal()
    tracker.mark()
    before = cluster.traffic.copy()
    n = len(cluster.live_nodes())
    interval = timing.push_pull_interval(cluster.config.push_pull_interval, n)
    budget = 2 * interval
    run.run_until(heal_at + spec.duration, "heal", stop=lambda: tracker.converged)
    reconvergence = {
        "membership_s": _r(tracker.since_mark("membership")),
        "manifests_s": _r(tracker.since_mark("manifests")),
        "ledger_s": _r(tracker.since_mark("ledger")),
        "all_s": _r(tracker.since_mark("all")),
        "push_pull_interval_s": _r(interval),
        "budget_s": _r(budget),
        "within_budget": tracker.since_mark("all") is not None
        and (tracker.since_mark("all") or 0.0) <= budget,
        "unconverged": {
            "wrong_member_views": tracker.wrong_views,
            "wrong_manifest_copies": tracker.wrong_manifests,
            "ledger_missing_copies": tracker.ledger_missing,
        },
    }
    for kind in ("membership", "manifests", "ledger"):
        took = tracker.since_mark(kind)
        run.check(
            f"{kind}_reconverged",
            took is not None,
            f"{kind} reconverged {took:.3f}s after the heal"
            if took is not None
            else f"{kind} not reconverged {spec.duration}s after the heal",
        )
    results = {
        "bootstrap": boot,
        "sides": [len(side_a), len(side_b)],
        "partition_s": spec.partition_s,
        "during_partition": during,
        "reconvergence": reconvergence,
        "traffic_after_heal": run.traffic_window(
            before, heal_at, samples[-max(1, len(samples) // 2) :]
        ),
        **run.accusations(),
    }
    return run.finish(results)


def _publish_if_up(cluster: Cluster, node: SimNode) -> None:
    if node.status is Status.RUNNING:
        cluster.publish_manifest(node)


def run_churn(spec: Spec, progress: Progress | None) -> Outcome:
    run = _Run(spec, make_config(spec), progress)
    cluster = run.cluster
    tracker = cluster.tracker
    boot = run.bootstrap()
    start = cluster.now
    end = start + spec.duration
    samples: list[int] = []
    run.sample_live(samples, 1.0, end)
    before = cluster.traffic.copy()
    tracker.reset_accusations()
    run.outcomes(end)
    tally = {"joins": 0, "leaves": 0, "crashes": 0}

    def churn() -> None:
        if cluster.now >= end:
            return
        rng = run.faults
        departing = [
            n
            for n in cluster.live_nodes()
            if n not in run.seed_nodes and n.status is Status.RUNNING
        ]
        if rng.random() < 0.5 or not departing:
            node = cluster.add_node()
            cluster.start(node, run.seed_nodes)
            tally["joins"] += 1
        else:
            node = departing[rng.randrange(len(departing))]
            if rng.random() < spec.churn_crash:
                cluster.crash(node)
                tally["crashes"] += 1
            else:
                cluster.leave(node)
                tally["leaves"] += 1
        cluster.engine.after(rng.expovariate(spec.churn_rate), churn)

    if spec.churn_rate > 0:
        cluster.engine.after(run.faults.expovariate(spec.churn_rate), churn)
    run.run_until(end, "churn")
    traffic = run.traffic_window(before, start, samples)
    tracker.mark()
    run.run_until(end + spec.quiet_s, "quiet", stop=lambda: tracker.converged)
    took = tracker.since_mark("membership")
    run.check(
        "membership_converged_after_churn",
        took is not None,
        f"membership converged {took:.3f}s after churn stopped"
        if took is not None
        else f"membership not converged {spec.quiet_s}s after churn stopped",
    )
    results = {
        "bootstrap": boot,
        "churn": {**tally, "rate_per_s": spec.churn_rate},
        "convergence_after_churn": {
            "membership_s": _r(took),
            "manifests_s": _r(tracker.since_mark("manifests")),
            "ledger_s": _r(tracker.since_mark("ledger")),
            "all_s": _r(tracker.since_mark("all")),
        },
        "traffic": traffic,
        **run.accusations(),
    }
    return run.finish(results)


def run_rumor(spec: Spec, progress: Progress | None) -> Outcome:
    run = _Run(spec, make_config(spec), progress)
    cluster = run.cluster
    tracker = cluster.tracker
    boot = run.bootstrap()
    candidates = [
        n for n in cluster.live_nodes() if n not in run.seed_nodes
    ] or cluster.live_nodes()
    origin = candidates[run.faults.randrange(len(candidates))]
    start = cluster.now
    samples: list[int] = []
    run.sample_live(samples, 1.0, start + spec.duration)
    before = cluster.traffic.copy()
    run.outcomes(start + spec.duration)
    manifest = cluster.publish_manifest(origin)
    watch = tracker.watch_rumor(origin, manifest)
    others = [n.slot for n in cluster.live_nodes() if n is not origin]

    def everyone() -> bool:
        return len(watch.applied) >= len(others)

    run.run_until(start + spec.duration, "rumor", stop=everyone)
    gossip_interval = cluster.config.gossip_interval
    fanout = cluster.config.gossip_nodes
    n = len(others) + 1
    heard = [watch.heard[s] - start for s in others if s in watch.heard]
    applied = [watch.applied[s] - start for s in others if s in watch.applied]
    bound = rounds_bound(n, fanout) if fanout > 0 else math.inf
    applied_rounds = [t / gossip_interval for t in applied]
    heard_rounds = [t / gossip_interval for t in heard]
    complete = len(applied) == len(others)
    run.check(
        "rumor_reached_everyone",
        complete,
        f"{len(applied)} of {len(others)} nodes applied the update within {spec.duration}s",
    )
    results = {
        "bootstrap": boot,
        "origin": origin.name,
        "version": manifest.version,
        "gossip_interval_s": gossip_interval,
        "fanout": fanout,
        "informed": len(applied),
        "of": len(others),
        "heard_s": stats(heard),
        "heard_rounds": stats(heard_rounds),
        "applied_s": stats(applied),
        "applied_rounds": stats(applied_rounds),
        "analytic_rounds": _r(bound, 3),
        "goal_rounds": {
            "loss_0": _r(1.25 * bound, 3),
            "loss_10pct": _r(1.5 * 1.25 * bound, 3),
        },
        "traffic": run.traffic_window(before, start, samples),
        **run.accusations(),
    }
    curve = {
        "n": n,
        "fanout": fanout,
        "gossip_interval": gossip_interval,
        "heard": sorted(heard),
        "applied": sorted(applied),
        "mean_field": mean_field_curve(n, fanout, max(12, math.ceil(2 * bound))),
        "bound_rounds": bound,
        # The goal: 1.25 × the bound without loss, 1.5× that with loss.
        "goal_factor": 1.25 if spec.loss == 0 else 1.5 * 1.25,
        "title": f"rumor, n={n}, loss={spec.loss:g}, seed={spec.seed}",
    }
    return run.finish(results, curve)


def run_slow_node(spec: Spec, progress: Progress | None) -> Outcome:
    variants: dict[str, Any] = {}
    checks: list[dict[str, Any]] = []
    violations: list[str] = []
    events = 0
    simulated = 0.0
    for label, on in (("lifeguard_on", True), ("lifeguard_off", False)):
        outcome = _slow_node_variant(spec, on, progress, label)
        variants[label] = outcome.results
        checks.extend({**c, "name": f"{label}.{c['name']}"} for c in outcome.checks)
        violations.extend(f"{label}: {v}" for v in outcome.violations)
        events += outcome.events
        simulated += outcome.simulated_seconds
    results = {
        "lifeguard_off_means": {
            "awareness_max_multiplier": 1,
            "suspicion_max_timeout_mult": 1,
        },
        **variants,
    }
    return Outcome(results, checks, violations, events, _r(simulated) or 0.0)


def _slow_node_variant(spec: Spec, on: bool, progress: Progress | None, label: str) -> Outcome:
    run = _Run(spec, make_config(spec, lifeguard=on), progress)
    cluster = run.cluster
    tracker = cluster.tracker
    boot = run.bootstrap()
    candidates = [
        n for n in cluster.live_nodes() if n not in run.seed_nodes
    ] or cluster.live_nodes()
    # The fault schedule comes from its own stream, identical for both variants.
    schedule_rng = derive_rng(spec.seed, "slow-node")
    slow = candidates[schedule_rng.randrange(len(candidates))]
    start = cluster.now
    end = start + spec.duration
    pauses: list[tuple[float, float]] = []
    if spec.slow_mode == "lag":
        cluster.network.set_inbound_lag(slow.slot, *spec.pause_s)
        cluster.engine.at(end, cluster.network.set_inbound_lag, slow.slot, 0.0, 0.0)
    else:
        t = start + schedule_rng.uniform(*spec.run_s)
        while t < end:
            length = schedule_rng.uniform(*spec.pause_s)
            pauses.append((t, length))
            cluster.engine.at(t, cluster.pause, slow)
            cluster.engine.at(t + length, cluster.resume, slow)
            t += length + schedule_rng.uniform(*spec.run_s)
    samples: list[int] = []
    run.sample_live(samples, 1.0, end)
    before = cluster.traffic.copy()
    refutations_before = slow.core.membership.counters["refutations"] if slow.core else 0
    run.outcomes(end)
    tracker.reset_accusations()
    run.run_until(end, label)
    if slow.status is Status.PAUSED:
        cluster.resume(slow)
    core = slow.core
    assert core is not None
    tracker.mark()
    run.run_until(end + spec.quiet_s, f"{label} quiet", stop=lambda: tracker.membership_converged)
    suspicions = tracker.suspicions
    deaths = tracker.deaths
    slow_false_suspicions = suspicions.false_subjects.get(slow.slot, 0)
    slow_false_deaths = deaths.false_subjects.get(slow.slot, 0)
    took = tracker.since_mark("membership")
    run.check(
        "membership_converged_after_stalls",
        took is not None,
        f"membership converged {took:.3f}s after the last stall"
        if took is not None
        else f"membership not converged {spec.quiet_s}s after the last stall",
    )
    results = {
        "bootstrap": boot,
        "config": {
            "awareness_max_multiplier": cluster.config.awareness_max_multiplier,
            "suspicion_max_timeout_mult": cluster.config.suspicion_max_timeout_mult,
        },
        "slow_node": slow.name,
        "slow_mode": spec.slow_mode,
        "pauses": len(pauses),
        "paused_s": _r(sum(length for _, length in pauses)),
        "longest_pause_s": _r(max((length for _, length in pauses), default=0.0)),
        "false_suspicions_total": suspicions.false,
        "false_deaths_total": deaths.false,
        "false_suspicions_of_slow_node": slow_false_suspicions,
        "false_deaths_of_slow_node": slow_false_deaths,
        "false_suspicions_of_others": suspicions.false - slow_false_suspicions,
        "false_deaths_of_others": deaths.false - slow_false_deaths,
        "false_suspicions_by_slow_node": suspicions.false_accusers.get(slow.slot, 0),
        "false_deaths_by_slow_node": deaths.false_accusers.get(slow.slot, 0),
        "slow_node_refutations": core.membership.counters["refutations"] - refutations_before,
        "slow_node_stalls_detected": core.membership.counters["stalls"],
        "slow_node_health_at_end": core.membership.health,
        "membership_convergence_after_s": _r(took),
        "traffic": run.traffic_window(before, start, samples),
        **run.accusations(),
    }
    return run.finish(results)


def run_steady(spec: Spec, progress: Progress | None) -> Outcome:
    run = _Run(spec, make_config(spec), progress)
    cluster = run.cluster
    boot = run.bootstrap()

    def queued() -> int:
        return sum(
            1 for n in cluster.live_nodes() if n.core is not None and n.core.membership.queue_depth
        )

    drain_start = cluster.now
    limit = drain_start + spec.bootstrap_limit
    while queued() and cluster.now < limit:
        run.run_until(min(limit, cluster.now + 1.0), "drain")
    drained = queued() == 0
    run.check(
        "queues_drained",
        drained,
        f"every broadcast queue empty {cluster.now - drain_start:.1f}s after the bootstrap"
        if drained
        else f"{queued()} nodes still had rumors queued after {spec.bootstrap_limit}s",
    )
    start = cluster.now
    end = start + spec.duration
    samples: list[int] = []
    run.sample_live(samples, 1.0, end)
    before = cluster.traffic.copy()
    cluster.tracker.reset_accusations()
    run.outcomes(end)
    run.run_until(end, "steady")
    results = {
        "bootstrap": boot,
        "drain_s": _r(start - drain_start),
        "queues_drained": drained,
        "retransmit_limit": timing.retransmit_limit(
            cluster.config.retransmit_mult, cluster.tracker.live_count
        ),
        "push_pull_interval_s": _r(
            timing.push_pull_interval(cluster.config.push_pull_interval, cluster.tracker.live_count)
        ),
        "traffic": run.traffic_window(before, start, samples),
        **run.accusations(),
    }
    return run.finish(results)


def run_coordinates(spec: Spec, progress: Progress | None) -> Outcome:
    """Vivaldi coordinates learn the network: the nodes join (or start converged), then
    the coordinates' error against the link model's mean round trips is measured every
    ``COORDINATE_SAMPLE_EVERY_S`` seconds from time 0 until ``duration``; the run passes
    when the last median relative error is at most ``COORDINATE_ERROR_GOAL``."""
    run = _Run(spec, make_config(spec), progress)
    cluster = run.cluster
    rng = derive_rng(spec.seed, "coordinate pairs")
    samples: list[dict[str, Any]] = []

    def measure() -> None:
        samples.append({"t_s": _r(cluster.now, 3), **coordinate_error(cluster, rng)})

    t = COORDINATE_SAMPLE_EVERY_S
    while t < spec.duration:
        cluster.engine.at(t, measure)
        t += COORDINATE_SAMPLE_EVERY_S
    boot = run.bootstrap()
    run.run_until(max(spec.duration, cluster.now), "coordinates")
    measure()
    final = samples[-1]
    error = final["median_relative_error"]
    passed = error is not None and error <= COORDINATE_ERROR_GOAL
    run.check(
        "coordinates_converged",
        passed,
        f"median relative round-trip error {error} at t={final['t_s']}s "
        f"(goal: at most {COORDINATE_ERROR_GOAL})",
    )
    updates = sum(
        n.core.membership.counters["coordinate_updates"]
        for n in cluster.live_nodes()
        if n.core is not None
    )
    rejected = sum(
        n.core.membership.counters["coordinates_rejected"]
        for n in cluster.live_nodes()
        if n.core is not None
    )
    results = {
        "bootstrap": boot,
        "topology": spec.topology,
        "coordinates": final,
        "over_time": samples,
        "coordinate_updates": updates,
        "coordinates_rejected": rejected,
    }
    return run.finish(results)


def run_byzantine(spec: Spec, progress: Progress | None) -> Outcome:
    run = _Run(spec, make_config(spec), progress)
    cluster = run.cluster
    boot = run.bootstrap()
    candidates = [n for n in cluster.live_nodes() if n not in run.seed_nodes]
    count = 0 if spec.byzantine <= 0 else max(1, round(spec.byzantine * spec.nodes))
    count = min(count, len(candidates))
    hostile = sorted(run.faults.sample(candidates, count), key=lambda n: n.slot)
    start = cluster.now
    end = start + spec.duration
    rate = max(1, spec.fake_members // 10)
    plans = [
        AttackPlan(
            attacks=spec.attacks,
            start=start,
            stop=end,
            fakes_per_burst=rate,
            fake_members=spec.fake_members,
            records_per_burst=max(1, spec.flood_records // 10),
            flood_records=spec.flood_records,
        )
        for _ in hostile
    ]
    samples: list[int] = []
    run.sample_live(samples, 1.0, end)
    before = cluster.traffic.copy()
    cluster.tracker.reset_accusations()
    run.outcomes(end)
    if progress is not None:
        progress.phase("attack", cluster.now, end + spec.quiet_s)
    figures = run_attack(
        cluster,
        hostile,
        plans,
        spec.quiet_s,
        on_progress=progress.update if progress is not None else None,
    )
    if progress is not None:
        progress.finish()
    run.check(
        "no_false_deaths_of_honest_nodes",
        figures["false_deaths_of_honest"] == 0,
        f"{figures['false_deaths_of_honest']} live, reachable honest nodes declared dead by "
        f"honest nodes ({figures['dead_views_of_honest']} dead views held by honest nodes)",
    )
    run.check(
        "honest_members_bounded",
        figures["within_bounds"]["members"],
        f"peak {figures['peak_members']} members held by an honest node "
        f"(bound {figures['bounds']['members']})",
    )
    run.check(
        "honest_records_bounded",
        figures["within_bounds"]["records"],
        f"peak {figures['peak_records']} records held by an honest node "
        f"(bound {figures['bounds']['records']})",
    )
    took = figures["honest_convergence_after_stop_s"]
    run.check(
        "honest_converged_after_attack",
        figures["honest_converged"],
        f"honest nodes converged {took}s after the attack stopped"
        if took is not None
        else f"honest nodes not converged {spec.quiet_s}s after the attack stopped",
    )
    results = {
        "bootstrap": boot,
        "byzantine_fraction": spec.byzantine,
        **figures,
        "traffic": run.traffic_window(before, start, samples),
        **run.accusations(),
    }
    return run.finish(results)


RUNNERS: dict[str, Callable[[Spec, Progress | None], Outcome]] = {
    "join": run_join,
    "crash": run_crash,
    "partition-heal": run_partition_heal,
    "churn": run_churn,
    "rumor": run_rumor,
    "slow-node": run_slow_node,
    "steady": run_steady,
    "byzantine": run_byzantine,
    "economy": lambda spec, progress: _run_economy(spec, progress),
    "coordinates": run_coordinates,
}


def _run_economy(spec: Spec, progress: Progress | None) -> Outcome:
    from simulations.economy import run_economy  # it builds on this module

    return run_economy(spec, progress)


GC_THRESHOLD_YOUNG = 500_000
"""Allocations between two collections of the youngest generation during a run (Python's
default is 700). Almost everything a simulation allocates (events, messages, effects)
dies young by reference counting; collecting less often leaves the cyclic collector
fewer survivors to walk and promote, about a tenth of the run time at large N. The count
is of container objects allocated and not yet freed, so it grows only with what
survives: a steady run of 5,000 nodes for 5 s found almost no cyclic garbage (a few
hundred objects in all), and spent 0.78 s in 26 collections at 50,000 (each walking
the push-pull snapshots alive at that moment, 10,000 rumors apiece) against 0.38 s in 4
at 500,000, with the same report."""


def run_scenario(spec: Spec, progress: Progress | None = None) -> Outcome:
    """Run ``spec`` and return what it measured."""
    thresholds = gc.get_threshold()
    gc.set_threshold(GC_THRESHOLD_YOUNG, *thresholds[1:])
    try:
        return RUNNERS[spec.scenario](spec, progress)
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()  # what a converged start froze is ordinary garbage again
