"""A small validator for the subset of JSON Schema that capabilities use.

Theory of operation
-------------------
A capability may describe its input and output with a JSON Schema (``input_schema``,
``output_schema``). The provider checks each task input against the input schema before it
accepts the task; the requester's evaluator checks each output against the output schema.
Schemas arrive in signed manifests from other nodes, so the validator treats a schema as
untrusted data: it never raises on any JSON-like schema, its recursion is bounded, and it
stops after a bounded number of violations.

:func:`validate` walks the instance and the schema together and returns a list of
:class:`Violation` (empty means valid). A schema keyword that is malformed (``"required":
"x"``, ``"minimum": "3"``) is reported as a violation of the instance, so a broken schema
refuses everything rather than accepting everything. :func:`check_schema` lists what is
wrong with a schema on its own, for a node to warn about its own capabilities.

The subset
----------
=========================  ===============================================================
schema ``None``, ``{}``,    accept any instance (``None`` is a capability without a schema)
``true``
schema ``false``            accept nothing
``type``                    one name or a list of names: ``object``, ``array``, ``string``,
                            ``number``, ``integer``, ``boolean``, ``null``. ``true`` and
                            ``false`` are never numbers; ``integer`` accepts ``2.0``
``properties``              object: each listed property that is present must match
``required``                object: these property names must be present
``additionalProperties``    object: ``false`` forbids properties not in ``properties``; a
                            schema checks them
``items``                   array: one schema that every item must match
``minItems`` ``maxItems``   array length bounds
``enum``                    the instance equals one of the values (JSON equality: ``1`` equals
                            ``1.0``, ``true`` does not equal ``1``)
``const``                   the instance equals this value
``minimum`` ``maximum``     inclusive numeric bounds
``exclusiveMinimum``        strict numeric bounds (numbers, as in draft 6 and later)
``exclusiveMaximum``
``minLength`` ``maxLength``  string length in Unicode code points
=========================  ===============================================================

Annotations (``title``, ``description``, ``default``, ``examples``, ``format``,
``$schema``, ``$id``, ``$comment``) are ignored, as JSON Schema itself treats them. Every
other keyword (``pattern``, ``oneOf``, ``$ref``, ...) is outside the subset: :func:`validate`
ignores it (unknown keywords are ignored by JSON Schema too) and :func:`check_schema`
reports it, so a capability author learns that it is not enforced.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MAX_SCHEMA_DEPTH = 64
"""Deepest schema nesting followed (levels). Wire values nest at most 32 deep, so a schema
that needs more is malformed; the bound keeps recursion far from Python's stack limit."""

MAX_VIOLATIONS = 16
"""Violations collected before :func:`validate` stops (a reason string needs only a few)."""

TYPE_NAMES = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})
"""The ``type`` names of the subset."""

ANNOTATION_KEYWORDS = frozenset(
    {"title", "description", "default", "examples", "format", "$schema", "$id", "$comment"}
)
"""Keywords that describe but never constrain; ignored without a warning."""

SUPPORTED_KEYWORDS = frozenset(
    {
        "type",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "minItems",
        "maxItems",
        "enum",
        "const",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "minLength",
        "maxLength",
    }
)
"""Keywords that :func:`validate` enforces."""


