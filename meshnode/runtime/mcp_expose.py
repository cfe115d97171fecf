"""Publish the tools of MCP servers as mesh capabilities of this node.

Theory of operation
-------------------
:class:`McpExposer` takes a node and an :class:`~meshnode.runtime.mcp_client.McpClientPool`
(the JSON configuration of :mod:`meshnode.runtime.mcp_client`: ``meshnode run
--mcp-expose FILE``, or the file ``$MESHNODE_MCP_CONFIG`` names). On :meth:`start` it
starts every configured server, lists its tools, and publishes one capability per tool
in the node's signed manifest. A delegation to one of them calls the tool through the
pool; the tool's result is the task's result.

Mapping (:func:`tool_capability`):

* name: ``<server>.<tool>``, sanitised to the capability name rules
  (:func:`~meshnode.runtime.a2a_import.sanitize_capability_name`);
* description: the tool's (clipped to the manifest's 1,024 characters), or
  ``"<tool> (MCP tool of <server>)"`` when it has none;
* tags: ``mcp`` and ``mcp:<server>``;
* input schema: the tool's ``inputSchema`` made enforceable by :func:`narrow_schema`
  (below); a tool whose schema cannot be made so, or that the manifest would refuse (a
  schema over 32 KiB), is **refused** (not published, logged with the reason, listed in
  :attr:`McpExposer.refused`), and the server's other tools are published all the same;
* output schema: the tool's ``outputSchema`` when :func:`narrow_schema` accepts it, else
  none (an output schema only lets the provider catch itself breaking its own contract;
  the requester judges results by its own expectations);
* the result: the tool's structured content when it has some, else
  ``{"text": ..., "content": [...]}`` (its text blocks joined, and every block).

Schemas. The provider enforces a capability's input schema before it accepts a task
(:mod:`meshnode.core.json_schema`). A keyword the mesh cannot enforce would let through
inputs the tool then rejects, and that rejection would count as this node's failure. So
:func:`narrow_schema` rewrites what has an exact equivalent in the mesh's subset and
refuses the rest:

==========================================  ============================================
``anyOf``/``oneOf`` of bare ``{"type": T}``  one ``type`` list (``oneOf`` only when the
branches                                    types cannot overlap: not ``integer`` with
                                            ``number``)
``$ref`` to ``#/$defs/X`` (or                the definition inlined (a recursive one is
``#/definitions/X``)                        refused); ``$defs`` then dropped
``allOf`` of one schema                     merged into its parent when no keyword
                                            clashes
annotations (``title``, ``default``, ...)   kept (ignored by the validator)
anything else (``pattern``, ``not``,        refused, naming the keyword
``if``, ``patternProperties``, ...)
==========================================  ============================================

A tool error (``isError``) fails the task (the node's failure: it is the provider); a
tool that cannot be reached or times out fails it too.

Changes: a server's ``notifications/tools/list_changed`` and a periodic refresh (every
``refresh_s``, :data:`REFRESH_S`) list the tools again; new tools are published, changed
ones re-published, vanished ones withdrawn.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from meshnode.capability import make_capability
from meshnode.core.json_schema import (
    ANNOTATION_KEYWORDS,
    MAX_SCHEMA_DEPTH,
    SUPPORTED_KEYWORDS,
    TYPE_NAMES,
    check_schema,
)
from meshnode.runtime.a2a_import import sanitize_capability_name
from meshnode.runtime.logging import get_logger
from meshnode.runtime.mcp_client import McpClientPool, McpError, McpToolSpec
from protocol import LocalProtocolError, MeshError
from protocol.manifest import MAX_CAPABILITIES, MAX_DESCRIPTION_CHARS, MAX_TAG_CHARS

if TYPE_CHECKING:
    from meshnode.runtime.node import MeshNode

__all__ = [
    "REFRESH_S",
    "McpExposer",
    "SchemaNotEnforceable",
    "ToolCapability",
    "ToolFailed",
    "ToolRefused",
    "narrow_schema",
    "tool_capability",
]

REFRESH_S = 300.0
"""Default seconds between two listings of a server's tools, on top of the
``tools/list_changed`` notifications (a server that sends none still has its changes
published within this)."""
MIN_REFRESH_S = 0.2
"""Shortest refresh interval accepted."""
MCP_TAG = "mcp"
"""Tag on every capability served by an MCP tool through this node."""

log = get_logger("meshnode.mcp_expose")

_DEF_PREFIXES = ("#/$defs/", "#/definitions/")


class ToolRefused(MeshError, ValueError):
    """A tool cannot be published as a capability (the message says why)."""


class SchemaNotEnforceable(ToolRefused):
    """A tool's schema uses JSON Schema the mesh cannot enforce (the message names it)."""


