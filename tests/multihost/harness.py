"""A multi-host mesh on one machine: network namespaces, two regions, real delay and loss.

Layout (every name starts with :data:`PREFIX`; see docs/multihost.md)::

    root namespace  mhn-ctl 10.213.0.1 ──veth── ctl 10.213.0.254 ┐
                                                                  │  mhn-rt (router)
    mhn-a0..a3  eth0 10.213.1.1-4 ──veth── br-a 10.213.1.254 ─────┤  ip_forward, mhtun
    mhn-b0..b3  eth0 10.213.2.1-4 ──veth── br-b 10.213.2.254 ─────┘  + the delay relay

Each node's address is a /32 with the router as its only gateway, so even two nodes on
the same bridge talk through the router, whose policy routing sends every node-to-node
packet into the TUN device ``mhtun``. There :mod:`tests.multihost.relay` holds it for
``local_delay_ms`` inside a region (0.5 ms each way: a 1 ms round trip) or ``delay_ms``
between regions (20 ms each way: 40 ms) before the kernel forwards it on. Loss is an
nftables rule in each node's namespace (``numgen random mod 100 < N drop`` on input), a
partition an nftables rule in the router.
The test process reaches every node's HTTP API over the control link (10.213.0.0/24),
which is never delayed, lossy or partitioned.

Run by hand (root): ``python -m tests.multihost.harness up|status|down|cleanup``.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PREFIX = "mhn"
"""Prefix of every namespace, root-side interface and state file the harness makes."""
ROUTER_NS = f"{PREFIX}-rt"
"""The router namespace: both bridges, the TUN device, the relay."""
CTL_IF = f"{PREFIX}-ctl"
"""Root-namespace end of the control link."""
TUN_IF = "mhtun"
"""The relay's TUN device, inside the router namespace."""
SUBNET = "10.213"
"""First two octets of every address: .0 control, .1 region a, .2 region b."""
REGIONS = ("a", "b")
"""Region names; region ``r`` at index i uses 10.213.(i+1).0/24 on bridge ``br-r``."""
NODES_PER_REGION = 4
"""Nodes in each region (8 in all)."""
NODE_PORT = 7946
"""UDP and TCP port of every node (each has its own address)."""
DEFAULT_DELAY_MS = 20.0
"""One-way inter-region delay (ms): a 40 ms round trip between regions."""
DEFAULT_LOCAL_DELAY_MS = 0.5
"""One-way delay inside a region (ms): a 1 ms round trip."""
API_TOKEN = "multihost-harness-token-0123456789"
"""API token given to every node (the test process is not on loopback)."""
START_TIMEOUT = 60.0
"""Seconds a node may take to print its listening line."""
RATE_LIMIT_RETRIES = 10
"""Times a rate-limited (429) API call is retried before the error is raised."""
MAX_RETRY_AFTER_S = 2.0
"""Longest wait honoured from a 429's ``Retry-After`` (s)."""
REPO = Path(__file__).resolve().parents[2]
"""The repository root: the nodes run with it on PYTHONPATH."""


class HarnessError(RuntimeError):
    """A namespace, link or rule could not be set up."""


