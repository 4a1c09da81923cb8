"""A master-key rotation revokes: the old key opens nothing written after it (issue 14, §1).

The attacker is the host who also learned the old master key (or the old
passphrase, with a copy of the old keyslot: the same thing).  It keeps a byte
copy of the store's files after every batch the rotation writes, and of the
files after the rotation and one more commit; then it tries every row of
every copy under every old key, and the raw bytes around every place where
an old-key address occurs (where a deleted row's residue would be).  Nothing
may reveal the new master key or data written after the rotation.  Before the
fix the copy-phase journal held the new master key under the old key.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import persist
from persist.db.rekey import TreesRekeyer
from persist.ebs import EncryptedStore, KdfParams
from persist.ebs import rekey as rotation
from persist.ebs.kdf import hkdf_sha256
from persist.ebs.keys import KeyRing, _label, table_id
from persist.ebs.layout import NO_TABLE, RowKind, padded_size
from persist.ebs.rows import open_envelope, open_head
from persist.ebs.xaes import XAES256GCM
from persist.errors import IntegrityError
from persist.kvs import open_store

WEAK = KdfParams.weak_for_tests()
MARKER = b"written after the rotation: must stay secret"


def _location(kind: str, root: Path) -> str:
    return str(root / "s.db") if kind == "sqlite" else f"leveldb://{root / 's.ldb'}"


def _files(kind: str, root: Path) -> Path:
    return root if kind == "sqlite" else root / "s.ldb"


def _copy(src: Path, dst: Path) -> None:
    if src.is_dir():
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("LOCK"))
    else:
        dst.mkdir(parents=True)
        for f in src.parent.iterdir():
            if f.name.startswith("s.db"):
                shutil.copy(f, dst / f.name)


def _rows_of(kind: str, copy: Path) -> dict[bytes, bytes]:
    location = str(copy / "s.db") if kind == "sqlite" else f"leveldb://{copy}"
    try:
        with open_store(location, read_only=True) as kvs:
            return dict(kvs.scan())
    except persist.PersistError:
        return {}


def _try_old_keys(ring: KeyRing, descriptors: list[bytes], key: bytes, data: bytes) -> bytes | None:
    """The plaintext if ``data`` at ``key`` opens under any old key, else None."""
    attempts = [
        (ring.journal_cipher, RowKind.JOURNAL, NO_TABLE),
        (ring.root_cipher, RowKind.ROOT, NO_TABLE),
    ]
    for desc in descriptors:
        t = ring.table(desc)
        attempts += [(t.cipher, kind, t.id) for kind in (RowKind.NODE, RowKind.ROW, RowKind.CHUNK)]
    for cipher, kind, tid in attempts:
        try:
            return open_envelope(cipher, kind, tid, key, data, max_len=1 << 30)
        except IntegrityError:
            continue
    return None


@pytest.mark.parametrize("kind", ["sqlite", "leveldb"])
def test_nothing_the_old_key_opens_carries_new_secrets(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store_dir = tmp_path / "store"
    store_dir.mkdir()
    location = _location(kind, store_dir)
    with persist.open(location, "old pw", kdf=WEAK, allow_weak_kdf=True, freshness=False) as db:
        t = db.table("t")
        t.update({i: b"before %d" % i for i in range(400)})
        t["big"] = b"B" * 300
        db.commit_wait()
        for i in range(5):  # and some in the root log
            t[f"log{i}"] = b"logged"
            db.commit_wait()
        db._trees.fold = lambda: None  # type: ignore[method-assign]  # keep the log

    copies: list[Path] = []
    original = EncryptedStore.write_raw

    def snapshotting(
        self: EncryptedStore, puts: object, deletes: object = (), stream: object = ()
    ) -> None:
        original(self, puts, deletes, stream)  # type: ignore[arg-type]
        dst = tmp_path / f"copy{len(copies)}"
        _copy(_files(kind, store_dir) if kind == "leveldb" else store_dir / "s.db", dst)
        copies.append(dst)

    kvs = open_store(location)
    ebs = EncryptedStore.open(kvs, "old pw", allow_weak_kdf=True, freshness=False)
    old_ring = KeyRing(ebs.keyring.master)
    descriptors = [d.encode() for d in ebs.root.catalog]
    monkeypatch.setattr(EncryptedStore, "write_raw", snapshotting)
    rotation.rekey(ebs, "new pw", kdf=WEAK, allow_weak_kdf=True, rekeyer=TreesRekeyer())
    monkeypatch.setattr(EncryptedStore, "write_raw", original)
    new_master = ebs.keyring.master
    new_ring = KeyRing(new_master)
    probe = new_ring.table(descriptors[0]).cipher.encrypt(bytes(24), b"x", b"")
    derived = hkdf_sha256(new_master, _label(b"row-enc", table_id(descriptors[0])))
    assert XAES256GCM(derived).encrypt(bytes(24), b"x", b"") == probe  # the right subkeys
    ebs.close()
    kvs.close()
    assert len(copies) >= 4  # journal, copy batches, switch, cleanup
    with persist.open(location, "new pw", allow_weak_kdf=True, freshness=False) as db:
        db.table("t")["after"] = MARKER
        db.commit_wait()
    _copy(_files(kind, store_dir) if kind == "leveldb" else store_dir / "s.db", tmp_path / "final")
    copies.append(tmp_path / "final")

    secrets = [new_master, MARKER]
    secrets += [hkdf_sha256(new_master, _label(p)) for p in (b"root-enc", b"journal-enc")]
    secrets += [hkdf_sha256(new_master, _label(b"row-enc", table_id(d))) for d in descriptors]
    opened = 0
    for copy in copies:
        raw = b"".join(f.read_bytes() for f in sorted(copy.rglob("*")) if f.is_file())
        for secret in secrets:
            assert secret not in raw, f"a secret in the clear in {copy.name}"
        for key, value in _rows_of(kind, copy).items():
            plain = _try_old_keys(old_ring, descriptors, key, value)
            if plain is not None:
                opened += 1
                assert not any(s in plain for s in secrets), f"row {key.hex()} of {copy.name}"
        # residue: wherever an old-key address occurs, try the bytes after it
        for address in [
            old_ring.journal_key(),
            old_ring.root_slot_key(0),
            old_ring.root_slot_key(1),
        ]:
            start = raw.find(address)
            while start != -1:
                for offset in range(32, 48):
                    for size in {padded_size(n) for n in range(64, 700)}:
                        chunk = raw[start + offset : start + offset + 24 + size + 16]
                        plain = _try_old_keys(old_ring, [], address, chunk)
                        if plain is not None:
                            assert not any(s in plain for s in secrets), f"residue in {copy.name}"
                start = raw.find(address, start + 1)
    assert opened > 0  # the attacker does read the old rows: the test can see them
    with pytest.raises(IntegrityError), open_store(location, read_only=True) as kvs:
        slot = new_ring.root_slot_key(0)
        row = kvs.get(slot) or kvs.get(new_ring.root_slot_key(1)) or b""
        open_envelope(old_ring.root_cipher, RowKind.ROOT, NO_TABLE, slot, row)


def test_open_head_is_what_the_attacker_uses(tmp_path: Path) -> None:
    """The helper above really opens rows: a row of the store under its own key."""
    with persist.open(
        str(tmp_path / "x.db"), "pw", kdf=WEAK, allow_weak_kdf=True, freshness=False
    ) as db:
        db.table("t")["k"] = b"v"
    with open_store(str(tmp_path / "x.db"), read_only=True) as kvs:
        ebs = EncryptedStore.open(kvs, "pw", allow_weak_kdf=True, freshness=False)
        ring = KeyRing(ebs.keyring.master)
        root_id = ebs.root.catalog["tree:t"]
        stored = kvs.get(root_id)
        assert stored is not None
        assert _try_old_keys(ring, [b"tree:t"], root_id, stored) is not None
        open_head(ring.table(b"tree:t"), RowKind.NODE, root_id, stored)
