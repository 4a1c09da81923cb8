"""A replica container read as a kvs store, so the ebs and verify can open it.

:class:`ContainerStore` presents any :class:`~persist.remote.target.Container`
as a read-only :class:`~persist.kvs.base.Store`: ``persist verify TARGET`` and
:func:`persist.remote.restore` open a replica through it on every kind of
target (a dir target has no store of its own).  Its snapshot is a snapshot on
kvs targets only; on a dir target it reads the live files (target contract
rule 3), so a verify that runs while someone pushes may see rows of the push
in flight as orphans.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ..errors import ReadOnlyError
from ..kvs.base import Snapshot, Store
from .target import Container

__all__ = ["ContainerStore"]


class ContainerStore(Store):
    """The rows of ``container`` as a read-only Store (module docstring)."""

    def __init__(self, container: Container, *, owns: bool = False) -> None:
        super().__init__(container.location, durable=True, read_only=True)
        self.container = container
        self._owns = owns
        self._hold = contextlib.ExitStack()
        self._hold.enter_context(container._session())

    @property
    def canonical_location(self) -> str:
        return "replica:" + self.container.location

    def _get(self, key: bytes) -> bytes | None:
        if not 1 <= len(key) <= 64:
            return None  # no row of a target has such a key
        return self.container.get(key)

    def _scan(self, start: bytes, stop: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        with contextlib.closing(self.container.scan(start, stop)) as rows:
            yield from rows

    def _write(self, puts: Iterator[tuple[bytes, bytes]], deletes: list[bytes]) -> None:
        raise ReadOnlyError("a replica is opened read-only")

    def _compare_and_set(self, key: bytes, expected: bytes | None, new: bytes | None) -> bool:
        raise ReadOnlyError("a replica is opened read-only")

    def _write_if(
        self,
        key: bytes,
        expected: bytes | None,
        puts: Iterator[tuple[bytes, bytes]],
        deletes: list[bytes],
    ) -> bool:
        raise ReadOnlyError("a replica is opened read-only")

    def _snapshot(self) -> Snapshot:
        return _LiveSnapshot(self)

    def _close(self) -> None:
        self._hold.close()
        if self._owns:
            self.container.close()


class _LiveSnapshot(Snapshot):
    """Reads through to the container (a snapshot only where its scans are)."""

    def __init__(self, store: ContainerStore) -> None:
        super().__init__(store)
        self._view = store

    def _get(self, key: bytes) -> bytes | None:
        return self._view._get(key)

    def _scan(self, start: bytes, stop: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        return self._view._scan(start, stop)

    def _close(self) -> None:
        pass
