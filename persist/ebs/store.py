"""The encrypted byte store: create, open, commit (DESIGN §2.2).

Theory of operation.

1. **Open** reads the keyslots, unwraps the master key (the commitment makes a
   wrong passphrase fail before any decryption), then takes the valid root of
   the two slots with the highest count, checks that the other slot holds its
   predecessor (an honest writer never leaves it missing or unrelated), then
   checks both against the freshness record.  Open never writes to the kvs
   store (the freshness record lives outside it).
2. **Commit** turns a :class:`~persist.ebs.table.WriteBatch` into one atomic
   ``kvs.write``: every node, row and chunk, plus the next root in the other
   slot.  Only then is the in-memory root replaced and the freshness hint
   updated.
3. **Format v2: only the root and the keyslots are mutable.**  Nodes are
   content-addressed and rows written once; the layer above names all of them
   from the root's catalog, so every row the library acts on is authenticated
   from the root when it is read.  A format-v1 store (count rows rewritten in
   place, covered by a digest in the root) opens for reading; it accepts one
   commit only, the upgrade (``commit(..., upgrade=True)``), which the tree
   layer makes at its first writable open.
4. **One writer.** Commits, keyslot changes, rekeys and pins hold one lock.
   Reads hold none: they see the kvs store, which sees a batch whole or not
   at all, or a pinned snapshot of it (:meth:`pin`).
5. **Poison.** When ``kvs.write`` raises, whether the batch landed is unknown
   (StoreIOError), so every later write raises CommitFailed until reopened;
   committing on from a root that may be stale would fork the store.

The master-key rotation (:mod:`.rekey`) and the row verifier (:mod:`.verify`)
take a store as a parameter; this module depends on neither.
"""

from __future__ import annotations

import hmac
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import NoReturn, Self

from ..errors import (
    ClosedError,
    CommitFailed,
    ForkDetected,
    IntegrityError,
    ReadOnlyError,
    RollbackDetected,
    StoreExists,
    StoreNotFound,
)
from ..kvs.base import Snapshot, Store
from .freshness import (
    FreshnessLocation,
    FreshnessRecord,
    HintWriter,
    check_freshness,
    resolve_location,
)
from .journal import detect_phase
from .kdf import KdfParams
from .keys import MASTER_KEY_SIZE, MAX_DESCRIPTOR, KeyRing, TableKeys
from .keyslot import (
    KIND_PASSPHRASE,
    MAX_KEYSLOTS,
    Credential,
    KeySlotInfo,
    keyslot_key,
    make_keyslot,
    parse_keyslot,
    read_keyslots,
    unwrap_any,
)
from .layout import FORMAT_VERSION, RandomSource, RowKind
from .root import RootRecord, read_roots, seal_root
from .rows import Getter, chunk_count, chunk_keys, may_be_chunked, open_head, seal
from .table import Table, WriteBatch

__all__ = ["EncryptedStore", "KeyArg"]

_log = logging.getLogger("persist.ebs")
DB_ID_SIZE = 16
DEFAULT_KDF = KdfParams.default()
Clock = Callable[[], float]
KeyArg = bytes | str | os.PathLike[str]


def _timestamp_us(clock: Clock) -> int:
    return min(max(int(clock() * 1e6), 0), (1 << 64) - 1)


def _sealed(
    items: list[tuple[TableKeys, RowKind, bytes, bytes, bytes]], random: RandomSource
) -> Iterator[tuple[bytes, bytes]]:
    """The stored rows of each node or row, sealed when the kvs asks for them."""
    for keys, kind, storage_key, logical_key, value in items:
        yield from seal(keys, kind, storage_key, logical_key, value, random)


def _is_empty(get_scan: Store | Snapshot) -> bool:
    # persist writes no empty key; a bounded scan skips cells a host stored with
    # another type (SQLite sorts them first), which verify reports
    it = get_scan.scan(b"\x00")
    try:
        return next(it, None) is None
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


def _freshness_path(freshness: FreshnessLocation, kvs: Store) -> Path | None:
    return resolve_location(freshness, kvs.canonical_location, kvs.location)


