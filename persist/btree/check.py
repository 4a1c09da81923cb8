"""The tree checker: walk every tree from its roots and report every problem found.

:func:`check_tree` never stops at the first problem and never raises for
damage; it returns a list of :class:`Problem` (empty when all is well).

What it checks, for every object reachable from the given roots:

* the object exists (``missing``) and is readable;
* its address is the store's address of its bytes (``wrong_address``);
* it decodes as a format-v1 object and is canonically encoded (``undecodable``);
* each link points to the right kind of object, and a blob reference states
  the blob's true size (``bad_link``);
* keys are strictly ascending, and every child's keys lie in the bounds its
  parent states: its minimum equals the parent's key, its maximum is below
  the next key (``order``);
* all leaves are at the same depth and levels count down by one (``height``);
* fill: leaves 16..32 entries and internal nodes 8..16 children, a root leaf
  1..32 entries, a root internal node 2..16 children (``fill``);
* the entry counts stored for each child (``subtree_count``);
* the stored reference count equals the references found: one per parent
  naming it plus one per root handle (``refcount``);
* every stored object is reachable from some root (``orphan``).

An index-only store (``store.index_only``, format v2) lists only its counted
objects in ``iter_objects``: then an object without a count is expected to
be referenced exactly once, a blob must have a count when the store says
``counts_blobs``, and ``orphan`` means a count kept for an object no root
reaches (unreachable rows are the store's own business: the ebs reports
every row no root reaches).

What it does not check: that the values are the ones the application wrote
(only their integrity), nor anything about roots it is not given -- pass
every live root of the store (current tree and retained snapshots), or live
objects show up as orphans and shared ones with a wrong count.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from itertools import pairwise
from typing import NamedTuple

from ..errors import IntegrityError
from .node import (
    INTERNAL_MAX,
    INTERNAL_MIN,
    LEAF_MAX,
    LEAF_MIN,
    Blob,
    BlobRef,
    Internal,
    Leaf,
    Node,
    decode_node,
    encode_blob,
    encode_internal,
    encode_leaf,
)
from .nodestore import NodeId, NodeStore

__all__ = ["Problem", "ProblemKind", "check_tree"]

#: Deeper than any real tree (order 16, 2^64 entries); stops corrupt chains.
_MAX_DEPTH = 64


class ProblemKind(StrEnum):
    MISSING = "missing"
    WRONG_ADDRESS = "wrong_address"
    UNDECODABLE = "undecodable"
    BAD_LINK = "bad_link"
    ORDER = "order"
    HEIGHT = "height"
    FILL = "fill"
    SUBTREE_COUNT = "subtree_count"
    REFCOUNT = "refcount"
    ORPHAN = "orphan"


@dataclass(frozen=True)
class Problem:
    """One problem: its kind, the object's hex address ("" if none) and what is wrong."""

    kind: ProblemKind
    node: str
    description: str


class _Summary(NamedTuple):
    level: int
    low: bytes | None  # None: unknown, because part of the subtree is broken
    high: bytes | None
    entries: int


def _ascending(keys: tuple[bytes, ...]) -> bool:
    return all(a < b for a, b in pairwise(keys))


def _canonical(node: Node) -> bytes:
    if isinstance(node, Leaf):
        return encode_leaf(node.keys, node.values)
    if isinstance(node, Internal):
        return encode_internal(node.level, node.keys, node.children, node.counts)
    return encode_blob(node.data)


