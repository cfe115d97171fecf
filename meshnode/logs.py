"""meshnode's loggers: the standard ``logging`` tree, silent unless the program asks.

A node embedded in an application writes nothing to that application's stdout or stderr
on its own. Every meshnode logger (:func:`get_logger`) sends its events, in this order of
preference:

1. through structlog's global configuration, when the process configured structlog
   (``structlog.configure`` was called: the application uses structlog itself, or
   ``meshnode run`` called :func:`meshnode.runtime.logging.configure_logging`);
2. otherwise to the standard library logger of the same name under ``meshnode``
   (``meshnode``, ``meshnode.tasks``, ...). The ``meshnode`` logger carries only a
   ``logging.NullHandler``, so nothing is printed until the application configures
   logging (``logging.basicConfig(level=logging.INFO)``, a handler on ``meshnode``, ...).
   Each record's message is ``event key=value ...``; the event name and its fields are
   also on the record as ``meshnode_event`` and ``meshnode_fields`` for structured
   handlers.

This module imports only ``logging`` and structlog, so every layer that logs (the
discovery package and the runtime) may use it.
"""

from __future__ import annotations

import logging
from typing import Any

import structlog

__all__ = ["ROOT_LOGGER", "MeshLogger", "get_logger"]

ROOT_LOGGER = "meshnode"
"""Name of the standard library logger every meshnode logger sits under."""

logging.getLogger(ROOT_LOGGER).addHandler(logging.NullHandler())


class MeshLogger:
    """A structlog-style logger (``info(event, **fields)``, ``bind(**fields)``) that follows
    the routing rule of the module docstring at each call."""

    __slots__ = ("_context", "_name")

    def __init__(self, name: str, context: dict[str, Any] | None = None) -> None:
        self._name = name
        self._context = context or {}

    def bind(self, **fields: Any) -> MeshLogger:
        """A logger whose every line also carries ``fields``."""
        return MeshLogger(self._name, {**self._context, **fields})

    def debug(self, event: str, **fields: Any) -> None:
        self._emit(logging.DEBUG, "debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit(logging.INFO, "info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit(logging.WARNING, "warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit(logging.ERROR, "error", event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        fields.setdefault("exc_info", True)
        self._emit(logging.ERROR, "error", event, fields)

    def critical(self, event: str, **fields: Any) -> None:
        self._emit(logging.CRITICAL, "critical", event, fields)

    def _emit(self, level: int, method: str, event: str, fields: dict[str, Any]) -> None:
        if structlog.is_configured():
            bound = structlog.get_logger(self._name).bind(**self._context)
            getattr(bound, method)(event, **fields)
            return
        logger = logging.getLogger(self._name)
        if not logger.isEnabledFor(level):
            return
        exc_info = fields.pop("exc_info", None)
        merged = {**structlog.contextvars.get_contextvars(), **self._context, **fields}
        text = " ".join([event, *(f"{key}={value!r}" for key, value in merged.items())])
        logger.log(
            level,
            "%s",
            text,
            exc_info=exc_info,
            extra={"meshnode_event": event, "meshnode_fields": merged},
            stacklevel=3,
        )


def get_logger(name: str = ROOT_LOGGER) -> MeshLogger:
    """The logger for ``name`` (``meshnode`` or a name under it)."""
    if name != ROOT_LOGGER and not name.startswith(ROOT_LOGGER + "."):
        raise ValueError(f"meshnode loggers live under {ROOT_LOGGER!r}, got {name!r}")
    return MeshLogger(name)
