"""Nodes and mutable rows: round trips on every backend, chunking, batches, size classes."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from persist.ebs import EncryptedStore, RowKind, Table
from persist.ebs.keys import KeyRing
from persist.ebs.keyslot import keyslot_key
from persist.ebs.layout import CHUNK_SIZE, padded_size
from persist.ebs.rows import chunk_count, may_be_chunked, seal
from persist.ebs.verify import check_store
from persist.ebs.xaes import NONCE_SIZE, OVERHEAD, XAES256GCM
from persist.errors import ClosedError, IntegrityError, ReadOnlyError
from persist.kvs import open_store
from persist.kvs.base import Store
from persist.kvs.memory import MemoryStore

from .conftest import create, reopen, snapshot

SIZES = [0, 1, 100, 4096, CHUNK_SIZE - 13, CHUNK_SIZE - 12, CHUNK_SIZE, 3 * CHUNK_SIZE + 7]


def _put(ebs: EncryptedStore, table: Table, nodes: list[bytes], rows: dict[bytes, bytes]) -> None:
    batch = ebs.batch()
    for node in nodes:
        batch.put_node(table, table.node_id(node), node)
    for key, value in rows.items():
        batch.put_row(table, key, value)
    ebs.commit(batch, {table.descriptor.decode(): b"payload"})


def test_round_trip_of_every_size_on_every_backend(kvs: Store) -> None:
    ebs = create(kvs)
    table = ebs.table(b"tree:data")
    values = [os.urandom(n) for n in SIZES]
    rows = {b"row-%d" % n: v for n, v in zip(SIZES, values, strict=True)}
    _put(ebs, table, values, rows)
    again = reopen(kvs).table(b"tree:data")
    for value in values:
        assert again.read_node(again.node_id(value)) == value
    for key, value in rows.items():
        assert again.read_row(key) == value
    assert again.read_row(b"absent") is None
    assert reopen(kvs).root.catalog == {"tree:data": b"payload"}
    assert (
        check_store(reopen(kvs), {again: [again.node_id(v) for v in values]}, {again: rows}) == []
    )


def test_values_above_the_chunk_size_are_split(mem: Store) -> None:
    ebs = create(mem)
    table = ebs.table(b"tree:big")
    before = len(snapshot(mem))
    value = os.urandom(2 * CHUNK_SIZE + 1)
    _put(ebs, table, [value], {})
    # head + 3 chunks + the new root slot
    assert len(snapshot(mem)) == before + 1 + 3 + 1
    assert chunk_count(0, len(value)) == 3
    assert chunk_count(0, CHUNK_SIZE - 13) == 0 and chunk_count(0, CHUNK_SIZE - 12) == 1


def test_deleting_a_chunked_node_with_and_without_size(mem: Store) -> None:
    ebs = create(mem)
    table = ebs.table(b"tree:big")
    small, big1, big2 = b"small", os.urandom(CHUNK_SIZE * 2), os.urandom(CHUNK_SIZE * 3)
    empty = len(snapshot(mem)) + 1  # the second root slot appears with the first commit
    _put(ebs, table, [small, big1, big2], {})
    batch = ebs.batch()
    batch.delete_node(table, table.node_id(big1), size=len(big1))
    batch.delete_node(table, table.node_id(big2))  # the commit reads the head instead
    batch.delete_node(table, table.node_id(small))
    ebs.commit(batch, {})
    assert len(snapshot(mem)) == empty
    assert check_store(ebs) == []


def test_overwriting_a_chunked_row_with_a_small_one_removes_its_chunks(mem: Store) -> None:
    ebs = create(mem)
    table = ebs.table(b"meta")
    _put(ebs, table, [], {b"k": os.urandom(3 * CHUNK_SIZE)})
    _put(ebs, table, [], {b"k": b"small"})
    assert table.read_row(b"k") == b"small"
    assert check_store(ebs, rows={table: [b"k"]}) == []
    batch = ebs.batch()
    batch.delete_row(table, b"k")
    batch.delete_row(table, b"never existed")
    ebs.commit(batch, {})
    assert table.read_row(b"k") is None
    assert check_store(ebs) == []
    assert ebs.root.coverage == {}


@pytest.mark.parametrize("chunks", [2, 3, 4])
def test_rewriting_a_chunked_row_reuses_its_chunk_keys(kvs: Store, chunks: int) -> None:
    """The new chunks of a rewritten row take its old chunks' keys: the commit
    must not also delete them (a key both put and deleted is refused by the kvs),
    and a chunk the new value no longer needs must go."""
    ebs = create(kvs)
    table = ebs.table(b"meta")
    _put(ebs, table, [], {b"k": os.urandom(3 * CHUNK_SIZE)})
    rows_before = len(snapshot(kvs))
    value = os.urandom(chunks * CHUNK_SIZE - 100)
    _put(ebs, table, [], {b"k": value})
    assert reopen(kvs).table(b"meta").read_row(b"k") == value
    assert len(snapshot(kvs)) == rows_before + chunk_count(1, len(value)) - 3
    assert check_store(reopen(kvs), rows={table: [b"k"]}) == []


def test_the_same_value_encrypts_differently_every_time(mem: Store) -> None:
    ebs = create(mem)
    table = ebs.table(b"meta")
    seen = set()
    for _ in range(3):
        _put(ebs, table, [], {b"k": b"same value"})
        seen.add(mem.get(table.row_key(b"k")))
    assert len(seen) == 3
    other = MemoryStore()
    create(other)
    # only the keyslot's address is fixed; every other address depends on the key
    assert snapshot(other).keys() & snapshot(mem).keys() == {keyslot_key(0)}


@settings(max_examples=40)
@given(st.integers(0, 70_000))
def test_the_host_sees_only_size_classes(n: int) -> None:
    store = MemoryStore()
    ebs = create(store, _random=os.urandom)
    table = ebs.table(b"tree:t")
    value = bytes(n)
    _put(ebs, table, [value], {})
    head = store.get(table.node_id(value)) or b""
    if chunk_count(0, n):
        assert len(head) == NONCE_SIZE + padded_size(13 + 36) + OVERHEAD
    else:
        assert len(head) == NONCE_SIZE + padded_size(13 + n) + OVERHEAD


def test_each_plaintext_is_encrypted_once_per_commit(
    mem: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    ebs = create(mem)
    table = ebs.table(b"tree:t")
    calls: list[bytes] = []
    original = XAES256GCM.encrypt

    def counting(self: XAES256GCM, nonce: bytes, data: bytes, ad: bytes | None) -> bytes:
        calls.append(data)
        return original(self, nonce, data, ad)

    monkeypatch.setattr(XAES256GCM, "encrypt", counting)
    batch = ebs.batch()
    for i in range(5):
        batch.put_row(table, b"k", b"version %d" % i)  # the last one wins
    batch.put_node(table, table.node_id(b"n"), b"n")
    batch.put_node(table, table.node_id(b"n"), b"n")
    ebs.commit(batch, {})
    assert len(calls) == 3  # one row, one node, one root
    assert table.read_row(b"k") == b"version 4"


def test_batch_misuse_raises_builtins(mem: Store) -> None:
    ebs = create(mem)
    table = ebs.table(b"tree:t")
    batch = ebs.batch()
    with pytest.raises(ValueError, match="content address"):
        batch.put_node(table, table.node_id(b"a"), b"b")
    with pytest.raises(ValueError):
        batch.put_node(table, b"short", b"b")
    with pytest.raises(TypeError):
        batch.put_row(table, "str key", b"v")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ebs.commit(batch, {"t": "not bytes"})  # type: ignore[dict-item]
    ebs.commit(batch, {})
    with pytest.raises(ValueError, match="already committed"):
        ebs.commit(batch, {})
    other = create(MemoryStore())
    with pytest.raises(ValueError, match="another store"):
        other.batch().put_row(table, b"k", b"v")


def test_a_node_read_checks_presence(mem: Store) -> None:
    ebs = create(mem)
    table = ebs.table(b"tree:t")
    with pytest.raises(IntegrityError, match="missing"):
        table.read_node(table.node_id(b"never written"))


def test_tables_are_cached_and_ids_are_descriptor_hashes(mem: Store) -> None:
    ebs = create(mem)
    assert ebs.table(b"tree:a") is ebs.table("tree:a")
    assert ebs.table(b"tree:a").id != ebs.table(b"tree:b").id
    assert ebs.table(b"tree:a").id == create(MemoryStore()).table(b"tree:a").id
    assert ebs.table(b"tree:a").node_id(b"x") != ebs.table(b"tree:b").node_id(b"x")
    assert ebs.table(b"tree:a").row_key(b"x") != ebs.table(b"tree:b").row_key(b"x")


def test_root_records_count_and_chain(mem: Store) -> None:
    clock = iter([1000.0, 1001.5, 1002.25])
    ebs = create(mem, clock=lambda: next(clock))
    first = ebs.root
    assert (first.count, first.timestamp, first.prev_digest) == (0, 1000.0, bytes(32))
    second = ebs.commit(ebs.batch(), {"x": b"1"})
    assert (second.count, second.timestamp, second.prev_digest) == (1, 1001.5, first.digest)
    assert ebs.root is second and second.catalog == {"x": b"1"}
    assert reopen(mem).root == second


def test_closed_and_read_only_stores(tmp_path: object, mem: Store) -> None:
    ebs = create(mem)
    table = ebs.table(b"t")
    ebs.close()
    with pytest.raises(ClosedError):
        table.read_row(b"k")
    with pytest.raises(ClosedError):
        ebs.batch()
    named = MemoryStore("ro-test")
    create(named)
    ro = MemoryStore("ro-test", read_only=True)
    reader = reopen(ro)
    with pytest.raises(ReadOnlyError):
        reader.commit(reader.batch(), {})
    named.close()


def test_row_kinds_are_distinct() -> None:
    assert len({k.value for k in RowKind}) == len(RowKind)


@settings(max_examples=60)
@given(st.integers(0, 1024), st.integers(0, 3 * CHUNK_SIZE))
def test_the_commit_shortcut_never_misses_a_chunked_head(key_len: int, value_len: int) -> None:
    keys = KeyRing(bytes(32)).table(b"t")
    rows = seal(keys, RowKind.ROW, bytes(32), bytes(key_len), bytes(value_len), os.urandom)
    # a false positive only costs a decryption; a false negative would leak chunks
    if len(rows) > 1:
        assert may_be_chunked(len(rows[0][1]), key_len)


def test_a_commit_seals_its_nodes_as_the_store_takes_them(tmp_path: Path) -> None:
    """The new nodes of a commit are sealed while the kvs consumes its batch,
    not all beforehand: a fold writing thousands of nodes would otherwise hold
    each of them twice at its peak, as plaintext and as a sealed row."""
    kvs = open_store(str(tmp_path / "store.db"))  # SQLite streams a batch into its transaction
    try:
        ebs = create(kvs)
        table = ebs.table(b"tree:data")
        nodes = [os.urandom(4000) for _ in range(1000)]  # 4 MB of plaintext
        batch = ebs.batch()
        for node in nodes:
            batch.put_node(table, table.node_id(node), node)
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            ebs.commit(batch, {"tree:data": b"payload"})
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak - before < 1_000_000  # sealed all at once: over 4 MB
        again = reopen(kvs).table(b"tree:data")
        assert all(again.read_node(again.node_id(node)) == node for node in nodes)
    finally:
        kvs.close()
