"""Membership benchmark: meshnode's SWIM/Lifeguard against HashiCorp's serf, side by side.

Usage::

    python benchmarks/membership.py [--out membership.json] [--sizes 10,50] [--quick]
                                    [--kills K] [--joins J] [--embedder hashing]
                                    [--skip-serf] [--serf PATH] [--logs DIR]
                                    [--observability on|both|mixed] [--idle S]

For each cluster size N (10 and 50; ``--quick``: 10 only and a shorter idle window) the
same scenario runs twice in one invocation, first with Debian's ``serf`` agent (its
default LAN profile: the memberlist figures in shared/REFERENCE.md) as the baseline, then
with ``meshnode run --profile lan``, every process on 127.0.0.1:

1. **Join.** Node 0 starts alone; nodes 1..N−1 start one after another, each once the
   previous one is ready, with node 0 as their seed. The last ``--joins`` of them (default
   9) are measured joins: each starts only once every running node sees every other one
   alive and ``JOIN_GAP_S`` more have passed, so it joins a quiet cluster. Its join runs
   from its ready line (meshnode: ``listening``, printed right after the join push-pull is
   issued; serf: ``==> Joining cluster``) until every earlier node has logged it alive and
   it has logged every earlier node alive. ``join_s`` is the median of these joins (one
   join is one epidemic, and its tail is luck); ``join_samples_s`` lists them.
   ``last_join_s`` and ``join_from_launch_s`` time the last node alone, from its ready
   line and from its process launch (interpreter start-up included).
2. **Idle.** After a settle period and once no node uses more than 5 % of a core (a node
   may still be loading its embedding model), CPU time (``/proc/PID/stat``, user +
   system) and memory (``VmRSS``; PSS and USS from ``smaps_rollup``) of every node over
   the idle window. Nothing queries the nodes during it.
3. **Failure detection.** SIGKILL of node N // 2 (never the seed). ``detect_s`` runs from
   the kill until every survivor marks it failed (meshnode: state ``dead``; serf:
   ``failed``). Which node's probe fails first is luck, so this repeats ``--kills``
   times (nodes N // 2, N // 2 + 1, …, one after another) and reports the median.
4. **False positives.** Every suspicion or failure about a node that was alive at the
   time, from the first launch until a few seconds after the last detection.

Times come from the nodes' own logs, each line stamped when it reaches this process
(meshnode: ``member_joined``/``member_recovered``/``member_suspected``/``member_died``
JSON events; serf: ``serf: EventMemberJoin``/``EventMemberFailed`` and ``memberlist:
Suspect … has failed`` lines), and every end state is then confirmed by asking the nodes
themselves: ``GET /v1/members`` for meshnode, the ``members`` command of serf's msgpack RPC
(what ``serf members -rpc-addr=…`` prints). The ``*_confirmed_s`` figures are those
confirmation times, an upper bound that includes the polling.

Counting differs by design between the two logs: a meshnode node logs
``member_suspected`` whenever it learns of a suspicion, so one suspicion shows once per
node, while memberlist logs ``Suspect … has failed`` only on the node whose probe failed;
``suspected_nodes`` (distinct live nodes ever suspected) compares like with like.

Goals (meshnode against the serf run of the same size): join no slower than serf;
detection within 1.1× serf's; zero false suspicions and deaths; idle CPU per node at
most 3× serf's; RSS at most 60 MB per node (MB = 10^6 bytes throughout). A goal that
needs serf is ``null`` when serf did not run (``--skip-serf``, or no ``serf`` binary:
the JSON says which under ``"serf"``).

Encryption: with ``--encryption both`` (the default) the meshnode scenario runs twice
per size in the same invocation, in clear and then with every node on one keyring
(``meshnode run --keyring``, all peer traffic sealed, docs/security.md); ``encryption``
gives the sealed run's idle CPU, RSS, join and detection times over the clear run's (goal:
idle CPU at most 10 % more, and zero false positives sealed too). ``on`` or ``off`` run one
of the two; ``all`` adds a third run, sealed and with membership certificates (each node
certified by a throw-away mesh authority, ``--authority``/``--cert``: "everything on"),
compared with the clear run under ``everything_on``.

Observability: with ``--observability both`` every meshnode run above is paired with one
more in the same invocation, ``meshnode run --no-metrics --no-tracing`` (the default runs
have ``GET /metrics``, span recording and the trust-history sampler on);
``observability`` gives the run with them on over the run without (idle CPU and RSS per
node, join and detection), with the goal of idle CPU and RSS unchanged within 10 %.
``--observability mixed`` measures the same in one run instead: odd-numbered nodes run
with both off, and ``observability`` compares the two halves over one idle window (node
0 left out), so the rest of the machine's load hits both alike.

``--embedder hashing`` passes ``--embedder hashing`` to ``meshnode run``, to measure the
membership layer without the MiniLM model that the default (``auto``) loads at start when
the ``semantic`` extra is installed. Before starting N
nodes the script checks that N × the first node's private memory fits in what the machine
has available, and it starts no node unless 3 GB would remain once every node started so
far has grown to the size of the first one.

The JSON goes to stdout or ``--out``; progress goes to stderr. ``--logs DIR`` keeps every
node's output (otherwise it lives in a temporary directory removed at the end). Each
process runs in its own process group and is killed with its group when its cluster is
done, on error and on SIGINT/SIGTERM; where ``setpriv`` supports it, children also get
SIGKILL if this script dies. Every wait has a deadline. Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import json
import os
import platform
import queue
import re
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a plain checkout

import msgpack  # noqa: E402  (after the path set-up above)

from protocol import short_id  # noqa: E402

DEFAULT_SIZES = (10, 50)
QUICK_SIZES = (10,)
SETTLE_S = 5.0
"""Least seconds between convergence and the idle window (rumor retransmissions die
down); the window then waits until no node is still busy starting up."""
QUICK_SETTLE_S = 2.0
SETTLE_MAX_S = 180.0
"""Most seconds to wait for every node to go quiet before measuring anyway."""
QUIET_CPU_PCT = 5.0
"""A node is quiet once it used less than this share of one core over ``QUIET_SAMPLE_S``."""
QUIET_SAMPLE_S = 2.0
MEMORY_FLOOR = 3 * 10**9
"""Bytes of ``MemAvailable`` to keep: no node is started unless this much would remain
once every started node has grown to the first node's size (the machine is shared; a
meshnode process that loads the MiniLM model holds about 0.36 GB of its own)."""
IDLE_S = 20.0
"""Length of the idle window over which CPU and memory are sampled."""
QUICK_IDLE_S = 8.0
AFTER_DETECT_S = 3.0
"""Seconds the cluster keeps running after detection, still watched for false positives."""
START_TIMEOUT = 60.0
"""Seconds one process may take to become ready (a busy machine slows Python imports)."""
JOIN_TIMEOUT = 120.0
"""Seconds from the last join until every node must see every other one alive."""
DETECT_TIMEOUT = 120.0
"""Seconds from the kill until every survivor must mark the victim failed. The longest
meshnode suspicion at N = 50 (nobody confirming) is 6 × 4 × log10 50 ≈ 41 s."""
JOINS = 9
"""Measured joins per run (the last ones, each into a quiet cluster); ``join_s`` is
their median. Capped at N − 1."""
QUICK_JOINS = 3
JOIN_GAP_S = 1.0
"""Seconds between a converged cluster and the next measured join: at N = 50 a rumor is
sent 4 × ceil(log10 51) = 8 times, about three gossip rounds (0.6 s), by both systems."""
KILLS = 3
"""Nodes killed one after another per run; the detection figure is their median."""
QUICK_KILLS = 1
STOP_TIMEOUT = 10.0
"""Seconds to wait for killed processes and the log reader to finish."""
QUERY_TIMEOUT = 5.0
"""Seconds one HTTP or RPC query of a node may take."""
CHECK_INTERVAL = 0.05
"""Seconds between two evaluations of a wait condition on the logs."""
START_ATTEMPTS = 3
"""Launch attempts per node (a port picked free for serf can be taken before it binds)."""

GOAL_DETECT_RATIO = 1.1
GOAL_CPU_RATIO = 3.0
GOAL_RSS_MB = 60.0
MB = 1_000_000

JOIN, SUSPECT, FAILED, LEFT, REFUTE = "join", "suspect", "failed", "left", "refute"
"""Normalised event kinds: a member became visible and alive, was suspected, was marked
failed (meshnode: dead), left; or the node refuted a suspicion about itself."""

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- processes and logs


@dataclass(frozen=True, slots=True)
class Event:
    """One membership line of one node's log."""

    at: float
    """``time.monotonic()`` when the line reached this process."""
    kind: str
    subject: str
    """The member it is about: a serf node name or a meshnode short id (for ``refute``,
    the node itself)."""


