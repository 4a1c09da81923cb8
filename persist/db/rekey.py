"""Master-key rotation of the trees: the :class:`~persist.ebs.rekey.TreeRekeyer`.

Node ids are keyed hashes under the table's node-id key, which changes with
the master key, so every node id -- and every id inside a parent -- changes.
Rather than re-hashing node by node, each table's tree is rebuilt from its
entries with :func:`~persist.btree.bulk_load` through the
:class:`~persist.ebs.rekey.RekeyTarget` of the new keys: full nodes, written
as they are built (children before parents).  The blobs get new ids too, so
the table's count tree is rebuilt from the counts the rebuild reports.  The
ebs does the rest (journal, switch, cleanup; see :mod:`persist.ebs.rekey`),
which keeps the rotation crash-safe; the root log's rows are copied by the
ebs as they are (their chain is over plaintexts, which do not change).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from ..btree import NodeId, Tree, bulk_load
from ..ebs import Table
from ..ebs.rekey import RekeyTarget
from ..errors import IntegrityError
from .treestore import (
    COUNT_TABLE_PREFIX,
    TABLE_PREFIX,
    EbsNodeStore,
    _table_roots,
    count_descriptor,
    descriptor,
)

__all__ = ["TreesRekeyer"]


class _NewKeys:
    """The node store of a table under the new master key: empty so far."""

    index_only = True

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


def _rebuild(
    pairs: Iterator[tuple[bytes, bytes]], target: RekeyTarget
) -> tuple[NodeId | None, dict[NodeId, int]]:
    """Write a new tree of ``pairs`` through ``target``; its root and blob counts."""

    def sink(objects: dict[NodeId, bytes]) -> None:
        for nid, data in objects.items():
            target.put_node(nid, data)

    root, update = bulk_load(_NewKeys(target), pairs, sink=sink)
    sink(update.puts)
    target.flush()
    return root, {nid: n for nid, n in update.blobs.items() if n > 0}


class TreesRekeyer:
    """Rotates every ``tree:`` table and its ``count:`` table (see the module docstring)."""

    def handles(self, descriptor: bytes) -> bool:
        return descriptor.startswith((TABLE_PREFIX.encode(), COUNT_TABLE_PREFIX.encode()))

    def rekey_tables(
        self,
        catalog: Mapping[str, bytes],
        old: Callable[[bytes], Table],
        new: Callable[[bytes], RekeyTarget],
    ) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for name, root in sorted(_table_roots(catalog, TABLE_PREFIX).items()):
            entries = Tree(EbsNodeStore(old(descriptor(name).encode())), root).items()
            new_root, blobs = _rebuild(entries, new(descriptor(name).encode()))
            out[descriptor(name)] = bytes(new_root) if new_root is not None else b""
            counts = ((bytes(nid), n.to_bytes(8, "big")) for nid, n in sorted(blobs.items()))
            count_root, _ = _rebuild(counts, new(count_descriptor(name).encode()))
            if count_root is not None:
                out[count_descriptor(name)] = bytes(count_root)
        return out
