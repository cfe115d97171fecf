"""meshnode: a fully decentralized agent mesh.

Nodes join through any seed address, learn the membership by SWIM gossip, spread signed
capability manifests, discover peers from a local semantic index, negotiate tasks peer to
peer and gossip signed trust opinions into a CRDT reputation ledger.

Everything a user touches is importable from here (``from meshnode import ...``); the
modules under ``meshnode`` are the implementation and may move. Every error meshnode raises
for a caller to catch subclasses :class:`MeshError` (see :mod:`meshnode.errors`).

``import meshnode`` stays light: the asyncio runtime (and aiohttp with it) is imported only
when one of its names (``MeshNode``, ``DelegationResult``, ...) is first asked for.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from meshnode.capability import CapabilitySpec, capability
from meshnode.core.authorization import Allow, CapabilityPolicy, Quota
from meshnode.core.config import NodeConfig, format_address, parse_address
from meshnode.core.effects import Attempt, AttemptOutcome, MemberChanged, MemberEvent
from meshnode.core.evaluator import SUCCESS_THRESHOLD
from meshnode.core.member import Member, MemberState
from meshnode.core.router import RoutingWeights, ScoredCandidate
from meshnode.errors import (
    AdmissionError,
    BindError,
    ConfigError,
    DataDirInUse,
    DelegationError,
    ExportLockTimeout,
    IndexFullError,
    InvalidInput,
    InvalidRequest,
    KeyFileError,
    KeyringError,
    KeyringFileError,
    LocalProtocolError,
    MeshError,
    ModelMismatchError,
    NodeNotRunning,
    ProtocolError,
    RemoteProtocolError,
    SealRejected,
    WaitTimeout,
)
from protocol import Capability, short_id
from protocol.keyring import Keyring

if TYPE_CHECKING:
    # A2A import and MCP exposure
    from meshnode.runtime.a2a_import import (
        A2AImporter,
        A2AImportError,
        A2AUnavailable,
        AgentUnreachable,
        CardRefused,
    )
    from meshnode.runtime.credentials import (
        IssuedCertificate,
        init_authority,
        init_identity,
        init_keyring,
        issue_certificate_file,
    )
    from meshnode.runtime.discovery import candidate_json
    from meshnode.runtime.logging import configure_logging
    from meshnode.runtime.mcp_client import CONFIG_ENV as MCP_CONFIG_ENV
    from meshnode.runtime.mcp_client import (
        McpCallError,
        McpClientPool,
        McpConfigError,
        McpError,
        McpUnavailable,
    )
    from meshnode.runtime.mcp_expose import McpExposer, SchemaNotEnforceable, ToolRefused
    from meshnode.runtime.node import Lifecycle, MeshNode, wait_for
    from meshnode.runtime.tasks import DelegationResult

__version__ = "0.1.0.dev0"

_LAZY: dict[str, tuple[str, str]] = {
    "MeshNode": ("meshnode.runtime.node", "MeshNode"),
    "Lifecycle": ("meshnode.runtime.node", "Lifecycle"),
    "wait_for": ("meshnode.runtime.node", "wait_for"),
    "DelegationResult": ("meshnode.runtime.tasks", "DelegationResult"),
    "candidate_json": ("meshnode.runtime.discovery", "candidate_json"),
    "configure_logging": ("meshnode.runtime.logging", "configure_logging"),
    "McpClientPool": ("meshnode.runtime.mcp_client", "McpClientPool"),
    "McpError": ("meshnode.runtime.mcp_client", "McpError"),
    "McpUnavailable": ("meshnode.runtime.mcp_client", "McpUnavailable"),
    "McpConfigError": ("meshnode.runtime.mcp_client", "McpConfigError"),
    "McpCallError": ("meshnode.runtime.mcp_client", "McpCallError"),
    "MCP_CONFIG_ENV": ("meshnode.runtime.mcp_client", "CONFIG_ENV"),
    "IssuedCertificate": ("meshnode.runtime.credentials", "IssuedCertificate"),
    "init_authority": ("meshnode.runtime.credentials", "init_authority"),
    "init_identity": ("meshnode.runtime.credentials", "init_identity"),
    "init_keyring": ("meshnode.runtime.credentials", "init_keyring"),
    "issue_certificate_file": ("meshnode.runtime.credentials", "issue_certificate_file"),
    # A2A import and MCP exposure
    "A2AImporter": ("meshnode.runtime.a2a_import", "A2AImporter"),
    "A2AImportError": ("meshnode.runtime.a2a_import", "A2AImportError"),
    "A2AUnavailable": ("meshnode.runtime.a2a_import", "A2AUnavailable"),
    "AgentUnreachable": ("meshnode.runtime.a2a_import", "AgentUnreachable"),
    "CardRefused": ("meshnode.runtime.a2a_import", "CardRefused"),
    "McpExposer": ("meshnode.runtime.mcp_expose", "McpExposer"),
    "SchemaNotEnforceable": ("meshnode.runtime.mcp_expose", "SchemaNotEnforceable"),
    "ToolRefused": ("meshnode.runtime.mcp_expose", "ToolRefused"),
}
"""Public names that live in the asyncio runtime: loaded on first use, so that the pure
layers (config, capability declarations, member and candidate types, errors) import
without aiohttp."""

__all__ = [
    "MCP_CONFIG_ENV",
    "SUCCESS_THRESHOLD",
    "A2AImportError",
    "A2AImporter",
    "A2AUnavailable",
    "AdmissionError",
    "AgentUnreachable",
    "Allow",
    "Attempt",
    "AttemptOutcome",
    "BindError",
    "Capability",
    "CapabilityPolicy",
    "CapabilitySpec",
    "CardRefused",
    "ConfigError",
    "DataDirInUse",
    "DelegationError",
    "DelegationResult",
    "ExportLockTimeout",
    "IndexFullError",
    "InvalidInput",
    "InvalidRequest",
    "IssuedCertificate",
    "KeyFileError",
    "Keyring",
    "KeyringError",
    "KeyringFileError",
    "Lifecycle",
    "LocalProtocolError",
    "McpCallError",
    "McpClientPool",
    "McpConfigError",
    "McpError",
    "McpExposer",
    "McpUnavailable",
    "Member",
    "MemberChanged",
    "MemberEvent",
    "MemberState",
    "MeshError",
    "MeshNode",
    "ModelMismatchError",
    "NodeConfig",
    "NodeNotRunning",
    "ProtocolError",
    "Quota",
    "RemoteProtocolError",
    "RoutingWeights",
    "SchemaNotEnforceable",
    "ScoredCandidate",
    "SealRejected",
    "ToolRefused",
    "WaitTimeout",
    "__version__",
    "candidate_json",
    "capability",
    "configure_logging",
    "format_address",
    "init_authority",
    "init_identity",
    "init_keyring",
    "issue_certificate_file",
    "parse_address",
    "short_id",
    "wait_for",
]


def __getattr__(name: str) -> object:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'meshnode' has no attribute {name!r}")
    module, attribute = target
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
