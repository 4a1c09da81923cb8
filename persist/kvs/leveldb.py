"""The LevelDB backend through plyvel.

A batch is one ``WriteBatch``, written with ``sync=True`` when durable, which
LevelDB applies atomically (its log record is all or nothing).  Scans use an
iterator over an implicit snapshot.  LevelDB's own ``LOCK`` file gives the
single-writer rule, across processes and within one.

LevelDB has no read-only mode that coexists with a writer: a read-only handle
still takes the lock (so it raises ``StoreLocked`` while a writer is open) and
refuses writes itself.  This is documented in ``docs/kvs.md``.

plyvel releases the GIL inside its calls, so closing the database while another
thread is inside ``get`` would free memory under it.  Every call therefore
registers as in flight, and ``close`` waits until none is.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Iterator
from typing import Any

from ..errors import (
    ClosedError,
    CorruptStore,
    NotAStore,
    StoreFull,
    StoreIOError,
    StoreLocked,
    StoreNotFound,
)
from .base import Snapshot, Store

try:  # plyvel has no wheels for Python 3.13+; its maintained fork has
    import plyvel
except ImportError:  # pragma: no cover - depends on the interpreter
    try:
        import plyvel_next as plyvel
    except ImportError:
        raise ImportError(
            "leveldb:// locations need the LevelDB driver: pip install 'persist-store[leveldb]'"
        ) from None

__all__ = ["LevelDBStore"]


class _InFlight:
    """Counts calls into the database so that close can wait for them."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._count = 0
        self.closing = False

    @contextlib.contextmanager
    def enter(self, location: str) -> Iterator[None]:
        with self._cond:
            if self.closing:
                raise ClosedError(f"store {location} is closed")
            self._count += 1
        try:
            yield
        finally:
            with self._cond:
                self._count -= 1
                if self._count == 0:
                    self._cond.notify_all()

    def drain(self) -> None:
        with self._cond:
            self.closing = True
            while self._count:
                self._cond.wait()


def _looks_like_leveldb(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "CURRENT"))


#: What LevelDB writes into a new directory before its CURRENT file, which makes it
#: a database: the lock, the info log, the first manifest, CURRENT's temporary file.
_CREATION_DEBRIS = re.compile(r"LOCK|LOG|LOG\.old|MANIFEST-[0-9]+|[0-9]+\.dbtmp")


def _foreign_directory(path: str) -> bool:
    """A non-empty directory that is no LevelDB store, not even an unfinished one.

    A directory holding only what a creation killed before CURRENT leaves is no
    store for a reader and one to create for a writer (LevelDB does that)."""
    if not os.path.isdir(path) or _looks_like_leveldb(path):
        return False
    return not all(_CREATION_DEBRIS.fullmatch(n) for n in os.listdir(path))


