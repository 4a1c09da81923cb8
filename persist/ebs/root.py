"""The root record: the one row that says what the store currently is.

Theory of operation (docs/format.md "Root record").

1. The root lives in one of two slots whose addresses derive from the master
   key; a commit writes root ``n`` to slot ``n % 2`` in the same atomic batch
   as everything it describes, so the other slot keeps root ``n - 1``.
2. Each root names its predecessor by digest, so the two slots form a chain
   and a freshness record (freshness.py) can tell "older", "newer" and
   "somewhere else" apart.
3. The catalog is the upper layer's: table descriptor -> opaque payload (the
   tree root ids, the root log's chain).  Everything the store holds besides
   the keyslots and the two root slots is named by it, directly or through
   content addresses and digests, so the root authenticates every row
   (format v2).
4. Format v1 roots also carry a coverage per table: the number of its
   mutable rows and an additive multiset hash over ``(storage key, stored
   row)`` (MSet-Add-Hash, Clarke et al. 2003, keyed BLAKE2b as the PRF),
   which verify recomputed to catch a row deleted, added or rolled back.
   Format v2 has no free-standing mutable rows and no coverage; v1 roots are
   still read (and a v1 store is upgraded by its first writable open).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType

from ..errors import IntegrityError
from .keys import KeyRing
from .layout import (
    FORMAT_VERSION,
    MAX_ROOT_ROW,
    NO_TABLE,
    READABLE_VERSIONS,
    RandomSource,
    RowKind,
    padded_size,
)
from .rows import Getter, auth_error, open_envelope, seal_envelope

__all__ = [
    "COVERAGE_MODULUS",
    "Coverage",
    "RootRecord",
    "open_root",
    "read_roots",
    "seal_root",
]

COVERAGE_MODULUS = 1 << 256
# Row counts wrap like the u64 they are stored as: a host that injects a row
# we then delete must make verify report it, not make the commit fail.
_COUNT_MODULUS = 1 << 64
_MAGIC = b"PSRT"
# docs/format.md "Root record": the fixed part, then the catalog, then coverage.
_FIXED = struct.Struct(">4sBBH16sQQI32s")
_COUNT = struct.Struct(">I")
_NAME = struct.Struct(">H")
_PAYLOAD = struct.Struct(">I")
_COVER = struct.Struct(">Q32s")
_DIGEST_PERSON = b"persist-root-v1"


@dataclass(frozen=True, slots=True)
class Coverage:
    """Number of mutable rows of a table and their multiset hash."""

    rows: int = 0
    acc: int = 0

    def add(self, element: int) -> Coverage:
        return Coverage((self.rows + 1) % _COUNT_MODULUS, (self.acc + element) % COVERAGE_MODULUS)

    def remove(self, element: int) -> Coverage:
        return Coverage((self.rows - 1) % _COUNT_MODULUS, (self.acc - element) % COVERAGE_MODULUS)


@dataclass(frozen=True)
class RootRecord:
    """One committed state of the store (all fields authenticated)."""

    db_id: bytes
    count: int
    timestamp_us: int
    prev_digest: bytes
    catalog: Mapping[str, bytes] = field(default_factory=dict)
    #: format v1 only: table descriptor -> coverage of its mutable rows
    coverage: Mapping[bytes, Coverage] = field(default_factory=dict)
    #: incremented by every master-key rotation
    key_epoch: int = 0
    #: the store format (docs/format.md "Versions"); v2 roots have no coverage
    version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.version not in READABLE_VERSIONS:
            raise ValueError(f"unknown store format {self.version}")
        if self.version >= 2 and self.coverage:
            raise ValueError("format v2 roots carry no coverage")
        object.__setattr__(self, "catalog", MappingProxyType(dict(self.catalog)))
        object.__setattr__(self, "coverage", MappingProxyType(dict(self.coverage)))

    @property
    def timestamp(self) -> float:
        """Commit time, seconds since the epoch (as the store's clock said)."""
        return self.timestamp_us / 1e6

    @cached_property
    def encoded(self) -> bytes:
        """The canonical plaintext (unpadded)."""
        parts = [
            _FIXED.pack(
                _MAGIC,
                self.version,
                0,
                0,
                self.db_id,
                self.count,
                self.timestamp_us,
                self.key_epoch,
                self.prev_digest,
            ),
            _COUNT.pack(len(self.catalog)),
        ]
        for name in sorted(self.catalog, key=lambda n: n.encode("utf-8")):
            raw, payload = name.encode("utf-8"), self.catalog[name]
            parts += [_NAME.pack(len(raw)), raw, _PAYLOAD.pack(len(payload)), payload]
        if self.version >= 2:
            return b"".join(parts)
        parts.append(_COUNT.pack(len(self.coverage)))
        for descriptor in sorted(self.coverage):
            cover = self.coverage[descriptor]
            parts += [
                _NAME.pack(len(descriptor)),
                descriptor,
                _COVER.pack(cover.rows, cover.acc.to_bytes(32, "big")),
            ]
        return b"".join(parts)

    @cached_property
    def digest(self) -> bytes:
        """BLAKE2b-256 of the canonical plaintext; the next root's prev_digest."""
        return hashlib.blake2b(self.encoded, digest_size=32, person=_DIGEST_PERSON).digest()

    def __repr__(self) -> str:
        return (
            f"RootRecord(v{self.version}, count={self.count}, db_id={self.db_id.hex()}, "
            f"tables={sorted(self.catalog)!r}, key_epoch={self.key_epoch})"
        )


class _Reader:
    """Strict cursor over an authenticated plaintext; any misfit is an error."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError("truncated")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: struct.Struct) -> tuple[int, ...]:
        return fmt.unpack(self.take(fmt.size))


def _decode(plain: bytes) -> RootRecord:
    r = _Reader(plain)
    magic, version, _r1, _r2, db_id, count, ts, epoch, prev = _FIXED.unpack(r.take(_FIXED.size))
    if magic != _MAGIC or version not in READABLE_VERSIONS or _r1 or _r2:
        raise ValueError("bad root header")
    catalog: dict[str, bytes] = {}
    (n,) = r.unpack(_COUNT)
    for _ in range(n):
        (name_len,) = r.unpack(_NAME)
        name = r.take(name_len).decode("utf-8")
        (payload_len,) = r.unpack(_PAYLOAD)
        catalog[name] = r.take(payload_len)
    coverage: dict[bytes, Coverage] = {}
    if version == 1:
        (n,) = r.unpack(_COUNT)
        for _ in range(n):
            (desc_len,) = r.unpack(_NAME)
            descriptor = r.take(desc_len)
            rows, acc = _COVER.unpack(r.take(_COVER.size))
            coverage[descriptor] = Coverage(rows, int.from_bytes(acc, "big"))
    used = r.pos
    if len(plain) != padded_size(used) or any(plain[used:]):
        raise ValueError("bad root padding")
    root = RootRecord(db_id, count, ts, prev, catalog, coverage, epoch, version)
    if root.encoded != plain[:used]:
        raise ValueError("root is not canonically encoded")
    return root


def seal_root(keys: KeyRing, root: RootRecord, random: RandomSource) -> tuple[bytes, bytes]:
    """``(storage key, row)`` of ``root`` in slot ``count % 2``."""
    slot_key = keys.root_slot_key(root.count % 2)
    body = root.encoded
    plain = body + bytes(padded_size(len(body)) - len(body))
    row = seal_envelope(keys.root_cipher, RowKind.ROOT, NO_TABLE, slot_key, plain, random)
    return slot_key, row


def open_root(keys: KeyRing, slot: int, stored: bytes) -> RootRecord:
    """Decrypt and parse the root in ``slot``; IntegrityError if it is not valid there."""
    slot_key = keys.root_slot_key(slot)
    plain = open_envelope(
        keys.root_cipher, RowKind.ROOT, NO_TABLE, slot_key, stored, max_len=MAX_ROOT_ROW
    )
    try:
        root = _decode(plain)
    except (ValueError, UnicodeDecodeError, struct.error, OverflowError):
        raise auth_error(RowKind.ROOT, slot_key) from None
    if root.count % 2 != slot:
        raise auth_error(RowKind.ROOT, slot_key)
    return root


def read_roots(get: Getter, keys: KeyRing) -> list[RootRecord | IntegrityError | None]:
    """Both root slots, read with ``get`` (a store's or a snapshot's): a root,
    the error it raised, or None when absent."""
    out: list[RootRecord | IntegrityError | None] = []
    for slot in (0, 1):
        stored = get(keys.root_slot_key(slot))
        if stored is None:
            out.append(None)
            continue
        try:
            out.append(open_root(keys, slot, stored))
        except IntegrityError as exc:
            out.append(exc)
    return out
