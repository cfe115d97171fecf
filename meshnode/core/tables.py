"""Per-member tables of the membership core, laid out so that many cores can share them.

Theory of operation
-------------------
A node holds a few structures with one slot per member: the alive (suspect, dead) sets it
samples from, and the rest of its probing pass. At N members and N nodes in one process
(the simulator), these are N² slots, the bulk of a large simulation's memory; in a mesh
that has converged most of them are the same on every node. This module gives them a
layout that shares what is equal and copies only what a node changes. Behaviour is that
of the plain structures, item for item and order for order: every random draw sees the
same sequence.

* :class:`IndexedSet` — node ids with O(1) add, remove, membership and access by
  position (for uniform sampling), whose order depends only on the operations applied.
  Its list and index are **copied on write**: :meth:`IndexedSet.snapshot` and
  :meth:`IndexedSet.without` hand out views that share them, and whichever side mutates
  first takes a private copy. A view made by ``without`` hides one item (a node's own id
  in a table every node shares) by position arithmetic instead of a copy.
* Positions are plain ``int`` objects, one per slot of every index; above 256 Python
  allocates a new object for each (32 bytes). :func:`position` hands out one shared
  object per value instead, grown on demand up to the largest set seen.
* :class:`ProbePass` — the members left in the current probing pass, drawn in uniformly
  random order by one Fisher–Yates step per draw. Instead of a copy of the member list it
  keeps a snapshot of the alive set (shared, see above), the few positions the shuffle
  has written, and the members added during the pass.
* :class:`ConvergedTable` — a member table handed, read-only, to every core of a mesh that
  starts converged (``Membership.adopt_converged``), with the order of its ids built once.
"""

from __future__ import annotations

import itertools
from collections.abc import ItemsView, Iterator, KeysView, Mapping, ValuesView
from typing import Final

from meshnode.core.member import Member

__all__ = ["ConvergedTable", "IndexedSet", "ProbePass", "position"]

_POSITIONS: Final[list[int]] = []
"""``_POSITIONS[i] is`` the one shared ``int`` object for position ``i``. It only grows (to
the largest set ever indexed in this process: ``max_members`` at most per core), and holds
nothing but small integers."""


def _positions(count: int) -> list[int]:
    """The shared position objects ``0 .. count - 1``."""
    have = len(_POSITIONS)
    if have < count:
        _POSITIONS.extend(range(have, count))
    return _POSITIONS


def position(i: int) -> int:
    """The shared ``int`` object equal to ``i`` (a non-negative position)."""
    positions = _POSITIONS
    if i >= len(positions):
        _positions(i + 1)
    return positions[i]


class IndexedSet:
    """Node ids with O(1) add, remove and uniform random sampling; the order of the items
    depends only on the sequence of operations, so sampling is reproducible.

    Storage is copied on write (see the module docstring): a view from :meth:`snapshot`
    or :meth:`without` costs O(1) and reads the same list and index as its source.
    """

    __slots__ = ("_hole", "_index", "_items", "_shared", "size")

    def __init__(self) -> None:
        self._items: list[str] = []
        self._index: dict[str, int] = {}
        self._hole = -1
        """Position in ``_items`` of the one item this view hides, or -1."""
        self._shared = False
        """``_items`` and ``_index`` may be read by other views: copy before writing."""
        self.size = 0
        """Number of items (``len``, as a plain attribute for hot paths)."""

    @classmethod
    def of(cls, items: list[str]) -> IndexedSet:
        """A set holding exactly ``items`` (distinct), in that order; the list is taken over."""
        out = cls()
        out.reset(items)
        return out

    def __len__(self) -> int:
        return self.size

    def __bool__(self) -> bool:
        return self.size > 0

    def __contains__(self, item: object) -> bool:
        i = self._index.get(item)  # type: ignore[call-overload]
        return i is not None and i != self._hole

    def __getitem__(self, i: int) -> str:
        """The item at position ``i`` (``0 <= i < len``)."""
        hole = self._hole
        if 0 <= hole <= i:
            i += 1
        return self._items[i]

    def __iter__(self) -> Iterator[str]:
        hole = self._hole
        if hole < 0:
            return iter(self._items)
        items = self._items
        return itertools.chain(
            itertools.islice(items, 0, hole), itertools.islice(items, hole + 1, None)
        )

    def reset(self, items: list[str]) -> None:
        """Hold exactly ``items`` (distinct), in that order; the list is taken over."""
        self._items = items
        self._index = dict(zip(items, _positions(len(items)), strict=False))
        self._hole = -1
        self._shared = False
        self.size = len(items)

    def snapshot(self) -> IndexedSet:
        """A read-only view of the items as they are now, in O(1); this set copies its
        storage before its next change."""
        view = IndexedSet()
        view._items, view._index, view._hole = self._items, self._index, self._hole
        view._shared = self._shared = True
        view.size = self.size
        return view

    def without(self, item: str) -> IndexedSet:
        """A view of this set (which must hide nothing) with ``item`` hidden, in O(1),
        sharing its storage: the set of every member, seen by one of them."""
        if self._hole >= 0:
            raise ValueError("without() needs a set that hides nothing")
        view = self.snapshot()
        hole = self._index.get(item)
        if hole is not None:
            view._hole = hole
            view.size -= 1
        return view

    def add(self, item: str) -> None:
        if item in self:
            return
        self._own()
        self._index[item] = position(len(self._items))
        self._items.append(item)
        self.size += 1

    def discard(self, item: str) -> None:
        if item not in self:
            return
        self._own()
        i = self._index.pop(item)
        last = self._items.pop()
        if i < len(self._items):
            self._items[i] = last
            self._index[last] = i
        self.size -= 1

    def _own(self) -> None:
        """Take private storage (without the hidden item) before a change."""
        if self._shared:
            self.reset(list(self))


