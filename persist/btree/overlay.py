"""A store seen through an update that is not committed yet (chaining batches).

The wave design applies one batch per tree per commit.  A caller that must
apply several batches before committing (or compute the next wave while the
previous one is being written) computes each against a
:class:`PendingNodeStore` over the previous update, then commits the
combination ``first.then(second)``: objects the first creates and the second
frees cancel out and are never written.
"""

from __future__ import annotations

from collections.abc import Iterator

from ..errors import IntegrityError
from .nodestore import NodeId, NodeStore, TreeUpdate

__all__ = ["PendingNodeStore"]


class PendingNodeStore:
    """``base`` as it will be once ``update`` is applied; a read-only NodeStore.

    Both ``base`` and ``update`` must stay unchanged while the view is used.
    """

    def __init__(self, base: NodeStore, update: TreeUpdate) -> None:
        self.base = base
        self.update = update

    def node_id(self, data: bytes) -> NodeId:
        return self.base.node_id(data)

    def load(self, nid: NodeId) -> bytes:
        data = self.update.puts.get(nid)
        if data is not None:
            return data
        if nid in self.update.deletes:
            raise IntegrityError(f"tree object {nid.hex()} is missing")
        return self.base.load(nid)

    def refcount(self, nid: NodeId) -> int:
        if nid in self.update.deletes:
            return 0
        count = self.update.counts.get(nid)
        if count is not None:
            return count
        if nid in self.update.puts:
            return 1
        return self.base.refcount(nid)

    def iter_objects(self) -> Iterator[tuple[NodeId, int]]:
        for nid, count in self.base.iter_objects():
            if nid not in self.update.deletes and nid not in self.update.puts:
                yield nid, self.update.counts.get(nid, count)
        for nid in self.update.puts:
            yield nid, self.refcount(nid)
