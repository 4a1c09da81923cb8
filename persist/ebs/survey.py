"""Telling what a stored row is, given the keys: the scan under verify and rekey.

Storage keys look random on purpose, so nothing but the keys can say which
table or kind a row belongs to.  :func:`identify` finds out by trial: the
associated data binds kind, table and address, so exactly one combination of
(kind, table) authenticates a genuine row and none authenticates anything
else.  The cost is up to ``3 x tables`` failed AEAD checks per row, paid only
by verify and rekey, never by reads and commits.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from ..errors import IntegrityError
from ..kvs.base import Store
from .keys import KeyRing, TableKeys
from .keyslot import MAX_KEYSLOTS, keyslot_key
from .layout import RowKind
from .root import RootRecord
from .rows import Head, chunk_keys, open_envelope, open_head

__all__ = ["Identified", "Survey", "identify", "known_descriptors", "special_keys", "survey"]


@dataclass(frozen=True, slots=True)
class Identified:
    """A row that authenticated as ``kind`` of ``table``."""

    kind: RowKind
    table: TableKeys
    #: The decrypted head of a ROW or NODE (None for a CHUNK).
    head: Head | None

    def chunk_keys(self, storage_key: bytes) -> list[bytes]:
        if self.head is None:
            return []
        return chunk_keys(self.table, storage_key, self.head.chunk_count)


def identify(
    tables: Sequence[TableKeys],
    storage_key: bytes,
    stored: bytes,
    kinds: Iterable[RowKind] = (RowKind.ROW, RowKind.NODE, RowKind.CHUNK),
) -> Identified | None:
    """The kind and table under which ``stored`` authenticates at ``storage_key``."""
    for kind in kinds:
        for table in tables:
            try:
                if kind is RowKind.CHUNK:
                    open_envelope(table.cipher, kind, table.id, storage_key, stored)
                    return Identified(kind, table, None)
                return Identified(kind, table, open_head(table, kind, storage_key, stored))
            except IntegrityError:
                continue
    return None


def special_keys(ring: KeyRing) -> set[bytes]:
    """Addresses of rows that are no table's: keyslots, root slots, the journal."""
    keys = {keyslot_key(i) for i in range(MAX_KEYSLOTS)}
    keys.update(ring.root_slot_key(slot) for slot in (0, 1))
    keys.add(ring.journal_key())
    return keys


def known_descriptors(root: RootRecord, extra: Iterable[bytes] = ()) -> list[bytes]:
    """Every table the root knows of (catalog and coverage), plus ``extra``."""
    names = {name.encode("utf-8") for name in root.catalog}
    names.update(root.coverage)
    names.update(extra)
    return sorted(names)


@dataclass
class Survey:
    """The rows of a store that authenticate under one key ring."""

    #: table descriptor -> storage keys of its mutable rows (heads)
    rows: dict[bytes, list[bytes]] = field(default_factory=dict)
    #: table descriptor -> storage keys of its nodes (heads)
    nodes: dict[bytes, list[bytes]] = field(default_factory=dict)
    #: storage keys of chunks (of rows and nodes alike)
    chunks: list[bytes] = field(default_factory=list)

    def all_keys(self) -> Iterator[bytes]:
        for group in (*self.rows.values(), *self.nodes.values(), self.chunks):
            yield from group


def survey(kvs: Store, ring: KeyRing, descriptors: Iterable[bytes]) -> Survey:
    """Scan the whole store and sort out every row that ``ring`` authenticates.

    REQUIRES: no commit runs meanwhile (hold the store's lock).
    """
    tables = [ring.table(d) for d in descriptors]
    skip = special_keys(ring)
    found = Survey()
    for storage_key, stored in kvs.scan():
        if storage_key in skip:
            continue
        what = identify(tables, storage_key, stored)
        if what is None:
            continue
        if what.kind is RowKind.CHUNK:
            found.chunks.append(storage_key)
        else:
            group = found.rows if what.kind is RowKind.ROW else found.nodes
            group.setdefault(what.table.descriptor, []).append(storage_key)
    return found
