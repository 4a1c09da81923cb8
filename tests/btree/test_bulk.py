"""bulk_load: full nodes bottom-up, the memory-friendly sink, shared objects."""

from __future__ import annotations

import pytest

from persist.btree import (
    MemoryNodeStore,
    NodeId,
    Tree,
    TreeUpdate,
    apply_batch,
    bulk_load,
    check_tree,
    release,
)
from persist.btree.node import children_of, decode_node

from .oracle import assert_exact, key, shape_of

BIG = b"B" * 500


def pairs(n: int) -> list[tuple[bytes, bytes]]:
    return [(key(i), BIG if i % 10 == 0 else b"v%d" % i) for i in range(n)]


@pytest.mark.parametrize("n", [0, 1, 15, 16, 32, 33, 47, 48, 49, 512, 513, 784, 785, 8_193])
def test_bulk_load_builds_a_valid_tree(n: int) -> None:
    store = MemoryNodeStore()
    root, update = bulk_load(store, pairs(n))
    store.apply(update)
    assert check_tree(store, {"t": root}) == []
    assert_exact(store, [root])
    assert list(Tree(store, root).items()) == pairs(n)


def test_bulk_load_packs_full_nodes() -> None:
    store = MemoryNodeStore()
    root, update = bulk_load(store, pairs(32 * 16))
    store.apply(update)
    assert shape_of(store, root) == [32] * 16
    store.apply(release(store, root))
    root, update = bulk_load(store, pairs(32 * 16 + 1))
    store.apply(update)
    # 513 entries: 15 full leaves and a tail of 33 cut 17 + 16; 17 leaves cut 9 + 8.
    assert shape_of(store, root) == [[32] * 9, [32] * 6 + [17, 16]]


def test_the_sink_receives_children_before_parents_and_the_same_objects() -> None:
    reference = MemoryNodeStore()
    root, update = bulk_load(reference, pairs(5_000))
    reference.apply(update)

    store = MemoryNodeStore()
    groups: list[dict] = []

    def sink(objects: dict) -> None:
        groups.append(objects)
        store.apply(TreeUpdate(puts=objects))
        # Everything written so far names only objects written before it.
        assert all(child in store.objects for nid in objects for child in children(store, nid))

    streamed_root, rest = bulk_load(store, pairs(5_000), sink=sink, sink_objects=50)
    assert len(groups) > 3 and all(len(g) <= 51 for g in groups)
    store.apply(rest)
    assert streamed_root == root
    assert store.objects == reference.objects and store.count_rows == reference.count_rows


def children(store: MemoryNodeStore, nid: NodeId) -> list[NodeId]:
    return children_of(decode_node(store.objects[nid]))


def test_bulk_and_batch_agree_and_share_blobs() -> None:
    store = MemoryNodeStore()
    r1, update = apply_batch(store, None, pairs(3_000))
    store.apply(update)
    r2, update = bulk_load(store, pairs(3_000))
    assert len(update.puts) < 200  # the 300 equal blob references reuse one blob
    store.apply(update)
    assert list(Tree(store, r1).items()) == list(Tree(store, r2).items())
    assert check_tree(store, {"batch": r1, "bulk": r2}) == []
    store.apply(release(store, r1))
    store.apply(release(store, r2))
    assert store.objects == {}


def test_bulk_load_refuses_unsorted_or_malformed_input() -> None:
    with pytest.raises(ValueError):
        bulk_load(MemoryNodeStore(), [(b"b", b""), (b"a", b"")])
    with pytest.raises(ValueError):
        bulk_load(MemoryNodeStore(), [(b"a", b""), (b"a", b"")])
    with pytest.raises(TypeError):
        bulk_load(MemoryNodeStore(), [(b"a", "text")])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        bulk_load(MemoryNodeStore(), [], sink=lambda _: None, sink_objects=0)
