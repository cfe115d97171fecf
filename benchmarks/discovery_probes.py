"""Probe round trips while a node indexes a mesh's worth of capabilities.

Usage::

    python benchmarks/discovery_probes.py [--out discovery-probes.json] [--quick]
                                          [--nodes 125] [--caps 8] [--vectors]

The requirement: embedding never blocks the event loop, so a node that joins a mesh of
1,000 capabilities keeps answering and timing probes within the LAN probe timeout
(``NodeConfig.lan()``: probe every 1 s, direct timeout 500 ms) while it indexes them.

Everything runs on 127.0.0.1 with real UDP and TCP sockets, the real MiniLM embedder in the
node under test and the protocol's own delivery path:

* **bulk**: a child process runs ``--nodes`` real nodes (LAN profile) with ``--caps``
  distinct capabilities each (125 × 8 = 1,000 by default; texts from the corpus of
  ``discovery.py``). They form their own mesh and exchange every manifest before anything
  is timed. They use the hashing embedder and do not index (they only deliver manifests),
  so their process stays light. With ``--vectors`` they run MiniLM instead, only to ship
  its vectors of their own texts in their manifests; A then indexes those without
  embedding them (docs/discovery.md, "Vectors in manifests").
* **A**: the node under test, in this process: LAN profile, MiniLM.
* **small**: a second child process with four LAN peers of A (one capability each) and an
  external prober that sends A a signed ``Ping`` every 50 ms from its own socket and times
  the ``Ack``: what any peer's failure detector sees of A, at twenty times SWIM's rate.

After A and its small mesh settle, A joins the bulk mesh through one seed (one push-pull,
as any join): it learns every bulk member and manifest rumor, fetches each signed manifest
over TCP (``MAX_CONCURRENT_FETCHES`` at a time) and its ``DiscoveryService`` embeds and
indexes them on its worker thread, while every bulk node fetches A's manifest from A or a
peer. The bulk nodes already hold the small peers' manifests (handed over before the
merge, as nodes restarted from their data dirs would): here 125 nodes share one event loop
where a real mesh has 125 hosts, and 500 more fetches in that one loop would delay its
acks, which A would see as slow peers, not as a slow A.

The *build* window runs from the join until every bulk capability is in A's index, plus
one probe interval (a probe sent during the build is judged by then). A *baseline* window
of the same length follows, once the mesh is quiet again: same members, same probe
targets, no indexing.

Recorded in both windows:

* every probe round trip A measures itself: the ``Member.rtt`` the membership core sets
  from each direct ack (polled every 10 ms; a member is probed at most once a period, so
  no sample is missed), split by target (small peers, bulk nodes);
* the external prober's round trips to A (and how many got no ack within 500 ms);
* event-loop lag in A's process: a task sleeping 10 ms, the overshoot of each sleep; and
  the same in the bulk process and in the small peers' process
  (``bulk_process_loop_lag_ms``, ``small_process_loop_lag_ms``), so a late ack from a
  peer can be told from a slow A;
* A's membership counters (probes, probes failed, indirect probes, i.e. direct timeouts,
  suspicions raised, stalls) and every ``member_suspected`` event in all three processes.

Goals, reported as booleans: the largest probe round trip during the build (A's own and
the prober's) under the LAN probe timeout, and no suspicion anywhere. Timings on a shared
2-core machine are noisy: the JSON records the load average. All times in milliseconds
unless a key says otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve()
ROOT = SCRIPT.parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run from a plain checkout

from benchmarks.discovery import synth_capabilities  # noqa: E402
from meshnode import MeshNode, NodeConfig  # noqa: E402
from meshnode.core.effects import MemberChanged, MemberEvent  # noqa: E402
from meshnode.core.membership import MemberState  # noqa: E402
from meshnode.runtime.logging import configure_logging  # noqa: E402
from protocol import (  # noqa: E402
    Ack,
    Identity,
    Manifest,
    Ping,
    RemoteProtocolError,
    decode,
    encode,
    pack,
    unpack,
)
from protocol.manifest import Capability  # noqa: E402

LAN = NodeConfig.lan()
PROBE_TIMEOUT_MS = LAN.probe_timeout * 1000.0
"""The bar: the LAN profile's direct probe timeout."""
LAG_INTERVAL_S = 0.01
"""The lag task's sleep; also how often A's member RTTs are polled."""
PING_INTERVAL_S = 0.05
"""The external prober's rate (SWIM probes a given member far less often)."""
SMALL_PEERS = 4
SETTLE_S = 3.0
"""Quiet time after the small mesh formed, and after the build, before a window opens."""
SETUP_TIMEOUT_S = 300.0
BUILD_TIMEOUT_S = 300.0
CORPUS_SEED = 7_310_2024
"""Seed of the capability texts (distinct from discovery.py's, though nothing is shared:
A's embedding cache starts empty)."""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def emit(event: dict[str, Any]) -> None:
    """A child's report to the parent: one JSON object per stdout line."""
    print(json.dumps(event), flush=True)


