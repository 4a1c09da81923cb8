"""KDF bounds, the weak test profile's flag, and passphrase normalization."""

from __future__ import annotations

import hashlib
import unicodedata

import pytest

import persist.ebs.kdf as kdf_module
from persist.ebs import EncryptedStore, KdfParams
from persist.ebs.keyslot import keyslot_key, parse_keyslot
from persist.errors import IntegrityError, WrongPassphrase
from persist.kvs.base import Store

from .conftest import PASSPHRASE, WEAK, create, reopen, snapshot


def _no_argon2(*args: object, **kwargs: object) -> bytes:
    raise AssertionError("Argon2 ran although the parameters are out of bounds")


@pytest.mark.parametrize(
    "params",
    [
        KdfParams(2, 256 * 1024, 4),  # t below 3
        KdfParams(17, 256 * 1024, 4),  # t above 16
        KdfParams(3, 64 * 1024 - 1, 4),  # m below 64 MiB
        KdfParams(3, 4 * 1024 * 1024 + 1, 4),  # m above 4 GiB
        KdfParams(3, 256 * 1024, 3),  # p below 4
        KdfParams(3, 256 * 1024, 17),  # p above 16
    ],
)
def test_out_of_bounds_parameters_are_refused_before_argon2(
    mem: Store, params: KdfParams, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kdf_module, "hash_secret_raw", _no_argon2)
    with pytest.raises(ValueError, match="KDF parameters"):
        EncryptedStore.create(mem, PASSPHRASE, kdf=params, freshness=False)
    assert snapshot(mem) == {}


def test_bounds_are_inclusive() -> None:
    assert KdfParams(3, 64 * 1024, 4).is_strong
    assert KdfParams(16, 4 * 1024 * 1024, 16).is_strong
    assert KdfParams.default() == KdfParams(3, 256 * 1024, 4)
    assert KdfParams.default().is_strong and not WEAK.is_strong


def test_weak_profile_needs_the_flag_to_create(mem: Store) -> None:
    with pytest.raises(ValueError, match="allow_weak_kdf"):
        EncryptedStore.create(mem, PASSPHRASE, kdf=WEAK, freshness=False)
    assert snapshot(mem) == {}


def test_even_the_weak_profile_has_a_floor(mem: Store) -> None:
    with pytest.raises(ValueError):
        create(mem, kdf=KdfParams(1, 1024, 1))


def test_weak_keyslot_is_flagged_and_refused_without_the_flag(
    mem: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    create(mem)
    info = parse_keyslot(0, mem.get(keyslot_key(0)) or b"").info
    assert info.weak_kdf and info.kdf == WEAK
    monkeypatch.setattr(kdf_module, "hash_secret_raw", _no_argon2)
    with pytest.raises(IntegrityError, match="allow_weak_kdf"):
        EncryptedStore.open(mem, PASSPHRASE, freshness=False)


def test_a_strong_keyslot_has_no_weak_flag(mem: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    # The flag logic is under test, not Argon2: a stand-in keeps the suite fast.
    def fake_argon2(secret: bytes, salt: bytes, **params: object) -> bytes:
        return hashlib.sha256(secret + salt + repr(sorted(params.items())).encode()).digest()

    monkeypatch.setattr(kdf_module, "hash_secret_raw", fake_argon2)
    cheapest = KdfParams(3, 64 * 1024, 4)
    ebs = EncryptedStore.create(mem, PASSPHRASE, kdf=cheapest, freshness=False)
    (info,) = ebs.keyslots()
    assert info.kdf == cheapest and not info.weak_kdf
    assert EncryptedStore.open(mem, PASSPHRASE, freshness=False).root.count == 0
    with pytest.raises(WrongPassphrase):
        EncryptedStore.open(mem, PASSPHRASE + "!", freshness=False)


def test_nfc_and_nfd_spellings_open_the_same_store(mem: Store) -> None:
    nfc = unicodedata.normalize("NFC", "Ångström café ﬁ naïve")
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfc != nfd and nfc.encode() != nfd.encode()
    created = create(mem, nfd)
    assert reopen(mem, nfc).root.db_id == created.root.db_id
    assert reopen(mem, nfd).root.db_id == created.root.db_id


def test_passphrase_type_and_emptiness_are_checked(mem: Store) -> None:
    with pytest.raises(TypeError):
        create(mem, b"bytes")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        create(mem, "")
    with pytest.raises(ValueError):
        EncryptedStore.create(mem, PASSPHRASE, key=b"k" * 32, freshness=False)
    with pytest.raises(ValueError):
        EncryptedStore.create(mem, freshness=False)
