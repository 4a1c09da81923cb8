"""The order-preserving key encoding: encoded order equals Python order."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from persist.db.keys import decode_key, encode_key

ints = st.integers() | st.integers(min_value=-(2**600), max_value=2**600)
scalars = st.binary(max_size=6) | st.text(max_size=6) | ints


def same_shape(depth: int = 2) -> st.SearchStrategy[list[object]]:
    """Lists of keys Python can compare with each other."""
    leaf = st.one_of(
        st.lists(st.binary(max_size=6), min_size=2),
        st.lists(st.text(max_size=6), min_size=2),
        st.lists(ints, min_size=2),
    )
    if depth == 0:
        return leaf
    # tuples of a fixed type pattern, possibly with a common prefix of varying length
    return st.one_of(
        leaf,
        st.lists(st.tuples(st.binary(max_size=3), ints), min_size=2),
        st.lists(
            st.tuples(st.text(max_size=3), st.tuples(ints, st.binary(max_size=2))), min_size=2
        ),
        st.lists(st.lists(ints, max_size=4).map(tuple), min_size=2),
    )


@settings(max_examples=400)
@given(same_shape())
def test_encoded_order_equals_python_order(keys: list[object]) -> None:
    assert sorted(keys, key=encode_key) == sorted(keys)  # type: ignore[type-var]
    for k in keys:
        assert decode_key(encode_key(k)) == k


@settings(max_examples=300)
@given(st.recursive(scalars, lambda inner: st.lists(inner, max_size=3).map(tuple), max_leaves=8))
def test_round_trip(key: object) -> None:
    assert decode_key(encode_key(key)) == key


@pytest.mark.parametrize(
    "smaller, larger",
    [
        (-(2**64), -(2**64) + 1),
        (-(2**64) + 1, -256),
        (-256, -255),
        (-1, 0),
        (0, 1),
        (255, 256),
        (2**64 - 1, 2**64),
        (2**64, 2**4000),
        (b"", b"\x00"),
        (b"a", b"a\x00"),
        (b"a\x00", b"a\x01"),
        ("", "\x00"),
        ("z", "\u00e9"),
        ("\ud7ff", "\ud800"),
        ("\ud800", "\ue000"),
        ((), (0,)),
        ((1,), (1, 2)),
        ((1, b"a"), (1, b"b")),
        (("a", ()), ("a", (0,))),
    ],
)
def test_boundaries(smaller: object, larger: object) -> None:
    assert encode_key(smaller) < encode_key(larger)


@pytest.mark.parametrize("bad", [True, 1.5, None, [1], {"a": 1}, bytearray(b"x"), (1, [2])])
def test_unsupported_key_types(bad: object) -> None:
    with pytest.raises(TypeError):
        encode_key(bad)


@pytest.mark.parametrize("data", [b"", b"\x01abc", b"\x15", b"\x99", b"\x05\x14", b"\x14\x14"])
def test_malformed_encodings(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode_key(data)


@pytest.mark.parametrize(
    "data",
    [
        b"\x13\xff",  # -0, a zero magnitude byte (found by the fuzzer)
        b"\x15\x00",  # +0
        b"\x16\x00\x01",  # 1 with a leading zero byte
        b"\x12\xff\xfe",  # -1 with a leading zero byte
        b"\x1d" + (1).to_bytes(8, "big") + b"\x01",  # a small int under the big-int tag
        b"\x0b" + ((1 << 64) - 2).to_bytes(8, "big") + b"\xfe",  # small, under the big tag
        b"\x05\x13\xff\x00",  # -0 inside a tuple
    ],
)
def test_non_canonical_int_encodings_are_refused(data: bytes) -> None:
    """Every key has one encoding: a decoder accepting another would give two
    rows the same key (and the fuzzer's round trip would fail)."""
    with pytest.raises(ValueError, match="non-canonical"):
        decode_key(data)


def test_known_answers() -> None:
    assert encode_key(0) == b"\x14"
    assert encode_key(1) == b"\x15\x01"
    assert encode_key(-1) == b"\x13\xfe"
    assert encode_key(b"a\x00b") == b"\x01a\x00\xffb\x00"
    assert encode_key("é") == b"\x02\xc3\xa9\x00"
    assert encode_key((1, "a")) == b"\x05\x15\x01\x02a\x00\x00"
