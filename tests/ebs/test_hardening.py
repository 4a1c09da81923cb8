"""Regression tests of the outside review's smaller findings (issue 14, §3 and §4)."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import apsw
import pytest

import persist
from persist.ebs import EncryptedStore, FreshnessRecord, KdfParams
from persist.ebs.journal import PHASE_CLEANUP, PHASE_COPY, Journal
from persist.ebs.layout import MAX_ROW
from persist.ebs.rows import open_envelope
from persist.errors import (
    ForkDetected,
    IntegrityError,
    RollbackDetected,
    WrongDatabase,
    WrongPassphrase,
)
from persist.kvs import open_store

WEAK = KdfParams.weak_for_tests()


def _db(location: str, fresh: object, **kw: object) -> persist.Database:
    return persist.open(location, "pw", kdf=WEAK, allow_weak_kdf=True, freshness=fresh, **kw)  # type: ignore[arg-type]


# -- §3: an emptied store is a rollback, not a new database ---------------------------


def test_an_emptied_store_is_a_rollback_unless_replaced(tmp_path: Path) -> None:
    location, fresh = str(tmp_path / "s.db"), tmp_path / "fresh.json"
    with _db(location, fresh) as db:
        db.root["k"] = "v"
    record = FreshnessRecord.load(fresh)
    for suffix in ("", "-wal", "-shm"):  # the host deletes everything
        if os.path.exists(location + suffix):
            os.remove(location + suffix)
    with pytest.raises(RollbackDetected, match="replace"):
        _db(location, fresh)
    assert FreshnessRecord.load(fresh) == record  # the evidence is kept
    with _db(location, fresh, replace=True) as db:  # asked for explicitly
        assert "k" not in db.root
    assert FreshnessRecord.load(fresh) != record


# -- §4: the freshness record is keyed by the canonical location ----------------------


def test_relative_and_absolute_spellings_share_one_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PERSIST_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    with _db("store.db", None) as db:
        db.root["k"] = 1
    old = tmp_path / "old"
    old.mkdir()
    for f in tmp_path.glob("store.db*"):
        shutil.copy(f, old / f.name)
    with _db(str(tmp_path / "store.db"), None) as db:  # absolute: the same record
        db.root["k"] = 2
    for f in old.iterdir():
        shutil.copy(f, tmp_path / f.name)
    with pytest.raises(RollbackDetected):  # caught under the relative spelling
        _db("store.db", None)


def test_two_stores_of_one_name_in_two_directories_do_not_collide(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PERSIST_STATE_DIR", str(tmp_path / "state"))
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        with _db("state.db", None) as db:
            db.root["who"] = name
    for name in ("a", "b"):  # no false WrongDatabase
        monkeypatch.chdir(tmp_path / name)
        with _db("state.db", None) as db:
            assert db.root["who"] == name


def test_a_record_under_the_old_key_is_migrated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from persist.ebs.freshness import _record_name

    state = tmp_path / "state"
    monkeypatch.setenv("PERSIST_STATE_DIR", str(state))
    monkeypatch.chdir(tmp_path)
    with _db("m.db", None) as db:
        db.root["k"] = 1
    canonical = state / "freshness" / _record_name("sqlite://" + str(tmp_path / "m.db"))
    legacy = state / "freshness" / _record_name("m.db")
    os.replace(canonical, legacy)  # where the release before format v2 kept it
    with _db("m.db", None):
        pass
    assert canonical.exists() and not legacy.exists()


# -- §4: a fork two commits ahead, proven by the other root slot ----------------------


def test_a_fork_two_commits_ahead_is_detected(tmp_path: Path) -> None:
    """Old code accepted any store more than one commit ahead; the other root slot
    proves one more step: two ahead, its predecessor must be the recorded root."""
    location, fresh = str(tmp_path / "s.db"), tmp_path / "fresh.json"
    nolog = persist.LogLimits(0, 0)  # one commit per wave, none at close
    with _db(location, fresh, root_log=nolog) as db:
        db.root["k"] = 0
    base = tmp_path / "base"
    base.mkdir()
    for f in tmp_path.glob("s.db*"):
        shutil.copy(f, base / f.name)
    with _db(location, fresh, root_log=nolog) as db:  # history A: this machine saw it
        db.root["k"] = "a"
    record = FreshnessRecord.load(fresh)
    assert record is not None
    for f in tmp_path.glob("s.db*"):
        f.unlink()
    for f in base.iterdir():  # the host forks from the base: history B
        shutil.copy(f, tmp_path / f.name)
    with _db(location, False, root_log=nolog) as db:
        while db._ebs.root.count < record.count + 2:
            db.root["k"] = f"b{db._ebs.root.count}"
            db.commit_wait()
        assert db._ebs.root.count == record.count + 2
    with pytest.raises(ForkDetected):
        _db(location, fresh)


def test_a_different_database_is_named(tmp_path: Path) -> None:
    a, fresh = str(tmp_path / "a.db"), tmp_path / "fresh.json"
    with _db(a, fresh):
        pass
    b = str(tmp_path / "b.db")
    with _db(b, False):
        pass
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(b + suffix):
            shutil.copy(b + suffix, a + suffix)
    with pytest.raises(WrongDatabase):
        _db(a, fresh)


# -- §4: cells of other types, oversized rows -------------------------------------------


@pytest.mark.parametrize("cell", ["text key", "integer key", "real value", "text value"])
def test_sqlite_cells_of_other_types_are_integrity_errors(tmp_path: Path, cell: str) -> None:
    location = str(tmp_path / "s.db")
    with _db(location, False) as db:
        db.root["k"] = "v"
    conn = apsw.Connection(location)
    key, value = {
        "text key": ("a text key", b"v"),
        "integer key": (42, b"v"),
        "real value": (b"\x00" * 32, 1.5),
        "text value": (b"\x01" * 32, "text"),
    }[cell]
    conn.execute("INSERT INTO kv VALUES (?, ?)", (key, value))
    conn.close()
    with open_store(location, read_only=True) as kvs:
        with pytest.raises(IntegrityError):
            list(kvs.scan())
        if isinstance(key, bytes):
            with pytest.raises(IntegrityError):
                kvs.get(key)
    with _db(location, False, read_only=True) as db:
        assert db.root["k"] == "v"
        problems = db.verify()
    assert [p.kind for p in problems] == ["store"]  # reported, not a traceback


def test_a_row_longer_than_persist_writes_is_refused_before_decryption(tmp_path: Path) -> None:
    location = str(tmp_path / "s.db")
    with _db(location, False) as db:
        db.root["k"] = "v"
    kvs = open_store(location, read_only=True)
    ebs = EncryptedStore.open(kvs, "pw", allow_weak_kdf=True, freshness=False)
    table, nid = ebs.table("tree:__root__"), ebs.root.catalog["tree:__root__"]
    calls = []
    import persist.ebs.xaes as xaes

    original = xaes.XAES256GCM.decrypt

    def counting(self: object, *args: object) -> bytes:
        calls.append(1)
        return original(self, *args)  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(xaes.XAES256GCM, "decrypt", counting)
        with pytest.raises(IntegrityError, match="failed authentication"):
            open_envelope(
                table._keys.cipher, persist.ebs.RowKind.NODE, table.id, nid, bytes(MAX_ROW + 1)
            )
    assert calls == []
    kvs.close()


# -- §4: a wrong passphrase changes no byte; unreadable hints ---------------------------


def test_a_wrong_passphrase_changes_no_byte_even_with_a_leftover_wal(tmp_path: Path) -> None:
    """Old code: the writer's connection, opened before the key was checked,
    checkpointed the WAL a crashed writer had left when it closed."""
    location = str(tmp_path / "s.db")
    crash = (
        "import os, persist; from persist.ebs import KdfParams\n"
        f"db = persist.open({location!r}, 'pw', kdf=KdfParams.weak_for_tests(), "
        "allow_weak_kdf=True, freshness=False)\n"
        "db.root['k'] = 'v'; db.commit_wait(); os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", crash], check=True, timeout=60)
    files = {s: Path(location + s).read_bytes() for s in ("", "-wal")}
    assert files["-wal"]  # what a writer's close would checkpoint
    with pytest.raises(WrongPassphrase):
        persist.open(location, "wrong", allow_weak_kdf=True, freshness=False)
    assert {s: Path(location + s).read_bytes() for s in ("", "-wal")} == files
    with _db(location, False) as db:
        assert db.root["k"] == "v"


def test_an_unreadable_hint_is_ignored_and_a_bad_record_is_an_integrity_error(
    tmp_path: Path,
) -> None:
    location, fresh = str(tmp_path / "s.db"), tmp_path / "fresh.json"
    with _db(location, fresh) as db:
        db.root["k"] = 1
    hint = fresh.with_name(fresh.name + ".latest")
    hint.write_bytes(b"\xff\xfe not utf-8 \x80" + b" " * 200)
    with _db(location, fresh) as db:  # ignored, like a torn write
        assert db.root["k"] == 1
    fresh.write_bytes(b"\xff\xfe\x80 not utf-8")
    with pytest.raises(IntegrityError, match="unreadable"):
        _db(location, fresh)


# -- §4: hygiene ------------------------------------------------------------------------


def test_a_journal_shows_and_pickles_no_key() -> None:
    master = os.urandom(32)
    for journal in (Journal(PHASE_CLEANUP, 3, master=master), Journal(PHASE_COPY, 3, {0: b"s"})):
        assert master.hex() not in repr(journal) and repr(master) not in repr(journal)
        with pytest.raises(TypeError):
            pickle.dumps(journal)
    with pytest.raises(ValueError, match="never holds a master key"):
        Journal(PHASE_COPY, 1, {0: b"s"}, master=master).encode()


def test_change_passphrase_keeps_the_kdf_policy(tmp_path: Path) -> None:
    """Old code unwrapped the old slot with the weak-KDF flag forced on."""
    kvs = open_store(str(tmp_path / "s.db"))
    ebs = EncryptedStore.create(kvs, "pw", kdf=WEAK, allow_weak_kdf=True, freshness=False)
    ebs.close()
    ebs = EncryptedStore.open(kvs, "pw", allow_weak_kdf=True, freshness=False)
    ebs._allow_weak_kdf = False  # as if opened without the flag (open itself refuses that)
    with pytest.raises(IntegrityError, match="weak test KDF"):
        ebs.change_passphrase("pw", "new", kdf=WEAK, allow_weak_kdf=True)
    kvs.close()


def test_the_random_source_is_not_a_public_parameter(tmp_path: Path) -> None:
    kvs = open_store(str(tmp_path / "s.db"))
    with pytest.raises(TypeError):
        EncryptedStore.create(  # type: ignore[call-arg]
            kvs, "pw", kdf=WEAK, allow_weak_kdf=True, freshness=False, random=os.urandom
        )
    kvs.close()
