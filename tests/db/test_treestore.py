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
