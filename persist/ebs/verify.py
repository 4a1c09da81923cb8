"""The ebs half of ``persist verify``: every row of the store accounted for.

Format v2 makes this a set comparison: every row is a keyslot, a root slot,
or reachable from the root.  The layer above walks from the root and reads
(and so authenticates) every row it reaches -- nodes, their chunks, root-log
segments -- collecting their storage keys; this module checks the rest:

* every keyslot is well formed;
* the current root slot holds the root being verified, and the other slot
  its predecessor (an honest writer always leaves it there);
* no master-key rotation is unfinished (its journal would be reported);
* every other row is an **orphan**: reached by no root.  Each orphan is
  identified by trial decryption for the report (a row of a known table
  that nothing names, a chunk whose head is gone, or a row no key of this
  store authenticates: damaged or foreign).

A format-v1 store (read-only, not upgraded yet) also has mutable rows covered
by a multiset digest in its root: those are recomputed and compared, as v1
did, so a row deleted, added or rolled back shows as a coverage problem.

What it does not check: the trees themselves (the layer above does), nor an
old but genuine keyslot put back (docs/security.md).  It reads every row
once, from the snapshot it is given, so a writer may commit meanwhile.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import IntegrityError
from ..kvs.base import RESERVED_PREFIX, Snapshot, Store
from .journal import read_journal
from .keys import KeyRing
from .keyslot import keyslot_key, parse_keyslot, read_keyslots
from .layout import RowKind
from .root import Coverage, RootRecord, read_roots
from .rows import read_value
from .survey import identify, known_descriptors, special_keys

if TYPE_CHECKING:
    from .store import EncryptedStore
    from .table import Table

__all__ = ["Problem", "check_store", "verify_rows"]


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with the store."""

    #: keyslot, root, journal, node, row, coverage or orphan
    kind: str
    #: hex storage key of the row concerned ("" for a whole table)
    storage_key: str
    description: str

    def __str__(self) -> str:
        where = f" {self.storage_key}" if self.storage_key else ""
        return f"{self.kind}{where}: {self.description}"


def _check_roots(
    source: Store | Snapshot, ring: KeyRing, root: RootRecord, problems: list[Problem]
) -> None:
    roots = read_roots(source.get, ring)
    current, previous = roots[root.count % 2], roots[1 - root.count % 2]
    here = ring.root_slot_key(root.count % 2).hex()
    if not isinstance(current, RootRecord) or not hmac.compare_digest(current.digest, root.digest):
        problems.append(Problem("root", here, "the current root slot no longer holds this root"))
    there = ring.root_slot_key(1 - root.count % 2).hex()
    if previous is None:
        if root.count > 0:
            problems.append(Problem("root", there, "the previous root is missing"))
    elif isinstance(previous, IntegrityError):
        problems.append(Problem("root", there, "the previous root failed authentication"))
    elif previous.count != root.count - 1 or not hmac.compare_digest(
        previous.digest, root.prev_digest
    ):
        problems.append(Problem("root", there, "the previous root does not precede the current"))


def _check_keyslots(source: Store | Snapshot, problems: list[Problem]) -> None:
    for index, stored in read_keyslots(source.get).items():
        try:
            parse_keyslot(index, stored)
        except IntegrityError:
            where = keyslot_key(index).hex()
            problems.append(Problem("keyslot", where, f"keyslot {index} is malformed"))


