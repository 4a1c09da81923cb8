"""Reading one version of a tree: lookup, ordered ranges, counts, first and last.

A :class:`Tree` is a value: a store, a root address (``None`` for the empty
tree) and an optional decoded-node cache.  It never changes; a batch of
changes yields a new root (:func:`~persist.btree.batch.apply_batch`).
Readers may run in any number of threads at once, including while a batch is
being computed against the same store.

Navigation relies on the invariant kept by every writer and verified by the
checker: an internal node stores, for child ``i``, the exact minimum key
``keys[i]`` of that child's subtree, so child ``i`` holds the keys in
``[keys[i], keys[i+1])``.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterator

from ..errors import IntegrityError
from .cache import NodeCache, NodeReader
from .node import Internal, Leaf, Value
from .nodestore import NodeId, NodeStore

__all__ = ["Tree"]


class Tree:
    """An immutable view of one version of a tree (``root`` None = empty)."""

    __slots__ = ("_reader", "root")

    def __init__(
        self, store: NodeStore, root: NodeId | None, *, cache: NodeCache | None = None
    ) -> None:
        self.root = root
        self._reader = NodeReader(store, cache)

    @property
    def store(self) -> NodeStore:
        return self._reader.store

    def _value(self, value: Value) -> bytes:
        if isinstance(value, bytes):
            return value
        data = self._reader.blob(value.nid)
        if len(data) != value.size:
            raise IntegrityError("blob size does not match its reference")
        return data

    def _leaf_for(self, key: bytes) -> Leaf | None:
        """Return the leaf whose range holds ``key`` (None when below every key)."""
        if self.root is None:
            return None
        node = self._reader.tree_node(self.root)
        while isinstance(node, Internal):
            i = bisect_right(node.keys, key) - 1
            if i < 0:
                return None
            node = self._reader.tree_node(node.children[i])
        return node

    def get(self, key: bytes, default: bytes | None = None) -> bytes | None:
        """Return the value stored under ``key``, or ``default``."""
        leaf = self._leaf_for(key)
        if leaf is None:
            return default
        i = bisect_left(leaf.keys, key)
        if i < len(leaf.keys) and leaf.keys[i] == key:
            return self._value(leaf.values[i])
        return default

    def __contains__(self, key: bytes) -> bool:
        leaf = self._leaf_for(key)
        if leaf is None:
            return False
        i = bisect_left(leaf.keys, key)
        return i < len(leaf.keys) and leaf.keys[i] == key

    def count(self) -> int:
        """Return the number of entries, in O(1) node reads (subtree counts are stored)."""
        if self.root is None:
            return 0
        node = self._reader.tree_node(self.root)
        return sum(node.counts) if isinstance(node, Internal) else len(node.keys)

    __len__ = count

    def first(self) -> tuple[bytes, bytes] | None:
        """Return the entry with the smallest key, or None when the tree is empty."""
        return next(self.items(), None)

    def last(self) -> tuple[bytes, bytes] | None:
        """Return the entry with the largest key, or None when the tree is empty."""
        return next(self.items(reverse=True), None)

    def keys(
        self, start: bytes | None = None, stop: bytes | None = None, *, reverse: bool = False
    ) -> Iterator[bytes]:
        """Yield the keys in ``[start, stop)``, ascending (descending if ``reverse``)."""
        for key, _ in self._entries(start, stop, reverse):
            yield key

    def items(
        self, start: bytes | None = None, stop: bytes | None = None, *, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        """Yield ``(key, value)`` for keys in ``[start, stop)``, ascending or descending.

        ``start`` is inclusive and ``stop`` exclusive in both directions (a
        reverse scan starts below ``stop``).  ``None`` leaves a side open.
        Large values are loaded only when their entry is reached.
        """
        for key, value in self._entries(start, stop, reverse):
            yield key, self._value(value)

    def _entries(
        self, start: bytes | None, stop: bytes | None, reverse: bool
    ) -> Iterator[tuple[bytes, Value]]:
        if self.root is None or (start is not None and stop is not None and start >= stop):
            return
        if reverse:
            yield from self._backward(self.root, start, stop)
        else:
            yield from self._forward(self.root, start, stop)

    def _forward(
        self, root: NodeId, start: bytes | None, stop: bytes | None
    ) -> Iterator[tuple[bytes, Value]]:
        # The stack holds (internal node, index of the next child to visit).
        stack: list[tuple[Internal, int]] = []
        node = self._reader.tree_node(root)
        while isinstance(node, Internal):
            i = 0 if start is None else max(bisect_right(node.keys, start) - 1, 0)
            stack.append((node, i + 1))
            node = self._reader.tree_node(node.children[i])
        j = 0 if start is None else bisect_left(node.keys, start)
        while True:
            keys, values = node.keys, node.values
            end = len(keys) if stop is None else bisect_left(keys, stop, j)
            for k in range(j, end):
                yield keys[k], values[k]
            if end < len(keys):
                return
            while stack and stack[-1][1] >= len(stack[-1][0].children):
                stack.pop()
            if not stack:
                return
            parent, i = stack.pop()
            stack.append((parent, i + 1))
            if stop is not None and parent.keys[i] >= stop:
                return
            down = self._reader.tree_node(parent.children[i])
            while isinstance(down, Internal):
                stack.append((down, 1))
                down = self._reader.tree_node(down.children[0])
            node, j = down, 0

    def _backward(
        self, root: NodeId, start: bytes | None, stop: bytes | None
    ) -> Iterator[tuple[bytes, Value]]:
        # The stack holds (internal node, index of the last child visited).
        stack: list[tuple[Internal, int]] = []
        node = self._reader.tree_node(root)
        while isinstance(node, Internal):
            n = len(node.children)
            i = n - 1 if stop is None else bisect_left(node.keys, stop) - 1
            if i < 0:
                return  # every key is >= stop
            stack.append((node, i))
            node = self._reader.tree_node(node.children[i])
        j = len(node.keys) if stop is None else bisect_left(node.keys, stop)
        while True:
            keys, values = node.keys, node.values
            low = 0 if start is None else bisect_left(keys, start, 0, j)
            for k in range(j - 1, low - 1, -1):
                yield keys[k], values[k]
            if low > 0:
                return
            while stack and stack[-1][1] == 0:
                stack.pop()
            if not stack:
                return
            parent, i = stack.pop()
            stack.append((parent, i - 1))
            if start is not None and parent.keys[i] <= start:
                return
            down = self._reader.tree_node(parent.children[i - 1])
            while isinstance(down, Internal):
                stack.append((down, len(down.children) - 1))
                down = self._reader.tree_node(down.children[-1])
            node, j = down, len(down.keys)
