"""A plain, unencrypted :class:`~persist.mux.WaveStore` over any kvs store.

The reference committer for multiplexer tests: each wave is one atomic kvs
batch, so the multiplexer's rules can be tested on real storage (and under
``kill -9``) independently of the encrypted trees.  Storage key: a 2-byte
table-name length, the UTF-8 table name, then the key.  Not for real data: it
encrypts nothing.
"""

from __future__ import annotations

import struct
import weakref
from collections.abc import Iterator, Mapping

from ..kvs.base import Snapshot, Store

__all__ = ["PlainWaveStore"]


def _prefix(table: str) -> bytes:
    name = table.encode()
    return struct.pack(">H", len(name)) + name


def _increment(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with ``prefix``."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


class _PlainState:
    """One committed state: a pinned snapshot of the store, closed when unreferenced."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        weakref.finalize(self, snapshot.close)

    def get(self, table: str, key: bytes) -> bytes | None:
        return self.snapshot.get(_prefix(table) + key)

    def scan(
        self, table: str, start: bytes | None, stop: bytes | None, reverse: bool
    ) -> Iterator[tuple[bytes, bytes]]:
        p = _prefix(table)
        lo = p + (start or b"")
        hi = p + stop if stop is not None else _increment(p)
        items = [(k[len(p) :], v) for k, v in self.snapshot.scan(lo, hi)]
        if reverse:
            items.reverse()
        return iter(items)

    def columns(
        self, table: str, start: bytes | None, stop: bytes | None
    ) -> Iterator[tuple[tuple[bytes, ...], tuple[bytes, ...]]]:
        items = list(self.scan(table, start, stop, False))
        runs = [items[i : i + 3] for i in range(0, len(items), 3)]  # runs of up to 3 entries
        return iter([(tuple(k for k, _ in run), tuple(v for _, v in run)) for run in runs])

    def count(self, table: str, pending: list[tuple[bytes, bool]] | None = None) -> int:
        n = sum(1 for _ in self.scan(table, None, None, False))
        for key, present in pending or ():
            n += present - (self.get(table, key) is not None)
        return n


class PlainWaveStore:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.waves_seen: list[int] = []
        self._state = _PlainState(store.snapshot())

    def state(self) -> _PlainState:
        return self._state

    def published(self) -> None:
        pass  # states close their snapshots when no reader holds them

    def commit_wave(self, number: int, changes: Mapping[str, Mapping[bytes, bytes | None]]) -> None:
        puts: list[tuple[bytes, bytes]] = []
        deletes: list[bytes] = []
        for table, tab in changes.items():
            p = _prefix(table)
            for key, value in tab.items():
                if value is None:
                    deletes.append(p + key)
                else:
                    puts.append((p + key, value))
        self.store.write(puts, deletes)
        self.waves_seen.append(number)
        self._state = _PlainState(self.store.snapshot())

    def get(self, table: str, key: bytes) -> bytes | None:
        return self.store.get(_prefix(table) + key)

    def scan(
        self, table: str, start: bytes | None, stop: bytes | None, reverse: bool
    ) -> Iterator[tuple[bytes, bytes]]:
        p = _prefix(table)
        lo = p + (start or b"")
        hi = p + stop if stop is not None else _increment(p)
        items = ((k[len(p) :], v) for k, v in self.store.scan(lo, hi))
        if reverse:
            yield from reversed(list(items))
        else:
            yield from items

    def count(self, table: str) -> int:
        return sum(1 for _ in self.scan(table, None, None, False))

    def close(self) -> None:
        self._state.snapshot.close()
        self.store.close()
