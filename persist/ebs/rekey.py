"""Master-key rotation: every row re-encrypted under a new random master key.

Theory of operation (docs/format.md "Rekey journal", docs/security.md).

Storage keys derive from the master key too, so a rotation writes a new copy
of every row at a new address rather than overwriting in place, and the old
copy stays valid until one atomic batch switches the keyslots and the root.
A crash at any point leaves a store that opens with the key material of the
side it is on, and a journal that says how to finish:

1. **Begin** (one batch): a journal row under the *old* key holding the new
   key epoch and the new keyslot, already wrapped under the new credential.
   The new master key itself is never written under the old key: it is known
   only to this process and to whoever holds the new credential.  Phase
   ``copy``.
2. **Copy** (many batches): the tree layer's :class:`TreeRekeyer` rebuilds
   every tree under the new keys; other rows are copied as they are.
   Nothing old changes, so the store stays valid under the old key; a crash
   here is undone by :func:`abort_rekey` or redone by :func:`resume_rekey`,
   which needs the **new** credential (it unwraps the new master key from the
   journal's keyslot) and first deletes the partial new copy.
3. **Switch** (one batch): the new keyslots replace all old ones, the next
   root is written under the new key (the transaction count and the root
   chain go on), the old root slots and journal are deleted, and a journal
   under the *new* key records the *old* master key.  Phase ``cleanup``.
4. **Cleanup** (many batches): every row that authenticates under the old key
   is deleted, then the journal, then the backend drops what it kept of the
   deleted rows (``kvs.compact()``: a WAL checkpoint on SQLite, which runs
   with ``secure_delete``; a compaction on LevelDB).  A row is only ever
   deleted after it was positively identified as old.

So whoever held the old master key or an old passphrase (with any copy of an
old keyslot) learns nothing written after the rotation, from the store during
the rotation or from its residue after: the only new material under the old
key is a keyslot wrapped under the new credential (docs/security.md).

This module takes the store as a parameter; :mod:`.store` does not import it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Protocol

from ..errors import PersistError, RotationUnfinished
from .journal import PHASE_CLEANUP, PHASE_COPY, Journal, read_journal, seal_journal
from .journal import detect_phase as journal_phase
from .kdf import KdfParams
from .keys import MASTER_KEY_SIZE, KeyRing, NodeId, TableKeys
from .keyslot import (
    KIND_PASSPHRASE,
    MAX_KEYSLOTS,
    Credential,
    keyslot_key,
    make_keyslot,
    unwrap_any,
)
from .layout import FORMAT_VERSION, RowKind
from .root import seal_root
from .rows import missing_error, open_head, read_value, seal
from .survey import Survey, known_descriptors, survey

if TYPE_CHECKING:
    from .root import RootRecord
    from .store import EncryptedStore, KeyArg
    from .table import Table

__all__ = [
    "RekeyTarget",
    "TreeRekeyer",
    "abort_rekey",
    "detect_phase",
    "rekey",
    "resume_rekey",
]

#: Rows written per batch during copy and cleanup.
BATCH_ROWS = 512


class RekeyTarget:
    """Where a table's re-encrypted nodes and rows go during the copy phase."""

    def __init__(self, store: EncryptedStore, keys: TableKeys) -> None:
        self._store = store
        self._keys = keys
        self._pending: dict[bytes, bytes] = {}
        self._rows_written: set[bytes] = set()

    @property
    def descriptor(self) -> bytes:
        return self._keys.descriptor

    @property
    def rows_written(self) -> int:
        return len(self._rows_written)

    def node_id(self, plaintext: bytes) -> NodeId:
        """The node's id under the new master key."""
        return self._keys.node_id(plaintext)

    def put_node(self, nid: bytes, plaintext: bytes) -> None:
        if self._keys.node_id(plaintext) != nid:
            raise ValueError("the node id is not the content address under the new key")
        self._add(seal(self._keys, RowKind.NODE, bytes(nid), b"", plaintext, self._store.random))

    def put_row(self, key: bytes, value: bytes) -> None:
        storage_key = self._keys.row_key(key)
        if storage_key in self._rows_written:
            raise ValueError("a row was copied twice")
        self._rows_written.add(storage_key)
        self._add(seal(self._keys, RowKind.ROW, storage_key, key, value, self._store.random))

    def _add(self, rows: list[tuple[bytes, bytes]]) -> None:
        self._pending.update(rows)
        if len(self._pending) >= BATCH_ROWS:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            self._store.write_raw(self._pending)
            self._pending = {}


