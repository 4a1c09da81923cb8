"""The committed state: one Merkle B-tree per table in the encrypted byte store.

This is the :class:`~persist.mux.WaveStore` of a real database.  A small
wave is committed in the root log (:mod:`persist.db.rootlog`): one segment
row and the root.  Otherwise, or when the log is full, the log and the
wave's changes are applied to each table's tree as ONE sorted batch
(:func:`~persist.btree.apply_batch`), so every touched node is encoded,
hashed and encrypted once per wave; all tables' new nodes, their count-tree
changes and the deletions go into one ebs :class:`~persist.ebs.WriteBatch`
that :meth:`~persist.ebs.EncryptedStore.commit` writes with the new root as
one atomic kvs batch (DESIGN §3 rules 1 and 2).

Catalog (docs/format.md, "Catalog"): table ``name`` is the ebs table with
descriptor ``tree:<name>``; its catalog payload is the 32-byte root node id,
or empty for an empty tree.  Its **count tree** (format v2), a Merkle B-tree
from node id to an 8-byte count holding every blob of the table and every
object referenced more than once, is the ebs table ``count:<name>`` with the
catalog entry of that name (absent while it is empty).  Nothing else is
mutable: a node's liveness comes from the trees, its count from the count
tree, never from the presence of a row (:class:`persist.btree.gc.Ledger`).

Consistent reads (theory of operation).

1. A committed state (:class:`_State`) is the trees of a :class:`_TreeSet`
   with a root log over them; both are immutable.  The multiplexer pairs
   each state with the waves pending over it and swaps the pair as one
   reference, so a read sees one state.
2. Nodes never change, so a read of any state may take a node from the node
   cache or from the store as it is now.  The one thing a commit can do to a
   read in flight is delete a node its (older) trees still need: only a fold
   deletes nodes.  So a fold first **pins** a snapshot of the store as it is
   (:meth:`persist.ebs.EncryptedStore.pin`, exactly the old state: this is
   the only writer) and hangs it on the tree set it supersedes; a read that
   misses a node in the store falls back to that pin.
3. The tree set is **retired** once the multiplexer shows the new state.  Its
   pin is closed when no registered read is left on it.  A scan or count
   registers before it reads; a point read does not (its hot path is the
   node cache) and, if it meets a retired tree set whose pin is gone, raises
   :class:`~persist.mux.StaleState` before returning anything: the
   multiplexer reads the newer state instead.
4. A read-only database pins the store once per :meth:`TreeWaveStore.refresh`
   and reads the root, the log and every node of that state from it, so it
   reads one committed state beside a writer in another process.
"""

from __future__ import annotations

import logging
import threading
from bisect import bisect_left
from collections import Counter, OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from itertools import chain
from typing import TypeVar

from ..btree import (
    MAX_KEY_SIZE,
    NodeCache,
    NodeId,
    NodeReader,
    PendingNodeStore,
    Tree,
    TreeUpdate,
    apply_batch,
    bulk_load,
)
from ..btree.node import BlobRef, Internal, Leaf
from ..btree.nodestore import NODE_ID_SIZE
from ..ebs import EncryptedStore, Table, WriteBatch
from ..errors import ClosedError, IntegrityError, PersistError
from ..kvs import Snapshot
from ..mux import Columns, StaleState, merge_columns
from .rootlog import (
    LOG_DESCRIPTOR,
    PIECES_PER_ROUND,
    LogLimits,
    Piece,
    RootLog,
    fold_estimate,
)

_R = TypeVar("_R")

__all__ = [
    "COUNT_PREFIX",
    "COUNT_TABLE_PREFIX",
    "DEFAULT_CACHE_BYTES",
    "TABLE_PREFIX",
    "CountIndex",
    "EbsNodeStore",
    "LogLimits",
    "TreeWaveStore",
]

_log = logging.getLogger("persist.db")

TABLE_PREFIX = "tree:"
COUNT_TABLE_PREFIX = "count:"
#: Format v1 only: the logical key prefix of a count row (deleted by the upgrade).
COUNT_PREFIX = b"rc"
_COUNT_SIZE = 8
#: The node cache's default bound in estimated memory: 256 MiB.  With pairs of
#: about 100 bytes a leaf takes some 3 KB, so the default 50,000 nodes bind
#: first; with larger values this bound does.
DEFAULT_CACHE_BYTES = 256 * 1024 * 1024
_FACTS_MAX = 200_000  # nodes whose count and size the writer remembers (about 30 MB)
#: Keys of a fold into an existing tree applied per batch: a larger fold is
#: applied as a chain of batches (``TreeUpdate.absorb``) committed as one, so that
#: the old nodes each batch opens are let go before the next (docs/design.md).
_FOLD_CHUNK = 1024


