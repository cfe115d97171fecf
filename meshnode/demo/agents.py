"""The demo's specialist agents: data, code, writer and web search.

Each is a :class:`~meshnode.MeshNode` subclass with one capability, runnable on its own::

    meshnode run --profile local --port 0 --seed HOST:PORT \\
        --agent meshnode.demo.agents:DataAgent

Configuration comes from the environment, so that ``meshnode run`` needs no extra flags:

==========================  ====================================================================
``MESHNODE_DATA_ROOT``      data agent: the only directory ``csv_path`` may name files in
                            (default: the package's ``demo/data``, holding ``startups.csv``)
``MESHNODE_MCP_CONFIG``     web-search agent: JSON file declaring MCP servers
                            (see :mod:`meshnode.runtime.mcp_client`)
``MESHNODE_SEARCH_SERVER``  web-search agent: which server's ``search`` tool to call (default:
                            the one named ``search``, or the only one configured)
``MESHNODE_LLM_URL``,       writer agent (and the orchestrator, to plan): an OpenAI-compatible
``MESHNODE_LLM_KEY``        endpoint and its key (optional); without the URL the writer uses
                            its template and says so in the report
``MESHNODE_CODE_CALLERS``   code agent (required): the node ids, comma-separated, allowed to
                            call ``run_python``; the demo gives it the orchestrator's id only
==========================  ====================================================================

Who may call what. Every capability says so (``allow=``): statistics, search and writing
serve current members of the mesh (they read only the data agent's own directory and
public URLs, and cost little); ``run_python`` runs a caller's code, so it serves only the
node ids in ``MESHNODE_CODE_CALLERS`` — and refuses to start without any, rather than run
a stranger's code.

The demo runs the specialists with ``--embedder hashing``: they never look anyone up (only
the orchestrator discovers), and loading MiniLM would cost each of them seconds and about
250 MB for nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any, ClassVar

from meshnode import Allow, McpClientPool, McpError, MeshNode, NodeConfig, capability
from meshnode.demo import guards, sandbox, search, stats, writer

__all__ = [
    "CODE_CALLERS_ENV",
    "DATA_ROOT_ENV",
    "DEMO_DATA_DIR",
    "CodeAgent",
    "DataAgent",
    "WebSearchAgent",
    "WriterAgent",
]

DEMO_DATA_DIR = Path(__file__).resolve().parent / "data"
"""The package's own data: ``startups.csv`` (a made-up sample of 100 startups) and the
offline search corpus."""
DATA_ROOT_ENV = "MESHNODE_DATA_ROOT"
SEARCH_SERVER_ENV = "MESHNODE_SEARCH_SERVER"
CODE_CALLERS_ENV = "MESHNODE_CODE_CALLERS"
"""Node ids (comma-separated) the code agent runs code for."""
MEMBERS = Allow()
"""Current members of the mesh: the demo's capabilities that only read or write text."""
MAX_CODE_TIMEOUT_S = 10.0
"""Longest run the code agent grants a snippet, whatever the task asks."""

_STR = {"type": "string"}

