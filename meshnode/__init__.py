"""meshnode: a fully decentralized agent mesh.

Nodes join through any seed address, learn the membership by SWIM gossip, spread signed
capability manifests, discover peers from a local semantic index, negotiate tasks peer to
peer and gossip signed trust opinions into a CRDT reputation ledger.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshnode.capability import capability
from meshnode.core.config import NodeConfig

if TYPE_CHECKING:
    from meshnode.runtime.node import MeshNode

__version__ = "0.1.0.dev0"

__all__ = ["MeshNode", "NodeConfig", "__version__", "capability"]


def __getattr__(name: str) -> object:
    # The runtime pulls in aiohttp; load it only when MeshNode is asked for, so the pure
    # layers stay importable on their own.
    if name == "MeshNode":
        from meshnode.runtime.node import MeshNode

        return MeshNode
    raise AttributeError(name)
