"""The demo's planner reads a question against the table itself.

Invariants: column kinds are inferred from the cells (numbers, years, a few repeated
values, or text); a question's words match column names, synonyms and values (plurals and
case folded, short codes only as written, country names to their codes); the plan's kind
follows from what matched; a question that refers to nothing in the table is planned as
unanswerable; a plan proposed by a language model is refused unless every column and
value exists; and the answer's figures are the table's.
"""

from __future__ import annotations

import csv
import io
import statistics

import pytest

from meshnode.demo import planner, stats
from meshnode.demo.agents import DEMO_DATA_DIR

STARTUPS = (DEMO_DATA_DIR / "startups.csv").read_bytes()


@pytest.fixture(scope="module")
def table() -> stats.Table:
    return stats.parse_csv(STARTUPS)


@pytest.fixture(scope="module")
def schema(table: stats.Table) -> planner.Schema:
    return planner.infer_schema(table, "startups.csv")


def _csv(rows: list[list[str]]) -> stats.Table:
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    return stats.parse_csv(out.getvalue().encode())


def test_column_kinds_of_the_bundled_table(schema: planner.Schema) -> None:
    kinds = {c.name: c.kind for c in schema.columns}
    assert kinds == {
        "company": "text",
        "sector": "categorical",
        "funding_usd": "numeric",
        "year": "year",
        "country": "categorical",
        "stage": "categorical",
    }
    assert schema.default_value is not None and schema.default_value.name == "funding_usd"
    assert schema.noun == "companies" and schema.singular == "company"


def test_column_kinds_of_another_table() -> None:
    rows = [["city", "month", "rainfall_mm", "station_id", "recorded"]]
    for i in range(30):
        rows.append([["Oslo", "Lima", "Pune"][i % 3], str(1 + i % 12), f"{i * 1.5:.1f}",
                     f"S-{i:04d}", str(2000 + i % 5)])  # fmt: skip
    schema = planner.infer_schema(_csv(rows), "weather.csv")
    kinds = {c.name: c.kind for c in schema.columns}
    assert kinds == {
        "city": "categorical",
        "month": "numeric",
        "rainfall_mm": "numeric",
        "station_id": "text",
        "recorded": "year",
    }
    assert schema.year is not None and schema.year.name == "recorded"
    assert schema.get("city") == planner.ColumnInfo("city", "categorical", ("Lima", "Oslo", "Pune"))


@pytest.mark.parametrize(
    ("question", "kind", "group_by", "year", "filters", "metric"),
    [
        (
            "How do fintech startups in India compare with those in Brazil?",
            "compare",
            ("country",),
            None,
            {"sector": ["Fintech"], "country": ["BR", "IN"]},
            "sum",
        ),
        (
            "Which startup sectors and countries attract the most funding, and how has "
            "funding changed over the years?",
            "top",
            ("sector", "country"),
            "year",
            {},
            "sum",
        ),
        ("What is the average funding by stage?", "group", ("stage",), None, {}, "mean"),
        ("Top 2 countries for AI startups", "top", ("country",), None, {"sector": ["AI"]}, "sum"),
        ("How has funding changed over time?", "trend", (), "year", {}, "sum"),
        (
            "How many Series A rounds were there in 2021?",
            "summary",
            (),
            None,
            {"year": ["2021"], "stage": ["Series A"]},
            "count",
        ),
        (
            "Compare industries in the UK versus the United States",
            "compare",
            ("country", "sector"),
            None,
            {"country": ["UK", "US"]},
            "sum",
        ),
        # "in" and "us" are words here, not India (IN) and the United States (US).
        (
            "Tell us what is in the data for edtech",
            "summary",
            (),
            None,
            {"sector": ["Edtech"]},
            "sum",
        ),
        ("best sourdough recipe", "unanswerable", (), None, {}, "sum"),
        ("Who won the football world cup in 2022?", "unanswerable", (), None, {}, "sum"),
        ("What is the best time to bake bread?", "unanswerable", (), None, {}, "sum"),
        ("Where is the nearest bakery?", "unanswerable", (), None, {}, "sum"),
        ("How many companies are there?", "summary", (), None, {}, "count"),
    ],
)
def test_plans(
    schema: planner.Schema,
    question: str,
    kind: str,
    group_by: tuple[str, ...],
    year: str | None,
    filters: dict[str, list[str]],
    metric: str,
) -> None:
    plan = planner.plan_query(question, schema)
    assert plan.kind == kind, plan
    assert plan.group_by == group_by
    assert plan.year_column == year
    assert {c: sorted(v) for c, v in plan.filter_dict().items()} == {
        c: sorted(v) for c, v in filters.items()
    }
    assert plan.metric == metric
    assert plan.value_column == "funding_usd"


def test_no_matching_rows_is_unanswerable(table: stats.Table, schema: planner.Schema) -> None:
    plan = planner.plan_query("fintech startups in Brazil in 2018", schema)
    assert plan.kind == "summary"
    checked = planner.check_rows(plan, table)
    assert checked.kind == "unanswerable"
    assert "no row" in checked.reason and "Fintech" in checked.reason


def test_unanswerable_answer_says_what_the_data_covers(schema: planner.Schema) -> None:
    text = planner.answer(planner.plan_query("best sourdough recipe", schema), {}, schema)
    assert text.startswith("The data cannot answer this question")
    for word in ("funding_usd", "100 companies", "2018–2024", "Fintech", "Series A"):
        assert word in text


