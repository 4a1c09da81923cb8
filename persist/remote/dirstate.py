"""The state log of a dir container: its lease record and its conditional rows.

A plain directory offers no compare-and-set, only create-if-absent (``link``,
``O_EXCL``).  So the mutable part of a dir container -- the lease record and
every row written by a conditional operation -- is kept as a sequence of
immutable files ``state/<serial>``, each the whole state, each created once
with ``link()``: whoever links serial ``s + 1`` first has made the transition
from state ``s``; everyone else gets ``EEXIST`` and starts over from the new
state (dirtarget.py, "Transitions").  The current state is the file with the
highest serial.

This module is the pure half: the byte format.  Layout (docs/remote.md
"Dir targets"), big-endian:

=======  ======  ==========================================================
size     field
=======  ======  ==========================================================
4        magic ``PSDS``
1        version (1)
3        reserved, zero
8        serial (>= 1), equal to the file's name
32       predecessor's digest (zero for serial 1)
4        lease record length L (0: no lease record)
L        lease record (opaque here)
4        row count n, then n rows in ascending key order, each:
1          key length k (1 .. 64)
k          key
1          0: a value follows; 1: a tombstone (the row was deleted)
4          value length v (0 for a tombstone)
v          value
16       BLAKE2b-128 (person ``persist-dirst-v1``) of everything before it
=======  ======  ==========================================================

The digest of a state file is its BLAKE2b-256 (person ``persist-dirst-id``).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ..errors import IntegrityError
from .target import MAX_CONDITIONAL_SIZE, MAX_LEASE_RECORD_SIZE, MAX_ROW_KEY_SIZE

__all__ = ["EMPTY", "MAX_STATE_SIZE", "DirState", "parse_state_name", "state_file_name"]

_MAGIC = b"PSDS"
_VERSION = 1
_HEAD = struct.Struct(">4sB3sQ32sI")
_U32 = struct.Struct(">I")
_CHECKSUM_SIZE = 16
_ZERO = bytes(32)
#: The largest state file: the conditional rows, a lease record and framing.
MAX_STATE_SIZE = MAX_CONDITIONAL_SIZE + MAX_LEASE_RECORD_SIZE + 64 * 1024
_NAME = re.compile(r"[0-9]{20}")


def state_file_name(serial: int) -> str:
    return f"{serial:020d}"


def parse_state_name(name: str) -> int:
    if not _NAME.fullmatch(name) or name == "0" * 20:
        raise IntegrityError(f"unexpected entry {name!r} in a dir container's state log")
    return int(name)


def _checksum(body: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=_CHECKSUM_SIZE, person=b"persist-dirst-v1").digest()


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=32, person=b"persist-dirst-id").digest()


@dataclass(frozen=True)
class DirState:
    """One state of a dir container's mutable part."""

    serial: int
    #: this state file's digest, and its predecessor's (zero for serial 1)
    digest: bytes
    pred: bytes
    lease: bytes | None
    #: key -> value, or None for a tombstone (a deleted conditional row)
    rows: Mapping[bytes, bytes | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rows", MappingProxyType(dict(self.rows)))

    def successor(
        self, lease: bytes | None, rows: Mapping[bytes, bytes | None]
    ) -> tuple[bytes, DirState]:
        """The bytes and the state of serial + 1 with ``lease`` and ``rows``.

        Raises ValueError when the rows exceed the conditional bound."""
        serial = self.serial + 1
        parts = [_HEAD.pack(_MAGIC, _VERSION, bytes(3), serial, self.digest, len(lease or b""))]
        parts.append(lease or b"")
        parts.append(_U32.pack(len(rows)))
        size = 0
        for key in sorted(rows):
            value = rows[key]
            size += len(key) + len(value or b"")
            parts.append(bytes([len(key)]) + key)
            if value is None:
                parts.append(b"\x01" + _U32.pack(0))
            else:
                parts.append(b"\x00" + _U32.pack(len(value)) + value)
        if size > MAX_CONDITIONAL_SIZE:
            raise ValueError(
                "the conditional rows of a dir container are bounded to "
                f"{MAX_CONDITIONAL_SIZE} bytes"
            )
        body = b"".join(parts)
        data = body + _checksum(body)
        return data, DirState(serial, _digest(data), self.digest, lease, rows)

    @classmethod
    def parse(cls, data: bytes, serial: int) -> DirState:
        """The state in ``data``, read from file ``serial``; IntegrityError if malformed."""
        bad = IntegrityError(f"state {serial} of a dir container is malformed")
        if len(data) < _HEAD.size + 4 + _CHECKSUM_SIZE or len(data) > MAX_STATE_SIZE:
            raise bad
        body, checksum = data[:-_CHECKSUM_SIZE], data[-_CHECKSUM_SIZE:]
        if not hmac.compare_digest(_checksum(body), checksum):
            raise bad
        magic, version, reserved, stored_serial, pred, lease_len = _HEAD.unpack_from(body)
        if magic != _MAGIC or version != _VERSION or reserved != bytes(3):
            raise bad
        if stored_serial != serial or (serial == 1) != (pred == _ZERO):
            raise bad
        if lease_len > MAX_LEASE_RECORD_SIZE:
            raise bad
        pos = _HEAD.size
        lease = body[pos : pos + lease_len] if lease_len else None
        pos += lease_len
        try:
            (count,) = _U32.unpack_from(body, pos)
            pos += 4
            rows: dict[bytes, bytes | None] = {}
            last = b""
            for _ in range(count):
                klen = body[pos]
                key = body[pos + 1 : pos + 1 + klen]
                pos += 1 + klen
                kind = body[pos]
                (vlen,) = _U32.unpack_from(body, pos + 1)
                pos += 5
                value = body[pos : pos + vlen]
                pos += vlen
                if not 1 <= klen <= MAX_ROW_KEY_SIZE or len(key) != klen or key <= last:
                    raise bad
                if kind not in (0, 1) or (kind == 1 and vlen) or len(value) != vlen:
                    raise bad
                rows[key] = None if kind else value
                last = key
        except (IndexError, struct.error):
            raise bad from None
        if pos != len(body) or (lease is not None and len(lease) != lease_len):
            raise bad
        return cls(serial, _digest(data), pred, lease, rows)


#: The state of a container that has no state file yet.
EMPTY = DirState(0, _ZERO, _ZERO, None, {})
