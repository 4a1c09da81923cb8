"""The in-memory backend: the reference implementation and the test oracle.

``memory:`` opens a fresh, anonymous store that vanishes when closed.
``memory:NAME`` opens a process-wide named store that survives ``close`` and
can be reopened by name (for tests of reopening); like a file store it admits
one writable handle at a time.  Nothing is ever durable across processes.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterator

from ..errors import StoreLocked, StoreNotFound
from .base import Snapshot, Store

__all__ = ["MemoryStore", "drop_named_store"]


class _Data:
    """The contents of one memory store: an immutable sorted snapshot plus a dict."""

    def __init__(self) -> None:
        self.map: dict[bytes, bytes] = {}
        self.sorted_keys: list[bytes] | None = []
        self.writer_open = False


_named: dict[str, _Data] = {}
_named_lock = threading.Lock()


def drop_named_store(name: str) -> None:
    """Forget the named memory store ``name`` (for test isolation)."""
    with _named_lock:
        _named.pop(name, None)


class MemoryStore(Store):
    """A dict with a lazily sorted key index; copy-on-write so scans are snapshots."""

    def __init__(self, name: str = "", *, durable: bool = True, read_only: bool = False) -> None:
        super().__init__(f"memory:{name}", durable=durable, read_only=read_only)
        self._lock = threading.Lock()
        self._name = name
        if not name:
            self._data = _Data()
        else:
            with _named_lock:
                data = _named.get(name)
                if data is None:
                    if read_only:
                        raise StoreNotFound(f"no store at {self.location}")
                    data = _named[name] = _Data()
                if not read_only:
                    if data.writer_open:
                        raise StoreLocked(f"store {self.location} is open for writing elsewhere")
                    data.writer_open = True
            self._data = data

    @staticmethod
    def exists(name: str) -> bool:
        """Whether the named store ``name`` exists (an anonymous one never does)."""
        with _named_lock:
            return bool(name) and name in _named

    def _get(self, key: bytes) -> bytes | None:
        return self._data.map.get(key)

    def _snapshot_state(self) -> tuple[dict[bytes, bytes], list[bytes]]:
        # The map is replaced, never mutated, by writers (copy-on-write), so a
        # reference taken under the lock is an immutable snapshot.
        with self._lock:
            data = self._data
            if data.sorted_keys is None:
                data.sorted_keys = sorted(data.map)
            return data.map, data.sorted_keys

    def _scan(self, start: bytes, stop: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        mapping, keys = self._snapshot_state()
        return _scan_frozen(mapping, keys, start, stop)

    def _snapshot(self) -> Snapshot:
        # The map is never mutated once replaced, so holding it pins the version;
        # its keys are sorted only if the snapshot is scanned.
        return _MemorySnapshot(self, self._data.map)

    def _write(self, puts: Iterator[tuple[bytes, bytes]], deletes: list[bytes]) -> None:
        staged = dict(puts)  # consumes (and checks) every pair before any change
        with self._lock:
            self._apply(staged, deletes)

    def _apply(self, staged: dict[bytes, bytes], deletes: list[bytes]) -> None:
        """REQUIRES: the lock."""
        data = self._data
        new = dict(data.map)
        for key in deletes:
            new.pop(key, None)
        new.update(staged)
        data.map = new
        data.sorted_keys = None

    def _write_if(
        self,
        key: bytes,
        expected: bytes | None,
        puts: Iterator[tuple[bytes, bytes]],
        deletes: list[bytes],
    ) -> bool:
        staged = dict(puts)
        with self._lock:
            if self._data.map.get(key) != expected:
                return False
            self._apply(staged, deletes)
            return True

    def _compare_and_set(self, key: bytes, expected: bytes | None, new: bytes | None) -> bool:
        with self._lock:
            if self._data.map.get(key) != expected:
                return False
            if new is None:
                self._apply({}, [key])
            else:
                self._apply({key: new}, [])
            return True

    def _close(self) -> None:
        if self._name and not self.read_only:
            with _named_lock:
                self._data.writer_open = False


def _scan_frozen(
    mapping: dict[bytes, bytes], keys: list[bytes], start: bytes, stop: bytes | None
) -> Iterator[tuple[bytes, bytes]]:
    lo = bisect.bisect_left(keys, start)
    hi = len(keys) if stop is None else bisect.bisect_left(keys, stop)
    for i in range(lo, hi):
        key = keys[i]
        yield key, mapping[key]


class _MemorySnapshot(Snapshot):
    """A reference to one immutable version of the map (writers copy on write)."""

    def __init__(self, store: Store, mapping: dict[bytes, bytes]) -> None:
        super().__init__(store)
        self._map = mapping
        self._keys: list[bytes] | None = None

    def _get(self, key: bytes) -> bytes | None:
        return self._map.get(key)

    def _scan(self, start: bytes, stop: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        keys = self._keys
        if keys is None:  # a benign race: two scans may both sort
            keys = self._keys = sorted(self._map)
        return _scan_frozen(self._map, keys, start, stop)

    def _close(self) -> None:
        self._map, self._keys = {}, []
