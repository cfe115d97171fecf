"""Admission: which identities hold a valid membership certificate, sans-I/O.

Theory of operation
-------------------
With a mesh authority configured (``NodeConfig.authority``), :class:`~meshnode.core.node.
NodeCore` owns one :class:`Admission`: the authority's public key, this node's own
certificate, a bounded store of verified certificates by node id and a bounded set of
revocations. The node core asks :meth:`Admission.admits` before it lets anything from or
about a node reach membership, the manifest store, the ledger or the provider.

* **Certificates** arrive as :class:`protocol.messages.SignedCertificate` messages (in
  packets, as rumors, and in push-pull state). :meth:`Admission.offer` checks, in order:
  that the exact bytes are not already held (then nothing is verified again), the
  authority's signature over the raw body (one Ed25519 check; see
  :func:`protocol.certificate.open_certificate`), validity at ``now``, revocation. A
  certificate is kept per node id; a newer one (later ``expires_at``) replaces an older.
* **Revocations** (:meth:`Admission.revoke`) are verified the same way and kept until
  ``keep_until`` (the expiry of the latest certificate they revoke). A held certificate
  they revoke is dropped, and its node id is returned so the node core expels it.
* **Bounds.** At most ``NodeConfig.authority_max_certificates`` certificates: when full,
  expired ones go first, then those of nodes the ``is_member`` callback does not name,
  then (if every holder is a member) the new certificate is refused and counted. At most
  ``NodeConfig.authority_max_revocations`` revocations: the one forgotten soonest goes
  first. Both stores hold only what the authority signed, so their size is bounded by the
  operator's issuance, not by an attacker.

Counters (:attr:`Admission.counters`, see :data:`ADMISSION_COUNTERS`) say what was
refused and why.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from meshnode.errors import AdmissionError
from protocol.certificate import (
    Certificate,
    CertificateError,
    Revocation,
    open_certificate,
    open_revocation,
)
from protocol.identity import Verifier
from protocol.messages import RejoinRequest, SignedCertificate, SignedRevocation

__all__ = ["ADMISSION_COUNTERS", "Admission", "AdmissionError", "revocation_problem"]

ADMISSION_COUNTERS: dict[str, str] = {
    "certificates_verified": "certificate signatures checked",
    "certificates_accepted": "certificates stored (new node, or newer than the one held)",
    "certificates_invalid": "certificates refused: bad signature, other authority, malformed",
    "certificates_out_of_time": "certificates refused: expired or not valid yet",
    "certificates_revoked": "certificates refused or dropped because they are revoked",
    "certificates_evicted": "certificates let go to make room",
    "certificates_refused_full": "certificates refused: the store is full of members",
    "revocations_verified": "revocation signatures checked",
    "revocations_accepted": "revocations stored",
    "revocations_invalid": "revocations refused: bad signature, other authority, malformed",
    "revocations_evicted": "revocations let go to make room",
    "unadmitted_dropped": "envelopes or exchanges dropped: sender holds no valid certificate",
    "unadmitted_news": "messages dropped: about or by a node without a valid certificate",
    "news_awaiting_certificate": "of those, held until the node's certificate arrives",
    "news_awaiting_dropped": "nodes whose held news was let go for room (oldest first)",
    "rejoins_answered": "rejoin requests answered with the keyring",
    "rejoins_refused": "rejoin requests refused (certificate, clock skew or replay)",
}
"""Every counter of :attr:`Admission.counters`, with what it counts."""


REJOIN_NONCES_MAX = 10_000
"""Rejoin request nonces remembered (for replay protection), each for twice the allowed
clock skew. A request costs a signature check and is rate-limited per address by the
shell, so this many covers far more than an honest mesh ever sends in that window; when
full, the oldest is forgotten first (its request is then outside the window anyway, or
nearly so)."""


def _fix(node_id: str) -> str:
    return (
        f"issue one with `meshnode authority issue --dir AUTHORITY_DIR --node-id {node_id} "
        "--role member --days 365 --out cert` and pass it with --cert"
    )


class Admission:
    """Verified certificates and revocations of one node (see the module docstring)."""

    def __init__(
        self,
        authority: bytes,
        own_node_id: str,
        own: SignedCertificate | None,
        *,
        verifier: Verifier,
        now: float,
        max_certificates: int,
        max_revocations: int,
        clock_skew: float = 0.0,
        is_member: Callable[[str], bool] | None = None,
    ) -> None:
        """Raises :class:`AdmissionError` if ``own`` is not a certificate of this
        authority for ``own_node_id``, valid at ``now``."""
        self.authority = authority
        self.node_id = own_node_id
        self._verifier = verifier
        self._max_certificates = max_certificates
        self._max_revocations = max_revocations
        self._skew = clock_skew
        self._is_member = is_member or (lambda _node: False)
        self._certs: dict[str, Certificate] = {}
        self._by_signature: dict[bytes, Certificate] = {}
        self._revocations: dict[tuple[int | None, str | None], Revocation] = {}
        self._revocations_by_signature: dict[bytes, Revocation] = {}
        self._next_expiry: float | None = None
        self._expiry_stale = False
        self._rejoin_nonces: dict[bytes, float] = {}  # nonce -> when it may be forgotten
        self.counters: dict[str, int] = dict.fromkeys(ADMISSION_COUNTERS, 0)
        """Named counts, see :data:`ADMISSION_COUNTERS`."""
        if own is None:
            raise AdmissionError(f"no certificate for this node; {_fix(own_node_id)}")
        try:
            cert = open_certificate(own, authority, verifier)
        except CertificateError as exc:
            raise AdmissionError(f"own certificate refused ({exc}); {_fix(own_node_id)}") from None
        if cert.node_id != own_node_id:
            raise AdmissionError(
                f"the certificate is for node {cert.node_id}, not this node; {_fix(own_node_id)}"
            )
        problem = cert.problem_at(now, clock_skew)
        if problem is not None:
            raise AdmissionError(f"own {problem}; {_fix(own_node_id)}")
        self.own = cert
        self._put(cert)

    # ------------------------------------------------------------------ queries

    def admits(self, node_id: str, now: float) -> bool:
        """Does ``node_id`` hold a certificate valid at ``now`` and not revoked?"""
        cert = self._certs.get(node_id)
        return cert is not None and cert.valid_at(now, self._skew)

    def roles_of(self, node_id: str, now: float) -> frozenset[str]:
        """The roles ``node_id``'s certificate grants (empty when it is not admitted)."""
        cert = self._certs.get(node_id)
        if cert is None or not cert.valid_at(now, self._skew):
            return frozenset()
        return cert.roles

    def certificate(self, node_id: str) -> Certificate | None:
        return self._certs.get(node_id)

    def own_problem(self, now: float) -> str | None:
        """Why peers no longer admit this node's own certificate (revoked by the
        authority, or expired), or None while it is good. The node keeps running, so that
        its operator sees this in its health and can give it a new certificate."""
        if self._revoked(self.own):
            return "this node's certificate is revoked by the mesh authority"
        problem = self.own.problem_at(now, self._skew)
        return None if problem is None else f"this node's {problem}"

    def is_revoked(self, node_id: str) -> bool:
        """Is every certificate of ``node_id`` revoked (a revocation by node id is held)?"""
        return (None, node_id) in self._revocations

    def knows(self, signed: SignedCertificate) -> bool:
        """Are these exact certificate bytes already held (no check needed)?"""
        return self._held(signed) is not None

    def certificates(self, now: float) -> tuple[SignedCertificate, ...]:
        """Every certificate valid at ``now``, own first (for push-pull state)."""
        own = self._certs.get(self.node_id)
        out = [own.signed] if own is not None else []
        out.extend(
            c.signed
            for n, c in self._certs.items()
            if n != self.node_id and c.valid_at(now, self._skew)
        )
        return tuple(out)

    def revocations(self, now: float) -> tuple[SignedRevocation, ...]:
        """Every revocation still kept at ``now`` (for push-pull state)."""
        return tuple(r.signed for r in self._revocations.values() if r.keep_until > now)

    def __len__(self) -> int:
        return len(self._certs)

    @property
    def revocation_count(self) -> int:
        return len(self._revocations)

    # ------------------------------------------------------------------ inputs

    def offer(self, signed: SignedCertificate, now: float) -> Certificate | None:
        """Verify and store a certificate; return it if it is new (the caller spreads
        it), None if it was already held, or refused (counted)."""
        if self._held(signed) is not None:
            return None
        self.counters["certificates_verified"] += 1
        try:
            cert = open_certificate(signed, self.authority, self._verifier)
        except CertificateError:
            self.counters["certificates_invalid"] += 1
            return None
        if not cert.valid_at(now, self._skew):
            self.counters["certificates_out_of_time"] += 1
            return None
        if self._revoked(cert):
            self.counters["certificates_revoked"] += 1
            return None
        held = self._certs.get(cert.node_id)
        if held is not None:
            if (cert.expires_at, cert.issued_at) <= (held.expires_at, held.issued_at):
                return None  # an older (or equally recent) certificate of the same node
        elif len(self._certs) >= self._max_certificates and not self._make_room(now):
            self.counters["certificates_refused_full"] += 1
            return None
        self._put(cert)
        self.counters["certificates_accepted"] += 1
        return cert

    def revoke(self, signed: SignedRevocation, now: float) -> tuple[Revocation | None, list[str]]:
        """Verify and store a revocation. Returns it if it is new (else None), and the node
        ids whose held certificate it revoked (they are no longer admitted). A revocation
        already held (same bytes) costs no signature check."""
        known = self._revocations_by_signature.get(signed.signature)
        if known is not None and known.signed == signed:
            return None, []
        self.counters["revocations_verified"] += 1
        try:
            revocation = open_revocation(signed, self.authority, self._verifier)
        except CertificateError:
            self.counters["revocations_invalid"] += 1
            return None, []
        if revocation.keep_until <= now:
            return None, []  # everything it could revoke has expired
        held = self._revocations.get(revocation.key)
        if held is not None and held.signed == signed:
            return None, []
        if held is None and len(self._revocations) >= self._max_revocations:
            self._evict_revocation(now)
        if held is None or revocation.revoked_at > held.revoked_at:
            if held is not None:
                self._revocations_by_signature.pop(held.signed.signature, None)
            self._revocations[revocation.key] = revocation
            self._revocations_by_signature[signed.signature] = revocation
            self.counters["revocations_accepted"] += 1
        else:
            return None, []
        revoked = [n for n, c in self._certs.items() if revocation.revokes(c)]
        for node in revoked:
            self._drop(node)
            self.counters["certificates_revoked"] += 1
        return revocation, revoked

    def prune(self, now: float) -> list[str]:
        """Drop expired certificates and revocations past ``keep_until``; return the node
        ids whose certificate expired (they are no longer admitted; never our own: an
        expired own certificate stays, and peers drop us)."""
        expired = [n for n, c in self._certs.items() if n != self.node_id and c.expires_at <= now]
        for node in expired:
            self._drop(node)
        self._expiry_stale = True
        for key in [k for k, r in self._revocations.items() if r.keep_until <= now]:
            gone = self._revocations.pop(key)
            self._revocations_by_signature.pop(gone.signed.signature, None)
        return expired

    def next_expiry(self) -> float | None:
        """The earliest expiry among the certificates of other nodes (None: none held).
        O(1) between changes of the store (the node core asks at every tick)."""
        if self._expiry_stale:
            times = [c.expires_at for n, c in self._certs.items() if n != self.node_id]
            self._next_expiry = min(times) if times else None
            self._expiry_stale = False
        return self._next_expiry

    def rejoin_problem(
        self, sender: str, request: RejoinRequest, now: float, max_skew: float
    ) -> str | None:
        """Why a rejoin request from ``sender`` (the verified signer of its envelope) must
        not be answered with the keyring (None: it may). The request's timestamp must be
        within ``max_skew`` seconds of ``now``, its certificate valid, unrevoked, of this
        authority and the sender's own, its nonce not seen within twice ``max_skew``."""
        problem = self._rejoin_problem(sender, request, now, max_skew)
        self.counters["rejoins_refused" if problem else "rejoins_answered"] += 1
        return problem

    def _rejoin_problem(
        self, sender: str, request: RejoinRequest, now: float, max_skew: float
    ) -> str | None:
        if abs(request.timestamp - now) > max_skew:
            return "request timestamp outside the allowed clock skew"
        cert = self._held(request.certificate)
        if cert is None:
            try:
                cert = open_certificate(request.certificate, self.authority, self._verifier)
            except CertificateError as exc:
                return str(exc)
        if cert.node_id != sender:
            return "the certificate is not the sender's"
        problem = cert.problem_at(now, self._skew)
        if problem is not None:
            return problem
        if self._revoked(cert):
            return "certificate revoked"
        nonces = self._rejoin_nonces
        while nonces:
            nonce, until = next(iter(nonces.items()))
            if until > now and len(nonces) < REJOIN_NONCES_MAX:
                break
            del nonces[nonce]
        if request.nonce in nonces:
            return "replayed request"
        nonces[request.nonce] = now + 2 * max_skew
        return None

    # ------------------------------------------------------------------ internals

    def _held(self, signed: SignedCertificate) -> Certificate | None:
        """The held certificate with exactly these bytes (no signature check needed)."""
        cert = self._by_signature.get(signed.signature)
        return cert if cert is not None and cert.signed == signed else None

    def _put(self, cert: Certificate) -> None:
        old = self._certs.get(cert.node_id)
        if old is not None:
            self._by_signature.pop(old.signed.signature, None)
        self._certs[cert.node_id] = cert
        self._by_signature[cert.signed.signature] = cert
        if cert.node_id != self.node_id and (
            old is not None or self._next_expiry is None or cert.expires_at < self._next_expiry
        ):
            self._expiry_stale = True

    def _drop(self, node: str) -> None:
        cert = self._certs.pop(node, None)
        if cert is not None:
            self._by_signature.pop(cert.signed.signature, None)
            self._expiry_stale = True

    def _revoked(self, cert: Certificate) -> bool:
        for key in ((cert.serial, None), (None, cert.node_id), (cert.serial, cert.node_id)):
            revocation = self._revocations.get(key)
            if revocation is not None and revocation.revokes(cert):
                return True
        return False

    def _make_room(self, now: float) -> bool:
        victim = next(
            (n for n, c in self._certs.items() if n != self.node_id and c.expires_at <= now),
            None,
        )
        if victim is None:
            victim = next(
                (n for n in self._certs if n != self.node_id and not self._is_member(n)), None
            )
        if victim is None:
            return False
        self._drop(victim)
        self.counters["certificates_evicted"] += 1
        return True

    def _evict_revocation(self, now: float) -> None:
        key = min(self._revocations, key=lambda k: self._revocations[k].keep_until)
        gone = self._revocations.pop(key)
        self._revocations_by_signature.pop(gone.signed.signature, None)
        self.counters["revocations_evicted"] += 1


class _HasAdmission(Protocol):
    admission: Admission | None


def revocation_problem(core: _HasAdmission, signed: SignedRevocation) -> str | None:
    """Why ``signed`` cannot be taken in by ``core`` (None: it can): no authority, or it
    does not verify for it, or it is malformed. For the operator's route, which answers
    with a clear error instead of dropping it silently as gossip would."""
    admission = core.admission
    if admission is None:
        return "this node runs without a mesh authority"
    try:
        open_revocation(signed, admission.authority, admission._verifier)
    except CertificateError as exc:
        return str(exc)
    return None