class ToolFailed(MeshError):
    """The tool answered with an error (``isError``)."""


# ---------------------------------------------------------------------------- schemas


def narrow_schema(schema: Any) -> dict[str, Any] | bool:
    """``schema`` rewritten into the mesh's JSON-schema subset (see the module
    docstring); :class:`SchemaNotEnforceable` when it has no exact equivalent there."""
    if schema is None:
        return {"type": "object"}
    if isinstance(schema, bool):
        return schema
    if not isinstance(schema, Mapping):
        raise SchemaNotEnforceable("the schema is not a JSON object")
    defs: dict[str, Any] = {}
    for key in ("$defs", "definitions"):
        table = schema.get(key)
        if table is not None:
            if not isinstance(table, Mapping):
                raise SchemaNotEnforceable(f"{key} is not an object")
            for name, value in table.items():
                defs[f"#/{key}/{name}"] = value
    out: dict[str, Any] | bool = _narrow(schema, defs, (), 0, "$")
    problems = check_schema(out)
    if problems:  # a rewrite that still leaves something unenforced is refused too
        raise SchemaNotEnforceable("; ".join(problems[:3]))
    return out


def _narrow(
    schema: Any, defs: Mapping[str, Any], seen: tuple[str, ...], depth: int, where: str
) -> Any:
    if depth > MAX_SCHEMA_DEPTH:
        raise SchemaNotEnforceable(f"{where}: nested deeper than {MAX_SCHEMA_DEPTH}")
    if isinstance(schema, bool):
        return schema
    if not isinstance(schema, Mapping):
        raise SchemaNotEnforceable(f"{where}: a schema must be an object or a boolean")
    node = dict(schema)
    node.pop("$defs", None)
    node.pop("definitions", None)
    ref = node.pop("$ref", None)
    if ref is not None:
        if not isinstance(ref, str) or not ref.startswith(_DEF_PREFIXES) or ref not in defs:
            raise SchemaNotEnforceable(f"{where}: $ref {ref!r} is not a local definition")
        if ref in seen:
            raise SchemaNotEnforceable(f"{where}: $ref {ref!r} is recursive")
        target = _narrow(defs[ref], defs, (*seen, ref), depth + 1, ref)
        if isinstance(target, bool):
            if node and any(k not in ANNOTATION_KEYWORDS for k in node):
                raise SchemaNotEnforceable(f"{where}: $ref to a boolean schema with siblings")
            return target
        node = _merge(target, node, where)
    all_of = node.pop("allOf", None)
    if all_of is not None:
        if not isinstance(all_of, list) or len(all_of) != 1:
            raise SchemaNotEnforceable(f"{where}: allOf of several schemas")
        inner = _narrow(all_of[0], defs, seen, depth + 1, f"{where}.allOf[0]")
        if isinstance(inner, bool):
            raise SchemaNotEnforceable(f"{where}: allOf of a boolean schema")
        node = _merge(inner, node, where)
    for combinator in ("anyOf", "oneOf"):
        branches = node.pop(combinator, None)
        if branches is None:
            continue
        if "type" in node:
            raise SchemaNotEnforceable(f"{where}: {combinator} beside a type")
        node["type"] = _type_union(branches, combinator, defs, seen, depth, where)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ANNOTATION_KEYWORDS:
            out[key] = value
        elif key == "properties":
            if not isinstance(value, Mapping):
                raise SchemaNotEnforceable(f"{where}: properties is not an object")
            out[key] = {
                str(name): _narrow(sub, defs, seen, depth + 1, f"{where}.{name}")
                for name, sub in value.items()
            }
        elif key == "items":
            if isinstance(value, list):
                raise SchemaNotEnforceable(f"{where}: items as a list (tuple validation)")
            out[key] = _narrow(value, defs, seen, depth + 1, f"{where}[]")
        elif key == "additionalProperties":
            out[key] = (
                value
                if isinstance(value, bool)
                else _narrow(value, defs, seen, depth + 1, f"{where}.*")
            )
        elif key in SUPPORTED_KEYWORDS:
            out[key] = copy.deepcopy(value)
        else:
            raise SchemaNotEnforceable(f"{where}: the mesh cannot enforce {key!r}")
    return out