@dataclass
class Node:
    """One agent process."""

    name: str
    proc: subprocess.Popen[bytes]
    launched_at: float
    key: str = ""
    """How other nodes' logs name this node (serf: its name; meshnode: its short id)."""
    address: str = ""
    """Gossip address ``host:port`` (meshnode: HTTP API too)."""
    rpc: str = ""
    """serf's RPC address."""
    node_id: str = ""
    ready_at: float | None = None
    killed_at: float | None = None
    events: list[Event] = field(default_factory=list)
    errors: int = 0
    """Error-level log lines and tracebacks."""
    log_file: IO[bytes] | None = None

    @property
    def alive(self) -> bool:
        return self.killed_at is None and self.proc.poll() is None


LineHandler = Callable[[bytes, float], None]


class LogPump:
    """Reads the pipes of many processes on one thread and stamps each line on arrival."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._pending: queue.SimpleQueue[tuple[int, LineHandler]] = queue.SimpleQueue()
        self._open: set[int] = set()
        self._lock = threading.Lock()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="log-pump", daemon=True)
        self._thread.start()

    def watch(self, fd: int, handler: LineHandler) -> None:
        """Read ``fd`` until end of file, calling ``handler(line, arrival)`` per line."""
        with self._lock:
            self._open.add(fd)
        self._pending.put((fd, handler))
        os.write(self._wake_w, b"w")

    def idle(self) -> bool:
        """True once every watched pipe reached end of file."""
        with self._lock:
            return not self._open

    def stop(self, timeout: float) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"s")
        self._thread.join(timeout)
        self._selector.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _run(self) -> None:
        buffers: dict[int, bytes] = {}
        while not self._stopping:
            for key, _ in self._selector.select(timeout=0.5):
                if key.data is None:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 4096)
                    self._register_pending(buffers)
                    continue
                self._read(key.fd, key.data, buffers)

    def _register_pending(self, buffers: dict[int, bytes]) -> None:
        while True:
            try:
                fd, handler = self._pending.get_nowait()
            except queue.Empty:
                return
            os.set_blocking(fd, False)
            self._selector.register(fd, selectors.EVENT_READ, handler)
            buffers[fd] = b""

    def _read(self, fd: int, handler: LineHandler, buffers: dict[int, bytes]) -> None:
        try:
            chunk = os.read(fd, 65_536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        now = time.monotonic()
        if not chunk:
            self._selector.unregister(fd)
            rest = buffers.pop(fd, b"")
            if rest:
                self._call(handler, rest, now)
            with self._lock:
                self._open.discard(fd)
            return
        *lines, buffers[fd] = (buffers[fd] + chunk).split(b"\n")
        for line in lines:
            self._call(handler, line, now)

    @staticmethod
    def _call(handler: LineHandler, line: bytes, now: float) -> None:
        try:
            handler(line, now)
        except Exception as exc:  # a malformed line must not stop the reader
            log(f"log reader: {type(exc).__name__}: {exc}")


def free_port(udp_too: bool) -> int:
    """A port free on 127.0.0.1 for TCP (and UDP when ``udp_too``) right now."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            if not udp_too:
                return port
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port on 127.0.0.1")


