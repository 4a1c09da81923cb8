"""Node encoding: the canonical bytes of leaves, internal nodes and blobs.

Every stored object is one canonical CBOR array (RFC 8949 section 4.2 core
deterministic encoding, ``cbor2.dumps(..., canonical=True)``) whose first two
items say what it is and in which format (docs/design.md, "Encoding")::

    leaf      [1, 1, [key, ...], [value, ...]]
    internal  [2, 1, level, [minkey, ...], [child-id, ...], [count, ...]]
    blob      [3, 1, data]

* A leaf value is a byte string of at most :data:`INLINE_MAX` bytes, or a blob
  reference ``[size, blob-id]`` for a larger value (``size`` > INLINE_MAX).
* An internal node at ``level`` (1 = its children are leaves) lists, per
  child, the smallest key of the child's subtree, its address and its entry
  count.  Storing every child's *exact* minimum key (not a separator) makes
  the bounds check trivial and lets a search stop above the leaves.
* Equal content always encodes to equal bytes, so equal nodes get equal
  addresses and are stored once (structural sharing, blob deduplication).

Decoding checks structure and types (so that tree code can trust what it
gets) but not key order or fill; :mod:`.check` verifies those.
"""

from __future__ import annotations

from typing import NamedTuple, TypeAlias

import cbor2

from ..errors import IntegrityError
from .nodestore import NODE_ID_SIZE, NodeId

__all__ = [
    "FORMAT_VERSION",
    "INLINE_MAX",
    "INTERNAL_MAX",
    "INTERNAL_MIN",
    "KIND_BLOB",
    "KIND_INTERNAL",
    "KIND_LEAF",
    "LEAF_MAX",
    "LEAF_MIN",
    "MAX_KEY_SIZE",
    "Blob",
    "BlobRef",
    "Internal",
    "Leaf",
    "Node",
    "Value",
    "children_of",
    "decode_node",
    "encode_blob",
    "encode_internal",
    "encode_leaf",
]

FORMAT_VERSION = 1
KIND_LEAF = 1
KIND_INTERNAL = 2
KIND_BLOB = 3

#: Order 16 (Knuth): a non-root internal node has 8 to 16 children, the root 2 to 16.
INTERNAL_MAX = 16
INTERNAL_MIN = INTERNAL_MAX // 2
#: A non-root leaf holds 16 to 32 entries; a root leaf 1 to 32.
LEAF_MAX = 32
LEAF_MIN = LEAF_MAX // 2
#: Values up to 7 x 32 bytes live in the leaf; larger ones become blobs (DESIGN 2.3).
INLINE_MAX = 224
#: Keys are copied into internal nodes, so their size bounds the node size.
MAX_KEY_SIZE = 1024


class BlobRef(NamedTuple):
    """A leaf value stored as a separate blob object."""

    size: int
    nid: NodeId


#: A leaf value as stored: inline bytes or a reference to a blob.
Value: TypeAlias = bytes | BlobRef


class Leaf(NamedTuple):
    """A decoded leaf: ascending keys and their values (immutable, shareable)."""

    keys: tuple[bytes, ...]
    values: tuple[Value, ...]


class Internal(NamedTuple):
    """A decoded internal node: per child its minimum key, address and entry count."""

    level: int
    keys: tuple[bytes, ...]
    children: tuple[NodeId, ...]
    counts: tuple[int, ...]


class Blob(NamedTuple):
    """A decoded blob: one large value."""

    data: bytes


Node: TypeAlias = Leaf | Internal | Blob


def encode_leaf(
    keys: list[bytes] | tuple[bytes, ...], values: list[Value] | tuple[Value, ...]
) -> bytes:
    """Return the canonical bytes of a leaf (REQUIRES: keys ascending, len(keys)==len(values))."""
    # cbor2 encodes a bytes subclass (NodeId) as a plain byte string, and a
    # tuple as an array: a leaf without blob references needs no copy.
    if set(map(type, values)) <= _BYTES:
        vals: object = values
    else:
        vals = [v if type(v) is bytes else [v[0], v[1]] for v in values]
    return cbor2.dumps([KIND_LEAF, FORMAT_VERSION, keys, vals], canonical=True)


def encode_internal(
    level: int,
    keys: list[bytes] | tuple[bytes, ...],
    children: list[NodeId] | tuple[NodeId, ...],
    counts: list[int] | tuple[int, ...],
) -> bytes:
    """Return the canonical bytes of an internal node at ``level`` >= 1."""
    return cbor2.dumps(
        [KIND_INTERNAL, FORMAT_VERSION, level, list(keys), list(children), list(counts)],
        canonical=True,
    )


