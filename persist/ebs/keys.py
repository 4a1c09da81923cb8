"""The key hierarchy below the master key (docs/format.md "Key hierarchy").

A random 256-bit master key is the only long-lived secret a keyslot wraps.
Every key actually used is an HKDF-SHA256 subkey of it with its own label:
store-wide ones for the root and the rekey journal, and per-table ones for
row encryption, row locators, node ids, chunk locators and row coverage.
Tables are named by a type-and-name descriptor (``b"tree:accounts"``); the
table id is an unkeyed hash of it, so it survives a master-key rotation and
names the same table in every store.

Key objects never show key bytes in ``repr`` and refuse to be pickled.
Python cannot reliably wipe memory, so keys live until garbage collected.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import threading
from typing import NewType, NoReturn

from .kdf import hkdf_sha256
from .layout import keyed_hash
from .xaes import XAES256GCM

__all__ = ["MASTER_KEY_SIZE", "MAX_DESCRIPTOR", "KeyRing", "NodeId", "TableKeys", "table_id"]

#: A 32-byte content address: the storage key of a node (DESIGN §2.2).  At
#: runtime it is plain ``bytes``, so it can be a kvs key as it is.
NodeId = NewType("NodeId", bytes)

MASTER_KEY_SIZE = 32
#: Longest table descriptor (the root stores its length in 16 bits).
MAX_DESCRIPTOR = 1024
# HKDF info labels: docs/format.md "Key hierarchy".  The table id is appended
# to the per-table labels.
_LABEL_PREFIX = b"persist/v1/"
_TABLE_ID_PERSON = b"persist-table-v1"
_ROOT_SLOT = struct.Struct(">B")


def _label(purpose: bytes, table: bytes = b"") -> bytes:
    return _LABEL_PREFIX + purpose + (b"/" + table if table else b"")


def table_id(descriptor: bytes) -> bytes:
    """BLAKE2b-256 of the descriptor (1..1024 bytes of UTF-8), person ``persist-table-v1``."""
    if not isinstance(descriptor, bytes) or not 0 < len(descriptor) <= MAX_DESCRIPTOR:
        raise ValueError(f"a table descriptor is 1..{MAX_DESCRIPTOR} bytes")
    try:
        descriptor.decode("utf-8")  # it doubles as the table's catalog name
    except UnicodeDecodeError:
        raise ValueError("a table descriptor is UTF-8 text") from None
    return hashlib.blake2b(descriptor, digest_size=32, person=_TABLE_ID_PERSON).digest()


class TableKeys:
    """The subkeys of one table under one master key."""

    __slots__ = ("_chunk", "_coverage", "_locator", "_node_id", "cipher", "descriptor", "id")

    def __init__(self, master: bytes, descriptor: bytes) -> None:
        self.descriptor = descriptor
        self.id = table_id(descriptor)
        self.cipher = XAES256GCM(hkdf_sha256(master, _label(b"row-enc", self.id)))
        self._locator = hkdf_sha256(master, _label(b"row-locator", self.id))
        self._node_id = hkdf_sha256(master, _label(b"node-id", self.id))
        self._chunk = hkdf_sha256(master, _label(b"chunk-locator", self.id))
        self._coverage = hkdf_sha256(master, _label(b"coverage", self.id))

    def row_key(self, logical_key: bytes) -> bytes:
        """Storage key of the mutable row ``logical_key``."""
        return keyed_hash(self._locator, logical_key)

    def node_id(self, plaintext: bytes) -> NodeId:
        """Content address of a node: keyed BLAKE2b-256 of its canonical bytes."""
        return NodeId(keyed_hash(self._node_id, plaintext))

    def chunk_key(self, head_key: bytes, index: int) -> bytes:
        """Storage key of chunk ``index`` of the value whose head is at ``head_key``."""
        return keyed_hash(self._chunk, head_key, index.to_bytes(4, "big"))

    def coverage_element(self, storage_key: bytes, stored: bytes) -> int:
        """The multiset-hash element of one stored mutable row (see root.py)."""
        return int.from_bytes(keyed_hash(self._coverage, storage_key, stored), "big")

    def __repr__(self) -> str:
        return f"<TableKeys {self.descriptor!r}>"

    def __reduce__(self) -> NoReturn:
        raise TypeError("key objects cannot be pickled")


class KeyRing:
    """The master key and its store-wide subkeys; per-table keys on demand."""

    __slots__ = (
        "_journal_locator",
        "_lock",
        "_master",
        "_root_locator",
        "_tables",
        "journal_cipher",
        "root_cipher",
    )

    def __init__(self, master: bytes) -> None:
        if not isinstance(master, bytes) or len(master) != MASTER_KEY_SIZE:
            raise ValueError("a master key is 32 bytes")
        self._master = master
        self.root_cipher = XAES256GCM(hkdf_sha256(master, _label(b"root-enc")))
        self._root_locator = hkdf_sha256(master, _label(b"root-locator"))
        self.journal_cipher = XAES256GCM(hkdf_sha256(master, _label(b"journal-enc")))
        self._journal_locator = hkdf_sha256(master, _label(b"journal-locator"))
        self._tables: dict[bytes, TableKeys] = {}
        self._lock = threading.Lock()

    @property
    def master(self) -> bytes:
        """The raw master key (for wrapping into keyslots and the rekey journal)."""
        return self._master

    def root_slot_key(self, slot: int) -> bytes:
        """Storage key of root slot 0 or 1; it derives from the master key."""
        return keyed_hash(self._root_locator, b"root-slot", _ROOT_SLOT.pack(slot))

    def journal_key(self) -> bytes:
        """Storage key of the rekey journal under this master key."""
        return keyed_hash(self._journal_locator, b"journal")

    def table(self, descriptor: bytes) -> TableKeys:
        """The (cached) subkeys of the table named ``descriptor``."""
        keys = self._tables.get(descriptor)
        if keys is None:
            with self._lock:
                keys = self._tables.get(descriptor)
                if keys is None:
                    keys = self._tables[descriptor] = TableKeys(self._master, descriptor)
        return keys

    def same_master(self, other: bytes) -> bool:
        return hmac.compare_digest(self._master, other)

    def __repr__(self) -> str:
        return "<KeyRing master=***>"

    def __reduce__(self) -> NoReturn:
        raise TypeError("key objects cannot be pickled")
