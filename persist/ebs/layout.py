"""Format constants, associated data and padding (docs/format.md).

Every number here is written down in docs/format.md; change both or neither.
A store written by any version must open with every later one, so these
constants are frozen.  Format v2 changed which rows exist and the root
record, not the row envelope: every row still carries envelope version 1 in
its associated data.
"""

from __future__ import annotations

import enum
import hashlib
import struct
from collections.abc import Callable

__all__ = [
    "AD_PREFIX",
    "CHUNK_SIZE",
    "ENVELOPE_VERSION",
    "FORMAT_VERSION",
    "MAX_ROOT_ROW",
    "MAX_ROW",
    "MIN_PADDED",
    "NO_TABLE",
    "READABLE_VERSIONS",
    "STORAGE_KEY_SIZE",
    "RandomSource",
    "RowKind",
    "associated_data",
    "keyed_hash",
    "padded_size",
    "padme",
]

#: docs/format.md "Versions": the store format this version writes (the root says it).
FORMAT_VERSION = 2
#: Store formats this version opens (v1 is upgraded by the first writable open).
READABLE_VERSIONS = (1, 2)
#: The version byte of the row envelope's associated data (unchanged since v1).
ENVELOPE_VERSION = 1
#: Every storage key the ebs writes is this long (docs/format.md "Storage keys").
STORAGE_KEY_SIZE = 32
#: The table id used in the associated data of rows that belong to no table.
NO_TABLE = bytes(32)
#: Plaintext bytes per chunk; larger values are split (docs/format.md "Chunks").
CHUNK_SIZE = 64 * 1024
#: Smallest padded plaintext: small rows all look alike (docs/format.md "Padding").
MIN_PADDED = 64
#: Associated data starts with this tag so no other protocol's AD can collide.
AD_PREFIX = b"persist\x00"
#: The longest stored row persist ever writes, root records aside: a padded
#: chunk or inline head plus nonce and tag.  Anything longer is refused before
#: it is decrypted (it also caps what a host can make a reader allocate twice).
MAX_ROW = 24 + 65536 + 16
#: The longest root record row (its catalog names every table).
MAX_ROOT_ROW = 24 + 16 * 1024 * 1024 + 16

#: Where randomness comes from (``os.urandom``; tests pass a seeded source).
RandomSource = Callable[[int], bytes]

_AD = struct.Struct(">8sBB32s32s")


class RowKind(enum.IntEnum):
    """What a row is; bound into every row's associated data (docs/format.md)."""

    KEYSLOT = 1
    ROOT = 2
    NODE = 3
    ROW = 4
    CHUNK = 5
    JOURNAL = 6


def associated_data(kind: RowKind, table_id: bytes, storage_key: bytes) -> bytes:
    """``"persist\\0" || envelope version || kind || table id || storage key`` (74 bytes).

    Binding all four means a ciphertext authenticates only in the one place it
    was written: another address, table, kind or format version fails.
    """
    if len(table_id) != 32 or len(storage_key) != STORAGE_KEY_SIZE:
        raise ValueError("table ids and storage keys are 32 bytes")
    return _AD.pack(AD_PREFIX, ENVELOPE_VERSION, int(kind), table_id, storage_key)


def keyed_hash(key: bytes, *parts: bytes) -> bytes:
    """BLAKE2b-256 keyed with ``key`` over the concatenation of ``parts``."""
    h = hashlib.blake2b(key=key, digest_size=32)
    for part in parts:
        h.update(part)
    return h.digest()


def padme(length: int) -> int:
    """Padmé (Nikitin et al., PETS 2019): round up, keeping O(log log n) bits.

    At most 12% overhead, and the host learns only about
    ``log2(log2(length))`` bits of the exact length.
    """
    if length < 2:
        return length
    exponent = length.bit_length() - 1
    mantissa_bits = exponent.bit_length()
    low_bits = exponent - mantissa_bits
    mask = (1 << low_bits) - 1
    return (length + mask) & ~mask


def padded_size(length: int) -> int:
    """The plaintext size class of a body of ``length`` bytes."""
    return padme(max(length, MIN_PADDED))