def _pdeathsig_prefix() -> list[str]:
    """``setpriv --pdeathsig KILL`` (children die with this script) where available."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return []
    try:
        out = subprocess.run(
            [setpriv, "--help"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return [setpriv, "--pdeathsig", "KILL"] if "--pdeathsig" in out.stdout else []


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process group led by ``proc`` (each child is started in its own)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


# ---------------------------------------------------------------------- /proc sampling


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def pss_uss_bytes(pid: int) -> tuple[int, int]:
    """``(PSS, USS)``: proportional and private resident memory of ``pid``."""
    values: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
                values[parts[0][:-1]] = int(parts[1]) * 1024
    uss = values.get("Private_Clean", 0) + values.get("Private_Dirty", 0)
    return values.get("Pss", 0), uss


def machine_cpu_ticks() -> tuple[int, int]:
    """``(busy, total)`` jiffies of the whole machine, from ``/proc/stat``."""
    first = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(x) for x in first[:8]]
    idle = ticks[3] + ticks[4]
    return sum(ticks) - idle, sum(ticks)


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ---------------------------------------------------------------------- clusters


def _wait(what: str, deadline: float, check: Callable[[], bool]) -> None:
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(CHECK_INTERVAL)


def _summary(values: Sequence[float], digits: int = 3) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "median": None, "min": None, "max": None}
    return {
        "mean": round(statistics.fmean(values), digits),
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }


class Cluster:
    """N agent processes of one system on 127.0.0.1, and what their logs say."""

    system = ""
    prefix = ""
    suspect_is_visible = True
    """Whether a suspicion changes the member's reported state (meshnode: ``suspect``;
    serf keeps reporting ``alive`` until the member fails)."""

    def __init__(self, n: int, workdir: Path, deathsig: list[str]) -> None:
        self.n = n
        self.workdir = workdir
        self.deathsig = deathsig
        self.nodes: list[Node] = []
        self.failed_starts: list[Node] = []
        self.pump = LogPump()
        self.started_at = time.monotonic()
        self.seed_uss: int | None = None
        """Private memory (bytes) of the first node once it finished starting up."""
        self.join_samples: list[dict[str, float]] = []
        """One entry per measured join (:meth:`measured_join`)."""
        workdir.mkdir(parents=True, exist_ok=True)

    # -- to implement per system

    def command(self, index: int, seed: Node | None) -> list[str]:
        raise NotImplementedError

    def on_line(self, node: Node, line: str, at: float) -> None:
        raise NotImplementedError

    def query(self, node: Node) -> dict[str, str]:
        """Ask ``node`` for its members: ``{name: alive|suspect|failed|left}``, itself
        excluded."""
        raise NotImplementedError

    def prepare(self, index: int) -> None:
        """Set-up before a node's launch attempt (ports, directories)."""

    def diagnostics(self) -> dict[str, Any]:
        return {}

    # -- processes

    def launch(self, index: int, seed: Node | None) -> Node:
        name = f"{self.prefix}{index}"
        last = ""
        for attempt in range(1, START_ATTEMPTS + 1):
            self.check_memory(name)
            self.prepare(index)
            node = self._spawn(name, self.command(index, seed))
            deadline = time.monotonic() + START_TIMEOUT
            while node.ready_at is None and node.proc.poll() is None:
                if time.monotonic() > deadline:
                    kill_group(node.proc)
                    raise TimeoutError(f"{self.system} {name} not ready in {START_TIMEOUT} s")
                time.sleep(0.01)
            if node.ready_at is not None:
                return node
            last = f"exit status {node.proc.returncode}"
            log(f"  {name} exited before it was ready ({last}), attempt {attempt}")
            self.nodes.remove(node)
            self.failed_starts.append(node)  # its pipes are closed with the others
        raise RuntimeError(f"{self.system} {name} did not start ({last}); see {self.workdir}")

    def _spawn(self, name: str, cmd: list[str]) -> Node:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        proc = subprocess.Popen(
            [*self.deathsig, *cmd],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=REPO,
            env=env,
            start_new_session=True,
        )
        node = Node(name, proc, time.monotonic())
        node.log_file = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115  (closed in close())
        self.nodes.append(node)
        assert proc.stdout is not None and proc.stderr is not None
        for stream in (proc.stdout, proc.stderr):
            self.pump.watch(stream.fileno(), self._handler(node))
        return node

    def _handler(self, node: Node) -> LineHandler:
        def handle(raw: bytes, at: float) -> None:
            if node.log_file is not None and not node.log_file.closed:
                node.log_file.write(raw + b"\n")
            self.on_line(node, raw.decode("utf-8", "replace"), at)

        return handle

    def start(self, joins: int) -> dict[str, float]:
        """Start node 0, then the others one by one, each joining through node 0. The
        last ``joins`` of them are measured joins (:meth:`measured_join`)."""
        seed = self.launch(0, None)
        self.preflight(seed)
        first_measured = max(1, self.n - joins)
        for i in range(1, self.n):
            if i < first_measured:
                self.launch(i, seed)
            else:
                self.join_samples.append(self.measured_join(i, seed))
        first, last = self.nodes[0], self.nodes[-1]
        assert first.ready_at is not None and last.ready_at is not None
        return {"last_launched_at": last.launched_at, "last_ready_at": last.ready_at}

    def check_memory(self, name: str) -> None:
        """Refuse to start ``name`` unless ``MEMORY_FLOOR`` stays available once every
        running node has grown to the first node's size (nodes load models after start)."""
        available = mem_available()
        growth = 0
        if self.seed_uss is not None:
            for node in self.live():
                growth += max(0, self.seed_uss - pss_uss_bytes(node.proc.pid)[1])
        if available - growth < MEMORY_FLOOR:
            raise RuntimeError(
                f"memory guard: {available / 10**9:.1f} GB available, "
                f"{growth / 10**9:.1f} GB still to be taken by starting nodes; "
                f"keeping {MEMORY_FLOOR / 10**9:.0f} GB free, so not starting {name}"
            )

    def preflight(self, seed: Node) -> None:
        """Once the first node has finished starting up, refuse to start N of them if
        their private memory would not fit in what the machine has available."""
        self.wait_quiet([seed], SETTLE_MAX_S)
        _, uss = pss_uss_bytes(seed.proc.pid)
        needed = uss * (self.n - 1) + MEMORY_FLOOR
        self.seed_uss = uss
        if mem_available() < needed:
            raise RuntimeError(
                f"memory guard: {self.n} nodes of {uss / MB:.0f} MB private memory each "
                f"need {needed / 10**9:.1f} GB, {mem_available() / 10**9:.1f} GB available"
            )

    def wait_quiet(self, nodes: Sequence[Node], limit: float) -> dict[str, Any]:
        """Until every node in ``nodes`` uses under ``QUIET_CPU_PCT`` (at most ``limit`` s)."""
        started = time.monotonic()
        busiest = 0.0
        while True:
            self.check_running()
            pids = [node.proc.pid for node in nodes]
            before = [cpu_seconds(pid) for pid in pids]
            t0 = time.monotonic()
            time.sleep(QUIET_SAMPLE_S)
            elapsed = time.monotonic() - t0
            used = [cpu_seconds(pid) - b for pid, b in zip(pids, before, strict=True)]
            busiest = 100.0 * max(used) / elapsed
            waited = time.monotonic() - started
            if busiest < QUIET_CPU_PCT or waited >= limit:
                return {
                    "quiet_wait_s": round(waited, 1),
                    "quiet": busiest < QUIET_CPU_PCT,
                    "busiest_node_pct_at_end": round(busiest, 2),
                }

    def close(self) -> None:
        every = [*self.nodes, *self.failed_starts]
        for node in every:
            kill_group(node.proc)
        deadline = time.monotonic() + STOP_TIMEOUT
        for node in every:
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.proc.wait(max(0.1, deadline - time.monotonic()))
        with contextlib.suppress(TimeoutError):
            _wait("the log reader", deadline, self.pump.idle)
        self.pump.stop(STOP_TIMEOUT)
        for node in every:
            for stream in (node.proc.stdout, node.proc.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
            if node.log_file is not None:
                node.log_file.close()

    def check_running(self) -> None:
        for node in self.nodes:
            if node.killed_at is None and node.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.system} {node.name} exited unexpectedly "
                    f"(status {node.proc.returncode}); see {self.workdir}"
                )

    # -- views from the logs

    def name_of(self, key: str) -> str:
        for node in self.nodes:
            if node.key == key:
                return node.name
        return key

    def log_view(self, node: Node) -> dict[str, tuple[str, float]]:
        """``{subject key: (state, since)}`` as ``node``'s log tells, itself excluded."""
        view: dict[str, tuple[str, float]] = {}
        for event in list(node.events):
            if event.subject == node.key or event.kind == REFUTE:
                continue
            if event.kind == JOIN:
                view[event.subject] = ("alive", event.at)
            elif event.kind == SUSPECT:
                if self.suspect_is_visible:
                    view[event.subject] = ("suspect", event.at)
            elif event.kind == FAILED:
                view[event.subject] = ("failed", event.at)
            elif event.kind == LEFT:
                view[event.subject] = ("left", event.at)
        return view

    def live(self) -> list[Node]:
        return [node for node in self.nodes if node.killed_at is None]

    # -- phases

    def measured_join(self, index: int, seed: Node) -> dict[str, float]:
        """Launch node ``index`` into a quiet cluster and time its join.

        First every running node must see every other one alive (by the logs), then
        ``JOIN_GAP_S`` pass so the previous join's retransmissions are over. The join
        lasts from the new node's ready line until every earlier node has logged it alive
        and it has logged every earlier node alive."""
        earlier = self.live()
        _wait(
            f"{self.system} N={len(earlier)} to converge before a measured join",
            time.monotonic() + JOIN_TIMEOUT,
            lambda: self._sees_all(earlier),
        )
        time.sleep(JOIN_GAP_S)  # a deliberate gap between samples, not a synchronisation
        node = self.launch(index, seed)
        assert node.ready_at is not None
        _wait(
            f"{self.system} {node.name} to be seen by all",
            node.ready_at + JOIN_TIMEOUT,
            lambda: self._sees_all([*earlier, node]),
        )
        seen_at = max(self.log_view(other)[node.key][1] for other in earlier)
        sees_at = max(since for _, since in self.log_view(node).values())
        return {
            "join_s": round(max(seen_at, sees_at) - node.ready_at, 3),
            "seen_by_all_s": round(seen_at - node.ready_at, 3),
            "sees_all_s": round(sees_at - node.ready_at, 3),
        }

    def _sees_all(self, nodes: Sequence[Node]) -> bool:
        """Whether, by the logs, each of ``nodes`` sees every other one alive."""
        self.check_running()
        for node in nodes:
            view = self.log_view(node)
            for other in nodes:
                if other is not node and view.get(other.key, ("",))[0] != "alive":
                    return False
        return True

    def wait_join(self, start: dict[str, float]) -> dict[str, Any]:
        """Until every node sees every other one alive, by the logs, then confirmed."""
        nodes = self.live()
        deadline = start["last_ready_at"] + JOIN_TIMEOUT
        converged_at = 0.0

        def by_logs() -> bool:
            nonlocal converged_at
            self.check_running()
            latest = 0.0
            for node in nodes:
                view = self.log_view(node)
                keys = {k for k, (state, _) in view.items() if state == "alive"}
                if keys != {other.key for other in nodes if other is not node}:
                    return False
                latest = max([latest, *(since for _, since in view.values())])
            converged_at = latest
            return True

        def confirmed() -> bool:
            return by_logs() and self._all_see(nodes, nodes, {"alive"})

        _wait(f"{self.system} N={self.n} to converge", deadline, confirmed)
        confirmed_at = time.monotonic()
        samples = [sample["join_s"] for sample in self.join_samples]
        return {
            "join_s": round(statistics.median(samples), 3) if samples else None,
            "joins_measured": len(samples),
            "join_samples_s": samples,
            "join_samples": self.join_samples,
            "last_join_s": round(converged_at - start["last_ready_at"], 3),
            "join_confirmed_s": round(confirmed_at - start["last_ready_at"], 3),
            "join_from_launch_s": round(converged_at - start["last_launched_at"], 3),
            "start_all_s": round(start["last_ready_at"] - self.started_at, 3),
        }

    def _all_see(
        self, observers: Iterable[Node], subjects: Iterable[Node], states: set[str]
    ) -> bool:
        subjects = list(subjects)
        for observer in observers:
            try:
                view = self.query(observer)
            except (OSError, ValueError, KeyError, EOFError, http.client.HTTPException):
                return False
            for subject in subjects:
                if subject is not observer and view.get(subject.name) not in states:
                    return False
        return True

    def measure_idle(self, settle: float, window: float) -> dict[str, Any]:
        """CPU and memory of every node over ``window`` seconds after ``settle``."""
        self.check_running()
        time.sleep(settle)  # a measurement window, not a synchronisation
        nodes = self.live()
        quiet = self.wait_quiet(nodes, SETTLE_MAX_S)
        pids = [node.proc.pid for node in nodes]
        busy0, total0 = machine_cpu_ticks()
        cpu0 = [cpu_seconds(pid) for pid in pids]
        t0 = time.monotonic()
        rss_max = [rss_bytes(pid) for pid in pids]
        end = t0 + window
        while (now := time.monotonic()) < end:
            time.sleep(min(1.0, end - now))
            rss_max = [max(a, rss_bytes(pid)) for a, pid in zip(rss_max, pids, strict=True)]
        cpu1 = [cpu_seconds(pid) for pid in pids]
        elapsed = time.monotonic() - t0
        busy1, total1 = machine_cpu_ticks()
        self.check_running()
        pss_uss = [pss_uss_bytes(pid) for pid in pids]
        cpu_pct = [100.0 * (b - a) / elapsed for a, b in zip(cpu0, cpu1, strict=True)]
        return {
            "window_s": round(elapsed, 2),
            "cpu_pct_per_node": _summary(cpu_pct, 3),
            "cpu_pct_all_nodes": round(sum(cpu_pct), 3),
            "rss_mb_per_node": _summary([r / MB for r in rss_max], 1),
            "pss_mb_per_node": _summary([p / MB for p, _ in pss_uss], 1),
            "uss_mb_per_node": _summary([u / MB for _, u in pss_uss], 1),
            "machine_busy_pct": round(100.0 * (busy1 - busy0) / max(1, total1 - total0), 1),
            "per_node": {
                node.name: {"cpu_pct": round(c, 3), "rss_mb": round(r / MB, 1)}
                for node, c, r in zip(nodes, cpu_pct, rss_max, strict=True)
            },
            "loadavg": loadavg(),
            "settle": {"minimum_s": settle, **quiet},
        }

    def kill_and_detect(self, victim: Node) -> dict[str, Any]:
        """SIGKILL ``victim``; wait until every survivor marks it failed."""
        self.check_running()
        victim.killed_at = time.monotonic()
        kill_group(victim.proc)
        with contextlib.suppress(subprocess.TimeoutExpired):
            victim.proc.wait(STOP_TIMEOUT)
        killed_at = victim.killed_at
        survivors = self.live()
        failed_at: dict[str, float] = {}

        def by_logs() -> bool:
            self.check_running()
            for node in survivors:
                if node.name in failed_at:
                    continue
                for event in list(node.events):
                    if (
                        event.kind == FAILED
                        and event.subject == victim.key
                        and event.at >= killed_at
                    ):
                        failed_at[node.name] = event.at
                        break
            return len(failed_at) == len(survivors)

        def confirmed() -> bool:
            return by_logs() and self._all_see(survivors, [victim], {"failed"})

        _wait(f"{self.system} N={self.n} to detect the kill", killed_at + DETECT_TIMEOUT, confirmed)
        confirmed_at = time.monotonic()
        suspected = [
            e.at
            for node in survivors
            for e in list(node.events)
            if e.kind == SUSPECT and e.subject == victim.key and e.at >= killed_at
        ]
        per_node = [at - killed_at for at in failed_at.values()]
        first_suspect = min(suspected) - killed_at if suspected else None
        return {
            "victim": victim.name,
            "detect_s": round(max(per_node), 3),
            "first_suspect_s": None if first_suspect is None else round(first_suspect, 3),
            "first_failed_s": round(min(per_node), 3),
            "suspect_to_first_failed_s": (
                None if first_suspect is None else round(min(per_node) - first_suspect, 3)
            ),
            "median_failed_s": round(statistics.median(per_node), 3),
            "detect_confirmed_s": round(confirmed_at - killed_at, 3),
        }

    def false_positives(self) -> dict[str, Any]:
        """Suspicions and failures about nodes alive at the time, in every node's log."""
        killed = {node.key: node.killed_at for node in self.nodes if node.killed_at is not None}
        counts = {SUSPECT: 0, FAILED: 0, LEFT: 0, REFUTE: 0}
        subjects: dict[str, set[str]] = {SUSPECT: set(), FAILED: set(), LEFT: set()}
        for node in self.nodes:
            for event in list(node.events):
                if event.kind == REFUTE:
                    counts[REFUTE] += 1
                    continue
                if event.kind not in subjects:
                    continue
                killed_at = killed.get(event.subject)
                if killed_at is None or event.at < killed_at:
                    counts[event.kind] += 1
                    subjects[event.kind].add(self.name_of(event.subject))
        return {
            "suspect_events": counts[SUSPECT],
            "failed_events": counts[FAILED],
            "suspected_nodes": sorted(subjects[SUSPECT]),
            "failed_nodes": sorted(subjects[FAILED]),
            "left_events": counts[LEFT],
            "refutations": counts[REFUTE],
            "log_errors": sum(node.errors for node in self.nodes),
        }


