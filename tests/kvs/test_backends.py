"""What each backend does with bad locations, second processes and odd files."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import apsw
import pytest

from persist.errors import NotAStore, PersistError, StoreLocked, StoreNotFound
from persist.kvs import open_store, parse_location
from persist.kvs.sqlite import APPLICATION_ID

HOLD_OPEN = """
import sys, time
from persist.kvs import open_store
s = open_store(sys.argv[1])
print("open", flush=True)
sys.stdin.readline()
"""

TRY_OPEN = """
import sys, time
from persist.kvs import open_store
from persist.errors import StoreLocked
t = time.monotonic()
try:
    open_store(sys.argv[1])
except StoreLocked as e:
    print("locked %.3f %s" % (time.monotonic() - t, e))
else:
    print("opened")
"""


@pytest.mark.parametrize("backend", ["sqlite", "leveldb"])
def test_second_process_gets_store_locked_promptly(location: str) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_OPEN, location],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        out = subprocess.run(
            [sys.executable, "-c", TRY_OPEN, location], capture_output=True, text=True, timeout=60
        ).stdout
        assert out.startswith("locked "), out
        assert float(out.split()[1]) < 1.0  # refused at once, not after a busy timeout
        assert location.split("://")[-1] in out  # the message names the location
    finally:
        holder.communicate("\n", timeout=30)
    with open_store(location):  # released when the holder exits
        pass


@pytest.mark.parametrize("backend", ["sqlite", "leveldb", "memory"])
def test_missing_store_opened_read_only(location: str) -> None:
    with pytest.raises(StoreNotFound, match="no store at"):
        open_store(location, read_only=True)


def test_missing_parent_directory(tmp_path: Path) -> None:
    for loc in (str(tmp_path / "no" / "x.db"), f"leveldb://{tmp_path}/no/x"):
        with pytest.raises(StoreNotFound):
            open_store(loc)


def test_directory_that_is_not_a_store(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("hello")
    with pytest.raises(NotAStore, match=str(tmp_path / "d")):
        open_store(f"leveldb://{tmp_path / 'd'}")
    with pytest.raises(NotAStore, match="directory"):
        open_store(str(tmp_path / "d"))
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["notes.txt"]


def test_file_that_is_not_sqlite(tmp_path: Path) -> None:
    f = tmp_path / "junk.db"
    f.write_bytes(b"this is not a database, just some text " * 200)
    before = f.read_bytes()
    for ro in (False, True):
        with pytest.raises(NotAStore, match=str(f)):
            open_store(str(f), read_only=ro)
    assert f.read_bytes() == before
    with pytest.raises(NotAStore):
        open_store(f"leveldb://{f}")


def test_foreign_sqlite_database_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "other.db"
    conn = apsw.Connection(str(f))
    conn.execute("CREATE TABLE customers (name TEXT)")
    conn.close()
    with pytest.raises(NotAStore, match="not a persist store"):
        open_store(str(f))
    conn = apsw.Connection(str(f))
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_schema")]
    conn.close()
    assert tables == ["customers"]


def test_sqlite_file_layout(tmp_path: Path) -> None:
    f = tmp_path / "s.db"
    with open_store(str(f)) as s:
        s.write({b"k": b"v"})
    conn = apsw.Connection(str(f))
    assert conn.execute("PRAGMA application_id").fetchall()[0][0] == APPLICATION_ID
    assert conn.execute("PRAGMA journal_mode").fetchall()[0][0] == "wal"
    sql = conn.execute("SELECT sql FROM sqlite_schema WHERE name='kv'").fetchall()[0][0]
    assert "WITHOUT ROWID" not in sql  # a rowid table: nodes of 2-4 KiB stay in one page
    assert conn.execute("SELECT rowid, k FROM kv").fetchall() == [(1, b"k")]
    conn.close()


@pytest.mark.parametrize("content", ["nothing", "a header"])
def test_an_empty_sqlite_file_is_no_store_until_a_writer_makes_one(
    tmp_path: Path, content: str
) -> None:
    """What a creation killed before it finished could leave (by the versions that
    created stores in place): no store, for a reader; a writer makes one there."""
    f = tmp_path / "s.db"
    if content == "nothing":
        f.write_bytes(b"")
    else:
        conn = apsw.Connection(str(f))
        conn.execute("PRAGMA user_version=0")
        conn.execute("VACUUM")  # writes the header: an SQLite database without a table
        conn.close()
        assert f.stat().st_size > 0
    with pytest.raises(StoreNotFound, match="empty SQLite file"):
        open_store(str(f), read_only=True)
    with pytest.raises(StoreNotFound, match="empty SQLite file"):
        open_store(str(f), create=False)  # nor does a writer that may not create
    with open_store(str(f)) as s:
        s.write({b"k": b"v"})
    with open_store(str(f), read_only=True) as s:
        assert s.get(b"k") == b"v"


def test_a_new_sqlite_store_appears_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new store is made under a temporary name and linked into place: at the link it
    is already a whole empty store (WAL, the table, the application id), so a kill at
    any moment leaves nothing, or that; what a killed creation left is removed by the
    next writer."""
    import os

    f = tmp_path / "s.db"
    stale = [tmp_path / ".s.db.creating-0123456789ab.db", tmp_path / ".s.db.creating-x.db-wal"]
    for path in stale:
        path.write_bytes(b"left by a killed creation")
    other = tmp_path / ".other.db.creating-0123456789ab.db"
    other.write_bytes(b"another store's")
    seen: list[tuple[str, object, list[str]]] = []
    real_link = os.link

    def link(source: str, target: str) -> None:
        conn = apsw.Connection(source, flags=apsw.SQLITE_OPEN_READONLY)
        app_id = conn.execute("PRAGMA application_id").fetchall()[0][0]
        mode = conn.execute("PRAGMA journal_mode").fetchall()[0][0]
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE type='table'")]
        conn.close()
        seen.append((mode, app_id, tables))
        assert not f.exists()
        real_link(source, target)

    monkeypatch.setattr(os, "link", link)
    with open_store(str(f)) as s:
        s.write({b"k": b"v"})
    assert seen == [("wal", APPLICATION_ID, ["kv"])]
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))
    assert left == [other.name]  # its own leftovers are gone, another store's are not


