"""The PostgreSQL backend on a real server: the conformance suite and the oracle.

tests/kvs/test_conformance.py runs the suite through the shared backend
fixture with the defaults; here it runs again with the advisory lock off, the
way the backend runs on CockroachDB and YugabyteDB: one writer by the lease
row alone.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import settings

from persist.errors import (
    ClosedError,
    NotAStore,
    PersistError,
    StoreIOError,
    StoreLocked,
    StoreNotFound,
)
from persist.kvs import open_store, parse_location, postgresql
from persist.kvs.postgresql import PostgreSQLStore, parse_postgres_location
from persist.testing.kvs import StoreConformance, StoreFactory, oracle_state_machine
from persist.testing.pgserver import PostgresServer

from ..conftest import PG_DATABASE, pg_location
from .test_kill import _check as check_after_kill


class TestLeaseOnlyConformance(StoreConformance):
    """The whole kvs contract, unchanged, with no advisory lock: the lease row alone."""

    @pytest.fixture
    def store_factory(self, pg_server: PostgresServer) -> StoreFactory:
        location = pg_location(pg_server)
        return StoreFactory(open=lambda **kw: PostgreSQLStore(location, advisory_lock=False, **kw))


_server: list[PostgresServer] = []


@pytest.fixture(autouse=True)
def _the_server(pg_server: PostgresServer) -> None:
    """Hands the session server to the state machine, which cannot take fixtures."""
    _server[:] = [pg_server]


def _fresh_factory() -> StoreFactory:
    location = pg_location(_server[0])
    return StoreFactory(open=lambda **kw: open_store(location, **kw))


TestPostgreSQLAgainstOracle = settings(max_examples=25, stateful_step_count=30, deadline=None)(
    oracle_state_machine(_fresh_factory)
).TestCase


# -- helpers -------------------------------------------------------------------------


def _table(location: str) -> str:
    return location.rsplit("table=", 1)[1]


def _admin(pg: PostgresServer) -> psycopg.Connection[Any]:
    conn: psycopg.Connection[Any] = pg.connect(PG_DATABASE)
    return conn


def _backend_pids(admin: psycopg.Connection[Any], role: str, table: str) -> list[int]:
    rows = admin.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s",
        (f"persist {role} {table}"[:63],),
    ).fetchall()
    return [int(r[0]) for r in rows]


def _terminate(admin: psycopg.Connection[Any], pids: list[int]) -> None:
    assert pids
    for pid in pids:
        admin.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,))  # waits until it is gone


def _wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# -- the location ----------------------------------------------------------------------


def test_location_is_canonical_and_carries_no_password() -> None:
    loc = parse_postgres_location("postgres://ann:pa%3Ass@db.example:6432/app?sslmode=require")
    assert loc.location == "postgresql://ann@db.example:6432/app?sslmode=require&table=persist"
    assert loc.table == "persist"
    assert "pa" not in repr(loc) and "pa" not in loc.location
    assert loc._conninfo == "postgres://ann:pa%3Ass@db.example:6432/app?sslmode=require"
    assert loc.scrub("x pa:ss y pa%3Ass z") == "x *** y *** z"
    sock = parse_postgres_location(
        "postgresql://u@/d?table=t_1&password=hunter2&host=/run/pg&port=5433"
    )
    assert sock.table == "t_1"
    assert sock.location == "postgresql://u@/d?host=/run/pg&port=5433&table=t_1"
    assert sock._conninfo == "postgresql://u@/d?password=hunter2&host=/run/pg&port=5433"
    assert "hunter2" not in sock.location and "hunter2" not in repr(sock)
    # The same store, spelled differently, has one canonical location (freshness records).
    other = parse_postgres_location("postgresql://u@/d?port=5433&host=/run/pg&table=t_1")
    assert other.location == sock.location


@pytest.mark.parametrize(
    "location",
    [
        "postgresql://u@/d?table=Upper",
        "postgresql://u@/d?table=1abc",
        "postgresql://u@/d?table=a-b",
        "postgresql://u@/d?table=a%22b",
        "postgresql://u@/d?table=",
        "postgresql://u@/d?table=" + "a" * 58,
        "postgresql://u@/d?table=a&table=b",
        "postgresql://u@/d#frag",
        "mysql://u@/d",
    ],
)
def test_bad_locations_are_value_errors(location: str) -> None:
    with pytest.raises(ValueError):
        parse_postgres_location(location)


def test_open_store_knows_the_scheme(pg_server: PostgresServer) -> None:
    assert parse_location("postgresql://u@/d")[0] == "postgresql"
    assert parse_location("postgres://u@/d")[0] == "postgresql"
    location = pg_location(pg_server)
    with open_store(location.replace("postgresql://", "postgres://")) as store:
        assert isinstance(store, PostgreSQLStore)
        assert store.location == parse_postgres_location(location).location


def test_the_password_appears_nowhere(
    pg_server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "s3cret-Pw_42"
    admin = _admin(pg_server)
    admin.execute("DROP ROLE IF EXISTS pwuser")
    admin.execute(f"CREATE ROLE pwuser LOGIN PASSWORD '{secret}'")
    admin.execute("GRANT ALL ON SCHEMA public TO pwuser")
    pg_server.allow("local all pwuser scram-sha-256")
    table = f"t_{uuid.uuid4().hex[:12]}"
    good = pg_server.uri(PG_DATABASE, user="pwuser", password=secret, table=table)
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    with open_store(good) as store:
        store.write({b"k": b"v"})
        seen += [store.location, repr(store), repr(store._where)]
        with store.snapshot() as snap:
            seen.append(repr(snap))
    with pytest.raises(ClosedError) as closed:
        store.get(b"k")
    failures: list[BaseException] = [closed.value]
    wrong = pg_server.uri(PG_DATABASE, user="pwuser", password="not-it", table=table)
    as_query = pg_server.uri(PG_DATABASE, user="pwuser", table=table, password=secret)
    for location in (
        good.replace(secret, secret + "x"),  # a wrong password that contains the right one
        good.replace("@/", "@[::1/"),  # libpq's own message quotes the whole URI
        good.replace(PG_DATABASE, "no_such_db"),
        as_query.replace("host=", "host=/nonexistent"),
    ):
        with pytest.raises(PersistError) as info:
            open_store(location)
        failures.append(info.value)
    with open_store(as_query) as store:
        assert store.get(b"k") == b"v"
        seen.append(store.location)
    with pytest.raises(PersistError, match="password authentication failed"):
        open_store(wrong)
    for exc in failures:
        seen.append("".join(traceback.format_exception(exc)))
    seen.append(caplog.text)
    for text in seen:
        assert secret not in text
    assert "***" in str(failures[2])  # libpq quoted the URI; the password was scrubbed


# -- one writer: the lease row ---------------------------------------------------------


def test_close_frees_the_advisory_lock_before_it_returns(pg_server: PostgresServer) -> None:
    """Regression: closing ended the advisory lock only when the server noticed the
    closed connection, so a reopen right after could meet StoreLocked (it happened
    under load, in the oracle state machine's reopen rule).  Without the explicit
    unlock, the lock is still there after about one close in four."""
    location = pg_location(pg_server)
    admin = _admin(pg_server)
    for i in range(40):
        with open_store(location) as store:
            store.write({b"n": b"%d" % i})
        held = admin.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
            "WHERE l.locktype = 'advisory' AND a.application_name = %s",
            (f"persist lease {_table(location)}"[:63],),
        ).fetchone()
        assert held == (0,), f"still locked after close number {i + 1}"
    with open_store(location) as store:
        assert store.get(b"n") == b"39"


HOLD_OPEN = """
import sys
from persist.kvs import open_store
s = open_store(sys.argv[1])
s.write({b"held": b"1"})
print("open", flush=True)
sys.stdin.readline()
s.close()
"""

TRY_OPEN = """
import sys, time
from persist.kvs import open_store
from persist.errors import StoreLocked
t = time.monotonic()
try:
    open_store(sys.argv[1])
except StoreLocked as e:
    print("locked %.3f %s" % (time.monotonic() - t, e))
else:
    print("opened")
"""


@pytest.mark.parametrize("advisory", [True, False], ids=["advisory-lock", "lease-only"])
def test_second_writer_process_is_refused_promptly(
    pg_server: PostgresServer, advisory: bool
) -> None:
    location = pg_location(pg_server)
    code = (
        HOLD_OPEN
        if advisory
        else HOLD_OPEN.replace(
            "s = open_store(sys.argv[1])",
            "from persist.kvs.postgresql import PostgreSQLStore\n"
            "s = PostgreSQLStore(sys.argv[1], advisory_lock=False)",
        )
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, location],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        out = subprocess.run(
            [sys.executable, "-c", TRY_OPEN, location], capture_output=True, text=True, timeout=60
        ).stdout
        assert out.startswith("locked "), out
        assert float(out.split()[1]) < 1.0
        assert _table(location) in out
        if not advisory:
            assert "lease generation 1" in out  # the holder and its lease are named
        with open_store(location, read_only=True) as reader:  # readers are never refused
            assert reader.get(b"held") == b"1"
    finally:
        holder.communicate("\n", timeout=30)
    with open_store(location) as store:  # released by the holder's close
        assert store.get(b"held") == b"1"


@pytest.mark.parametrize(
    "deletes", [[], [b"q"]], ids=["one fenced statement", "a fenced transaction"]
)
def test_takeover_of_an_expired_lease_fences_the_old_writer(
    pg_server: PostgresServer, deletes: list[bytes]
) -> None:
    location = pg_location(pg_server)
    lease_table = _table(location) + "_lease"
    old = PostgreSQLStore(location, advisory_lock=False)
    try:
        old.write({b"a": b"1"})
        admin = _admin(pg_server)
        admin.execute(f"UPDATE {lease_table} SET expires = now() - interval '1 second'")
        with PostgreSQLStore(location, advisory_lock=False) as new:
            assert admin.execute(f"SELECT generation FROM {lease_table}").fetchone() == (2,)
            with pytest.raises(StoreLocked, match="took over"):
                old.write({b"a": b"stale", b"z": b"stale"}, deletes=deletes)
            with pytest.raises(StoreLocked, match="no longer holds"):
                old.write({b"a": b"stale"})  # stepped down for good
            with pytest.raises(StoreLocked):
                old.compare_and_set(b"a", b"1", b"stale")
            assert not old.holds_lease() and new.holds_lease()
            old.close()  # must not release the new holder's lease
            new.write({b"b": b"2"})
            assert dict(new.scan()) == {b"a": b"1", b"b": b"2"}
    finally:
        old.close()


def test_a_batch_racing_a_takeover_never_commits(pg_server: PostgresServer) -> None:
    """The takeover is in flight (row locked, not committed) when the batch starts:
    the batch's fence waits for it, re-reads the row, matches nothing and rolls back."""
    location = pg_location(pg_server)
    table = _table(location)
    store = PostgreSQLStore(location, advisory_lock=False)
    try:
        store.write({b"a": b"1"})
        intruder = _admin(pg_server)
        intruder.execute("BEGIN")
        intruder.execute(
            f"UPDATE {table}_lease SET holder = 'intruder', generation = generation + 1"
        )
        outcome: list[BaseException | None] = []
        writer = threading.Thread(
            target=lambda: outcome.append(_attempt(store.write, {b"a": b"2", b"b": b"2"}))
        )
        writer.start()
        admin = _admin(pg_server)
        _wait_for(lambda: _waiting_on_lock(admin, "write", table))
        intruder.execute("COMMIT")
        writer.join(timeout=30)
        assert isinstance(outcome[0], StoreLocked)
        assert dict(admin.execute(f"SELECT k, v FROM {table}").fetchall()) == {b"a": b"1"}
    finally:
        store.close()


def _attempt(call: Callable[..., object], *args: object) -> BaseException | None:
    try:
        call(*args)
    except BaseException as exc:
        return exc
    return None


def _waiting_on_lock(admin: psycopg.Connection[Any], role: str, table: str) -> bool:
    rows = admin.execute(
        "SELECT 1 FROM pg_stat_activity WHERE application_name = %s AND wait_event_type = 'Lock'",
        (f"persist {role} {table}"[:63],),
    ).fetchall()
    return bool(rows)


def test_a_killed_holders_lease_is_taken_at_once(pg_server: PostgresServer) -> None:
    """With the advisory lock, a holder whose sessions are gone (a killed process)
    does not keep others out until its lease expires."""
    location = pg_location(pg_server)
    table = _table(location)
    old = open_store(location)
    try:
        old.write({b"a": b"1"})
        admin = _admin(pg_server)
        _terminate(admin, _backend_pids(admin, "lease", table))
        started = time.monotonic()
        with open_store(location) as new:  # the lease has ~20 s left; taken all the same
            assert time.monotonic() - started < 1.0
            assert admin.execute(f"SELECT generation FROM {table}_lease").fetchone() == (2,)
            with pytest.raises(StoreLocked):
                old.write({b"a": b"stale"})
            assert new.get(b"a") == b"1"
    finally:
        old.close()


def test_the_holder_steps_down_before_the_server_expires_its_lease(
    pg_server: PostgresServer,
) -> None:
    location = pg_location(pg_server)
    table = _table(location)
    with PostgreSQLStore(location, lease_seconds=2.0) as store:
        store.write({b"k": b"1"})
        blocker = _admin(pg_server)
        blocker.execute("BEGIN")
        blocker.execute(f"SELECT * FROM {table}_lease FOR UPDATE")  # renewals now fail
        _wait_for(lambda: not store.holds_lease(), timeout=5)
        expired = _admin(pg_server).execute(f"SELECT expires <= now() FROM {table}_lease")
        assert expired.fetchone() == (False,), "the server let the lease go first"
        started = time.monotonic()
        with pytest.raises(StoreLocked, match="own clock"):
            store.write({b"k": b"2"})  # refused at once: it does not wait for the row lock
        assert time.monotonic() - started < 0.5
        blocker.execute("ROLLBACK")
        time.sleep(0.6)  # a renewal now succeeds on the server, but the step-down is final
        with pytest.raises(StoreLocked):
            store.write({b"k": b"2"})
        assert store.get(b"k") == b"1"
    with open_store(location) as again:
        assert again.get(b"k") == b"1"


# -- lost connections ------------------------------------------------------------------


def test_a_connection_killed_mid_batch_fails_the_batch_whole(
    pg_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch blocks on a row lock in its second INSERT statement (its deletes and
    first chunk already ran in its transaction); then its backend is terminated."""
    monkeypatch.setattr(postgresql, "_CHUNK_BYTES", 10_000)
    location = pg_location(pg_server)
    table = _table(location)
    with open_store(location) as store:
        store.write({b"keep": b"old", b"gone": b"old", b"k0150": b"old"})
        before = dict(store.scan())
        locker = _admin(pg_server)
        locker.execute("BEGIN")
        locker.execute(f"SELECT * FROM {table} WHERE k = 'k0150' FOR UPDATE")
        batch = {b"k%04d" % i: b"v" * 100 for i in range(300)}  # ~36 KB: four INSERTs
        outcome: list[BaseException | None] = []
        writer = threading.Thread(
            target=lambda: outcome.append(_attempt(store.write, batch, [b"gone"]))
        )
        writer.start()
        admin = _admin(pg_server)
        _wait_for(lambda: _waiting_on_lock(admin, "write", table))
        _terminate(admin, _backend_pids(admin, "write", table))
        writer.join(timeout=30)
        locker.execute("ROLLBACK")
        error = outcome[0]
        assert isinstance(error, StoreIOError), error
        assert "lost the connection" in str(error) and "not applied" in str(error)
        assert isinstance(error.__cause__, psycopg.OperationalError)
        assert dict(store.scan()) == before  # none of it
        store.write({b"after": b"1"})  # the handle reconnects and still holds the lease
        assert store.get(b"after") == b"1"
    with open_store(location) as again:
        assert dict(again.scan()) == {**before, b"after": b"1"}


def test_stale_pooled_connections_are_replaced(pg_server: PostgresServer) -> None:
    location = pg_location(pg_server)
    table = _table(location)
    with open_store(location) as store:
        store.write({b"%03d" % i: b"x" for i in range(100)})
        assert store.get(b"001") == b"x" and len(list(store.scan())) == 100
        admin = _admin(pg_server)
        _terminate(admin, _backend_pids(admin, "read", table))
        assert store.get(b"002") == b"x"  # the dead idle connection is retried once
        _terminate(admin, _backend_pids(admin, "read", table))
        assert len(list(store.scan())) == 100


def test_a_connection_killed_under_a_snapshot_is_a_persist_error(
    pg_server: PostgresServer,
) -> None:
    location = pg_location(pg_server)
    table = _table(location)
    with open_store(location) as store:
        store.write({b"a": b"1"})
        snap = store.snapshot()
        admin = _admin(pg_server)
        _terminate(admin, _backend_pids(admin, "read", table))
        with pytest.raises(StoreIOError):
            snap.get(b"a")  # never silently re-pinned on a new connection
        snap.close()
        with store.snapshot() as again:
            assert again.get(b"a") == b"1"


# -- layout, opening, durability ---------------------------------------------------------


def test_multi_page_scan_is_one_snapshot(pg_server: PostgresServer) -> None:
    location = pg_location(pg_server)
    with open_store(location) as store:
        n = 2 * postgresql._PAGE_ROWS + 500
        store.write({b"k%05d" % i: b"old" for i in range(n)})
        scan = store.scan(b"k")
        first = [next(scan) for _ in range(postgresql._PAGE_ROWS + 10)]
        store.write({b"k%05d" % i: b"new" for i in range(n)}, deletes=[])
        store.write({b"k99999": b"added"}, deletes=[b"k00000"])
        rest = list(scan)
        assert len(first) + len(rest) == n
        assert {v for _, v in first + rest} == {b"old"}
        assert [k for k, _ in first + rest] == [b"k%05d" % i for i in range(n)]


def test_the_table_layout(pg_server: PostgresServer) -> None:
    location = pg_location(pg_server)
    table = _table(location)
    with open_store(location) as store:
        store.write({b"k": b"v"})
    admin = _admin(pg_server)
    rows = admin.execute(
        "SELECT attname, format_type(atttypid, atttypmod), attnotnull, attstorage "
        "FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 ORDER BY attnum",
        (table,),
    ).fetchall()
    assert rows == [("k", "bytea", True, "x"), ("v", "bytea", True, "e")]  # v: EXTERNAL
    assert admin.execute(f"SELECT k, v FROM {table}").fetchall() == [(b"k", b"v")]
    lease = admin.execute(f"SELECT id, generation, expires <= now() FROM {table}_lease")
    assert lease.fetchall() == [(1, 1, True)]  # released by close


def test_missing_stores_create_nothing(pg_server: PostgresServer) -> None:
    location = pg_location(pg_server)
    table = _table(location)
    with pytest.raises(StoreNotFound, match="no store at"):
        open_store(location, create=False)
    with pytest.raises(StoreNotFound, match="no store at"):
        open_store(location, read_only=True)
    count = _admin(pg_server).execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name LIKE %s", (table + "%",)
    )
    assert count.fetchone() == (0,)
    with pytest.raises(StoreNotFound):
        open_store(pg_server.uri("no_such_database", table="t"))


def test_a_table_of_another_shape_is_not_a_store(pg_server: PostgresServer) -> None:
    location = pg_location(pg_server)
    table = _table(location)
    admin = _admin(pg_server)
    admin.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, name text)")
    admin.execute(f"INSERT INTO {table} VALUES (1, 'mine')")
    for kw in ({}, {"read_only": True}):
        with pytest.raises(NotAStore, match=table):
            open_store(location, **kw)
    assert admin.execute(f"SELECT * FROM {table}").fetchall() == [(1, "mine")]
    lease = pg_location(pg_server)
    admin.execute(f"CREATE TABLE {_table(lease)}_lease (x int)")
    with pytest.raises(NotAStore, match="lease"):
        open_store(lease)


def test_unreachable_server_is_a_persist_error(tmp_path: Path) -> None:
    with pytest.raises(StoreIOError, match="cannot connect"):
        open_store(f"postgresql://postgres@/postgres?host={tmp_path}&table=t")


@pytest.mark.parametrize("durable", [True, False])
def test_synchronous_commit_follows_durable(pg_server: PostgresServer, durable: bool) -> None:
    with PostgreSQLStore(pg_location(pg_server), durable=durable) as store:
        assert store._writer is not None
        row = store._writer.conn.execute("SHOW synchronous_commit").fetchone()
        assert row == (("on",) if durable else ("off",))
        store.write({b"k": b"v"})
        assert store.get(b"k") == b"v"


ROLES = ("read", "write", "lease")


@pytest.mark.slow
def test_kill_minus_nine_of_a_writer(pg_server: PostgresServer) -> None:
    """tests/kvs/test_kill.py on PostgreSQL: SIGKILL a writer at random moments; every
    acknowledged batch survives whole, and the next writer opens at once (the killed
    holder's advisory lock is gone with its sessions, so its live lease is taken)."""
    location = pg_location(pg_server)
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(root))
    rng = random.Random(int.from_bytes(os.urandom(4)))
    admin, table = _admin(pg_server), _table(location)
    last, kills = -1, 5
    for _ in range(kills):
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.kvs.kill_child", location, str(last + 1)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=root,
        )
        assert proc.stdout is not None
        first = proc.stdout.readline()  # the child opened the store and wrote a batch
        assert first.endswith("\n"), proc.communicate()[1]
        acked = [int(first)]

        def read_acks(p: subprocess.Popen[str] = proc, acks: list[int] = acked) -> None:
            assert p.stdout is not None
            for line in p.stdout:
                if not line.endswith("\n"):  # cut by the kill: not an acknowledgement
                    break
                acks.append(int(line))

        reader = threading.Thread(target=read_acks)
        reader.start()
        time.sleep(rng.uniform(0, 0.15))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        reader.join()
        assert proc.returncode == -signal.SIGKILL
        # Unlike a file, the server may still commit the batch in flight after its client
        # died (its backend notices the closed socket only after the statement): check
        # once the dead writer's sessions are gone, as the next writer's takeover waits.
        _wait_for(lambda: not any(_backend_pids(admin, role, table) for role in ROLES))
        last = check_after_kill(location, acked[-1])
    assert last > kills


def test_reads_wait_for_a_free_connection_of_a_bounded_pool(pg_server: PostgresServer) -> None:
    location = pg_location(pg_server)
    table = _table(location)
    with PostgreSQLStore(location, max_readers=2) as store:
        store.write({b"%04d" % i: b"v" for i in range(200)})
        first, second = store.snapshot(), store.snapshot()  # both connections held
        got: list[object] = []
        reader = threading.Thread(target=lambda: got.append(store.get(b"0001")))
        reader.start()
        reader.join(timeout=0.3)
        assert reader.is_alive() and not got  # waiting, not opening a third connection
        assert len(_backend_pids(_admin(pg_server), "read", table)) == 2
        first.close()
        reader.join(timeout=10)
        assert got == [b"v"]
        scan = iter(store.scan())
        next(scan)  # a paged scan holds the other connection until it ends
        errors: list[BaseException | None] = []
        blocked = threading.Thread(target=lambda: errors.append(_attempt(store.get, b"0002")))
        blocked.start()
        blocked.join(timeout=0.3)
        assert blocked.is_alive()
        assert len(list(scan)) == 199  # the scan ends: its connection goes back to the pool
        blocked.join(timeout=10)
        assert errors == [None]
        second.close()


def _filenode(admin: psycopg.Connection[Any], table: str) -> int:
    row = admin.execute("SELECT pg_relation_filenode(%s)", (table,)).fetchone()
    assert row is not None
    return int(row[0])


def test_compact_rewrites_the_table(
    pg_server: PostgresServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """What a master-key rotation asks for afterwards: the deleted and overwritten rows
    leave the table's files (VACUUM FULL writes new ones); with a snapshot open the
    exclusive lock is not waited for forever: a plain VACUUM runs instead."""
    monkeypatch.setattr(postgresql, "_COMPACT_LOCK_WAIT", 0.5)
    location = pg_location(pg_server)
    table = _table(location)
    admin = _admin(pg_server)
    with open_store(location) as store:
        store.write({b"%04d" % i: b"old key material" * 20 for i in range(500)})
        store.write(
            {b"%04d" % i: b"new" for i in range(250)},
            deletes=[b"%04d" % i for i in range(250, 500)],
        )
        before = _filenode(admin, table)
        store.compact()
        assert _filenode(admin, table) != before
        assert dict(store.scan()) == {b"%04d" % i: b"new" for i in range(250)}
        with store.snapshot() as snap:
            held = _filenode(admin, table)
            started = time.monotonic()
            store.compact()  # does not wait for the snapshot to close
            assert time.monotonic() - started < 5
            assert _filenode(admin, table) == held
            assert snap.get(b"0001") == b"new"
        assert "plain VACUUM runs instead" in caplog.text
    with open_store(location, read_only=True) as reader:
        reader.compact()  # nothing to do for a reader
