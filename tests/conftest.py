"""Shared fixtures: one parametrized fixture runs a test on every kvs backend."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from persist.kvs import open_store
from persist.kvs.memory import drop_named_store
from persist.testing.kvs import StoreFactory

settings.register_profile(
    "default", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile("default")

BACKENDS = ["memory", "sqlite", "leveldb"]


def location_for(backend: str, tmp_path: Path) -> str:
    if backend == "memory":
        return f"memory:{uuid.uuid4().hex}"
    if backend == "sqlite":
        return str(tmp_path / "store.db")
    return f"leveldb://{tmp_path / 'store.ldb'}"


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def location(backend: str, tmp_path: Path) -> Iterator[str]:
    loc = location_for(backend, tmp_path)
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
