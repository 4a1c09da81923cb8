"""XAES-256-GCM: AES-256-GCM with 192-bit nonces (C2SP XAES-256-GCM).

Theory of operation.  The specification (c2sp.org/XAES-256-GCM) derives, for
each nonce ``N`` of 24 bytes, a fresh AES-256 key from the long-term key ``K``
with the NIST SP 800-108r1 counter-mode KDF using AES-256-CMAC as the PRF:

1. ``L = AES-256_K(0^128)`` and ``K1`` is ``L`` doubled in GF(2^128), the
   CMAC subkey (shift left one bit, xor ``0x87`` into the last byte when the
   top bit was set).
2. ``Kx = AES-256_K(M1 xor K1) || AES-256_K(M2 xor K1)`` where
   ``M1 = 00 01 'X' 00 || N[:12]`` and ``M2 = 00 02 'X' 00 || N[:12]``.
   Each message is one full block, so CMAC collapses to one encryption.
3. The ciphertext is ``AES-256-GCM(Kx, N[12:], plaintext, ad)``.

Random 192-bit nonces are safe for about 2^80 messages under one key, where
plain AES-GCM with random 96-bit nonces must stop near 2^32 (DESIGN §2.2).
Only ``cryptography``'s AES-ECB and AESGCM are used; nothing is hand-rolled
beyond the block arithmetic above.
"""

from __future__ import annotations

import threading
from typing import NoReturn

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import IntegrityError

__all__ = ["KEY_SIZE", "NONCE_SIZE", "OVERHEAD", "XAES256GCM", "xaes_decrypt", "xaes_encrypt"]

KEY_SIZE = 32
#: Nonce bytes; docs/format.md "Row envelope".
NONCE_SIZE = 24
#: The GCM tag appended to every ciphertext.
OVERHEAD = 16

_BLOCK_MASK = (1 << 128) - 1
_M1_PREFIX = b"\x00\x01X\x00"
_COUNTER_FLIP = 0x03 << 112  # byte 1 of a 16-byte block


class XAES256GCM:
    """An XAES-256-GCM key.  Thread-safe; the key never appears in ``repr``.

    ``decrypt`` raises :class:`~persist.errors.IntegrityError` with a fixed
    message on any authentication failure (no oracle detail).
    """

    __slots__ = ("_ecb", "_k1", "_lock")

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes | bytearray) or len(key) != KEY_SIZE:
            raise ValueError("an XAES-256-GCM key is 32 bytes")
        # ECB is the specification's: single blocks through the raw AES
        # permutation (the CMAC-based KDF), never a mode over a message.  One
        # long-lived context, because creating a Cipher per message costs more
        # than the AES work itself; OpenSSL contexts are not safe for
        # concurrent use, hence the lock around its (short) use.
        self._ecb = Cipher(algorithms.AES(bytes(key)), modes.ECB()).encryptor()  # noqa: S305
        self._lock = threading.Lock()
        l_block = int.from_bytes(self._ecb.update(bytes(16)), "big")
        k1 = (l_block << 1) & _BLOCK_MASK
        if l_block >> 127:
            k1 ^= 0x87
        self._k1 = k1

    def _derive(self, nonce: bytes) -> AESGCM:
        if len(nonce) != NONCE_SIZE:
            raise ValueError("an XAES-256-GCM nonce is 24 bytes")
        # M1 and M2 differ only in their counter byte (01 vs 02), so
        # M2 xor K1 = (M1 xor K1) xor (03 in that byte).
        m1 = int.from_bytes(_M1_PREFIX + nonce[:12], "big") ^ self._k1
        blocks = ((m1 << 128) | (m1 ^ _COUNTER_FLIP)).to_bytes(32, "big")
        with self._lock:
            derived = self._ecb.update(blocks)
        return AESGCM(derived)

    def encrypt(self, nonce: bytes, plaintext: bytes, associated_data: bytes | None) -> bytes:
        """Return ``ciphertext || tag`` (the nonce is not included)."""
        return self._derive(nonce).encrypt(nonce[12:], plaintext, associated_data)

    def decrypt(self, nonce: bytes, ciphertext: bytes, associated_data: bytes | None) -> bytes:
        """Return the plaintext, or raise IntegrityError if anything was altered."""
        try:
            return self._derive(nonce).decrypt(nonce[12:], ciphertext, associated_data)
        except InvalidTag:
            raise IntegrityError("ciphertext failed authentication") from None

    def __repr__(self) -> str:
        return "<XAES256GCM key=***>"

    def __reduce__(self) -> NoReturn:
        raise TypeError("key objects cannot be pickled")


def xaes_encrypt(key: bytes, nonce: bytes, plaintext: bytes, associated_data: bytes = b"") -> bytes:
    """One-shot :meth:`XAES256GCM.encrypt`."""
    return XAES256GCM(key).encrypt(nonce, plaintext, associated_data)


def xaes_decrypt(
    key: bytes, nonce: bytes, ciphertext: bytes, associated_data: bytes = b""
) -> bytes:
    """One-shot :meth:`XAES256GCM.decrypt`; raises IntegrityError on failure."""
    return XAES256GCM(key).decrypt(nonce, ciphertext, associated_data)
