"""Per-table read access and the write batch: what the tree layer talks to.

A :class:`Table` is a handle on one table's subkeys; reading goes to the kvs
store, or to a pinned snapshot of it (``source=``), and may happen from any
thread, also while a commit runs.  A :class:`WriteBatch` only records what a
commit should do; nothing is encrypted until :meth:`EncryptedStore.commit`,
which encrypts each final plaintext exactly once.

Rows of kind ROW are written once (format v2): the layer above names each by
a logical key it never reuses (the root log's generation and index) and
authenticates its content from the root (a hash chain), so the ebs needs no
coverage of them; format v1 stores kept count rows that were rewritten in
place and covered by a digest in the root.
"""

from __future__ import annotations

from typing import Protocol

from ..errors import ClosedError, IntegrityError
from ..kvs.base import Store
from .keys import NodeId, TableKeys
from .layout import STORAGE_KEY_SIZE, RowKind
from .rows import Getter, auth_error, missing_error, open_head, read_value


class TableOwner(Protocol):
    """What a table needs of its store (:class:`~persist.ebs.store.EncryptedStore`);
    a protocol, so that this module does not import the store back."""

    @property
    def kvs(self) -> Store: ...

    @property
    def key_epoch_seen(self) -> int: ...

    def check_open(self) -> None: ...


__all__ = ["NodeOp", "RowOp", "Table", "WriteBatch"]

# Reads of a chunked value that a concurrent commit keeps rewriting give up
# after this many tries (each try sees a different committed head).
_READ_ATTEMPTS = 64


def _check_bytes(name: str, value: object) -> bytes:
    if type(value) is not bytes:
        raise TypeError(f"{name} must be bytes, not {type(value).__name__}")
    return value


def _check_node_id(nid: object) -> bytes:
    if not isinstance(nid, bytes) or len(nid) != STORAGE_KEY_SIZE:
        raise ValueError("a node id is 32 bytes")
    return bytes(nid)


class Table:
    """One table of an :class:`EncryptedStore`; get it from ``ebs.table(descriptor)``."""

    __slots__ = ("_epoch", "_keys", "_store")

    def __init__(self, store: TableOwner, keys: TableKeys, epoch: int) -> None:
        self._store = store
        self._keys = keys
        self._epoch = epoch

    @property
    def id(self) -> bytes:
        """32-byte table id: the hash of the descriptor (stable across rekeys)."""
        return self._keys.id

    @property
    def descriptor(self) -> bytes:
        return self._keys.descriptor

    @property
    def store(self) -> TableOwner:
        """The encrypted store this table belongs to."""
        return self._store

    def live_keys(self) -> TableKeys:
        """The table's keys; ClosedError if the store closed or was rekeyed since."""
        self._store.check_open()
        if self._epoch != self._store.key_epoch_seen:
            raise ClosedError("this table handle predates a master-key rotation; get a new one")
        return self._keys

    def node_id(self, plaintext: bytes) -> NodeId:
        """The content address (and storage key) of a node with these canonical bytes."""
        return self.live_keys().node_id(_check_bytes("a node", plaintext))

    def row_key(self, key: bytes) -> bytes:
        """The storage key of the mutable row ``key``."""
        return self.live_keys().row_key(_check_bytes("a row key", key))

    def read_node(
        self, nid: bytes, source: Getter | None = None, touched: set[bytes] | None = None
    ) -> bytes:
        """The plaintext of node ``nid``; IntegrityError if it is missing or damaged.

        ``source`` reads the rows (a snapshot's ``get``; default: the store's).
        ``touched`` collects the storage keys read (the head and its chunks).
        """
        value = self.find_node(nid, source, touched)
        if value is None:
            raise missing_error(RowKind.NODE, bytes(nid))
        return value

    def find_node(
        self, nid: bytes, source: Getter | None = None, touched: set[bytes] | None = None
    ) -> bytes | None:
        """Like :meth:`read_node`, but None when no row is stored at ``nid``."""
        return self._read(RowKind.NODE, _check_node_id(nid), b"", source, touched)

    def read_row(
        self, key: bytes, source: Getter | None = None, touched: set[bytes] | None = None
    ) -> bytes | None:
        """The value of the row ``key``, or None when there is none.

        The logical key stored inside the row must equal ``key``.  Rows are
        written once; the layer above authenticates their content from the
        root (the root log's chain).
        """
        storage_key = self.row_key(key)
        return self._read(RowKind.ROW, storage_key, key, source, touched)

    def _read(
        self,
        kind: RowKind,
        storage_key: bytes,
        logical_key: bytes,
        source: Getter | None = None,
        touched: set[bytes] | None = None,
    ) -> bytes | None:
        keys = self.live_keys()
        get = self._store.kvs.get if source is None else source
        if touched is not None:
            fetch = get

            def get(k: bytes) -> bytes | None:
                touched.add(k)
                return fetch(k)

        stored = get(storage_key)
        for _attempt in range(_READ_ATTEMPTS):
            if stored is None:
                return None
            head = open_head(keys, kind, storage_key, stored)
            if head.logical_key != logical_key:
                raise auth_error(kind, storage_key)
            try:
                return read_value(keys, kind, storage_key, head, get)
            except IntegrityError:
                # The head and its chunks are separate gets: a commit that
                # rewrote the row in between leaves a new head behind.  An
                # unchanged head means the chunks really are wrong.
                again = get(storage_key)
                if again == stored:
                    raise
                stored = again
        raise auth_error(kind, storage_key)

    def __repr__(self) -> str:
        return f"<Table {self.descriptor!r} id={self.id[:8].hex()}>"