def sh(*args: str, check: bool = True, stdin: str | None = None) -> str:
    """Run a command; return its stdout; raise :class:`HarnessError` with stderr on failure."""
    proc = subprocess.run(args, input=stdin, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise HarnessError(f"{' '.join(args)}: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


def in_ns(ns: str, *args: str, check: bool = True, stdin: str | None = None) -> str:
    return sh("ip", "netns", "exec", ns, *args, check=check, stdin=stdin)


def unavailable_reason() -> str | None:
    """Why the harness cannot run here (None: it can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install iproute2 nftables)"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing"
    probe = f"{PREFIX}-probe"
    try:
        sh("ip", "netns", "add", probe)
    except HarnessError as exc:
        return f"ip netns is unavailable: {exc}"
    finally:
        sh("ip", "netns", "del", probe, check=False)
    return None


def our_namespaces() -> list[str]:
    """Every namespace whose name starts with the prefix."""
    out = sh("ip", "netns", "list", check=False)
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    return [n for n in names if n.startswith(f"{PREFIX}-")]


def leftovers() -> list[str]:
    """What the harness made that still exists (empty: all clean)."""
    found = [f"namespace {ns}" for ns in our_namespaces()]
    links = sh("ip", "-o", "link", "show", check=False)
    found += [
        f"link {line.split(':')[1].strip().split('@')[0]}"
        for line in links.splitlines()
        if line.split(":")[1].strip().startswith(f"{PREFIX}-")
    ]
    return found


def cleanup() -> list[str]:
    """Kill every process in our namespaces, delete the namespaces (their interfaces,
    bridges, TUN device and nftables tables go with them) and the control link. Returns
    what was removed. Safe to call any number of times."""
    removed: list[str] = []
    for ns in our_namespaces():
        pids = sh("ip", "netns", "pids", ns, check=False).split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        sh("ip", "netns", "del", ns, check=False)
        removed.append(ns)
    if sh("ip", "link", "show", CTL_IF, check=False):
        sh("ip", "link", "del", CTL_IF, check=False)
        removed.append(CTL_IF)
    return removed


@dataclass
class HostNode:
    """One ``meshnode run`` process in its own namespace."""

    name: str
    region: str
    ns: str
    ip: str
    data_dir: Path
    proc: subprocess.Popen[str] | None = None
    node_id: str = ""

    @property
    def address(self) -> str:
        return f"{self.ip}:{NODE_PORT}"

    def request(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> Any:
        """One API call over the control link, with the token. A 429 (the node's per-address
        rate limit: the test process is one address for every call) is retried after the
        node's ``Retry-After``, at most :data:`RATE_LIMIT_RETRIES` times."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {API_TOKEN}", "Content-Type": "application/json"}
        for attempt in range(RATE_LIMIT_RETRIES + 1):
            req = urllib.request.Request(
                f"http://{self.address}{path}", data=data, method=method, headers=headers
            )
            try:
                with urllib.request.urlopen(req, timeout=timeout) as resp:
                    raw = resp.read()
                break
            except urllib.error.HTTPError as exc:
                if exc.code != 429 or attempt == RATE_LIMIT_RETRIES:
                    # Say what the node answered (a 502 names the failed attempts).
                    exc.msg = f"{exc.msg}: {exc.read(2000).decode('utf-8', 'replace')}"
                    raise
                retry_after = float(exc.headers.get("Retry-After") or 1.0)
                exc.close()
                time.sleep(min(retry_after, MAX_RETRY_AFTER_S))
        return json.loads(raw) if path != "/metrics" else raw.decode()

    def get(self, path: str, timeout: float = 10.0) -> Any:
        return self.request("GET", path, timeout=timeout)

    def members(self) -> dict[str, dict[str, Any]]:
        return {m["node_id"]: m for m in self.get("/v1/members")["members"]}

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Mesh:
    """The namespaces, links, relay and nodes of one harness run."""

    base: Path
    profile: str = "local"
    delay_ms: float = DEFAULT_DELAY_MS
    local_delay_ms: float = DEFAULT_LOCAL_DELAY_MS
    agents: dict[str, str] = field(default_factory=dict)
    """Node name → ``MODULE:CLASS`` or ``FILE.py:CLASS`` for ``--agent``."""
    extra: Sequence[str] = ()
    """More ``meshnode run`` flags for every node."""
    nodes: list[HostNode] = field(default_factory=list)
    relay: subprocess.Popen[str] | None = None

    # ------------------------------------------------------------------ network
    def build_network(self) -> None:
        cleanup()  # a crashed earlier run must not be in the way
        sh("ip", "netns", "add", ROUTER_NS)
        rt = ROUTER_NS
        for key in (
            "net.ipv4.ip_forward=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
            "net.ipv4.conf.all.send_redirects=0",
            "net.ipv4.conf.default.send_redirects=0",
        ):
            in_ns(rt, "sysctl", "-qw", key)
        in_ns(rt, "ip", "link", "set", "lo", "up")
        # control link: the test process (root namespace) ↔ router
        sh("ip", "link", "add", CTL_IF, "type", "veth", "peer", "name", "ctl", "netns", rt)
        sh("ip", "addr", "add", f"{SUBNET}.0.1/24", "dev", CTL_IF)
        sh("ip", "link", "set", CTL_IF, "up")
        sh("ip", "route", "add", f"{SUBNET}.0.0/16", "via", f"{SUBNET}.0.254", "dev", CTL_IF)
        in_ns(rt, "ip", "addr", "add", f"{SUBNET}.0.254/24", "dev", "ctl")
        in_ns(rt, "ip", "link", "set", "ctl", "up")
        # the relay creates the TUN device; start it first
        self.base.mkdir(parents=True, exist_ok=True)
        relay_log = self.base / "relay.log"
        with open(relay_log, "a") as log:
            self.relay = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    rt,
                    sys.executable,
                    "-m",
                    "tests.multihost.relay",
                    "--dev",
                    TUN_IF,
                    "--delay-ms",
                    str(self.delay_ms),
                    "--local-delay-ms",
                    str(self.local_delay_ms),
                ],
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )
        assert self.relay.stdout is not None
        if self.relay.stdout.readline().strip() != "ready":
            raise HarnessError(f"the delay relay did not start; see {relay_log}")
        in_ns(rt, "sysctl", "-qw", f"net.ipv4.conf.{TUN_IF}.rp_filter=0")
        in_ns(rt, "ip", "link", "set", TUN_IF, "up")
        in_ns(rt, "ip", "route", "add", "default", "dev", TUN_IF, "table", "100")
        for index, region in enumerate(REGIONS):
            net = f"{SUBNET}.{index + 1}"
            bridge = f"br-{region}"
            in_ns(rt, "ip", "link", "add", bridge, "type", "bridge")
            in_ns(rt, "ip", "addr", "add", f"{net}.254/24", "dev", bridge)
            in_ns(rt, "ip", "link", "set", bridge, "up")
            in_ns(rt, "sysctl", "-qw", f"net.ipv4.conf.{bridge}.send_redirects=0")
            for other_index, _ in enumerate(REGIONS):  # every node-to-node packet: relay
                in_ns(
                    rt,
                    "ip",
                    "rule",
                    "add",
                    "iif",
                    bridge,
                    "to",
                    f"{SUBNET}.{other_index + 1}.0/24",
                    "lookup",
                    "100",
                )
            for i in range(NODES_PER_REGION):
                name = f"{region}{i}"
                ns = f"{PREFIX}-{name}"
                sh("ip", "netns", "add", ns)
                in_ns(ns, "ip", "link", "set", "lo", "up")
                sh(
                    "ip",
                    "link",
                    "add",
                    f"{PREFIX}-{name}",
                    "netns",
                    rt,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "eth0",
                    "netns",
                    ns,
                )
                in_ns(rt, "ip", "link", "set", f"{PREFIX}-{name}", "master", bridge, "up")
                in_ns(ns, "ip", "addr", "add", f"{net}.{i + 1}/32", "dev", "eth0")
                in_ns(ns, "ip", "link", "set", "eth0", "up")
                in_ns(ns, "ip", "route", "add", f"{net}.254", "dev", "eth0")
                in_ns(ns, "ip", "route", "add", "default", "via", f"{net}.254")
                in_ns(ns, "nft", "-f", "-", stdin=_node_table())
                self.nodes.append(HostNode(name, region, ns, f"{net}.{i + 1}", self.base / name))
        in_ns(rt, "nft", "-f", "-", stdin=_router_table())

    # ------------------------------------------------------------------ nodes
    def start_nodes(self) -> None:
        """Start all nodes; each seeds through the first node of every region."""
        first = [f"{SUBNET}.{i + 1}.1:{NODE_PORT}" for i, _ in enumerate(REGIONS)]
        sh(sys.executable, "-m", "meshnode.cli", "keys", "init", str(self.keyring))
        for node in self.nodes:
            self.launch(node, [addr for addr in first if addr != node.address])
        for node in self.nodes:
            node.node_id = _wait_listening(node)

    @property
    def keyring(self) -> Path:
        return self.base / "keyring.json"

    def start_node(self, node: HostNode, seeds: Sequence[str]) -> float:
        """Start ``node`` (stopped) with ``seeds``; return the monotonic time of its
        listening line."""
        self.launch(node, seeds)
        node.node_id = _wait_listening(node)
        return time.monotonic()

    def kill_node(self, node: HostNode, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the node's process (``meshnode run`` under ``ip netns exec``,
        which execs it: same pid) and reap it."""
        assert node.proc is not None
        node.proc.send_signal(sig)
        node.proc.wait(15)
        if node.proc.stdout is not None:
            node.proc.stdout.close()

    def launch(self, node: HostNode, seeds: Sequence[str]) -> None:
        """Start the process of ``node`` with ``seeds`` (returns at once)."""
        node.data_dir.mkdir(parents=True, exist_ok=True)
        keyring = self.keyring
        cmd = [
            "ip",
            "netns",
            "exec",
            node.ns,
            sys.executable,
            "-m",
            "meshnode.cli",
            "run",
            "--name",
            node.name,
            "--host",
            node.ip,
            "--port",
            str(NODE_PORT),
            "--profile",
            self.profile,
            "--data-dir",
            str(node.data_dir),
            "--keyring",
            str(keyring),
            "--log-level",
            "WARNING",
            "--embedder",
            "hashing",
            *self.extra,
        ]
        for seed in seeds:
            cmd += ["--seed", seed]
        if node.name in self.agents:
            cmd += ["--agent", self.agents[node.name]]
        with open(node.data_dir.with_suffix(".log"), "a") as log:
            node.proc = subprocess.Popen(
                cmd,
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env={
                    **os.environ,
                    "PYTHONPATH": str(REPO),
                    "PYTHONUNBUFFERED": "1",
                    "MESHNODE_API_TOKEN": API_TOKEN,
                },
            )

    def stop_nodes(self) -> None:
        for node in self.nodes:
            if node.alive():
                assert node.proc is not None
                node.proc.send_signal(signal.SIGTERM)
        for node in self.nodes:
            if node.proc is None:
                continue
            try:
                node.proc.wait(10)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait()
            if node.proc.stdout is not None:
                node.proc.stdout.close()

    def close(self) -> None:
        try:
            self.stop_nodes()
            if self.relay is not None and self.relay.poll() is None:
                self.relay.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.relay.wait(5)
                if self.relay.poll() is None:
                    self.relay.kill()
                    self.relay.wait()
            if self.relay is not None and self.relay.stdout is not None:
                self.relay.stdout.close()
        finally:
            cleanup()

    # ------------------------------------------------------------------ faults
    def region(self, region: str) -> list[HostNode]:
        return [n for n in self.nodes if n.region == region]

    def node(self, name: str) -> HostNode:
        return next(n for n in self.nodes if n.name == name)

    def set_loss(self, percent: int) -> None:
        """Drop ``percent`` % of the packets each node receives from other nodes (0: none).
        Every packet crosses one node's input once, so this is the loss on every link."""
        if not 0 <= percent <= 100:
            raise ValueError("loss must be within 0..100 percent")
        for node in self.nodes:
            in_ns(node.ns, "nft", "flush", "chain", "inet", PREFIX, "loss")
            if percent:
                in_ns(
                    node.ns,
                    "nft",
                    "add",
                    "rule",
                    "inet",
                    PREFIX,
                    "loss",
                    "ip",
                    "saddr",
                    "!=",
                    f"{SUBNET}.0.0/24",
                    "numgen",
                    "random",
                    "mod",
                    "100",
                    "<",
                    str(percent),
                    "counter",
                    "drop",
                )

    def partition(self, on: bool = True) -> None:
        """Cut (or heal) every packet between the two regions, in the router."""
        in_ns(ROUTER_NS, "nft", "flush", "chain", "inet", PREFIX, "partition")
        if on:
            nets = [f"{SUBNET}.{i + 1}.0/24" for i, _ in enumerate(REGIONS)]
            for src in nets:
                for dst in nets:
                    if src != dst:
                        in_ns(
                            ROUTER_NS,
                            "nft",
                            "add",
                            "rule",
                            "inet",
                            PREFIX,
                            "partition",
                            "ip",
                            "saddr",
                            src,
                            "ip",
                            "daddr",
                            dst,
                            "counter",
                            "drop",
                        )

    def drop_udp(self, name: str, on: bool = True) -> None:
        """Drop every UDP packet node ``name`` receives from the network (TCP still works)."""
        ns = self.node(name).ns
        in_ns(ns, "nft", "flush", "chain", "inet", PREFIX, "udpdrop")
        if on:
            in_ns(
                ns,
                "nft",
                "add",
                "rule",
                "inet",
                PREFIX,
                "udpdrop",
                "iifname",
                "!=",
                "lo",
                "meta",
                "l4proto",
                "udp",
                "counter",
                "drop",
            )

    def dropped(self) -> dict[str, int]:
        """Packets each nftables chain of ours has dropped, summed over namespaces."""
        totals: dict[str, int] = {}
        for ns in [ROUTER_NS, *(n.ns for n in self.nodes)]:
            doc = json.loads(in_ns(ns, "nft", "-j", "list", "table", "inet", PREFIX))
            for item in doc["nftables"]:
                rule = item.get("rule")
                if not rule:
                    continue
                for expr in rule["expr"]:
                    if "counter" in expr:
                        chain = rule["chain"]
                        totals[chain] = totals.get(chain, 0) + int(expr["counter"]["packets"])
        return totals


