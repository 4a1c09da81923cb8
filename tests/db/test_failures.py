"""Failures on the full encrypted stack: what the caller sees, and what survives.

A FaultyStore under the encrypted store fails chosen writes: mid-batch (inside
the backend's transaction), as a full disk, or after the batch was applied (an
fsync that reports failure late).  The database must poison itself, every
waiter must get the error, and after reopening the store must hold exactly
the last committed state and verify clean.
"""

from __future__ import annotations

import threading
from pathlib import Path

import apsw
import pytest

import persist
from persist.db.database import Database
from persist.ebs import EncryptedStore, KdfParams
from persist.ebs.keyslot import keyslot_key
from persist.errors import CommitFailed, IntegrityError, StoreFull
from persist.kvs import open_store
from persist.testing.faults import FaultyStore, InjectedFault

WEAK = {"kdf": KdfParams.weak_for_tests(), "allow_weak_kdf": True, "freshness": False}


def open_faulty(path: str) -> tuple[Database, FaultyStore]:
    faulty = FaultyStore(open_store(path))
    if next(faulty.scan(), None) is None:
        ebs = EncryptedStore.create(faulty, "pw", **WEAK)  # type: ignore[arg-type]
    else:
        ebs = EncryptedStore.open(faulty, "pw", allow_weak_kdf=True, freshness=False)
    return Database(ebs), faulty


def reopen(path: str) -> persist.Database:
    return persist.open(path, "pw", **WEAK)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "fault",
    [
        {"mid_batch": 3},
        {"exc": StoreFull("disk full")},
        {"exc": InjectedFault("fsync failed")},
    ],
    ids=["mid-batch", "disk-full", "fsync"],
)
def test_failed_commit_poisons_and_loses_only_that_wave(tmp_path: Path, fault: dict) -> None:
    path = str(tmp_path / "s.db")
    db, faulty = open_faulty(path)
    t = db.table("t")
    for i in range(200):
        t[i] = f"committed {i}"
    db.commit_wait()
    faulty.fail_next_write(**fault)
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def writer(w: int) -> None:
        with db.atomic():
            for i in range(50):
                t[1000 * (w + 1) + i] = "lost"
            t[0] = f"overwritten by {w}"
        barrier.wait()
        try:
            db.commit_wait()
        except CommitFailed as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(errors) == 4  # every waiter of the failed wave hears of it
    with pytest.raises(CommitFailed):
        t[5] = "later"
    assert t[0] == "committed 0"  # reads show the committed state
    db.close()
    db = reopen(path)
    assert dict(db.table("t").items()) == {i: f"committed {i}" for i in range(200)}
    assert db.verify() == []
    db.table("t")[0] = "usable again"
    db.commit_wait()
    db.close()


def test_failure_after_apply_keeps_a_consistent_store(tmp_path: Path) -> None:
    """An fsync reporting failure after the write: the wave may or may not be there,
    but the store is one of the two states and verifies."""
    path = str(tmp_path / "s.db")
    db, faulty = open_faulty(path)
    t = db.table("t")
    t["a"] = 1
    db.commit_wait()
    faulty.fail_next_write(after_apply=True)
    with db.atomic():
        t["a"] = 2
        t["b"] = 2
    with pytest.raises(CommitFailed):
        db.commit_wait()
    db.close()
    db = reopen(path)
    assert dict(db.table("t").items()) in ({"a": 1}, {"a": 2, "b": 2})
    assert db.verify() == []
    db.close()


def _flip_rows(path: str, keep: set[bytes]) -> None:
    conn = apsw.Connection(path)
    rows = conn.execute("SELECT k, v FROM kv").fetchall()
    with conn:
        for k, v in rows:
            if k not in keep:
                conn.execute("UPDATE kv SET v = ? WHERE k = ?", (v[:-1] + bytes([v[-1] ^ 1]), k))
    conn.close()


def test_tampered_rows_raise_integrity_error_never_wrong_data(tmp_path: Path) -> None:
    path = str(tmp_path / "s.db")
    with reopen(path) as db:
        for i in range(2000):
            db.table("t")[i] = i
    with open_store(path, read_only=True) as kvs:
        ebs = EncryptedStore.open(kvs, "pw", allow_weak_kdf=True, freshness=False)
        keep = {keyslot_key(0), *(ebs.keyring.root_slot_key(s) for s in (0, 1))}
        ebs.close()
    _flip_rows(path, keep)  # every node and row damaged; keyslot and roots intact
    db = reopen(path)
    for key in (0, 5, 1999):
        with pytest.raises(IntegrityError):
            db.table("t")[key]
    assert db.verify() != []
    db.close()
    _flip_rows(path, set())  # now the keyslot and roots too
    with pytest.raises(IntegrityError):
        reopen(path)  # damage, not a wrong passphrase