@dataclass(frozen=True, slots=True)
class Violation:
    """One way an instance fails its schema. ``path`` is JSONPath-like: ``$.a.b[2]``."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def validate(
    instance: Any, schema: Any, *, max_violations: int = MAX_VIOLATIONS
) -> list[Violation]:
    """Check ``instance`` against ``schema``; return the violations found (empty if valid).

    Never raises for JSON-like ``instance`` and ``schema`` values.
    """
    out: list[Violation] = []
    _Validator(out, max(1, max_violations)).check(instance, schema, "$", 0)
    return out


def is_valid(instance: Any, schema: Any) -> bool:
    """True if ``instance`` matches ``schema``."""
    return not validate(instance, schema, max_violations=1)


def describe(violations: list[Violation], *, limit: int = 3) -> str:
    """A short human-readable summary of the first ``limit`` violations."""
    text = "; ".join(str(v) for v in violations[:limit])
    more = len(violations) - limit
    return f"{text}; and {more} more" if more > 0 else text


def check_schema(schema: Any) -> list[str]:
    """Problems with ``schema`` itself: malformed keywords and keywords outside the subset.

    An empty list means :func:`validate` enforces every constraint the schema states.
    """
    problems: list[str] = []
    _check_schema(schema, "$", 0, problems)
    return problems


# --------------------------------------------------------------------------- internals


def _is_number(value: Any) -> bool:
    return type(value) is int or (type(value) is float and math.isfinite(value))


def _type_matches(value: Any, name: str) -> bool:
    t = type(value)
    if name == "object":
        return t is dict
    if name == "array":
        return t is list or t is tuple
    if name == "string":
        return t is str
    if name == "number":
        return t is int or t is float
    if name == "integer":
        return t is int or (t is float and math.isfinite(value) and float(value).is_integer())
    if name == "boolean":
        return t is bool
    if name == "null":
        return value is None
    return False


def json_equal(a: Any, b: Any) -> bool:
    """Equality as JSON defines it: numbers by value, booleans never equal to numbers."""
    ta, tb = type(a), type(b)
    if ta is bool or tb is bool:
        return ta is tb and a == b
    if _is_number(a) and _is_number(b):
        return bool(a == b)
    if ta in (list, tuple) and tb in (list, tuple):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if ta is dict and tb is dict:
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    return ta is tb and bool(a == b)


def _json_type(value: Any) -> str:
    for name in ("null", "boolean", "integer", "number", "string", "array", "object"):
        if _type_matches(value, name):
            return name
    return type(value).__name__


_NUMERIC_BOUNDS: tuple[tuple[str, Callable[[Any, Any], bool], str], ...] = (
    ("minimum", operator.ge, "at least"),
    ("maximum", operator.le, "at most"),
    ("exclusiveMinimum", operator.gt, "greater than"),
    ("exclusiveMaximum", operator.lt, "less than"),
)


class _Validator:
    __slots__ = ("limit", "out")

    def __init__(self, out: list[Violation], limit: int) -> None:
        self.out = out
        self.limit = limit

    def full(self) -> bool:
        return len(self.out) >= self.limit

    def fail(self, path: str, message: str) -> None:
        if not self.full():
            self.out.append(Violation(path, message))

    def check(self, value: Any, schema: Any, path: str, depth: int) -> None:
        if self.full() or schema is None or schema is True:
            return
        if schema is False:
            self.fail(path, "no value is allowed here")
            return
        if type(schema) is not dict:
            self.fail(path, f"schema is malformed: a {type(schema).__name__}, not an object")
            return
        if depth >= MAX_SCHEMA_DEPTH:
            self.fail(path, f"schema nested deeper than {MAX_SCHEMA_DEPTH} levels")
            return
        if "type" in schema and not self._check_type(value, schema["type"], path):
            return  # the other keywords would only repeat the same complaint
        if "enum" in schema:
            self._check_enum(value, schema["enum"], path)
        if "const" in schema and not json_equal(value, schema["const"]):
            self.fail(path, f"must equal {schema['const']!r}")
        if _is_number(value):
            self._check_number(value, schema, path)
        elif type(value) is str:
            self._check_length(len(value), schema, path, "minLength", "maxLength", "characters")
        elif type(value) in (list, tuple):
            self._check_array(value, schema, path, depth)
        elif type(value) is dict:
            self._check_object(value, schema, path, depth)

    def _check_type(self, value: Any, declared: Any, path: str) -> bool:
        names = declared if type(declared) is list else [declared]
        if not names or not all(type(n) is str and n in TYPE_NAMES for n in names):
            self.fail(path, f"schema is malformed: unknown type {declared!r}")
            return False
        if any(_type_matches(value, n) for n in names):
            return True
        wanted = names[0] if len(names) == 1 else " or ".join(names)
        self.fail(path, f"expected {wanted}, got {_json_type(value)}")
        return False

    def _check_enum(self, value: Any, options: Any, path: str) -> None:
        if type(options) is not list:
            self.fail(path, "schema is malformed: enum must be an array")
        elif not any(json_equal(value, option) for option in options):
            shown = ", ".join(repr(o) for o in options[:5]) + (", ..." if len(options) > 5 else "")
            self.fail(path, f"must be one of {shown}")

    def _check_number(self, value: float, schema: dict[str, Any], path: str) -> None:
        for key, holds, words in _NUMERIC_BOUNDS:
            if key not in schema:
                continue
            bound = schema[key]
            if not _is_number(bound):
                self.fail(path, f"schema is malformed: {key} must be a number")
            elif not holds(value, bound):
                self.fail(path, f"must be {words} {bound}, got {value}")

    def _check_length(
        self, n: int, schema: dict[str, Any], path: str, lo_key: str, hi_key: str, unit: str
    ) -> None:
        for key, too_short in ((lo_key, True), (hi_key, False)):
            if key not in schema:
                continue
            bound = schema[key]
            if type(bound) is not int or bound < 0:
                self.fail(path, f"schema is malformed: {key} must be a non-negative integer")
            elif too_short and n < bound:
                self.fail(path, f"must have at least {bound} {unit}, has {n}")
            elif not too_short and n > bound:
                self.fail(path, f"must have at most {bound} {unit}, has {n}")

    def _check_array(self, value: Any, schema: dict[str, Any], path: str, depth: int) -> None:
        self._check_length(len(value), schema, path, "minItems", "maxItems", "items")
        items = schema.get("items")
        if items is None:
            return
        if type(items) not in (dict, bool):
            self.fail(path, "schema is malformed: items must be a schema")
            return
        for i, item in enumerate(value):
            if self.full():
                return
            self.check(item, items, f"{path}[{i}]", depth + 1)

    def _check_object(
        self, value: dict[str, Any], schema: dict[str, Any], path: str, depth: int
    ) -> None:
        properties = schema.get("properties", {})
        if type(properties) is not dict:
            self.fail(path, "schema is malformed: properties must be an object")
            return
        required = schema.get("required", [])
        if type(required) is not list or not all(type(r) is str for r in required):
            self.fail(path, "schema is malformed: required must be an array of strings")
            return
        for name in required:
            if name not in value:
                self.fail(path, f"missing required property {name!r}")
        extra = schema.get("additionalProperties", True)
        if type(extra) not in (dict, bool):
            self.fail(path, "schema is malformed: additionalProperties must be a schema")
            return
        for key, item in value.items():
            if self.full():
                return
            child = f"{path}.{key}"
            if key in properties:
                self.check(item, properties[key], child, depth + 1)
            elif extra is False:
                self.fail(path, f"property {key!r} is not allowed")
            elif extra is not True:
                self.check(item, extra, child, depth + 1)


def _check_schema(schema: Any, path: str, depth: int, problems: list[str]) -> None:
    if schema is None or type(schema) is bool:
        return
    if type(schema) is not dict:
        problems.append(f"{path}: a schema must be an object or a boolean")
        return
    if depth >= MAX_SCHEMA_DEPTH:
        problems.append(f"{path}: nested deeper than {MAX_SCHEMA_DEPTH} levels")
        return
    for key, value in schema.items():
        where = f"{path}.{key}"
        if key in ANNOTATION_KEYWORDS:
            continue
        if key not in SUPPORTED_KEYWORDS:
            problems.append(f"{where}: keyword not supported (it is not enforced)")
        elif key == "type":
            names = value if type(value) is list else [value]
            if not names or not all(type(n) is str and n in TYPE_NAMES for n in names):
                problems.append(f"{where}: unknown type {value!r}")
        elif key == "properties":
            if type(value) is not dict:
                problems.append(f"{where}: must be an object")
            else:
                for name, sub in value.items():
                    _check_schema(sub, f"{where}.{name}", depth + 1, problems)
        elif key in ("items", "additionalProperties"):
            if type(value) not in (dict, bool):
                problems.append(f"{where}: must be a schema")
            else:
                _check_schema(value, where, depth + 1, problems)
        elif key == "required":
            if type(value) is not list or not all(type(r) is str for r in value):
                problems.append(f"{where}: must be an array of strings")
        elif key == "enum":
            if type(value) is not list:
                problems.append(f"{where}: must be an array")
        elif key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            if not _is_number(value):
                problems.append(f"{where}: must be a number")
        elif key in ("minLength", "maxLength", "minItems", "maxItems") and (
            type(value) is not int or value < 0
        ):
            problems.append(f"{where}: must be a non-negative integer")
