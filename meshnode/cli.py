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
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import json
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from meshnode.core.config import NodeConfig, parse_address

PROFILES: dict[str, Callable[..., NodeConfig]] = {
    "lan": NodeConfig.lan,
    "wan": NodeConfig.wan,
    "local": NodeConfig.local,
}
HTTP_TIMEOUT = 10.0
"""Seconds the client subcommands wait for a node's answer."""
API_TOKEN_ENV = "MESHNODE_API_TOKEN"
"""Environment variable holding the HTTP API's token, for ``run`` and the client commands
(``--api-token`` wins over it)."""


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
        raise ValueError(f"--agent {spec!r}: expected MODULE:CLASS or FILE.py:CLASS")
    if target.endswith(".py"):
        path = Path(target).resolve()
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        if module_spec is None or module_spec.loader is None:
            raise ValueError(f"--agent: cannot load {path}")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[path.stem] = module
        module_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, MeshNode)):
        raise ValueError(f"--agent {spec!r}: {attr} is not a MeshNode subclass")
    return cls


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
    if args.authority:
        overrides["authority"] = args.authority
    if args.cert:
        overrides["certificate"] = args.cert
    overrides.update(_keyring_overrides(args))
    overrides["open"] = args.open
    overrides.update(_observability_overrides(args))
    return PROFILES[args.profile](**overrides)


async def _cmd_run(args: argparse.Namespace) -> int:
    from meshnode.runtime.logging import configure_logging
    from meshnode.runtime.node import MeshNode

    configure_logging(level=args.log_level, json=True if args.json_logs else None)
    config = _config_from_args(args)
    cls = load_agent_class(args.agent) if args.agent else MeshNode
    node = cls(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await node.start()
    try:
        bridges = await _start_bridges(node, args)
    except BaseException:
        await node.aclose()
        raise
    host, port = node.address
    print(
        json.dumps(
            {
                "event": "listening",
                "node_id": node.node_id,
                "address": f"{host}:{port}",
                "name": config.name,
            }
        ),
        flush=True,
    )
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
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=wait_s)) as session,
        session.request(method, f"http://{host}:{port}{path}", json=body, headers=headers) as resp,
    ):
        if resp.status >= 400 and resp.content_type != "application/json":
            raise RuntimeError(f"{resp.status}: {(await resp.text()).strip()}")
        return await resp.json()


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


async def _cmd_discover(args: argparse.Namespace) -> int:
    body = {
        "description": args.description,
        "capability_name": args.capability,
        "min_trust": args.min_trust,
        "max_cost_usd": args.max_cost,
        "tags": args.tag or [],
        "top_k": args.top_k,
    }
    data = await _request_json("POST", args.node, "/v1/discover", body, token=api_token(args))
    candidates = data["candidates"]
    if args.json:
        print(json.dumps(candidates, indent=2))
        return 0
    rows = [
        (
            c["name"] or "-",
            c["node_id"][:10],
            c["capability"],
            f"{c['score']['total']:.3f}",
            f"{c['score']['semantic']:.2f}",
            f"{c['score'].get('lexical', 0.0):.2f}",
            f"{c['score']['trust']:.2f}",
            f"{c['score']['availability']:.2f}",
            f"{c['score']['cost_factor']:.2f}",
            c["address"],
        )
        for c in candidates
    ]
    header = ("NAME", "ID", "CAPABILITY", "SCORE", "SEM", "LEX", "TRUST", "AVAIL", "COST")
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
    if args.json or "error" in data:
        print(json.dumps(data, indent=2))
        return 1 if "error" in data else 0
    print(json.dumps(data["output"], indent=2))
    tried = ", ".join(f"{a['node'][:10]}:{a['outcome']}" for a in data["attempts"])
    quality = "unscored" if data["quality"] is None else f"{data['quality']:.2f}"
    print(
        f"# by {data['provider'][:10]} in {data['elapsed_ms']:.1f} ms, quality "
        f"{quality}; attempts: {tried}; trace {data.get('trace_id')}",
        file=sys.stderr,
    )
    return 0


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
    ident.add_argument("--data-dir", required=True)
    ident.add_argument("--json", action="store_true")

    authority = sub.add_parser("authority", help="a mesh authority: certify and revoke nodes")
    asub = authority.add_subparsers(dest="authority_command", required=True)
    init = asub.add_parser("init", help="create an authority key in DIR, print its public key")
    init.add_argument("dir", metavar="DIR")
    init.add_argument("--force", action="store_true", help="replace an existing key")
    init.add_argument("--json", action="store_true")
    issue = asub.add_parser("issue", help="sign a membership certificate for a node")
    issue.add_argument("--dir", required=True, help="the authority directory")
    issue.add_argument("--node-id", required=True, help="the node's id (meshnode id)")
    issue.add_argument("--role", action="append", default=[], help="a role (repeatable)")
    issue.add_argument("--days", type=float, required=True, help="validity in days")
    issue.add_argument("--name", default="", help="display name in the certificate")
    issue.add_argument("--out", help="certificate file (default: NODE_ID_PREFIX.cert)")
    issue.add_argument("--json", action="store_true")
    revoke = asub.add_parser("revoke", help="sign a revocation, optionally hand it to a node")
    revoke.add_argument("--dir", required=True, help="the authority directory")
    target = revoke.add_mutually_exclusive_group(required=True)
    target.add_argument("--node-id", help="revoke every certificate of this node")
    target.add_argument("--serial", type=int, help="revoke one certificate")
    revoke.add_argument("--node", metavar="HOST:PORT", help="a running node to hand it to")
    revoke.add_argument("--token", help="the node's api token (when not on loopback)")
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
        report["accepted"] = _run_async(_post_revocation(args.node, revocation.signed, args.token))
    print(json.dumps(report) if args.json else " ".join(f"{k}={v}" for k, v in report.items()))
    return 0