def descriptor(name: str) -> str:
    return TABLE_PREFIX + name


def count_descriptor(name: str) -> str:
    return COUNT_TABLE_PREFIX + name


def decode_count(raw: bytes) -> int:
    if len(raw) != _COUNT_SIZE or int.from_bytes(raw, "big") < 1:
        raise IntegrityError("malformed count tree entry")
    return int.from_bytes(raw, "big")


class EbsNodeStore:
    """The writer's :class:`~persist.btree.NodeStore` over one ebs table.

    Index only (format v2): ``refcount`` answers from what the writer knows
    for sure -- its own facts, learned from commits it made -- and from the
    table's count tree (``counts``), and is 0 for anything else; the trees
    supply liveness (:class:`persist.btree.gc.Ledger`).  A row's presence in
    the kvs store is never consulted.

    Facts cache: the persistence thread is the only writer, so committed
    counts change only through its own commits.  It remembers, in a bounded
    LRU, the count and size of the nodes it committed, and tells the ebs each
    deleted node's size (sparing a read to find its chunks).  Updated only
    after a commit is durable (:meth:`committed`).

    Complete facts: a table whose tree was empty when the writer first saw it
    has no node the writer did not commit, so while the cache has never
    dropped a fact, a node it does not know is not live: no count-tree lookup.
    """

    index_only = True

    __slots__ = ("_complete", "_counts", "_facts", "_facts_max", "_lock", "table")

    def __init__(
        self,
        table: Table,
        counts: CountIndex | None = None,
        facts_max: int = _FACTS_MAX,
        *,
        empty: bool = False,
    ) -> None:
        self.table = table
        self._counts = counts
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
        if self._complete or self._counts is None:
            return 0
        return self._counts.lookup(nid)

    def iter_objects(self) -> Iterator[tuple[NodeId, int]]:
        """The counted objects (the count tree's entries): what the store indexes."""
        if self._counts is not None:
            yield from self._counts.entries()

    def add_to_batch(self, batch: WriteBatch, update: TreeUpdate) -> None:
        """Record the nodes of ``update`` (the tree layer's write set) in an ebs batch."""
        t = self.table
        for nid, data in update.puts.items():
            batch.put_node(t, nid, data)
        for nid in update.deletes:
            with self._lock:
                fact = self._facts.get(nid)
            batch.delete_node(t, nid, fact[1] if fact is not None else None)

    def committed(self, update: TreeUpdate) -> None:
        """Learn the facts ``update`` made true.  REQUIRES: it is durable."""
        for nid, data in update.puts.items():
            self._remember(nid, update.counts.get(nid, update.blobs.get(nid, 1)), len(data))
        changed = {**update.counts, **update.blobs}
        for nid, count in changed.items():
            if nid not in update.puts and count > 0:
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


class CountIndex:
    """The count tree of one table: node id -> count, for every counted object.

    Counted: every blob (equal values under several keys share one), and any
    object referenced more than once.  Its own nodes are never shared (the
    keys of one tree are unique), so its node store counts nothing.
    """

    def __init__(self, table: Table, root: NodeId | None, cache: NodeCache) -> None:
        self.table = table
        self.root = root
        self.cache = cache
        self.store = EbsNodeStore(table, None, empty=root is None)

    def lookup(self, nid: bytes) -> int:
        if self.root is None:
            return 0
        raw = Tree(self.store, self.root, cache=self.cache).get(bytes(nid))
        return 0 if raw is None else decode_count(raw)

    def entries(self) -> Iterator[tuple[NodeId, int]]:
        if self.root is None:
            return
        for key, raw in Tree(self.store, self.root, cache=self.cache).items():
            if len(key) != NODE_ID_SIZE:
                raise IntegrityError("malformed count tree key")
            yield NodeId(key), decode_count(raw)

    def changes(self, update: TreeUpdate) -> dict[bytes, bytes | None]:
        """The count tree changes an update of the data tree makes."""
        out: dict[bytes, bytes | None] = {}
        for nid, count in update.counts.items():  # objects counted above 1
            if nid not in update.blobs:
                out[bytes(nid)] = count.to_bytes(_COUNT_SIZE, "big") if count > 1 else None
        for nid in update.counted_deletes:
            if nid not in update.blobs:
                out[bytes(nid)] = None
        for nid, count in update.blobs.items():  # every blob, counted from 1
            out[bytes(nid)] = count.to_bytes(_COUNT_SIZE, "big") if count > 0 else None
        return out


