"""Reads: get, bounded ranges in both directions, first/last, count, the node cache."""

from __future__ import annotations

import random
import threading
from bisect import bisect_left
from itertools import islice

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from persist.btree import MemoryNodeStore, NodeCache, NodeId, Tree, bulk_load, check_tree
from persist.errors import IntegrityError

from .oracle import key


def make(n: int, step: int = 2) -> tuple[MemoryNodeStore, NodeId | None, list[bytes]]:
    store = MemoryNodeStore()
    keys = [key(i) for i in range(0, n * step, step)]
    root, update = bulk_load(store, [(k, b"V" * (300 if k[-1] % 7 == 0 else 3)) for k in keys])
    store.apply(update)
    return store, root, keys


def expected(keys: list[bytes], start: bytes | None, stop: bytes | None) -> list[bytes]:
    lo = 0 if start is None else bisect_left(keys, start)
    hi = len(keys) if stop is None else bisect_left(keys, stop)
    return keys[lo:hi]


@pytest.mark.parametrize("n", [0, 1, 32, 33, 600, 9_000])
def test_ranges_match_a_sorted_list(n: int) -> None:
    store, root, keys = make(n)
    tree = Tree(store, root, cache=NodeCache(64))
    rng = random.Random(n)
    bounds = [None, key(0), key(1), key(2 * n), key(2 * n + 5), b"", b"\xff" * 5]
    bounds += [key(rng.randrange(2 * n + 2)) for _ in range(20)]
    for start in bounds:
        for stop in bounds:
            want = expected(keys, start, stop)
            # The first 40 entries each way exercise every descent and leaf hop.
            assert list(islice(tree.keys(start, stop), 40)) == want[:40]
            assert list(islice(tree.keys(start, stop, reverse=True), 40)) == want[::-1][:40]
    assert list(tree.keys()) == keys
    assert list(tree.keys(reverse=True)) == keys[::-1]
    assert len(tree) == tree.count() == n
    assert tree.first() == (None if n == 0 else (keys[0], tree.get(keys[0])))
    assert tree.last() == (None if n == 0 else (keys[-1], tree.get(keys[-1])))


def value_of(k: bytes) -> bytes:
    return b"V" * (300 if k[-1] % 7 == 0 else 3)


@pytest.mark.parametrize("n", [0, 1, 33, 600, 3_000])
def test_items_match_a_sorted_list_in_both_directions(n: int) -> None:
    """Issue 4: items come as whole leaf slices; blob values (> 224 bytes) are resolved."""
    store, root, keys = make(n)
    tree = Tree(store, root, cache=NodeCache(64))
    pairs = [(k, value_of(k)) for k in keys]
    rng = random.Random(n)
    bounds = [None, key(0), key(1), key(2 * n), b"", b"\xff" * 5]
    bounds += [key(rng.randrange(2 * n + 2)) for _ in range(12)]
    for start in bounds:
        for stop in bounds:
            lo = 0 if start is None else bisect_left(keys, start)
            hi = len(keys) if stop is None else max(lo, bisect_left(keys, stop))
            assert list(tree.items(start, stop)) == pairs[lo:hi]
            assert list(tree.items(start, stop, reverse=True)) == pairs[lo:hi][::-1]
            assert list(tree.keys(start, stop, reverse=True)) == keys[lo:hi][::-1]


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(st.binary(max_size=3), st.sampled_from([b"", b"s", b"L" * 225, b"M" * 400])),
    st.none() | st.binary(max_size=3),
    st.none() | st.binary(max_size=3),
)
def test_items_equal_the_reference_for_any_bounds(
    content: dict[bytes, bytes], start: bytes | None, stop: bytes | None
) -> None:
    store = MemoryNodeStore()
    root, update = bulk_load(store, sorted(content.items()))
    store.apply(update)
    tree = Tree(store, root, cache=NodeCache(16))
    want = [
        (k, v)
        for k, v in sorted(content.items())
        if (start is None or k >= start) and (stop is None or k < stop)
    ]
    assert list(tree.items(start, stop)) == want
    assert list(tree.items(start, stop, reverse=True)) == want[::-1]
    assert list(tree.keys(start, stop)) == [k for k, _ in want]
    runs = list(tree.columns(start, stop))  # the same, as runs of two columns
    assert all(keys and len(keys) == len(values) for keys, values in runs)
    assert [(k, v) for keys, values in runs for k, v in zip(keys, values, strict=True)] == want