class SerfCluster(Cluster):
    """``serf agent`` processes (default LAN profile), queried over their msgpack RPC."""

    system = "serf"
    prefix = "s"
    suspect_is_visible = False

    _JOIN = re.compile(r"serf: EventMemberJoin: (\S+)")
    _FAILED = re.compile(r"serf: EventMemberFailed: (\S+)")
    _LEFT = re.compile(r"serf: EventMemberLeave: (\S+)")
    _SUSPECT = re.compile(r"memberlist: Suspect (\S+) has failed")
    _REFUTE = re.compile(r"memberlist: Refuting a (?:suspect|dead) message")

    def __init__(self, n: int, workdir: Path, deathsig: list[str], binary: str) -> None:
        super().__init__(n, workdir, deathsig)
        self.binary = binary
        self._ports: dict[int, tuple[int, int]] = {}

    def prepare(self, index: int) -> None:
        self._ports[index] = (free_port(udp_too=True), free_port(udp_too=False))

    def command(self, index: int, seed: Node | None) -> list[str]:
        port, rpc = self._ports[index]
        cmd = [
            self.binary,
            "agent",
            f"-node={self.prefix}{index}",
            f"-bind=127.0.0.1:{port}",
            f"-rpc-addr=127.0.0.1:{rpc}",
            "-profile=lan",
            "-log-level=info",
        ]
        if seed is not None:
            cmd.append(f"-join={seed.address}")
        return cmd

    def _spawn(self, name: str, cmd: list[str]) -> Node:
        node = super()._spawn(name, cmd)
        node.key = name
        port, rpc = self._ports[int(name[len(self.prefix) :])]
        node.address, node.rpc = f"127.0.0.1:{port}", f"127.0.0.1:{rpc}"
        return node

    def on_line(self, node: Node, line: str, at: float) -> None:
        if node.ready_at is None and (
            "==> Joining cluster" in line
            or ("==> Serf agent running" in line and node.name == f"{self.prefix}0")
        ):
            node.ready_at = at
            return
        if "[ERR]" in line:
            node.errors += 1
        for pattern, kind in (
            (self._JOIN, JOIN),
            (self._FAILED, FAILED),
            (self._SUSPECT, SUSPECT),
            (self._LEFT, LEFT),
        ):
            match = pattern.search(line)
            if match:
                node.events.append(Event(at, kind, match.group(1)))
                return
        if self._REFUTE.search(line):
            node.events.append(Event(at, REFUTE, node.key))

    def query(self, node: Node) -> dict[str, str]:
        members = serf_members(node.rpc)
        return {name: status for name, status in members.items() if name != node.name}