def _merge(base: Mapping[str, Any], extra: Mapping[str, Any], where: str) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if key in merged and key not in ANNOTATION_KEYWORDS and merged[key] != value:
            raise SchemaNotEnforceable(f"{where}: {key!r} given twice with different values")
        merged[key] = value
    return merged


def _type_union(
    branches: Any,
    combinator: str,
    defs: Mapping[str, Any],
    seen: tuple[str, ...],
    depth: int,
    where: str,
) -> list[str]:
    if not isinstance(branches, list) or not branches:
        raise SchemaNotEnforceable(f"{where}: {combinator} must be a non-empty list")
    types: list[str] = []
    for i, branch in enumerate(branches):
        narrowed = _narrow(branch, defs, seen, depth + 1, f"{where}.{combinator}[{i}]")
        if not isinstance(narrowed, dict):
            raise SchemaNotEnforceable(f"{where}: {combinator} of a boolean schema")
        rest = [k for k in narrowed if k != "type" and k not in ANNOTATION_KEYWORDS]
        kind = narrowed.get("type")
        if rest or not isinstance(kind, str) or kind not in TYPE_NAMES:
            raise SchemaNotEnforceable(
                f"{where}: {combinator} branches other than a bare type cannot be enforced"
            )
        if kind not in types:
            types.append(kind)
    if combinator == "oneOf" and "integer" in types and "number" in types:
        raise SchemaNotEnforceable(f"{where}: oneOf of integer and number")
    return types


# ---------------------------------------------------------------------------- mapping


@dataclass(frozen=True, slots=True)
class ToolCapability:
    """One tool mapped to a capability."""

    server: str
    tool: str
    name: str
    description: str
    tags: tuple[str, ...]
    input_schema: dict[str, Any] | bool
    output_schema: dict[str, Any] | bool | None

    def key(self) -> str:
        """What a refresh compares to tell a changed tool."""
        return json.dumps(
            [self.description, self.tags, self.input_schema, self.output_schema],
            sort_keys=True,
            default=str,
        )


def tool_capability(server: str, tool: McpToolSpec) -> ToolCapability:
    """``tool`` of ``server`` as a capability; :class:`SchemaNotEnforceable` when its
    input schema cannot be enforced by the mesh."""
    input_schema = narrow_schema(tool.input_schema)
    try:
        output_schema = None if tool.output_schema is None else narrow_schema(tool.output_schema)
    except SchemaNotEnforceable:
        output_schema = None
    description = tool.description.strip() or f"{tool.name} (MCP tool of {server})"
    if len(description) > MAX_DESCRIPTION_CHARS:
        description = description[: MAX_DESCRIPTION_CHARS - 1] + "…"
    server_tag = f"{MCP_TAG}:{server}"[:MAX_TAG_CHARS]
    mapped = ToolCapability(
        server=server,
        tool=tool.name,
        name=sanitize_capability_name(f"{server}.{tool.name}"),
        description=description,
        tags=(MCP_TAG, server_tag),
        input_schema=input_schema,
        output_schema=output_schema,
    )
    try:  # what the manifest would refuse (a schema over 32 KiB, say) is refused here
        make_capability(
            name=mapped.name,
            description=mapped.description,
            input_schema=input_schema if isinstance(input_schema, dict) else None,
            output_schema=output_schema if isinstance(output_schema, dict) else None,
            tags=mapped.tags,
        )
    except LocalProtocolError as exc:
        raise ToolRefused(f"{server}.{tool.name} cannot be a capability: {exc}") from None
    return mapped


# ---------------------------------------------------------------------------- exposer


