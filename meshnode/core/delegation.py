"""The delegation policy of a node: rank order, deadlines, and what an outcome means.

Theory of operation
-------------------
Small pure functions that :class:`~meshnode.core.node.NodeCore` applies to every
delegation, each tested against a table of cases:

* **Rank order** (:func:`rank_candidates`): the candidates discovery ranked, in its order,
  restricted to the capability the task names (the first candidate's capability when the
  caller gave only a description). The circuit-breaker filter is applied per attempt by the
  :class:`~meshnode.core.requester.RequesterCore` (``allow=BreakerBoard.allow``): a peer
  whose circuit is open is skipped, a half-open one gets its single probe.
* **Deadline inheritance** (:func:`inherit_deadline`): a delegation made while serving a
  task never asks for more than what is left of that task's deadline; the shell passes
  that deadline in as a number (UNIX time), the core decides.
* **Attempt deadline** (:func:`attempt_deadline_ms`): each request asks for at most
  ``1 / COUNTER_RATIO`` of the whole deadline, so a counter up to :data:`COUNTER_RATIO`
  times it still fits, and a fallback candidate keeps some time.
* **Outcome mapping** (:func:`attempt_consequence`, :func:`result_consequence`): what an
  ended attempt or a delivered result does to the peer's circuit breaker and to our
  opinion of it. Failures (silence, timeouts, drops, forged or failed results, malformed
  responses, an output refused by the provider's own schema or the requester's expected
  one) trip the breaker and score 0; refusals, declined counters, our own deadline and
  cancellation are ABANDONED (the breaker hands back a half-open probe) and score
  nothing; a delivered result is scored by the requester's evaluator, and its quality
  decides both. The caller's bad input is never the provider's failure: a refusal
  ``invalid_input`` and a result marked ``invalid_input`` (the handler raised
  ``InvalidInput``) are ABANDONED, score nothing, and end the delegation (no other
  candidate is asked). An unscored delivery (nothing the requester trusts checked it)
  closes the breaker (the peer answered in time) and moves no opinion.

  ===============================  ========  =======  ===============
  outcome                          breaker   opinion  next candidate
  ===============================  ========  =======  ===============
  REJECTED ``invalid_input``       —¹        none     no: fails
  the same, of an input that its   FAILURE   0        yes
  manifest's schema accepts⁴
  result ``invalid_input``         —¹        none     no: fails
  REJECTED (other; ``forbidden``,  —¹        none     yes
  quota, busy, …)
  provider contract broken         FAILURE   0        yes²
  requester's schema refused       FAILURE   0        yes²
  failed result (``ok=False``)     FAILURE   0        yes²
  no response / no result / drop   FAILURE   0        yes
  our own deadline / cancel        —¹        none     no time / no
  delivered, scored ``q``          q ≥ 0.5³  q        no: done
  delivered, unscored              SUCCESS   none     no: done
  ===============================  ========  =======  ===============

  ¹ ABANDONED: no verdict (a half-open probe is handed back). ² unless the caller turned
  retries of failed results off. ³ SUCCESS at or above ``SUCCESS_THRESHOLD``, else
  FAILURE. ⁴ a false claim (PROTOCOL_ERROR): the requester checks the input against the
  schema of the provider's signed manifest it holds (see :mod:`meshnode.core.requester`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from meshnode.core.breaker import TaskVerdict
from meshnode.core.effects import Attempt
from meshnode.core.evaluator import Evaluation
from meshnode.core.router import ScoredCandidate

__all__ = [
    "COUNTER_RATIO",
    "Consequence",
    "attempt_consequence",
    "attempt_deadline_ms",
    "inherit_deadline",
    "rank_candidates",
    "result_consequence",
]

COUNTER_RATIO = 1.5
"""A counter-proposed deadline up to this multiple of the asked deadline is accepted; each
attempt asks for ``1 / COUNTER_RATIO`` of the whole deadline."""


@dataclasses.dataclass(frozen=True, slots=True)
class Consequence:
    """What one outcome does: ``verdict`` for the peer's breaker (None: nothing) and
    ``quality`` folded into our opinion of the peer (None: nothing)."""

    verdict: TaskVerdict | None
    quality: float | None


def rank_candidates(
    candidates: Sequence[ScoredCandidate], capability_name: str | None
) -> tuple[str, list[str]] | None:
    """``(capability, node ids in rank order)`` for a delegation of ``capability_name``
    (or, if None, of the best-ranked candidate's capability); None when nothing fits.

    A candidate with no trust at all (0: rated, and nobody we trust vouches for it above
    the prior — a provider seen failing, a Sybil ring) is not tried while any candidate
    has some trust: a delegation fails rather than falls back to it. Only when every
    candidate has none are they all tried, in rank order. A caller who wants the
    untrusted too as a last resort can pass them itself; one who wants them never sets
    ``min_trust``."""
    if not candidates:
        return None
    capability = capability_name or candidates[0].capability.name
    fitting = [c for c in candidates if c.capability.name == capability]
    if not fitting:
        return None
    trusted = [c for c in fitting if c.trust > 0.0]
    return capability, [c.node_id for c in (trusted or fitting)]


def inherit_deadline(deadline_s: float, inherited_deadline: float | None, now: float) -> float:
    """Seconds this delegation may take: ``deadline_s``, or less if the task being served
    must end at ``inherited_deadline`` (UNIX time) sooner. Zero or less: no time left."""
    if inherited_deadline is None:
        return deadline_s
    return min(deadline_s, max(0.0, inherited_deadline - now))


def attempt_deadline_ms(deadline_s: float) -> int:
    """The most one attempt asks for, in whole ms (at least 1)."""
    remaining_ms = int(deadline_s * 1000)
    return max(1, int(remaining_ms / COUNTER_RATIO))


def attempt_consequence(attempt: Attempt) -> Consequence:
    """What an ended attempt does to its peer's breaker and our opinion of the peer. A
    delivered attempt does nothing here: the evaluator scores it (see
    :func:`result_consequence`)."""
    verdict = attempt.verdict
    if verdict is None or verdict is TaskVerdict.SUCCESS:
        return Consequence(None, None)
    if verdict is TaskVerdict.FAILURE:
        return Consequence(TaskVerdict.FAILURE, 0.0)
    return Consequence(TaskVerdict.ABANDONED, None)


def result_consequence(evaluation: Evaluation) -> Consequence:
    """What a delivered result does: a success (quality at or above
    ``SUCCESS_THRESHOLD``) closes the breaker, anything less counts as a failure; the
    quality is folded into our opinion either way. An unscored result (quality None)
    closes the breaker and moves no opinion."""
    if evaluation.quality is None:
        return Consequence(TaskVerdict.SUCCESS, None)
    verdict = TaskVerdict.SUCCESS if evaluation.success else TaskVerdict.FAILURE
    quality = evaluation.quality if math.isfinite(evaluation.quality) else 0.0
    return Consequence(verdict, quality)
