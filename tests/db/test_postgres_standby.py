"""Read scale-out on a real hot standby (``pg_basebackup -R``): a read-only database on
the standby follows the primary after ``refresh()``; a read the standby cancels for a
conflict with recovery is a clear persist error; a writer there is refused.

The pair is this module's own (not the session server), so that the standby can be
given a short ``max_standby_streaming_delay`` and the primary can be vacuumed freely.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest

import persist
from persist.errors import IntegrityError, PersistError, ReadOnlyError, StoreIOError
from persist.kvs import open_store
from persist.testing.pgserver import PostgresServer

PASSPHRASE = "standby passphrase"
WEAK = {"kdf": persist.ebs.KdfParams.weak_for_tests(), "allow_weak_kdf": True}
DB = "standby_tests"


@pytest.fixture(scope="module")
def pair(pg_server: PostgresServer) -> Iterator[tuple[PostgresServer, PostgresServer]]:
    """A primary of our own and its streaming hot standby (pg_server only proves that a
    server can run here, or skips/fails with the reason)."""
    from persist.testing.pgserver import start_server

    primary = start_server({"autovacuum": "off"})
    try:
        primary.create_database(DB)
        standby = primary.standby(
            {"max_standby_streaming_delay": "100ms", "hot_standby_feedback": "off"}
        )
        try:
            assert standby.execute("SELECT pg_is_in_recovery()") == [(True,)]
            yield primary, standby
        finally:
            standby.stop()
    finally:
        primary.stop()


def _caught_up(primary: PostgresServer, standby: PostgresServer, timeout: float = 20) -> None:
    """Wait until the standby has replayed everything the primary wrote so far."""
    (lsn,) = primary.execute("SELECT pg_current_wal_lsn()::text")[0]
    deadline = time.monotonic() + timeout
    while True:
        (done,) = standby.execute(f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn")[0]
        if done:
            return
        assert time.monotonic() < deadline, "the standby does not catch up"
        time.sleep(0.01)


def _locations(pair: tuple[PostgresServer, PostgresServer]) -> tuple[str, str]:
    table = f"t_{uuid.uuid4().hex[:16]}"
    primary, standby = pair
    return primary.uri(DB, table=table), standby.uri(DB, table=table)


def test_a_read_only_database_on_the_standby_follows_the_primary(
    pair: tuple[PostgresServer, PostgresServer],
) -> None:
    primary, standby = pair
    on_primary, on_standby = _locations(pair)
    writer = persist.open(on_primary, passphrase=PASSPHRASE, freshness=False, **WEAK)
    try:
        accounts = writer.table("accounts")
        with writer.atomic():
            for i in range(200):
                accounts[i] = {"balance": 100}
        writer.root["version"] = 1
        writer.commit_wait()
        _caught_up(primary, standby)
        reader = persist.open(
            on_standby, passphrase=PASSPHRASE, read_only=True, allow_weak_kdf=True, freshness=False
        )
        try:
            assert reader.root["version"] == 1
            assert len(reader.table("accounts")) == 200
            for version in range(2, 6):
                with writer.atomic():
                    accounts[version] = {"balance": 100 * version}
                    del accounts[100 + version]
                    writer.root["version"] = version
                writer.commit_wait()
                _caught_up(primary, standby)
                reader.refresh()
                assert reader.root["version"] == version
                table = reader.table("accounts")
                assert table[version] == {"balance": 100 * version}
                assert 100 + version not in table and len(table) == 200 - (version - 1)
            with pytest.raises(persist.ReadOnlyError):
                reader.root["version"] = 0
        finally:
            reader.close()
    finally:
        writer.close()


def test_a_recovery_conflict_is_a_clear_persist_error(
    pair: tuple[PostgresServer, PostgresServer],
) -> None:
    """A snapshot on the standby still needs rows that the primary deleted and vacuumed
    away: replaying the vacuum cancels it, and its next read says so."""
    primary, standby = pair
    on_primary, on_standby = _locations(pair)
    with open_store(on_primary) as writer:
        writer.write({b"node%03d" % i: b"x" * 200 for i in range(100)})
        _caught_up(primary, standby)  # the new table exists on the standby from here on
        with open_store(on_standby, read_only=True) as reader:
            snap = reader.snapshot()
            assert snap.get(b"node000") == b"x" * 200
            writer.write(deletes=[b"node%03d" % i for i in range(100)])  # the nodes are freed
            primary.execute(f"VACUUM {on_primary.rsplit('table=', 1)[1]}", DB)
            _caught_up(primary, standby)  # replay waits 100 ms for the snapshot, then cancels it
            with pytest.raises(PersistError) as info:
                snap.get(b"node001")
            error = info.value
            assert isinstance(error, StoreIOError) and not isinstance(error, IntegrityError)
            assert "conflicts with WAL replay" in str(error), error
            assert isinstance(error.__cause__, psycopg.Error)
            snap.close()
            with reader.snapshot() as fresh:  # a new snapshot sees the primary's state
                assert fresh.get(b"node001") is None
            assert reader.get(b"node001") is None


def test_a_writer_on_the_standby_is_refused(pair: tuple[PostgresServer, PostgresServer]) -> None:
    primary, standby = pair
    on_primary, on_standby = _locations(pair)
    with pytest.raises(ReadOnlyError, match="read-only server"):
        open_store(on_standby)  # no table yet: creating it is refused
    with open_store(on_primary) as store:
        store.write({b"k": b"v"})
    _caught_up(primary, standby)
    with pytest.raises(ReadOnlyError):
        open_store(on_standby)  # the table exists: taking the lease is refused
    with open_store(on_standby, read_only=True) as reader:
        assert reader.get(b"k") == b"v"
