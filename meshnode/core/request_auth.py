"""Signed HTTP requests between nodes: a node's Ed25519 key as an A2A credential, sans I/O.

Theory of operation
-------------------
A node calling another node's HTTP API (its A2A endpoint) can prove who it is with its
own node key instead of the callee's API token. It adds four headers:

=========================  ===========================================================
``Meshnode-Node``          its node id (the Ed25519 public key, 52 base32 characters)
``Meshnode-Timestamp``     UNIX seconds, a decimal integer
``Meshnode-Nonce``         128 random bits, 32 lowercase hex digits
``Meshnode-Signature``     the Ed25519 signature (base64url, no padding, 86 characters)
                           over :func:`signing_input`
=========================  ===========================================================

The signature covers, one per line: the scheme tag :data:`SCHEME`, the HTTP method
(upper case), the **audience** (the node id of the node the request is for), the path
with its query string, the timestamp, the nonce, the SHA-256 of the body (hex) and the
signer's node id. The audience is not sent: the callee verifies with its own node id, so
a request signed for one node fails everywhere else. (The ``Host`` header would not do:
whoever receives a signed request chooses the ``Host`` it replays it with; a node id is
the one thing an endpoint cannot pretend to be without the key, see
:func:`protocol.jws.verify_card`.)

The callee checks, cheapest first, and refuses (401) at the first failure:

1. the four headers are all present and well formed (:func:`parse_headers`: lengths and
   alphabets checked before anything is decoded);
2. the timestamp is within :data:`FRESHNESS_S` of the callee's clock
   (:func:`freshness_problem`);
3. the signer is an admitted member of the mesh (:func:`signer_admitted`): under a mesh
   authority, a node holding a valid certificate that is not revoked; with a keyring
   (and sealed input required), a current member, alive or suspect, of the callee's
   membership view (it reached the view through sealed traffic, so it holds the key).
   A mesh with neither admits anyone who joins, so there a signature grants nothing.
   A signer that is not admitted is not a credential at all: the request is judged as
   an unsigned one (the API's usual rule), and its body is never read for the
   signature's sake;
4. the signature verifies over the request as received (body included);
5. the nonce was not seen from this signer within the freshness window
   (:class:`ReplayCache`, bounded by :data:`REPLAY_CACHE_ENTRIES`; when it is full of
   live nonces a new one is refused rather than an old one forgotten).

An admitted signer gets WORK access (it may send A2A messages and cancel its own tasks);
what it may see is its own tasks (the runtime keeps who sent which).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import random
import re
from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING

from meshnode.core.member import MemberState
from protocol.errors import LocalProtocolError
from protocol.identity import Signer, public_key_from_node_id, verify

if TYPE_CHECKING:
    from meshnode.core.node import NodeCore

__all__ = [
    "FRESHNESS_S",
    "HEADER_NODE",
    "HEADER_NONCE",
    "HEADER_SIGNATURE",
    "HEADER_TIMESTAMP",
    "REPLAY_CACHE_ENTRIES",
    "SCHEME",
    "SIGNED_HEADERS",
    "ReplayCache",
    "RequestSignatureError",
    "SignedRequest",
    "check_signed",
    "freshness_problem",
    "parse_headers",
    "sign_request",
    "signer_admitted",
    "signing_input",
    "verify_request",
]

SCHEME = "meshnode-ed25519-v1"
"""First line of what is signed: names the scheme and its version, so a signature made
for anything else can never pass as a request signature."""
HEADER_NODE = "Meshnode-Node"
HEADER_TIMESTAMP = "Meshnode-Timestamp"
HEADER_NONCE = "Meshnode-Nonce"
HEADER_SIGNATURE = "Meshnode-Signature"
SIGNED_HEADERS = (HEADER_NODE, HEADER_TIMESTAMP, HEADER_NONCE, HEADER_SIGNATURE)
"""The four headers of a signed request; any one of them present makes it one."""

FRESHNESS_S = 30.0
"""Seconds a signed request stays valid either side of the callee's clock. Longer
tolerates worse clocks and a slower network; shorter shrinks what the replay cache must
remember (everything seen within the window)."""
REPLAY_CACHE_ENTRIES = 65_536
"""Most (signer, nonce) pairs remembered (about 10 MB). Each lives ``2 × FRESHNESS_S``
seconds, so the cache sustains about 1,000 signed requests a second; beyond that new
signed requests are refused until old nonces expire (never a nonce forgotten early,
which would let it be replayed)."""
NONCE_CHARS = 32
"""A nonce: 128 random bits as lowercase hex."""
SIGNATURE_CHARS = 86
"""A 64-byte Ed25519 signature in base64url without padding."""
MAX_TIMESTAMP_CHARS = 12
"""Digits of a timestamp (UNIX seconds fit in 11 until the year 5138)."""
MAX_NODE_ID_CHARS = 52
"""Characters of a node id (a 32-byte key in base32 without padding)."""

_HEX = re.compile(r"[0-9a-f]+")
_B64URL = re.compile(r"[A-Za-z0-9_-]+")
_DIGITS = re.compile(r"[0-9]+")


class RequestSignatureError(ValueError):
    """A signed request that must be refused; the message says why."""


@dataclasses.dataclass(frozen=True, slots=True)
class SignedRequest:
    """The signature headers of one request, checked for form only."""

    node_id: str
    timestamp: int
    nonce: str
    signature: bytes


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def signing_input(
    method: str, audience: str, path: str, timestamp: int, nonce: str, digest: str, node_id: str
) -> bytes:
    """What is signed (see the module docstring)."""
    lines = (SCHEME, method.upper(), audience, path, str(timestamp), nonce, digest, node_id)
    return "\n".join(lines).encode()


def sign_request(
    signer: Signer,
    node_id: str,
    audience: str,
    method: str,
    path: str,
    body: bytes,
    now: float,
    rng: random.Random,
) -> dict[str, str]:
    """The four headers that sign this request as ``node_id`` (whose key ``signer``
    holds) for the node ``audience``. ``path`` includes the query string."""
    timestamp = int(now)
    nonce = f"{rng.getrandbits(128):032x}"
    data = signing_input(method, audience, path, timestamp, nonce, body_digest(body), node_id)
    signature = base64.urlsafe_b64encode(signer.sign(data)).rstrip(b"=").decode()
    return {
        HEADER_NODE: node_id,
        HEADER_TIMESTAMP: str(timestamp),
        HEADER_NONCE: nonce,
        HEADER_SIGNATURE: signature,
    }


def parse_headers(headers: Mapping[str, str]) -> SignedRequest | None:
    """The signature headers of a request (None when it carries none of them). Raises
    :class:`RequestSignatureError` when some are missing or any is malformed. Every
    length is checked before a value is decoded."""
    values = {name: headers.get(name) for name in SIGNED_HEADERS}
    if all(v is None for v in values.values()):
        return None
    missing = [name for name, v in values.items() if v is None]
    if missing:
        raise RequestSignatureError(f"a signed request needs every header: {', '.join(missing)}")
    node_id, stamp, nonce, sig = (str(values[name]) for name in SIGNED_HEADERS)
    if len(node_id) != MAX_NODE_ID_CHARS:
        raise RequestSignatureError(f"{HEADER_NODE} is not a node id")
    try:
        public_key_from_node_id(node_id)
    except LocalProtocolError:
        raise RequestSignatureError(f"{HEADER_NODE} is not a node id") from None
    if not 0 < len(stamp) <= MAX_TIMESTAMP_CHARS or not _DIGITS.fullmatch(stamp):
        raise RequestSignatureError(f"{HEADER_TIMESTAMP} must be UNIX seconds (digits)")
    if len(nonce) != NONCE_CHARS or not _HEX.fullmatch(nonce):
        raise RequestSignatureError(f"{HEADER_NONCE} must be {NONCE_CHARS} lowercase hex digits")
    if len(sig) != SIGNATURE_CHARS or not _B64URL.fullmatch(sig):
        raise RequestSignatureError(
            f"{HEADER_SIGNATURE} must be {SIGNATURE_CHARS} base64url characters"
        )
    try:
        raw = base64.urlsafe_b64decode(sig + "==")
    except (binascii.Error, ValueError):
        raise RequestSignatureError(f"{HEADER_SIGNATURE} is not base64url") from None
    return SignedRequest(node_id, int(stamp), nonce, raw)


def freshness_problem(timestamp: int, now: float, window: float = FRESHNESS_S) -> str | None:
    """Why ``timestamp`` is too old or too far ahead of ``now`` (None: fresh)."""
    skew = timestamp - now
    if skew > window:
        return f"the request is dated {skew:.0f} s ahead of this node's clock"
    if -skew > window:
        return f"the request is {-skew:.0f} s old (at most {window:.0f} s)"
    return None


def verify_request(
    signed: SignedRequest, audience: str, method: str, path: str, body: bytes
) -> bool:
    """Does ``signed``'s signature cover this request, as received by ``audience``?"""
    data = signing_input(
        method, audience, path, signed.timestamp, signed.nonce, body_digest(body), signed.node_id
    )
    return verify(public_key_from_node_id(signed.node_id), data, signed.signature)