def _read_node_store(table: Table, tree_set: _TreeSet) -> _ReadNodes:
    return _ReadNodes(table, tree_set)


class _ReadNodes:
    """A reader's node source: the store as it is now, then the tree set's pin."""

    __slots__ = ("table", "tree_set")

    def __init__(self, table: Table, tree_set: _TreeSet) -> None:
        self.table = table
        self.tree_set = tree_set

    def load(self, nid: NodeId) -> bytes:
        ts = self.tree_set
        if not ts.pinned_only:
            try:
                data = self.table.find_node(nid)
            except IntegrityError:
                data = None  # a chunk deleted under the read: the pin has it whole
            if data is not None:
                return data
        pin = ts.pin
        if pin is None:
            return self.table.read_node(nid)  # raises: missing or damaged
        try:
            return self.table.read_node(nid, pin.get)
        except ClosedError:
            if ts.retired:
                raise StaleState from None
            raise


class _TreeSet:
    """The committed trees of every table, and what keeps them readable.

    Immutable but for its pin and its reader count (see the module docstring).
    """

    def __init__(
        self,
        roots: Mapping[str, NodeId | None],
        tables: Mapping[str, Table],
        cache: NodeCache,
        *,
        pin: Snapshot | None = None,
        pinned_only: bool = False,
    ) -> None:
        self.roots = dict(roots)
        self.pin = pin
        #: read nodes from the pin only (a read-only database's state)
        self.pinned_only = pinned_only
        self.retired = False
        self._readers = 0
        self._lock = threading.Lock()
        self.trees = {
            name: Tree(_read_node_store(tables[name], self), root, cache=cache)
            for name, root in self.roots.items()
        }
        self._counts: dict[str, int] = {}

    def tree_count(self, table: str) -> int:
        """Entries of the tree of ``table`` (memoized)."""
        n = self._counts.get(table)
        if n is None:
            tree = self.trees.get(table)
            n = self._counts[table] = 0 if tree is None else tree.count()
        return n

    def attach_pin(self, pin: Snapshot) -> None:
        """Keep the trees readable through ``pin`` (taken before a fold deletes nodes)."""
        with self._lock:
            old, self.pin = self.pin, pin
        if old is not None:
            old.close()

    def enter(self) -> None:
        """Register a read; StaleState if the pin is gone already."""
        with self._lock:
            if self.retired and (self.pin is None or self.pin.closed):
                raise StaleState
            self._readers += 1

    def leave(self) -> None:
        with self._lock:
            self._readers -= 1
            close = self.retired and self._readers == 0
        if close:
            self._close_pin()

    def retire(self) -> None:
        """No new state is built on these trees; close the pin when the reads are done."""
        with self._lock:
            self.retired = True
            close = self._readers == 0
        if close:
            self._close_pin()

    def _close_pin(self) -> None:
        pin = self.pin
        if pin is not None:
            pin.close()


