"""The demo's language-model path, against a small OpenAI-compatible server on 127.0.0.1
started by the test (a real HTTP server speaking the chat completions API).

Invariants:
1. with ``MESHNODE_LLM_URL`` set, the orchestrator asks the model for a plan; a plan whose
   columns and values all exist in the table is used, and the report says it was;
2. any failure — an error status, an answer that is not JSON, a column or value the table
   does not have, no answer within the deadline — falls back to the deterministic plan,
   and the plan's note says why;
3. end to end, a ``meshnode demo`` run with only ``MESHNODE_LLM_URL`` set (no key: a local
   server needs none) plans and writes with the model and exits 0.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from meshnode.demo import planner, stats
from meshnode.demo.agents import DEMO_DATA_DIR
from meshnode.demo.orchestrator import llm_plan

PLANNER_SYSTEM = "You turn questions into analysis plans for a table."
QUESTION = "Which countries lead?"
MODEL_PLAN = {
    "kind": "compare",
    "value_column": "funding_usd",
    "group_by": ["stage"],
    "filters": {"stage": ["Seed", "Series C"]},
    "compare_column": "stage",
    "metric": "median",
}
"""Not what the deterministic planner makes of QUESTION (a top-N by country)."""


class FakeLLM:
    """An OpenAI-compatible ``/v1/chat/completions`` endpoint whose plan answers are set
    by the test; writing requests get bullets citing every finding in the prompt."""

    def __init__(self) -> None:
        self.plan_reply: Any = "```json\n" + json.dumps(MODEL_PLAN) + "\n```"
        self.status = 200
        self.delay_s = 0.0
        self.requests: list[tuple[dict[str, Any], str | None]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append((body, request.headers.get("Authorization")))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)  # the slow model under test, not a wait
        if self.status != 200:
            return web.json_response({"error": "down"}, status=self.status)
        system, user = body["messages"][0]["content"], body["messages"][-1]["content"]
        if system == PLANNER_SYSTEM:
            content = self.plan_reply
        else:
            ids = sorted(set(re.findall(r"\[(F\d+)\]", user)), key=lambda i: int(i[1:]))
            content = "\n".join(f"- Finding {i} from the fake model [{i}]" for i in ids)
        return web.json_response({"choices": [{"message": {"content": content}}]})


@pytest.fixture
async def llm() -> AsyncIterator[FakeLLM]:
    fake = FakeLLM()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    fake.url = f"http://127.0.0.1:{port}/v1"
    try:
        yield fake
    finally:
        await runner.cleanup()


@pytest.fixture(scope="module")
def schema() -> planner.Schema:
    table = stats.parse_csv((DEMO_DATA_DIR / "startups.csv").read_bytes())
    return planner.infer_schema(table, "startups.csv")


async def test_a_valid_model_plan_is_used(llm: FakeLLM, schema: planner.Schema) -> None:
    url = llm.url + "/chat/completions"
    plan = await llm_plan(QUESTION, schema, (url, "k-123", "fake-model"))
    assert plan.method == "llm"
    assert (plan.kind, plan.group_by, plan.compare_column, plan.metric) == (
        "compare",
        ("stage",),
        "stage",
        "median",
    )
    assert plan.filter_dict() == {"stage": ["Seed", "Series C"]}
    assert plan.note == "Planned by fake-model at 127.0.0.1."
    body, auth = llm.requests[0]
    assert auth == "Bearer k-123" and body["model"] == "fake-model"
    prompt = body["messages"][-1]["content"]
    assert QUESTION in prompt and "funding_usd" in prompt and "Series C" in prompt


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        ({"status": 500}, "HTTP 500"),
        ({"plan_reply": "Group by country, I would say."}, "no JSON object"),
        ({"plan_reply": json.dumps({**MODEL_PLAN, "group_by": ["planet"]})}, "'planet'"),
        (
            {"plan_reply": json.dumps({**MODEL_PLAN, "filters": {"stage": ["Series Z"]}})},
            "'Series Z' is not a value",
        ),
        ({"delay_s": 2.0}, "TimeoutError"),
    ],
)
async def test_any_model_failure_falls_back_to_the_deterministic_plan(
    llm: FakeLLM, schema: planner.Schema, setup: dict[str, Any], reason: str
) -> None:
    for name, value in setup.items():
        setattr(llm, name, value)
    url = llm.url + "/chat/completions"
    plan = await llm_plan(QUESTION, schema, (url, "", "fake-model"), timeout_s=0.5)
    assert plan.method == "deterministic"
    expected = planner.plan_query(QUESTION, schema)
    assert (plan.kind, plan.group_by, plan.filters) == (expected.kind, expected.group_by, ())
    assert plan.note.startswith("The language model at 127.0.0.1 could not plan")
    assert reason in plan.note, plan.note
    assert plan.note.endswith("the deterministic planner did.")
    assert llm.requests[0][1] is None  # no key, no Authorization header


@pytest.mark.slow
async def test_the_demo_plans_and_writes_with_the_model(llm: FakeLLM, tmp_path: Path) -> None:
    """On the unfixed code: the model was never asked to plan, and without
    ``MESHNODE_LLM_KEY`` not even to write (the report said no model was configured)."""
    out = tmp_path / "report.md"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHNODE_LLM")}
    env.update({"MESHNODE_LLM_URL": llm.url, "MESHNODE_LLM_MODEL": "fake-model"})
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "meshnode.cli", "demo", "--json", "--no-live"),
        *("--query", QUESTION, "--out", str(out), "--timeout", "75"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 0, stderr.decode()[-3000:]
    result = json.loads(stdout)
    assert result["plan"]["method"] == "llm" and result["plan"]["kind"] == "compare"
    assert result["writer"]["method"] == "llm"
    report = result["report"]
    assert "(llm planner): compare: median of `funding_usd` by `stage`" in report
    assert "Planned by fake-model at 127.0.0.1." in report
    assert "from the fake model [F1]" in report
    assert result["answer"].startswith("Companies: Seed has a median `funding_usd` of")
    systems = [body["messages"][0]["content"] for body, _ in llm.requests]
    assert systems.count(PLANNER_SYSTEM) == 1 and len(systems) == 2
