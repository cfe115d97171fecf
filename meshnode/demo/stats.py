"""Statistics on a CSV table, twice: with numpy (the data agent) and with the standard
library (the orchestrator's check of the data agent's numbers).

Theory of operation
-------------------
:func:`parse_csv` turns bytes into a :class:`Table` under hard limits (rows, columns,
cell length). :func:`analyze` computes, for one numeric column:

* ``summary``: count, sum, mean, median, std, min and max. ``std`` is the *sample*
  standard deviation (``ddof=1``, the estimator a spreadsheet's ``STDEV`` uses); it is 0
  for a single value.
* ``groups``: the same figures (without std) per value of each ``group_by`` column, plus
  each group's share of the total, ordered by total (largest first, then key).
* ``by_year``: count, total, mean and median per year of ``year_column``, in year order.
* ``trend``: the least-squares slope of the yearly totals (USD per year), the compound
  annual growth rate between the first and the last year's totals, and the year with the
  largest total.

Rows whose value cell is not a finite number (or whose year is not an integer, when years
are asked for) are skipped and counted in ``skipped_rows``.

:func:`recompute` does the same with :mod:`statistics` and plain Python — a second,
independent implementation — and :func:`agreement` compares a reported analysis with it:
the share of reported numbers within ``tolerance`` (±10 % by default, or
:data:`ROUNDING_SLACK`) of the recomputed ones. A number that is missing, extra or not a
number counts as wrong.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "MAX_CELL_CHARS",
    "MAX_COLUMNS",
    "MAX_ROWS",
    "AnalysisSpec",
    "Table",
    "agreement",
    "analyze",
    "parse_csv",
    "recompute",
    "records",
]

MAX_ROWS = 100_000
"""Most data rows :func:`parse_csv` accepts."""
MAX_COLUMNS = 64
"""Most columns :func:`parse_csv` accepts."""
MAX_CELL_CHARS = 1_000
"""Longest cell :func:`parse_csv` accepts."""
MAX_FILTER_COLUMNS = 8
"""Most columns an analysis may filter on."""
MAX_FILTER_VALUES = 50
"""Most values one filter may list."""
MAX_GROUPS = 200
"""Most distinct keys reported per group-by column (the largest by total are kept)."""
ROUNDING_SLACK = 0.005
"""Absolute difference :func:`agreement` always accepts: the rounding of reported figures
(money to cents, shares to six decimals), so a tiny figure is not failed for its rounding."""


@dataclass(frozen=True, slots=True)
class Table:
    """A parsed CSV: column names and rows of strings."""

    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]

    def column(self, name: str) -> int:
        try:
            return self.columns.index(name)
        except ValueError:
            raise ValueError(f"no column {name!r}; columns: {', '.join(self.columns)}") from None


@dataclass(frozen=True, slots=True)
class AnalysisSpec:
    """Which column to measure and how to break it down."""

    value_column: str = "funding_usd"
    group_by: tuple[str, ...] = ("sector",)
    year_column: str | None = "year"
    filters: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """``((column, (value, ...)), ...)``: only rows whose cell in each column is one of
    its values are analysed (exact match)."""

    @classmethod
    def from_input(cls, payload: dict[str, Any]) -> AnalysisSpec:
        value = payload.get("value_column", "funding_usd")
        groups = payload.get("group_by", ["sector"])
        year = payload.get("year_column", "year")
        if not isinstance(value, str) or not value:
            raise ValueError("value_column must be a non-empty string")
        if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            raise ValueError("group_by must be a list of column names")
        if year is not None and not isinstance(year, str):
            raise ValueError("year_column must be a column name or null")
        raw = payload.get("filters") or {}
        if not isinstance(raw, dict) or len(raw) > MAX_FILTER_COLUMNS:
            raise ValueError(f"filters must map at most {MAX_FILTER_COLUMNS} columns to values")
        filters = []
        for column, values in raw.items():
            if (
                not isinstance(values, list)
                or not 1 <= len(values) <= MAX_FILTER_VALUES
                or not all(isinstance(v, str) and len(v) <= MAX_CELL_CHARS for v in values)
            ):
                raise ValueError(
                    f"filter {str(column)[:64]!r} needs 1..{MAX_FILTER_VALUES} string values"
                )
            filters.append((str(column), tuple(dict.fromkeys(values))))
        return cls(value, tuple(dict.fromkeys(groups)), year or None, tuple(filters))


def parse_csv(data: bytes) -> Table:
    """Parse UTF-8 (BOM allowed) CSV with a header row, within the module's limits."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"the CSV is not UTF-8: {exc}") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise ValueError("the CSV is empty") from None
    except csv.Error as exc:
        raise ValueError(f"malformed CSV: {exc}") from None
    columns = tuple(h.strip() for h in header)
    if not columns or len(columns) > MAX_COLUMNS or len(set(columns)) != len(columns):
        raise ValueError(f"the header needs 1..{MAX_COLUMNS} distinct column names")
    rows: list[tuple[str, ...]] = []
    try:
        for raw in reader:
            if not raw or all(not cell.strip() for cell in raw):
                continue
            if len(rows) >= MAX_ROWS:
                raise ValueError(f"the CSV has more than {MAX_ROWS} rows")
            if len(raw) != len(columns):
                raise ValueError(f"row {len(rows) + 2} has {len(raw)} cells, not {len(columns)}")
            if any(len(cell) > MAX_CELL_CHARS for cell in raw):
                raise ValueError(f"row {len(rows) + 2} has a cell over {MAX_CELL_CHARS} chars")
            rows.append(tuple(cell.strip() for cell in raw))
    except csv.Error as exc:
        raise ValueError(f"malformed CSV: {exc}") from None
    return Table(columns, tuple(rows))


