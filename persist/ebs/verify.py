"""The ebs half of ``persist verify``: every row of the store accounted for.

What it checks (and reports, all of it, before returning):

* every keyslot is well formed;
* the previous root slot holds the current root's predecessor;
* every reachable node the caller names exists, authenticates, and has its
  chunks (and, read whole, matches its content digest);
* every mutable row authenticates, sits at the address of the logical key it
  holds, has its chunks, and together with its table's other rows sums to the
  coverage digest in the root -- so a row deleted, added, or rolled back to
  an older ciphertext shows up as a coverage problem of its table;
* every other row is reported as an orphan (an unreferenced node only when
  ``reachable`` was given; a chunk whose head is gone; or a row no key of
  this store authenticates).

What it does not check: whether the nodes' contents make a valid tree, their
reference counts, or whether ``reachable`` is complete -- the tree layer's
checker does that and tells this function what it reached.  Nor can it tell
an old but genuine keyslot from the current one (docs/security.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import IntegrityError
from .keyslot import keyslot_key, parse_keyslot, read_keyslots
from .layout import RowKind
from .root import Coverage, RootRecord, read_roots
from .rows import chunk_keys, open_head, read_value
from .survey import identify, known_descriptors, special_keys

if TYPE_CHECKING:
    from .store import EncryptedStore
    from .table import Table

__all__ = ["Problem", "verify_rows"]


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


def _check_roots(store: EncryptedStore, problems: list[Problem]) -> None:
    ring, root = store.keyring, store.root
    roots = read_roots(store.kvs, ring)
    current, previous = roots[root.count % 2], roots[1 - root.count % 2]
    here = ring.root_slot_key(root.count % 2).hex()
    if not isinstance(current, RootRecord) or current.digest != root.digest:
        problems.append(Problem("root", here, "the current root slot no longer holds this root"))
    there = ring.root_slot_key(1 - root.count % 2).hex()
    if previous is None:
        if root.count > 0:
            problems.append(Problem("root", there, "the previous root is missing"))
    elif isinstance(previous, IntegrityError):
        problems.append(Problem("root", there, "the previous root failed authentication"))
    elif previous.count != root.count - 1 or previous.digest != root.prev_digest:
        problems.append(Problem("root", there, "the previous root does not precede the current"))


def _check_keyslots(store: EncryptedStore, problems: list[Problem]) -> None:
    for index, stored in read_keyslots(store.kvs).items():
        try:
            parse_keyslot(index, stored)
        except IntegrityError:
            where = keyslot_key(index).hex()
            problems.append(Problem("keyslot", where, f"keyslot {index} is malformed"))


def _check_reachable(
    store: EncryptedStore,
    reachable: Mapping[Table, Iterable[bytes]],
    explained: set[bytes],
    problems: list[Problem],
) -> None:
    kvs = store.kvs
    for table, nids in reachable.items():
        keys = table.live_keys()
        for nid in nids:
            storage_key = bytes(nid)
            explained.add(storage_key)
            stored = kvs.get(storage_key)
            if stored is None:
                problems.append(Problem("node", storage_key.hex(), "a reachable node is missing"))
                continue
            try:
                head = open_head(keys, RowKind.NODE, storage_key, stored)
                explained.update(chunk_keys(keys, storage_key, head.chunk_count))
                read_value(keys, RowKind.NODE, storage_key, head, kvs.get)
            except IntegrityError as exc:
                problems.append(Problem("node", storage_key.hex(), str(exc)))


def verify_rows(
    store: EncryptedStore, reachable: Mapping[Table, Iterable[bytes]] | None = None
) -> list[Problem]:
    """Check every row; return every problem found (an empty list: all is well).

    ``reachable`` maps tables to the node ids the tree walk reached; with it,
    any other node is reported as an orphan.  Without it (None), nodes are
    authenticated but their reachability is not judged.  Holds the store's
    lock, so commits wait until the pass is over.
    """
    problems: list[Problem] = []
    with store.lock:
        ring, root, kvs = store.keyring, store.root, store.kvs
        _check_keyslots(store, problems)
        _check_roots(store, problems)
        if kvs.get(ring.journal_key()) is not None:
            problems.append(
                Problem("journal", ring.journal_key().hex(), "a master-key rotation is unfinished")
            )
        explained = special_keys(ring)
        if reachable is not None:
            _check_reachable(store, reachable, explained, problems)
        extra = [t.descriptor for t in reachable] if reachable else []
        tables = [ring.table(d) for d in known_descriptors(root, extra)]
        recomputed: dict[bytes, Coverage] = {}
        chunks_of_heads: set[bytes] = set()
        leftovers: list[bytes] = []
        for storage_key, stored in kvs.scan():
            if storage_key in explained:
                continue
            what = identify(tables, storage_key, stored, (RowKind.ROW, RowKind.NODE))
            if what is None or what.head is None:
                leftovers.append(storage_key)
                continue
            desc = what.table.descriptor
            chunks_of_heads.update(what.chunk_keys(storage_key))
            if what.kind is RowKind.NODE:
                if reachable is not None:
                    problems.append(
                        Problem("orphan", storage_key.hex(), f"unreferenced node of table {desc!r}")
                    )
                continue
            if what.table.row_key(what.head.logical_key) != storage_key:
                problems.append(Problem("row", storage_key.hex(), "row stored at a wrong address"))
            element = what.table.coverage_element(storage_key, stored)
            recomputed[desc] = recomputed.get(desc, Coverage()).add(element)
            try:
                read_value(what.table, RowKind.ROW, storage_key, what.head, kvs.get)
            except IntegrityError as exc:
                problems.append(Problem("row", storage_key.hex(), str(exc)))
        for storage_key in leftovers:
            if storage_key in chunks_of_heads:
                continue
            stored = kvs.get(storage_key) or b""
            what = identify(tables, storage_key, stored, (RowKind.CHUNK,))
            description = (
                "row that no key of this store authenticates (damaged or foreign)"
                if what is None
                else f"chunk of table {what.table.descriptor!r} whose head is gone"
            )
            problems.append(Problem("orphan", storage_key.hex(), description))
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
