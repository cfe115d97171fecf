"""Put existing A2A agents on the mesh: this node becomes their signed proxy.

Theory of operation
-------------------
:meth:`A2AImporter.import_agent` takes the base URL of an external A2A 1.0 agent. The node
fetches its agent card from ``<url>/.well-known/agent-card.json`` (or the URL itself when
it ends in ``.json``), checks it, and publishes one mesh capability per skill, in its own
manifest, signed by itself. A delegation to such a capability runs a handler here that
sends the task to the agent with the a2a-sdk client (``SendMessage``) and maps its answer
back. The node is the provider the mesh sees: the agent's failures are the node's
failures, scored by every caller like any provider's.

What is checked on the card, before it changes anything (an attacker can serve any bytes
at any URL an operator is talked into importing):

==========================  ===========================================================
URL                         ``http`` or ``https``, a host, no user:password, at most
                            :data:`MAX_URL_CHARS` characters
fetch                       :data:`CARD_TIMEOUT_S` for the whole exchange, at most
                            :data:`MAX_REDIRECTS` redirects (each to ``http(s)``)
body                        at most :data:`MAX_CARD_BYTES` (a declared length over it is
                            refused before reading), content type ``application/json``
                            (or ``+json``), a JSON object nested at most
                            :data:`~meshnode.runtime.api.MAX_JSON_DEPTH` deep
signature                   see below
interface                   the JSON-RPC interface must be on the same origin (scheme,
                            host, port) as the imported URL: a card cannot send the
                            node's calls elsewhere (to an internal address, say)
skills                      at most the manifest's room (:data:`protocol.manifest.
                            MAX_CAPABILITIES` minus what the node already offers); the
                            rest are skipped and reported
==========================  ===========================================================

Signatures. A signed card (JWS over the card's RFC 8785 canonical form, the A2A 1.0
rule) is verified with the SDK's ``create_signature_verifier``. The key is never taken
from the card or from a URL the card names (``jku`` is ignored: whoever wrote the card
would choose it); it comes from the operator: ``keys``, a file holding either one PEM
public key (used whatever the ``kid``) or a JWKS (``{"keys": [...]}``, matched by
``kid``). Algorithms: :data:`SIGNATURE_ALGORITHMS`. A card whose signatures all fail is
refused, and so is a signed card when no key is configured (it cannot be checked, so its
signature cannot be trusted to mean anything). An unsigned card is accepted unless
``require_signed``.

Skills become capabilities (:func:`skill_capability`): the name is
``<agent>.<skill id>`` sanitised to the capability name rules
(:func:`sanitize_capability_name`); the description is the skill's, and its examples
become the capability's ``examples`` (the first ``MAX_EXAMPLES``, each clipped to
``MAX_EXAMPLE_CHARS``; discovery embeds and matches them with the description);
the skill's tags are kept and two are added: :data:`PROXY_TAG` and
``a2a:<url>`` (:func:`proxy_tags`), which mark the capability, in the node's signed manifest, as a
proxy for that agent. A2A 1.0 skills carry no JSON schemas, only media types
(``inputModes``/``outputModes``), so the input schema follows them: ``{"text": str}``
when ``text/plain`` is accepted, ``{"data": object}`` when ``application/json`` is, no
other property. The output is ``{"state", "text", "data"}``: the text parts joined and
the data parts listed, from the completed task's artifacts (or the agent's direct
message).

Outcomes: COMPLETED (or a direct message) is the result; FAILED, REJECTED, CANCELED and
AUTH_REQUIRED fail the task (this node's failure: it is the provider); INPUT_REQUIRED is
reported as :class:`~meshnode.errors.InvalidInput` carrying the agent's question (the
caller's input was not enough, and the requester neither blames this node nor asks
another provider); no answer within the task's own deadline (or
:data:`CALL_TIMEOUT_S`) fails it. A task left SUBMITTED or WORKING is polled with
``GetTask`` every :data:`POLL_INTERVAL_S` until it ends or time runs out.

Refresh: every ``refresh_s`` (:data:`REFRESH_S`) each imported card is fetched again; new
skills are published, changed ones re-published, removed ones withdrawn. A card that can
no longer be fetched keeps its capabilities (the outage shows as failed tasks, which
callers score); a card that now fails its checks (a bad signature, say) has all of its
capabilities withdrawn.

The a2a-sdk and PyJWT are optional (``pip install 'meshnode[a2a]'``), imported on first
use; their absence raises :class:`A2AUnavailable` with that instruction.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import re
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiohttp import web

from meshnode.capability import make_capability
from meshnode.core.a2a import SIGNATURE_SCHEME
from meshnode.core.request_auth import sign_request
from meshnode.core.tracing import SpanKind, format_traceparent
from meshnode.errors import InvalidInput
from meshnode.runtime.logging import get_logger
from meshnode.runtime.transport import BodyTooLarge, read_capped
from protocol import LocalProtocolError, MeshError
from protocol.jws import verify_card
from protocol.limits import MAX_VALUE_BYTES
from protocol.manifest import (
    MAX_CAPABILITIES,
    MAX_DESCRIPTION_CHARS,
    MAX_EXAMPLE_CHARS,
    MAX_EXAMPLES,
    MAX_TAG_CHARS,
    MAX_TAGS,
)

if TYPE_CHECKING:
    from meshnode.runtime.node import MeshNode
    from protocol.identity import Identity

__all__ = [
    "CALL_TIMEOUT_S",
    "CARD_TIMEOUT_S",
    "MAX_ANSWER_BYTES",
    "MAX_CARD_BYTES",
    "MAX_REDIRECTS",
    "PROXY_TAG",
    "REFRESH_S",
    "A2AImportError",
    "A2AImporter",
    "A2AUnavailable",
    "AgentTaskFailed",
    "AgentUnreachable",
    "AnswerTooLarge",
    "CardRefused",
    "ImportedAgent",
    "SkillCapability",
    "capped_transport",
    "card_location",
    "check_agent_url",
    "import_routes",
    "importer_for",
    "load_verification_keys",
    "node_key_auth",
    "parse_card_body",
    "proxy_tags",
    "rpc_interface",
    "sanitize_capability_name",
    "skill_capability",
    "task_outcome",
    "verify_card_signature",
]

MAX_URL_CHARS = 2_048
"""Longest agent URL accepted."""
MAX_CARD_BYTES = 256 * 1024
"""Largest agent card read, 256 KiB: real cards are a few KiB; the same bound as a whole
signed manifest (:data:`protocol.limits.MAX_MANIFEST_BYTES`)."""
CARD_TIMEOUT_S = 10.0
"""Seconds one card fetch may take, redirects included."""
MAX_REDIRECTS = 3
"""Redirects followed when fetching a card."""
CALL_TIMEOUT_S = 60.0
"""Seconds a forwarded task may take when the delegation carries no deadline of its own
(a mesh task always does: the shorter of the two applies)."""
POLL_INTERVAL_S = 0.5
"""Seconds between ``GetTask`` polls of a task the agent left SUBMITTED or WORKING."""
REFRESH_S = 300.0
"""Default seconds between two fetches of an imported card (skills added or removed
upstream reach the mesh within this): a card is small and cheap, but an agent should not
see a node poll it more than a few times an hour."""
MIN_REFRESH_S = 0.2
"""Shortest refresh interval accepted (tests use short ones; production keeps
:data:`REFRESH_S`)."""
MAX_IMPORTED_AGENTS = 32
"""Agents one node imports at once (each skill takes a manifest slot anyway:
:data:`protocol.manifest.MAX_CAPABILITIES`)."""
MAX_INPUT_TEXT_CHARS = 100_000
"""Longest ``text`` input forwarded (a prompt, not a document store)."""
MAX_ANSWER_BYTES = 2 * MAX_VALUE_BYTES
"""Largest HTTP answer read from an imported agent (8 MiB): a result must fit in a task
result (:data:`protocol.limits.MAX_VALUE_BYTES`, 4 MiB packed) anyway, and JSON is larger
than msgpack. A longer answer fails the task as soon as the cap is passed."""
MAX_IMPORT_BODY_BYTES = 4 * 1024
"""Largest ``POST /v1/a2a/import`` JSON body (one URL and a flag)."""
SIGNATURE_ALGORITHMS = ("ES256", "ES384", "ES512", "EdDSA", "RS256", "RS384", "RS512", "PS256")
"""JWS algorithms a card signature may use (asymmetric only: an HMAC key would have to be
shared with whoever signs cards)."""
PROXY_TAG = "a2a-proxy"
"""Tag marking a capability as served by an external A2A agent through this node."""
CARD_PATH = "/.well-known/agent-card.json"
"""Where an A2A 1.0 agent serves its card, relative to its base URL."""
TEXT_MODE = "text/plain"
JSON_MODE = "application/json"

log = get_logger("meshnode.a2a_import")

_NAME_BAD = re.compile(r"[^A-Za-z0-9_.:-]+")
_NAME_MAX = 128


class A2AImportError(MeshError):
    """Root of the importer's errors."""


