"""The SQLite backend through apsw: the embedded default.

Layout: one table ``kv(k BLOB PRIMARY KEY, v BLOB)``; BLOB comparison is
``memcmp``, which is the contract's unsigned byte order.  The file is marked
with ``PRAGMA application_id`` so that an unrelated SQLite database is refused
rather than written into.

The table is an ordinary rowid table with ``k`` in SQLite's automatic unique
index, not a ``WITHOUT ROWID`` table: rows of the ebs are mostly tree nodes of
2-4 KiB, and a ``WITHOUT ROWID`` table (an index b-tree) keeps at most about
a quarter of a page of a row in its page, so every node would spill into an
overflow chain that each read follows and each write allocates.  A rowid
table keeps a node whole in one page; the index holds only the 32-byte keys.
Stores created with the earlier ``WITHOUT ROWID`` layout open and work as
before (every statement here reads the same on both); docs/format.md.

Concurrency: WAL journal mode.  One write connection, serialized by a lock,
and a pool of read connections, so that readers never queue behind a commit
(a WAL reader sees the last committed state).  ``synchronous=FULL`` makes a
commit durable on return; ``durable=False`` uses ``NORMAL``, which in WAL mode
never corrupts but may lose the last commits on power loss.

One writer: a writable handle holds an exclusive ``flock`` on the sidecar file
``<path>-lock`` for its lifetime.  SQLite's own locks would let a second
process write between our batches; the sidecar lock makes that an immediate
``StoreLocked`` instead.  ``flock`` conflicts between two handles in the same
process too, so a double open is refused the same way.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
import urllib.parse
from collections.abc import Iterator

import apsw

from ..errors import (
    ClosedError,
    CorruptStore,
    NotAStore,
    PersistError,
    ReadOnlyError,
    StoreError,
    StoreFull,
    StoreIOError,
    StoreLocked,
    StoreNotFound,
)
from .base import Snapshot, Store

__all__ = ["APPLICATION_ID", "SQLiteStore"]

#: ``PRAGMA application_id`` of a persist store: ASCII "prst" (docs/format.md).
APPLICATION_ID = 0x70727374

_SCHEMA = "CREATE TABLE kv (k BLOB PRIMARY KEY NOT NULL, v BLOB NOT NULL)"
_BUSY_TIMEOUT_MS = 10_000
#: WAL pages after a commit at which the writer checkpoints (SQLite's own
#: autocheckpoint default, which the WAL hook below takes over).
_CHECKPOINT_PAGES = 1000

#: An upsert, not ``INSERT OR REPLACE``: REPLACE deletes the old row and inserts
#: a new one under a new rowid, which rewrites the table page the old row was in,
#: the page at the end of the table and the key index's page twice over; an
#: update in place rewrites only the row's own page (the root slots are
#: rewritten by every commit: docs/benchmarks.md, "A small commit").
_UPSERT = "INSERT INTO kv (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v"
#: Rows fetched per statement by a snapshot's scan (its connection is shared).
_PAGE_ROWS = 256


def _translate(exc: apsw.Error, location: str) -> PersistError:
    """Map an apsw exception onto the persist error tree."""
    if isinstance(exc, apsw.FullError):
        return StoreFull(f"store {location} is full: the batch was not written")
    if isinstance(exc, apsw.CorruptError):
        return CorruptStore(f"SQLite reports store {location} as corrupt")
    if isinstance(exc, apsw.NotADBError):
        return NotAStore(f"{location} is not an SQLite database")
    if isinstance(exc, apsw.BusyError | apsw.LockedError):
        return StoreLocked(f"store {location} is locked by another connection")
    if isinstance(exc, apsw.ProtocolError):
        # WAL mode: a read lock could not be had after SQLite's retries, because
        # another process holds the WAL's locks and does not move (a stopped
        # process, seen with SIGSTOP): as busy as BusyError, and as retryable.
        return StoreLocked(f"store {location} is locked by another process (WAL locks held)")
    if isinstance(exc, apsw.ReadOnlyError):
        return ReadOnlyError(f"store {location} is not writable")
    if isinstance(exc, apsw.IOError):
        return StoreIOError(f"I/O error on store {location}: {exc}")
    if isinstance(exc, apsw.ConnectionClosedError | apsw.CursorClosedError):
        return ClosedError(f"store {location} is closed")
    return StoreError(f"SQLite error on store {location}: {exc}")


class SQLiteStore(Store):
    def __init__(
        self, path: str, *, durable: bool = True, read_only: bool = False, create: bool = True
    ) -> None:
        super().__init__(path, durable=durable, read_only=read_only)
        self._path = os.path.abspath(path)
        self._write_lock = threading.Lock()
        self._pool_lock = threading.Lock()
        self._idle: list[apsw.Connection] = []
        self._all_readers: list[apsw.Connection] = []
        self._lock_fd: int | None = None
        self._writer: apsw.Connection | None = None
        #: WAL frames the last checkpoint could not copy (a snapshot held them)
        self._behind = 0
        #: the thread of the last commit (a snapshot it closes catches up, below)
        self._committer = 0
        self._immutable = False
        if os.path.isdir(self._path):
            raise NotAStore(f"{path} is a directory, not an SQLite store")
        exists = os.path.exists(self._path)
        if (read_only or not create) and not exists:
            raise StoreNotFound(f"no store at {path}")
        if read_only:
            # On read-only media SQLite cannot create the -shm file a WAL reader
            # needs; a store nobody can write there cannot change: open it immutable.
            directory = os.path.dirname(self._path) or "."
            self._immutable = not os.access(directory, os.W_OK) and not os.path.exists(
                self._path + "-wal"
            )
        else:
            self._refuse_unwritable(exists)
        try:
            if read_only:
                self._release(self._new_reader())  # proves the file is a store
            else:
                self._take_lock()
                self._writer = self._open_writer(created=not exists, create=create)
        except BaseException:
            self._close()
            raise

    # -- opening ---------------------------------------------------------------

    def _refuse_unwritable(self, exists: bool) -> None:
        """A writer that cannot write would fail its first commit: refuse it now."""
        directory = os.path.dirname(self._path) or "."
        if not os.path.isdir(directory):
            raise StoreNotFound(f"cannot create store {self.location}: no such directory")
        if exists and not os.access(self._path, os.R_OK | os.W_OK):
            raise ReadOnlyError(
                f"store {self.location} is not writable by this process; open it read-only"
            )
        if not os.access(directory, os.W_OK | os.X_OK):
            raise ReadOnlyError(
                f"the directory of store {self.location} is not writable (SQLite keeps its "
                "-wal, -shm and -lock files there); open it read-only"
            )

    def _take_lock(self) -> None:
        try:
            fd = os.open(self._path + "-lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:
            raise StoreNotFound(f"cannot create store {self.location}: no such directory") from None
        except OSError as exc:
            raise StoreIOError(f"cannot open the lock file of {self.location}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise StoreLocked(f"store {self.location} is open for writing elsewhere") from None
            raise StoreIOError(f"cannot lock store {self.location}: {exc}") from exc
        self._lock_fd = fd

    def _connect(self, flags: int, path: str | None = None) -> apsw.Connection:
        name = self._path if path is None else path
        if self._immutable:
            name = "file:" + urllib.parse.quote(self._path) + "?immutable=1"
            flags |= apsw.SQLITE_OPEN_URI
        try:
            conn = apsw.Connection(name, flags=flags)
            conn.set_busy_timeout(_BUSY_TIMEOUT_MS)
            return conn
        except apsw.CantOpenError:
            raise StoreNotFound(f"cannot open store {self.location}") from None
        except apsw.Error as exc:
            raise _translate(exc, self.location) from exc

    def _remove_unfinished_creations(self) -> None:
        """Delete what a creation killed mid-way left under its temporary name.
        REQUIRES: the writer's lock file is held (no creation of this store runs)."""
        directory = os.path.dirname(self._path) or "."
        prefix = f".{os.path.basename(self._path)}.creating-"
        try:
            names = [n for n in os.listdir(directory) if n.startswith(prefix)]
        except OSError:
            return
        for name in names:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, name))

    def _create(self) -> None:
        """Make a new store at the path in one step: built whole under a temporary
        name (WAL mode, the table, the application id), then linked into place.

        Built in place, a kill mid-way left an empty file or a hot rollback journal
        that a read-only open cannot roll back (ReadOnlyError), although no store
        was ever made; now the path holds nothing or a whole empty store.
        REQUIRES: the writer's lock file is held.
        """
        directory = os.path.dirname(self._path) or "."
        temporary = os.path.join(
            directory, f".{os.path.basename(self._path)}.creating-{os.urandom(6).hex()}.db"
        )
        try:
            conn = self._connect(apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE, temporary)
            try:
                self._make_schema(conn)
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except apsw.Error as exc:
                raise _translate(exc, self.location) from exc
            finally:
                conn.close()  # the last connection: the WAL is folded in and removed
            _fsync_file(temporary)
            try:
                os.link(temporary, self._path)  # never over a file that appeared meanwhile
            except FileExistsError:
                return  # someone else's file: the open below judges it
            except OSError:  # no hard links on this file system
                if os.path.exists(self._path):
                    return
                os.rename(temporary, self._path)
            _fsync_dir(directory)
        except OSError as exc:
            raise StoreIOError(f"cannot create store {self.location}: {exc}") from exc
        finally:
            for leftover in (temporary, temporary + "-wal", temporary + "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(leftover)

    def _open_writer(self, *, created: bool, create: bool = True) -> apsw.Connection:
        self._remove_unfinished_creations()
        if created:
            self._create()
        flags = apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE
        conn = self._connect(flags)
        try:
            self._check_schema(conn, creating=create)
            self._use_wal(conn)
            conn.execute(f"PRAGMA synchronous={'FULL' if self.durable else 'NORMAL'}")
            # Deleted rows are overwritten, not left in free pages for whoever
            # holds the file later (a rotated-out key, a deleted node).
            conn.execute("PRAGMA secure_delete=ON")
            conn.set_wal_hook(self._committed)
        except apsw.Error as exc:
            conn.close()
            raise _translate(exc, self.location) from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def _use_wal(self, conn: apsw.Connection) -> None:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchall()
        if str(mode[0][0]).lower() != "wal":
            raise StoreError(f"store {self.location} cannot use WAL mode")

    def _make_schema(self, conn: apsw.Connection) -> None:
        """Make the empty database of ``conn`` a store: WAL first, so that no rollback
        journal is ever left behind, then the table and the application id."""
        self._use_wal(conn)
        conn.execute("PRAGMA synchronous=FULL")
        with conn:
            conn.execute(_SCHEMA)
            conn.execute(f"PRAGMA application_id={APPLICATION_ID}")

    def _check_schema(self, conn: apsw.Connection, *, creating: bool) -> None:
        """Refuse a file that is not a persist store; create the table in a new one."""
        app_id = conn.execute("PRAGMA application_id").fetchall()[0][0]
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE type='table'")]
        if app_id == APPLICATION_ID and tables == ["kv"]:
            return
        if app_id == 0 and not tables and creating:
            self._make_schema(conn)  # an empty file (a version that created in place left it)
            return
        if app_id == 0 and not tables:
            # No table at all: no store was ever made here (a creation that did not
            # finish, or an empty file); a writable open makes one.
            raise StoreNotFound(f"no store at {self.location} (an empty SQLite file)")
        raise NotAStore(f"{self.location} is an SQLite database, but not a persist store")

    def _new_reader(self) -> apsw.Connection:
        conn = self._connect(apsw.SQLITE_OPEN_READONLY)
        try:
            self._check_schema(conn, creating=False)
        except apsw.Error as exc:
            conn.close()
            raise _translate(exc, self.location) from exc
        except BaseException:
            conn.close()
            raise
        with self._pool_lock:
            if not self._closed:
                self._all_readers.append(conn)
                return conn
        conn.close()
        raise ClosedError(f"store {self.location} is closed")

    # -- the read pool -----------------------------------------------------------

    def _acquire(self) -> apsw.Connection:
        with self._pool_lock:
            if self._idle:
                return self._idle.pop()
        return self._new_reader()

    def _release(self, conn: apsw.Connection) -> None:
        with self._pool_lock:
            if not self._closed:
                self._idle.append(conn)

    # -- operations --------------------------------------------------------------

    def _get(self, key: bytes) -> bytes | None:
        conn = self._acquire()
        try:
            row = conn.execute("SELECT v FROM kv WHERE k = ?", (key,)).fetchone()
        except apsw.Error as exc:
            raise self._error(exc) from exc
        finally:
            self._release(conn)
        return None if row is None else self._blob(row[0])

    def _blob(self, cell: object) -> bytes:
        """A cell as bytes; a cell of another type was not written by persist."""
        if type(cell) is not bytes:
            raise CorruptStore(f"store {self.location} holds a cell that is not a blob")
        return cell

    def _scan(self, start: bytes, stop: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        conn = self._acquire()
        try:
            cur = conn.execute(*_scan_statement(start, stop))
            # One statement is one read transaction: the scan is a snapshot.
            with contextlib.closing(cur):
                for key, value in cur:
                    yield self._blob(key), self._blob(value)
        except apsw.Error as exc:
            raise self._error(exc) from exc
        finally:
            self._release(conn)

    def _committed(self, conn: apsw.Connection, name: str, pages: int) -> int:
        """WAL hook (after each commit): SQLite's autocheckpoint, which a hook
        replaces, and how far the checkpoint stayed behind."""
        if pages >= _CHECKPOINT_PAGES:
            self._checkpoint(conn, busy_behind=pages)
        return apsw.SQLITE_OK

    def _checkpoint(self, conn: apsw.Connection, busy_behind: int | None = None) -> None:
        """A PASSIVE checkpoint; notes what it could not copy.  Busy or the like:
        nothing copied (``busy_behind`` frames left, or as noted before); tried
        again later.  REQUIRES: the write lock."""
        try:
            frames, copied = conn.wal_checkpoint()
        except apsw.Error:
            if busy_behind is not None:
                self._behind = busy_behind
            return
        self._behind = max(frames - copied, 0)

    def _catch_up(self) -> None:
        """Checkpoint what a snapshot kept the last commit's checkpoint from
        copying, before a new snapshot is taken; only if the writer is idle.

        A snapshot taken while the WAL is not wholly copied holds a place in
        it, and no commit can start the WAL over until it is released.  A
        fold pins the store before it commits and keeps the pin until the
        next commit is published, so in a run of folds (a bulk load) every
        commit found the WAL pinned and appended to it: 845 MB of WAL for 35
        MB of pairs, copied by the first commit after the run (150 ms).  A
        snapshot taken once the WAL is wholly copied reads the database file
        and holds no place, so the next commit starts the WAL over.
        """
        if self._behind < _CHECKPOINT_PAGES or not self._write_lock.acquire(blocking=False):
            return  # little to copy, or a commit under way: never wait for it
        try:
            conn = self._writer
            if conn is not None and not self._closed:
                self._checkpoint(conn)
        finally:
            self._write_lock.release()

    def _snapshot(self) -> Snapshot:
        self._catch_up()
        conn = self._acquire()
        try:
            # A deferred transaction pins its WAL snapshot at its first read.
            conn.execute("BEGIN")
            conn.execute("SELECT 1 FROM kv LIMIT 1").fetchall()
        except apsw.Error as exc:
            with contextlib.suppress(apsw.Error):
                conn.execute("ROLLBACK")
            self._release(conn)
            raise self._error(exc) from exc
        return _SQLiteSnapshot(self, conn)

    def _compare_and_set(self, key: bytes, expected: bytes | None, new: bytes | None) -> bool:
        with self._write_lock:
            conn = self._writer
            if conn is None or self._closed:
                raise ClosedError(f"store {self.location} is closed")
            try:
                conn.execute("BEGIN IMMEDIATE")
            except apsw.Error as exc:
                raise self._error(exc) from exc
            try:
                row = conn.execute("SELECT v FROM kv WHERE k = ?", (key,)).fetchone()
                current = None if row is None else self._blob(row[0])
                if current != expected:
                    conn.execute("ROLLBACK")
                    return False
                if new is None:
                    conn.execute("DELETE FROM kv WHERE k = ?", (key,))
                else:
                    conn.execute(_UPSERT, (key, new))
                conn.execute("COMMIT")
                return True
            except BaseException as exc:
                with contextlib.suppress(apsw.Error):
                    conn.execute("ROLLBACK")
                if isinstance(exc, apsw.Error):
                    raise self._error(exc) from exc
                raise

    def _write(self, puts: Iterator[tuple[bytes, bytes]], deletes: list[bytes]) -> None:
        self._write_if(None, None, puts, deletes)

    def _write_if(
        self,
        key: bytes | None,
        expected: bytes | None,
        puts: Iterator[tuple[bytes, bytes]],
        deletes: list[bytes],
    ) -> bool:
        """One transaction: the check of ``key`` (None: no check) and the batch."""
        with self._write_lock:
            conn = self._writer
            if conn is None or self._closed:
                raise ClosedError(f"store {self.location} is closed")
            try:
                conn.execute("BEGIN IMMEDIATE")
            except apsw.Error as exc:
                raise self._error(exc) from exc
            try:
                if key is not None:
                    row = conn.execute("SELECT v FROM kv WHERE k = ?", (key,)).fetchone()
                    if (None if row is None else self._blob(row[0])) != expected:
                        conn.execute("ROLLBACK")
                        return False
                if deletes:
                    conn.executemany("DELETE FROM kv WHERE k = ?", [(k,) for k in deletes])
                conn.executemany(_UPSERT, puts)
                self._committer = threading.get_ident()
                conn.execute("COMMIT")
                return True
            except BaseException as exc:
                with contextlib.suppress(apsw.Error):
                    conn.execute("ROLLBACK")
                if isinstance(exc, apsw.Error):
                    raise self._error(exc) from exc
                raise

    def compact(self) -> None:
        """Checkpoint the WAL into the database file and truncate it (contract: base)."""
        self._check_open()
        with self._write_lock:
            conn = self._writer
            if conn is None:
                return
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except apsw.Error as exc:
                raise self._error(exc) from exc

    @property
    def canonical_location(self) -> str:
        return "sqlite://" + os.path.realpath(self._path)

    def _error(self, exc: apsw.Error) -> PersistError:
        if self._closed:
            return ClosedError(f"store {self.location} is closed")
        return _translate(exc, self.location)

    def _close(self) -> None:
        self._closed = True
        with self._pool_lock:
            readers, self._all_readers, self._idle = self._all_readers, [], []
        for conn in readers:
            # A reader busy in another thread may refuse; it is then closed
            # when that thread's statement ends and the connection is freed.
            with contextlib.suppress(apsw.Error):
                conn.close()
        # The writer closes last: as the last connection it checkpoints the
        # WAL into the database file and removes it.
        with self._write_lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _scan_statement(
    start: bytes, stop: bytes | None, *, after: bool = False, limit: int | None = None
) -> tuple[str, tuple[bytes | int, ...]]:
    """The SELECT of a range scan.  A scan of the whole store has no bound, so
    that cells of another type (which SQLite sorts before every blob) are met
    and refused instead of skipped."""
    where: list[str] = []
    args: list[bytes | int] = []
    if start or after:
        where.append("k > ?" if after else "k >= ?")
        args.append(start)
    if stop is not None:
        where.append("k < ?")
        args.append(stop)
    sql = "SELECT k, v FROM kv"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY k"
    if limit is not None:
        sql += " LIMIT ?"
        args.append(limit)
    return sql, tuple(args)


class _SQLiteSnapshot(Snapshot):
    """A pooled read connection held in one read transaction (one WAL snapshot).

    apsw refuses concurrent use of one connection from two threads, so calls
    take turns under a lock, and a scan reads in pages of :data:`_PAGE_ROWS`
    rows (no statement stays open between the rows it yields).
    """

    def __init__(self, store: SQLiteStore, conn: apsw.Connection) -> None:
        super().__init__(store)
        self._sqlite = store
        self._conn = conn
        self._lock = threading.Lock()

    def _get(self, key: bytes) -> bytes | None:
        with self._lock:
            self._check_live()
            try:
                row = self._conn.execute("SELECT v FROM kv WHERE k = ?", (key,)).fetchone()
            except apsw.Error as exc:
                raise self._sqlite._error(exc) from exc
        return None if row is None else self._sqlite._blob(row[0])

    def _scan(self, start: bytes, stop: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        blob = self._sqlite._blob
        cursor, after = start, False
        while True:
            with self._lock:
                self._check_live()
                try:
                    rows = self._conn.execute(
                        *_scan_statement(cursor, stop, after=after, limit=_PAGE_ROWS)
                    ).fetchall()
                except apsw.Error as exc:
                    raise self._sqlite._error(exc) from exc
            for key, value in rows:
                yield blob(key), blob(value)
            if len(rows) < _PAGE_ROWS:
                return
            cursor, after = blob(rows[-1][0]), True

    def _check_live(self) -> None:
        if self._sqlite.closed:
            raise ClosedError(f"store {self.location} is closed")

    def _close(self) -> None:
        with self._lock:
            if not self._sqlite.closed:
                with contextlib.suppress(apsw.Error):
                    self._conn.execute("ROLLBACK")
                self._sqlite._release(self._conn)
        # The committing thread letting go of the pin of its own fold (the
        # multiplexer retires it as it publishes the commit) copies what the
        # pin kept the commit's checkpoint from copying: the writer pays for
        # its own large commit, not the next small one; a reader never does.
        if self._sqlite._committer == threading.get_ident():
            self._sqlite._catch_up()


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: str) -> None:
    """Make a newly created file's directory entry durable."""
    fd = os.open(path or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