ANALYZE_INPUT: dict[str, Any] = {
    "type": "object",
    "properties": {
        "csv_path": {"type": "string", "minLength": 1, "maxLength": 512},
        "csv_url": {"type": "string", "minLength": 1, "maxLength": 2048},
        "value_column": {"type": "string", "minLength": 1, "maxLength": 128},
        "group_by": {"type": "array", "items": _STR, "maxItems": 8},
        "year_column": {"type": ["string", "null"]},
        "filters": {
            "type": "object",
            "maxProperties": stats.MAX_FILTER_COLUMNS,
            "additionalProperties": {
                "type": "array",
                "items": {"type": "string", "maxLength": stats.MAX_CELL_CHARS},
                "minItems": 1,
                "maxItems": stats.MAX_FILTER_VALUES,
            },
        },
    },
    "additionalProperties": False,
}
ANALYZE_OUTPUT: dict[str, Any] = {
    "type": "object",
    "required": ["dataset", "rows", "summary", "groups", "by_year"],
    "properties": {
        "dataset": _STR,
        "rows": {"type": "integer", "minimum": 0},
        "summary": {
            "type": "object",
            "required": ["count", "sum", "mean", "median", "std", "min", "max"],
        },
        "groups": {"type": "object"},
        "by_year": {"type": "array"},
    },
}
RUN_INPUT: dict[str, Any] = {
    "type": "object",
    "required": ["code"],
    "properties": {
        "code": {"type": "string", "minLength": 1, "maxLength": 100_000},
        "timeout_s": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_CODE_TIMEOUT_S},
    },
    "additionalProperties": False,
}
RUN_OUTPUT: dict[str, Any] = {
    "type": "object",
    "required": ["exit_code", "stdout", "stderr", "timed_out", "output_truncated"],
    "properties": {
        "exit_code": {"type": ["integer", "null"]},
        "stdout": _STR,
        "stderr": _STR,
        "timed_out": {"type": "boolean"},
        "output_truncated": {"type": "boolean"},
    },
}
FINDING: dict[str, Any] = {
    "type": "object",
    "required": ["id", "title", "text"],
    "properties": {
        "id": {"type": "string", "minLength": 2, "maxLength": 16},
        "title": {"type": "string", "maxLength": 300},
        "text": {"type": "string", "maxLength": 20_000},
        "headline": {"type": "string", "maxLength": 500},
        "source": {"type": "string", "maxLength": 500},
        "table": {"type": "object"},
    },
}
WRITE_INPUT: dict[str, Any] = {
    "type": "object",
    "required": ["query", "findings"],
    "properties": {
        "query": {"type": "string", "minLength": 1, "maxLength": 2_000},
        "findings": {"type": "array", "items": FINDING, "minItems": 1, "maxItems": 100},
        "answer": {"type": "string", "maxLength": 4_000},
        "plan": {"type": "string", "maxLength": 4_000},
    },
}
WRITE_OUTPUT: dict[str, Any] = {
    "type": "object",
    "required": ["markdown", "method", "note"],
    "properties": {
        "markdown": {"type": "string", "minLength": 1},
        "method": {"enum": ["template", "llm"]},
        "note": _STR,
    },
}
SEARCH_INPUT: dict[str, Any] = {
    "type": "object",
    "required": ["query"],
    "properties": {
        "query": {"type": "string", "minLength": 1, "maxLength": 1_000},
        "limit": {"type": "integer", "minimum": 1, "maximum": search.MAX_RESULTS},
    },
    "additionalProperties": False,
}
SEARCH_OUTPUT: dict[str, Any] = {
    "type": "object",
    "required": ["results", "offline", "source"],
    "properties": {
        "results": {"type": "array", "items": {"type": "object", "required": ["title"]}},
        "offline": {"type": "boolean"},
        "source": _STR,
    },
}


class DataAgent(MeshNode):
    """Statistics on CSV files from its data directory, or on a public URL."""

    def __init__(
        self, config: NodeConfig | None = None, *, data_root: str | Path | None = None, **kw: Any
    ) -> None:
        super().__init__(config, **kw)
        self.data_root = Path(data_root or os.environ.get(DATA_ROOT_ENV) or DEMO_DATA_DIR)

    @capability(
        name="analyze_csv",
        description=(
            "Compute statistics on a CSV table: count, mean, median, standard deviation, "
            "minimum and maximum of a numeric column, breakdowns by group and trends by year"
        ),
        input_schema=ANALYZE_INPUT,
        output_schema=ANALYZE_OUTPUT,
        avg_latency_ms=40,
        tags=["data", "statistics", "csv"],
        allow=MEMBERS,
    )
    async def analyze_csv(self, payload: dict[str, Any]) -> dict[str, Any]:
        path, url = payload.get("csv_path"), payload.get("csv_url")
        if (path is None) == (url is None):
            raise ValueError("give exactly one of csv_path or csv_url")
        spec = stats.AnalysisSpec.from_input(payload)
        if path is not None:
            data = await asyncio.to_thread(
                guards.read_safe_file, self.data_root, path, guards.MAX_FETCH_BYTES
            )
            dataset = str(path)
        else:
            data = await guards.fetch_url(str(url))
            dataset = str(url)
        table = stats.parse_csv(data)
        result = await asyncio.to_thread(stats.analyze, table, spec)
        return {"dataset": dataset, "sha256": hashlib.sha256(data).hexdigest(), **result}


def code_callers(text: str | None) -> frozenset[str]:
    """The node ids in a ``MESHNODE_CODE_CALLERS`` value (comma-separated, blanks
    ignored)."""
    return frozenset(part.strip() for part in (text or "").split(",") if part.strip())


