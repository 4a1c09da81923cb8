"""A power cut tears the last, unsynced LevelDB log write: the store still opens (issue 18).

With ``paranoid_checks`` (before the fix) LevelDB refused to open such a store
(``CorruptStore``) although every acknowledged batch was intact.  Here the
tail of the newest log file is overwritten with a hole of zeros or garbage,
the way a power cut can leave the last record of a write that was never
synced; every batch written before it must still be there, and the database
must verify clean.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import persist
from persist.ebs import KdfParams


def _newest_log(directory: Path) -> Path:
    return max(directory.glob("*.log"), key=lambda p: int(p.stem))


@pytest.mark.parametrize("damage", ["zeros", "garbage", "cut"])
def test_a_torn_last_log_record_is_dropped_not_fatal(tmp_path: Path, damage: str) -> None:
    directory = tmp_path / "db.ldb"
    location = f"leveldb://{directory}"
    opts = {"kdf": KdfParams.weak_for_tests(), "allow_weak_kdf": True, "freshness": False}
    db = persist.open(location, "pw", **opts)  # type: ignore[arg-type]
    t = db.table("t")
    for i in range(50):  # acknowledged, one commit each (in the root log)
        t[i] = b"acknowledged %d" % i
        db.commit_wait()
    # the "unsynced" last write: a large batch, whose log record we then tear
    t.update({1000 + i: os.urandom(200) for i in range(300)})
    db.commit_wait()
    log = _newest_log(directory)
    db._mux._thread.join(0)  # keep the handle: simulate the cut on the files as they are
    import persist.db.database as database

    database._open_databases.discard(db)
    db._trees.ebs.kvs.close()  # releases LevelDB's lock without a clean shutdown record
    size = log.stat().st_size
    with log.open("r+b") as f:
        if damage == "cut":
            f.truncate(size - 3000)
        else:
            f.seek(size - 3000)
            f.write(bytes(1500) if damage == "zeros" else os.urandom(1500))
    with persist.open(location, "pw", **opts) as again:  # type: ignore[arg-type]
        t = again.table("t")
        assert all(t[i] == b"acknowledged %d" % i for i in range(50))
        assert again.verify() == []
