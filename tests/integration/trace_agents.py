"""Agents for the tracing tests, loaded with ``meshnode run --agent FILE:CLASS``: a relay
whose capability delegates again, so one request crosses three nodes."""

from __future__ import annotations

from typing import Any

from meshnode import MeshNode, capability

TEXT_SCHEMA = {
    "type": "object",
    "required": ["text"],
    "properties": {"text": {"type": "string"}},
}


class Relay(MeshNode):
    @capability(
        name="relay_upper",
        description="Hand text to an upper-casing peer and return what it made",
        tags=["text"],
        input_schema=TEXT_SCHEMA,
        output_schema=TEXT_SCHEMA,
    )
    async def relay_upper(self, payload: dict[str, Any]) -> dict[str, Any]:
        result = await self.delegate("uppercase_text", payload, expect=TEXT_SCHEMA)
        return {"text": result.output["text"]}