class A2AUnavailable(A2AImportError, ImportError):
    """The optional a2a-sdk (or PyJWT) is not installed."""


class CardRefused(A2AImportError, ValueError):
    """The URL or its agent card failed a check; nothing was published."""


class AgentUnreachable(A2AImportError):
    """The agent card could not be fetched (network error, timeout, HTTP error)."""


def _require_sdk() -> None:
    try:
        import a2a.client  # noqa: F401
        import jwt  # noqa: F401
    except ImportError as exc:
        raise A2AUnavailable(
            "importing A2A agents needs the a2a-sdk and PyJWT: pip install 'meshnode[a2a]'"
        ) from exc


# ---------------------------------------------------------------------------- pure checks


def sanitize_capability_name(raw: str) -> str:
    """``raw`` made a valid capability name: runs of characters outside
    ``[A-Za-z0-9_.:-]`` become one ``_``, leading and trailing ``_.`` are trimmed, and a
    name over 128 characters keeps its first 119 and a 8-hex-digit hash of the whole (so
    two long names stay apart). An empty result is ``"tool"``."""
    name = _NAME_BAD.sub("_", raw).strip("_.")
    if not name:
        name = "tool"
    if len(name) > _NAME_MAX:
        digest = hashlib.sha256(raw.encode("utf-8", "surrogateescape")).hexdigest()[:8]
        name = f"{name[: _NAME_MAX - 9]}-{digest}"
    return name


