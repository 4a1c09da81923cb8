"""Format v1 databases (written by the release before format v2) open and upgrade.

``golden_db_v1.json`` holds the rows of a database that persist f575c24 wrote
(``golden_db_v1_source.py.txt`` is the script, run on that release): tables
of records, 50 keys sharing one large value (a v1 count row of 50), a blob of
its own, a chunked blob, persistent objects, and six small waves still in the
root log (the process exited without closing).  Never regenerate it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import persist
from persist.ebs import EncryptedStore, KdfParams
from persist.kvs import open_store

GOLDEN = Path(__file__).with_name("golden_db_v1.json")
PASSPHRASE = "golden db passphrase"
BIG = bytes(range(256)) * 4


@persist.record(name="golden.Account")
@dataclasses.dataclass
class Account:
    owner: str
    balance: int = 0


class Node(persist.Persistent):
    pass


@pytest.fixture(autouse=True)
def _golden_classes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The golden script defined its object class in ``__main__`` (stored as such)."""
    monkeypatch.setattr(sys.modules["__main__"], "Node", Node, raising=False)


def _rows() -> dict[bytes, bytes]:
    data = json.loads(GOLDEN.read_text())
    return {bytes.fromhex(k): bytes.fromhex(v) for k, v in data["rows"].items()}


def _restore(path: Path) -> str:
    location = str(path / "golden.db")
    with open_store(location) as kvs:
        kvs.write(_rows())
    return location


def _open(location: str, **kw: object) -> persist.Database:
    return persist.open(location, PASSPHRASE, allow_weak_kdf=True, freshness=False, **kw)  # type: ignore[arg-type]


def _check_contents(db: persist.Database) -> None:
    acc = db.table("accounts")
    assert len(acc) == 305
    assert acc["user0007"] == Account("user0007", 7)
    assert acc["late3"] == Account("late3", 1003)
    blobs = db.table("blobs")
    assert len(blobs) == 51 and 0 not in blobs and blobs[49] == BIG
    assert blobs["unique"] == b"u" * 5000 and blobs["huge"] == bytes(range(251)) * 280
    assert db.root["config"] == {"retries": 3, "name": "golden"}
    graph = db.root["graph"]
    assert graph.label == "first" and graph.next.label == "second"


def test_a_v1_database_reads_and_verifies_without_changing(tmp_path: Path) -> None:
    location = _restore(tmp_path)
    before = _rows()
    with _open(location, read_only=True) as db:
        assert db._ebs.version == 1
        _check_contents(db)
        assert db.verify() == []
    with open_store(location, read_only=True) as kvs:
        assert dict(kvs.scan()) == before


def test_the_first_writable_open_upgrades_to_v2(tmp_path: Path) -> None:
    location = _restore(tmp_path)
    with _open(location) as db:
        assert db._ebs.version == 2 and db._ebs.root.coverage == {}
        _check_contents(db)
        assert db.verify() == []
        counts = dict(db._trees._indexes["blobs"].entries())
        assert sorted(counts.values()) == [1, 1, 50]  # the log still holds del blobs[0]
        db.table("blobs")[60] = BIG
        db.table("accounts")["new"] = Account("new")
    with _open(location) as db:  # closed, so folded: the deletion reached the tree
        assert sorted(dict(db._trees._indexes["blobs"].entries()).values()) == [1, 1, 50]
        assert db.table("blobs")[60] == BIG and len(db.table("accounts")) == 306
        assert db.verify() == []
        for k in list(db.table("blobs")):
            del db.table("blobs")[k]
    with _open(location) as db:
        assert len(db.table("blobs")) == 0 and db.verify() == []
        assert "count:blobs" not in db._ebs.root.catalog  # no blob left to count
    with _open(location, read_only=True) as db:
        assert db.verify() == []


_UPGRADE_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    import persist
    from persist.kvs import sqlite as backend

    write, kill_after = int(sys.argv[2]), int(sys.argv[3])
    original = backend.SQLiteStore._write
    writes = 0

    def dying_write(self, puts, deletes):
        global writes
        writes += 1

        def counted():
            for i, pair in enumerate(puts):
                if writes == write and i == kill_after:
                    os.kill(os.getpid(), signal.SIGKILL)  # mid-transaction: a real kill
                yield pair

        original(self, counted(), deletes)

    backend.SQLiteStore._write = dying_write
    db = persist.open(sys.argv[1], "golden db passphrase", allow_weak_kdf=True, freshness=False)
    print("upgraded", flush=True)
    db.close()  # folds the log: the second write
    print("closed")
    """
)


# (write, pairs before the kill, store format after): the first write is the
# upgrade (two count-tree nodes and the root), the second the fold at close.
@pytest.mark.parametrize("write, kill_after, version", [(1, 0, 1), (1, 1, 1), (2, 3, 2), (0, 0, 2)])
def test_a_kill_during_the_upgrade_leaves_v1_or_v2_whole(
    tmp_path: Path, write: int, kill_after: int, version: int
) -> None:
    location = _restore(tmp_path)
    out = subprocess.run(
        [sys.executable, "-c", _UPGRADE_CHILD, location, str(write), str(kill_after)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if write:
        assert out.returncode == -signal.SIGKILL, out.stdout + out.stderr
        assert ("upgraded" in out.stdout) == (write == 2)
    else:
        assert out.returncode == 0 and "closed" in out.stdout, out.stderr
    with open_store(location, read_only=True) as kvs:
        ebs = EncryptedStore.open(kvs, PASSPHRASE, allow_weak_kdf=True, freshness=False)
        assert ebs.version == version
    with _open(location, read_only=True) as db:
        _check_contents(db)
        assert db.verify() == []
    with _open(location) as db:  # the upgrade completes now
        assert db._ebs.version == 2
        _check_contents(db)
        assert db.verify() == []


def test_a_store_written_now_is_v2(tmp_path: Path) -> None:
    with persist.open(
        str(tmp_path / "n.db"),
        "pw",
        kdf=KdfParams.weak_for_tests(),
        allow_weak_kdf=True,
        freshness=False,
    ) as db:
        db.root["x"] = 1
        assert db._ebs.version == 2
    assert not os.path.exists(tmp_path / "n.db-wal")