def test_compare_answer_has_the_tables_figures(table: stats.Table, schema: planner.Schema) -> None:
    """The answer to a comparison names each side's total and count, as the CSV has them."""
    plan = planner.plan_query("How do AI startups in the UK compare with those in the US?", schema)
    out = stats.analyze(
        table, stats.AnalysisSpec(plan.value_column or "", plan.group_by, None, plan.filters)
    )
    text = planner.answer(plan, out, schema)
    rows = list(csv.DictReader(io.StringIO(STARTUPS.decode())))
    for code in ("UK", "US"):
        values = [
            float(r["funding_usd"]) for r in rows if r["sector"] == "AI" and r["country"] == code
        ]
        total = planner.fmt_value("usd", sum(values))
        assert f"({code}) has {total} in total across {len(values)} companies" in text
    assert text.startswith("AI companies:")


def test_group_answer_leads_with_the_largest_mean(
    table: stats.Table, schema: planner.Schema
) -> None:
    plan = planner.plan_query("What is the average funding by stage?", schema)
    out = stats.analyze(table, stats.AnalysisSpec("funding_usd", ("stage",), None))
    rows = list(csv.DictReader(io.StringIO(STARTUPS.decode())))
    means = {
        s: statistics.fmean(float(r["funding_usd"]) for r in rows if r["stage"] == s)
        for s in {r["stage"] for r in rows}
    }
    best = max(means, key=lambda s: means[s])
    assert planner.answer(plan, out, schema).startswith(
        f"By `stage`, {best} leads with a mean `funding_usd` of "
        f"{planner.fmt_value('funding_usd', means[best])}"
    )


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ({"kind": "explode"}, "unknown kind"),
        ({"kind": "group", "group_by": ["planet"]}, "not a categorical column"),
        ({"kind": "group", "group_by": ["company"]}, "not a categorical column"),
        ({"kind": "summary", "value_column": "sector"}, "not a numeric column"),
        ({"kind": "summary", "filters": {"country": ["Atlantis"]}}, "not a value of"),
        ({"kind": "trend"}, "needs year_column"),
        ({"kind": "compare", "group_by": []}, "needs group_by"),
        ({"kind": "summary", "metric": "mode"}, "unknown metric"),
        ([1, 2], "not a JSON object"),
    ],
)
def test_a_proposed_plan_is_checked_against_the_schema(
    schema: planner.Schema, spec: object, error: str
) -> None:
    with pytest.raises(ValueError, match=error):
        planner.plan_from_spec("q", schema, spec)  # type: ignore[arg-type]


def test_a_valid_proposed_plan_is_kept(schema: planner.Schema) -> None:
    text = (
        'Here is the plan:\n```json\n{"kind": "compare", "value_column": "funding_usd", '
        '"group_by": ["stage"], "filters": {"stage": ["Seed", "Series C"]}, '
        '"compare_column": "stage", "metric": "median"}\n```'
    )
    plan = planner.parse_llm_plan("seed vs series c", schema, text, 4_000)
    assert (plan.kind, plan.group_by, plan.compare_column, plan.metric) == (
        "compare",
        ("stage",),
        "stage",
        "median",
    )
    assert plan.filter_dict() == {"stage": ["Seed", "Series C"]}
    with pytest.raises(ValueError, match="no JSON object"):
        planner.parse_llm_plan("q", schema, "I think you should group by sector.", 4_000)
    with pytest.raises(ValueError, match="over 10 characters"):
        planner.parse_llm_plan("q", schema, text, 10)


def test_filters_select_rows_in_both_implementations(table: stats.Table) -> None:
    """The data agent's numpy figures and the orchestrator's stdlib check filter alike."""
    spec = stats.AnalysisSpec("funding_usd", ("country",), "year", (("sector", ("Fintech",)),))
    out = stats.analyze(table, spec)
    rows = list(csv.DictReader(io.StringIO(STARTUPS.decode())))
    fintech = [float(r["funding_usd"]) for r in rows if r["sector"] == "Fintech"]
    assert out["summary"]["count"] == len(fintech)
    assert out["summary"]["sum"] == pytest.approx(sum(fintech))
    assert stats.agreement(out, table, spec)[0] == 1.0
    unfiltered = stats.AnalysisSpec("funding_usd", ("country",), "year")
    assert stats.agreement(out, table, unfiltered)[0] < 0.5


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        ({"filters": {"sector": "Fintech"}}, "string values"),
        ({"filters": {"sector": []}}, "string values"),
        ({"filters": {f"c{i}": ["x"] for i in range(9)}}, "at most 8"),
        ({"filters": {"sector": ["x"] * 51}}, "string values"),
        ({"filters": {"sector": ["x" * 1_001]}}, "string values"),
    ],
)
def test_bad_filters_are_refused(payload: dict[str, object], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        stats.AnalysisSpec.from_input(payload)


def test_question_bounds(schema: planner.Schema) -> None:
    with pytest.raises(ValueError, match="empty"):
        planner.plan_query("   ", schema)
    with pytest.raises(ValueError, match="over 2000 characters"):
        planner.plan_query("x" * 2_001, schema)


def test_a_trend_without_years_is_noted() -> None:
    rows = [["shop", "sales"], *[[["a", "b"][i % 2], str(i)] for i in range(10)]]
    schema = planner.infer_schema(_csv(rows), "shops.csv")
    plan = planner.plan_query("How have sales changed by shop?", schema)
    assert (plan.kind, plan.group_by, plan.year_column) == ("group", ("shop",), None)
    assert "change over time asked, but the table has no year column" in plan.matched
