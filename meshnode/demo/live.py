"""What the demo shows while it runs: a live terminal view, or plain lines.

:class:`DemoState` is everything the view draws: the processes, what each node's HTTP API
last said (``/v1/health``, and the orchestrator's ``/v1/members`` and ``/v1/trust``), the
subtasks in flight from the orchestrator's event lines, and a log of events. The runner
updates it; a view only reads it.

:class:`RichView` redraws it four times a second with ``rich`` (members, tasks in flight,
trust, recent events). :class:`PlainView` prints one line per event instead; the runner
uses it when the output is not a terminal, with ``--no-live``, or when ``rich`` is not
installed.
"""

from __future__ import annotations

import collections
import dataclasses
import sys
import time
from typing import Any, Protocol, TextIO

__all__ = ["DemoState", "NodeView", "PlainView", "RichView", "TaskView", "View", "make_view"]


@dataclasses.dataclass
class NodeView:
    """One agent process as the view knows it."""

    name: str
    role: str
    address: str = ""
    node_id: str = ""
    pid: int | None = None
    status: str = "starting"
    health: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class TaskView:
    """One subtask as the orchestrator reported it."""

    key: str
    state: str = "planned"
    provider_name: str = ""
    found_by: str = ""
    semantic: float | None = None
    quality: float | None = None
    elapsed_ms: float | None = None
    error: str = ""


@dataclasses.dataclass
class DemoState:
    query: str
    started: float = dataclasses.field(default_factory=time.monotonic)
    phase: str = "starting processes"
    nodes: list[NodeView] = dataclasses.field(default_factory=list)
    tasks: dict[str, TaskView] = dataclasses.field(default_factory=dict)
    members: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    trust: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    log: collections.deque[str] = dataclasses.field(
        default_factory=lambda: collections.deque(maxlen=8)
    )

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


class View(Protocol):
    def start(self) -> None: ...

    def event(self, text: str) -> None: ...

    def stop(self) -> None: ...


class PlainView:
    """One timestamped line per event."""

    def __init__(self, state: DemoState, stream: TextIO) -> None:
        self.state = state
        self.stream = stream

    def start(self) -> None:
        self.event(f"meshnode demo: {self.state.query}")

    def event(self, text: str) -> None:
        self.state.log.append(text)
        print(f"[{self.state.elapsed:5.1f}s] {text}", file=self.stream, flush=True)

    def stop(self) -> None:
        return None


class RichView:
    """A live dashboard redrawn from :class:`DemoState`."""

    def __init__(self, state: DemoState, stream: TextIO) -> None:
        from rich.console import Console
        from rich.live import Live

        self.state = state
        self.console = Console(file=stream)
        self._live = Live(
            get_renderable=self._render,
            console=self.console,
            refresh_per_second=4,
            transient=False,
            redirect_stdout=False,
            redirect_stderr=False,
        )

    def start(self) -> None:
        self._live.start()

    def event(self, text: str) -> None:
        self.state.log.append(f"[{self.state.elapsed:5.1f}s] {text}")

    def stop(self) -> None:
        self._live.stop()

    def _render(self) -> Any:
        from rich.console import Group
        from rich.panel import Panel
        from rich.table import Table

        s = self.state
        nodes = Table(
            title="Nodes (each one's own count of alive members, manifests and trust opinions)",
            expand=True,
            title_justify="left",
        )
        for column in ("node", "role", "address", "pid", "alive", "manifests", "opinions"):
            nodes.add_column(column)
        nodes.add_column("status")
        for n in s.nodes:
            members = n.health.get("members", {})
            nodes.add_row(
                n.name,
                n.role,
                n.address or "-",
                str(n.pid or "-"),
                str(members.get("alive", "-")),
                str(n.health.get("manifests", "-")),
                str(n.health.get("ledger_records", "-")),
                n.status,
            )
        tasks = Table(title="Tasks", expand=True, title_justify="left")
        for column in ("subtask", "agent", "found by", "match", "state", "quality", "time"):
            tasks.add_column(column)
        for t in s.tasks.values():
            tasks.add_row(
                t.key,
                t.provider_name or "-",
                t.found_by or "-",
                "-" if t.semantic is None else f"{t.semantic:.2f}",
                t.state if not t.error else f"{t.state}: {t.error[:40]}",
                "-" if t.quality is None else f"{t.quality:.2f}",
                "-" if t.elapsed_ms is None else f"{t.elapsed_ms:.0f} ms",
            )
        trust = Table(title="Trust (orchestrator's view)", expand=True, title_justify="left")
        for column in ("peer", "trust", "direct opinion", "breaker"):
            trust.add_column(column)
        for p in s.trust:
            trust.add_row(
                p.get("name") or p["node_id"][:10],
                f"{p['trust']:.3f}",
                "-" if p.get("direct") is None else f"{p['direct']:.3f}",
                str(p.get("breaker", "-")),
            )
        header = f"[b]meshnode demo[/b] {s.elapsed:5.1f}s — {s.phase}\n[dim]{s.query}[/dim]"
        return Group(
            Panel(header),
            nodes,
            tasks,
            trust,
            Panel("\n".join(s.log) or "-", title="events", title_align="left"),
        )


def make_view(state: DemoState, *, live: bool | None, stream: TextIO | None = None) -> View:
    """A :class:`RichView` when ``live`` (or, with ``live=None``, when ``stream`` is a
    terminal and ``rich`` is installed), else a :class:`PlainView`."""
    out = stream or sys.stdout
    want = out.isatty() if live is None else live
    if want:
        try:
            return RichView(state, out)
        except ImportError:
            pass
    return PlainView(state, out)
