"""Agents for the multi-host tests and benchmark. Each serves exactly the capabilities
named here (none inherits ``slow_echo`` by accident), so a test knows its providers."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

from meshnode import MeshNode, NodeConfig, capability
from tests.integration.agents import SLOW_ECHO, TEXT_SCHEMA, SlowAgent

ECHO_A = "echo_a"
"""Capability served only by :class:`EchoA` (the benchmark runs it in region a)."""
ECHO_B = "echo_b"
"""Capability served only by :class:`EchoB` (the benchmark runs it in region b)."""
ROUTE_ECHO = "route_echo"
"""Capability served by :class:`RouteEcho`: one equal provider in each region."""


async def echo_after(payload: dict[str, Any]) -> dict[str, Any]:
    """Touch ``marker`` (if given: a test in another process then knows the task runs),
    sleep ``sleep_s``, echo ``text``."""
    marker = payload.get("marker")
    if isinstance(marker, str):
        await asyncio.to_thread(Path(marker).touch)
    await asyncio.sleep(float(payload.get("sleep_s", 0.0)))
    return {"text": payload["text"]}


class _HashingAgent(MeshNode):
    """A node with the hashing embedder (no model to load)."""

    MAX_TASKS: int | None = None
    """Tasks run at once (None: the config's)."""

    def __init__(self, config: NodeConfig | None = None, **kwargs: Any) -> None:
        base = dataclasses.replace(config or NodeConfig.local(), embedder="hashing")
        if self.MAX_TASKS is not None:
            base = dataclasses.replace(base, max_concurrent_tasks=self.MAX_TASKS)
        super().__init__(base, **kwargs)


class BackupEcho(_HashingAgent):
    """``slow_echo`` at a cost, so discovery ranks a free provider (SlowAgent) above it."""

    @capability(
        name=SLOW_ECHO,
        description="Echo text back after a delay",
        input_schema=TEXT_SCHEMA,
        output_schema=TEXT_SCHEMA,
        avg_latency_ms=500,
        cost_per_call_usd=0.05,
    )
    async def slow_echo(self, payload: dict[str, Any]) -> dict[str, Any]:
        return await echo_after(payload)


class EchoA(_HashingAgent):
    """``echo_a``: one provider per name pins the region pair of each call."""

    @capability(
        name=ECHO_A,
        description="Echo text back (a)",
        input_schema=TEXT_SCHEMA,
        output_schema=TEXT_SCHEMA,
    )
    async def echo_a(self, payload: dict[str, Any]) -> dict[str, Any]:
        return await echo_after(payload)


class EchoB(_HashingAgent):
    """``echo_b`` (see :class:`EchoA`)."""

    @capability(
        name=ECHO_B,
        description="Echo text back (b)",
        input_schema=TEXT_SCHEMA,
        output_schema=TEXT_SCHEMA,
    )
    async def echo_b(self, payload: dict[str, Any]) -> dict[str, Any]:
        return await echo_after(payload)


class RouteEcho(_HashingAgent):
    """``route_echo``, one task at a time, so a single long task saturates it."""

    MAX_TASKS = 1

    @capability(
        name=ROUTE_ECHO,
        description="Echo text back after a delay, one at a time",
        input_schema=TEXT_SCHEMA,
        output_schema=TEXT_SCHEMA,
    )
    async def route_echo(self, payload: dict[str, Any]) -> dict[str, Any]:
        return await echo_after(payload)


__all__ = ["BackupEcho", "EchoA", "EchoB", "RouteEcho", "SlowAgent"]
