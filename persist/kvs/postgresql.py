"""The PostgreSQL backend through psycopg 3: a store is one ``bytea`` table on a server.

Location: a libpq URI, ``postgresql://user@host:port/dbname``, a socket
directory as ``?host=/dir``; the query parameter ``table=NAME`` (default
``persist``) names the store's table and is removed before connecting, so one
database holds many stores.  The password (in the URI or as ``password=``)
is used to connect and appears nowhere else: not in :attr:`location`, ``repr``,
error messages or the exceptions they chain.

Layout (docs/kvs.md, "PostgreSQL", lists every statement)::

    NAME        (k bytea PRIMARY KEY, v bytea NOT NULL)   -- v: SET STORAGE EXTERNAL
    NAME_lease  (id integer PRIMARY KEY, holder text, generation bigint, expires timestamptz,
                 locked boolean)

``bytea`` compares as ``memcmp``, then by length: the contract's unsigned byte
order.  Values are ciphertext, which does not compress, hence ``EXTERNAL``.

Theory of operation:

1. **Connections.**  A pool of autocommit read connections (``get`` is one
   prepared, binary ``SELECT``; nothing waits for a write in flight, MVCC),
   one write connection serialized by a lock, and, for a writer, one lease
   connection used by the lease's renewal thread.  No server-side cursor
   outlives a call: scans page by key range (``WHERE k > last ORDER BY k
   LIMIT n``).
2. **Snapshots.**  A scan first asks for a small page in one statement (one
   statement is one snapshot); when the range holds more, it reads it again,
   page by page, inside one ``REPEATABLE READ, READ ONLY`` transaction on its
   pooled connection.  :meth:`snapshot` holds such a transaction open on a
   connection of its own (rule 9); calls on it take turns under a lock.
3. **Batches.**  ``write`` is one transaction: the lease fence, the deletes
   (``= ANY``), the puts (``INSERT ... SELECT * FROM unnest(...) ON CONFLICT
   DO UPDATE``, keys deduplicated, last wins, binary parameters), ``COMMIT``.
   Losing the connection before ``COMMIT`` was sent leaves nothing
   (:class:`StoreIOError`, "not applied"); during ``COMMIT`` the outcome is
   unknown (:class:`StoreIOError`, "may or may not").  Never half.  A batch of
   puts only, in one statement's worth, is sent as one statement that is its
   own transaction: the fence as a data-modifying ``WITH`` and the upsert
   conditional on it (one round trip; losing the connection during it leaves
   the outcome unknown, as during a ``COMMIT``).
4. **One writer: the lease row** (DESIGN §2.1).  A writable open takes the row
   by compare-and-set on ``(holder, generation)``: inserting it, or taking it
   over when it has expired by the *server's* clock (``now()``), with the
   generation incremented.  Every batch's transaction starts with ``UPDATE
   lease SET expires = now() + L WHERE holder = me AND generation = mine``
   and rolls back unless it matched one row (fencing), so a writer that lost
   the lease can never commit.  The update also renews the lease; a
   background thread renews it every ``L/4`` while the store is idle.  The
   holder counts its lease from *before* each successful renewal on its own
   monotonic clock and steps down (refuses to write; sticky) once ``3L/4``
   have passed without one, before the server can consider it expired.
   Closing releases the row (``expires = now()``).
5. **Advisory lock (PostgreSQL only, an accelerator).**  The lease connection
   also holds a session advisory lock derived from the table, and the lease
   row records that it does.  A contender that gets the lock while the row
   says so knows that the holder's session is gone (a killed process), so it
   may take over a lease that has not expired yet; one that does not get it
   is refused at once.  Safety never rests on it (CockroachDB has none):
   fencing (4) holds either way.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

try:
    import psycopg
    from psycopg import errors as pgerrors
    from psycopg import sql as pgsql
except ImportError:  # pragma: no cover - depends on the installation
    raise ImportError(
        "postgresql:// locations need psycopg 3: pip install 'persist-store[postgresql]'"
    ) from None

from ..errors import (
    ClosedError,
    NotAStore,
    PersistError,
    StoreError,
    StoreIOError,
    StoreNotFound,
)
from ._postgres_lease import WriterLease
from ._postgres_sql import (
    BEGIN_SNAPSHOT,
    COLUMNS,
    DEFAULT_TABLE,
    KV_COLUMNS,
    LEASE_COLUMNS,
    LEASE_SUFFIX,
    PostgresLocation,
    Session,
    Statements,
    advisory_key,
    cause,
    engine_of,
    is_disconnect,
    parse_postgres_location,
    translate,
)
from .base import Snapshot, Store

__all__ = [
    "DEFAULT_LEASE_SECONDS",
    "DEFAULT_MAX_READERS",
    "DEFAULT_TABLE",
    "PostgreSQLStore",
    "PostgresLocation",
    "parse_postgres_location",
]

#: Seconds a lease lasts on the server past its last renewal.
DEFAULT_LEASE_SECONDS = 20.0
#: Rows of the one-statement first page of a scan; a larger range is re-read in a transaction.
_PROBE_ROWS = 32
_PAGE_ROWS = 1000
#: Bytes of puts per INSERT statement; a larger batch takes several, in one transaction.
_CHUNK_BYTES = 32 << 20
#: Read connections a store opens at most (servers default to 100 connections in all);
#: a read finding them all busy waits up to ``_POOL_WAIT`` seconds for one.
DEFAULT_MAX_READERS = 16
_POOL_WAIT = 30.0
#: Seconds ``compact`` waits for the table's exclusive lock before it settles for less.
_COMPACT_LOCK_WAIT = 5.0

_log = logging.getLogger("persist.kvs")


class PostgreSQLStore(Store):
    """A store in one table of a PostgreSQL (or wire-compatible) server."""

    def __init__(
        self,
        location: str,
        *,
        durable: bool = True,
        read_only: bool = False,
        create: bool = True,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        advisory_lock: bool = True,
        max_readers: int = DEFAULT_MAX_READERS,
    ) -> None:
        self._where = parse_postgres_location(location)
        super().__init__(self._where.location, durable=durable, read_only=read_only)
        if lease_seconds <= 0:
            raise ValueError("lease_seconds must be positive")
        if max_readers < 1:
            raise ValueError("max_readers must be at least 1")
        self._sql = Statements(self._where.table)
        self._max_readers = max_readers
        self._pool_lock = threading.Condition(threading.Lock())
        self._idle: list[Session] = []
        self._sessions: set[Session] = set()
        self._opening = 0  # connections being opened, counted against max_readers
        self._write_lock = threading.Lock()
        self._writer: Session | None = None
        self._lease: WriterLease | None = None
        self._lease_seconds = lease_seconds
        self._use_advisory = advisory_lock
        self._snapshots: set[_PostgresSnapshot] = set()
        self.engine = "postgresql"
        try:
            self._open(create=create and not read_only)
        except BaseException:
            self._close()
            raise

    # -- opening ---------------------------------------------------------------

    def _connect(self, purpose: str) -> psycopg.Connection[Any]:
        try:
            given = psycopg.conninfo.conninfo_to_dict(self._where._conninfo)
            # pg_stat_activity shows which store and role each connection serves.
            name = f"persist {purpose} {self._where.table}"[:63]
            defaults = {"application_name": name, "connect_timeout": "10"}
            extra = {k: v for k, v in defaults.items() if k not in given}
            conninfo = psycopg.conninfo.make_conninfo(self._where._conninfo, **extra)
            # Only the statements given prepare=True are prepared (the hot ones).
            return psycopg.connect(conninfo, autocommit=True, prepare_threshold=None)
        except psycopg.Error as exc:
            raise self._connect_error(exc) from cause(exc, self._where)

    def _connect_error(self, exc: psycopg.Error) -> PersistError:
        if isinstance(exc, psycopg.ProgrammingError):  # libpq could not parse the URI
            message = self._where.scrub(str(exc)).strip()
            return StoreError(f"invalid PostgreSQL location {self.location}: {message}")
        if isinstance(exc, pgerrors.InvalidCatalogName):
            return StoreNotFound(f"no store at {self.location}: the database does not exist")
        if isinstance(exc, pgerrors.OperationalError) and "does not exist" in str(exc):
            return StoreNotFound(
                f"no store at {self.location}: {self._where.scrub(str(exc)).strip()}"
            )
        translated = translate(exc, self._where, "connecting")
        if type(translated) is StoreIOError:
            return StoreIOError(
                f"cannot connect to the server of store {self.location}: "
                f"{self._where.scrub(str(exc)).strip()}"
            )
        return translated

    def _open(self, *, create: bool) -> None:
        session = self._acquire()
        try:
            conn = session.conn
            version = str(self._fetch(conn, "SELECT version()")[0][0])
            self.engine = engine_of(version)
            schema = str(self._fetch(conn, "SELECT current_schema()")[0][0] or "")
            kv, lease = self._columns(conn)
            if kv is None:
                if not create:
                    raise StoreNotFound(f"no store at {self.location}")
                self._create(conn)
                kv, lease = self._columns(conn)
            if kv != KV_COLUMNS:
                raise NotAStore(
                    f"table {self._where.table!r} at {self.location} is not a persist store "
                    f"(columns {kv})"
                )
            if not self.read_only:
                if lease is None:
                    self._ddl(conn, self._sql.create_lease)
                    lease = self._columns(conn)[1]
                if lease != LEASE_COLUMNS:
                    raise NotAStore(
                        f"table {self._where.table + LEASE_SUFFIX!r} at {self.location} is not a "
                        f"persist lease table (columns {lease})"
                    )
        except psycopg.Error as exc:
            session.close()
            raise translate(exc, self._where, "opening") from cause(exc, self._where)
        except BaseException:
            session.close()
            raise
        self._release(session)
        if not self.read_only:
            key = None
            if self._use_advisory and self.engine == "postgresql":
                key = advisory_key(schema, self._where.table)
            self._lease = WriterLease(
                self._where,
                self._sql,
                functools.partial(self._connect, "lease"),
                self._lease_seconds,
                advisory_key=key,
                lock_timeout=self.engine == "postgresql",
            )
            self._lease.acquire()
            self._writer = self._new_writer()

    def _columns(
        self, conn: psycopg.Connection[Any]
    ) -> tuple[list[tuple[str, str]] | None, list[tuple[str, str]] | None]:
        table = self._where.table
        rows = self._fetch(conn, COLUMNS, (table, table + LEASE_SUFFIX))
        kv = [(str(c), str(d)) for t, c, d in rows if t == table]
        lease = [(str(c), str(d)) for t, c, d in rows if t != table]
        return kv or None, lease or None

    def _ddl(self, conn: psycopg.Connection[Any], statement: str) -> None:
        # UniqueViolation: another opener created it at the same moment.
        with contextlib.suppress(pgerrors.UniqueViolation, pgerrors.DuplicateTable):
            conn.execute(statement)

    def _create(self, conn: psycopg.Connection[Any]) -> None:
        self._ddl(conn, self._sql.create)
        if self.engine == "postgresql":  # ciphertext does not compress; others have no TOAST
            conn.execute(self._sql.storage)
        self._ddl(conn, self._sql.create_lease)

    @staticmethod
    def _fetch(
        conn: psycopg.Connection[Any], statement: str, params: tuple[Any, ...] = ()
    ) -> list[tuple[Any, ...]]:
        return list(conn.execute(statement, params).fetchall())

    def _new_writer(self) -> Session:
        conn = self._connect("write")
        try:
            if self.engine == "postgresql":
                current = str(self._fetch(conn, "SHOW synchronous_commit")[0][0])
                if not self.durable:
                    conn.execute("SET synchronous_commit = off")
                elif current == "off":
                    conn.execute("SET synchronous_commit = on")
        except psycopg.Error as exc:
            conn.close()
            raise translate(exc, self._where, "opening") from cause(exc, self._where)
        return Session(conn)

    # -- the read pool -------------------------------------------------------------

    def _new_session(self) -> Session:
        """A new pooled connection; its place in the pool is already counted."""
        try:
            session = Session(self._connect("read"))
        except BaseException:
            with self._pool_lock:
                self._opening -= 1
                self._pool_lock.notify()
            raise
        with self._pool_lock:
            self._opening -= 1
            if not self._closed:
                self._sessions.add(session)
                return session
        session.close()
        raise ClosedError(f"store {self.location} is closed")

    def _acquire(self) -> Session:
        deadline = time.monotonic() + _POOL_WAIT
        with self._pool_lock:
            while True:
                if self._closed:
                    raise ClosedError(f"store {self.location} is closed")
                if self._idle:
                    session = self._idle.pop()
                    session.used = True
                    return session
                if len(self._sessions) + self._opening < self._max_readers:
                    self._opening += 1
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StoreIOError(
                        f"all {self._max_readers} read connections of store {self.location} "
                        f"stayed busy for {_POOL_WAIT:g} s (open snapshots, unfinished scans?)"
                    )
                self._pool_lock.wait(left)
        return self._new_session()

    def _release(self, session: Session) -> None:
        conn = session.conn
        healthy = not (conn.broken or conn.closed)
        if healthy and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            try:
                conn.execute("ROLLBACK")
            except psycopg.Error:
                healthy = False
        with self._pool_lock:
            self._pool_lock.notify()
            if healthy and not self._closed:
                self._idle.append(session)
                return
            self._sessions.discard(session)
        session.close()

    def _read(self, doing: str, call: Any) -> Any:
        """Run ``call(conn)`` on a pooled connection; retry once on a stale one."""
        for attempt in (1, 2):
            session = self._acquire()
            try:
                with session.lock:
                    if session.conn.closed:
                        raise ClosedError(f"store {self.location} is closed")
                    return call(session.conn)
            except psycopg.Error as exc:
                if self._closed:
                    raise ClosedError(f"store {self.location} is closed") from exc
                if attempt == 1 and session.used and is_disconnect(exc, session.conn):
                    continue  # the pooled connection died while idle: the read never ran
                raise translate(exc, self._where, doing) from cause(exc, self._where)
            finally:
                self._release(session)
        raise AssertionError("unreachable")

    # -- operations ----------------------------------------------------------------

    def _get(self, key: bytes) -> bytes | None:
        statement = self._sql.get

        def call(conn: psycopg.Connection[Any]) -> bytes | None:
            row = conn.execute(statement, (key,), prepare=True, binary=True).fetchone()
            return None if row is None else bytes(row[0])

        result: bytes | None = self._read("a read", call)
        return result

    def _page(
        self,
        conn: psycopg.Connection[Any],
        start: bytes,
        stop: bytes | None,
        after: bool,
        limit: int,
    ) -> list[tuple[bytes, bytes]]:
        sql = self._sql
        if stop is None:
            statement = sql.scan_after if after else sql.scan_from
            params: tuple[Any, ...] = (start, limit)
        else:
            statement = sql.scan_after_to if after else sql.scan_from_to
            params = (start, stop, limit)
        rows = conn.execute(statement, params, prepare=True, binary=True).fetchall()
        return [(bytes(k), bytes(v)) for k, v in rows]

    def _scan(self, start: bytes, stop: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        first: list[tuple[bytes, bytes]] = self._read(
            "a scan", lambda conn: self._page(conn, start, stop, False, _PROBE_ROWS)
        )
        if len(first) < _PROBE_ROWS:  # the whole range in one statement: one snapshot
            yield from first
            return
        yield from self._paged_scan(start, stop)

    def _paged_scan(self, start: bytes, stop: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        session = self._acquire()
        try:
            with session.lock:
                try:
                    session.conn.execute(BEGIN_SNAPSHOT)
                except psycopg.Error as exc:
                    raise self._error(exc, "a scan") from cause(exc, self._where)
            cursor, after = start, False
            while True:
                with session.lock:
                    if self._closed or session.conn.closed:
                        raise ClosedError(f"store {self.location} was closed during a scan")
                    try:
                        rows = self._page(session.conn, cursor, stop, after, _PAGE_ROWS)
                    except psycopg.Error as exc:
                        raise self._error(exc, "a scan") from cause(exc, self._where)
                yield from rows
                if len(rows) < _PAGE_ROWS:
                    return
                cursor, after = rows[-1][0], True
        finally:
            self._release(session)

    def _error(self, exc: psycopg.Error, doing: str) -> PersistError:
        if self._closed:
            return ClosedError(f"store {self.location} is closed")
        return translate(exc, self._where, doing)

    def _snapshot(self) -> Snapshot:
        session = self._acquire()
        try:
            with session.lock:
                session.conn.execute(BEGIN_SNAPSHOT)
                # The snapshot is taken by the transaction's first statement.
                session.conn.execute(self._sql.get, (b"",), prepare=True, binary=True).fetchall()
        except psycopg.Error as exc:
            self._release(session)
            raise self._error(exc, "taking a snapshot") from cause(exc, self._where)
        snap = _PostgresSnapshot(self, session)
        with self._pool_lock:
            self._snapshots.add(snap)
        return snap

    def _transaction(
        self, doing: str, body: Any, *, puts: tuple[list[bytes], list[bytes]] | None = None
    ) -> Any:
        """Run ``body(conn)`` in one fenced write transaction on the write connection;
        or, given only ``puts`` (one chunk, no deletes), the one fenced upsert statement
        that is its own transaction (one round trip instead of four)."""
        with self._write_lock:
            lease = self._lease
            if self._closed or lease is None:
                raise ClosedError(f"store {self.location} is closed")
            lease.check()
            session = self._writer
            if session is None or session.conn.broken or session.conn.closed:
                if session is not None:
                    session.close()
                self._writer = session = self._new_writer()
            conn, committing = session.conn, False
            started = time.monotonic()
            try:
                with session.lock:
                    if puts is not None:
                        committing = True  # it commits as it ends
                        params = (*lease.fence_params(), *puts)
                        done = conn.execute(self._sql.fenced_upsert, params, prepare=True)
                        if done.rowcount != len(puts[0]):  # the fence matched no row
                            lease.lose("another writer took over the lease")
                            lease.check()
                        result = None
                    else:
                        conn.execute("BEGIN")
                        fence = conn.execute(self._sql.fence, lease.fence_params(), prepare=True)
                        if fence.rowcount != 1:
                            conn.execute("ROLLBACK")
                            lease.lose("another writer took over the lease")
                            lease.check()
                        result = body(conn)
                        committing = True
                        conn.execute("COMMIT")
            except psycopg.Error as exc:
                raise self._write_error(exc, session, doing, committing) from cause(
                    exc, self._where
                )
            except BaseException:
                with contextlib.suppress(psycopg.Error), session.lock:
                    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                        conn.execute("ROLLBACK")
                raise
            lease.renewed(started)
            return result

    def _write_error(
        self, exc: psycopg.Error, session: Session, doing: str, committing: bool
    ) -> PersistError:
        conn = session.conn
        if not (conn.broken or conn.closed):
            with contextlib.suppress(psycopg.Error):
                if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    conn.execute("ROLLBACK")
        if self._closed:
            return self._error(exc, doing)
        if is_disconnect(exc, conn):
            outcome = "it may or may not have been applied" if committing else "it was not applied"
            error: PersistError = StoreIOError(
                f"lost the connection to the server of store {self.location} during {doing}: "
                f"{outcome} ({self._where.scrub(str(exc).strip() or type(exc).__name__)})"
            )
            return error
        return translate(exc, self._where, doing)

    def _write(self, puts: Iterator[tuple[bytes, bytes]], deletes: list[bytes]) -> None:
        batch = dict(puts)  # deduplicated, last wins; a bad pair raises before any SQL
        gone = list(dict.fromkeys(deletes))
        if not batch and not gone:
            return
        sql, chunks = self._sql, list(_chunks(batch))
        if not gone and len(chunks) == 1:
            self._transaction("a write", None, puts=chunks[0])
            return

        def body(conn: psycopg.Connection[Any]) -> None:
            if gone:
                conn.execute(sql.delete, (gone,), prepare=True)
            for keys, values in chunks:
                conn.execute(sql.upsert, (keys, values), prepare=True)

        self._transaction("a write", body)

    def _write_if(
        self,
        key: bytes,
        expected: bytes | None,
        puts: Iterator[tuple[bytes, bytes]],
        deletes: list[bytes],
    ) -> bool:
        """The check and the batch in one fenced transaction (contract rule 11); this
        handle's writes are serialized and the lease keeps every other writer out."""
        batch = dict(puts)
        gone = list(dict.fromkeys(deletes))
        sql, chunks = self._sql, list(_chunks(batch))

        def body(conn: psycopg.Connection[Any]) -> bool:
            row = conn.execute(sql.get, (key,), binary=True).fetchone()
            if (None if row is None else bytes(row[0])) != expected:
                return False
            if gone:
                conn.execute(sql.delete, (gone,), prepare=True)
            for keys, values in chunks:
                conn.execute(sql.upsert, (keys, values), prepare=True)
            return True

        done: bool = self._transaction("a conditional write", body)
        return done

    def _compare_and_set(self, key: bytes, expected: bytes | None, new: bytes | None) -> bool:
        sql = self._sql

        def body(conn: psycopg.Connection[Any]) -> bool:
            if expected is None and new is None:
                return conn.execute(sql.get, (key,), binary=True).fetchone() is None
            if expected is None:
                cur = conn.execute(sql.cas_insert, (key, new))
            elif new is None:
                cur = conn.execute(sql.cas_delete, (key, expected))
            else:
                cur = conn.execute(sql.cas_update, (new, key, expected))
            return cur.rowcount == 1

        done: bool = self._transaction("a compare-and-set", body)
        return done

    # -- compaction ------------------------------------------------------------------

    def compact(self) -> None:
        """Drop what the server still keeps of deleted and overwritten rows, where it can.

        Called after a master-key rotation (docs/security.md).  On PostgreSQL:
        ``VACUUM FULL`` of the table, which writes it anew and unlinks the old
        files; it needs the table's exclusive lock, and waits for it at most
        :data:`_COMPACT_LOCK_WAIT` seconds (open snapshots and scans, of any
        handle, hold a shared one), then falls back to a plain ``VACUUM``,
        which frees the dead rows' space for reuse without erasing it.  What the
        server's WAL, standbys and backups hold is beyond a client's reach
        (docs/kvs.md).  Elsewhere nothing: CockroachDB and YugabyteDB collect old
        versions themselves.
        """
        self._check_open()
        if self.read_only or self.engine != "postgresql":
            return
        table = pgsql.Identifier(self._where.table)
        with self._write_lock:
            session = self._writer
            if session is None or self._closed:
                raise ClosedError(f"store {self.location} is closed")
            with session.lock:
                conn = session.conn
                try:
                    wait = f"SET lock_timeout = {int(_COMPACT_LOCK_WAIT * 1000)}"
                    conn.execute(wait)
                    try:
                        conn.execute(pgsql.SQL("VACUUM FULL {}").format(table))
                    except pgerrors.LockNotAvailable:
                        _log.warning(
                            "store %s: VACUUM FULL waited %g s for the table's lock (open "
                            "snapshots or scans); a plain VACUUM runs instead",
                            self.location,
                            _COMPACT_LOCK_WAIT,
                        )
                        conn.execute(pgsql.SQL("VACUUM {}").format(table))
                    finally:
                        conn.execute("RESET lock_timeout")
                except pgerrors.InsufficientPrivilege:
                    _log.warning("store %s: not allowed to vacuum its table", self.location)
                except psycopg.Error as exc:
                    raise self._error(exc, "compacting") from cause(exc, self._where)

    # -- closing -------------------------------------------------------------------

    def _close(self) -> None:
        self._closed = True
        with self._pool_lock:
            snapshots, self._snapshots = list(self._snapshots), set()
            sessions, self._sessions, self._idle = list(self._sessions), set(), []
            self._pool_lock.notify_all()  # a read waiting for a connection: it is closed
        for snap in snapshots:
            snap._detach()
        for session in sessions:
            session.close()
        with self._write_lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
        if self._lease is not None:
            self._lease.close()  # releases the row last: no batch can follow it

    def holds_lease(self) -> bool:
        """Whether this writable handle may still write (DESIGN §2.1: it has not
        stepped down, by its own clock or because another writer took over)."""
        return self._lease is not None and not self._closed and self._lease.holds()


