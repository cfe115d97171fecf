"""``meshnode demo``: start the research mesh, run one question, stop everything.

Theory of operation
-------------------
1. The table (the package's ``startups.csv`` or ``--csv``, any CSV with a header row) is
   read and checked first (:func:`load_table`: :data:`MAX_CSV_BYTES`, and the parser's
   row, column and cell limits, and a numeric column to measure); a refused file ends the
   run with a clear message and exit status :data:`EXIT_BAD_INPUT` before anything starts.
   A temporary directory holds one data directory per agent (its identity key and SQLite
   state) and the agents' logs. The data agent gets its own copy of the table, under the
   user's own file name (:func:`dataset_name`), and may read nothing else; the
   orchestrator gets another copy to check the data agent's figures against, and a job
   file.
2. Five ``meshnode run --agent ...`` processes start on 127.0.0.1, port 0, with the
   ``local`` timing profile, each in its own session. The data agent starts first; the
   address it prints is the seed, and the only address the other four are given. Each
   process prints its ``listening`` line (the orchestrator only once its semantic model is
   loaded: if that takes over :data:`MODEL_NOTICE_AFTER_S`, as on a first run that exports
   MiniLM, the view says so once); the orchestrator then prints one JSON line per
   step of its job. Before anything starts, the orchestrator's identity is created
   (in its data directory) and its node id given to the code agent
   (``MESHNODE_CODE_CALLERS``): ``run_python`` runs code for the orchestrator only, and
   answers anyone else ``rejected: forbidden``. The mesh is keyed: the runner creates a
   throw-away keyring and mesh authority, every agent's identity and a certificate for
   each (roles ``orchestrator`` or ``specialist``), and starts every process with
   ``--keyring``, ``--authority`` and ``--cert``; a process without them is not heard.
3. While the orchestrator works, the runner polls every node's ``/v1/health`` and the
   orchestrator's ``/v1/members`` and ``/v1/trust`` and redraws the view.
4. When the report is ready the runner waits (briefly, with a deadline) until every node
   holds the orchestrator's signed opinions — trust spreads by gossip — then reads each
   node's members and trust for the summary.
5. Every process gets SIGTERM (a node leaves the mesh gracefully), is waited for, and is
   killed with its process group if it outlives :data:`STOP_TIMEOUT_S`. The temporary
   directory is removed unless ``--keep``. This happens however the run ends: success,
   failure, timeout or Ctrl-C.

Only loopback is used, unless the user configures an MCP server (``--mcp-config``) or a
language model (``MESHNODE_LLM_URL``, and ``MESHNODE_LLM_KEY`` if it needs one, passed to
the orchestrator, which plans with it, and the writer only).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

from meshnode import MCP_CONFIG_ENV, SUCCESS_THRESHOLD
from meshnode.demo import guards, planner, stats
from meshnode.demo.agents import CODE_CALLERS_ENV, DATA_ROOT_ENV, DEMO_DATA_DIR
from meshnode.demo.live import DemoState, NodeView, TaskView, View, make_view
from meshnode.demo.orchestrator import JOB_ENV

__all__ = ["DEFAULT_QUERY", "AgentSpec", "DemoOptions", "run_demo"]

DEFAULT_QUERY = (
    "Which startup sectors and countries attract the most funding, and how has funding "
    "changed over the years?"
)
START_TIMEOUT_S = 60.0
"""Seconds a process may take to print its ``listening`` line."""
STOP_TIMEOUT_S = 10.0
"""Seconds a process may take to leave and exit after SIGTERM before it is killed."""
DEMO_CERTIFICATE_DAYS = 1.0
"""Validity of the demo agents' certificates, days (the mesh lives minutes, and its
authority key is deleted with the run's temporary directory)."""
DEMO_LABEL = "meshnode-demo"
"""The demo keyring's cluster label: its sealed traffic never mixes with another mesh's."""
POLL_INTERVAL_S = 0.5
"""How often the view asks the nodes' HTTP APIs for their state."""
MODEL_NOTICE_AFTER_S = 3.0
"""Seconds the orchestrator may take to listen before the demo says it is preparing its
semantic model (with MiniLM cached it listens in about a second)."""
MODEL_NOTICE = (
    "orchestrator: preparing its semantic model (MiniLM) for discovery; the first run "
    "exports and caches it, about 15 s, later runs take a second"
)
"""What the demo says, once, while the orchestrator prepares its model."""
MODEL_GRAPH_GLOB = "all-MiniLM-L6-v2-*.onnx"
"""File names of exported MiniLM graphs in the model cache."""
SPREAD_TIMEOUT_S = 5.0
"""Longest wait, after the report, for every node to hold the orchestrator's opinions."""
DATASET_NAME = "startups.csv"
"""The bundled table's file name."""
MAX_CSV_BYTES = guards.MAX_FETCH_BYTES
"""Largest ``--csv`` file accepted (bytes): what the data agent will read. Rows, columns
and cell length are bounded by :data:`~meshnode.demo.stats.MAX_ROWS`,
:data:`~meshnode.demo.stats.MAX_COLUMNS` and :data:`~meshnode.demo.stats.MAX_CELL_CHARS`."""
MAX_NAME_CHARS = 100
"""Longest file name kept for the agents' copy of ``--csv`` (longer names are cut)."""
EXIT_BAD_INPUT = 2
"""Exit status when the CSV is refused before anything starts."""


