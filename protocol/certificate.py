"""Membership certificates and revocations issued by a mesh authority. Pure, no I/O.

Theory of operation
-------------------
A mesh may be run with an *authority*: an Ed25519 key pair kept offline by the operator.
The authority signs one :class:`protocol.messages.SignedCertificate` per admitted node,
and a :class:`protocol.messages.SignedRevocation` to take admission back. Both carry a
``body`` of canonical msgpack bytes and a detached signature over exactly those bytes.

Order of checks (:func:`open_certificate`, :func:`open_revocation`): the signature is
verified over the raw body bytes against the authority key the node was configured with
*before* a single byte of the body is parsed, so a forged or foreign certificate costs one
signature check and nothing else. Only then is the body parsed, strictly: an array of
exactly the expected length, a domain string naming its kind and version, byte strings of
the exact length, strings and role lists within their caps
(:data:`MAX_NAME_BYTES`, :data:`MAX_ROLES`, :data:`MAX_ROLE_BYTES`), finite times.

A certificate states: the authority's key, the node id (the node's public key), a display
name, its roles, a serial chosen by the authority, and the interval ``[issued_at,
expires_at)`` in seconds on the mesh clock (UNIX time in the runtime). It is *valid at*
``now`` when ``issued_at <= now + skew`` and ``now < expires_at``.

A revocation names a serial, a node id, or both (then it matches only that serial of that
node). A node-id revocation revokes every certificate of the node issued at or before
``revoked_at``, so the authority can re-admit the node later with a fresh certificate.
``keep_until`` is when the revocation may be forgotten: the expiry of the latest
certificate it revokes (after that, the certificate is refused as expired anyway).

The body starts with a domain string (:data:`CERTIFICATE_DOMAIN`,
:data:`REVOCATION_DOMAIN`), so a signature made for one kind can never pass as the other,
nor as any message signature (those sign ``protocol.schema.signing_bytes``, which starts
with a different domain).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import msgpack
import nacl.bindings
import nacl.exceptions
import nacl.public
import nacl.signing

from protocol.errors import LocalProtocolError
from protocol.identity import (
    PUBLIC_KEY_BYTES,
    Signer,
    Verifier,
    node_id_from_public_key,
    public_key_from_node_id,
)
from protocol.messages import (
    CERTIFICATE_BODY_MAX_BYTES,
    REVOCATION_BODY_MAX_BYTES,
    SignedCertificate,
    SignedRevocation,
)

__all__ = [
    "CERTIFICATE_DOMAIN",
    "MAX_CERTIFICATE_LIFETIME",
    "MAX_NAME_BYTES",
    "MAX_ROLES",
    "MAX_ROLE_BYTES",
    "MAX_SERIAL",
    "REVOCATION_DOMAIN",
    "Certificate",
    "CertificateError",
    "Revocation",
    "issue_certificate",
    "issue_revocation",
    "open_certificate",
    "open_revocation",
    "open_sealed_to_me",
    "seal_to_node",
]

CERTIFICATE_DOMAIN = "meshnode-certificate-v1"
"""First element of every certificate body."""
REVOCATION_DOMAIN = "meshnode-revocation-v1"
"""First element of every revocation body."""
MAX_NAME_BYTES = 64
"""Longest display name in a certificate (UTF-8 bytes)."""
MAX_ROLES = 16
"""Most roles in one certificate. Roles name what a node may do (the authorization rules
match them); a handful per node is typical, sixteen leaves room without letting a
certificate outgrow a packet."""
MAX_ROLE_BYTES = 64
"""Longest role (UTF-8 bytes). A role is 1 to 64 characters of ``[A-Za-z0-9._:/-]``."""
MAX_SERIAL = 2**63 - 1
"""Largest serial (serials are drawn at random below it by the issuer)."""
MAX_CERTIFICATE_LIFETIME = 10 * 365 * 86_400.0
"""Longest interval a certificate may cover (ten years, in seconds): a certificate
claiming more is refused, so a revocation never has to be kept longer than this."""
_ROLE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:/-")
_MAX_TIME = 1e12
"""Latest time a certificate or revocation may name (seconds; about year 33,658)."""


class CertificateError(LocalProtocolError):
    """A certificate or revocation is forged, foreign, malformed or out of bounds."""


@dataclasses.dataclass(frozen=True, slots=True)
class Certificate:
    """A verified membership certificate (only :func:`open_certificate` and
    :func:`issue_certificate` make one from bytes)."""

    authority: bytes
    node_id: str
    name: str
    roles: frozenset[str]
    serial: int
    issued_at: float
    expires_at: float
    signed: SignedCertificate

    def valid_at(self, now: float, skew: float = 0.0) -> bool:
        """In force at ``now``, allowing ``skew`` seconds of clock difference for its
        start (its end is never extended)."""
        return self.issued_at <= now + skew and now < self.expires_at

    def problem_at(self, now: float, skew: float = 0.0) -> str | None:
        """Why it is not in force at ``now`` (None: it is)."""
        if self.issued_at > now + skew:
            return "certificate is not valid yet"
        if now >= self.expires_at:
            return "certificate has expired"
        return None


@dataclasses.dataclass(frozen=True, slots=True)
class Revocation:
    """A verified revocation (see the module docstring for what it matches)."""

    authority: bytes
    serial: int | None
    node_id: str | None
    revoked_at: float
    keep_until: float
    signed: SignedRevocation

    @property
    def key(self) -> tuple[int | None, str | None]:
        """What it revokes: one revocation per key is kept."""
        return (self.serial, self.node_id)

    def revokes(self, cert: Certificate) -> bool:
        """Does this revocation take ``cert`` back?"""
        if cert.authority != self.authority:
            return False
        if self.serial is not None and cert.serial != self.serial:
            return False
        if self.node_id is not None:
            if cert.node_id != self.node_id:
                return False
            if self.serial is None and cert.issued_at > self.revoked_at:
                return False  # a certificate issued after the revocation re-admits the node
        return True


# ------------------------------------------------------------------------ validation


def _time(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CertificateError(f"{what} must be a number")
    seconds = float(value)
    if not math.isfinite(seconds) or not 0.0 <= seconds <= _MAX_TIME:
        raise CertificateError(f"{what} out of range")
    return seconds


def _key(value: Any, what: str) -> bytes:
    if type(value) is not bytes or len(value) != PUBLIC_KEY_BYTES:
        raise CertificateError(f"{what} must be {PUBLIC_KEY_BYTES} raw bytes")
    return value


def _serial(value: Any) -> int:
    if type(value) is not int or not 0 <= value <= MAX_SERIAL:
        raise CertificateError(f"serial must be an integer in [0, {MAX_SERIAL}]")
    return value


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot be a certificate's name (None: it can)."""
    if not isinstance(name, str):
        return "name must be a string"
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        return f"name over {MAX_NAME_BYTES} bytes"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        return "name holds control characters"
    return None