def _node_table() -> str:
    return (
        f"table inet {PREFIX} {{\n"
        "  chain input { type filter hook input priority 0; policy accept;\n"
        '    iifname "lo" accept\n    jump udpdrop\n    jump loss\n  }\n'
        "  chain udpdrop { }\n  chain loss { }\n}\n"
    )


def _router_table() -> str:
    return (
        f"table inet {PREFIX} {{\n"
        "  chain forward { type filter hook forward priority 0; policy accept;\n"
        "    jump partition\n  }\n  chain partition { }\n}\n"
    )


def _wait_listening(node: HostNode) -> str:
    assert node.proc is not None and node.proc.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        line = node.proc.stdout.readline()
        if not line:
            break
        with contextlib.suppress(json.JSONDecodeError):
            event = json.loads(line)
            if event.get("event") == "listening":
                return str(event["node_id"])
    raise HarnessError(f"{node.name} did not start; see {node.data_dir.with_suffix('.log')}")


@contextlib.contextmanager
def mesh(
    base: Path,
    *,
    profile: str = "local",
    delay_ms: float = DEFAULT_DELAY_MS,
    local_delay_ms: float = DEFAULT_LOCAL_DELAY_MS,
    agents: dict[str, str] | None = None,
    extra: Sequence[str] = (),
) -> Iterator[Mesh]:
    """Build the network, start the 8 nodes, yield; remove everything on the way out,
    also on failure (and at interpreter exit, should the process be stopped mid-way)."""
    m = Mesh(
        base,
        profile=profile,
        delay_ms=delay_ms,
        local_delay_ms=local_delay_ms,
        agents=dict(agents or {}),
        extra=extra,
    )
    atexit.register(cleanup)
    try:
        m.build_network()
        m.start_nodes()
        yield m
    finally:
        m.close()
        atexit.unregister(cleanup)


