"""``meshnode demo`` end to end: five processes, one report, nothing left behind.

Invariants:
1. the report's statistics are the CSV's (recomputed here, independently, from the file);
2. every agent was found through the mesh: each of the five nodes sees the other four
   alive, the orchestrator was given only the seed address and learned the rest by
   gossip, and each subtask went to the specialist made for it, found by description
   when MiniLM is installed;
3. every delegation was scored and the orchestrator's signed opinions reached every node;
4. every process exited and was reaped, and the temporary directory is gone.
"""

from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from typing import Any

import pytest

from meshnode.demo.agents import DEMO_DATA_DIR

QUERY = "Which sectors and countries raise the most startup funding, and how has it changed?"
DEMO_TIMEOUT_S = 90.0
MINILM = "sentence-transformers/all-MiniLM-L6-v2"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("demo") / "report.md"
    started = time.monotonic()
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "meshnode.cli", "demo", "--json", "--no-live"),
            *("--query", QUERY, "--out", str(out)),
            # The demo gives up (and stops every process) before the test would kill it.
            *("--timeout", str(DEMO_TIMEOUT_S - 15)),
        ],
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_S,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, f"demo failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    result: dict[str, Any] = json.loads(proc.stdout)
    result["_report_file"] = out.read_text("utf-8")
    result["_elapsed"] = elapsed
    result["_progress"] = proc.stderr
    return result


def _rows() -> list[dict[str, str]]:
    with open(DEMO_DATA_DIR / "startups.csv", newline="") as f:
        return list(csv.DictReader(f))


