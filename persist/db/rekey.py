"""Master-key rotation of the trees: the :class:`~persist.ebs.rekey.TreeRekeyer`.

Node ids are keyed hashes under the table's node-id key, which changes with
the master key, so every node id -- and every id inside a parent -- changes.
Rather than re-hashing node by node, each table's tree is rebuilt from its
entries with :func:`~persist.btree.bulk_load` through the
:class:`~persist.ebs.rekey.RekeyTarget` of the new keys: full nodes, written
as they are built (children before parents), then the count rows of objects
referenced more than once (deduplicated blobs).  The ebs does the rest
(journal, switch, cleanup; see :mod:`persist.ebs.rekey`), which keeps the
rotation crash-safe.
"""

from __future__ import annotations

from collections.abc import Iterator

from ..btree import NodeId, Tree, bulk_load
from ..ebs import Table
from ..ebs.rekey import RekeyTarget
from ..errors import IntegrityError
from .treestore import COUNT_PREFIX, TABLE_PREFIX, EbsNodeStore

__all__ = ["TreesRekeyer"]


class _NewKeys:
    """The node store of a table under the new master key: empty so far."""

    def __init__(self, target: RekeyTarget) -> None:
        self.target = target

    def node_id(self, data: bytes) -> NodeId:
        return NodeId(self.target.node_id(data))

    def load(self, nid: NodeId) -> bytes:
        raise IntegrityError("a rebuilt tree never reads back its new nodes")

    def refcount(self, nid: NodeId) -> int:
        return 0

    def iter_objects(self) -> Iterator[tuple[NodeId, int]]:
        return iter(())


class TreesRekeyer:
    """Rotates every ``tree:`` table (see the module docstring)."""

    def handles(self, descriptor: bytes) -> bool:
        return descriptor.startswith(TABLE_PREFIX.encode())

    def rekey_table(
        self, descriptor: bytes, payload: bytes | None, old: Table, new: RekeyTarget
    ) -> bytes | None:
        root = NodeId(payload) if payload else None
        entries = Tree(EbsNodeStore(old), root).items()

        def sink(objects: dict[NodeId, bytes]) -> None:
            for nid, data in objects.items():
                new.put_node(nid, data)

        new_root, update = bulk_load(_NewKeys(new), entries, sink=sink)
        sink(update.puts)
        for nid, count in update.counts.items():
            if count > 1:
                new.put_row(COUNT_PREFIX + nid, count.to_bytes(8, "big"))
        new.flush()
        return bytes(new_root) if new_root is not None else b""
