"""The shared per-member tables (meshnode.core.tables) behave exactly like plain ones.

Each structure is checked against a reference model — the plain list-and-dict layout the
membership core used before — under the same operations and the same random draws: the
items, their order and every draw must agree, and no view may see another's changes.
"""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

from meshnode.core.member import MemberState
from meshnode.core.tables import ConvergedTable, IndexedSet, ProbePass, position


class ModelSet:
    """Reference: a list plus a position dict, swap-remove (the former layout)."""

    def __init__(self, items: list[str]) -> None:
        self.items = list(items)
        self.index = {item: i for i, item in enumerate(self.items)}

    def add(self, item: str) -> None:
        if item not in self.index:
            self.index[item] = len(self.items)
            self.items.append(item)

    def discard(self, item: str) -> None:
        i = self.index.pop(item, None)
        if i is None:
            return
        last = self.items.pop()
        if i < len(self.items):
            self.items[i] = last
            self.index[last] = i


class ModelPass:
    """Reference: the probing pass as a list, a cursor and the set of the rest."""

    def __init__(self, items: list[str]) -> None:
        self.items = list(items)
        self.cursor = 0
        self.rest = dict.fromkeys(self.items)

    def add(self, item: str) -> None:
        if item not in self.rest:
            self.items.append(item)
            self.rest[item] = None

    def draw(self, j: int) -> str:
        i = self.cursor
        node = self.items[j]
        self.items[j] = self.items[i]
        self.items[i] = node
        self.cursor = i + 1
        self.rest.pop(node, None)
        return node


def assert_same(view: IndexedSet, model: ModelSet) -> None:
    assert list(view) == model.items
    assert len(view) == view.size == len(model.items)
    assert [view[i] for i in range(len(view))] == model.items
    for item in model.items:
        assert item in view


IDS = [f"node{i:03d}" for i in range(40)]


@pytest.mark.parametrize(
    ("hidden", "expected"),
    [
        ("node000", IDS[1:]),
        ("node017", IDS[:17] + IDS[18:]),
        ("node039", IDS[:39]),
        ("stranger", IDS),
    ],
)
def test_without_hides_one_item_in_place(hidden: str, expected: list[str]) -> None:
    """A view from ``without`` is the set minus one item, in the same order, by position."""
    base = IndexedSet.of(list(IDS))
    view = base.without(hidden)
    assert_same(view, ModelSet(expected))
    assert hidden not in view
    assert list(base) == IDS  # the source is untouched


def test_without_needs_a_set_that_hides_nothing() -> None:
    view = IndexedSet.of(list(IDS)).without("node003")
    with pytest.raises(ValueError, match="hides nothing"):
        view.without("node004")


@pytest.mark.parametrize("seed", range(20))
def test_views_copy_on_write_and_match_the_plain_layout(seed: int) -> None:
    """Many views of one set, each changed at random: every view stays equal to its own
    reference model, and no change leaks into the source or into another view."""
    rng = random.Random(seed)
    base = IndexedSet.of(list(IDS))
    views = {me: base.without(me) for me in IDS[:6]}
    models = {me: ModelSet([n for n in IDS if n != me]) for me in views}
    snapshots: list[tuple[IndexedSet, list[str]]] = []
    pool = [*IDS, "fresh1", "fresh2", "fresh3"]
    for _ in range(300):
        me = rng.choice(list(views))
        item = rng.choice(pool)
        if rng.random() < 0.1:
            snap = views[me].snapshot()
            snapshots.append((snap, list(models[me].items)))
        elif rng.random() < 0.5:
            views[me].add(item)
            models[me].add(item)
        else:
            views[me].discard(item)
            models[me].discard(item)
        for other in views:
            assert_same(views[other], models[other])
    assert list(base) == IDS
    for snap, items in snapshots:
        assert list(snap) == items  # a snapshot never changes


def test_a_hidden_item_added_back_comes_last() -> None:
    """Adding the hidden item (our own id) behaves as adding a new item."""
    view = IndexedSet.of(list(IDS)).without("node005")
    view.add("node005")
    model = ModelSet([n for n in IDS if n != "node005"])
    model.add("node005")
    assert_same(view, model)


def test_positions_are_shared_objects() -> None:
    """Two indexes of a large set hold the very same position objects (not equal copies)."""
    big = [f"m{i}" for i in range(1_000)]
    a, b = IndexedSet.of(list(big)), IndexedSet.of(list(reversed(big)))
    assert a._index["m700"] is b._index["m299"]  # both are position 700
    assert position(700) is a._index["m700"]
    a.discard("m3")  # swap-remove: the last item takes position 3
    assert a._index["m999"] is position(3)


@pytest.mark.parametrize("seed", range(20))
def test_probe_pass_draws_like_the_list_it_replaces(seed: int) -> None:
    """Same draws, same additions: the sparse pass yields exactly the targets of the list,
    and answers "is it in the rest of the pass" the same way at every step."""
    rng = random.Random(seed)
    alive = IndexedSet.of(list(IDS)).without(IDS[seed])
    suspects = ["s1", "s2"]
    probe = ProbePass(alive.snapshot(), iter(suspects))
    model = ModelPass([*alive, *suspects])
    added = [*IDS, "late1", "late2", "s1"]
    while model.cursor < len(model.items):
        assert probe.cursor == model.cursor
        assert probe.length == len(model.items)
        if rng.random() < 0.3:
            item = rng.choice(added)
            probe.add(item)
            model.add(item)
            continue
        j = rng.randrange(model.cursor, len(model.items))
        assert probe.draw(j) == model.draw(j)
        for item in [*IDS, "late1", "late2", "s1", "s2"]:
            assert (item in probe) == (item in model.rest), item
        alive.discard(rng.choice(IDS))  # the live set moves on; the pass's snapshot must not
    assert probe.length == probe.cursor


def test_probe_pass_refuses_a_position_outside_the_rest() -> None:
    probe = ProbePass(IndexedSet.of(["a", "b"]))
    probe.draw(1)
    with pytest.raises(IndexError):
        probe.draw(0)  # consumed
    with pytest.raises(IndexError):
        probe.draw(2)  # past the end


def test_converged_table_is_a_read_only_mapping_with_shared_order() -> None:
    members = {f"n{i}": SimpleNamespace(state=MemberState.ALIVE, i=i) for i in range(5)}
    table = ConvergedTable(members)  # type: ignore[arg-type]
    assert list(table) == list(members) and len(table) == 5 and table["n3"].i == 3  # type: ignore[attr-defined]
    assert list(table.values()) == list(members.values()) and "n4" in table
    assert table.states == {MemberState.ALIVE}
    own = table.table()
    own["n9"] = own["n0"]
    assert "n9" not in table
    a, b = table.ids.without("n1"), table.ids.without("n2")
    a.add("x")
    assert list(b) == ["n0", "n1", "n3", "n4"]
    assert list(table.ids) == list(members)
