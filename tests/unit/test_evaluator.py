"""The output evaluator: defaults, schema checks, custom evaluators, the judge hook, and
evaluators that misbehave."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest

from meshnode.core.evaluator import (
    EMPTY_OUTPUT_QUALITY,
    SCHEMA_FAILURE_QUALITY,
    Method,
    OutputEvaluator,
    clamp_quality,
)
from protocol import Capability, Identity, TaskResult

PROVIDER = Identity.from_seed(b"\x30" * 32).node_id
REQUESTER = Identity.from_seed(b"\x31" * 32).node_id

PLAIN = Capability(name="plain", description="no output schema")
TYPED = Capability(
    name="typed",
    description="declares its output",
    output_schema={
        "type": "object",
        "properties": {"text": {"type": "string"}},
        "required": ["text"],
    },
)
VOID = Capability(name="void", description="returns nothing", output_schema={"type": "null"})


def res(output: Any = None, ok: bool = True, error: str = "") -> TaskResult:
    return TaskResult("t", REQUESTER, PROVIDER, ok, output, error, 1.0, b"\x00" * 64)


DEFAULTS: list[tuple[str, Capability, TaskResult | None, float, Method]] = [
    ("no result (timeout)", PLAIN, None, 0.0, Method.NO_RESULT),
    ("failed status", PLAIN, res({"text": "x"}, ok=False, error="boom"), 0.0, Method.FAILED),
    ("non-empty output", PLAIN, res({"text": "x"}), 1.0, Method.NON_EMPTY),
    ("non-empty scalar", PLAIN, res(0), 1.0, Method.NON_EMPTY),
    ("false is an answer", PLAIN, res(False), 1.0, Method.NON_EMPTY),
    ("None output", PLAIN, res(None), EMPTY_OUTPUT_QUALITY, Method.NON_EMPTY),
    ("empty string", PLAIN, res(""), EMPTY_OUTPUT_QUALITY, Method.NON_EMPTY),
    ("empty map", PLAIN, res({}), EMPTY_OUTPUT_QUALITY, Method.NON_EMPTY),
    ("empty list", PLAIN, res([]), EMPTY_OUTPUT_QUALITY, Method.NON_EMPTY),
    ("matches schema", TYPED, res({"text": "x"}), 1.0, Method.SCHEMA),
    ("fails schema", TYPED, res({"txt": "x"}), SCHEMA_FAILURE_QUALITY, Method.SCHEMA),
    ("wrong type for schema", TYPED, res("x"), SCHEMA_FAILURE_QUALITY, Method.SCHEMA),
    ("schema allows empty", VOID, res(None), 1.0, Method.SCHEMA),
    ("failed beats schema", TYPED, res({"text": "x"}, ok=False), 0.0, Method.FAILED),
]


@pytest.mark.parametrize(
    ("capability", "result", "quality", "method"),
    [c[1:] for c in DEFAULTS],
    ids=[c[0] for c in DEFAULTS],
)
def test_default_scoring(
    capability: Capability, result: TaskResult | None, quality: float, method: Method
) -> None:
    """Without custom evaluators: failures and timeouts 0, schema-valid or non-empty 1."""
    evaluation = OutputEvaluator().evaluate(capability, {"text": "in"}, result)
    assert (evaluation.quality, evaluation.method) == (quality, method)
    assert evaluation.error is None
    assert evaluation.success is (quality >= 0.5)


def test_schema_failure_names_the_problem() -> None:
    evaluation = OutputEvaluator().evaluate(TYPED, {}, res({"txt": 1}))
    assert "missing required property 'text'" in evaluation.detail


def test_failed_detail_carries_the_error() -> None:
    assert OutputEvaluator().evaluate(PLAIN, {}, res(ok=False, error="boom")).detail == "boom"


def test_custom_evaluator_is_used_and_clamped() -> None:
    """A registered evaluator scores its capability, clamped to [0, 1]; others keep the
    default; a schema failure still scores 0 before the evaluator is asked."""
    evaluator = OutputEvaluator()
    evaluator.register("typed", lambda i, o: 0.25 if o["text"] == i["text"] else 0.75)
    evaluator.register("plain", lambda i, o: 7.0)
    assert evaluator.registered() == ["plain", "typed"]
    same = evaluator.evaluate(TYPED, {"text": "a"}, res({"text": "a"}))
    assert (same.quality, same.method) == (0.25, Method.CUSTOM)
    assert evaluator.evaluate(TYPED, {"text": "a"}, res({"text": "b"})).quality == 0.75
    assert evaluator.evaluate(PLAIN, {}, res("x")).quality == 1.0
    assert evaluator.evaluate("plain", {}, res("x")).method is Method.CUSTOM
    assert evaluator.evaluate(TYPED, {"text": "a"}, res({"nope": 1})).method is Method.SCHEMA
    evaluator.unregister("plain")
    assert evaluator.evaluate(PLAIN, {}, res("x")).method is Method.NON_EMPTY


@pytest.mark.parametrize(
    ("fn", "error_part"),
    [
        (lambda i, o: 1 / 0, "ZeroDivisionError"),
        (lambda i, o: "high", "must be a number"),
        (lambda i, o: math.nan, "NaN"),
        (lambda i, o: None, "must be a number"),
    ],
    ids=["raises", "string", "nan", "none"],
)
def test_misbehaving_evaluator_scores_zero_and_reports(fn: Any, error_part: str) -> None:
    """An evaluator that raises or returns a non-number scores 0; the error is reported."""
    evaluator = OutputEvaluator()
    evaluator.register("plain", fn)
    evaluation = evaluator.evaluate(PLAIN, {}, res("x"))
    assert evaluation.quality == 0.0
    assert evaluation.method is Method.CUSTOM
    assert evaluation.error is not None
    assert error_part in evaluation.error


def test_judge_scores_capabilities_without_deterministic_checks() -> None:
    """The judge scores capabilities with no schema and no evaluator, nothing else."""
    calls: list[tuple[str, Any, Any]] = []

    def judge(name: str, task_input: Any, output: Any) -> float:
        calls.append((name, task_input, output))
        return 0.6

    evaluator = OutputEvaluator(judge=judge)
    plain = evaluator.evaluate(PLAIN, {"q": 1}, res("answer"))
    assert (plain.quality, plain.method) == (0.6, Method.JUDGE)
    assert calls == [("plain", {"q": 1}, "answer")]
    assert evaluator.evaluate(TYPED, {}, res({"text": "x"})).method is Method.SCHEMA
    evaluator.register("plain", lambda i, o: 0.9)
    assert evaluator.evaluate(PLAIN, {}, res("x")).quality == 0.9
    assert evaluator.evaluate(PLAIN, {}, None).method is Method.NO_RESULT
    assert len(calls) == 1


def test_judge_errors_and_precomputed_scores() -> None:
    """A judge that raises scores 0 with the error; a score obtained elsewhere (an
    asynchronous judge awaited by the runtime) is used where the judge would be."""

    def broken(name: str, task_input: Any, output: Any) -> float:
        raise RuntimeError("model offline")

    evaluation = OutputEvaluator(judge=broken).evaluate(PLAIN, {}, res("x"))
    assert evaluation.quality == 0.0
    assert evaluation.error == "RuntimeError: model offline"
    given = OutputEvaluator().evaluate(PLAIN, {}, res("x"), judge_score=1.5)
    assert (given.quality, given.method) == (1.0, Method.JUDGE)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0.5, 0.5), (-1, 0.0), (2, 1.0), (True, 1.0), (False, 0.0), (1e308, 1.0)],
)
def test_clamp_quality(value: object, expected: float) -> None:
    assert clamp_quality(value) == expected


def test_register_refuses_non_callables() -> None:
    with pytest.raises(TypeError):
        OutputEvaluator().register("x", 3)  # type: ignore[arg-type]


def test_evaluation_is_frozen() -> None:
    evaluation = OutputEvaluator().evaluate(PLAIN, {}, res("x"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        evaluation.quality = 0.0  # type: ignore[misc]
