"""A small MCP server for the MCP client tests, speaking MCP over stdio.

Tools: ``echo`` (returns its text), ``search`` (canned results shaped like a search
engine's), ``fail`` (raises, so the result is an error), ``slow`` (sleeps), ``env``
(reads one environment variable) and ``pid`` (the server's process id).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

try:
    from mcp.server.mcpserver import MCPServer as _Server
    from mcp.server.mcpserver.exceptions import ToolError
except ImportError:  # mcp 1.x
    from mcp.server.fastmcp import FastMCP as _Server  # type: ignore[no-redef]
    from mcp.server.fastmcp.exceptions import ToolError  # type: ignore[no-redef]

server = _Server("meshnode-test-echo", log_level="WARNING")


@server.tool()
def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


@server.tool()
def search(query: str, limit: int = 3) -> dict[str, Any]:
    """Canned search results mentioning the query."""
    return {
        "results": [
            {
                "title": f"Result {i} for {query}",
                "url": f"https://example.org/{i}",
                "snippet": f"snippet {i} about {query}",
            }
            for i in range(1, limit + 1)
        ]
    }


@server.tool()
def fail(reason: str) -> str:
    """Always fails with ``reason``."""
    raise ToolError(reason)


@server.tool()
async def slow(seconds: float) -> str:
    """Sleep, then answer."""
    await asyncio.sleep(seconds)
    return "done"


@server.tool()
def env(name: str) -> str:
    """The value of one environment variable ("" if unset)."""
    return os.environ.get(name, "")


@server.tool()
def pid() -> int:
    """This server's process id."""
    return os.getpid()


if __name__ == "__main__":
    server.run()
