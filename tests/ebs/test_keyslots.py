"""Keyslots: wrong passphrase, passphrase change, extra slots, raw keys, tampering."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import persist.ebs.kdf as kdf_module
from persist.ebs import EncryptedStore, KdfParams
from persist.ebs.keyslot import keyslot_key
from persist.ebs.xaes import XAES256GCM
from persist.errors import IntegrityError, StoreExists, StoreNotFound, WrongPassphrase
from persist.kvs.base import Store
from persist.kvs.memory import MemoryStore

from .conftest import PASSPHRASE, WEAK, create, reopen, restore, snapshot


def _fill(ebs: EncryptedStore) -> None:
    table = ebs.table(b"tree:t")
    batch = ebs.batch()
    batch.put_row(table, b"k", b"v")
    ebs.commit(batch, {})


def test_wrong_passphrase_changes_nothing_and_decrypts_nothing(
    kvs: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fill(create(kvs))
    before = snapshot(kvs)
    calls: list[int] = []
    original = XAES256GCM.decrypt

    def counting(self: XAES256GCM, *args: bytes) -> bytes:
        calls.append(1)
        return original(self, *args)

    monkeypatch.setattr(XAES256GCM, "decrypt", counting)
    with pytest.raises(WrongPassphrase):
        reopen(kvs, "not the passphrase")
    assert calls == [], "the key commitment must reject before any decryption"
    assert snapshot(kvs) == before
    reopen(kvs)
    assert calls, "a right passphrase does decrypt (the probe works)"


def test_change_passphrase_rewrites_one_keyslot_only(kvs: Store) -> None:
    ebs = create(kvs)
    _fill(ebs)
    before = snapshot(kvs)
    assert ebs.change_passphrase(PASSPHRASE, "new passphrase", kdf=WEAK, allow_weak_kdf=True) == 0
    after = snapshot(kvs)
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert changed == {keyslot_key(0)}
    with pytest.raises(WrongPassphrase):
        reopen(kvs, PASSPHRASE)
    assert reopen(kvs, "new passphrase").table(b"tree:t").read_row(b"k") == b"v"


def test_change_passphrase_needs_the_old_one(mem: Store) -> None:
    ebs = create(mem)
    with pytest.raises(WrongPassphrase):
        ebs.change_passphrase("guess", "new", kdf=WEAK, allow_weak_kdf=True)
    reopen(mem, PASSPHRASE)


def test_recovery_key_opens_and_can_replace_a_forgotten_passphrase(
    mem: Store, tmp_path: Path
) -> None:
    ebs = create(mem)
    recovery = EncryptedStore.generate_key()
    assert ebs.add_keyslot(key=recovery) == 1
    _fill(ebs)
    by_key = reopen(mem, None, key=recovery)
    assert by_key.table(b"tree:t").read_row(b"k") == b"v"
    by_key.change_passphrase(recovery, new_passphrase="remembered", kdf=WEAK, allow_weak_kdf=True)
    # the slot the recovery key opened (1) now holds the new passphrase
    kinds = {i.index: i.kind for i in by_key.keyslots()}
    assert kinds == {0: "passphrase", 1: "passphrase"}
    assert reopen(mem, "remembered").root.count == 1
    assert reopen(mem, PASSPHRASE).root.count == 1
    with pytest.raises(WrongPassphrase):
        reopen(mem, None, key=recovery)


def test_second_passphrase_slot_and_removal(mem: Store) -> None:
    ebs = create(mem)
    index = ebs.add_keyslot("second one", kdf=WEAK, allow_weak_kdf=True)
    assert reopen(mem, "second one").root.db_id == ebs.root.db_id
    ebs.remove_keyslot(index)
    with pytest.raises(WrongPassphrase):
        reopen(mem, "second one")
    with pytest.raises(ValueError, match="last keyslot"):
        ebs.remove_keyslot(0)


def test_raw_key_store_and_key_files(mem: Store, tmp_path: Path) -> None:
    key = bytes(range(32))
    EncryptedStore.create(mem, key=key, freshness=False)
    raw_file, hex_file = tmp_path / "raw.key", tmp_path / "hex.key"
    raw_file.write_bytes(key)
    hex_file.write_text(key.hex() + "\n")
    for material in (key, raw_file, str(hex_file)):
        assert EncryptedStore.open(mem, key=material, freshness=False).root.count == 0
    with pytest.raises(WrongPassphrase):
        EncryptedStore.open(mem, key=bytes(32), freshness=False)
    with pytest.raises(WrongPassphrase):  # no passphrase slot at all
        reopen(mem, PASSPHRASE)
    bad = tmp_path / "bad.key"
    bad.write_bytes(b"too short")
    with pytest.raises(ValueError):
        EncryptedStore.open(mem, key=bad, freshness=False)
    with pytest.raises(ValueError):
        EncryptedStore.open(mem, key=b"short", freshness=False)


def test_open_of_an_empty_store_and_create_over_a_full_one(mem: Store) -> None:
    with pytest.raises(StoreNotFound):
        reopen(mem)
    create(mem)
    with pytest.raises(StoreExists, match="not empty"):
        create(mem)


def test_missing_keyslot_with_data_left(mem: Store) -> None:
    create(mem)
    mem.write((), [keyslot_key(0)])
    with pytest.raises(IntegrityError, match="no keyslot"):
        reopen(mem)


_GOLDEN = MemoryStore()
create(_GOLDEN)
_SLOT = _GOLDEN.get(keyslot_key(0)) or b""


def _opens(rows: dict[bytes, bytes]) -> None:
    store = MemoryStore()
    restore(store, rows)
    reopen(store)


@settings(max_examples=60)
@given(st.data())
def test_bit_flips_in_a_keyslot_never_open(data: st.DataObject) -> None:
    pos = data.draw(st.integers(0, len(_SLOT) - 1))
    bit = data.draw(st.integers(0, 7))
    slot = bytearray(_SLOT)
    slot[pos] ^= 1 << bit
    rows = snapshot(_GOLDEN) | {keyslot_key(0): bytes(slot)}
    with pytest.raises(IntegrityError):
        _opens(rows)


@settings(max_examples=30)
@given(st.binary(max_size=200))
def test_truncated_or_extended_keyslots_never_open(tail: bytes) -> None:
    for bad in (_SLOT[: len(tail) % len(_SLOT)], _SLOT + tail + b"\0"):
        with pytest.raises(IntegrityError):
            _opens(snapshot(_GOLDEN) | {keyslot_key(0): bad})


def _reseal(body: bytes) -> bytes:
    """Rewrite a keyslot body and fix its unkeyed checksum, as a deliberate attacker would."""
    checksum = hashlib.blake2b(body, digest_size=16, person=b"persist-ks-sum-1").digest()
    return body + checksum


@pytest.mark.parametrize(
    ("offset", "size", "value"),
    [
        (4, 1, 2),  # format version
        (5, 1, 1),  # slot index
        (6, 1, 2),  # kind: passphrase -> raw key
        (7, 1, 0),  # weak flag cleared
        (8, 4, 2),  # time cost
        (12, 4, 16 * 1024),  # memory
        (16, 4, 2),  # parallelism
        (20, 1, 0x55),  # salt
        (36, 1, 0x55),  # commitment
        (68, 1, 0x55),  # wrap nonce
        (92, 1, 0x55),  # wrapped key
        (139, 1, 0x55),  # tag
    ],
)
def test_deliberately_tampered_keyslot_fields_never_open(
    offset: int, size: int, value: int
) -> None:
    body = bytearray(_SLOT[:-16])
    field = value.to_bytes(size, "big")
    if field == bytes(body[offset : offset + size]):
        field = (value + 1).to_bytes(size, "big")
    body[offset : offset + size] = field
    rows = snapshot(_GOLDEN) | {keyslot_key(0): _reseal(bytes(body))}
    with pytest.raises((WrongPassphrase, IntegrityError)):
        _opens(rows)


def test_a_keyslot_moved_to_another_index_or_store_does_not_open() -> None:
    rows = snapshot(_GOLDEN)
    slot = rows.pop(keyslot_key(0))
    with pytest.raises(IntegrityError):  # the index inside says 0
        _opens(rows | {keyslot_key(1): slot})
    other = MemoryStore()
    create(other)  # same passphrase, another master key
    foreign = snapshot(other)
    foreign[keyslot_key(0)] = slot
    with pytest.raises(IntegrityError, match="no valid root"):
        _opens(foreign)


def test_huge_parameters_in_a_resealed_keyslot_are_refused_before_argon2(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_argon2(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("Argon2 ran")

    monkeypatch.setattr(kdf_module, "hash_secret_raw", no_argon2)
    body = bytearray(_SLOT[:-16])
    struct.pack_into(">III", body, 8, 3, 64 * 1024 * 1024, 4)  # 64 GiB
    rows = snapshot(_GOLDEN) | {keyslot_key(0): _reseal(bytes(body))}
    with pytest.raises(IntegrityError, match="keyslot 0: KDF parameters outside"):
        _opens(rows)


def test_keyslot_info_is_not_secret(mem: Store) -> None:
    ebs = create(mem)
    (info,) = ebs.keyslots()
    assert (info.index, info.kind, info.kdf) == (0, "passphrase", WEAK)
    assert KdfParams.default() != info.kdf
