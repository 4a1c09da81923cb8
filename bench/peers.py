"""One small adapter per store: persist on SQLite and LevelDB, and the peers a user would pick.

Every adapter is configured the way a careful user would configure it for
durable data (documented in docs/benchmarks.md, "Setup"):

* SQLite-based stores (sqlcipher3, apsw): one ``WITHOUT ROWID`` table
  ``kv(k BLOB PRIMARY KEY, v BLOB)``, WAL, ``synchronous=FULL`` -- the layout
  and durability persist's own SQLite backend uses, so the difference is
  persist's layers, not the file format.  sqlcipher3 keeps SQLCipher 4's
  defaults (PBKDF2-HMAC-SHA512, 256,000 iterations; 4 KiB pages; HMAC per page).
* plyvel: a ``WriteBatch`` with ``sync=True`` per transaction.
* ZODB: a ``FileStorage`` with one ``OOBTree`` under the root, a transaction
  per commit; the object cache is raised to 100,000 objects (the default, 400,
  would make every "warm" read a cold one).
* sqlitedict: its defaults (pickled values, rollback journal), one ``commit``
  per transaction.  Its iteration follows insertion order, not key order.
* persist: a raw 32-byte key (no Argon2id), a freshness record in the store's
  directory (the default costs the same, in the user's state directory).
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import apsw
import plyvel

import persist

Pairs = Sequence[tuple[bytes, bytes]]

#: The raw key persist opens with in every scenario but the open-time one.
RAW_KEY = bytes(range(32))
PASSPHRASE = "correct horse battery staple"
SQL_SCHEMA = "CREATE TABLE IF NOT EXISTS kv (k BLOB PRIMARY KEY, v BLOB) WITHOUT ROWID"


def disk_bytes(directory: Path) -> int:
    """Bytes of every file under ``directory`` except lock and shared-memory files."""
    return sum(
        p.stat().st_size
        for p in directory.rglob("*")
        if p.is_file() and not p.name.endswith(("-lock", "-shm", "LOCK", "freshness.json"))
    )


def checkpoint_sqlite(path: Path) -> None:
    """Fold a closed SQLite database's WAL into the main file and truncate it."""
    conn = apsw.Connection(str(path))
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    finally:
        conn.close()


class KV(ABC):
    """A store under test, living in its own directory."""

    #: Whether a scan visits keys in key order (sqlitedict's does not).
    ordered_scan = True

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @abstractmethod
    def load(self, pairs: Pairs) -> None:
        """Write all ``pairs`` in one transaction, durable on return."""

    @abstractmethod
    def get(self, key: bytes) -> bytes | None: ...

    @abstractmethod
    def scan(self) -> int:
        """Visit every pair; return how many there were."""

    @abstractmethod
    def put_durable(self, key: bytes, value: bytes) -> None:
        """One write in its own transaction, durable on return."""

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def _open(self) -> None: ...

    def reopen(self) -> None:
        """Close and open again: every cache of the store's own is empty afterwards."""
        self.close()
        self._open()

    def resting_bytes(self) -> int:
        """After ``close``: bytes on disk once the files are at rest (see :func:`disk_bytes`)."""
        return disk_bytes(self.directory)


class PersistKV(KV):
    """persist, one table, opened with a raw key."""

    def __init__(self, directory: Path, backend: str = "sqlite", *, freshness: bool = True) -> None:
        super().__init__(directory)
        if backend == "sqlite":
            self.location = str(directory / "store.db")
        else:
            self.location = f"leveldb://{directory / 'store'}"
        self.backend = backend
        self.freshness: Path | bool = directory / "freshness.json" if freshness else False
        self._open()

    def _open(self) -> None:
        self.db = persist.open(self.location, key=RAW_KEY, freshness=self.freshness)
        self.table = self.db.table("bench")

    def load(self, pairs: Pairs) -> None:
        table = self.table
        with self.db.atomic():
            for key, value in pairs:
                table[key] = value
        self.db.commit_wait()

    def get(self, key: bytes) -> bytes | None:
        value: bytes | None = self.table.get(key)
        return value

    def scan(self) -> int:
        n = 0
        for _ in self.table.items():
            n += 1
        return n

    def put_durable(self, key: bytes, value: bytes) -> None:
        self.table[key] = value
        self.db.commit_wait()

    def close(self) -> None:
        self.db.close()

    def resting_bytes(self) -> int:
        if self.backend == "sqlite":  # the WAL this backend leaves behind, folded in
            checkpoint_sqlite(Path(self.location))
        return super().resting_bytes()


