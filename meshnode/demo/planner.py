"""Reading a question against the table itself: which column to measure, which rows,
which breakdown, and the answer in a sentence or two.

Theory of operation
-------------------
:func:`infer_schema` looks at every column of a parsed table once and gives it a kind:

* ``year``: every non-empty cell an integer between :data:`YEAR_MIN` and :data:`YEAR_MAX`,
  and either the name says ``year`` or there are at most :data:`MAX_CATEGORIES` of them;
* ``numeric``: at least :data:`MIN_NUMERIC_SHARE` of the non-empty cells are numbers;
* ``categorical``: at most :data:`MAX_CATEGORIES` distinct values, and no more than half as
  many as there are rows (so names and ids are not categories);
* ``text``: anything else (an id or a name: never grouped by, never filtered on).

:func:`plan_query` then matches the question's words (lower case, plurals folded:
``startups`` → ``startup``, ``industries`` → ``industry``) to the schema:

* a word naming a column (``sector``, ``countries``), or a synonym of one
  (:data:`COLUMN_SYNONYMS`: ``industry`` → ``sector``, ``raised`` → ``funding``), asks for
  that column — a breakdown for a categorical column, the measured value for a numeric one;
* a word or phrase that is a *value* of a categorical column (``fintech``, ``Series A``,
  ``2021``), or a country name whose ISO code is one (``India`` → ``IN``,
  :data:`COUNTRY_CODES`), becomes a filter on that column. Values of three characters or
  fewer match only as written (``AI``, ``US``), so ``in`` or ``us`` in a sentence are not
  India and the United States;
* two or more values of one column make that column the comparison (``India`` vs
  ``Brazil``); words of change (``trend``, ``changed``, ``grown``) ask for the yearly
  trend; ``average``/``median``/``how many`` choose the figure the answer leads with.

The plan's *kind* follows: ``compare`` (two or more values of one column), ``top`` or
``group`` (a breakdown), ``trend`` (only change over time), ``summary`` (only filters or
the value), or ``unanswerable`` when nothing in the question refers to the table (nor to
the dataset's own name; a year alone does not count) or when no row passes the filters.
An unanswerable plan still describes what the data covers (:meth:`Schema.coverage`), so
the report can say so.

:func:`answer` turns the data agent's (checked) figures into the sentences the report
opens with. :func:`plan_from_spec` validates a plan proposed by a language model against
the same schema: every column and value must exist, or it is refused.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from meshnode.demo import stats

__all__ = [
    "COUNTRY_CODES",
    "MAX_CATEGORIES",
    "ColumnInfo",
    "Plan",
    "Schema",
    "answer",
    "check_rows",
    "filters_text",
    "fmt_value",
    "infer_schema",
    "llm_messages",
    "parse_llm_plan",
    "plan_from_spec",
    "plan_query",
]

MAX_CATEGORIES = 50
"""Most distinct values a categorical column may have; more, and it is treated as text
(names, ids). Also the most values a filter may list."""
MIN_NUMERIC_SHARE = 0.9
"""Share of a column's non-empty cells that must be numbers for it to be numeric."""
YEAR_MIN, YEAR_MAX = 1800, 2200
"""Range of values a year column may hold."""
MAX_QUESTION_CHARS = 2_000
"""Longest question planned; a longer one is refused."""
MAX_ANSWER_GROUPS = 3
"""Most groups named in an answer sentence (the leader and the runners-up)."""
DEFAULT_TOP_N = 3
"""Groups named by a ``top`` answer when the question gives no number."""
MAX_TOP_N = 20
"""Largest ``top N`` honoured."""

MAX_SHOWN_VALUE_CHARS = 40
"""Longest cell value quoted in a coverage sentence (longer ones are cut with …)."""
MAX_SHOWN_COLUMNS = 12
"""Most categorical columns a coverage sentence lists."""
MAX_PROMPT_VALUE_CHARS = 80
"""Longest cell value put in a language model's prompt."""
MAX_PROMPT_COLUMNS_CHARS = 12_000
"""Most characters of column description in a language model's prompt; past it, the
listed values are dropped (names and kinds stay)."""

KINDS = ("compare", "top", "group", "trend", "summary", "unanswerable")
METRICS = ("sum", "mean", "median", "count")

