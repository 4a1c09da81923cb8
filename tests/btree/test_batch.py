"""apply_batch: fill boundaries, one rewrite per touched node, GC arithmetic, chaining."""

from __future__ import annotations

import random

import pytest

from persist.btree import (
    DELETE,
    MemoryNodeStore,
    NodeId,
    PendingNodeStore,
    Tree,
    TreeUpdate,
    apply_batch,
    bulk_load,
    check_tree,
    release,
    retain,
)
from persist.btree.batch import split_sizes
from persist.btree.node import Internal, decode_node
from persist.errors import IntegrityError

from .oracle import assert_exact, build, key, shape_of


def commit(store: MemoryNodeStore, root: NodeId | None, changes: list) -> NodeId | None:
    new_root, update = apply_batch(store, root, changes)
    store.apply(update)
    assert check_tree(store, {"t": new_root}) == []
    assert_exact(store, [new_root])
    return new_root


def entries(store: MemoryNodeStore, root: NodeId | None) -> list[tuple[bytes, bytes]]:
    return list(Tree(store, root).items())


# -- fill boundaries ------------------------------------------------------------------


def test_split_sizes_stay_within_bounds() -> None:
    for most in (16, 32):
        for n in range(1, 40 * most):
            for pack_left in (False, True):
                sizes = split_sizes(n, most, pack_left=pack_left)
                assert sum(sizes) == n
                assert all(size <= most for size in sizes)
                if n >= most // 2:
                    assert all(size >= most // 2 for size in sizes), (n, sizes)


def test_root_leaf_holds_32_then_splits_16_17() -> None:
    store = MemoryNodeStore()
    root = commit(store, None, [(key(i), b"v") for i in range(32)])
    assert shape_of(store, root) == 32
    root = commit(store, root, [(key(100), b"v")])
    assert shape_of(store, root) == [17, 16]


def test_sixteen_children_then_the_root_splits_8_9() -> None:
    store = MemoryNodeStore()
    root, _ = build(store, [32] * 16)
    assert check_tree(store, {"t": root}) == []
    root = commit(store, root, [(key(0) + b"+", b"new")])  # the first leaf overflows
    assert shape_of(store, root) == [[17, 16] + [32] * 7, [32] * 8]


def test_a_leaf_at_minimum_merges_with_its_neighbour() -> None:
    store = MemoryNodeStore()
    root, _ = build(store, [16, 16, 16])
    root = commit(store, root, [(key(20), DELETE)])  # the middle leaf drops to 15
    assert shape_of(store, root) == [31, 16] or shape_of(store, root) == [16, 31]


def test_an_underfull_leaf_borrows_from_a_full_neighbour() -> None:
    store = MemoryNodeStore()
    root, _ = build(store, [16, 32])
    root = commit(store, root, [(key(0), DELETE)])
    assert shape_of(store, root) == [23, 24]


def test_underflow_propagates_and_the_tree_shrinks() -> None:
    store = MemoryNodeStore()
    root, n = build(store, [[16] * 8, [16] * 8])
    root = commit(store, root, [(key(0), DELETE)])
    # 15 + 16 = 31 -> one leaf; the left node drops to 7 children and merges
    # with its sibling (7 + 8 = 15); the root is left with one child and goes.
    assert shape_of(store, root) == [31] + [16] * 14
    assert [k for k, _ in entries(store, root)] == [key(i) for i in range(1, n)]


def test_a_whole_subtree_collapses_into_its_sibling() -> None:
    store = MemoryNodeStore()
    root, n = build(store, [[16] * 8, [16] * 8, [16] * 8])
    gone = [(key(i), DELETE) for i in range(3, 128)]  # the first subtree keeps 3 keys
    root = commit(store, root, gone)
    keys = [k for k, _ in entries(store, root)]
    assert keys == [key(i) for i in (0, 1, 2, *range(128, n))]
    assert isinstance(decode_node(store.objects[root]), Internal)


def test_deleting_everything_empties_the_store() -> None:
    store = MemoryNodeStore()
    root, n = build(store, [[16] * 8, [32] * 16])
    root = commit(store, root, [(key(i), DELETE) for i in range(n)])
    assert root is None
    assert store.objects == {} and store.count_rows == {}


def test_random_deletes_keep_every_node_in_bounds() -> None:
    rng = random.Random(7)
    store = MemoryNodeStore()
    root, n = build(store, [[16] * 8, [32] * 16, [16] * 8, [20] * 9])
    alive = set(range(n))
    while alive:
        doomed = sorted(rng.sample(sorted(alive), min(len(alive), rng.choice([1, 5, 40]))))
        root = commit(store, root, [(key(i), DELETE) for i in doomed])
        alive.difference_update(doomed)
        assert [k for k, _ in entries(store, root)] == [key(i) for i in sorted(alive)]


# -- one rewrite per touched node ----------------------------------------------------


def path_nodes(store: MemoryNodeStore, root: NodeId, keys: list[bytes]) -> set[NodeId]:
    """The stored nodes on the search paths of ``keys``."""
    found: set[NodeId] = set()
    for k in keys:
        nid = root
        while True:
            found.add(nid)
            node = decode_node(store.objects[nid])
            if not isinstance(node, Internal):
                break
            i = max(sum(1 for m in node.keys if m <= k) - 1, 0)
            nid = node.children[i]
    return found


def tall_tree(n: int = 20_000) -> tuple[MemoryNodeStore, NodeId]:
    store = MemoryNodeStore()
    root, update = bulk_load(store, [(key(i), b"old") for i in range(n)])
    store.apply(update)
    assert root is not None
    return store, root


def test_a_batch_in_one_leaf_writes_one_node_per_level() -> None:
    store, root = tall_tree()
    height = len(path_nodes(store, root, [key(0)]))
    assert height == 4
    changes = [(key(i), b"new") for i in range(64, 64 + 32)]  # exactly one leaf
    _, update = apply_batch(store, root, changes)
    assert len(update.puts) == height
    assert len(update.deletes) == height
    assert update.counts == {}


def test_each_touched_node_is_read_and_rewritten_once() -> None:
    store, root = tall_tree()
    rng = random.Random(3)
    keys = sorted(key(i) for i in rng.sample(range(20_000), 1_000))
    touched = path_nodes(store, root, keys)
    store.loads = store.lookups = 0
    new_root, update = apply_batch(store, root, [(k, b"new") for k in keys])
    assert store.loads == len(touched)  # read once, including by the GC
    assert store.lookups == 2 * len(touched)  # counts of the old and the new nodes only
    assert len(update.puts) == len(touched)  # encoded and written once
    assert update.deletes == touched
    store.apply(update)
    assert_exact(store, [new_root])


def test_a_no_op_batch_changes_nothing() -> None:
    store, root = tall_tree(2_000)
    new_root, update = apply_batch(store, root, [(key(5), b"old"), (key(7), DELETE)])
    assert new_root != root  # key 7 existed
    new_root, update = apply_batch(store, root, [(key(5), b"old"), (key(99_999), DELETE)])
    assert new_root == root and not update
    assert apply_batch(store, root, []) == (root, TreeUpdate())


# -- values, blobs and dedup -------------------------------------------------------------


def test_inline_limit_is_224_bytes() -> None:
    store = MemoryNodeStore()
    root = commit(store, None, [(b"a", b"x" * 224), (b"b", b"y" * 225)])
    assert len(store.objects) == 2  # one leaf, one blob
    assert dict(entries(store, root)) == {b"a": b"x" * 224, b"b": b"y" * 225}


def test_identical_large_values_share_one_counted_blob() -> None:
    store = MemoryNodeStore()
    big = b"B" * 1000
    root = commit(store, None, [(key(i), big) for i in range(100)])
    blob = store.node_id(b"\x83\x03\x01\x59\x03\xe8" + big)
    assert store.count_rows[blob] == 100
    root = commit(store, root, [(key(i), DELETE) for i in range(99)])
    assert blob in store.objects and blob not in store.count_rows  # count 1: no row
    root = commit(store, root, [(key(99), b"small")])
    assert blob not in store.objects


def test_batch_argument_errors_are_raised_before_any_work() -> None:
    store = MemoryNodeStore()
    with pytest.raises(ValueError):
        apply_batch(store, None, [(b"b", b"1"), (b"a", b"2")])
    with pytest.raises(ValueError):
        apply_batch(store, None, [(b"a", b"1"), (b"a", b"2")])
    with pytest.raises(ValueError):
        apply_batch(store, None, [(b"k" * 1025, b"1")])
    with pytest.raises(TypeError):
        apply_batch(store, None, [("a", b"1")])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        apply_batch(store, None, [(b"a", None)])  # type: ignore[list-item]
    assert store.objects == {}


def test_a_mapping_of_changes_equals_its_sorted_pairs() -> None:
    """Issue 4: a wave's dict goes in unsorted; None deletes, as DELETE does."""
    store, root = tall_tree(3_000)
    rng = random.Random(4)
    changes: dict[bytes, bytes | None] = {}
    for i in rng.sample(range(6_000), 900):
        changes[key(i)] = None if i % 3 == 0 else (b"big" * 100 if i % 5 == 0 else b"v%d" % i)
    pairs = [(k, DELETE if v is None else v) for k, v in sorted(changes.items())]
    via_pairs = apply_batch(store, root, pairs)
    via_mapping = apply_batch(store, root, changes)
    assert via_mapping == via_pairs
    appended = {key(10_000 + i): b"x" for i in range(100)}  # appends only: no merge
    assert apply_batch(store, root, appended) == apply_batch(store, root, sorted(appended.items()))


def test_mapping_argument_errors() -> None:
    store = MemoryNodeStore()
    with pytest.raises(TypeError):
        apply_batch(store, None, {"a": b"1"})  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        apply_batch(store, None, {b"a": 1})  # type: ignore[dict-item]
    with pytest.raises(ValueError):
        apply_batch(store, None, {b"k" * 1025: b"1"})
    assert apply_batch(store, None, {}) == (None, TreeUpdate())
    assert store.objects == {}


# -- root handles, several tables, chaining ------------------------------------------


def test_retain_keeps_a_version_and_release_frees_only_its_own_nodes() -> None:
    store, v1 = tall_tree(3_000)
    store.apply(retain(store, v1))  # a snapshot handle
    v2, update = apply_batch(store, v1, [(key(10), b"new"), (key(2_000), DELETE)])
    store.apply(update)  # the current handle moved from v1 to v2
    assert_exact(store, [v1, v2])
    assert check_tree(store, {"snapshot": v1, "current": v2}) == []
    assert Tree(store, v1).get(key(10)) == b"old" and Tree(store, v1).get(key(2_000)) == b"old"
    store.apply(release(store, v1))
    assert_exact(store, [v2])
    assert Tree(store, v2).get(key(10)) == b"new"
    store.apply(release(store, v2))
    assert store.objects == {}


def test_handles_on_missing_roots_are_refused() -> None:
    with pytest.raises(IntegrityError):
        retain(MemoryNodeStore(), NodeId(b"\x01" * 32))
    store, root = tall_tree(100)
    store.apply(release(store, root))
    with pytest.raises(IntegrityError):
        release(store, root)  # its count would fall below zero


def test_tables_with_their_own_stores_are_independent() -> None:
    a, b = MemoryNodeStore(), MemoryNodeStore()
    ra = commit(a, None, [(b"k", b"a")])
    rb = commit(b, None, [(b"k", b"a")])
    assert ra == rb  # same content, same address, but counted per store
    b.apply(release(b, rb))
    assert b.objects == {} and Tree(a, ra).get(b"k") == b"a"


def test_chained_batches_commit_once_and_skip_short_lived_objects() -> None:
    store, root = tall_tree(1_000)
    big = b"Q" * 500
    r1, u1 = apply_batch(store, root, [(key(1), big), (key(500), b"one")])
    pending = PendingNodeStore(store, u1)
    r2, u2 = apply_batch(pending, r1, [(key(1), DELETE), (key(500), b"two")])
    combined = u1.then(u2)
    blob = store.node_id(b"\x83\x03\x01\x59\x01\xf4" + big)
    assert blob in u1.puts and blob not in combined.puts  # created and freed: never written
    assert not (set(combined.puts) & set(u1.puts) - set(u2.puts))
    store.apply(combined)
    assert_exact(store, [r2])
    assert Tree(store, r2).get(key(500)) == b"two" and key(1) not in Tree(store, r2)


def test_then_restates_the_count_of_a_freed_and_recreated_object() -> None:
    store, root = tall_tree(100)
    store.apply(retain(store, root))  # count 2: a count row exists
    u1 = release(store, root)
    u1 = u1.then(release(PendingNodeStore(store, u1), root))  # count 0: deleted
    assert root in u1.deletes
    u2 = retain(PendingNodeStore(store, u1), None)
    assert not u2
    r, u3 = bulk_load(PendingNodeStore(store, u1), entries(store, root))
    assert r == root
    combined = u1.then(u3)
    assert root not in combined.deletes and combined.counts[root] == 1
    store.apply(combined)
    assert_exact(store, [root])


@pytest.mark.parametrize("index_only", [False, True])
def test_then_knows_a_recounted_then_freed_object_had_no_count_row(index_only: bool) -> None:
    """A blob referenced once (no count row) that the first batch references
    again (count 2) and the second frees (count 0): the combined update deletes
    it as an object WITHOUT a count row, because none was ever committed
    (found by tests/btree/test_stateful.py: the second batch alone, computed
    against the first's pending count of 2, says it had one)."""
    store = MemoryNodeStore(index_only=index_only)
    big = b"L" * 300
    root, update = apply_batch(store, None, [(key(1), big), (key(2), b"x")])
    store.apply(update)
    blob = next(iter(update.blobs))
    assert blob not in store.count_rows  # referenced once: no count row
    r1, u1 = apply_batch(store, root, [(key(3), big)])  # referenced twice
    assert u1.counts[blob] == 2
    r2, u2 = apply_batch(PendingNodeStore(store, u1), r1, [(key(1), DELETE), (key(3), DELETE)])
    assert blob in u2.deletes and blob in u2.counted_deletes  # as the pending state saw it
    combined = u1.then(u2)
    assert blob in combined.deletes and blob not in combined.counted_deletes
    store.apply(combined)  # the memory store refuses a misstated count row
    assert_exact(store, [r2])
    assert dict(Tree(store, r2).items()) == {key(2): b"x"}


def test_recreating_a_retained_version_shares_its_stored_nodes() -> None:
    store, v1 = tall_tree(3_000)
    store.apply(retain(store, v1))  # snapshot handle
    v2, update = apply_batch(store, v1, [(key(7), b"changed"), (key(2_500), b"changed")])
    store.apply(update)
    # Writing the old values back rebuilds nodes that the snapshot still holds:
    # they are adopted, not written, and their children are not counted twice.
    v3, update = apply_batch(store, v2, [(key(7), b"old"), (key(2_500), b"old")])
    assert v3 == v1 and update.puts == {}
    counts = dict(update.counts)
    assert counts.pop(v1) == 2  # the snapshot and the current handle
    # Subtrees that v2 shared with v1 drop back to one reference: rows deleted.
    assert set(counts.values()) == {1}
    store.apply(update)
    assert_exact(store, [v1, v3])
    assert check_tree(store, {"snapshot": v1, "current": v3}) == []


def test_a_batch_leaves_no_reference_cycle_behind() -> None:
    """Everything a batch holds (the old nodes it opened, the new encoded ones, the
    view it read through) goes when its update is dropped, by reference counting:
    a cycle (the ledger once held a bound method of its batch) kept a fold's whole
    working set until Python's cyclic collector ran, some tens of MB under load."""
    import gc

    from persist.btree import NodeCache

    rng = random.Random(5)
    store = MemoryNodeStore()
    pairs = sorted(
        {rng.randbytes(8): rng.randbytes(rng.choice([20, 300])) for _ in range(3000)}.items()
    )
    root, update = bulk_load(store, pairs)
    store.apply(update)
    cache = NodeCache(10_000)
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        changes = {rng.randbytes(8): rng.randbytes(rng.choice([20, 300])) for _ in range(500)}
        changes.update({k: None for k, _ in pairs[::7]})
        first_root, first = apply_batch(store, root, changes, cache=cache)
        view = PendingNodeStore(store, first)
        second_root, second = apply_batch(view, first_root, {rng.randbytes(8): b"x"}, cache=cache)
        first.absorb(second)
        del view, second, first, first_root, second_root, changes
        gc.collect()
        # only the tree layer's objects: another thread of the test process may leave
        # cycles of its own meanwhile
        ours = sorted(
            {type(o).__name__ for o in gc.garbage if type(o).__module__.startswith("persist.")}
        )
        assert ours == [], f"reference cycles left behind: {ours}"
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if enabled:
            gc.enable()
