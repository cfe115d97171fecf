"""Agents for the dashboard tests, loaded with ``meshnode run --agent FILE:CLASS``."""

from __future__ import annotations

import asyncio
from typing import Any

from meshnode import MeshNode, capability

HOSTILE_DESCRIPTION = (
    'Summarize documents <img src=x onerror="window.__xss=1">'
    '<script>window.__xss=2</script><svg onload="window.__xss=3"></svg>'
)
"""A capability description an attacker signs into its manifest: markup that would run if
the page ever wrote it as HTML."""


class Translator(MeshNode):
    @capability(
        name="translate_text",
        description="Translate text between languages",
        cost_per_call_usd=0.001,
        tags=["nlp"],
    )
    async def translate_text(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {"text": f"[es] {payload.get('text', '')}"}


class Hostile(MeshNode):
    @capability(name="summarize_docs", description=HOSTILE_DESCRIPTION, tags=["<b>tag</b>"])
    async def summarize_docs(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {"summary": "<script>window.__xss=4</script>"}


class Slow(MeshNode):
    @capability(name="slow_task", description="Take a long time over nothing", tags=["slow"])
    async def slow_task(self, payload: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(float(payload.get("seconds", 60)))
        return {"done": True}