COUNTRY_CODES: dict[str, str] = {
    "argentina": "AR",
    "australia": "AU",
    "austria": "AT",
    "belgium": "BE",
    "brazil": "BR",
    "canada": "CA",
    "chile": "CL",
    "china": "CN",
    "colombia": "CO",
    "denmark": "DK",
    "egypt": "EG",
    "estonia": "EE",
    "finland": "FI",
    "france": "FR",
    "germany": "DE",
    "india": "IN",
    "indonesia": "ID",
    "ireland": "IE",
    "israel": "IL",
    "italy": "IT",
    "japan": "JP",
    "kenya": "KE",
    "korea": "KR",
    "south korea": "KR",
    "mexico": "MX",
    "netherlands": "NL",
    "nigeria": "NG",
    "norway": "NO",
    "poland": "PL",
    "portugal": "PT",
    "singapore": "SG",
    "south africa": "ZA",
    "spain": "ES",
    "sweden": "SE",
    "switzerland": "CH",
    "turkey": "TR",
    "united arab emirates": "AE",
    "uae": "AE",
    "united kingdom": "UK",
    "britain": "UK",
    "great britain": "UK",
    "england": "UK",
    "united states": "US",
    "usa": "US",
    "america": "US",
    "vietnam": "VN",
}
"""Country names (lower case) and the two-letter code a table may hold instead. The
United Kingdom maps to ``UK``; a table using ``GB`` matches ``GB`` written as such."""

COLUMN_SYNONYMS: dict[str, tuple[str, ...]] = {
    "sector": ("industry", "vertical", "field", "domain", "space"),
    "country": ("nation", "geography", "region", "where", "market", "location"),
    "stage": ("round", "series"),
    "funding": ("raise", "raised", "raising", "money", "investment", "invested", "capital"),
    "year": ("when", "annual", "annually", "yearly", "time"),
    "company": ("startup", "firm", "business"),
    "revenue": ("sales", "income", "turnover"),
}
"""Words that name a column whose name contains the key (``industry`` asks for a column
named ``sector``)."""
WEAK_SYNONYMS = frozenset(
    (
        *("where", "when", "time", "field", "domain", "space", "market", "location"),
        *("series", "annual", "annually", "yearly"),
    )
)
"""Synonyms too common to show that a question is about the table: they choose a column
once something else in the question is the table's, but alone ("the best time to bake
bread", "where is the bakery") they do not make a question answerable."""

_TREND_WORDS = frozenset(
    (
        *("trend", "change", "changed", "changing", "grow", "grew", "grown", "growth"),
        *("evolve", "evolved", "evolution", "increase", "increased"),
        *("decrease", "decreased", "decline", "declined", "rise", "risen", "fall", "fallen"),
        *("yearly", "annual", "annually", "history", "historical"),
    )
)
_COMPARE_WORDS = frozenset(
    ("compare", "compared", "comparison", "versus", "vs", "between", "differ", "difference")
)
_TOP_WORDS = frozenset(
    ("top", "most", "largest", "biggest", "highest", "best", "leading", "lead", "leads", "which")
)
_METRIC_WORDS = {
    "average": "mean",
    "mean": "mean",
    "typical": "median",
    "median": "median",
    "many": "count",
    "count": "count",
    "number": "count",
    "total": "sum",
    "sum": "sum",
}
_STOP = frozenset(
    (
        *("a", "an", "and", "are", "as", "at", "be", "by", "do", "does", "for", "from"),
        *("has", "have", "how", "i", "in", "is", "it", "its", "of", "on", "or", "that"),
        *("the", "their", "them", "these", "they", "this", "those", "to", "was", "were"),
        *("what", "which", "while", "who", "why", "with", "me", "my", "us", "we", "you"),
        *("our", "your", "there", "than", "then", "so", "if", "not", "no", "all", "any"),
    )
)
_WORD = re.compile(r"[A-Za-z0-9]+")
_MONEY_WORDS = frozenset(("usd", "funding", "amount", "revenue", "price", "cost", "eur", "gbp"))
_SHORT_VALUE = 3
"""Values this short (characters) match only as written: ``AI``, ``US``, ``IN``."""