class TreeRekeyer(Protocol):
    """The hook through which the tree layer rotates the tables it owns."""

    def handles(self, descriptor: bytes) -> bool:
        """True if this rekeyer copies table ``descriptor`` (all its nodes and rows)."""
        ...

    def rekey_tables(
        self,
        catalog: Mapping[str, bytes],
        old: Callable[[bytes], Table],
        new: Callable[[bytes], RekeyTarget],
    ) -> dict[str, bytes]:
        """Copy every table it handles: read through ``old(descriptor)``, write
        through ``new(descriptor)``; return the catalog entries that change
        (node ids inside them change with the keys)."""
        ...


def detect_phase(store: EncryptedStore) -> str | None:
    """ "copy", "cleanup" or None (the store's ``rekey_phase``, read again)."""
    return journal_phase(store.kvs.get, store.keyring)


def _copy_rows(store: EncryptedStore, old: TableKeys, keys: list[bytes], new: RekeyTarget) -> None:
    kvs = store.kvs
    for storage_key in keys:
        stored = kvs.get(storage_key)
        if stored is None:
            raise missing_error(RowKind.ROW, storage_key)
        head = open_head(old, RowKind.ROW, storage_key, stored)
        new.put_row(head.logical_key, read_value(old, RowKind.ROW, storage_key, head, kvs.get))


def _delete(store: EncryptedStore, keys: list[bytes]) -> None:
    for start in range(0, len(keys), BATCH_ROWS):
        store.write_raw({}, keys[start : start + BATCH_ROWS])


def _refuse_lost_nodes(found: Survey, rekeyer: TreeRekeyer | None) -> None:
    for descriptor in found.nodes:
        if rekeyer is None or not rekeyer.handles(descriptor):
            raise ValueError(
                f"table {descriptor!r} has nodes; rotating it needs the tree layer's rekeyer"
            )


def _copy_switch_cleanup(
    store: EncryptedStore,
    new_ring: KeyRing,
    journal: Journal,
    rekeyer: TreeRekeyer | None,
    found: Survey,
) -> RootRecord:
    old_ring = store.keyring
    root = store.root
    catalog = dict(root.catalog)
    targets: dict[bytes, RekeyTarget] = {}

    def target(descriptor: bytes) -> RekeyTarget:
        t = targets.get(descriptor)
        if t is None:
            t = targets[descriptor] = RekeyTarget(store, new_ring.table(descriptor))
        return t

    if rekeyer is not None:
        catalog.update(rekeyer.rekey_tables(root.catalog, store.table, target))
    for descriptor in known_descriptors(root, [*found.rows, *found.nodes]):
        old_rows = found.rows.get(descriptor, [])
        copy = target(descriptor)
        if rekeyer is None or not rekeyer.handles(descriptor):
            _copy_rows(store, old_ring.table(descriptor), old_rows, copy)
        if copy.rows_written != len(old_rows):
            raise PersistError(
                f"rotation of table {descriptor!r} copied {copy.rows_written} of "
                f"{len(old_rows)} rows; nothing was switched (abort_rekey() cleans up)"
            )
    for t in targets.values():
        t.flush()
    puts = {keyslot_key(i): row for i, row in journal.slots.items()}
    deletes = [keyslot_key(i) for i in range(MAX_KEYSLOTS) if i not in journal.slots]
    deletes += [old_ring.root_slot_key(0), old_ring.root_slot_key(1), old_ring.journal_key()]
    cleanup = Journal(PHASE_CLEANUP, journal.new_epoch, master=old_ring.master)
    puts.update([seal_journal(new_ring, cleanup, store.random)])
    # The current root, re-sealed under the new key, keeps both slots filled
    # and the chain checkable across the switch.
    puts.update([seal_root(new_ring, root, store.random)])
    new_root = store.commit_root(puts, deletes, catalog, new_ring, journal.new_epoch)
    store.switch_keys(new_ring, new_root)
    store.rekey_phase = "cleanup"
    _delete(store, list(found.all_keys()))
    _finish(store)
    return new_root


def _finish(store: EncryptedStore) -> None:
    store.write_raw({}, [store.keyring.journal_key()])
    store.rekey_phase = None
    store.kvs.compact()  # drop the residue of the deleted rows where the backend can


def _survey(store: EncryptedStore, ring: KeyRing) -> Survey:
    return survey(store.kvs, ring, known_descriptors(store.root))


def _check_v2(store: EncryptedStore) -> None:
    if store.version < FORMAT_VERSION:
        raise ValueError("upgrade the store (open it writable once) before rotating its key")


