"""Agents for the A2A tests, run as ``meshnode run --agent tests/integration/a2a_agents.py:X``.

* :class:`A2AWorker` serves ``slow_echo`` (sleeps ``sleep_s``, then echoes ``text``);
* :class:`Summarizer` serves ``summarize_text`` (the first words of ``text``), the
  capability a gateway finds by description for a text-only message.

Both use the hashing embedder (no model to load).
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from meshnode import MeshNode, NodeConfig, capability

TEXT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["text"],
    "properties": {"text": {"type": "string"}, "sleep_s": {"type": "number"}},
}
SUMMARY_WORDS = 4
"""Words kept by ``summarize_text``."""


class A2AWorker(MeshNode):
    def __init__(self, config: NodeConfig | None = None, **kwargs: Any) -> None:
        base = config or NodeConfig.local()
        super().__init__(dataclasses.replace(base, embedder="hashing"), **kwargs)

    @capability(
        name="slow_echo",
        description="Echo text back after a delay",
        input_schema=TEXT_SCHEMA,
        avg_latency_ms=50,
        tags=("echo", "test"),
    )
    async def slow_echo(self, payload: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(float(payload.get("sleep_s", 0.0)))
        return {"text": payload["text"]}


class Summarizer(MeshNode):
    def __init__(self, config: NodeConfig | None = None, **kwargs: Any) -> None:
        base = config or NodeConfig.local()
        super().__init__(dataclasses.replace(base, embedder="hashing"), **kwargs)

    @capability(
        name="summarize_text",
        description="Summarize a long text into a short summary of its first words",
        input_schema=TEXT_SCHEMA,
        avg_latency_ms=5,
        tags=("summarize", "text"),
    )
    async def summarize_text(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {"summary": " ".join(str(payload["text"]).split()[:SUMMARY_WORDS])}
