"""What a root reaches, and what changes between two roots: the diff behind push and pull.

Format v2 (docs/format.md) makes every row of a store but the keyslots and
the two root slots reachable from the root, through the catalog:

* ``tree:NAME`` -- the root node id of table NAME's tree (empty: empty tree);
* ``count:NAME`` -- the root of its count tree, whose keys are the ids of
  every blob of the table (and of every object referenced more than once);
* ``log`` -- the root log: ``u8 version, u64 generation, u32 segments,
  32-byte chain``, then (version 2) the log's tail, segments that ride in
  the root itself; segment ``i`` is the row of table ``log`` whose logical
  key is ``u64 generation || u32 i``.

The names are the db layer's (``persist/db/treestore.py``,
``persist/db/rootlog.py``); this layer may not import it, so they are
repeated here from docs/format.md and ``tests/remote/test_sync.py`` checks
that they agree.

**The diff** (:func:`diff_roots`) walks the two versions of each tree from
the top, one level at a time.  At each level the node ids of both frontiers
are compared: an id in both is a subtree both versions share, and the walk
never descends into it; an id only in the new frontier is written and its
children join the next new frontier; an id only in the old one is garbage and
its children join the next old frontier.  Since a node's level is part of its
content, and no node appears twice in one version of a tree (keys are
unique), a shared node always meets itself at the same level, so nothing the
new version reaches is ever called garbage.  Blobs may be shared by many
leaves, so they are not taken from the leaves but from the count trees,
diffed the same way: a blob is new when a new-only count leaf names it and no
old-only one does, garbage in the opposite case.  The cost is
O(changed entries x depth) rows, never the whole store.

Every row read is authenticated on the way (AEAD at its own address, the
content address recomputed, the root log's chain recomputed): the rows of
either side may come from a replica's host.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ..btree.node import Internal, Leaf, decode_node
from ..ebs.layout import RowKind
from ..ebs.root import RootRecord
from ..ebs.rows import Getter, chunk_keys, may_be_chunked, open_head
from ..ebs.store import EncryptedStore
from ..ebs.table import Table
from ..errors import IntegrityError

__all__ = [
    "COUNT_TABLE_PREFIX",
    "LOG_DESCRIPTOR",
    "TABLE_PREFIX",
    "Diff",
    "diff_roots",
]

TABLE_PREFIX = "tree:"
COUNT_TABLE_PREFIX = "count:"
LOG_DESCRIPTOR = "log"
_NODE_ID_SIZE = 32
_LOG_META = struct.Struct(">BQI32s")
#: 1: header only; 2: header and the tail (docs/format.md, "Root log")
_LOG_VERSIONS = (1, 2)
#: 3: a first row, the chain before it and masked ranges, then the tail
_LOG_META3 = struct.Struct(">BQII32s32sH")
_SEGMENT_KEY = struct.Struct(">QI")
_CHAIN_PERSON = b"persist-log-v1"


@dataclass
class Diff:
    """The rows one side lacks: ``puts`` to write (storage key -> stored bytes,
    exactly as read) and ``deletes`` (storage keys no longer reachable)."""

    puts: dict[bytes, bytes] = field(default_factory=dict)
    deletes: set[bytes] = field(default_factory=set)
    #: rows read (and authenticated) on the new side, for progress reports
    read: int = 0


Progress = Callable[[int], None]


def _tree_roots(root: RootRecord, prefix: str) -> dict[str, bytes]:
    roots: dict[str, bytes] = {}
    for desc, payload in root.catalog.items():
        if not desc.startswith(prefix):
            continue
        if payload and len(payload) != _NODE_ID_SIZE:
            raise IntegrityError(f"catalog entry of {desc!r} is malformed")
        if payload:
            roots[desc[len(prefix) :]] = payload
    return roots


def _log_segments(root: RootRecord | None) -> tuple[int, int, int, bytes, bytes]:
    """(generation, first row, rows, chain before the first, chain) of the root
    log a root names: its rows are ``first .. rows - 1``."""
    meta = b"" if root is None else root.catalog.get(LOG_DESCRIPTOR, b"")
    if not meta:
        return 0, 0, 0, bytes(32), bytes(32)
    if meta[0] == 3:
        # Version 3 (rootlog rules 6 and 7): the rows before ``first`` were
        # dropped; the masks and the tail after the header name no row.
        try:
            _v, generation, first, segments, start, chain, _n = _LOG_META3.unpack_from(meta)
        except struct.error:
            raise IntegrityError("the root log's catalog entry is malformed") from None
        if first > segments:
            raise IntegrityError("the root log's catalog entry is malformed")
        return generation, first, segments, start, chain
    try:
        version, generation, segments, chain = _LOG_META.unpack_from(meta)
    except struct.error:
        raise IntegrityError("the root log's catalog entry is malformed") from None
    if version not in _LOG_VERSIONS:
        raise IntegrityError("the root log has an unknown version")
    # Version 1 is the header alone; version 2 carries the log's tail after it
    # (segments that ride in the root: authenticated with it, no rows to copy).
    if (len(meta) == _LOG_META.size) != (version == 1):
        raise IntegrityError("the root log's catalog entry is malformed")
    return generation, 0, segments, bytes(32), chain


class _Side:
    """One side of a diff: a getter over its rows, read through the store's keys."""

    def __init__(self, ebs: EncryptedStore, get: Getter) -> None:
        self.ebs = ebs
        self._get = get

    def get(self, key: bytes) -> bytes | None:
        return self._get(bytes(key))  # targets take exactly bytes, not NodeId

    def read_node(self, table: Table, nid: bytes) -> tuple[bytes, dict[bytes, bytes]]:
        """The plaintext of a node and the rows it is stored in; authenticated."""
        rows: dict[bytes, bytes] = {}

        def fetch(key: bytes) -> bytes | None:
            value = self.get(key)
            if value is not None:
                rows[bytes(key)] = value
            return value

        plain = table.read_node(nid, fetch)
        if not hmac.compare_digest(table.node_id(plain), nid):
            raise IntegrityError(f"node {nid.hex()} does not hold the content it is named by")
        return plain, rows

    def read_row(self, table: Table, key: bytes) -> tuple[bytes, dict[bytes, bytes]]:
        rows: dict[bytes, bytes] = {}

        def fetch(k: bytes) -> bytes | None:
            value = self.get(k)
            if value is not None:
                rows[bytes(k)] = value
            return value

        value = table.read_row(key, fetch)
        if value is None:
            raise IntegrityError(f"row {table.row_key(key).hex()} of the root log is missing")
        return value, rows

    def stored_keys(self, table: Table, storage_key: bytes, key_len: int) -> list[bytes]:
        """The storage keys of a head row and its chunks; [] when it is gone already.

        Used for garbage: the row is opened (authenticated) only when its size
        says it may be chunked, since its chunks are named by its head.
        """
        stored = self.get(storage_key)
        if stored is None:
            return []
        if not may_be_chunked(len(stored), key_len):
            return [bytes(storage_key)]
        kind = RowKind.NODE if key_len == 0 else RowKind.ROW
        head = open_head(table.live_keys(), kind, storage_key, stored)
        return [bytes(storage_key), *chunk_keys(table.live_keys(), storage_key, head.chunk_count)]