def serf_members(rpc: str) -> dict[str, str]:
    """``{name: status}`` from serf's RPC ``members`` command (handshake, then members)."""
    host, port = rpc.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=QUERY_TIMEOUT) as sock:
        sock.settimeout(QUERY_TIMEOUT)
        unpacker = msgpack.Unpacker(raw=True)

        def read() -> Any:
            while True:
                for obj in unpacker:
                    return obj
                data = sock.recv(65_536)
                if not data:
                    raise EOFError("serf RPC closed the connection")
                unpacker.feed(data)

        def call(seq: int, command: str, body: dict[str, Any] | None) -> None:
            payload = msgpack.packb({"Command": command, "Seq": seq})
            if body is not None:
                payload += msgpack.packb(body)
            sock.sendall(payload)
            header = read()
            error = header.get(b"Error", b"")
            if error:
                raise ValueError(f"serf RPC {command}: {error.decode('utf-8', 'replace')}")

        call(0, "handshake", {"Version": 1})
        call(1, "members", None)
        body = read()
    return {
        m[b"Name"].decode("utf-8", "replace"): m[b"Status"].decode("utf-8", "replace")
        for m in body[b"Members"]
    }


MESHNODE_KINDS: dict[str, str] = {
    "member_joined": JOIN,
    "member_recovered": JOIN,
    "member_suspected": SUSPECT,
    "member_died": FAILED,
    "member_left": LEFT,
}
"""meshnode log events about peers, by normalised kind."""
MESHNODE_STATES = {"alive": "alive", "suspect": "suspect", "dead": "failed", "left": "left"}
"""meshnode member states in the normalised vocabulary."""