def test_a_leveldb_creation_killed_before_current_is_no_store_until_a_writer_makes_one(
    tmp_path: Path,
) -> None:
    """A kill inside LevelDB's creation can leave its lock, info log and first manifest
    without the CURRENT file that makes the directory a database (seen in the crash
    torture): no store for a reader, one to create for a writer, not NotAStore."""
    d = tmp_path / "s.ldb"
    d.mkdir()
    for name in ("LOCK", "LOG", "MANIFEST-000001"):
        (d / name).write_bytes(b"")
    with pytest.raises(StoreNotFound):
        open_store(f"leveldb://{d}", read_only=True)
    with pytest.raises(StoreNotFound):
        open_store(f"leveldb://{d}", create=False)
    with open_store(f"leveldb://{d}") as s:
        s.write({b"k": b"v"})
    with open_store(f"leveldb://{d}", read_only=True) as s:
        assert s.get(b"k") == b"v"
    other = tmp_path / "other"
    other.mkdir()
    for name in ("LOCK", "LOG", "notes.txt"):
        (other / name).write_bytes(b"")
    with pytest.raises(NotAStore, match="not a LevelDB store"):
        open_store(f"leveldb://{other}")
    assert sorted(p.name for p in other.iterdir()) == ["LOCK", "LOG", "notes.txt"]


def test_sqlite_store_of_the_earlier_layout_still_works(tmp_path: Path) -> None:
    """Stores created with the ``WITHOUT ROWID`` table open, read and write as before."""
    f = tmp_path / "old.db"
    conn = apsw.Connection(str(f))
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE kv (k BLOB PRIMARY KEY NOT NULL, v BLOB NOT NULL) WITHOUT ROWID")
    conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
    conn.execute("INSERT INTO kv VALUES (?, ?)", (b"a", b"1"))
    conn.close()
    with open_store(str(f)) as s:
        assert s.get(b"a") == b"1"
        s.write({b"b": b"2", b"a": b"3"}, [b"zz"])
        s.write({}, [b"b"])
        assert list(s.scan()) == [(b"a", b"3")]
    conn = apsw.Connection(str(f))
    sql = conn.execute("SELECT sql FROM sqlite_schema WHERE name='kv'").fetchall()[0][0]
    assert "WITHOUT ROWID" in sql  # opening never converts a store
    conn.close()


@pytest.mark.parametrize(
    "loc, want",
    [
        ("/a/b.db", ("sqlite", "/a/b.db")),
        ("rel/b.db", ("sqlite", "rel/b.db")),
        ("sqlite:///a/b.db", ("sqlite", "/a/b.db")),
        ("leveldb:///a/dir", ("leveldb", "/a/dir")),
        ("memory:", ("memory", "")),
        ("memory:name", ("memory", "name")),
    ],
)
def test_parse_location(loc: str, want: tuple[str, str]) -> None:
    assert parse_location(loc) == want


