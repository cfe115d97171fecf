"""An MCP server (stdio) whose tools a node publishes with ``meshnode run --mcp-expose``.

Tools:

* ``word_count(text, top=3)``: counts words, structured output;
* ``unit_price(total, count=None)``: an optional argument (``anyOf`` of number and
  null in its schema, which the mesh narrows to a type list);
* ``slug(text)``: its ``text`` has a ``pattern``, which the mesh cannot enforce: refused;
* ``explode(reason)``: always fails (a tool error);
* ``learn_reverse()``: registers a new tool ``reverse`` and announces
  ``tools/list_changed``, so a test can watch the node publish it;
* ``learn_quietly()``: adds ``shout`` and removes ``explode`` without announcing it (only
  a periodic listing finds out).
"""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

server = MCPServer("meshnode-test-tools", log_level="WARNING")


@server.tool()
def word_count(text: str, top: Annotated[int, Field(ge=1, le=10)] = 3) -> dict[str, Any]:
    """Count the words of a text and list the most common ones."""
    words = text.lower().split()
    return {"words": len(words), "top": [w for w, _ in Counter(words).most_common(top)]}


@server.tool()
def unit_price(total: float, count: int | None = None) -> float:
    """Divide a total price by a number of units (one unit when not given)."""
    return total / (count or 1)


@server.tool()
def slug(text: Annotated[str, Field(pattern=r"^[a-z ]+$")]) -> str:
    """Make a URL slug of lower-case words."""
    return text.replace(" ", "-")


@server.tool()
def explode(reason: str) -> str:
    """Always fails with the reason given."""
    raise ToolError(reason)


def reverse(text: str) -> str:
    """Reverse a string of characters, last to first."""
    return text[::-1]


@server.tool()
async def learn_reverse(ctx: Context) -> str:
    """Teach this server a new tool that reverses text."""
    server.add_tool(reverse)
    await ctx.session.send_tool_list_changed()
    return "learned"


def shout(text: str) -> str:
    """Shout a text in capital letters."""
    return text.upper()


@server.tool()
def learn_quietly() -> str:
    """Add ``shout`` and drop ``explode``, announcing nothing."""
    server.add_tool(shout)
    server.remove_tool("explode")
    return "changed"


if __name__ == "__main__":
    server.run()
