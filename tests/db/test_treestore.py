"""The trees on the encrypted store: the btree checker over the real node store."""

from __future__ import annotations

import os

from persist.btree import check_tree
from persist.btree.node import encode_leaf
from persist.db.treestore import LogLimits, TreeWaveStore
from persist.db.verify import verify_database
from persist.ebs import EncryptedStore, KdfParams
from persist.kvs import MemoryStore


def test_checker_over_the_encrypted_node_store() -> None:
    ebs = EncryptedStore.create(
        MemoryStore(), "pw", kdf=KdfParams.weak_for_tests(), allow_weak_kdf=True, freshness=False
    )
    trees = TreeWaveStore(ebs, log_limits=LogLimits(0, 0))  # every wave into the trees
    shared = b"S" * 300  # a blob referenced by many keys: counted in the count tree
    trees.commit_wave(1, {"t": {os.urandom(8): (shared if i % 2 else b"v") for i in range(500)}})
    trees.commit_wave(
        2, {"t": {k: None for k, _ in list(trees.scan("t", None, None, False))[:100]}}
    )
    store = trees._store("t")
    tree = trees.tree("t")
    assert tree is not None
    objects = dict(store.iter_objects())  # the count tree: one blob, counted per reference
    shares = sum(1 for _, v in trees.scan("t", None, None, False) if v == shared)
    assert list(objects.values()) == [shares] and shares > 100
    assert check_tree(store, {"t": tree.root}) == []
    with ebs.pin() as snap:
        assert verify_database(ebs, snap) == []
    # an extra, validly encrypted node that no root names is an orphan
    leaf = encode_leaf([b"orphan"], [b"x"])
    nid = store.node_id(leaf)
    batch = ebs.batch()
    batch.put_node(store.table, nid, leaf)
    ebs.commit(batch, ebs.root.catalog)
    with ebs.pin() as snap:
        problems = verify_database(ebs, snap)
    assert [(p.kind, p.storage_key) for p in problems] == [("orphan", nid.hex())]


def test_a_commit_drops_the_nodes_it_deleted_from_the_node_cache() -> None:
    """The nodes a fold replaced are dead from the new root on: the node cache
    forgets them (it filled with them before, and that was most of the memory
    a writer of large waves kept), while a reader of the old state still reads
    them from the state it pinned."""
    from persist.db import treestore

    ebs = EncryptedStore.create(
        MemoryStore(), "pw", kdf=KdfParams.weak_for_tests(), allow_weak_kdf=True, freshness=False
    )
    trees = TreeWaveStore(ebs, log_limits=LogLimits(0, 0))
    keys = [os.urandom(8) for _ in range(3000)]
    trees.commit_wave(1, {"t": dict.fromkeys(keys, b"one")})
    old = trees.state()
    deleted: set[bytes] = set()
    real = treestore.EbsNodeStore.committed

    def committed(self: treestore.EbsNodeStore, update: treestore.TreeUpdate) -> None:
        deleted.update(update.deletes)
        real(self, update)

    treestore.EbsNodeStore.committed = committed  # type: ignore[method-assign]
    try:
        trees.commit_wave(2, {"t": dict.fromkeys(keys, b"two")})  # every leaf rewritten
    finally:
        treestore.EbsNodeStore.committed = real  # type: ignore[method-assign]
    assert len(deleted) > 100
    assert not deleted & set(trees.cache._nodes)
    assert trees.get("t", keys[0]) == b"two"
    assert old.get("t", keys[0]) == b"one"  # from its pin, not the cache


def test_cache_bytes_bounds_the_node_cache_of_a_database(tmp_path: object) -> None:
    """``persist.open(cache_bytes=...)``: reads and folds keep the cache's
    estimated memory within the bound; reads stay right past it."""
    import persist

    with persist.open(
        str(tmp_path) + "/c.db",  # type: ignore[operator]
        "pw",
        kdf=KdfParams.weak_for_tests(),
        allow_weak_kdf=True,
        freshness=False,
        cache_bytes=200_000,
    ) as db:
        t = db.table("t")
        with db.atomic():
            t.update({i: "v" * 100 for i in range(20_000)})  # past the root log: the trees
        db.commit_wait()
        assert sum(1 for _ in t.items()) == 20_000 and t[4321] == "v" * 100
        cache = db._trees.cache
        assert 0 < cache.bytes <= 200_000 and len(cache) < 200


def test_a_large_fold_into_a_tree_is_a_chain_of_batches_committed_as_one(
    tmp_path: object,
) -> None:
    """A wave far larger than ``_FOLD_CHUNK`` keys into an existing tree is applied
    as a chain of batches: the same content, verified counts (shared blobs whose
    count changes in several batches of the chain, freed ones, recounted ones),
    and the same after reopening."""
    import random

    import persist
    from persist.db import treestore

    assert treestore._FOLD_CHUNK * 2 < 12_000
    calls: list[int] = []
    real = treestore.apply_batch

    def counting(*a: object, **k: object) -> object:
        calls.append(1)
        return real(*a, **k)  # type: ignore[arg-type]

    rng = random.Random(11)
    blobs = [bytes([65 + i]) * 400 for i in range(4)]  # shared by keys all over the range
    model = {i: (blobs[i % 4] if i % 3 == 0 else f"v{i}".encode()) for i in range(20_000)}
    opts = {"kdf": KdfParams.weak_for_tests(), "allow_weak_kdf": True, "freshness": False}
    location = str(tmp_path) + "/big.db"  # type: ignore[operator]
    with persist.open(location, "pw", **opts) as db:  # type: ignore[arg-type]
        t = db.table("t")
        with db.atomic():
            t.update(model)
        db.commit_wait()
        treestore.apply_batch = counting  # type: ignore[assignment]
        try:
            with db.atomic():
                for i in rng.sample(range(20_000), 12_000):
                    choice = rng.randrange(4)
                    if choice == 0:
                        del t[i]
                        del model[i]
                    elif choice == 1:  # a blob moves to other keys, or is freed
                        t[i] = model[i] = blobs[rng.randrange(2)]
                    else:
                        t[i] = model[i] = b"small %d" % i
                for i in range(20_000, 21_000):  # new keys past the end
                    t[i] = model[i] = blobs[3]
            db.commit_wait()
        finally:
            treestore.apply_batch = real  # type: ignore[assignment]
        assert len(calls) >= 3  # the chain (plus the count tree's batch)
        assert dict(t.items()) == model
        assert db.verify() == []
    with persist.open(location, "pw", read_only=True, **opts) as db:  # type: ignore[arg-type]
        assert dict(db.table("t").items()) == model and db.verify() == []
