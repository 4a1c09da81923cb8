"""The committed state: one Merkle B-tree per table in the encrypted byte store.

This is the :class:`~persist.mux.WaveStore` of a real database.  A wave's
changes are applied to each table's tree as ONE sorted batch
(:func:`~persist.btree.apply_batch`), so every touched node is encoded,
hashed and encrypted once per wave; all tables' new nodes, count rows and
deletions go into one ebs :class:`~persist.ebs.WriteBatch` that
:meth:`~persist.ebs.EncryptedStore.commit` writes with the new root as one
atomic kvs batch (DESIGN §3 rules 1 and 2).  Only then are the new tree roots
published to readers, by replacing one dictionary (an atomic reference swap),
so a reader sees either the old or the new state of every table, never a mix.

Catalog (docs/format.md, "Catalog"): table ``name`` is the ebs table with
descriptor ``tree:<name>``; its catalog payload is the 32-byte root node id,
or empty for an empty tree.  A node's reference count above 1 is the mutable
row ``rc`` + node id of the same table (8 bytes, big-endian).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping

from ..btree import DELETE, NodeCache, NodeId, Tree, TreeUpdate, apply_batch
from ..btree.nodestore import NODE_ID_SIZE
from ..ebs import EncryptedStore, Table, WriteBatch
from ..ebs.survey import survey
from ..errors import IntegrityError

__all__ = ["COUNT_PREFIX", "TABLE_PREFIX", "EbsNodeStore", "TreeWaveStore"]

TABLE_PREFIX = "tree:"
COUNT_PREFIX = b"rc"
_COUNT_SIZE = 8
_FACTS_MAX = 200_000  # nodes whose count and size the writer remembers (about 30 MB)


def descriptor(name: str) -> str:
    return TABLE_PREFIX + name


class EbsNodeStore:
    """A :class:`~persist.btree.NodeStore` over one table of the encrypted store.

    Facts cache: the persistence thread is the only writer, so committed
    reference counts change only through its own commits.  It remembers, in a
    bounded LRU, the count and size of the nodes it committed or looked up,
    and tells the ebs each deleted node's size.  That saves the store reads
    that would otherwise cost about four per rewritten node.  The cache is
    updated only after a commit is durable (:meth:`committed`).
    """

    __slots__ = ("_facts", "_facts_max", "_lock", "table")

    def __init__(self, table: Table, facts_max: int = _FACTS_MAX) -> None:
        self.table = table
        self._facts: OrderedDict[bytes, tuple[int, int | None]] = OrderedDict()
        self._facts_max = facts_max
        self._lock = threading.Lock()

    def node_id(self, data: bytes) -> NodeId:
        return NodeId(self.table.node_id(data))

    def load(self, nid: NodeId) -> bytes:
        return self.table.read_node(nid)

    def refcount(self, nid: NodeId) -> int:
        with self._lock:
            fact = self._facts.get(nid)
        if fact is not None:
            return fact[0]
        if not self.table.has_node(nid):
            return 0  # most lookups are of new nodes: one read, no count row to read
        raw = self.table.read_row(COUNT_PREFIX + nid)
        count = 1
        if raw is not None:
            if len(raw) != _COUNT_SIZE or int.from_bytes(raw, "big") < 2:
                raise IntegrityError(f"malformed count row for node {nid.hex()}")
            count = int.from_bytes(raw, "big")
        self._remember(nid, count, None)
        return count

    def iter_objects(self) -> Iterator[tuple[NodeId, int]]:
        """Every node of this table with its count: a scan of the whole store.

        Addresses reveal nothing, so the table's nodes are found by trial
        authentication of every row (costly: for checks, never for reads).
        REQUIRES: no commit meanwhile.
        """
        ebs = self.table.store
        found = survey(ebs.kvs, ebs.keyring, [self.table.descriptor])
        for key in found.nodes.get(self.table.descriptor, []):
            nid = NodeId(key)
            yield nid, self.refcount(nid)

    def add_to_batch(self, batch: WriteBatch, update: TreeUpdate) -> None:
        """Record ``update`` (the tree layer's write set) in an ebs batch."""
        t = self.table
        for nid, data in update.puts.items():
            batch.put_node(t, nid, data)
        for nid, count in update.counts.items():
            if count > 1:
                batch.put_row(t, COUNT_PREFIX + nid, count.to_bytes(_COUNT_SIZE, "big"))
            else:
                batch.delete_row(t, COUNT_PREFIX + nid)
        for nid in update.deletes:
            with self._lock:
                fact = self._facts.get(nid)
            batch.delete_node(t, nid, fact[1] if fact is not None else None)
        for nid in update.counted_deletes:
            batch.delete_row(t, COUNT_PREFIX + nid)

    def committed(self, update: TreeUpdate) -> None:
        """Learn the facts ``update`` made true.  REQUIRES: it is durable."""
        for nid, data in update.puts.items():
            self._remember(nid, update.counts.get(nid, 1), len(data))
        for nid, count in update.counts.items():
            if nid not in update.puts:
                with self._lock:
                    fact = self._facts.get(nid)
                self._remember(nid, count, fact[1] if fact is not None else None)
        with self._lock:
            for nid in update.deletes:
                self._facts.pop(nid, None)

    def forget(self) -> None:
        """Drop every fact (after a failed commit, nothing is known for sure)."""
        with self._lock:
            self._facts.clear()

    def _remember(self, nid: bytes, count: int, size: int | None) -> None:
        with self._lock:
            self._facts[nid] = (count, size)
            self._facts.move_to_end(nid)
            while len(self._facts) > self._facts_max:
                self._facts.popitem(last=False)


class TreeWaveStore:
    """Committed trees of every table; commits waves; serves reads lock-free."""

    def __init__(self, ebs: EncryptedStore, *, cache_nodes: int = 50_000) -> None:
        self.ebs = ebs
        self.cache = NodeCache(cache_nodes)
        self._lock = threading.Lock()  # guards _stores (created lazily by readers too)
        self._stores: dict[str, EbsNodeStore] = {}
        roots: dict[str, NodeId | None] = {}
        for desc, payload in ebs.root.catalog.items():
            if not desc.startswith(TABLE_PREFIX):
                continue
            if payload and len(payload) != NODE_ID_SIZE:
                raise IntegrityError(f"catalog entry of {desc!r} is malformed")
            roots[desc[len(TABLE_PREFIX) :]] = NodeId(payload) if payload else None
        self._trees: dict[str, Tree] = {
            name: Tree(self._store(name), root, cache=self.cache) for name, root in roots.items()
        }

    def _store(self, name: str) -> EbsNodeStore:
        with self._lock:
            ns = self._stores.get(name)
            if ns is None:
                ns = self._stores[name] = EbsNodeStore(self.ebs.table(descriptor(name)))
            return ns

    # -- the WaveStore interface -------------------------------------------------

    def commit_wave(self, number: int, changes: Mapping[str, Mapping[bytes, bytes | None]]) -> None:
        trees = dict(self._trees)
        batch = self.ebs.batch()
        updates: list[tuple[EbsNodeStore, TreeUpdate]] = []
        for name, tab in changes.items():
            ns = self._store(name)
            old = trees.get(name)
            sorted_changes = [(k, DELETE if v is None else v) for k, v in sorted(tab.items())]
            root, update = apply_batch(
                ns, old.root if old is not None else None, sorted_changes, cache=self.cache
            )
            ns.add_to_batch(batch, update)
            updates.append((ns, update))
            trees[name] = Tree(ns, root, cache=self.cache)
        catalog = {descriptor(n): bytes(t.root or b"") for n, t in trees.items()}
        try:
            self.ebs.commit(batch, catalog)
        except BaseException:
            for ns, _ in updates:
                ns.forget()
            raise
        for ns, update in updates:
            ns.committed(update)
        self._trees = trees  # publish: one reference swap (see the module docstring)

    def tree(self, table: str) -> Tree | None:
        return self._trees.get(table)

    def get(self, table: str, key: bytes) -> bytes | None:
        tree = self._trees.get(table)
        return None if tree is None else tree.get(key)

    def scan(
        self, table: str, start: bytes | None, stop: bytes | None, reverse: bool
    ) -> Iterator[tuple[bytes, bytes]]:
        tree = self._trees.get(table)
        if tree is None:
            return iter(())
        return tree.items(start, stop, reverse=reverse)

    def count(self, table: str) -> int:
        tree = self._trees.get(table)
        return 0 if tree is None else tree.count()

    def tables(self) -> list[str]:
        return sorted(self._trees)

    def close(self) -> None:
        self.ebs.close()
        self.ebs.kvs.close()
