"""Call tools on MCP servers from a node: a pool of stdio sessions, started on first use.

Theory of operation
-------------------
Servers are declared in JSON, the format MCP clients commonly share::

    {"mcpServers": {"search": {"command": "python", "args": ["search_server.py"],
                               "env": {"API_KEY": "..."}, "cwd": "/srv/search"}}}

(a bare ``{name: {...}}`` mapping, or one under ``"servers"``, is accepted too). The
configuration is a file path, an already-parsed mapping, or — with
:meth:`McpClientPool.from_env` — the file named by ``MESHNODE_MCP_CONFIG``. It is checked
when the pool is built: a bad entry fails then, not at the first call.

A server is started the first time one of its tools is called: its command runs as a
child process speaking MCP over stdin/stdout (``mcp.client.stdio.stdio_client``), and one
``mcp.ClientSession`` is initialised on it. The child gets the MCP library's small default
environment (``HOME``, ``PATH``, ...) plus the entry's ``env``; it does not inherit the
node's environment. Its stderr goes to the node's stderr.

The MCP library runs on anyio, whose cancel scopes must be left by the task that entered
them, so each server lives in one owner task: it enters the transport and the session,
reports ready, and waits for the pool to close it. Calls from any task go through the
session (it multiplexes concurrent requests). A call that fails because the connection
broke marks the server for a restart on the next call. Calls have a deadline
(``call_timeout_s``, default :data:`CALL_TIMEOUT_S`); starting has its own
(:data:`START_TIMEOUT_S`).

:meth:`McpClientPool.list_tool_specs` lists a server's tools with their descriptions and
schemas (every page, at most :data:`MAX_TOOL_PAGES`), and a server's
``notifications/tools/list_changed`` calls every function in
:attr:`McpClientPool.tools_changed_listeners` with the server's name (what
:mod:`meshnode.runtime.mcp_expose` follows).

:meth:`McpClientPool.aclose` closes every session and stops every server (the library
closes stdin, waits, then terminates the process tree); it is safe to call twice.

Reading a server. The node reads each server's stdout itself (:func:`capped_stdio`, the
same newline-delimited JSON-RPC as ``mcp.client.stdio``): a message (an answer, a
notification, a tool result) longer than :data:`MAX_MCP_MESSAGE_BYTES` is never buffered
whole. As soon as a line passes the cap the server is killed, the session ends, and the
call waiting on it fails with :class:`McpCallError` naming the cap (the exposed task fails
with that error); the next call starts the server again. So a server that answers with
gigabytes, or never ends a line, costs the node at most the cap plus one read.

The ``mcp`` package is optional (``pip install 'meshnode[mcp]'``); it is imported on first
use, and its absence raises :class:`McpUnavailable` with that instruction.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshnode.runtime.logging import get_logger
from protocol import MeshError
from protocol.limits import MAX_VALUE_BYTES

__all__ = [
    "CALL_TIMEOUT_S",
    "CONFIG_ENV",
    "MAX_MCP_MESSAGE_BYTES",
    "START_TIMEOUT_S",
    "McpCallError",
    "McpClientPool",
    "McpConfigError",
    "McpError",
    "McpServerSpec",
    "McpToolResult",
    "McpToolSpec",
    "McpUnavailable",
    "load_config",
]

CONFIG_ENV = "MESHNODE_MCP_CONFIG"
"""Environment variable naming the JSON file :meth:`McpClientPool.from_env` reads."""
START_TIMEOUT_S = 30.0
"""Seconds a server may take to start and answer ``initialize``."""
CALL_TIMEOUT_S = 60.0
"""Default seconds one tool call may take."""
MAX_CONFIG_BYTES = 1024 * 1024
"""Largest configuration file read."""
MAX_TOOL_PAGES = 16
"""Pages of ``tools/list`` read from one server (a server that pages forever is cut off)."""
MAX_MCP_MESSAGE_BYTES = 2 * MAX_VALUE_BYTES
"""Longest JSON-RPC message (one line) read from an MCP server, bytes: 8 MiB. A tool
result becomes a task output, which travels packed in at most
``protocol.limits.MAX_VALUE_BYTES`` (4 MiB); its JSON form, with the text blocks and the
structured content often carrying the same data twice, fits in twice that. A longer line
kills the server and fails the call (see the module docstring)."""
STOP_GRACE_S = 2.0
"""Seconds a server gets to exit after its stdin closes, then again after SIGTERM, before
SIGKILL (the MCP shutdown sequence)."""

log = get_logger("meshnode.mcp")


class McpError(MeshError):
    """Root of the MCP client's errors."""