@dataclasses.dataclass(frozen=True, slots=True)
class AgentSpec:
    """One process of the demo."""

    name: str
    role: str
    agent: str
    """``MODULE:CLASS`` for ``meshnode run --agent``."""


AGENTS = (
    AgentSpec("data-agent", "data agent", "meshnode.demo.agents:DataAgent"),
    AgentSpec("orchestrator", "orchestrator", "meshnode.demo.orchestrator:ResearchOrchestrator"),
    AgentSpec("code-agent", "code agent", "meshnode.demo.agents:CodeAgent"),
    AgentSpec("writer-agent", "writer agent", "meshnode.demo.agents:WriterAgent"),
    AgentSpec("web-agent", "web-search agent", "meshnode.demo.agents:WebSearchAgent"),
)
"""The first one is the seed."""


@dataclasses.dataclass(frozen=True, slots=True)
class DemoOptions:
    query: str = DEFAULT_QUERY
    csv: Path | None = None
    """Any CSV with a header row and a numeric column (default: the package's
    ``startups.csv``)."""
    out: Path = Path("meshnode-demo-report.md")
    live: bool | None = None
    """True: rich view; False: plain lines; None: rich when stdout is a terminal."""
    json: bool = False
    keep: bool = False
    timeout_s: float = 90.0
    embedder: str = "auto"
    """The orchestrator's embedder (the specialists never discover)."""
    mcp_config: Path | None = None


class DemoError(Exception):
    """The demo could not complete."""


class DemoInputError(DemoError):
    """The CSV was refused before anything started."""


