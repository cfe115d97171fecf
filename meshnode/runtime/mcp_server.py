"""``meshnode mcp``: an MCP server that lets an MCP host (an IDE, a chat client) use the mesh.

Theory of operation
-------------------
:func:`build_server` makes an ``mcp.server.MCPServer`` with four tools, each a thin,
typed front on one route of a running node's HTTP API (:mod:`meshnode.runtime.api`):

===========  =======================  ==================================================
tool         node route               what it returns
===========  =======================  ==================================================
discover     ``POST /v1/discover``    ranked candidates: node, capability, score parts
delegate     ``POST /v1/delegate``    the task's output, provider, attempts
members      ``GET /v1/members``      every member the node knows and its state
trust        ``GET /v1/trust``        the node's trust in each peer, opinion, breaker
===========  =======================  ==================================================

Inputs are typed, described and bounded (the bounds are the node's own: query length,
``top_k`` range, tag count and length, deadline range), so a host learns them from
``tools/list`` and the SDK refuses a bad call before it reaches the node. Outputs are
structured (``structuredContent``, with an output schema). Anything the node refuses,
or a node that cannot be reached, becomes an MCP tool error (``isError``) whose text says
what happened (``node at 127.0.0.1:7946 answered 401: ...``); a failed delegation names
its reason and every attempt.

The server talks to the node as any client of its API does: loopback callers pass while
the node trusts loopback, otherwise ``--token`` (or ``MESHNODE_API_TOKEN``) is sent as
``Authorization: Bearer``. Transports: stdio (the default, what hosts spawn), or
streamable HTTP (``--http PORT``, uvicorn), bound to 127.0.0.1 unless ``--http-host``
says otherwise; a non-loopback HTTP bind needs ``--open`` (whoever reaches it acts with
the node's token).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar, cast

import aiohttp
from pydantic import BaseModel, ConfigDict, Field

from meshnode.core.config import parse_address
from meshnode.core.router import MAX_TOP_K, MIN_TOP_K
from meshnode.core.task_wire import MAX_DEADLINE_MS
from protocol.manifest import MAX_NAME_CHARS, MAX_TAG_CHARS, MAX_TAGS

__all__ = [
    "HTTP_TIMEOUT_S",
    "MAX_QUERY_CHARS",
    "MeshApi",
    "NodeApiError",
    "build_server",
    "run_server",
]

HTTP_TIMEOUT_S = 10.0
"""Seconds a read (members, trust, discover) may take at the node."""
DELEGATE_MARGIN_S = 5.0
"""Seconds added to a delegation's own deadline before the HTTP call gives up."""
DEFAULT_DEADLINE_S = 30.0
"""Deadline of a delegation that names none (the node's own default)."""
MAX_DEADLINE_S = MAX_DEADLINE_MS / 1000
"""Longest deadline a delegation may ask (what the wire carries: one day)."""
MAX_QUERY_CHARS = 2_000
"""Longest description accepted (``NodeConfig.max_query_chars``'s default; a node with a
lower limit says so in the tool error)."""
MAX_ERROR_CHARS = 2_000
"""Longest node answer quoted in a tool error."""
DELEGATION_FAILED = (422, 502)
"""HTTP statuses of ``POST /v1/delegate`` for a delegation that failed, with its attempts
in the body: 422 when a provider refused the caller's input, 502 otherwise."""
SERVER_NAME = "meshnode"


_F = TypeVar("_F", bound=Callable[..., Awaitable[Any]])


class NodeApiError(Exception):
    """The node refused a call or could not be reached (the message says which)."""


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Score(_Open):
    total: float
    semantic: float
    trust: float
    availability: float
    cost_factor: float
    similarity: float


class Candidate(_Open):
    node_id: str = Field(description="the provider's node id")
    name: str | None = Field(description="the provider's name")
    address: str
    capability: str
    description: str
    cost_per_call_usd: float
    avg_latency_ms: float
    circuit_open: bool
    score: Score


class DiscoverResult(_Open):
    candidates: list[Candidate] = Field(description="best first")