async def noop(payload: Any) -> dict[str, Any]:
    return {}


def suspect_recorder(events: list[dict[str, Any]]) -> Callable[[str], Callable[..., None]]:
    """Per node: a member listener that appends every suspicion it sees to ``events``."""

    def for_node(observer: str) -> Callable[[MemberChanged], None]:
        def listener(change: MemberChanged) -> None:
            if change.kind is MemberEvent.SUSPECT:
                events.append({"at": time.time(), "observer": observer, "suspect": change.node_id})

        return listener

    return for_node


async def start_nodes(configs: Sequence[NodeConfig], caps: Sequence[Any]) -> list[MeshNode]:
    """Start one node per config, the i-th with ``caps[i]`` (a list of capabilities)."""
    nodes: list[MeshNode] = []
    for config, node_caps in zip(configs, caps, strict=True):
        node = MeshNode(config)
        for cap in node_caps:
            node.add_capability(
                noop,
                name=cap.name,
                description=cap.description,
                tags=cap.tags,
                cost_per_call_usd=cap.cost_per_call_usd,
                avg_latency_ms=cap.avg_latency_ms,
            )
        nodes.append(node)
    try:
        for start in range(0, len(nodes), 16):
            await asyncio.gather(*(n.start() for n in nodes[start : start + 16]))
    except BaseException:
        await asyncio.gather(*(n.aclose() for n in nodes), return_exceptions=True)
        raise
    for node in nodes:
        # These nodes only deliver manifests; indexing them here would only load the host.
        node.manifest_listeners.remove(node.discovery.manifest_changed)
    return nodes


async def wait_until(predicate: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.05)


async def record_lag(
    samples: list[tuple[float, float]], then: Callable[[], None] | None = None
) -> None:
    """Forever: sleep 10 ms and append (wall clock, ms the sleep overshot), then call
    ``then``. Every process of the benchmark runs one, so a late ack can be traced to the
    process whose loop was late."""
    loop = asyncio.get_running_loop()
    while True:
        before = loop.time()
        await asyncio.sleep(LAG_INTERVAL_S)
        samples.append((time.time(), round((loop.time() - before - LAG_INTERVAL_S) * 1e3, 3)))
        if then is not None:
            then()


async def read_command() -> str:
    return (await asyncio.to_thread(sys.stdin.readline)).strip()


# --------------------------------------------------------------------------- children