class McpUnavailable(McpError, ImportError):
    """The optional ``mcp`` package is not installed."""


class McpConfigError(McpError, ValueError):
    """The server configuration is missing, malformed, or names no such server."""


class McpCallError(McpError):
    """A server could not be started, or a call failed or timed out (not a tool error:
    a tool that reports an error returns a result with ``is_error`` set)."""


@dataclass(frozen=True, slots=True)
class McpServerSpec:
    """How to start one server."""

    name: str
    command: str
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None


@dataclass(frozen=True, slots=True)
class McpToolSpec:
    """One tool as its server lists it."""

    name: str
    description: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class McpToolResult:
    """A tool's answer: its content blocks as JSON, its structured content, and whether
    the tool reported an error."""

    content: tuple[dict[str, Any], ...]
    structured: Any
    is_error: bool

    @property
    def text(self) -> str:
        """The text blocks, joined by newlines."""
        return "\n".join(str(c.get("text", "")) for c in self.content if c.get("type") == "text")

    def to_json(self) -> dict[str, Any]:
        return {
            "content": list(self.content),
            "structured": self.structured,
            "is_error": self.is_error,
        }


def _require_mcp() -> Any:
    try:
        import mcp
    except ImportError as exc:
        raise McpUnavailable(
            "calling MCP tools needs the 'mcp' package: pip install 'meshnode[mcp]'"
        ) from exc
    return mcp


