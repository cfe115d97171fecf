"""The writer agent's craft: deterministic Markdown from findings, optionally with a
summary from an OpenAI-compatible language model.

A *finding* is ``{"id": "F1", "title", "text", "source", "headline"?, "table"?}`` where a
table is ``{"columns": [...], "rows": [[...], ...]}``. :func:`render_report` always writes
the same Markdown for the same findings: a title, the question, a note saying how the
report was written, the key points (each finding's headline with its citation ``[F1]``),
then every finding with its text, table and source. Every finding is cited.

With ``MESHNODE_LLM_URL`` set (the API base, e.g. ``https://api.example.com/v1``, or the
full ``.../chat/completions`` URL; ``MESHNODE_LLM_KEY`` is sent as a bearer token when
set), :func:`llm_key_points` asks the
model (``MESHNODE_LLM_MODEL``, default :data:`DEFAULT_MODEL`) for the key points instead;
the findings and tables are still rendered from the template, so the numbers in the report
are the agents' own. Any failure falls back to the template, and the note says so.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "DEFAULT_MODEL",
    "LLM_TIMEOUT_S",
    "chat",
    "cited_ids",
    "llm_key_points",
    "llm_settings",
    "render_report",
    "template_key_points",
]

DEFAULT_MODEL = "gpt-4o-mini"
"""Model asked for when ``MESHNODE_LLM_MODEL`` is not set."""
LLM_TIMEOUT_S = 30.0
"""Deadline for the language model's answer, in seconds."""
MAX_LLM_CHARS = 4_000
"""Longest key-points text accepted from the model."""
MAX_LLM_BODY_BYTES = 1024 * 1024
"""Largest response body read from the model's endpoint (bytes); a larger one is refused."""

_CITATION = re.compile(r"\[(F\d+)\]")


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(table: dict[str, Any]) -> str:
    columns = [_cell(c) for c in table.get("columns", [])]
    if not columns:
        return ""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in table.get("rows", []):
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    return "\n".join(lines)


def template_key_points(findings: Sequence[dict[str, Any]]) -> str:
    """One bullet per finding: its headline (or title) and its citation."""
    return "\n".join(
        f"- {f.get('headline') or f.get('title') or 'finding'} [{f['id']}]" for f in findings
    )


def cited_ids(markdown: str) -> set[str]:
    """Every ``[F<n>]`` citation in ``markdown``."""
    return set(_CITATION.findall(markdown))


def render_report(
    query: str,
    findings: Sequence[dict[str, Any]],
    *,
    key_points: str,
    note: str,
    answer: str = "",
    plan: str = "",
) -> str:
    """The report's Markdown (see the module docstring): the answer first, when given."""
    out = [f"# Research report: {query.strip().rstrip('?')}", "", f"> **Question:** {query}"]
    if answer.strip():
        out += ["", "## Answer", "", answer.strip()]
    if plan.strip():
        out += ["", f"*{plan.strip()}*"]
    out += ["", f"*{note}*", "", "## Key points", "", key_points.strip(), "", "## Findings"]
    for f in findings:
        out += ["", f"### [{f['id']}] {f.get('title', '')}".rstrip(), "", str(f.get("text", ""))]
        table = f.get("table")
        if isinstance(table, dict):
            rendered = _table(table)
            if rendered:
                out += ["", rendered]
        if f.get("source"):
            out += ["", f"*Source: {f['source']}*"]
    return "\n".join(out).rstrip() + "\n"


def llm_settings() -> tuple[str, str, str] | None:
    """``(url, key, model)`` from the environment, or None when ``MESHNODE_LLM_URL`` is not
    set. The key may be empty (a local server that needs none)."""
    url = os.environ.get("MESHNODE_LLM_URL", "").strip()
    key = os.environ.get("MESHNODE_LLM_KEY", "").strip()
    if not url:
        return None
    if not url.rstrip("/").endswith("/chat/completions"):
        url = url.rstrip("/") + "/chat/completions"
    return url, key, os.environ.get("MESHNODE_LLM_MODEL", DEFAULT_MODEL)


def llm_host(url: str) -> str:
    return urlsplit(url).hostname or url


async def llm_key_points(
    url: str, key: str, model: str, query: str, findings: Sequence[dict[str, Any]]
) -> str:
    """Ask the model for Markdown key points citing every finding; raises on any failure
    (no answer, an error status, no text, or a finding left uncited)."""
    lines = [f"[{f['id']}] {f.get('title', '')}: {f.get('text', '')}" for f in findings]
    prompt = (
        f"Question: {query}\n\nFindings:\n" + "\n".join(lines) + "\n\nWrite 3 to 6 Markdown "
        "bullet points that answer the question using only these findings. End every bullet "
        "with the citations it relies on, like [F1]. Cite every finding at least once. "
        "Do not invent numbers."
    )
    messages = [
        {"role": "system", "content": "You write concise, factual research summaries."},
        {"role": "user", "content": prompt},
    ]
    text = (await chat(url, key, model, messages)).strip()[:MAX_LLM_CHARS]
    missing = {f["id"] for f in findings} - cited_ids(text)
    if not text or missing:
        raise RuntimeError(f"the answer does not cite {', '.join(sorted(missing)) or 'anything'}")
    return text


async def chat(
    url: str,
    key: str,
    model: str,
    messages: list[dict[str, str]],
    *,
    timeout_s: float = LLM_TIMEOUT_S,
) -> str:
    """One chat completion from an OpenAI-compatible endpoint: the first choice's text.
    Raises on any failure: no answer within ``timeout_s``, a status other than 200, a body
    over :data:`MAX_LLM_BODY_BYTES`, or no text where the API puts it."""
    import aiohttp

    body = {"model": model, "messages": messages, "temperature": 0}
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with (
        aiohttp.ClientSession(timeout=timeout) as http,
        http.post(url, json=body, headers=headers, allow_redirects=False) as resp,
    ):
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}")
        raw = await resp.content.read(MAX_LLM_BODY_BYTES + 1)
    if len(raw) > MAX_LLM_BODY_BYTES:
        raise RuntimeError(f"the answer is over {MAX_LLM_BODY_BYTES} bytes")
    data = json.loads(raw)
    text = data["choices"][0]["message"]["content"]
    if not isinstance(text, str) or not text.strip():
        raise RuntimeError("the answer has no text")
    return text
