"""The research orchestrator: split a question, find specialists by description,
delegate, check what comes back, and merge it into one Markdown report.

Theory of operation
-------------------
:meth:`ResearchOrchestrator.research` runs one question through the mesh:

1. **Plan.** The table's columns get kinds (numeric, year, categorical, text), and the
   question is read against them (:mod:`~meshnode.demo.planner`): which column to
   measure, which rows (filters on values the question names), which breakdown, a
   comparison, a trend or a top-N. With ``MESHNODE_LLM_URL`` set a language model is asked
   for the plan first (:func:`llm_plan`, :data:`LLM_PLAN_TIMEOUT_S`); a plan naming a
   column or value the table lacks, or any failure, falls back to the deterministic
   planner, and the report says which planned. There are up to four subtasks, each
   described in plain words (:data:`SUBTASKS`): statistics on the table, a web search, a
   Python check of the trend, and the write-up. Those a question does not need are
   skipped, not failed: the Python check without a trend; the search (and every breakdown)
   for a question the table cannot answer, whose report says so and what the table covers.
2. **Discover.** Each subtask's description goes to ``node.discover`` — this node's own
   semantic index of the manifests it learned by gossip. The best-ranked capability is the
   one used. Only if the description finds nothing (for instance with the hashing
   embedder, which matches words, not meanings) does it fall back to the capability name
   the demo's agents use, and the report says which way each was found.
3. **Delegate** with ``node.delegate``: statistics and search in parallel, then the Python
   check (it needs the yearly totals), then the writer (it needs every finding).
4. **Score.** Evaluators registered on this node score each result, and the score becomes
   this node's signed, gossiped opinion of the provider: the statistics are recomputed
   here with the standard library from this node's own copy of the table and must agree
   within ±10 %; a Python run must exit with status 0; the writer's report must cite every
   finding; a search must return titled results (finding nothing scores
   :data:`EMPTY_SEARCH_QUALITY`, not a failure).
5. **Merge.** The writer's Markdown — the answer first, in a sentence or two with the
   figures (:func:`~meshnode.demo.planner.answer`), then how the question was read, the
   key points and every finding — plus a section on how the report was made: who did
   what, how each was found, the quality each scored, and trust afterwards.

Run by the demo, the orchestrator reads a job file named by ``MESHNODE_DEMO_JOB``, waits
until it knows the expected number of peers, runs the job once, writes the report and a
JSON result, and prints one JSON line per step on stdout for the demo's live view. It also
offers the whole procedure as a capability, ``research_report``, so any node can ask for a
report (``meshnode delegate research_report --input '{"query": "..."}'``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import os
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from meshnode import (
    SUCCESS_THRESHOLD,
    Allow,
    DelegationError,
    DelegationResult,
    MemberChanged,
    MemberEvent,
    MemberState,
    MeshNode,
    NodeConfig,
    Quota,
    ScoredCandidate,
    capability,
    format_address,
    short_id,
    wait_for,
)
from meshnode.demo import guards, planner, stats, writer
from meshnode.demo.agents import DATA_ROOT_ENV, DEMO_DATA_DIR
from meshnode.demo.planner import Plan, plan_query
from meshnode.demo.writer import cited_ids

__all__ = [
    "JOB_ENV",
    "SUBTASKS",
    "Plan",
    "ResearchOrchestrator",
    "Subtask",
    "llm_plan",
    "plan_query",
]

JOB_ENV = "MESHNODE_DEMO_JOB"
"""Environment variable naming the demo's job file."""
DELEGATION_DEADLINE_S = 15.0
"""Deadline of each delegation, in seconds."""
TOLERANCE = 0.10
"""Relative difference allowed between the data agent's figures and the recomputed ones."""
EMPTY_SEARCH_QUALITY = SUCCESS_THRESHOLD
"""Quality of a well-formed search answer with no results: nothing was found, which is
neither the provider's failure (its corpus may simply not cover a user's table, and a
failing score would blame it for that) nor full marks (it added nothing)."""
LLM_PLAN_TIMEOUT_S = 15.0
"""Deadline for a language model's plan, in seconds; past it the deterministic planner
plans instead."""
MAX_LLM_PLAN_CHARS = 4_000
"""Longest plan text accepted from a language model."""

Event = Callable[[dict[str, Any]], None]


@dataclasses.dataclass(frozen=True, slots=True)
class Subtask:
    """One piece of the work, as the orchestrator asks the mesh for it."""

    key: str
    role: str
    description: str
    """What discovery is asked for, in plain words."""
    fallback_capability: str
    """Used only when the description finds nothing."""


