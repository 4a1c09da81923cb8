"""The checker reports every kind of damage, and all of it at once."""

from __future__ import annotations

import cbor2

from persist.btree import (
    MemoryNodeStore,
    NodeId,
    ProblemKind,
    apply_batch,
    check_tree,
    retain,
)
from persist.btree.node import BlobRef, Internal, Leaf, decode_node, encode_internal, encode_leaf

from .oracle import key, put, recount

K = ProblemKind


def healthy() -> tuple[MemoryNodeStore, NodeId, NodeId]:
    """A three-level tree with blobs (one shared) and a retained older version."""
    store = MemoryNodeStore()
    changes = [(key(i), (b"B" * 300 if i % 50 == 0 else b"v%d" % i)) for i in range(1_000)]
    old, update = apply_batch(store, None, changes)
    store.apply(update)
    store.apply(retain(store, old))
    assert old is not None
    new, update = apply_batch(store, old, [(key(1), b"changed")])
    store.apply(update)
    assert new is not None
    assert check_tree(store, {"old": old, "new": new}) == []
    return store, old, new


def kinds(store: MemoryNodeStore, roots: dict[str, NodeId | None]) -> set[ProblemKind]:
    return {p.kind for p in check_tree(store, roots)}


def a_leaf(store: MemoryNodeStore, root: NodeId) -> NodeId:
    nid = root
    while isinstance(node := decode_node(store.objects[nid]), Internal):
        nid = node.children[-1]
    return nid


def test_a_healthy_store_has_no_problems() -> None:
    store, old, new = healthy()
    assert check_tree(store, {"old": old, "new": new}) == []
    assert check_tree(MemoryNodeStore(), {"empty": None}) == []


def test_missing_object() -> None:
    store, old, new = healthy()
    leaf = a_leaf(store, new)
    del store.objects[leaf]
    problems = check_tree(store, {"old": old, "new": new})
    assert next(p for p in problems if p.kind == K.MISSING).node == leaf.hex()


def test_changed_bytes_are_a_wrong_address() -> None:
    store, old, new = healthy()
    leaf = a_leaf(store, new)
    node = decode_node(store.objects[leaf])
    assert isinstance(node, Leaf)
    store.objects[leaf] = encode_leaf(node.keys, (b"forged", *node.values[1:]))
    assert kinds(store, {"old": old, "new": new}) == {K.WRONG_ADDRESS}


def test_garbage_is_undecodable() -> None:
    store, old, new = healthy()
    store.objects[a_leaf(store, new)] = b"\xff garbage"
    assert K.UNDECODABLE in kinds(store, {"old": old, "new": new})


def test_non_canonical_bytes_are_reported() -> None:
    store = MemoryNodeStore()
    # The empty key as 0x5800 (a one-byte length field) where 0x40 says the same.
    data = bytes.fromhex("8401 01 81 5800 81 4176".replace(" ", ""))
    assert decode_node(data) == Leaf((b"",), (b"v",))
    root = put(store, data)
    problems = check_tree(store, {"t": root})
    assert [p.kind for p in problems] == [K.UNDECODABLE]
    assert "canonical" in problems[0].description


def test_wrong_count_and_orphan() -> None:
    store, old, new = healthy()
    store.count_rows[new] = 5
    orphan = put(store, encode_leaf([b"x"], [b"y"]))
    problems = check_tree(store, {"old": old, "new": new})
    assert {(p.kind, p.node) for p in problems} == {
        (K.REFCOUNT, new.hex()),
        (K.ORPHAN, orphan.hex()),
    }


def test_a_forgotten_root_shows_as_orphans_and_low_counts() -> None:
    store, _, new = healthy()
    assert {K.ORPHAN, K.REFCOUNT} <= kinds(store, {"new": new})


def test_order_fill_height_counts_and_links() -> None:
    store = MemoryNodeStore()
    blob = put(store, cbor2.dumps([3, 1, b"b" * 300], canonical=True))
    keys = [key(2), key(1), *(key(i) for i in range(3, 17))]
    unsorted = put(store, encode_leaf(keys, [b"v"] * 16))
    small = put(store, encode_leaf([key(20)], [BlobRef(299, blob)]))  # 1 entry, wrong size
    rest = put(store, encode_leaf([key(i) for i in range(30, 46)], [b"v"] * 16))
    deep = put(store, encode_internal(1, [key(50)], [rest], [16]))
    root = put(
        store,
        encode_internal(
            1,
            [key(2), key(25), key(40)],  # bad: 2 is not the minimum of unsorted; 25 != 20
            [unsorted, small, deep],
            [16, 7, 16],  # bad: small holds 1
        ),
    )
    recount(store, [root])
    found = kinds(store, {"t": root})
    assert found == {K.ORDER, K.FILL, K.SUBTREE_COUNT, K.HEIGHT, K.BAD_LINK}


def test_a_link_to_the_wrong_kind_of_object() -> None:
    store = MemoryNodeStore()
    leaf = put(store, encode_leaf([b"a"], [b"v"]))
    root = put(store, encode_leaf([b"a"], [BlobRef(300, leaf)]))  # a "blob" that is a leaf
    recount(store, [root])
    assert kinds(store, {"t": root}) == {K.BAD_LINK}


def test_every_problem_is_reported_at_once() -> None:
    store, old, new = healthy()
    new_node = decode_node(store.objects[new])
    assert isinstance(new_node, Internal)
    missing = a_leaf(store, new)
    del store.objects[missing]
    store.objects[new_node.children[0]] = b"\x00"
    store.count_rows[old] = 7
    orphan = put(store, b"orphan bytes")
    problems = check_tree(store, {"old": old, "new": new})
    assert {p.kind for p in problems} >= {
        K.MISSING,
        K.UNDECODABLE,
        K.WRONG_ADDRESS,
        K.REFCOUNT,
        K.ORPHAN,
    }
    assert {p.node for p in problems} >= {missing.hex(), old.hex(), orphan.hex()}
    assert all(p.description for p in problems)


def test_a_reference_cycle_does_not_hang_the_checker() -> None:
    store = MemoryNodeStore()
    fake = NodeId(b"\x07" * 32)
    store.objects[fake] = encode_internal(1, [b"a", b"b"], [fake, fake], [1, 1])
    assert K.WRONG_ADDRESS in kinds(store, {"t": fake})