def signer_admitted(core: NodeCore, node_id: str, now: float, *, sealed: bool) -> bool:
    """Is ``node_id`` an admitted member of this node's mesh? Under a mesh authority: it
    holds a valid certificate, not revoked. Otherwise, with ``sealed`` (a keyring, and
    sealed input required): it is a current member (alive or suspect) of the membership
    view. Otherwise nobody is (an open mesh admits whoever joins)."""
    if node_id == core.node_id:
        return False  # our own key arriving over HTTP was not sent by us
    if core.admission is not None:
        return core.admits(node_id, now)
    if not sealed:
        return False
    member = core.membership.member(node_id)
    return member is not None and member.state in (MemberState.ALIVE, MemberState.SUSPECT)


class ReplayCache:
    """(signer, nonce) pairs seen in the last ``2 × window`` seconds, at most
    ``capacity`` of them (see :data:`REPLAY_CACHE_ENTRIES`)."""

    def __init__(self, capacity: int = REPLAY_CACHE_ENTRIES, window: float = FRESHNESS_S) -> None:
        if capacity < 1 or window <= 0:
            raise ValueError("capacity and window must be positive")
        self.capacity = capacity
        self.window = window
        self._seen: OrderedDict[tuple[str, str], float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def check(self, node_id: str, nonce: str, now: float) -> str | None:
        """Remember the pair; why it must be refused (None: first use, remembered)."""
        seen = self._seen
        while seen:
            key, expires = next(iter(seen.items()))
            if expires > now:
                break
            del seen[key]
        pair = (node_id, nonce)
        if pair in seen:
            return "the request was replayed (its nonce was already used)"
        if len(seen) >= self.capacity:
            return "too many signed requests in the freshness window; retry shortly"
        seen[pair] = now + 2 * self.window
        return None


def check_signed(
    signed: SignedRequest,
    audience: str,
    method: str,
    path: str,
    body: bytes,
    now: float,
    cache: ReplayCache,
) -> str | None:
    """Signature then nonce (the signer was already found admitted and fresh): why the
    request, received by the node ``audience``, must be refused, or None."""
    if not verify_request(signed, audience, method, path, body):
        return "the request signature does not verify (signed for this node and this body?)"
    return cache.check(signed.node_id, signed.nonce, now)
