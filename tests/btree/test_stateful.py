"""Hypothesis stateful test: trees in two tables against a dict model.

Every step commits through ``MemoryNodeStore.apply`` and then checks that
the checker finds nothing, that the store holds exactly the objects the live
roots reach with exact counts (an independent oracle), and that every live
version -- the current tree and retained snapshots -- still reads as its model.
"""

from __future__ import annotations

import random
from bisect import bisect_left
from dataclasses import dataclass, field
from itertools import islice

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from persist.btree import (
    DELETE,
    Delete,
    MemoryNodeStore,
    NodeCache,
    NodeId,
    PendingNodeStore,
    Tree,
    apply_batch,
    bulk_load,
    check_tree,
    release,
    retain,
)

from .oracle import assert_exact

# A small key space so that batches hit existing keys, delete them and refill.
KEYS = st.integers(0, 2_500).map(lambda i: i.to_bytes(2, "big")) | st.binary(max_size=3)
LARGE = [b"L" * 225, b"M" * 300, b"N" * 1_000]  # few distinct: identical values under many keys
VALUES = (
    st.binary(max_size=8)
    | st.sampled_from(LARGE)
    | st.binary(min_size=222, max_size=227)  # both sides of the inline limit
)
CHANGES = st.dictionaries(KEYS, VALUES | st.just(DELETE), max_size=24)


def random_changes(seed: int, size: int, p_delete: float) -> dict[bytes, bytes | Delete]:
    rng = random.Random(seed)
    changes: dict[bytes, bytes | Delete] = {}
    for _ in range(size):
        k = rng.randrange(2_500).to_bytes(2, "big")
        if rng.random() < p_delete:
            changes[k] = DELETE
        else:
            large = rng.random() < 0.15
            changes[k] = LARGE[rng.randrange(3)] if large else b"%d" % rng.randrange(10**6)
    return changes


@dataclass
class Table:
    store: MemoryNodeStore = field(default_factory=MemoryNodeStore)
    root: NodeId | None = None
    model: dict[bytes, bytes] = field(default_factory=dict)
    snapshots: list[tuple[NodeId | None, dict[bytes, bytes]]] = field(default_factory=list)

    def roots(self) -> dict[str, NodeId | None]:
        named = {"current": self.root}
        named.update({f"snapshot{i}": root for i, (root, _) in enumerate(self.snapshots)})
        return named


def applied(model: dict[bytes, bytes], changes: dict[bytes, bytes | Delete]) -> dict[bytes, bytes]:
    result = dict(model)
    for k, v in changes.items():
        if isinstance(v, Delete):
            result.pop(k, None)
        else:
            result[k] = v
    return result


