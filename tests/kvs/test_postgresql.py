"""The PostgreSQL backend on a real server: the conformance suite and the oracle.

tests/kvs/test_conformance.py runs the suite through the shared backend
fixture with the defaults; here it runs again with the advisory lock off, the
way the backend runs on CockroachDB and YugabyteDB: one writer by the lease
row alone.
"""

from __future__ import annotations

import pytest
from hypothesis import settings

from persist.kvs import open_store
from persist.kvs.postgresql import PostgreSQLStore
from persist.testing.kvs import StoreConformance, StoreFactory, oracle_state_machine
from persist.testing.pgserver import PostgresServer

from ..conftest import pg_location


class TestLeaseOnlyConformance(StoreConformance):
    """The whole kvs contract, unchanged, with no advisory lock: the lease row alone."""

    @pytest.fixture
    def store_factory(self, pg_server: PostgresServer) -> StoreFactory:
        location = pg_location(pg_server)
        return StoreFactory(
            open=lambda **kw: PostgreSQLStore(location, advisory_lock=False, **kw)
        )


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
