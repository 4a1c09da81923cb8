"""Master-key rotation: every row re-encrypted under a new random master key.

Theory of operation (docs/format.md "Rekey journal", docs/security.md).

Storage keys derive from the master key too, so a rotation writes a new copy
of every row at a new address rather than overwriting in place, and the old
copy stays valid until one atomic batch switches the keyslots and the root.
A crash at any point leaves a store that opens with the key material of the
side it is on, and a journal that says how to finish:

1. **Begin** (one batch): a journal row under the *old* key, holding the new
   master key and the new keyslot rows (prepared now, so resuming needs no
   passphrase).  Phase ``copy``.
2. **Copy** (many batches): every table's nodes and mutable rows are written
   under the new keys.  Nothing old changes, so the store stays valid under
   the old key; a crash here is undone by :func:`abort_rekey` or redone by
   :func:`resume_rekey` (which first deletes the partial new copy, since rows
   committed meanwhile may have made parts of it stale).
3. **Switch** (one batch): the new keyslots replace all old ones, the next
   root is written under the new key (the transaction count and the root
   chain go on), the old root slots and journal are deleted, and a journal
   under the *new* key records the *old* master key.  Phase ``cleanup``.
4. **Cleanup** (many batches): every row that authenticates under the old key
   is deleted; then the journal.  Resuming repeats the scan; a row is only
   ever deleted after it was positively identified as old.

Nodes are content-addressed under the table's node-id key, which changes with
the master key, so their ids -- and the ids stored inside parent nodes --
change.  The ebs cannot rewrite node contents; the tree layer plugs in a
:class:`TreeRekeyer` that walks its tree through the old :class:`Table` and
writes re-encoded nodes (and its rows, e.g. reference counts keyed by node
id) through a :class:`RekeyTarget`.  Tables without one get their mutable
rows copied as they are; a rotation that would lose nodes is refused before
anything is written.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ..errors import IntegrityError, PersistError, RotationUnfinished
from .kdf import KdfParams
from .keys import MASTER_KEY_SIZE, KeyRing, NodeId, TableKeys
from .keyslot import KIND_PASSPHRASE, MAX_KEYSLOTS, Credential, keyslot_key, make_keyslot
from .layout import NO_TABLE, RowKind, padded_size
from .root import Coverage, RootRecord, seal_root
from .rows import (
    auth_error,
    missing_error,
    open_envelope,
    open_head,
    read_value,
    seal,
    seal_envelope,
)
from .survey import Survey, known_descriptors, survey

if TYPE_CHECKING:
    from .store import EncryptedStore
    from .table import Table

__all__ = ["RekeyTarget", "TreeRekeyer", "abort_rekey", "detect_phase", "rekey", "resume_rekey"]

#: Rows written per batch during copy and cleanup.
BATCH_ROWS = 512
PHASE_COPY, PHASE_CLEANUP = 1, 2
_PHASES = {PHASE_COPY: "copy", PHASE_CLEANUP: "cleanup"}
_MAGIC = b"PSRK"
# docs/format.md "Rekey journal".
_FIXED = struct.Struct(">4sBBH32sIB")
_SLOT = struct.Struct(">BH")


class RekeyTarget:
    """Where a table's re-encrypted nodes and rows go during the copy phase."""

    def __init__(self, store: EncryptedStore, keys: TableKeys) -> None:
        self._store = store
        self._keys = keys
        self._pending: dict[bytes, bytes] = {}
        self._rows_written: set[bytes] = set()
        self.coverage = Coverage()

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
        rows = seal(self._keys, RowKind.ROW, storage_key, key, value, self._store.random)
        self.coverage = self.coverage.add(self._keys.coverage_element(storage_key, rows[0][1]))
        self._add(rows)

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
        """True if this rekeyer copies table ``descriptor`` (nodes and rows)."""
        ...

    def rekey_table(
        self, descriptor: bytes, payload: bytes | None, old: Table, new: RekeyTarget
    ) -> bytes | None:
        """Copy the table: read through ``old``, write through ``new``.

        ``payload`` is the table's catalog entry (None if it has none); return
        the new entry (node ids inside it change) or None to keep it.  Every
        mutable row of the table must be copied, or the rotation is refused.
        """
        ...


@dataclass(frozen=True, slots=True)
class Journal:
    phase: int
    #: copy phase: the new master key; cleanup phase: the old one
    other_master: bytes
    new_epoch: int
    slots: dict[int, bytes]

    def encode(self) -> bytes:
        fixed = (_MAGIC, 1, self.phase, 0, self.other_master, self.new_epoch, len(self.slots))
        parts = [_FIXED.pack(*fixed)]
        for index, row in sorted(self.slots.items()):
            parts += [_SLOT.pack(index, len(row)), row]
        body = b"".join(parts)
        return body + bytes(padded_size(len(body)) - len(body))

    @classmethod
    def decode(cls, plain: bytes) -> Journal:
        magic, version, phase, _r, other, epoch, n = _FIXED.unpack_from(plain)
        if magic != _MAGIC or version != 1 or phase not in _PHASES:
            raise ValueError("bad journal")
        pos, slots = _FIXED.size, {}
        for _ in range(n):
            index, size = _SLOT.unpack_from(plain, pos)
            slots[index] = plain[pos + _SLOT.size : pos + _SLOT.size + size]
            pos += _SLOT.size + size
        return cls(phase, other, epoch, slots)