async def _post_revocation(node: str, signed: Any, token: str | None) -> bool:
    import aiohttp

    from protocol import pack

    host, port = parse_address(node)
    headers = {"Content-Type": "application/octet-stream"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=REVOKE_TIMEOUT)) as session,
        session.post(
            f"http://{host}:{port}/v1/authority/revoke", data=pack(signed), headers=headers
        ) as resp,
    ):
        if resp.status >= 400:
            raise RuntimeError(f"{resp.status}: {(await resp.text()).strip()}")
        return bool((await resp.json())["accepted"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshnode", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="start a node and serve until SIGINT/SIGTERM")
    run.add_argument("--port", type=int, default=7946, help="UDP and TCP port (default 7946)")
    run.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    run.add_argument("--advertise-host", help="address peers use to reach this node")
    run.add_argument(
        "--seed",
        action="append",
        metavar="HOST:PORT",
        help="a node to join through (repeatable; any one reachable suffices)",
    )
    run.add_argument("--name", default="node", help="human-readable node name")
    run.add_argument("--data-dir", help="directory for the identity key and SQLite state")
    run.add_argument(
        "--profile", choices=sorted(PROFILES), default="lan", help="timing preset (default lan)"
    )
    run.add_argument(
        "--agent",
        metavar="MODULE:CLASS",
        help="MeshNode subclass to run (MODULE:CLASS or FILE.py:CLASS)",
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
        "--authority",
        metavar="PUBKEY",
        help="mesh authority public key: admit only nodes it certified (needs --cert)",
    )
    run.add_argument("--cert", metavar="FILE", help="this node's certificate (authority issue)")
    run.add_argument(
        "--open",
        action="store_true",
        help="run with neither keyring nor authority on a non-loopback address, on purpose",
    )
    run.add_argument("--log-level", default="INFO")
    run.add_argument("--json-logs", action="store_true", help="JSON logs even on a terminal")
    _add_keyring_run_flags(run)
    _add_observability_run_flags(run)
    _add_keys_parser(sub)
    _add_trace_parser(sub)

    members = sub.add_parser("members", help="list the members a node knows")
    members.add_argument("--node", default="127.0.0.1:7946", metavar="HOST:PORT")
    members.add_argument("--json", action="store_true")

    discover = sub.add_parser("discover", help="rank the providers a node knows for a task")
    discover.add_argument("description", nargs="?", help="what you need, in plain words")
    discover.add_argument("--capability", help="exact capability name")
    discover.add_argument("--node", default="127.0.0.1:7946", metavar="HOST:PORT")
    discover.add_argument("--min-trust", type=float, default=0.0)
    discover.add_argument("--max-cost", type=float, help="USD per call")
    discover.add_argument("--tag", action="append", help="required tag (repeatable)")
    discover.add_argument("--top-k", type=int, default=5, help="1..20 (default 5)")
    discover.add_argument("--json", action="store_true")

    delegate = sub.add_parser("delegate", help="run a task through a node (loopback)")
    delegate.add_argument("capability", nargs="?", help="capability name")
    delegate.add_argument("--input", default="{}", help="task input as JSON")
    delegate.add_argument("--description", help="find the capability by description")
    delegate.add_argument("--node", default="127.0.0.1:7946", metavar="HOST:PORT")
    delegate.add_argument("--deadline", type=float, default=30.0, help="seconds (default 30)")
    delegate.add_argument("--max-cost", type=float, help="USD per call")
    delegate.add_argument("--min-trust", type=float, default=0.0)
    delegate.add_argument(
        "--expect", metavar="SCHEMA", help="output JSON schema the result must match (scores it)"
    )
    delegate.add_argument("--json", action="store_true")

    trust = sub.add_parser("trust", help="a node's trust in each peer and its breakers")
    trust.add_argument("--node", default="127.0.0.1:7946", metavar="HOST:PORT")
    trust.add_argument("--json", action="store_true")

    keygen = sub.add_parser("keygen", help="create (or show) a data dir's identity")
    keygen.add_argument("--data-dir", required=True)
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
        "--csv", type=Path, help="a CSV with the demo's columns (default: the bundled one)"
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
        "--mcp-config", type=Path, help="MCP servers for the web-search agent (JSON file)"
    )

    # HTTP API access (see meshnode.runtime.api.authorize)
    run.add_argument(
        "--api-token",
        metavar="TOKEN",
        help=f"bearer token for the HTTP API (16+ characters; prefer ${API_TOKEN_ENV}, "
        "which this flag overrides: command lines are visible to other users)",
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
    for client in (members, discover, delegate, trust):
        client.add_argument(
            "--api-token", metavar="TOKEN", help=f"the node's API token (default ${API_TOKEN_ENV})"
        )
    _add_bridge_parsers(sub, run)
    return parser


def _cmd_demo(args: argparse.Namespace) -> int:
    from meshnode.demo.runner import DEFAULT_QUERY, DemoOptions, run_demo

    if args.timeout <= 0:
        raise ValueError("--timeout must be positive")
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
        help="seal all peer traffic with this keyring (meshnode keys init FILE)",
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
    init.add_argument("--label", default="", help="cluster label (meshes apart by label)")
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
        op.add_argument("--node", default="127.0.0.1:7946", metavar="HOST:PORT")
        op.add_argument("--json", action="store_true")
    lst = ops.add_parser("list", help="every key the members hold, and how many hold each")
    lst.add_argument("--node", default="127.0.0.1:7946", metavar="HOST:PORT")
    lst.add_argument("--json", action="store_true")


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
    data = await _request_json("POST", args.node, "/v1/keys", body, wait_s=KEYS_WAIT_S)
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
        help="an external A2A agent to serve as this node's capabilities (repeatable)",
    )
    run.add_argument(
        "--a2a-key",
        metavar="FILE",
        help="public key (PEM) or JWKS that imported agent cards' signatures must verify with",
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
        f"(no value: the file ${CONFIG_ENV} names)",
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
        op.add_argument("--node", default="127.0.0.1:7946", metavar="HOST:PORT")
        op.add_argument(
            "--api-token", metavar="TOKEN", help=f"the node's API token (default ${API_TOKEN_ENV})"
        )
        op.add_argument("--json", action="store_true")

    mcp = sub.add_parser("mcp", help="serve the mesh to MCP hosts (stdio, or --http)")
    mcp.add_argument("--node", default="127.0.0.1:7946", metavar="HOST:PORT")
    mcp.add_argument(
        "--token",
        "--api-token",
        dest="api_token",
        metavar="TOKEN",
        help=f"the node's API token (default ${API_TOKEN_ENV})",
    )
    mcp.add_argument("--http", type=int, metavar="PORT", help="streamable HTTP on this port")
    mcp.add_argument("--http-host", default="127.0.0.1", help="HTTP bind address (loopback)")
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


async def _mcp_main(args: argparse.Namespace, run_server: Any) -> int:
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
        raise RuntimeError(data["error"])
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

TRACE_MAX_NODES = 64
"""Most nodes ``meshnode trace`` asks for one trace's spans (a delegation touches one node
per hop and per candidate asked, so 64 covers deep and wide traces alike)."""
TRACE_FANOUT = 8
"""Nodes ``meshnode trace`` asks at once."""
TRACE_TIMEOUT_S = 5.0
"""Seconds ``meshnode trace`` waits for one node's answer (a node that does not answer in
time is named in the output, and its spans are missing)."""


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
    trace.add_argument("--node", default="127.0.0.1:7946", metavar="HOST:PORT")
    trace.add_argument("--json", action="store_true", help="print the spans as JSON")
    trace.add_argument(
        "--api-token", metavar="TOKEN", help=f"the nodes' API token (default ${API_TOKEN_ENV})"
    )


async def _collect_trace(
    node: str, trace_id: str, token: str | None
) -> tuple[list[dict[str, Any]], dict[str, str], list[str]]:
    """Every span of ``trace_id`` on the nodes it names, starting at ``node``: (spans, node
    names by id, nodes that could not be asked). Peers are found through ``node``'s
    members; at most :data:`TRACE_MAX_NODES` nodes, :data:`TRACE_FANOUT` at a time."""
    first = await _request_json("GET", node, f"/v1/traces/{trace_id}", token=token)
    members = await _get_json(node, "/v1/members", token)
    address = {m["node_id"]: m["address"] for m in members.get("members", [])}
    names = {m["node_id"]: m["name"] or m["node_id"][:10] for m in members.get("members", [])}
    spans: dict[tuple[str, str], dict[str, Any]] = {}
    asked = {first["node_id"]}
    unreachable: list[str] = []
    slots = asyncio.Semaphore(TRACE_FANOUT)

    def take(found: list[dict[str, Any]]) -> None:
        for span in found:
            spans[(span["node_id"], span["span_id"])] = span

    async def ask(node_id: str) -> list[dict[str, Any]]:
        async with slots:
            try:
                data = await _request_json(
                    "GET",
                    address[node_id],
                    f"/v1/traces/{trace_id}",
                    wait_s=TRACE_TIMEOUT_S,
                    token=token,
                )
                return list(data.get("spans", []))
            except Exception as exc:  # one node's failure leaves a gap, not an error
                unreachable.append(f"{names.get(node_id, node_id[:10])}: {exc}")
                return []

    take(first.get("spans", []))
    while True:
        named = {s["node_id"] for s in spans.values()} | {
            s["peer_id"] for s in spans.values() if s.get("peer_id")
        }
        todo = sorted(n for n in named - asked if n in address)[: TRACE_MAX_NODES - len(asked)]
        for missing in sorted(n for n in named - asked if n not in address):
            asked.add(missing)
            unreachable.append(f"{missing[:10]}: not a member {node} knows")
        if not todo:
            break
        asked.update(todo)
        for found in await asyncio.gather(*(ask(n) for n in todo)):
            take(found)
    return sorted(spans.values(), key=lambda s: (s["start"], s["end"] or 0)), names, unreachable


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
        print(f"# not asked: {gap}", file=sys.stderr)
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
    status.add_argument("--node", default="127.0.0.1:7946", metavar="HOST:PORT")
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
            raise RuntimeError(f"{args.node} sent no status document")
        return doc

    if args.json:
        while True:
            print(json.dumps(await fetch(), indent=None if args.watch else 2), flush=True)
            if args.watch is None:
                return 0
            await asyncio.sleep(args.watch)
    if args.watch is None:
        console.print(status_view(await fetch()))
        return 0
    with Live(status_view(await fetch()), console=console, auto_refresh=False) as live:
        while True:
            await asyncio.sleep(args.watch)
            try:
                view: Any = status_view(await fetch())
            except Exception as exc:  # keep watching through a node restart
                view = f"[red]{args.node}: {type(exc).__name__}: {exc}[/red]"
            live.update(view, refresh=True)


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
    except ValueError as exc:
        print(f"meshnode: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # the CLI boundary: report, never dump a traceback
        from meshnode.errors import DataDirInUse

        if isinstance(exc, DataDirInUse):  # another process runs this node: name it
            print(f"meshnode: error: {exc}", file=sys.stderr)
        else:
            print(f"meshnode: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
