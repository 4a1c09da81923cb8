"""The narrow interface between the tree code and the store that holds its objects.

Everything in :mod:`persist.btree` is pure code over this module: the trees
never see a key-value store, a cipher or a file.  A store provides four
things (:class:`NodeStore`):

* **addresses** -- ``node_id(data)`` is the content address of ``data``.  The
  encrypting store uses a keyed BLAKE2b under the table's node-id key
  (DESIGN 2.2); the in-memory store a plain BLAKE2b.  The tree code never
  hashes by itself, so the addressing scheme is the store's business.
* **objects** -- ``load(nid)`` returns the bytes stored under ``nid`` or raises
  :class:`~persist.errors.IntegrityError` when there are none.
* **reference counts** -- ``refcount(nid)`` is the *committed* count: ``0``
  when the object is absent, ``1`` when it is present without a count row,
  and the stored count otherwise (a count row exists only when the count is
  above 1).  A store whose rows are not authenticated by their presence
  (format v2) sets ``index_only = True`` and answers from an authenticated
  index alone: the count of every blob and of every object counted above 1,
  and 0 for anything else; the trees then take liveness from what they
  reach (:class:`~persist.btree.gc.Ledger`), and keep one version per tree.
* **inventory** -- ``iter_objects()`` lists every stored object with its
  count, for the checker.

The tree code never writes.  Its operations return a :class:`TreeUpdate`, the
write set that the caller applies in one atomic batch together with the new
root (docs/design.md, "B-trees and garbage collection", rules 1-4).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["NODE_ID_SIZE", "NodeId", "NodeSource", "NodeStore", "TreeUpdate"]

#: Length of a content address in bytes (a 256-bit keyed BLAKE2b digest).
NODE_ID_SIZE = 32


class NodeId(bytes):
    """The content address of a stored object: exactly 32 bytes.

    It compares and hashes like the ``bytes`` it holds, so a ``NodeId`` can
    look up a plain-``bytes`` key and vice versa.
    """

    __slots__ = ()

    def __new__(cls, value: bytes) -> NodeId:
        if len(value) != NODE_ID_SIZE:
            raise ValueError(f"a NodeId is {NODE_ID_SIZE} bytes, not {len(value)}")
        return super().__new__(cls, value)

    def __repr__(self) -> str:
        return f"NodeId({self.hex()[:12]}…)"

    def __str__(self) -> str:
        return self.hex()


class NodeSource(Protocol):
    """What reading a tree needs: the objects by address (see :class:`NodeStore`)."""

    def load(self, nid: NodeId) -> bytes:
        """Return the object stored under ``nid``; IntegrityError when there is none."""
        ...


class NodeStore(Protocol):
    """Where the objects of one table's trees live (content-addressed, counted).

    Implementations must allow concurrent calls of ``load`` and ``refcount``
    from several threads; the tree code calls them while readers run.
    """

    def node_id(self, data: bytes) -> NodeId:
        """Return the content address of ``data`` (deterministic, collision-resistant)."""
        ...

    def load(self, nid: NodeId) -> bytes:
        """Return the object stored under ``nid``.

        Raises :class:`~persist.errors.IntegrityError` when there is none (a
        dangling reference is damage, not a missing entry).
        """
        ...

    def refcount(self, nid: NodeId) -> int:
        """Return the committed reference count of ``nid`` (0 when absent)."""
        ...

    def iter_objects(self) -> Iterator[tuple[NodeId, int]]:
        """Yield ``(nid, count)`` for every stored object, in no particular order.

        ``count`` is the stored count (1 when there is no count row).  A count
        row without its object is yielded with its count too, so the checker
        can report it.
        """
        ...


@dataclass
class TreeUpdate:
    """The write set of a tree operation, to be applied in ONE atomic batch.

    ``puts``
        new objects: write ``data`` under ``nid`` (with no count row, unless
        ``counts`` names ``nid`` as well).
    ``counts``
        objects whose count row changes: write the count when it is above 1,
        delete the count row when it is 1.  Objects absent from ``counts``
        keep their count row (or lack of one).
    ``deletes``
        objects whose count reached 0: delete the object and its count row
        (``counted_deletes`` names those that have one).
    ``blobs``
        the new count of every blob whose count changed, 0 for a freed one:
        a store that keeps an authenticated count of every blob (format v2's
        count tree) applies these; one that keeps count rows above 1 only
        can ignore them (``counts`` says the same for counts above 1).

    The three never overlap except that a ``puts`` entry may also appear in
    ``counts`` (a new object that is referenced more than once, or an object
    freed and recreated in a chain of batches).  Applying the update and the
    new root in one batch keeps DESIGN 3 rules 1 and 2.
    """

    puts: dict[NodeId, bytes] = field(default_factory=dict)
    counts: dict[NodeId, int] = field(default_factory=dict)
    deletes: set[NodeId] = field(default_factory=set)
    #: The subset of ``deletes`` that have a count row (committed count above 1),
    #: so that a store need not look for count rows that do not exist.
    counted_deletes: set[NodeId] = field(default_factory=set)
    #: Blob -> its new count (0: freed), for every blob whose count changed.
    blobs: dict[NodeId, int] = field(default_factory=dict)
    #: The subset of ``counts`` that had a count row before (committed count
    #: above 1), so that :meth:`then` can tell whether an object this update
    #: recounts and a later one deletes has a committed count row.
    counted_before: set[NodeId] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.puts or self.counts or self.deletes)

    def then(self, later: TreeUpdate) -> TreeUpdate:
        """Return one update equivalent to applying ``self`` and then ``later``.

        ``later`` must have been computed against the state ``self`` leaves
        (see :class:`~persist.btree.overlay.PendingNodeStore`).  Objects that
        ``self`` creates and ``later`` frees cancel out and are never written.
        """
        combined = TreeUpdate(
            dict(self.puts),
            dict(self.counts),
            set(self.deletes),
            set(self.counted_deletes),
            dict(self.blobs),
            set(self.counted_before),
        )
        combined.absorb(later)
        return combined

    def absorb(self, later: TreeUpdate) -> None:
        """Become ``self.then(later)`` in place: a chain of batches then costs
        the size of each batch, not of everything before it at every step.
        Nothing may be using ``self`` (a :class:`PendingNodeStore` of it) meanwhile.
        """
        puts, counts, deletes = self.puts, self.counts, self.deletes
        counted, before, blobs = self.counted_deletes, self.counted_before, self.blobs
        blobs.update(later.blobs)
        for nid in later.deletes:
            if nid in puts:
                del puts[nid]  # created and freed before any commit: never written
                counts.pop(nid, None)
                blobs.pop(nid, None)  # never committed: nothing to count
            else:
                deletes.add(nid)
                # Whether the committed object has a count row: ``later`` saw
                # the count ``self`` left, so when ``self`` recounted the object
                # only ``self`` knows what was committed.  (``counts`` still
                # holds what ``self`` said of ``nid``: each object is freed once.)
                had_row = nid in before if nid in counts else nid in later.counted_deletes
                counts.pop(nid, None)
                if had_row:
                    counted.add(nid)
        for nid, data in later.puts.items():
            if nid in deletes:
                # Freed by self, recreated by later: the committed object and
                # its count row still exist, so the count must be restated.
                deletes.discard(nid)
                counts[nid] = later.counts.get(nid, 1)
                if nid in counted:
                    before.add(nid)
                counted.discard(nid)
            puts[nid] = data
        for nid, count in later.counts.items():
            if nid not in counts and nid in later.counted_before:
                before.add(nid)  # untouched by self: later saw the committed count
            counts[nid] = count
        counted.intersection_update(deletes)
        before.intersection_update(counts.keys())
