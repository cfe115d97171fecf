"""Agents and an in-process mesh for the task-layer integration tests.

Two ways to use it:

* ``meshnode run --agent tests/integration/agents.py:SlowAgent`` runs :class:`SlowAgent` in
  its own process (so a test can SIGKILL or SIGSTOP it for real);
* :class:`LocalMesh` starts in-process :class:`~meshnode.MeshNode` objects on 127.0.0.1
  (port 0, local timing profile, hashing embedder) and waits until every node knows every
  other node alive, with its manifest indexed.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from meshnode import Allow, MeshNode, NodeConfig, capability
from meshnode.core.membership import MemberState
from meshnode.runtime.node import wait_for

TEXT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["text"],
    "properties": {"text": {"type": "string"}},
}
"""Input and output schema of the echo-like capabilities used in the tests."""

SLOW_ECHO = "slow_echo"
"""Capability served by :class:`SlowAgent`: sleeps ``sleep_s``, then echoes ``text``."""


class SlowAgent(MeshNode):
    """Echoes ``text`` after sleeping ``sleep_s`` seconds.

    If the input names a ``marker`` path, the file is created when the handler starts, so a
    test in another process knows the task is running. Uses the hashing embedder (no model
    to load).
    """

    def __init__(self, config: NodeConfig | None = None, **kwargs: Any) -> None:
        base = config or NodeConfig.local()
        super().__init__(dataclasses.replace(base, embedder="hashing"), **kwargs)

    @capability(
        name=SLOW_ECHO,
        description="Echo text back after a delay",
        input_schema=TEXT_SCHEMA,
        output_schema=TEXT_SCHEMA,
        avg_latency_ms=50,
    )
    async def slow_echo(self, payload: dict[str, Any]) -> dict[str, Any]:
        marker = payload.get("marker")
        if isinstance(marker, str):
            await asyncio.to_thread(Path(marker).touch)
        await asyncio.sleep(float(payload.get("sleep_s", 0.0)))
        return {"text": payload["text"]}


Handler = Callable[[Any], Awaitable[Any]]


@dataclasses.dataclass(frozen=True)
class Cap:
    """A capability to register on an in-process node."""

    name: str
    handler: Handler
    input_schema: dict[str, Any] | None = None
    output_schema: dict[str, Any] | None = None
    avg_latency_ms: float = 0.0
    cost_per_call_usd: float = 0.0
    description: str = ""
    allow: Allow | None = None
    """Who may call it (None: members only, the default)."""


class LocalMesh:
    """In-process nodes on 127.0.0.1; the first node started is every later node's seed."""

    def __init__(self) -> None:
        self.nodes: list[MeshNode] = []
        self.external: list[str] = []
        """Node ids of nodes in other processes that :meth:`ready` also waits for."""

    @property
    def seed(self) -> str:
        return f"127.0.0.1:{self.nodes[0].address[1]}"

    async def node(
        self,
        name: str,
        caps: Sequence[Cap] = (),
        *,
        node_class: type[MeshNode] = MeshNode,
        **config: Any,
    ) -> MeshNode:
        """Start a node offering ``caps``; ``config`` overrides ``NodeConfig.local``."""
        seeds = (self.seed,) if self.nodes else ()
        cfg = NodeConfig.local(name=name, port=0, seeds=seeds, embedder="hashing", **config)
        node = node_class(cfg)
        for cap in caps:
            node.add_capability(
                cap.handler,
                name=cap.name,
                description=cap.description or cap.name.replace("_", " "),
                input_schema=cap.input_schema,
                output_schema=cap.output_schema,
                avg_latency_ms=cap.avg_latency_ms,
                cost_per_call_usd=cap.cost_per_call_usd,
                allow=cap.allow,
            )
        await node.start()
        self.nodes.append(node)
        return node

    def _converged(self) -> bool:
        ids = {n.node_id for n in self.nodes} | set(self.external)
        for node in self.nodes:
            alive = {m.node_id for m in node.core.members() if m.state is MemberState.ALIVE} | {
                node.node_id
            }
            if not ids <= alive:
                return False
            if any(node.core.manifests.get(i) is None for i in ids):
                return False
        return True

    async def ready(self, within: float = 15.0) -> None:
        """Wait until every node sees every node alive with its manifest indexed."""
        await wait_for(self._converged, within)
        for node in self.nodes:
            await asyncio.wait_for(node.discovery.settled(), within)

    async def close(self) -> None:
        nodes, self.nodes = self.nodes, []
        await asyncio.gather(*(n.aclose() for n in nodes))


async def echo(payload: Any) -> Any:
    return {"text": payload["text"]}
