"""Turn a task's outcome into a quality score in [0, 1], or no score at all.

Theory of operation
-------------------
After every delegation the requester scores what it got back. The score drives the
observer's trust update (``new = old + 0.1 × (quality − old)``, signed and gossiped into the
ledger) and, through :attr:`Evaluation.success`, the peer's circuit breaker. Scoring is
local and deterministic for deterministic checks: the same outcome always scores the same.

The provider does not grade itself. A result is judged by what the *requester* expects of
it: an :class:`Expectation` (an expected output schema, an evaluator, or both) passed with
the delegation, or registered on the requester for the capability's name
(:meth:`OutputEvaluator.expect`, :meth:`OutputEvaluator.register`), or the requester's
judge. The provider's own declared output schema only catches it breaking its own
contract: anyone can publish a capability with a schema its own garbage fits, or with no
schema at all, so passing it proves nothing about quality.

:meth:`OutputEvaluator.evaluate` decides in this order:

1. no result (the attempt timed out, the peer vanished, the delegation failed) → 0.0;
2. a failed result (``ok=False``) → 0.0;
3. the provider's capability has an ``output_schema`` and the output fails it (the subset
   in :mod:`meshnode.core.json_schema`) → :data:`SCHEMA_FAILURE_QUALITY` (0.0: it broke
   its own declared contract; no partial credit);
4. the requester's expectation (the one passed with the delegation, else the one
   registered for the capability's name) has a schema and the output fails it →
   :data:`SCHEMA_FAILURE_QUALITY`;
5. the expectation has an evaluator → its score;
6. the expectation has only a schema, which the output passed → 1.0;
7. a judge is set (or the runtime obtained a ``judge_score``) → the judge's score;
8. an empty output (None, ``""``, ``[]``, ``{}``) that the provider's own schema does not
   declare → :data:`EMPTY_OUTPUT_QUALITY` (0.0: claiming success while returning nothing
   is the cheapest way to fake work);
9. otherwise the result is **unscored**: ``quality`` is None (:data:`Method.UNSCORED`).
   Nobody who could tell checked it, so it moves no opinion at all (it is not folded into
   the ELO score, not even as a neutral value: a neutral 0.5 would still drag a good
   provider's opinion down and a bad one's up). For the circuit breaker an unscored
   delivery is a success (the peer answered in time with a signed result; the breaker
   measures availability, and a transport or deadline failure still counts).

Registered evaluators and judges are ``fn(input, output) -> float`` and
``judge(capability_name, input, output) -> float``. Their scores are clamped to [0, 1]; a
bool counts as 0 or 1; one that raises, returns a non-number or NaN scores 0.0 and the
error is reported in :attr:`Evaluation.error` (never raised). Judges that need I/O (an
LLM) belong to the runtime: it awaits the judge and passes the score to
:meth:`OutputEvaluator.evaluate` as ``judge_score``.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from meshnode.core.json_schema import check_schema, describe, validate
from protocol import Capability, TaskResult

SCHEMA_FAILURE_QUALITY = 0.0
"""Quality of a successful result whose output fails the provider's declared output schema
or the requester's expected one."""

EMPTY_OUTPUT_QUALITY = 0.0
"""Quality of a successful result with an empty output, when no schema says it may be."""

SUCCESS_THRESHOLD = 0.5
"""A quality at or above this counts as a success for the peer's circuit breaker."""

MAX_ERROR_CHARS = 512
"""Longest error text kept from a failing evaluator or judge."""

EvaluatorFn = Callable[[Any, Any], float]
"""``fn(input, output) -> quality``: a deterministic check of one capability's output."""

JudgeFn = Callable[[str, Any, Any], float]
"""``judge(capability_name, input, output) -> quality`` for capabilities with no
deterministic check."""


class Method(enum.Enum):
    """Which rule produced a quality."""

    NO_RESULT = "no_result"
    FAILED = "failed"
    SCHEMA = "schema"
    """The output broke the provider's own declared output schema."""
    EXPECTED = "expected"
    """The requester's expected output schema decided (failed: 0; passed, no evaluator: 1)."""
    CUSTOM = "custom"
    JUDGE = "judge"
    NON_EMPTY = "non_empty"
    """An empty output nobody declared may be empty."""
    UNSCORED = "unscored"
    """Nothing the requester trusts checked the output: no quality."""


