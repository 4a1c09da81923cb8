"""Proving a database intact: the engine behind ``persist verify``.

Three passes, every problem collected before anything is reported:

1. A survey of every row (:func:`persist.ebs.survey.survey`) sorts out which
   table each node belongs to; nothing but the keys can tell.
2. :func:`persist.btree.check_tree` walks every table's tree from its root in
   the catalog: it re-reads and authenticates every node, recomputes every
   content address, checks order, bounds, fill and subtree counts, compares
   every reference count with the references found, and reports every
   surveyed node no root reaches as an orphan.
3. :meth:`persist.ebs.EncryptedStore.verify_rows` checks everything outside
   the trees: both root slots, keyslots, every mutable row (count rows among
   them) against its table's coverage digest in the root, chunks, and rows no
   key of this store authenticates.

The freshness record was checked when the database was opened.  What is not
checked: that the passphrase-holder's intent is met (a genuine but unwanted
write is still genuine), and whether an old but genuine keyslot was put back
(docs/security.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from ..btree import NodeId, check_tree
from ..ebs.survey import known_descriptors, survey
from ..errors import IntegrityError
from .treestore import COUNT_PREFIX, TABLE_PREFIX, EbsNodeStore, TreeWaveStore

__all__ = ["Issue", "Progress", "verify_trees"]


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


class _SurveyedStore:
    """A node store whose inventory is what the survey found for one table.

    A count row that fails authentication becomes an issue (and the count is
    taken as 1), so that the walk goes on and reports everything else.
    """

    def __init__(
        self, inner: EbsNodeStore, nodes: list[bytes], issues: list[Issue], progress: Progress
    ) -> None:
        self.inner = inner
        self.nodes = nodes
        self.issues = issues
        self.progress = progress

    def node_id(self, data: bytes) -> NodeId:
        return self.inner.node_id(data)

    def load(self, nid: NodeId) -> bytes:
        self.progress.advance(1)
        return self.inner.load(nid)

    def refcount(self, nid: NodeId) -> int:
        try:
            return self.inner.refcount(nid)
        except IntegrityError as exc:
            table = self.inner.table
            where = table.row_key(COUNT_PREFIX + nid).hex()
            self.issues.append(Issue("row", where, f"count row of node {nid.hex()}: {exc}"))
            return 1

    def iter_objects(self) -> Iterator[tuple[NodeId, int]]:
        for key in self.nodes:
            nid = NodeId(key)
            yield nid, self.refcount(nid)


def verify_trees(trees: TreeWaveStore, progress: Progress | None = None) -> list[Issue]:
    """Every problem of the store under ``trees`` (REQUIRES: no commit meanwhile)."""
    ebs = trees.ebs
    report = progress or _NoProgress()
    issues: list[Issue] = []
    with ebs.lock:
        report.phase("identifying rows", None)
        found = survey(ebs.kvs, ebs.keyring, known_descriptors(ebs.root))
        report.phase("checking trees", sum(len(n) for n in found.nodes.values()))
        explained = {}
        for name in trees.tables():
            tree = trees.tree(name)
            desc = TABLE_PREFIX + name
            table = ebs.table(desc)
            nodes = found.nodes.get(desc.encode(), [])
            store = _SurveyedStore(EbsNodeStore(table), nodes, issues, report)
            for tp in check_tree(store, {name: tree.root if tree is not None else None}):
                issues.append(Issue(str(tp.kind), tp.node, tp.description, name))
            explained[table] = nodes
        report.phase("checking rows outside the trees", None)
        for rp in ebs.verify_rows(explained):
            issues.append(Issue(rp.kind, rp.storage_key, rp.description))
    return issues
