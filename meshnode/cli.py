"""The ``meshnode`` command.

Subcommands: ``run`` (start a node and serve until SIGINT/SIGTERM), ``members`` (ask a
running node who it knows), ``discover`` (rank providers for a description), ``delegate``
(run a task through a node), ``trust`` (a node's trust view and breakers), ``keygen``
(create a data dir's identity), ``demo`` (a five-agent research mesh on this machine),
``keys`` (create a keyring file; install, use, remove and list keys across the mesh),
``id`` (print a data dir's node id), ``authority init|issue|revoke`` (a mesh authority:
certify and revoke nodes), ``a2a import|list`` (external A2A agents served through a
node), ``mcp`` (an MCP server giving MCP hosts the mesh's tools), ``status`` (a one-screen
summary of a node, ``--watch`` to follow it).
Commands that print data take ``--json``.

The HTTP API's token: ``run --api-token`` or the ``MESHNODE_API_TOKEN`` environment
variable (the flag wins; the environment keeps it out of ``ps``) sets
``NodeConfig.api_token``; the client commands send it (``--api-token`` or the same
variable) as ``Authorization: Bearer``. ``run --no-trust-loopback`` makes loopback callers
present it too; ``run --open-reads`` opens the read routes to anyone.
Exit status: 0 on success, 1 on a runtime error (unreachable node,
bad response), 2 on bad arguments.

Errors are one line on stderr, ``meshnode: error: ...``, in plain words that say what to
do (:class:`CommandError`): no node answering at an address, an HTTP refusal and how to
give the token, a failed delegation (its JSON answer only with ``--json``), the part of
``--agent`` that is wrong, a port another process holds. Text from other parties (HTTP
error bodies, delegation reasons) is flattened to printable characters and cut. Every
subcommand's ``--help`` has a description and an example (:data:`COMMAND_HELP`).
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import contextlib
import dataclasses
import difflib
import errno
import importlib
import importlib.util
import json
import os
import signal
import socket
import sys
import textwrap
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any

from meshnode.core.config import NodeConfig, parse_address
from meshnode.core.coordinates import Coordinate, coordinate_problem
from meshnode.errors import MeshError

PROFILES: dict[str, Callable[..., NodeConfig]] = {
    "lan": NodeConfig.lan,
    "wan": NodeConfig.wan,
    "local": NodeConfig.local,
}
HTTP_TIMEOUT = 10.0
"""Seconds the client subcommands wait for a node's answer."""
DISCOVER_WAIT_MAX_S = 600.0
"""Longest ``meshnode discover --wait`` accepted (seconds)."""
DISCOVER_WAIT_POLL_S = 0.25
"""Seconds between two asks of ``meshnode discover --wait`` while the node finds nothing
(a peer's manifest arrives within a gossip round or a push-pull; four asks a second cost
the node four index lookups)."""
API_TOKEN_ENV = "MESHNODE_API_TOKEN"
"""Environment variable holding the HTTP API's token, for ``run`` and the client commands
(``--api-token`` wins over it)."""
ERROR_TEXT_MAX = 300
"""Characters of a remote party's text (an HTTP error body, a delegation's reason) shown in
an error line; the rest is cut, so that a hostile node cannot flood the terminal."""
ERROR_BODY_MAX_BYTES = 16 * 1024
"""Bytes of an HTTP error answer's body read to show its text (what follows is left
unread: the line shows :data:`ERROR_TEXT_MAX` characters of it anyway)."""


class CommandError(MeshError):
    """A failure the command reports in plain words on one line (exit status 1): the
    message already says what went wrong and, where it can, what to do."""


def one_line(text: object, limit: int | None = None) -> str:
    """``text`` as one line of printable characters (runs of whitespace become one
    space; control characters, which a remote party could use to rewrite the terminal,
    are dropped), cut to ``limit`` characters."""
    flat = " ".join("".join(ch if ch.isprintable() else " " for ch in str(text)).split())
    if limit is not None and len(flat) > limit:
        flat = flat[: limit - 1] + "…"
    return flat


def _address_text(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _client_error(exc: BaseException, address: str, wait_s: float) -> CommandError | None:
    """The plain-words form of an HTTP client failure talking to the node at ``address``,
    or None when ``exc`` is not one."""
    import aiohttp

    if isinstance(exc, aiohttp.ClientConnectorError):
        return CommandError(f"no node answering at {address} — is `meshnode run` running there?")
    if isinstance(exc, TimeoutError):
        return CommandError(f"{address} did not answer within {wait_s:g} s")
    if isinstance(exc, (aiohttp.ContentTypeError, json.JSONDecodeError)):
        return CommandError(f"{address} did not answer with JSON — is it a meshnode node's API?")
    if isinstance(exc, aiohttp.ClientError):
        return CommandError(
            f"{address} broke off the exchange ({type(exc).__name__}: "
            f"{one_line(exc, ERROR_TEXT_MAX)})"
        )
    return None


async def _error_text(resp: Any) -> str:
    """The start of an HTTP error answer's body (at most :data:`ERROR_BODY_MAX_BYTES`)."""
    raw: bytes = await resp.content.read(ERROR_BODY_MAX_BYTES)
    return raw.decode("utf-8", "replace")


def _http_refusal(address: str, status: int, text: str) -> CommandError:
    """An HTTP error answer, in plain words; a 401 says how to give the token."""
    message = f"{address} refused the request (HTTP {status}): {one_line(text, ERROR_TEXT_MAX)}"
    if status == 401:
        message += f" — give it with --api-token or ${API_TOKEN_ENV}"
    return CommandError(message)


def api_token(args: argparse.Namespace) -> str | None:
    """The API token: ``--api-token``, else :data:`API_TOKEN_ENV`, else None (empty is
    None)."""
    token = getattr(args, "api_token", None) or os.environ.get(API_TOKEN_ENV) or None
    return token


def _run_async(main: Coroutine[Any, Any, int]) -> int:
    """Run ``main`` on uvloop when installed, else the default loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def load_agent_class(spec: str) -> type[Any]:
    """``module:Class`` or ``path/to/file.py:Class`` → the class (a MeshNode subclass)."""
    from meshnode.runtime.node import MeshNode

    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise ValueError(f"--agent {spec}: expected MODULE:CLASS or FILE.py:CLASS")
    if target.endswith(".py"):
        if not Path(target).is_file():
            raise ValueError(f"--agent {spec}: no file {target}")
        path = Path(target).resolve()
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        if module_spec is None or module_spec.loader is None:
            raise ValueError(f"--agent {spec}: {target} cannot be loaded as a module")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[path.stem] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:  # the agent's own code failed: say so, in one line
            del sys.modules[path.stem]
            raise ValueError(
                f"--agent {spec}: importing {target} failed: {type(exc).__name__}: {one_line(exc)}"
            ) from None
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as exc:
            if exc.name is not None and (target == exc.name or target.startswith(exc.name + ".")):
                raise ValueError(
                    f"--agent {spec}: no module named {target!r} (not installed, and not a FILE.py)"
                ) from None
            raise ValueError(
                f"--agent {spec}: importing {target} failed: {type(exc).__name__}: {exc}"
            ) from None
        except Exception as exc:
            raise ValueError(
                f"--agent {spec}: importing {target} failed: {type(exc).__name__}: {one_line(exc)}"
            ) from None
    cls = getattr(module, attr, None)
    if cls is None:
        raise ValueError(f"--agent {spec}: {target} has no class {attr}")
    if not (isinstance(cls, type) and issubclass(cls, MeshNode)):
        raise ValueError(f"--agent {spec}: {attr} is not a MeshNode subclass")
    return cls


def _bind_problem(host: str, port: int, exc: OSError) -> str | None:
    """Why ``run`` could not bind ``host:port``, in plain words (which protocol holds the
    port), or None when ``exc`` is not a binding failure this knows."""
    chain: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None and len(chain) < 8:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    codes = {e.errno for e in chain if isinstance(e, OSError)}
    text = " ".join(str(e) for e in chain).lower()
    from meshnode.errors import BindError

    if not (isinstance(exc, BindError) or "bind" in text or errno.EADDRINUSE in codes):
        return None  # another OSError (a file, a seed's name): reported as it is
    held = [
        name
        for name, kind in (("UDP", socket.SOCK_DGRAM), ("TCP", socket.SOCK_STREAM))
        if port and _port_taken(host, port, kind)
    ]
    if held or errno.EADDRINUSE in codes or "address already in use" in text:
        which = " and ".join(held) or "UDP or TCP"
        return (
            f"port {port} is in use ({which}) on {host} — another process holds it; "
            "choose another with --port"
        )
    if errno.EACCES in codes or "permission denied" in text:
        return (
            f"no permission to bind port {port} on {host} (ports below 1024 need privileges); "
            "choose another with --port"
        )
    if errno.EADDRNOTAVAIL in codes or "cannot assign requested address" in text:
        return f"{host} is not an address of this machine; choose another with --host"
    return None


def _port_taken(host: str, port: int, kind: socket.SocketKind) -> bool:
    """Whether binding ``host:port`` for ``kind`` fails because another socket holds it
    (TCP with SO_REUSEADDR, as the node binds: a closed connection's TIME_WAIT does not
    count)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, kind) as probe:
            if kind == socket.SOCK_STREAM:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        return exc.errno == errno.EADDRINUSE
    return False