def _fold(word: str) -> str:
    """Lower case, plurals folded: ``Startups`` → ``startup``, ``industries`` → ``industry``,
    ``classes`` → ``class``."""
    w = word.lower()
    if len(w) > 4 and w.endswith("ies"):
        return w[:-3] + "y"
    if len(w) > 4 and w.endswith(("sses", "shes", "ches", "xes")):
        return w[:-2]
    if len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        return w[:-1]
    return w


def _tokens(text: str) -> list[str]:
    return _WORD.findall(text)


def _name_words(name: str) -> tuple[str, ...]:
    """A column name's words, folded: ``funding_usd`` → ``("funding", "usd")``."""
    parts = re.findall(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|[0-9]+", name)
    return tuple(_fold(p) for p in parts if p)


# --------------------------------------------------------------------------- schema


@dataclasses.dataclass(frozen=True, slots=True)
class ColumnInfo:
    """One column as the planner sees it."""

    name: str
    kind: str
    """``numeric``, ``year``, ``categorical`` or ``text``."""
    values: tuple[str, ...] = ()
    """Distinct values of a categorical or year column, sorted."""
    low: float | None = None
    high: float | None = None
    """Smallest and largest value of a numeric or year column."""


@dataclasses.dataclass(frozen=True, slots=True)
class Schema:
    """The kinds of a table's columns, and what the table is called."""

    dataset: str
    rows: int
    columns: tuple[ColumnInfo, ...]

    def of_kind(self, kind: str) -> tuple[ColumnInfo, ...]:
        return tuple(c for c in self.columns if c.kind == kind)

    def get(self, name: str) -> ColumnInfo | None:
        return next((c for c in self.columns if c.name == name), None)

    @property
    def year(self) -> ColumnInfo | None:
        years = self.of_kind("year")
        named = [c for c in years if "year" in _name_words(c.name)]
        chosen = named or list(years)
        return chosen[0] if chosen else None

    @property
    def default_value(self) -> ColumnInfo | None:
        """The column measured when the question names none: the first numeric column
        whose name says money, else the first numeric column."""
        numeric = self.of_kind("numeric")
        money = [c for c in numeric if set(_name_words(c.name)) & _MONEY_WORDS]
        chosen = money or list(numeric)
        return chosen[0] if chosen else None

    @property
    def noun(self) -> str:
        """What a row is: the plural of the first text column's name (``companies``), else
        ``rows``."""
        text = self.of_kind("text")
        if not text:
            return "rows"
        word = text[0].name.strip().lower().replace("_", " ")
        if word.endswith("y") and not word.endswith(("ay", "ey", "oy")):
            return word[:-1] + "ies"
        return word if word.endswith("s") else word + "s"

    @property
    def singular(self) -> str:
        noun = self.noun
        if noun.endswith("ies"):
            return noun[:-3] + "y"
        return noun[:-1] if noun.endswith("s") else noun

    def describe(self) -> str:
        """One line naming the columns used by kind."""
        parts = []
        for kind in ("numeric", "year", "categorical", "text"):
            cols = self.of_kind(kind)
            if cols:
                label = {"text": "text (not analysed)"}.get(kind, kind)
                parts.append(f"{label}: {', '.join(f'`{c.name}`' for c in cols)}")
        return "; ".join(parts)

    def coverage(self) -> str:
        """What the table covers, in a sentence or two."""
        bits = []
        value = self.default_value
        if value is not None:
            bits.append(f"`{value.name}` for {self.rows} {self.noun}")
        year = self.year
        if year is not None and year.values:
            bits.append(f"years {year.values[0]}–{year.values[-1]}")
        for c in self.of_kind("categorical")[:MAX_SHOWN_COLUMNS]:
            shown = ", ".join(_cut(v, MAX_SHOWN_VALUE_CHARS) for v in c.values[:8])
            bits.append(f"`{c.name}` ({shown}{', …' if len(c.values) > 8 else ''})")
        other = [c.name for c in self.of_kind("numeric") if c is not value]
        if other:
            bits.append("also " + ", ".join(f"`{n}`" for n in other))
        return f"`{self.dataset}` covers " + "; ".join(bits) + "."

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "rows": self.rows,
            "columns": [
                {"name": c.name, "kind": c.kind, "values": list(c.values[:MAX_CATEGORIES])}
                for c in self.columns
            ],
        }


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _number(text: str) -> float | None:
    try:
        value = float(text.replace(",", "").replace("_", ""))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def infer_schema(table: stats.Table, dataset: str) -> Schema:
    """Each column's kind (see the module docstring)."""
    infos = []
    n = len(table.rows)
    for i, name in enumerate(table.columns):
        cells = [row[i] for row in table.rows if row[i]]
        numbers = [x for x in (_number(c) for c in cells) if x is not None]
        distinct = sorted(set(cells))
        is_year = (
            bool(cells)
            and len(numbers) == len(cells)
            and all(x == int(x) and YEAR_MIN <= x <= YEAR_MAX for x in numbers)
            and ("year" in _name_words(name) or len(distinct) <= MAX_CATEGORIES)
        )
        if is_year:
            years = sorted({str(int(x)) for x in numbers}, key=int)
            infos.append(ColumnInfo(name, "year", tuple(years), min(numbers), max(numbers)))
        elif cells and len(numbers) >= MIN_NUMERIC_SHARE * len(cells):
            infos.append(ColumnInfo(name, "numeric", (), min(numbers), max(numbers)))
        elif cells and len(distinct) <= MAX_CATEGORIES and 2 * len(distinct) <= max(n, 2):
            infos.append(ColumnInfo(name, "categorical", tuple(distinct)))
        else:
            infos.append(ColumnInfo(name, "text"))
    return Schema(dataset, n, tuple(infos))


