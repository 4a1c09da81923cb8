"""Durable writes from T threads: each thread writes one pair and waits until it is durable.

The systems, all on a fresh store per timed window:

* ``persist-*``: one shared database; each thread does ``t[key] = value`` then
  ``db.commit_wait()``; the multiplexer folds concurrent writes into waves.
* ``persist-mux``: persist's multiplexer alone, over a store whose commit only
  appends a line to a file and syncs it (``fdatasync``): the ceiling that the
  threads, locks, wake-ups and the GIL leave for everything else.
* ``apsw``: the naive SQLite way: a connection per thread (WAL,
  ``synchronous=FULL``, a busy timeout), one autocommitted ``INSERT`` per write.
* ``plyvel``: the naive LevelDB way: one handle (LevelDB allows one per
  process), one ``put(sync=True)`` per write under a process-wide lock, as an
  application that serializes its commits would do.
* ``plyvel-group``: LevelDB's own group commit: ``put(sync=True)`` from every
  thread with no Python lock; LevelDB's writer queue merges concurrent writes.
* ``zodb``: a connection (and transaction manager) per thread, a transaction
  per write into one shared ``OOBTree``; a conflict is retried.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apsw
import plyvel

import persist
from persist.mux import Metrics, Multiplexer

from .peers import RAW_KEY, SQL_SCHEMA
from .workload import KEY_SIZE, SEED, VALUE_SIZE

Write = Callable[[bytes, bytes], None]


class Writers(ABC):
    """A store that several threads write to; :meth:`writer` runs in the thread that uses it."""

    def __init__(self, directory: Path, threads: int) -> None:
        self.directory = directory
        self.threads = threads

    @abstractmethod
    def writer(self) -> Write:
        """A function that writes one pair durably, for the calling thread."""

    def close(self) -> dict[str, Any]:
        """Close; return facts worth reporting (waves, conflicts...)."""
        return {}


def _wave_facts(m: Metrics) -> dict[str, Any]:
    """What the report reads of a multiplexer's metrics."""
    return {
        "waves": m.waves_committed,
        "writes_per_wave": m.writes_per_wave,
        "mean_commit_seconds": m.mean_commit_seconds,
        "leader_waves": m.leader_waves,
    }


class PersistWriters(Writers):
    def __init__(
        self, directory: Path, threads: int, backend: str = "sqlite", freshness: bool = True
    ) -> None:
        super().__init__(directory, threads)
        location = (
            str(directory / "store.db") if backend == "sqlite" else f"leveldb://{directory}/store"
        )
        fresh: Path | bool = directory / "freshness.json" if freshness else False
        self.db = persist.open(location, key=RAW_KEY, freshness=fresh)
        self.table = self.db.table("bench")

    def writer(self) -> Write:
        table, commit_wait = self.table, self.db.commit_wait

        def write(key: bytes, value: bytes) -> None:
            table[key] = value
            commit_wait()

        return write

    def close(self) -> dict[str, Any]:
        m = self.db.metrics()
        self.db.close()
        return _wave_facts(m)


class _SyncOnlyStore:
    """A WaveStore that only appends each wave's size to a file and syncs it.

    With it, the multiplexer's own cost shows: threads, locks, wake-ups and
    the GIL, with no tree, no encryption and the cheapest durable write.
    """

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def commit_wave(self, number: int, changes: Any) -> None:
        os.write(self.fd, f"{number} {sum(map(len, changes.values()))}\n".encode())
        os.fdatasync(self.fd)

    def get(self, table: str, key: bytes) -> bytes | None:
        return None

    def scan(self, table: str, start: Any, stop: Any, reverse: bool) -> Any:
        return iter(())

    def count(self, table: str, pending: Any = None) -> int:
        return 0

    def state(self) -> _SyncOnlyStore:
        return self  # nothing is ever readable: one state serves

    def published(self) -> None:
        pass

    def close(self) -> None:
        os.close(self.fd)


class MuxOnlyWriters(Writers):
    """persist's multiplexer over :class:`_SyncOnlyStore`: its ceiling on this machine."""

    def __init__(self, directory: Path, threads: int) -> None:
        super().__init__(directory, threads)
        self.mux = Multiplexer(_SyncOnlyStore(directory / "waves.log"))

    def writer(self) -> Write:
        put, commit_wait = self.mux.put, self.mux.commit_wait

        def write(key: bytes, value: bytes) -> None:
            put("bench", key, value)
            commit_wait()

        return write

    def close(self) -> dict[str, Any]:
        m = self.mux.metrics()
        self.mux.close()
        return _wave_facts(m)


class ApswWriters(Writers):
    def __init__(self, directory: Path, threads: int) -> None:
        super().__init__(directory, threads)
        self.path = str(directory / "store.db")
        self.conns: list[apsw.Connection] = []
        self.lock = threading.Lock()
        setup = apsw.Connection(self.path)
        setup.execute("PRAGMA journal_mode=WAL").fetchall()
        setup.execute(SQL_SCHEMA)
        setup.close()

    def writer(self) -> Write:
        conn = apsw.Connection(self.path)
        conn.set_busy_timeout(120_000)
        conn.execute("PRAGMA synchronous=FULL")
        with self.lock:
            self.conns.append(conn)

        def write(key: bytes, value: bytes) -> None:
            conn.execute("INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)", (key, value))

        return write

    def close(self) -> dict[str, Any]:
        for conn in self.conns:
            conn.close()
        return {}


