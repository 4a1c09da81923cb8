"""The writer's lease of a PostgreSQL store: one row, taken by compare-and-set (DESIGN §2.1).

The row ``(id = 1, holder, generation, expires)`` lives in ``<table>_lease``.

* **Taking it** (at a writable open): insert the row if there is none, else
  take it over -- ``generation + 1`` -- if it has expired by the *server's*
  clock, each as a compare-and-set on what was read.  Otherwise
  :class:`~persist.errors.StoreLocked`, at once.
* **Fencing**: every write transaction of the store starts with the
  statement :attr:`Statements.fence` -- ``UPDATE ... SET expires = now() + L
  WHERE holder = me AND generation = mine`` -- and rolls back unless it
  matched one row.  The row lock it takes is held to the commit, so a
  takeover waits for a batch in flight and every later batch of the old
  holder matches nothing.  This alone makes a stale writer harmless.
* **Renewing**: the fence renews; a thread renews every ``L/4`` as well.
* **Stepping down**: a renewal that began at monotonic time ``t`` and
  succeeded proves the server will not let the lease go before ``t + L`` by
  its clock.  The holder writes only until ``t + 3L/4`` by its own monotonic
  clock, so it stops before the server can expire it, as long as the two
  clocks do not drift apart by a quarter of L within one lease period (the
  clock assumption, docs/kvs.md).  Once it stopped, the handle never writes
  again (sticky): reopen.
* **Advisory lock** (PostgreSQL only): the lease connection holds
  ``pg_try_advisory_lock(key of the table)``, and the row's ``locked`` says
  so.  Not getting the lock refuses the open at once.  Getting it while the
  row says ``locked`` proves that the holder's session is gone (its process
  was killed), so the open may take over the unexpired lease at once.  A
  holder without the lock (``locked = false``: an engine without advisory
  locks, or ``advisory_lock=False``) keeps its lease until it expires.
  Correctness never depends on the lock: fencing holds either way.
* **Releasing** (close): ``expires = now()``, then the advisory unlock.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import errors as pgerrors

from ..errors import PersistError, StoreIOError, StoreLocked
from ._postgres_sql import PostgresLocation, Session, Statements, cause, translate

__all__ = ["WriterLease"]

#: The fraction of the lease the holder uses before it steps down.
_USABLE = 0.75


class WriterLease:
    """This handle's claim on a store's lease row, and the thread that renews it."""

    def __init__(
        self,
        where: PostgresLocation,
        sql: Statements,
        connect: Callable[[], psycopg.Connection[Any]],
        seconds: float,
        *,
        advisory_key: int | None,
        lock_timeout: bool,
    ) -> None:
        self.where = where
        self.seconds = seconds
        self.interval = datetime.timedelta(seconds=seconds)
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self.generation = 0
        self._sql = sql
        self._connect = connect
        self._advisory_key = advisory_key
        self._lock_timeout = lock_timeout
        self._session: Session | None = None
        self._advisory_held = False
        self._deadline = 0.0  # monotonic; the handle writes only before it
        self._lost: str | None = None  # why the handle stepped down (sticky)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the handle's own view ---------------------------------------------------

    def fence_params(self) -> tuple[datetime.timedelta, str, int]:
        """The parameters of :attr:`Statements.fence` for this holder."""
        return self.interval, self.holder, self.generation

    def renewed(self, started: float) -> None:
        """A renewal (or fenced commit) that began at monotonic ``started`` succeeded."""
        with self._lock:
            if self._lost is None:
                self._deadline = max(self._deadline, started + _USABLE * self.seconds)

    def lose(self, why: str) -> None:
        with self._lock:
            if self._lost is None:
                self._lost = why
        self._stop.set()

    def holds(self) -> bool:
        """Whether this handle may still write (it has not stepped down)."""
        with self._lock:
            if self._lost is None and time.monotonic() >= self._deadline:
                self._lost = (
                    f"it was not renewed for {_USABLE * self.seconds:g} s, so it lapsed on this "
                    "handle's own clock"
                )
            return self._lost is None

    def check(self) -> None:
        """Raise StoreLocked unless this handle may still write."""
        if not self.holds():
            raise StoreLocked(
                f"store {self.where.location}: this handle no longer holds the writer's lease "
                f"({self._lost}); nothing more is written through it: reopen the store"
            )

    # -- taking, renewing, releasing -------------------------------------------------

    def _prepare(self, conn: psycopg.Connection[Any]) -> bool:
        """Set the lease connection up; False when another session has the advisory lock."""
        if self._lock_timeout:  # a renewal must not wait past the renewal period for a row lock
            conn.execute(f"SET lock_timeout = {max(1, int(self.seconds * 250))}")
        if self._advisory_key is None:
            return True
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (self._advisory_key,)).fetchone()
        self._advisory_held = bool(row and row[0])
        return self._advisory_held

    def acquire(self) -> None:
        """Take the lease row, or raise StoreLocked; then start renewing it."""
        self._session = Session(self._connect())
        conn, sql, loc = self._session.conn, self._sql, self.where.location
        try:
            if not self._prepare(conn):
                raise StoreLocked(f"store {loc} is open for writing by a live session")
            for _ in range(3):
                started = time.monotonic()
                row = conn.execute(sql.lease_read).fetchone()
                if row is None:
                    insert = (self.holder, self.interval, self._advisory_held)
                    if conn.execute(sql.lease_insert, insert).rowcount:
                        self.generation = 1
                        self.renewed(started)
                        break
                    continue  # another opener inserted it first: read it again
                holder, generation, expires, expired, locked = row
                # The holder held the advisory lock, and now we do: its session is gone.
                if not (expired or (locked and self._advisory_held)):
                    until = f"{expires:%Y-%m-%d %H:%M:%S %Z}"
                    raise StoreLocked(
                        f"store {loc} is open for writing by {holder} (lease generation "
                        f"{generation}, until {until} server time)"
                    )
                take = (self.holder, self.interval, self._advisory_held, holder, generation)
                taken = conn.execute(sql.lease_take, take).fetchone()
                if taken is not None:
                    self.generation = int(taken[0])
                    self.renewed(started)
                    break
            else:
                raise StoreLocked(f"store {loc}: another writer is taking the lease")
        except psycopg.Error as exc:
            raise translate(exc, self.where, "taking the lease") from cause(exc, self.where)
        self._thread = threading.Thread(
            target=self._run, name=f"persist-lease {self.where.table}", daemon=True
        )
        self._thread.start()

    def renew(self) -> None:
        """One renewal on the lease connection; StoreLocked when the lease was taken."""
        session = self._session
        if session is None:
            return
        with session.lock:
            try:
                if session.conn.broken or session.conn.closed:
                    self._advisory_held = False
                    session.conn = self._connect()  # its advisory lock went with the old one
                    if not self._prepare(session.conn):
                        raise StoreLocked(f"another session holds {self.where.location}")
                started = time.monotonic()
                cur = session.conn.execute(self._sql.fence, self.fence_params())
            except pgerrors.LockNotAvailable as exc:  # lock_timeout: not renewed this time
                raise StoreIOError(f"the lease row of {self.where.location} is locked") from exc
            except psycopg.Error as exc:
                error = translate(exc, self.where, "renewing the lease")
                raise error from cause(exc, self.where)
        if cur.rowcount != 1:
            raise StoreLocked(f"another writer took over the lease of {self.where.location}")
        self.renewed(started)

    def _run(self) -> None:
        while not self._stop.wait(self.seconds / 4):
            try:
                self.renew()
            except StoreLocked as exc:
                self.lose(str(exc))
            except PersistError:
                pass  # the server is unreachable: try again; the deadline decides
            self.holds()

    def close(self) -> None:
        """Stop renewing, release the row and the advisory lock, close the connection."""
        self._stop.set()
        session, thread = self._session, self._thread
        if session is None:
            return
        if thread is not None and thread.is_alive():
            with contextlib.suppress(psycopg.Error):
                session.conn.cancel_safe(timeout=5)  # a renewal waiting on a row lock
            thread.join(timeout=10)
        with session.lock, contextlib.suppress(psycopg.Error):
            conn = session.conn
            if not (conn.broken or conn.closed):
                if self.generation:
                    conn.execute(self._sql.lease_release, (self.holder, self.generation))
                # Closing the connection ends the advisory lock too, but only once the
                # server has noticed; unlock first, so that a reopen at once succeeds.
                if self._advisory_held:
                    conn.execute("SELECT pg_advisory_unlock(%s)", (self._advisory_key,))
                    self._advisory_held = False
        session.close()
        self._session = None

    @property
    def backend_pid(self) -> int | None:
        """The server process of the lease connection (for diagnostics and tests)."""
        session = self._session
        return None if session is None else session.conn.info.backend_pid
