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
from .base import Store

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

    def _get(self, key: bytes) -> bytes | None:
        return self._data.map.get(key)

    def _snapshot(self) -> tuple[dict[bytes, bytes], list[bytes]]:
        # The map is replaced, never mutated, by writers (copy-on-write), so a
        # reference taken under the lock is an immutable snapshot.
        with self._lock:
            data = self._data
            if data.sorted_keys is None:
                data.sorted_keys = sorted(data.map)
            return data.map, data.sorted_keys

    def _scan(self, start: bytes, stop: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        mapping, keys = self._snapshot()
        lo = bisect.bisect_left(keys, start)
        hi = len(keys) if stop is None else bisect.bisect_left(keys, stop)
        for i in range(lo, hi):
            key = keys[i]
            yield key, mapping[key]

    def _write(self, puts: Iterator[tuple[bytes, bytes]], deletes: list[bytes]) -> None:
        staged = dict(puts)  # consumes (and checks) every pair before any change
        with self._lock:
            data = self._data
            new = dict(data.map)
            for key in deletes:
                new.pop(key, None)
            new.update(staged)
            data.map = new
            data.sorted_keys = None

    def _close(self) -> None:
        if self._name and not self.read_only:
            with _named_lock:
                self._data.writer_open = False
