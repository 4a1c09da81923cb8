"""The committed state: one Merkle B-tree per table in the encrypted byte store.

This is the :class:`~persist.mux.WaveStore` of a real database.  A small
wave is committed in the root log (:mod:`persist.db.rootlog`): the root is the
only row written.  Otherwise, or when the log is full, the log and the wave's
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

from ..btree import NodeCache, NodeId, Tree, TreeUpdate, apply_batch
from ..btree.nodestore import NODE_ID_SIZE
from ..ebs import EncryptedStore, Table, WriteBatch
from ..ebs.survey import survey
from ..errors import IntegrityError, PersistError
from .rootlog import LOG_DESCRIPTOR, LogLimits, RootLog, fold_estimate

__all__ = ["COUNT_PREFIX", "TABLE_PREFIX", "EbsNodeStore", "LogLimits", "TreeWaveStore"]

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

    Complete facts: a table whose tree was empty when the writer first saw it
    has no node at all (its nodes are reachable from its root, orphans aside,
    which verify reports).  Every node it gets is then one the writer itself
    committed, so while the cache has never dropped a fact, a node the cache
    does not know is absent: no read needed to learn that a new node is new.
    """

    __slots__ = ("_complete", "_facts", "_facts_max", "_lock", "table")

    def __init__(self, table: Table, facts_max: int = _FACTS_MAX, *, empty: bool = False) -> None:
        self.table = table
        self._facts: OrderedDict[bytes, tuple[int, int | None]] = OrderedDict()
        self._facts_max = facts_max
        self._lock = threading.Lock()
        #: every node of the table is in _facts (see the class docstring)
        self._complete = empty

    def node_id(self, data: bytes) -> NodeId:
        return NodeId(self.table.node_id(data))

    def load(self, nid: NodeId) -> bytes:
        return self.table.read_node(nid)

    def refcount(self, nid: NodeId) -> int:
        with self._lock:
            fact = self._facts.get(nid)
        if fact is not None:
            return fact[0]
        if self._complete:
            return 0
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
            self._complete = False

    def _remember(self, nid: bytes, count: int, size: int | None) -> None:
        with self._lock:
            self._facts[nid] = (count, size)
            self._facts.move_to_end(nid)
            while len(self._facts) > self._facts_max:
                self._facts.popitem(last=False)
                self._complete = False


class _State:
    """One committed state: the trees and the root log over them (immutable)."""

    __slots__ = ("_deltas", "_tree_counts", "log", "trees")

    def __init__(
        self, trees: dict[str, Tree], log: RootLog, tree_counts: dict[str, int] | None = None
    ) -> None:
        self.trees = trees
        self.log = log
        self._deltas: dict[str, int] = {}
        self._tree_counts: dict[str, int] = {} if tree_counts is None else tree_counts

    def tree_count(self, table: str) -> int:
        """Entries of the committed tree of ``table``, without the log (memoized)."""
        n = self._tree_counts.get(table)
        if n is None:
            tree = self.trees.get(table)
            n = self._tree_counts[table] = 0 if tree is None else tree.count()
        return n

    def count(self, table: str) -> int:
        tree = self.trees.get(table)
        n = 0 if tree is None else tree.count()
        pending = self.log.tables.get(table)
        if not pending:
            return n
        delta = self._deltas.get(table)
        if delta is None:  # a benign race: two readers may both compute it
            delta = 0
            for key, value in pending.items():
                present = tree is not None and key in tree
                delta += (value is not None) - present
            self._deltas[table] = delta
        return n + delta


