"""Applying a sorted batch of changes to a tree in one copy-on-write pass.

A wave's writes to one table arrive here as one sorted batch (DESIGN 2.4);
the batch descends the tree once, so every node it touches is read once and
every new node is encoded and hashed once, however many keys of the batch
fall into it.

How the pass works
------------------
``_Batch.update`` returns, for a subtree, the list of *items* that replace it
in its parent: an item is either a :data:`Ref` to a stored node (unchanged,
moved as is) or a *piece*, a node under construction whose content is not
final yet and which has no address.  Pieces are encoded only at the very end
(``_materialize``), bottom-up, so a piece merged into a neighbour is never
written.  Invariants of every list ``update`` returns:

* all items are within their fill bounds (leaves 16..32 entries, internal
  nodes 8..16 children), or
* the list has exactly one item, an under-full piece (its subtree lost so
  much that it has no sibling inside its old parent to borrow from).  Its
  own children are in bounds, or it has exactly one child which is again
  such an under-full piece (a chain down one edge), or
* the list is empty (the subtree lost every entry).

A parent concatenates its children's items and repairs each under-full piece
by merging it with a neighbour (``_fix``): the two contents are joined, the
seam one level down is repaired the same way, and the result is split again
if it overflows.  A node only has to be opened (read and rewritten) when it
is on a changed key's path or a neighbour of an under-full piece.  At the top,
a root that split grows new levels and a root with one child is replaced by
that child.

Reference counts follow from the new nodes (``Ledger.adopt``), the moved
ones (``Ledger.incref``) and the old root (``Ledger.decref``); see
:mod:`.gc`.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Mapping
from itertools import islice
from operator import itemgetter, lt
from typing import Final, TypeAlias

from ..errors import IntegrityError
from .cache import NodeCache, NodeReader
from .gc import Ledger
from .node import (
    INLINE_MAX,
    INTERNAL_MAX,
    INTERNAL_MIN,
    LEAF_MAX,
    LEAF_MIN,
    MAX_KEY_SIZE,
    BlobRef,
    Internal,
    Leaf,
    Node,
    Value,
    encode_blob,
    encode_internal,
    encode_leaf,
)
from .nodestore import NodeId, NodeStore, TreeUpdate

__all__ = ["DELETE", "Change", "Changes", "Delete", "apply_batch", "split_sizes"]


class Delete:
    """The type of :data:`DELETE`, the value that removes a key in a batch."""

    _instance: Delete | None = None

    def __new__(cls) -> Delete:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "DELETE"


#: Use as the value of a change to remove its key (a no-op when the key is absent).
DELETE: Final = Delete()

#: One change of a batch: ``(key, new value)`` or ``(key, DELETE)``.
Change: TypeAlias = tuple[bytes, bytes | Delete]

#: The changes of one batch: sorted ``(key, value)`` pairs, or a mapping in any
#: order whose value None also means DELETE (sorted here, faster than pairs).
Changes: TypeAlias = Iterable[Change] | Mapping[bytes, "bytes | Delete | None"]

#: A stored node as its parent lists it: (minimum key, address, entry count).
Ref: TypeAlias = tuple[bytes, NodeId, int]


class _LeafPiece:
    __slots__ = ("keys", "values")
    level = 0

    def __init__(self, keys: list[bytes], values: list[Value]) -> None:
        self.keys = keys
        self.values = values

    def size(self) -> int:
        return len(self.keys)


class _InnerPiece:
    __slots__ = ("kids", "level")

    def __init__(self, level: int, kids: list[_Item]) -> None:
        self.level = level
        self.kids = kids

    def size(self) -> int:
        return len(self.kids)


_first = itemgetter(0)
_second = itemgetter(1)
_BYTES_TYPE = frozenset([bytes])

_Piece: TypeAlias = "_LeafPiece | _InnerPiece"
_Item: TypeAlias = "Ref | _LeafPiece | _InnerPiece"


def split_sizes(n: int, most: int, *, pack_left: bool = False) -> list[int]:
    """Split ``n`` > 0 items into node sizes of at most ``most`` and at least ``most // 2``.

    Even sizes by default.  ``pack_left`` fills all but the last two nodes
    completely (for appends: the left nodes will not grow again).  A single
    size below ``most // 2`` is returned only when ``n`` itself is that small.
    """
    if n <= most:
        return [n]
    chunks = -(-n // most)
    if pack_left:
        rest = n - most * (chunks - 2)
        return [most] * (chunks - 2) + [rest // 2 + rest % 2, rest // 2]
    base, extra = divmod(n, chunks)
    return [base + 1] * extra + [base] * (chunks - extra)


class _Batch:
    """The state of one apply_batch call (single-threaded, discarded afterwards)."""

    def __init__(self, store: NodeStore, cache: NodeCache | None) -> None:
        self.store = store
        self.reader = NodeReader(store, cache)
        self.opened: dict[NodeId, Leaf | Internal] = {}  # old nodes read, reused by the ledger
        # A closure, not a bound method: a method would make the batch and its ledger a
        # reference cycle, and everything a fold holds (the old nodes it opened,
        # the new encoded ones, the view it read through) would wait for Python's
        # cyclic collector instead of going when the update is done with.
        opened, reader = self.opened, self.reader

        def load_node(nid: NodeId) -> Node:
            node = opened.get(nid)
            return node if node is not None else reader.node(nid)

        self.ledger = Ledger(store, load_node)
        self.new_blobs: dict[NodeId, bytes] = {}
        self.keys: list[bytes] = []
        self.values: list[Value | Delete] = []
        self.deletes = False  # whether any change is a DELETE

    def prepare(self, changes: Changes) -> None:
        """Check the changes and turn large values into (pending) blobs."""
        keys: list[bytes]
        values: list[Value | Delete | None]
        mapped = isinstance(changes, Mapping)  # in any order; None also deletes
        if isinstance(changes, Mapping):
            keys = sorted(changes)  # sorting bytes alone is faster than sorting pairs
            values = list(map(changes.__getitem__, keys))
        else:
            pairs = changes if isinstance(changes, list) else list(changes)
            keys = list(map(_first, pairs))
            values = list(map(_second, pairs))
        # The checks run as C-level loops over the whole batch (a wave may hold
        # a hundred thousand changes); the per-change loop below runs only for
        # batches with large values or deletes, or to find the offending change.
        if not set(map(type, keys)) <= _BYTES_TYPE:
            bad = next(k for k in keys if type(k) is not bytes)
            raise TypeError(f"tree keys must be bytes, not {type(bad).__name__}")
        if keys and max(map(len, keys)) > MAX_KEY_SIZE:
            size = max(map(len, keys))
            raise ValueError(f"tree key of {size} bytes exceeds {MAX_KEY_SIZE}")
        if not mapped and not all(map(lt, keys, islice(keys, 1, None))):
            raise ValueError("batch keys must be strictly ascending")
        types = set(map(type, values))
        if not types <= _BYTES_TYPE or max(map(len, values), default=0) > INLINE_MAX:  # type: ignore[arg-type]
            values = [self._stored(value, mapped) for value in values]
        self.keys, self.values = keys, values  # type: ignore[assignment]
        self.deletes = Delete in types or (mapped and type(None) in types)

    def _stored(self, value: Value | Delete | None, mapped: bool) -> Value | Delete:
        """A change's value as the leaf will hold it (a large one becomes a pending blob).

        ``mapped``: the changes came as a mapping, where None also deletes.
        """
        if type(value) is bytes:
            if len(value) <= INLINE_MAX:
                return value
            data = encode_blob(value)
            nid = self.store.node_id(data)
            self.new_blobs[nid] = data
            return BlobRef(len(value), nid)
        if value is DELETE or (value is None and mapped):
            return DELETE
        raise TypeError(f"tree values must be bytes or DELETE, not {type(value).__name__}")

    def open_node(self, nid: NodeId, level: int) -> Leaf | Internal:
        """Read the stored node ``nid``, which its parent says is at ``level``."""
        node = self.opened.get(nid)
        if node is None:
            node = self.reader.tree_node(nid)
        if (node.level if isinstance(node, Internal) else 0) != level:
            raise IntegrityError(f"node {nid.hex()} is not at the level its parent implies")
        self.opened[nid] = node
        self.ledger.note_live(nid, node)  # reached from the committed root
        return node

    def update(self, nid: NodeId, level: int, lo: int, hi: int) -> list[_Item] | None:
        """Apply changes ``[lo, hi)`` to the subtree ``nid``; None when nothing changed."""
        node = self.open_node(nid, level)
        if isinstance(node, Leaf):
            return self.update_leaf(node, lo, hi)
        ckeys, keys, kids, counts = self.keys, node.keys, node.children, node.counts
        last = len(kids) - 1
        items: list[_Item] = []
        changed = False
        start = lo
        for i in range(last + 1):
            end = hi if i == last else bisect_left(ckeys, keys[i + 1], start, hi)
            result = self.update(kids[i], level - 1, start, end) if start < end else None
            if result is None:
                items.append((keys[i], kids[i], counts[i]))
            else:
                items.extend(result)
                changed = True
            start = end
        if not changed:
            return None
        self.fix(items, level - 1)
        return self.group(items, level, pack_left=ckeys[lo] >= keys[-1])

    def update_leaf(self, leaf: Leaf, lo: int, hi: int) -> list[_Item] | None:
        """Merge changes ``[lo, hi)`` into ``leaf``; None when it would not change."""
        old_keys, old_values = leaf.keys, leaf.values
        ckeys, cvalues = self.keys, self.values
        pack_left = not old_keys or ckeys[lo] > old_keys[-1]
        keys: list[bytes]
        values: list[Value]
        if pack_left and not self.deletes:
            # Only appends (a bulk load into an empty tree, keys beyond the end):
            # no merge, and no per-change work (the slices are C-level copies).
            if old_keys:
                keys = [*old_keys, *ckeys[lo:hi]]
                values = [*old_values, *cvalues[lo:hi]]  # type: ignore[list-item]
            elif lo == 0 and hi == len(ckeys):
                keys, values = ckeys, cvalues  # type: ignore[assignment]  # only sliced below
            else:
                keys, values = ckeys[lo:hi], cvalues[lo:hi]  # type: ignore[assignment]
        else:
            merged = self.merge_leaf(old_keys, old_values, lo, hi)
            if merged is None:
                return None
            keys, values = merged
            if not keys:
                return []
        pieces: list[_Item] = []
        start = 0
        for size in split_sizes(len(keys), LEAF_MAX, pack_left=pack_left):
            pieces.append(_LeafPiece(keys[start : start + size], values[start : start + size]))
            start += size
        return pieces

    def merge_leaf(
        self, old_keys: tuple[bytes, ...], old_values: tuple[Value, ...], lo: int, hi: int
    ) -> tuple[list[bytes], list[Value]] | None:
        """The entries of a leaf after changes ``[lo, hi)``; None when nothing changes."""
        ckeys, cvalues = self.keys, self.values
        keys: list[bytes] = []
        values: list[Value] = []
        changed = False
        pos = 0
        for c in range(lo, hi):
            key, value = ckeys[c], cvalues[c]
            j = bisect_left(old_keys, key, pos)
            if j > pos:
                keys.extend(old_keys[pos:j])
                values.extend(old_values[pos:j])
            found = j < len(old_keys) and old_keys[j] == key
            pos = j + 1 if found else j
            if isinstance(value, Delete):
                changed = changed or found
            else:
                changed = changed or not found or old_values[j] != value
                keys.append(key)
                values.append(value)
        if not changed:
            return None
        keys.extend(old_keys[pos:])
        values.extend(old_values[pos:])
        return keys, values

    def group(self, items: list[_Item], level: int, *, pack_left: bool = False) -> list[_Item]:
        """Wrap ``items`` (children at ``level - 1``) into pieces at ``level``."""
        if not items:
            return []
        if len(items) <= INTERNAL_MAX:
            return [_InnerPiece(level, items)]
        pieces: list[_Item] = []
        start = 0
        for size in split_sizes(len(items), INTERNAL_MAX, pack_left=pack_left):
            pieces.append(_InnerPiece(level, items[start : start + size]))
            start += size
        return pieces

    def open_item(self, item: _Item, level: int) -> _Piece:
        """Return ``item`` as a piece, reading it first if it is a stored node."""
        if not isinstance(item, tuple):
            return item
        node = self.open_node(item[1], level)
        if isinstance(node, Leaf):
            return _LeafPiece(list(node.keys), list(node.values))
        return _InnerPiece(level, list(zip(node.keys, node.children, node.counts, strict=True)))

    def fix(self, items: list[_Item], level: int) -> None:
        """Merge every under-full piece of ``items`` (at ``level``) into a neighbour, in place.

        ENSURES: every item is in bounds, unless only one item is left.
        """
        least = LEAF_MIN if level == 0 else INTERNAL_MIN
        i = 0
        while i < len(items) and len(items) > 1:
            item = items[i]
            if isinstance(item, tuple) or item.size() >= least:
                i += 1
                continue
            # Prefer a neighbour that is open already: no extra node to rewrite.
            if i + 1 < len(items) and not isinstance(items[i + 1], tuple):
                j = i + 1
            elif i > 0 and not isinstance(items[i - 1], tuple):
                j = i - 1
            else:
                j = i + 1 if i + 1 < len(items) else i - 1
            a = min(i, j)
            items[a : a + 2] = self.merge(items[a], items[a + 1], level)
            i = a

    def merge(self, left: _Item, right: _Item, level: int) -> list[_Item]:
        """Join two adjacent items at ``level`` into one piece, or two if it overflows."""
        a, b = self.open_item(left, level), self.open_item(right, level)
        if isinstance(a, _LeafPiece) and isinstance(b, _LeafPiece):
            keys, values = a.keys + b.keys, a.values + b.values
            if len(keys) <= LEAF_MAX:
                return [_LeafPiece(keys, values)]
            h = len(keys) // 2
            return [_LeafPiece(keys[:h], values[:h]), _LeafPiece(keys[h:], values[h:])]
        assert isinstance(a, _InnerPiece) and isinstance(b, _InnerPiece)
        kids = a.kids + b.kids
        self.fix(kids, level - 1)  # the seam may hold an under-full child of either side
        if len(kids) <= INTERNAL_MAX:
            return [_InnerPiece(level, kids)]
        h = len(kids) // 2
        return [_InnerPiece(level, kids[:h]), _InnerPiece(level, kids[h:])]

    def materialize(self, item: _Item) -> Ref:
        """Encode ``item`` bottom-up, count one new reference to it, return its Ref."""
        ledger = self.ledger
        if isinstance(item, tuple):
            ledger.incref(item[1])  # a stored subtree moved under a new parent
            return item
        if isinstance(item, _LeafPiece):
            data = encode_leaf(item.keys, item.values)
            blobs = [v.nid for v in item.values if type(v) is BlobRef]
            for blob in blobs:
                blob_data = self.new_blobs.get(blob)
                if blob_data is None:
                    ledger.incref(blob, blob=True)
                else:
                    ledger.adopt(blob, blob_data, (), blob=True)
            nid = self.store.node_id(data)
            ledger.adopt(nid, data, blobs)
            if self.reader.cache is not None:  # write-through: the new tree is the hot one
                # Cached as bytes, decoded when first read, rather than built from
                # the piece: the piece's keys and values were allocated write by
                # write, scattered over the heap, while a decoded leaf's lie
                # together, which makes scans of the cached leaf about twice as
                # fast; and a leaf nobody reads before the next fold replaces it
                # (most of them, under random writes) is never decoded at all.
                self.reader.cache.put_encoded(nid, data)
            return item.keys[0], nid, len(item.keys)
        refs = [self.materialize(kid) for kid in item.kids]
        keys = [r[0] for r in refs]
        kids = [r[1] for r in refs]
        counts = [r[2] for r in refs]
        data = encode_internal(item.level, keys, kids, counts)
        nid = self.store.node_id(data)
        ledger.adopt(nid, data, kids)
        if self.reader.cache is not None:
            self.reader.cache.put(
                nid, Internal(item.level, tuple(keys), tuple(kids), tuple(counts))
            )
        return keys[0], nid, sum(counts)


def apply_batch(
    store: NodeStore,
    root: NodeId | None,
    changes: Changes,
    *,
    cache: NodeCache | None = None,
) -> tuple[NodeId | None, TreeUpdate]:
    """Apply sorted ``changes`` to the tree ``root``; return ``(new root, update)``.

    ``changes`` are ``(key, value)`` pairs with strictly ascending ``bytes``
    keys; a value is ``bytes`` (insert or replace) or :data:`DELETE`.  They
    may also come as a mapping from key to value, in any order, where None
    deletes too (the shape of a wave; sorting keys alone is faster).  The
    tree at ``root`` is not modified.  The update holds the new objects, the
    count changes and the freed objects (the old root's handle moves to the
    new root); commit it and the new root in one atomic batch.  To apply
    another batch before committing, compute it against
    ``PendingNodeStore(store, update)`` and combine with ``update.then``.

    Raises TypeError / ValueError for malformed changes (before any work),
    IntegrityError when the stored tree is damaged.
    """
    batch = _Batch(store, cache)
    batch.prepare(changes)
    if not batch.keys:
        return root, TreeUpdate()
    if root is None:
        level = 0
        items: list[_Item] | None = batch.update_leaf(Leaf((), ()), 0, len(batch.keys))
    else:
        top = batch.reader.tree_node(root)
        batch.opened[root] = top
        batch.ledger.note_live(root, top)
        level = top.level if isinstance(top, Internal) else 0
        items = batch.update(root, level, 0, len(batch.keys))
    if items is None:
        return root, TreeUpdate()
    while len(items) > 1:  # the root split: grow a level
        level += 1
        items = batch.group(items, level)
    new_root: NodeId | None = None
    if items:
        item = items[0]
        while isinstance(item, _InnerPiece) and len(item.kids) == 1:
            item = item.kids[0]  # a root with one child is replaced by the child
        new_root = batch.materialize(item)[1]
    if root is not None:
        batch.ledger.decref(root)
    return new_root, batch.ledger.settle()
