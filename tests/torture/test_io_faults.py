"""I/O faults on real resources: a full tmpfs (ENOSPC), a PostgreSQL connection
killed mid-batch (``pg_terminate_backend``).

Injected faults (fsync EIO after the data reached the store, ENOSPC before,
an exception mid-batch) are covered, with several waiters, by
tests/db/test_failures.py; here the same properties are checked where the
operating system and the server produce the fault:

* every thread waiting in ``commit_wait`` gets :class:`~persist.CommitFailed`;
* the database is poisoned: every later write raises ``CommitFailed``;
* reopened, it holds every acknowledged write and verifies clean;
* after ENOSPC, freeing space and reopening continues where it stopped.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
from pathlib import Path

import pytest

import persist
from persist.ebs import KdfParams
from persist.testing.pgserver import PostgresServer

from ..conftest import pg_location
from .conftest import record

WEAK = {"kdf": KdfParams.weak_for_tests(), "allow_weak_kdf": True, "freshness": False}


def _open(location: str) -> persist.Database:
    return persist.open(location, "pw", **WEAK)  # type: ignore[arg-type]


def _writers_until_failure(
    db: persist.Database, threads: int, value_size: int
) -> tuple[dict[int, int], list[BaseException]]:
    """Threads write and commit-wait until the database fails; return what each
    had acknowledged and the errors their commit-waits raised."""
    t = db.table("t")
    acked: dict[int, int] = {}
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(tid: int) -> None:
        i = 0
        while True:
            try:
                t[(tid, i)] = os.urandom(value_size)
                db.commit_wait()
            except persist.CommitFailed as exc:
                with lock:
                    errors.append(exc)
                return
            acked[tid] = i
            i += 1
            if i > 100_000:
                return

    workers = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=300)
        assert not w.is_alive(), "a writer hangs after the failure"
    return acked, errors


def _check_poisoned(db: persist.Database) -> None:
    with pytest.raises(persist.CommitFailed):
        db.table("t")["after"] = b"x"
    with pytest.raises(persist.CommitFailed):
        db.commit_wait()


def _check_acked(db: persist.Database, acked: dict[int, int]) -> None:
    t = db.table("t")
    for tid, last in acked.items():
        for i in range(last + 1):
            assert (tid, i) in t, f"acknowledged write {(tid, i)} lost"
    assert db.verify() == []


@pytest.fixture
def small_tmpfs(tmp_path: Path):  # type: ignore[no-untyped-def]
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    out = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True
    )
    if out.returncode:
        why = f"cannot mount a tmpfs here (needs root): {out.stderr.decode().strip()}"
        if os.environ.get("PERSIST_REQUIRE_TMPFS") == "1":  # CI: a failure, not a skip
            pytest.fail(why)
        pytest.skip(why)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.parametrize("backend", ["sqlite", "leveldb"])
def test_a_full_disk_poisons_loses_nothing_and_continues(small_tmpfs: Path, backend: str) -> None:
    location = str(small_tmpfs / "s.db") if backend == "sqlite" else f"leveldb://{small_tmpfs}/s"
    db = _open(location)
    acked, errors = _writers_until_failure(db, threads=8, value_size=3000)
    assert errors and len(errors) == 8, "every waiter gets the error"
    assert any(isinstance(e.__cause__, persist.errors.StoreFull) for e in errors), [
        repr(e.__cause__) for e in errors
    ]
    _check_poisoned(db)
    with contextlib.suppress(persist.PersistError):  # closing may report the failure again
        db.close()
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_tmpfs)], check=True)
    with _open(location) as again:
        _check_acked(again, acked)
        again.table("t")["more"] = b"continues"
        again.commit_wait()
    with _open(location) as again:
        assert again.table("t")["more"] == b"continues" and again.verify() == []
    record(f"io.enospc.{backend}.acknowledged_before_full", sum(v + 1 for v in acked.values()))


@pytest.mark.slow
def test_a_postgresql_connection_killed_mid_batch(pg_server: PostgresServer) -> None:
    location = pg_location(pg_server)
    hits = attempts = 0
    for attempts in range(1, 41):  # noqa: B007 - the count is reported
        db = _open(location)
        stop = threading.Event()

        def killer(stop: threading.Event = stop) -> None:
            while not stop.is_set():
                pg_server.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                    "datname = 'persist_tests' AND pid <> pg_backend_pid() AND "
                    "state = 'active' AND query NOT ILIKE '%pg_stat_activity%'"
                )

        k = threading.Thread(target=killer)
        k.start()
        try:
            acked, errors = _writers_until_failure(db, threads=4, value_size=200)
        finally:
            stop.set()
            k.join()
        assert errors, "the writers stopped without an error"
        _check_poisoned(db)
        with contextlib.suppress(persist.PersistError):
            db.close()
        with _open(location) as again:
            _check_acked(again, acked)
        hits += 1
        if hits == 3:
            break
    record("io.postgresql.active_connections_killed", hits)
