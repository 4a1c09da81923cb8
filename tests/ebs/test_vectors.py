"""Known-answer vectors: XAES-256-GCM (C2SP), HKDF-SHA256 (RFC 5869), Argon2id (RFC 9106).

The Argon2id vector of RFC 9106 §5.3 uses a secret and associated data, which
``hash_secret_raw`` cannot take; it is checked through argon2-cffi's
``low_level.core`` (the same C library the KDF calls).  ``hash_secret_raw``
itself -- the function :func:`persist.ebs.kdf.argon2id` calls -- is checked
against the reference implementation's documented Argon2id vector (phc-winner-
argon2 ``src/test.c``: t=2, m=64 MiB, p=1, "password", "somesalt").
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from _argon2_cffi_bindings import ffi, lib
from argon2.low_level import Type, core, hash_secret_raw

from persist.ebs import KdfParams, xaes_decrypt, xaes_encrypt
from persist.ebs.kdf import argon2id, derive_kek, hkdf_sha256
from persist.ebs.layout import padme
from persist.ebs.xaes import XAES256GCM
from persist.errors import IntegrityError

C2SP_NONCE = b"ABCDEFGHIJKLMNOPQRSTUVWX"


def test_xaes_c2sp_vector_without_ad() -> None:
    ct = xaes_encrypt(b"\x01" * 32, C2SP_NONCE, b"XAES-256-GCM")
    assert ct.hex() == "ce546ef63c9cc60765923609b33a9a1974e96e52daf2fcf7075e2271"
    assert xaes_decrypt(b"\x01" * 32, C2SP_NONCE, ct) == b"XAES-256-GCM"


def test_xaes_c2sp_vector_with_ad() -> None:
    ad = b"c2sp.org/XAES-256-GCM"
    ct = xaes_encrypt(b"\x03" * 32, C2SP_NONCE, b"XAES-256-GCM", ad)
    assert ct.hex() == "986ec1832593df5443a179437fd083bf3fdb41abd740a21f71eb769d"
    assert xaes_decrypt(b"\x03" * 32, C2SP_NONCE, ct, ad) == b"XAES-256-GCM"


def test_xaes_c2sp_accumulated_10000() -> None:
    """C2SP's accumulated vector: inputs from a SHAKE128 stream, outputs into another."""
    stream = hashlib.shake_128(b"").digest(10_000 * 600)
    pos = 0

    def read(n: int) -> bytes:
        nonlocal pos
        pos += n
        return stream[pos - n : pos]

    out = hashlib.shake_128()
    for _ in range(10_000):
        key, nonce = read(32), read(24)
        plaintext = read(read(1)[0])
        ad = read(read(1)[0])
        cipher = XAES256GCM(key)
        ct = cipher.encrypt(nonce, plaintext, ad)
        assert cipher.decrypt(nonce, ct, ad) == plaintext
        out.update(ct)
    expected = "e6b9edf2df6cec60c8cbd864e2211b597fb69a529160cd040d56c0c210081939"
    assert out.hexdigest(32) == expected


@pytest.mark.parametrize("where", ["ciphertext", "tag", "nonce", "ad"])
def test_xaes_rejects_any_change(where: str) -> None:
    key, ad = b"\x07" * 32, b"context"
    ct = xaes_encrypt(key, C2SP_NONCE, b"attack at dawn", ad)
    nonce = C2SP_NONCE
    if where == "ciphertext":
        ct = bytes([ct[0] ^ 1]) + ct[1:]
    elif where == "tag":
        ct = ct[:-1] + bytes([ct[-1] ^ 0x80])
    elif where == "nonce":
        nonce = C2SP_NONCE[:-1] + b"Y"
    else:
        ad = b"contexu"
    with pytest.raises(IntegrityError) as info:
        xaes_decrypt(key, nonce, ct, ad)
    assert str(info.value) == "ciphertext failed authentication"


def test_xaes_checks_sizes_and_hides_key() -> None:
    with pytest.raises(ValueError):
        XAES256GCM(b"short")
    cipher = XAES256GCM(b"\x5a" * 32)
    with pytest.raises(ValueError):
        cipher.encrypt(b"12 bytes....", b"x", None)
    assert "5a5a" not in repr(cipher) and "ZZZZ" not in repr(cipher)


def test_hkdf_rfc5869_case_1() -> None:
    okm = hkdf_sha256(
        b"\x0b" * 22, bytes.fromhex("f0f1f2f3f4f5f6f7f8f9"), salt=bytes(range(13)), length=42
    )
    assert okm.hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )


def test_hkdf_rfc5869_case_3_no_salt_no_info() -> None:
    okm = hkdf_sha256(b"\x0b" * 22, b"", length=42)
    assert okm.hex() == (
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"
    )


def _argon2id_with_secret(
    pwd: bytes, salt: bytes, secret: bytes, ad: bytes, t: int, m: int, p: int, n: int
) -> bytes:
    def buf(data: bytes) -> Any:
        return ffi.new("uint8_t[]", list(data))

    out = ffi.new("uint8_t[]", n)
    keep = [buf(pwd), buf(salt), buf(secret), buf(ad)]
    ctx = ffi.new(
        "argon2_context *",
        {
            "out": out, "outlen": n,
            "pwd": keep[0], "pwdlen": len(pwd),
            "salt": keep[1], "saltlen": len(salt),
            "secret": keep[2], "secretlen": len(secret),
            "ad": keep[3], "adlen": len(ad),
            "t_cost": t, "m_cost": m, "lanes": p, "threads": p,
            "version": 0x13,
            "allocate_cbk": ffi.NULL, "free_cbk": ffi.NULL,
            "flags": lib.ARGON2_DEFAULT_FLAGS,
        },
    )  # fmt: skip
    assert core(ctx, Type.ID.value) == lib.ARGON2_OK
    return bytes(ffi.buffer(out, n))


def test_argon2id_rfc9106_vector() -> None:
    tag = _argon2id_with_secret(
        b"\x01" * 32, b"\x02" * 16, b"\x03" * 8, b"\x04" * 12, t=3, m=32, p=4, n=32
    )
    assert tag.hex() == "0d640df58d78766c08c037a34a8b53c9d01ef0452d75b65eb52520e96b01e659"


def test_argon2id_reference_vector_through_our_kdf() -> None:
    params = KdfParams(time_cost=2, memory_kib=65536, parallelism=1)
    expected = "09316115d5cf24ed5a15a31a3ba326e5cf32edc24702987c02b6566f61913cf7"
    assert argon2id(b"password", b"somesalt", params).hex() == expected
    # derive_kek is that function over the NFC UTF-8 passphrase
    assert derive_kek("password", b"somesalt", params).hex() == expected
    raw = hash_secret_raw(b"password", b"somesalt", 2, 65536, 1, 32, Type.ID)
    assert raw.hex() == expected


@pytest.mark.parametrize(
    ("n", "padded"),
    [(0, 0), (1, 1), (9, 10), (100, 104), (104, 104), (105, 112), (1000, 1024), (4096, 4096),
     (4097, 4352), (65536, 65536), (65537, 67584)],
)  # fmt: skip
def test_padme_known_values(n: int, padded: int) -> None:
    assert padme(n) == padded
    assert padded >= n and (n == 0 or (padded - n) / n <= 0.12)
