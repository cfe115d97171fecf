"""Agents for the command-line tests, loaded with ``meshnode run --agent FILE:CLASS``."""

from __future__ import annotations

from typing import Any

from meshnode import MeshNode, capability


class Upper(MeshNode):
    @capability(
        name="uppercase_text",
        description="Convert text to upper case letters",
        cost_per_call_usd=0.0005,
        tags=["text"],
        input_schema={
            "type": "object",
            "required": ["text"],
            "properties": {"text": {"type": "string"}},
        },
        output_schema={
            "type": "object",
            "required": ["text"],
            "properties": {"text": {"type": "string"}},
        },
    )
    async def uppercase_text(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {"text": str(payload["text"]).upper()}
