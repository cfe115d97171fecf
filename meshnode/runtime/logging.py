"""Where meshnode's log lines go: the standard ``logging`` tree, silent unless asked.

Theory of operation
-------------------
A node embedded in an application writes nothing to that application's stdout or stderr
on its own: every meshnode logger (:func:`get_logger`, from :mod:`meshnode.logs`) goes
through structlog when the process configured it, else to the standard ``logging`` tree
under ``meshnode``, which carries only a ``NullHandler`` (:mod:`meshnode.logs` says how).

``meshnode run`` calls :func:`configure_logging`: console rendering when stderr is a
terminal, JSON lines otherwise. :func:`print_event` prints a line for the operator (the
``listening`` line) in the same format on stdout, so a terminal shows one format only.

Event names are snake_case past tense (``member_suspected``); every line of a node carries
its ``node_id`` (short form) through a bound logger. A log line is for an operator: one per
membership change or task outcome, never one per packet.
"""

from __future__ import annotations

import json as json_module
import logging
import sys
from typing import Any

import structlog

from meshnode.logs import ROOT_LOGGER, MeshLogger, get_logger

__all__ = ["ROOT_LOGGER", "MeshLogger", "configure_logging", "get_logger", "print_event"]

_configured = False
_json = True


def configure_logging(*, level: str = "INFO", json: bool | None = None) -> None:
    """Render meshnode's events on stderr, for a command-line program (``meshnode run``
    calls it). ``json=None`` picks JSON lines unless stderr is a terminal, where lines are
    rendered for reading. This configures structlog for the whole process; an application
    that embeds a node and has its own logging set-up does not need it."""
    global _configured, _json
    if json is None:
        json = not sys.stderr.isatty()
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    _configured = True
    _json = json


def print_event(event: str, **fields: Any) -> None:
    """Print one line for the operator on stdout: a JSON object (``{"event": ...,
    **fields}``, what scripts parse) unless both the log lines are rendered for reading
    (:func:`configure_logging` found a terminal) and stdout is a terminal too; then the same
    rendering as the log lines."""
    if not _configured or _json or not sys.stdout.isatty():
        print(json_module.dumps({"event": event, **fields}), flush=True)
        return
    renderer = structlog.dev.ConsoleRenderer()
    line = structlog.processors.TimeStamper(fmt="iso", utc=True)(
        None, "info", {"event": event, **fields, "level": "info"}
    )
    print(renderer(None, "info", line), flush=True)
