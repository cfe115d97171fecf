"""The credentials toolkit (``from meshnode import init_keyring, ...``) writes what the
CLI writes: a 0600 keyring that refuses to be overwritten silently, an authority key
loaded again rather than replaced, identities, and certificates that open under the
authority and name the node, its roles and an expiry ``days`` ahead."""

from __future__ import annotations

import stat
import time
from pathlib import Path

import pytest

from meshnode import init_authority, init_identity, init_keyring, issue_certificate_file
from meshnode.runtime.store import load_certificate, load_keyring
from protocol import verify
from protocol.certificate import open_certificate
from protocol.identity import public_key_from_node_id


def test_a_keyring_is_private_and_not_replaced_by_accident(tmp_path: Path) -> None:
    path = tmp_path / "ring.json"
    ring = init_keyring(path, "prod")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_keyring(path) == ring and ring.label == "prod"
    with pytest.raises(ValueError, match="exists"):
        init_keyring(path, "prod")
    assert load_keyring(path) == ring
    assert init_keyring(path, "prod", force=True) != ring


def test_an_authority_and_identities_are_created_once(tmp_path: Path) -> None:
    authority = init_authority(tmp_path / "ca")
    assert init_authority(tmp_path / "ca").node_id == authority.node_id
    node = init_identity(tmp_path / "n1")
    assert init_identity(tmp_path / "n1").node_id == node.node_id
    assert init_identity(tmp_path / "n2").node_id != node.node_id


def test_an_issued_certificate_opens_under_the_authority(tmp_path: Path) -> None:
    authority = init_authority(tmp_path / "ca")
    node = init_identity(tmp_path / "n1")
    before = time.time()
    issued = issue_certificate_file(
        tmp_path / "ca", node.node_id, days=2, roles=("analyst",), out=tmp_path / "n1.cert"
    )
    cert = open_certificate(
        load_certificate(issued.path), public_key_from_node_id(authority.node_id), verify
    )
    assert cert.node_id == node.node_id and cert.roles == {"analyst"}
    assert cert.serial == issued.serial
    assert before + 2 * 86_400 <= cert.expires_at <= time.time() + 2 * 86_400


@pytest.mark.parametrize(
    ("node_id", "days", "match"),
    [("not-a-node-id", 1.0, "not a node id"), (None, 0.0, "--days"), (None, 4_000.0, "--days")],
)
def test_issuing_refuses_bad_arguments(
    tmp_path: Path, node_id: str | None, days: float, match: str
) -> None:
    init_authority(tmp_path / "ca")
    target = node_id or init_identity(tmp_path / "n").node_id
    with pytest.raises(ValueError, match=match):
        issue_certificate_file(tmp_path / "ca", target, days=days, out=tmp_path / "x.cert")
    assert not (tmp_path / "x.cert").exists()
