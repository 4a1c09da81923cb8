"""Key derivation: passphrases through Argon2id, subkeys through HKDF-SHA256.

The Argon2id bounds below are DESIGN §2.2's; they are checked *before*
Argon2 runs, so a tampered keyslot cannot make an open allocate 100 GiB or
spin for an hour, and a store cannot silently be created with a cheap KDF.
The weak profile exists only so test suites stay fast; a keyslot made with it
carries a flag (docs/format.md "Keyslot"), and an open accepts it only when
the caller passes ``allow_weak_kdf=True`` as well.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

from argon2.low_level import Type, hash_secret_raw
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = [
    "ARGON2_VERSION",
    "KdfParams",
    "argon2id",
    "derive_kek",
    "hkdf_sha256",
    "normalize_passphrase",
]

#: Argon2 version 0x13; recorded implicitly by the keyslot format version.
ARGON2_VERSION = 0x13
KEK_SIZE = 32

# Bounds from DESIGN §2.2 (memory in KiB, as Argon2 counts it).
MIN_TIME_COST, MAX_TIME_COST = 3, 16
MIN_MEMORY_KIB, MAX_MEMORY_KIB = 64 * 1024, 4 * 1024 * 1024
MIN_PARALLELISM, MAX_PARALLELISM = 4, 16
# The floor of the test-only profile (Argon2 itself needs 8 KiB per lane).
WEAK_MIN_TIME_COST, WEAK_MIN_MEMORY_KIB, WEAK_MIN_PARALLELISM = 1, 8 * 1024, 1


@dataclass(frozen=True, slots=True)
class KdfParams:
    """Argon2id cost parameters: passes, memory in KiB, lanes."""

    time_cost: int
    memory_kib: int
    parallelism: int

    @classmethod
    def default(cls) -> KdfParams:
        """t=3, m=256 MiB, p=4 (DESIGN §2.2)."""
        return cls(time_cost=3, memory_kib=256 * 1024, parallelism=4)

    @classmethod
    def weak_for_tests(cls) -> KdfParams:
        """t=1, m=8 MiB, p=1: accepted only together with ``allow_weak_kdf=True``."""
        return cls(
            time_cost=WEAK_MIN_TIME_COST,
            memory_kib=WEAK_MIN_MEMORY_KIB,
            parallelism=WEAK_MIN_PARALLELISM,
        )

    @property
    def is_strong(self) -> bool:
        """True when every parameter lies inside DESIGN's bounds."""
        return (
            MIN_TIME_COST <= self.time_cost <= MAX_TIME_COST
            and MIN_MEMORY_KIB <= self.memory_kib <= MAX_MEMORY_KIB
            and MIN_PARALLELISM <= self.parallelism <= MAX_PARALLELISM
        )

    @property
    def is_weak_allowed(self) -> bool:
        """True inside the test profile's wider bounds (same maxima, lower floors)."""
        return (
            WEAK_MIN_TIME_COST <= self.time_cost <= MAX_TIME_COST
            and WEAK_MIN_MEMORY_KIB <= self.memory_kib <= MAX_MEMORY_KIB
            and WEAK_MIN_PARALLELISM <= self.parallelism <= MAX_PARALLELISM
            and self.memory_kib >= 8 * self.parallelism
        )

    def refusal(self, *, allow_weak: bool) -> str | None:
        """Why these parameters are refused, or None when they are acceptable."""
        for name in ("time_cost", "memory_kib", "parallelism"):
            value = getattr(self, name)
            if type(value) is not int:
                return f"KDF {name} must be an int"
        if self.is_strong:
            return None
        if allow_weak and self.is_weak_allowed:
            return None
        if allow_weak:
            return "KDF parameters outside even the test profile's bounds"
        return (
            "KDF parameters outside t=3..16, m=64 MiB..4 GiB, p=4..16 "
            "(the test profile needs allow_weak_kdf=True)"
        )


def normalize_passphrase(passphrase: str) -> bytes:
    """NFC-normalize and UTF-8 encode, so every spelling of a text opens the store."""
    if not isinstance(passphrase, str):
        raise TypeError(f"a passphrase is a str, not {type(passphrase).__name__}")
    if not passphrase:
        raise ValueError("the passphrase is empty")
    return unicodedata.normalize("NFC", passphrase).encode("utf-8")


def argon2id(secret: bytes, salt: bytes, params: KdfParams, length: int = KEK_SIZE) -> bytes:
    """Raw Argon2id (version 0x13) through argon2-cffi's low-level API."""
    return hash_secret_raw(
        secret=secret,
        salt=salt,
        time_cost=params.time_cost,
        memory_cost=params.memory_kib,
        parallelism=params.parallelism,
        hash_len=length,
        type=Type.ID,
        version=ARGON2_VERSION,
    )


def derive_kek(passphrase: str, salt: bytes, params: KdfParams) -> bytes:
    """The key-encryption key of a passphrase keyslot.

    REQUIRES: the caller checked ``params.refusal(...)`` first.
    """
    return argon2id(normalize_passphrase(passphrase), salt, params)


def hkdf_sha256(ikm: bytes, info: bytes, *, salt: bytes | None = None, length: int = 32) -> bytes:
    """RFC 5869 HKDF with SHA-256 (extract then expand)."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)
