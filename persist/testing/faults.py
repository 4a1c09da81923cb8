"""A store wrapper that fails on purpose (STYLE: wrappers implement what they wrap).

:class:`FaultyStore` presents the :class:`~persist.kvs.base.Store` interface
over any store and, when armed, makes the next write fail in one of three ways:

* ``mid_batch=k`` -- the iterable of puts raises after ``k`` pairs have been
  handed to the inner backend, *inside* its transaction: the batch must then
  leave no trace (this checks the backend's own atomicity);
* ``after_apply=True`` -- the inner write completes, then the call raises, as
  an ``fsync`` that reports failure after the data reached the OS does;
* otherwise the call raises before the inner store sees anything.

Faults fire once; ``fail_write_number(n)`` arms one for the n-th write.

:class:`PowerCutStore` records every batch that reached the inner store
(each one durable on return: the backends sync before ``write`` returns) and
calls ``after_sync`` after each, so a test can snapshot the files at every
sync point.  :func:`power_cut` rebuilds, on the memory oracle, what a power
cut leaves after the first ``n`` batches: everything later is lost, and the
batch in flight is dropped whole, as every backend's batch is atomic
(SQLite's WAL commit frame, LevelDB's log record, a PostgreSQL transaction);
tearing *inside* a batch is done on the real files (tests/torture/test_power.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from ..errors import StoreIOError
from ..kvs.base import Snapshot, Store
from ..kvs.memory import MemoryStore

#: One recorded batch: its puts in order and its deletes.
Batch = tuple[list[tuple[bytes, bytes]], list[bytes]]

__all__ = ["Batch", "FaultyStore", "InjectedFault", "PowerCutStore", "power_cut"]


class InjectedFault(StoreIOError):
    """The error a :class:`FaultyStore` raises by default."""


class _Plan:
    def __init__(
        self, at_write: int, mid_batch: int | None, after_apply: bool, exc: BaseException
    ) -> None:
        self.at_write = at_write
        self.mid_batch = mid_batch
        self.after_apply = after_apply
        self.exc = exc


class FaultyStore(Store):
    """Wraps ``inner``; every call is forwarded unless a fault is armed."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner.location, durable=inner.durable, read_only=inner.read_only)
        self.inner = inner
        self.writes = 0
        self.faults_fired = 0
        self._plans: list[_Plan] = []

    def fail_next_write(
        self,
        *,
        mid_batch: int | None = None,
        after_apply: bool = False,
        exc: BaseException | None = None,
    ) -> None:
        """Arm a fault for the next :meth:`write`."""
        self.fail_write_number(
            self.writes + 1, mid_batch=mid_batch, after_apply=after_apply, exc=exc
        )

    def fail_write_number(
        self,
        n: int,
        *,
        mid_batch: int | None = None,
        after_apply: bool = False,
        exc: BaseException | None = None,
    ) -> None:
        """Arm a fault for the ``n``-th write call (counting from 1 over the wrapper's life)."""
        fault = exc if exc is not None else InjectedFault("injected write failure")
        self._plans.append(_Plan(n, mid_batch, after_apply, fault))

    def _get(self, key: bytes) -> bytes | None:
        return self.inner.get(key)

    def _scan(self, start: bytes, stop: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        return self.inner.scan(start, stop)

    def _write(self, puts: Iterator[tuple[bytes, bytes]], deletes: list[bytes]) -> None:
        self.writes += 1
        plan = next((p for p in self._plans if p.at_write == self.writes), None)
        if plan is None:
            self.inner.write(puts, deletes)
            return
        self._plans.remove(plan)
        self.faults_fired += 1
        if plan.mid_batch is not None:
            self.inner.write(_explode_after(puts, plan.mid_batch, plan.exc), deletes)
            raise AssertionError("the inner store swallowed an exception from its puts")
        if plan.after_apply:
            self.inner.write(puts, deletes)
        raise plan.exc

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
        self.inner.close()


def _explode_after(
    puts: Iterable[tuple[bytes, bytes]], k: int, exc: BaseException
) -> Iterator[tuple[bytes, bytes]]:
    for i, pair in enumerate(puts):
        if i == k:
            raise exc
        yield pair
    raise exc


class PowerCutStore(FaultyStore):
    """A :class:`FaultyStore` that records every batch the inner store applied."""

    def __init__(self, inner: Store, after_sync: Callable[[int], None] | None = None) -> None:
        super().__init__(inner)
        self.batches: list[Batch] = []
        self.after_sync = after_sync

    def _applied(self, puts: list[tuple[bytes, bytes]], deletes: list[bytes]) -> None:
        self.batches.append((puts, deletes))
        if self.after_sync is not None:
            self.after_sync(len(self.batches))

    def _write(self, puts: Iterator[tuple[bytes, bytes]], deletes: list[bytes]) -> None:
        pairs = list(puts)
        super()._write(iter(pairs), deletes)
        self._applied(pairs, list(deletes))

    def _write_if(
        self,
        key: bytes,
        expected: bytes | None,
        puts: Iterator[tuple[bytes, bytes]],
        deletes: list[bytes],
    ) -> bool:
        pairs = list(puts)
        done = self.inner.write_if(key, expected, pairs, deletes)
        if done:
            self._applied(pairs, list(deletes))
        return done

    def _compare_and_set(self, key: bytes, expected: bytes | None, new: bytes | None) -> bool:
        done = self.inner.compare_and_set(key, expected, new)
        if done:
            self._applied([] if new is None else [(key, new)], [] if new is not None else [key])
        return done


def power_cut(batches: list[Batch], n: int) -> MemoryStore:
    """A memory store holding what survives a power cut after ``n`` durable batches."""
    store = MemoryStore()
    for puts, deletes in batches[:n]:
        store.write(puts, deletes)
    return store