def _config_from_args(args: argparse.Namespace) -> NodeConfig:
    overrides: dict[str, Any] = {
        "name": args.name,
        "host": args.host,
        "port": args.port,
        "seeds": tuple(args.seed or ()),
        "data_dir": args.data_dir,
    }
    if args.advertise_host:
        overrides["advertise_host"] = args.advertise_host
    if args.embedder:
        overrides["embedder"] = args.embedder
    if args.embedding_precision:
        overrides["embedding_precision"] = args.embedding_precision
    if args.max_concurrent_tasks:
        overrides["max_concurrent_tasks"] = args.max_concurrent_tasks
    overrides["api_token"] = api_token(args)
    overrides["api_trust_loopback"] = not args.no_trust_loopback
    overrides["api_open_reads"] = args.open_reads
    if args.api_host:
        overrides["api_allowed_hosts"] = tuple(args.api_host)
    if args.authority:
        overrides["authority"] = args.authority
    if args.cert:
        overrides["certificate"] = args.cert
    overrides.update(_keyring_overrides(args))
    overrides["open"] = args.open
    overrides.update(_observability_overrides(args))
    base = PROFILES[args.profile]()
    for key, value in getattr(args, "set", None) or ():
        overrides[key] = config_setting(base, key, value, flagged=overrides)
    return PROFILES[args.profile](**overrides)


