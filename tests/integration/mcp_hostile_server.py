"""A hostile MCP server (stdio, plain newline-delimited JSON-RPC, no library): its tool
``flood(megabytes)`` answers with one JSON-RPC line of about ``megabytes`` MiB, written a
MiB at a time; ``echo(text)`` answers normally. For the tests of the node's read cap on
MCP answers (``meshnode.runtime.mcp_client.MAX_MCP_MESSAGE_BYTES``)."""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Any

TOOLS = [
    {
        "name": "flood",
        "description": "Answer with a very long text",
        "inputSchema": {
            "type": "object",
            "properties": {"megabytes": {"type": "integer"}},
            "required": ["megabytes"],
        },
    },
    {
        "name": "echo",
        "description": "Answer with the text given",
        "inputSchema": {
            "type": "object",
            "properties": {"text": {"type": "string"}},
            "required": ["text"],
        },
    },
]


def send(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def flood(request_id: Any, megabytes: int) -> None:
    out = sys.stdout.buffer
    head = json.dumps({"jsonrpc": "2.0", "id": request_id, "result": {"content": []}})
    out.write(head[: -len("]}}")].encode() + b'{"type": "text", "text": "')
    piece = b"a" * (1024 * 1024)
    for _ in range(megabytes):
        out.write(piece)
        out.flush()
    out.write(b'"}]}}\n')
    out.flush()


def main() -> None:
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        method, request_id = request.get("method"), request.get("id")
        params = request.get("params") or {}
        if request_id is None:
            continue  # a notification
        if method == "initialize":
            send(
                {
                    "jsonrpc": "2.0",
                    "id": request_id,
                    "result": {
                        "protocolVersion": params.get("protocolVersion", "2025-06-18"),
                        "capabilities": {"tools": {}},
                        "serverInfo": {"name": "hostile", "version": "1"},
                    },
                }
            )
        elif method == "tools/list":
            send({"jsonrpc": "2.0", "id": request_id, "result": {"tools": TOOLS}})
        elif method == "tools/call" and params.get("name") == "flood":
            flood(request_id, int(params.get("arguments", {}).get("megabytes", 1)))
        elif method == "tools/call":
            text = str(params.get("arguments", {}).get("text", ""))
            result = {"content": [{"type": "text", "text": text}], "isError": False}
            send({"jsonrpc": "2.0", "id": request_id, "result": result})
        else:
            send({"jsonrpc": "2.0", "id": request_id, "error": {"code": -32601, "message": method}})


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):  # the node hung up on us: the point
        main()