# --------------------------------------------------------------------------- plan


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    """What the question asks of the table."""

    query: str
    kind: str
    value_column: str | None
    group_by: tuple[str, ...] = ()
    year_column: str | None = None
    filters: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """``((column, (value, ...)), ...)``: rows whose cell is one of the values."""
    compare_column: str | None = None
    metric: str = "sum"
    top_n: int | None = None
    matched: tuple[str, ...] = ()
    """How the question's words were read, for the report (``India → country = IN``)."""
    reason: str = ""
    """Why an unanswerable plan is unanswerable."""
    method: str = "deterministic"
    note: str = ""
    """How the plan was made (and, when a language model failed, why it was not used)."""

    @property
    def by_year(self) -> bool:
        return self.year_column is not None

    @property
    def search_query(self) -> str:
        return self.query

    def filter_dict(self) -> dict[str, list[str]]:
        return {column: list(values) for column, values in self.filters}

    def describe(self) -> str:
        """The plan in one line."""
        if self.kind == "unanswerable":
            return f"nothing to compute: {self.reason}"
        parts = [f"{self.kind}: {_METRIC_NAMES[self.metric]} of `{self.value_column}`"]
        if self.group_by:
            parts.append("by " + ", ".join(f"`{g}`" for g in self.group_by))
        if self.year_column:
            parts.append(f"over `{self.year_column}`")
        if self.filters:
            parts.append("where " + filters_text(self.filters))
        return " ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "value_column": self.value_column,
            "group_by": list(self.group_by),
            "year_column": self.year_column,
            "filters": self.filter_dict(),
            "compare_column": self.compare_column,
            "metric": self.metric,
            "top_n": self.top_n,
            "matched": list(self.matched),
            "reason": self.reason,
            "method": self.method,
            "note": self.note,
            "describe": self.describe(),
        }


_METRIC_NAMES = {"sum": "total", "mean": "mean", "median": "median", "count": "count"}


def filters_text(filters: Iterable[tuple[str, Sequence[str]]]) -> str:
    out = []
    for column, values in filters:
        if len(values) == 1:
            out.append(f"`{column}` = {values[0]}")
        else:
            out.append(f"`{column}` ∈ {{{', '.join(values)}}}")
    return " and ".join(out)


def _value_forms(column: ColumnInfo) -> list[tuple[tuple[str, ...], str, bool, str]]:
    """``(words, value, exact case, label)`` for every way the question may name a value
    of ``column``."""
    forms = []
    for value in column.values:
        words = tuple(_tokens(value))
        if not words:
            continue
        short = len(value.replace(" ", "")) <= _SHORT_VALUE
        if short:
            forms.append((words, value, True, value))
        elif len(words) > 1 or words[0].lower() not in _STOP:
            forms.append((tuple(_fold(w) for w in words), value, False, value))
        if len(value) == 2 and value.isupper():
            for name, code in COUNTRY_CODES.items():
                if code == value:
                    forms.append(
                        (tuple(_fold(w) for w in name.split()), value, False, name.title())
                    )
    return forms


