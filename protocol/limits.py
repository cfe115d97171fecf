"""Hard limits on everything the decoder accepts.

Every length the wire format can express has a ceiling here. The decoder checks the raw
buffer size first, then hands msgpack these per-type limits (so it never allocates a
string, bytes, array or map larger than allowed), then checks nesting depth and every
field's own limit before building a single message object. Because every msgpack object
takes at least one byte, a decoded frame allocates at most a small constant times its
byte size.

The encoder enforces exactly the same limits (``protocol.codec.check_encodable``), so
nothing we sign is refused by a peer that runs the same limits.

Changing a limit is a protocol change: peers with a smaller limit will drop what we send.
"""

from __future__ import annotations

MAX_DATAGRAM_BYTES = 65_507
"""Largest UDP payload accepted (bytes). We *send* at most ``NodeConfig.max_packet_bytes``
(default 1400, below a 1500-byte Ethernet MTU) but accept anything IPv4 UDP can carry."""

MAX_FRAME_BYTES = 16 * 1024 * 1024
"""Largest TCP frame (push-pull state, manifest fetch, task frames) accepted, 16 MiB.
A 10,000-member push-pull with manifests and ledger digests is about 3 MiB."""

MAX_STR_BYTES = 1024 * 1024
"""Largest single string (UTF-8 bytes), 1 MiB. Fields have tighter limits of their own."""

MAX_BIN_BYTES = 1024 * 1024
"""Largest single byte string, 1 MiB."""

MAX_ARRAY_LEN = 200_000
"""Most items in one array (push-pull member lists are the largest)."""

MAX_MAP_LEN = 4_096
"""Most keys in one map (only task payloads and JSON schemas use maps)."""

MAX_DEPTH = 32
"""Deepest nesting of arrays and maps in a frame, envelope included."""

ENVELOPE_DEPTH = 2
"""Levels of nesting the envelope puts around each message (the envelope array and its
batch array): a message's own nesting may be at most ``MAX_DEPTH - ENVELOPE_DEPTH``."""

MAX_MESSAGES_PER_ENVELOPE = 1_024
"""Most messages in one envelope."""

MAX_VALUE_BYTES = 4 * 1024 * 1024
"""Largest free-form value (task input or output), measured as its msgpack encoding."""

MAX_MANIFEST_BYTES = 256 * 1024
"""Largest signed manifest accepted or published (its bare msgpack encoding), 256 KiB:
32 capabilities with full descriptions, tags and JSON schemas fit with room to spare.
A manifest fetch reads at most this many bytes from the peer."""

SEAL_OVERHEAD_BYTES = 42
"""Bytes the keyring's seal adds to every datagram, frame and body (``protocol.keyring``:
magic 1 + version 1 + nonce 24 + Poly1305 tag 16). A sealed frame may be this much larger
than its plaintext limit. A datagram is one UDP payload whatever it holds, so the
plaintext inside a sealed datagram is at most ``MAX_DATAGRAM_BYTES - SEAL_OVERHEAD_BYTES``
(``NodeConfig`` refuses a ``max_packet_bytes`` above that with a keyring)."""

MAX_SEALED_FRAME_BYTES = MAX_FRAME_BYTES + SEAL_OVERHEAD_BYTES
"""Largest sealed TCP body or task frame accepted: a plaintext frame at its limit, sealed."""
