"""Properties of the manifest store (Hypothesis).

Manifests are signed once, at import, from a small pool of deterministic identities; the
strategies sample them, and tombstones, as operations delivered in any order.

The merge laws are checked on stores capped at exactly what the pool can fill (one
manifest per identity, the largest of them): within the caps they change nothing. Once a
cap is hit, a store keeps the nodes that arrived first, so replicas may hold different node
sets; the last properties state what stays true (bounds, first come first kept, versions
of held nodes still converge).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from hypothesis import given, settings
from hypothesis import strategies as st

from crdt import ManifestStore, Tombstone
from protocol import Capability, Identity, Manifest, signing_bytes

NOW = 5_000.0
IDS = [Identity.from_seed(bytes([i + 1]) * 32) for i in range(4)]
VERSIONS = range(4)


def make(who: Identity, version: int, variant: int) -> Manifest:
    return Manifest.create(
        who,
        name=f"agent-{variant}",
        endpoint=f"10.0.0.{variant + 1}:7946",
        capabilities=[Capability(name=f"cap{variant}", description="does a thing")],
        version=version,
    )


MANIFESTS = [make(who, v, variant) for who in IDS for v in VERSIONS for variant in range(2)]
TOMBSTONES = [
    Tombstone(who.node_id, v, NOW + ttl) for who in IDS for v in VERSIONS for ttl in (10.0, 1e4)
]
EXPIRED_TOMBSTONES = [Tombstone(who.node_id, v, NOW - 1.0) for who in IDS for v in VERSIONS]


def forged(m: Manifest, index: int) -> Manifest:
    sig = bytearray(m.signature)
    sig[index] ^= 0x04
    return dataclasses.replace(m, signature=bytes(sig))


def wrong_key(m: Manifest) -> Manifest:
    other = IDS[(IDS.index(next(i for i in IDS if i.node_id == m.node_id)) + 1) % len(IDS)]
    return dataclasses.replace(m, signature=other.sign(signing_bytes(m)))


Op = Manifest | Tombstone
ops = st.lists(st.sampled_from([*MANIFESTS, *TOMBSTONES]), max_size=30)
manifest_ops = st.lists(st.sampled_from(MANIFESTS), max_size=30)
bad_manifests = st.one_of(
    st.builds(forged, st.sampled_from(MANIFESTS), st.integers(0, 63)),
    st.builds(wrong_key, st.sampled_from(MANIFESTS)),
)
SETTINGS = settings(max_examples=200, deadline=None)


def deliver(store: ManifestStore, op: Op, now: float = NOW) -> bool:
    if isinstance(op, Tombstone):
        return store.add_tombstone(op, now)
    return store.apply(op, now)


LARGEST = max(m.wire_bytes() for m in MANIFESTS)


def build(items: Iterable[Op], now: float = NOW) -> ManifestStore:
    store = ManifestStore(max_manifests=len(IDS), max_bytes=len(IDS) * LARGEST)
    for op in items:
        deliver(store, op, now)
    return store


def merged(*stores: ManifestStore, now: float = NOW) -> ManifestStore:
    out = stores[0].copy()
    for other in stores[1:]:
        out.merge(other, now)
    return out


def assert_same(one: ManifestStore, two: ManifestStore) -> None:
    assert one == two
    assert one.manifests() == two.manifests()
    assert one.tombstones() == two.tombstones()
    assert one.rumors() == two.rumors()


def winner(items: Iterable[Op], node: str) -> Op | None:
    """The expected entry for ``node``: the greatest rank among what was delivered."""
    best: Op | None = None
    for op in items:
        if op.node_id != node:
            continue
        if best is None or _rank(op) > _rank(best):
            best = op
    return best


def _rank(op: Op) -> tuple[int, int, bytes, float]:
    if isinstance(op, Tombstone):
        return (op.version, 1, b"", op.expires_at)
    return (op.version, 0, op.digest() + op.signature, 0.0)


# --------------------------------------------------------------------------- merge laws


@SETTINGS
@given(ops, ops)
def test_merge_is_commutative(a: list[Op], b: list[Op]) -> None:
    sa, sb = build(a), build(b)
    assert_same(merged(sa, sb), merged(sb, sa))


@SETTINGS
@given(ops, ops, ops)
def test_merge_is_associative(a: list[Op], b: list[Op], c: list[Op]) -> None:
    sa, sb, sc = build(a), build(b), build(c)
    assert_same(merged(merged(sa, sb), sc), merged(sa, merged(sb, sc)))


@SETTINGS
@given(ops)
def test_merge_is_idempotent(a: list[Op]) -> None:
    sa = build(a)
    again = sa.copy()
    assert again.merge(sa, NOW) is False
    assert_same(again, sa)


@SETTINGS
@given(st.data(), ops)
def test_any_order_or_duplication_gives_the_same_state(data: st.DataObject, a: list[Op]) -> None:
    shuffled = data.draw(st.permutations(a))
    repeats = data.draw(st.lists(st.sampled_from(a), max_size=15)) if a else []
    assert_same(build(shuffled + repeats), build(a))
    assert_same(merged(build(a[: len(a) // 2]), build(a[len(a) // 2 :])), build(a))


@SETTINGS
@given(ops, ops, ops, st.sampled_from([NOW + 10.0, NOW + 1e4]))
def test_merge_laws_hold_once_tombstones_expire(
    a: list[Op], b: list[Op], c: list[Op], later: float
) -> None:
    """Merging at a later instant, when some tombstones have expired, is still a join."""
    sa, sb, sc = build(a), build(b), build(c)
    assert_same(merged(sa, sb, now=later), merged(sb, sa, now=later))
    assert_same(
        merged(merged(sa, sb, now=later), sc, now=later),
        merged(sa, merged(sb, sc, now=later), now=later),
    )


# --------------------------------------------------------------------------- what wins


@SETTINGS
@given(manifest_ops)
def test_newest_version_wins(a: list[Manifest]) -> None:
    """Without tombstones each node shows its highest version (higher digest on a tie)."""
    store = build(a)
    for who in IDS:
        assert store.get(who.node_id) == winner(a, who.node_id)


@SETTINGS
@given(ops)
def test_tombstones_hide_up_to_their_version(a: list[Op]) -> None:
    """A live tombstone hides every manifest up to its version; a newer version shows."""
    store = build(a)
    for who in IDS:
        best = winner(a, who.node_id)
        if isinstance(best, Tombstone):
            assert store.get(who.node_id) is None
            assert who.node_id not in store
            assert best in store.tombstones()
            buried = [m for m in a if isinstance(m, Manifest) and m.node_id == who.node_id]
            assert all(store.apply(m, NOW) is False for m in buried)
        else:
            assert store.get(who.node_id) == best


@SETTINGS
@given(ops, st.sampled_from([NOW + 10.0, NOW + 1e4, NOW + 2e4]))
def test_prune_drops_exactly_the_expired_tombstones(a: list[Op], later: float) -> None:
    store = build(a)
    before = store.copy()
    store.prune(later)
    assert all(t.expires_at > later for t in store.tombstones())
    assert store.manifests() == before.manifests()
    assert [t for t in before.tombstones() if t.expires_at > later] == store.tombstones()


@SETTINGS
@given(ops, st.lists(st.sampled_from(EXPIRED_TOMBSTONES), min_size=1, max_size=5))
def test_expired_tombstones_change_nothing(a: list[Op], expired: list[Tombstone]) -> None:
    reference = build(a)
    store = reference.copy()
    assert not any(store.add_tombstone(t, NOW) for t in expired)
    assert_same(store, reference)


@SETTINGS
@given(st.data(), ops, st.lists(bad_manifests, min_size=1, max_size=6))
def test_forged_and_wrong_key_manifests_change_nothing(
    data: st.DataObject, a: list[Op], bad: list[Manifest]
) -> None:
    """Bad signatures are refused on arrival, wherever they fall among valid deliveries."""
    reference = build(a)
    for m in bad:
        probe = reference.copy()
        assert probe.apply(m, NOW) is False
        assert_same(probe, reference)
    mixed: list[Op] = list(a)
    for m in bad:
        mixed.insert(data.draw(st.integers(0, len(mixed))), m)
    assert_same(build(mixed), reference)


# --------------------------------------------------------------------------- rumors


@SETTINGS
@given(ops, ops)
def test_fetching_missing_rumors_catches_up(a: list[Op], b: list[Op]) -> None:
    """Fetch what missing() names from the announcer: then nothing is missing, and every
    announced manifest is held or beaten."""
    source, target = build(a), build(b)
    for rumor in target.missing(source.rumors()):
        fetched = source.get(rumor.node)
        assert fetched is not None
        assert fetched.digest() == rumor.digest
        assert target.apply(fetched, NOW) is True
    assert target.missing(source.rumors()) == []
    for m in source.manifests():
        ours = target.get(m.node_id)
        if ours is not None:
            assert (ours.version, ours.digest()) >= (m.version, m.digest())


# --------------------------------------------------------------------------- caps


@SETTINGS
@given(manifest_ops, st.integers(1, len(IDS)), st.integers(1, len(IDS)))
def test_full_store_keeps_the_first_nodes_and_stays_bounded(
    a: list[Manifest], count: int, room: int
) -> None:
    """With room for ``count`` manifests and ``room`` of the largest ones' bytes, the store
    never exceeds either cap, and the nodes it holds are the first to arrive that fit
    (a held node is never displaced by a new one)."""
    max_bytes = room * LARGEST
    store = ManifestStore(max_manifests=count, max_bytes=max_bytes)
    first: list[str] = []
    for m in a:
        held = set(store.rumors())
        store.apply(m, NOW)
        assert len(store) <= count and store.total_bytes <= max_bytes
        assert {r.node for r in held} <= {r.node for r in store.rumors()}
        if m.node_id not in first and m.node_id in store:
            first.append(m.node_id)
    assert sorted(first) == [m.node_id for m in store.manifests()]
    assert len(first) <= min(count, len({m.node_id for m in a}))


@SETTINGS
@given(manifest_ops, manifest_ops, st.integers(1, len(IDS)))
def test_capped_replicas_converge_on_the_nodes_they_both_hold(
    a: list[Manifest], b: list[Manifest], count: int
) -> None:
    """Replicas that hit the count cap may hold different nodes, but after merging both
    ways every node held on both sides has the same (winning) manifest."""
    one = ManifestStore(max_manifests=count)
    two = ManifestStore(max_manifests=count)
    for m in a:
        one.apply(m, NOW)
    for m in b:
        two.apply(m, NOW)
    one.merge(two.copy(), NOW)
    two.merge(one.copy(), NOW)
    assert len(one) <= count and len(two) <= count
    for node in {m.node_id for m in one.manifests()} & {m.node_id for m in two.manifests()}:
        assert one.get(node) == two.get(node) == winner([*a, *b], node)