def role_problem(role: object) -> str | None:
    """Why ``role`` cannot be a role (None: it can)."""
    if not isinstance(role, str) or not role:
        return "a role is a non-empty string"
    if len(role) > MAX_ROLE_BYTES:
        return f"role over {MAX_ROLE_BYTES} characters"
    if not set(role) <= _ROLE_CHARS:
        return f"role {role!r} may hold only letters, digits and . _ : / -"
    return None


def _roles(value: Any) -> frozenset[str]:
    if type(value) is not list:
        raise CertificateError("roles must be a list")
    if len(value) > MAX_ROLES:
        raise CertificateError(f"more than {MAX_ROLES} roles")
    for role in value:
        problem = role_problem(role)
        if problem is not None:
            raise CertificateError(problem)
    roles = frozenset(value)
    if len(roles) != len(value):
        raise CertificateError("roles repeat")
    return roles


def _unpack(body: bytes, size_cap: int, length: int, domain: str) -> list[Any]:
    if len(body) > size_cap:
        raise CertificateError(f"body of {len(body)} bytes over {size_cap}")
    try:
        raw = msgpack.unpackb(
            body,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_array_len=max(MAX_ROLES, length),
            max_map_len=0,
            max_str_len=size_cap,
            max_bin_len=size_cap,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises many types for malformed input
        raise CertificateError(f"malformed body: {exc.__class__.__name__}") from None
    if type(raw) is not list or len(raw) != length or raw[0] != domain:
        raise CertificateError(f"not a {domain} body")
    return raw


def _pack(fields: list[Any]) -> bytes:
    packed = msgpack.packb(fields, use_bin_type=True)
    assert isinstance(packed, bytes)
    return packed


# ------------------------------------------------------------------------ certificates


def open_certificate(
    signed: SignedCertificate, authority: bytes, verifier: Verifier
) -> Certificate:
    """Verify ``signed`` against the ``authority`` public key, then parse it.

    Raises :class:`CertificateError` if the signature does not verify (checked first, over
    the raw body bytes), or the body is malformed, names another authority, or breaks a
    cap. Validity in time and revocation are the caller's checks (they depend on ``now``
    and on what it knows)."""
    if not isinstance(signed, SignedCertificate):
        raise CertificateError("not a signed certificate")
    if not verifier(authority, signed.body, signed.signature):
        raise CertificateError("certificate signature does not verify for this authority")
    raw = _unpack(signed.body, CERTIFICATE_BODY_MAX_BYTES, 8, CERTIFICATE_DOMAIN)
    _, authority_key, node_key, name, roles, serial, issued_at, expires_at = raw
    if _key(authority_key, "authority") != authority:
        raise CertificateError("certificate names another authority")
    problem = name_problem(name)
    if problem is not None:
        raise CertificateError(problem)
    issued = _time(issued_at, "issued_at")
    expires = _time(expires_at, "expires_at")
    if expires <= issued:
        raise CertificateError("certificate expires before it is issued")
    if expires - issued > MAX_CERTIFICATE_LIFETIME:
        raise CertificateError("certificate lifetime over the maximum")
    return Certificate(
        authority,
        node_id_from_public_key(_key(node_key, "node")),
        name,
        _roles(roles),
        _serial(serial),
        issued,
        expires,
        signed,
    )


def issue_certificate(
    authority: Signer,
    node_id: str,
    *,
    roles: tuple[str, ...] | list[str] = (),
    name: str = "",
    serial: int,
    issued_at: float,
    expires_at: float,
) -> Certificate:
    """Sign a certificate for ``node_id`` with the ``authority`` key. Raises
    :class:`CertificateError` for any field the parser would refuse; nothing is signed
    then."""
    problem = name_problem(name)
    if problem is not None:
        raise CertificateError(problem)
    role_list = list(roles)
    _roles(role_list)
    _serial(serial)
    issued, expires = _time(issued_at, "issued_at"), _time(expires_at, "expires_at")
    if expires <= issued:
        raise CertificateError("certificate expires before it is issued")
    if expires - issued > MAX_CERTIFICATE_LIFETIME:
        raise CertificateError("certificate lifetime over the maximum")
    body = _pack(
        [
            CERTIFICATE_DOMAIN,
            authority.public_key,
            public_key_from_node_id(node_id),
            name,
            sorted(role_list),
            serial,
            issued,
            expires,
        ]
    )
    if len(body) > CERTIFICATE_BODY_MAX_BYTES:
        raise CertificateError("certificate body over its cap")
    signed = SignedCertificate(body, authority.sign(body))
    return Certificate(
        authority.public_key, node_id, name, frozenset(role_list), serial, issued, expires, signed
    )


# ------------------------------------------------------------------------ revocations


def open_revocation(signed: SignedRevocation, authority: bytes, verifier: Verifier) -> Revocation:
    """Verify ``signed`` against ``authority`` (first, over the raw body), then parse it.
    Raises :class:`CertificateError` for anything wrong."""
    if not isinstance(signed, SignedRevocation):
        raise CertificateError("not a signed revocation")
    if not verifier(authority, signed.body, signed.signature):
        raise CertificateError("revocation signature does not verify for this authority")
    raw = _unpack(signed.body, REVOCATION_BODY_MAX_BYTES, 6, REVOCATION_DOMAIN)
    _, authority_key, serial, node_key, revoked_at, keep_until = raw
    if _key(authority_key, "authority") != authority:
        raise CertificateError("revocation names another authority")
    if serial is None and node_key is None:
        raise CertificateError("a revocation names a serial or a node")
    revoked, keep = _time(revoked_at, "revoked_at"), _time(keep_until, "keep_until")
    if keep - revoked > MAX_CERTIFICATE_LIFETIME + 86_400.0:
        raise CertificateError("revocation kept longer than any certificate lives")
    return Revocation(
        authority,
        None if serial is None else _serial(serial),
        None if node_key is None else node_id_from_public_key(_key(node_key, "node")),
        revoked,
        keep,
        signed,
    )


def issue_revocation(
    authority: Signer,
    *,
    serial: int | None = None,
    node_id: str | None = None,
    revoked_at: float,
    keep_until: float,
) -> Revocation:
    """Sign a revocation of ``serial`` and/or every certificate of ``node_id`` issued at
    or before ``revoked_at``, to be kept until ``keep_until``."""
    if serial is None and node_id is None:
        raise CertificateError("a revocation names a serial or a node")
    if serial is not None:
        _serial(serial)
    revoked, keep = _time(revoked_at, "revoked_at"), _time(keep_until, "keep_until")
    if keep - revoked > MAX_CERTIFICATE_LIFETIME + 86_400.0:
        raise CertificateError("revocation kept longer than any certificate lives")
    body = _pack(
        [
            REVOCATION_DOMAIN,
            authority.public_key,
            serial,
            None if node_id is None else public_key_from_node_id(node_id),
            revoked,
            keep,
        ]
    )
    signed = SignedRevocation(body, authority.sign(body))
    return Revocation(authority.public_key, serial, node_id, revoked, keep, signed)


# ------------------------------------------------------------------------ sealing to a node


def seal_to_node(node_id: str, data: bytes) -> bytes:
    """Encrypt ``data`` so that only the holder of ``node_id``'s private key can read it:
    the node's Ed25519 public key converted to Curve25519, a libsodium sealed box (an
    ephemeral sender key, so the sealer needs no key of its own; 48 bytes of overhead)."""
    public = nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(public_key_from_node_id(node_id))
    return bytes(nacl.public.SealedBox(nacl.public.PublicKey(public)).encrypt(data))


def open_sealed_to_me(seed: bytes, sealed: bytes) -> bytes:
    """Open what :func:`seal_to_node` sealed to the identity of the 32-byte ``seed``;
    raise :class:`CertificateError` if it was not sealed to it or was altered."""
    signing = nacl.signing.SigningKey(seed)
    box = nacl.public.SealedBox(signing.to_curve25519_private_key())
    try:
        return bytes(box.decrypt(sealed))
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        raise CertificateError("sealed data does not open with this node's key") from None
