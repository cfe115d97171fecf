"""Every error meshnode raises for a caller to catch, under one root: :class:`MeshError`.

Errors are grouped by what the caller does about them:

* bad local input — :class:`ConfigError` (an invalid ``NodeConfig``),
  :class:`~protocol.errors.LocalProtocolError` (something that cannot be encoded: a
  capability or manifest over its limits); both are also ``ValueError``;
* a call the node cannot take — :class:`InvalidRequest` (bad arguments to ``discover`` or
  ``delegate``; also a ``ValueError``), :class:`NodeNotRunning` (the node is not started,
  or was started twice; also a ``RuntimeError``);
* the node's own environment — :class:`BindError` (the port cannot be bound or no seed
  resolves; also an ``OSError``), :class:`DataDirInUse` (another process runs this node),
  :class:`KeyFileError` (the identity key is missing, corrupt, a symlink or readable by
  others), :class:`ExportLockTimeout` (another process's model export seems stuck);
* the capability index refused a call — :class:`ModelMismatchError` (vectors of another
  embedder; also a ``ValueError``), :class:`IndexFullError` (past its ceiling; also a
  ``RuntimeError``);
* waited in vain — :class:`WaitTimeout` (``MeshNode.wait_for`` saw too few providers
  before its timeout; also a ``TimeoutError``);
* delegation failed — :class:`DelegationError` (no provider took the task, or every
  attempt failed or timed out; ``invalid_input`` is True when a provider refused the
  caller's input, which is then the problem, not the provider);
* a capability handler refuses its input — :class:`InvalidInput` (raised by the handler:
  the requester is told its input was invalid, and the provider is not blamed);
* an MCP server failed — ``McpError`` and its subclasses, defined beside the MCP client
  (``meshnode.runtime.mcp_client``) and exported from ``meshnode`` on first use;
* an A2A agent could not be imported — ``A2AImportError`` (``CardRefused``: the URL or
  card failed a check; ``AgentUnreachable``; ``A2AUnavailable``), and an MCP tool could
  not be published — ``ToolRefused`` (``SchemaNotEnforceable``), defined beside the
  importer and the exposer and exported from ``meshnode`` on first use;
* a peer broke the protocol — :class:`~protocol.errors.RemoteProtocolError` and its
  subclasses (shells drop such input and count it; a caller meets them only when decoding
  bytes itself).

The root lives in :mod:`protocol.errors`, the lowest layer, so that the wire format's errors
share it without the protocol importing anything above it; this module re-exports it.
Foreign exceptions are translated into these once, at the boundary where they happen.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from protocol.errors import (
    KeyringError,
    LocalProtocolError,
    MeshError,
    ProtocolError,
    RemoteProtocolError,
    SealRejected,
)

__all__ = [
    "AdmissionError",
    "BindError",
    "ConfigError",
    "DataDirInUse",
    "DelegationError",
    "ExportLockTimeout",
    "IndexFullError",
    "InvalidInput",
    "InvalidRequest",
    "KeyFileError",
    "KeyringError",
    "KeyringFileError",
    "LocalProtocolError",
    "MeshError",
    "ModelMismatchError",
    "NodeNotRunning",
    "ProtocolError",
    "RemoteProtocolError",
    "SealRejected",
    "WaitTimeout",
]


class ConfigError(MeshError, ValueError):
    """A configuration value is invalid (raised by ``NodeConfig`` validation). A
    ``ValueError`` too, for callers that catch that."""


class InvalidRequest(MeshError, ValueError):
    """A call's arguments are invalid (an empty query, a description over its length limit, a
    deadline that is not a positive number...). Nothing was changed or sent."""


class NodeNotRunning(MeshError, RuntimeError):
    """The call needs a running node: it was not started yet, is closing, or ``start()`` was
    called on a node that already started."""


class BindError(MeshError, OSError):
    """The node could not bind its UDP and TCP port, or none of its seeds resolves."""


class DataDirInUse(MeshError):
    """Another process (or another node of this one) holds the data dir."""


class KeyFileError(MeshError):
    """An identity key file is missing, corrupt, a symlink, or accessible by other users."""


class ExportLockTimeout(MeshError, TimeoutError):
    """Waited too long for another process to export the embedding model's graph."""


class ModelMismatchError(MeshError, ValueError):
    """Vectors from one embedder were offered to an index built for another."""


class IndexFullError(MeshError, RuntimeError):
    """An upsert would take the index past its ``max_entries``."""


class DelegationError(MeshError):
    """No candidate completed the task. ``reason`` says why; ``attempts`` says who was
    tried and what happened (``meshnode.runtime.tasks.Attempt`` records, in order).
    ``invalid_input`` is True when a provider refused the input itself (it failed the
    capability's ``input_schema``, or the handler raised :class:`InvalidInput`): the
    reason then reads ``"invalid input: <why>"`` (at most 512 bytes of why), and no other
    provider was asked, since the same input would fail there too."""

    def __init__(
        self, reason: str, attempts: Sequence[Any] = (), *, invalid_input: bool = False
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.attempts = tuple(attempts)
        self.invalid_input = invalid_input
        self.trace_id: str | None = None
        """The trace of the failed delegation (set by the node that ran it)."""


class InvalidInput(MeshError, ValueError):
    """Raised by a capability handler whose input is unusable (a rule its
    ``input_schema`` cannot say). The requester gets a failed result marked
    ``invalid_input`` with this text as the reason; it neither scores the provider nor
    counts toward its circuit breaker, and does not retry elsewhere."""


class KeyringFileError(MeshError):
    """A keyring file is missing, invalid, a symlink or FIFO, oversized, or accessible by
    other users."""


class AdmissionError(MeshError, ValueError):
    """With a mesh authority configured, this node's own certificate is missing, of another
    authority, for another identity, expired or not valid yet (the message names the
    ``meshnode authority issue`` command that fixes it)."""


class WaitTimeout(MeshError, TimeoutError):
    """``MeshNode.wait_for`` ran out of time. The message says what was awaited and what the
    node knew when it gave up (members, manifests, seeds); ``found`` holds the candidates
    that did match (fewer than asked for)."""

    def __init__(self, message: str, found: Sequence[Any] = ()) -> None:
        super().__init__(message)
        self.found = list(found)
