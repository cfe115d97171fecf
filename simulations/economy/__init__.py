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
``lying``, ``silent``, ``sybil``) that somebody has rated (is in its trust view): one that
nobody has tried yet has only the prior, and trust cannot rank what it has no evidence of
(such a provider is tried, and so rated, when it comes first). Honest providers at zero
trust in its view are left out: no evidence reaches the requester about them through its
own trust graph, the router ranks them after every trusted provider and a delegation does
not try them while a trusted one is left. *Trust convergence* is the first
round at which 95 % of the sampled requesters do. Also: the share of requests sent to bad
providers per round, breaker openings and flaps (a circuit that opens again after it had
closed), the Sybil ring's total trust in the requesters' views, tasks completed, deadline
misses, and what bad input did to the providers it was sent to.
"""

from __future__ import annotations

from simulations.economy.market import Economy, settled_from
from simulations.economy.model import (
    ALWAYS_BAD,
    BAD_KINDS,
    BEHAVIOURS,
    CAPABILITIES,
    CAPABILITY_NAMES,
    DELEGATION_DEADLINE_S,
    KINDS,
    ROUTING_SHARE,
    TOP_K,
    Behaviour,
    EconomyPlan,
    capabilities_for,
    expected_answer,
    quality_oracle,
)
from simulations.economy.node import EconomyNode
from simulations.economy.scenario import EconomyRun, run_economy, simulate

__all__ = [
    "ALWAYS_BAD",
    "BAD_KINDS",
    "BEHAVIOURS",
    "CAPABILITIES",
    "CAPABILITY_NAMES",
    "DELEGATION_DEADLINE_S",
    "KINDS",
    "ROUTING_SHARE",
    "TOP_K",
    "Behaviour",
    "Economy",
    "EconomyNode",
    "EconomyPlan",
    "EconomyRun",
    "capabilities_for",
    "expected_answer",
    "quality_oracle",
    "run_economy",
    "settled_from",
    "simulate",
]
