"""Whole-store rollback, fork and swap: with the freshness record, and without (TOFU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from persist.ebs import EncryptedStore, FreshnessRecord
from persist.ebs.freshness import resolve_location
from persist.ebs.verify import check_store
from persist.errors import ForkDetected, IntegrityError, RollbackDetected, WrongDatabase
from persist.kvs.base import Store
from persist.kvs.memory import MemoryStore

from .conftest import create, reopen, restore, snapshot


def _commit(ebs: EncryptedStore, value: bytes) -> None:
    batch = ebs.batch()
    batch.put_row(ebs.table(b"meta"), b"k", value)
    ebs.commit(batch, {})


def test_whole_store_rollback_with_the_record(kvs: Store, fresh_path: Path) -> None:
    ebs = create(kvs, freshness=fresh_path)
    _commit(ebs, b"1")
    backup = snapshot(kvs)
    _commit(ebs, b"2")
    restore(kvs, backup)
    with pytest.raises(RollbackDetected):
        reopen(kvs, freshness=fresh_path)


def test_whole_store_rollback_without_the_record_is_trusted(kvs: Store) -> None:
    """Trust on first use: without a record, an old but genuine store opens."""
    ebs = create(kvs)
    _commit(ebs, b"1")
    backup = snapshot(kvs)
    _commit(ebs, b"2")
    restore(kvs, backup)
    old = reopen(kvs)
    assert old.root.count == 1 and old.table(b"meta").read_row(b"k") == b"1"


def test_fork_at_the_same_count(mem: Store, tmp_path: Path, fresh_path: Path) -> None:
    ebs = create(mem, freshness=fresh_path)
    backup = snapshot(mem)
    _commit(ebs, b"ours")
    restore(mem, backup)  # the host branches off before our commit...
    theirs = reopen(mem, freshness=tmp_path / "elsewhere.json")
    _commit(theirs, b"theirs")  # ...and someone else commits on the branch
    with pytest.raises(ForkDetected, match="differs"):
        reopen(mem, freshness=fresh_path)


def test_fork_one_commit_ahead(mem: Store, tmp_path: Path, fresh_path: Path) -> None:
    ebs = create(mem, freshness=fresh_path)
    backup = snapshot(mem)
    _commit(ebs, b"ours")
    restore(mem, backup)
    theirs = reopen(mem, freshness=tmp_path / "elsewhere.json")
    _commit(theirs, b"theirs 1")
    _commit(theirs, b"theirs 2")
    with pytest.raises(ForkDetected, match="does not follow"):
        reopen(mem, freshness=fresh_path)


def test_progress_by_another_writer_is_accepted_and_recorded(
    mem: Store, tmp_path: Path, fresh_path: Path
) -> None:
    create(mem, freshness=fresh_path)
    other = reopen(mem, freshness=tmp_path / "other.json")
    for value in (b"1", b"2", b"3"):
        _commit(other, value)
    assert reopen(mem, freshness=fresh_path).root.count == 3
    assert FreshnessRecord.load(fresh_path) == FreshnessRecord.of(other.root)


def test_a_swapped_store_is_another_database(mem: Store, fresh_path: Path) -> None:
    create(mem, freshness=fresh_path)
    impostor = MemoryStore()
    create(impostor)  # same passphrase, another database
    with pytest.raises(WrongDatabase):
        reopen(impostor, freshness=fresh_path)


def test_the_record_follows_every_commit(mem: Store, fresh_path: Path) -> None:
    ebs = create(mem, freshness=fresh_path)
    assert FreshnessRecord.load(fresh_path) == FreshnessRecord.of(ebs.root)
    _commit(ebs, b"1")
    record = FreshnessRecord.load(fresh_path)
    assert record is not None and (record.count, record.db_id) == (1, ebs.root.db_id)
    assert record.root_digest == ebs.root.digest


def test_a_damaged_record_is_an_error_not_a_reset(mem: Store, fresh_path: Path) -> None:
    create(mem, freshness=fresh_path)
    data = json.loads(fresh_path.read_text())
    data["count"] = "many"
    fresh_path.write_text(json.dumps(data))
    with pytest.raises(IntegrityError, match="delete it"):
        reopen(mem, freshness=fresh_path)
    fresh_path.write_text("{")
    with pytest.raises(IntegrityError):
        reopen(mem, freshness=fresh_path)
    fresh_path.unlink()
    assert reopen(mem, freshness=fresh_path).root.count == 0  # deleting it re-trusts


def test_default_location_is_in_the_state_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PERSIST_STATE_DIR", str(tmp_path / "state"))
    named = MemoryStore("freshness-default")
    try:
        create(named, freshness=None)
        path = resolve_location(None, "memory:freshness-default")
        assert path is not None and path.parent == tmp_path / "state" / "freshness"
        assert FreshnessRecord.load(path) is not None
        assert resolve_location(None, "memory:") is None
        assert resolve_location(False, "/some/where.db") is None
        monkeypatch.delenv("PERSIST_STATE_DIR")
        monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
        xdg = resolve_location(None, "/some/where.db")
        assert xdg is not None and xdg.is_relative_to(tmp_path / "xdg" / "persist")
    finally:
        named.close()


def test_opening_with_a_damaged_newest_root_rolls_back_only_without_a_record(
    mem: Store, fresh_path: Path
) -> None:
    ebs = create(mem, freshness=fresh_path)
    _commit(ebs, b"1")
    _commit(ebs, b"2")
    newest = ebs.keyring.root_slot_key(ebs.root.count % 2)
    mem.write({newest: b"\0" * 100})
    with pytest.raises(RollbackDetected):
        reopen(mem, freshness=fresh_path)
    older = reopen(mem)  # takes the highest valid root (DESIGN §2.2)
    assert older.root.count == 1
    # verify sees the damaged slot, and the rows the lost root named as orphans
    assert {p.kind for p in check_store(older)} == {"root", "orphan"}


def _hint(path: Path) -> Path:
    return path.with_name(path.name + ".latest")


def test_commits_write_the_hint_and_close_makes_it_durable(kvs: Store, fresh_path: Path) -> None:
    ebs = create(kvs, freshness=fresh_path)
    _commit(ebs, b"1")
    _commit(ebs, b"2")
    assert json.loads(_hint(fresh_path).read_text())["count"] == 2
    assert json.loads(fresh_path.read_text())["count"] == 0  # the durable record lags
    ebs.close()
    assert json.loads(fresh_path.read_text())["count"] == 2
    assert not _hint(fresh_path).exists()


def test_rollback_is_caught_through_the_hint(kvs: Store, fresh_path: Path) -> None:
    ebs = create(kvs, freshness=fresh_path)
    _commit(ebs, b"1")
    backup = snapshot(kvs)
    _commit(ebs, b"2")  # only the hint knows of commit 2 (no close: a crash)
    restore(kvs, backup)
    with pytest.raises(RollbackDetected):
        reopen(kvs, freshness=fresh_path)


def test_an_unreadable_hint_is_ignored(kvs: Store, fresh_path: Path) -> None:
    """A power failure can leave the un-synced hint empty: that is no false alarm."""
    ebs = create(kvs, freshness=fresh_path)
    _commit(ebs, b"1")
    _hint(fresh_path).write_text("")
    assert reopen(kvs, freshness=fresh_path).root.count == 1


def test_a_hint_of_another_database_is_ignored(kvs: Store, fresh_path: Path) -> None:
    ebs = create(kvs, freshness=fresh_path)
    _commit(ebs, b"1")
    other = json.loads(_hint(fresh_path).read_text())
    other["db_id"] = "00" * 16
    other["count"] = 99
    _hint(fresh_path).write_text(json.dumps(other))
    assert reopen(kvs, freshness=fresh_path).root.count == 1
