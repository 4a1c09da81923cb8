"""Issue 4: the fast key and value codecs give exactly the bytes and values of the general ones.

The stored format is fixed, so every shortcut is checked against the general
code path on the same input: encodings byte for byte, decodings value for
value, and malformed input raises the same way.
"""

from __future__ import annotations

from typing import Any

import cbor2
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from persist.db import keys as keymod
from persist.db.keys import decode_key, decode_keys, encode_key
from persist.db.values import ValueCodec, records
from persist.errors import IntegrityError


def general_key(key: object) -> bytes:
    """The encoding by the general path, bypassing encode_key's shortcuts."""
    out = bytearray()
    keymod._encode(key, out, 0)
    return bytes(out)


def general_decode_key(data: bytes) -> object:
    """The decoding by the general path (decode_key without its shortcut)."""
    try:
        key, pos = keymod._decode(data, 0)
    except IndexError:
        raise ValueError("truncated") from None
    if pos != len(data):
        raise ValueError("trailing bytes")
    return key


class NoObjects:
    """The object resolver of a codec that meets no persistent object."""

    def oid_of(self, obj: Any) -> int | None:
        return None

    def load(self, oid: int) -> Any:
        raise AssertionError("no object references in these tests")

    def settle(self) -> None:
        pass

    def abandon(self) -> None:
        pass


codec = ValueCodec(records, NoObjects(), lambda cls, name: None)


def outcome(fn: Any, *args: Any) -> tuple[str, Any]:
    try:
        return "ok", fn(*args)
    except (ValueError, IndexError) as exc:  # UnicodeDecodeError is a ValueError
        return "error", type(exc) if not isinstance(exc, UnicodeError) else ValueError


# Keys with many 0x00 bytes, non-ASCII and surrogate text: every escape path.
key_bytes = st.binary(max_size=24) | st.lists(st.sampled_from([0, 1, 255, 97]), max_size=12).map(
    bytes
)
key_text = st.text(max_size=12) | st.text(alphabet="\x00a\udc80é", max_size=8)
keys = key_bytes | key_text | st.integers() | st.tuples(key_bytes, st.integers())


@settings(max_examples=500)
@given(keys)
def test_encode_key_equals_the_general_encoding(key: object) -> None:
    assert encode_key(key) == general_key(key)
    assert decode_key(encode_key(key)) == key


@settings(max_examples=300)
@given(st.lists(key_bytes, max_size=40) | st.lists(key_text, max_size=40) | st.lists(keys))
def test_decode_keys_equals_decode_key_per_key(run: list[object]) -> None:
    data = [encode_key(k) for k in run]
    assert decode_keys(data) == [decode_key(d) for d in data] == run


@settings(max_examples=500)
@given(st.binary(max_size=12).map(lambda b: b"\x01" + b) | st.binary(max_size=12))
def test_decode_key_shortcut_agrees_on_malformed_input(data: bytes) -> None:
    assert outcome(decode_key, data) == outcome(general_decode_key, data)


escapy = st.lists(st.sampled_from([0, 0xFF, 0x61]), max_size=6).map(bytes)


@settings(max_examples=500)
@given(
    st.lists(
        st.tuples(st.sampled_from([b"\x01", b"\x02", b"\xff"]), escapy).map(b"".join),
        max_size=6,
    )
)
def test_decode_keys_agrees_on_malformed_runs(run: list[bytes]) -> None:
    assert outcome(decode_keys, run) == outcome(lambda r: [decode_key(d) for d in r], run)


plain_values = (
    st.binary(max_size=300)
    | st.text(max_size=300)
    | st.integers(min_value=-(2**66), max_value=2**66)
    | st.text(alphabet="\udc80a", max_size=3)  # lone surrogates: refused by both paths
)


@settings(max_examples=500)
@given(plain_values)
def test_encode_equals_cbor2(value: object) -> None:
    try:
        want = cbor2.dumps(value)
    except Exception:
        with pytest.raises(TypeError):
            codec.encode(value)
        return
    assert codec.encode(value) == want
    assert codec.decode(want) == value


@pytest.mark.parametrize("n", [0, 1, 23, 24, 255, 256, 65535, 65536])
def test_encode_at_every_length_boundary(n: int) -> None:
    for value in (b"x" * n, "y" * n, n, -n - 1, 2**64 - 1 - n, -(2**64) + n):
        assert codec.encode(value) == cbor2.dumps(value)


def general_decode(data: bytes) -> tuple[str, Any]:
    try:
        return "ok", codec.decode_general(data)
    except IntegrityError:
        return "error", IntegrityError


def fast_decode(fn: Any, data: Any) -> tuple[str, Any]:
    try:
        return "ok", fn(data)
    except IntegrityError:
        return "error", IntegrityError


# Plain values, exact or with a byte too many or too few, and arbitrary bytes.
encoded = st.one_of(
    plain_values.filter(lambda v: not (isinstance(v, str) and "\udc80" in v)).map(cbor2.dumps),
    st.tuples(st.binary(max_size=40).map(cbor2.dumps), st.binary(max_size=2)).map(
        lambda p: p[0] + p[1]
    ),
    st.binary(min_size=1, max_size=40).map(lambda b: cbor2.dumps(b)[:-1]),
    st.binary(max_size=8),
)


@settings(max_examples=800)
@given(encoded)
@example(b"\xf9\x7c\x01")  # a half-float NaN
def test_decode_equals_cbor2(data: bytes) -> None:
    fast, general = fast_decode(codec.decode, data), general_decode(data)
    # NaN is not equal to itself (b"\xf9\x7c\x01", a half-float NaN, came up): compare reprs
    assert fast == general or repr(fast) == repr(general)


@settings(max_examples=400)
@given(
    st.lists(st.binary(max_size=255).map(cbor2.dumps), max_size=40)
    | st.lists(st.text(max_size=100).map(cbor2.dumps), max_size=40)
    | st.lists(encoded, max_size=6)
    | st.lists(st.sampled_from([b"\x78\x01\xff", b"\x61\xc3", b"\x58\x01a", b"\x41"]), max_size=4)
)
@example([b"\xf9\x7c\x01"])  # a half-float NaN: not equal to itself
def test_decode_many_equals_decode_per_value(run: list[bytes]) -> None:
    want = [general_decode(d) for d in run]
    if all(ok == "ok" for ok, _ in want):
        got, expected = codec.decode_many(run), [v for _, v in want]
        assert got == expected or repr(got) == repr(expected)
    else:
        with pytest.raises(IntegrityError):
            codec.decode_many(run)
