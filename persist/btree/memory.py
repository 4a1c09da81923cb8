"""The in-memory node store: the reference implementation and the tests' oracle.

It keeps objects and count rows the way a key-value backed store does (an
object map plus a count map holding only counts above 1), so the tests see
exactly the rows a real store would hold.  Addresses are plain BLAKE2b-256.

With ``index_only=True`` it answers ``refcount`` the way the encrypted store
of format v2 does: from an authenticated index alone (the count of every blob
and every count above 1), and 0 for any other object, present or not, since
the presence of a row proves nothing there.  The trees must then know
liveness from what they reached (:class:`~persist.btree.gc.Ledger`).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator

from ..errors import IntegrityError
from .nodestore import NodeId, TreeUpdate

__all__ = ["MemoryNodeStore"]


class MemoryNodeStore:
    """A :class:`~persist.btree.nodestore.NodeStore` held in two dicts.

    ``objects`` and ``count_rows`` are public so tests can inspect them and
    damage them on purpose.
    """

    def __init__(self, *, index_only: bool = False) -> None:
        self.objects: dict[NodeId, bytes] = {}
        self.count_rows: dict[NodeId, int] = {}
        #: blob -> count, from every update's ``blobs`` (the count tree of format v2)
        self.blob_counts: dict[NodeId, int] = {}
        self.index_only = index_only
        self._lock = threading.Lock()
        self.loads = 0  # calls of load and refcount, for tests of the work done
        self.lookups = 0

    def node_id(self, data: bytes) -> NodeId:
        return NodeId(hashlib.blake2b(data, digest_size=32).digest())

    def load(self, nid: NodeId) -> bytes:
        self.loads += 1
        data = self.objects.get(nid)
        if data is None:
            raise IntegrityError(f"tree object {nid.hex()} is missing")
        return data

    def refcount(self, nid: NodeId) -> int:
        self.lookups += 1
        if self.index_only:
            return self.blob_counts.get(nid) or self.count_rows.get(nid, 0)
        if nid not in self.objects:
            return 0
        return self.count_rows.get(nid, 1)

    def iter_objects(self) -> Iterator[tuple[NodeId, int]]:
        with self._lock:
            objects = list(self.objects)
            rows = self.count_rows
            orphan_rows = [(nid, n) for nid, n in rows.items() if nid not in self.objects]
        for nid in objects:
            yield nid, self.count_rows.get(nid, 1)
        yield from orphan_rows

    def apply(self, update: TreeUpdate) -> None:
        """Apply ``update`` atomically (the way one KVS batch would).

        Raises ValueError, changing nothing, when the update is inconsistent
        with the store: deleting an absent object, misstating whether a
        deleted object has a count row, or a count for an object that neither
        exists nor is put.
        """
        with self._lock:
            for nid in update.deletes:
                if nid not in self.objects or nid in update.puts:
                    raise ValueError(f"update deletes absent or re-put object {nid.hex()}")
                if (nid in self.count_rows) != (nid in update.counted_deletes):
                    raise ValueError(f"update misstates the count row of {nid.hex()}")
            if not update.counted_deletes <= update.deletes:
                raise ValueError("counted_deletes names objects the update does not delete")
            for nid, count in update.counts.items():
                if count < 1 or (nid not in self.objects and nid not in update.puts):
                    raise ValueError(f"update sets a bad count for {nid.hex()}")
                if nid in update.deletes:
                    raise ValueError(f"update both counts and deletes {nid.hex()}")
            for nid in update.deletes:
                del self.objects[nid]
                self.count_rows.pop(nid, None)
            self.objects.update(update.puts)
            for nid, count in update.counts.items():
                if count > 1:
                    self.count_rows[nid] = count
                else:
                    self.count_rows.pop(nid, None)
            for nid, count in update.blobs.items():
                if count > 0:
                    self.blob_counts[nid] = count
                else:
                    self.blob_counts.pop(nid, None)