class _SqlKV(KV):
    """A ``kv`` table in an SQLite file, through a DB-API-like connection."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.path = directory / "store.db"
        self._open()
        self.conn.execute("PRAGMA journal_mode=WAL").fetchall()
        self.conn.execute(SQL_SCHEMA)

    @abstractmethod
    def _connect(self) -> Any: ...

    def _open(self) -> None:
        self.conn = self._connect()
        self.conn.execute("PRAGMA synchronous=FULL")

    def load(self, pairs: Pairs) -> None:
        self.conn.execute("BEGIN")
        self.conn.executemany("INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)", pairs)
        self.conn.execute("COMMIT")

    def get(self, key: bytes) -> bytes | None:
        row = self.conn.execute("SELECT v FROM kv WHERE k = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def scan(self) -> int:
        n = 0
        for _ in self.conn.execute("SELECT k, v FROM kv ORDER BY k"):
            n += 1
        return n

    def put_durable(self, key: bytes, value: bytes) -> None:
        self.conn.execute("INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)", (key, value))

    def close(self) -> None:
        self.conn.close()  # the last connection checkpoints and removes the WAL


class SqlcipherKV(_SqlKV):
    """SQLCipher 4 through sqlcipher3, keyed by a passphrase (its default KDF)."""

    def _connect(self) -> Any:
        from sqlcipher3 import dbapi2

        conn = dbapi2.connect(str(self.path), isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA key = '{PASSPHRASE}'")
        conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()  # derive the key now
        return conn


class ApswKV(_SqlKV):
    """Plain, unencrypted SQLite through apsw."""

    def _connect(self) -> Any:
        return apsw.Connection(str(self.path))


class PlyvelKV(KV):
    """LevelDB through plyvel."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self._open()

    def _open(self) -> None:
        self.ldb = plyvel.DB(str(self.directory / "store"), create_if_missing=True)

    def load(self, pairs: Pairs) -> None:
        with self.ldb.write_batch(sync=True) as batch:
            for key, value in pairs:
                batch.put(key, value)

    def get(self, key: bytes) -> bytes | None:
        return self.ldb.get(key)  # type: ignore[no-any-return]

    def scan(self) -> int:
        n = 0
        with self.ldb.iterator() as it:
            for _ in it:
                n += 1
        return n

    def put_durable(self, key: bytes, value: bytes) -> None:
        self.ldb.put(key, value, sync=True)

    def close(self) -> None:
        self.ldb.close()


class ZodbKV(KV):
    """ZODB: a FileStorage holding one OOBTree."""

    CACHE_OBJECTS = 100_000

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self._open()
        if "kv" not in self.root:
            from BTrees.OOBTree import OOBTree

            self.root["kv"] = OOBTree()
            self.tm.commit()

    def _open(self) -> None:
        import transaction
        import ZODB
        import ZODB.FileStorage

        storage = ZODB.FileStorage.FileStorage(str(self.directory / "data.fs"))
        self.zdb = ZODB.DB(storage, cache_size=self.CACHE_OBJECTS)
        self.tm = transaction.TransactionManager()
        self.conn = self.zdb.open(self.tm)
        self.root = self.conn.root()

    def load(self, pairs: Pairs) -> None:
        tree = self.root["kv"]
        for key, value in pairs:
            tree[key] = value
        self.tm.commit()

    def get(self, key: bytes) -> bytes | None:
        return self.root["kv"].get(key)  # type: ignore[no-any-return]

    def scan(self) -> int:
        n = 0
        for _ in self.root["kv"].items():
            n += 1
        return n

    def put_durable(self, key: bytes, value: bytes) -> None:
        self.root["kv"][key] = value
        self.tm.commit()

    def close(self) -> None:
        self.conn.close()
        self.zdb.close()


class SqlitedictKV(KV):
    """sqlitedict with its defaults."""

    ordered_scan = False

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self._open()

    def _open(self) -> None:
        from sqlitedict import SqliteDict

        self.sd = SqliteDict(str(self.directory / "store.sqlite"), tablename="kv")

    def load(self, pairs: Pairs) -> None:
        sd = self.sd
        for key, value in pairs:
            sd[key] = value
        sd.commit()

    def get(self, key: bytes) -> bytes | None:
        with contextlib.suppress(KeyError):
            return self.sd[key]  # type: ignore[no-any-return]
        return None

    def scan(self) -> int:
        n = 0
        for _ in self.sd.items():
            n += 1
        return n

    def put_durable(self, key: bytes, value: bytes) -> None:
        self.sd[key] = value
        self.sd.commit()

    def close(self) -> None:
        self.sd.close()


#: Stores by id: (label for the report, encrypted?, factory).
STORES: dict[str, tuple[str, bool, Callable[[Path], KV]]] = {
    "persist-sqlite": ("persist (SQLite)", True, lambda d: PersistKV(d, "sqlite")),
    "persist-leveldb": ("persist (LevelDB)", True, lambda d: PersistKV(d, "leveldb")),
    "sqlcipher3": ("sqlcipher3 (SQLCipher 4)", True, SqlcipherKV),
    "apsw": ("apsw (plain SQLite)", False, ApswKV),
    "plyvel": ("plyvel (LevelDB)", False, PlyvelKV),
    "zodb": ("ZODB (FileStorage, OOBTree)", False, ZodbKV),
    "sqlitedict": ("sqlitedict", False, SqlitedictKV),
}


def label(store_id: str) -> str:
    return STORES[store_id][0]
