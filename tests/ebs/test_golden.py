"""The golden v1 store: every later version must open it and read the same contents.

``golden_v1.json`` holds the raw rows of a store built by :func:`build` with fixed
randomness and clock.  Regenerate it only for a new format version, never to make
this test pass:  ``.venv/bin/python -m tests.ebs.test_golden``.
"""

from __future__ import annotations

import json
from pathlib import Path

from persist.ebs import EncryptedStore
from persist.kvs.base import Store
from persist.kvs.memory import MemoryStore

from .conftest import WEAK, restore, seeded, snapshot

GOLDEN = Path(__file__).with_name("golden_v1.json")
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
        random=seeded(2024),
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


def _check(ebs: EncryptedStore) -> None:
    table = ebs.table(b"tree:golden")
    assert ebs.root.count == 2 and ebs.root.timestamp == 1_700_000_002.0
    assert ebs.root.catalog == {"tree:golden": table.node_id(NODES[0])}
    assert [table.read_node(table.node_id(n)) for n in NODES] == NODES
    assert {k: table.read_row(k) for k in ROWS} == ROWS | {b"refcount:1": b"\x03"}
    assert ebs.verify_rows({table: [table.node_id(n) for n in NODES]}) == []


def _golden_rows() -> dict[bytes, bytes]:
    data = json.loads(GOLDEN.read_text())
    return {bytes.fromhex(k): bytes.fromhex(v) for k, v in data["rows"].items()}


def test_the_golden_v1_store_opens_with_passphrase_and_key() -> None:
    store = MemoryStore()
    restore(store, _golden_rows())
    _check(EncryptedStore.open(store, PASSPHRASE, allow_weak_kdf=True, freshness=False))
    _check(EncryptedStore.open(store, key=RAW_KEY, freshness=False))


def test_this_version_still_writes_format_v1_byte_for_byte() -> None:
    """Fixed randomness and clock make the store deterministic; a diff is a format change."""
    store = MemoryStore()
    build(store)
    assert snapshot(store) == _golden_rows()


if __name__ == "__main__":
    fresh = MemoryStore()
    build(fresh)
    rows = {k.hex(): v.hex() for k, v in sorted(snapshot(fresh).items())}
    GOLDEN.write_text(json.dumps({"format": 1, "rows": rows}, indent=0) + "\n")
