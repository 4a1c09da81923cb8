"""What the host and the logs see: no names, keys, values or key material."""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable
from pathlib import Path

import pytest

from persist.ebs import EncryptedStore
from persist.ebs.keyslot import Credential
from persist.ebs.verify import check_store
from persist.errors import PersistError
from persist.kvs import open_store
from persist.kvs.base import Store

from .conftest import PASSPHRASE, create, reopen, restore, snapshot

# Distinct, incompressible-looking markers, so that a hit is no accident and
# LevelDB's compression cannot hide a plaintext copy.
TABLE = "tbl-Qx7mZ2vB"
KEY = b"key-Jv4nR8cY"
VALUE = b"val-Wk9pT3dU"
NODE = b"node-Hs6cL1eA"
PAYLOAD = b"payload-Mf2gN5"
MARKERS = [TABLE.encode(), KEY, VALUE, NODE, PAYLOAD, PASSPHRASE.encode()]


def _files_bytes(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file())


def _location(backend: str, directory: Path) -> str:
    directory.mkdir()
    if backend == "sqlite":
        return str(directory / "store.db")
    return f"leveldb://{directory / 'store.ldb'}"


@pytest.mark.parametrize("backend_name", ["sqlite", "leveldb"])
def test_raw_store_files_hold_no_name_key_value_or_passphrase(
    backend_name: str, tmp_path: Path
) -> None:
    store = open_store(_location(backend_name, tmp_path / "encrypted"))
    ebs = create(store)
    table = ebs.table(TABLE)
    for round_ in range(3):
        batch = ebs.batch()
        batch.put_row(table, KEY, VALUE * (round_ + 1))
        batch.put_node(table, table.node_id(NODE), NODE)
        ebs.commit(batch, {TABLE: PAYLOAD})
    store.close()
    raw = _files_bytes(tmp_path / "encrypted")
    assert raw, "the backend wrote files"
    for marker in MARKERS:
        assert marker not in raw, marker

    # The probe works: the same markers stored in the clear are found.
    control = open_store(_location(backend_name, tmp_path / "control"))
    control.write({KEY: VALUE + NODE + PAYLOAD + TABLE.encode() + PASSPHRASE.encode()})
    control.close()
    clear = _files_bytes(tmp_path / "control")
    assert all(marker in clear for marker in MARKERS)


def _secrets(ebs: EncryptedStore, raw_key: bytes) -> list[bytes]:
    master = ebs.keyring.master
    out = [PASSPHRASE.encode(), raw_key, master]
    out += [s.hex().encode() for s in (raw_key, master)]
    out += [s.hex()[:16].encode() for s in (raw_key, master)]
    return out


def test_no_key_material_in_exceptions_logs_or_repr(
    mem: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    raw_key = bytes(range(200, 232))
    ebs = create(mem)
    ebs.add_keyslot(key=raw_key)
    table = ebs.table(b"tree:t")
    batch = ebs.batch()
    batch.put_row(table, b"k", b"v")
    root = ebs.commit(batch, {"tree:t": b"x"})
    texts = [repr(x) for x in (ebs, table, ebs.keyring, ebs.keyring.table(b"tree:t"), batch,
                               root, ebs.keyring.root_cipher, Credential(PASSPHRASE, None),
                               Credential(None, raw_key), ebs.keyslots())]  # fmt: skip
    errors: list[BaseException] = []
    attempts: list[Callable[[], object]] = [
        lambda: reopen(mem, "wrong passphrase"),
        lambda: EncryptedStore.open(mem, key=bytes(32), freshness=False),
    ]
    for attempt in attempts:
        with pytest.raises(PersistError) as info:
            attempt()
        errors.append(info.value)
    rows = snapshot(mem)
    damaged = {k: v[:-1] + bytes([v[-1] ^ 1]) for k, v in rows.items()}
    restore(mem, damaged)
    with pytest.raises(PersistError) as info:
        reopen(mem)
    errors.append(info.value)
    restore(mem, rows | {table.row_key(b"k"): damaged[table.row_key(b"k")]})
    with pytest.raises(PersistError) as info:
        reopen(mem).table(b"tree:t").read_row(b"k")
    errors.append(info.value)
    texts += [f"{e!s} {e!r} {e.args!r}" for e in errors]
    texts += [str(p) for p in check_store(reopen(mem))]
    texts += [r.getMessage() for r in caplog.records]
    blob = "\n".join(texts).encode()
    for secret in _secrets(ebs, raw_key):
        assert secret not in blob
    for keyholder in (ebs, ebs.keyring, ebs.keyring.root_cipher, Credential(PASSPHRASE, None)):
        with pytest.raises(TypeError):
            pickle.dumps(keyholder)
