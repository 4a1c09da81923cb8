"""Reference-counting garbage collection: the arithmetic behind every TreeUpdate.

Theory of operation
-------------------
The objects of one table (leaves, internal nodes, blobs) form a DAG: a node
names its children and blobs by content address, so an object can only name
objects that existed before it, and cycles cannot arise.  Several roots
(the table's current version, retained snapshots) share subtrees.

The count of an object is the number of references to it: one per parent
node that names it (a leaf naming the same blob twice counts twice) plus one
per root handle held by the caller (the catalog entry of a table, a
snapshot).  Stored as DESIGN 2.3 says: absent object = 0, object without a
count row = 1, a count row only when the count is above 1.

A tree operation never edits a stored object.  It builds new objects and
then states, through a :class:`Ledger`, how references change:

1. ``adopt(nid, data, children)`` -- one new reference to an object the
   operation built.  If the object did not exist (and was not adopted
   before), it is *born*: its bytes join ``puts``.  Its children were
   already counted (children are adopted or ``incref``-ed before their
   parent, bottom-up).  If it existed already -- equal content is stored
   once -- its children's references exist too, so the references just
   counted for them are withdrawn again.
2. ``incref(nid)`` -- one new reference to an existing object (a subtree or
   blob moved unchanged into a new node, a retained root).
3. ``decref(nid)`` -- one reference dropped (the old root of the tree, a
   released snapshot).

:meth:`Ledger.settle` runs after every increment is known.  An object whose
committed count plus its delta is 0 *dies*: it joins ``deletes`` and its
children are decremented in turn, recursively.  Deaths are settled last
because only then is "count reached zero" final: a subtree that a new node
still shares gets its increment before its old parent's death takes the
decrement back, so its count never passes through zero and it is never
visited.  The work of a batch is therefore proportional to the nodes it
touched, never to the size of the tree (no mark-and-sweep, ever).  A
negative count means the store's counts are damaged: IntegrityError.

Only counts that change representation reach the update: a count row is
written when the new count is above 1 and deleted when it falls to 1; an
object created with count 1 needs no row at all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ..errors import IntegrityError
from .cache import NodeCache, NodeReader
from .node import Node, children_of, decode_node
from .nodestore import NodeId, NodeStore, TreeUpdate

__all__ = ["Ledger", "release", "retain"]


class Ledger:
    """Reference-count deltas of one operation against a store's committed counts."""

    def __init__(self, store: NodeStore, load_node: Callable[[NodeId], Node]) -> None:
        self._store = store
        self._load_node = load_node
        self._committed: dict[NodeId, int] = {}
        self.delta: dict[NodeId, int] = {}
        self.puts: dict[NodeId, bytes] = {}
        self._born: set[NodeId] = set()
        self._dropped: list[NodeId] = []

    def committed(self, nid: NodeId) -> int:
        """Return the store's committed count of ``nid`` (queried once per operation)."""
        count = self._committed.get(nid)
        if count is None:
            count = self._committed[nid] = self._store.refcount(nid)
        return count

    def adopt(self, nid: NodeId, data: bytes, children: Iterable[NodeId]) -> None:
        """Count one new reference to ``nid``, an object built by this operation.

        REQUIRES: every child was already adopted or incref-ed once on behalf
        of this object.
        """
        self.delta[nid] = self.delta.get(nid, 0) + 1
        if nid not in self._born and self.committed(nid) == 0:
            self._born.add(nid)
            self.puts[nid] = data
        else:
            for child in children:  # exists already, and so do its references
                self.decref(child)

    def incref(self, nid: NodeId) -> None:
        """Count one new reference to the existing object ``nid``."""
        self.delta[nid] = self.delta.get(nid, 0) + 1

    def decref(self, nid: NodeId) -> None:
        """Count one dropped reference to ``nid``."""
        self.delta[nid] = self.delta.get(nid, 0) - 1
        self._dropped.append(nid)

    def take_puts(self) -> dict[NodeId, bytes]:
        """Hand over the objects born so far, for a caller that writes them early.

        They stay born: later references only add to their counts, and the
        final update restates a count above 1.  See :func:`~.bulk.bulk_load`.
        """
        taken, self.puts = self.puts, {}
        return taken

    def settle(self) -> TreeUpdate:
        """Free what reached zero (recursively) and return the resulting write set."""
        dead: set[NodeId] = set()
        dropped = self._dropped
        while dropped:
            nid = dropped.pop()
            if nid in dead or self.delta[nid] >= 0:
                continue  # a moved subtree (+1 -1) is never looked up, let alone read
            final = self.committed(nid) + self.delta[nid]
            if final < 0:
                raise IntegrityError(f"reference count of {nid.hex()} would fall below zero")
            if final == 0:
                dead.add(nid)
                # An object built and freed by the same operation is never written.
                data = self.puts.pop(nid, None)
                node = self._load_node(nid) if data is None else decode_node(data)
                for child in children_of(node):
                    self.decref(child)
        update = TreeUpdate(puts=self.puts)
        for nid, change in self.delta.items():
            if change == 0:
                continue
            before = self.committed(nid)
            after = before + change
            if after < 0:
                raise IntegrityError(f"reference count of {nid.hex()} would fall below zero")
            if after == 0:
                if before > 0:
                    update.deletes.add(nid)
                if before > 1:
                    update.counted_deletes.add(nid)
            elif before == 0:
                if nid not in self._born:
                    raise IntegrityError(f"reference to missing object {nid.hex()}")
                if after > 1:
                    update.counts[nid] = after
            elif after != before and (after > 1 or before > 1):
                update.counts[nid] = after
        return update


def _ledger(store: NodeStore, cache: NodeCache | None) -> Ledger:
    return Ledger(store, NodeReader(store, cache).node)


def retain(store: NodeStore, root: NodeId | None, *, cache: NodeCache | None = None) -> TreeUpdate:
    """Return the update that adds one root handle to ``root`` (keep a snapshot alive).

    Commit it together with whatever records the new handle; undo with
    :func:`release`.  ``None`` (the empty tree) needs no handle.
    """
    if root is None:
        return TreeUpdate()
    ledger = _ledger(store, cache)
    if ledger.committed(root) == 0:
        raise IntegrityError(f"cannot retain missing root {root.hex()}")
    ledger.incref(root)
    return ledger.settle()


def release(store: NodeStore, root: NodeId | None, *, cache: NodeCache | None = None) -> TreeUpdate:
    """Return the update that drops one root handle to ``root`` (drop a table or snapshot).

    Every object reachable only through this handle is deleted; shared
    subtrees just lose one reference.
    """
    if root is None:
        return TreeUpdate()
    ledger = _ledger(store, cache)
    ledger.decref(root)
    return ledger.settle()
