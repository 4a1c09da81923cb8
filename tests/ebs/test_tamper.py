"""A host that alters rows: every change raises IntegrityError or is reported, never wrong data.

The golden store holds every row kind (keyslot, both root slots, small and
chunked nodes, small and chunked rows, in two tables).  Opening uses a raw key
(fast) and a freshness record, as a careful deployment would.  Here the test
names the reachable nodes and rows, as the tree layer does from the root
(format v2); replays of whole rows the layer above names are judged there
(tests/db/test_tampering.py).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from persist.ebs import EncryptedStore, FreshnessRecord, Table
from persist.ebs.keyslot import keyslot_key
from persist.ebs.layout import CHUNK_SIZE, RowKind
from persist.ebs.rows import open_envelope, seal_envelope
from persist.ebs.verify import check_store
from persist.errors import IntegrityError, RollbackDetected
from persist.kvs.memory import MemoryStore

from .conftest import restore, snapshot

KEY = bytes(range(100, 132))
_STATE = Path(tempfile.mkdtemp(prefix="persist-ebs-tamper-"))

_GOLDEN = MemoryStore()
_EBS = EncryptedStore.create(_GOLDEN, key=KEY, freshness=False)
A, B = _EBS.table(b"tree:a"), _EBS.table(b"tree:b")
NODES = {
    b"tree:a": [b"small node", os.urandom(2 * CHUNK_SIZE + 5)],
    b"tree:b": [b"node of b"],
}
ROWS = {
    b"tree:a": {b"shared": b"a's value", b"big": os.urandom(CHUNK_SIZE + 1), b"x": b"1"},
    b"tree:b": {b"shared": b"b's value"},
}
for _round in range(2):  # two commits: both root slots hold a root
    _batch = _EBS.batch()
    for _desc, _nodes in NODES.items():
        for _node in _nodes:
            _batch.put_node(_EBS.table(_desc), _EBS.table(_desc).node_id(_node), _node)
    for _desc, _rows in ROWS.items():
        for _key, _value in _rows.items():
            _batch.put_row(_EBS.table(_desc), _key, _value)
    _EBS.commit(_batch, {"tree:a": b"root a", "tree:b": b"root b"})
GOLDEN = snapshot(_GOLDEN)
RECORD = FreshnessRecord.of(_EBS.root)
ADDRESSES = sorted(GOLDEN)


def _address_of(kind: str) -> list[bytes]:
    ring = _EBS.keyring
    if kind == "keyslot":
        return [keyslot_key(0)]
    if kind == "root":
        return [ring.root_slot_key(0), ring.root_slot_key(1)]
    if kind == "node":
        return [t.node_id(n) for d, ns in NODES.items() for t in [_EBS.table(d)] for n in ns]
    if kind == "row":
        return [t.row_key(k) for d, rs in ROWS.items() for t in [_EBS.table(d)] for k in rs]
    named = {a for k in ("keyslot", "root", "node", "row") for a in _address_of(k)}
    return [a for a in ADDRESSES if a not in named]  # the chunks


KINDS = ["keyslot", "root", "node", "row", "chunk"]
assert all(_address_of(k) for k in KINDS)


def _open(rows: dict[bytes, bytes]) -> EncryptedStore:
    store = MemoryStore()
    restore(store, rows)
    path = Path(tempfile.mkstemp(dir=_STATE)[1])
    RECORD.save(path)
    return EncryptedStore.open(store, key=KEY, freshness=path)


def _read_all(ebs: EncryptedStore) -> tuple[int, int]:
    """Read every node and row: ``(IntegrityErrors, rows read back different)``.

    Nodes never come back different.  A mutable row deleted or rolled back to
    an older genuine ciphertext reads as absent or old (docs/security.md);
    that case must then be reported by verify.
    """
    errors = stale = 0
    for desc, nodes in NODES.items():
        table = ebs.table(desc)
        for node in nodes:
            try:
                assert table.read_node(table.node_id(node)) == node
            except IntegrityError:
                errors += 1
    for desc, rows in ROWS.items():
        table = ebs.table(desc)
        for key, value in rows.items():
            try:
                stale += table.read_row(key) != value
            except IntegrityError:
                errors += 1
    return errors, stale


def _reachable(ebs: EncryptedStore) -> dict[Table, list[bytes]]:
    return {ebs.table(d): [ebs.table(d).node_id(n) for n in ns] for d, ns in NODES.items()}


def _named_rows(ebs: EncryptedStore) -> dict[Table, list[bytes]]:
    return {ebs.table(d): list(rs) for d, rs in ROWS.items()}


def _verify(ebs: EncryptedStore) -> list[object]:
    return list(check_store(ebs, _reachable(ebs), _named_rows(ebs)))


def _assert_detected(rows: dict[bytes, bytes]) -> None:
    try:
        ebs = _open(rows)
    except IntegrityError:
        return
    errors, stale = _read_all(ebs)
    problems = _verify(ebs)
    assert errors or problems
    assert not stale or problems


def test_the_golden_store_is_intact() -> None:
    ebs = _open(GOLDEN)
    assert _read_all(ebs) == (0, 0)
    assert _verify(ebs) == []


@settings(max_examples=80)
@given(st.sampled_from(KINDS), st.data())
def test_a_bit_flip_in_any_byte_of_any_row_kind(kind: str, data: st.DataObject) -> None:
    address = data.draw(st.sampled_from(_address_of(kind)))
    stored = bytearray(GOLDEN[address])
    stored[data.draw(st.integers(0, len(stored) - 1))] ^= 1 << data.draw(st.integers(0, 7))
    _assert_detected(GOLDEN | {address: bytes(stored)})


@settings(max_examples=60)
@given(st.sampled_from(KINDS), st.data())
def test_truncation_and_extension_of_any_row_kind(kind: str, data: st.DataObject) -> None:
    address = data.draw(st.sampled_from(_address_of(kind)))
    stored = GOLDEN[address]
    if data.draw(st.booleans()):
        changed = stored[: data.draw(st.integers(0, len(stored) - 1))]
    else:
        changed = stored + data.draw(st.binary(min_size=1, max_size=64))
    _assert_detected(GOLDEN | {address: changed})


@settings(max_examples=40)
@given(st.sampled_from(KINDS))
def test_deleting_any_row(kind: str) -> None:
    for address in _address_of(kind):
        _assert_detected({k: v for k, v in GOLDEN.items() if k != address})


def test_flipping_the_current_root_is_a_detected_rollback() -> None:
    current = _EBS.keyring.root_slot_key(_EBS.root.count % 2)
    stored = bytearray(GOLDEN[current])
    stored[40] ^= 1
    with pytest.raises(RollbackDetected):
        _open(GOLDEN | {current: bytes(stored)})


def test_swapping_two_rows_of_a_table() -> None:
    x, shared = A.row_key(b"x"), A.row_key(b"shared")
    ebs = _open(GOLDEN | {x: GOLDEN[shared], shared: GOLDEN[x]})
    for key in (b"x", b"shared"):
        with pytest.raises(IntegrityError, match=r"row \w+ failed authentication"):
            ebs.table(b"tree:a").read_row(key)


def test_swapping_two_nodes_of_a_table() -> None:
    small = A.node_id(NODES[b"tree:a"][0])
    other = A.node_id(b"never written")
    ebs = _open(GOLDEN | {other: GOLDEN[small]})
    with pytest.raises(IntegrityError, match=r"node row \w+ failed authentication"):
        ebs.table(b"tree:a").read_node(other)
    chunks = _address_of("chunk")
    ebs = _open(GOLDEN | {chunks[0]: GOLDEN[chunks[1]], chunks[1]: GOLDEN[chunks[0]]})
    assert _read_all(ebs)[0] >= 1


def test_the_envelope_binds_kind_table_and_address() -> None:
    """Each of the three is bound by the AEAD itself, not only by the parse after it."""
    keys = _EBS.keyring.table(b"tree:a")
    address = bytes(range(32))
    sealed = seal_envelope(keys.cipher, RowKind.NODE, keys.id, address, b"plaintext", os.urandom)
    assert open_envelope(keys.cipher, RowKind.NODE, keys.id, address, sealed) == b"plaintext"
    for kind, table, where in [
        (RowKind.ROW, keys.id, address),
        (RowKind.CHUNK, keys.id, address),
        (RowKind.NODE, B.id, address),
        (RowKind.NODE, keys.id, address[::-1]),
    ]:
        with pytest.raises(IntegrityError):
            open_envelope(keys.cipher, kind, table, where, sealed)


def test_moving_a_row_to_the_same_key_of_another_table() -> None:
    ebs = _open(GOLDEN | {B.row_key(b"shared"): GOLDEN[A.row_key(b"shared")]})
    with pytest.raises(IntegrityError):
        ebs.table(b"tree:b").read_row(b"shared")


def test_moving_a_node_to_another_table() -> None:
    node = NODES[b"tree:a"][0]
    forged = B.node_id(node)
    ebs = _open(GOLDEN | {forged: GOLDEN[A.node_id(node)]})
    with pytest.raises(IntegrityError):
        ebs.table(b"tree:b").read_node(forged)


@pytest.mark.parametrize(
    ("source", "target"),
    [("node", "row"), ("row", "node"), ("chunk", "node"), ("chunk", "row"), ("root", "node"),
     ("node", "root"), ("row", "root")],
)  # fmt: skip
def test_kind_confusion(source: str, target: str) -> None:
    src, dst = _address_of(source)[0], _address_of(target)[0]
    _assert_detected(GOLDEN | {dst: GOLDEN[src]})


def test_replaying_an_older_chunk_of_a_rewritten_row() -> None:
    store = MemoryStore()
    restore(store, GOLDEN)
    ebs = EncryptedStore.open(store, key=KEY, freshness=False)
    table = ebs.table(b"tree:a")
    chunk = ebs.keyring.table(b"tree:a").chunk_key(table.row_key(b"big"), 0)
    old = store.get(chunk) or b""
    batch = ebs.batch()
    batch.put_row(table, b"big", os.urandom(CHUNK_SIZE + 1))
    ebs.commit(batch, {})
    assert store.get(chunk) not in (None, old)
    store.write({chunk: old})
    with pytest.raises(IntegrityError, match="failed authentication"):
        table.read_row(b"big")


def test_deleting_a_named_row_is_reported_by_verify() -> None:
    store = MemoryStore()
    restore(store, GOLDEN)
    ebs = EncryptedStore.open(store, key=KEY, freshness=False)
    store.write((), [A.row_key(b"x")])
    assert ebs.table(b"tree:a").read_row(b"x") is None
    assert [(p.kind, p.description) for p in _verify(ebs)] == [("row", "missing")]


def test_a_row_nothing_names_is_an_orphan() -> None:
    ebs = _open(GOLDEN)
    problems = check_store(ebs, _reachable(ebs))  # the rows unnamed
    assert {p.kind for p in problems} == {"orphan"}
    assert len(problems) == sum(map(len, ROWS.values()))