class ProbePass:
    """The rest of one probing pass: the members it started with (a snapshot of the alive
    set) followed by the suspects of that moment and the members added during the pass.
    :meth:`draw` takes the next target uniformly at random from the rest (one Fisher–Yates
    step), so a pass is a uniformly random order.

    Equivalent to a list ``L`` (snapshot, then extras) with a cursor ``i`` and the set of
    the items in ``L[i:]``; only what the shuffle wrote over the snapshot is stored.
    """

    __slots__ = ("_base", "_cursor", "_drawn", "_extra", "_extra_index", "_length", "_swaps")

    def __init__(self, base: IndexedSet | None = None, extra: Iterator[str] | None = None) -> None:
        self._base = base if base is not None else IndexedSet()
        """Read-only view (a snapshot) of the items the pass started with."""
        self._extra: list[str] = list(extra) if extra is not None else []
        """Items after the snapshot: the suspects at the start, then members added."""
        self._extra_index: dict[str, None] = dict.fromkeys(self._extra)
        self._swaps: dict[int, str] = {}
        """Positions inside the snapshot that the shuffle overwrote (at the cursor or later)."""
        self._drawn: dict[str, None] = {}
        """Items drawn in this pass and not added again since (a dict: a large one takes
        less than half the memory of a set)."""
        self._cursor = 0
        self._length = self._base.size + len(self._extra)

    @property
    def cursor(self) -> int:
        """Position of the next item to draw (items before it are consumed)."""
        return self._cursor

    @property
    def length(self) -> int:
        """Position after the last item: ``length - cursor`` items are left to draw (dead
        ones included: the caller skips them when drawn)."""
        return self._length

    def __contains__(self, item: str) -> bool:
        """Is ``item`` in the rest of the pass?"""
        if item in self._drawn:
            return False
        return item in self._extra_index or item in self._base

    def _get(self, j: int) -> str:
        base_size = self._base.size
        if j >= base_size:
            return self._extra[j - base_size]
        swapped = self._swaps.get(j)
        return swapped if swapped is not None else self._base[j]

    def add(self, item: str) -> None:
        """Put ``item`` at the end of the rest of the pass, unless it is there already."""
        if item in self:
            return
        self._drawn.pop(item, None)
        self._extra.append(item)
        self._extra_index[item] = None
        self._length += 1

    def draw(self, j: int) -> str:
        """Take the item at position ``j`` (``cursor <= j < length``) as the next one: it
        swaps places with the item at the cursor, and the cursor moves past it."""
        i = self._cursor
        if not i <= j < self._length:
            raise IndexError(f"position {j} is outside the rest of the pass [{i}, {self._length})")
        item = self._get(j)
        if j != i:
            other = self._get(i)
            base_size = self._base.size
            if j >= base_size:
                self._extra[j - base_size] = other
            else:
                self._swaps[j] = other
        self._swaps.pop(i, None)  # position i is consumed: never read again
        self._cursor = i + 1
        self._drawn[item] = None
        return item


class ConvergedTable(Mapping[str, Member]):
    """A read-only member table that every core of a converged start adopts: the members
    by node id and, built once and shared by every core, the order of their ids."""

    __slots__ = ("_members", "ids", "states")

    def __init__(self, members: Mapping[str, Member]) -> None:
        self._members: dict[str, Member] = dict(members)
        self.ids = IndexedSet.of(list(self._members))
        """Every node id of the table, in table order (read-only: cores take views)."""
        self.ids._shared = True  # never written in place
        self.states = frozenset(m.state for m in self._members.values())
        """The states found in the table (checked once, not by every core)."""

    def __getitem__(self, node: str) -> Member:
        return self._members[node]

    def __contains__(self, node: object) -> bool:
        return node in self._members

    def get(self, node: str, default: Member | None = None) -> Member | None:  # type: ignore[override]
        return self._members.get(node, default)

    def keys(self) -> KeysView[str]:
        return self._members.keys()

    def values(self) -> ValuesView[Member]:
        return self._members.values()

    def items(self) -> ItemsView[str, Member]:
        return self._members.items()

    def __iter__(self) -> Iterator[str]:
        return iter(self._members)

    def __len__(self) -> int:
        return len(self._members)

    def table(self) -> dict[str, Member]:
        """A new dict with the same members in the same order (a core's own table)."""
        return dict(self._members)
