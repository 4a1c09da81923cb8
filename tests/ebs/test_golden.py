"""The golden stores: every later version must open them and read the same contents.

``golden_v1.json`` holds the raw rows of a store that format v1 wrote with
:func:`build` (fixed randomness and clock); ``golden_v2.json`` the same built
by format v2 (its root has no coverage).  Never regenerate one to make a test
pass; a new format version adds a new file:
``.venv/bin/python -m tests.ebs.test_golden`` writes the current version's.
The database-level golden store (trees, count rows, a root log) is in
tests/db/test_upgrade.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from persist.ebs import EncryptedStore
from persist.ebs.verify import check_store
from persist.kvs.base import Store
from persist.kvs.memory import MemoryStore

from .conftest import WEAK, restore, seeded, snapshot

GOLDEN = Path(__file__).with_name("golden_v1.json")
GOLDEN_V2 = Path(__file__).with_name("golden_v2.json")
PASSPHRASE = "golden passphrase"
RAW_KEY = bytes(range(32))
NODES = [b"a small node", bytes(range(256)) * 257]  # the second is chunked (2 chunks)
ROWS = {b"refcount:1": b"\x02", b"meta": b"schema v1", b"blob": bytes(range(7)) * 300}


def build(store: Store) -> EncryptedStore:
    ticks = iter(range(1_700_000_000, 1_700_000_100))
    ebs = EncryptedStore.create(
        store,
        PASSPHRASE,
        kdf=WEAK,
        allow_weak_kdf=True,
        freshness=False,
        clock=lambda: float(next(ticks)),
        _random=seeded(2024),
    )
    ebs.add_keyslot(key=RAW_KEY)
    table = ebs.table(b"tree:golden")
    batch = ebs.batch()
    for node in NODES:
        batch.put_node(table, table.node_id(node), node)
    for key, value in ROWS.items():
        batch.put_row(table, key, value)
    ebs.commit(batch, {"tree:golden": table.node_id(NODES[0])})
    batch = ebs.batch()
    batch.put_row(table, b"refcount:1", b"\x03")
    ebs.commit(batch, {"tree:golden": table.node_id(NODES[0])})
    return ebs


def _check(ebs: EncryptedStore, version: int) -> None:
    table = ebs.table(b"tree:golden")
    assert ebs.root.count == 2 and ebs.root.timestamp == 1_700_000_002.0
    assert ebs.root.version == version
    assert ebs.root.catalog == {"tree:golden": table.node_id(NODES[0])}
    assert [table.read_node(table.node_id(n)) for n in NODES] == NODES
    assert {k: table.read_row(k) for k in ROWS} == ROWS | {b"refcount:1": b"\x03"}
    nodes = {table: [table.node_id(n) for n in NODES]}
    # v1: the rows are covered by the root's digest; v2: the caller names them
    rows = {table: list(ROWS)} if version == 2 else None
    assert check_store(ebs, nodes, rows) == []


def _golden_rows(path: Path = GOLDEN) -> dict[bytes, bytes]:
    data = json.loads(path.read_text())
    return {bytes.fromhex(k): bytes.fromhex(v) for k, v in data["rows"].items()}


@pytest.mark.parametrize("path, version", [(GOLDEN, 1), (GOLDEN_V2, 2)])
def test_the_golden_stores_open_with_passphrase_and_key(path: Path, version: int) -> None:
    store = MemoryStore()
    restore(store, _golden_rows(path))
    _check(EncryptedStore.open(store, PASSPHRASE, allow_weak_kdf=True, freshness=False), version)
    _check(EncryptedStore.open(store, key=RAW_KEY, freshness=False), version)


def test_a_v1_store_takes_no_commit_but_the_upgrade() -> None:
    store = MemoryStore()
    restore(store, _golden_rows(GOLDEN))
    ebs = EncryptedStore.open(store, PASSPHRASE, allow_weak_kdf=True, freshness=False)
    with pytest.raises(ValueError, match="upgraded"):
        ebs.commit(ebs.batch(), dict(ebs.root.catalog))
    assert snapshot(store) == _golden_rows(GOLDEN)


def test_this_version_still_writes_format_v2_byte_for_byte() -> None:
    """Fixed randomness and clock make the store deterministic; a diff is a format change."""
    store = MemoryStore()
    build(store)
    assert snapshot(store) == _golden_rows(GOLDEN_V2)


if __name__ == "__main__":
    fresh = MemoryStore()
    build(fresh)
    rows = {k.hex(): v.hex() for k, v in sorted(snapshot(fresh).items())}
    GOLDEN_V2.write_text(json.dumps({"format": 2, "rows": rows}, indent=0) + "\n")
