"""Test helpers: an independent reference-count oracle and hand-built trees.

The oracle walks objects with nothing but :func:`decode_node` so that the
checker under test is not its own judge.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from persist.btree import MemoryNodeStore, NodeId
from persist.btree.node import (
    Blob,
    Internal,
    Leaf,
    children_of,
    decode_node,
    encode_internal,
    encode_leaf,
)


def key(i: int) -> bytes:
    return i.to_bytes(4, "big")


def expected_counts(store: MemoryNodeStore, roots: Iterable[NodeId | None]) -> Counter[NodeId]:
    """References to every object reachable from ``roots``: per parent plus per root handle."""
    counts: Counter[NodeId] = Counter()
    seen: set[NodeId] = set()
    stack: list[NodeId] = []
    for root in roots:
        if root is not None:
            counts[root] += 1
            stack.append(root)
    while stack:
        nid = stack.pop()
        if nid in seen:
            continue
        seen.add(nid)
        for child in children_of(decode_node(store.objects[nid])):
            counts[child] += 1
            stack.append(child)
    return counts


def assert_exact(store: MemoryNodeStore, roots: Iterable[NodeId | None]) -> None:
    """The store holds exactly the reachable objects, with exact count rows."""
    counts = expected_counts(store, roots)
    assert set(store.objects) == set(counts), "leaked or dangling objects"
    assert store.count_rows == {nid: n for nid, n in counts.items() if n > 1}
    if store.index_only:  # every blob counted, exactly
        blobs = {nid for nid, data in store.objects.items() if isinstance(decode_node(data), Blob)}
        assert store.blob_counts == {nid: counts[nid] for nid in blobs}


def put(store: MemoryNodeStore, data: bytes) -> NodeId:
    nid = store.node_id(data)
    store.objects[nid] = data
    return nid


def recount(store: MemoryNodeStore, roots: Iterable[NodeId | None]) -> None:
    """Rewrite every count row from the oracle (after building a tree by hand)."""
    counts = expected_counts(store, roots)
    store.count_rows = {nid: n for nid, n in counts.items() if n > 1}


def build(store: MemoryNodeStore, shape: Sequence[object], first: int = 0) -> tuple[NodeId, int]:
    """Store a tree of a given shape by hand; return (root, number of keys).

    ``shape`` is a nested list: an int is a leaf with that many entries, a
    list is an internal node over its items.  Keys are consecutive from
    ``first`` (see :func:`key`), values ``b"v" + key``.
    """
    ref, n = _build(store, shape, first)
    recount(store, [ref[1]])
    return ref[1], n


def _build(
    store: MemoryNodeStore, shape: object, first: int
) -> tuple[tuple[bytes, NodeId, int, int], int]:
    if isinstance(shape, int):
        keys = [key(i) for i in range(first, first + shape)]
        nid = put(store, encode_leaf(keys, [b"v" + k for k in keys]))
        return (keys[0], nid, shape, 0), shape
    assert isinstance(shape, list)
    refs = []
    total = 0
    for sub in shape:
        ref, n = _build(store, sub, first + total)
        refs.append(ref)
        total += n
    level = refs[0][3] + 1
    data = encode_internal(level, [r[0] for r in refs], [r[1] for r in refs], [r[2] for r in refs])
    return (refs[0][0], put(store, data), total, level), total


def shape_of(store: MemoryNodeStore, root: NodeId | None) -> object:
    """The inverse of :func:`build`: the nested list of leaf sizes of a stored tree."""
    if root is None:
        return None
    node = decode_node(store.objects[root])
    if isinstance(node, Internal):
        return [shape_of(store, c) for c in node.children]
    assert isinstance(node, Leaf)
    return len(node.keys)