def _diff_tree(
    table: Table,
    new: _Side,
    old: _Side,
    new_root: bytes | None,
    old_root: bytes | None,
    diff: Diff,
    *,
    leaf_keys: bool,
) -> tuple[set[bytes], set[bytes]]:
    """Diff one tree level by level (module docstring).

    Returns the keys of the new-only and of the old-only leaves when
    ``leaf_keys`` (count trees: the blob ids), else two empty sets.
    """
    new_keys: set[bytes] = set()
    old_keys: set[bytes] = set()
    fronts: dict[int, tuple[set[bytes], set[bytes]]] = {}

    def level_of(side: _Side, nid: bytes) -> tuple[int, Leaf | Internal, dict[bytes, bytes]]:
        plain, rows = side.read_node(table, nid)
        node = decode_node(plain)
        if isinstance(node, Internal):
            return node.level, node, rows
        if isinstance(node, Leaf):
            return 0, node, rows
        raise IntegrityError("a tree link points to a blob")

    # The roots are read first: their levels start the walk.
    pending: dict[tuple[bool, bytes], tuple[Leaf | Internal, dict[bytes, bytes]]] = {}
    if new_root is not None and new_root == old_root:
        return new_keys, old_keys
    for is_new, side, nid in ((True, new, new_root), (False, old, old_root)):
        if nid is not None:
            level, node, rows = level_of(side, nid)
            pending[is_new, nid] = (node, rows)
            fronts.setdefault(level, (set(), set()))[0 if is_new else 1].add(nid)

    def take(is_new: bool, nid: bytes, level: int) -> tuple[Leaf | Internal, dict[bytes, bytes]]:
        got = pending.pop((is_new, nid), None)
        if got is not None:
            return got
        got_level, node, rows = level_of(new if is_new else old, nid)
        if got_level != level:
            raise IntegrityError(f"node {nid.hex()} is at the wrong level of its tree")
        return node, rows

    while fronts:
        level = max(fronts)
        new_front, old_front = fronts.pop(level)
        shared = new_front & old_front
        for nid in sorted(new_front - shared):
            node, rows = take(True, nid, level)
            diff.puts.update(rows)
            diff.read += 1
            if isinstance(node, Internal):
                fronts.setdefault(level - 1, (set(), set()))[0].update(node.children)
            elif leaf_keys:
                new_keys.update(node.keys)
        for nid in sorted(old_front - shared):
            if level == 0 and not leaf_keys and (False, nid) not in pending:
                # A leaf of a tree: nothing below it to follow, only its rows to name.
                diff.deletes.update(old.stored_keys(table, nid, 0))
                continue
            onode, rows = take(False, nid, level)
            diff.deletes.update(rows)
            if isinstance(onode, Internal):
                fronts.setdefault(level - 1, (set(), set()))[1].update(onode.children)
            elif leaf_keys:
                old_keys.update(onode.keys)
        if level == 0:
            break
    if fronts:
        raise IntegrityError("a tree has nodes below its leaves")
    return new_keys, old_keys


