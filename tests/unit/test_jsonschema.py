"""The JSON-Schema subset validator: a table of schemas and instances, and hostile schemas."""

from __future__ import annotations

from typing import Any

import pytest

from meshnode.core.json_schema import (
    MAX_SCHEMA_DEPTH,
    Violation,
    check_schema,
    describe,
    is_valid,
    json_equal,
    validate,
)

OBJ = {
    "type": "object",
    "properties": {"text": {"type": "string", "minLength": 1}, "n": {"type": "integer"}},
    "required": ["text"],
    "additionalProperties": False,
}

CASES: list[tuple[str, Any, Any, bool]] = [
    # (name, schema, instance, valid)
    ("none accepts all", None, {"x": [1, 2]}, True),
    ("empty accepts all", {}, "anything", True),
    ("true accepts all", True, 3, True),
    ("false rejects all", False, None, False),
    ("object ok", {"type": "object"}, {}, True),
    ("object vs list", {"type": "object"}, [], False),
    ("array ok", {"type": "array"}, [1], True),
    ("array accepts tuple", {"type": "array"}, (1, 2), True),
    ("string ok", {"type": "string"}, "a", True),
    ("string vs number", {"type": "string"}, 1, False),
    ("number int", {"type": "number"}, 3, True),
    ("number float", {"type": "number"}, 2.5, True),
    ("number vs bool", {"type": "number"}, True, False),
    ("integer int", {"type": "integer"}, 3, True),
    ("integer 2.0", {"type": "integer"}, 2.0, True),
    ("integer 2.5", {"type": "integer"}, 2.5, False),
    ("integer vs bool", {"type": "integer"}, False, False),
    ("boolean ok", {"type": "boolean"}, False, True),
    ("boolean vs 0", {"type": "boolean"}, 0, False),
    ("null ok", {"type": "null"}, None, True),
    ("null vs empty", {"type": "null"}, "", False),
    ("type list", {"type": ["string", "null"]}, None, True),
    ("type list miss", {"type": ["string", "null"]}, 1, False),
    ("required present", OBJ, {"text": "hi"}, True),
    ("required missing", OBJ, {"n": 1}, False),
    ("property type", OBJ, {"text": "hi", "n": "1"}, False),
    ("additional false", OBJ, {"text": "hi", "extra": 1}, False),
    ("additional schema ok", {"additionalProperties": {"type": "integer"}}, {"a": 1}, True),
    ("additional schema bad", {"additionalProperties": {"type": "integer"}}, {"a": "x"}, False),
    ("additional default allows", {"properties": {"a": {}}}, {"b": 1}, True),
    ("items ok", {"type": "array", "items": {"type": "integer"}}, [1, 2, 3], True),
    ("items bad", {"type": "array", "items": {"type": "integer"}}, [1, "2"], False),
    ("nested", {"items": OBJ}, [{"text": "a"}, {"text": ""}], False),
    ("minItems", {"minItems": 2}, [1], False),
    ("maxItems", {"maxItems": 1}, [1, 2], False),
    ("enum hit", {"enum": ["es", "fr"]}, "es", True),
    ("enum miss", {"enum": ["es", "fr"]}, "de", False),
    ("enum 1 == 1.0", {"enum": [1]}, 1.0, True),
    ("enum true != 1", {"enum": [1]}, True, False),
    ("enum deep", {"enum": [{"a": [1, 2]}]}, {"a": [1, 2]}, True),
    ("const", {"const": "x"}, "y", False),
    ("minimum ok", {"minimum": 0}, 0, True),
    ("minimum bad", {"minimum": 0}, -0.5, False),
    ("maximum ok", {"maximum": 10}, 10, True),
    ("maximum bad", {"maximum": 10}, 10.5, False),
    ("exclusiveMinimum", {"exclusiveMinimum": 0}, 0, False),
    ("exclusiveMaximum", {"exclusiveMaximum": 1}, 0.5, True),
    ("bounds ignore strings", {"minimum": 5}, "abc", True),
    ("minLength", {"minLength": 2}, "a", False),
    ("maxLength code points", {"maxLength": 2}, "ñé", True),
    ("maxLength bad", {"maxLength": 2}, "abc", False),
    ("annotations ignored", {"title": "t", "description": "d", "format": "email"}, "x", True),
    ("unsupported ignored", {"pattern": "^a$"}, "b", True),
    ("malformed required", {"required": "text"}, {"text": 1}, False),
    ("malformed type", {"type": "text"}, "x", False),
    ("malformed minimum", {"minimum": "3"}, 4, False),
    ("malformed schema node", {"items": 3}, [1], False),
    ("malformed enum", {"enum": "abc"}, "a", False),
]


@pytest.mark.parametrize(
    ("schema", "instance", "valid"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_validate_table(schema: Any, instance: Any, valid: bool) -> None:
    """Each instance is accepted exactly when the subset's rules say so, without raising."""
    violations = validate(instance, schema)
    assert (violations == []) is valid, violations
    assert is_valid(instance, schema) is valid


def test_violation_paths_and_messages() -> None:
    """Violations name where the instance broke the schema, in a short readable summary."""
    violations = validate({"n": "x", "extra": 1}, OBJ)
    texts = [str(v) for v in violations]
    assert "$: missing required property 'text'" in texts
    assert "$.n: expected integer, got string" in texts
    assert "$: property 'extra' is not allowed" in texts
    assert describe(violations, limit=1).endswith("and 2 more")
    items = validate([1, "2"], {"items": {"type": "integer"}})
    assert items == [Violation("$[1]", "expected integer, got string")]


def test_violations_are_bounded() -> None:
    """A huge invalid instance produces at most ``max_violations`` entries."""
    assert len(validate(list(range(1000)), {"items": {"type": "string"}})) == 16
    assert len(validate(list(range(1000)), {"items": {"type": "string"}}, max_violations=3)) == 3


def test_hostile_depth_is_bounded() -> None:
    """A schema nested deeper than the bound is refused, not followed into the stack."""
    schema: Any = {"type": "array"}
    instance: Any = 1
    for _ in range(MAX_SCHEMA_DEPTH + 10):
        schema = {"items": schema}
        instance = [instance]
    violations = validate(instance, schema)
    assert violations
    assert "deeper" in violations[0].message


def test_check_schema_reports_problems() -> None:
    """check_schema lists unsupported and malformed keywords, and nothing for a clean schema."""
    assert check_schema(OBJ) == []
    assert check_schema(None) == []
    assert check_schema({"$schema": "x", "title": "t"}) == []
    problems = check_schema(
        {
            "type": "obj",
            "pattern": "x",
            "required": [1],
            "properties": {"a": {"oneOf": []}},
            "minLength": -1,
            "items": 4,
        }
    )
    joined = "\n".join(problems)
    for expected in (
        "$.type: unknown type",
        "$.pattern: keyword not supported",
        "$.required: must be an array of strings",
        "$.properties.a.oneOf: keyword not supported",
        "$.minLength: must be a non-negative integer",
        "$.items: must be a schema",
    ):
        assert expected in joined
    assert check_schema([1]) == ["$: a schema must be an object or a boolean"]


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        (1, 1.0, True),
        (True, 1, False),
        (False, False, True),
        ([1, "a"], (1, "a"), True),
        ({"a": 1}, {"a": 1.0}, True),
        ({"a": 1}, {"b": 1}, False),
        (None, None, True),
        ("1", 1, False),
    ],
)
def test_json_equal(a: Any, b: Any, equal: bool) -> None:
    """Equality follows JSON: numbers by value, booleans apart from numbers."""
    assert json_equal(a, b) is equal