def _spec(name: str, entry: Any) -> McpServerSpec:
    if not isinstance(name, str) or not name:
        raise McpConfigError("server names must be non-empty strings")
    if not isinstance(entry, Mapping):
        raise McpConfigError(f"server {name!r}: expected an object with 'command'")
    command = entry.get("command")
    args = entry.get("args", [])
    env = entry.get("env", {}) or {}
    cwd = entry.get("cwd")
    if not isinstance(command, str) or not command:
        raise McpConfigError(f"server {name!r}: 'command' must be a non-empty string")
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise McpConfigError(f"server {name!r}: 'args' must be a list of strings")
    if not isinstance(env, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        raise McpConfigError(f"server {name!r}: 'env' must map strings to strings")
    if cwd is not None and not isinstance(cwd, str):
        raise McpConfigError(f"server {name!r}: 'cwd' must be a string")
    return McpServerSpec(name, command, tuple(args), dict(env), cwd)


def load_config(source: str | os.PathLike[str] | Mapping[str, Any]) -> dict[str, McpServerSpec]:
    """Parse a configuration (path or mapping) into server specs by name."""
    if isinstance(source, Mapping):
        data: Any = source
    elif not isinstance(source, str | os.PathLike):
        raise McpConfigError("the MCP config must be a file path or a mapping")
    else:
        path = Path(source)
        try:
            if path.stat().st_size > MAX_CONFIG_BYTES:
                raise McpConfigError(f"{path} is larger than {MAX_CONFIG_BYTES} bytes")
            data = json.loads(path.read_text("utf-8"))
        except OSError as exc:
            raise McpConfigError(f"cannot read MCP config {path}: {exc.strerror}") from None
        except ValueError as exc:
            raise McpConfigError(f"MCP config {path} is not JSON: {exc}") from None
    if not isinstance(data, Mapping):
        raise McpConfigError("the MCP config must be a JSON object")
    for key in ("mcpServers", "servers"):
        if key in data:
            data = data[key]
            break
    if not isinstance(data, Mapping):
        raise McpConfigError("the server table must be a JSON object")
    return {name: _spec(name, entry) for name, entry in data.items()}


def _result(raw: Any) -> McpToolResult:
    blocks: list[dict[str, Any]] = []
    for block in getattr(raw, "content", None) or []:
        dump = getattr(block, "model_dump", None)
        blocks.append(dump(mode="json", exclude_none=True) if callable(dump) else {"raw": block})
    structured = getattr(raw, "structured_content", None)
    if structured is None:
        structured = getattr(raw, "structuredContent", None)
    is_error = getattr(raw, "is_error", None)
    if is_error is None:
        is_error = getattr(raw, "isError", False)
    return McpToolResult(tuple(blocks), structured, bool(is_error))


async def _stop_process(process: Any) -> None:
    """Close stdin, then SIGTERM, then SIGKILL the server's process group, waiting
    :data:`STOP_GRACE_S` between steps."""
    import anyio

    with contextlib.suppress(Exception):
        await process.stdin.aclose()
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if sig is not None:
            _signal_group(process, sig)
        with anyio.move_on_after(STOP_GRACE_S):
            await process.wait()
            return


def _signal_group(process: Any, sig: int) -> None:
    """Send ``sig`` to the server's process group (it was started in a session of its
    own), or to the process where groups do not exist."""
    with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
        if hasattr(os, "killpg"):
            os.killpg(process.pid, sig)
        else:  # pragma: no cover - not POSIX
            process.kill()


@contextlib.asynccontextmanager
async def capped_stdio(
    spec: McpServerSpec,
    on_oversized: Callable[[str], None],
    cap: int = MAX_MCP_MESSAGE_BYTES,
) -> AsyncIterator[tuple[Any, Any]]:
    """Start ``spec``'s server and yield ``(read, write)`` streams for ``mcp.ClientSession``
    (newline-delimited JSON-RPC over its stdin and stdout), reading at most ``cap`` bytes
    per message: a longer line calls ``on_oversized`` with the reason, kills the server
    and ends the read stream (the session then fails its waiting calls)."""
    import anyio
    import mcp_types
    from mcp.client.stdio import get_default_environment
    from mcp.shared.message import SessionMessage

    process = await anyio.open_process(
        [spec.command, *spec.args],
        env={**get_default_environment(), **spec.env},
        cwd=spec.cwd,
        stderr=sys.stderr,
        start_new_session=True,
    )
    stdout, stdin = process.stdout, process.stdin
    assert stdout is not None and stdin is not None  # both are pipes
    read_writer, read_stream = anyio.create_memory_object_stream[Any](0)
    write_stream, write_reader = anyio.create_memory_object_stream[Any](0)

    def parse(line: bytes) -> Any:
        try:
            message = mcp_types.jsonrpc_message_adapter.validate_json(line, by_name=False)
        except ValueError as exc:
            return exc
        return SessionMessage(message)

    async def stdout_reader() -> None:
        buffer = bytearray()
        scanned = 0  # bytes of ``buffer`` known to hold no newline
        try:
            async with read_writer:
                async for chunk in stdout:
                    buffer += chunk
                    while (end := buffer.find(b"\n", scanned)) >= 0:
                        if end > cap:
                            break
                        line = bytes(buffer[:end])
                        del buffer[: end + 1]
                        scanned = 0
                        if line.strip():
                            await read_writer.send(parse(line))
                    else:
                        scanned = len(buffer)
                        if scanned <= cap:
                            continue
                    on_oversized(f"the server sent a message over {cap} bytes")
                    _signal_group(process, signal.SIGKILL)
                    return  # closes the read stream: the session's calls fail
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream):
            pass

    async def stdin_writer() -> None:
        try:
            async with write_reader:
                async for message in write_reader:
                    text = message.message.model_dump_json(by_alias=True, exclude_unset=True)
                    await stdin.send((text + "\n").encode())
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            await read_writer.aclose()

    async with anyio.create_task_group() as group:
        group.start_soon(stdout_reader)
        group.start_soon(stdin_writer)
        try:
            yield read_stream, write_stream
        finally:
            with anyio.CancelScope(shield=True):
                write_stream.close()
                read_stream.close()
                await _stop_process(process)
                with contextlib.suppress(Exception):
                    await process.aclose()
            group.cancel_scope.cancel()


