"""A container of a kvs target is itself a Store: the kvs contract holds through it.

STYLE: wrappers implement what they wrap.  ``NamespaceStore`` runs the whole
``StoreConformance`` suite over every kvs backend, as the default container
(the store's keys below the reserved prefix) and as a named one (a prefix).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

import persist
from persist.kvs import open_store
from persist.kvs.base import MAX_KEY_SIZE
from persist.kvs.memory import drop_named_store
from persist.remote import open_container, open_target
from persist.remote.namespace import (
    RESERVED_PREFIX,
    NamespaceStore,
    container_rows_prefix,
    lease_key,
)
from persist.testing.kvs import StoreConformance, StoreFactory, oracle_state_machine
from persist.testing.remote import held_record

BACKENDS = ["sqlite", "leveldb", "memory"]


def _location(backend: str, tmp_path: Path) -> str:
    if backend == "sqlite":
        return str(tmp_path / "store.db")
    if backend == "leveldb":
        return f"leveldb://{tmp_path / 'store.ldb'}"
    return f"memory:{uuid.uuid4().hex}"


def _view(location: str, prefix: bytes, **kw: object) -> NamespaceStore:
    inner = open_store(location, **kw)  # type: ignore[arg-type]
    if prefix:
        return NamespaceStore(inner, prefix)
    return NamespaceStore(inner, b"", below=RESERVED_PREFIX)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=["default", "named"])
def prefix(request: pytest.FixtureRequest) -> bytes:
    return b"" if request.param == "default" else container_rows_prefix("c1")


@pytest.fixture
def store_factory(backend: str, prefix: bytes, tmp_path: Path) -> Iterator[StoreFactory]:
    location = _location(backend, tmp_path)
    with open_store(location) as store:  # neighbours the view must never see
        store.write({container_rows_prefix("c0") + b"x": b"0", lease_key("c1"): b"L"})
        store.write({container_rows_prefix("c2") + b"": b"2", b"\xff" * 40: b"past"})
    yield StoreFactory(
        open=lambda **kw: _view(location, prefix, **kw),
        persistent=True,
        reader_with_writer=backend != "leveldb",
    )
    with open_store(location) as store:  # ... and never touched
        assert store.get(container_rows_prefix("c0") + b"x") == b"0"
        assert store.get(lease_key("c1")) == b"L"
        assert store.get(container_rows_prefix("c2")) == b"2"
    if location.startswith("memory:"):
        drop_named_store(location[len("memory:") :])


class TestNamespaceStore(StoreConformance):
    def test_overlong_key_is_refused(self, store_factory: StoreFactory) -> None:  # type: ignore[override]
        """Kvs rule 2 with this view's own bound: MAX_KEY_SIZE less its prefix
        (the kvs suite hard-codes MAX_KEY_SIZE; docs/remote.md proposes
        ``Store.max_key_size``)."""
        with store_factory.open() as store:
            assert isinstance(store, NamespaceStore)
            bound = store.max_key_size
            assert bound == MAX_KEY_SIZE - len(store.prefix)
            store.write({b"k" * bound: b"max is fine"})
            with pytest.raises(ValueError):
                store.write({b"a": b"1", b"k" * (bound + 1): b"v"})
            with pytest.raises(ValueError):
                store.get(b"k" * (bound + 1))
            assert store.get(b"k" * bound) == b"max is fine"
            assert store.get(b"a") is None


def test_the_default_view_refuses_the_reserved_range(tmp_path: Path) -> None:
    with _view(str(tmp_path / "s.db"), b"") as view:
        for key in (RESERVED_PREFIX, RESERVED_PREFIX + b"L\x00", b"\xff" * 16 + b"z"):
            with pytest.raises(ValueError):
                view.write({b"ok": b"1", key: b"x"})
            with pytest.raises(ValueError):
                view.get(key)
        assert view.get(b"ok") is None
        view.write({b"\xff" * 16 + b"persist-remote"[:-1]: b"just below"})
        assert [v for _, v in view.scan()] == [b"just below"]


def _fresh_named_view() -> StoreFactory:
    location = f"memory:{uuid.uuid4().hex}"
    with open_store(location) as store:
        store.write({container_rows_prefix("c0") + b"\x00": b"n", RESERVED_PREFIX: b"r"})
    return StoreFactory(open=lambda **kw: _view(location, container_rows_prefix("c1"), **kw))


TestNamedViewAgainstOracle = settings(max_examples=25, stateful_step_count=30, deadline=None)(
    oracle_state_machine(_fresh_named_view)
).TestCase


@pytest.mark.parametrize("backend", ["sqlite", "leveldb"])
def test_a_replica_in_the_default_container_opens_as_a_database(
    backend: str, tmp_path: Path
) -> None:
    """Rows copied into a kvs target's default container are a store, byte for
    byte: persist.open reads the replica, next to named containers and a lease."""
    source = str(tmp_path / "source.db")
    kdf = persist.ebs.KdfParams.weak_for_tests()
    with persist.open(source, "pw", kdf=kdf, allow_weak_kdf=True, freshness=False) as db:
        t = db.table("accounts")
        for i in range(500):
            t[i] = f"balance {i}"
        db.root["name"] = "wallet"
    replica = _location(backend, tmp_path / "replica")
    (tmp_path / "replica").mkdir()
    with open_target(source) as src, open_target(replica, create=True) as dst:
        copied = src.copy_container("", dst, "")
        dst.copy_container("", dst, "side")  # a named container in the same store
        assert dst.container("").swap_lease(None, held_record())
    with open_store(source, read_only=True) as s:
        assert copied == len(list(s.scan()))
    with persist.open(replica, "pw", read_only=True, allow_weak_kdf=True, freshness=False) as db:
        assert db.root["name"] == "wallet"
        assert dict(db.table("accounts").items()) == {i: f"balance {i}" for i in range(500)}
    with (
        open_container(replica + "#side", read_only=True) as side,
        open_store(source, read_only=True) as s,
    ):
        assert list(side.scan()) == list(s.scan())
