"""Bulk load: build a whole tree bottom-up from a sorted stream (large imports).

Where :func:`~persist.btree.batch.apply_batch` must descend an existing
tree, an import into an empty tree can write full nodes left to right:
leaves of 32 entries, internal nodes of 16 children.  Each level keeps a
buffer and cuts a full node only once the buffer holds a full node *plus* a
minimal one, so that the tail left at the end (at most one full node plus
one minimal node, less one) can always be split into nodes that are at least
half full.  Memory is one buffer per level, O(height), whatever the input
size -- except for the write set, see ``sink``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from .batch import Ref, split_sizes
from .cache import NodeReader
from .gc import Ledger
from .node import (
    INLINE_MAX,
    INTERNAL_MAX,
    INTERNAL_MIN,
    LEAF_MAX,
    LEAF_MIN,
    MAX_KEY_SIZE,
    BlobRef,
    Value,
    encode_blob,
    encode_internal,
    encode_leaf,
)
from .nodestore import NodeId, NodeStore, TreeUpdate

__all__ = ["bulk_load"]

#: Objects handed to a sink at a time.
DEFAULT_SINK_OBJECTS = 4096


class _Builder:
    def __init__(self, store: NodeStore) -> None:
        self.store = store
        self.ledger = Ledger(store, NodeReader(store).node)
        self.keys: list[bytes] = []
        self.values: list[Value] = []
        # levels[k]: Refs of finished level-k nodes still waiting for their parent.
        self.levels: list[list[Ref]] = [[]]

    def add(self, key: bytes, value: bytes) -> None:
        if type(key) is not bytes or type(value) is not bytes:
            raise TypeError("bulk_load takes (bytes, bytes) pairs")
        if len(key) > MAX_KEY_SIZE:
            raise ValueError(f"tree key of {len(key)} bytes exceeds {MAX_KEY_SIZE}")
        if self.keys and key <= self.keys[-1]:
            raise ValueError("bulk_load keys must be strictly ascending")
        if len(value) > INLINE_MAX:
            data = encode_blob(value)
            nid = self.store.node_id(data)
            self.ledger.adopt(nid, data, (), blob=True)
            self.keys.append(key)
            self.values.append(BlobRef(len(value), nid))
        else:
            self.keys.append(key)
            self.values.append(value)
        if len(self.keys) == LEAF_MAX + LEAF_MIN:
            self.leaf(LEAF_MAX)

    def leaf(self, size: int) -> None:
        keys, values = self.keys[:size], self.values[:size]
        del self.keys[:size], self.values[:size]
        data = encode_leaf(keys, values)
        nid = self.store.node_id(data)
        self.ledger.adopt(nid, data, [v.nid for v in values if type(v) is BlobRef])
        self.push(0, (keys[0], nid, len(keys)))

    def push(self, level: int, ref: Ref) -> None:
        buffer = self.levels[level]
        buffer.append(ref)
        if len(buffer) == INTERNAL_MAX + INTERNAL_MIN:
            self.internal(level + 1, INTERNAL_MAX)

    def internal(self, level: int, size: int) -> None:
        buffer = self.levels[level - 1]
        refs = buffer[:size]
        del buffer[:size]
        if len(self.levels) == level:
            self.levels.append([])
        keys = [r[0] for r in refs]
        kids = [r[1] for r in refs]
        counts = [r[2] for r in refs]
        data = encode_internal(level, keys, kids, counts)
        nid = self.store.node_id(data)
        self.ledger.adopt(nid, data, kids)
        self.push(level, (keys[0], nid, sum(counts)))

    def finish(self) -> NodeId | None:
        """Cut the tails of every level into valid nodes; return the root."""
        if self.keys:
            for size in split_sizes(len(self.keys), LEAF_MAX):
                self.leaf(size)
        level = 0
        while True:
            buffer = self.levels[level]
            top = level == len(self.levels) - 1
            if top and len(buffer) <= 1:
                return buffer[0][1] if buffer else None
            for size in split_sizes(len(buffer), INTERNAL_MAX):
                self.internal(level + 1, size)
            level += 1


def bulk_load(
    store: NodeStore,
    pairs: Iterable[tuple[bytes, bytes]],
    *,
    sink: Callable[[dict[NodeId, bytes]], None] | None = None,
    sink_objects: int = DEFAULT_SINK_OBJECTS,
) -> tuple[NodeId | None, TreeUpdate]:
    """Build a new tree from ``pairs`` (strictly ascending keys); return ``(root, update)``.

    The result is the same kind of update as
    :func:`~persist.btree.batch.apply_batch` returns from an empty tree, with
    one root handle on the new root; objects that already exist in the store
    (equal blobs, equal nodes of a retained version) are shared, not rewritten.

    Memory-friendly mode: with ``sink``, new objects are handed to
    ``sink(objects)`` in groups of about ``sink_objects`` as soon as they are
    built -- children always before the nodes that name them -- and the
    returned update holds only the rest (plus the count rows of objects
    referenced more than once).  The caller writes each group as it comes
    (that is why it is the caller's choice); the objects are unreachable until
    the root is committed, so if the import is abandoned they are orphans
    that :func:`~persist.btree.check.check_tree` reports: import into a fresh
    table, and drop the whole table if the import fails.
    """
    if sink_objects < 1:
        raise ValueError("sink_objects must be positive")
    builder = _Builder(store)
    ledger = builder.ledger
    for key, value in pairs:
        builder.add(key, value)
        if sink is not None and len(ledger.puts) >= sink_objects:
            sink(ledger.take_puts())
    root = builder.finish()
    if sink is not None and ledger.puts:
        sink(ledger.take_puts())
    return root, ledger.settle()