class _State:
    """One committed state: a tree set with a root log laid over it (immutable)."""

    __slots__ = ("_deltas", "log", "trees")

    def __init__(self, trees: _TreeSet, log: RootLog) -> None:
        self.trees = trees
        self.log = log
        self._deltas: dict[str, int] = {}

    def get(self, table: str, key: bytes) -> bytes | None:
        log = self.log
        if log.bound:
            found, value = log.lookup(table, key)
            if found:
                return value
        tree = self.trees.trees.get(table)
        return None if tree is None else tree.get(key)

    def scan(
        self, table: str, start: bytes | None, stop: bytes | None, reverse: bool
    ) -> Iterator[tuple[bytes, bytes]]:
        """The pairs of ``[start, stop)``, run by run (a leaf's part, or the
        log's overlay) under one C-level chain: no Python frame per pair.

        The first run is taken now, which starts the runs' generator: from
        then on, dropping the iterator unfinished still runs its ``finally``
        (a generator never started would not), so the read always leaves.
        """
        ts = self.trees
        ts.enter()
        return chain.from_iterable(_started(self._runs(ts, table, start, stop, reverse)))

    def _runs(
        self, ts: _TreeSet, table: str, start: bytes | None, stop: bytes | None, reverse: bool
    ) -> Iterator[Iterable[tuple[bytes, bytes]]]:
        try:
            tree = ts.trees.get(table)
            runs = iter(()) if tree is None else tree.runs(start, stop, reverse=reverse)
            committed = chain.from_iterable(runs)
            merged = self.log.overlay(table, committed, start, stop, reverse)
            if merged is committed:  # the log changes nothing here: runs as they are
                yield from runs
            else:
                yield merged
        finally:
            ts.leave()

    def columns(self, table: str, start: bytes | None, stop: bytes | None) -> Iterator[Columns]:
        """:meth:`scan` ascending as runs of two columns: a leaf's part as the
        leaf holds it, and only the leaves the log reaches merged entry by
        entry.  The first run is taken now, as :meth:`scan` takes it."""
        ts = self.trees
        ts.enter()
        return _started(self._column_runs(ts, table, start, stop))

    def _column_runs(
        self, ts: _TreeSet, table: str, start: bytes | None, stop: bytes | None
    ) -> Iterator[Columns]:
        try:
            tree = ts.trees.get(table)
            runs = iter(()) if tree is None else tree.columns(start, stop)
            logged = self.log.changes_in(table, start, stop)
            yield from merge_columns(runs, logged) if logged else runs
        finally:
            ts.leave()

    def count(self, table: str, pending: list[tuple[bytes, bool]] | None = None) -> int:
        ts = self.trees
        ts.enter()
        try:
            n = self._own_count(table)
            if pending:
                keys = [k for k, _ in pending]
                n += sum(present for _, present in pending) - self._present(table, keys)
            return n
        finally:
            ts.leave()

    def _own_count(self, table: str) -> int:
        n = self.trees.tree_count(table)
        logged = self.log.tables.get(table)
        if not logged:
            return n
        delta = self._deltas.get(table)
        if delta is None:  # a benign race: two readers may both compute it
            tree = self.trees.trees.get(table)
            keys = sorted(logged)
            present = 0 if tree is None else tree.count_present(keys)
            delta = sum(1 for k in keys if logged[k] is not None) - present
            self._deltas[table] = delta
        return n + delta

    def _present(self, table: str, keys: list[bytes]) -> int:
        """How many of ``keys`` (ascending) this state holds."""
        logged = self.log.tables.get(table) or {}
        tree = self.trees.trees.get(table)
        in_tree = [k for k in keys if k not in logged]
        n = sum(1 for k in keys if logged.get(k, None) is not None)
        return n + (0 if tree is None else tree.count_present(in_tree))


