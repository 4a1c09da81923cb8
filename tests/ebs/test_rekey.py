"""Master-key rotation: rows, a toy tree through the rekeyer hook, crashes at every write."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from persist.ebs import EncryptedStore, RekeyTarget, Table
from persist.ebs.keyslot import keyslot_key
from persist.ebs.layout import CHUNK_SIZE
from persist.ebs.rekey import abort_rekey, rekey, resume_rekey
from persist.ebs.verify import check_store
from persist.errors import (
    ClosedError,
    CommitFailed,
    PersistError,
    RotationUnfinished,
    StoreIOError,
    WrongPassphrase,
)
from persist.kvs.base import Store
from persist.kvs.memory import MemoryStore

from .conftest import WEAK, FailingStore, create, reopen, seeded, snapshot

NEW = "the new passphrase"
BIG = bytes(range(256)) * (CHUNK_SIZE // 128)
ROWS = {b"a": b"1", b"b": b"2", b"big": BIG}


def _leaf(data: bytes) -> bytes:
    return b"L" + data


def _inner(children: list[bytes]) -> bytes:
    return b"I" + b"".join(children)


class ToyRekeyer:
    """A stand-in for the tree layer: nodes name children by id; counts are rows keyed by id."""

    def __init__(self, drop_rows: bool = False) -> None:
        self.drop_rows = drop_rows

    def handles(self, descriptor: bytes) -> bool:
        return descriptor.startswith(b"tree:")

    def rekey_tables(
        self,
        catalog: Mapping[str, bytes],
        old: Callable[[bytes], Table],
        new: Callable[[bytes], RekeyTarget],
    ) -> dict[str, bytes]:
        out = {}
        for name, payload in catalog.items():
            if name.startswith("tree:"):
                desc = name.encode()
                out[name] = self.rekey_table(payload, old(desc), new(desc))
        return out

    def rekey_table(self, payload: bytes, old: Table, new: RekeyTarget) -> bytes:
        done: dict[bytes, bytes] = {}

        def copy(nid: bytes) -> bytes:
            if nid not in done:
                node = old.read_node(nid)
                if node[:1] == b"I":
                    kids = [node[i : i + 32] for i in range(1, len(node), 32)]
                    node = _inner([copy(k) for k in kids])
                new_id = new.node_id(node)
                new.put_node(new_id, node)
                count = old.read_row(nid)
                if count is not None and not self.drop_rows:
                    new.put_row(new_id, count)
                done[nid] = new_id
            return done[nid]

        return copy(payload)


def _build(kvs: Store, with_tree: bool = True, **kw: Any) -> EncryptedStore:
    ebs = create(kvs, _random=seeded(7), **kw)
    meta, tree = ebs.table(b"meta"), ebs.table(b"tree:t")
    batch = ebs.batch()
    for key, value in ROWS.items():
        batch.put_row(meta, key, value)
    catalog = {"meta": b"opaque"}
    if with_tree:
        leaves = [_leaf(b"x"), _leaf(b"y"), _leaf(BIG)]
        ids = [tree.node_id(n) for n in leaves]
        root = _inner([ids[0], ids[1], ids[2], ids[0]])  # x is shared: count 2
        for node in [*leaves, root]:
            batch.put_node(tree, tree.node_id(node), node)
        batch.put_row(tree, ids[0], b"\x02")
        catalog["tree:t"] = tree.node_id(root)
    ebs.commit(batch, catalog)
    return ebs


def _tree_leaves(ebs: EncryptedStore) -> list[bytes]:
    tree = ebs.table(b"tree:t")
    root = tree.read_node(ebs.root.catalog["tree:t"])
    return [tree.read_node(root[i : i + 32]) for i in range(1, len(root), 32)]


def _reachable(ebs: EncryptedStore) -> dict[Table, list[bytes]]:
    tree = ebs.table(b"tree:t")
    root_id = ebs.root.catalog["tree:t"]
    root = tree.read_node(root_id)
    return {tree: [root_id, *(root[i : i + 32] for i in range(1, len(root), 32))]}


def _rows(ebs: EncryptedStore, with_tree: bool = True) -> dict[Table, list[bytes]]:
    meta = ebs.table(b"meta")
    rows = {meta: [k for k in [*ROWS, b"late"] if meta.read_row(k) is not None]}
    if with_tree:
        tree = ebs.table(b"tree:t")
        rows[tree] = [tree.node_id(_leaf(b"x"))]
    return rows


def _assert_intact(ebs: EncryptedStore, with_tree: bool = True, mid_rotation: bool = False) -> None:
    meta = ebs.table(b"meta")
    assert {k: meta.read_row(k) for k in ROWS} == ROWS
    assert ebs.root.catalog["meta"] == b"opaque"
    if with_tree:
        assert _tree_leaves(ebs) == [_leaf(b"x"), _leaf(b"y"), _leaf(BIG), _leaf(b"x")]
        tree = ebs.table(b"tree:t")
        assert tree.read_row(tree.node_id(_leaf(b"x"))) == b"\x02"
        problems = check_store(ebs, _reachable(ebs), _rows(ebs))
        if mid_rotation:  # the journal and the partial new copy, nothing else
            assert {p.kind for p in problems} <= {"journal", "orphan"}
            assert "journal" in {p.kind for p in problems}
        else:
            assert problems == []
    else:
        assert check_store(ebs, rows=_rows(ebs, with_tree=False)) == []


def test_rekey_of_mutable_rows(kvs: Store, fresh_path: Path) -> None:
    ebs = _build(kvs, with_tree=False, freshness=fresh_path)
    old_table = ebs.table(b"meta")
    before, count, digest = snapshot(kvs), ebs.root.count, ebs.root.digest
    root = rekey(ebs, NEW, kdf=WEAK, allow_weak_kdf=True)
    assert (root.count, root.prev_digest, root.key_epoch) == (count + 1, digest, 1)
    after = snapshot(kvs)
    assert before.keys() & after.keys() == {keyslot_key(0)}  # every row moved
    assert len(after) == len(before)
    with pytest.raises(ClosedError, match="rotation"):
        old_table.read_row(b"a")
    _assert_intact(ebs, with_tree=False)
    with pytest.raises(WrongPassphrase):
        reopen(kvs)
    again = reopen(kvs, NEW, freshness=fresh_path)
    assert again.root == root and again.rekey_phase is None
    _assert_intact(again, with_tree=False)


def test_rekey_refuses_to_lose_nodes(mem: Store) -> None:
    ebs = _build(mem)
    before = snapshot(mem)
    with pytest.raises(ValueError, match="rekeyer"):
        rekey(ebs, NEW, kdf=WEAK, allow_weak_kdf=True)
    assert snapshot(mem) == before
    _assert_intact(ebs)


def test_rekey_with_the_tree_hook(mem: Store) -> None:
    ebs = _build(mem)
    old_root_id = ebs.root.catalog["tree:t"]
    rows_before = len(snapshot(mem))
    rekey(ebs, NEW, kdf=WEAK, allow_weak_kdf=True, rekeyer=ToyRekeyer())
    assert ebs.root.catalog["tree:t"] != old_root_id
    assert len(snapshot(mem)) == rows_before
    _assert_intact(ebs)
    _assert_intact(reopen(mem, NEW))


def test_a_rekeyer_that_drops_rows_is_refused_before_the_switch(mem: Store) -> None:
    ebs = _build(mem)
    before = snapshot(mem)
    with pytest.raises(PersistError, match="copied 0 of 1 rows"):
        rekey(ebs, NEW, kdf=WEAK, allow_weak_kdf=True, rekeyer=ToyRekeyer(drop_rows=True))
    assert ebs.rekey_phase == "copy"
    abort_rekey(ebs)
    assert snapshot(mem) == before
    _assert_intact(reopen(mem))


def _count_writes() -> int:
    probe = FailingStore(MemoryStore(), fail_at=10**9)
    rekey(_build(probe), NEW, kdf=WEAK, allow_weak_kdf=True, rekeyer=ToyRekeyer())
    return probe.writes - 2  # minus create and the first commit


TOTAL = _count_writes()
ROWS_OF_A_BUILT_STORE = len(snapshot(_build(MemoryStore()).kvs))


@pytest.mark.parametrize("crash_at", range(1, TOTAL + 1))
def test_a_crash_at_any_write_of_a_rekey_is_recoverable(crash_at: int) -> None:
    inner = MemoryStore()
    faulty = FailingStore(inner, fail_at=10**9)
    ebs = _build(faulty)
    faulty.fail_at = faulty.writes + crash_at
    with pytest.raises(StoreIOError):
        rekey(ebs, NEW, kdf=WEAK, allow_weak_kdf=True, rekeyer=ToyRekeyer())
    with pytest.raises(CommitFailed):
        ebs.commit(ebs.batch(), {})
    try:
        survivor = reopen(inner, NEW)
        assert survivor.rekey_phase in ("cleanup", None)
    except WrongPassphrase:
        survivor = reopen(inner)
        assert survivor.rekey_phase in ("copy", None)
    if survivor.rekey_phase != "cleanup":  # the old side is whole until the switch
        _assert_intact(survivor, mid_rotation=survivor.rekey_phase == "copy")
    if survivor.rekey_phase == "copy":  # resuming the copy needs the new passphrase
        with pytest.raises(RotationUnfinished, match="new passphrase"):
            resume_rekey(survivor, ToyRekeyer())
    if survivor.rekey_phase is not None:
        resume_rekey(survivor, ToyRekeyer(), NEW)
    if survivor.root.key_epoch == 0:  # crashed before the journal: rotate again
        rekey(survivor, NEW, kdf=WEAK, allow_weak_kdf=True, rekeyer=ToyRekeyer())
    _assert_intact(survivor)
    final = reopen(inner, NEW)
    assert final.root.key_epoch == 1 and final.rekey_phase is None
    _assert_intact(final)
    assert len(snapshot(inner)) == ROWS_OF_A_BUILT_STORE  # nothing old or half-copied left


def test_commits_during_an_interrupted_copy_survive_the_resume(mem: Store) -> None:
    inner = MemoryStore()
    faulty = FailingStore(inner, fail_at=10**9)
    ebs = _build(faulty)
    faulty.fail_at = faulty.writes + 3  # journal and the first copy batch land
    with pytest.raises(StoreIOError):
        rekey(ebs, NEW, kdf=WEAK, allow_weak_kdf=True, rekeyer=ToyRekeyer())
    survivor = reopen(inner)
    assert survivor.rekey_phase == "copy"
    batch = survivor.batch()
    batch.put_row(survivor.table(b"meta"), b"late", b"written meanwhile")
    batch.delete_row(survivor.table(b"meta"), b"a")
    survivor.commit(batch, dict(survivor.root.catalog))
    resume_rekey(survivor, ToyRekeyer(), NEW)
    final = reopen(inner, NEW)
    meta = final.table(b"meta")
    assert meta.read_row(b"late") == b"written meanwhile" and meta.read_row(b"a") is None
    assert check_store(final, _reachable(final), _rows(final)) == []


def test_abort_without_the_new_passphrase_deletes_the_partial_copy(mem: Store) -> None:
    inner = MemoryStore()
    faulty = FailingStore(inner, fail_at=10**9)
    ebs = _build(faulty)
    before = snapshot(inner)
    faulty.fail_at = faulty.writes + 3  # the journal and the first copy batch land
    with pytest.raises(StoreIOError):
        rekey(ebs, NEW, kdf=WEAK, allow_weak_kdf=True, rekeyer=ToyRekeyer())
    survivor = reopen(inner)
    assert survivor.rekey_phase == "copy" and len(snapshot(inner)) > len(before) + 1
    abort_rekey(survivor)
    assert snapshot(inner) == before
    _assert_intact(reopen(inner))


def test_resume_and_abort_need_a_rotation(mem: Store) -> None:
    ebs = create(mem)
    with pytest.raises(ValueError):
        resume_rekey(ebs, None)
    with pytest.raises(ValueError):
        abort_rekey(ebs)


def test_rekey_to_a_raw_key(mem: Store) -> None:
    ebs = _build(mem, with_tree=False)
    key = os.urandom(32)
    rekey(ebs, key=key)
    _assert_intact(EncryptedStore.open(mem, key=key, freshness=False), with_tree=False)