class _Checker:
    def __init__(self, store: NodeStore) -> None:
        self.store = store
        self.index_only = bool(getattr(store, "index_only", False))
        self.counts_blobs = bool(getattr(store, "counts_blobs", False))
        self.stored: dict[NodeId, int] = {}
        for nid, count in store.iter_objects():
            self.stored[NodeId(nid)] = count
        self.refs: Counter[NodeId] = Counter()
        self.nodes: dict[NodeId, Node | None] = {}  # None: unreadable
        self.summaries: dict[NodeId, _Summary | None] = {}
        self.fill_checked: set[tuple[NodeId, bool]] = set()
        self.active: set[NodeId] = set()
        self.problems: list[Problem] = []

    def report(self, kind: ProblemKind, nid: NodeId | None, description: str) -> None:
        self.problems.append(Problem(kind, nid.hex() if nid else "", description))

    def read(self, nid: NodeId) -> Node | None:
        """Load, verify and decode ``nid`` once; count its outgoing references."""
        if nid in self.nodes:
            return self.nodes[nid]
        self.nodes[nid] = None
        try:
            data = self.store.load(nid)
        except IntegrityError as exc:
            exists = getattr(self.store, "exists", None)
            present = exists(nid) if exists is not None else nid in self.stored
            if present:
                self.report(ProblemKind.UNDECODABLE, nid, f"unreadable: {exc}")
            else:
                self.report(ProblemKind.MISSING, nid, "referenced object is not stored")
            return None
        if self.store.node_id(data) != nid:
            self.report(ProblemKind.WRONG_ADDRESS, nid, "address is not the hash of the bytes")
        try:
            node = decode_node(data)
        except IntegrityError as exc:
            self.report(ProblemKind.UNDECODABLE, nid, str(exc))
            return None
        if _canonical(node) != data:
            self.report(ProblemKind.UNDECODABLE, nid, "not canonically encoded")
        if isinstance(node, Internal):
            self.refs.update(node.children)
        elif isinstance(node, Leaf):
            self.refs.update(v.nid for v in node.values if type(v) is BlobRef)
        self.nodes[nid] = node
        return node

    def blob(self, ref: BlobRef, parent: NodeId) -> None:
        node = self.read(ref.nid)
        if node is None:
            return
        if not isinstance(node, Blob):
            what = f"value link from {parent.hex()} to a non-blob"
            self.report(ProblemKind.BAD_LINK, ref.nid, what)
        elif len(node.data) != ref.size:
            what = f"blob size {len(node.data)} != {ref.size} in its reference"
            self.report(ProblemKind.BAD_LINK, ref.nid, what)

    def fill(self, nid: NodeId, node: Leaf | Internal, is_root: bool) -> None:
        if (nid, is_root) in self.fill_checked:
            return
        self.fill_checked.add((nid, is_root))
        if isinstance(node, Leaf):
            n, low, high, what = len(node.keys), (1 if is_root else LEAF_MIN), LEAF_MAX, "entries"
        else:
            n, high, what = len(node.children), INTERNAL_MAX, "children"
            low = 2 if is_root else INTERNAL_MIN
        if not low <= n <= high:
            where = "root" if is_root else "node"
            self.report(ProblemKind.FILL, nid, f"{where} has {n} {what}, not {low}..{high}")

    def subtree(self, nid: NodeId, depth: int) -> _Summary | None:
        """Check the subtree ``nid`` (memoized) and return its summary."""
        if nid in self.summaries:
            return self.summaries[nid]
        if nid in self.active or depth > _MAX_DEPTH:
            self.report(ProblemKind.HEIGHT, nid, "reference cycle or impossible depth")
            return None
        self.active.add(nid)
        try:
            summary = self._subtree(nid, depth)
        finally:
            self.active.discard(nid)
        self.summaries[nid] = summary
        return summary

    def _subtree(self, nid: NodeId, depth: int) -> _Summary | None:
        node = self.read(nid)
        if node is None:
            return None
        if isinstance(node, Blob):
            self.report(ProblemKind.BAD_LINK, nid, "tree link points to a blob")
            return None
        if not _ascending(node.keys):
            self.report(ProblemKind.ORDER, nid, "keys are not strictly ascending")
        if isinstance(node, Leaf):
            for value in node.values:
                if type(value) is BlobRef:
                    self.blob(value, nid)
            if not node.keys:
                return _Summary(0, None, None, 0)
            return _Summary(0, node.keys[0], node.keys[-1], len(node.keys))
        return self._internal(nid, node, depth)

    def _internal(self, nid: NodeId, node: Internal, depth: int) -> _Summary:
        high: bytes | None = None
        for i, child in enumerate(node.children):
            sub = self.subtree(child, depth + 1)
            if sub is None:
                high = None
                continue
            child_node = self.nodes[child]
            assert isinstance(child_node, Leaf | Internal)
            self.fill(child, child_node, is_root=False)
            if sub.level != node.level - 1:
                what = f"level {sub.level} under level {node.level}"
                self.report(ProblemKind.HEIGHT, child, what)
            if sub.entries != node.counts[i]:
                self.report(
                    ProblemKind.SUBTREE_COUNT,
                    nid,
                    f"child {i} holds {sub.entries} entries, parent says {node.counts[i]}",
                )
            if sub.low is not None and sub.low != node.keys[i]:
                self.report(ProblemKind.ORDER, child, f"minimum key differs from parent key {i}")
            nxt = node.keys[i + 1] if i + 1 < len(node.keys) else None
            if sub.high is not None and nxt is not None and sub.high >= nxt:
                self.report(ProblemKind.ORDER, child, f"keys reach beyond parent key {i + 1}")
            high = sub.high
        return _Summary(node.level, node.keys[0], high, sum(node.counts))

    def root(self, nid: NodeId) -> None:
        self.refs[nid] += 1
        self.subtree(nid, 0)
        node = self.nodes.get(nid)
        if isinstance(node, Leaf | Internal):
            self.fill(nid, node, is_root=True)

    def counts(self) -> None:
        if self.index_only:
            self._index_counts()
            return
        for nid, found in self.refs.items():
            if self.nodes.get(nid) is None and nid not in self.stored:
                continue  # reported as missing
            stored = self.stored.get(nid, 0)
            if stored != found:
                self.report(
                    ProblemKind.REFCOUNT, nid, f"stored count {stored}, {found} references found"
                )
        for nid, count in self.stored.items():
            if nid not in self.refs:
                self.report(ProblemKind.ORPHAN, nid, f"stored (count {count}) but unreachable")

    def _index_counts(self) -> None:
        for nid, found in self.refs.items():
            node = self.nodes.get(nid)
            if node is None:
                continue  # reported as missing or unreadable
            counted = self.store.refcount(nid)
            if counted == 0 and isinstance(node, Blob) and self.counts_blobs:
                what = f"blob referenced {found} times has no count"
                self.report(ProblemKind.REFCOUNT, nid, what)
            elif (counted or 1) != found:
                what = f"stored count {counted or 1}, {found} references found"
                self.report(ProblemKind.REFCOUNT, nid, what)
        for nid, count in self.stored.items():
            if nid not in self.refs:
                self.report(ProblemKind.ORPHAN, nid, f"a count ({count}) for an unreachable object")


def check_tree(store: NodeStore, roots: Mapping[str, NodeId | None]) -> list[Problem]:
    """Check every tree of ``store`` named in ``roots``; return all problems found.

    ``roots`` maps a name (for messages) to a root address, ``None`` for an
    empty tree.  Every root handle counts one reference, so two names for
    one root expect a count of 2 (see :func:`~persist.btree.gc.retain`).
    The store is only read.
    """
    checker = _Checker(store)
    for root in roots.values():
        if root is not None:
            checker.root(NodeId(root))
    checker.counts()
    return checker.problems