def converged(m: Mesh) -> bool:
    """Every node sees all 8 alive."""
    ids = {n.node_id for n in m.nodes}
    for node in m.nodes:
        members = node.members()
        if {i for i, v in members.items() if v["state"] == "alive"} != ids:
            return False
    return True


# ---------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.multihost.harness", description=__doc__.splitlines()[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="build the namespaces, start 8 nodes, serve until Ctrl-C")
    up.add_argument("--profile", default="local", help="timing profile (default local)")
    up.add_argument(
        "--delay-ms",
        type=float,
        default=DEFAULT_DELAY_MS,
        help="one-way inter-region delay (default 20)",
    )
    up.add_argument("--loss", type=int, default=0, help="percent loss on every link (default 0)")
    sub.add_parser("status", help="namespaces and links of ours that exist")
    sub.add_parser("down", help="stop and remove everything (same as cleanup)")
    sub.add_parser("cleanup", help="remove every namespace, link and process with our prefix")
    args = parser.parse_args(argv)
    if args.command in ("down", "cleanup"):
        removed = cleanup()
        print(json.dumps({"removed": removed, "left": leftovers()}))
        return 0
    if args.command == "status":
        print(json.dumps({"present": leftovers()}))
        return 0
    reason = unavailable_reason()
    if reason:
        print(f"multihost: {reason}", file=sys.stderr)
        return 2
    base = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-"))
    stop = False

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with mesh(base, profile=args.profile, delay_ms=args.delay_ms) as m:
        m.set_loss(args.loss)
        print(
            json.dumps(
                {
                    "event": "up",
                    "data": str(base),
                    "token": API_TOKEN,
                    "nodes": {n.name: n.address for n in m.nodes},
                }
            ),
            flush=True,
        )
        while not stop:
            time.sleep(0.5)
    shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