def _find(words: Sequence[str], folded: Sequence[str], form: tuple[str, ...], exact: bool) -> bool:
    hay = words if exact else folded
    n = len(form)
    return any(tuple(hay[i : i + n]) == form for i in range(len(hay) - n + 1))


def _column_named(column: ColumnInfo, folded: set[str]) -> str | None:
    """The question word that names ``column`` (itself or a synonym), or None."""
    name_words = set(_name_words(column.name))
    for word in sorted(name_words & folded):
        if word not in _STOP and len(word) > 1:
            return word
    for key, synonyms in COLUMN_SYNONYMS.items():
        if key in name_words:
            for s in synonyms:
                if s in folded:
                    return s
    return None


def plan_query(query: str, schema: Schema) -> Plan:
    """The deterministic plan for ``query`` (see the module docstring)."""
    query = query.strip()
    if not query:
        raise ValueError("the question is empty")
    if len(query) > MAX_QUESTION_CHARS:
        raise ValueError(f"the question is over {MAX_QUESTION_CHARS} characters")
    words = _tokens(query)
    folded = [_fold(w) for w in words]
    fset = set(folded)
    matched: list[str] = []

    filters: dict[str, list[str]] = {}
    for column in (*schema.of_kind("categorical"), *schema.of_kind("year")):
        for form, cell, exact, label in _value_forms(column):
            if cell not in filters.get(column.name, []) and _find(words, folded, form, exact):
                filters.setdefault(column.name, []).append(cell)
                matched.append(f"{label} → `{column.name}` = {cell}")

    named: dict[str, str] = {}
    for column in schema.columns:
        word = _column_named(column, fset)
        if word:
            named[column.name] = word
            matched.append(f"{word} → column `{column.name}`")

    dataset_words = {_fold(w) for w in _tokens(schema.dataset.rsplit(".", 1)[0])}
    dataset_hit = sorted((dataset_words - _STOP) & fset)
    if dataset_hit:
        matched.append(f"{dataset_hit[0]} → the dataset `{schema.dataset}`")

    value: str | None = next(
        (c.name for c in schema.of_kind("numeric") if c.name in named),
        schema.default_value.name if schema.default_value else None,
    )
    metric = next((_METRIC_WORDS[w] for w in folded if w in _METRIC_WORDS), "sum")
    top_n = None
    for i, w in enumerate(folded[:-1]):
        if w == "top" and words[i + 1].isdigit():
            top_n = max(1, min(int(words[i + 1]), MAX_TOP_N))
    trend_asked = bool(fset & _TREND_WORDS)
    year = schema.year
    year_named = year is not None and year.name in named

    # A year alone ("the world cup in 2022"), a text column's name other than the rows'
    # own noun ("the station's name") or a common synonym ("time", "where") does not make
    # a question about this table.
    year_only = {year.name} if year is not None else set()
    text = schema.of_kind("text")
    noun_column = text[0].name if text else None
    strong = {
        c
        for c, word in named.items()
        if word not in WEAK_SYNONYMS
        and ((schema.get(c) or ColumnInfo(c, "text")).kind != "text" or c == noun_column)
    }
    relevant = bool(set(filters) - year_only or dataset_hit or strong)
    if not relevant or value is None:
        reason = (
            "nothing in the question refers to the data's columns or values"
            if value is not None
            else "the data has no numeric column to measure"
        )
        return Plan(query, "unanswerable", value, matched=tuple(matched), reason=reason)

    compare = next((c for c, vs in filters.items() if len(vs) >= 2), None)
    group_by: list[str] = []
    if compare is not None:
        group_by.append(compare)
    for column in schema.of_kind("categorical"):
        single = len(filters.get(column.name, [])) == 1
        if column.name in named and column.name not in group_by and not single:
            group_by.append(column.name)
    year_column = None
    if (
        year is not None
        and (trend_asked or year_named)
        and year.name != compare
        and len(filters.get(year.name, [])) != 1
    ):
        year_column = year.name
    if trend_asked and year is None:
        matched.append("change over time asked, but the table has no year column")
    if compare is not None:
        kind = "compare"
    elif group_by:
        kind = "top" if (fset & _TOP_WORDS or top_n) else "group"
    elif year_column is not None:
        kind = "trend"
    else:
        kind = "summary"
    ordered_filters = tuple(
        (c.name, tuple(filters[c.name])) for c in schema.columns if c.name in filters
    )
    plan = Plan(
        query,
        kind,
        value,
        tuple(group_by),
        year_column,
        ordered_filters,
        compare,
        metric,
        top_n if kind == "top" else None,
        tuple(matched),
    )
    return plan