def choose_root(
    roots: list[RootRecord | IntegrityError | None], location: str
) -> tuple[RootRecord, RootRecord | None]:
    """The current root (the valid one with the highest count) and its proven
    predecessor in the other slot (None when that slot is damaged).

    Raises IntegrityError when no root is valid, when the other slot is
    missing, and ForkDetected when it holds a root of another history: an
    honest writer always leaves the current root's predecessor there.
    """
    valid = [r for r in roots if isinstance(r, RootRecord)]
    if not valid:
        raise IntegrityError("the store has no valid root record")
    root = max(valid, key=lambda r: r.count)
    other = roots[1 - root.count % 2]
    if other is None:
        if root.count > 0:
            raise IntegrityError("the previous root slot is missing")
        return root, None
    if isinstance(other, IntegrityError):
        _log.warning("a root slot of %s is damaged; verify the store", location)
        return root, None
    if other.count != root.count - 1 or not hmac.compare_digest(other.digest, root.prev_digest):
        raise ForkDetected("the other root slot holds a root that does not precede the current one")
    return root, other


class EncryptedStore:
    """Every row encrypted on its own, over any kvs store (format v2; v1 read)."""

    def __init__(
        self,
        kvs: Store,
        keys: KeyRing,
        root: RootRecord,
        freshness_path: Path | None,
        clock: Clock,
        random: RandomSource,
        allow_weak_kdf: bool,
    ) -> None:
        """Use :meth:`create` or :meth:`open`."""
        self.kvs = kvs
        self._keys = keys
        self._root = root
        self._freshness_path = freshness_path
        self._hint = HintWriter(freshness_path) if freshness_path is not None else None
        self._clock = clock
        self._random = random
        self._allow_weak_kdf = allow_weak_kdf
        self._lock = threading.RLock()
        self._tables: dict[bytes, Table] = {}
        self._closed = False
        self._failed: BaseException | None = None
        #: bumped by every rekey; Table handles of an older epoch refuse to work
        self.key_epoch_seen = root.key_epoch
        #: "copy" or "cleanup" while a master-key rotation is unfinished
        self.rekey_phase: str | None = None

    # -- creating and opening -------------------------------------------------

    @classmethod
    def create(
        cls,
        kvs_store: Store,
        passphrase: str | None = None,
        *,
        key: KeyArg | None = None,
        kdf: KdfParams = DEFAULT_KDF,
        allow_weak_kdf: bool = False,
        freshness: FreshnessLocation = None,
        replace: bool = False,
        clock: Clock = time.time,
        _random: RandomSource = os.urandom,
    ) -> EncryptedStore:
        """Make a new encrypted store in the empty ``kvs_store``.

        Exactly one of ``passphrase`` and ``key`` (32 bytes or a key-file path)
        is given.  Raises ValueError for KDF parameters out of bounds,
        StoreExists when the kvs store is not empty, and RollbackDetected
        when a freshness record says a database lived at this location (an
        emptied store is a rollback, not a new database) unless ``replace``.
        ``_random`` is for deterministic tests only: a source that repeats
        itself repeats nonces.
        """
        credential = Credential(passphrase, key)
        if credential.kind == KIND_PASSPHRASE:
            reason = kdf.refusal(allow_weak=allow_weak_kdf)
            if reason is not None:
                raise ValueError(reason)
        if not _is_empty(kvs_store):
            raise StoreExists(f"{kvs_store.location} is not empty; open it instead")
        path = _freshness_path(freshness, kvs_store)
        if path is not None and not replace:
            record = FreshnessRecord.load(path)
            if record is not None:
                raise RollbackDetected(
                    f"{kvs_store.location} is empty, but this machine saw database "
                    f"{record.db_id.hex()} there at transaction {record.count}: the store "
                    "was deleted or rolled back (replace=True / --replace makes a new one)"
                )
        master = _random(MASTER_KEY_SIZE)
        keys = KeyRing(master)
        slot = make_keyslot(0, master, credential, kdf, allow_weak=allow_weak_kdf, random=_random)
        root = RootRecord(_random(DB_ID_SIZE), 0, _timestamp_us(clock), bytes(32))
        root_key, root_row = seal_root(keys, root, _random)
        kvs_store.write({keyslot_key(0): slot, root_key: root_row})
        if path is not None:
            FreshnessRecord.of(root).save(path)
        return cls(kvs_store, keys, root, path, clock, _random, allow_weak_kdf)

    @classmethod
    def open(
        cls,
        kvs_store: Store,
        passphrase: str | None = None,
        *,
        key: KeyArg | None = None,
        allow_weak_kdf: bool = False,
        freshness: FreshnessLocation = None,
        clock: Clock = time.time,
        source: Snapshot | None = None,
        _random: RandomSource = os.urandom,
    ) -> EncryptedStore:
        """Open an encrypted store with a passphrase or a raw key.

        ``source``: read keyslots and roots from this snapshot of the store
        (a reader that pins what it opened).  Raises WrongPassphrase when the
        key material opens no keyslot, StoreNotFound for an empty kvs store,
        IntegrityError when no valid root exists, and RollbackDetected,
        ForkDetected or WrongDatabase when the store contradicts the
        freshness record.
        """
        credential = Credential(passphrase, key)
        reader: Store | Snapshot = kvs_store if source is None else source
        slots = read_keyslots(reader.get)
        if not slots:
            if _is_empty(reader):
                raise StoreNotFound(f"no encrypted store in {kvs_store.location}")
            raise IntegrityError("the store has rows but no keyslot")
        _, master = unwrap_any(slots, credential, allow_weak=allow_weak_kdf)
        return cls._opened(
            kvs_store, reader, KeyRing(master), freshness, clock, _random, allow_weak_kdf
        )

    def reopen(self, kvs_store: Store, *, freshness: FreshnessLocation = None) -> EncryptedStore:
        """The same keys over another handle of the same store (say, the writer's
        after a read-only handle checked the passphrase: no second Argon2 run).

        The keyslots must still open with this key ring's master key.
        """
        self.check_open()
        slots = read_keyslots(kvs_store.get)
        if not slots:
            raise StoreNotFound(f"no encrypted store in {kvs_store.location}")
        return self._opened(
            kvs_store,
            kvs_store,
            self._keys,
            freshness,
            self._clock,
            self._random,
            self._allow_weak_kdf,
        )

    @classmethod
    def _opened(
        cls,
        kvs_store: Store,
        reader: Store | Snapshot,
        keys: KeyRing,
        freshness: FreshnessLocation,
        clock: Clock,
        _random: RandomSource,
        allow_weak_kdf: bool,
    ) -> EncryptedStore:
        root, previous = choose_root(read_roots(reader.get, keys), kvs_store.location)
        path = _freshness_path(freshness, kvs_store)
        if path is not None:
            record = FreshnessRecord.load(path)
            if record is not None and root.count == record.count + 2 and previous is None:
                raise ForkDetected(
                    "the store is two transactions ahead of this machine's record and "
                    "its other root slot, which would prove the history, is damaged"
                )
            check_freshness(record, root, previous)
            if record != FreshnessRecord.of(root):
                FreshnessRecord.of(root).save(path)
        store = cls(kvs_store, keys, root, path, clock, _random, allow_weak_kdf)
        store.rekey_phase = detect_phase(reader.get, keys)
        if store.rekey_phase is not None:
            _log.warning("a master-key rotation of %s is unfinished", kvs_store.location)
        return store

    # -- state ----------------------------------------------------------------

    @property
    def root(self) -> RootRecord:
        """The current root record."""
        return self._root

    @property
    def version(self) -> int:
        """The store format of the current root (1 until a v1 store is upgraded)."""
        return self._root.version

    @property
    def allow_weak_kdf(self) -> bool:
        """Whether the store was opened admitting the weak test KDF profile."""
        return self._allow_weak_kdf

    @property
    def random(self) -> RandomSource:
        """The randomness source (os.urandom outside deterministic tests)."""
        return self._random

    def reload_root(self, source: Getter | None = None) -> RootRecord:
        """Re-read the root slots (a reader following a writer); never go back.

        ``source`` reads them (a pinned snapshot's ``get``).  Raises
        RollbackDetected when the newest valid root is older than the one
        this handle already saw.
        """
        with self._lock:
            self.check_open()
            get = self.kvs.get if source is None else source
            root, _ = choose_root(read_roots(get, self._keys), self.kvs.location)
            if root.count < self._root.count:
                raise RollbackDetected("the store went back to an older root while open")
            if not hmac.compare_digest(root.db_id, self._root.db_id):
                raise IntegrityError("the store now holds another database")
            self._root = root
            return root

    def pin(self) -> Snapshot:
        """A snapshot of the kvs store exactly at the current root (close it when done).

        Taken under the writer's lock, so no commit is half-way: the snapshot
        holds the rows of :attr:`root` (for a writable store; a read-only
        handle's snapshot is whatever the other writer committed last).
        """
        with self._lock:
            self.check_open()
            return self.kvs.snapshot()

    @property
    def keyring(self) -> KeyRing:
        """The key hierarchy (for the ebs's own modules; never log it)."""
        self.check_open()
        return self._keys

    @property
    def lock(self) -> threading.RLock:
        """The writer's lock (commits, keyslot changes, rekey, pins)."""
        return self._lock

    def check_open(self) -> None:
        if self._closed:
            raise ClosedError("the encrypted store is closed")

    def table(self, descriptor: bytes | str) -> Table:
        """The table named by a type-and-name descriptor, e.g. ``b"tree:accounts"``."""
        if isinstance(descriptor, str):
            descriptor = descriptor.encode("utf-8")
        self.check_open()
        table = self._tables.get(descriptor)
        if table is None:
            with self._lock:
                table = self._tables.get(descriptor)
                if table is None:
                    keys = self._keys.table(descriptor)
                    table = self._tables[descriptor] = Table(self, keys, self.key_epoch_seen)
        return table

    # -- writing --------------------------------------------------------------

    def batch(self) -> WriteBatch:
        """A new, empty batch for :meth:`commit`."""
        self.check_open()
        return WriteBatch(self)

    def check_writable(self) -> None:
        self.check_open()
        if self._failed is not None:
            raise CommitFailed("an earlier commit failed; reopen the store") from self._failed
        if self.kvs.read_only:
            raise ReadOnlyError(f"store {self.kvs.location} is open read-only")

    def write_raw(
        self,
        puts: Mapping[bytes, bytes],
        deletes: Iterable[bytes] = (),
        stream: Iterable[tuple[bytes, bytes]] = (),
    ) -> None:
        """One atomic kvs batch; a failure poisons the store.  REQUIRES: the lock.

        ``stream`` is more puts, produced while the kvs consumes them (a
        commit's sealed nodes: never all in memory at once on a backend that
        streams its batch); its keys must not be among ``deletes``.
        """
        self.check_writable()
        deletes = [d for d in deletes if d not in puts]
        try:
            self.kvs.write(itertools.chain(puts.items(), stream), deletes)
        except BaseException as exc:
            self._failed = exc
            raise

    def commit(
        self, batch: WriteBatch, catalog: Mapping[str, bytes], *, upgrade: bool = False
    ) -> RootRecord:
        """Write ``batch`` and the next root (with ``catalog``) as one durable batch.

        A format-v1 store takes one commit only, with ``upgrade=True``: the one
        that rewrites it as format v2 (docs/format.md "Upgrade from v1").
        """
        catalog = dict(catalog)
        for name, payload in catalog.items():
            if not isinstance(name, str) or type(payload) is not bytes:
                raise TypeError("the catalog maps str descriptors to bytes payloads")
            try:
                encoded = name.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("a catalog name must be encodable as UTF-8") from None
            if not 0 < len(encoded) <= MAX_DESCRIPTOR or len(payload) >= 1 << 32:
                raise ValueError(f"catalog names are 1..{MAX_DESCRIPTOR} bytes, payloads < 4 GiB")
        with self._lock:
            self.check_writable()
            if (self._root.version < FORMAT_VERSION) != upgrade:
                raise ValueError(
                    "a format-v1 store must be upgraded before it takes commits"
                    if not upgrade
                    else "the store is already in the current format"
                )
            batch.claim(self)
            deletes: set[bytes] = set()
            # The rows are sealed as the kvs takes them, nodes first, then rows,
            # then the root (the order of sealing before, so seeded nonces fall
            # where they did): a fold's thousands of new nodes would otherwise
            # exist twice at the commit's peak, as plaintext and sealed.
            sealing: list[tuple[TableKeys, RowKind, bytes, bytes, bytes]] = []
            for storage_key, (table, plaintext, size) in batch.nodes.items():
                keys = table.live_keys()
                if plaintext is not None:
                    sealing.append((keys, RowKind.NODE, storage_key, b"", plaintext))
                else:
                    deletes.add(storage_key)
                    deletes.update(self._node_chunks(keys, storage_key, size))
            rewritten: set[bytes] = set()
            for storage_key, (table, key, value) in batch.rows.items():
                keys = table.live_keys()
                if storage_key not in batch.new_rows:
                    old = self.kvs.get(storage_key)
                    if old is not None:
                        deletes.update(self._old_chunks(keys, RowKind.ROW, storage_key, key, old))
                if value is None:
                    deletes.add(storage_key)
                else:
                    sealing.append((keys, RowKind.ROW, storage_key, key, value))
                    # a rewritten row's chunks may reuse its old chunks' keys
                    rewritten.add(storage_key)
                    rewritten.update(
                        chunk_keys(keys, storage_key, chunk_count(len(key), len(value)))
                    )
            # A node's keys are never among the deletes: a node is put or deleted
            # here, not both, and chunk keys derive from their head's key.
            return self.commit_root(
                {}, deletes - rewritten, catalog, stream=_sealed(sealing, self._random)
            )

    def commit_root(
        self,
        puts: dict[bytes, bytes],
        deletes: Iterable[bytes],
        catalog: Mapping[str, bytes],
        keys: KeyRing | None = None,
        key_epoch: int | None = None,
        *,
        stream: Iterable[tuple[bytes, bytes]] = (),
    ) -> RootRecord:
        """Add the next root to ``puts`` and write everything (``stream``: see
        :meth:`write_raw`).  REQUIRES: the lock."""
        prev = self._root
        root = RootRecord(
            prev.db_id,
            prev.count + 1,
            _timestamp_us(self._clock),
            prev.digest,
            catalog,
            {},
            prev.key_epoch if key_epoch is None else key_epoch,
        )

        def sealed_root() -> Iterator[tuple[bytes, bytes]]:
            yield seal_root(keys or self._keys, root, self._random)  # last, as it always was

        self.write_raw(puts, deletes, itertools.chain(stream, sealed_root()))
        self._root = root
        if self._hint is not None:
            try:
                self._hint.write(FreshnessRecord.of(root))
            except OSError:
                _log.warning("could not update the freshness record of %s", self.kvs.location)
        return root

    def _node_chunks(self, keys: TableKeys, storage_key: bytes, size: int | None) -> list[bytes]:
        if size is not None:
            return chunk_keys(keys, storage_key, chunk_count(0, size))
        stored = self.kvs.get(storage_key)
        if stored is None:
            return []
        return self._old_chunks(keys, RowKind.NODE, storage_key, b"", stored)

    def _old_chunks(
        self, keys: TableKeys, kind: RowKind, storage_key: bytes, logical_key: bytes, stored: bytes
    ) -> list[bytes]:
        """The chunk addresses of a row about to be deleted."""
        if not may_be_chunked(len(stored), len(logical_key)):
            return []
        # A head that no longer authenticates cannot say where its chunks are;
        # they stay behind as orphans that verify reports.
        try:
            head = open_head(keys, kind, storage_key, stored)
        except IntegrityError:
            return []
        return chunk_keys(keys, storage_key, head.chunk_count)

    # -- keyslots -------------------------------------------------------------

    def keyslots(self) -> list[KeySlotInfo]:
        """What each readable keyslot says about itself (nothing secret)."""
        self.check_open()
        infos = []
        for index, stored in read_keyslots(self.kvs.get).items():
            try:
                infos.append(parse_keyslot(index, stored).info)
            except IntegrityError:
                _log.warning("keyslot %d is malformed", index)
        return infos

    def add_keyslot(
        self,
        passphrase: str | None = None,
        *,
        key: KeyArg | None = None,
        kdf: KdfParams = DEFAULT_KDF,
        allow_weak_kdf: bool = False,
    ) -> int:
        """Wrap the master key for one more passphrase or raw (recovery) key."""
        credential = Credential(passphrase, key)
        with self._lock:
            self.check_writable()
            used = read_keyslots(self.kvs.get)
            free = [i for i in range(MAX_KEYSLOTS) if i not in used]
            if not free:
                raise ValueError(f"all {MAX_KEYSLOTS} keyslots are in use")
            row = make_keyslot(
                free[0],
                self._keys.master,
                credential,
                kdf,
                allow_weak=allow_weak_kdf,
                random=self._random,
            )
            self.write_raw({keyslot_key(free[0]): row})
            return free[0]

    def change_passphrase(
        self,
        old: str | KeyArg,
        new_passphrase: str | None = None,
        *,
        new_key: KeyArg | None = None,
        kdf: KdfParams = DEFAULT_KDF,
        allow_weak_kdf: bool = False,
    ) -> int:
        """Rewrite the keyslot ``old`` opens so that the new material opens it instead.

        ``old`` is a passphrase (str) or a raw key (bytes or key-file path).
        Only that one keyslot row changes; the master key stays, so this does
        not revoke anyone who already learned it or kept a copy of the old
        keyslot (a host can put the old row back): use :mod:`.rekey` for that.
        The old slot is unwrapped under the KDF policy the store was opened with.
        """
        old_credential = Credential(old, None) if isinstance(old, str) else Credential(None, old)
        new_credential = Credential(new_passphrase, new_key)
        with self._lock:
            self.check_writable()
            index, master = unwrap_any(
                read_keyslots(self.kvs.get), old_credential, allow_weak=self._allow_weak_kdf
            )
            if not self._keys.same_master(master):
                raise IntegrityError(f"keyslot {index} wraps another master key")
            row = make_keyslot(
                index, master, new_credential, kdf, allow_weak=allow_weak_kdf, random=self._random
            )
            self.write_raw({keyslot_key(index): row})
            return index

    def remove_keyslot(self, index: int) -> None:
        """Delete keyslot ``index``; the last keyslot cannot be removed."""
        with self._lock:
            self.check_writable()
            slots = read_keyslots(self.kvs.get)
            if index not in slots:
                raise ValueError(f"keyslot {index} is not in use")
            if len(slots) == 1:
                raise ValueError("the last keyslot cannot be removed")
            self.write_raw({}, [keyslot_key(index)])

    @staticmethod
    def generate_key() -> bytes:
        """A fresh random 32-byte raw key (for example a recovery key)."""
        return os.urandom(32)

    def switch_keys(self, keys: KeyRing, root: RootRecord) -> None:
        """Adopt a new key ring after a rotation.  REQUIRES: the lock."""
        self._keys = keys
        self._root = root
        self._tables.clear()
        self.key_epoch_seen = root.key_epoch

    # -- closing --------------------------------------------------------------

    def close(self) -> None:
        """Make the freshness record durable and forget the keys.

        The kvs store stays open (its opener closes it).
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._tables.clear()
            if self._hint is not None:
                self._hint.close()
            if self._freshness_path is not None and not self.kvs.read_only:
                try:
                    FreshnessRecord.of(self._root).save(self._freshness_path)
                except OSError:
                    _log.warning("could not save the freshness record of %s", self.kvs.location)

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
        state = "closed" if self._closed else f"v{self._root.version} count={self._root.count}"
        return f"<EncryptedStore {self.kvs.location!r} {state}>"

    def __reduce__(self) -> NoReturn:
        raise TypeError("an open encrypted store cannot be pickled")