class TreeWaveStore:
    """Committed trees and root log of every table; commits waves; serves reads lock-free."""

    def __init__(
        self,
        ebs: EncryptedStore,
        *,
        cache_nodes: int = 50_000,
        cache_bytes: int | None = DEFAULT_CACHE_BYTES,
        log_limits: LogLimits | None = None,
        writable: bool = True,
    ) -> None:
        self.ebs = ebs
        self.cache = NodeCache(cache_nodes, cache_bytes)
        self.log_limits = log_limits if log_limits is not None else LogLimits()
        self.writable = writable
        self._lock = threading.Lock()  # guards _stores and _indexes (created lazily)
        self._stores: dict[str, EbsNodeStore] = {}
        self._indexes: dict[str, CountIndex] = {}
        self._superseded: list[_TreeSet] = []
        self._log_table = ebs.table(LOG_DESCRIPTOR)
        #: per table, the key the next piece of a partial fold starts at (rootlog rule 6)
        self._fold_cursor: dict[str, bytes] = {}
        if writable and ebs.version < 2:
            self._upgrade()
        # A read-only store reads another writer's commits: the root too comes
        # through the pin its trees are read through (read before it, the root
        # could name trees a commit landing in between had deleted).
        self._state = self._load(None) if writable else self._load_pinned()

    # -- loading -----------------------------------------------------------------

    def _load(self, pin: Snapshot | None) -> _State:
        """The state the current root names (read through ``pin`` when given)."""
        catalog = self.ebs.root.catalog
        roots = _table_roots(catalog, TABLE_PREFIX)
        count_roots = _table_roots(catalog, COUNT_TABLE_PREFIX)
        if not set(count_roots) <= set(roots):
            raise IntegrityError("a count tree names a table the catalog does not")
        with self._lock:
            self._indexes = {
                name: CountIndex(
                    self.ebs.table(count_descriptor(name)), count_roots.get(name), self.cache
                )
                for name in roots
            }
        tree_set = self._tree_set(roots, pin=pin, pinned_only=pin is not None)
        source = None if pin is None else pin.get

        def read_row(key: bytes) -> bytes | None:
            return self._log_table.read_row(key, source)

        log = RootLog.load(catalog.get(LOG_DESCRIPTOR, b""), read_row)
        if not set(log.tables) <= set(roots):
            raise IntegrityError("the root log names a table the catalog does not")
        return _State(tree_set, log)

    def _tree_set(
        self,
        roots: Mapping[str, NodeId | None],
        *,
        pin: Snapshot | None = None,
        pinned_only: bool = False,
    ) -> _TreeSet:
        tables = {name: self.ebs.table(descriptor(name)) for name in roots}
        return _TreeSet(roots, tables, self.cache, pin=pin, pinned_only=pinned_only)

    def refresh(self) -> None:
        """A read-only store: move to the newest commit (another process's)."""
        old, self._state = self._state, self._load_pinned()
        old.trees.retire()

    def _load_pinned(self) -> _State:
        """The state of the newest root, root and all read through a new pin."""
        pin = self.ebs.pin()
        try:
            self.ebs.reload_root(pin.get)
            return self._load(pin)
        except BaseException:
            pin.close()
            raise

    def _store(self, name: str, *, empty: bool = False) -> EbsNodeStore:
        """The writer's node store of ``name``; ``empty``: its tree is empty now."""
        with self._lock:
            ns = self._stores.get(name)
            if ns is None:
                index = self._indexes.get(name)
                if index is None:
                    table = self.ebs.table(count_descriptor(name))
                    index = self._indexes[name] = CountIndex(table, None, self.cache)
                table = self.ebs.table(descriptor(name))
                ns = self._stores[name] = EbsNodeStore(table, index, empty=empty)
            return ns

    # -- the WaveStore interface -------------------------------------------------

    def state(self) -> _State:
        return self._state

    def published(self) -> None:
        """The multiplexer shows the newest state: retire the tree sets it superseded."""
        superseded, self._superseded = self._superseded, []
        for tree_set in superseded:
            tree_set.retire()

    def commit_wave(self, number: int, changes: Mapping[str, Mapping[bytes, bytes | None]]) -> None:
        state = self._state
        segment = None
        if not self._fold_due(state, changes):
            segment = state.log.segment_within(changes, self.log_limits)
        if segment is not None:
            self._commit_to_log(state, changes, segment)
            return
        piece = self._piece(state, changes)
        if piece is None:
            self._fold(state, changes)
        else:
            self._fold(state, changes, piece=piece)

    def _piece(
        self, state: _State, changes: Mapping[str, Mapping[bytes, bytes | None]]
    ) -> Piece | None:
        """The key range of the log this commit folds (rootlog rule 6), or None
        to fold everything (a wave too large for the log, a cheap whole fold,
        piece folding off)."""
        limits = self.log_limits
        log = state.log
        if not limits.piece_nodes or not log.tables:
            return None
        wave_keys = sum(map(len, changes.values()))
        if wave_keys > limits.max_entries // 2:
            return None  # a large wave: to the trees with the log
        if log.bound > 2 * limits.max_entries or log.nbytes > 2 * limits.max_bytes:
            return None  # pieces did not keep up (waves of larger values): start afresh
        trees = state.trees
        costs = {
            name: fold_estimate(len(tab), trees.tree_count(name))
            for name, tab in log.tables.items()
        }
        whole = sum(costs.values())
        # Masks live about two rounds of the cursor (a row is dropped once a
        # round after it is done): pieces at least this large keep a round
        # short enough for two to fit in MAX_MASKS, instead of ending every
        # other round in a rewrite of the whole live log (rule 7's bound).
        budget = max(float(limits.piece_nodes), whole / PIECES_PER_ROUND)
        if whole <= 2 * budget:
            return None  # the whole log costs about a piece: fold it and start afresh
        name = max(costs, key=costs.__getitem__)
        keys = log.sorted_keys(name)
        per_key = costs[name] / len(keys)
        take = min(len(keys), max(wave_keys, 1, int(budget / per_key)))
        cursor = self._fold_cursor.get(name, b"")
        at = bisect_left(keys, cursor)
        if take >= len(keys):
            self._fold_cursor[name] = b""
            return Piece(name, list(keys), ((b"", None),))
        end = at + take
        if end <= len(keys):  # [cursor, next key): exactly keys[at:end]
            after = keys[end] if end < len(keys) else b""
            self._fold_cursor[name] = after
            return Piece(name, keys[at:end], ((cursor, after or None),))
        # wrap around to the lowest keys: [cursor, end of keys) and [start, next key)
        end -= len(keys)
        self._fold_cursor[name] = keys[end]
        # (cursor is past the lowest key here, since end >= 1 keys wrapped around)
        return Piece(name, keys[at:] + keys[:end], ((cursor, None), (b"", keys[end])))

    def _apply(
        self, ns: EbsNodeStore, root: NodeId | None, tab: Mapping[bytes, bytes | None]
    ) -> tuple[NodeId | None, TreeUpdate]:
        """``apply_batch`` of ``tab`` to the tree ``root``; a large change of an
        existing tree as a chain of batches of :data:`_FOLD_CHUNK` keys."""
        if root is None or len(tab) <= 2 * _FOLD_CHUNK:
            return apply_batch(ns, root, tab, cache=self.cache)
        keys = sorted(tab)
        combined: TreeUpdate | None = None
        made: set[NodeId] = set()
        for at in range(0, len(keys), _FOLD_CHUNK):
            chunk = {k: tab[k] for k in keys[at : at + _FOLD_CHUNK]}
            source = ns if combined is None else PendingNodeStore(ns, combined)
            root, update = apply_batch(source, root, chunk, cache=self.cache)
            made.update(update.puts)
            if combined is None:
                combined = update
            else:
                combined.absorb(update)  # the view ``source`` of it is done with
        assert combined is not None
        # nodes one batch made and a later one replaced: never written, never read
        self.cache.discard(made.difference(combined.puts))
        return root, combined

    def _fold_due(self, state: _State, changes: Mapping[str, Mapping[bytes, bytes | None]]) -> bool:
        """Whether folding the log with ``changes`` would rewrite ``fold_nodes`` nodes."""
        log = state.log
        estimate = 0.0
        for name in {*log.base, *log.recent, *changes}:
            keys = log.table_bound(name) + len(changes.get(name, ()))
            estimate += fold_estimate(keys, state.trees.tree_count(name))
        return estimate >= self.log_limits.fold_nodes

    def _commit_to_log(
        self, state: _State, changes: Mapping[str, Mapping[bytes, bytes | None]], segment: bytes
    ) -> None:
        """Commit ``changes`` as a segment of the root log: one row and the root."""
        tree_set = state.trees
        new_tables = [name for name in changes if name not in tree_set.roots]
        if new_tables:  # a new tree set (same nodes): the old one frees nothing
            roots = {**tree_set.roots, **dict.fromkeys(new_tables)}
            for name in new_tables:
                self._store(name, empty=True)
            old_set, tree_set = tree_set, self._tree_set(roots)
            tree_set._counts.update(old_set._counts)
            self._superseded.append(old_set)
        log, key, row = state.log.appended(changes, segment, self.log_limits.tail_bytes)
        log, dropped = log.dropping()  # rows an earlier piece left nothing live in
        batch = self.ebs.batch()
        for old_segment in dropped:
            batch.delete_row(self._log_table, old_segment)
        if key is not None and row is not None:  # else the segment rides in the root
            batch.put_row(self._log_table, key, row, new=True)  # a fresh key per segment
        self.ebs.commit(batch, self._catalog(tree_set.roots, log))
        self._state = _State(tree_set, log)

    def _fold(
        self,
        state: _State,
        changes: Mapping[str, Mapping[bytes, bytes | None]],
        piece: Piece | None = None,
    ) -> None:
        """Apply the root log and ``changes`` to the trees; empty the log.

        With ``piece``, apply only those keys of the log and mask them in it
        (rootlog rules 6 and 7; or, once the masks are many, rewrite what is
        left as the next generation's log), then log ``changes`` after it."""
        roots = dict(state.trees.roots)
        batch = self.ebs.batch()
        updates: list[tuple[EbsNodeStore, TreeUpdate]] = []
        pending: dict[str, Mapping[bytes, bytes | None]]
        if piece is None:
            pending = dict(state.log.tables)
            for name, tab in changes.items():
                logged = pending.get(name)
                pending[name] = {**logged, **tab} if logged else tab
        else:
            logged = state.log.tables[piece.table]
            pending = {piece.table: {k: logged[k] for k in piece.keys}}
            for name in changes:
                if name not in roots:  # a new table: an empty tree, its keys in the log
                    roots[name] = None
                    self._store(name, empty=True)
        new_counts: dict[str, CountIndex] = {}
        for name, tab in pending.items():
            tab = _foldable(name, tab)
            old = roots.get(name)
            ns = self._store(name, empty=old is None)
            root, update = self._apply(ns, old, tab)
            ns.add_to_batch(batch, update)
            updates.append((ns, update))
            roots[name] = root
            index = self._indexes[name]
            count_changes = index.changes(update)
            if count_changes:
                croot, cupdate = apply_batch(
                    index.store, index.root, count_changes, cache=self.cache
                )
                index.store.add_to_batch(batch, cupdate)
                updates.append((index.store, cupdate))
                new_counts[name] = CountIndex(index.table, croot, self.cache)
        rows: list[tuple[bytes | None, bytes | None]] = []
        if piece is not None and state.log.can_mask(piece):
            log, flushed, dropped = state.log.masked(piece)
            for old_segment in dropped:
                batch.delete_row(self._log_table, old_segment)
            if flushed is not None:
                rows.append(flushed)
        else:
            for old_segment in state.log.segment_keys():
                batch.delete_row(self._log_table, old_segment)
            if piece is None:
                log = state.log.folded()
            else:
                log, *first = state.log.without({piece.table: piece.keys})
                rows.append((first[0], first[1]))
        if piece is not None and any(changes.values()):
            log, *second = log.appended(changes, None, self.log_limits.tail_bytes)
            rows.append((second[0], second[1]))
        for key, row in rows:
            if key is not None and row is not None:
                batch.put_row(self._log_table, key, row, new=True)
        catalog = self._catalog(roots, log, {**self._indexes, **new_counts})
        # Readers of the trees this fold replaces may still need the nodes it
        # deletes: pin the store as it is, before anything is deleted.
        state.trees.attach_pin(self.ebs.pin())
        try:
            self.ebs.commit(batch, catalog)
        except BaseException:
            for ns, _ in updates:
                ns.forget()
            raise
        for ns, update in updates:
            ns.committed(update)
            # The nodes the fold replaced: dead from the new root on; a cache full
            # of them was most of the memory a fold of large waves left behind.
            self.cache.discard(update.deletes)
        with self._lock:
            for name, index in new_counts.items():
                self._indexes[name] = index
                self._stores[name]._counts = index
        self._superseded.append(state.trees)
        self._state = _State(self._tree_set(roots), log)

    def _catalog(
        self,
        roots: Mapping[str, NodeId | None],
        log: RootLog,
        indexes: Mapping[str, CountIndex] | None = None,
    ) -> dict[str, bytes]:
        indexes = self._indexes if indexes is None else indexes
        catalog = {descriptor(n): bytes(r or b"") for n, r in roots.items()}
        for name, index in indexes.items():
            if index.root is not None:
                catalog[count_descriptor(name)] = bytes(index.root)
        payload = log.meta()
        if payload:
            catalog[LOG_DESCRIPTOR] = payload
        return catalog

    def fold(self) -> None:
        """Commit the root log into the trees now (REQUIRES: no commit meanwhile).

        The logical content does not change, so the multiplexer may go on
        showing the state it has: the superseded trees stay readable until
        its next commit publishes and retires them.
        """
        state = self._state
        if state.log.segments > state.log.first or state.log.tail:
            self._fold(state, {})

    # -- the format-v1 upgrade ---------------------------------------------------

    def _upgrade(self) -> None:
        """Rewrite a format-v1 store as format v2, in one atomic commit.

        v1 kept a count row (a mutable row, covered by a digest in the root)
        for each object counted above 1.  v2 keeps a count tree per table with
        every blob's count, so the counts are recomputed from the trees
        themselves -- every tree is walked once -- and the count rows are
        deleted in the same batch that writes the first v2 root.  A crash
        leaves the v1 store or the v2 one, never a mix (docs/format.md,
        "Upgrade from v1").  The root log stays as it is.
        """
        ebs = self.ebs
        catalog = dict(ebs.root.catalog)
        roots = _table_roots(catalog, TABLE_PREFIX)
        batch = ebs.batch()
        _log.info("upgrading %s from format v1 to v2", ebs.kvs.location)
        for name, root in roots.items():
            table = ebs.table(descriptor(name))
            blobs = _count_blobs(table, root, self.cache)
            count_table = ebs.table(count_descriptor(name))
            counts = (
                (bytes(nid), n.to_bytes(_COUNT_SIZE, "big")) for nid, n in sorted(blobs.items())
            )
            croot, update = bulk_load(EbsNodeStore(count_table, None, empty=True), counts)
            for nid, data in update.puts.items():
                batch.put_node(count_table, nid, data)
            if croot is not None:
                catalog[count_descriptor(name)] = bytes(croot)
            if ebs.root.coverage.get(descriptor(name).encode(), None) is not None:
                for nid in blobs:  # the only objects v1 ever counted above 1
                    batch.delete_row(table, COUNT_PREFIX + nid)
        ebs.commit(batch, catalog, upgrade=True)

    # -- reads and the rest --------------------------------------------------------

    def tree(self, table: str) -> Tree | None:
        """The committed tree of ``table``, WITHOUT the root log over it (for checks)."""
        return self._state.trees.trees.get(table)

    @property
    def log(self) -> RootLog:
        """The committed root log (for checks and reports)."""
        return self._state.log

    def get(self, table: str, key: bytes) -> bytes | None:
        while True:
            try:
                return self._state.get(table, key)
            except StaleState:
                continue

    def scan(
        self, table: str, start: bytes | None, stop: bytes | None, reverse: bool
    ) -> Iterator[tuple[bytes, bytes]]:
        while True:
            try:
                return self._state.scan(table, start, stop, reverse)
            except StaleState:
                continue

    def columns(self, table: str, start: bytes | None, stop: bytes | None) -> Iterator[Columns]:
        while True:
            try:
                return self._state.columns(table, start, stop)
            except StaleState:
                continue

    def count(self, table: str) -> int:
        while True:
            try:
                return self._state.count(table)
            except StaleState:
                continue

    def tables(self) -> list[str]:
        return sorted(self._state.trees.roots)

    def close(self) -> None:
        """Fold the root log into the trees (when writable), then close the store.

        A store at rest thus keeps everything in its trees.  A fold that fails
        loses nothing (the log is committed); its error is raised once the
        store is closed.
        """
        try:
            log = self._state.log
            if (log.segments > log.first or log.tail) and self._writable():
                self.fold()
        finally:
            try:
                self.ebs.close()
            finally:
                self.ebs.kvs.close()  # closes every pin too

    def _writable(self) -> bool:
        try:
            self.ebs.check_writable()
        except PersistError:
            return False
        return True