SUBTASKS = (
    Subtask(
        "data",
        "data agent",
        "calculate statistics such as averages, medians and yearly totals from a CSV table",
        "analyze_csv",
    ),
    Subtask(
        "web",
        "web-search agent",
        "look up background articles on the internet about a question",
        "web_search",
    ),
    Subtask(
        "code",
        "code agent",
        "execute a short Python script to double-check a calculation",
        "run_python",
    ),
    Subtask(
        "writer",
        "writer agent",
        "turn findings into a written Markdown report with citations",
        "write_report",
    ),
)

# --------------------------------------------------------------------------- formatting


def usd(value: float) -> str:
    """Whole units with thousands separators (``12,345,678``); two decimals below 1,000
    when the value has a fraction."""
    if abs(value) >= 1_000 or value == int(value):
        return f"{round(value):,}"
    return f"{value:,.2f}"


def usd_short(value: float) -> str:
    """``$12.3M``, ``$1.20B``, ``$950K``."""
    return planner.fmt_value("usd", value)


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f}%"


def value_title(column: str) -> str:
    """``funding_usd`` → ``Funding``; ``revenue`` → ``Revenue``: the column's words without
    a currency."""
    words = [w for w in column.replace("-", "_").split("_") if w and w.lower() not in _UNITS]
    return (" ".join(words) or column).capitalize()


_UNITS = frozenset(("usd", "eur", "gbp", "jpy", "inr", "brl", "chf"))


def _unit(column: str) -> str:
    units = [w.upper() for w in column.lower().replace("-", "_").split("_") if w in _UNITS]
    return units[0] if units else column


def findings_from_statistics(
    out: dict[str, Any], plan: Plan, schema: planner.Schema | None = None
) -> list[dict[str, Any]]:
    """F-findings for the overview, each breakdown and the yearly trend."""
    s = out["summary"]
    value = out.get("value_column") or plan.value_column or "value"
    noun = schema.noun if schema is not None else "rows"
    singular = schema.singular if schema is not None else "row"
    short = functools.partial(planner.fmt_value, value)
    title = value_title(value)
    where = ""
    if plan.filters:
        where = " where " + planner.filters_text(plan.filters)
    findings: list[dict[str, Any]] = [
        {
            "title": "Dataset overview" if not plan.filters else "Overview of the selected rows",
            "headline": (
                f"{s['count']} {noun if s['count'] != 1 else singular}{where} have "
                f"{short(s['sum'])} of `{value}` in total; "
                f"the median is {short(s['median'])}, the mean {short(s['mean'])}"
            ),
            "text": (
                f"The data agent analysed `{out['dataset']}`: {out['rows']} rows"
                + (f", {s['count']} of them{where}" if plan.filters else "")
                + f", {out.get('skipped_rows', 0)} skipped. For `{value}` it reports a total "
                f"of {usd(s['sum'])}, a mean of {usd(s['mean'])}, a median of "
                f"{usd(s['median'])}, a sample standard deviation of {usd(s['std'])}, and "
                f"a range from {usd(s['min'])} to {usd(s['max'])}."
            ),
            "table": {
                "columns": ["Statistic", f"Value ({_unit(value)})"],
                "rows": [
                    ["count", str(s["count"])],
                    ["total", usd(s["sum"])],
                    ["mean", usd(s["mean"])],
                    ["median", usd(s["median"])],
                    ["std (sample)", usd(s["std"])],
                    ["min", usd(s["min"])],
                    ["max", usd(s["max"])],
                ],
            },
            "source": f"data agent, analyze_csv on {out['dataset']}",
        }
    ]
    for column in plan.group_by:
        entries = out["groups"].get(column) or []
        if not entries:
            continue
        top = entries[0]
        findings.append(
            {
                "title": f"{title} by {column}",
                "headline": (
                    f"{top['key']} leads by {column} with {short(top['sum'])} "
                    f"({pct(top['share'])} of the total across {top['count']} "
                    f"{noun if top['count'] != 1 else singular})"
                ),
                "text": (
                    f"Totals, means and medians of `{value}` per {column}{where}, largest "
                    f"total first. {top['key']} accounts for {pct(top['share'])} of the total."
                ),
                "table": {
                    "columns": [column, "count", "total", "mean", "median", "share"],
                    "rows": [
                        [
                            e["key"],
                            str(e["count"]),
                            usd(e["sum"]),
                            usd(e["mean"]),
                            usd(e["median"]),
                            pct(e["share"]),
                        ]
                        for e in entries
                    ],
                },
                "source": f"data agent, analyze_csv grouped by {column}",
            }
        )
    trend = out.get("trend")
    if plan.by_year and out.get("by_year") and trend:
        years = out["by_year"]
        findings.append(
            {
                "title": f"{title} by year",
                "headline": (
                    f"Yearly totals went from {short(years[0]['total'])} in "
                    f"{trend['first_year']} to {short(years[-1]['total'])} in "
                    f"{trend['last_year']} (compound {pct(trend['cagr'])} a year), "
                    f"peaking in {trend['peak_year']}"
                ),
                "text": (
                    f"The least-squares trend of the yearly totals is "
                    f"{short(trend['slope_per_year'])} per year. Counts per year are "
                    "small, so single large values move a year's total a lot."
                ),
                "table": {
                    "columns": ["year", "count", "total", "mean", "median"],
                    "rows": [
                        [
                            str(y["year"]),
                            str(y["count"]),
                            usd(y["total"]),
                            usd(y["mean"]),
                            usd(y["median"]),
                        ]
                        for y in years
                    ],
                },
                "source": f"data agent, analyze_csv by {plan.year_column or 'year'}",
            }
        )
    return findings


