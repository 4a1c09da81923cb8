"""The application's entry point: :func:`open` and :class:`Database` (DESIGN §2.5).

Stack, top to bottom: :class:`~persist.db.table.Table` s and
:class:`~persist.db.objects.Persistent` objects encode keys and values; the
:class:`~persist.mux.Multiplexer` folds their writes into waves; the
:class:`~persist.db.treestore.TreeWaveStore` applies each wave to one
Merkle B-tree per table in the :class:`~persist.ebs.EncryptedStore`, which
writes it as one atomic batch to the kvs store.

A read-only database has no persistence thread: it reads the committed state
as of its opening (call :meth:`Database.refresh` to see later commits).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import threading
import weakref
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import cbor2

from ..ebs import EncryptedStore, KdfParams
from ..ebs.keyslot import read_keyslots
from ..ebs.rekey import resume_rekey
from ..errors import (
    ClosedError,
    IntegrityError,
    PersistError,
    ReadOnlyError,
    RotationUnfinished,
    StoreNotFound,
)
from ..kvs import Store, open_store, parse_location
from ..mux import AtomicBlock, Columns, Metrics, Multiplexer, MuxConfig
from .keys import decode_key, encode_key
from .objects import OBJECTS, PERSISTENT_CLASSES, Access, ObjectSpace
from .rekey import TreesRekeyer
from .replication import ReplicaStatus, Replicator
from .rootlog import LogLimits
from .table import Table
from .treestore import DEFAULT_CACHE_BYTES, TreeWaveStore
from .values import RecordRegistry, ValueCodec, decode_stored, records
from .verify import Issue, Progress, verify_database

__all__ = ["ROOT", "SCHEMA", "Database", "open"]

ROOT = "__root__"
SCHEMA = "__schema__"
_RESERVED = "__"
_log = logging.getLogger("persist.replication")

KeyArg = bytes | str | os.PathLike[str]


def open(
    location: str | os.PathLike[str],
    passphrase: str | None = None,
    *,
    key: KeyArg | None = None,
    read_only: bool = False,
    create: bool = True,
    kdf: KdfParams | None = None,
    allow_weak_kdf: bool = False,
    freshness: str | os.PathLike[str] | bool | None = None,
    config: MuxConfig | None = None,
    durable: bool = True,
    cache_nodes: int = 50_000,
    cache_bytes: int | None = DEFAULT_CACHE_BYTES,
    registry: RecordRegistry | None = None,
    root_log: LogLimits | None = None,
    replace: bool = False,
    replicas: Iterable[str] = (),
    replica_close_timeout: float = 10.0,
) -> Database:
    """Open the database at ``location``, creating it if it is missing and ``create``.

    Give exactly one of ``passphrase`` and ``key`` (32 raw bytes or a key
    file).  ``kdf`` sets the Argon2id cost of a new store (default: t=3,
    256 MiB, p=4); ``allow_weak_kdf`` admits the weak profile meant for tests.
    ``freshness`` is where the freshness record lives (None: the user's state
    directory; False: none, trust on first use).  ``config`` tunes the
    multiplexer and ``root_log`` how many small commits' changes the root
    record carries before they are folded into the trees (docs/design.md,
    "The committed state").  ``registry`` holds the record types
    (default: the process-wide one that ``@persist.record`` fills).
    ``cache_nodes`` and ``cache_bytes`` bound the decoded-node cache, in
    nodes and in estimated memory (None: no byte bound).
    ``replace``: an empty store where the freshness record saw a database is
    a rollback (RollbackDetected); ``replace=True`` makes a new one there.
    ``replicas``: target locations that committed waves are pushed to, off
    the commit path (:mod:`persist.db.replication`); ``close()`` waits up to
    ``replica_close_timeout`` seconds for them to hold the final state.
    """
    if (passphrase is None) == (key is None):
        raise TypeError("give exactly one of passphrase= and key=")
    if passphrase is not None and not isinstance(passphrase, str):
        raise TypeError("the passphrase must be a str")
    if not replica_close_timeout >= 0:  # also refuses NaN
        raise ValueError("replica_close_timeout must be a number of seconds >= 0")
    fresh = freshness if freshness is not True else None
    path = os.fspath(location)
    checked = None if read_only else _check_key_read_only(path, passphrase, key, allow_weak_kdf)
    try:
        store = open_store(path, durable=durable, read_only=read_only, create=create)
    except BaseException:
        if checked is not None:
            checked.close()
        raise
    try:
        if checked is not None:
            ebs = checked.reopen(store, freshness=fresh)
        elif not read_keyslots(store.get) and _is_empty(store):
            if read_only or not create:
                raise StoreNotFound(f"no database at {store.location}")
            ebs = EncryptedStore.create(
                store,
                passphrase,
                key=key,
                kdf=kdf or KdfParams.default(),
                allow_weak_kdf=allow_weak_kdf,
                freshness=fresh,
                replace=replace,
            )
        else:
            ebs = EncryptedStore.open(
                store, passphrase, key=key, allow_weak_kdf=allow_weak_kdf, freshness=fresh
            )
    except BaseException:
        store.close()
        raise
    finally:
        if checked is not None:
            checked.close()
            checked.kvs.close()
    try:
        if ebs.rekey_phase == "cleanup" and not read_only:
            resume_rekey(ebs, TreesRekeyer())  # finish what a crash interrupted
        elif ebs.rekey_phase == "copy" and not read_only:
            raise RotationUnfinished(
                "a master-key rotation of this store was interrupted before it switched "
                "keys: finish it with `persist rekey` (it asks for the new passphrase) or "
                "abandon it with `persist rekey --abort`; read_only=True opens the store "
                "as it was before the rotation"
            )
        db = Database(
            ebs,
            read_only=read_only,
            config=config,
            cache_nodes=cache_nodes,
            cache_bytes=cache_bytes,
            root_log=root_log,
            registry=registry if registry is not None else records,
        )
        targets = [replicas] if isinstance(replicas, str) else list(replicas)
        if targets and db._mux is not None:
            db._replicator = Replicator(ebs, targets, close_timeout=replica_close_timeout)
            db._mux.add_post_commit_hook(db._replicator.on_commit)
        return db
    except BaseException:
        ebs.close()
        store.close()
        raise


def _check_key_read_only(
    location: str, passphrase: str | None, key: KeyArg | None, allow_weak_kdf: bool
) -> EncryptedStore | None:
    """Unwrap the key over a read-only handle before the writer opens the store.

    A wrong passphrase must change no byte of the store, and the writer's
    connection would (SQLite checkpoints a leftover WAL when it closes).  Only
    where a read-only handle writes nothing itself: SQLite (a LevelDB handle
    rewrites files even read-only; docs/api.md).  Returns the read-only store,
    whose keys the writer's handle then reuses (one Argon2 run, not two).
    """
    scheme, rest = parse_location(location)
    if scheme != "sqlite" or not os.path.isfile(rest):
        return None
    try:
        reader = open_store(location, read_only=True)
    except PersistError:
        return None  # the writable open reports it
    try:
        if not read_keyslots(reader.get):
            reader.close()
            return None
        return EncryptedStore.open(
            reader, passphrase, key=key, allow_weak_kdf=allow_weak_kdf, freshness=False
        )
    except BaseException:
        reader.close()
        raise


def _is_empty(store: Store) -> bool:
    """No row at all (a cell a host stored with another type is a row too)."""
    try:
        return next(store.scan(b"\x00"), None) is None  # persist writes no empty key
    except IntegrityError:
        return False


class _Reader:
    """The read path of a read-only database: the committed trees, no waves."""

    def __init__(self, trees: TreeWaveStore) -> None:
        self.trees = trees

    def get(self, table: str, key: bytes) -> bytes | None:
        return self.trees.get(table, key)

    def scan(
        self,
        table: str,
        start: bytes | None = None,
        stop: bytes | None = None,
        reverse: bool = False,
    ) -> Iterator[tuple[bytes, bytes]]:
        return self.trees.scan(table, start, stop, reverse)

    def columns(
        self, table: str, start: bytes | None = None, stop: bytes | None = None
    ) -> Iterator[Columns]:
        return self.trees.columns(table, start, stop)

    def count(self, table: str) -> int:
        return self.trees.count(table)

    def put(self, table: str, key: bytes, value: bytes) -> None:
        raise ReadOnlyError("the database is open read-only")

    def delete(self, table: str, key: bytes) -> None:
        raise ReadOnlyError("the database is open read-only")

    def write_many(self, table: str, items: Iterable[tuple[bytes, bytes | None]]) -> None:
        raise ReadOnlyError("the database is open read-only")


class _Closed:
    """The read and write path of a closed database: every call raises ClosedError,
    so no read is served from a cache or a wave after ``close``."""

    def __init__(self, location: str) -> None:
        self.location = location

    def _refuse(self, *_: object) -> Any:
        raise ClosedError(f"database {self.location} is closed")

    get = scan = columns = count = put = delete = write_many = _refuse


_open_databases: weakref.WeakSet[Database] = weakref.WeakSet()


@atexit.register
def _close_at_exit() -> None:
    """Commit what is pending when the interpreter exits without ``close``."""
    for db in list(_open_databases):
        with contextlib.suppress(Exception):  # best effort: pending waves are then lost
            db.close()


class Database:
    """An open database.  Use :func:`open`; close it (or use ``with``) when done."""

    def __init__(
        self,
        ebs: EncryptedStore,
        *,
        read_only: bool = False,
        config: MuxConfig | None = None,
        cache_nodes: int = 50_000,
        cache_bytes: int | None = DEFAULT_CACHE_BYTES,
        registry: RecordRegistry = records,
        root_log: LogLimits | None = None,
    ) -> None:
        self.location = ebs.kvs.location
        self.read_only = read_only
        self._ebs = ebs
        self._trees = TreeWaveStore(
            ebs,
            cache_nodes=cache_nodes,
            cache_bytes=cache_bytes,
            log_limits=root_log,
            writable=not read_only,
        )
        self._mux: Multiplexer | None = None
        if not read_only:
            self._mux = Multiplexer(self._trees, config, name=f"persist:{Path(self.location).name}")
        self._reader = _Reader(self._trees)
        self._access: Access = self._mux if self._mux is not None else self._reader
        self._schemas_written: set[str] = set()
        self._schema_lock = threading.Lock()
        self._objects = ObjectSpace(self._access)
        self._codec = ValueCodec(
            registry, self._objects, self._note_record_type, PERSISTENT_CLASSES
        )
        self._objects.codec = self._codec
        self._closed = False
        self._replicator: Replicator | None = None
        _open_databases.add(self)

    # -- maps --------------------------------------------------------------------

    @property
    def root(self) -> Table:
        """The top-level persistent map."""
        self._check_open()
        return Table(self, ROOT)

    def table(self, name: str) -> Table:
        """The named table (created by its first write)."""
        self._check_open()
        if not isinstance(name, str):
            raise TypeError(f"table names are str, not {type(name).__name__}")
        if not name or name.startswith(_RESERVED) or len(name.encode()) > 200:
            raise ValueError("table names are 1-200 bytes and may not start with '__'")
        return Table(self, name)

    def inspect(self, name: str | None = None) -> Iterator[tuple[Any, Any]]:
        """The entries of table ``name`` (default: the root map), decoded without
        the application's classes, for tools such as ``persist dump``.

        A record comes back as a :class:`~persist.db.values.StoredRecord` (type
        name and fields), a persistent object as a
        :class:`~persist.db.values.StoredObject` (oid and stored class path),
        a value that does not decode as an :class:`~persist.db.values.Undecodable`;
        nothing is imported or constructed.
        """
        table = self.root if name is None else self.table(name)
        class_path = self._objects.class_path
        for key, raw in self._access.scan(table.name):
            yield decode_key(key), decode_stored(raw, class_path)

    def tables(self) -> list[str]:
        """Names of the committed tables (not counting internal ones)."""
        self._check_open()
        return [n for n in self._trees.tables() if not n.startswith(_RESERVED)]

    # -- transactions ------------------------------------------------------------

    def atomic(self) -> AtomicBlock:
        """``with db.atomic():`` (or ``async with``): its writes land in one wave."""
        return self._writer().atomic()

    def commit_wait(self, replicated: bool = False) -> None:
        """Return when every change made before the call is durable; with
        ``replicated``, also held by every replica given to :func:`open`."""
        if self._mux is not None:
            self._check_open()
            self._mux.commit_wait()
            if replicated and self._replicator is not None:
                self._replicator.wait(self._ebs.root.count)

    async def acommit_wait(self, replicated: bool = False) -> None:
        """``commit_wait`` for asyncio (the replica wait runs in a worker thread)."""
        if self._mux is not None:
            self._check_open()
            await self._mux.acommit_wait()
            if replicated and self._replicator is not None:
                await asyncio.to_thread(self._replicator.wait, self._ebs.root.count)

    def replication_status(self) -> list[ReplicaStatus]:
        """Each replica's replicated and committed counts and its last error."""
        return [] if self._replicator is None else self._replicator.status()

    def metrics(self) -> Metrics:
        return self._writer().metrics()

    # -- objects -----------------------------------------------------------------

    def collect_garbage(self) -> int:
        """Delete persistent objects that no table reaches; return how many.

        A mark pass over every table and reachable object, then the deletion
        of the unreached objects in one atomic block.  Objects are never
        deleted behind the application's back: this is the only way they go.
        Run it while no other thread writes: a reference written meanwhile to
        an object being collected would dangle.
        """
        mux = self._writer()
        mux.commit_wait()  # every table that holds a reference is now committed
        with mux.atomic():
            tables = [t for t in self._trees.tables() if t != OBJECTS]
            return self._objects.collect(tables)

    def verify(self, progress: Progress | None = None) -> list[Issue]:
        """Check every row of the store; return every problem found (empty: intact).

        A writable database first commits what is pending, then checks the
        committed state as of that moment from a pinned snapshot: writers
        may go on meanwhile.  A read-only one checks the newest committed
        state (another process may be writing).  See :mod:`persist.db.verify`
        for what is and is not checked.
        """
        self._check_open()
        if self._mux is not None:
            self._mux.commit_wait()
        with self._ebs.pin() as snapshot:
            return verify_database(self._ebs, snapshot, progress)

    # -- life cycle --------------------------------------------------------------

    def _note_record_type(self, cls: type[Any], name: str) -> None:
        """Store a record type's schema descriptor the first time it is used."""
        if name in self._schemas_written or self._mux is None:
            return
        with self._schema_lock:
            if name in self._schemas_written:
                return
            desc = cbor2.dumps(RecordRegistry.descriptor(cls))
            if self._mux.get(SCHEMA, encode_key(name)) != desc:
                self._mux.put(SCHEMA, encode_key(name), desc)
            self._schemas_written.add(name)

    def record_types(self) -> dict[str, Any]:
        """The schema descriptors of the record types stored in this database."""
        self._check_open()
        return {str(decode_key(k)): cbor2.loads(v) for k, v in self._access.scan(SCHEMA)}

    def _writer(self) -> Multiplexer:
        self._check_open()
        if self._mux is None:
            raise ReadOnlyError(f"database {self.location} is open read-only")
        return self._mux

    def _check_writable(self) -> None:
        self._writer()

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"database {self.location} is closed")

    def refresh(self) -> None:
        """Read-only databases: see the commits made since opening."""
        self._check_open()
        if self._mux is not None:
            return
        self._trees.refresh()

    def close(self) -> None:
        """Commit what is pending, then close.  Idempotent.

        With ``replicas``, the final committed state is then pushed to each of
        them, waiting at most ``replica_close_timeout`` seconds (given to
        :func:`open`); a replica that fails or is still behind then is logged
        as a warning, and closing goes on.

        Inside an atomic block it raises RuntimeError and changes nothing: the
        database stays open, the block's writes land when it ends, and
        ``close`` works once it has.
        """
        if self._closed:
            return
        if self._mux is not None and self._mux.in_atomic_block():
            raise RuntimeError("close inside an atomic block would wait for the block itself")
        self._closed = True
        _open_databases.discard(self)
        closed = _Closed(self.location)
        self._access = self._objects.access = closed
        if self._replicator is not None:
            self._drain_replicas(self._replicator)
            self._replicator.close()
        if self._mux is not None:
            self._mux.close()  # commits pending waves, then closes the trees
        else:
            self._trees.close()

    def _drain_replicas(self, replicator: Replicator) -> None:
        """close(): commit what is pending, then give the replicas their last push."""
        assert self._mux is not None  # a replicator exists only beside a writer
        try:
            self._mux.commit_wait()
        except PersistError:
            return  # the mux failed: mux.close() reports it; the replicas keep what they hold
        behind = replicator.drain(self._ebs.root.count)
        if behind:
            _log.warning(
                "closing with replicas behind the last commit: %s (replication_status() "
                "had the errors; the next open's replication or `persist push` catches up)",
                ", ".join(behind),
            )

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("read-only" if self.read_only else "open")
        return f"<persist.Database {self.location!r} {state}>"
