"""Shared fixtures: one parametrized fixture runs a test on every kvs backend.

The PostgreSQL backend runs against one real server per test session
(``pg_server``, started on first use, stopped at the end, and by its watchdog
if the test process dies); each test gets a fresh table in it.
"""

from __future__ import annotations

import atexit
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from persist.kvs import open_store
from persist.kvs.memory import drop_named_store
from persist.testing.kvs import StoreFactory
from persist.testing.pgserver import REQUIRE_ENV, PostgresServer, ServerUnavailable, start_server

settings.register_profile(
    "default", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile("default")

BACKENDS = ["memory", "sqlite", "leveldb", "postgresql"]

#: The database of the session's PostgreSQL server that the tests' tables live in.
PG_DATABASE = "persist_tests"


def location_for(backend: str, tmp_path: Path, pg: PostgresServer | None = None) -> str:
    if backend == "memory":
        return f"memory:{uuid.uuid4().hex}"
    if backend == "sqlite":
        return str(tmp_path / "store.db")
    if backend == "postgresql":
        if pg is None:
            raise ValueError("a postgresql location needs the pg_server fixture")
        return pg_location(pg)
    return f"leveldb://{tmp_path / 'store.ldb'}"


def pg_location(pg: PostgresServer, **params: str) -> str:
    """A fresh store (a new table name) in the session server's test database."""
    return pg.uri(PG_DATABASE, table=f"t_{uuid.uuid4().hex[:20]}", **params)


def _no_server(reason: str) -> None:
    """Fail where a server is required (CI), else skip with the reason: never silently."""
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{REQUIRE_ENV}=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the whole session (persist.testing.pgserver)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _no_server("psycopg is not installed (pip install -e '.[test]')")
    try:
        server = start_server()
    except ServerUnavailable as exc:
        _no_server(f"no PostgreSQL server can run here: {exc}")
        raise
    atexit.register(server.stop)  # the watchdog also stops it if this process is killed
    try:
        server.create_database(PG_DATABASE)
        yield server
    finally:
        server.stop()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def location(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    pg = request.getfixturevalue("pg_server") if backend == "postgresql" else None
    loc = location_for(backend, tmp_path, pg)
    yield loc
    if loc.startswith("memory:"):
        drop_named_store(loc[len("memory:") :])


@pytest.fixture
def store_factory(location: str, backend: str) -> StoreFactory:
    return StoreFactory(
        open=lambda **kw: open_store(location, **kw),
        persistent=True,
        reader_with_writer=backend != "leveldb",
    )