def check_rows(plan: Plan, table: stats.Table) -> Plan:
    """``plan`` unchanged when some row passes its filters (and has a number); else an
    unanswerable plan saying that no row does."""
    if plan.kind == "unanswerable" or plan.value_column is None:
        return plan
    spec = stats.AnalysisSpec(plan.value_column, (), None, plan.filters)
    records, _ = stats.records(table, spec)
    if records:
        return plan
    return dataclasses.replace(
        plan,
        kind="unanswerable",
        group_by=(),
        year_column=None,
        compare_column=None,
        reason=f"no row has a number in `{plan.value_column}` where {filters_text(plan.filters)}",
    )


def plan_from_spec(query: str, schema: Schema, spec: Mapping[str, Any]) -> Plan:
    """A plan proposed as JSON (by a language model), checked against ``schema``: every
    column must exist with the right kind and every filter value must be in the data.
    Raises ``ValueError`` naming what is wrong."""
    if not isinstance(spec, Mapping):
        raise ValueError("the plan is not a JSON object")
    kind = spec.get("kind")
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}")
    value = spec.get("value_column") or (
        schema.default_value.name if schema.default_value else None
    )
    column = schema.get(value) if isinstance(value, str) else None
    if column is None or column.kind != "numeric":
        raise ValueError(f"value_column {value!r} is not a numeric column")
    group_by = spec.get("group_by") or []
    if not isinstance(group_by, list) or len(group_by) > 4:
        raise ValueError("group_by must be a list of at most 4 columns")
    for g in group_by:
        info = schema.get(g) if isinstance(g, str) else None
        if info is None or info.kind not in ("categorical", "year"):
            raise ValueError(f"group_by {g!r} is not a categorical column")
    year_column = spec.get("year_column")
    if year_column is not None:
        info = schema.get(year_column) if isinstance(year_column, str) else None
        if info is None or info.kind != "year":
            raise ValueError(f"year_column {year_column!r} is not a year column")
    raw_filters = spec.get("filters") or {}
    if not isinstance(raw_filters, Mapping) or len(raw_filters) > 8:
        raise ValueError("filters must be an object of at most 8 columns")
    filters = []
    for name, values in raw_filters.items():
        info = schema.get(name)
        if info is None or info.kind not in ("categorical", "year"):
            raise ValueError(f"filter column {name!r} is not categorical")
        if not isinstance(values, list) or not 1 <= len(values) <= MAX_CATEGORIES:
            raise ValueError(f"filter {name!r} needs 1..{MAX_CATEGORIES} values")
        for v in values:
            if not isinstance(v, str) or v not in info.values:
                raise ValueError(f"{v!r} is not a value of {name!r}")
        filters.append((name, tuple(dict.fromkeys(values))))
    compare = spec.get("compare_column")
    if compare is not None and compare not in group_by:
        raise ValueError("compare_column must be one of group_by")
    metric = spec.get("metric", "sum")
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}")
    top_n = spec.get("top_n")
    if top_n is not None and (not isinstance(top_n, int) or not 1 <= top_n <= MAX_TOP_N):
        raise ValueError(f"top_n must be 1..{MAX_TOP_N}")
    reason = str(spec.get("reason") or "the question is not about this data")[:300]
    if kind == "unanswerable":
        return Plan(query, kind, column.name, reason=reason)
    if kind in ("compare", "top", "group") and not group_by:
        raise ValueError(f"a {kind} plan needs group_by")
    if kind == "trend" and year_column is None:
        raise ValueError("a trend plan needs year_column")
    return Plan(
        query,
        kind,
        column.name,
        tuple(dict.fromkeys(group_by)),
        year_column,
        tuple(filters),
        compare,
        metric,
        top_n,
    )


# --------------------------------------------------------------------------- answer


def _short(value: float) -> str:
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= size:
            return f"{value / size:.{2 if suffix == 'B' else 1}f}{suffix}"
    return f"{value:.0f}" if value == int(value) else f"{value:.2f}"