class _Server:
    """One running server: the owner task and its session."""

    def __init__(
        self, spec: McpServerSpec, on_tools_changed: Callable[[str], None] | None = None
    ) -> None:
        self.spec = spec
        self.on_tools_changed = on_tools_changed
        self.session: Any = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(self._own(), name=f"mcp-server-{spec.name}")
        self.broken = False
        self.failure: str | None = None
        """Why the connection was cut by this side (an oversized message), if it was."""

    def _oversized(self, reason: str) -> None:
        self.failure = reason
        self.broken = True
        log.warning("mcp_message_too_large", server=self.spec.name, error=reason)

    async def _own(self) -> None:
        mcp = _require_mcp()
        try:
            async with (
                capped_stdio(self.spec, self._oversized) as (read, write),
                mcp.ClientSession(read, write, message_handler=self._message) as session,
            ):
                await session.initialize()
                self.session = session
                self.ready.set_result(None)
                await self.stop.wait()
        except BaseException as exc:
            if self.ready.done() and isinstance(exc, Exception):
                log.warning("mcp_server_failed", server=self.spec.name, error=repr(exc))
            if not self.ready.done():
                self.ready.set_exception(
                    McpCallError(f"MCP server {self.spec.name!r} did not start: {exc!r}")
                )
            self.broken = True
            if not isinstance(exc, Exception):
                raise
        finally:
            self.session = None
            self.broken = True

    async def _message(self, message: Any) -> None:
        """Notifications from the server: ``tools/list_changed`` reaches the pool's
        listeners; everything else is ignored."""
        from mcp import types

        if isinstance(message, types.ToolListChangedNotification) and self.on_tools_changed:
            try:
                self.on_tools_changed(self.spec.name)
            except Exception as exc:  # a listener's failure never breaks the session
                log.warning("mcp_listener_failed", server=self.spec.name, error=repr(exc))

    async def close(self) -> None:
        self.stop.set()
        if not self.ready.done():
            self.task.cancel()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await self.task
        if not self.ready.done():
            self.ready.cancel()
        elif not self.ready.cancelled():
            self.ready.exception()  # retrieved: a start failure was already reported


