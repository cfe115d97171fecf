"""MCP tools as capabilities, without a server: schema narrowing (what is rewritten, what
is refused) and the tool → capability mapping (tables of cases)."""

from __future__ import annotations

from typing import Any

import pytest

from meshnode.core.json_schema import check_schema, is_valid
from meshnode.runtime.mcp_client import McpToolSpec
from meshnode.runtime.mcp_expose import (
    SchemaNotEnforceable,
    ToolRefused,
    narrow_schema,
    tool_capability,
)
from protocol import Capability

OPTIONAL_INT = {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": None}

NARROWED: list[tuple[str, Any, Any]] = [
    ("no schema", None, {"type": "object"}),
    ("boolean", True, True),
    (
        "plain object, annotations kept",
        {"type": "object", "title": "Args", "properties": {"q": {"type": "string"}}},
        {"type": "object", "title": "Args", "properties": {"q": {"type": "string"}}},
    ),
    (
        "anyOf of bare types becomes a type list",
        {"type": "object", "properties": {"n": OPTIONAL_INT}},
        {"type": "object", "properties": {"n": {"type": ["integer", "null"], "default": None}}},
    ),
    (
        "oneOf of disjoint types",
        {"oneOf": [{"type": "string"}, {"type": "boolean"}]},
        {"type": ["string", "boolean"]},
    ),
    (
        "$ref to $defs is inlined",
        {
            "type": "object",
            "properties": {"p": {"$ref": "#/$defs/Point", "description": "where"}},
            "$defs": {
                "Point": {
                    "type": "object",
                    "required": ["x"],
                    "properties": {"x": {"type": "number"}},
                }
            },
        },
        {
            "type": "object",
            "properties": {
                "p": {
                    "type": "object",
                    "required": ["x"],
                    "properties": {"x": {"type": "number"}},
                    "description": "where",
                }
            },
        },
    ),
    (
        "allOf of one schema is merged",
        {"allOf": [{"type": "string", "maxLength": 5}], "title": "t"},
        {"type": "string", "maxLength": 5, "title": "t"},
    ),
    (
        "items and additionalProperties are walked",
        {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "null"}]}},
        {"type": "array", "items": {"type": ["string", "null"]}},
    ),
]

REFUSED: list[tuple[str, Any, str]] = [
    ("pattern", {"type": "string", "pattern": "^a+$"}, "'pattern'"),
    ("not", {"not": {"type": "string"}}, "'not'"),
    ("if/then", {"if": {"type": "string"}, "then": {"minLength": 1}}, "'if'"),
    ("patternProperties", {"type": "object", "patternProperties": {"a": {}}}, "patternProperties"),
    ("multipleOf", {"type": "integer", "multipleOf": 2}, "multipleOf"),
    ("anyOf with constraints", {"anyOf": [{"type": "string", "minLength": 2}]}, "bare type"),
    ("oneOf integer|number", {"oneOf": [{"type": "integer"}, {"type": "number"}]}, "oneOf"),
    ("anyOf beside type", {"type": "string", "anyOf": [{"type": "null"}]}, "beside a type"),
    ("remote $ref", {"$ref": "https://example.org/s.json"}, "not a local definition"),
    (
        "recursive $ref",
        {
            "$ref": "#/$defs/N",
            "$defs": {"N": {"type": "object", "properties": {"n": {"$ref": "#/$defs/N"}}}},
        },
        "recursive",
    ),
    ("allOf of two", {"allOf": [{"type": "string"}, {"maxLength": 3}]}, "allOf of several"),
    ("tuple items", {"type": "array", "items": [{"type": "string"}]}, "tuple"),
    ("not an object", "string", "not a JSON object"),
]


@pytest.mark.parametrize(("what", "schema", "expected"), NARROWED, ids=[c[0] for c in NARROWED])
def test_narrowed_schemas_are_exact_and_enforceable(what: str, schema: Any, expected: Any) -> None:
    out = narrow_schema(schema)
    assert out == expected
    assert check_schema(out) == []


@pytest.mark.parametrize(("what", "schema", "problem"), REFUSED, ids=[c[0] for c in REFUSED])
def test_unenforceable_schemas_are_refused(what: str, schema: Any, problem: str) -> None:
    with pytest.raises(SchemaNotEnforceable, match=problem):
        narrow_schema(schema)


def test_a_deeply_nested_schema_is_refused_not_a_crash() -> None:
    schema: Any = {"type": "string"}
    for _ in range(200):
        schema = {"type": "array", "items": schema}
    with pytest.raises(SchemaNotEnforceable, match="nested deeper"):
        narrow_schema(schema)


def test_the_narrowed_type_list_enforces_what_the_tool_declared() -> None:
    out = narrow_schema({"type": "object", "properties": {"n": OPTIONAL_INT}})
    assert is_valid({"n": 3}, out) and is_valid({"n": None}, out) and is_valid({}, out)
    assert not is_valid({"n": "3"}, out)


def _tool(**fields: Any) -> McpToolSpec:
    base: dict[str, Any] = {
        "name": "search",
        "description": "Search the web.",
        "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}},
    }
    base.update(fields)
    return McpToolSpec(**base)


def test_tool_capability_mapping() -> None:
    cap = tool_capability("web", _tool(output_schema={"type": "object", "pattern": "x"}))
    assert cap.name == "web.search"
    assert cap.description == "Search the web."
    assert cap.tags == ("mcp", "mcp:web")
    assert cap.input_schema == {"type": "object", "properties": {"q": {"type": "string"}}}
    assert cap.output_schema is None, "an output schema the mesh cannot enforce is dropped"
    Capability(
        name=cap.name,
        description=cap.description,
        input_schema=cap.input_schema,
        tags=cap.tags,
    )


@pytest.mark.parametrize(
    ("server", "tool", "name"),
    [("my server", "do/it", "my_server.do_it"), ("s", "t", "s.t"), ("a.b", "c d", "a.b.c_d")],
)
def test_tool_names_are_sanitised(server: str, tool: str, name: str) -> None:
    assert tool_capability(server, _tool(name=tool)).name == name


def test_tool_without_description_and_with_a_long_one() -> None:
    assert tool_capability("s", _tool(description="")).description == "search (MCP tool of s)"
    assert len(tool_capability("s", _tool(description="d" * 3000)).description) == 1024


def test_tool_with_an_unenforceable_input_schema_is_refused() -> None:
    with pytest.raises(SchemaNotEnforceable, match="'pattern'"):
        tool_capability("s", _tool(input_schema={"type": "string", "pattern": "a"}))


def test_a_tool_the_manifest_would_refuse_is_refused_alone() -> None:
    """A tool whose schema is over the manifest's 32 KiB is refused by itself (the
    exposer then publishes the server's other tools).

    On the unfixed code: ``tool_capability`` accepted it, and ``add_capability`` raised
    ``LocalProtocolError: input_schema is 43217 bytes; the limit is 32768`` in the middle
    of the refresh, so none of the server's later tools was published."""
    huge = {
        "type": "object",
        "properties": {f"p{i}": {"type": "string", "description": "x" * 400} for i in range(100)},
    }
    with pytest.raises(ToolRefused, match="the limit is 32768"):
        tool_capability("s", _tool(input_schema=huge))