class TreeWaveStore:
    """Committed trees and root log of every table; commits waves; serves reads lock-free."""

    def __init__(
        self,
        ebs: EncryptedStore,
        *,
        cache_nodes: int = 50_000,
        log_limits: LogLimits | None = None,
    ) -> None:
        self.ebs = ebs
        self.cache = NodeCache(cache_nodes)
        self.log_limits = log_limits if log_limits is not None else LogLimits()
        self._lock = threading.Lock()  # guards _stores (created lazily by readers too)
        self._stores: dict[str, EbsNodeStore] = {}
        roots: dict[str, NodeId | None] = {}
        for desc, payload in ebs.root.catalog.items():
            if not desc.startswith(TABLE_PREFIX):
                continue
            if payload and len(payload) != NODE_ID_SIZE:
                raise IntegrityError(f"catalog entry of {desc!r} is malformed")
            roots[desc[len(TABLE_PREFIX) :]] = NodeId(payload) if payload else None
        trees = {
            name: Tree(self._store(name, empty=root is None), root, cache=self.cache)
            for name, root in roots.items()
        }
        self._log_table = ebs.table(LOG_DESCRIPTOR)
        log = RootLog.load(ebs.root.catalog.get(LOG_DESCRIPTOR, b""), self._log_table.read_row)
        if not set(log.tables) <= set(trees):
            raise IntegrityError("the root log names a table the catalog does not")
        self._state = _State(trees, log)

    def _store(self, name: str, *, empty: bool = False) -> EbsNodeStore:
        """The node store of ``name``; ``empty``: its committed tree is empty now."""
        with self._lock:
            ns = self._stores.get(name)
            if ns is None:
                table = self.ebs.table(descriptor(name))
                ns = self._stores[name] = EbsNodeStore(table, empty=empty)
            return ns

    # -- the WaveStore interface -------------------------------------------------

    def commit_wave(self, number: int, changes: Mapping[str, Mapping[bytes, bytes | None]]) -> None:
        state = self._state
        segment = None
        if not self._fold_due(state, changes):
            segment = state.log.segment_within(changes, self.log_limits)
        if segment is None:
            self._fold(state, changes)
        else:
            self._commit_to_log(state, changes, segment)

    def _fold_due(self, state: _State, changes: Mapping[str, Mapping[bytes, bytes | None]]) -> bool:
        """Whether folding the log with ``changes`` would rewrite ``fold_nodes`` nodes."""
        log = state.log
        estimate = 0.0
        for name in {*log.base, *log.recent, *changes}:
            keys = log.table_bound(name) + len(changes.get(name, ()))
            estimate += fold_estimate(keys, state.tree_count(name))
        return estimate >= self.log_limits.fold_nodes

    def _commit_to_log(
        self, state: _State, changes: Mapping[str, Mapping[bytes, bytes | None]], segment: bytes
    ) -> None:
        """Commit ``changes`` as a segment of the root log: one row and the root."""
        trees = state.trees
        new_tables = [name for name in changes if name not in trees]
        if new_tables:
            trees = dict(trees)
            for name in new_tables:
                trees[name] = Tree(self._store(name, empty=True), None, cache=self.cache)
        log, key, segment = state.log.appended(changes, segment)
        batch = self.ebs.batch()
        batch.put_row(self._log_table, key, segment, new=True)  # a fresh key per segment
        self.ebs.commit(batch, self._catalog(trees, log))
        # publish: one reference swap (the trees did not change: keep their counts)
        self._state = _State(trees, log, state._tree_counts)

    def _fold(self, state: _State, changes: Mapping[str, Mapping[bytes, bytes | None]]) -> None:
        """Apply the root log and ``changes`` to the trees; empty the log."""
        trees = dict(state.trees)
        batch = self.ebs.batch()
        updates: list[tuple[EbsNodeStore, TreeUpdate]] = []
        pending: dict[str, Mapping[bytes, bytes | None]] = dict(state.log.tables)
        for name, tab in changes.items():
            logged = pending.get(name)
            pending[name] = {**logged, **tab} if logged else tab
        for name, tab in pending.items():
            old = trees.get(name)
            ns = self._store(name, empty=old is None or old.root is None)
            root, update = apply_batch(
                ns, old.root if old is not None else None, tab, cache=self.cache
            )
            ns.add_to_batch(batch, update)
            updates.append((ns, update))
            trees[name] = Tree(ns, root, cache=self.cache)
        for key in state.log.segment_keys():
            batch.delete_row(self._log_table, key)
        log = state.log.folded()
        try:
            self.ebs.commit(batch, self._catalog(trees, log))
        except BaseException:
            for ns, _ in updates:
                ns.forget()
            raise
        for ns, update in updates:
            ns.committed(update)
        self._state = _State(trees, log)  # publish: one reference swap

    @staticmethod
    def _catalog(trees: Mapping[str, Tree], log: RootLog) -> dict[str, bytes]:
        catalog = {descriptor(n): bytes(t.root or b"") for n, t in trees.items()}
        payload = log.meta()
        if payload:
            catalog[LOG_DESCRIPTOR] = payload
        return catalog

    def fold(self) -> None:
        """Commit the root log into the trees now (REQUIRES: the writer's thread)."""
        state = self._state
        if state.log.segments:
            self._fold(state, {})

    def tree(self, table: str) -> Tree | None:
        """The committed tree of ``table``, WITHOUT the root log over it (for checks)."""
        return self._state.trees.get(table)

    @property
    def log(self) -> RootLog:
        """The committed root log (for checks and reports)."""
        return self._state.log

    def get(self, table: str, key: bytes) -> bytes | None:
        state = self._state
        log = state.log
        if log.bound:
            found, value = log.lookup(table, key)
            if found:
                return value
        tree = state.trees.get(table)
        return None if tree is None else tree.get(key)

    def scan(
        self, table: str, start: bytes | None, stop: bytes | None, reverse: bool
    ) -> Iterator[tuple[bytes, bytes]]:
        state = self._state
        tree = state.trees.get(table)
        committed = iter(()) if tree is None else tree.items(start, stop, reverse=reverse)
        return state.log.overlay(table, committed, start, stop, reverse)

    def count(self, table: str) -> int:
        return self._state.count(table)

    def tables(self) -> list[str]:
        return sorted(self._state.trees)

    def close(self) -> None:
        """Fold the root log into the trees (when writable), then close the store.

        A store at rest thus keeps everything in its trees.  A fold that fails
        loses nothing (the log is committed); its error is raised once the
        store is closed.
        """
        try:
            if self._state.log.segments and self._writable():
                self.fold()
        finally:
            self.ebs.close()
            self.ebs.kvs.close()

    def _writable(self) -> bool:
        try:
            self.ebs.check_writable()
        except PersistError:
            return False
        return True