class McpExposer:
    """Keeps ``node``'s capabilities in step with the tools of ``pool``'s servers;
    ``async with`` or :meth:`start` / :meth:`aclose`."""

    def __init__(
        self,
        node: MeshNode,
        pool: McpClientPool,
        *,
        servers: list[str] | None = None,
        refresh_s: float = REFRESH_S,
    ) -> None:
        if not refresh_s >= MIN_REFRESH_S:
            raise ValueError(f"refresh_s must be at least {MIN_REFRESH_S}, got {refresh_s}")
        self.node = node
        self.pool = pool
        self.servers = list(pool.servers if servers is None else servers)
        self.refresh_s = refresh_s
        self.published: dict[str, ToolCapability] = {}
        """Capabilities published, by capability name."""
        self.refused: dict[str, str] = {}
        """Tools not published (``server.tool`` → why)."""
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._dirty: set[str] = set()
        self._lock = asyncio.Lock()
        self.counts: dict[str, int] = {}

    async def __aenter__(self) -> McpExposer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """List every server's tools, publish them, and keep them in step."""
        self.pool.tools_changed_listeners.append(self._changed)
        for server in self.servers:
            await self.refresh(server)
        self._task = asyncio.create_task(self._loop(), name="mcp-expose-refresh")

    async def aclose(self) -> None:
        """Stop following changes (the capabilities stay until the node closes; the pool
        is closed by its owner). Safe to call twice."""
        with contextlib.suppress(ValueError):
            self.pool.tools_changed_listeners.remove(self._changed)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _changed(self, server: str) -> None:
        self._dirty.add(server)
        self._wake.set()

    def _count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time() + self.refresh_s
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, due - loop.time()))
            self._wake.clear()
            if loop.time() >= due:
                targets, due = list(self.servers), loop.time() + self.refresh_s
            else:
                targets = [s for s in self.servers if s in self._dirty]
            self._dirty.clear()
            for server in targets:
                try:
                    await self.refresh(server)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # one server's failure never stops the loop
                    self._count("refresh_errors")
                    log.error("mcp_refresh_failed", server=server, error=f"{exc!r}")

    async def refresh(self, server: str) -> None:
        """List ``server``'s tools and publish, update or withdraw capabilities."""
        try:
            tools = await self.pool.list_tool_specs(server)
        except (McpError, TimeoutError) as exc:
            self._count("list_failed")
            log.warning("mcp_tools_unlisted", server=server, error=str(exc))
            return
        async with self._lock:
            self._apply(server, tools)

    def _apply(self, server: str, tools: list[McpToolSpec]) -> None:
        mine = {n: c for n, c in self.published.items() if c.server == server}
        others = set(self.node.capabilities) - set(mine)
        wanted: dict[str, ToolCapability] = {}
        for key in [k for k in self.refused if k.startswith(f"{server}.")]:
            del self.refused[key]
        for tool in tools:
            label = f"{server}.{tool.name}"
            try:
                cap = tool_capability(server, tool)
            except ToolRefused as exc:
                self.refused[label] = str(exc)
                continue
            if cap.name in others or cap.name in wanted:
                self.refused[label] = f"the capability name {cap.name!r} is taken"
                continue
            if len(others) + len(wanted) >= MAX_CAPABILITIES:
                self.refused[label] = f"the manifest is full ({MAX_CAPABILITIES})"
                continue
            wanted[cap.name] = cap
        for name in mine:
            if name not in wanted:
                self.node.remove_capability(name)
                del self.published[name]
        for name, cap in wanted.items():
            before = mine.get(name)
            if before is None or before.key() != cap.key() or before.tool != cap.tool:
                self.node.add_capability(
                    self._handler(cap),
                    name=cap.name,
                    description=cap.description,
                    input_schema=cap.input_schema if isinstance(cap.input_schema, dict) else None,
                    output_schema=(
                        cap.output_schema if isinstance(cap.output_schema, dict) else None
                    ),
                    tags=cap.tags,
                )
                self.published[name] = cap
        if self.refused:
            log.warning(
                "mcp_tools_refused",
                server=server,
                refused={k: v for k, v in self.refused.items() if k.startswith(f"{server}.")},
            )
        log.info("mcp_tools_exposed", server=server, capabilities=sorted(wanted))

    def _handler(self, cap: ToolCapability) -> Callable[[Any], Awaitable[Any]]:
        async def call(task_input: Any) -> Any:
            arguments = task_input if isinstance(task_input, dict) else {}
            self._count("calls")
            result = await self.pool.call_tool(cap.server, cap.tool, arguments)
            if result.is_error:
                self._count("tool_errors")
                raise ToolFailed(result.text or f"{cap.server}.{cap.tool} reported an error")
            if result.structured is not None:
                return result.structured
            return {"text": result.text, "content": list(result.content)}

        return call

    def __repr__(self) -> str:
        return (
            f"<McpExposer servers={self.servers} published={len(self.published)} "
            f"refused={len(self.refused)}>"
        )