class MeshnodeCluster(Cluster):
    """``meshnode run --profile lan`` processes, queried with ``GET /v1/members``."""

    system = "meshnode"
    prefix = "m"
    suspect_is_visible = True

    def __init__(
        self,
        n: int,
        workdir: Path,
        deathsig: list[str],
        embedder: str,
        admission_flags: Sequence[str] = (),
        authority: Any = None,
        bare_odd: bool = False,
    ) -> None:
        super().__init__(n, workdir, deathsig)
        self.bare_odd = bare_odd
        """Odd-numbered nodes run with metrics and tracing off (``--observability
        mixed``), so both halves are measured in the same window."""
        self._names: dict[str, str] = {}
        self.embedder = embedder
        self.admission_flags = list(admission_flags)
        """Extra ``meshnode run`` flags for every node: the keyring."""
        self.authority = authority
        """A mesh authority's key (``protocol.Identity``): each node gets an identity in its
        data dir and a certificate signed by it (``--authority``/``--cert``); None: none."""

    def command(self, index: int, seed: Node | None) -> list[str]:
        data_dir = self.workdir / f"{self.prefix}{index}"
        shutil.rmtree(data_dir, ignore_errors=True)
        cmd = [
            sys.executable,
            "-m",
            "meshnode.cli",
            "run",
            "--port",
            "0",
            "--name",
            f"{self.prefix}{index}",
            "--data-dir",
            str(data_dir),
            "--profile",
            "lan",
            "--log-level",
            "INFO",
            "--json-logs",
        ]
        if self.embedder != "default":
            cmd += ["--embedder", self.embedder]
        cmd += self.admission_flags
        if self.bare_odd and index % 2 == 1:
            cmd += NO_OBSERVABILITY_FLAGS
        if self.authority is not None:
            cmd += certificate_flags(self.authority, data_dir, index)
        if seed is not None:
            cmd += ["--seed", seed.address]
        return cmd

    def on_line(self, node: Node, line: str, at: float) -> None:
        if not line.startswith("{"):
            if line.startswith("Traceback"):
                node.errors += 1
            return
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            return
        event = record.get("event")
        if event == "listening" and node.ready_at is None:
            node.node_id, node.address = str(record["node_id"]), str(record["address"])
            node.key = short_id(node.node_id)
            self._names[node.node_id] = node.name
            node.ready_at = at
            return
        if record.get("level") in ("error", "critical"):
            node.errors += 1
        kind = MESHNODE_KINDS.get(str(event))
        if kind is not None and "peer" in record:
            node.events.append(Event(at, kind, str(record["peer"])))
        elif event == "refuted_suspicion":
            node.events.append(Event(at, REFUTE, node.key))

    def _get(self, node: Node, path: str) -> Any:
        url = f"http://{node.address}{path}"
        with urllib.request.urlopen(url, timeout=QUERY_TIMEOUT) as resp:
            return json.loads(resp.read())

    def query(self, node: Node) -> dict[str, str]:
        out: dict[str, str] = {}
        for member in self._get(node, "/v1/members")["members"]:
            name = self._names.get(member["node_id"])
            if name is not None and name != node.name:
                out[name] = MESHNODE_STATES.get(member["state"], member["state"])
        return out

    def diagnostics(self) -> dict[str, Any]:
        """Lifeguard's local health score and UDP drops of every survivor."""
        scores: list[int] = []
        dropped: dict[str, int] = {}
        for node in self.live():
            try:
                health = self._get(node, "/v1/health")
            except (OSError, ValueError, http.client.HTTPException):
                continue
            scores.append(int(health.get("local_health", 0)))
            for reason, count in health.get("dropped", {}).items():
                dropped[reason] = dropped.get(reason, 0) + int(count)
        return {
            "local_health_max": max(scores, default=None),
            "local_health_nonzero_nodes": sum(1 for s in scores if s > 0),
            "udp_dropped": dropped,
        }


# ---------------------------------------------------------------------- one scenario