async def bulk_main(n_nodes: int, per_node: int, vectors: bool = False) -> None:
    caps = synth_capabilities(n_nodes * per_node, seed=CORPUS_SEED)
    # With ``vectors`` the bulk nodes run MiniLM (one model for the process) only to ship
    # its vectors of their own texts in their manifests, as real agents would; they still
    # index nothing.
    embedder = "minilm" if vectors else "hashing"
    suspects: list[dict[str, Any]] = []
    record = suspect_recorder(suspects)
    started = time.perf_counter()
    first = await start_nodes(
        [NodeConfig.lan(name="bulk-0", port=0, embedder=embedder)], [caps[:per_node]]
    )
    seed = f"127.0.0.1:{first[0].address[1]}"
    rest = await start_nodes(
        [
            NodeConfig.lan(name=f"bulk-{i}", port=0, embedder=embedder, seeds=(seed,))
            for i in range(1, n_nodes)
        ],
        [caps[i * per_node : (i + 1) * per_node] for i in range(1, n_nodes)],
    )
    nodes = first + rest
    for node in nodes:
        node.member_listeners.append(record(node.node_id))
    lag: list[tuple[float, float]] = []
    lag_task: asyncio.Task[None] | None = None
    try:
        await wait_until(
            lambda: all(
                n.core.membership.count(MemberState.ALIVE) == n_nodes
                and len(n.core.manifests) == n_nodes
                for n in nodes
            ),
            SETUP_TIMEOUT_S,
            "the bulk mesh to converge",
        )
        emit(
            {
                "event": "ready",
                "seed": seed,
                "node_ids": [n.node_id for n in nodes],
                "capabilities": len(caps),
                "setup_s": round(time.perf_counter() - started, 2),
            }
        )
        lag_task = asyncio.create_task(record_lag(lag))
        while (command := await read_command()) not in ("", "stop"):
            if command == "report":
                emit({"event": "report", "suspicions": suspects, "lag": lag})
            elif command.startswith("preload "):
                now = time.time()
                manifests = [unpack(bytes.fromhex(h), Manifest) for h in command.split()[1:]]
                for node in nodes:
                    for manifest in manifests:
                        node.core.manifests.apply(manifest, now)
                emit({"event": "preloaded", "manifests": len(manifests)})
    finally:
        if lag_task is not None:
            lag_task.cancel()
            await asyncio.gather(lag_task, return_exceptions=True)
        await asyncio.gather(*(n.aclose() for n in nodes), return_exceptions=True)


class Prober(asyncio.DatagramProtocol):
    """Sends signed pings to one node and times its acks."""

    def __init__(self, target_id: str, target: tuple[str, int]) -> None:
        self.identity = Identity.generate()
        self.target_id = target_id
        self.target = target
        self.transport: asyncio.DatagramTransport | None = None
        self.sent: dict[int, float] = {}
        self.samples: list[tuple[float, float | None]] = []
        """(sent at, wall clock; round trip in ms, None if no ack came within the bar)."""
        self.seq = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        received = time.perf_counter()
        try:
            envelope = decode(data)
        except RemoteProtocolError:
            return
        for message in envelope.messages:
            if isinstance(message, Ack) and message.seq in self.sent:
                sent = self.sent.pop(message.seq)
                rtt = (received - sent) * 1000.0
                wall = time.time() - (received - sent)
                self.samples.append((wall, rtt if rtt < PROBE_TIMEOUT_MS else None))

    def ping(self) -> None:
        assert self.transport is not None
        now = time.perf_counter()
        for seq, sent in list(self.sent.items()):
            if (now - sent) * 1000.0 >= PROBE_TIMEOUT_MS:
                del self.sent[seq]
                self.samples.append((time.time() - (now - sent), None))
        self.seq += 1
        self.sent[self.seq] = now
        self.transport.sendto(encode([Ping(self.seq, self.target_id)], self.identity), self.target)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            self.ping()
            next_at += PING_INTERVAL_S
            await asyncio.sleep(max(0.0, next_at - loop.time()))