class McpClientPool:
    """MCP servers by name, started on first use; ``async with`` or :meth:`aclose`."""

    def __init__(
        self,
        config: str | os.PathLike[str] | Mapping[str, Any] | None = None,
        *,
        call_timeout_s: float = CALL_TIMEOUT_S,
        start_timeout_s: float = START_TIMEOUT_S,
    ) -> None:
        self.specs: dict[str, McpServerSpec] = load_config(config) if config is not None else {}
        self.call_timeout_s = call_timeout_s
        self.start_timeout_s = start_timeout_s
        self._servers: dict[str, _Server] = {}
        self._lock: asyncio.Lock | None = None
        self._closed = False
        self.tools_changed_listeners: list[Callable[[str], None]] = []
        """Called with a server's name when it announces ``tools/list_changed``."""

    @classmethod
    def from_env(cls, **kwargs: Any) -> McpClientPool:
        """A pool configured by the file ``$MESHNODE_MCP_CONFIG`` names (empty if unset)."""
        path = os.environ.get(CONFIG_ENV)
        return cls(path or None, **kwargs)

    @property
    def servers(self) -> list[str]:
        """Names of the configured servers."""
        return sorted(self.specs)

    @property
    def running(self) -> list[str]:
        """Names of the servers started and not broken."""
        return sorted(n for n, s in self._servers.items() if s.session is not None)

    async def __aenter__(self) -> McpClientPool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _session(self, name: str) -> Any:
        if self._closed:
            raise McpCallError("the MCP client pool is closed")
        spec = self.specs.get(name)
        if spec is None:
            known = ", ".join(self.servers) or "none configured"
            raise McpConfigError(f"no MCP server named {name!r} (known: {known})")
        _require_mcp()
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            server = self._servers.get(name)
            if server is not None and server.broken:
                await server.close()
                server = None
            if server is None:
                server = self._servers[name] = _Server(spec, self._tools_changed)
        try:
            await asyncio.wait_for(asyncio.shield(server.ready), self.start_timeout_s)
        except TimeoutError:
            await server.close()
            raise McpCallError(
                f"MCP server {name!r} did not start within {self.start_timeout_s} s"
            ) from None
        if server.session is None:
            raise McpCallError(f"MCP server {name!r} is not running")
        return server.session

    async def call_tool(
        self,
        server: str,
        tool: str,
        arguments: Mapping[str, Any] | None = None,
        *,
        timeout_s: float | None = None,
    ) -> McpToolResult:
        """Call ``tool`` on ``server`` with ``arguments``; start the server if needed."""
        session = await self._session(server)
        limit = self.call_timeout_s if timeout_s is None else timeout_s
        try:
            async with asyncio.timeout(limit):
                raw = await session.call_tool(tool, dict(arguments or {}))
        except TimeoutError:
            raise McpCallError(f"{server}.{tool} did not answer within {limit} s") from None
        except McpError:
            raise
        except Exception as exc:
            running = self._servers.get(server)
            if running is not None:
                running.broken = True
                if running.failure is not None:
                    raise McpCallError(f"{server}.{tool} failed: {running.failure}") from exc
            raise McpCallError(f"{server}.{tool} failed: {type(exc).__name__}: {exc}") from exc
        return _result(raw)

    async def list_tools(self, server: str) -> list[str]:
        """Names of the tools ``server`` offers."""
        session = await self._session(server)
        async with asyncio.timeout(self.call_timeout_s):
            listing = await session.list_tools()
        return sorted(t.name for t in listing.tools)

    async def list_tool_specs(self, server: str) -> list[McpToolSpec]:
        """Every tool ``server`` offers, with its description and schemas (all pages)."""
        session = await self._session(server)
        tools: list[McpToolSpec] = []
        cursor: str | None = None
        async with asyncio.timeout(self.call_timeout_s):
            for _ in range(MAX_TOOL_PAGES):
                if cursor is None:
                    listing = await session.list_tools()
                else:
                    from mcp import types

                    listing = await session.list_tools(
                        params=types.PaginatedRequestParams(cursor=cursor)
                    )
                for tool in listing.tools:
                    tools.append(
                        McpToolSpec(
                            name=tool.name,
                            description=tool.description or "",
                            input_schema=tool.input_schema,
                            output_schema=tool.output_schema,
                        )
                    )
                cursor = getattr(listing, "next_cursor", None)
                if not cursor:
                    break
        return tools

    def _tools_changed(self, server: str) -> None:
        for listener in list(self.tools_changed_listeners):
            listener(server)

    async def aclose(self) -> None:
        """Close every session and stop every server. Safe to call twice."""
        self._closed = True
        servers, self._servers = list(self._servers.values()), {}
        if servers:
            await asyncio.shield(asyncio.gather(*(s.close() for s in servers)))

    def __repr__(self) -> str:
        return f"<McpClientPool servers={self.servers} running={self.running}>"