@pytest.mark.parametrize("loc", ["ftp://x", "sqlite://relative", "leveldb://rel", ""])
def test_bad_locations(loc: str) -> None:
    with pytest.raises(ValueError):
        open_store(loc)


def test_location_type() -> None:
    with pytest.raises(TypeError):
        open_store(42)  # type: ignore[arg-type]


def test_errors_share_one_root() -> None:
    for exc in (StoreLocked, StoreNotFound, NotAStore):
        assert issubclass(exc, PersistError)


def test_close_waits_for_nothing_when_idle(tmp_path: Path) -> None:
    s = open_store(f"leveldb://{tmp_path}/l")
    t = time.monotonic()
    s.close()
    assert time.monotonic() - t < 5


def test_a_wal_lock_another_process_holds_still_is_store_locked() -> None:
    """SQLITE_PROTOCOL: a WAL read lock not had after SQLite's retries, because a
    stopped process holds the WAL's locks (seen when
    tests/remote/test_lease_processes.py SIGSTOPs a writer).  It is as retryable
    as a busy store, so it is StoreLocked, which callers wait out, and not a
    bare StoreError."""
    from persist.kvs.sqlite import _translate

    exc = _translate(apsw.ProtocolError("locking protocol"), "/x.db")
    assert isinstance(exc, StoreLocked) and "locked by another process" in str(exc)


def test_a_run_of_pinned_commits_lets_the_sqlite_wal_start_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fold pins the store, commits, and lets the pin go after: in a run of
    them each commit's checkpoint stopped at the pin, each next pin then held
    a place in the WAL, and no commit could start the WAL over, so it grew by
    every commit (845 MB for a bulk load of 35 MB).  Now what the pin kept
    back is copied when the committing thread lets it go (or by the next
    snapshot, if the writer is idle), and the WAL starts over: it stays
    about one commit long."""
    import persist.kvs.sqlite as sqlite

    monkeypatch.setattr(sqlite, "_CHECKPOINT_PAGES", 16)
    store = open_store(str(tmp_path / "w.db"))
    wal = tmp_path / "w.db-wal"
    sizes = []
    try:
        for n in range(40):
            pin = store.snapshot()
            store.write([(b"%d-%d" % (n, i), bytes([n]) * 3000) for i in range(40)], [])
            pin.close()
            sizes.append(wal.stat().st_size)
        one_commit = 4120 * 40  # frames of 4 KiB pages and their headers
        assert max(sizes) < 4 * one_commit, sizes
        # a backlog to copy but the writer busy: a snapshot does not wait for it
        import threading

        taken: list[object] = []
        with store._write_lock:
            store._behind = sqlite._CHECKPOINT_PAGES
            taker = threading.Thread(target=lambda: taken.append(store.snapshot()))
            taker.start()
            taker.join(10)
            assert taken and not taker.is_alive()
        taken[0].close()  # type: ignore[attr-defined]
        assert store.get(b"39-0") == bytes([39]) * 3000
    finally:
        store.close()


def test_the_committing_thread_closing_its_pin_copies_what_the_pin_held_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fold's pin is let go by the thread that committed (as the commit is
    published): it then copies what the pin kept the commit's checkpoint from
    copying, so that the next small commit does not (a bulk load's last wave
    left 66-72 ms of it to the first lone write after it).  A pin another
    thread closes copies nothing: a reader does not pay for the writer."""
    import threading

    import persist.kvs.sqlite as sqlite

    monkeypatch.setattr(sqlite, "_CHECKPOINT_PAGES", 16)
    store = open_store(str(tmp_path / "w.db"))
    try:
        rows = [(b"k%d" % i, bytes(3000)) for i in range(40)]
        pin = store.snapshot()
        store.write(rows, [])
        assert store._behind >= 16  # the pin held the checkpoint back
        closer = threading.Thread(target=pin.close)
        closer.start()
        closer.join()
        assert store._behind >= 16  # closed by another thread: nothing copied
        pin = store.snapshot()  # (the idle writer's backlog is copied first)
        assert store._behind == 0
        store.write([(key, b"\x01" * 3000) for key, _ in rows], [])  # (new bytes: pages written)
        assert store._behind >= 16
        pin.close()  # by the committing thread
        assert store._behind == 0
        assert store.get(b"k39") == b"\x01" * 3000
    finally:
        store.close()