@dataclass(frozen=True, slots=True)
class Evaluation:
    """A quality in [0, 1] (None: unscored), the rule that gave it, why, and any evaluator
    error."""

    quality: float | None
    method: Method
    detail: str = ""
    error: str | None = None

    @property
    def scored(self) -> bool:
        """Whether there is a quality opinion to fold into trust."""
        return self.quality is not None

    @property
    def success(self) -> bool:
        """Whether the outcome counts as a success for the peer's breaker (an unscored
        delivery does: the peer answered in time)."""
        return self.quality is None or self.quality >= SUCCESS_THRESHOLD


@dataclass(frozen=True, slots=True)
class Expectation:
    """What a requester expects of one capability's output: an output ``schema`` (the
    subset of :mod:`meshnode.core.json_schema`) it must match, an ``evaluator``
    ``fn(input, output) -> quality``, or both (the schema is checked first). Raises
    ``ValueError`` for an empty expectation or a schema outside the subset, ``TypeError``
    for an evaluator that is not callable."""

    schema: Mapping[str, Any] | None = None
    evaluator: EvaluatorFn | None = None

    def __post_init__(self) -> None:
        if self.schema is None and self.evaluator is None:
            raise ValueError("an expectation needs a schema, an evaluator, or both")
        if self.evaluator is not None and not callable(self.evaluator):
            raise TypeError("an evaluator must be callable")
        if self.schema is not None:
            if not isinstance(self.schema, Mapping):
                raise ValueError("an expected output schema must be a JSON object")
            problems = check_schema(dict(self.schema))
            if problems:
                raise ValueError(f"expected output schema: {'; '.join(problems[:3])}")

    def violation(self, output: Any) -> str | None:
        """Why ``output`` fails the expected schema (None if it does not, or no schema)."""
        if self.schema is None:
            return None
        violations = validate(output, dict(self.schema))
        if not violations:
            return None
        return f"output fails the expected schema: {describe(violations)}"


