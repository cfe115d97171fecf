"""Certificate, revocation and authority files: atomic writes, strict reads."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from meshnode.errors import KeyFileError
from meshnode.runtime.store import (
    MAX_CREDENTIAL_FILE_BYTES,
    issued_expiry,
    load_authority_key,
    load_certificate,
    load_revocation,
    log_issued,
    save_authority_key,
    save_certificate,
    save_revocation,
)
from protocol import Identity
from protocol.certificate import issue_certificate, issue_revocation

AUTHORITY = Identity.from_seed(b"\xaa" * 32)
NODE = Identity.from_seed(b"\x01" * 32)
CERT = issue_certificate(AUTHORITY, NODE.node_id, serial=7, issued_at=1.0, expires_at=99.0)


def test_round_trips_and_modes(tmp_path: Path) -> None:
    key_path = save_authority_key(tmp_path / "authority", AUTHORITY)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert load_authority_key(tmp_path / "authority").node_id == AUTHORITY.node_id
    save_certificate(tmp_path / "n.cert", CERT.signed)
    assert stat.S_IMODE((tmp_path / "n.cert").stat().st_mode) == 0o644
    assert load_certificate(tmp_path / "n.cert") == CERT.signed
    revocation = issue_revocation(AUTHORITY, serial=7, revoked_at=2.0, keep_until=99.0)
    save_revocation(tmp_path / "r.rev", revocation.signed)
    assert load_revocation(tmp_path / "r.rev") == revocation.signed
    assert not (tmp_path / "n.cert.tmp").exists()


def test_a_write_replaces_a_planted_symlink_and_never_follows_it(tmp_path: Path) -> None:
    target = tmp_path / "victim"
    target.write_bytes(b"precious")
    (tmp_path / "n.cert").symlink_to(target)
    (tmp_path / "n.cert.tmp").symlink_to(target)
    save_certificate(tmp_path / "n.cert", CERT.signed)
    assert target.read_bytes() == b"precious"
    assert not (tmp_path / "n.cert").is_symlink()
    assert load_certificate(tmp_path / "n.cert") == CERT.signed


@pytest.mark.parametrize(
    ("case", "make", "problem"),
    [
        ("missing", lambda p: None, "no certificate"),
        ("symlink", lambda p: p.symlink_to(p.with_name("real")), "symlink"),
        ("directory", lambda p: p.mkdir(), "not a regular file"),
        ("oversized", lambda p: p.write_bytes(b"\x92" * (MAX_CREDENTIAL_FILE_BYTES + 1)), "larger"),
        ("garbage", lambda p: p.write_bytes(b"\x93\x01\x02"), "not a certificate file"),
        (
            "a revocation",
            lambda p: save_revocation(
                p, issue_revocation(AUTHORITY, serial=7, revoked_at=2.0, keep_until=9.0).signed
            ),
            "not a certificate file",
        ),
    ],
)
def test_certificate_reads_are_strict(
    tmp_path: Path, case: str, make: object, problem: str
) -> None:
    path = tmp_path / "n.cert"
    (tmp_path / "real").write_bytes(b"x")
    make(path)  # type: ignore[operator]
    with pytest.raises(KeyFileError, match=problem):
        load_certificate(path)


def test_the_issued_log_gives_the_latest_expiry(tmp_path: Path) -> None:
    assert issued_expiry(tmp_path, serial=1) is None
    log_issued(tmp_path, 1, NODE.node_id, 50.0)
    log_issued(tmp_path, 2, NODE.node_id, 80.0)
    log_issued(tmp_path, 3, AUTHORITY.node_id, 90.0)
    assert issued_expiry(tmp_path, serial=1) == 50.0
    assert issued_expiry(tmp_path, node_id=NODE.node_id) == 80.0
    assert issued_expiry(tmp_path, serial=3, node_id=NODE.node_id) is None
    assert stat.S_IMODE(os.stat(tmp_path / "issued.log").st_mode) == 0o600