def model_cache_dir() -> Path:
    """Where nodes keep the exported MiniLM graph: ``$MESHNODE_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/meshnode``, else ``~/.cache/meshnode`` (the rule of the discovery
    layer's graph cache, which the demo may not import)."""
    explicit = os.environ.get("MESHNODE_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "meshnode"


def model_cached() -> bool:
    """True when the model cache holds an exported MiniLM graph (a node then loads it in
    about a second instead of exporting it, about 15 s)."""
    try:
        return any(model_cache_dir().glob(MODEL_GRAPH_GLOB))
    except OSError:
        return False


def dataset_name(path: Path) -> str:
    """The name the agents' copy of ``path`` gets: its own file name, with anything but
    letters, digits, ``.``, ``_`` and ``-`` replaced, at most :data:`MAX_NAME_CHARS`."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", path.name)[:MAX_NAME_CHARS].lstrip(".")
    return name or "data.csv"


def load_table(path: Path) -> tuple[stats.Table, planner.Schema]:
    """Read and check a CSV before any process starts: at most :data:`MAX_CSV_BYTES`,
    within the parser's row, column and cell limits, and with a numeric column to measure.
    :class:`DemoInputError` says what is wrong."""
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise DemoInputError(f"{path} is not a file")
        if size > MAX_CSV_BYTES:
            raise DemoInputError(
                f"{path} is {size} bytes; the demo reads CSV files up to {MAX_CSV_BYTES} bytes"
            )
        data = path.read_bytes()[: MAX_CSV_BYTES + 1]
    except OSError as exc:
        raise DemoInputError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_CSV_BYTES:
        raise DemoInputError(f"{path} grew over {MAX_CSV_BYTES} bytes while being read")
    try:
        table = stats.parse_csv(data)
    except ValueError as exc:
        raise DemoInputError(f"{path}: {exc}") from None
    if not table.rows:
        raise DemoInputError(f"{path} has a header but no rows")
    schema = planner.infer_schema(table, dataset_name(path))
    if not schema.of_kind("numeric"):
        raise DemoInputError(
            f"{path} has no numeric column to measure (columns: {schema.describe()})"
        )
    return table, schema


# --------------------------------------------------------------------------- processes


class _Agent:
    """One ``meshnode run`` child process."""

    def __init__(self, spec: AgentSpec, base: Path, view: NodeView) -> None:
        self.spec = spec
        self.dir = base / spec.name
        self.dir.mkdir(parents=True)
        self.log_path = base / f"{spec.name}.log"
        self.view = view
        self.proc: asyncio.subprocess.Process | None = None
        self.address = ""
        self.node_id = ""
        self.reader: asyncio.Task[None] | None = None
        self.admission: list[str] = []
        """``run`` flags for the keyring, the authority and this agent's certificate."""

    async def start(
        self,
        seeds: list[str],
        env: dict[str, str],
        embedder: str,
        on_line: Any,
        listening: asyncio.Future[None],
    ) -> None:
        cmd = [
            sys.executable,
            "-m",
            "meshnode.cli",
            "run",
            "--name",
            self.spec.name,
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--profile",
            "local",
            "--data-dir",
            str(self.dir / "state"),
            "--agent",
            self.spec.agent,
            "--embedder",
            embedder,
            "--log-level",
            "WARNING",
            "--json-logs",
            *self.admission,
        ]
        for seed in seeds:
            cmd += ["--seed", seed]
        log = self.log_path.open("ab")  # the child holds its own copy after the spawn
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *cmd,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                env=env,
                cwd=self.dir,
                start_new_session=True,
            )
        finally:
            log.close()
        self.view.pid = self.proc.pid
        self.reader = asyncio.create_task(self._read(on_line, listening))

    async def _read(self, on_line: Any, listening: asyncio.Future[None]) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        try:
            while line := await self.proc.stdout.readline():
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(event, dict):
                    continue
                if event.get("event") == "listening":
                    self.address, self.node_id = event["address"], event["node_id"]
                    self.view.address, self.view.node_id = self.address, self.node_id
                    self.view.status = "up"
                    if not listening.done():
                        listening.set_result(None)
                else:
                    on_line(self, event)
        finally:
            if not listening.done():
                listening.set_exception(
                    DemoError(f"{self.spec.name} exited before listening; see its log")
                )

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    async def stop(self) -> int | None:
        """SIGTERM, wait, then kill the process group; returns the exit status."""
        proc = self.proc
        if proc is None:
            return None
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        if self.reader is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.reader), 2.0)
            self.reader.cancel()
            await asyncio.gather(self.reader, return_exceptions=True)
        self.view.status = f"exited {proc.returncode}"
        return proc.returncode


MACHINE_ENV = ("MESHNODE_CACHE_DIR",)
"""MESHNODE_* settings that describe the machine rather than one agent: passed on to every
agent (all of them share the exported MiniLM graph)."""


