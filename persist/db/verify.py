"""Proving a database intact: the engine behind ``persist verify``.

Format v2 makes every row but the keyslots and the two root slots reachable
from the root, so verify is one walk from the root and one scan:

1. For each table, :func:`persist.btree.check_tree` walks its count tree and
   its tree from the roots in the catalog: it reads and authenticates every
   node once (through the ebs, which checks the AEAD and the chunks),
   recomputes every content address, checks order, bounds, fill and subtree
   counts, and compares every blob's and shared object's count with the
   references it found.
2. The root log's segments are read and their hash chain checked against the
   root.
3. :func:`persist.ebs.verify.verify_rows` checks both root slots and the
   keyslots, and reports every row the walk did not reach as an orphan
   (identified for the report), so a row added, or left behind, shows.

Everything is read from one pinned snapshot of the store, so verify checks
one committed state even while a writer commits (in this process or, on
SQLite and PostgreSQL, in another).  The freshness record was checked when
the database was opened.  What is not checked: that a genuine write was
wanted (the holder of the key can write anything), and whether an old but
genuine keyslot was put back (docs/security.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from ..btree import NodeCache, NodeId, Tree, check_tree
from ..ebs import EncryptedStore, Table
from ..ebs.root import RootRecord, read_roots
from ..ebs.store import choose_root
from ..ebs.verify import verify_rows
from ..errors import IntegrityError
from ..kvs import Snapshot
from .rootlog import LOG_DESCRIPTOR, RootLog
from .treestore import (
    COUNT_PREFIX,
    COUNT_TABLE_PREFIX,
    TABLE_PREFIX,
    _table_roots,
    count_descriptor,
    decode_count,
    descriptor,
)

__all__ = ["Issue", "Progress", "verify_database"]


@dataclass(frozen=True)
class Issue:
    """One problem found: a short kind, the hex storage key ("" if none), what is wrong."""

    kind: str
    storage_key: str
    description: str
    table: str = ""

    def __str__(self) -> str:
        where = f" {self.storage_key}" if self.storage_key else ""
        table = f" [{self.table}]" if self.table else ""
        return f"{self.kind}{where}{table}: {self.description}"


class Progress(Protocol):
    """Receives the phases of a verify pass (the CLI draws a progress bar)."""

    def phase(self, name: str, total: int | None) -> None:
        """A phase begins; ``total`` steps, or None when unknown in advance."""

    def advance(self, steps: int) -> None:
        """``steps`` more steps of the current phase are done."""


class _NoProgress:
    def phase(self, name: str, total: int | None) -> None:
        pass

    def advance(self, steps: int) -> None:
        pass


class _VerifyStore:
    """A node store over one table of a pinned snapshot, for the checker.

    Every row it reads is recorded in ``touched`` (so the ebs pass knows what
    the walk reached).  Its index is the table's count tree (format v2) or,
    for a format-v1 store not upgraded yet, the v1 count rows.
    """

    index_only = True

    def __init__(
        self,
        table: Table,
        snapshot: Snapshot,
        touched: set[bytes],
        progress: Progress,
        *,
        counts: dict[NodeId, int] | None = None,
        v1: bool = False,
    ) -> None:
        self.table = table
        self.snapshot = snapshot
        self.touched = touched
        self.progress = progress
        self.counts = counts if counts is not None else {}
        self.v1 = v1
        #: format v2 counts every blob; v1 only objects counted above 1
        self.counts_blobs = not v1
        self.issues: list[Issue] = []

    def node_id(self, data: bytes) -> NodeId:
        return NodeId(self.table.node_id(data))

    def load(self, nid: NodeId) -> bytes:
        self.progress.advance(1)
        return self.table.read_node(nid, self.snapshot.get, self.touched)

    def exists(self, nid: NodeId) -> bool:
        return self.snapshot.get(bytes(nid)) is not None

    def refcount(self, nid: NodeId) -> int:
        if not self.v1:
            return self.counts.get(nid, 0)
        try:
            # a covered mutable row in v1: the ebs pass judges it by its coverage
            raw = self.table.read_row(COUNT_PREFIX + nid, self.snapshot.get)
        except IntegrityError as exc:
            where = self.table.row_key(COUNT_PREFIX + nid).hex()
            self.issues.append(Issue("row", where, f"count row of node {nid.hex()}: {exc}"))
            return 0
        if raw is None:
            return 0
        if len(raw) != 8 or int.from_bytes(raw, "big") < 2:
            where = self.table.row_key(COUNT_PREFIX + nid).hex()
            self.issues.append(Issue("row", where, f"malformed count row of node {nid.hex()}"))
            return 0
        return int.from_bytes(raw, "big")

    def iter_objects(self) -> Iterator[tuple[NodeId, int]]:
        return iter(self.counts.items())


def _count_entries(
    store: _VerifyStore, root: NodeId | None, name: str, issues: list[Issue]
) -> dict[NodeId, int]:
    """The entries of a count tree (its nodes were read and checked already)."""
    counts: dict[NodeId, int] = {}
    if root is None:
        return counts
    try:
        for key, raw in Tree(store, root, cache=NodeCache(4096)).items():
            if len(key) != 32:
                raise IntegrityError("malformed count tree key")
            counts[NodeId(key)] = decode_count(raw)
    except IntegrityError as exc:
        issues.append(Issue("counts", "", f"the count tree cannot be read: {exc}", name))
    return counts


def verify_database(
    ebs: EncryptedStore, snapshot: Snapshot, progress: Progress | None = None
) -> list[Issue]:
    """Every problem of the committed state held by ``snapshot``; empty: intact."""
    report = progress or _NoProgress()
    issues: list[Issue] = []
    ring = ebs.keyring
    try:
        root, _ = choose_root(read_roots(snapshot.get, ring), ebs.kvs.location)
    except IntegrityError as exc:
        return [Issue(type(exc).__name__, "", str(exc))]
    touched: set[bytes] = set()
    v1 = root.version == 1
    roots = _table_roots(root.catalog, TABLE_PREFIX)
    count_roots = _table_roots(root.catalog, COUNT_TABLE_PREFIX)
    for name in sorted(set(count_roots) - set(roots)):
        issues.append(Issue("counts", "", "a count tree for a table the catalog lacks", name))
    total = sum(_entries(ebs, snapshot, r, descriptor(n)) for n, r in roots.items())
    report.phase("checking trees", total or None)
    for name, tree_root in sorted(roots.items()):
        counts: dict[NodeId, int] = {}
        croot = count_roots.get(name)
        if croot is not None:
            cstore = _VerifyStore(ebs.table(count_descriptor(name)), snapshot, touched, report)
            for p in check_tree(cstore, {f"{name} counts": croot}):
                issues.append(Issue(str(p.kind), p.node, p.description, f"{name} (counts)"))
            counts = _count_entries(cstore, croot, name, issues)
        store = _VerifyStore(
            ebs.table(descriptor(name)), snapshot, touched, report, counts=counts, v1=v1
        )
        for p in check_tree(store, {name: tree_root}):
            issues.append(Issue(str(p.kind), p.node, p.description, name))
        issues.extend(store.issues)
    _check_log(ebs, snapshot, root, touched, issues)
    report.phase("checking every row", None)
    extra = [d.encode() for d in root.catalog] + [b"tree:" + n.encode() for n in roots]
    for rp in verify_rows(ebs, snapshot, root, touched, extra, progress=report):
        issues.append(Issue(rp.kind, rp.storage_key, rp.description))
    return issues


def _entries(ebs: EncryptedStore, snapshot: Snapshot, root: NodeId | None, desc: str) -> int:
    """About how many nodes the walk will read (for the progress bar)."""
    if root is None:
        return 0
    try:
        tree = Tree(_Counting(ebs.table(desc), snapshot), root)
        return max(1, tree.count() // 24) * 17 // 16
    except IntegrityError:
        return 0


class _Counting:
    def __init__(self, table: Table, snapshot: Snapshot) -> None:
        self.table, self.snapshot = table, snapshot

    def load(self, nid: NodeId) -> bytes:
        return self.table.read_node(nid, self.snapshot.get)


def _check_log(
    ebs: EncryptedStore,
    snapshot: Snapshot,
    root: RootRecord,
    touched: set[bytes],
    issues: list[Issue],
) -> None:
    meta = root.catalog.get(LOG_DESCRIPTOR, b"")
    if not meta:
        return
    table = ebs.table(LOG_DESCRIPTOR)

    failing: list[bytes] = []  # the segment whose read failed or found nothing

    def read_row(key: bytes) -> bytes | None:
        failing[:] = [key]
        row = table.read_row(key, snapshot.get, touched)
        if row is not None:
            failing.clear()
        return row

    try:
        log = RootLog.load(meta, read_row)
    except IntegrityError as exc:
        # A missing or damaged segment is named by its storage key, as a node is.
        where = table.row_key(failing[0]).hex() if failing else ""
        issues.append(Issue("log", where, str(exc)))
        return
    roots = _table_roots(root.catalog, TABLE_PREFIX)
    for name in sorted(set(log.tables) - set(roots)):
        issues.append(Issue("log", "", "the root log names a table the catalog lacks", name))
    if root.version == 1:  # v1 segments are covered rows: the ebs judges them by coverage
        touched.difference_update(table.row_key(k) for k in log.segment_keys())
