"""The error hierarchy shared by every layer of meshnode.

There is one root, :class:`MeshError`. Protocol errors split the way h11 splits them:

* :class:`RemoteProtocolError` — a peer sent us something we refuse (malformed bytes,
  an oversized field, an unknown type tag, a bad signature). Every decoder raises only
  subclasses of it, whatever the input, so a shell can catch one type and drop the packet.
* :class:`LocalProtocolError` — *we* tried to build or encode something invalid (a manifest
  over its limits, a negative cost). This is a bug or bad user input on our side.

Foreign exceptions (msgpack's, PyNaCl's, UnicodeDecodeError) are translated into these once,
at the boundary where they happen, and never leak upward.

The errors of the layers above (a data dir in use, an unreadable key file, a failed
delegation, an invalid config) live in ``meshnode.errors`` under the same root.
"""

from __future__ import annotations


class MeshError(Exception):
    """Root of every error meshnode raises on purpose."""


class ProtocolError(MeshError):
    """Something about the wire format or the signed objects is wrong."""


class LocalProtocolError(ProtocolError, ValueError):
    """We were asked to build or encode an invalid object."""


class RemoteProtocolError(ProtocolError):
    """Input received from elsewhere is unacceptable; drop it and count it."""


class MalformedMessage(RemoteProtocolError):
    """The bytes are not a well-formed envelope or message (wrong types, truncated, ...)."""


class LimitExceeded(RemoteProtocolError):
    """A length, count, size or nesting depth is over its documented hard limit."""


class UnknownMessageType(RemoteProtocolError):
    """The type tag is not one this version knows."""


class UnsupportedVersion(RemoteProtocolError):
    """The envelope's protocol version is outside [MIN_VERSION, MAX_VERSION]."""


class BadSignature(RemoteProtocolError):
    """A signature does not verify against the key of the node it claims to come from."""


class KeyringError(MeshError, ValueError):
    """A keyring rule was broken: a malformed key or keyring, an operation refused
    (removing the primary, using a key not installed, a full ring)."""


class SealRejected(KeyringError, RemoteProtocolError):
    """Sealed bytes from elsewhere do not open under any installed key and label (or are
    not sealed at all when sealing is required); drop them and count them."""
