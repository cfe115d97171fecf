"""The output evaluator: defaults, schema checks, the requester's expectations, custom
evaluators, the judge hook, and evaluators that misbehave. The provider does not grade
itself: passing its own declared schema, or being non-empty, leaves a result unscored."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest

from meshnode.core.evaluator import (
    EMPTY_OUTPUT_QUALITY,
    SCHEMA_FAILURE_QUALITY,
    Expectation,
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
    ("non-empty output", PLAIN, res({"text": "x"}), None, Method.UNSCORED),
    ("non-empty scalar", PLAIN, res(0), None, Method.UNSCORED),
    ("false is an answer", PLAIN, res(False), None, Method.UNSCORED),
    ("None output", PLAIN, res(None), EMPTY_OUTPUT_QUALITY, Method.NON_EMPTY),
    ("empty string", PLAIN, res(""), EMPTY_OUTPUT_QUALITY, Method.NON_EMPTY),
    ("empty map", PLAIN, res({}), EMPTY_OUTPUT_QUALITY, Method.NON_EMPTY),
    ("empty list", PLAIN, res([]), EMPTY_OUTPUT_QUALITY, Method.NON_EMPTY),
    ("matches its own schema", TYPED, res({"text": "x"}), None, Method.UNSCORED),
    ("fails schema", TYPED, res({"txt": "x"}), SCHEMA_FAILURE_QUALITY, Method.SCHEMA),
    ("wrong type for schema", TYPED, res("x"), SCHEMA_FAILURE_QUALITY, Method.SCHEMA),
    ("its schema allows empty", VOID, res(None), None, Method.UNSCORED),
    ("failed beats schema", TYPED, res({"text": "x"}, ok=False), 0.0, Method.FAILED),
]


@pytest.mark.parametrize(
    ("capability", "result", "quality", "method"),
    [c[1:] for c in DEFAULTS],
    ids=[c[0] for c in DEFAULTS],
)
def test_default_scoring(
    capability: Capability, result: TaskResult | None, quality: float | None, method: Method
) -> None:
    """Without expectations: failures, timeouts, broken contracts and undeclared empty
    outputs 0; everything else unscored (None), which the breaker takes as a success."""
    evaluation = OutputEvaluator().evaluate(capability, {"text": "in"}, result)
    assert (evaluation.quality, evaluation.method) == (quality, method)
    assert evaluation.error is None
    assert evaluation.scored is (quality is not None)
    assert evaluation.success is (quality is None or quality >= 0.5)


def test_schema_failure_names_the_problem() -> None:
    evaluation = OutputEvaluator().evaluate(TYPED, {}, res({"txt": 1}))
    assert "missing required property 'text'" in evaluation.detail


def test_failed_detail_carries_the_error() -> None:
    assert OutputEvaluator().evaluate(PLAIN, {}, res(ok=False, error="boom")).detail == "boom"


def test_custom_evaluator_is_used_and_clamped() -> None:
    """A registered evaluator scores its capability, clamped to [0, 1]; others keep the
    default; a broken provider contract still scores 0 before the evaluator is asked."""
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
    assert evaluator.evaluate(PLAIN, {}, res("x")).method is Method.UNSCORED


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
    """The judge scores what no expectation of the requester covers (a provider's own
    schema is no check of quality: the judge scores a typed capability's valid output
    too); a broken provider contract is 0 before the judge is asked."""
    calls: list[tuple[str, Any, Any]] = []

    def judge(name: str, task_input: Any, output: Any) -> float:
        calls.append((name, task_input, output))
        return 0.6

    evaluator = OutputEvaluator(judge=judge)
    plain = evaluator.evaluate(PLAIN, {"q": 1}, res("answer"))
    assert (plain.quality, plain.method) == (0.6, Method.JUDGE)
    assert calls == [("plain", {"q": 1}, "answer")]
    assert evaluator.evaluate(TYPED, {}, res({"text": "x"})).method is Method.JUDGE
    assert evaluator.evaluate(TYPED, {}, res({"nope": 1})).method is Method.SCHEMA
    evaluator.register("plain", lambda i, o: 0.9)
    assert evaluator.evaluate(PLAIN, {}, res("x")).quality == 0.9
    assert evaluator.evaluate(PLAIN, {}, None).method is Method.NO_RESULT
    assert len(calls) == 2


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


EXPECTED_TEXT = {
    "type": "object",
    "properties": {"text": {"type": "string", "minLength": 2}},
    "required": ["text"],
}


def _double(task_input: Any, output: Any) -> float:
    return 1.0 if output == {"text": task_input["text"] * 2} else 0.0


EXPECTATIONS = [
    # (case, capability, expectation (schema, evaluator), output, quality, method)
    ("expected schema passed", PLAIN, (EXPECTED_TEXT, None), {"text": "ab"}, 1.0, Method.EXPECTED),
    ("expected schema failed", PLAIN, (EXPECTED_TEXT, None), {"text": "a"}, 0.0, Method.EXPECTED),
    ("squatter: no schema, fabricated", PLAIN, (EXPECTED_TEXT, None), 42, 0.0, Method.EXPECTED),
    (
        "own schema passed, expected failed",
        TYPED,
        (EXPECTED_TEXT, None),
        {"text": "a"},
        0.0,
        Method.EXPECTED,
    ),
    ("own schema broken first", TYPED, (EXPECTED_TEXT, None), {"t": 1}, 0.0, Method.SCHEMA),
    ("evaluator right", PLAIN, (None, _double), {"text": "xx"}, 1.0, Method.CUSTOM),
    ("evaluator wrong", PLAIN, (None, _double), {"text": "x"}, 0.0, Method.CUSTOM),
    ("schema then evaluator", PLAIN, (EXPECTED_TEXT, _double), {"text": "xx"}, 1.0, Method.CUSTOM),
    ("schema stops evaluator", PLAIN, (EXPECTED_TEXT, _double), {"tx": 1}, 0.0, Method.EXPECTED),
]


@pytest.mark.parametrize(
    ("capability", "expected", "output", "quality", "method"),
    [c[1:] for c in EXPECTATIONS],
    ids=[c[0] for c in EXPECTATIONS],
)
@pytest.mark.parametrize("where", ["per_call", "registered"])
def test_requester_expectations_score(
    capability: Capability,
    expected: tuple[Any, Any],
    output: Any,
    quality: float,
    method: Method,
    where: str,
) -> None:
    """The requester's expectation, passed with the delegation or registered for the
    capability's name, decides the score; the provider's own schema only catches it
    breaking its own contract."""
    evaluator = OutputEvaluator()
    schema, fn = expected
    if where == "registered":
        evaluator.expect(capability.name, schema=schema, evaluator=fn)
        evaluation = evaluator.evaluate(capability, {"text": "x"}, res(output))
    else:
        given = Expectation(schema, fn)
        evaluation = evaluator.evaluate(capability, {"text": "x"}, res(output), expectation=given)
    assert (evaluation.quality, evaluation.method) == (quality, method)


def test_per_call_expectation_overrides_the_registered_one() -> None:
    evaluator = OutputEvaluator()
    evaluator.expect("plain", evaluator=lambda i, o: 0.0)
    given = Expectation(evaluator=lambda i, o: 0.8)
    assert evaluator.evaluate(PLAIN, {}, res("x"), expectation=given).quality == 0.8
    assert evaluator.evaluate(PLAIN, {}, res("x")).quality == 0.0


def test_register_keeps_an_expected_schema() -> None:
    evaluator = OutputEvaluator()
    evaluator.expect("plain", schema=EXPECTED_TEXT)
    evaluator.register("plain", lambda i, o: 0.7)
    assert evaluator.evaluate(PLAIN, {}, res({"text": "ok"})).quality == 0.7
    assert evaluator.evaluate(PLAIN, {}, res({"text": 1})).method is Method.EXPECTED


@pytest.mark.parametrize(
    ("schema", "fn", "error"),
    [
        (None, None, ValueError),
        ({"type": "object", "frobnicate": 1}, None, ValueError),
        ("not a schema", None, ValueError),
        (None, 3, TypeError),
    ],
    ids=["empty", "unknown keyword", "not a map", "not callable"],
)
def test_bad_expectations_are_refused(schema: Any, fn: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        Expectation(schema, fn)
    evaluator = OutputEvaluator()
    with pytest.raises(error):
        evaluator.expect("plain", schema=schema, evaluator=fn)
    assert evaluator.registered() == []


def test_output_refusal_covers_both_contracts() -> None:
    """What the requester refuses outright (the next candidate is then tried): a broken
    provider contract, or a failed expected schema; an evaluator's low score is not a
    refusal."""
    evaluator = OutputEvaluator()
    assert evaluator.output_refusal(TYPED, "typed", {"t": 1}) is not None
    assert evaluator.output_refusal(PLAIN, "plain", 42) is None
    evaluator.expect("plain", schema=EXPECTED_TEXT)
    assert "expected schema" in (evaluator.output_refusal(PLAIN, "plain", 42) or "")
    given = Expectation(evaluator=lambda i, o: 0.0)
    assert evaluator.output_refusal(PLAIN, "plain", 42, given) is None