def finding_from_coverage(schema: planner.Schema) -> dict[str, Any]:
    """What the table holds, for a question it cannot answer."""
    rows = []
    for c in schema.columns:
        if c.kind in ("categorical", "year"):
            shown = ", ".join(c.values[:12]) + (", …" if len(c.values) > 12 else "")
        elif c.kind == "numeric" and c.low is not None and c.high is not None:
            shown = f"{usd(c.low)} to {usd(c.high)}"
        else:
            shown = "-"
        rows.append([c.name, c.kind, shown])
    return {
        "title": "What the data covers",
        "headline": (
            f"`{schema.dataset}` holds {schema.rows} rows in {len(schema.columns)} columns; "
            "the question is about none of them"
        ),
        "text": f"{schema.coverage()} Each column and what it holds:",
        "table": {"columns": ["column", "kind", "values"], "rows": rows},
        "source": f"the orchestrator's own reading of {schema.dataset}",
    }


def check_code(by_year: list[dict[str, Any]], reported_slope: float) -> str:
    """A stand-alone script that recomputes the trend from the yearly totals."""
    rows = json.dumps([{"year": y["year"], "total": y["total"]} for y in by_year])
    return textwrap.dedent(
        f"""\
        import json
        rows = json.loads({rows!r})
        reported_slope = {float(reported_slope)!r}
        years = [r["year"] for r in rows]
        totals = [r["total"] for r in rows]
        n = len(rows)
        mx, my = sum(years) / n, sum(totals) / n
        sxx = sum((x - mx) ** 2 for x in years)
        slope = sum((x - mx) * (y - my) for x, y in zip(years, totals)) / sxx if sxx else 0.0
        span = years[-1] - years[0]
        cagr = None
        if span > 0 and totals[0] > 0 and totals[-1] > 0:
            cagr = (totals[-1] / totals[0]) ** (1 / span) - 1
        yoy = [
            {{"year": b["year"], "change": b["total"] / a["total"] - 1}}
            for a, b in zip(rows, rows[1:]) if a["total"]
        ]
        agrees = abs(slope - reported_slope) <= 0.001 * max(abs(slope), 1.0)
        print(json.dumps({{"slope": slope, "cagr": cagr, "yoy": yoy, "slope_agrees": agrees}}))
        """
    )


