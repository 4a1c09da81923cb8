"""Row envelopes, body framing, padding and chunking: pure functions over bytes.

A stored row is ``nonce (24) || XAES-256-GCM ciphertext`` whose associated
data binds format version, row kind, table id and storage key
(:func:`~persist.ebs.layout.associated_data`).  The plaintext of a node or a
mutable row is a *head* (docs/format.md "Head"): a small header, the logical
key (mutable rows only), and either the value itself or, for a value too big
for one row, the length and digest of a value stored as chunks at addresses
derived from the head's address and the chunk's index.

Invariants:

1. Every failure to authenticate or to parse an authenticated plaintext raises
   IntegrityError with the fixed message ``"<kind> row <hex> failed
   authentication"``; the host knows kind and address anyway.
2. A chunk is bound to its position by its address (AD) and to the exact
   version of its value by the content digest in the head, so neither moving
   nor replaying an old chunk of a rewritten row goes unnoticed.
3. Padding bytes are zero and checked, so one plaintext has one encoding.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias

from ..errors import IntegrityError
from .keys import TableKeys
from .layout import (
    CHUNK_SIZE,
    MAX_ROW,
    STORAGE_KEY_SIZE,
    RandomSource,
    RowKind,
    associated_data,
    padded_size,
)
from .xaes import NONCE_SIZE, OVERHEAD, XAES256GCM

__all__ = [
    "Getter",
    "Head",
    "auth_error",
    "chunk_count",
    "chunk_keys",
    "may_be_chunked",
    "missing_error",
    "open_envelope",
    "open_head",
    "read_value",
    "seal",
    "seal_envelope",
]

#: Reads one stored row: a store's or a snapshot's ``get``.
Getter: TypeAlias = Callable[[bytes], bytes | None]

# docs/format.md "Head": layout, key length, value length.
_HEAD = struct.Struct(">BIQ")
# ...followed, for a chunked value, by chunk count and content digest.
_CHUNKED = struct.Struct(">I32s")
_INLINE, _CHUNKED_LAYOUT = 0, 1
_VALUE_DIGEST_PERSON = b"persist-value-v1"


def auth_error(kind: RowKind, storage_key: bytes) -> IntegrityError:
    """The one error every authentication or parse failure of a row raises."""
    return IntegrityError(f"{kind.name.lower()} row {storage_key.hex()} failed authentication")


def missing_error(kind: RowKind, storage_key: bytes) -> IntegrityError:
    """The error for a row that should exist and does not."""
    return IntegrityError(f"{kind.name.lower()} row {storage_key.hex()} is missing")


def _pad(body: bytes) -> bytes:
    return body + bytes(padded_size(len(body)) - len(body))


def _value_digest(value: bytes) -> bytes:
    return hashlib.blake2b(value, digest_size=32, person=_VALUE_DIGEST_PERSON).digest()


def seal_envelope(
    cipher: XAES256GCM,
    kind: RowKind,
    table_id: bytes,
    storage_key: bytes,
    plaintext: bytes,
    random: RandomSource,
) -> bytes:
    """Encrypt one row's (already padded) plaintext under a fresh random nonce."""
    nonce = random(NONCE_SIZE)
    if len(nonce) != NONCE_SIZE:
        raise ValueError("the random source returned the wrong number of bytes")
    ad = associated_data(kind, table_id, storage_key)
    return nonce + cipher.encrypt(nonce, plaintext, ad)


def open_envelope(
    cipher: XAES256GCM,
    kind: RowKind,
    table_id: bytes,
    storage_key: bytes,
    stored: bytes,
    *,
    max_len: int = MAX_ROW,
) -> bytes:
    """Decrypt one row; IntegrityError if it is not exactly what was sealed there.

    A row longer than persist ever writes (``max_len``) is refused unread.
    """
    if type(stored) is not bytes or not NONCE_SIZE + OVERHEAD <= len(stored) <= max_len:
        raise auth_error(kind, storage_key)
    if len(storage_key) != STORAGE_KEY_SIZE:
        raise auth_error(kind, storage_key)
    ad = associated_data(kind, table_id, storage_key)
    try:
        return cipher.decrypt(stored[:NONCE_SIZE], stored[NONCE_SIZE:], ad)
    except IntegrityError:
        raise auth_error(kind, storage_key) from None


