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
from collections.abc import Iterable, Iterator, Sequence
from itertools import chain
from typing import TypeAlias, cast

from ..errors import IntegrityError
from .cache import NodeCache, NodeReader
from .node import BlobRef, Internal, Leaf, Value
from .nodestore import NodeId, NodeSource

__all__ = ["Tree"]

#: Part of one leaf in a range: its keys and values, and the indexes ``[lo, hi)``.
_Span: TypeAlias = tuple[tuple[bytes, ...], tuple[Value, ...], int, int]
#: A run of entries as two columns: ascending keys, and their values (never empty;
#: persist.mux.Columns, the same shape, is what the layers above call it).
_Columns: TypeAlias = tuple[Sequence[bytes], Sequence[bytes]]


def _no_peek(nid: NodeId) -> None:
    return None


class Tree:
    """An immutable view of one version of a tree (``root`` None = empty)."""

    __slots__ = ("_reader", "root")

    def __init__(
        self, store: NodeSource, root: NodeId | None, *, cache: NodeCache | None = None
    ) -> None:
        self.root = root
        self._reader = NodeReader(store, cache)

    @property
    def store(self) -> NodeSource:
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
        nid = self.root
        if nid is None:
            return None
        reader = self._reader
        cache = reader.cache
        peek = cache.peek if cache is not None else _no_peek  # the hot path: cached nodes
        node = peek(nid) or reader.tree_node(nid)
        while node.__class__ is Internal:
            i = bisect_right(node.keys, key) - 1
            if i < 0:
                return None
            nid = node.children[i]
            node = peek(nid) or reader.tree_node(nid)
        return node  # type: ignore[return-value]

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

    def count_present(self, keys: Iterable[bytes]) -> int:
        """How many of ``keys`` (ascending) the tree holds; one descent per leaf reached."""
        found = 0
        leaf: Leaf | None = None
        for key in keys:
            if leaf is None or not (leaf.keys and leaf.keys[0] <= key <= leaf.keys[-1]):
                leaf = self._leaf_for(key)
                if leaf is None:
                    continue
            i = bisect_left(leaf.keys, key)
            if i < len(leaf.keys) and leaf.keys[i] == key:
                found += 1
        return found

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
        return chain.from_iterable(
            keys[lo:hi] if not reverse else keys[lo:hi][::-1]
            for keys, _, lo, hi in self._spans(start, stop, reverse)
        )

    def items(
        self, start: bytes | None = None, stop: bytes | None = None, *, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        """Yield ``(key, value)`` for keys in ``[start, stop)``, ascending or descending.

        ``start`` is inclusive and ``stop`` exclusive in both directions (a
        reverse scan starts below ``stop``).  ``None`` leaves a side open.
        Large values are loaded only when their entry is reached.
        """
        return chain.from_iterable(self._runs(start, stop, reverse))

    def runs(
        self, start: bytes | None = None, stop: bytes | None = None, *, reverse: bool = False
    ) -> Iterator[Iterable[tuple[bytes, bytes]]]:
        """:meth:`items`, leaf by leaf: one iterable of pairs per leaf's part of the range."""
        return self._runs(start, stop, reverse)

    def _runs(
        self, start: bytes | None, stop: bytes | None, reverse: bool
    ) -> Iterator[Iterable[tuple[bytes, bytes]]]:
        """Yield each leaf's part of the range as one iterable of pairs.

        A leaf without blob references yields a ``zip`` of two slices, so
        iterating its entries runs in C; one with blob references yields a
        generator that loads each blob when its entry is reached.
        """
        for keys, values, lo, hi in self._spans(start, stop, reverse):
            if BlobRef in set(map(type, values)):
                run = range(lo, hi) if not reverse else range(hi - 1, lo - 1, -1)
                yield self._resolved(keys, values, run)
                continue
            data = cast("tuple[bytes, ...]", values)  # no blob reference: the values are bytes
            if lo == 0 and hi == len(keys):  # a whole leaf: no slices to copy
                if reverse:
                    yield zip(reversed(keys), reversed(data), strict=True)
                else:
                    yield zip(keys, data, strict=True)
            elif reverse:
                yield zip(keys[lo:hi][::-1], data[lo:hi][::-1], strict=True)
            else:
                yield zip(keys[lo:hi], data[lo:hi], strict=True)

    def columns(self, start: bytes | None = None, stop: bytes | None = None) -> Iterator[_Columns]:
        """:meth:`items` ascending, as runs of two columns: each leaf's part of
        the range as ``(keys, values)``, the leaf's own tuples when it is whole.

        The fastest way through a range: no tuple per entry.  A leaf with blob
        references yields a run per entry, whose blob is loaded when that run
        is taken (as :meth:`items` loads it when its entry is reached).
        """
        for keys, values, lo, hi in self._spans(start, stop, False):
            if BlobRef in set(map(type, values)):
                for i in range(lo, hi):
                    yield (keys[i],), (self._value(values[i]),)
                continue
            data = cast("tuple[bytes, ...]", values)  # no blob reference: the values are bytes
            if lo == 0 and hi == len(keys):
                yield keys, data
            else:
                yield keys[lo:hi], data[lo:hi]

    def _resolved(
        self, keys: tuple[bytes, ...], values: tuple[Value, ...], run: range
    ) -> Iterator[tuple[bytes, bytes]]:
        for i in run:
            yield keys[i], self._value(values[i])

    def _spans(self, start: bytes | None, stop: bytes | None, reverse: bool) -> Iterator[_Span]:
        """Yield ``(keys, values, lo, hi)``: the part ``[lo, hi)`` of each leaf in range.

        Leaves come in scan order; in a reverse scan each part is to be read
        from ``hi - 1`` down to ``lo``.  No part is empty.
        """
        if self.root is None or (start is not None and stop is not None and start >= stop):
            return
        if reverse:
            yield from self._backward(self.root, start, stop)
        else:
            yield from self._forward(self.root, start, stop)

    def _forward(self, root: NodeId, start: bytes | None, stop: bytes | None) -> Iterator[_Span]:
        # The stack holds (internal node, index of the next child to visit).
        stack: list[tuple[Internal, int]] = []
        node = self._reader.tree_node(root)
        while isinstance(node, Internal):
            i = 0 if start is None else max(bisect_right(node.keys, start) - 1, 0)
            stack.append((node, i + 1))
            node = self._reader.tree_node(node.children[i])
        j = 0 if start is None else bisect_left(node.keys, start)
        while True:
            keys = node.keys
            end = len(keys) if stop is None else bisect_left(keys, stop, j)
            if j < end:
                yield keys, node.values, j, end
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

    def _backward(self, root: NodeId, start: bytes | None, stop: bytes | None) -> Iterator[_Span]:
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
            keys = node.keys
            low = 0 if start is None else bisect_left(keys, start, 0, j)
            if low < j:
                yield keys, node.values, low, j
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