def _table(report: str, title: str) -> dict[str, dict[str, str]]:
    """The Markdown table under the finding titled ``title``, keyed by its first cell."""
    section = report.split(f"] {title}\n", 1)[1].split("\n### ", 1)[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    out = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        out[cells[0]] = dict(zip(header, cells, strict=True))
    return out


def _usd(cell: str) -> int:
    return int(cell.replace(",", ""))


def _close(cell: str, expected: float) -> bool:
    """Reported figures are whole dollars: within one dollar of the exact value."""
    return abs(_usd(cell) - expected) <= 1.0


def test_report_is_printed_written_and_fast(demo: dict[str, Any]) -> None:
    assert demo["ok"] is True and demo["failed_subtasks"] == []
    assert demo["_report_file"] == demo["report"]
    assert demo["report"].startswith("# Research report:")
    assert "no language model is configured" in demo["report"]
    assert "offline corpus: no web search was made" in demo["report"]
    assert demo["_elapsed"] < DEMO_TIMEOUT_S


def test_overall_statistics_match_the_csv(demo: dict[str, Any]) -> None:
    values = [float(r["funding_usd"]) for r in _rows()]
    table = _table(demo["report"], "Dataset overview")
    assert table["count"]["Value (USD)"] == str(len(values))
    expected = {
        "total": sum(values),
        "mean": statistics.fmean(values),
        "median": statistics.median(values),
        "std (sample)": statistics.stdev(values),
        "min": min(values),
        "max": max(values),
    }
    for name, value in expected.items():
        assert _close(table[name]["Value (USD)"], value), (name, table[name], value)


@pytest.mark.parametrize("column", ["sector", "country"])
def test_group_statistics_match_the_csv(demo: dict[str, Any], column: str) -> None:
    groups: dict[str, list[float]] = defaultdict(list)
    for row in _rows():
        groups[row[column]].append(float(row["funding_usd"]))
    table = _table(demo["report"], f"Funding by {column}")
    assert set(table) == set(groups)
    grand = sum(sum(v) for v in groups.values())
    for key, vals in groups.items():
        row = table[key]
        assert int(row["count"]) == len(vals)
        assert _close(row["total"], sum(vals))
        assert _close(row["mean"], statistics.fmean(vals))
        assert _close(row["median"], statistics.median(vals))
        assert abs(float(row["share"].rstrip("%")) - sum(vals) / grand * 100) <= 0.051
    totals = [_usd(r["total"]) for r in table.values()]
    assert totals == sorted(totals, reverse=True), "largest total first"


def test_yearly_statistics_match_the_csv(demo: dict[str, Any]) -> None:
    years: dict[str, list[float]] = defaultdict(list)
    for row in _rows():
        years[row["year"]].append(float(row["funding_usd"]))
    table = _table(demo["report"], "Funding by year")
    assert list(table) == sorted(years)
    for year, vals in years.items():
        assert int(table[year]["count"]) == len(vals)
        assert _close(table[year]["total"], sum(vals))
        assert _close(table[year]["median"], statistics.median(vals))


def test_all_five_agents_found_each_other_through_the_mesh(demo: dict[str, Any]) -> None:
    names = {"orchestrator", "data-agent", "code-agent", "writer-agent", "web-agent"}
    assert set(demo["mesh"]) == names
    for node, sees in demo["mesh"].items():
        assert set(sees) == names - {node}, (node, sees)
    agents = {a["name"]: a for a in demo["agents"]}
    assert set(agents) == names
    assert agents["orchestrator"]["learned_via"] == "self"
    seeded = [a for a in agents.values() if a["learned_via"] == "seed address"]
    assert [a["address"] for a in seeded] == [demo["seed"]]
    assert all(
        a["learned_via"] in ("gossip", "seed address")
        for a in agents.values()
        if a is not agents["orchestrator"]
    )


def test_each_subtask_went_to_its_specialist_by_description(demo: dict[str, Any]) -> None:
    expected = {
        "data": ("data-agent", "analyze_csv"),
        "web": ("web-agent", "web_search"),
        "code": ("code-agent", "run_python"),
        "writer": ("writer-agent", "write_report"),
    }
    tasks = {t["subtask"]: t for t in demo["tasks"]}
    for key, (name, capability) in expected.items():
        task = tasks[key]
        assert (task["provider_name"], task["capability"]) == (name, capability)
        if demo["embedder"].startswith(MINILM):  # either precision
            assert task["found_by"] == "description", task
            assert task["semantic"] >= 0.3
        discovered = next(a for a in demo["agents"] if a["name"] == name)["discovered"]
        assert discovered["subtask"] == key


def test_results_were_scored_and_opinions_gossiped(demo: dict[str, Any]) -> None:
    tasks = {t["subtask"]: t for t in demo["tasks"]}
    assert all(t["quality"] == 1.0 for t in tasks.values()), tasks
    checked = tasks["data"]["check"].split()[0]
    matched, total = (int(x) for x in checked.split("/"))
    assert matched == total > 50
    assert tasks["writer"]["check"].startswith("cites ")
    assert tasks["code"]["check"] == "exit status 0"
    direct = {p["name"]: p["direct"] for p in demo["trust"] if p["direct"] is not None}
    assert set(direct) == {"data-agent", "code-agent", "writer-agent", "web-agent"}
    assert all(v > 0.5 for v in direct.values())
    assert all(count >= 4 for count in demo["ledger_records"].values()), demo["ledger_records"]


def test_nothing_is_left_running(demo: dict[str, Any]) -> None:
    assert demo["all_reaped"] is True and demo["temp_dir"] is None
    assert [p["exit_code"] for p in demo["processes"]] == [0] * 5
    for p in demo["processes"]:
        with pytest.raises(ProcessLookupError):
            os.kill(p["pid"], 0)


def test_the_demo_mesh_is_keyed_and_certified(demo: dict[str, Any]) -> None:
    """The demo runs with its own throw-away keyring and mesh authority: every agent
    opened sealed traffic, accepted no plaintext, and holds the five certificates."""
    admission = demo["admission"]
    assert admission["keyring"] is True and len(admission["authority"]) == 52
    agents = admission["agents"]
    assert set(agents) == {"orchestrator", "data-agent", "code-agent", "writer-agent", "web-agent"}
    for name, seen in agents.items():
        assert seen["sealed_opened"] > 0, (name, seen)
        assert seen["plaintext_accepted"] == 0, (name, seen)
        assert seen["certificates"] == 5, (name, seen)