def chunk_count(key_len: int, value_len: int) -> int:
    """0 when the value fits in its head row, else the number of chunk rows."""
    if _HEAD.size + key_len + value_len <= CHUNK_SIZE:
        return 0
    return -(-value_len // CHUNK_SIZE)


def may_be_chunked(stored_len: int, key_len: int) -> bool:
    """False when a stored head of this length can only hold an inline value.

    A chunked head has one fixed size per key length; every other length
    proves the row inline without decrypting it (the commit path's shortcut).
    """
    plain_len = stored_len - NONCE_SIZE - OVERHEAD
    return plain_len == padded_size(_HEAD.size + _CHUNKED.size + key_len)


def chunk_keys(keys: TableKeys, head_key: bytes, count: int) -> list[bytes]:
    return [keys.chunk_key(head_key, i) for i in range(count)]


def seal(
    keys: TableKeys,
    kind: RowKind,
    storage_key: bytes,
    logical_key: bytes,
    value: bytes,
    random: RandomSource,
) -> list[tuple[bytes, bytes]]:
    """Encrypt a node or mutable row: ``[(head key, head row), (chunk key, chunk row)...]``."""
    count = chunk_count(len(logical_key), len(value))
    header = _HEAD.pack(_CHUNKED_LAYOUT if count else _INLINE, len(logical_key), len(value))
    if not count:
        body = header + logical_key + value
    else:
        body = header + _CHUNKED.pack(count, _value_digest(value)) + logical_key
    head = seal_envelope(keys.cipher, kind, keys.id, storage_key, _pad(body), random)
    rows = [(storage_key, head)]
    for index, chunk_key in enumerate(chunk_keys(keys, storage_key, count)):
        piece = value[index * CHUNK_SIZE : (index + 1) * CHUNK_SIZE]
        sealed = seal_envelope(keys.cipher, RowKind.CHUNK, keys.id, chunk_key, _pad(piece), random)
        rows.append((chunk_key, sealed))
    return rows


@dataclass(frozen=True, slots=True)
class Head:
    """The decrypted head of a node or mutable row."""

    logical_key: bytes
    value_len: int
    chunk_count: int
    #: The whole value when it is stored inline, else None.
    inline: bytes | None
    #: BLAKE2b-256 of the whole value when it is chunked, else None.
    digest: bytes | None


def _check_padding(plain: bytes, used: int) -> bool:
    return len(plain) == padded_size(used) and not any(plain[used:])


def open_head(keys: TableKeys, kind: RowKind, storage_key: bytes, stored: bytes) -> Head:
    """Decrypt and parse the head row of a node or mutable row."""
    plain = open_envelope(keys.cipher, kind, keys.id, storage_key, stored)
    if len(plain) < _HEAD.size:
        raise auth_error(kind, storage_key)
    layout, key_len, value_len = _HEAD.unpack_from(plain)
    pos = _HEAD.size
    count, digest = 0, None
    if layout == _CHUNKED_LAYOUT:
        if len(plain) < pos + _CHUNKED.size:
            raise auth_error(kind, storage_key)
        count, digest = _CHUNKED.unpack_from(plain, pos)
        pos += _CHUNKED.size
        used = pos + key_len
        if count != chunk_count(key_len, value_len) or count == 0:
            raise auth_error(kind, storage_key)
    elif layout == _INLINE:
        used = pos + key_len + value_len
        if chunk_count(key_len, value_len):
            raise auth_error(kind, storage_key)
    else:
        raise auth_error(kind, storage_key)
    if not _check_padding(plain, used):
        raise auth_error(kind, storage_key)
    logical_key = plain[pos : pos + key_len]
    inline = None if count else plain[pos + key_len : used]
    return Head(logical_key, value_len, count, inline, digest)


def read_value(
    keys: TableKeys,
    kind: RowKind,
    storage_key: bytes,
    head: Head,
    fetch: Getter,
) -> bytes:
    """The whole value of a head: inline, or its chunks fetched, checked and joined."""
    if head.inline is not None:
        return head.inline
    pieces = []
    remaining = head.value_len
    for chunk_key in chunk_keys(keys, storage_key, head.chunk_count):
        stored = fetch(chunk_key)
        if stored is None:
            raise missing_error(RowKind.CHUNK, chunk_key)
        plain = open_envelope(keys.cipher, RowKind.CHUNK, keys.id, chunk_key, stored)
        size = min(remaining, CHUNK_SIZE)
        if not _check_padding(plain, size):
            raise auth_error(RowKind.CHUNK, chunk_key)
        pieces.append(plain[:size])
        remaining -= size
    value = b"".join(pieces)
    if head.digest is None or not hmac.compare_digest(_value_digest(value), head.digest):
        # The chunks authenticate one by one but belong to another version.
        raise auth_error(kind, storage_key)
    return value
