"""Turn a task's outcome into a quality score in [0, 1].

Theory of operation
-------------------
After every delegation the requester scores what it got back. The score drives the
observer's trust update (``new = old + 0.1 × (quality − old)``, signed and gossiped into the
ledger) and, through :attr:`Evaluation.success`, the peer's circuit breaker. Scoring is
local and deterministic for deterministic checks: the same outcome always scores the same.

:meth:`OutputEvaluator.evaluate` decides in this order:

1. no result (the attempt timed out, the peer vanished, the delegation failed) → 0.0;
2. a failed result (``ok=False``) → 0.0;
3. the capability has an ``output_schema`` and the output fails it (the subset in
   :mod:`meshnode.core.json_schema`) → :data:`SCHEMA_FAILURE_QUALITY` (0.0: an output that
   breaks its own declared contract is unusable to a program, so no partial credit);
4. an evaluator registered for the capability's name → its score;
5. a judge is set and the capability offers no deterministic check (no output schema) →
   the judge's score;
6. the output passed a declared schema → 1.0;
7. no schema: a non-empty output → 1.0, an empty one (None, ``""``, ``[]``, ``{}``) →
   :data:`EMPTY_OUTPUT_QUALITY` (0.0: claiming success while returning nothing is the
   cheapest way to fake work; a capability that returns nothing on purpose declares an
   output schema that accepts it).

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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from meshnode.core.json_schema import describe, validate
from protocol import Capability, TaskResult

SCHEMA_FAILURE_QUALITY = 0.0
"""Quality of a successful result whose output fails the capability's output schema."""

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
    CUSTOM = "custom"
    JUDGE = "judge"
    NON_EMPTY = "non_empty"


@dataclass(frozen=True, slots=True)
class Evaluation:
    """A quality in [0, 1], the rule that gave it, why, and any evaluator error."""

    quality: float
    method: Method
    detail: str = ""
    error: str | None = None

    @property
    def success(self) -> bool:
        """Whether the outcome counts as a success for the peer's breaker."""
        return self.quality >= SUCCESS_THRESHOLD


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
    """Per-capability quality checks with a schema-and-non-empty default and a judge hook."""

    __slots__ = ("_evaluators", "judge")

    def __init__(self, *, judge: JudgeFn | None = None) -> None:
        self._evaluators: dict[str, EvaluatorFn] = {}
        self.judge: JudgeFn | None = judge
        """Scores capabilities without a deterministic check (None: use the default)."""

    def register(self, name: str, fn: EvaluatorFn) -> None:
        """Score capability ``name`` with ``fn(input, output)`` (replaces any earlier one)."""
        if not callable(fn):
            raise TypeError("an evaluator must be callable")
        self._evaluators[name] = fn

    def unregister(self, name: str) -> None:
        self._evaluators.pop(name, None)

    def registered(self) -> list[str]:
        return sorted(self._evaluators)

    def evaluate(
        self,
        capability: Capability | str,
        task_input: Any,
        result: TaskResult | None,
        *,
        judge_score: float | None = None,
        output_checked: bool = False,
    ) -> Evaluation:
        """Score one outcome. ``result`` is None when no verified result arrived.

        ``capability`` is the provider's :class:`~protocol.Capability` (for its output
        schema) or just a name. ``judge_score`` is a score the runtime already obtained
        from an asynchronous judge; it is used where a judge would be. ``output_checked``
        says the output already passed :meth:`contract_violation` for this capability, so
        the schema is not validated twice.
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

        custom = self._evaluators.get(name)
        if custom is not None:
            return self._run(Method.CUSTOM, lambda: custom(task_input, output))

        if schema is None and (judge_score is not None or self.judge is not None):
            if judge_score is not None:
                return self._run(Method.JUDGE, lambda: judge_score)
            judge = self.judge
            assert judge is not None
            return self._run(Method.JUDGE, lambda: judge(name, task_input, output))

        if schema is not None:
            return Evaluation(1.0, Method.SCHEMA, "output matches its schema")
        if is_empty_output(output):
            return Evaluation(EMPTY_OUTPUT_QUALITY, Method.NON_EMPTY, "empty output")
        return Evaluation(1.0, Method.NON_EMPTY, "non-empty output")

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
            f"<OutputEvaluator evaluators={len(self._evaluators)} judge={self.judge is not None}>"
        )