def encode_blob(data: bytes) -> bytes:
    """Return the canonical bytes of a blob holding ``data``."""
    return cbor2.dumps([KIND_BLOB, FORMAT_VERSION, data], canonical=True)


_BYTES = frozenset([bytes])
_INT = frozenset([int])
_ID_SIZE = frozenset([NODE_ID_SIZE])


def _damaged(what: str) -> IntegrityError:
    return IntegrityError(f"undecodable tree object: {what}")


def _node_id(raw: object) -> NodeId:
    if type(raw) is not bytes or len(raw) != NODE_ID_SIZE:
        raise _damaged("bad object address")
    return NodeId(raw)


def _values(raws: tuple[object, ...]) -> tuple[Value, ...]:
    """Decode leaf values that include blob references ``[size, address]``."""
    values: list[Value] = []
    append = values.append
    for raw in raws:
        if type(raw) is bytes:
            if len(raw) > INLINE_MAX:
                raise _damaged("oversized inline value")
            append(raw)
        elif type(raw) is tuple and len(raw) == 2 and type(raw[0]) is int and raw[0] > INLINE_MAX:
            append(BlobRef(raw[0], _node_id(raw[1])))
        else:
            raise _damaged("bad leaf value")
    return tuple(values)


def _decode_leaf(obj: tuple[object, ...]) -> Leaf:
    if len(obj) != 4:
        raise _damaged("bad leaf")
    keys, vals = obj[2], obj[3]
    if type(keys) is not tuple or type(vals) is not tuple or len(keys) != len(vals):
        raise _damaged("bad leaf")
    # Type checks by set(map(...)) run in C: decoding is on every cache miss.
    if not set(map(type, keys)) <= _BYTES:
        raise _damaged("bad leaf key")
    if set(map(type, vals)) <= _BYTES and max(map(len, vals), default=0) <= INLINE_MAX:
        return Leaf(keys, vals)  # the common case: no blob references, no copy
    return Leaf(keys, _values(vals))


def _decode_internal(obj: tuple[object, ...]) -> Internal:
    if len(obj) != 6:
        raise _damaged("bad internal node")
    level, keys, kids, counts = obj[2], obj[3], obj[4], obj[5]
    if type(level) is not int or level < 1:
        raise _damaged("bad node level")
    if type(keys) is not tuple or type(kids) is not tuple or type(counts) is not tuple:
        raise _damaged("bad internal node")
    if not 0 < len(keys) == len(kids) == len(counts):
        raise _damaged("bad internal node")
    if not set(map(type, keys)) <= _BYTES:
        raise _damaged("bad internal key")
    if not set(map(type, counts)) <= _INT or min(counts) < 1:
        raise _damaged("bad subtree count")
    if not set(map(type, kids)) <= _BYTES or set(map(len, kids)) != _ID_SIZE:
        raise _damaged("bad object address")
    return Internal(level, keys, tuple(map(NodeId, kids)), counts)


def decode_node(data: bytes) -> Node:
    """Decode the bytes of a stored object; raise IntegrityError if they are not one.

    The result is immutable (tuples throughout), so it may be cached and shared.
    """
    try:
        obj = cbor2.loads(data, immutable=True, allow_indefinite=False)
    except (cbor2.CBORError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise _damaged("not CBOR") from exc
    if type(obj) is not tuple or len(obj) < 3 or type(obj[0]) is not int:
        raise _damaged("not a tree object")
    if obj[1] != FORMAT_VERSION or type(obj[1]) is not int:
        raise _damaged(f"unsupported format version {obj[1]!r}")
    kind = obj[0]
    if kind == KIND_LEAF:
        return _decode_leaf(obj)
    if kind == KIND_INTERNAL:
        return _decode_internal(obj)
    if kind == KIND_BLOB:
        if len(obj) != 3 or type(obj[2]) is not bytes:
            raise _damaged("bad blob")
        return Blob(obj[2])
    raise _damaged(f"unknown object kind {kind!r}")


def children_of(node: Node) -> list[NodeId]:
    """Return the addresses ``node`` references, one per reference (duplicates kept)."""
    if type(node) is Internal:
        return list(node.children)
    if type(node) is Leaf:
        return [v.nid for v in node.values if type(v) is BlobRef]
    return []