def parse_setting(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` of ``run --set``: VALUE as a Python literal (``3``, ``0.5``, ``True``,
    ``('a', 'b')``), else the text itself."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value: Any = ast.literal_eval(raw)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        value = raw
    return key.strip(), value


def config_setting(base: NodeConfig, key: str, value: Any, flagged: Mapping[str, Any]) -> Any:
    """``value`` for the ``NodeConfig`` field ``key`` as ``run --set`` gives it, or
    ValueError: an unknown field, a field one of ``run``'s own flags sets (``flagged``: one
    source for each setting), or a value of another kind than the field's (an integer
    where a number of seconds is expected is fine). Ranges are checked by ``NodeConfig``."""
    fields = {f.name for f in dataclasses.fields(NodeConfig)}
    if key not in fields:
        close = difflib.get_close_matches(key, sorted(fields), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ValueError(f"--set {key}: NodeConfig has no field {key!r}{hint}")
    if key in flagged:
        raise ValueError(f"--set {key}: {key} is set by its own flag of meshnode run; use that")
    default = getattr(base, key)
    if default is None or isinstance(value, type(default)):
        kind_ok = not (isinstance(value, bool) and not isinstance(default, bool))
    else:
        kind_ok = (
            isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool)
        )
    if isinstance(default, tuple) and isinstance(value, list):
        value, kind_ok = tuple(value), True
    if not kind_ok:
        raise ValueError(
            f"--set {key}={value!r}: expected {type(default).__name__} like the default {default!r}"
        )
    return value


async def _cmd_run(args: argparse.Namespace) -> int:
    from meshnode.runtime.logging import configure_logging, print_event
    from meshnode.runtime.node import MeshNode

    configure_logging(level=args.log_level, json=True if args.json_logs else None)
    config = _config_from_args(args)
    cls = load_agent_class(args.agent) if args.agent else MeshNode
    node = cls(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await node.start()
    except OSError as exc:
        problem = _bind_problem(config.host, config.port, exc)
        if problem is None:
            raise
        raise CommandError(problem) from None
    try:
        bridges = await _start_bridges(node, args)
    except BaseException:
        await node.aclose()
        raise
    host, port = node.address
    print_event("listening", node_id=node.node_id, address=f"{host}:{port}", name=config.name)
    try:
        await stop.wait()
    finally:
        await _close_bridges(bridges)
        await node.aclose()
    return 0


async def _get_json(node: str, path: str, token: str | None = None) -> Any:
    return await _request_json("GET", node, path, token=token)


async def _request_json(
    method: str,
    node: str,
    path: str,
    body: Any = None,
    wait_s: float = HTTP_TIMEOUT,
    token: str | None = None,
) -> Any:
    import aiohttp

    host, port = parse_address(node)
    address = _address_text(host, port)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=wait_s)) as session,
            session.request(method, f"http://{address}{path}", json=body, headers=headers) as resp,
        ):
            if resp.status >= 400 and resp.content_type != "application/json":
                raise _http_refusal(address, resp.status, await _error_text(resp))
            return await resp.json()
    except Exception as exc:
        plain = _client_error(exc, address, wait_s)
        if plain is None:
            raise
        raise plain from None


def _table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


async def _cmd_members(args: argparse.Namespace) -> int:
    data = await _get_json(args.node, "/v1/members", api_token(args))
    members = data["members"]
    if args.json:
        print(json.dumps(members, indent=2))
        return 0
    rows = [
        (m["node_id"][:10], m["name"] or "-", m["address"], m["state"], str(m["incarnation"]))
        for m in members
    ]
    print(_table(rows, ("ID", "NAME", "ADDRESS", "STATE", "INC")))
    return 0


def _optional(value: object, fmt: str) -> str:
    """``value`` formatted, or ``-`` when it is unknown (None)."""
    return "-" if value is None else fmt.format(value)


async def _cmd_discover(args: argparse.Namespace) -> int:
    body = {
        "description": args.description,
        "capability_name": args.capability,
        "min_trust": args.min_trust,
        "max_cost_usd": args.max_cost,
        "tags": args.tag or [],
        "top_k": args.top_k,
        "max_rtt_ms": args.max_rtt_ms,
    }
    wait_s = args.wait
    if wait_s is not None and not 0 < wait_s <= DISCOVER_WAIT_MAX_S:
        raise ValueError(f"--wait must be in (0, {DISCOVER_WAIT_MAX_S:g}] seconds, got {wait_s:g}")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + (wait_s or 0.0)
    while True:
        data = await _request_json("POST", args.node, "/v1/discover", body, token=api_token(args))
        candidates = data["candidates"]
        if candidates or wait_s is None or loop.time() >= deadline:
            break
        await asyncio.sleep(min(DISCOVER_WAIT_POLL_S, max(0.0, deadline - loop.time())))
    if args.json:
        print(json.dumps(candidates, indent=2))
        return 0 if candidates or wait_s is None else 1
    if not candidates and wait_s is not None:
        print(f"no candidates within {wait_s:g} s", file=sys.stderr)
        return 1
    rows = [
        (
            (c["name"] or "-") + (" (suspect)" if c.get("suspect") else ""),
            c["node_id"][:10],
            c["capability"],
            f"{c['score']['total']:.3f}",
            f"{c['score']['semantic']:.2f}",
            f"{c['score'].get('lexical', 0.0):.2f}",
            f"{c['score']['trust']:.2f}",
            f"{c['score']['availability']:.2f}",
            f"{c['score']['cost_factor']:.2f}",
            f"{c['score'].get('latency', 1.0):.2f}",
            _optional(c["score"].get("rtt_ms"), "{:.1f}"),
            f"{c['score'].get('task_availability', 1.0):.2f}",
            _optional(c["score"].get("machine_pressure"), "{:.2f}"),
            c["address"],
        )
        for c in candidates
    ]
    header: tuple[str, ...] = ("NAME", "ID", "CAPABILITY", "SCORE", "SEM", "LEX", "TRUST")
    header += ("AVAIL", "COST", "LAT", "RTT_MS", "TASKS", "PRESS")
    print(_table(rows, (*header, "ADDRESS")) if rows else "no candidates")
    return 0


async def _cmd_delegate(args: argparse.Namespace) -> int:
    try:
        task_input = json.loads(args.input)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--input is not JSON: {exc}") from None
    body = {
        "capability": args.capability,
        "input": task_input,
        "description": args.description,
        "deadline_s": args.deadline,
        "max_cost_usd": args.max_cost,
        "min_trust": args.min_trust,
    }
    if args.expect is not None:  # judge the result by this output schema
        try:
            body["expect"] = json.loads(args.expect)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--expect is not JSON: {exc}") from None
    data = await _request_json(
        "POST",
        args.node,
        "/v1/delegate",
        body,
        wait_s=args.deadline + HTTP_TIMEOUT,
        token=api_token(args),
    )
    if args.json:
        print(json.dumps(data, indent=2))
        return 1 if "error" in data else 0
    if "error" in data:
        raise CommandError(delegation_failure(data))
    print(json.dumps(data["output"], indent=2))
    tried = ", ".join(f"{a['node'][:10]}:{a['outcome']}" for a in data["attempts"])
    quality = "unscored" if data["quality"] is None else f"{data['quality']:.2f}"
    print(
        f"# by {data['provider'][:10]} in {data['elapsed_ms']:.1f} ms, quality "
        f"{quality}; attempts: {tried}; trace {data.get('trace_id')}",
        file=sys.stderr,
    )
    return 0


DELEGATE_ATTEMPTS_SHOWN = 5
"""Attempts a failed delegation's error line names (the rest are counted)."""


def delegation_failure(data: dict[str, Any]) -> str:
    """One line for a failed ``/v1/delegate`` answer: the reason, who was tried with what
    outcome, and the trace id (for ``meshnode trace``). Reasons and details can come from
    other nodes: they are flattened and cut (see :func:`one_line`)."""
    parts = [f"delegation failed: {one_line(data.get('error'), ERROR_TEXT_MAX)}"]
    attempts = data.get("attempts") or []
    if isinstance(attempts, list) and attempts:
        shown = [
            one_line(f"{str(a.get('node', '?'))[:10]}:{a.get('outcome', '?')}", 40)
            for a in attempts[:DELEGATE_ATTEMPTS_SHOWN]
            if isinstance(a, dict)
        ]
        more = len(attempts) - len(shown)
        parts.append("tried " + ", ".join(shown) + (f" and {more} more" if more > 0 else ""))
    if data.get("trace_id"):
        parts.append(f"trace {one_line(data['trace_id'], 64)}")
    return "; ".join(parts)


async def _cmd_trust(args: argparse.Namespace) -> int:
    data = await _get_json(args.node, "/v1/trust", api_token(args))
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    rows = [
        (
            p["name"] or "-",
            p["node_id"][:10],
            f"{p['trust']:.3f}",
            "-" if p["direct"] is None else f"{p['direct']:.3f}",
            p["breaker"],
        )
        for p in data["peers"]
    ]
    print(_table(rows, ("NAME", "ID", "TRUST", "DIRECT", "BREAKER")) if rows else "no peers")
    return 0


def _cmd_keygen(args: argparse.Namespace) -> int:
    from meshnode.runtime.store import KEY_FILE, load_identity, save_identity
    from protocol import Identity

    path = Path(args.data_dir) / KEY_FILE
    if path.exists() and not args.force:
        identity = load_identity(path)
        created = False
    else:
        identity = Identity.generate()
        save_identity(path, identity)
        created = True
    if args.json:
        print(json.dumps({"node_id": identity.node_id, "key_file": str(path), "created": created}))
    else:
        print(identity.node_id)
    return 0


# ---------------------------------------------------------------------------- mesh authority

REVOKE_TIMEOUT = HTTP_TIMEOUT
"""Seconds ``meshnode authority revoke --node`` waits for the node's answer."""


def _add_authority_parsers(sub: Any) -> None:
    ident = sub.add_parser("id", help="print a data dir's node id (never creates a key)")
    ident.add_argument("--data-dir", required=True, help="the node's data directory")
    ident.add_argument("--json", action="store_true")

    authority = sub.add_parser("authority", help="a mesh authority: certify and revoke nodes")
    asub = authority.add_subparsers(dest="authority_command", required=True)
    init = asub.add_parser("init", help="create an authority key in DIR, print its public key")
    init.add_argument("dir", metavar="DIR", help="directory for the authority key (mode 0600)")
    init.add_argument("--force", action="store_true", help="replace an existing key")
    init.add_argument("--json", action="store_true")
    issue = asub.add_parser("issue", help="sign a membership certificate for a node")
    issue.add_argument("--dir", required=True, help="the authority directory")
    issue.add_argument("--node-id", required=True, help="the node's id (meshnode id)")
    issue.add_argument(
        "--role", action="append", default=[], help="a role (repeatable; default: none)"
    )
    issue.add_argument("--days", type=float, required=True, help="validity in days")
    issue.add_argument("--name", default="", help="display name in the certificate (default: none)")
    issue.add_argument("--out", help="certificate file (default: NODE_ID_PREFIX.cert)")
    issue.add_argument("--json", action="store_true")
    revoke = asub.add_parser("revoke", help="sign a revocation, optionally hand it to a node")
    revoke.add_argument("--dir", required=True, help="the authority directory")
    target = revoke.add_mutually_exclusive_group(required=True)
    target.add_argument("--node-id", help="revoke every certificate of this node")
    target.add_argument("--serial", type=int, help="revoke one certificate")
    revoke.add_argument(
        "--node",
        metavar="HOST:PORT",
        help="a running node to hand it to (default: only write the file)",
    )
    revoke.add_argument(
        "--token",
        help=f"the node's API token (when not on loopback; default ${API_TOKEN_ENV})",
    )
    revoke.add_argument("--out", help="revocation file (default: revocation-SERIAL|NODE.rev)")
    revoke.add_argument("--json", action="store_true")


def _cmd_id(args: argparse.Namespace) -> int:
    from meshnode.runtime.store import KEY_FILE, load_identity

    identity = load_identity(Path(args.data_dir) / KEY_FILE)
    print(json.dumps({"node_id": identity.node_id}) if args.json else identity.node_id)
    return 0


def _cmd_authority(args: argparse.Namespace) -> int:
    import time

    from meshnode.runtime import credentials, store
    from protocol import is_node_id
    from protocol.certificate import MAX_CERTIFICATE_LIFETIME, MAX_SERIAL, issue_revocation

    if args.authority_command == "init":
        key = credentials.init_authority(args.dir, force=args.force)
        path = Path(args.dir) / store.AUTHORITY_KEY_FILE
        out = {"authority": key.node_id, "key_file": str(path)}
        print(json.dumps(out) if args.json else key.node_id)
        return 0
    key = store.load_authority_key(args.dir)
    now = time.time()
    if args.authority_command == "issue":
        issued = credentials.issue_certificate_file(
            args.dir,
            args.node_id,
            days=args.days,
            roles=tuple(args.role),
            name=args.name,
            out=args.out,
        )
        out_path, serial = str(issued.path), issued.serial
        result = {
            "certificate": out_path,
            "serial": serial,
            "node_id": args.node_id,
            "roles": sorted(issued.roles),
            "expires_at": issued.expires_at,
        }
        print(json.dumps(result) if args.json else f"{out_path} (serial {serial})")
        return 0
    # revoke
    if args.node_id is not None and not is_node_id(args.node_id):
        raise ValueError(f"--node-id {args.node_id!r} is not a node id")
    if args.serial is not None and not 0 <= args.serial <= MAX_SERIAL:
        raise ValueError("--serial out of range")
    expiry = store.issued_expiry(args.dir, serial=args.serial, node_id=args.node_id)
    keep_until = max(expiry, now + 1.0) if expiry is not None else now + MAX_CERTIFICATE_LIFETIME
    revocation = issue_revocation(
        key, serial=args.serial, node_id=args.node_id, revoked_at=now, keep_until=keep_until
    )
    label = args.serial if args.serial is not None else str(args.node_id)[:10]
    out_path = args.out or f"revocation-{label}.rev"
    store.save_revocation(out_path, revocation.signed)
    report: dict[str, Any] = {"revocation": out_path, "keep_until": keep_until}
    if args.node:
        token = args.token or os.environ.get(API_TOKEN_ENV) or None
        report["accepted"] = _run_async(_post_revocation(args.node, revocation.signed, token))
    print(json.dumps(report) if args.json else " ".join(f"{k}={v}" for k, v in report.items()))
    return 0


async def _post_revocation(node: str, signed: Any, token: str | None) -> bool:
    import aiohttp

    from protocol import pack

    host, port = parse_address(node)
    address = _address_text(host, port)
    headers = {"Content-Type": "application/octet-stream"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=REVOKE_TIMEOUT)) as session,
            session.post(
                f"http://{address}/v1/authority/revoke", data=pack(signed), headers=headers
            ) as resp,
        ):
            if resp.status >= 400:
                raise _http_refusal(address, resp.status, await _error_text(resp))
            return bool((await resp.json())["accepted"])
    except Exception as exc:
        plain = _client_error(exc, address, REVOKE_TIMEOUT)
        if plain is None:
            raise
        raise plain from None


# ---------------------------------------------------------------------------- help texts

HELP_WIDTH = 88
"""Columns the subcommands' descriptions are wrapped to (examples keep their lines)."""
DEFAULT_NODE = "127.0.0.1:7946"
"""The node the client commands ask when ``--node`` is not given (``run``'s default port
on loopback)."""

COMMAND_HELP: dict[tuple[str, ...], tuple[str, str]] = {
    (): (
        "Run a node of a decentralized agent mesh, and talk to running nodes. The client "
        f"commands ask the node at --node (default {DEFAULT_NODE}) over its HTTP API. "
        "'meshnode COMMAND --help' describes each command.",
        "meshnode run --name a --data-dir ./a &\n"
        "  meshnode members\n"
        "  meshnode discover 'greet someone by name'\n"
        "  meshnode demo",
    ),
    ("run",): (
        "Start a node: bind UDP and TCP on --host:--port, join the mesh through the --seed "
        "nodes, serve the HTTP API on the same port, and run until SIGINT or SIGTERM. The "
        "first line on stdout is a JSON 'listening' event with the node id and address.",
        "meshnode run --name a --data-dir ./a\n"
        "  meshnode run --name b --data-dir ./b --port 7947 --seed 127.0.0.1:7946 \\\n"
        "      --agent examples/hello_agent.py:HelloAgent",
    ),
    ("members",): (
        "List the members a running node knows: id, name, address, state and incarnation.",
        "meshnode members\n  meshnode members --node 127.0.0.1:7947 --json",
    ),
    ("discover",): (
        "Ask a running node to rank the providers it knows for a task, described in plain "
        "words or named by its exact capability. Score columns: total, semantic match, "
        "trust, availability, cost factor.",
        "meshnode discover 'say hello to someone'\n"
        "  meshnode discover --capability greet --max-cost 0.01 --json\n"
        "  meshnode discover --capability greet --wait 30   # a node that just started",
    ),
    ("delegate",): (
        "Run a task through a running node: it picks a provider (by capability name, or by "
        "--description), sends the input, retries elsewhere on failure, and prints the "
        "output. A failed delegation is one line on stderr and exit status 1 (the whole "
        "answer with --json).",
        'meshnode delegate greet --input \'{"name": "Ada"}\'\n'
        "  meshnode delegate --description 'greet someone' --input '{\"name\": \"Ada\"}' --json",
    ),
    ("trust",): (
        "Show a running node's trust in each peer (overall and from its own experience) "
        "and the state of its circuit breaker toward each.",
        "meshnode trust\n  meshnode trust --node 127.0.0.1:7947 --json",
    ),
    ("keygen",): (
        "Create the identity key (Ed25519, file mode 0600) of a data dir and print its node "
        "id; an existing key is shown, not replaced, unless --force.",
        "meshnode keygen --data-dir ./a",
    ),
    ("id",): (
        "Print the node id of a data dir's identity key. Never creates a key.",
        "meshnode id --data-dir ./a",
    ),
    ("authority",): (
        "A mesh authority: a key that certifies which nodes may join (run --authority and "
        "--cert) and revokes them.",
        "meshnode authority init ./authority\n"
        "  meshnode authority issue --dir ./authority --node-id $(meshnode id --data-dir ./a) "
        "--days 30",
    ),
    ("authority", "init"): (
        "Create an authority key in DIR and print its public key (give it to every node "
        "as run --authority).",
        "meshnode authority init ./authority",
    ),
    ("authority", "issue"): (
        "Sign a membership certificate for a node id; the node runs with --cert FILE.",
        "meshnode authority issue --dir ./authority --node-id NODE_ID --days 30 --role worker",
    ),
    ("authority", "revoke"): (
        "Sign a revocation of one certificate (--serial) or of every certificate of a node "
        "(--node-id); with --node, hand it to a running node, which gossips it to the mesh.",
        "meshnode authority revoke --dir ./authority --serial 3 --node 127.0.0.1:7946",
    ),
    ("keys",): (
        "The mesh keyring that seals all peer traffic: create a keyring file, then rotate "
        "keys across every member without downtime (install, use, remove).",
        "meshnode keys init ./mesh.keyring\n"
        "  meshnode keys install $(meshnode keys generate)\n"
        "  meshnode keys list",
    ),
    ("keys", "init"): (
        "Create a keyring file (mode 0600) holding one fresh key; give it to every node as "
        "run --keyring FILE.",
        "meshnode keys init ./mesh.keyring --label prod",
    ),
    ("keys", "generate"): (
        "Print a fresh random key, base64, for keys install.",
        "meshnode keys generate",
    ),
    ("keys", "install"): (
        "Install KEY on every member through a running node; members can then open "
        "traffic sealed with it.",
        "meshnode keys install KEY",
    ),
    ("keys", "use"): (
        "Make an installed KEY every member's primary key, the one they seal with.",
        "meshnode keys use KEY",
    ),
    ("keys", "remove"): (
        "Remove KEY from every member (refused while it is a primary key).",
        "meshnode keys remove OLD_KEY",
    ),
    ("keys", "list"): (
        "List every key the members hold, how many members hold each, and whose primary it is.",
        "meshnode keys list --json",
    ),
    ("trace",): (
        "Ask the node to collect one delegation's spans from every node it touched (its "
        "members that the spans name, up to 64 nodes) and print them as a timeline, "
        "children under their parents. The API token goes to that node only.",
        "meshnode trace 4bf92f3577b34da6a3ce929d0e0e4736",
    ),
    ("rtt",): (
        "Round trip between the asked node and NODE (or between NODE and NODE2) estimated "
        "from the network coordinates the asked node holds, and the last measured one when "
        "the asked node probed NODE itself. NODE: a node id prefix or a name.",
        "meshnode rtt b\n  meshnode rtt 3f9a b --node 127.0.0.1:7947 --json",
    ),
    ("status",): (
        "A one-screen summary of a running node: health, members by state, tasks in "
        "flight and recent, and the capabilities on offer.",
        "meshnode status\n  meshnode status --watch 5",
    ),
    ("demo",): (
        "Start a five-agent research mesh on this machine (loopback only), ask it a "
        "question, write the report to --out and stop every process again.",
        "meshnode demo\n  meshnode demo --query 'which region grew fastest?' --out report.md",
    ),
    ("a2a",): (
        "External A2A agents served through a node: each skill of an imported agent card "
        "becomes a capability of that node.",
        "meshnode a2a import https://agent.example.com\n  meshnode a2a list",
    ),
    ("a2a", "import"): (
        "Have a running node fetch an A2A agent's card and serve its skills as capabilities.",
        "meshnode a2a import https://agent.example.com --node 127.0.0.1:7946",
    ),
    ("a2a", "list"): (
        "List the A2A agents a running node imports, and the capabilities each gives.",
        "meshnode a2a list --json",
    ),
    ("mcp",): (
        "Serve the mesh to MCP hosts: discover and delegate as MCP tools, over stdio (the "
        "default, for a host that starts this command) or streamable HTTP (--http).",
        "meshnode mcp --node 127.0.0.1:7946\n  meshnode mcp --http 8765",
    ),
}
"""Description and example of every subcommand, by its path below ``meshnode``."""

SHARED_OPTION_HELP: dict[str, str] = {
    "node": f"the node's address, HOST:PORT (default {DEFAULT_NODE})",
    "json": "print JSON instead of text",
}
"""Help of options many subcommands share, by ``dest``, for those defined without one."""


def _finish_help(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> None:
    """Give every subcommand under ``parser`` its description and example, every shared
    option its help, and every option with a default that its help does not state the
    default."""
    description, example = COMMAND_HELP.get(path, ("", ""))
    if description and (path == () or not parser.description):
        parser.description = textwrap.fill(description, HELP_WIDTH)
    if example:
        parser.epilog = ("examples:\n  " if "\n" in example else "example:\n  ") + example
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                _finish_help(child, (*path, name))
            continue
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        if not action.help and action.dest in SHARED_OPTION_HELP:
            action.help = SHARED_OPTION_HELP[action.dest]
        default = action.default
        stated = action.help is not None and "default" in action.help.lower()
        if action.nargs != 0 and default not in (None, [], "") and not stated:
            shown = default.name if isinstance(default, Path) else default
            action.help = f"{action.help or ''} (default {shown})".lstrip()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshnode", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="start a node and serve until SIGINT/SIGTERM")
    run.add_argument("--port", type=int, default=7946, help="UDP and TCP port (default 7946)")
    run.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    run.add_argument(
        "--advertise-host",
        help="address peers use to reach this node (default: the bind address)",
    )
    run.add_argument(
        "--seed",
        action="append",
        metavar="HOST:PORT",
        help="a node to join through (repeatable; any one reachable suffices; default: none, "
        "start a new mesh)",
    )
    run.add_argument("--name", default="node", help="human-readable node name (default node)")
    run.add_argument(
        "--data-dir",
        help="directory for the identity key and SQLite state (default: none, a fresh "
        "identity and nothing kept across restarts)",
    )
    run.add_argument(
        "--profile", choices=sorted(PROFILES), default="lan", help="timing preset (default lan)"
    )
    run.add_argument(
        "--agent",
        metavar="MODULE:CLASS",
        help="MeshNode subclass to run (MODULE:CLASS or FILE.py:CLASS; default: a plain node "
        "offering no capabilities)",
    )
    run.add_argument(
        "--embedder",
        choices=("auto", "minilm", "hashing"),
        help="capability embedder (default auto: MiniLM when installed)",
    )
    run.add_argument(
        "--embedding-precision",
        choices=("auto", "fp32", "int8"),
        help="MiniLM weights (default auto: int8 on CPUs with VNNI, else fp32)",
    )
    run.add_argument(
        "--max-concurrent-tasks", type=int, help="tasks this node runs at once (default 3)"
    )
    run.add_argument(
        "--set",
        type=parse_setting,
        action="append",
        metavar="KEY=VALUE",
        help="set any other NodeConfig field (repeatable; VALUE a Python literal; every field, "
        "its unit and default: docs/configuration.md; default: none)",
    )
    run.add_argument(
        "--authority",
        metavar="PUBKEY",
        help="mesh authority public key: admit only nodes it certified (needs --cert; default: "
        "no authority)",
    )
    run.add_argument(
        "--cert",
        metavar="FILE",
        help="this node's certificate (authority issue; default: none)",
    )
    run.add_argument(
        "--open",
        action="store_true",
        help="run with neither keyring nor authority on a non-loopback address, on purpose",
    )
    run.add_argument(
        "--log-level",
        default="INFO",
        help="least severe log level printed: DEBUG, INFO, WARNING or ERROR (default INFO)",
    )
    run.add_argument("--json-logs", action="store_true", help="JSON logs even on a terminal")
    _add_keyring_run_flags(run)
    _add_observability_run_flags(run)
    _add_keys_parser(sub)
    _add_trace_parser(sub)
    _add_rtt_parser(sub)

    members = sub.add_parser("members", help="list the members a node knows")
    members.add_argument("--node", default=DEFAULT_NODE, metavar="HOST:PORT")
    members.add_argument("--json", action="store_true")

    discover = sub.add_parser("discover", help="rank the providers a node knows for a task")
    discover.add_argument("description", nargs="?", help="what you need, in plain words")
    discover.add_argument(
        "--capability", help="exact capability name (default: any, ranked by the description)"
    )
    discover.add_argument("--node", default=DEFAULT_NODE, metavar="HOST:PORT")
    discover.add_argument(
        "--min-trust", type=float, default=0.0, help="least trust a provider needs, 0..1"
    )
    discover.add_argument("--max-cost", type=float, help="most USD per call (default: no limit)")
    discover.add_argument("--tag", action="append", help="required tag (repeatable; default: none)")
    discover.add_argument("--top-k", type=int, default=5, help="1..20 (default 5)")
    discover.add_argument(
        "--max-rtt-ms",
        type=float,
        metavar="MS",
        help="only providers whose round trip from the node is known and at most MS "
        "milliseconds (network-coordinate estimate, else the last probe; default: no limit)",
    )
    discover.add_argument(
        "--wait",
        type=float,
        metavar="SECONDS",
        help="ask again until at least one candidate is found or SECONDS pass (exit 1 "
        f"then; at most {DISCOVER_WAIT_MAX_S:g}; default: ask once, an empty answer is exit 0)",
    )
    discover.add_argument("--json", action="store_true", help="print the candidates as JSON")

    delegate = sub.add_parser("delegate", help="run a task through a node (loopback)")
    delegate.add_argument("capability", nargs="?", help="capability name")
    delegate.add_argument("--input", default="{}", help="task input as JSON (default {})")
    delegate.add_argument(
        "--description",
        help="find the capability by description (default: the CAPABILITY given)",
    )
    delegate.add_argument("--node", default=DEFAULT_NODE, metavar="HOST:PORT")
    delegate.add_argument("--deadline", type=float, default=30.0, help="seconds (default 30)")
    delegate.add_argument("--max-cost", type=float, help="most USD per call (default: no limit)")
    delegate.add_argument(
        "--min-trust", type=float, default=0.0, help="least trust a provider needs, 0..1"
    )
    delegate.add_argument(
        "--expect",
        metavar="SCHEMA",
        help="output JSON schema the result must match (scores it; default: unscored)",
    )
    delegate.add_argument("--json", action="store_true")

    trust = sub.add_parser("trust", help="a node's trust in each peer and its breakers")
    trust.add_argument("--node", default=DEFAULT_NODE, metavar="HOST:PORT")
    trust.add_argument("--json", action="store_true")

    keygen = sub.add_parser("keygen", help="create (or show) a data dir's identity")
    keygen.add_argument("--data-dir", required=True, help="the node's data directory")
    keygen.add_argument("--force", action="store_true", help="replace an existing key")
    keygen.add_argument("--json", action="store_true")

    _add_authority_parsers(sub)
    _add_status_parser(sub)

    demo = sub.add_parser(
        "demo",
        help="run a five-agent research mesh on this machine (loopback only) and print its report",
    )
    demo.add_argument("--query", help="the research question (default: a question on the data)")
    demo.add_argument(
        "--csv",
        type=Path,
        help="any CSV with a header row and a numeric column (default: the bundled startups)",
    )
    demo.add_argument(
        "--out",
        type=Path,
        default=Path("meshnode-demo-report.md"),
        help="where to write the report (default ./meshnode-demo-report.md)",
    )
    demo_view = demo.add_mutually_exclusive_group()
    demo_view.add_argument(
        "--live", dest="live", action="store_true", default=None, help="live view"
    )
    demo_view.add_argument(
        "--no-live", dest="live", action="store_false", help="plain lines, no live view"
    )
    demo.add_argument("--json", action="store_true", help="print one JSON document")
    demo.add_argument("--keep", action="store_true", help="keep the data dirs and logs")
    demo.add_argument(
        "--timeout", type=float, default=90.0, help="seconds before giving up (default 90)"
    )
    demo.add_argument(
        "--embedder",
        choices=("auto", "minilm", "hashing"),
        default="auto",
        help="the orchestrator's embedder (default auto: MiniLM when installed)",
    )
    demo.add_argument(
        "--mcp-config",
        type=Path,
        help="MCP servers for the web-search agent (JSON file; default: none, offline search)",
    )

    # HTTP API access (see meshnode.runtime.api.authorize)
    run.add_argument(
        "--api-token",
        metavar="TOKEN",
        help=f"bearer token for the HTTP API (16+ characters; default ${API_TOKEN_ENV}, which "
        "this flag overrides: prefer the variable, command lines are visible to other users)",
    )
    run.add_argument(
        "--no-trust-loopback",
        action="store_true",
        help="loopback callers need the API token too (default: they do not)",
    )
    run.add_argument(
        "--open-reads",
        action="store_true",
        help="members, manifests and trust answer anyone (default: loopback or the token)",
    )
    run.add_argument(
        "--api-host",
        action="append",
        metavar="NAME",
        help="a host name the HTTP API answers to without the token (repeatable; default: "
        "only IP addresses, localhost and --host/--advertise-host; other names get HTTP "
        "403, which stops DNS-rebinding pages)",
    )
    for client in (members, discover, delegate, trust):
        client.add_argument(
            "--api-token", metavar="TOKEN", help=f"the node's API token (default ${API_TOKEN_ENV})"
        )
    _add_bridge_parsers(sub, run)
    _finish_help(parser)
    return parser


def _cmd_demo(args: argparse.Namespace) -> int:
    from meshnode.demo.runner import DEFAULT_QUERY, DemoOptions, run_demo

    if args.timeout <= 0:
        raise ValueError("--timeout must be positive")
    # Refuse what would fail at the end of the run before any agent starts.
    if args.out.is_dir():
        raise ValueError(f"--out {args.out} is a folder: give the report's file name")
    if not args.out.parent.is_dir():
        raise ValueError(
            f"--out {args.out}: the folder {args.out.parent} does not exist (create it first)"
        )
    for flag, given in (("--csv", args.csv), ("--mcp-config", args.mcp_config)):
        if given is not None and not given.is_file():
            raise ValueError(f"{flag} {given}: no such file")
    options = DemoOptions(
        query=args.query or DEFAULT_QUERY,
        csv=args.csv,
        out=args.out,
        live=args.live,
        json=args.json,
        keep=args.keep,
        timeout_s=args.timeout,
        embedder=args.embedder,
        mcp_config=args.mcp_config,
    )
    try:
        return _run_async(run_demo(options))
    except KeyboardInterrupt:
        print("meshnode demo: interrupted; every process was stopped", file=sys.stderr)
        return 130


# ---------------------------------------------------------------------------- keyring


def _add_keyring_run_flags(run: argparse.ArgumentParser) -> None:
    run.add_argument(
        "--keyring",
        metavar="FILE",
        help="seal all peer traffic with this keyring (meshnode keys init FILE; default: no "
        "keyring, traffic signed but not sealed)",
    )
    run.add_argument(
        "--encrypt-outgoing",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="seal what this node sends (default on with --keyring; off to upgrade a mesh)",
    )
    run.add_argument(
        "--encrypt-incoming",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="refuse plaintext input (default on with --keyring; off to upgrade a mesh)",
    )


def _keyring_overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if args.keyring:
        out["keyring_file"] = args.keyring
    for name in ("encrypt_outgoing", "encrypt_incoming"):
        value = getattr(args, name)
        if value is not None:
            if not args.keyring:
                raise ValueError(f"--{name.replace('_', '-')} needs --keyring")
            out[name] = value
    return out


def _add_keys_parser(sub: Any) -> None:
    keys = sub.add_parser("keys", help="the mesh keyring: create it, rotate keys cluster-wide")
    ops = keys.add_subparsers(dest="keys_command", required=True)
    init = ops.add_parser("init", help="create a keyring file holding one fresh key")
    init.add_argument("file", help="path of the keyring file to create (mode 0600)")
    init.add_argument(
        "--label", default="", help="cluster label (meshes apart by label; default: none)"
    )
    init.add_argument("--force", action="store_true", help="replace an existing file")
    init.add_argument("--json", action="store_true")
    gen = ops.add_parser("generate", help="print a fresh random key (base64)")
    gen.add_argument("--json", action="store_true")
    for name, text in (
        ("install", "install KEY on every member (members can then open it)"),
        ("use", "make the installed KEY every member's primary (sealing) key"),
        ("remove", "remove KEY from every member (refused for the primary)"),
    ):
        op = ops.add_parser(name, help=text)
        op.add_argument("key", help="the key, base64")
        op.add_argument("--node", default=DEFAULT_NODE, metavar="HOST:PORT")
        op.add_argument("--json", action="store_true")
        _add_token_flag(op)
    lst = ops.add_parser("list", help="every key the members hold, and how many hold each")
    lst.add_argument("--node", default=DEFAULT_NODE, metavar="HOST:PORT")
    lst.add_argument("--json", action="store_true")
    _add_token_flag(lst)


def _add_token_flag(op: argparse.ArgumentParser) -> None:
    op.add_argument(
        "--api-token", metavar="TOKEN", help=f"the node's API token (default ${API_TOKEN_ENV})"
    )


def _cmd_keys(args: argparse.Namespace) -> int:
    from protocol.keyring import fingerprint, format_key, generate_key

    if args.keys_command == "generate":
        key = generate_key()
        text = format_key(key)
        print(json.dumps({"key": text, "fingerprint": fingerprint(key)}) if args.json else text)
        return 0
    if args.keys_command == "init":
        from meshnode.runtime.credentials import init_keyring

        path = Path(args.file)
        ring = init_keyring(path, args.label, force=args.force)
        out = {"file": str(path), "label": ring.label, "keys": ring.fingerprints()}
        print(json.dumps(out) if args.json else f"{path}: key {ring.fingerprints()[0]}")
        return 0
    return _run_async(_cmd_keys_remote(args))


async def _cmd_keys_remote(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"action": args.keys_command}
    if args.keys_command != "list":
        body["key"] = args.key
    data = await _request_json(
        "POST", args.node, "/v1/keys", body, wait_s=KEYS_WAIT_S, token=api_token(args)
    )
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(_keys_text(data))
    complete = not data.get("failed") and not data.get("unreachable")
    return 0 if complete else 1


KEYS_WAIT_S = 600.0
"""Seconds ``meshnode keys install|use|remove|list`` waits for the node's summary: a
fan-out to a large mesh takes many ``key_op_timeout`` rounds when members are down."""


def _keys_text(data: dict[str, Any]) -> str:
    lines = [
        f"{data['action']}: {data['acked']}/{data['members']} members acked"
        + (f", {len(data['failed'])} refused" if data["failed"] else "")
        + (f", {len(data['unreachable'])} did not answer" if data["unreachable"] else "")
    ]
    rows = [
        (k["fingerprint"], f"{k['members']}/{data['members']}", str(k["primary_of"]))
        for k in data["keys"]
    ]
    if rows:
        lines.append(_table(rows, ("KEY", "MEMBERS", "PRIMARY OF")))
    for node, error in data["failed"].items():
        lines.append(f"refused by {node[:10]}: {error}")
    for node in data["unreachable"]:
        lines.append(f"no answer from {node[:10]}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- A2A import, MCP


def _add_bridge_parsers(sub: Any, run: argparse.ArgumentParser) -> None:
    """``run``'s A2A-import and MCP-expose flags; ``a2a import|list``; ``mcp``."""
    from meshnode.runtime.a2a_import import REFRESH_S as A2A_REFRESH_S
    from meshnode.runtime.mcp_client import CONFIG_ENV
    from meshnode.runtime.mcp_expose import REFRESH_S as MCP_REFRESH_S

    run.add_argument(
        "--a2a-import",
        action="append",
        metavar="URL",
        help="an external A2A agent to serve as this node's capabilities (repeatable; default: "
        "none)",
    )
    run.add_argument(
        "--a2a-key",
        metavar="FILE",
        help="public key (PEM) or JWKS that imported agent cards' signatures must verify with "
        "(default: none; a signed card is then refused, an unsigned one accepted)",
    )
    run.add_argument(
        "--a2a-require-signed",
        action="store_true",
        help="refuse agent cards that carry no signature (default: accept them)",
    )
    run.add_argument(
        "--a2a-refresh",
        type=float,
        default=A2A_REFRESH_S,
        metavar="SECONDS",
        help=f"seconds between two fetches of each imported card (default {A2A_REFRESH_S:g})",
    )
    run.add_argument(
        "--mcp-expose",
        nargs="?",
        const="",
        metavar="CONFIG",
        help=f"publish the tools of the MCP servers in this JSON config as capabilities "
        f"(no value: the file ${CONFIG_ENV} names; default: publish none)",
    )
    run.add_argument(
        "--mcp-refresh",
        type=float,
        default=MCP_REFRESH_S,
        metavar="SECONDS",
        help=f"seconds between two tool listings of each server (default {MCP_REFRESH_S:g})",
    )

    a2a = sub.add_parser("a2a", help="external A2A agents served through a node")
    ops = a2a.add_subparsers(dest="a2a_command", required=True)
    imp = ops.add_parser("import", help="have a running node import an A2A agent")
    imp.add_argument("url", help="the agent's base URL (its card is under /.well-known/)")
    lst = ops.add_parser("list", help="the agents a running node imports")
    for op in (imp, lst):
        op.add_argument("--node", default=DEFAULT_NODE, metavar="HOST:PORT")
        op.add_argument(
            "--api-token", metavar="TOKEN", help=f"the node's API token (default ${API_TOKEN_ENV})"
        )
        op.add_argument("--json", action="store_true")

    mcp = sub.add_parser("mcp", help="serve the mesh to MCP hosts (stdio, or --http)")
    mcp.add_argument("--node", default=DEFAULT_NODE, metavar="HOST:PORT")
    mcp.add_argument(
        "--token",
        "--api-token",
        dest="api_token",
        metavar="TOKEN",
        help=f"the node's API token (default ${API_TOKEN_ENV})",
    )
    mcp.add_argument(
        "--http",
        type=int,
        metavar="PORT",
        help="streamable HTTP on this port (default: stdio)",
    )
    mcp.add_argument(
        "--http-host", default="127.0.0.1", help="HTTP bind address (default 127.0.0.1)"
    )
    mcp.add_argument(
        "--open", action="store_true", help="allow a non-loopback --http-host, on purpose"
    )


async def _start_bridges(node: Any, args: argparse.Namespace) -> list[Any]:
    """The A2A importer (always: ``meshnode a2a import`` reaches it over the API) and,
    with ``--mcp-expose``, the MCP exposer; both started."""
    from meshnode.runtime.a2a_import import A2AImporter, check_agent_url

    bridges: list[Any] = []
    try:
        importer = A2AImporter(
            node,
            require_signed=args.a2a_require_signed,
            keys=args.a2a_key,
            refresh_s=args.a2a_refresh,
        )
        bridges.append(importer)
        importer.start()
        for url in args.a2a_import or ():
            await importer.import_later(check_agent_url(url))
        if args.mcp_expose is not None:
            from meshnode.runtime.mcp_client import CONFIG_ENV, McpClientPool
            from meshnode.runtime.mcp_expose import McpExposer

            source = args.mcp_expose or os.environ.get(CONFIG_ENV)
            if not source:
                raise ValueError(f"--mcp-expose needs a config file, or ${CONFIG_ENV}")
            pool = McpClientPool(source)
            if node.mcp is None:
                node.mcp = pool  # the node closes it on shutdown
            exposer = McpExposer(node, pool, refresh_s=args.mcp_refresh)
            bridges.append(exposer)
            await exposer.start()
    except BaseException:
        await _close_bridges(bridges)
        raise
    return bridges


async def _close_bridges(bridges: list[Any]) -> None:
    for bridge in reversed(bridges):
        await bridge.aclose()


def _cmd_bridge(args: argparse.Namespace) -> int:
    if args.command == "mcp":
        from meshnode.runtime.mcp_server import run_server

        parse_address(args.node)
        return _run_async(_mcp_main(args, run_server))
    return _run_async(_cmd_a2a(args))


MCP_NODE_CHECK_S = 2.0
"""Seconds ``meshnode mcp`` waits for its node's ``/v1/health`` at start. A node that does
not answer gets a warning on stderr (the MCP host's log), not a refusal: hosts start their
servers on their own schedule, and the tools work as soon as the node does."""


async def _mcp_main(args: argparse.Namespace, run_server: Any) -> int:
    try:
        await _request_json("GET", args.node, "/v1/health", wait_s=MCP_NODE_CHECK_S)
    except Exception as exc:  # any failure is reported the same way; serving goes on
        print(
            f"meshnode mcp: warning: {one_line(str(exc), ERROR_TEXT_MAX)} (the tools answer "
            "with an error until the node is up)",
            file=sys.stderr,
            flush=True,
        )
    await run_server(
        args.node,
        api_token(args),
        http_port=args.http,
        http_host=args.http_host,
        open_bind=args.open,
    )
    return 0


async def _cmd_a2a(args: argparse.Namespace) -> int:
    from meshnode.runtime.a2a_import import CARD_TIMEOUT_S, check_agent_url

    token = api_token(args)
    if args.a2a_command == "list":
        data = await _get_json(args.node, "/v1/a2a/imports", token=token)
        if args.json:
            print(json.dumps(data, indent=2))
        else:
            rows = [
                [a["agent"], a["url"], "yes" if a["signed"] else "no", ", ".join(a["capabilities"])]
                for a in data.get("agents", [])
            ]
            print(_table(rows, ["agent", "url", "signed", "capabilities"]))
        return 0
    url = check_agent_url(args.url)
    data = await _request_json(
        "POST",
        args.node,
        "/v1/a2a/import",
        {"url": url},
        wait_s=HTTP_TIMEOUT + CARD_TIMEOUT_S,
        token=token,
    )
    if isinstance(data, dict) and "error" in data:
        raise CommandError(f"import refused: {one_line(data['error'], ERROR_TEXT_MAX)}")
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(f"imported {data['agent']} from {data['url']} (signed: {data['signed']})")
        for name in data["capabilities"]:
            print(f"  {name}")
        for why in data["skipped"]:
            print(f"  skipped: {why}")
    return 0


# ---------------------------------------------------------------------------- observability


def _add_observability_run_flags(run: argparse.ArgumentParser) -> None:
    run.add_argument("--no-metrics", action="store_true", help="do not serve GET /metrics")
    run.add_argument("--no-tracing", action="store_true", help="record no spans")
    run.add_argument(
        "--otlp-endpoint",
        metavar="URL",
        help="export spans over OTLP/HTTP to URL (default $OTEL_EXPORTER_OTLP_ENDPOINT)",
    )


def _observability_overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {"metrics": not args.no_metrics, "tracing": not args.no_tracing}
    if args.otlp_endpoint:
        overrides["otlp_endpoint"] = args.otlp_endpoint
    return overrides


def _add_trace_parser(sub: Any) -> None:
    trace = sub.add_parser(
        "trace", help="assemble a trace from every node it touched and print its timeline"
    )
    trace.add_argument("trace_id", help="32 hex digits (from /v1/delegate's trace_id)")
    trace.add_argument("--node", default=DEFAULT_NODE, metavar="HOST:PORT")
    trace.add_argument("--json", action="store_true", help="print the spans as JSON")
    trace.add_argument(
        "--token",
        "--api-token",
        dest="api_token",
        metavar="TOKEN",
        help=f"the node's API token (default ${API_TOKEN_ENV})",
    )


# ---------------------------------------------------------------------- meshnode rtt


def _add_rtt_parser(sub: Any) -> None:
    rtt = sub.add_parser("rtt", help="estimated round trip to a node, from network coordinates")
    rtt.add_argument("target", metavar="NODE", help="a node id prefix or a node name")
    rtt.add_argument(
        "other",
        metavar="NODE2",
        nargs="?",
        help="a second node: the estimate is between NODE and NODE2 (default: the asked node)",
    )
    rtt.add_argument("--node", default=DEFAULT_NODE, metavar="HOST:PORT")
    rtt.add_argument("--json", action="store_true", help="print the figures as JSON")
    rtt.add_argument(
        "--api-token", metavar="TOKEN", help=f"the node's API token (default ${API_TOKEN_ENV})"
    )


def _find_member(members: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The one member whose name is ``key``, else whose id starts with it."""
    named = [m for m in members if m.get("name") == key]
    found = named or [m for m in members if str(m.get("node_id", "")).startswith(key)]
    if not key or not found:
        raise CommandError(f"no member named {key!r} or with an id starting with it")
    if len(found) > 1:
        raise CommandError(f"{key!r} matches {len(found)} members: give more of the id")
    return found[0]


def _coordinate_of(member: dict[str, Any]) -> Coordinate | None:
    """A member's coordinate from the API's JSON, checked like one off the wire (None:
    none held, or an unusable one)."""
    raw = member.get("coordinate")
    if not isinstance(raw, dict):
        return None
    try:
        coord = Coordinate(
            tuple(float(x) for x in raw["vec"]),
            float(raw["error"]),
            float(raw["adjustment"]),
            float(raw["height"]),
        )
    except (KeyError, TypeError, ValueError):
        return None
    return None if coordinate_problem(coord) is not None else coord


async def _cmd_rtt(args: argparse.Namespace) -> int:
    data = await _get_json(args.node, "/v1/members", api_token(args))
    members = data.get("members", [])
    target = _find_member(members, args.target)
    if args.other is None:
        origin = next((m for m in members if m.get("node_id") == data.get("node_id")), None)
        if origin is None:
            raise CommandError("the node did not say which member it is")
        measured = target.get("measured_rtt_ms")
    else:
        origin = _find_member(members, args.other)
        measured = None  # the asked node measures only its own round trips
    if origin.get("node_id") == target.get("node_id"):
        estimated: float | None = 0.0
    else:
        a, b = _coordinate_of(origin), _coordinate_of(target)
        estimated = None if a is None or b is None else round(a.distance_s(b) * 1000.0, 3)
    out = {
        "from": origin.get("node_id"),
        "from_name": origin.get("name"),
        "to": target.get("node_id"),
        "to_name": target.get("name"),
        "estimated_rtt_ms": estimated,
        "measured_rtt_ms": measured,
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return 0

    def label(m: dict[str, Any]) -> str:
        return str(m.get("name") or str(m.get("node_id", ""))[:10])

    shown = "unknown (no coordinate yet)" if estimated is None else f"{estimated:.3f} ms"
    line = f"{label(origin)} -> {label(target)}: estimated {shown}"
    if measured is not None:
        line += f", measured {measured:.3f} ms"
    print(line)
    return 0


async def _collect_trace(
    node: str, trace_id: str, token: str | None
) -> tuple[list[dict[str, Any]], dict[str, str], list[str]]:
    """Every span of ``trace_id`` on the nodes it names, as ``node`` assembles them
    (``GET /v1/dashboard/trace/{id}?nodes=64``): (spans, node names by id, members that
    could not be asked). The token goes to ``node`` only: the node asks its peers itself,
    without it, and keeps from each peer only the spans that peer recorded."""
    from meshnode.runtime.dashboard import TRACE_ASSEMBLY_MAX_NODES_CAP

    path = f"/v1/dashboard/trace/{trace_id}?nodes={TRACE_ASSEMBLY_MAX_NODES_CAP}"
    assembled = await _request_json("GET", node, path, token=token)
    if "spans" not in assembled:
        raise ValueError(f"{node} did not assemble the trace: {assembled.get('error', assembled)}")
    members = await _get_json(node, "/v1/members", token)
    names = {m["node_id"]: m["name"] or m["node_id"][:10] for m in members.get("members", [])}
    missing = [f"{names.get(n, n[:10])}: not reached" for n in assembled.get("missing", [])]
    return list(assembled["spans"]), names, missing


def trace_timeline(spans: list[dict[str, Any]], names: dict[str, str]) -> list[str]:
    """One line per span, children under their parent (indented, by start time), with
    the offset from the trace's first span and the duration in milliseconds."""
    if not spans:
        return []
    by_id = {s["span_id"]: s for s in spans}
    children: dict[str | None, list[dict[str, Any]]] = {}
    for span in sorted(spans, key=lambda s: (s["start"], s["end"] or s["start"])):
        parent = span["parent_span_id"] if span["parent_span_id"] in by_id else None
        children.setdefault(parent, []).append(span)
    origin = min(s["start"] for s in spans)
    lines: list[str] = []
    stack = [(s, 0) for s in reversed(children.get(None, []))]
    while stack:
        span, depth = stack.pop()
        end = span["end"] if span["end"] is not None else span["start"]
        who = names.get(span["node_id"], span["node_id"][:10])
        peer = f" -> {names.get(span['peer_id'], span['peer_id'][:10])}" if span["peer_id"] else ""
        lines.append(
            f"{(span['start'] - origin) * 1000:9.1f} ms {(end - span['start']) * 1000:9.1f} ms  "
            f"{'  ' * depth}{span['name']} [{span['kind']}] @{who}{peer} {span['status']}"
        )
        stack.extend((c, depth + 1) for c in reversed(children.get(span["span_id"], [])))
    return lines


async def _cmd_trace(args: argparse.Namespace) -> int:
    from meshnode.core.tracing import is_trace_id

    if not is_trace_id(args.trace_id):
        raise ValueError("trace id must be 32 lowercase hex digits, not all zero")
    spans, names, unreachable = await _collect_trace(args.node, args.trace_id, api_token(args))
    if args.json:
        print(json.dumps({"trace_id": args.trace_id, "spans": spans, "missing": unreachable}))
        return 0 if spans else 1
    if not spans:
        print(f"no spans of trace {args.trace_id} on the nodes asked", file=sys.stderr)
        return 1
    print(
        f"trace {args.trace_id}: {len(spans)} spans on {len({s['node_id'] for s in spans})} nodes"
    )
    print("\n".join(trace_timeline(spans, names)))
    for gap in unreachable:
        print(f"# not asked: {one_line(gap, ERROR_TEXT_MAX)}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------- status

STATUS_WATCH_DEFAULT_S = 2.0
"""Seconds between refreshes of ``meshnode status --watch`` given no value."""
STATUS_WATCH_MIN_S = 0.2
"""Shortest ``--watch`` interval accepted (each refresh is one request to the node)."""
STATUS_TOP_CAPABILITIES = 10
"""Capabilities listed by ``meshnode status`` (most providers first)."""
STATUS_RECENT_TASKS = 5
"""Finished delegations listed by ``meshnode status`` (newest first)."""


def _add_status_parser(sub: Any) -> None:
    status = sub.add_parser(
        "status", help="a one-screen summary of a node: members, health, tasks, capabilities"
    )
    status.add_argument("--node", default=DEFAULT_NODE, metavar="HOST:PORT")
    status.add_argument(
        "--token",
        "--api-token",
        dest="api_token",
        metavar="TOKEN",
        help=f"the node's API token (default ${API_TOKEN_ENV})",
    )
    status.add_argument("--json", action="store_true", help="print the JSON document")
    status.add_argument(
        "--watch",
        nargs="?",
        type=float,
        const=STATUS_WATCH_DEFAULT_S,
        metavar="SECONDS",
        help=f"refresh every SECONDS (default {STATUS_WATCH_DEFAULT_S:g}) until Ctrl-C",
    )


def _cmd_status(args: argparse.Namespace) -> int:
    if args.watch is not None and not args.watch >= STATUS_WATCH_MIN_S:
        raise ValueError(f"--watch must be at least {STATUS_WATCH_MIN_S} seconds")
    try:
        return _run_async(_status(args))
    except KeyboardInterrupt:
        return 0


async def _status(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.live import Live

    token = api_token(args)
    console = Console()

    async def fetch() -> dict[str, Any]:
        doc = await _get_json(args.node, "/v1/dashboard?members=0", token)
        if not isinstance(doc, dict) or "node" not in doc:
            raise CommandError(f"{args.node} sent no status document")
        return doc

    if args.watch is None:
        if args.json:
            print(json.dumps(await fetch(), indent=2), flush=True)
        else:
            console.print(status_view(await fetch()))
        return 0
    # Ctrl-C (SIGINT) or SIGTERM ends the watch between two refreshes, exit 0.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    async def stopped_within(seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)
        return stop.is_set()

    if args.json:
        while not stop.is_set():
            print(json.dumps(await fetch()), flush=True)
            if await stopped_within(args.watch):
                break
        return 0
    with Live(status_view(await fetch()), console=console, auto_refresh=False) as live:
        while not await stopped_within(args.watch):
            try:
                view: Any = status_view(await fetch())
            except Exception as exc:  # keep watching through a node restart
                from rich.text import Text

                said = str(exc) if isinstance(exc, CommandError) else f"{type(exc).__name__}: {exc}"
                view = Text(one_line(said), style="red")
            live.update(view, refresh=True)
    return 0


def status_view(doc: dict[str, Any]) -> Any:
    """The one-screen summary of a ``/v1/dashboard`` document, as a rich renderable."""
    import time as _time

    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    def plain(value: object) -> Text:
        """A cell as plain text: no console markup, no control characters (reasons and
        names can come from other nodes)."""
        return Text("".join(ch for ch in str(value) if ch.isprintable()))

    node, metrics, tasks = doc["node"], doc["metrics"], doc["tasks"]
    members = metrics["members"]
    head = Text()
    head.append(plain(f"{node['name']} "))
    head.append(f"{node['node_id'][:10]} {node['address']}  ")
    head.append(node["status"], style="green" if node["status"] == "ok" else "bold red")
    head.append(f"  local health {node['local_health']}")
    lines: list[Any] = [head]
    lines += [plain(f"  ! {reason}") for reason in node.get("reasons", [])]
    lines.append(
        Text(
            "members: "
            + "  ".join(
                f"{state} {members.get(state, 0)}" for state in ("alive", "suspect", "dead", "left")
            )
            + f"   manifests {metrics['manifests']}  ledger records {metrics['ledger_records']}"
        )
    )
    lines.append(
        Text(
            f"tasks: in flight {len(tasks['in_flight'])}  serving {tasks['serving']}  "
            f"delegations ok {metrics['delegations_ok']}  failed {metrics['delegations_failed']}  "
            f"served {metrics['tasks_served']}   drops {metrics['drops']}"
        )
    )
    now = _time.time()
    recent = [*tasks["in_flight"], *tasks["recent"]][:STATUS_RECENT_TASKS]
    if recent:
        table = Table(title="tasks", title_justify="left", box=None, pad_edge=False)
        for column in ("TASK", "CAPABILITY", "PROVIDER", "OUTCOME", "AGE"):
            table.add_column(column)
        for t in recent:
            outcome = t.get("outcome", "in flight")
            table.add_row(
                plain(t["task_id"][:10]),
                plain(t["capability"]),
                plain(t.get("provider_name") or (t.get("provider") or "-")[:10]),
                plain(outcome + (f": {t['reason']}" if t.get("reason") else "")),
                f"{max(0.0, now - t['started_at']):.0f} s",
            )
        lines.append(table)
    caps = doc["capabilities"]["top"][:STATUS_TOP_CAPABILITIES]
    if caps:
        table = Table(title="top capabilities", title_justify="left", box=None, pad_edge=False)
        for column in ("CAPABILITY", "PROVIDERS", "MIN COST USD"):
            table.add_column(column)
        for c in caps:
            table.add_row(plain(c["name"]), str(c["providers"]), f"{c['min_cost_usd']:g}")
        lines.append(table)
    else:
        lines.append(Text("no capabilities offered by alive members"))
    return Group(*lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            return _run_async(_cmd_run(args))
        if args.command == "members":
            return _run_async(_cmd_members(args))
        if args.command == "keygen":
            return _cmd_keygen(args)
        if args.command == "discover":
            if not args.description and not args.capability:
                raise ValueError("discover needs a description or --capability")
            return _run_async(_cmd_discover(args))
        if args.command == "delegate":
            if not args.capability and not args.description:
                raise ValueError("delegate needs a capability or --description")
            return _run_async(_cmd_delegate(args))
        if args.command == "trust":
            return _run_async(_cmd_trust(args))
        if args.command == "demo":
            return _cmd_demo(args)
        if args.command == "id":
            return _cmd_id(args)
        if args.command == "authority":
            return _cmd_authority(args)
        if args.command == "keys":
            return _cmd_keys(args)
        if args.command == "status":
            return _cmd_status(args)
        if args.command in ("a2a", "mcp"):
            return _cmd_bridge(args)
        if args.command == "trace":
            return _run_async(_cmd_trace(args))
        if args.command == "rtt":
            return _run_async(_cmd_rtt(args))
    except ValueError as exc:
        print(f"meshnode: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the CLI boundary: report, never dump a traceback
        from meshnode.errors import DataDirInUse

        if isinstance(exc, (CommandError, DataDirInUse)):  # already plain words
            print(f"meshnode: error: {one_line(exc)}", file=sys.stderr)
        else:
            print(f"meshnode: error: {type(exc).__name__}: {one_line(exc)}", file=sys.stderr)
        return 1
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