def _env(extra: dict[str, str], *, keep: tuple[str, ...] = ()) -> dict[str, str]:
    """The parent's environment without MESHNODE_* settings (each agent gets only its own,
    and those of :data:`MACHINE_ENV`), plus ``extra``."""
    kept = (*keep, *MACHINE_ENV)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHNODE_") or k in kept}
    env.update({"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    env.update(extra)
    return env


# --------------------------------------------------------------------------- the run


class _Demo:
    def __init__(self, options: DemoOptions, view_stream: TextIO) -> None:
        self.options = options
        self.state = DemoState(options.query)
        self.view: View = make_view(
            self.state, live=False if options.json else options.live, stream=view_stream
        )
        self.base = Path(tempfile.mkdtemp(prefix="meshnode-demo-"))
        self.agents: list[_Agent] = []
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.exit_codes: dict[str, int | None] = {}
        self._code_callers = ""
        """The node ids the code agent runs code for: the orchestrator's only."""
        self._authority = ""
        """The throw-away mesh authority's public key (node-id form)."""
        self._keyring_path = self.base / "keyring.json"
        self._admission: dict[str, dict[str, int]] = {}
        self.schema: planner.Schema | None = None
        self.dataset = DATASET_NAME
        """The file name the agents' copy of the table has (the user's own)."""
        """Per agent, at the end: sealed inputs opened, plaintext accepted, certificates held."""

    # ------------------------------------------------------------------ events

    def _on_line(self, agent: _Agent, event: dict[str, Any]) -> None:
        if agent.spec.role != "orchestrator":
            return
        self._show(event)
        self.events.put_nowait(event)

    def _show(self, e: dict[str, Any]) -> None:
        kind = e.get("event")
        tasks = self.state.tasks
        if kind == "mesh_ready":
            self.state.phase = "mesh formed; loading the semantic index"
            self.view.event(f"orchestrator knows {len(e['peers'])} peers: {', '.join(e['peers'])}")
        elif kind == "index_ready":
            self.state.phase = "researching"
            self.view.event(f"orchestrator's index is ready ({e['embedder']})")
        elif kind == "plan":
            for sub in e["subtasks"]:
                tasks[sub["key"]] = TaskView(sub["key"])
            self.view.event(f"plan ({e.get('method', 'deterministic')}): {e.get('describe', '')}")
        elif kind == "discovered":
            t = tasks.setdefault(e["subtask"], TaskView(e["subtask"]))
            t.state, t.provider_name = "found", e["provider_name"]
            t.found_by, t.semantic = e["found_by"], e["semantic"]
            self.view.event(
                f"{e['subtask']}: asked for “{e['description']}” → {e['provider_name']} "
                f"({e['capability']}, similarity {e['semantic']:.2f}, by {e['found_by']})"
            )
        elif kind == "task_started":
            tasks.setdefault(e["subtask"], TaskView(e["subtask"])).state = "in flight"
        elif kind == "task_done":
            t = tasks.setdefault(e["subtask"], TaskView(e["subtask"]))
            t.state, t.quality, t.elapsed_ms = "done", e["quality"], e["elapsed_ms"]
            self.view.event(
                f"{e['subtask']}: done in {e['elapsed_ms']:.0f} ms, quality {e['quality']:.2f}"
            )
        elif kind == "task_failed":
            t = tasks.setdefault(e["subtask"], TaskView(e["subtask"]))
            t.state, t.error = "failed", e["error"]
            self.view.event(f"{e['subtask']}: failed: {e['error']}")
        elif kind == "report_ready":
            self.state.phase = "report ready; letting trust gossip spread"
            self.view.event(f"report written to {e['report_path']}")
        elif kind == "job_failed":
            self.state.phase = "failed"
            self.view.event(f"orchestrator failed: {e['error']}")

    # ------------------------------------------------------------------ HTTP

    async def _get(self, http: Any, agent: _Agent, path: str) -> Any:
        async with http.get(f"http://{agent.address}{path}") as resp:
            resp.raise_for_status()
            return await resp.json()

    async def _poll(self, http: Any) -> None:
        orchestrator = self._agent("orchestrator")
        while True:
            for agent in self.agents:
                if agent.address:
                    with contextlib.suppress(Exception):
                        agent.view.health = await self._get(http, agent, "/v1/health")
            if orchestrator is not None and orchestrator.address:
                with contextlib.suppress(Exception):
                    members = await self._get(http, orchestrator, "/v1/members")
                    self.state.members = members["members"]
                with contextlib.suppress(Exception):
                    trust = await self._get(http, orchestrator, "/v1/trust")
                    self.state.trust = trust["peers"]
            await asyncio.sleep(POLL_INTERVAL_S)

    def _agent(self, role: str) -> _Agent | None:
        return next((a for a in self.agents if a.spec.role == role), None)

    # ------------------------------------------------------------------ phases

    def _prepare(self) -> Path:
        if not self.options.query.strip():
            raise DemoInputError("the question is empty")
        if len(self.options.query) > planner.MAX_QUESTION_CHARS:
            raise DemoInputError(
                f"the question is {len(self.options.query)} characters; the demo plans "
                f"questions up to {planner.MAX_QUESTION_CHARS}"
            )
        source = self.options.csv or DEMO_DATA_DIR / DATASET_NAME
        _, self.schema = load_table(source)
        self.dataset = dataset_name(source)
        self.view.event(f"table {source}: {self.schema.rows} rows; {self.schema.describe()}")
        for spec in AGENTS:
            view = NodeView(spec.name, spec.role)
            self.state.nodes.append(view)
            self.agents.append(_Agent(spec, self.base, view))
        for role in ("data agent", "orchestrator"):
            agent = self._agent(role)
            assert agent is not None
            (agent.dir / "datasets").mkdir()
            shutil.copyfile(source, agent.dir / "datasets" / self.dataset)
        return source

    def _credentials(self) -> str:
        """Admission for a throw-away mesh, before anything starts: a keyring (every byte
        between the agents sealed), a mesh authority, and for each agent an identity (in
        its data dir, which ``run`` then loads) and a certificate valid for
        :data:`DEMO_CERTIFICATE_DAYS`. All of it lives in the run's temporary directory and
        goes with it. Returns the orchestrator's node id: the one the code agent runs code
        for (``MESHNODE_CODE_CALLERS``)."""
        from meshnode import init_authority, init_identity, init_keyring, issue_certificate_file

        authority_dir = self.base / "authority"
        self._authority = init_authority(authority_dir).node_id
        init_keyring(self._keyring_path, DEMO_LABEL)
        for agent in self.agents:
            identity = init_identity(agent.dir / "state")
            role = "orchestrator" if agent.spec.role == "orchestrator" else "specialist"
            issued = issue_certificate_file(
                authority_dir,
                identity.node_id,
                days=DEMO_CERTIFICATE_DAYS,
                roles=(role,),
                name=agent.spec.name,
                out=agent.dir / "node.cert",
            )
            agent.admission = [
                "--keyring",
                str(self._keyring_path),
                "--authority",
                self._authority,
                "--cert",
                str(issued.path),
            ]
        orchestrator = self._agent("orchestrator")
        assert orchestrator is not None
        self._code_callers = init_identity(orchestrator.dir / "state").node_id
        return self._code_callers

    def _agent_env(self, agent: _Agent) -> dict[str, str]:
        role = agent.spec.role
        if role == "code agent":
            return _env({CODE_CALLERS_ENV: self._code_callers})
        if role == "data agent":
            return _env({DATA_ROOT_ENV: str(agent.dir / "datasets")})
        if role == "orchestrator":
            return _env(
                {JOB_ENV: str(agent.dir / "job.json")},
                keep=("MESHNODE_LLM_URL", "MESHNODE_LLM_KEY", "MESHNODE_LLM_MODEL"),
            )
        if role == "web-search agent" and self.options.mcp_config is not None:
            return _env({MCP_CONFIG_ENV: str(self.options.mcp_config.resolve())})
        if role == "writer agent":
            return _env({}, keep=("MESHNODE_LLM_URL", "MESHNODE_LLM_KEY", "MESHNODE_LLM_MODEL"))
        return _env({})

    def _embedder(self, agent: _Agent) -> str:
        """The orchestrator discovers by description; the specialists never look anyone up,
        so they index with the hashing embedder instead of loading MiniLM."""
        return self.options.embedder if agent.spec.role == "orchestrator" else "hashing"

    def _write_job(self) -> dict[str, Path]:
        orchestrator = self._agent("orchestrator")
        assert orchestrator is not None
        paths = {
            "report": self.options.out.resolve(),
            "result": orchestrator.dir / "result.json",
        }
        job = {
            "query": self.options.query,
            "csv_path": self.dataset,
            "reference_root": str(orchestrator.dir / "datasets"),
            "report_path": str(paths["report"]),
            "result_path": str(paths["result"]),
            "expect_peers": len(AGENTS) - 1,
            "ready_timeout_s": self.options.timeout_s,
        }
        (orchestrator.dir / "job.json").write_text(json.dumps(job, indent=1), "utf-8")
        return paths

    async def _start_all(self) -> str:
        loop = asyncio.get_running_loop()
        seed_agent, *others = self.agents
        ready = loop.create_future()
        await seed_agent.start(
            [], self._agent_env(seed_agent), self._embedder(seed_agent), self._on_line, ready
        )
        await asyncio.wait_for(ready, START_TIMEOUT_S)
        seed = seed_agent.address
        self.view.event(f"{seed_agent.spec.name} is up at {seed}: the seed")
        futures = []
        for agent in others:
            fut = loop.create_future()
            futures.append(fut)
            await agent.start(
                [seed], self._agent_env(agent), self._embedder(agent), self._on_line, fut
            )
        notice = asyncio.create_task(self._model_notice(futures))
        try:
            await asyncio.wait_for(asyncio.gather(*futures), START_TIMEOUT_S)
        finally:
            notice.cancel()
            await asyncio.gather(notice, return_exceptions=True)
        for agent in others:
            self.view.event(f"{agent.spec.name} is up at {agent.address}, given only the seed")
        self.state.phase = "waiting for gossip to form the mesh"
        return seed

    async def _model_notice(self, futures: list[asyncio.Future[None]]) -> None:
        """Say once, if no MiniLM graph is cached (:func:`model_cached`) and the orchestrator
        is not listening after :data:`MODEL_NOTICE_AFTER_S`, that it is preparing its
        semantic model: on the first run MiniLM is exported and cached, which takes about
        15 s, and nothing else would be shown meanwhile."""
        orchestrator = self._agent("orchestrator")
        if orchestrator is None or self._embedder(orchestrator) == "hashing":
            return
        if await asyncio.to_thread(model_cached):
            return  # a slow start on a busy machine, not a model being prepared
        index = self.agents.index(orchestrator) - 1
        try:
            await asyncio.wait_for(asyncio.shield(futures[index]), MODEL_NOTICE_AFTER_S)
        except TimeoutError:
            orchestrator.view.status = "preparing model"
            self.state.phase = "the orchestrator is preparing its semantic model"
            self.view.event(MODEL_NOTICE)
        except Exception:  # it exited: _start_all reports that
            return

    async def _wait_report(self) -> dict[str, Any]:
        while True:
            event = await self.events.get()
            if event.get("event") == "report_ready":
                return event
            if event.get("event") == "job_failed":
                raise DemoError(f"the orchestrator failed: {event['error']}")

    async def _spread(self, http: Any, opinions: int) -> dict[str, int]:
        """Wait (bounded) until every node holds ``opinions`` ledger records and knows every
        other agent by name (names arrive with manifests, after membership)."""
        deadline = time.monotonic() + SPREAD_TIMEOUT_S
        counts: dict[str, int] = {}
        named: dict[str, int] = {}
        while True:
            for agent in self.agents:
                with contextlib.suppress(Exception):
                    health = await self._get(http, agent, "/v1/health")
                    agent.view.health = health
                    counts[agent.spec.name] = int(health["ledger_records"])
                    members = (await self._get(http, agent, "/v1/members"))["members"]
                    named[agent.spec.name] = sum(
                        1
                        for m in members
                        if m["state"] == "alive" and m["name"] and m["node_id"] != agent.node_id
                    )
            if (
                len(counts) == len(named) == len(self.agents)
                and min(counts.values()) >= opinions
                and min(named.values()) >= len(self.agents) - 1
            ):
                return counts
            if time.monotonic() >= deadline:
                return counts
            await asyncio.sleep(0.1)

    async def _snapshot(self, http: Any) -> tuple[dict[str, list[str]], dict[str, Any]]:
        mesh: dict[str, list[str]] = {}
        trust: dict[str, Any] = {}
        for agent in self.agents:
            with contextlib.suppress(Exception):
                members = (await self._get(http, agent, "/v1/members"))["members"]
                mesh[agent.spec.name] = sorted(
                    m["name"] or m["node_id"]
                    for m in members
                    if m["state"] == "alive" and m["node_id"] != agent.node_id
                )
                trust[agent.spec.name] = (await self._get(http, agent, "/v1/trust"))["peers"]
                health = await self._get(http, agent, "/v1/health")
                admission = health.get("admission") or {}
                self._admission[agent.spec.name] = {
                    "sealed_opened": health["seal"].get("opened", 0),
                    "plaintext_accepted": health["seal"].get("plaintext_accepted", 0),
                    "certificates": admission.get("certificates", 0),
                }
        self.state.trust = trust.get("orchestrator", self.state.trust)
        return mesh, trust

    async def _stop_all(self) -> None:
        self.state.phase = "stopping"
        codes = await asyncio.gather(*(a.stop() for a in self.agents), return_exceptions=True)
        for agent, code in zip(self.agents, codes, strict=True):
            self.exit_codes[agent.spec.name] = code if isinstance(code, int) else None

    # ------------------------------------------------------------------ main

    async def run(self) -> dict[str, Any]:
        import aiohttp

        started = time.monotonic()
        summary: dict[str, Any] = {"ok": False, "query": self.options.query}
        self.view.start()
        poller: asyncio.Task[None] | None = None
        try:
            source = self._prepare()
            paths = self._write_job()
            summary["dataset"] = str(source)
            summary["dataset_name"] = self.dataset
            timeout = aiohttp.ClientTimeout(total=2.0)
            async with aiohttp.ClientSession(timeout=timeout) as http:
                try:
                    async with asyncio.timeout(self.options.timeout_s):
                        summary["code_callers"] = [self._credentials()]
                        summary["admission"] = {"keyring": True, "authority": self._authority}
                        summary["seed"] = await self._start_all()
                        poller = asyncio.create_task(self._poll(http))
                        ready = await self._wait_report()
                except TimeoutError:
                    raise DemoError(
                        f"no report within {self.options.timeout_s:.0f} s "
                        f"(phase: {self.state.phase})"
                    ) from None
                result = json.loads(
                    await asyncio.to_thread(Path(ready["result_path"]).read_text, "utf-8")
                )
                opinions = sum(1 for t in result["tasks"] if t["quality"] is not None)
                summary["ledger_records"] = await self._spread(http, opinions)
                summary["mesh"], summary["trust_views"] = await self._snapshot(http)
                summary["admission"]["agents"] = self._admission
            summary.update(self._summarize(result, paths["report"]))
        except DemoError as exc:
            summary["error"] = str(exc)
            summary["bad_input"] = isinstance(exc, DemoInputError)
            self.view.event(f"error: {exc}")
            summary["logs"] = {a.spec.name: a.log_tail() for a in self.agents if a.proc}
        finally:
            if poller is not None:
                poller.cancel()
                await asyncio.gather(poller, return_exceptions=True)
            await asyncio.shield(self._stop_all())
            self.state.phase = "done" if "error" not in summary else "failed"
            self.view.event(
                f"stopped {len(self.exit_codes)} processes "
                f"(exit statuses {sorted(set(self.exit_codes.values()), key=str)})"
            )
            self.view.stop()
            if self.options.keep:
                summary["temp_dir"] = str(self.base)
            else:
                shutil.rmtree(self.base, ignore_errors=True)
                summary["temp_dir"] = None
        summary["processes"] = [
            {"name": a.spec.name, "pid": a.view.pid, "exit_code": self.exit_codes.get(a.spec.name)}
            for a in self.agents
        ]
        summary["all_reaped"] = all(
            a.proc is None or a.proc.returncode is not None for a in self.agents
        )
        summary["elapsed_s"] = round(time.monotonic() - started, 3)
        return summary

    def _summarize(self, result: dict[str, Any], report_path: Path) -> dict[str, Any]:
        by_id = {a.node_id: a for a in self.agents}
        tasks_by_provider = {t["provider"]: t for t in result["tasks"] if t.get("provider")}
        agents = []
        for info in result["agents"]:
            agent = by_id.get(info["node_id"])
            task = tasks_by_provider.get(info["node_id"])
            agents.append(
                {
                    **info,
                    "role": agent.spec.role if agent else info["role"],
                    "pid": agent.view.pid if agent else None,
                    "discovered": None
                    if task is None
                    else {
                        "subtask": task["subtask"],
                        "description": task["description"],
                        "capability": task["capability"],
                        "found_by": task["found_by"],
                        "semantic": task["semantic"],
                    },
                }
            )
        done = [t for t in result["tasks"] if not t.get("skipped")]
        failed = [t["subtask"] for t in done if t["error"] and t["quality"] is None]
        return {
            "ok": not failed
            and all(t["quality"] is not None and t["quality"] >= SUCCESS_THRESHOLD for t in done),
            "answer": result.get("answer"),
            "plan": result.get("plan"),
            "schema": result.get("schema"),
            "failed_subtasks": failed,
            "report_path": str(report_path),
            "report": result["report"],
            "agents": agents,
            "tasks": result["tasks"],
            "statistics": result["statistics"],
            "writer": result["writer"],
            "web": result["web"],
            "embedder": result["embedder"],
            "trust": result["trust"],
        }


async def run_demo(options: DemoOptions, *, stdout: TextIO | None = None) -> int:
    """Run the demo; print the report (or, with ``options.json``, one JSON document).
    Returns the exit status: 0 when every subtask delivered a result that passed its check
    (quality at least 0.5), else 1."""
    out = stdout or sys.stdout
    demo = _Demo(options, sys.stderr if options.json else out)
    summary = await demo.run()
    if options.json:
        print(json.dumps(summary, indent=1), file=out, flush=True)
    else:
        if "report" in summary:
            print("\n" + summary["report"], file=out)
            print(f"Report written to {summary['report_path']}", file=out)
            if not summary.get("ok"):
                short = [
                    f"{t['subtask']} ({t['error'] or 'quality ' + str(t['quality'])})"
                    for t in summary.get("tasks", [])
                    if not t.get("skipped")
                    and (t["quality"] is None or t["quality"] < SUCCESS_THRESHOLD)
                ]
                print(
                    "meshnode demo: exit status 1: these subtasks failed or scored below "
                    f"{SUCCESS_THRESHOLD}: {', '.join(short) or 'none'}",
                    file=out,
                )
        else:
            print(f"meshnode demo: {summary.get('error', 'failed')}", file=out)
            for name, tail in (summary.get("logs") or {}).items():
                if tail:
                    print(f"--- {name} log (last lines) ---\n{tail}", file=out)
        print(
            f"Done in {summary['elapsed_s']:.1f} s; {len(summary['processes'])} processes "
            f"stopped and reaped; "
            + (
                f"files kept in {summary['temp_dir']}"
                if summary["temp_dir"]
                else "temp files removed"
            ),
            file=out,
            flush=True,
        )
    if summary.get("bad_input"):
        return EXIT_BAD_INPUT
    return 0 if summary.get("ok") else 1
