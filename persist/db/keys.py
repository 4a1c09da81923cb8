"""Order-preserving encoding of application keys (docs/format.md, "Keys").

Keys are ``str``, ``bytes``, ``int`` (any size, negative too) and tuples of
them, nested to any depth.  For two keys of the same shape, the unsigned byte
order of their encodings equals Python's order of the keys; keys of different
types (which Python cannot compare) sort bytes < str < tuple < int.

Layout (every element starts with a tag byte; no tag is 0x00, so a tuple's
0x00 terminator sorts before any further element):

=========  ==============================================================
0x01       bytes: the bytes with 0x00 escaped as 0x00 0xFF, then 0x00
0x02       str: UTF-8 (surrogatepass), escaped like bytes, then 0x00
0x05       tuple: the elements, then 0x00
0x0B       int < -(2**64 - 1): (2**64-1-L) as 8 bytes, then ~magnitude (L bytes)
0x0C-0x13  negative int of L = 0x14-tag bytes: ~magnitude
0x14       zero
0x15-0x1C  positive int of L = tag-0x14 bytes: magnitude, big-endian
0x1D       int > 2**64 - 1: L as 8 bytes, then the magnitude (L bytes)
=========  ==============================================================
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import repeat
from operator import itemgetter
from typing import TypeAlias

from ..btree import MAX_KEY_SIZE

__all__ = ["MAX_KEY_SIZE", "Key", "check_key_size", "decode_key", "decode_keys", "encode_key"]

Key: TypeAlias = "str | bytes | int | tuple[Key, ...]"

T_BYTES = 0x01
T_STR = 0x02
T_TUPLE = 0x05
T_NEG_BIG = 0x0B
T_ZERO = 0x14
T_POS_BIG = 0x1D
_SMALL = 8  # ints of up to 8 magnitude bytes get a compact tag
_BIG_LEN = 8  # byte width of the length field of big ints
_MASK64 = (1 << 64) - 1


_T_BYTES_HEAD = bytes([T_BYTES])
_T_STR_HEAD = bytes([T_STR])
_END = b"\x00"
_ESCAPED = b"\x00\xff"


def encode_key(key: object) -> bytes:
    """Encode ``key``; raise TypeError for an unsupported type (bool, float, None ...)."""
    # Fast paths for the common keys: the same bytes as _encode, without its calls.
    if type(key) is bytes:
        return _T_BYTES_HEAD + key.replace(_END, _ESCAPED) + _END
    if type(key) is str:
        return _T_STR_HEAD + key.encode("utf-8", "surrogatepass").replace(_END, _ESCAPED) + _END
    out = bytearray()
    _encode(key, out, 0)
    return bytes(out)


def check_key_size(encoded: bytes) -> bytes:
    """``encoded``, if a tree can hold it as a key; else ValueError naming the limit.

    The trees hold keys of at most :data:`MAX_KEY_SIZE` encoded bytes, and the
    root log's u16 key length holds more, so this is the one bound a key
    meets from its write to every later fold (docs/api.md, "Limits").
    """
    if len(encoded) > MAX_KEY_SIZE:
        raise ValueError(
            f"a key encodes to {len(encoded)} bytes; keys are at most {MAX_KEY_SIZE} "
            "bytes encoded (a str or bytes key of up to 1,022 bytes without NUL bytes)"
        )
    return encoded


def _escape(raw: bytes, out: bytearray) -> None:
    out += raw.replace(b"\x00", b"\x00\xff")
    out.append(0)


def _encode(key: object, out: bytearray, depth: int) -> None:
    if depth > 100:
        raise ValueError("keys may nest tuples at most 100 deep")
    if type(key) is bytes:
        out.append(T_BYTES)
        _escape(key, out)
    elif type(key) is str:
        out.append(T_STR)
        _escape(key.encode("utf-8", "surrogatepass"), out)
    elif type(key) is int:
        _encode_int(key, out)
    elif type(key) is tuple:
        out.append(T_TUPLE)
        for item in key:
            _encode(item, out, depth + 1)
        out.append(0)
    else:
        raise TypeError(f"keys must be str, bytes, int or tuples of them, not {type(key).__name__}")


def _encode_int(n: int, out: bytearray) -> None:
    if n == 0:
        out.append(T_ZERO)
        return
    mag = abs(n)
    length = (mag.bit_length() + 7) // 8
    raw = mag.to_bytes(length, "big")
    if n > 0:
        if length <= _SMALL:
            out.append(T_ZERO + length)
        else:
            out.append(T_POS_BIG)
            out += length.to_bytes(_BIG_LEN, "big")
        out += raw
    else:
        inverted = bytes(b ^ 0xFF for b in raw)
        if length <= _SMALL:
            out.append(T_ZERO - length)
        else:
            out.append(T_NEG_BIG)
            out += (_MASK64 - length).to_bytes(_BIG_LEN, "big")
        out += inverted


def decode_key(data: bytes) -> Key:
    """Invert :func:`encode_key`; raise ValueError on malformed input."""
    # Fast path for bytes keys: every 0x00 but the last one starts an escape 0x00 0xFF.
    if data[:1] == _T_BYTES_HEAD and data[-1:] == _END:
        zeros = data.count(0)
        if zeros == 1:
            return data[1:-1]
        if zeros == data.count(_ESCAPED) + 1:
            return data[1:-1].replace(_ESCAPED, _END)
    try:
        key, pos = _decode(data, 0)
    except IndexError:
        raise ValueError("truncated key encoding") from None
    if pos != len(data):
        raise ValueError("trailing bytes after key encoding")
    return key


def _unescape(data: bytes, pos: int) -> tuple[bytes, int]:
    out = bytearray()
    while True:
        end = data.index(b"\x00", pos)
        out += data[pos:end]
        if end + 1 < len(data) and data[end + 1] == 0xFF:
            out.append(0)
            pos = end + 2
        else:
            return bytes(out), end + 1


def _decode(data: bytes, pos: int) -> tuple[Key, int]:
    tag = data[pos]
    pos += 1
    if tag == T_BYTES:
        return _unescape(data, pos)
    if tag == T_STR:
        raw, pos = _unescape(data, pos)
        return raw.decode("utf-8", "surrogatepass"), pos
    if tag == T_TUPLE:
        items: list[Key] = []
        while data[pos] != 0:
            item, pos = _decode(data, pos)
            items.append(item)
        return tuple(items), pos + 1
    if tag == T_ZERO:
        return 0, pos
    if T_ZERO < tag <= T_ZERO + _SMALL or tag == T_POS_BIG:
        if tag == T_POS_BIG:
            length = int.from_bytes(data[pos : pos + _BIG_LEN], "big")
            pos += _BIG_LEN
        else:
            length = tag - T_ZERO
        raw = data[pos : pos + length]
        if len(raw) != length:
            raise IndexError
        if raw[0] == 0 or (tag == T_POS_BIG and length <= _SMALL):
            raise ValueError("non-canonical int key encoding")
        return int.from_bytes(raw, "big"), pos + length
    if T_ZERO - _SMALL <= tag < T_ZERO or tag == T_NEG_BIG:
        if tag == T_NEG_BIG:
            length = _MASK64 - int.from_bytes(data[pos : pos + _BIG_LEN], "big")
            pos += _BIG_LEN
        else:
            length = T_ZERO - tag
        raw = data[pos : pos + length]
        if len(raw) != length:
            raise IndexError
        if raw[0] == 0xFF or (tag == T_NEG_BIG and length <= _SMALL):
            raise ValueError("non-canonical int key encoding")
        return -int.from_bytes(bytes(b ^ 0xFF for b in raw), "big"), pos + length
    raise ValueError(f"unknown key tag 0x{tag:02x}")


_first = itemgetter(0)
_last = itemgetter(-1)
_inner = itemgetter(slice(1, -1))
_ESCAPED_R = repeat(_ESCAPED)
_END_R = repeat(_END)
_ZERO = frozenset([0])
_BYTES_TAG = frozenset([T_BYTES])
_STR_TAG = frozenset([T_STR])
_UTF8 = repeat("utf-8")
_SURROGATEPASS = repeat("surrogatepass")


def decode_keys(data: Sequence[bytes]) -> list[Key]:
    """Decode several keys: ``[decode_key(d) for d in data]``, in C where it can.

    A well-formed bytes key is its tag, its content with 0x00 escaped as
    0x00 0xFF, and a final 0x00: a slice and a replace decode it.  A str key
    without an escape decodes by a slice too, then as UTF-8.  A run of mixed
    or other types, or a malformed one, takes :func:`decode_key` for every key.
    """
    try:
        tags = set(map(_first, data))
        ends = set(map(_last, data))
    except IndexError:  # an empty (malformed) encoding: decode_key reports it
        return list(map(decode_key, data))
    if ends != _ZERO:
        return list(map(decode_key, data))
    # Every key ends with 0x00, and starts with tag 0x01 or 0x02 (else it falls
    # back below), so in the joined run a 0x00 0xFF never spans two keys: the
    # counts tell whether every 0x00 but each key's last starts an escape.
    joined = b"".join(data)
    escapes = joined.count(_ESCAPED)
    if joined.count(0) != len(data) + escapes:
        return list(map(decode_key, data))  # malformed: decode_key says where
    if tags == _BYTES_TAG:
        if escapes:
            return list(map(bytes.replace, map(_inner, data), _ESCAPED_R, _END_R))
        return list(map(_inner, data))
    if tags == _STR_TAG and not escapes:
        return list(map(bytes.decode, map(_inner, data), _UTF8, _SURROGATEPASS))
    return list(map(decode_key, data))