def fmt_value(column: str | None, value: float) -> str:
    """``$12.3M`` for a money column (its name says ``usd``, ``funding``...), ``12.3M``
    otherwise."""
    money = column is not None and bool(set(_name_words(column)) & _MONEY_WORDS)
    text = _short(value)
    if money:
        return f"-${text[1:]}" if text.startswith("-") else f"${text}"
    return text


def _figure(plan: Plan, entry: Mapping[str, Any]) -> float:
    key = {"sum": "sum", "mean": "mean", "median": "median", "count": "count"}[plan.metric]
    return float(entry.get(key, entry.get("total", 0.0)) or 0.0)


def _subject(plan: Plan, schema: Schema, skip: str | None = None) -> str:
    """``Fintech companies in India (IN) in 2021``: the noun with the single-valued
    filters."""
    before, after = [], []
    for column, values in plan.filters:
        if len(values) != 1 or column == skip:
            continue
        info = schema.get(column)
        if info is not None and info.kind == "year":
            after.append(f"in {values[0]}")
        elif "countr" in column.lower():
            after.append(f"in {_label(column, values[0])}")
        else:
            before.append(values[0])
    return " ".join([*before, schema.noun, *after])


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _label(column: str, key: str) -> str:
    if len(key) == 2 and key.isupper() and "countr" in column.lower():
        names = [n.title() for n, c in COUNTRY_CODES.items() if c == key]
        if names:
            name = names[0]
            return f"{'the ' if name.startswith('United') else ''}{name} ({key})"
    return key


def _count(n: int, schema: Schema) -> str:
    return f"{n} {schema.noun if n != 1 else schema.singular}"


def _metric_phrase(plan: Plan, entry: Mapping[str, Any], schema: Schema) -> str:
    v = plan.value_column
    total = fmt_value(v, float(entry.get("sum", entry.get("total", 0.0))))
    count = _count(int(entry.get("count", 0)), schema)
    mean = fmt_value(v, float(entry.get("mean", 0.0)))
    median = fmt_value(v, float(entry.get("median", 0.0)))
    if plan.metric == "mean":
        return f"a mean `{v}` of {mean} over {count} (total {total})"
    if plan.metric == "median":
        return f"a median `{v}` of {median} over {count} (total {total})"
    if plan.metric == "count":
        return f"{count} (total `{v}` {total})"
    return f"{total} in total across {count} (mean {mean})"


