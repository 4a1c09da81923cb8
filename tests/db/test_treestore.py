"""The trees on the encrypted store: the btree checker over the real node store."""

from __future__ import annotations

import os

from persist.btree import ProblemKind, check_tree
from persist.btree.node import encode_leaf
from persist.db.treestore import EbsNodeStore, LogLimits, TreeWaveStore, descriptor
from persist.ebs import EncryptedStore, KdfParams
from persist.kvs import MemoryStore


def test_checker_over_the_encrypted_node_store() -> None:
    ebs = EncryptedStore.create(
        MemoryStore(), "pw", kdf=KdfParams.weak_for_tests(), allow_weak_kdf=True, freshness=False
    )
    trees = TreeWaveStore(ebs, log_limits=LogLimits(0, 0))  # every wave into the trees
    shared = b"S" * 300  # a blob referenced by many keys: count rows above 1
    trees.commit_wave(1, {"t": {os.urandom(8): (shared if i % 2 else b"v") for i in range(500)}})
    trees.commit_wave(
        2, {"t": {k: None for k, _ in list(trees.scan("t", None, None, False))[:100]}}
    )
    store = EbsNodeStore(ebs.table(descriptor("t")))
    tree = trees.tree("t")
    assert tree is not None
    objects = dict(store.iter_objects())
    assert len(objects) > 10 and max(objects.values()) > 1
    assert check_tree(store, {"t": tree.root}) == []
    # an extra, validly encrypted node that no root names is an orphan
    leaf = encode_leaf([b"orphan"], [b"x"])
    nid = store.node_id(leaf)
    batch = ebs.batch()
    batch.put_node(store.table, nid, leaf)
    ebs.commit(batch, ebs.root.catalog)
    problems = check_tree(store, {"t": tree.root})
    assert [(p.kind, p.node) for p in problems] == [(ProblemKind.ORPHAN, nid.hex())]