class DelegateResult(_Open):
    output: Any = Field(description="the capability's result")
    provider: str = Field(description="node id of the provider that delivered")
    capability: str
    task_id: str
    quality: float | None = Field(description="this node's score of the result, if any")
    elapsed_ms: float
    attempts: list[dict[str, Any]] = Field(description="every provider tried, in order")


class Member(_Open):
    node_id: str
    name: str | None
    address: str
    state: str = Field(description="alive, suspect, dead or left")
    incarnation: int


class MembersResult(_Open):
    members: list[Member]


class TrustPeer(_Open):
    node_id: str
    name: str | None
    trust: float = Field(description="the trust the node routes by, 0..1")
    direct: float | None = Field(description="the node's own opinion, if it has one")
    breaker: str = Field(description="closed, open or half_open")


class TrustResult(_Open):
    node_id: str
    peers: list[TrustPeer]


class MeshApi:
    """The node's HTTP API, as the MCP tools call it."""

    def __init__(self, node: str, token: str | None = None) -> None:
        host, port = parse_address(node)
        self.node = node
        self.base = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
        self.token = token
        self._session: aiohttp.ClientSession | None = None

    async def request(
        self, method: str, path: str, body: Any = None, *, timeout_s: float = HTTP_TIMEOUT_S
    ) -> Any:
        """The node's JSON answer; :class:`NodeApiError` for any refusal or failure."""
        if self._session is None:
            self._session = aiohttp.ClientSession()
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            async with self._session.request(
                method,
                self.base + path,
                json=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as resp:
                text = await resp.text()
                if resp.status >= 400 and resp.status not in DELEGATION_FAILED:
                    said = text.strip()[:MAX_ERROR_CHARS]
                    raise NodeApiError(f"node at {self.node} answered {resp.status}: {said}")
                try:
                    data = await resp.json(content_type=None)
                except ValueError:
                    raise NodeApiError(f"node at {self.node} sent no JSON") from None
                if resp.status in DELEGATION_FAILED:  # a failed delegation: the node says why
                    raise NodeApiError(_delegation_failure(data))
                return data
        except TimeoutError:
            raise NodeApiError(f"node at {self.node} did not answer within {timeout_s} s") from None
        except aiohttp.ClientError as exc:
            raise NodeApiError(f"cannot reach the node at {self.node}: {exc}") from None

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _delegation_failure(data: Any) -> str:
    if not isinstance(data, dict):
        return "the delegation failed"
    lines = [f"the delegation failed: {data.get('error')}"]
    if data.get("invalid_input"):
        lines.append("(a provider refused the input itself)")
    for attempt in data.get("attempts") or []:
        if isinstance(attempt, dict):
            lines.append(
                f"- {str(attempt.get('node', ''))[:10]}: {attempt.get('outcome')} "
                f"{attempt.get('detail') or ''}".rstrip()
            )
    return "\n".join(lines)[:MAX_ERROR_CHARS]


Description = Annotated[
    str | None,
    Field(
        description="what you need done, in plain words (matched by meaning)",
        min_length=1,
        max_length=MAX_QUERY_CHARS,
    ),
]
CapabilityName = Annotated[
    str | None,
    Field(
        description="an exact capability name (instead of, or with, a description)",
        min_length=1,
        max_length=MAX_NAME_CHARS,
        pattern=r"^[A-Za-z0-9_.:-]+$",
    ),
]
MinTrust = Annotated[
    float, Field(description="lowest trust a provider may have, 0..1", ge=0.0, le=1.0)
]
MaxCost = Annotated[
    float | None, Field(description="most a call may cost, USD", ge=0.0, le=1_000_000.0)
]

Tags = Annotated[
    list[Annotated[str, Field(min_length=1, max_length=MAX_TAG_CHARS)]],
    Field(description="tags every candidate must carry", max_length=MAX_TAGS),
]
TopK = Annotated[int, Field(description="how many candidates", ge=MIN_TOP_K, le=MAX_TOP_K)]
TaskInput = Annotated[
    Any, Field(description="the task input (JSON), as the capability's schema says")
]
DeadlineS = Annotated[
    float, Field(description="seconds the whole delegation may take", gt=0.0, le=MAX_DEADLINE_S)
]


def build_server(api: MeshApi) -> Any:
    """The MCP server whose tools call ``api`` (see the module docstring)."""
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError

    server: Any = MCPServer(
        SERVER_NAME,
        instructions=(
            "Tools of a meshnode agent mesh: discover finds agents that can do a task, "
            "delegate hands a task to the best of them, members lists the mesh, trust "
            "shows how much the node trusts each peer."
        ),
        log_level="WARNING",
    )

    def tool(description: str) -> Callable[[_F], _F]:
        return cast(Callable[[_F], _F], server.tool(description=description))

    async def call(
        method: str, path: str, body: Any = None, timeout_s: float = HTTP_TIMEOUT_S
    ) -> Any:
        try:
            return await api.request(method, path, body, timeout_s=timeout_s)
        except NodeApiError as exc:
            raise ToolError(str(exc)) from None

    @tool(
        description="Rank the mesh agents that can do a task, best first, from the node's "
        "own index: trust, availability, cost and how well each capability matches."
    )
    async def discover(
        description: Description = None,
        capability_name: CapabilityName = None,
        min_trust: MinTrust = 0.0,
        max_cost_usd: MaxCost = None,
        tags: Tags | None = None,
        top_k: TopK = 5,
    ) -> DiscoverResult:
        if not description and not capability_name:
            raise ToolError("discover needs a description or a capability_name")
        body = {
            "description": description,
            "capability_name": capability_name,
            "min_trust": min_trust,
            "max_cost_usd": max_cost_usd,
            "tags": list(tags or ()),
            "top_k": top_k,
        }
        return DiscoverResult.model_validate(await call("POST", "/v1/discover", body))

    @tool(
        description="Hand a task to the best mesh agent for it and return its result. Name "
        "the capability, or describe the task; the node tries providers in rank order."
    )
    async def delegate(
        capability: CapabilityName = None,
        input: TaskInput = None,
        description: Description = None,
        deadline_s: DeadlineS = DEFAULT_DEADLINE_S,
        max_cost_usd: MaxCost = None,
        min_trust: MinTrust = 0.0,
    ) -> DelegateResult:
        if not capability and not description:
            raise ToolError("delegate needs a capability or a description")
        body = {
            "capability": capability,
            "input": {} if input is None else input,
            "description": description,
            "deadline_s": deadline_s,
            "max_cost_usd": max_cost_usd,
            "min_trust": min_trust,
        }
        answer = await call("POST", "/v1/delegate", body, deadline_s + DELEGATE_MARGIN_S)
        return DelegateResult.model_validate(answer)

    @tool(description="Every member of the mesh the node knows: id, name, address, state.")
    async def members() -> MembersResult:
        return MembersResult.model_validate(await call("GET", "/v1/members"))

    @tool(
        description="The node's trust in each peer (what routing uses), its own opinion, "
        "and each peer's circuit breaker."
    )
    async def trust() -> TrustResult:
        return TrustResult.model_validate(await call("GET", "/v1/trust"))

    return server


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def run_server(
    node: str,
    token: str | None = None,
    *,
    http_port: int | None = None,
    http_host: str = "127.0.0.1",
    open_bind: bool = False,
) -> None:
    """Serve the tools over stdio, or streamable HTTP on ``http_host:http_port``."""
    if http_port is not None and not _is_loopback(http_host) and not open_bind:
        raise ValueError(
            f"--http-host {http_host} is not loopback: anyone reaching it would act with "
            "the node's token; add --open to do it on purpose"
        )
    api = MeshApi(node, token)
    server = build_server(api)
    try:
        if http_port is None:
            await server.run_stdio_async()
        else:
            await server.run_streamable_http_async(host=http_host, port=http_port)
    finally:
        await api.aclose()
