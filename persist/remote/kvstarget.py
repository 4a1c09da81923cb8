"""Targets on a kvs store: SQLite, LevelDB, memory:NAME, and whatever open_store opens.

Layout: :mod:`persist.remote.namespace` (the default container is the store's
own key space below a reserved prefix; named containers, markers and lease
records live above it).

**Sessions.** A store admits one writable handle at a time (kvs contract rule
7), and a target is shared by processes that each want to write now and then
(a holder renewing, a contender taking over, ``persist lease show``).  So a
:class:`KvsTarget` holds no handle while it is idle: an operation opens the
store, and the last operation of this process that uses it closes it again.
Opening waits up to ``lock_timeout`` (with backoff) while another process
has the store.  Operations of one process running at the same time share one
handle (so a write while a scan is open does not wait for the scan); on SQLite
and memory stores a read opens a read-only handle of its own instead, which
never waits for a writer.  On LevelDB every handle takes the lock, so an open
scan keeps other processes out until it is closed.

**Fencing** (:meth:`KvsContainer._write_if_lease`).  On a store whose writable
handle excludes every other writer while it is open -- SQLite (the ``-lock``
file's ``flock``), LevelDB (its ``LOCK`` file), memory (its writer flag) --
reading the lease record and writing the batch through one writable handle,
under this target's lock for such sequences, are atomic: no other process can
write while the handle is open, and no other thread of this one between them.
Any other backend must offer a conditional batch, ``write_if(key, expected, puts, deletes) -> bool``
applied in one transaction (docs/remote.md, "A conditional batch in the kvs
contract"); without it fenced writes raise :class:`~persist.errors.StoreError`.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

from ..errors import (
    ContainerExists,
    IntegrityError,
    LeaseHeld,
    StoreError,
    StoreLocked,
)
from ..kvs import display_location, open_store, parse_location
from ..kvs.base import Store
from .leaserecord import lease_is_held
from .namespace import (
    MARKER_VALUE,
    RESERVED_PREFIX,
    NamespaceStore,
    container_marker_key,
    container_rows_prefix,
    lease_key,
    marker_range,
)
from .target import Container, CopySink, Progress, Rows, Target, check_container_name, copy_rows

__all__ = ["EXCLUSIVE_WRITER_SCHEMES", "KvsContainer", "KvsTarget"]

#: Backends whose open writable handle keeps every other writer out.
EXCLUSIVE_WRITER_SCHEMES = frozenset({"sqlite", "leveldb", "memory"})
#: Rows deleted per batch when a container is deleted.
_DELETE_BATCH = 10_000


class KvsTarget(Target):
    """A target on the store at a kvs location (module docstring)."""

    def __init__(
        self, location: str, *, create: bool, read_only: bool, lock_timeout: float
    ) -> None:
        scheme, rest = parse_location(location)
        if scheme == "memory" and not rest:
            raise ValueError("an anonymous memory: target vanishes between operations; name it")
        super().__init__(location, read_only=read_only)
        self.lock_timeout = lock_timeout
        self._scheme = scheme
        on_disk = scheme in ("sqlite", "leveldb")
        self._identity = (scheme, os.path.realpath(rest) if on_disk else rest)
        self._rng = random.Random()
        # Readers of SQLite and memory stores have handles of their own.
        self._private_reads = scheme in ("sqlite", "memory")
        self._handle_lock = threading.Lock()
        self._shared: Store | None = None
        self._users = 0
        #: Serializes this process's read-check-write sequences (fencing,
        #: lease swaps, container creation and deletion).
        self.sequence_lock = threading.RLock()
        # Proves that the store exists (or creates it) and is a store.
        self._open(read_only=read_only or not create, create=create and not read_only).close()

    # -- sessions -------------------------------------------------------------------

    def _open(self, *, read_only: bool, create: bool = False) -> Store:
        """Open the store, waiting while another handle has it (up to lock_timeout)."""
        deadline = time.monotonic() + self.lock_timeout
        pause = 0.001
        while True:
            try:
                return open_store(self.location, read_only=read_only, create=create)
            except StoreLocked:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise
                time.sleep(min(left, pause * self._rng.uniform(0.5, 1.5)))
                pause = min(pause * 2, 0.05)

    @contextlib.contextmanager
    def session(self, *, write: bool) -> Iterator[Store]:
        """The store, open for one operation (writable when ``write``)."""
        if write:
            self._check_writable()
        else:
            self._check_open()
        if not write and self._private_reads:
            with self._open(read_only=True) as store:
                yield store
            return
        with self._handle_lock:
            if self._shared is None:
                self._shared = self._open(read_only=self.read_only)
            self._users += 1
            store = self._shared
        try:
            yield store
        finally:
            with self._handle_lock:
                self._users -= 1
                if not self._users:
                    self._shared = None
                    store.close()

    # -- containers -----------------------------------------------------------------

    def _container(self, name: str) -> KvsContainer:
        return KvsContainer(self, name)

    def _list(self) -> list[str]:
        lo, hi = marker_range()
        names = []
        with self.session(write=False) as store:
            for key, value in store.scan(lo, hi):
                name = _marker_name(key)
                if value != MARKER_VALUE:
                    raise IntegrityError(f"the marker of container {name!r} is malformed")
                names.append(name)
        return names

    def _create(self, name: str) -> None:
        with self.sequence_lock, self.session(write=True) as store:
            view = self._container(name).view(store)
            if _any_row(view):
                raise ContainerExists(
                    f"container {display_location(self._container(name).location)} holds rows"
                )
            if name:
                store.compare_and_set(container_marker_key(name), None, MARKER_VALUE)

    def _delete(self, name: str, force: bool) -> None:
        container = self._container(name)
        with self.sequence_lock, self.session(write=True) as store:
            if not container.exists_in(store):
                raise container._missing()
            stored = store.get(lease_key(name))
            if not force and lease_is_held(stored):
                raise LeaseHeld(
                    f"the lease of {display_location(container.location)} is held", stored
                )
            # The marker and the lease go first: the container stops being
            # listed, and its lease holder is fenced out, before any row goes.
            meta = [lease_key(name)]
            if name:
                meta.append(container_marker_key(name))
            store.write(deletes=meta)
            view = container.view(store)
            batch: list[bytes] = []
            with contextlib.closing(_rows(view)) as rows:
                for key, _ in rows:
                    batch.append(key)
                    if len(batch) == _DELETE_BATCH:
                        view.write(deletes=batch)
                        batch = []
            if batch:
                view.write(deletes=batch)

    def _sink(self, name: str) -> CopySink:
        return _KvsSink(self._container(name))

    def _copy_within(
        self, name: str, dest: Target, dest_name: str, progress: Progress | None
    ) -> int | None:
        if not isinstance(dest, KvsTarget) or dest._identity != self._identity:
            return None
        # One store: one writable handle reads the source and writes the copy
        # (two handles would exclude each other on LevelDB).
        target = dest._container(dest_name)
        with dest.sequence_lock, dest.session(write=True) as store:
            _check_copy_destination(target, store)
            source = self._container(name).view(store)
            view = target.view(store)
            copied = copy_rows(_rows(source), view.write, progress)
            if dest_name:
                store.write({container_marker_key(dest_name): MARKER_VALUE})
        return copied

    def _close(self) -> None:
        pass


class KvsContainer(Container):
    """A container of a :class:`KvsTarget`."""

    target: KvsTarget

    def view(self, store: Store) -> NamespaceStore:
        """This container's rows in ``store`` as a Store (it does not own ``store``)."""
        if self.name:
            return NamespaceStore(store, container_rows_prefix(self.name), owns_inner=False)
        return NamespaceStore(store, b"", below=RESERVED_PREFIX, owns_inner=False)

    def exists_in(self, store: Store) -> bool:
        if not self.name:
            return True
        return store.get(container_marker_key(self.name)) is not None or _any_row(self.view(store))

    @contextlib.contextmanager
    def _writing(self) -> Iterator[Store]:
        """A writable session on a container that exists, for one sequence."""
        with self.target.sequence_lock, self.target.session(write=True) as store:
            if self.name and store.get(container_marker_key(self.name)) is None:
                raise self._missing()
            yield store

    def _session(self) -> contextlib.AbstractContextManager[object]:
        if self.target.read_only:
            return contextlib.nullcontext()
        return self.target.session(write=True)

    def _get(self, key: bytes) -> bytes | None:
        with self.target.session(write=False) as store:
            return self.view(store).get(key)

    def _scan(self, start: bytes, stop: bytes | None) -> Rows:
        # The session lasts as long as the generator; the store's scan is one
        # snapshot (kvs contract rule 5).
        with self.target.session(write=False) as store:
            yield from _rows(self.view(store), start, stop)

    def _write(self, puts: dict[bytes, bytes], deletes: list[bytes]) -> None:
        with self._writing() as store:
            self.view(store).write(puts, deletes)

    def _compare_and_set(self, key: bytes, expected: bytes | None, new: bytes | None) -> bool:
        with self._writing() as store:
            return self.view(store).compare_and_set(key, expected, new)

    def _read_lease(self) -> bytes | None:
        with self.target.session(write=False) as store:
            return store.get(lease_key(self.name))

    def _swap_lease(self, expected: bytes | None, new: bytes | None) -> bool:
        with self._writing() as store:
            return store.compare_and_set(lease_key(self.name), expected, new)

    def _write_if_lease(
        self, expected: bytes, puts: dict[bytes, bytes], deletes: list[bytes]
    ) -> bool:
        with self._writing() as store:
            if self.target._scheme in EXCLUSIVE_WRITER_SCHEMES:
                # This handle excludes every other writer until it closes: the
                # check and the batch cannot be separated (module docstring).
                if store.get(lease_key(self.name)) != expected:
                    return False
                self.view(store).write(puts, deletes)
                return True
            view = self.view(store)
            write_if = cast(Callable[..., Any] | None, getattr(store, "write_if", None))
            if write_if is None:
                raise StoreError(
                    f"{self.target._scheme} stores offer no conditional batch (write_if), "
                    "which fenced writes need"
                )
            return bool(
                write_if(
                    lease_key(self.name),
                    expected,
                    {view.prefix + k: v for k, v in puts.items()},
                    [view.prefix + k for k in deletes],
                )
            )

    def _exists(self) -> bool:
        with self.target.session(write=False) as store:
            return self.exists_in(store)