def finding_from_code(out: dict[str, Any]) -> dict[str, Any]:
    source = "code agent, run_python (python -I, limits, empty environment)"
    if out.get("exit_code") != 0 or out.get("timed_out"):
        return {
            "title": "Python check of the trend",
            "headline": "The Python check did not complete",
            "text": f"Exit status {out.get('exit_code')}; stderr: {out.get('stderr', '')[:300]}",
            "source": source,
        }
    try:
        data = json.loads(out["stdout"])
        slope, cagr, agrees = float(data["slope"]), data["cagr"], bool(data["slope_agrees"])
        yoy = [(int(r["year"]), float(r["change"])) for r in data["yoy"]]
    except (ValueError, KeyError, TypeError) as exc:
        return {
            "title": "Python check of the trend",
            "headline": "The Python check printed output the orchestrator could not read",
            "text": f"{type(exc).__name__}: {exc}",
            "source": source,
        }
    best = max(yoy, key=lambda r: r[1]) if yoy else None
    worst = min(yoy, key=lambda r: r[1]) if yoy else None
    text = (
        f"An independent script run by the code agent computed a slope of "
        f"{usd_short(slope)} per year, which {'agrees' if agrees else 'DISAGREES'} with the "
        f"data agent's, and a compound annual growth rate of {pct(cagr)}."
    )
    if best and worst:
        text += (
            f" The largest year-over-year rise was {pct(best[1])} into {best[0]}; the largest "
            f"fall {pct(worst[1])} into {worst[0]}."
        )
    return {
        "title": "Python check of the trend",
        "headline": (
            f"A Python re-run {'confirms' if agrees else 'contradicts'} the trend "
            f"({usd_short(slope)} per year, compound {pct(cagr)})"
        ),
        "text": text,
        "source": source,
    }


def findings_from_search(out: dict[str, Any]) -> list[dict[str, Any]]:
    label = " (offline corpus: no web search was made)" if out.get("offline") else ""
    findings = []
    for r in out.get("results", []):
        snippet = str(r.get("snippet", "")).strip()
        findings.append(
            {
                "title": f"Background: {r.get('title', 'result')}",
                "headline": f"Background: {r.get('title', 'result')}{label}",
                "text": snippet or "(no snippet)",
                "source": (r.get("url") or r.get("source") or out.get("source", "search")) + label,
            }
        )
    return findings


async def llm_plan(
    query: str,
    schema: planner.Schema,
    settings: tuple[str, str, str],
    timeout_s: float = LLM_PLAN_TIMEOUT_S,
) -> Plan:
    """Ask the model at ``settings`` (``(url, key, model)``) for a plan; fall back to the
    deterministic planner on any failure (no answer in time, an error status, no JSON, a
    column or value the table does not have), saying so in the plan's note."""
    url, key, model = settings
    host = writer.llm_host(url)
    try:
        text = await writer.chat(
            url, key, model, planner.llm_messages(query, schema), timeout_s=timeout_s
        )
        plan = planner.parse_llm_plan(query, schema, text, MAX_LLM_PLAN_CHARS)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # any model failure: the deterministic planner plans
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        fallback = plan_query(query, schema)
        return dataclasses.replace(
            fallback,
            note=f"The language model at {host} could not plan ({reason[:200]}); the "
            "deterministic planner did.",
        )
    return dataclasses.replace(plan, method="llm", note=f"Planned by {model} at {host}.")


# --------------------------------------------------------------------------- evaluators


def check_exit_status(task_input: Any, output: Any) -> float:
    """A Python run scores 1 when it exited with status 0 in time, else 0."""
    if not isinstance(output, dict):
        return 0.0
    ok = output.get("exit_code") == 0 and not output.get("timed_out")
    return 1.0 if ok and not output.get("output_truncated") else 0.0


def check_citations(task_input: Any, output: Any) -> float:
    """The share of the findings the writer's Markdown cites."""
    if not isinstance(task_input, dict) or not isinstance(output, dict):
        return 0.0
    wanted = {f.get("id") for f in task_input.get("findings", []) if isinstance(f, dict)}
    markdown = output.get("markdown")
    if not wanted or not isinstance(markdown, str):
        return 0.0
    return len(wanted & cited_ids(markdown)) / len(wanted)


def check_search(task_input: Any, output: Any) -> float:
    """A search scores the share of its results with a title and a snippet or link; a
    well-formed answer with no results scores :data:`EMPTY_SEARCH_QUALITY`."""
    if not isinstance(output, dict) or not isinstance(output.get("results"), list):
        return 0.0
    results = output["results"]
    if not results:
        return EMPTY_SEARCH_QUALITY
    good = sum(
        1
        for r in results
        if isinstance(r, dict) and r.get("title") and (r.get("snippet") or r.get("url"))
    )
    return good / len(results)


# --------------------------------------------------------------------------- the node


