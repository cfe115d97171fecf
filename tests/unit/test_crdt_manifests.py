"""Unit tests for crdt.manifests: versions, signatures, tombstones, rumors and merge."""

from __future__ import annotations

import dataclasses
import math

import pytest

from crdt import DEFAULT_TOMBSTONE_TTL, ManifestStore, Tombstone
from protocol import (
    Capability,
    Identity,
    LocalProtocolError,
    Manifest,
    ManifestRumor,
    signing_bytes,
)

NOW = 1_000.0
IDS = [Identity.from_seed(bytes([i + 1]) * 32) for i in range(3)]
A, B, C = IDS


def manifest(who: Identity, version: int, name: str = "agent") -> Manifest:
    return Manifest.create(
        who,
        name=name,
        endpoint="127.0.0.1:7946",
        capabilities=[Capability(name="echo", description="repeat the input")],
        version=version,
    )


def signed_by(content: Manifest, signer: Identity) -> Manifest:
    return dataclasses.replace(content, signature=signer.sign(signing_bytes(content)))


def flip(m: Manifest) -> Manifest:
    sig = bytearray(m.signature)
    sig[10] ^= 0x80
    return dataclasses.replace(m, signature=bytes(sig))


def store_of(*manifests: Manifest) -> ManifestStore:
    store = ManifestStore()
    for m in manifests:
        store.apply(m, NOW)
    return store


# --------------------------------------------------------------------------- apply

V1, V2, V3 = manifest(A, 1), manifest(A, 2), manifest(A, 3)
V2_OTHER = manifest(A, 2, name="agent-renamed")


@pytest.mark.parametrize(
    ("deliveries", "expected", "results"),
    [
        ([V1], V1, [True]),
        ([V1, V2], V2, [True, True]),
        ([V2, V1], V2, [True, False]),  # an older version never replaces a newer one
        ([V1, V1], V1, [True, False]),  # duplicate
        ([V3, V2, V1, V3], V3, [True, False, False, False]),
        ([flip(V1)], None, [False]),  # forged
        ([V1, flip(V2)], V1, [True, False]),
        ([signed_by(V1, B)], None, [False]),  # signed by another node
        ([dataclasses.replace(V1, signature=b"\x00" * 64)], None, [False]),
    ],
)
def test_apply_table(
    deliveries: list[Manifest], expected: Manifest | None, results: list[bool]
) -> None:
    """A valid manifest with a higher version wins; anything else changes nothing."""
    store = ManifestStore()
    assert [store.apply(m, NOW) for m in deliveries] == results
    assert store.get(A.node_id) == expected


def test_equal_version_conflict_resolves_to_higher_digest() -> None:
    """Two different manifests at one version: every replica keeps the higher digest."""
    winner = max(V2, V2_OTHER, key=lambda m: m.digest())
    assert store_of(V2, V2_OTHER).get(A.node_id) == winner
    assert store_of(V2_OTHER, V2).get(A.node_id) == winner
    assert store_of(V2, V2_OTHER) == store_of(V2_OTHER, V2)


def test_apply_rejects_non_manifests() -> None:
    store = ManifestStore()
    assert store.apply("manifest", NOW) is False  # type: ignore[arg-type]
    assert len(store) == 0


def test_reading_is_sorted_and_complete() -> None:
    store = store_of(manifest(C, 1), manifest(A, 4), manifest(B, 2))
    ids = sorted(i.node_id for i in IDS)
    assert [m.node_id for m in store.manifests()] == ids
    rumors = store.rumors()
    assert [r.node for r in rumors] == ids
    assert all(r.digest == store.get(r.node).digest() for r in rumors)  # type: ignore[union-attr]
    assert len(store) == 3
    assert A.node_id in store
    assert "nobody" not in store


# --------------------------------------------------------------------------- tombstones


def test_remove_hides_and_blocks_old_versions() -> None:
    """A tombstone hides the manifest and refuses every version up to the buried one."""
    store = store_of(V2)
    assert store.remove(A.node_id, NOW) is True
    assert store.get(A.node_id) is None
    assert A.node_id not in store
    assert store.tombstones() == [Tombstone(A.node_id, 2, NOW + DEFAULT_TOMBSTONE_TTL)]
    assert store.apply(V1, NOW) is False
    assert store.apply(V2, NOW) is False
    assert store.apply(V2_OTHER, NOW) is False
    assert store.rumors() == []


def test_newer_version_after_rejoin_replaces_the_tombstone() -> None:
    store = store_of(V2)
    store.remove(A.node_id, NOW)
    assert store.apply(V3, NOW + 1) is True
    assert store.get(A.node_id) == V3
    assert store.tombstones() == []


def test_tombstone_expires_and_is_pruned() -> None:
    """After now + ttl the tombstone blocks nothing, and prune() drops it."""
    store = store_of(V2)
    store.remove(A.node_id, NOW, ttl=60)
    assert store.prune(NOW + 59) == 0
    assert store.apply(V1, NOW + 59) is False
    assert store.apply(V1, NOW + 60) is True  # expired: an old copy is accepted again
    assert store.get(A.node_id) == V1
    store.remove(A.node_id, NOW + 60, ttl=60)
    assert store.prune(NOW + 120) == 1
    assert store.tombstones() == []


@pytest.mark.parametrize(
    ("held", "version", "result", "buried"),
    [
        ([], None, False, None),  # nothing known, nothing to bury
        ([], 4, True, 4),  # explicit version for a node never seen
        ([V2], None, True, 2),
        ([V2], 5, True, 5),
        ([V3], 2, False, None),  # the live manifest is newer than the tombstone
    ],
)
def test_remove_table(
    held: list[Manifest], version: int | None, result: bool, buried: int | None
) -> None:
    store = store_of(*held)
    assert store.remove(A.node_id, NOW, version=version) is result
    tombs = store.tombstones()
    assert [t.version for t in tombs] == ([] if buried is None else [buried])


