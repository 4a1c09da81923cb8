"""Known-answer vectors for the node encoding, and decoding of damaged bytes."""

from __future__ import annotations

import hashlib

import cbor2
import pytest

from persist.btree import MemoryNodeStore, NodeId
from persist.btree.node import (
    Blob,
    BlobRef,
    Internal,
    Leaf,
    decode_node,
    encode_blob,
    encode_internal,
    encode_leaf,
)
from persist.errors import IntegrityError

ID_11 = NodeId(b"\x11" * 32)
ID_22 = NodeId(b"\x22" * 32)

# Written out by hand from RFC 8949, not produced by the encoder under test.
LEAF_HEX = "".join(
    [
        "84",  # array(4)
        "0101",  # kind 1 (leaf), format 1
        "8241614162",  # keys: [h'61', h'62']
        "824131",  # values: [h'31',
        "8219012c5820" + "11" * 32,  # [300, h'1111...']] -- a blob reference
    ]
)
INTERNAL_HEX = "".join(
    [
        "86",  # array(6)
        "020101",  # kind 2 (internal), format 1, level 1
        "8241614170",  # minimum keys: [h'61', h'70']
        "825820" + "11" * 32 + "5820" + "22" * 32,  # children: two 32-byte addresses
        "82101820",  # entry counts: [16, 32]
    ]
)
BLOB_HEX = "8303014378797a"  # [3, 1, h'78797a']


def test_leaf_known_answer() -> None:
    data = encode_leaf([b"a", b"b"], [b"1", BlobRef(300, ID_11)])
    assert data.hex() == LEAF_HEX
    assert decode_node(data) == Leaf((b"a", b"b"), (b"1", BlobRef(300, ID_11)))


def test_internal_known_answer() -> None:
    data = encode_internal(1, [b"a", b"p"], [ID_11, ID_22], [16, 32])
    assert data.hex() == INTERNAL_HEX
    node = decode_node(data)
    assert node == Internal(1, (b"a", b"p"), (ID_11, ID_22), (16, 32))
    assert isinstance(node, Internal) and all(type(c) is NodeId for c in node.children)


def test_blob_known_answer() -> None:
    assert encode_blob(b"xyz").hex() == BLOB_HEX
    assert decode_node(bytes.fromhex(BLOB_HEX)) == Blob(b"xyz")


def test_memory_store_address_is_plain_blake2b_256() -> None:
    data = bytes.fromhex(LEAF_HEX)
    expected = hashlib.blake2b(data, digest_size=32).digest()
    assert MemoryNodeStore().node_id(data) == expected


def test_equal_content_encodes_equal() -> None:
    a = encode_leaf([b"k"], [b"v"])
    b = encode_leaf((b"k",), (b"v",))
    assert a == b


def test_node_id_is_a_checked_type() -> None:
    nid = NodeId(b"\xab" * 32)
    assert repr(nid).startswith("NodeId(abababab")
    assert str(nid) == "ab" * 32
    assert nid == b"\xab" * 32 and hash(nid) == hash(b"\xab" * 32)
    with pytest.raises(ValueError):
        NodeId(b"short")


@pytest.mark.parametrize(
    "obj",
    [
        [1, 2, [], []],  # unknown format version
        [9, 1, b""],  # unknown kind
        [1, 1, [b"a"], []],  # keys and values differ in length
        [1, 1, ["a"], [b"v"]],  # text key
        [1, 1, [b"a"], [b"v" * 225]],  # inline value above 224 bytes
        [1, 1, [b"a"], [[100, b"\x11" * 32]]],  # blob reference to a small value
        [1, 1, [b"a"], [[300, b"\x11" * 31]]],  # short address
        [2, 1, 0, [b"a"], [b"\x11" * 32], [1]],  # level 0 internal node
        [2, 1, 1, [], [], []],  # internal node without children
        [2, 1, 1, [b"a"], [b"\x11" * 32], [0]],  # empty subtree
        [2, 1, 1, [b"a"], [b"\x11" * 32], [True]],  # not an int
        [3, 1, "text"],  # blob of text
        {"kind": 1},
    ],
)
def test_decode_rejects_malformed_objects(obj: object) -> None:
    with pytest.raises(IntegrityError):
        decode_node(cbor2.dumps(obj, canonical=True))


@pytest.mark.parametrize("data", [b"", b"\xff", b"\x9f\x01\x01\xff", bytes.fromhex(LEAF_HEX)[:-3]])
def test_decode_rejects_garbage(data: bytes) -> None:
    with pytest.raises(IntegrityError):
        decode_node(data)
