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
from .node import BlobRef, Leaf, Node, children_of, decode_node
from .nodestore import NodeId, NodeStore, TreeUpdate

__all__ = ["Ledger", "release", "retain"]


class Ledger:
    """Reference-count deltas of one operation against a store's committed counts.

    **Liveness comes from the tree, never from a row's presence.**  A store may
    answer :meth:`~.nodestore.NodeStore.refcount` from an authenticated index
    of counted objects only (format v2: the count tree holds every blob and
    every object referenced more than once), and say 0 for any other object.
    The ledger then knows the rest itself: every node the operation reached
    from a committed root (:meth:`note_live`), and every object such a node
    names, is live with a count of at least 1.  While a table keeps a single
    version (no retained snapshot), an object the operation builds that
    equals a live one was necessarily reached: it holds the same keys as the
    live node at that place in the tree, which the batch read to rebuild that
    range (docs/design.md, "Reference counting", rule 6).  So "0" for
    anything else is the truth.  Such a store sets ``index_only = True`` and
    :func:`retain` refuses it: two versions share nodes the batch never reads.
    """

    def __init__(self, store: NodeStore, load_node: Callable[[NodeId], Node]) -> None:
        self._store = store
        self._load_node = load_node
        self._committed: dict[NodeId, int] = {}
        self.delta: dict[NodeId, int] = {}
        self.puts: dict[NodeId, bytes] = {}
        self._born: set[NodeId] = set()
        self._dropped: list[NodeId] = []
        self._live: set[NodeId] = set()
        self._blobs: set[NodeId] = set()

    def note_live(self, nid: NodeId, node: Node | None = None) -> None:
        """``nid`` was reached from a committed root; so were the objects ``node`` names."""
        self._live.add(nid)
        if node is not None:
            if type(node) is Leaf:
                blobs = [v.nid for v in node.values if type(v) is BlobRef]
                self._live.update(blobs)
                self._blobs.update(blobs)
            else:
                self._live.update(children_of(node))

    def load(self, nid: NodeId) -> Node:
        """The object ``nid`` (IntegrityError when it is missing)."""
        return self._load_node(nid)

    def committed(self, nid: NodeId) -> int:
        """Return the committed count of ``nid`` (queried once per operation)."""
        count = self._committed.get(nid)
        if count is None:
            count = self._store.refcount(nid)
            if count == 0 and nid in self._live:
                count = 1
            self._committed[nid] = count
        return count

    def adopt(
        self, nid: NodeId, data: bytes, children: Iterable[NodeId], *, blob: bool = False
    ) -> None:
        """Count one new reference to ``nid``, an object built by this operation.

        REQUIRES: every child was already adopted or incref-ed once on behalf
        of this object.  ``blob``: the object is a blob (its count is tracked
        in :attr:`TreeUpdate.blobs`).
        """
        if blob:
            self._blobs.add(nid)
        self.delta[nid] = self.delta.get(nid, 0) + 1
        if nid not in self._born and self.committed(nid) == 0:
            self._born.add(nid)
            self.puts[nid] = data
        else:
            for child in children:  # exists already, and so do its references
                self.decref(child)

    def incref(self, nid: NodeId, *, blob: bool = False) -> None:
        """Count one new reference to the existing object ``nid``."""
        if blob:
            self._blobs.add(nid)
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
                if data is None:
                    self.note_live(nid, node)  # it was live until now: so are its children
                elif type(node) is Leaf:
                    self._blobs.update(v.nid for v in node.values if type(v) is BlobRef)
                for child in children_of(node):
                    self.decref(child)
        update = TreeUpdate(puts=self.puts)
        blobs = self._blobs
        for nid, change in self.delta.items():
            if change == 0:
                continue
            before = self.committed(nid)
            after = before + change
            if after < 0:
                raise IntegrityError(f"reference count of {nid.hex()} would fall below zero")
            if nid in blobs:
                update.blobs[nid] = after
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
                if before > 1:
                    update.counted_before.add(nid)
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
    if getattr(store, "index_only", False):
        raise ValueError("retained versions need a store that counts every reference")
    ledger = _ledger(store, cache)
    ledger.note_live(root, ledger.load(root))  # the caller holds a committed handle on it
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
    ledger.note_live(root)  # the caller holds a committed handle on it
    ledger.decref(root)
    return ledger.settle()