def check_agent_url(url: Any) -> str:
    """``url`` if it may be imported (http(s), a host, no credentials, not too long);
    else :class:`CardRefused` saying why."""
    if not isinstance(url, str) or not url.strip():
        raise CardRefused("the agent URL must be a non-empty string")
    checked: str = url.strip()
    if len(checked) > MAX_URL_CHARS:
        raise CardRefused(f"the agent URL is longer than {MAX_URL_CHARS} characters")
    try:
        parts = urlsplit(checked)
        port = parts.port
    except ValueError as exc:
        raise CardRefused(f"not a URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise CardRefused(f"only http and https agents can be imported, not {parts.scheme!r}")
    if not parts.hostname:
        raise CardRefused("the agent URL has no host")
    if parts.username is not None or parts.password is not None:
        raise CardRefused("the agent URL must not carry a user name or password")
    del port
    return checked


def card_location(url: str) -> str:
    """Where the card of the agent at ``url`` is: the URL itself when it names a
    ``.json`` file, else ``<url>/.well-known/agent-card.json``."""
    if urlsplit(url).path.endswith(".json"):
        return url
    return url.rstrip("/") + CARD_PATH


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    default = 443 if parts.scheme == "https" else 80
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default


def parse_card_body(body: bytes, content_type: str) -> dict[str, Any]:
    """The card's JSON object, after the size, content-type and depth checks
    (:class:`CardRefused` otherwise)."""
    from meshnode.runtime.api import MAX_JSON_DEPTH, json_depth

    if len(body) > MAX_CARD_BYTES:
        raise CardRefused(f"the agent card is larger than {MAX_CARD_BYTES} bytes")
    mime = content_type.split(";", 1)[0].strip().lower()
    if mime != JSON_MODE and not mime.endswith("+json"):
        raise CardRefused(f"the agent card has content type {mime or 'none'!r}, not JSON")
    try:
        data = json.loads(body)
    except RecursionError:
        raise CardRefused(f"the agent card is nested deeper than {MAX_JSON_DEPTH}") from None
    except ValueError as exc:
        raise CardRefused(f"the agent card is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CardRefused("the agent card must be a JSON object")
    if json_depth(data) > MAX_JSON_DEPTH:
        raise CardRefused(f"the agent card is nested deeper than {MAX_JSON_DEPTH}")
    return data


KeyProvider = Callable[[str | None, str | None], Any]


def load_verification_keys(path: str | Path) -> KeyProvider:
    """The key provider for ``create_signature_verifier`` from a file: one PEM public
    key (any ``kid``) or a JWKS (by ``kid``; a set of one key without ``kid`` serves any).
    ``jku`` is ignored. :class:`CardRefused` for an unreadable or unknown format."""
    _require_sdk()
    import jwt

    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise CardRefused(f"cannot read the key file {path}: {exc.strerror}") from None
    if raw.lstrip().startswith(b"-----BEGIN"):
        pem = raw

        def pem_key(kid: str | None, jku: str | None) -> Any:
            return pem

        return pem_key
    try:
        keyset = jwt.PyJWKSet.from_json(raw.decode("utf-8"))
    except (ValueError, jwt.PyJWTError) as exc:
        raise CardRefused(f"{path} is neither a PEM public key nor a JWKS: {exc}") from None
    by_kid = {k.key_id: k for k in keyset.keys if k.key_id}
    only = keyset.keys[0] if len(keyset.keys) == 1 and not keyset.keys[0].key_id else None

    def jwks_key(kid: str | None, jku: str | None) -> Any:
        key = by_kid.get(kid or "") or only
        if key is None:
            raise jwt.InvalidKeyError(f"no configured key has kid {kid!r}")
        return key

    return jwks_key


def verify_card_signature(card: Any, keys: KeyProvider | None, *, require_signed: bool) -> bool:
    """Whether ``card`` (an ``AgentCard``) is signed, after checking: a card whose
    signatures all fail, a signed card with no ``keys`` to check it, and (with
    ``require_signed``) an unsigned card raise :class:`CardRefused`."""
    _require_sdk()
    from a2a.utils.signing import SignatureVerificationError, create_signature_verifier

    if not card.signatures:
        if require_signed:
            raise CardRefused("the agent card is not signed and signatures are required")
        return False
    if keys is None:
        raise CardRefused(
            "the agent card is signed but no verification key is configured "
            "(--a2a-key FILE: a PEM public key or a JWKS)"
        )
    verify = create_signature_verifier(keys, list(SIGNATURE_ALGORITHMS))
    try:
        verify(card)
    except SignatureVerificationError as exc:
        raise CardRefused(f"the agent card's signature is not valid: {exc}") from None
    return True


@dataclass(frozen=True, slots=True)
class SkillCapability:
    """One skill mapped to a capability (what :meth:`MeshNode.add_capability` takes)."""

    skill_id: str
    name: str
    description: str
    tags: tuple[str, ...]
    input_schema: dict[str, Any]
    output_schema: dict[str, Any]
    accepts_text: bool
    accepts_data: bool
    examples: tuple[str, ...] = ()

    def key(self) -> tuple[Any, ...]:
        """What a refresh compares to tell a changed skill."""
        return (
            self.description,
            self.tags,
            json.dumps(self.input_schema, sort_keys=True),
            self.examples,
        )


OUTPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["state", "text", "data"],
    "properties": {
        "state": {"type": "string"},
        "text": {"type": "string"},
        "data": {"type": "array"},
    },
}
"""What a proxied skill returns: the final state, the text parts joined, the data parts."""


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def proxy_tags(url: str) -> tuple[str, str]:
    """The two tags marking a capability as a proxy for the agent at ``url``:
    :data:`PROXY_TAG` and ``a2a:<url>``, or, for a URL too long for a tag (64
    characters), ``a2a:<host:port>#<first 8 hex digits of the URL's SHA-256>``."""
    tag = f"a2a:{url}"
    if len(tag) > MAX_TAG_CHARS:
        digest = hashlib.sha256(url.encode("utf-8", "surrogateescape")).hexdigest()[:8]
        host = urlsplit(url).netloc.rsplit("@", 1)[-1].lower()
        tag = f"a2a:{host[: MAX_TAG_CHARS - 13]}#{digest}"
    return PROXY_TAG, tag


def skill_capability(
    agent_name: str,
    skill: Mapping[str, Any],
    url: str,
    *,
    default_input_modes: Sequence[str] = (),
) -> SkillCapability:
    """A skill (the card's JSON form: ``id``, ``name``, ``description``, ``tags``,
    ``examples``, ``inputModes``) as a capability; :class:`CardRefused` when it has
    no id or accepts neither text nor JSON."""
    skill_id = skill.get("id")
    if not isinstance(skill_id, str) or not skill_id.strip():
        raise CardRefused("a skill has no id")
    title = str(skill.get("name") or skill_id)
    description = str(skill.get("description") or title)
    raw_examples = skill.get("examples")
    examples: list[str] = []
    for example in raw_examples if isinstance(raw_examples, list) else []:
        if len(examples) == MAX_EXAMPLES:
            break
        if isinstance(example, str) and example.strip():
            examples.append(_clip(" ".join(example.split()), MAX_EXAMPLE_CHARS))
    text = description if title.lower() in description.lower() else f"{title}: {description}"
    modes = [str(m).lower() for m in (skill.get("inputModes") or default_input_modes or [])]
    accepts_text = not modes or TEXT_MODE in modes or "text/*" in modes or "*/*" in modes
    accepts_data = JSON_MODE in modes or "*/*" in modes
    if not accepts_text and not accepts_data:
        raise CardRefused(f"skill {skill_id!r} accepts neither text/plain nor application/json")
    properties: dict[str, Any] = {}
    if accepts_text:
        properties["text"] = {"type": "string", "minLength": 1, "maxLength": MAX_INPUT_TEXT_CHARS}
    if accepts_data:
        properties["data"] = {"type": "object"}
    input_schema = {"type": "object", "properties": properties, "additionalProperties": False}
    marks = proxy_tags(url)
    tags: list[str] = []
    for tag in skill.get("tags") or []:
        if isinstance(tag, str) and tag.strip() and tag not in tags and tag not in marks:
            tags.append(_clip(tag.strip(), MAX_TAG_CHARS))
    tags = tags[: MAX_TAGS - len(marks)] + list(marks)
    mapped = SkillCapability(
        skill_id=skill_id,
        name=sanitize_capability_name(f"{agent_name}.{skill_id}"),
        description=_clip(text, MAX_DESCRIPTION_CHARS),
        tags=tuple(tags),
        input_schema=input_schema,
        output_schema=OUTPUT_SCHEMA,
        accepts_text=accepts_text,
        accepts_data=accepts_data,
        examples=tuple(examples),
    )
    try:
        make_capability(
            name=mapped.name,
            description=mapped.description,
            input_schema=mapped.input_schema,
            output_schema=mapped.output_schema,
            tags=mapped.tags,
            examples=mapped.examples,
        )
    except LocalProtocolError as exc:
        raise CardRefused(f"skill {skill_id!r} cannot be a capability: {exc}") from None
    return mapped


def rpc_interface(card: Mapping[str, Any], url: str) -> str:
    """The URL of the card's JSON-RPC interface, which must share ``url``'s origin
    (:class:`CardRefused` otherwise, or when there is none)."""
    interfaces = card.get("supportedInterfaces") or []
    jsonrpc = [
        i
        for i in interfaces
        if isinstance(i, Mapping) and str(i.get("protocolBinding", "")).upper() == "JSONRPC"
    ]
    if not jsonrpc:
        raise CardRefused("the card offers no JSON-RPC interface")
    want = _origin(url)
    for interface in jsonrpc:
        target = urljoin(url, str(interface.get("url") or ""))
        if urlsplit(target).scheme in ("http", "https") and _origin(target) == want:
            return target
    raise CardRefused(
        "the card's JSON-RPC interface is on another origin than the imported URL "
        f"({want[0]}://{want[1]}:{want[2]}); refusing to send tasks there"
    )


# ---------------------------------------------------------------------------- answers


class AnswerTooLarge(A2AImportError):
    """The agent's HTTP answer passed :data:`MAX_ANSWER_BYTES`."""


def capped_transport(cap: int = MAX_ANSWER_BYTES) -> Any:
    """An httpx transport whose responses end in :class:`AnswerTooLarge` once their body
    passes ``cap`` bytes (a declared Content-Length over it fails before any is read), so
    an agent cannot make the node buffer an endless answer."""
    import httpx

    class CappedStream(httpx.AsyncByteStream):
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        async def __aiter__(self) -> Any:
            seen = 0
            async for chunk in self.inner:
                seen += len(chunk)
                if seen > cap:
                    raise AnswerTooLarge(f"the agent's answer is larger than {cap} bytes")
                yield chunk

        async def aclose(self) -> None:
            await self.inner.aclose()

    class CappedTransport(httpx.AsyncHTTPTransport):
        async def handle_async_request(self, request: Any) -> Any:
            response = await super().handle_async_request(request)
            declared = response.headers.get("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) > cap:
                await response.aclose()
                raise AnswerTooLarge(f"the agent's answer is larger than {cap} bytes")
            return httpx.Response(
                status_code=response.status_code,
                headers=response.headers,
                stream=CappedStream(response.stream),
                extensions=response.extensions,
            )

    return CappedTransport()


# ---------------------------------------------------------------------------- outcomes


@dataclass
class ImportedAgent:
    """One imported agent: its card (checked) and the capabilities published for it."""

    url: str
    name: str
    signed: bool
    rpc_url: str
    card: Any  # a2a.types.AgentCard
    skills: dict[str, SkillCapability] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    client: Any = None  # a2a.client.Client, built on first call
    fetched_at: float = 0.0
    audience: str | None = None
    """The agent is a meshnode node (:func:`signing_audience`): its node id. Calls are
    signed with this node's key for it, so a node of the same mesh grants them WORK
    access without its API token."""

    def to_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "agent": self.name,
            "signed": self.signed,
            "rpc_url": self.rpc_url,
            "capabilities": sorted(s.name for s in self.skills.values()),
            "skipped": list(self.skipped),
        }


class AgentTaskFailed(A2AImportError):
    """The external agent ended the task without a result (FAILED, REJECTED, ...)."""


def _parts(parts: Sequence[Any]) -> tuple[list[str], list[Any]]:
    from google.protobuf.json_format import MessageToDict  # type: ignore[import-untyped]

    texts: list[str] = []
    data: list[Any] = []
    for part in parts:
        kind = part.WhichOneof("content")
        if kind == "text":
            texts.append(part.text)
        elif kind == "data":
            data.append(MessageToDict(part.data))
        elif kind == "url":
            data.append({"url": part.url, "media_type": part.media_type})
    return texts, data


TERMINAL_OK = "TASK_STATE_COMPLETED"
FAILED_STATES = frozenset(
    {"TASK_STATE_FAILED", "TASK_STATE_REJECTED", "TASK_STATE_CANCELED", "TASK_STATE_AUTH_REQUIRED"}
)
INPUT_STATE = "TASK_STATE_INPUT_REQUIRED"
PENDING_STATES = frozenset({"TASK_STATE_SUBMITTED", "TASK_STATE_WORKING", "TASK_STATE_UNSPECIFIED"})


def task_outcome(task: Any) -> dict[str, Any] | None:
    """A finished task's result (``{"state", "text", "data"}``), None while it is still
    pending; raises :class:`AgentTaskFailed` for a failed one and
    :class:`~meshnode.errors.InvalidInput` when it needs more input."""
    from a2a.types import TaskState

    state = TaskState.Name(task.status.state)
    status_text, _ = (
        _parts(task.status.message.parts) if task.status.HasField("message") else ([], [])
    )
    why = " ".join(status_text).strip()
    if state == TERMINAL_OK:
        texts: list[str] = []
        data: list[Any] = []
        for artifact in task.artifacts:
            t, d = _parts(artifact.parts)
            texts += t
            data += d
        if not texts and not data:
            texts = status_text
        return {"state": "completed", "text": "\n".join(texts), "data": data}
    if state == INPUT_STATE:
        raise InvalidInput(f"the agent needs more input: {why or 'no question given'}")
    if state in FAILED_STATES:
        label = state.removeprefix("TASK_STATE_").lower()
        raise AgentTaskFailed(f"the agent ended the task {label}: {why or 'no reason given'}")
    if state in PENDING_STATES:
        return None
    raise AgentTaskFailed(f"the agent answered with an unknown task state {state}")


def message_outcome(message: Any) -> dict[str, Any]:
    """A direct message answer as a result."""
    texts, data = _parts(message.parts)
    return {"state": "completed", "text": "\n".join(texts), "data": data}


# ---------------------------------------------------------------------------- the importer

_IMPORTERS: weakref.WeakKeyDictionary[Any, A2AImporter] = weakref.WeakKeyDictionary()


def signed_headers(
    identity: Identity, audience: str, request: Any, rng: random.Random
) -> dict[str, str]:
    """The request-signature headers (:mod:`meshnode.core.request_auth`) for an httpx
    ``request`` whose body has been read, signed with ``identity``'s node key for the
    node ``audience``."""
    return sign_request(
        identity,
        identity.node_id,
        audience,
        request.method,
        request.url.raw_path.decode(),
        request.content,
        time.time(),
        rng,
    )


def node_key_auth(identity: Identity, audience: str, rng: random.Random | None = None) -> Any:
    """An ``httpx.Auth`` that signs every request with ``identity``'s node key for the node
    ``audience`` (its node id, e.g. the ``kid`` of its card, checked with
    :func:`protocol.jws.verify_card`), the way a meshnode node accepts from an admitted
    member of its mesh instead of its API token (:mod:`meshnode.core.request_auth`):
    ``httpx.AsyncClient(auth=node_key_auth(me, node_id))``."""
    import httpx

    chosen = rng or random.SystemRandom()

    class NodeKeyAuth(httpx.Auth):
        requires_request_body = True

        def auth_flow(self, request: httpx.Request) -> Any:
            request.headers.update(signed_headers(identity, audience, request, chosen))
            yield request

    return NodeKeyAuth()


def declares_signed_requests(card: Mapping[str, Any]) -> bool:
    """Does an agent card (JSON) accept meshnode request signatures?"""
    schemes = card.get("securitySchemes")
    return isinstance(schemes, Mapping) and SIGNATURE_SCHEME in schemes


def signing_audience(card: Mapping[str, Any]) -> str | None:
    """The node id to sign calls to this agent for, or None not to sign them: the card
    must declare meshnode request signatures and carry a JWS made with the very key its
    ``kid`` names (:func:`protocol.jws.verify_card`). A card that merely claims a node id
    gets no signature, so an endpoint cannot collect requests signed for another node."""
    if not declares_signed_requests(card):
        return None
    return verify_card(card)


def importer_for(node: MeshNode) -> A2AImporter | None:
    """The importer serving ``node``'s ``/v1/a2a/*`` routes, if one was started."""
    return _IMPORTERS.get(node)


class A2AImporter:
    """Imports external A2A agents as capabilities of ``node``; ``async with`` or
    :meth:`start` / :meth:`aclose`. See the module docstring for every rule."""

    def __init__(
        self,
        node: MeshNode,
        *,
        require_signed: bool = False,
        keys: str | Path | KeyProvider | None = None,
        refresh_s: float = REFRESH_S,
        call_timeout_s: float = CALL_TIMEOUT_S,
        card_timeout_s: float = CARD_TIMEOUT_S,
    ) -> None:
        if not refresh_s >= MIN_REFRESH_S:
            raise ValueError(f"refresh_s must be at least {MIN_REFRESH_S}, got {refresh_s}")
        if not call_timeout_s > 0 or not card_timeout_s > 0:
            raise ValueError("timeouts must be positive")
        self.node = node
        self.require_signed = require_signed
        self._keys_source = keys
        self._keys: KeyProvider | None = keys if callable(keys) else None
        self.refresh_s = refresh_s
        self.call_timeout_s = call_timeout_s
        self.card_timeout_s = card_timeout_s
        self.agents: dict[str, ImportedAgent] = {}
        self.pending: dict[str, str] = {}
        """Agents :meth:`import_later` could not import yet (URL → why), retried on every
        refresh."""
        self._session: aiohttp.ClientSession | None = None
        self._httpx: Any = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._closed = False
        self._closing: set[asyncio.Task[Any]] = set()
        self.counts: dict[str, int] = {}
        self._rng = random.SystemRandom()
        _IMPORTERS[node] = self

    # -------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> A2AImporter:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def start(self) -> None:
        """Start the refresh loop (cards are fetched by :meth:`import_agent`)."""
        if self._keys is None and self._keys_source is not None:
            self._keys = load_verification_keys(str(self._keys_source))
        if self._task is None and not self._closed:
            self._task = asyncio.create_task(self._refresh_loop(), name="a2a-import-refresh")

    async def aclose(self) -> None:
        """Stop refreshing and close the HTTP clients; the capabilities stay until the
        node closes. Safe to call twice."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for agent in self.agents.values():
            if agent.client is not None:
                with contextlib.suppress(Exception):
                    await agent.client.close()
                agent.client = None
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        if self._httpx is not None:
            await self._httpx.aclose()
            self._httpx = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        if _IMPORTERS.get(self.node) is self:
            del _IMPORTERS[self.node]

    def _count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    # -------------------------------------------------------------- fetching

    async def fetch_card(self, url: str) -> tuple[dict[str, Any], Any, bool]:
        """Fetch and check the card of the agent at ``url``: (card JSON, parsed
        ``AgentCard``, signed). :class:`CardRefused` or :class:`AgentUnreachable`."""
        _require_sdk()
        from a2a.client.card_resolver import parse_agent_card

        url = check_agent_url(url)
        if self._session is None:
            self._session = aiohttp.ClientSession()
        location = card_location(url)
        # The card is fetched unsigned: which node answers is not known before it is
        # read, and a request signature is only ever made for a known node.
        headers = {"Accept": JSON_MODE}
        try:
            async with (
                asyncio.timeout(self.card_timeout_s),
                self._session.get(
                    location,
                    max_redirects=MAX_REDIRECTS,
                    headers=headers,
                ) as resp,
            ):
                if resp.status != 200:
                    raise AgentUnreachable(f"{location} answered HTTP {resp.status}")
                content_type = resp.headers.get("Content-Type", "")
                try:
                    body = await read_capped(resp.content, MAX_CARD_BYTES, resp.content_length)
                except BodyTooLarge:
                    raise CardRefused(
                        f"the agent card is larger than {MAX_CARD_BYTES} bytes"
                    ) from None
        except TimeoutError:
            raise AgentUnreachable(
                f"{location} did not answer within {self.card_timeout_s} s"
            ) from None
        except aiohttp.TooManyRedirects:
            raise CardRefused(f"{location} redirects more than {MAX_REDIRECTS} times") from None
        except aiohttp.ClientError as exc:
            raise AgentUnreachable(f"cannot fetch {location}: {exc}") from None
        data = parse_card_body(body, content_type)
        try:
            card = parse_agent_card(json.loads(json.dumps(data)))
        except Exception as exc:  # the SDK's parse errors are many kinds
            raise CardRefused(f"not an A2A agent card: {exc}") from None
        signed = self._check_signature(card)
        return data, card, signed

    def _check_signature(self, card: Any) -> bool:
        return verify_card_signature(card, self._keys, require_signed=self.require_signed)

    # -------------------------------------------------------------- importing

    async def import_agent(self, url: str) -> ImportedAgent:
        """Fetch, check and publish the agent at ``url`` (again, if already imported)."""
        url = check_agent_url(url)
        async with self._lock:
            if url not in self.agents and len(self.agents) >= MAX_IMPORTED_AGENTS:
                raise CardRefused(f"this node already imports {MAX_IMPORTED_AGENTS} agents")
            data, card, signed = await self.fetch_card(url)
            agent = self._apply(url, data, card, signed)
            self._count("imported")
            log.info(
                "a2a_agent_imported",
                url=url,
                agent=agent.name,
                signed=signed,
                capabilities=sorted(s.name for s in agent.skills.values()),
                skipped=agent.skipped,
            )
            return agent

    def _apply(self, url: str, data: dict[str, Any], card: Any, signed: bool) -> ImportedAgent:
        """Publish ``card``'s skills (adding, updating and withdrawing against what was
        published for ``url``)."""
        rpc_url = rpc_interface(data, url)
        agent_name = sanitize_capability_name(str(data.get("name") or urlsplit(url).hostname))
        old = self.agents.get(url)
        wanted: dict[str, SkillCapability] = {}
        skipped: list[str] = []
        defaults = [str(m) for m in data.get("defaultInputModes") or []]
        own = set(self.node.capabilities) - {s.name for s in (old.skills.values() if old else ())}
        room = MAX_CAPABILITIES - len(own)
        for skill in data.get("skills") or []:
            if not isinstance(skill, Mapping):
                continue
            try:
                mapped = skill_capability(agent_name, skill, url, default_input_modes=defaults)
            except CardRefused as exc:
                skipped.append(str(exc))
                continue
            if mapped.name in own or mapped.name in {s.name for s in wanted.values()}:
                skipped.append(f"{mapped.name}: the name is taken on this node")
                continue
            if len(wanted) >= room:
                skipped.append(f"{mapped.name}: the manifest is full ({MAX_CAPABILITIES})")
                continue
            wanted[mapped.skill_id] = mapped
        agent = ImportedAgent(
            url,
            agent_name,
            signed,
            rpc_url,
            card,
            fetched_at=time.time(),
            audience=signing_audience(data),
        )
        if old is not None:
            agent.client = old.client if old.rpc_url == rpc_url else None
            if old.client is not None and agent.client is None:
                self._close_later(old.client)
        agent.skills = wanted
        agent.skipped = skipped
        self.agents[url] = agent
        previous = old.skills if old is not None else {}
        for skill_id, cap in previous.items():
            if skill_id not in wanted or wanted[skill_id].name != cap.name:
                self.node.remove_capability(cap.name)
        for skill_id, cap in wanted.items():
            before = previous.get(skill_id)
            if before is None or before.key() != cap.key() or before.name != cap.name:
                self.node.add_capability(
                    self._handler(url, cap),
                    name=cap.name,
                    description=cap.description,
                    input_schema=cap.input_schema,
                    output_schema=cap.output_schema,
                    tags=cap.tags,
                    examples=cap.examples,
                )
        return agent

    def withdraw(self, url: str) -> bool:
        """Withdraw every capability published for ``url``; False if not imported."""
        agent = self.agents.pop(url, None)
        if agent is None:
            return False
        for cap in agent.skills.values():
            self.node.remove_capability(cap.name)
        if agent.client is not None:
            self._close_later(agent.client)
        log.info("a2a_agent_withdrawn", url=url, agent=agent.name)
        return True

    async def import_later(self, url: str) -> ImportedAgent | None:
        """:meth:`import_agent`, but a failure is logged and the URL kept in
        :attr:`pending`, retried on every refresh (the node's configured agents: one that is
        down when the node starts joins when it comes up)."""
        try:
            agent = await self.import_agent(url)
        except (CardRefused, AgentUnreachable, A2AUnavailable) as exc:
            self.pending[url] = str(exc)
            log.warning("a2a_import_pending", url=url, reason=str(exc))
            return None
        self.pending.pop(url, None)
        return agent

    def _close_later(self, client: Any) -> None:
        task = asyncio.create_task(client.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def refresh(self) -> None:
        """Fetch every imported card again and apply what changed (see the module
        docstring for what a failed fetch or a failed check does); retry the pending."""
        for url in list(self.pending):
            if url not in self.agents:
                await self.import_later(url)
        for url in list(self.agents):
            try:
                data, card, signed = await self.fetch_card(url)
            except CardRefused as exc:
                self._count("refresh_refused")
                log.warning("a2a_card_refused_on_refresh", url=url, reason=str(exc))
                async with self._lock:
                    self.withdraw(url)
                continue
            except AgentUnreachable as exc:
                self._count("refresh_unreachable")
                log.warning("a2a_card_unreachable", url=url, reason=str(exc))
                continue
            async with self._lock:
                if url in self.agents:
                    try:
                        self._apply(url, data, card, signed)
                    except CardRefused as exc:
                        log.warning("a2a_card_refused_on_refresh", url=url, reason=str(exc))
                        self.withdraw(url)

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # one bad refresh never stops the loop
                self._count("refresh_errors")
                log.error("a2a_refresh_failed", error=f"{type(exc).__name__}: {exc}")

    # -------------------------------------------------------------- calling

    def _handler(self, url: str, cap: SkillCapability) -> Callable[[Any], Awaitable[Any]]:
        async def forward(task_input: Any) -> Any:
            return await self.call(url, cap.skill_id, task_input)

        return forward

    async def _client(self, agent: ImportedAgent) -> Any:
        if self._closed:
            raise AgentTaskFailed("the A2A importer of this node is closed")
        if agent.client is None:
            import httpx
            from a2a.client import ClientConfig, ClientFactory

            if self._httpx is None:
                # No redirects: the card's interface was checked, where it sends us is not.
                self._httpx = httpx.AsyncClient(
                    follow_redirects=False,
                    timeout=None,
                    transport=capped_transport(),
                    event_hooks={"request": [self._on_request]},
                )
            factory = ClientFactory(ClientConfig(streaming=False, httpx_client=self._httpx))
            agent.client = factory.create(agent.card)
        return agent.client

    async def _on_request(self, request: Any) -> None:
        """Every request to an agent: the current trace context in ``traceparent`` and,
        for an agent whose card accepts them, this node's request signature (over the
        final body, so it is added last)."""
        from meshnode.runtime.tracing import TRACEPARENT, current_context

        context = current_context()
        if context is not None and TRACEPARENT not in request.headers:
            request.headers[TRACEPARENT] = format_traceparent(context)
        target = _origin(str(request.url))
        for agent in self.agents.values():
            if agent.audience is not None and _origin(agent.rpc_url) == target:
                await request.aread()
                headers = signed_headers(self.node.identity, agent.audience, request, self._rng)
                request.headers.update(headers)
                return

    async def call(self, url: str, skill_id: str, task_input: Any) -> dict[str, Any]:
        """Forward one task to the agent at ``url`` inside a client span
        (``invoke_agent {capability}``, GenAI conventions): the request carries its
        ``traceparent``, so an agent that traces continues the trace."""
        tracer = self.node.tracer
        if tracer is None:
            return await self._call(url, skill_id, task_input)
        agent = self.agents.get(url)
        cap = agent.skills.get(skill_id) if agent is not None else None
        name = cap.name if cap is not None else skill_id
        target = urlsplit(agent.rpc_url if agent is not None else url)
        with tracer.span(
            f"invoke_agent {name}",
            SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": "invoke_agent",
                "gen_ai.agent.name": skill_id,
                "gen_ai.agent.id": agent.name if agent is not None else url,
                "a2a.method": "SendMessage",
                "server.address": target.hostname or "",
                "server.port": target.port or (443 if target.scheme == "https" else 80),
                "meshnode.a2a.signed": bool(agent is not None and agent.audience),
            },
        ):
            return await self._call(url, skill_id, task_input)

    async def _call(self, url: str, skill_id: str, task_input: Any) -> dict[str, Any]:
        """Forward one task to the agent at ``url``; the result, or an exception that
        fails the task (:class:`~meshnode.errors.InvalidInput` for a refused input)."""
        from a2a.client import ClientCallContext
        from a2a.types import GetTaskRequest, Message, Part, Role, SendMessageRequest
        from google.protobuf.struct_pb2 import Struct  # type: ignore[import-untyped]

        from meshnode.runtime.tasks import current_task_deadline

        agent = self.agents.get(url)
        cap = agent.skills.get(skill_id) if agent is not None else None
        if agent is None or cap is None:
            raise AgentTaskFailed(f"the agent at {url} no longer offers {skill_id!r}")
        if not isinstance(task_input, dict):
            raise InvalidInput("the input must be an object with 'text' and/or 'data'")
        text, data = task_input.get("text"), task_input.get("data")
        if text is None and data is None:
            raise InvalidInput("the input needs 'text' or 'data'")
        parts: list[Any] = []
        if isinstance(text, str):
            parts.append(Part(text=text))
        if isinstance(data, dict):
            value = Struct()
            value.update(data)
            part = Part(media_type=JSON_MODE)
            part.data.struct_value.CopyFrom(value)
            parts.append(part)
        message = Message(
            role=Role.ROLE_USER,
            message_id=str(uuid.uuid4()),
            parts=parts,
        )
        # "skill" is how a meshnode node's A2A endpoint names the capability asked for
        # (without it, a node would route the text by discovery instead).
        message.metadata.update({"meshnode_skill": skill_id, "skill": skill_id})
        deadline = current_task_deadline()
        budget = self.call_timeout_s
        if deadline is not None:
            budget = min(budget, max(0.0, deadline - time.time()))
        client = await self._client(agent)
        self._count("calls")
        task_id = ""
        try:
            async with asyncio.timeout(budget):
                context = ClientCallContext(timeout=budget)
                last: Any = None
                async for event in client.send_message(
                    SendMessageRequest(message=message), context=context
                ):
                    last = event
                if last is None:
                    raise AgentTaskFailed("the agent sent no answer")
                if last.HasField("message"):
                    return message_outcome(last.message)
                task = last.task
                task_id = task.id
                while True:
                    outcome = task_outcome(task)
                    if outcome is not None:
                        self._count("completed")
                        return outcome
                    await asyncio.sleep(POLL_INTERVAL_S)
                    task = await client.get_task(GetTaskRequest(id=task_id), context=context)
        except TimeoutError:
            self._count("timeouts")
            if task_id:
                await self._cancel_quietly(client, task_id)
            raise AgentTaskFailed(f"the agent did not finish within {budget:.1f} s") from None
        except (InvalidInput, AgentTaskFailed):
            self._count("failed")
            raise
        except asyncio.CancelledError:
            if task_id:
                await asyncio.shield(self._cancel_quietly(client, task_id))
            raise
        except Exception as exc:  # the SDK's transport and protocol errors
            self._count("errors")
            raise AgentTaskFailed(
                f"calling the agent failed: {type(exc).__name__}: {exc}"
            ) from None

    async def _cancel_quietly(self, client: Any, task_id: str) -> None:
        from a2a.types import CancelTaskRequest

        with contextlib.suppress(Exception):
            async with asyncio.timeout(2.0):
                await client.cancel_task(CancelTaskRequest(id=task_id))

    def __repr__(self) -> str:
        return f"<A2AImporter agents={len(self.agents)} counts={self.counts}>"


# ---------------------------------------------------------------------------- HTTP routes


def import_routes(node: MeshNode) -> list[web.RouteDef]:
    """``POST /v1/a2a/import`` (WORK: it makes the node publish and serve capabilities)
    and ``GET /v1/a2a/imports`` (READ)."""
    from meshnode.core.channel import RateLimiter
    from meshnode.runtime.api import (
        RETRY_AFTER_S,
        Access,
        _is_loopback,
        _json_body,
        _opt_str,
        authorize,
    )

    limiter = RateLimiter(node.config.api_rate_per_s, node.config.api_rate_burst)

    async def post_import(request: web.Request) -> web.Response:
        authorize(request, node.config, Access.WORK)
        # Each import makes the node fetch a URL: callers off loopback share the API's
        # per-address token bucket (NodeConfig.api_rate_per_s, api_rate_burst).
        if not _is_loopback(request.remote) and not limiter.allow(
            request.remote or "?", time.monotonic()
        ):
            node.count_drop("api_rate_limited")
            raise web.HTTPTooManyRequests(
                text="too many requests from this address; slow down",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        body = await _json_body(request, node, MAX_IMPORT_BODY_BYTES)
        importer = importer_for(node)
        if importer is None:
            raise web.HTTPConflict(text="this node does not import A2A agents")
        url = _opt_str(body, "url")
        try:
            agent = await importer.import_agent(url or "")
        except CardRefused as exc:
            return web.json_response({"error": str(exc)}, status=422)
        except AgentUnreachable as exc:
            return web.json_response({"error": str(exc)}, status=502)
        except A2AUnavailable as exc:
            return web.json_response({"error": str(exc)}, status=501)
        return web.json_response(agent.to_json())

    async def get_imports(request: web.Request) -> web.Response:
        authorize(request, node.config, Access.READ)
        importer = importer_for(node)
        agents = [] if importer is None else [a.to_json() for a in importer.agents.values()]
        return web.json_response({"agents": agents})

    return [web.post("/v1/a2a/import", post_import), web.get("/v1/a2a/imports", get_imports)]