class _KvsSink(CopySink):
    """Copies into a kvs container; the marker is written last, so a partial
    copy is never listed (delete_container removes it)."""

    def __init__(self, container: KvsContainer) -> None:
        self._container = container
        with container.target.sequence_lock, container.target.session(write=True) as store:
            _check_copy_destination(container, store)

    def put(self, rows: list[tuple[bytes, bytes]]) -> None:
        with self._container.target.session(write=True) as store:
            self._container.view(store).write(rows)

    def commit(self) -> None:
        if self._container.name:
            with self._container.target.session(write=True) as store:
                store.write({container_marker_key(self._container.name): MARKER_VALUE})

    def abort(self) -> None:
        pass


def _check_copy_destination(container: KvsContainer, store: Store) -> None:
    if _any_row(container.view(store)):
        raise ContainerExists(f"container {display_location(container.location)} holds rows")
    stored = store.get(lease_key(container.name))
    if lease_is_held(stored):
        raise LeaseHeld(f"the lease of {display_location(container.location)} is held", stored)


def _rows(view: Store, start: bytes = b"", stop: bytes | None = None) -> Rows:
    it = view.scan(start, stop)
    try:
        yield from it
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


def _any_row(view: Store) -> bool:
    with contextlib.closing(_rows(view)) as rows:
        return next(rows, None) is not None


def _marker_name(key: bytes) -> str:
    lo, _ = marker_range()
    raw = key[len(lo) :]
    bad = IntegrityError(f"a container marker has a malformed key ({key.hex()})")
    if len(raw) < 2 or not raw.endswith(b"\x00"):
        raise bad
    try:
        return check_container_name(raw[:-1].decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise bad from None
