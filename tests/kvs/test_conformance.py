"""Every backend against the kvs contract (persist.testing.kvs) and the memory oracle."""

from __future__ import annotations

import shutil
import tempfile
import uuid

import pytest
from hypothesis import settings

from persist.kvs import open_store
from persist.testing.kvs import StoreConformance, StoreFactory, oracle_state_machine


class TestConformance(StoreConformance):
    """Runs once per backend through the parametrized ``store_factory`` of conftest."""


def _fresh_factory(backend: str) -> StoreFactory:
    if backend == "memory":
        loc = f"memory:{uuid.uuid4().hex}"
    else:
        tmp = tempfile.mkdtemp(prefix="persist-oracle-")
        _cleanup.append(tmp)
        loc = f"{tmp}/s.db" if backend == "sqlite" else f"leveldb://{tmp}/s.ldb"
    return StoreFactory(open=lambda **kw: open_store(loc, **kw))


_cleanup: list[str] = []


@pytest.fixture(autouse=True, scope="module")
def _remove_temp_dirs() -> object:
    yield
    for d in _cleanup:
        shutil.rmtree(d, ignore_errors=True)


_machine_settings = settings(max_examples=25, stateful_step_count=30, deadline=None)

TestSQLiteAgainstOracle = _machine_settings(
    oracle_state_machine(lambda: _fresh_factory("sqlite"))
).TestCase
TestLevelDBAgainstOracle = _machine_settings(
    oracle_state_machine(lambda: _fresh_factory("leveldb"))
).TestCase
TestMemoryAgainstOracle = _machine_settings(
    oracle_state_machine(lambda: _fresh_factory("memory"))
).TestCase
