"""Convergent replicated state for meshnode: manifests and the reputation ledger.

Pure and deterministic: nothing here touches a clock, a socket, a thread or the global
``random``. Time arrives as a ``now`` argument (seconds on the mesh clock) and signature
checks go through an injected ``protocol.Verifier``.
"""

from __future__ import annotations

from crdt.manifests import (
    DEFAULT_MAX_MANIFEST_BYTES,
    DEFAULT_MAX_MANIFESTS,
    DEFAULT_TOMBSTONE_TTL,
    ManifestStore,
    Tombstone,
)
from crdt.reputation import (
    DEFAULT_MAX_HISTORY,
    DEFAULT_MAX_OBSERVERS,
    DEFAULT_MAX_PROOFS,
    DEFAULT_MAX_RECORDS,
    DEFAULT_MAX_SUBJECTS,
    DEFAULT_RECORD_TTL,
    DEFAULT_SEQ_WINDOW,
    MAX_RECORD_TTL,
    STANDING_DEPARTED,
    STANDING_MEMBER,
    STANDING_OWN,
    STANDING_TRUSTED,
    STANDING_UNKNOWN,
    ReputationLedger,
    Standing,
    record_digest,
)
from crdt.trust import (
    ELO_RATE,
    INITIAL_TRUST,
    TRUST_ALPHA,
    TRUST_MAX_ITERATIONS,
    TRUST_TOLERANCE,
    OpinionGraph,
    TrustVector,
    eigentrust,
    elo_update,
    relative_scores,
)

__all__ = [
    "DEFAULT_MAX_HISTORY",
    "DEFAULT_MAX_MANIFESTS",
    "DEFAULT_MAX_MANIFEST_BYTES",
    "DEFAULT_MAX_OBSERVERS",
    "DEFAULT_MAX_PROOFS",
    "DEFAULT_MAX_RECORDS",
    "DEFAULT_MAX_SUBJECTS",
    "DEFAULT_RECORD_TTL",
    "DEFAULT_SEQ_WINDOW",
    "DEFAULT_TOMBSTONE_TTL",
    "ELO_RATE",
    "INITIAL_TRUST",
    "MAX_RECORD_TTL",
    "STANDING_DEPARTED",
    "STANDING_MEMBER",
    "STANDING_OWN",
    "STANDING_TRUSTED",
    "STANDING_UNKNOWN",
    "TRUST_ALPHA",
    "TRUST_MAX_ITERATIONS",
    "TRUST_TOLERANCE",
    "ManifestStore",
    "OpinionGraph",
    "ReputationLedger",
    "Standing",
    "Tombstone",
    "TrustVector",
    "eigentrust",
    "elo_update",
    "record_digest",
    "relative_scores",
]