def answer(plan: Plan, out: Mapping[str, Any], schema: Schema) -> str:
    """One or two sentences answering the question from the data agent's figures."""
    if plan.kind == "unanswerable":
        return (
            f"The data cannot answer this question: {plan.reason}. " + schema.coverage()
        ).strip()
    summary = out.get("summary") or {}
    groups = out.get("groups") or {}
    v = plan.value_column
    subject = _subject(plan, schema, skip=plan.compare_column)
    among = f"Among {subject}, " if subject != schema.noun else ""
    sentences = []
    if plan.kind == "compare" and plan.compare_column:
        column = plan.compare_column
        wanted = dict(plan.filters).get(column) or ()
        by_key = {e["key"]: e for e in groups.get(column, []) if isinstance(e, dict)}
        keys = list(wanted) or list(by_key)
        parts = []
        for key in keys:
            entry = by_key.get(key)
            if entry is None:
                parts.append(f"{_label(column, key)} has none in the data")
            else:
                parts.append(f"{_label(column, key)} has {_metric_phrase(plan, entry, schema)}")
        sentences.append(_cap(subject) + ": " + "; ".join(parts) + ".")
        present = sorted(
            (e for k, e in by_key.items() if k in keys), key=lambda e: -_figure(plan, e)
        )
        if len(present) >= 2 and _figure(plan, present[-1]) > 0:
            lead, last = present[0], present[-1]
            ratio = _figure(plan, lead) / _figure(plan, last)
            sentences.append(
                f"{_cap(_label(column, lead['key']))} leads with {ratio:.1f}× the "
                f"{_METRIC_NAMES[plan.metric]} of {_label(column, last['key'])}."
            )
    elif plan.kind in ("top", "group"):
        for column in plan.group_by[:2]:
            entries = [e for e in groups.get(column, []) if isinstance(e, dict)]
            if not entries:
                continue
            ranked = sorted(entries, key=lambda e: (-_figure(plan, e), str(e.get("key"))))
            n = plan.top_n or (DEFAULT_TOP_N if plan.kind == "top" else MAX_ANSWER_GROUPS)
            lead, rest = ranked[0], ranked[1:n]
            share = lead.get("share")
            share_text = (
                f", {share * 100:.1f}% of the total"
                if isinstance(share, int | float) and plan.metric == "sum"
                else ""
            )
            text = (
                f"{among}by `{column}`, {_label(column, lead['key'])} leads with "
                f"{_metric_phrase(plan, lead, schema)}{share_text}"
            )
            if rest:
                text += ", followed by " + ", ".join(
                    f"{_label(column, e['key'])} ({fmt_value(v, _figure(plan, e))})"
                    if plan.metric != "count"
                    else f"{_label(column, e['key'])} ({int(e.get('count', 0))})"
                    for e in rest
                )
            sentences.append(_cap(text) + ".")
    elif summary:
        n = int(summary.get("count", 0))
        if plan.metric == "count":
            what = subject if n != 1 else subject.replace(schema.noun, schema.singular, 1)
            sentences.append(
                f"The data has {n} {what} "
                f"(total `{v}` {fmt_value(v, float(summary.get('sum', 0.0)))})."
            )
        else:
            sentences.append(
                f"{_cap(subject)} ({n} in the data) have "
                f"{fmt_value(v, float(summary.get('sum', 0.0)))} of `{v}` in total "
                f"(mean {fmt_value(v, float(summary.get('mean', 0.0)))}, median "
                f"{fmt_value(v, float(summary.get('median', 0.0)))})."
            )
    trend = out.get("trend")
    years = out.get("by_year") or []
    if plan.year_column and trend and years:
        sentences.append(
            f"Over the years the yearly total went from {fmt_value(v, years[0]['total'])} in "
            f"{trend['first_year']} to {fmt_value(v, years[-1]['total'])} in "
            f"{trend['last_year']}"
            + (
                f" ({trend['cagr'] * 100:.1f}% a year compounded)"
                if trend.get("cagr") is not None
                else ""
            )
            + f", peaking in {trend['peak_year']}."
        )
    return " ".join(sentences) or "The data agent returned no figures for this question."


# --------------------------------------------------------------------------- language model


def llm_messages(query: str, schema: Schema) -> list[dict[str, str]]:
    """The chat messages asking a language model for a plan as JSON."""
    columns = [
        {
            "name": c.name,
            "kind": c.kind,
            **(
                {"values": [_cut(v, MAX_PROMPT_VALUE_CHARS) for v in c.values[:MAX_CATEGORIES]]}
                if c.values
                else {}
            ),
        }
        for c in schema.columns
    ]
    described = json.dumps(columns)
    if len(described) > MAX_PROMPT_COLUMNS_CHARS:
        described = json.dumps([{"name": c.name, "kind": c.kind} for c in schema.columns])
    prompt = (
        f"Table `{schema.dataset}` with {schema.rows} rows. Columns:\n"
        + described
        + f"\n\nQuestion: {query}\n\nReply with one JSON object and nothing else: "
        '{"kind": one of ' + json.dumps(list(KINDS)) + ', "value_column": a numeric column, '
        '"group_by": [categorical columns], "year_column": a year column or null, '
        '"filters": {column: [values exactly as listed]}, "compare_column": one of group_by '
        'or null, "metric": one of ' + json.dumps(list(METRICS)) + ', "top_n": integer or '
        'null, "reason": why, when kind is "unanswerable"}. Use "unanswerable" when the '
        "question is not about this table."
    )
    return [
        {"role": "system", "content": "You turn questions into analysis plans for a table."},
        {"role": "user", "content": prompt},
    ]


def parse_llm_plan(query: str, schema: Schema, text: str, max_chars: int) -> Plan:
    """The plan in a model's answer (a JSON object, possibly fenced), checked by
    :func:`plan_from_spec`; ``ValueError`` when there is none or it is invalid."""
    if len(text) > max_chars:
        raise ValueError(f"the answer is over {max_chars} characters")
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        raise ValueError("the answer holds no JSON object")
    try:
        spec = json.loads(text[start : end + 1])
    except ValueError as exc:
        raise ValueError(f"the answer is not JSON: {exc}") from None
    return plan_from_spec(query, schema, spec)
