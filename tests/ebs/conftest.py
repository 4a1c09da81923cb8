"""Helpers for the ebs tests: weak-KDF stores over every backend, snapshots, faults.

Every store here uses the weak test KDF through the explicit flag, except the
one test in test_default_kdf.py.
"""

from __future__ import annotations

import random as _random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from persist.ebs import EncryptedStore, KdfParams
from persist.errors import StoreIOError
from persist.kvs import open_store
from persist.kvs.base import Snapshot, Store
from persist.kvs.memory import MemoryStore

WEAK = KdfParams.weak_for_tests()
PASSPHRASE = "correct horse battery staple"


def create(kvs: Store, passphrase: str | None = PASSPHRASE, **kw: Any) -> EncryptedStore:
    """A new store with the weak KDF (explicitly allowed) and no freshness record."""
    if passphrase is not None or "key" not in kw:
        kw.setdefault("kdf", WEAK)
        kw.setdefault("allow_weak_kdf", True)
    kw.setdefault("freshness", False)
    return EncryptedStore.create(kvs, passphrase, **kw)


def reopen(kvs: Store, passphrase: str | None = PASSPHRASE, **kw: Any) -> EncryptedStore:
    kw.setdefault("allow_weak_kdf", True)
    kw.setdefault("freshness", False)
    return EncryptedStore.open(kvs, passphrase, **kw)


def snapshot(kvs: Store) -> dict[bytes, bytes]:
    return dict(kvs.scan())


def restore(kvs: Store, rows: dict[bytes, bytes]) -> None:
    """Make the store hold exactly ``rows`` (what a host with a backup can do)."""
    current = snapshot(kvs)
    kvs.write(rows, [k for k in current if k not in rows])


def seeded(seed: int) -> Any:
    """A deterministic randomness source for ``_random=``."""
    rng = _random.Random(seed)
    return rng.randbytes


class FailingStore(Store):
    """Delegates to ``inner``; the ``fail_at``-th write raises StoreIOError unapplied.

    This is what a crash looks like to the next opener: the batches before
    landed, that one and everything after did not.
    """

    def __init__(self, inner: Store, fail_at: int) -> None:
        super().__init__(inner.location, durable=True, read_only=False)
        self.inner = inner
        self.fail_at = fail_at
        self.writes = 0

    def _get(self, key: bytes) -> bytes | None:
        return self.inner.get(key)

    def _scan(self, start: bytes, stop: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        return self.inner.scan(start, stop)

    def _write(self, puts: Iterator[tuple[bytes, bytes]], deletes: list[bytes]) -> None:
        self.writes += 1
        if self.writes == self.fail_at:
            raise StoreIOError("injected crash")
        self.inner.write(list(puts), deletes)

    def _snapshot(self) -> Snapshot:
        return self.inner.snapshot()

    def _compare_and_set(self, key: bytes, expected: bytes | None, new: bytes | None) -> bool:
        return self.inner.compare_and_set(key, expected, new)

    def _write_if(
        self,
        key: bytes,
        expected: bytes | None,
        puts: Iterator[tuple[bytes, bytes]],
        deletes: list[bytes],
    ) -> bool:
        return self.inner.write_if(key, expected, list(puts), deletes)

    def _close(self) -> None:
        pass


@pytest.fixture
def kvs(location: str) -> Iterator[Store]:
    """A fresh kvs store on each backend (the root conftest parametrizes ``backend``)."""
    store = open_store(location)
    yield store
    store.close()


@pytest.fixture
def mem() -> Iterator[Store]:
    """A fresh anonymous memory store, for tests about the ebs alone."""
    store = MemoryStore()
    yield store
    store.close()


@pytest.fixture
def fresh_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "freshness.json"