def summarize_detections(detections: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the kills (each kill is one sample of a noisy, random process)."""

    def median(key: str) -> float | None:
        values = [d[key] for d in detections if d[key] is not None]
        return round(statistics.median(values), 3) if values else None

    return {
        "detect_s": median("detect_s"),
        "detect_s_max": max(d["detect_s"] for d in detections),
        "first_suspect_s": median("first_suspect_s"),
        "suspect_to_first_failed_s": median("suspect_to_first_failed_s"),
        "kills": detections,
    }


def run_scenario(
    cluster: Cluster, settle: float, idle: float, kills: int, joins: int
) -> dict[str, Any]:
    """Join, idle, then ``kills`` times kill and detect — on ``cluster``, which is closed
    on the way out."""
    result: dict[str, Any] = {"n": cluster.n, "error": None}
    try:
        log(f"{cluster.system} N={cluster.n}: starting {cluster.n} nodes")
        start = cluster.start(joins)
        result["join"] = cluster.wait_join(start)
        log(f"  converged: {result['join']}")
        result["idle"] = cluster.measure_idle(settle, idle)
        idle_result = result["idle"]
        log(f"  idle: cpu {idle_result['cpu_pct_per_node']} rss {idle_result['rss_mb_per_node']}")
        detections: list[dict[str, Any]] = []
        for k in range(min(kills, cluster.n - cluster.n // 2)):
            detections.append(cluster.kill_and_detect(cluster.nodes[cluster.n // 2 + k]))
            log(f"  detection: {detections[-1]}")
            time.sleep(AFTER_DETECT_S)  # an observation window for late false positives
            cluster.check_running()
        result["detection"] = summarize_detections(detections)
        result["diagnostics"] = cluster.diagnostics()
    except (TimeoutError, RuntimeError, OSError) as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        log(f"  error: {result['error']}")
    finally:
        uss = cluster.seed_uss
        result["first_node_uss_mb"] = None if uss is None else round(uss / MB, 1)
        result["false_positives"] = cluster.false_positives()
        log(f"  false positives: {result['false_positives']}")
        cluster.close()
    return result


def _get(result: dict[str, Any] | None, *path: str) -> Any:
    value: Any = result
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _ratio(mine: Any, theirs: Any) -> float | None:
    if not isinstance(mine, int | float) or not isinstance(theirs, int | float) or theirs <= 0:
        return None
    return round(mine / theirs, 3)


def compare(mesh: dict[str, Any], serf: dict[str, Any] | None) -> dict[str, Any]:
    """Ratios (meshnode / serf) and goal booleans for one cluster size."""
    mesh_join = _get(mesh, "join", "join_s")
    mesh_detect = _get(mesh, "detection", "detect_s")
    mesh_cpu = _get(mesh, "idle", "cpu_pct_per_node", "mean")
    mesh_rss = _get(mesh, "idle", "rss_mb_per_node", "max")
    serf_join = _get(serf, "join", "join_s")
    serf_detect = _get(serf, "detection", "detect_s")
    serf_cpu = _get(serf, "idle", "cpu_pct_per_node", "mean")
    ratios = {
        "join": _ratio(mesh_join, serf_join),
        "detect": _ratio(mesh_detect, serf_detect),
        "idle_cpu_per_node": _ratio(mesh_cpu, serf_cpu),
        "rss_per_node": _ratio(
            _get(mesh, "idle", "rss_mb_per_node", "mean"),
            _get(serf, "idle", "rss_mb_per_node", "mean"),
        ),
    }

    def versus(mine: Any, theirs: Any, factor: float) -> bool | None:
        if not isinstance(theirs, int | float):
            return None  # no baseline
        if not isinstance(mine, int | float):
            return False  # meshnode did not get that far
        return bool(mine <= factor * theirs)

    fp = mesh["false_positives"]
    goals = {
        "join_no_slower_than_serf": versus(mesh_join, serf_join, 1.0),
        "detection_within_1_1x_serf": versus(mesh_detect, serf_detect, GOAL_DETECT_RATIO),
        "zero_false_positives": mesh["error"] is None
        and fp["suspect_events"] == 0
        and fp["failed_events"] == 0,
        "idle_cpu_at_most_3x_serf": versus(mesh_cpu, serf_cpu, GOAL_CPU_RATIO),
        "rss_at_most_60mb": isinstance(mesh_rss, int | float) and mesh_rss <= GOAL_RSS_MB,
    }
    return {"ratios": ratios, "goals": goals}


ENCRYPTION_CPU_GOAL = 1.10
"""Most idle CPU per node the sealed run may use, as a multiple of the clear run's."""


def keyring_flags(workdir: Path) -> list[str]:
    """``meshnode run`` flags putting every node on one fresh keyring in ``workdir``."""
    from meshnode.runtime.store import save_keyring
    from protocol.keyring import Keyring

    path = workdir / "bench.keyring.json"
    workdir.mkdir(parents=True, exist_ok=True)
    save_keyring(path, Keyring.new("bench"))
    return ["--keyring", str(path)]


CERTIFICATE_S = 86_400.0
"""Validity of the benchmark nodes' certificates, seconds."""


def certificate_flags(authority: Any, data_dir: Path, index: int) -> list[str]:
    """Create a node's identity in ``data_dir`` and a certificate for it signed by
    ``authority``; return the ``meshnode run`` flags that use them."""
    from meshnode.runtime.store import KEY_FILE, save_certificate, save_identity
    from protocol import Identity
    from protocol.certificate import issue_certificate

    identity = Identity.generate()
    save_identity(data_dir / KEY_FILE, identity)
    now = time.time()
    cert = issue_certificate(
        authority,
        identity.node_id,
        roles=("member",),
        name=f"m{index}",
        serial=index + 1,
        issued_at=now,
        expires_at=now + CERTIFICATE_S,
    )
    path = data_dir.with_suffix(".cert")
    save_certificate(path, cert.signed)
    return ["--authority", authority.node_id, "--cert", str(path)]


def compare_encryption(clear: dict[str, Any], sealed: dict[str, Any]) -> dict[str, Any]:
    """The sealed meshnode run over the clear one, for one cluster size."""
    ratios = {
        "join": _ratio(_get(sealed, "join", "join_s"), _get(clear, "join", "join_s")),
        "detect": _ratio(
            _get(sealed, "detection", "detect_s"), _get(clear, "detection", "detect_s")
        ),
        "idle_cpu_per_node": _ratio(
            _get(sealed, "idle", "cpu_pct_per_node", "mean"),
            _get(clear, "idle", "cpu_pct_per_node", "mean"),
        ),
        "rss_per_node": _ratio(
            _get(sealed, "idle", "rss_mb_per_node", "mean"),
            _get(clear, "idle", "rss_mb_per_node", "mean"),
        ),
    }
    fp = sealed["false_positives"]
    cpu = ratios["idle_cpu_per_node"]
    return {
        "ratios_sealed_vs_clear": ratios,
        "goals": {
            "sealed_idle_cpu_at_most_1_1x_clear": None
            if cpu is None
            else cpu <= ENCRYPTION_CPU_GOAL,
            "sealed_zero_false_positives": sealed["error"] is None
            and fp["suspect_events"] == 0
            and fp["failed_events"] == 0,
        },
    }


OBSERVABILITY_GOAL = 1.10
"""Idle CPU and RSS per node with metrics and tracing on, at most this times off."""
NO_OBSERVABILITY_FLAGS = ["--no-metrics", "--no-tracing"]


def compare_observability(on: dict[str, Any], off: dict[str, Any]) -> dict[str, Any]:
    """The run with metrics and tracing on over the run with them off, for one size."""
    ratios = compare_encryption(off, on)["ratios_sealed_vs_clear"]
    cpu, rss = ratios["idle_cpu_per_node"], ratios["rss_per_node"]
    return {
        "ratios_on_vs_off": ratios,
        "goals": {
            "observability_idle_cpu_within_10pct": None
            if cpu is None
            else cpu <= OBSERVABILITY_GOAL,
            "observability_rss_within_10pct": None if rss is None else rss <= OBSERVABILITY_GOAL,
        },
    }


def compare_mixed(run: dict[str, Any]) -> dict[str, Any]:
    """``--observability mixed``: in one run, the even-numbered nodes (metrics and tracing
    on) against the odd-numbered ones (off), node 0 (the seed, which serves every join)
    left out; same machine, same window."""
    per_node = _get(run, "idle", "per_node") or {}
    on = [v for k, v in per_node.items() if int(k[1:]) % 2 == 0 and int(k[1:]) != 0]
    off = [v for k, v in per_node.items() if int(k[1:]) % 2 == 1]

    def mean(values: list[float]) -> float | None:
        return sum(values) / len(values) if values else None

    def median(values: list[float]) -> float | None:
        return statistics.median(values) if values else None

    figures = {
        side: {
            "nodes": len(group),
            "cpu_pct_mean": mean([v["cpu_pct"] for v in group]),
            "cpu_pct_median": median([v["cpu_pct"] for v in group]),
            "rss_mb_mean": mean([v["rss_mb"] for v in group]),
        }
        for side, group in (("on", on), ("off", off))
    }
    cpu = _ratio(figures["on"]["cpu_pct_mean"], figures["off"]["cpu_pct_mean"])
    cpu_median = _ratio(figures["on"]["cpu_pct_median"], figures["off"]["cpu_pct_median"])
    rss = _ratio(figures["on"]["rss_mb_mean"], figures["off"]["rss_mb_mean"])
    goal = OBSERVABILITY_GOAL
    return {
        "same_window": figures,
        "ratios_on_vs_off": {"idle_cpu_mean": cpu, "idle_cpu_median": cpu_median, "rss": rss},
        "goals": {
            "observability_idle_cpu_within_10pct": None if cpu is None else cpu <= goal,
            "observability_rss_within_10pct": None if rss is None else rss <= goal,
        },
    }


def overall(goals: Iterable[dict[str, bool | None]]) -> dict[str, bool | None]:
    """Per goal across sizes: False if any size fails, None if any lacks a baseline."""
    merged: dict[str, list[bool | None]] = {}
    for entry in goals:
        for name, value in entry.items():
            merged.setdefault(name, []).append(value)
    out: dict[str, bool | None] = {}
    for name, values in merged.items():
        if any(v is False for v in values):
            out[name] = False
        elif any(v is None for v in values):
            out[name] = None
        else:
            out[name] = True
    return out


# ---------------------------------------------------------------------- main


def serf_status(binary: str | None, skip: bool) -> dict[str, Any]:
    if skip:
        return {"available": False, "why": "--skip-serf given"}
    if binary is None:
        return {
            "available": False,
            "why": "no serf binary on PATH (Debian: apt-get install serf), or pass --serf",
        }
    try:
        out = subprocess.run(
            [binary, "version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return {"available": False, "why": f"{binary} version: {exc}"}
    if out.returncode != 0:
        return {"available": False, "why": f"{binary} version exited {out.returncode}"}
    version = out.stdout.strip().splitlines()[0] if out.stdout.strip() else "unknown"
    return {"available": True, "binary": binary, "version": version, "profile": "lan"}


def git_revision() -> dict[str, Any]:
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": head or None, "dirty": bool(dirty)}


@contextlib.contextmanager
def terminate_on_signals() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into SystemExit so every ``finally`` runs."""

    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def parse_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sizes {text!r}: expected e.g. 10,50") from None
    if not sizes or any(n < 3 for n in sizes):
        raise argparse.ArgumentTypeError("--sizes: every size must be at least 3")
    return sizes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the JSON here instead of stdout")
    parser.add_argument(
        "--sizes", type=parse_sizes, help="cluster sizes, comma-separated (default 10,50)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="N=10 only (unless --sizes), shorter idle window"
    )
    parser.add_argument(
        "--kills",
        type=int,
        choices=range(1, 10),
        metavar="K",
        help="nodes killed one after another per run, detection = median (default 3, quick 1;"
        " at most N - N // 2 per size)",
    )
    parser.add_argument(
        "--joins",
        type=int,
        choices=range(1, 21),
        metavar="J",
        help="measured joins per run, each into a quiet cluster, join = median (default 9,"
        " quick 3; at most N - 1)",
    )
    parser.add_argument("--skip-serf", action="store_true", help="run meshnode only")
    parser.add_argument("--serf", default=shutil.which("serf"), help="serf binary (default: PATH)")
    parser.add_argument(
        "--embedder",
        choices=("default", "auto", "minilm", "hashing"),
        default="default",
        help="meshnode run --embedder (default: not passed, i.e. auto, MiniLM when the "
        "semantic extra is installed; hashing: no model in memory)",
    )
    parser.add_argument("--logs", type=Path, help="keep every node's output in this directory")
    parser.add_argument(
        "--encryption",
        choices=("off", "on", "both", "all"),
        default="all",
        help="meshnode runs in clear (off), sealed under a keyring (on), both, or all "
        "(default: clear, sealed, and sealed with membership certificates)",
    )
    parser.add_argument(
        "--observability",
        choices=("on", "both", "mixed"),
        default="on",
        help="meshnode runs with metrics and tracing on (default); both: each variant once "
        "more with --no-metrics --no-tracing, compared; mixed: odd-numbered nodes off in "
        "the same run, compared within one idle window",
    )
    parser.add_argument(
        "--idle",
        type=float,
        metavar="S",
        help="idle window in seconds (default 20, quick 8); CPU is counted in 10 ms ticks, "
        "so comparing idle CPU within 10 %% needs a window of a minute or more",
    )
    args = parser.parse_args(argv)
    sizes: tuple[int, ...] = args.sizes or (QUICK_SIZES if args.quick else DEFAULT_SIZES)
    settle, idle = (QUICK_SETTLE_S, QUICK_IDLE_S) if args.quick else (SETTLE_S, IDLE_S)
    if args.idle is not None:
        idle = args.idle
    kills: int = args.kills or (QUICK_KILLS if args.quick else KILLS)
    joins: int = args.joins or (QUICK_JOINS if args.quick else JOINS)
    serf = serf_status(args.serf, args.skip_serf)
    deathsig = _pdeathsig_prefix()

    report: dict[str, Any] = {
        "benchmark": "membership",
        "started_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "loadavg_at_start": loadavg(),
            "meshnode": git_revision(),
        },
        "config": {
            "sizes": list(sizes),
            "quick": args.quick,
            "settle_s": settle,
            "idle_window_s": idle,
            "meshnode_profile": "lan",
            "meshnode_embedder": args.embedder,
            "meshnode_encryption": args.encryption,
            "meshnode_observability": args.observability,
            "kills": kills,
            "joins": joins,
            "join_gap_s": JOIN_GAP_S,
            "victims": "nodes N // 2, N // 2 + 1, ... one after another, SIGKILL",
            "units": "seconds, percent of one core, MB = 10^6 bytes",
        },
        "serf": serf,
        "results": [],
    }
    started = time.monotonic()
    logs_dir: Path | None = args.logs
    tmp: tempfile.TemporaryDirectory[str] | None = None
    if logs_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench-membership-")
        base = Path(tmp.name)
    else:
        base = logs_dir
    try:
        with terminate_on_signals():
            for n in sizes:
                entry: dict[str, Any] = {"n": n, "serf": None}
                if serf["available"]:
                    entry["serf"] = run_scenario(
                        SerfCluster(n, base / f"serf-{n}", deathsig, serf["binary"]),
                        settle,
                        idle,
                        kills,
                        joins,
                    )
                runs: dict[str, dict[str, Any]] = {}
                variants = {
                    "off": ("clear",),
                    "on": ("sealed",),
                    "both": ("clear", "sealed"),
                    "all": ("clear", "sealed", "certified"),
                }[args.encryption]
                if args.observability == "both":
                    variants = tuple(v for base_v in variants for v in (base_v, f"{base_v}-bare"))
                for variant in variants:
                    where = base / f"meshnode-{n}-{variant}"
                    flags = keyring_flags(where) if not variant.startswith("clear") else []
                    if variant.endswith("-bare"):
                        flags = [*flags, *NO_OBSERVABILITY_FLAGS]
                    authority = None
                    if variant.startswith("certified"):
                        from protocol import Identity

                        authority = Identity.generate()
                    runs[variant] = run_scenario(
                        MeshnodeCluster(
                            n,
                            where,
                            deathsig,
                            args.embedder,
                            flags,
                            authority=authority,
                            bare_odd=args.observability == "mixed",
                        ),
                        settle,
                        idle,
                        kills,
                        joins,
                    )
                entry["meshnode"] = runs.get("clear") or runs["sealed"]
                if "sealed" in runs:
                    entry["meshnode_sealed"] = runs["sealed"]
                entry.update(compare(entry["meshnode"], entry["serf"]))
                if args.observability == "mixed":
                    entry["observability"] = {v: compare_mixed(r) for v, r in runs.items()}
                    for v, found in entry["observability"].items():
                        entry["goals"].update({f"{v}_{k}": g for k, g in found["goals"].items()})
                bare = {v: r for v, r in runs.items() if v.endswith("-bare")}
                if bare:
                    entry["meshnode_bare"] = bare
                    entry["observability"] = {
                        v: compare_observability(runs[v], bare[f"{v}-bare"])
                        for v in runs
                        if f"{v}-bare" in bare
                    }
                    for v, found in entry["observability"].items():
                        entry["goals"].update({f"{v}_{k}": g for k, g in found["goals"].items()})
                if "clear" in runs and "sealed" in runs:
                    entry["encryption"] = compare_encryption(runs["clear"], runs["sealed"])
                    entry["goals"].update(entry["encryption"]["goals"])
                if "certified" in runs:
                    entry["meshnode_certified"] = runs["certified"]
                    if "clear" in runs:
                        both = compare_encryption(runs["clear"], runs["certified"])
                        entry["everything_on"] = both
                        entry["goals"].update(
                            {f"everything_on_{k}": v for k, v in both["goals"].items()}
                        )
                report["results"].append(entry)
    finally:
        if tmp is not None:
            tmp.cleanup()
    report["goals"] = overall(entry["goals"] for entry in report["results"])
    report["machine"]["loadavg_at_end"] = loadavg()
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    if logs_dir is not None:
        report["logs"] = str(logs_dir)

    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
        log(f"wrote {args.out}")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