def clamp_quality(value: object) -> float:
    """``value`` as a quality in [0, 1]; raises ``ValueError`` if it is not a number."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if not isinstance(value, int | float):
        raise ValueError(f"a quality must be a number, got {type(value).__name__}")
    number = float(value)
    if math.isnan(number):
        raise ValueError("a quality must not be NaN")
    return min(1.0, max(0.0, number))


def is_empty_output(output: Any) -> bool:
    """True for None and empty strings, lists and maps."""
    return output is None or (isinstance(output, str | list | tuple | dict) and len(output) == 0)


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


class OutputEvaluator:
    """The requester's expectations per capability name, a judge hook, and the scoring
    rule of the module docstring."""

    __slots__ = ("_expectations", "judge")

    def __init__(self, *, judge: JudgeFn | None = None) -> None:
        self._expectations: dict[str, Expectation] = {}
        self.judge: JudgeFn | None = judge
        """Scores outputs no expectation covers (None: no judge)."""

    def expect(
        self,
        name: str,
        *,
        schema: Mapping[str, Any] | None = None,
        evaluator: EvaluatorFn | None = None,
    ) -> Expectation:
        """Judge every result of capability ``name`` by ``schema`` and/or ``evaluator``
        (replaces any earlier expectation for it); returns the expectation."""
        expectation = Expectation(schema, evaluator)
        self._expectations[name] = expectation
        return expectation

    def register(self, name: str, fn: EvaluatorFn) -> None:
        """Score capability ``name`` with ``fn(input, output)`` (replaces any earlier
        evaluator for it; an expected schema registered for it stays)."""
        if not callable(fn):
            raise TypeError("an evaluator must be callable")
        known = self._expectations.get(name)
        self._expectations[name] = Expectation(None if known is None else known.schema, fn)

    def unregister(self, name: str) -> None:
        """Forget the expectation for ``name``: its results are unscored again."""
        self._expectations.pop(name, None)

    def registered(self) -> list[str]:
        return sorted(self._expectations)

    def expectation(self, name: str) -> Expectation | None:
        """The expectation registered for ``name``, if any."""
        return self._expectations.get(name)

    def evaluate(
        self,
        capability: Capability | str,
        task_input: Any,
        result: TaskResult | None,
        *,
        expectation: Expectation | None = None,
        judge_score: float | None = None,
        output_checked: bool = False,
    ) -> Evaluation:
        """Score one outcome. ``result`` is None when no verified result arrived.

        ``capability`` is the provider's :class:`~protocol.Capability` (for its output
        schema) or just a name. ``expectation`` is the one the caller passed with the
        delegation; without one, the one registered for the name is used. ``judge_score``
        is a score the runtime already obtained from an asynchronous judge; it is used
        where a judge would be. ``output_checked`` says the output already passed
        :meth:`contract_violation` and the expectation's schema, so neither is validated
        twice.
        """
        if result is None:
            return Evaluation(0.0, Method.NO_RESULT, "no result (timeout or error)")
        if not result.ok:
            return Evaluation(0.0, Method.FAILED, result.error or "the task failed")
        name = capability if isinstance(capability, str) else capability.name
        schema = None if isinstance(capability, str) else capability.output_schema
        output = result.output
        if schema is not None and not output_checked:
            violations = validate(output, schema)
            if violations:
                detail = f"output fails its schema: {describe(violations)}"
                return Evaluation(SCHEMA_FAILURE_QUALITY, Method.SCHEMA, detail)

        expected = expectation if expectation is not None else self._expectations.get(name)
        if expected is not None:
            refused = None if output_checked else expected.violation(output)
            if refused is not None:
                return Evaluation(SCHEMA_FAILURE_QUALITY, Method.EXPECTED, refused)
            fn = expected.evaluator
            if fn is not None:
                return self._run(Method.CUSTOM, lambda: fn(task_input, output))
            return Evaluation(1.0, Method.EXPECTED, "output matches the expected schema")

        if judge_score is not None:
            return self._run(Method.JUDGE, lambda: judge_score)
        judge = self.judge
        if judge is not None:
            return self._run(Method.JUDGE, lambda: judge(name, task_input, output))

        if is_empty_output(output) and schema is None:
            return Evaluation(EMPTY_OUTPUT_QUALITY, Method.NON_EMPTY, "empty output")
        return Evaluation(None, Method.UNSCORED, "no expectation checked the output")

    def output_refusal(
        self,
        capability: Capability | None,
        name: str,
        output: Any,
        expectation: Expectation | None = None,
    ) -> str | None:
        """Why the requester refuses ``output`` outright (the next candidate is tried): it
        breaks the provider's declared schema, or the requester's expected schema (the
        ``expectation`` given, else the one registered for ``name``). None: no refusal."""
        broken = self.contract_violation(capability, output)
        if broken is not None:
            return broken
        expected = expectation if expectation is not None else self._expectations.get(name)
        return None if expected is None else expected.violation(output)

    @staticmethod
    def contract_violation(capability: Capability | None, output: Any) -> str | None:
        """Why ``output`` breaks ``capability``'s declared output schema (None if it does
        not, or there is no schema). The requester refuses such a result and tries the next
        candidate; :meth:`evaluate` scores it :data:`SCHEMA_FAILURE_QUALITY`."""
        schema = None if capability is None else capability.output_schema
        if schema is None:
            return None
        violations = validate(output, schema)
        return f"output fails its schema: {describe(violations)}" if violations else None

    @staticmethod
    def _run(method: Method, score: Callable[[], object]) -> Evaluation:
        try:
            quality = clamp_quality(score())
        except Exception as exc:  # an evaluator's bug must not stop the node: score it 0
            return Evaluation(0.0, method, "evaluator failed", _error_text(exc))
        return Evaluation(quality, method)

    def __repr__(self) -> str:
        return (
            f"<OutputEvaluator expectations={len(self._expectations)} "
            f"judge={self.judge is not None}>"
        )