def test_tombstones_at_one_version_keep_the_later_expiry() -> None:
    store = store_of(V2)
    store.remove(A.node_id, NOW, ttl=100)
    assert store.remove(A.node_id, NOW, ttl=50) is False
    assert store.remove(A.node_id, NOW, ttl=200) is True
    assert store.tombstones()[0].expires_at == NOW + 200


def test_add_tombstone_ignores_expired_ones() -> None:
    store = store_of(V2)
    assert store.add_tombstone(Tombstone(A.node_id, 2, NOW), NOW) is False
    assert store.get(A.node_id) == V2


@pytest.mark.parametrize("ttl", [0.0, -1.0, math.nan, math.inf])
def test_remove_rejects_bad_ttl(ttl: float) -> None:
    with pytest.raises(LocalProtocolError, match="ttl"):
        store_of(V2).remove(A.node_id, NOW, ttl=ttl)


@pytest.mark.parametrize(
    ("node", "version", "expires_at"),
    [("nobody", 1, 5.0), (A.node_id, -1, 5.0), (A.node_id, 1, math.nan), (A.node_id, True, 5.0)],
)
def test_tombstone_validates_its_fields(node: str, version: int, expires_at: float) -> None:
    with pytest.raises(LocalProtocolError):
        Tombstone(node, version, expires_at)


# --------------------------------------------------------------------------- rumors


def rumor(m: Manifest) -> ManifestRumor:
    return ManifestRumor(node=m.node_id, version=m.version, digest=m.digest())


def test_missing_lists_what_would_win() -> None:
    """Only announced versions newer than (or, at equal version, above) ours are fetched."""
    b1, c1 = manifest(B, 1), manifest(C, 1)
    store = store_of(V2, b1)
    low, high = sorted([V2, V2_OTHER], key=lambda m: m.digest())
    store_low = store_of(low)
    assert store.missing([rumor(V1), rumor(V2), rumor(b1)]) == []
    assert store.missing([rumor(V3), rumor(c1)]) == sorted(
        [rumor(V3), rumor(c1)], key=lambda r: r.node
    )
    assert store_low.missing([rumor(high)]) == [rumor(high)]
    assert store_of(high).missing([rumor(low)]) == []


def test_missing_keeps_the_best_rumor_per_node() -> None:
    assert ManifestStore().missing([rumor(V1), rumor(V3), rumor(V2)]) == [rumor(V3)]


def test_missing_respects_tombstones_until_they_expire() -> None:
    store = store_of(V2)
    store.remove(A.node_id, NOW, ttl=60)
    assert store.missing([rumor(V2)]) == []
    assert store.missing([rumor(V3)]) == [rumor(V3)]
    assert store.missing([rumor(V2)], now=NOW + 60) == [rumor(V2)]


def test_fetching_what_is_missing_catches_up() -> None:
    """Fetch every manifest missing() names: afterwards nothing is missing."""
    source = store_of(V3, manifest(B, 2), manifest(C, 7))
    target = store_of(V1, manifest(B, 5))
    wanted = target.missing(source.rumors())
    for r in wanted:
        fetched = source.get(r.node)
        assert fetched is not None
        assert target.apply(fetched, NOW)
    assert target.missing(source.rumors()) == []
    assert target.get(B.node_id) == manifest(B, 5)


def test_replicas_share_one_rumor_tuple_until_one_changes() -> None:
    """A copy sends the very tuple of its source; a store that receives its own current
    tuple needs nothing, and once it changes the same tuple is read rumor by rumor."""
    b1 = manifest(B, 1)
    source = store_of(V1, b1)
    replica = source.copy()
    shared = source.rumor_tuple()
    assert replica.rumor_tuple() is shared
    assert replica.rumors() == list(shared)
    assert replica.missing(shared) == []
    assert replica.apply(V2, NOW)  # the replica moves on; the source's tuple is old news
    assert replica.rumor_tuple() is not shared
    assert source.rumor_tuple() is shared
    assert replica.missing(shared) == []
    assert replica.remove(B.node_id, NOW, ttl=60)
    assert replica.missing(shared, now=NOW + 61) == [rumor(b1)]  # its tombstone expired
    assert source.missing(replica.rumor_tuple()) == [rumor(V2)]


# --------------------------------------------------------------------------- merge


def test_merge_joins_manifests_and_tombstones() -> None:
    one = store_of(V2, manifest(B, 1))
    one.remove(B.node_id, NOW)
    two = store_of(V3, manifest(B, 1), manifest(C, 1))
    snapshot = two.copy()
    assert one.merge(two, NOW) is True
    assert one.merge(two, NOW) is False
    assert two == snapshot
    assert one.get(A.node_id) == V3
    assert one.get(B.node_id) is None
    assert one.get(C.node_id) == manifest(C, 1)
    reverse = two.copy()
    reverse.merge(store_of(V2, manifest(B, 1)), NOW)
    reverse.remove(B.node_id, NOW)
    assert reverse == one


def test_merge_reverifies_and_prunes() -> None:
    """Manifests are checked with this store's verifier; expired tombstones vanish."""
    lax = ManifestStore(verifier=lambda key, data, sig: True)
    lax.apply(flip(V3), NOW)
    assert lax.get(A.node_id) == flip(V3)
    strict = store_of(V1)
    strict.remove(A.node_id, NOW, ttl=10)
    assert strict.merge(lax, NOW + 20) is True  # the pruned tombstone is the change
    assert strict.get(A.node_id) is None
    assert strict.tombstones() == []
