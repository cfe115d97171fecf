"""Provider agents for the task-channel attack tests, loaded with
``meshnode run --agent tests/adversarial/task_agents.py:TaskProvider``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from meshnode import MeshNode, capability

TEXT_OUT = {
    "type": "object",
    "required": ["text"],
    "properties": {"text": {"type": "string"}},
}


class TaskProvider(MeshNode):
    @capability(
        name="slow_echo",
        description="Echo text back after a pause",
        avg_latency_ms=200,
        input_schema={
            "type": "object",
            "required": ["text"],
            "properties": {
                "text": {"type": "string"},
                "sleep_s": {"type": "number"},
                "marker": {"type": "string"},
            },
        },
        output_schema=TEXT_OUT,
    )
    async def slow_echo(self, payload: dict[str, Any]) -> dict[str, Any]:
        marker = payload.get("marker")
        if marker:
            await asyncio.to_thread(Path(marker).write_text, "started")
        await asyncio.sleep(float(payload.get("sleep_s", 0)))
        return {"text": payload["text"]}

    @capability(
        name="blob",
        description="Return a large block of text",
        input_schema={
            "type": "object",
            "required": ["size"],
            "properties": {"size": {"type": "integer"}, "tag": {"type": "string"}},
        },
        output_schema=TEXT_OUT,
    )
    async def blob(self, payload: dict[str, Any]) -> dict[str, Any]:
        # A fresh string per call, as a real result would be.
        return {"text": str(payload.get("tag", "")) + "x" * int(payload["size"])}