class LevelDBStore(Store):
    def __init__(
        self, path: str, *, durable: bool = True, read_only: bool = False, create: bool = True
    ) -> None:
        super().__init__(f"leveldb://{path}", durable=durable, read_only=read_only)
        self._path = path
        self._inflight = _InFlight()
        self._write_lock = threading.Lock()
        if os.path.exists(path) and not os.path.isdir(path):
            raise NotAStore(f"{self.location} is a file, not a LevelDB directory")
        if _foreign_directory(path):
            raise NotAStore(f"{self.location} is a directory that is not a LevelDB store")
        if (read_only or not create) and not _looks_like_leveldb(path):
            raise StoreNotFound(f"no store at {self.location}")
        if not os.path.isdir(os.path.dirname(path.rstrip("/")) or "/"):
            raise StoreNotFound(f"cannot create store {self.location}: no such directory")
        try:
            # No paranoid_checks: a power cut can leave the last, unsynced log
            # record torn, and LevelDB's recovery drops such a tail by default.
            # paranoid_checks refuses to open instead, although nothing
            # acknowledged was lost; persist's own authentication (AEAD, the
            # root) judges what remains (docs/kvs.md, "Crash safety").
            self._db = plyvel.DB(path, create_if_missing=not read_only and create)
        except plyvel.IOError as exc:
            if "lock" in str(exc):
                raise StoreLocked(f"store {self.location} is open for writing elsewhere") from None
            raise StoreIOError(f"cannot open store {self.location}: {exc}") from exc
        except plyvel.CorruptionError as exc:
            raise CorruptStore(f"LevelDB reports store {self.location} as corrupt") from exc
        except plyvel.Error as exc:
            raise StoreIOError(f"cannot open store {self.location}: {exc}") from exc

    def _get(self, key: bytes) -> bytes | None:
        with self._inflight.enter(self.location), self._translated():
            return self._db.get(key)  # type: ignore[no-any-return]

    def _scan(self, start: bytes, stop: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        with self._inflight.enter(self.location), self._translated():
            it = self._db.iterator(start=start, stop=stop)
        try:
            while True:
                with self._inflight.enter(self.location), self._translated():
                    item = next(it, None)
                if item is None:
                    return
                yield item
        finally:
            with contextlib.suppress(Exception):
                it.close()

    def _write(self, puts: Iterator[tuple[bytes, bytes]], deletes: list[bytes]) -> None:
        self._write_if(None, None, puts, deletes)

    def _write_if(
        self,
        key: bytes | None,
        expected: bytes | None,
        puts: Iterator[tuple[bytes, bytes]],
        deletes: list[bytes],
    ) -> bool:
        # The write lock serializes this handle's writes, and LevelDB's LOCK file
        # keeps out every other handle: nothing can land between check and batch.
        with self._write_lock, self._inflight.enter(self.location), self._translated():
            if key is not None and self._db.get(key) != expected:
                for _ in puts:  # consume, so that bad pairs still raise
                    pass
                return False
            batch = self._db.write_batch(sync=self.durable)
            for key in deletes:
                batch.delete(key)
            for k, value in puts:  # may raise: then the batch is dropped unwritten
                batch.put(k, value)
            batch.write()
            return True

    def _snapshot(self) -> Snapshot:
        with self._inflight.enter(self.location), self._translated():
            return _LevelDBSnapshot(self, self._db.snapshot())

    def _compare_and_set(self, key: bytes, expected: bytes | None, new: bytes | None) -> bool:
        # Every write of this handle takes the write lock, and LevelDB's own
        # LOCK file keeps every other handle out: the read and the write below
        # cannot be separated by another write.
        with self._write_lock, self._inflight.enter(self.location), self._translated():
            if self._db.get(key) != expected:
                return False
            if new is None:
                self._db.delete(key, sync=self.durable)
            else:
                self._db.put(key, new, sync=self.durable)
            return True

    def compact(self) -> None:
        """Rewrite the whole key range, dropping deleted and overwritten versions.

        Called after a master-key rotation so that rows under the old key leave
        the table and log files (docs/security.md).
        """
        self._check_open()
        with self._write_lock, self._inflight.enter(self.location), self._translated():
            self._db.compact_range()

    @property
    def canonical_location(self) -> str:
        return "leveldb://" + os.path.realpath(self._path)

    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except plyvel.CorruptionError as exc:
            raise CorruptStore(f"LevelDB reports store {self.location} as corrupt") from exc
        except plyvel.IOError as exc:
            if "No space left" in str(exc):
                raise StoreFull(
                    f"store {self.location} is full: the batch was not written"
                ) from exc
            raise StoreIOError(f"I/O error on store {self.location}: {exc}") from exc
        except RuntimeError as exc:  # plyvel: "Database is closed" / closed iterator
            if self._closed:
                raise ClosedError(f"store {self.location} is closed") from exc
            raise

    def _close(self) -> None:
        self._inflight.drain()
        self._db.close()


class _LevelDBSnapshot(Snapshot):
    """A LevelDB snapshot: thread-safe, and as fast to read as the database."""

    def __init__(self, store: LevelDBStore, snap: Any) -> None:
        super().__init__(store)
        self._leveldb = store
        self._snap = snap

    def _get(self, key: bytes) -> bytes | None:
        store = self._leveldb
        with store._inflight.enter(self.location), store._translated():
            return self._snap.get(key)  # type: ignore[no-any-return]

    def _scan(self, start: bytes, stop: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        store = self._leveldb
        with store._inflight.enter(self.location), store._translated():
            it = self._snap.iterator(start=start, stop=stop)
        try:
            while True:
                with store._inflight.enter(self.location), store._translated():
                    item = next(it, None)
                if item is None:
                    return
                yield item
        finally:
            with contextlib.suppress(Exception):
                it.close()

    def _close(self) -> None:
        store = self._leveldb
        with contextlib.suppress(ClosedError), store._inflight.enter(self.location):
            self._snap.close()
