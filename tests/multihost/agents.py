"""Agents for the multi-host tests: a preferred provider and a costlier backup of the
same capability, so a requester's first choice is known before a fault is injected."""

from __future__ import annotations

import dataclasses
from typing import Any

from meshnode import NodeConfig, capability
from tests.integration.agents import SLOW_ECHO, TEXT_SCHEMA, SlowAgent


class BackupEcho(SlowAgent):
    """``slow_echo`` at a cost, so discovery ranks a free provider above it."""

    @capability(
        name=SLOW_ECHO,
        description="Echo text back after a delay",
        input_schema=TEXT_SCHEMA,
        output_schema=TEXT_SCHEMA,
        avg_latency_ms=500,
        cost_per_call_usd=0.05,
    )
    async def slow_echo(self, payload: dict[str, Any]) -> dict[str, Any]:
        return await SlowAgent.slow_echo(self, payload)


ECHO_A = "echo_a"
"""Capability served only by :class:`EchoA` (the benchmark runs it in region a)."""
ECHO_B = "echo_b"
"""Capability served only by :class:`EchoB` (the benchmark runs it in region b)."""


class EchoA(SlowAgent):
    """``echo_a``: echoes ``text`` at once; one provider per name pins the region pair."""

    @capability(
        name=ECHO_A,
        description="Echo text back (a)",
        input_schema=TEXT_SCHEMA,
        output_schema=TEXT_SCHEMA,
    )
    async def echo_a(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {"text": payload["text"]}


class EchoB(SlowAgent):
    """``echo_b``: echoes ``text`` at once (see :class:`EchoA`)."""

    @capability(
        name=ECHO_B,
        description="Echo text back (b)",
        input_schema=TEXT_SCHEMA,
        output_schema=TEXT_SCHEMA,
    )
    async def echo_b(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {"text": payload["text"]}


ROUTE_ECHO = "route_echo"
"""Capability served by :class:`RouteEcho`: one equal provider in each region."""


class RouteEcho(SlowAgent):
    """``route_echo``: sleeps ``sleep_s`` then echoes ``text``, one task at a time, so a
    single long task saturates it."""

    def __init__(self, config: NodeConfig | None = None, **kwargs: Any) -> None:
        base = config or NodeConfig.local()
        super().__init__(dataclasses.replace(base, max_concurrent_tasks=1), **kwargs)

    @capability(
        name=ROUTE_ECHO,
        description="Echo text back after a delay, one at a time",
        input_schema=TEXT_SCHEMA,
        output_schema=TEXT_SCHEMA,
    )
    async def route_echo(self, payload: dict[str, Any]) -> dict[str, Any]:
        return await SlowAgent.slow_echo(self, payload)  # marker, sleep_s, text
