"""The orchestrator's checks and the runner's reading of a user's CSV.

Invariants: a search that found nothing is not its provider's failure; a language model
needs only its URL (a local server has no key); a ``--csv`` file keeps its own (sanitised)
name and is refused with a clear error beyond the size, column and content limits.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from meshnode import SUCCESS_THRESHOLD
from meshnode.demo import stats, writer
from meshnode.demo.orchestrator import check_search
from meshnode.demo.runner import MAX_CSV_BYTES, DemoInputError, dataset_name, load_table


@pytest.mark.parametrize(
    ("output", "quality"),
    [
        ({"results": [], "offline": True, "source": "offline corpus"}, SUCCESS_THRESHOLD),
        ({"results": [{"title": "t", "snippet": "s"}]}, 1.0),
        ({"results": [{"title": "t", "snippet": "s"}, {"title": "", "snippet": ""}]}, 0.5),
        ({"results": "nothing"}, 0.0),
        ("garbage", 0.0),
    ],
)
def test_search_scores(output: object, quality: float) -> None:
    """On the unfixed code: an empty result list scored 0.0, failing the run (exit 1) and
    gossiping a failing opinion of a provider that answered correctly."""
    assert check_search({"query": "q"}, output) == quality


def test_a_model_needs_only_its_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """On the unfixed code: without MESHNODE_LLM_KEY the model was not used at all."""
    monkeypatch.delenv("MESHNODE_LLM_KEY", raising=False)
    monkeypatch.delenv("MESHNODE_LLM_MODEL", raising=False)
    monkeypatch.setenv("MESHNODE_LLM_URL", "http://127.0.0.1:8080/v1/")
    assert writer.llm_settings() == (
        "http://127.0.0.1:8080/v1/chat/completions",
        "",
        writer.DEFAULT_MODEL,
    )
    monkeypatch.delenv("MESHNODE_LLM_URL")
    assert writer.llm_settings() is None


@pytest.mark.parametrize(
    ("name", "kept"),
    [
        ("rain by city.csv", "rain_by_city.csv"),
        ("données.csv", "donn_es.csv"),
        (".hidden.csv", "hidden.csv"),
        ("x" * 300 + ".csv", "x" * 100),
    ],
)
def test_dataset_names(name: str, kept: str) -> None:
    assert dataset_name(Path("/some/dir") / name) == kept


def test_load_table_reads_a_good_csv(tmp_path: Path) -> None:
    path = tmp_path / "sales.csv"
    path.write_text("region,amount\nnorth,10\nsouth,20\nnorth,5\nsouth,1\n")
    table, schema = load_table(path)
    assert table.columns == ("region", "amount")
    assert schema.dataset == "sales.csv"
    assert [(c.name, c.kind) for c in schema.columns] == [
        ("region", "categorical"),
        ("amount", "numeric"),
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "the CSV is empty"),
        ("a,b\n", "no rows"),
        ("name,colour\na,red\nb,blue\n", "no numeric column"),
        ("a,b\n1,2,3\n", "has 3 cells, not 2"),
        ("a,a\n1,2\n", "distinct column names"),
        (b"a,b\n\xff,1\n", "not UTF-8"),
        ("a,b\n1," + "x" * (stats.MAX_CELL_CHARS + 1) + "\n", f"over {stats.MAX_CELL_CHARS}"),
    ],
)
def test_load_table_refuses(tmp_path: Path, content: str | bytes, message: str) -> None:
    path = tmp_path / "bad.csv"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(DemoInputError, match=message):
        load_table(path)


def test_load_table_refuses_a_large_or_missing_file(tmp_path: Path) -> None:
    big = tmp_path / "big.csv"
    with big.open("wb") as f:
        f.truncate(MAX_CSV_BYTES + 1)
    with pytest.raises(DemoInputError, match=f"up to {MAX_CSV_BYTES} bytes"):
        load_table(big)
    with pytest.raises(DemoInputError, match="cannot read"):
        load_table(tmp_path / "missing.csv")
    with pytest.raises(DemoInputError, match="not a file"):
        load_table(tmp_path)


def test_long_cell_values_do_not_break_the_write_up() -> None:
    """A table whose category values are long still gives the writer input it accepts.

    On the unfixed code (no clipping): the breakdown's headline quoted a 900-character
    value, over the writer's 500-character limit, and the write-up was refused."""
    from meshnode.core.json_schema import validate
    from meshnode.demo import orchestrator, planner
    from meshnode.demo.agents import WRITE_INPUT

    long = ["S" * 900 + str(i) for i in range(3)]
    lines = ["segment,amount"] + [f"{long[i % 3]},{i * 10}" for i in range(12)]
    table = stats.parse_csv("\n".join(lines).encode())
    schema = planner.infer_schema(table, "long.csv")
    plan = planner.plan_query("Which segment has the largest amount?", schema)
    assert plan.group_by == ("segment",)
    out = {
        "dataset": "long.csv",
        **stats.analyze(table, stats.AnalysisSpec("amount", ("segment",), None)),
    }
    findings = orchestrator.findings_from_statistics(out, plan, schema)
    findings.append(orchestrator.finding_from_coverage(schema))
    for i, finding in enumerate(findings, 1):
        finding["id"] = f"F{i}"
    assert any(len(f["headline"]) > 500 for f in findings)  # what the writer would refuse
    for finding in findings:
        orchestrator._clip(finding)
    answer = orchestrator._cut(planner.answer(plan, out, schema), 4_000)
    payload = {"query": plan.query, "findings": findings, "answer": answer, "plan": "p"}
    assert validate(payload, WRITE_INPUT) == []


def test_the_model_cache_is_where_nodes_keep_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The demo's own reading of the model cache's place follows the discovery layer's."""
    from meshnode.demo.runner import model_cache_dir, model_cached
    from meshnode.discovery.graph_cache import default_cache_dir

    for env in ({"MESHNODE_CACHE_DIR": str(tmp_path / "m")}, {"XDG_CACHE_HOME": str(tmp_path)}, {}):
        monkeypatch.delenv("MESHNODE_CACHE_DIR", raising=False)
        monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        assert model_cache_dir() == default_cache_dir()
    monkeypatch.setenv("MESHNODE_CACHE_DIR", str(tmp_path / "cache"))
    assert model_cached() is False
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "all-MiniLM-L6-v2-0123abcd-int8.onnx").write_bytes(b"x")
    assert model_cached() is True