class TreeMachine(RuleBasedStateMachine):
    index_only = False

    def __init__(self) -> None:
        super().__init__()
        self.tables = [Table(MemoryNodeStore(index_only=self.index_only)) for _ in range(2)]
        self.cache = NodeCache(1024)  # shared by both tables: addresses are content

    def commit(self, t: Table, changes: dict[bytes, bytes | Delete]) -> None:
        root, update = apply_batch(t.store, t.root, sorted(changes.items()), cache=self.cache)
        t.store.apply(update)
        t.root, t.model = root, applied(t.model, changes)

    @rule(which=st.integers(0, 1), changes=CHANGES)
    def small_batch(self, which: int, changes: dict[bytes, bytes | Delete]) -> None:
        self.commit(self.tables[which], changes)

    @rule(
        which=st.integers(0, 1),
        seed=st.integers(0, 2**32 - 1),
        size=st.sampled_from([1, 60, 250, 900, 2_000]),
        p_delete=st.sampled_from([0.0, 0.2, 0.9]),
    )
    def large_batch(self, which: int, seed: int, size: int, p_delete: float) -> None:
        self.commit(self.tables[which], random_changes(seed, size, p_delete))

    @rule(which=st.integers(0, 1))
    def delete_everything(self, which: int) -> None:
        t = self.tables[which]
        self.commit(t, dict.fromkeys(t.model, DELETE))
        assert t.root is None

    @rule(which=st.integers(0, 1), start=st.integers(0, 2_500), length=st.integers(1, 1_500))
    def delete_a_key_range(self, which: int, start: int, length: int) -> None:
        # Wipes out whole subtrees: the under-full chains of batch.py.
        t = self.tables[which]
        lo, hi = start.to_bytes(2, "big"), (start + length).to_bytes(2, "big")
        self.commit(t, {k: DELETE for k in t.model if lo <= k < hi})

    @rule(which=st.integers(0, 1), first=CHANGES, second=CHANGES)
    def two_batches_one_commit(self, which: int, first: dict, second: dict) -> None:
        t = self.tables[which]
        r1, u1 = apply_batch(t.store, t.root, sorted(first.items()))
        r2, u2 = apply_batch(PendingNodeStore(t.store, u1), r1, sorted(second.items()))
        t.store.apply(u1.then(u2))
        t.root, t.model = r2, applied(applied(t.model, first), second)

    @rule(which=st.integers(0, 1), first=CHANGES, second=CHANGES, third=CHANGES)
    def three_batches_absorbed_in_place(
        self, which: int, first: dict, second: dict, third: dict
    ) -> None:
        # The chain of a large fold (persist/db/treestore.py): each batch is
        # absorbed into the first in place, and must equal ``then``'s copy.
        t = self.tables[which]
        r1, u1 = apply_batch(t.store, t.root, sorted(first.items()))
        r2, u2 = apply_batch(PendingNodeStore(t.store, u1), r1, sorted(second.items()))
        expected = u1.then(u2)
        u1.absorb(u2)
        assert u1 == expected
        r3, u3 = apply_batch(PendingNodeStore(t.store, u1), r2, sorted(third.items()))
        expected = u1.then(u3)
        u1.absorb(u3)
        assert u1 == expected
        t.store.apply(u1)
        t.root, t.model = r3, applied(applied(applied(t.model, first), second), third)

    @precondition(
        lambda self: not self.index_only and sum(len(t.snapshots) for t in self.tables) < 4
    )
    @rule(which=st.integers(0, 1))
    def snapshot(self, which: int) -> None:
        t = self.tables[which]
        t.store.apply(retain(t.store, t.root))
        t.snapshots.append((t.root, dict(t.model)))

    @precondition(lambda self: any(t.snapshots for t in self.tables))
    @rule(data=st.data())
    def release_snapshot(self, data: st.DataObject) -> None:
        t = data.draw(st.sampled_from([t for t in self.tables if t.snapshots]))
        root, model = t.snapshots.pop(data.draw(st.integers(0, len(t.snapshots) - 1)))
        self.assert_reads_as(t, root, model)
        t.store.apply(release(t.store, root))

    @rule(which=st.integers(0, 1))
    def reload_by_bulk_load(self, which: int) -> None:
        t = self.tables[which]
        t.store.apply(release(t.store, t.root))
        root, update = bulk_load(t.store, sorted(t.model.items()))
        t.store.apply(update)
        t.root = root

    @rule(
        which=st.integers(0, 1),
        start=st.none() | KEYS,
        stop=st.none() | KEYS,
        reverse=st.booleans(),
        limit=st.none() | st.integers(0, 40),
    )
    def range_query(
        self, which: int, start: bytes | None, stop: bytes | None, reverse: bool, limit: int | None
    ) -> None:
        t = self.tables[which]
        keys = sorted(t.model)
        lo = 0 if start is None else bisect_left(keys, start)
        hi = len(keys) if stop is None else bisect_left(keys, stop)
        want = [(k, t.model[k]) for k in keys[lo:hi]]
        if reverse:
            want.reverse()
        got = Tree(t.store, t.root, cache=self.cache).items(start, stop, reverse=reverse)
        assert list(islice(got, limit)) == want[:limit]

    @rule(which=st.integers(0, 1), k=KEYS)
    def get(self, which: int, k: bytes) -> None:
        t = self.tables[which]
        assert Tree(t.store, t.root, cache=self.cache).get(k) == t.model.get(k)

    def assert_reads_as(self, t: Table, root: NodeId | None, model: dict[bytes, bytes]) -> None:
        tree = Tree(t.store, root, cache=self.cache)
        assert tree.count() == len(model)
        assert list(tree.items()) == sorted(model.items())
        assert tree.first() == (min(model.items()) if model else None)
        assert tree.last() == (max(model.items()) if model else None)

    @invariant()
    def stores_are_exact_and_versions_read_back(self) -> None:
        for t in self.tables:
            assert check_tree(t.store, t.roots()) == []
            assert_exact(t.store, t.roots().values())
            self.assert_reads_as(t, t.root, t.model)
            for root, model in t.snapshots:
                # Stored objects never change, so exact counts and a clean
                # check keep a snapshot intact; it is read in full on release.
                assert Tree(t.store, root, cache=self.cache).count() == len(model)

    def teardown(self) -> None:
        # Releasing every handle must leave nothing behind.
        for t in self.tables:
            for root in [t.root, *(r for r, _ in t.snapshots)]:
                t.store.apply(release(t.store, root))
            assert t.store.objects == {} and t.store.count_rows == {}


TreeMachine.TestCase.settings = settings(
    max_examples=100, stateful_step_count=60, deadline=None, database=None
)
test_tree_machine = TreeMachine.TestCase


class IndexOnlyTreeMachine(TreeMachine):
    """The same, over a store that knows only blob counts and counts above 1 (format
    v2): liveness of every other node must come from what the batch reached."""

    index_only = True


IndexOnlyTreeMachine.TestCase.settings = TreeMachine.TestCase.settings
test_index_only_tree_machine = IndexOnlyTreeMachine.TestCase