class PlyvelWriters(Writers):
    def __init__(self, directory: Path, threads: int, *, group: bool) -> None:
        super().__init__(directory, threads)
        self.ldb = plyvel.DB(str(directory / "store"), create_if_missing=True)
        self.group = group
        self.lock = threading.Lock()

    def writer(self) -> Write:
        put, lock = self.ldb.put, self.lock
        if self.group:
            return lambda key, value: put(key, value, sync=True)

        def write(key: bytes, value: bytes) -> None:
            with lock:
                put(key, value, sync=True)

        return write

    def close(self) -> dict[str, Any]:
        self.ldb.close()
        return {}


class ZodbWriters(Writers):
    def __init__(self, directory: Path, threads: int) -> None:
        super().__init__(directory, threads)
        import transaction
        import ZODB
        import ZODB.FileStorage
        from BTrees.OOBTree import OOBTree

        storage = ZODB.FileStorage.FileStorage(str(directory / "data.fs"))
        self.zdb = ZODB.DB(storage, pool_size=threads + 1)
        tm = transaction.TransactionManager()
        conn = self.zdb.open(tm)
        conn.root()["kv"] = OOBTree()
        tm.commit()
        conn.close()
        self.conflicts = 0
        self.lock = threading.Lock()
        self.conns: list[Any] = []

    def writer(self) -> Write:
        import transaction
        from ZODB.POSException import ConflictError

        tm = transaction.TransactionManager()
        conn = self.zdb.open(tm)
        with self.lock:
            self.conns.append(conn)
        tree = conn.root()["kv"]

        def write(key: bytes, value: bytes) -> None:
            while True:
                try:
                    tree[key] = value
                    tm.commit()
                    return
                except ConflictError:
                    tm.abort()
                    with self.lock:
                        self.conflicts += 1

        return write

    def close(self) -> dict[str, Any]:
        for conn in self.conns:
            conn.close()
        self.zdb.close()
        return {"conflicts": self.conflicts}


#: Systems by id: (label, factory(directory, threads)).
SYSTEMS: dict[str, tuple[str, Callable[[Path, int], Writers]]] = {
    "persist-sqlite": ("persist (SQLite)", lambda d, t: PersistWriters(d, t, "sqlite")),
    "persist-sqlite-nofresh": (
        "persist (SQLite, no freshness record)",
        lambda d, t: PersistWriters(d, t, "sqlite", freshness=False),
    ),
    "persist-leveldb": ("persist (LevelDB)", lambda d, t: PersistWriters(d, t, "leveldb")),
    "persist-mux": ("persist's multiplexer alone (one fdatasync per wave)", MuxOnlyWriters),
    "apsw": ("apsw, connection per thread", ApswWriters),
    "plyvel": ("plyvel, locked put(sync=True)", lambda d, t: PlyvelWriters(d, t, group=False)),
    "plyvel-group": (
        "LevelDB group commit (plyvel, no lock)",
        lambda d, t: PlyvelWriters(d, t, group=True),
    ),
    "zodb": ("ZODB, connection per thread", ZodbWriters),
}


@dataclass
class Window:
    """One timed window: how many durable writes completed in how long."""

    writes: int
    seconds: float
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.writes / self.seconds


def drive(writers: Writers, seconds: float, salt: int = 0) -> Window:
    """Run ``writers.threads`` threads writing for ``seconds``; count durable writes.

    Every thread builds its writer, then all start together; each stops
    starting writes at the deadline, and the window ends when the last one
    has finished its write in flight and the store is closed.
    """
    n = writers.threads
    barrier = threading.Barrier(n + 1)
    counts = [0] * n
    finished = [0.0] * n
    errors: list[BaseException] = []
    deadline = [0.0]

    def work(i: int) -> None:
        try:
            rng = random.Random(SEED * 31 + salt * 1_000 + i)
            write = writers.writer()
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()
            raise
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            return
        end, done = deadline[0], 0
        try:
            while time.perf_counter() < end:
                write(rng.randbytes(KEY_SIZE), rng.randbytes(VALUE_SIZE))
                done += 1
        except BaseException as exc:
            errors.append(exc)
            raise
        finally:
            counts[i] = done
            finished[i] = time.perf_counter()

    pool = [threading.Thread(target=work, args=(i,), name=f"bench-writer-{i}") for i in range(n)]
    for t in pool:
        t.start()
    start = time.perf_counter()
    deadline[0] = start + seconds
    with contextlib.suppress(threading.BrokenBarrierError):  # a writer failed to start
        barrier.wait()
    for t in pool:
        t.join()
    # Closing is timed: work a system defers past the last acknowledged write
    # (persist folds its root log into the trees on close) counts against it.
    facts = writers.close()
    closed = time.perf_counter()
    if errors:
        raise errors[0]
    return Window(sum(counts), max(*finished, closed) - start, facts)
