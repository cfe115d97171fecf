"""Provider agents for the authorization process tests, loaded with
``meshnode run --agent tests/integration/authz_agents.py:CLASS``.

``ClosedProvider`` and ``OpenProvider`` offer the same capability, ``guarded_echo``: the
closed one to a node id nobody has (so it forbids every member), the open one to every
member at a small price (so routing ranks the free, closed one first). ``StrangerFriendly``
offers ``members_echo`` (the default: members only) and ``public_echo``
(``Allow.anyone()``)."""

from __future__ import annotations

from typing import Any

from meshnode import Allow, MeshNode, capability

ECHO_IN = {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}}
ECHO_OUT = ECHO_IN
NOBODY = "nobody-has-this-node-id"


class ClosedProvider(MeshNode):
    @capability(
        name="guarded_echo",
        description="Echo text back",
        input_schema=ECHO_IN,
        output_schema=ECHO_OUT,
        allow=Allow.only(NOBODY),
    )
    async def guarded_echo(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {"text": f"closed:{payload['text']}"}


class OpenProvider(MeshNode):
    @capability(
        name="guarded_echo",
        description="Echo text back",
        input_schema=ECHO_IN,
        output_schema=ECHO_OUT,
        cost_per_call_usd=0.5,
        allow=Allow(),
    )
    async def guarded_echo(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {"text": f"open:{payload['text']}"}


class StrangerFriendly(MeshNode):
    @capability(name="members_echo", description="Echo for members", input_schema=ECHO_IN)
    async def members_echo(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {"text": payload["text"]}

    @capability(
        name="public_echo",
        description="Echo for anyone",
        input_schema=ECHO_IN,
        allow=Allow.anyone(),
    )
    async def public_echo(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {"text": payload["text"]}
