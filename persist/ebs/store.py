"""The encrypted byte store: create, open, commit (DESIGN §2.2).

Theory of operation.

1. **Open** reads the keyslots, unwraps the master key (the commitment makes a
   wrong passphrase fail before any decryption), then takes the valid root of
   the two slots with the highest count, then checks it against the freshness
   record.  Open never writes to the kvs store.
2. **Commit** turns a :class:`~persist.ebs.table.WriteBatch` into one atomic
   ``kvs.write``: every node, row and chunk, plus the next root in the other
   slot.  The root's coverage of mutable rows is updated by subtracting the
   element of the row being replaced (its stored bytes, read from the kvs
   store) and adding the new one.  Only then is the in-memory root replaced
   and the freshness record updated.
3. **One writer.** Commits, keyslot changes, rekeys and verify passes hold one
   lock.  Reads hold none: they see the kvs store, which sees a batch whole or
   not at all.
4. **Poison.** When ``kvs.write`` raises, whether the batch landed is unknown
   (StoreIOError), so every later write raises CommitFailed until reopened;
   committing on from a root that may be stale would fork the store.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import NoReturn, Self

from ..errors import (
    ClosedError,
    CommitFailed,
    IntegrityError,
    ReadOnlyError,
    RollbackDetected,
    StoreExists,
    StoreNotFound,
)
from ..kvs.base import Store
from .freshness import (
    FreshnessLocation,
    FreshnessRecord,
    HintWriter,
    check_freshness,
    resolve_location,
)
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
from .layout import RandomSource, RowKind
from .rekey import TreeRekeyer, abort_rekey, detect_phase, rekey, resume_rekey
from .root import Coverage, RootRecord, read_roots, seal_root
from .rows import chunk_count, chunk_keys, may_be_chunked, open_head, seal
from .table import Table, WriteBatch
from .verify import Problem, verify_rows

__all__ = ["EncryptedStore"]

_log = logging.getLogger("persist.ebs")
DB_ID_SIZE = 16
DEFAULT_KDF = KdfParams.default()
Clock = Callable[[], float]
KeyArg = bytes | str | os.PathLike[str]


def _timestamp_us(clock: Clock) -> int:
    return min(max(int(clock() * 1e6), 0), (1 << 64) - 1)


def _is_empty(kvs: Store) -> bool:
    it = kvs.scan()
    try:
        return next(it, None) is None
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


class EncryptedStore:
    """Every row encrypted on its own, over any kvs store (format v1)."""

    def __init__(
        self,
        kvs: Store,
        keys: KeyRing,
        root: RootRecord,
        freshness_path: Path | None,
        clock: Clock,
        random: RandomSource,
    ) -> None:
        """Use :meth:`create` or :meth:`open`."""
        self.kvs = kvs
        self._keys = keys
        self._root = root
        self._freshness_path = freshness_path
        self._hint = HintWriter(freshness_path) if freshness_path is not None else None
        self._clock = clock
        self.random = random
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
        clock: Clock = time.time,
        random: RandomSource = os.urandom,
    ) -> EncryptedStore:
        """Make a new encrypted store in the empty ``kvs_store``.

        Exactly one of ``passphrase`` and ``key`` (32 bytes or a key-file path)
        is given.  Raises ValueError for KDF parameters out of bounds and
        StoreExists when the kvs store is not empty.
        """
        credential = Credential(passphrase, key)
        if credential.kind == KIND_PASSPHRASE:
            reason = kdf.refusal(allow_weak=allow_weak_kdf)
            if reason is not None:
                raise ValueError(reason)
        if not _is_empty(kvs_store):
            raise StoreExists(f"{kvs_store.location} is not empty; open it instead")
        master = random(MASTER_KEY_SIZE)
        keys = KeyRing(master)
        slot = make_keyslot(0, master, credential, kdf, allow_weak=allow_weak_kdf, random=random)
        root = RootRecord(random(DB_ID_SIZE), 0, _timestamp_us(clock), bytes(32))
        root_key, root_row = seal_root(keys, root, random)
        kvs_store.write({keyslot_key(0): slot, root_key: root_row})
        path = resolve_location(freshness, kvs_store.location)
        if path is not None:
            FreshnessRecord.of(root).save(path)
        return cls(kvs_store, keys, root, path, clock, random)

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
        random: RandomSource = os.urandom,
    ) -> EncryptedStore:
        """Open an encrypted store with a passphrase or a raw key.

        Raises WrongPassphrase when the key material opens no keyslot,
        StoreNotFound for an empty kvs store, IntegrityError when no valid root
        exists, and RollbackDetected, ForkDetected or WrongDatabase when the
        store contradicts the freshness record.
        """
        credential = Credential(passphrase, key)
        slots = read_keyslots(kvs_store)
        if not slots:
            if _is_empty(kvs_store):
                raise StoreNotFound(f"no encrypted store in {kvs_store.location}")
            raise IntegrityError("the store has rows but no keyslot")
        _, master = unwrap_any(slots, credential, allow_weak=allow_weak_kdf)
        keys = KeyRing(master)
        roots = read_roots(kvs_store, keys)
        valid = [r for r in roots if isinstance(r, RootRecord)]
        if not valid:
            raise IntegrityError("the store has no valid root record")
        root = max(valid, key=lambda r: r.count)
        if any(isinstance(r, IntegrityError) for r in roots):
            _log.warning("a root slot of %s is damaged; verify the store", kvs_store.location)
        path = resolve_location(freshness, kvs_store.location)
        if path is not None:
            record = FreshnessRecord.load(path)
            check_freshness(record, root)
            if record != FreshnessRecord.of(root):
                FreshnessRecord.of(root).save(path)
        store = cls(kvs_store, keys, root, path, clock, random)
        store.rekey_phase = detect_phase(store)
        if store.rekey_phase is not None:
            _log.warning("a master-key rotation of %s is unfinished", kvs_store.location)
        return store

    # -- state ----------------------------------------------------------------

    @property
    def root(self) -> RootRecord:
        """The current root record."""
        return self._root

    def reload_root(self) -> RootRecord:
        """Re-read the root slots (a reader following a writer); never go back.

        Raises RollbackDetected when the newest valid root is older than the
        one this handle already saw.
        """
        with self._lock:
            self.check_open()
            valid = [r for r in read_roots(self.kvs, self._keys) if isinstance(r, RootRecord)]
            if not valid:
                raise IntegrityError("the store has no valid root record")
            root = max(valid, key=lambda r: r.count)
            if root.count < self._root.count:
                raise RollbackDetected("the store went back to an older root while open")
            self._root = root
            return root

    @property
    def keyring(self) -> KeyRing:
        """The key hierarchy (for the ebs's own modules; never log it)."""
        self.check_open()
        return self._keys

    @property
    def lock(self) -> threading.RLock:
        """The writer's lock (commits, keyslot changes, rekey, verify)."""
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

    def write_raw(self, puts: Mapping[bytes, bytes], deletes: Iterable[bytes] = ()) -> None:
        """One atomic kvs batch; a failure poisons the store.  REQUIRES: the lock."""
        self.check_writable()
        deletes = [d for d in deletes if d not in puts]
        try:
            self.kvs.write(puts, deletes)
        except BaseException as exc:
            self._failed = exc
            raise

    def commit(self, batch: WriteBatch, catalog: Mapping[str, bytes]) -> RootRecord:
        """Write ``batch`` and the next root (with ``catalog``) as one durable batch."""
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
            batch.claim(self)
            puts: dict[bytes, bytes] = {}
            deletes: set[bytes] = set()
            coverage = dict(self._root.coverage)
            for storage_key, (table, plaintext, size) in batch.nodes.items():
                keys = table.live_keys()
                if plaintext is not None:
                    puts.update(seal(keys, RowKind.NODE, storage_key, b"", plaintext, self.random))
                else:
                    deletes.add(storage_key)
                    deletes.update(self._node_chunks(keys, storage_key, size))
            for storage_key, (table, key, value) in batch.rows.items():
                keys = table.live_keys()
                cover = coverage.get(keys.descriptor, Coverage())
                old = None if storage_key in batch.new_rows else self.kvs.get(storage_key)
                if old is not None:
                    cover = cover.remove(keys.coverage_element(storage_key, old))
                    deletes.update(self._old_chunks(keys, RowKind.ROW, storage_key, key, old))
                if value is None:
                    deletes.add(storage_key)
                else:
                    rows = seal(keys, RowKind.ROW, storage_key, key, value, self.random)
                    cover = cover.add(keys.coverage_element(storage_key, rows[0][1]))
                    puts.update(rows)
                coverage[keys.descriptor] = cover
            return self.commit_root(puts, deletes, catalog, coverage)

    def commit_root(
        self,
        puts: dict[bytes, bytes],
        deletes: Iterable[bytes],
        catalog: Mapping[str, bytes],
        coverage: Mapping[bytes, Coverage],
        keys: KeyRing | None = None,
        key_epoch: int | None = None,
    ) -> RootRecord:
        """Add the next root to ``puts`` and write everything.  REQUIRES: the lock."""
        prev = self._root
        root = RootRecord(
            prev.db_id,
            prev.count + 1,
            _timestamp_us(self._clock),
            prev.digest,
            catalog,
            {d: c for d, c in coverage.items() if c != Coverage()},
            prev.key_epoch if key_epoch is None else key_epoch,
        )
        root_key, root_row = seal_root(keys or self._keys, root, self.random)
        puts[root_key] = root_row
        self.write_raw(puts, deletes)
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
        """The chunk addresses of a row about to be replaced or deleted."""
        if not may_be_chunked(len(stored), len(logical_key)):
            return []
        # A head that no longer authenticates cannot say where its chunks are;
        # they stay behind as orphans that verify_rows reports.
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
        for index, stored in read_keyslots(self.kvs).items():
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
            used = read_keyslots(self.kvs)
            free = [i for i in range(MAX_KEYSLOTS) if i not in used]
            if not free:
                raise ValueError(f"all {MAX_KEYSLOTS} keyslots are in use")
            row = make_keyslot(
                free[0],
                self._keys.master,
                credential,
                kdf,
                allow_weak=allow_weak_kdf,
                random=self.random,
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
        """Rewrite the keyslot ``old`` opens so that only the new material opens it.

        ``old`` is a passphrase (str) or a raw key (bytes or key-file path).
        Only that one keyslot row changes; the master key stays, so this does
        not revoke anyone who already learned it (use :meth:`rekey`).
        """
        old_credential = Credential(old, None) if isinstance(old, str) else Credential(None, old)
        new_credential = Credential(new_passphrase, new_key)
        with self._lock:
            self.check_writable()
            index, master = unwrap_any(read_keyslots(self.kvs), old_credential, allow_weak=True)
            if not self._keys.same_master(master):
                raise IntegrityError(f"keyslot {index} wraps another master key")
            row = make_keyslot(
                index, master, new_credential, kdf, allow_weak=allow_weak_kdf, random=self.random
            )
            self.write_raw({keyslot_key(index): row})
            return index

    def remove_keyslot(self, index: int) -> None:
        """Delete keyslot ``index``; the last keyslot cannot be removed."""
        with self._lock:
            self.check_writable()
            slots = read_keyslots(self.kvs)
            if index not in slots:
                raise ValueError(f"keyslot {index} is not in use")
            if len(slots) == 1:
                raise ValueError("the last keyslot cannot be removed")
            self.write_raw({}, [keyslot_key(index)])

    @staticmethod
    def generate_key() -> bytes:
        """A fresh random 32-byte raw key (for example a recovery key)."""
        return os.urandom(32)

    # -- checking and rotation (see verify.py and rekey.py) -------------------

    def verify_rows(
        self, reachable: Mapping[Table, Iterable[bytes]] | None = None
    ) -> list[Problem]:
        """Every problem the ebs can see; see :func:`persist.ebs.verify.verify_rows`."""
        return verify_rows(self, reachable)

    def rekey(
        self,
        passphrase: str | None = None,
        *,
        key: KeyArg | None = None,
        kdf: KdfParams = DEFAULT_KDF,
        allow_weak_kdf: bool = False,
        rekeyer: TreeRekeyer | None = None,
    ) -> RootRecord:
        """Re-encrypt every row under a new master key; see :mod:`persist.ebs.rekey`."""
        return rekey(
            self, Credential(passphrase, key), kdf, allow_weak=allow_weak_kdf, rekeyer=rekeyer
        )

    def resume_rekey(self, rekeyer: TreeRekeyer | None = None) -> RootRecord:
        """Finish a rotation a crash interrupted."""
        return resume_rekey(self, rekeyer)

    def abort_rekey(self) -> None:
        """Abandon a rotation interrupted in its copy phase."""
        abort_rekey(self)

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
        state = "closed" if self._closed else f"count={self._root.count}"
        return f"<EncryptedStore {self.kvs.location!r} {state}>"

    def __reduce__(self) -> NoReturn:
        raise TypeError("an open encrypted store cannot be pickled")
