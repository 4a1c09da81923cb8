"""The rekey journal: what an unfinished master-key rotation needs to go on.

Byte layout in docs/format.md "Rekey journal".  The journal lives at the
journal address of the key ring it is encrypted under (JOURNAL kind) and
exists only while a rotation is unfinished.

* **Copy phase** (format 2), sealed under the **old** key: the new key epoch
  and the prepared new keyslot rows, nothing else.  The new master key is
  not in it: whoever holds the old master key or passphrase (and so can read
  this journal, now or from any copy of the store) learns only a keyslot
  wrapped under the *new* credential.  Resuming therefore asks for the new
  credential, which unwraps the new master key from that keyslot.
* **Cleanup phase**, sealed under the **new** key: the old master key, so
  that rows still under it can be recognised and deleted.  Old key material
  under the new key reveals nothing new to anyone.
* Format 1 journals (written before format v2) held the new master key in the
  copy phase, under the old key: they are still read, so that an interrupted
  old rotation can finish, and never written.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import NoReturn

from ..errors import IntegrityError
from .keys import MASTER_KEY_SIZE, KeyRing
from .layout import NO_TABLE, RandomSource, RowKind, padded_size
from .rows import Getter, auth_error, open_envelope, seal_envelope

__all__ = ["PHASE_CLEANUP", "PHASE_COPY", "Journal", "detect_phase", "read_journal", "seal_journal"]

PHASE_COPY, PHASE_CLEANUP = 1, 2
PHASES = {PHASE_COPY: "copy", PHASE_CLEANUP: "cleanup"}
_MAGIC = b"PSRK"
_VERSION = 2
# docs/format.md "Rekey journal".
_HEAD = struct.Struct(">4sBBHI")
_V1 = struct.Struct(">4sBBH32sIB")
_SLOT = struct.Struct(">BH")


@dataclass(frozen=True, slots=True)
class Journal:
    """One journal.  ``master``: the old master key (cleanup phase) or, in a
    format-1 copy-phase journal only, the new one; None otherwise."""

    phase: int
    new_epoch: int
    slots: dict[int, bytes] = field(default_factory=dict)
    master: bytes | None = field(default=None, repr=False)
    version: int = _VERSION

    def encode(self) -> bytes:
        """The padded plaintext (format 2 only)."""
        if self.version != _VERSION:
            raise ValueError("only format-2 journals are written")
        parts = [_HEAD.pack(_MAGIC, _VERSION, self.phase, 0, self.new_epoch)]
        if self.phase == PHASE_COPY:
            if self.master is not None:
                raise ValueError("a copy-phase journal never holds a master key")
            parts.append(bytes([len(self.slots)]))
            for index, row in sorted(self.slots.items()):
                parts += [_SLOT.pack(index, len(row)), row]
        else:
            if self.master is None or len(self.master) != MASTER_KEY_SIZE:
                raise ValueError("a cleanup journal holds the old master key")
            parts.append(self.master)
        body = b"".join(parts)
        return body + bytes(padded_size(len(body)) - len(body))

    @classmethod
    def decode(cls, plain: bytes) -> Journal:
        """Parse an authenticated plaintext; ValueError (or struct.error) if malformed."""
        if plain[4:5] == b"\x01":
            return cls._decode_v1(plain)
        magic, version, phase, reserved, epoch = _HEAD.unpack_from(plain)
        if magic != _MAGIC or version != _VERSION or phase not in PHASES or reserved:
            raise ValueError("bad journal")
        pos = _HEAD.size
        if phase == PHASE_CLEANUP:
            master = plain[pos : pos + MASTER_KEY_SIZE]
            end = pos + MASTER_KEY_SIZE
            if len(master) != MASTER_KEY_SIZE:
                raise ValueError("truncated journal")
            journal = cls(phase, epoch, {}, master)
        else:
            (n,) = plain[pos : pos + 1]
            pos += 1
            slots = {}
            for _ in range(n):
                index, size = _SLOT.unpack_from(plain, pos)
                slots[index] = plain[pos + _SLOT.size : pos + _SLOT.size + size]
                pos += _SLOT.size + size
            if pos > len(plain) or not slots:
                raise ValueError("truncated journal")
            end, journal = pos, cls(phase, epoch, slots)
        if len(plain) != padded_size(end) or any(plain[end:]):
            raise ValueError("bad journal padding")
        return journal

    @classmethod
    def _decode_v1(cls, plain: bytes) -> Journal:
        magic, version, phase, _r, other, epoch, n = _V1.unpack_from(plain)
        if magic != _MAGIC or version != 1 or phase not in PHASES:
            raise ValueError("bad journal")
        pos, slots = _V1.size, {}
        for _ in range(n):
            index, size = _SLOT.unpack_from(plain, pos)
            slots[index] = plain[pos + _SLOT.size : pos + _SLOT.size + size]
            pos += _SLOT.size + size
        return cls(phase, epoch, slots, other, version=1)

    def __repr__(self) -> str:
        phase = PHASES.get(self.phase)
        return f"Journal(phase={phase!r}, new_epoch={self.new_epoch}, v{self.version})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("a rekey journal cannot be pickled")


def seal_journal(ring: KeyRing, journal: Journal, random: RandomSource) -> tuple[bytes, bytes]:
    """``(storage key, row)`` of ``journal`` under ``ring``."""
    key = ring.journal_key()
    row = seal_envelope(
        ring.journal_cipher, RowKind.JOURNAL, NO_TABLE, key, journal.encode(), random
    )
    return key, row


def read_journal(get: Getter, ring: KeyRing) -> Journal | None:
    """The journal under ``ring``, None when there is none; IntegrityError if damaged."""
    key = ring.journal_key()
    stored = get(key)
    if stored is None:
        return None
    plain = open_envelope(ring.journal_cipher, RowKind.JOURNAL, NO_TABLE, key, stored)
    try:
        return Journal.decode(plain)
    except (ValueError, struct.error, IndexError):
        raise auth_error(RowKind.JOURNAL, key) from None


def detect_phase(get: Getter, ring: KeyRing) -> str | None:
    """ "copy", "cleanup" or None; a damaged journal counts as none (verify reports it)."""
    try:
        journal = read_journal(get, ring)
    except IntegrityError:
        return None
    return None if journal is None else PHASES[journal.phase]