def _started(runs: Iterator[_R]) -> Iterator[_R]:
    """``runs`` with its first item taken now: that starts the generator, so that
    dropping the result unfinished, or never reading it, still runs its
    ``finally`` (which leaves the read)."""
    first = next(runs, None)
    return iter(()) if first is None else chain((first,), runs)


def _foldable(table: str, changes: Mapping[bytes, bytes | None]) -> Mapping[bytes, bytes | None]:
    """``changes`` without the deletes of keys the trees cannot hold.

    A store written before keys were checked at the write may hold keys over
    MAX_KEY_SIZE in its root log.  A delete of one is a no-op for the trees
    (they cannot hold it) and is dropped; a put cannot be folded at all: a
    clear IntegrityError instead of the tree layer's ValueError.
    """
    if not changes or max(map(len, changes)) <= MAX_KEY_SIZE:
        return changes
    out: dict[bytes, bytes | None] = {}
    for key, value in changes.items():
        if len(key) <= MAX_KEY_SIZE:
            out[key] = value
        elif value is not None:
            raise IntegrityError(
                f"the root log of table {table!r} holds a key of {len(key)} bytes (an older "
                f"version accepted it); the trees hold keys of at most {MAX_KEY_SIZE} bytes, "
                "so the log cannot be folded: open the store read-only to export the entry"
            )
    return out


def _table_roots(catalog: Mapping[str, bytes], prefix: str) -> dict[str, NodeId | None]:
    roots: dict[str, NodeId | None] = {}
    for desc, payload in catalog.items():
        if not desc.startswith(prefix):
            continue
        if payload and len(payload) != NODE_ID_SIZE:
            raise IntegrityError(f"catalog entry of {desc!r} is malformed")
        roots[desc[len(prefix) :]] = NodeId(payload) if payload else None
    return roots


def _count_blobs(table: Table, root: NodeId | None, cache: NodeCache) -> Counter[NodeId]:
    """The references to every blob of the tree ``root``: one walk over its nodes."""
    blobs: Counter[NodeId] = Counter()
    if root is None:
        return blobs
    reader = NodeReader(EbsNodeStore(table), cache)
    stack = [root]
    while stack:
        node = reader.tree_node(stack.pop())
        if isinstance(node, Internal):
            stack.extend(node.children)
        elif isinstance(node, Leaf):
            blobs.update(v.nid for v in node.values if type(v) is BlobRef)
    return blobs
