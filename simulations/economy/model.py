"""The economy's model: provider kinds and their handlers, the capabilities traded, the
requester's quality oracle, and the plan of a run (see :mod:`simulations.economy`)."""

from __future__ import annotations

import dataclasses
import math
import random
from typing import Any, Final

from protocol import Capability

__all__ = [
    "ADVERTISED_LATENCY_MS",
    "ALWAYS_BAD",
    "BAD_KINDS",
    "BEHAVIOURS",
    "CAPABILITIES",
    "CAPABILITY_NAMES",
    "CONVERGENCE_SAMPLE",
    "CONVERGENCE_SHARE",
    "COST_USD",
    "DELEGATION_DEADLINE_S",
    "DRAIN_S",
    "HANDLER_REFUSAL_S",
    "INPUT_SCHEMA",
    "KINDS",
    "OUTPUT_SCHEMA",
    "ROUTING_SHARE",
    "SYBIL_OPINION_OUTCOMES",
    "TOP_K",
    "Behaviour",
    "EconomyPlan",
    "capabilities_for",
    "expected_answer",
    "input_problem",
    "lognormal_latency",
    "quality_oracle",
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
SYBIL_OPINION_OUTCOMES: Final = 20
"""Outcomes a Sybil claims behind each of its 1.0 opinions of its ring mates."""

CAPABILITY_NAMES: Final = ("translate_text", "summarize", "extract_entities", "generate_sql")
INPUT_SCHEMA: Final = {
    "type": "object",
    "required": ["text", "n"],
    "properties": {"text": {"type": "string"}, "n": {"type": "integer"}},
}
HANDLER_REFUSAL_S: Final = 0.001
"""Virtual seconds a handler takes to refuse an input it cannot use (``n`` negative: a rule
:data:`INPUT_SCHEMA` does not state, so the provider admits the task and its handler
raises ``InvalidInput``)."""


def input_problem(task_input: Any) -> str | None:
    """Why a handler refuses ``task_input`` although it passed the input schema (None:
    it does not)."""
    n = task_input.get("n") if isinstance(task_input, dict) else None
    if isinstance(n, int) and n < 0:
        return "n must not be negative"
    return None


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


def quality_oracle(task_input: Any, output: Any) -> float:
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