def verify_rows(
    store: EncryptedStore,
    source: Store | Snapshot,
    root: RootRecord,
    explained: set[bytes],
    tables: Iterable[bytes] = (),
    *,
    progress: object | None = None,
) -> list[Problem]:
    """Every problem outside what the caller reached; an empty list: all is well.

    ``source`` is the snapshot (or store) at ``root``; ``explained`` the
    storage keys the caller read and authenticated from that root; ``tables``
    descriptors to try when identifying orphans, besides the catalog's.
    ``progress``, if given, has ``advance(n)``, called per row scanned.
    """
    problems: list[Problem] = []
    ring = store.keyring
    _check_keyslots(source, problems)
    _check_roots(source, ring, root, problems)
    try:
        journal = read_journal(source.get, ring)
    except IntegrityError:
        problems.append(Problem("journal", ring.journal_key().hex(), "a damaged rekey journal"))
        journal = None
    if journal is not None:
        problems.append(
            Problem("journal", ring.journal_key().hex(), "a master-key rotation is unfinished")
        )
    special = special_keys(ring)
    known = [ring.table(d) for d in known_descriptors(root, tables)]
    advance = getattr(progress, "advance", None)
    recomputed: dict[bytes, Coverage] = {}
    chunks_of_heads: set[bytes] = set()
    leftovers: list[tuple[bytes, bytes]] = []
    v1 = root.version == 1
    try:
        for storage_key, stored in source.scan():
            if advance is not None:
                advance(1)
            if storage_key in explained or storage_key in special:
                continue
            if storage_key.startswith(RESERVED_PREFIX):
                continue  # a replica target's own bookkeeping (docs/remote.md)
            what = identify(known, storage_key, stored, (RowKind.ROW, RowKind.NODE))
            if what is None or what.head is None:
                leftovers.append((storage_key, stored))
                continue
            desc = what.table.descriptor
            chunks_of_heads.update(what.chunk_keys(storage_key))
            if what.kind is RowKind.ROW and v1:
                # format v1: a mutable row, judged by its table's coverage digest
                if what.table.row_key(what.head.logical_key) != storage_key:
                    problems.append(Problem("row", storage_key.hex(), "row at a wrong address"))
                element = what.table.coverage_element(storage_key, stored)
                recomputed[desc] = recomputed.get(desc, Coverage()).add(element)
                try:
                    read_value(what.table, RowKind.ROW, storage_key, what.head, source.get)
                except IntegrityError as exc:
                    problems.append(Problem("row", storage_key.hex(), str(exc)))
                continue
            kind = "node" if what.kind is RowKind.NODE else "row"
            problems.append(
                Problem("orphan", storage_key.hex(), f"unreferenced {kind} of table {desc!r}")
            )
    except IntegrityError as exc:  # the backend holds something that is not a row at all
        problems.append(Problem("store", "", f"the store cannot be read whole: {exc}"))
    for storage_key, stored in leftovers:
        if storage_key in chunks_of_heads:
            continue
        what = identify(known, storage_key, stored, (RowKind.CHUNK,))
        description = (
            "row that no key of this store authenticates (damaged or foreign)"
            if what is None
            else f"chunk of table {what.table.descriptor!r} whose head is gone"
        )
        problems.append(Problem("orphan", storage_key.hex(), description))
    if v1:
        for desc in sorted(set(recomputed) | set(root.coverage)):
            want, have = root.coverage.get(desc, Coverage()), recomputed.get(desc, Coverage())
            if want != have:
                problems.append(
                    Problem(
                        "coverage",
                        "",
                        f"mutable rows of table {desc!r} do not match the root "
                        f"(root: {want.rows} rows, store: {have.rows}; a row was deleted, "
                        "added or rolled back)",
                    )
                )
    return problems


def check_store(
    store: EncryptedStore,
    nodes: Mapping[Table, Iterable[bytes]] | None = None,
    rows: Mapping[Table, Iterable[bytes]] | None = None,
) -> list[Problem]:
    """Verify a store whose reachable rows the caller names (a pinned snapshot of it).

    ``nodes`` maps tables to the node ids reachable from the root, ``rows``
    to the logical keys of the rows it names; each is read and authenticated
    (with its chunks), then :func:`verify_rows` reports everything else.  The
    tree layer does this itself, walking its trees (persist.db.verify).
    """
    problems: list[Problem] = []
    explained: set[bytes] = set()
    with store.pin() as snapshot:
        root = store.root
        for table, nids in (nodes or {}).items():
            for nid in nids:
                try:
                    table.read_node(nid, snapshot.get, explained)
                except IntegrityError as exc:
                    problems.append(Problem("node", bytes(nid).hex(), str(exc)))
        for table, keys in (rows or {}).items():
            for key in keys:
                try:
                    if table.read_row(key, snapshot.get, explained) is None:
                        problems.append(Problem("row", table.row_key(key).hex(), "missing"))
                except IntegrityError as exc:
                    problems.append(Problem("row", table.row_key(key).hex(), str(exc)))
        extra = [t.descriptor for t in [*(nodes or {}), *(rows or {})]]
        problems += verify_rows(store, snapshot, root, explained, extra)
    return problems