def _chunks(batch: dict[bytes, bytes]) -> Iterator[tuple[list[bytes], list[bytes]]]:
    """The puts as (keys, values) arrays of at most about :data:`_CHUNK_BYTES`."""
    keys: list[bytes] = []
    values: list[bytes] = []
    size = 0
    for key, value in batch.items():
        keys.append(key)
        values.append(value)
        size += len(key) + len(value) + 16
        if size >= _CHUNK_BYTES:
            yield keys, values
            keys, values, size = [], [], 0
    if keys:
        yield keys, values


class _PostgresSnapshot(Snapshot):
    """A pooled connection held in one ``REPEATABLE READ, READ ONLY`` transaction."""

    def __init__(self, store: PostgreSQLStore, session: Session) -> None:
        super().__init__(store)
        self._pg = store
        self._session: Session | None = session

    def _call(self, doing: str, call: Any) -> Any:
        session = self._session
        if session is None:
            raise ClosedError(f"the snapshot of {self.location} is closed")
        with session.lock:
            if self._session is None or session.conn.closed:
                raise ClosedError(f"the snapshot of {self.location} is closed")
            try:
                return call(session.conn)
            except psycopg.Error as exc:
                raise self._pg._error(exc, doing) from cause(exc, self._pg._where)

    def _get(self, key: bytes) -> bytes | None:
        statement = self._pg._sql.get

        def call(conn: psycopg.Connection[Any]) -> bytes | None:
            row = conn.execute(statement, (key,), prepare=True, binary=True).fetchone()
            return None if row is None else bytes(row[0])

        result: bytes | None = self._call("a snapshot read", call)
        return result

    def _scan(self, start: bytes, stop: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        page = self._pg._page
        cursor, after = start, False
        while True:
            rows: list[tuple[bytes, bytes]] = self._call(
                "a snapshot scan",
                functools.partial(page, start=cursor, stop=stop, after=after, limit=_PAGE_ROWS),
            )
            yield from rows
            if len(rows) < _PAGE_ROWS:
                return
            cursor, after = rows[-1][0], True

    def _detach(self) -> None:
        """The store is closing: its sessions are closed by it."""
        self._session = None

    def _close(self) -> None:
        session, self._session = self._session, None
        with self._pg._pool_lock:
            self._pg._snapshots.discard(self)
        if session is not None:
            self._pg._release(session)
