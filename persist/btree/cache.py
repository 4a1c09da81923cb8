"""The decoded-node cache: keeps hot nodes off the store (and out of the decryptor).

Nodes are immutable and named by their content, so a cached node never goes
stale: there is no invalidation, only eviction (least recently used).  One
cache may serve several stores -- an address names the same content in any
store that produced it, and different stores produce colliding addresses only
with negligible probability.

Decoded nodes are tuples throughout; callers must never mutate them (they are
shared between threads).

A writer may also put a node's canonical bytes (:meth:`NodeCache.put_encoded`):
they are decoded on the first ``get`` and replaced by the decoded node.  A
commit that writes thousands of nodes thus pays no decoding for those nobody
reads before they are replaced, and a node that is read is decoded once into
freshly allocated objects that lie together in memory.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable

from ..errors import IntegrityError
from .node import Blob, Internal, Leaf, Node, decode_node
from .nodestore import NodeId, NodeSource

__all__ = ["DEFAULT_CACHE_NODES", "NodeCache", "NodeReader", "footprint"]

#: Default capacity in nodes.  A full leaf of small entries decodes to a few
#: kilobytes, so the default holds some tens of megabytes at most.
DEFAULT_CACHE_NODES = 8192


def footprint(node: Node) -> int:
    """About how many bytes of memory the decoded ``node`` takes (its Python
    objects; measured within 20% for leaves of 16-200 byte values and for
    internal nodes)."""
    if node.__class__ is Leaf:
        leaf: Leaf = node
        values = sum(len(v) if v.__class__ is bytes else 64 for v in leaf.values)
        return sum(map(len, leaf.keys)) + values + 90 * len(leaf.keys) + 150
    if node.__class__ is Internal:
        inner: Internal = node
        return sum(map(len, inner.keys)) + 170 * len(inner.keys) + 200
    return len(node.data) + 100  # type: ignore[union-attr]


class NodeCache:
    """A bounded, thread-safe LRU map from :class:`NodeId` to decoded node.

    Bounded in nodes (``max_nodes``) and, when ``max_bytes`` is given, in the
    estimated memory of the nodes it holds (:func:`footprint`).
    """

    def __init__(self, max_nodes: int = DEFAULT_CACHE_NODES, max_bytes: int | None = None) -> None:
        if max_nodes < 1:
            raise ValueError("a NodeCache holds at least one node")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes is at least 1 (None: no byte bound)")
        self.max_nodes = max_nodes
        #: bound on the estimated memory of the cached nodes (see :func:`footprint`)
        self.max_bytes = max_bytes
        self._nodes: OrderedDict[NodeId, Node | bytes] = OrderedDict()
        self._sizes: dict[NodeId, int] = {}
        #: the estimated memory of the cached nodes, in bytes
        self.bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, nid: NodeId) -> Node | None:
        """Return the cached node for ``nid`` (marking it recently used) or None."""
        with self._lock:
            node = self._nodes.get(nid)
            if node is None:
                self.misses += 1
                return None
            self._nodes.move_to_end(nid)
            self.hits += 1
        if isinstance(node, bytes):  # put_encoded: decode once, outside the lock
            decoded = decode_node(node)
            with self._lock:
                if nid in self._nodes:
                    self._nodes[nid] = decoded
            return decoded
        return node

    def peek(self, nid: NodeId) -> Leaf | Internal | None:
        """The cached, decoded tree node ``nid`` (marking it recently used), else None.

        The read hot path: no lock.  Each dictionary operation is atomic under
        the GIL; a node evicted between them just is not marked (its
        ``move_to_end`` finds it gone).  ``hits`` may then miss a count.  An
        entry still in encoded form, or a blob, is left to :meth:`get`.
        """
        node = self._nodes.get(nid)
        if node is None or (node.__class__ is not Leaf and node.__class__ is not Internal):
            return None
        try:  # noqa: SIM105 (contextlib.suppress costs a context manager per read)
            self._nodes.move_to_end(nid)
        except KeyError:
            pass
        self.hits += 1
        return node

    def put(self, nid: NodeId, node: Node) -> None:
        """Remember ``node`` under ``nid``, evicting the least recently used beyond capacity."""
        self._put(nid, node, footprint(node))

    def put_encoded(self, nid: NodeId, data: bytes) -> None:
        """Remember node ``nid`` by its canonical bytes, decoded when first read.

        REQUIRES: ``data`` are the bytes ``nid`` names (the writer just encoded them).
        """
        # counted as what it will be once decoded (about 1.3 times the bytes, and more
        # per entry), so that decoding on the first read does not move the total
        self._put(nid, bytes(data), len(data) * 13 // 10 + 800)

    def _put(self, nid: NodeId, entry: Node | bytes, size: int) -> None:
        with self._lock:
            nodes, sizes = self._nodes, self._sizes
            self.bytes += size - sizes.get(nid, 0)
            nodes[nid] = entry
            sizes[nid] = size
            nodes.move_to_end(nid)
            limit = self.max_bytes
            while len(nodes) > self.max_nodes or (
                limit is not None and self.bytes > limit and len(nodes) > 1
            ):
                old, _ = nodes.popitem(last=False)
                self.bytes -= sizes.pop(old, 0)

    def discard(self, nids: Iterable[NodeId]) -> None:
        """Forget ``nids`` (nodes a commit deleted: nothing new will read them,
        and a reader of an older state reads them from the state it pinned)."""
        with self._lock:
            pop, sizes = self._nodes.pop, self._sizes
            for nid in nids:
                if pop(nid, None) is not None:
                    self.bytes -= sizes.pop(nid, 0)

    def clear(self) -> None:
        """Forget every node."""
        with self._lock:
            self._nodes.clear()
            self._sizes.clear()
            self.bytes = 0

    def __len__(self) -> int:
        return len(self._nodes)


class NodeReader:
    """Loads and decodes nodes of one store, through an optional shared cache.

    The store vouches for the bytes it returns (the encrypting store
    authenticates every row); the reader does not re-hash them.  Only
    :func:`~persist.btree.check.check_tree` recomputes addresses.
    """

    __slots__ = ("cache", "store")

    def __init__(self, store: NodeSource, cache: NodeCache | None = None) -> None:
        self.store = store
        self.cache = cache

    def node(self, nid: NodeId) -> Node:
        """Return the decoded object ``nid``; IntegrityError if missing or undecodable."""
        cache = self.cache
        if cache is not None:
            node = cache.get(nid)
            if node is not None:
                return node
        node = decode_node(self.store.load(nid))
        if cache is not None:
            cache.put(nid, node)
        return node

    def tree_node(self, nid: NodeId) -> Leaf | Internal:
        """Return the node ``nid``, which must be a leaf or an internal node."""
        node = self.node(nid)
        if isinstance(node, Blob):
            raise IntegrityError("tree link points to a blob")
        return node

    def blob(self, nid: NodeId) -> bytes:
        """Return the data of blob ``nid``; blobs bypass the cache (they are large)."""
        node = decode_node(self.store.load(nid))
        if not isinstance(node, Blob):
            raise IntegrityError("value link does not point to a blob")
        return node.data