class CodeAgent(MeshNode):
    """Runs Python snippets in an isolated child process (not a sandbox: see
    :mod:`meshnode.demo.sandbox`), for the node ids it is told to serve only.

    ``callers`` (default: ``MESHNODE_CODE_CALLERS``) names them; with none, construction
    fails with ``ValueError``: running code for whoever asks is never a default."""

    limits: ClassVar[sandbox.RunLimits] = sandbox.RunLimits()

    def __init__(self, config: NodeConfig | None = None, *, callers: Any = None, **kw: Any) -> None:
        super().__init__(config, **kw)
        allowed = (
            code_callers(os.environ.get(CODE_CALLERS_ENV))
            if callers is None
            else frozenset(callers)
        )
        if not allowed:
            raise ValueError(
                f"the code agent runs its callers' code: set {CODE_CALLERS_ENV} to the node "
                "ids allowed to call run_python"
            )
        self.add_capability(
            self.run_python,
            name="run_python",
            description=(
                "Run a Python program in an isolated subprocess with time, memory and output "
                "limits, and return its exit status and output"
            ),
            input_schema=RUN_INPUT,
            output_schema=RUN_OUTPUT,
            avg_latency_ms=150,
            tags=["code", "python"],
            allow=Allow(nodes=allowed),
        )

    async def run_python(self, payload: dict[str, Any]) -> dict[str, Any]:
        timeout = min(float(payload.get("timeout_s", self.limits.timeout_s)), MAX_CODE_TIMEOUT_S)
        limits = dataclasses.replace(self.limits, timeout_s=timeout)
        result = await sandbox.run_python(payload["code"], limits)
        return result.to_json()


class WriterAgent(MeshNode):
    """Turns findings into a Markdown report that cites every one of them."""

    @capability(
        name="write_report",
        description="Write a Markdown research report from a list of findings, citing each one",
        input_schema=WRITE_INPUT,
        output_schema=WRITE_OUTPUT,
        avg_latency_ms=20,
        tags=["writing", "markdown"],
        allow=MEMBERS,
    )
    async def write_report(self, payload: dict[str, Any]) -> dict[str, Any]:
        query, findings = payload["query"], payload["findings"]
        ids = [f["id"] for f in findings]
        if len(set(ids)) != len(ids):
            raise ValueError("finding ids must be unique")
        key_points = writer.template_key_points(findings)
        method = "template"
        note = (
            "Written from a template: no language model is configured "
            "(set MESHNODE_LLM_URL to use one)."
        )
        settings = writer.llm_settings()
        if settings is not None:
            url, key, model = settings
            host = writer.llm_host(url)
            try:
                key_points = await writer.llm_key_points(url, key, model, query, findings)
                method = "llm"
                note = (
                    f"Key points written by {model} at {host}; findings and tables rendered "
                    "from the template."
                )
            except Exception as exc:  # any model failure: fall back and say why
                note = (
                    f"Written from a template: the language model at {host} could not be "
                    f"used ({type(exc).__name__}: {exc})."
                )
        markdown = writer.render_report(
            query,
            findings,
            key_points=key_points,
            note=note,
            answer=str(payload.get("answer", "")),
            plan=str(payload.get("plan", "")),
        )
        return {
            "markdown": markdown,
            "method": method,
            "note": note,
            "cited": sorted(writer.cited_ids(markdown)),
        }


class WebSearchAgent(MeshNode):
    """Searches through an MCP server's ``search`` tool, or an offline corpus."""

    def _search_server(self) -> str | None:
        if self.mcp is None:
            self.mcp = McpClientPool.from_env()
        servers = self.mcp.servers
        wanted = os.environ.get(SEARCH_SERVER_ENV)
        if wanted:
            return wanted
        if "search" in servers:
            return "search"
        return servers[0] if len(servers) == 1 else None

    @capability(
        name="web_search",
        description=(
            "Search the web for pages and articles about a topic and return titles, links "
            "and snippets"
        ),
        input_schema=SEARCH_INPUT,
        output_schema=SEARCH_OUTPUT,
        avg_latency_ms=300,
        tags=["search", "web"],
        allow=MEMBERS,
    )
    async def web_search(self, payload: dict[str, Any]) -> dict[str, Any]:
        query, limit = payload["query"], int(payload.get("limit", 3))
        note = ""
        try:
            server = self._search_server()
        except McpError as exc:
            server, note = None, f"MCP configuration unusable ({exc}). "
        if server is not None:
            try:
                result = await self.call_mcp_tool(
                    server, "search", {"query": query, "limit": limit}
                )
                if result.is_error:
                    raise McpError(result.text or "the search tool reported an error")
                texts = [str(c.get("text", "")) for c in result.content if c.get("type") == "text"]
                results = search.normalize_mcp_results(result.structured, texts, server, limit)
                return {
                    "results": results,
                    "offline": False,
                    "source": f"mcp:{server}",
                    "note": f"Results from the search tool of MCP server {server!r}.",
                }
            except McpError as exc:
                note = f"MCP search on {server!r} failed ({exc}). "
        results = search.search_offline(query, limit)
        return {
            "results": results,
            "offline": True,
            "source": "offline corpus",
            "note": note
            + "Offline: no web search was made; these results come from the small corpus "
            "shipped with meshnode.",
        }
