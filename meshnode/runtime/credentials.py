"""Admission credentials on disk: a keyring, a mesh authority, identities, certificates.

What ``meshnode keys init``, ``meshnode authority init|issue`` and ``meshnode keygen`` do,
as functions for programs that set up a mesh themselves (the demo, tests, deployment
scripts). Every secret is written 0600, atomically and durably, never through a symlink
(see :mod:`meshnode.runtime.store`).
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path
from typing import NamedTuple

from meshnode.runtime import store
from protocol import Identity, is_node_id
from protocol.certificate import MAX_SERIAL, issue_certificate
from protocol.keyring import Keyring

CERTIFICATE_DAYS_MAX = 3_650
"""Longest validity ``issue_certificate_file`` (and ``meshnode authority issue --days``)
accepts, days: ten years, the protocol's cap on a certificate's lifetime."""


class IssuedCertificate(NamedTuple):
    """A certificate written by :func:`issue_certificate_file`."""

    path: Path
    serial: int
    node_id: str
    roles: frozenset[str]
    expires_at: float


def init_keyring(path: str | os.PathLike[str], label: str = "", *, force: bool = False) -> Keyring:
    """Create a keyring file holding one fresh key (``meshnode keys init``). Raises
    ``ValueError`` if ``path`` exists and not ``force``."""
    if os.path.lexists(path) and not force:
        raise ValueError(f"{path} exists; pass --force to replace it")
    ring = Keyring.new(label)
    store.save_keyring(path, ring)
    return ring


def init_authority(directory: str | os.PathLike[str], *, force: bool = False) -> Identity:
    """The mesh authority key in ``directory`` (``meshnode authority init``): loaded if one
    is there (unless ``force``), else created. Its ``node_id`` is the public key nodes are
    given with ``--authority``."""
    path = Path(directory) / store.AUTHORITY_KEY_FILE
    if os.path.lexists(path) and not force:
        return store.load_authority_key(directory)
    key = Identity.generate()
    store.save_authority_key(directory, key)
    return key


def init_identity(data_dir: str | os.PathLike[str]) -> Identity:
    """A node's identity in its data dir (``meshnode keygen``): loaded, or created."""
    return store.load_or_create_identity(Path(data_dir) / store.KEY_FILE)


def issue_certificate_file(
    authority_dir: str | os.PathLike[str],
    node_id: str,
    *,
    days: float,
    roles: tuple[str, ...] | list[str] = (),
    name: str = "",
    out: str | os.PathLike[str] | None = None,
) -> IssuedCertificate:
    """Sign a membership certificate for ``node_id`` with the authority in
    ``authority_dir`` (``meshnode authority issue``), valid ``days`` from now, with a
    random serial; write it to ``out`` (default ``NODE_ID_PREFIX.cert``) and log it in the
    authority's issued log (revocations look up expiries there). Raises ``ValueError``
    for a bad node id, roles, name or validity."""
    if not is_node_id(node_id):
        raise ValueError(f"--node-id {node_id!r} is not a node id (see meshnode id)")
    if not 0 < days <= CERTIFICATE_DAYS_MAX:
        raise ValueError(f"--days must be in (0, {CERTIFICATE_DAYS_MAX}]")
    key = store.load_authority_key(authority_dir)
    now = time.time()
    serial = secrets.randbelow(MAX_SERIAL) + 1
    cert = issue_certificate(
        key,
        node_id,
        roles=tuple(roles),
        name=name,
        serial=serial,
        issued_at=now,
        expires_at=now + days * 86_400.0,
    )
    path = Path(out) if out is not None else Path(f"{node_id[:10]}.cert")
    store.save_certificate(path, cert.signed)
    store.log_issued(authority_dir, serial, node_id, cert.expires_at)
    return IssuedCertificate(path, serial, node_id, cert.roles, cert.expires_at)


__all__ = [
    "CERTIFICATE_DAYS_MAX",
    "IssuedCertificate",
    "init_authority",
    "init_identity",
    "init_keyring",
    "issue_certificate_file",
]