def test_columns_pass_whole_leaves_through_and_load_blobs_lazily() -> None:
    """A whole leaf without blobs is one run of the leaf's own tuples (no copy); a
    leaf with blobs is a run per entry, each blob loaded when its run is taken."""
    store = MemoryNodeStore()
    keys = [key(i) for i in range(600)]
    pairs = [(k, b"B" * 300 if i < 2 else b"v") for i, k in enumerate(keys)]
    root, update = bulk_load(store, pairs)
    store.apply(update)
    tree = Tree(store, root, cache=NodeCache(64))
    runs = list(tree.columns())
    assert runs[0][0] == (keys[0],) and runs[1][0] == (keys[1],)  # the blob leaf, entry by entry
    whole = [run_keys for run_keys, _ in runs if len(run_keys) > 1]
    assert len(whole) > 10
    for run_keys in whole[1:]:  # the first leaf's rest may be a part; the others are whole
        leaf = tree._leaf_for(run_keys[0])
        assert leaf is not None and run_keys is leaf.keys
    store.loads = 0
    Tree(store, root).get(keys[0])
    descent = store.loads  # the path to the leaf, and the blob
    store.loads = 0
    lazy = Tree(store, root).columns()  # no cache: every load reaches the store
    first_keys, first_values = next(lazy)
    assert first_keys == (keys[0],) and first_values == (b"B" * 300,)
    assert store.loads == descent  # the second entry's blob is not loaded yet
    assert next(lazy)[1] == (b"B" * 300,) and store.loads == descent + 1
    bounded = list(tree.columns(keys[1], keys[3]))
    assert [k for run, _ in bounded for k in run] == keys[1:3]


def test_reverse_items_load_blobs_lazily() -> None:
    store, root, keys = make(100)
    tree = Tree(store, root)
    store.loads = 0
    last = keys[-1]
    assert next(tree.items(reverse=True)) == (last, value_of(last))
    assert store.loads == 2 + (last[-1] % 7 == 0)  # root, leaf, and a blob only if it is one


def test_get_and_contains() -> None:
    store, root, keys = make(2_000)
    tree = Tree(store, root)
    for k in keys[::37]:
        assert k in tree
        assert tree.get(k) == b"V" * (300 if k[-1] % 7 == 0 else 3)
    assert tree.get(key(1)) is None and key(1) not in tree
    assert tree.get(b"", b"dflt") == b"dflt"
    assert tree.get(b"\xff" * 8) is None


def test_items_load_blobs_lazily() -> None:
    store, root, keys = make(100)
    tree = Tree(store, root)
    store.loads = 0
    assert next(tree.items())[0] == keys[0]
    assert store.loads == 3  # root, leaf, and the first value's blob (key 0 % 7 == 0)


def test_a_damaged_blob_raises_instead_of_returning_wrong_data() -> None:
    store, root, _ = make(100)
    blobs = [nid for nid, data in store.objects.items() if data[1] == 3]
    store.objects[blobs[0]] = store.objects[blobs[0]][:-1]  # shorter than its reference
    with pytest.raises(IntegrityError):
        list(Tree(store, root).items())
    assert check_tree(store, {"t": root})


def test_concurrent_readers_share_a_small_cache() -> None:
    store, root, keys = make(5_000)
    cache = NodeCache(8)  # far too small: constant eviction under contention
    tree = Tree(store, root, cache=cache)
    errors: list[BaseException] = []

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(300):
                k = rng.choice(keys)
                assert tree.get(k) is not None
                lo = rng.randrange(len(keys))
                assert list(islice(tree.keys(keys[lo], None), 5)) == keys[lo : lo + 5]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(cache) <= 8 and cache.hits > 0


def test_cache_evicts_least_recently_used() -> None:
    cache = NodeCache(2)
    a, b, c = (NodeId(bytes([i]) * 32) for i in (1, 2, 3))
    store, root, _ = make(1)
    assert root is not None
    node = Tree(store, root)._reader.node(root)
    cache.put(a, node)
    cache.put(b, node)
    assert cache.get(a) is node  # a is now the most recent
    cache.put(c, node)
    assert cache.get(b) is None and cache.get(a) is node and cache.get(c) is node
    with pytest.raises(ValueError):
        NodeCache(0)


def test_cache_decodes_encoded_nodes_once_when_first_read() -> None:
    from persist.btree.node import decode_node, encode_leaf

    cache = NodeCache(2)
    a, b, c = (NodeId(bytes([i]) * 32) for i in (1, 2, 3))
    data = encode_leaf([b"k1", b"k2"], [b"v1", b"v2"])
    cache.put_encoded(a, data)
    first = cache.get(a)
    assert first == decode_node(data) and first is not None
    assert cache.get(a) is first  # replaced by the decoded node: decoded once
    cache.put_encoded(b, data)
    cache.put_encoded(c, data)  # evicts a, the least recently used, encoded or not
    assert cache.get(a) is None and cache.get(c) == first


def test_retain_is_refused_by_an_index_only_store() -> None:
    """Two versions share nodes a batch never reads, which only a full count can track."""
    from persist.btree import MemoryNodeStore, apply_batch, retain

    store = MemoryNodeStore(index_only=True)
    root, update = apply_batch(store, None, [(b"k", b"v")])
    store.apply(update)
    with pytest.raises(ValueError, match="retained versions"):
        retain(store, root)