@dataclasses.dataclass
class _TaskRecord:
    subtask: Subtask
    found_by: str = ""
    candidate: ScoredCandidate | None = None
    result: DelegationResult | None = None
    error: str | None = None
    check: str = ""
    skipped: bool = False
    """Not needed for this question: never delegated, and no failure."""

    def skip(self, why: str) -> None:
        self.skipped, self.error = True, f"not needed: {why}"

    def to_json(self, names: dict[str, str | None]) -> dict[str, Any]:
        r, c = self.result, self.candidate
        return {
            "subtask": self.subtask.key,
            "role": self.subtask.role,
            "description": self.subtask.description,
            "found_by": self.found_by,
            "capability": r.capability if r else (c.capability.name if c else None),
            "provider": r.provider if r else (c.node_id if c else None),
            "provider_name": names.get(r.provider) if r else (c.node_name if c else None),
            "semantic": None if c is None else round(c.semantic, 4),
            "score": None if c is None else round(c.total, 4),
            "quality": None if r is None or r.quality is None else round(r.quality, 4),
            "elapsed_ms": None if r is None else round(r.elapsed_ms, 1),
            "attempts": 0 if r is None else len(r.attempts),
            "check": self.check,
            "error": self.error,
            "skipped": self.skipped,
        }


class ResearchOrchestrator(MeshNode):
    """Answers research questions by combining specialists it finds in the mesh."""

    def __init__(
        self,
        config: NodeConfig | None = None,
        *,
        reference_root: str | Path | None = None,
        **kwargs: Any,
    ) -> None:
        job_path = os.environ.get(JOB_ENV)
        self.job: dict[str, Any] | None = (
            json.loads(Path(job_path).read_text("utf-8")) if job_path else None
        )
        super().__init__(config or NodeConfig.local(), **kwargs)
        root = reference_root or (self.job or {}).get("reference_root")
        self.reference_root = Path(root or os.environ.get(DATA_ROOT_ENV) or DEMO_DATA_DIR)
        """This node's own copy of the data, used to check the data agent's figures."""
        self._tables: dict[str, stats.Table] = {}
        self._checks: dict[int, tuple[int, int]] = {}
        """(matched, checked) figures per data task input, keyed by the input's id."""
        self._epoch = time.monotonic()
        self.first_seen: dict[str, float] = {}
        """Seconds after construction at which each member was first seen."""
        self.member_listeners.append(self._member_seen)
        self._job_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        await super().start()
        evaluator = self.tasks.evaluator
        evaluator.register("analyze_csv", self._check_statistics)
        evaluator.register("run_python", check_exit_status)
        evaluator.register("write_report", check_citations)
        evaluator.register("web_search", check_search)
        if self.job is not None:
            self._job_task = asyncio.create_task(self._run_job(self.job), name="demo-job")

    async def aclose(self) -> None:
        task, self._job_task = self._job_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await super().aclose()

    def _member_seen(self, change: MemberChanged) -> None:
        if change.kind is MemberEvent.JOINED and change.node_id not in self.first_seen:
            self.first_seen[change.node_id] = round(time.monotonic() - self._epoch, 3)

    # ------------------------------------------------------------------ capability

    @capability(
        name="research_report",
        description=(
            "Answer a research question about a CSV dataset by combining statistics, web "
            "search, a Python check and a written report from agents in the mesh"
        ),
        input_schema={
            "type": "object",
            "required": ["query"],
            "properties": {
                "query": {"type": "string", "minLength": 1, "maxLength": 2_000},
                "csv_path": {"type": "string", "minLength": 1, "maxLength": 512},
            },
            "additionalProperties": False,
        },
        output_schema={"type": "object", "required": ["report", "tasks"]},
        avg_latency_ms=3_000,
        tags=["research", "orchestrator"],
        # Any member may ask; each request fans out four tasks, so one requester gets one
        # report at a time and a few a minute.
        allow=Allow(),
        quota=Quota(max_concurrent=1, per_minute=6),
    )
    async def research_report(self, payload: dict[str, Any]) -> dict[str, Any]:
        result = await self.research(payload["query"], csv_path=payload.get("csv_path"))
        return {k: result[k] for k in ("report", "tasks", "agents", "statistics")}

    # ------------------------------------------------------------------ checks

    def _check_statistics(self, task_input: Any, output: Any) -> float:
        if not isinstance(task_input, dict):
            return 0.0
        table = self._tables.get(str(task_input.get("csv_path") or task_input.get("csv_url")))
        if table is None:
            return 0.0
        share, matched, checked = stats.agreement(
            output, table, stats.AnalysisSpec.from_input(task_input), TOLERANCE
        )
        self._checks[id(task_input)] = (matched, checked)
        return share

    async def _reference_table(self, csv_path: str | None, csv_url: str | None) -> stats.Table:
        """This node's own reading of the table (fresh for every question)."""
        if csv_path is not None:
            data = await asyncio.to_thread(
                guards.read_safe_file, self.reference_root, csv_path, guards.MAX_FETCH_BYTES
            )
        else:
            assert csv_url is not None
            data = await guards.fetch_url(csv_url)
        table = self._tables[str(csv_path or csv_url)] = stats.parse_csv(data)
        return table

    # ------------------------------------------------------------------ research

    async def _plan(self, query: str, schema: planner.Schema) -> Plan:
        """A language model's plan when ``MESHNODE_LLM_URL`` is set and it answers with a
        valid one within :data:`LLM_PLAN_TIMEOUT_S`; the deterministic plan otherwise, with
        a note saying why."""
        settings = writer.llm_settings()
        if settings is None:
            return plan_query(query, schema)
        return await llm_plan(query, schema, settings)

    async def _find(self, sub: Subtask, record: _TaskRecord) -> str:
        hits = await self.discover(sub.description, top_k=3)
        if hits:
            record.found_by, record.candidate = "description", hits[0]
            return hits[0].capability.name
        hits = await self.discover(capability_name=sub.fallback_capability, top_k=1)
        if not hits:
            raise DelegationError(f"nobody in the mesh can {sub.description!r}")
        record.found_by, record.candidate = "capability name (description found nothing)", hits[0]
        return sub.fallback_capability

    async def _run(
        self, record: _TaskRecord, task_input: dict[str, Any], emit: Event
    ) -> DelegationResult | None:
        sub = record.subtask
        try:
            name = await self._find(sub, record)
            c = record.candidate
            assert c is not None
            emit(
                {
                    "event": "discovered",
                    "subtask": sub.key,
                    "description": sub.description,
                    "found_by": record.found_by,
                    "capability": name,
                    "provider": c.node_id,
                    "provider_name": c.node_name,
                    "semantic": round(c.semantic, 4),
                    "score": round(c.total, 4),
                }
            )
            emit({"event": "task_started", "subtask": sub.key, "provider_name": c.node_name})
            result = await self.delegate(
                name,
                task_input,
                description=sub.description if record.found_by == "description" else None,
                deadline_s=DELEGATION_DEADLINE_S,
            )
        except DelegationError as exc:
            record.error = exc.reason
            emit({"event": "task_failed", "subtask": sub.key, "error": exc.reason})
            return None
        record.result = result
        emit(
            {
                "event": "task_done",
                "subtask": sub.key,
                "provider": result.provider,
                "quality": None if result.quality is None else round(result.quality, 4),
                "elapsed_ms": round(result.elapsed_ms, 1),
            }
        )
        return result

    async def research(
        self,
        query: str,
        *,
        csv_path: str | None = None,
        csv_url: str | None = None,
        on_event: Event | None = None,
    ) -> dict[str, Any]:
        """Run ``query`` through the mesh (see the module docstring); the report and a
        record of how it was made."""
        emit = on_event or (lambda event: None)
        if csv_path is None and csv_url is None:
            csv_path = "startups.csv"
        started = time.monotonic()
        table = await self._reference_table(csv_path, csv_url)
        dataset = Path(str(csv_path)).name if csv_path is not None else str(csv_url)
        schema = planner.infer_schema(table, dataset)
        plan = planner.check_rows(await self._plan(query, schema), table)
        emit(
            {
                "event": "plan",
                "kind": plan.kind,
                "describe": plan.describe(),
                "method": plan.method,
                "group_by": list(plan.group_by),
                "by_year": plan.by_year,
                "subtasks": [{"key": s.key, "description": s.description} for s in SUBTASKS],
            }
        )
        records = {s.key: _TaskRecord(s) for s in SUBTASKS}
        answerable = plan.kind != "unanswerable" and plan.value_column is not None
        data_input: dict[str, Any] = {
            "value_column": plan.value_column,
            "group_by": list(plan.group_by) if answerable else [],
            "year_column": plan.year_column if answerable else None,
        }
        if answerable and plan.filters:
            data_input["filters"] = plan.filter_dict()
        data_input["csv_path" if csv_path is not None else "csv_url"] = csv_path or csv_url
        if plan.value_column is None:
            records["data"].skip("the table has no numeric column")
        if not answerable:
            records["web"].skip("the question is not about this data")
        data, web = await asyncio.gather(
            self._run(records["data"], data_input, emit)
            if plan.value_column is not None
            else _none(),
            self._run(records["web"], {"query": plan.search_query, "limit": 3}, emit)
            if answerable
            else _none(),
        )
        if data is None and not records["data"].skipped:
            raise DelegationError(f"statistics failed: {records['data'].error}")
        findings: list[dict[str, Any]] = []
        statistics_out: dict[str, Any] = {}
        if data is not None:
            matched, checked = self._checks.pop(id(data_input), (0, 0))
            records["data"].check = f"{matched}/{checked} figures within ±{TOLERANCE:.0%}"
            statistics_out = data.output
            findings = findings_from_statistics(statistics_out, plan, schema)
        if not answerable:
            findings.append(finding_from_coverage(schema))
        if plan.by_year and statistics_out.get("by_year") and statistics_out.get("trend"):
            code = check_code(statistics_out["by_year"], statistics_out["trend"]["slope_per_year"])
            run = await self._run(records["code"], {"code": code, "timeout_s": 5}, emit)
            if run is not None:
                records["code"].check = f"exit status {run.output.get('exit_code')}"
                findings.append(finding_from_code(run.output))
        else:
            records["code"].skip("the question is not about change over time")
        if web is not None:
            records["web"].check = f"{len(web.output.get('results', []))} results" + (
                ", offline corpus" if web.output.get("offline") else ""
            )
            findings += findings_from_search(web.output)
        for i, finding in enumerate(findings, 1):
            finding["id"] = f"F{i}"
            _clip(finding)
        answer = _cut(planner.answer(plan, statistics_out, schema), MAX_WRITER_TEXT_CHARS)
        how = (
            f"How the question was read ({plan.method} planner): {plan.describe()}."
            + (f" Matched: {'; '.join(plan.matched)}." if plan.matched else "")
            + f" Columns of `{schema.dataset}`: {schema.describe()}."
            + (f" {plan.note}" if plan.note else "")
        )
        written = await self._run(
            records["writer"],
            {
                "query": query,
                "findings": findings,
                "answer": answer,
                "plan": _cut(how, MAX_WRITER_TEXT_CHARS),
            },
            emit,
        )
        if written is None:
            raise DelegationError(f"the write-up failed: {records['writer'].error}")
        cited = len({f["id"] for f in findings} & cited_ids(written.output["markdown"]))
        records["writer"].check = f"cites {cited}/{len(findings)} findings"
        names = self._names()
        tasks = [r.to_json(names) for r in records.values()]
        agents = self._agents(records)
        report = written.output["markdown"].rstrip() + "\n\n" + self._provenance(records, names)
        return {
            "query": query,
            "answer": answer,
            "plan": plan.to_json(),
            "schema": schema.to_json(),
            "report": report,
            "statistics": statistics_out,
            "findings": findings,
            "tasks": tasks,
            "agents": agents,
            "writer": {"method": written.output["method"], "note": written.output["note"]},
            "web": None
            if web is None
            else {"offline": web.output.get("offline"), "source": web.output.get("source")},
            "embedder": self.discovery.embedder.model_id if self.discovery.embedder else None,
            "trust": self.trust_json(),
            "elapsed_s": round(time.monotonic() - started, 3),
        }

    # ------------------------------------------------------------------ merge

    def _names(self) -> dict[str, str | None]:
        return {m["node_id"]: m["name"] for m in self.members_json()}

    def _learned_via(self, address: str) -> str:
        return "seed address" if address in self.config.seeds else "gossip"

    def _agents(self, records: dict[str, _TaskRecord]) -> list[dict[str, Any]]:
        roles: dict[str, str] = {}
        for r in records.values():
            provider = r.result.provider if r.result else r.candidate and r.candidate.node_id
            if provider:
                roles[provider] = r.subtask.role
        host, port = self.address
        out: list[dict[str, Any]] = [
            {
                "role": "orchestrator",
                "name": self.config.name,
                "node_id": self.node_id,
                "address": f"{host}:{port}",
                "learned_via": "self",
                "first_seen_s": 0.0,
            }
        ]
        for m in self.members_json():
            if m["node_id"] == self.node_id:
                continue
            out.append(
                {
                    "role": roles.get(m["node_id"], "member"),
                    "name": m["name"],
                    "node_id": m["node_id"],
                    "address": m["address"],
                    "state": m["state"],
                    "learned_via": self._learned_via(m["address"]),
                    "first_seen_s": self.first_seen.get(m["node_id"]),
                }
            )
        return out

    def _provenance(self, records: dict[str, _TaskRecord], names: dict[str, str | None]) -> str:
        embedder = self.discovery.embedder.model_id if self.discovery.embedder else "unknown"
        gossip = sum(
            1
            for m in self.core.members()
            if m.state is MemberState.ALIVE
            and m.node_id != self.node_id
            and self._learned_via(format_address(m.address)) == "gossip"
        )
        seeds = ", ".join(self.config.seeds) or "none"
        lines = [
            "## How this report was made",
            "",
            f"The orchestrator split the question into {len(records)} subtasks and found each "
            f"specialist by describing the work to its own semantic index ({embedder}). It was "
            f"given only the seed address {seeds}; it learned the other {gossip} members by "
            "gossip. Each result was scored here and the score gossiped as a signed opinion.",
            "",
            "| Subtask | Asked the mesh for | Agent | Capability | Found by | Match | "
            "Quality | Check | Time |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in records.values():
            c, res = r.candidate, r.result
            provider = res.provider if res else (c.node_id if c else None)
            agent = (
                "-" if provider is None else f"{names.get(provider) or '?'} ({short_id(provider)})"
            )
            lines.append(
                "| "
                + " | ".join(
                    [
                        r.subtask.key,
                        r.subtask.description,
                        agent,
                        res.capability if res else (c.capability.name if c else "-"),
                        r.found_by or "-",
                        "-" if c is None else f"{c.semantic:.2f}",
                        "-" if res is None or res.quality is None else f"{res.quality:.2f}",
                        r.check or r.error or "-",
                        "-" if res is None else f"{res.elapsed_ms:.0f} ms",
                    ]
                )
                + " |"
            )
        trust = [p for p in self.trust_json() if p["direct"] is not None]
        if trust:
            lines += [
                "",
                "Trust after this run (this node's view; its signed opinions are gossiped):",
                "",
                "| Agent | Trust | Direct opinion | Breaker |",
                "|---|---|---|---|",
            ]
            lines += [
                f"| {p['name'] or '?'} ({short_id(p['node_id'])}) | {p['trust']:.3f} | "
                f"{p['direct']:.3f} | {p['breaker']} |"
                for p in trust
            ]
        return "\n".join(lines) + "\n"

    # ------------------------------------------------------------------ demo job

    def _ready_peers(self) -> list[str]:
        core = self.core
        return sorted(
            m.node_id
            for m in core.members()
            if m.node_id != self.node_id
            and m.state is MemberState.ALIVE
            and core.manifests.get(m.node_id) is not None
        )

    async def _run_job(self, job: dict[str, Any]) -> None:
        def emit(event: dict[str, Any]) -> None:
            event.setdefault("t", round(time.monotonic() - self._epoch, 3))
            print(json.dumps(event), flush=True)

        try:
            expect = int(job.get("expect_peers", 0))
            within = float(job.get("ready_timeout_s", 60.0))
            await wait_for(lambda: len(self._ready_peers()) >= expect, within, interval=0.05)
            names = self._names()
            emit({"event": "mesh_ready", "peers": [names.get(p) for p in self._ready_peers()]})
            await wait_for(lambda: self.discovery.embedder is not None, within, interval=0.05)
            await asyncio.wait_for(self.discovery.settled(), within)
            embedder = self.discovery.embedder
            emit({"event": "index_ready", "embedder": embedder.model_id if embedder else None})
            result = await self.research(
                str(job["query"]),
                csv_path=job.get("csv_path"),
                csv_url=job.get("csv_url"),
                on_event=emit,
            )
            await asyncio.to_thread(_write, Path(job["report_path"]), result["report"])
            await asyncio.to_thread(_write, Path(job["result_path"]), json.dumps(result, indent=1))
            emit(
                {
                    "event": "report_ready",
                    "report_path": job["report_path"],
                    "result_path": job["result_path"],
                }
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the job's failure is reported, the node keeps serving
            with contextlib.suppress(Exception):
                emit({"event": "job_failed", "error": f"{type(exc).__name__}: {exc}"})


FINDING_LIMITS = {"title": 300, "headline": 500, "text": 20_000, "source": 500}
"""Longest text per finding field the writer accepts (its input schema's limits)."""
MAX_WRITER_TEXT_CHARS = 4_000
"""Longest answer and plan text the writer accepts."""


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _clip(finding: dict[str, Any]) -> None:
    """Cut a finding's texts to what the writer accepts: a table's long cell values must
    not make the write-up fail."""
    for key, limit in FINDING_LIMITS.items():
        if isinstance(finding.get(key), str):
            finding[key] = _cut(finding[key], limit)


async def _none() -> None:
    return None


def _write(path: Path, text: str) -> None:
    path.write_text(text, "utf-8")
