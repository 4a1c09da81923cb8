"""The lease record: who holds a container's lease, in a strict, versioned byte format.

The record is not secret and not encrypted: the host may read it, and it can
write anything it likes there anyway (docs/remote.md, "What the host learns").
What the format guarantees is that damage is noticed (an unkeyed checksum,
like the keyslot's) and that nothing malformed is ever acted on: every field
is checked, and :meth:`LeaseRecord.parse` raises
:class:`~persist.errors.IntegrityError` for anything else.

Layout (docs/remote.md "Lease protocol"), big-endian:

======  ====  ==============================================================
offset  size  field
======  ====  ==============================================================
0       4     magic ``PSLS``
4       1     version (1)
5       1     state: 1 held, 2 released
6       2     reserved, zero
8       8     generation: 1 for the first acquisition, +1 for each later one
16      8     serial: +1 for every change (acquire, renew, release)
24      4     lease time in milliseconds (1 .. 86,400,000)
28      8     written at: the writer's wall clock, ms since the Unix epoch
36      8     expires at: written at + lease time when held, written at when
              released (informative only: no reader trusts another's clock)
44      16    acquisition nonce: random, drawn once per acquisition
60      1     holder id length n (1 .. 255)
61      n     holder id: printable ASCII without spaces (0x21 .. 0x7e)
61+n    16    BLAKE2b-128 (person ``persist-lease-v1``) of the bytes before it
======  ====  ==============================================================
"""

from __future__ import annotations

import hashlib
import hmac
import re
import struct
from dataclasses import dataclass, replace
from typing import Any

from ..errors import IntegrityError

__all__ = ["MAX_LEASE_MS", "LeaseRecord", "check_holder", "lease_is_held"]

MAGIC = b"PSLS"
VERSION = 1
HELD, RELEASED = 1, 2
#: The longest lease time a record may carry: one day.
MAX_LEASE_MS = 86_400_000
NONCE_SIZE = 16
_FIXED = struct.Struct(">4sBBHQQIQQ16sB")
_CHECKSUM_SIZE = 16
_PERSON = b"persist-lease-v1"
_U64 = (1 << 64) - 1
_HOLDER = re.compile(r"[\x21-\x7e]{1,255}")


def check_holder(holder: object) -> str:
    """Return ``holder`` if it is a valid holder id, else raise TypeError/ValueError."""
    if not isinstance(holder, str):
        raise TypeError(f"a holder id is a str, not {type(holder).__name__}")
    if not _HOLDER.fullmatch(holder):
        raise ValueError("a holder id is 1 to 255 printable ASCII characters without spaces")
    return holder


def lease_is_held(stored: bytes | None) -> bool:
    """Whether a stored lease record says "held" (IntegrityError if malformed)."""
    return stored is not None and LeaseRecord.parse(stored).held


def _checksum(body: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=_CHECKSUM_SIZE, person=_PERSON).digest()


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """One state of a container's lease.  ``encode``/``parse`` are inverses."""

    holder: str
    generation: int
    serial: int
    held: bool
    lease_ms: int
    written_ms: int
    expires_ms: int
    nonce: bytes

    def __post_init__(self) -> None:
        check_holder(self.holder)
        if not 1 <= self.generation <= self.serial <= _U64:
            raise ValueError("need 1 <= generation <= serial < 2**64")
        if not 1 <= self.lease_ms <= MAX_LEASE_MS:
            raise ValueError(f"a lease time is 1 ms to {MAX_LEASE_MS} ms")
        if len(self.nonce) != NONCE_SIZE:
            raise ValueError(f"the acquisition nonce is {NONCE_SIZE} bytes")
        want = self.written_ms + self.lease_ms if self.held else self.written_ms
        if not 0 <= self.written_ms <= _U64 or self.expires_ms != want or want > _U64:
            raise ValueError("expires_ms must be written_ms (+ lease_ms when held)")

    # -- transitions (each bumps the serial) -----------------------------------------

    @classmethod
    def first(
        cls, previous: LeaseRecord | None, holder: str, lease_ms: int, now_ms: int, nonce: bytes
    ) -> LeaseRecord:
        """The record of a new acquisition after ``previous`` (``None``: no record)."""
        generation = 1 if previous is None else previous.generation + 1
        serial = 1 if previous is None else previous.serial + 1
        return cls(holder, generation, serial, True, lease_ms, now_ms, now_ms + lease_ms, nonce)

    def renewed(self, lease_ms: int, now_ms: int) -> LeaseRecord:
        return replace(
            self,
            serial=self.serial + 1,
            held=True,
            lease_ms=lease_ms,
            written_ms=now_ms,
            expires_ms=now_ms + lease_ms,
        )

    def released(self, now_ms: int) -> LeaseRecord:
        return replace(
            self, serial=self.serial + 1, held=False, written_ms=now_ms, expires_ms=now_ms
        )

    def same_acquisition(self, other: LeaseRecord) -> bool:
        """Whether both records belong to one acquisition (one holder's tenure)."""
        return (
            self.holder == other.holder
            and self.generation == other.generation
            and hmac.compare_digest(self.nonce, other.nonce)
        )

    @property
    def lease_time(self) -> float:
        """The lease time in seconds."""
        return self.lease_ms / 1000

    # -- bytes ----------------------------------------------------------------------

    def encode(self) -> bytes:
        holder = self.holder.encode("ascii")
        body = _FIXED.pack(
            MAGIC,
            VERSION,
            HELD if self.held else RELEASED,
            0,
            self.generation,
            self.serial,
            self.lease_ms,
            self.written_ms,
            self.expires_ms,
            self.nonce,
            len(holder),
        )
        body += holder
        return body + _checksum(body)

    @classmethod
    def parse(cls, data: bytes) -> LeaseRecord:
        """The record in ``data``; IntegrityError for anything but a well-formed record."""
        bad = IntegrityError("the lease record is malformed")
        if len(data) < _FIXED.size + 1 + _CHECKSUM_SIZE:
            raise bad
        body, checksum = data[:-_CHECKSUM_SIZE], data[-_CHECKSUM_SIZE:]
        if not hmac.compare_digest(_checksum(body), checksum):
            raise bad
        magic, version, state, reserved, gen, serial, lease_ms, written, expires, nonce, n = (
            _FIXED.unpack_from(body)
        )
        if magic != MAGIC:
            raise bad
        if version != VERSION:
            raise IntegrityError(f"the lease record has version {version}; this persist reads 1")
        if state not in (HELD, RELEASED) or reserved or len(body) != _FIXED.size + n:
            raise bad
        try:
            holder = body[_FIXED.size :].decode("ascii")
            return cls(holder, gen, serial, state == HELD, lease_ms, written, expires, nonce)
        except (UnicodeDecodeError, ValueError):
            raise bad from None

    def describe(self) -> dict[str, Any]:
        """The record as plain data (for ``persist lease show --json``)."""
        return {
            "holder": self.holder,
            "state": "held" if self.held else "released",
            "generation": self.generation,
            "serial": self.serial,
            "lease_seconds": self.lease_time,
            "written_at_unix_ms": self.written_ms,
            "expires_at_unix_ms": self.expires_ms,
        }