def _number(text: str) -> float | None:
    try:
        value = float(text.replace(",", "").replace("_", ""))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _year(text: str) -> int | None:
    value = _number(text)
    if value is None or value != int(value):
        return None
    return int(value)


def records(
    table: Table, spec: AnalysisSpec
) -> tuple[list[tuple[float, tuple[str, ...], int | None]], int]:
    """Usable rows that pass the filters, as ``(value, group keys, year)``, and the number
    of rows that pass the filters but are skipped (no number, or no year when asked)."""
    value_i = table.column(spec.value_column)
    group_i = [table.column(g) for g in spec.group_by]
    year_i = table.column(spec.year_column) if spec.year_column else None
    wanted = [(table.column(c), frozenset(vs)) for c, vs in spec.filters]
    out: list[tuple[float, tuple[str, ...], int | None]] = []
    skipped = 0
    for row in table.rows:
        if any(row[i] not in values for i, values in wanted):
            continue
        value = _number(row[value_i])
        year = _year(row[year_i]) if year_i is not None else None
        if value is None or (year_i is not None and year is None):
            skipped += 1
            continue
        out.append((value, tuple(row[i] for i in group_i), year))
    return out, skipped


def _r(x: float) -> float:
    return round(float(x), 2)


# --------------------------------------------------------------------------- numpy (agent)


def _np_figures(values: np.ndarray[Any, np.dtype[np.float64]]) -> dict[str, float | int]:
    return {
        "count": int(values.size),
        "sum": _r(values.sum()),
        "mean": _r(values.mean()),
        "median": _r(np.median(values)),
        "std": _r(values.std(ddof=1)) if values.size > 1 else 0.0,
        "min": _r(values.min()),
        "max": _r(values.max()),
    }


def analyze(table: Table, spec: AnalysisSpec) -> dict[str, Any]:
    """The statistics described in the module docstring, computed with numpy."""
    recs, skipped = records(table, spec)
    if not recs:
        raise ValueError(f"no row (that passes the filters) has a numeric {spec.value_column!r}")
    values = np.array([v for v, _, _ in recs], dtype=np.float64)
    total = float(values.sum())
    groups: dict[str, list[dict[str, Any]]] = {}
    for gi, column in enumerate(spec.group_by):
        keys = np.array([g[gi] for _, g, _ in recs], dtype=object)
        entries: list[dict[str, Any]] = []
        for key in sorted(set(keys.tolist())):
            sel = values[keys == key]
            figures = _np_figures(sel)
            figures.pop("std")
            share = float(sel.sum()) / total if total else 0.0
            entries.append({"key": str(key), **figures, "share": round(share, 6)})
        entries.sort(key=lambda e: (-e["sum"], e["key"]))
        groups[column] = entries[:MAX_GROUPS]
    by_year: list[dict[str, Any]] = []
    trend: dict[str, Any] | None = None
    if spec.year_column:
        years = np.array([y for _, _, y in recs], dtype=np.int64)
        for year in sorted(set(years.tolist())):
            sel = values[years == year]
            by_year.append(
                {
                    "year": int(year),
                    "count": int(sel.size),
                    "total": _r(sel.sum()),
                    "mean": _r(sel.mean()),
                    "median": _r(np.median(sel)),
                }
            )
        trend = _np_trend(by_year)
    return {
        "value_column": spec.value_column,
        "rows": len(table.rows),
        "skipped_rows": skipped,
        "summary": _np_figures(values),
        "groups": groups,
        "by_year": by_year,
        "trend": trend,
    }