def _seal_journal(store: EncryptedStore, ring: KeyRing, journal: Journal) -> tuple[bytes, bytes]:
    key = ring.journal_key()
    row = seal_envelope(
        ring.journal_cipher, RowKind.JOURNAL, NO_TABLE, key, journal.encode(), store.random
    )
    return key, row


def _read_journal(store: EncryptedStore) -> Journal | None:
    ring = store.keyring
    key = ring.journal_key()
    stored = store.kvs.get(key)
    if stored is None:
        return None
    plain = open_envelope(ring.journal_cipher, RowKind.JOURNAL, NO_TABLE, key, stored)
    try:
        return Journal.decode(plain)
    except (ValueError, struct.error):
        raise auth_error(RowKind.JOURNAL, key) from None


def detect_phase(store: EncryptedStore) -> str | None:
    """ "copy", "cleanup" or None; a damaged journal counts as none (verify reports it)."""
    try:
        journal = _read_journal(store)
    except IntegrityError:
        return None
    return None if journal is None else _PHASES[journal.phase]


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
    store: EncryptedStore, journal: Journal, rekeyer: TreeRekeyer | None, found: Survey
) -> RootRecord:
    old_ring, new_ring = store.keyring, KeyRing(journal.other_master)
    root = store.root
    catalog = dict(root.catalog)
    coverage: dict[bytes, Coverage] = {}
    for descriptor in known_descriptors(root, [*found.rows, *found.nodes]):
        target = RekeyTarget(store, new_ring.table(descriptor))
        old_rows = found.rows.get(descriptor, [])
        name = descriptor.decode("utf-8")
        if rekeyer is not None and rekeyer.handles(descriptor):
            old_table = store.table(descriptor)
            payload = rekeyer.rekey_table(descriptor, catalog.get(name), old_table, target)
            if payload is not None:
                catalog[name] = payload
        else:
            _copy_rows(store, old_ring.table(descriptor), old_rows, target)
        target.flush()
        if target.coverage.rows != len(old_rows):
            raise PersistError(
                f"rotation of table {descriptor!r} copied {target.coverage.rows} of "
                f"{len(old_rows)} rows; nothing was switched (abort_rekey() cleans up)"
            )
        coverage[descriptor] = target.coverage
    puts = {keyslot_key(i): row for i, row in journal.slots.items()}
    deletes = [keyslot_key(i) for i in range(MAX_KEYSLOTS) if i not in journal.slots]
    deletes += [old_ring.root_slot_key(0), old_ring.root_slot_key(1), old_ring.journal_key()]
    cleanup = Journal(PHASE_CLEANUP, old_ring.master, journal.new_epoch, {})
    puts.update([_seal_journal(store, new_ring, cleanup)])
    # The current root, re-sealed under the new key, keeps both slots filled
    # and the chain checkable across the switch.
    puts.update([seal_root(new_ring, root, store.random)])
    new_root = store.commit_root(puts, deletes, catalog, coverage, new_ring, journal.new_epoch)
    store.switch_keys(new_ring, new_root)
    store.rekey_phase = "cleanup"
    _delete(store, list(found.all_keys()))
    _finish(store)
    return new_root


def _finish(store: EncryptedStore) -> None:
    store.write_raw({}, [store.keyring.journal_key()])
    store.rekey_phase = None


def _survey(store: EncryptedStore, ring: KeyRing) -> Survey:
    return survey(store.kvs, ring, known_descriptors(store.root))


def rekey(
    store: EncryptedStore,
    credential: Credential,
    kdf: KdfParams,
    *,
    allow_weak: bool,
    rekeyer: TreeRekeyer | None,
) -> RootRecord:
    """Rotate the master key; the one new keyslot opens with ``credential``.

    Every other keyslot is dropped: they wrap the old master key, and only
    their owners could wrap the new one.  Add them again afterwards.
    """
    if credential.kind == KIND_PASSPHRASE:
        reason = kdf.refusal(allow_weak=allow_weak)
        if reason is not None:
            raise ValueError(reason)
    with store.lock:
        store.check_writable()
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
        journal = Journal(PHASE_COPY, new_master, store.root.key_epoch + 1, {0: slot})
        store.write_raw(dict([_seal_journal(store, store.keyring, journal)]))
        store.rekey_phase = "copy"
        return _copy_switch_cleanup(store, journal, rekeyer, found)


def _purge(store: EncryptedStore, master: bytes) -> None:
    """Delete every row that authenticates under ``master`` (the other side's key)."""
    _delete(store, list(_survey(store, KeyRing(master)).all_keys()))


def resume_rekey(store: EncryptedStore, rekeyer: TreeRekeyer | None) -> RootRecord:
    """Finish the rotation an interrupted :func:`rekey` began."""
    with store.lock:
        store.check_writable()
        journal = _read_journal(store)
        if journal is None:
            raise ValueError("no rotation to resume")
        if journal.phase == PHASE_CLEANUP:
            _purge(store, journal.other_master)
            _finish(store)
            return store.root
        found = _survey(store, store.keyring)
        _refuse_lost_nodes(found, rekeyer)
        _purge(store, journal.other_master)
        return _copy_switch_cleanup(store, journal, rekeyer, found)


def abort_rekey(store: EncryptedStore) -> None:
    """Abandon a rotation still in its copy phase: delete the partial new copy."""
    with store.lock:
        store.check_writable()
        journal = _read_journal(store)
        if journal is None:
            raise ValueError("no rotation to abort")
        if journal.phase != PHASE_COPY:
            raise ValueError("the rotation already switched keys; resume_rekey() finishes it")
        _purge(store, journal.other_master)
        _finish(store)
