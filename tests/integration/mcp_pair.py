"""Two ``meshnode run`` processes for the ``--mcp-expose`` tests: an exposer running one
MCP server (a Python script over stdio) and a caller seeded from it, ready once the caller
holds the exposer's manifest with the tools it waits for."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tests.integration.cluster import NodeProcess, wait_until


def capabilities(node: NodeProcess, of: NodeProcess) -> dict[str, dict[str, Any]]:
    """The capabilities of ``of``'s manifest as ``node`` holds it, by name."""
    for manifest in node.get("/v1/manifests")["manifests"]:
        if manifest["node_id"] == of.node_id:
            return {c["name"]: c for c in manifest["capabilities"]}
    return {}


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
            lambda: wanted <= set(capabilities(caller, exposer)),
            ready_s,
            f"the caller sees the exposed tools {sorted(wanted)}",
        )
        yield exposer, caller
    finally:
        for node in nodes:
            node.stop()