def rekey(
    store: EncryptedStore,
    passphrase: str | None = None,
    *,
    key: KeyArg | None = None,
    kdf: KdfParams | None = None,
    allow_weak_kdf: bool = False,
    rekeyer: TreeRekeyer | None = None,
) -> RootRecord:
    """Rotate the master key; the one new keyslot opens with the new passphrase or key.

    Every other keyslot is dropped: they wrap the old master key, and only
    their owners could wrap the new one.  Add them again afterwards.
    ``rekeyer`` copies the tables the tree layer owns (their nodes).
    """
    credential = Credential(passphrase, key)
    kdf = kdf if kdf is not None else KdfParams.default()
    allow_weak = allow_weak_kdf
    if credential.kind == KIND_PASSPHRASE:
        reason = kdf.refusal(allow_weak=allow_weak)
        if reason is not None:
            raise ValueError(reason)
    with store.lock:
        store.check_writable()
        _check_v2(store)
        if store.rekey_phase is not None:
            raise RotationUnfinished(
                "a rotation is unfinished: resume_rekey() or abort_rekey() first"
            )
        found = _survey(store, store.keyring)
        _refuse_lost_nodes(found, rekeyer)
        new_master = store.random(MASTER_KEY_SIZE)
        slot = make_keyslot(
            0, new_master, credential, kdf, allow_weak=allow_weak, random=store.random
        )
        journal = Journal(PHASE_COPY, store.root.key_epoch + 1, {0: slot})
        store.write_raw(dict([seal_journal(store.keyring, journal, store.random)]))
        store.rekey_phase = "copy"
        return _copy_switch_cleanup(store, KeyRing(new_master), journal, rekeyer, found)


def _purge(store: EncryptedStore, master: bytes) -> None:
    """Delete every row that authenticates under ``master`` (the other side's key)."""
    _delete(store, list(_survey(store, KeyRing(master)).all_keys()))


def _new_master(store: EncryptedStore, journal: Journal, credential: Credential | None) -> bytes:
    """The new master key of a copy-phase journal: unwrapped from its keyslot."""
    if journal.version == 1 and journal.master is not None:
        return journal.master  # written before format v2: the key is in the journal
    if credential is None:
        raise RotationUnfinished(
            "resuming a rotation interrupted in its copy phase needs the new passphrase "
            "or key (the new master key is wrapped under it); or abort the rotation"
        )
    _, master = unwrap_any(journal.slots, credential, allow_weak=store.allow_weak_kdf)
    return master


def resume_rekey(
    store: EncryptedStore,
    rekeyer: TreeRekeyer | None,
    passphrase: str | None = None,
    *,
    key: KeyArg | None = None,
) -> RootRecord:
    """Finish the rotation an interrupted :func:`rekey` began.

    In the copy phase give the **new** passphrase or key; the cleanup phase
    needs nothing.
    """
    credential = None if passphrase is None and key is None else Credential(passphrase, key)
    with store.lock:
        store.check_writable()
        journal = read_journal(store.kvs.get, store.keyring)
        if journal is None:
            raise ValueError("no rotation to resume")
        if journal.phase == PHASE_CLEANUP:
            assert journal.master is not None
            _purge(store, journal.master)
            _finish(store)
            return store.root
        _check_v2(store)
        new_master = _new_master(store, journal, credential)
        found = _survey(store, store.keyring)
        _refuse_lost_nodes(found, rekeyer)
        _purge(store, new_master)
        return _copy_switch_cleanup(store, KeyRing(new_master), journal, rekeyer, found)


def abort_rekey(
    store: EncryptedStore, passphrase: str | None = None, *, key: KeyArg | None = None
) -> None:
    """Abandon a rotation still in its copy phase: delete the partial new copy.

    With the new passphrase or key, exactly the rows under the new master key
    are deleted.  Without it, every row that does not authenticate under the
    current (old) key, keyslots and roots aside, is taken for part of the copy
    and deleted (run verify first if the store may also hold damaged rows:
    they would go too).
    """
    credential = None if passphrase is None and key is None else Credential(passphrase, key)
    with store.lock:
        store.check_writable()
        journal = read_journal(store.kvs.get, store.keyring)
        if journal is None:
            raise ValueError("no rotation to abort")
        if journal.phase != PHASE_COPY:
            raise ValueError("the rotation already switched keys; resume_rekey() finishes it")
        if credential is not None or journal.version == 1:
            _purge(store, _new_master(store, journal, credential))
            _finish(store)
            return
        ours = set(_survey(store, store.keyring).all_keys())
        special = {keyslot_key(i) for i in range(MAX_KEYSLOTS)}
        ring = store.keyring
        special.update([ring.root_slot_key(0), ring.root_slot_key(1), ring.journal_key()])
        strangers = [k for k, _ in store.kvs.scan() if k not in ours and k not in special]
        _delete(store, strangers)
        _finish(store)