def _diff_log(
    ebs: EncryptedStore,
    new: _Side,
    old: _Side,
    new_root: RootRecord,
    old_root: RootRecord | None,
    diff: Diff,
) -> None:
    table = ebs.table(LOG_DESCRIPTOR)
    generation, first, segments, running, chain = _log_segments(new_root)
    new_keys = {_SEGMENT_KEY.pack(generation, i) for i in range(first, segments)}
    old_generation, old_first, old_segments, _, _ = _log_segments(old_root)
    old_keys = {_SEGMENT_KEY.pack(old_generation, i) for i in range(old_first, old_segments)}
    for i in range(first, segments):
        key = _SEGMENT_KEY.pack(generation, i)
        # Every segment is read (the chain covers them all); only new ones are written.
        value, rows = new.read_row(table, key)
        running = hashlib.blake2b(running + value, digest_size=32, person=_CHAIN_PERSON).digest()
        if key not in old_keys:
            diff.puts.update(rows)
            diff.read += 1
    if not hmac.compare_digest(running, chain):
        raise IntegrityError("the root log's segments are not the ones its root names")
    for key in sorted(old_keys - new_keys):
        diff.deletes.update(old.stored_keys(table, table.row_key(key), len(key)))


def diff_roots(
    ebs: EncryptedStore,
    new_get: Getter,
    new_root: RootRecord,
    old_get: Getter,
    old_root: RootRecord | None,
) -> Diff:
    """Every row ``new_root`` reaches and ``old_root`` does not (with its bytes, read
    through ``new_get``), and every row ``old_root`` reaches and ``new_root`` does not.

    ``old_root`` None: everything ``new_root`` reaches (a full copy).  Both
    roots must be of format v2 and of the database whose keys ``ebs`` holds.
    Raises IntegrityError for any row that is missing or fails authentication
    on the new side, or on the old side where the diff must read it.
    """
    for root in (new_root, old_root):
        if root is not None and root.version < 2:
            raise IntegrityError(
                "a format-v1 root: open the store writable once to upgrade it, then push"
            )
    new, old = _Side(ebs, new_get), _Side(ebs, old_get)
    diff = Diff()
    old_trees = {} if old_root is None else _tree_roots(old_root, TABLE_PREFIX)
    old_counts = {} if old_root is None else _tree_roots(old_root, COUNT_TABLE_PREFIX)
    new_trees = _tree_roots(new_root, TABLE_PREFIX)
    new_counts = _tree_roots(new_root, COUNT_TABLE_PREFIX)
    for name in sorted(set(new_trees) | set(old_trees) | set(new_counts) | set(old_counts)):
        table = ebs.table(TABLE_PREFIX + name)
        ctable = ebs.table(COUNT_TABLE_PREFIX + name)
        added, removed = _diff_tree(
            ctable, new, old, new_counts.get(name), old_counts.get(name), diff, leaf_keys=True
        )
        _diff_tree(table, new, old, new_trees.get(name), old_trees.get(name), diff, leaf_keys=False)
        for nid in sorted(added - removed):
            if len(nid) != _NODE_ID_SIZE:
                raise IntegrityError("malformed count tree key")
            plain, rows = new.read_node(table, nid)
            decode_node(plain)
            diff.puts.update(rows)
            diff.read += 1
        for nid in sorted(removed - added):
            if len(nid) == _NODE_ID_SIZE:
                diff.deletes.update(old.stored_keys(table, nid, 0))
    _diff_log(ebs, new, old, new_root, old_root, diff)
    diff.deletes.difference_update(diff.puts)
    return diff


def reachable(ebs: EncryptedStore, get: Getter, root: RootRecord) -> Diff:
    """Every row ``root`` reaches, read and authenticated through ``get``."""

    def nothing(key: bytes) -> bytes | None:
        return None

    return diff_roots(ebs, get, root, nothing, None)


def fixed_keys(ebs: EncryptedStore, keyslot_keys: Iterable[bytes]) -> set[bytes]:
    """The rows no root reaches: the root slots and the keyslot addresses."""
    ring = ebs.keyring
    return {ring.root_slot_key(0), ring.root_slot_key(1), *keyslot_keys}
