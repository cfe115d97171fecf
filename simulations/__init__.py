"""The deterministic simulator: the second shell of meshnode's sans-I/O cores.

Theory of operation
-------------------
Thousands of :class:`meshnode.core.node.NodeCore` objects run in one process on a virtual
clock, connected by a simulated network. Nothing in this package decides anything about the
protocol: it drives the very cores the asyncio runtime drives, carries out their effects
(datagrams, TCP exchanges, manifest fetches) through the network model, and compares every
node's view with the ground truth.

Modules, bottom to top:

* :mod:`simulations.engine` — event heap ordered by ``(time, sequence)``, virtual clock,
  seeds derived per node and per subsystem from the run seed;
* :mod:`simulations.sizes` — exact wire sizes with the real codec, cached;
* :mod:`simulations.network` — latency, loss, duplication, reordering, partitions, TCP;
* :mod:`simulations.metrics` — ground truth against views: convergence, false
  suspicions and deaths, failure detection, rumor spread;
* :mod:`simulations.cluster` — the shell: hosts, processes (crash, restart, pause,
  leave), effect dispatch, push-pull and manifest fetches;
* :mod:`simulations.scenarios` — join, crash, partition-heal, churn, rumor, slow-node;
* :mod:`simulations.report`, :mod:`simulations.plot`, :mod:`simulations.epidemic`,
  :mod:`simulations.progress`, :mod:`simulations.cli` — output and the command line.

The same seed and arguments give the same run, event for event, and a byte-identical JSON
report (``--no-timing``). Nothing here imports the runtime, asyncio or aiohttp, reads the
wall clock except to report wall time, or touches the global ``random``.
"""

from __future__ import annotations

from simulations.cluster import Cluster, SimNode, Status, Violation
from simulations.engine import Engine, derive_rng, derive_seed
from simulations.network import LinkModel, Network, Traffic
from simulations.scenarios import SCENARIOS, Outcome, Spec, run_scenario

__all__ = [
    "SCENARIOS",
    "Cluster",
    "Engine",
    "LinkModel",
    "Network",
    "Outcome",
    "SimNode",
    "Spec",
    "Status",
    "Traffic",
    "Violation",
    "derive_rng",
    "derive_seed",
    "run_scenario",
]