def _np_trend(by_year: list[dict[str, Any]]) -> dict[str, Any]:
    years = np.array([e["year"] for e in by_year], dtype=np.float64)
    totals = np.array([e["total"] for e in by_year], dtype=np.float64)
    slope = float(np.polyfit(years, totals, 1)[0]) if years.size > 1 else 0.0
    first, last = by_year[0], by_year[-1]
    span = last["year"] - first["year"]
    cagr = (
        (last["total"] / first["total"]) ** (1.0 / span) - 1.0
        if span > 0 and first["total"] > 0 and last["total"] > 0
        else None
    )
    peak = max(by_year, key=lambda e: (e["total"], -e["year"]))
    return {
        "first_year": first["year"],
        "last_year": last["year"],
        "slope_per_year": _r(slope),
        "cagr": None if cagr is None else round(cagr, 6),
        "peak_year": peak["year"],
    }


# --------------------------------------------------------------------------- stdlib (check)


def _py_figures(values: Sequence[float]) -> dict[str, float]:
    return {
        "count": float(len(values)),
        "sum": math.fsum(values),
        "mean": statistics.fmean(values),
        "median": statistics.median(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def recompute(table: Table, spec: AnalysisSpec) -> dict[str, Any]:
    """The same figures as :func:`analyze`, from :mod:`statistics` (no numpy)."""
    recs, skipped = records(table, spec)
    if not recs:
        raise ValueError(f"no row (that passes the filters) has a numeric {spec.value_column!r}")
    values = [v for v, _, _ in recs]
    total = math.fsum(values)
    groups: dict[str, dict[str, dict[str, float]]] = {}
    for gi, column in enumerate(spec.group_by):
        buckets: dict[str, list[float]] = {}
        for value, keys, _ in recs:
            buckets.setdefault(keys[gi], []).append(value)
        groups[column] = {}
        for key, bucket in buckets.items():
            figures = _py_figures(bucket)
            del figures["std"]
            figures["share"] = math.fsum(bucket) / total if total else 0.0
            groups[column][key] = figures
    by_year: dict[int, dict[str, float]] = {}
    if spec.year_column:
        year_buckets: dict[int, list[float]] = {}
        for value, _, year in recs:
            assert year is not None
            year_buckets.setdefault(year, []).append(value)
        for year in sorted(year_buckets):
            bucket = year_buckets[year]
            by_year[year] = {
                "count": float(len(bucket)),
                "total": math.fsum(bucket),
                "mean": statistics.fmean(bucket),
                "median": statistics.median(bucket),
            }
    return {
        "rows": float(len(table.rows)),
        "skipped_rows": float(skipped),
        "summary": _py_figures(values),
        "groups": groups,
        "by_year": by_year,
    }


def _close(reported: Any, expected: float, tolerance: float) -> bool:
    if isinstance(reported, bool) or not isinstance(reported, int | float):
        return False
    if not math.isfinite(reported):
        return False
    return abs(reported - expected) <= max(tolerance * abs(expected), ROUNDING_SLACK)


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _pairs(reported: dict[str, Any], expected: dict[str, Any]) -> Iterator[tuple[Any, float]]:
    yield reported.get("rows"), expected["rows"]
    yield reported.get("skipped_rows"), expected["skipped_rows"]
    summary = _mapping(reported.get("summary"))
    for name, value in expected["summary"].items():
        yield summary.get(name), value
    groups = _mapping(reported.get("groups"))
    for column, keys in expected["groups"].items():
        entries = groups.get(column)
        by_key = (
            {e.get("key"): e for e in entries if isinstance(e, dict)}
            if isinstance(entries, list)
            else {}
        )
        for key, figures in keys.items():
            entry = by_key.get(key, {})
            for name, value in figures.items():
                yield entry.get(name), value
        extra = set(by_key) - set(keys)
        for _ in extra:
            yield None, 0.0
    years = reported.get("by_year")
    years = years if isinstance(years, list) else []
    by_year = {e.get("year"): e for e in years if isinstance(e, dict)}
    for year, figures in expected["by_year"].items():
        entry = by_year.get(year, {})
        for name, value in figures.items():
            yield entry.get(name), value
    for _ in set(by_year) - set(expected["by_year"]):
        yield None, 0.0


def agreement(
    reported: Any, table: Table, spec: AnalysisSpec, tolerance: float = 0.10
) -> tuple[float, int, int]:
    """``(share, matched, checked)``: how many of ``reported``'s numbers are within
    ``tolerance`` of :func:`recompute`'s. A report that is not a mapping scores 0."""
    if not isinstance(reported, dict):
        return 0.0, 0, 1
    expected = recompute(table, spec)
    checked = matched = 0
    for got, want in _pairs(reported, expected):
        checked += 1
        matched += _close(got, want, tolerance)
    return (matched / checked if checked else 0.0), matched, checked