async def small_main(seed: str, target_id: str) -> None:
    suspects: list[dict[str, Any]] = []
    record = suspect_recorder(suspects)
    caps = synth_capabilities(SMALL_PEERS, seed=CORPUS_SEED + 1)
    for i, cap in enumerate(caps):  # names distinct from the bulk corpus's
        caps[i] = Capability(
            name=f"small_{cap.name}",
            description=cap.description,
            tags=cap.tags,
            cost_per_call_usd=cap.cost_per_call_usd,
            avg_latency_ms=cap.avg_latency_ms,
        )
    nodes = await start_nodes(
        [
            NodeConfig.lan(name=f"small-{i}", port=0, embedder="hashing", seeds=(seed,))
            for i in range(SMALL_PEERS)
        ],
        [[cap] for cap in caps],
    )
    for node in nodes:
        node.member_listeners.append(record(node.node_id))
    host, port = seed.rsplit(":", 1)
    loop = asyncio.get_running_loop()
    _, prober = await loop.create_datagram_endpoint(
        lambda: Prober(target_id, (host, int(port))), local_addr=("127.0.0.1", 0)
    )
    ping_task: asyncio.Task[None] | None = None
    lag: list[tuple[float, float]] = []
    lag_task = asyncio.create_task(record_lag(lag))
    try:
        await wait_until(
            lambda: all(
                n.core.membership.count(MemberState.ALIVE) == SMALL_PEERS + 1 for n in nodes
            ),
            SETUP_TIMEOUT_S,
            "the small mesh to form",
        )
        ping_task = asyncio.create_task(prober.run())
        manifests = [n.core.manifests.get(n.node_id) for n in nodes]
        emit(
            {
                "event": "ready",
                "node_ids": [n.node_id for n in nodes],
                "manifests": [pack(m).hex() for m in manifests if m is not None],
            }
        )
        while (command := await read_command()) not in ("", "stop"):
            if command == "report":
                emit(
                    {
                        "event": "report",
                        "suspicions": suspects,
                        "pings": prober.samples,
                        "lag": lag,
                    }
                )
    finally:
        lag_task.cancel()
        if ping_task is not None:
            ping_task.cancel()
        await asyncio.gather(lag_task, *([ping_task] if ping_task else []), return_exceptions=True)
        if prober.transport is not None:
            prober.transport.close()
        await asyncio.gather(*(n.aclose() for n in nodes), return_exceptions=True)


# --------------------------------------------------------------------------- parent


