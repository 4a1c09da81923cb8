"""The decoded-node cache: bounded in nodes and in estimated memory."""

from __future__ import annotations

import os
import sys

import pytest

from persist.btree import NodeCache, NodeId
from persist.btree.cache import footprint
from persist.btree.node import Internal, Leaf, decode_node, encode_internal, encode_leaf


def _deep(obj: object) -> int:
    if isinstance(obj, tuple):
        return sys.getsizeof(obj) + sum(_deep(x) for x in obj)
    return sys.getsizeof(obj)


def _leaf(entries: int, value: int) -> tuple[NodeId, bytes]:
    keys = sorted(os.urandom(18) for _ in range(entries))
    data = encode_leaf(keys, [os.urandom(value) for _ in range(entries)])
    return NodeId(os.urandom(32)), data


@pytest.mark.parametrize(("entries", "value"), [(16, 100), (12, 100), (16, 16), (8, 200)])
def test_the_footprint_estimate_is_within_a_fifth_of_the_objects(entries: int, value: int) -> None:
    _, data = _leaf(entries, value)
    node = decode_node(data)
    assert 0.8 <= footprint(node) / _deep(node) <= 1.25
    inner = encode_internal(
        1, [os.urandom(18) for _ in range(16)], [os.urandom(32)] * 16, [24] * 16
    )
    node = decode_node(inner)
    assert isinstance(node, Internal)
    assert 0.8 <= footprint(node) / _deep(node) <= 1.25


def test_the_byte_bound_evicts_the_least_recently_used() -> None:
    cache = NodeCache(max_nodes=1000, max_bytes=40_000)
    leaves = [_leaf(16, 100) for _ in range(30)]  # about 3.4 KB each decoded
    for nid, data in leaves:
        cache.put(nid, decode_node(data))
    assert 9 <= len(cache) <= 12 and cache.bytes <= 40_000
    assert cache.get(leaves[-1][0]) is not None and cache.get(leaves[0][0]) is None
    # encoded entries are counted as what they decode to: reading one keeps the total
    for nid, data in leaves[:5]:
        cache.put_encoded(nid, data)
    before = cache.bytes
    node = cache.get(leaves[4][0])
    assert isinstance(node, Leaf) and cache.bytes == before <= 40_000
    cache.discard([leaves[4][0], NodeId(os.urandom(32))])
    assert cache.get(leaves[4][0]) is None and cache.bytes < before
    cache.clear()
    assert len(cache) == 0 and cache.bytes == 0


def test_one_node_larger_than_the_bound_is_still_cached() -> None:
    cache = NodeCache(max_nodes=10, max_bytes=100)
    nid, data = _leaf(16, 100)
    cache.put(nid, decode_node(data))
    assert len(cache) == 1  # the newest stays, whatever its size
    with pytest.raises(ValueError, match="max_bytes"):
        NodeCache(max_bytes=0)
