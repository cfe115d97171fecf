"""Two ``meshnode run`` processes for the ``--mcp-expose`` tests: an exposer running one
MCP server (a Python script over stdio) and a caller seeded from it, ready once the caller
holds the exposer's manifest with the tools it waits for and its discovery offers each of
them (indexing runs in the background after the manifest arrives: on a loaded machine a
delegation sent on the manifest alone found no provider)."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tests.adversarial.attack import http_json
from tests.integration.cluster import NodeProcess, wait_until


def capabilities(node: NodeProcess, of: NodeProcess) -> dict[str, dict[str, Any]]:
    """The capabilities of ``of``'s manifest as ``node`` holds it, by name."""
    for manifest in node.get("/v1/manifests")["manifests"]:
        if manifest["node_id"] == of.node_id:
            return {c["name"]: c for c in manifest["capabilities"]}
    return {}


def offered(node: NodeProcess, of: NodeProcess, capability: str) -> bool:
    """Whether ``node``'s discovery offers ``capability`` on ``of``."""
    status, body = http_json(
        node.address, "/v1/discover", {"capability_name": capability, "top_k": 5}
    )
    return status == 200 and any(c["node_id"] == of.node_id for c in body["candidates"])


@contextlib.contextmanager
def exposed_pair(
    tmp_path: Path, server_name: str, server: Path, tools: Iterable[str], ready_s: float
) -> Iterator[tuple[NodeProcess, NodeProcess]]:
    """(exposer, caller), once the caller sees every one of ``tools``; both stopped after."""
    config = tmp_path / "mcp.json"
    config.write_text(
        json.dumps(
            {"mcpServers": {server_name: {"command": sys.executable, "args": [str(server)]}}}
        )
    )
    wanted = set(tools)
    nodes: list[NodeProcess] = []
    try:
        exposer = NodeProcess(
            "exposer",
            tmp_path / "exposer",
            [],
            extra=["--embedder", "hashing", "--mcp-expose", str(config)],
        ).start()
        nodes.append(exposer)
        caller = NodeProcess(
            "caller", tmp_path / "caller", [exposer.address], extra=["--embedder", "hashing"]
        ).start()
        nodes.append(caller)
        wait_until(
            lambda: (
                wanted <= set(capabilities(caller, exposer))
                and all(offered(caller, exposer, tool) for tool in sorted(wanted))
            ),
            ready_s,
            f"the caller's discovery offers the exposed tools {sorted(wanted)}",
        )
        yield exposer, caller
    finally:
        for node in nodes:
            node.stop()