class Child:
    """A child process of this script, spoken to over stdin/stdout without blocking."""

    def __init__(self, proc: asyncio.subprocess.Process, name: str) -> None:
        self.proc = proc
        self.name = name

    @classmethod
    async def start(cls, name: str, *args: str) -> Child:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(SCRIPT),
            "--child",
            name,
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            limit=64 * 1024 * 1024,
        )
        return cls(proc, name)

    async def expect(self, event: str, within: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + within
        while True:
            line = await asyncio.wait_for(
                self.proc.stdout.readline(), max(0.1, deadline - time.monotonic())
            )
            if not line:
                raise RuntimeError(f"the {self.name} process exited before {event!r}")
            with contextlib.suppress(json.JSONDecodeError):
                message = json.loads(line)
                if isinstance(message, dict) and message.get("event") == event:
                    return message

    async def ask(self, command: str, event: str | None = None) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{command}\n".encode())
        await self.proc.stdin.drain()
        return await self.expect(event, 60.0) if event else {}

    async def stop(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(Exception):
                await self.ask("stop")
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


class Monitor:
    """Loop lag in this process and every probe round trip the given nodes measure."""

    def __init__(self, nodes: Sequence[MeshNode]) -> None:
        self.nodes = list(nodes)
        self.lag: list[tuple[float, float]] = []
        """(wall clock, ms the 10 ms sleep overshot)."""
        self.rtts: list[tuple[float, str, str, float]] = []
        """(wall clock, observer, target, round trip in ms)."""
        self._last: dict[tuple[str, str], Any] = {}
        self._scan(record=False)

    def _scan(self, *, record: bool) -> None:
        now = time.time()
        for node in self.nodes:
            for member in node.core.members():
                key = (node.node_id, member.node_id)
                previous = self._last.get(key)
                if previous is member:
                    continue
                self._last[key] = member
                # The core replaces a member's snapshot on every direct ack with the new
                # round trip; other changes keep the old one.
                new = previous is None or previous.rtt != member.rtt
                if record and member.rtt is not None and new:
                    self.rtts.append((now, node.node_id, member.node_id, member.rtt * 1e3))

    async def run(self) -> None:
        await record_lag(self.lag, lambda: self._scan(record=True))


def stats(samples: Sequence[float]) -> dict[str, Any]:
    if not samples:
        return {"n": 0}
    ordered = sorted(samples)

    def pct(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {
        "n": len(ordered),
        "p50": pct(0.50),
        "p99": pct(0.99),
        "max": round(ordered[-1], 3),
        "mean": round(sum(ordered) / len(ordered), 3),
    }


def counters(node: MeshNode) -> dict[str, int]:
    keys = ("probes", "probes_failed", "indirect_probes", "suspicions_raised", "stalls")
    return {key: int(node.core.membership.counters.get(key, 0)) for key in keys}


def window_report(
    start: float,
    end: float,
    monitor: Monitor,
    a: MeshNode,
    small_ids: set[str],
    pings: Sequence[Sequence[Any]],
    suspicions: Sequence[dict[str, Any]],
    counters_before: dict[str, int],
    counters_after: dict[str, int],
    roles: dict[str, str],
    peer_lags: dict[str, Sequence[Sequence[float]]],
) -> dict[str, Any]:
    """One window's figures. ``peer_lags`` maps a process ("bulk", "small") to its loop
    lag samples (wall clock, ms)."""

    def inside(at: float) -> bool:
        return start <= at <= end

    own = [(t, target, rtt) for t, obs, target, rtt in monitor.rtts if obs == a.node_id]
    own = [(t, target, rtt) for t, target, rtt in own if inside(t)]
    window_pings = [p for p in pings if inside(p[0])]
    answered = [p[1] for p in window_pings if p[1] is not None]
    return {
        "seconds": round(end - start, 3),
        "probe_rtt_ms": stats([rtt for _, _, rtt in own]),
        "probe_rtt_ms_to_small_peers": stats([r for _, t, r in own if t in small_ids]),
        "probe_rtt_ms_to_bulk_nodes": stats([r for _, t, r in own if t not in small_ids]),
        "external_ping_rtt_ms": stats(answered),
        "external_pings_sent": len(window_pings),
        "external_pings_unanswered_within_timeout": len(window_pings) - len(answered),
        "loop_lag_ms": stats([lag for t, lag in monitor.lag if inside(t)]),
        **{
            f"{name}_process_loop_lag_ms": stats([lag for t, lag in samples if inside(t)])
            for name, samples in peer_lags.items()
        },
        "a_counters": {k: counters_after[k] - counters_before[k] for k in counters_before},
        "suspicions": [
            {
                "at_s": round(s["at"] - start, 3),
                "observer": f"{roles.get(s['observer'], '?')}:{s['observer'][:10]}",
                "suspect": f"{roles.get(s['suspect'], '?')}:{s['suspect'][:10]}",
            }
            for s in suspicions
            if inside(s["at"])
        ],
    }


async def parent_main(args: argparse.Namespace) -> dict[str, Any]:
    n_nodes, per_node = args.nodes, args.caps
    report: dict[str, Any] = {
        "benchmark": "discovery_probes",
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        },
        "settings": {
            "profile": "lan",
            "probe_interval_s": LAN.probe_interval,
            "probe_timeout_ms": PROBE_TIMEOUT_MS,
            "bulk_nodes": n_nodes,
            "capabilities_per_bulk_node": per_node,
            "small_peers": SMALL_PEERS,
            "external_ping_interval_ms": PING_INTERVAL_S * 1e3,
            "lag_sleep_ms": LAG_INTERVAL_S * 1e3,
            "embedder_under_test": "minilm",
            "bulk_manifests_carry_vectors": bool(args.vectors),
        },
    }
    children: list[Child] = []
    a: MeshNode | None = None
    monitor_task: asyncio.Task[None] | None = None
    try:
        log(f"starting the bulk mesh: {n_nodes} nodes x {per_node} capabilities")
        bulk = await Child.start(
            "bulk",
            "--nodes",
            str(n_nodes),
            "--caps",
            str(per_node),
            *(["--vectors"] if args.vectors else []),
        )
        children.append(bulk)
        bulk_ready = await bulk.expect("ready", SETUP_TIMEOUT_S)
        report["bulk_setup_s"] = bulk_ready["setup_s"]
        expected = int(bulk_ready["capabilities"])

        log("starting A (MiniLM) and its small mesh")
        a = MeshNode(NodeConfig.lan(name="a", port=0, embedder="minilm"))
        await a.start()
        assert a.discovery.embedder is not None
        report["settings"]["embedder_model_id"] = a.discovery.embedder.model_id
        report["settings"]["embedder"] = repr(a.discovery.embedder.inner)
        a_suspicions: list[dict[str, Any]] = []
        a.member_listeners.append(suspect_recorder(a_suspicions)(a.node_id))
        a_address = f"127.0.0.1:{a.address[1]}"
        small = await Child.start("small", "--seed", a_address, "--target", a.node_id)
        children.append(small)
        small_ready = await small.expect("ready", SETUP_TIMEOUT_S)
        small_ids = set(small_ready["node_ids"])
        # The bulk nodes already hold the small peers' signed manifests (as nodes restarted
        # from their data dirs would): 125 nodes share one event loop here where a real
        # mesh has 125 hosts, so at the merge they fetch only A's manifest.
        await bulk.ask("preload " + " ".join(small_ready["manifests"]), "preloaded")
        roles = {a.node_id: "a", **dict.fromkeys(small_ids, "small")}
        roles.update(dict.fromkeys(bulk_ready["node_ids"], "bulk"))
        index = a.discovery.index
        assert index is not None
        await wait_until(
            lambda: (
                a is not None
                and a.core.membership.count(MemberState.ALIVE) == SMALL_PEERS + 1
                and len(index) == SMALL_PEERS
            ),
            SETUP_TIMEOUT_S,
            "A to know and index its small mesh",
        )
        monitor = Monitor([a])
        monitor_task = asyncio.create_task(monitor.run())
        await asyncio.sleep(SETTLE_S)

        log("A joins the bulk mesh; timing the index build")
        before = counters(a)
        build_start = time.time()
        host, port = bulk_ready["seed"].rsplit(":", 1)
        a.core.join([(host, int(port))], build_start)
        a._dispatch()  # carry out the push-pull now, as start() does after its join
        members_total = 1 + SMALL_PEERS + n_nodes
        await wait_until(
            lambda: len(index) == SMALL_PEERS + expected,
            BUILD_TIMEOUT_S,
            "A to index every bulk capability",
        )
        await a.discovery.settled()
        indexed_at = time.time()
        # Probes sent during the build are judged (acked, or timed out and suspected) up to
        # one probe interval later: the window runs until then.
        await asyncio.sleep(LAN.probe_interval)
        build_end = time.time()
        after_build = counters(a)
        duration = build_end - build_start
        log(f"index built in {indexed_at - build_start:.2f} s; windows of {duration:.2f} s")
        await wait_until(
            lambda: a is not None and a.core.membership.count(MemberState.ALIVE) == members_total,
            60.0,
            "A to hold every member alive",
        )
        await asyncio.sleep(SETTLE_S)
        base_before = counters(a)
        base_start = time.time()
        await asyncio.sleep(duration)
        base_end = time.time()
        base_after = counters(a)

        small_report = await small.ask("report", "report")
        bulk_report = await bulk.ask("report", "report")
        suspicions = sorted(
            a_suspicions + small_report["suspicions"] + bulk_report["suspicions"],
            key=lambda s: s["at"],
        )
        pings = small_report["pings"]
        lags = {"bulk": bulk_report["lag"], "small": small_report["lag"]}
        build = window_report(
            build_start,
            build_end,
            monitor,
            a,
            small_ids,
            pings,
            suspicions,
            before,
            after_build,
            roles,
            lags,
        )
        build["index_build_s"] = round(indexed_at - build_start, 3)
        build["vectors_indexed"] = len(index) - SMALL_PEERS
        build["manifests_fetched"] = n_nodes
        build["members_alive_after"] = a.core.membership.count(MemberState.ALIVE)
        report["build"] = build
        report["baseline"] = window_report(
            base_start,
            base_end,
            monitor,
            a,
            small_ids,
            pings,
            suspicions,
            base_before,
            base_after,
            roles,
            lags,
        )
        # Starting 125 nodes at once in one process stalls its loop: the bulk mesh raises
        # (and refutes) suspicions while it forms, long before anything is timed.
        report["suspicions_while_the_bulk_mesh_formed"] = sum(
            1 for s in suspicions if s["at"] < build_start
        )
        report["goals"] = goals(report["build"])
        return report
    finally:
        if monitor_task is not None:
            monitor_task.cancel()
            await asyncio.gather(monitor_task, return_exceptions=True)
        for child in children:
            await child.stop()
        if a is not None:
            await a.aclose()
        report["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]


def goals(build: dict[str, Any]) -> dict[str, Any]:
    own = build["probe_rtt_ms"].get("max")
    ping = build["external_ping_rtt_ms"].get("max")
    return {
        "max_probe_rtt_during_build_ms": own,
        "max_external_ping_rtt_during_build_ms": ping,
        "probe_timeout_ms": PROBE_TIMEOUT_MS,
        "max_probe_rtt_under_probe_timeout": own is not None
        and own < PROBE_TIMEOUT_MS
        and build["a_counters"]["indirect_probes"] == 0
        and build["a_counters"]["probes_failed"] == 0,
        "external_pings_all_answered_under_probe_timeout": ping is not None
        and build["external_pings_unanswered_within_timeout"] == 0,
        "zero_suspicions": not build["suspicions"]
        and build["a_counters"]["suspicions_raised"] == 0,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write the JSON here (it is printed too)")
    parser.add_argument("--quick", action="store_true", help="40 bulk nodes x 8 capabilities")
    parser.add_argument("--nodes", type=int, default=125, help="bulk nodes")
    parser.add_argument("--caps", type=int, default=8, help="capabilities per bulk node")
    parser.add_argument(
        "--vectors",
        action="store_true",
        help="bulk manifests carry their MiniLM vectors (A indexes them without embedding)",
    )
    parser.add_argument("--child", choices=("bulk", "small"), help=argparse.SUPPRESS)
    parser.add_argument("--seed", help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Warnings and errors only, as JSON on stderr: stdout carries the children's reports.
    configure_logging(level="WARNING", json=True)

    if args.child == "bulk":
        asyncio.run(bulk_main(args.nodes, args.caps, args.vectors))
        return 0
    if args.child == "small":
        asyncio.run(small_main(args.seed, args.target))
        return 0
    if args.quick:
        args.nodes = 40
    if not 1 <= args.caps <= 32 or args.nodes < 1:
        parser.error("--nodes must be >= 1 and --caps in [1, 32]")
    started = time.perf_counter()
    runner: Callable[[], Awaitable[dict[str, Any]]] = lambda: parent_main(args)  # noqa: E731
    report = asyncio.run(runner())
    report["elapsed_s"] = round(time.perf_counter() - started, 1)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
