"""Keyslots: the master key wrapped under a passphrase or a raw key.

Theory of operation (docs/format.md "Keyslot").

1. A keyslot row is stored in the clear at a fixed address; its fields are a
   header (magic, version, slot index, kind, flags, Argon2 parameters, salt),
   a commitment, and the master key wrapped with XAES-256-GCM.
2. The key-encryption key (KEK) is Argon2id(passphrase) for a passphrase slot
   and HKDF(raw key) for a raw-key slot.  Two keys derive from the KEK: one
   computes the commitment (a keyed BLAKE2b of the header), one wraps.
3. Opening recomputes the commitment first.  A mismatch means the key material
   is wrong -- or the header was altered, which cannot be told apart and need
   not be: either way the slot does not open and no decryption was tried.
   :class:`~persist.errors.WrongPassphrase` is raised.
4. Only a matching commitment leads to unwrapping; a failure then means the
   wrapped key itself was damaged (IntegrityError).
5. The header is the AEAD's associated data as well, and the slot index is in
   it, so a slot moved to another index or another store does not open here.
6. An unkeyed checksum closes the row.  It stops nobody deliberate, but it
   makes a damaged disk block read as "damaged" (IntegrityError) rather than
   as a wrong passphrase.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

from ..errors import IntegrityError, WrongPassphrase
from .kdf import KdfParams, derive_kek, hkdf_sha256
from .keys import MASTER_KEY_SIZE
from .layout import (
    NO_TABLE,
    RandomSource,
    RowKind,
    associated_data,
    keyed_hash,
)
from .xaes import NONCE_SIZE, OVERHEAD, XAES256GCM

__all__ = [
    "MAX_KEYSLOTS",
    "Credential",
    "KeySlotInfo",
    "keyslot_key",
    "load_key",
    "make_keyslot",
    "parse_keyslot",
    "read_keyslots",
    "unwrap_any",
]

#: Slot indices run 0..MAX_KEYSLOTS-1 (docs/format.md "Keyslot").
MAX_KEYSLOTS = 8
#: The keyslot layout's own version: unchanged by store format v2.
KEYSLOT_VERSION = 1
RAW_KEY_SIZE = 32
SALT_SIZE = 16
KIND_PASSPHRASE, KIND_RAW_KEY = 1, 2
FLAG_WEAK_KDF = 0x01
_MAGIC = b"PSKS"
_HEADER = struct.Struct(">4sBBBBIII16s")
_CHECKSUM_SIZE = 16
_BODY_SIZE = _HEADER.size + 32 + NONCE_SIZE + MASTER_KEY_SIZE + OVERHEAD
_ROW_SIZE = _BODY_SIZE + _CHECKSUM_SIZE
_SLOT_PERSON = b"persist-keyslot1"
_CHECKSUM_PERSON = b"persist-ks-sum-1"


def keyslot_key(index: int) -> bytes:
    """The fixed storage key of slot ``index`` (it must be findable without a key)."""
    return hashlib.blake2b(bytes([index]), digest_size=32, person=_SLOT_PERSON).digest()


def read_keyslots(get: Callable[[bytes], bytes | None]) -> dict[int, bytes]:
    """The stored rows of every keyslot in use, by index (read with a store's or
    a snapshot's ``get``)."""
    slots = {}
    for index in range(MAX_KEYSLOTS):
        stored = get(keyslot_key(index))
        if stored is not None:
            slots[index] = stored
    return slots


class Credential:
    """A passphrase or a raw key, held without ever showing it."""

    __slots__ = ("_secret", "kind")

    _secret: str | bytes

    def __init__(self, passphrase: str | None, key: bytes | str | os.PathLike[str] | None) -> None:
        if (passphrase is None) == (key is None):
            raise ValueError("give exactly one of a passphrase or a key")
        if passphrase is not None:
            if not isinstance(passphrase, str):
                raise TypeError(f"a passphrase is a str, not {type(passphrase).__name__}")
            if not passphrase:
                raise ValueError("the passphrase is empty")
            self.kind, self._secret = KIND_PASSPHRASE, passphrase
        else:
            assert key is not None
            self.kind, self._secret = KIND_RAW_KEY, load_key(key)

    def kek(self, salt: bytes, params: KdfParams) -> bytes:
        """The key-encryption key.  REQUIRES: params passed the policy check."""
        if isinstance(self._secret, str):
            return derive_kek(self._secret, salt, params)
        return hkdf_sha256(self._secret, b"persist/v1/raw-key-kek", salt=salt)

    def __repr__(self) -> str:
        return f"<Credential {'passphrase' if self.kind == KIND_PASSPHRASE else 'key'}=***>"

    def __reduce__(self) -> NoReturn:
        raise TypeError("credentials cannot be pickled")


def load_key(key: bytes | str | os.PathLike[str]) -> bytes:
    """A raw key: 32 bytes, or a key file holding 32 raw bytes or 64 hex digits."""
    if isinstance(key, bytes):
        if len(key) != RAW_KEY_SIZE:
            raise ValueError("a raw key is 32 bytes")
        return key
    if not isinstance(key, str | os.PathLike):
        raise TypeError(f"a key is bytes or a key-file path, not {type(key).__name__}")
    with open(key, "rb") as f:
        data = f.read(4096)
    if len(data) == RAW_KEY_SIZE:
        return data
    text = data.strip()
    if len(text) == 2 * RAW_KEY_SIZE:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    raise ValueError("a key file holds 32 raw bytes or 64 hexadecimal digits")


@dataclass(frozen=True, slots=True)
class KeySlotInfo:
    """What a keyslot says about itself (nothing secret)."""

    index: int
    kind: str  # "passphrase" or "key"
    kdf: KdfParams | None
    weak_kdf: bool


@dataclass(frozen=True, slots=True)
class _Parsed:
    info: KeySlotInfo
    header: bytes
    salt: bytes
    commitment: bytes
    nonce: bytes
    wrapped: bytes


def _subkeys(kek: bytes) -> tuple[bytes, bytes]:
    return (
        hkdf_sha256(kek, b"persist/v1/keyslot-commit"),
        hkdf_sha256(kek, b"persist/v1/keyslot-wrap"),
    )


def _wrap_ad(index: int, header: bytes, commitment: bytes) -> bytes:
    return associated_data(RowKind.KEYSLOT, NO_TABLE, keyslot_key(index)) + header + commitment


def make_keyslot(
    index: int,
    master: bytes,
    credential: Credential,
    kdf: KdfParams,
    *,
    allow_weak: bool,
    random: RandomSource,
) -> bytes:
    """Build the row of slot ``index`` wrapping ``master`` under ``credential``."""
    if not 0 <= index < MAX_KEYSLOTS:
        raise ValueError(f"keyslot index must be in 0..{MAX_KEYSLOTS - 1}")
    if credential.kind == KIND_PASSPHRASE:
        reason = kdf.refusal(allow_weak=allow_weak)
        if reason is not None:
            raise ValueError(reason)
        flags = 0 if kdf.is_strong else FLAG_WEAK_KDF
        params = (kdf.time_cost, kdf.memory_kib, kdf.parallelism)
    else:
        flags, params = 0, (0, 0, 0)
    salt = random(SALT_SIZE)
    header = _HEADER.pack(_MAGIC, KEYSLOT_VERSION, index, credential.kind, flags, *params, salt)
    commit_key, wrap_key = _subkeys(credential.kek(salt, KdfParams(*params)))
    commitment = keyed_hash(commit_key, header)
    nonce = random(NONCE_SIZE)
    wrapped = XAES256GCM(wrap_key).encrypt(nonce, master, _wrap_ad(index, header, commitment))
    body = header + commitment + nonce + wrapped
    return body + _checksum(body)


def _checksum(body: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=_CHECKSUM_SIZE, person=_CHECKSUM_PERSON).digest()


def parse_keyslot(index: int, stored: bytes) -> _Parsed:
    """Check a keyslot's structure (no key needed); IntegrityError if malformed."""
    damaged = IntegrityError(f"keyslot {index} is malformed")
    if len(stored) != _ROW_SIZE or not hmac.compare_digest(
        _checksum(stored[:_BODY_SIZE]), stored[_BODY_SIZE:]
    ):
        raise damaged
    magic, version, slot, kind, flags, t, m, p, salt = _HEADER.unpack_from(stored)
    if magic != _MAGIC or version != KEYSLOT_VERSION or slot != index:
        raise damaged
    if kind == KIND_PASSPHRASE:
        if flags & ~FLAG_WEAK_KDF:
            raise damaged
        info = KeySlotInfo(index, "passphrase", KdfParams(t, m, p), bool(flags & FLAG_WEAK_KDF))
    elif kind == KIND_RAW_KEY:
        if flags or t or m or p:
            raise damaged
        info = KeySlotInfo(index, "key", None, False)
    else:
        raise damaged
    pos = _HEADER.size
    return _Parsed(
        info,
        stored[:pos],
        salt,
        stored[pos : pos + 32],
        stored[pos + 32 : pos + 32 + NONCE_SIZE],
        stored[pos + 32 + NONCE_SIZE : _BODY_SIZE],
    )


def _policy_refusal(info: KeySlotInfo, allow_weak: bool) -> str | None:
    if info.kdf is None:
        return None
    if info.kdf.is_strong:
        return None
    if not info.weak_kdf:
        return f"keyslot {info.index}: KDF parameters out of bounds"
    if not allow_weak:
        return f"keyslot {info.index} uses the weak test KDF; pass allow_weak_kdf=True"
    reason = info.kdf.refusal(allow_weak=True)
    return None if reason is None else f"keyslot {info.index}: {reason}"


def unwrap_any(
    slots: dict[int, bytes], credential: Credential, *, allow_weak: bool
) -> tuple[int, bytes]:
    """Open the first slot ``credential`` opens: ``(index, master key)``.

    Raises WrongPassphrase when no slot of the credential's kind opens, and
    IntegrityError when every such slot was malformed or refused by the KDF
    policy (so nothing could be tried) or a committed slot fails to unwrap.
    """
    refusals: list[str] = []
    tried = False
    for index in sorted(slots):
        try:
            parsed = parse_keyslot(index, slots[index])
        except IntegrityError as exc:
            refusals.append(str(exc))
            continue
        kind = KIND_PASSPHRASE if parsed.info.kind == "passphrase" else KIND_RAW_KEY
        if kind != credential.kind:
            continue
        reason = _policy_refusal(parsed.info, allow_weak)
        if reason is not None:
            refusals.append(reason)
            continue
        tried = True
        params = parsed.info.kdf or KdfParams(0, 0, 0)
        commit_key, wrap_key = _subkeys(credential.kek(parsed.salt, params))
        if not hmac.compare_digest(keyed_hash(commit_key, parsed.header), parsed.commitment):
            continue
        ad = _wrap_ad(index, parsed.header, parsed.commitment)
        try:
            master = XAES256GCM(wrap_key).decrypt(parsed.nonce, parsed.wrapped, ad)
        except IntegrityError:
            raise IntegrityError(f"keyslot {index} failed authentication") from None
        return index, master
    if not tried and refusals:
        raise IntegrityError("; ".join(refusals))
    raise WrongPassphrase("the passphrase or key opens no keyslot of this store")