#: A node operation: ``(table, plaintext or None to delete, size hint of a delete)``.
NodeOp = tuple[Table, bytes | None, int | None]
#: A row operation: ``(table, logical key, value or None to delete)``.
RowOp = tuple[Table, bytes, bytes | None]


class WriteBatch:
    """The writes of one commit.  Later operations on the same row replace earlier ones."""

    __slots__ = ("_committed", "_store", "new_rows", "nodes", "rows")

    def __init__(self, store: TableOwner) -> None:
        self._store = store
        self._committed = False
        self.nodes: dict[bytes, NodeOp] = {}
        self.rows: dict[bytes, RowOp] = {}
        #: storage keys of rows the caller vouches do not exist yet
        self.new_rows: set[bytes] = set()

    def _table(self, table: Table) -> TableKeys:
        if not isinstance(table, Table) or table._store is not self._store:
            raise ValueError("the table belongs to another store")
        if self._committed:
            raise ValueError("this batch was already committed")
        return table.live_keys()

    def put_node(self, table: Table, nid: bytes, plaintext: bytes) -> None:
        """Store node ``plaintext`` under its content address ``nid``."""
        keys = self._table(table)
        storage_key = _check_node_id(nid)
        # One hash more per node; a node stored under an address that does not
        # name it would otherwise surface only in a later verify pass.
        if keys.node_id(_check_bytes("a node", plaintext)) != storage_key:
            raise ValueError("the node id is not the content address of the node")
        self.nodes[storage_key] = (table, plaintext, None)

    def delete_node(self, table: Table, nid: bytes, size: int | None = None) -> None:
        """Delete node ``nid`` and its chunks.

        ``size`` (the node's length) saves the commit from decrypting the node's
        head to learn whether it has chunks; a wrong size leaves orphan chunks.
        """
        self._table(table)
        if size is not None and (type(size) is not int or size < 0):
            raise ValueError("size is the node's length in bytes")
        self.nodes[_check_node_id(nid)] = (table, None, size)

    def put_row(self, table: Table, key: bytes, value: bytes, *, new: bool = False) -> None:
        """Set the mutable row ``key`` to ``value``.

        ``new=True`` vouches that no row ``key`` exists, which spares the
        commit reading the old row to update the coverage digest.  A false
        claim leaves the digest wrong, which verify then reports.
        """
        keys = self._table(table)
        storage_key = keys.row_key(_check_bytes("a row key", key))
        self.rows[storage_key] = (table, key, _check_bytes("a row value", value))
        if new:
            self.new_rows.add(storage_key)
        else:
            self.new_rows.discard(storage_key)

    def delete_row(self, table: Table, key: bytes) -> None:
        """Delete the mutable row ``key`` (absent rows are fine)."""
        keys = self._table(table)
        storage_key = keys.row_key(_check_bytes("a row key", key))
        self.rows[storage_key] = (table, key, None)
        self.new_rows.discard(storage_key)

    def claim(self, store: TableOwner) -> None:
        """Mark the batch committed (it cannot be committed twice)."""
        if store is not self._store:
            raise ValueError("the batch belongs to another store")
        if self._committed:
            raise ValueError("this batch was already committed")
        self._committed = True

    def __len__(self) -> int:
        return len(self.nodes) + len(self.rows)

    def __repr__(self) -> str:
        return f"<WriteBatch nodes={len(self.nodes)} rows={len(self.rows)}>"
