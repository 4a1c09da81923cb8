"""The target contract: where replicas live, as one small interface.

A **target** is a place that holds **containers**; a container holds the rows
of one database, byte for byte as the store holds them (``nonce || XAES-256-GCM
ciphertext`` under a 32-byte storage key), plus one piece of metadata, its
**lease record**.  A target is a kvs location (anything
:func:`persist.kvs.open_store` opens) or a directory (``dir:///abs/path``);
:mod:`persist.remote.locations` opens them, docs/remote.md draws their layout.

Contract (checked for every kind of target by :mod:`persist.testing.remote`):

1. **Rows.** A row key is ``bytes`` of 1 to :data:`MAX_ROW_KEY_SIZE` bytes, a
   value ``bytes`` of at most :data:`MAX_ROW_SIZE` bytes (exactly ``bytes``;
   ``bytearray`` and ``memoryview`` are refused).  Anything else raises
   :class:`TypeError` or :class:`ValueError` before anything is written.  Keys
   are ordered by unsigned byte order.
2. **Writes.** :meth:`Container.write` puts and deletes rows; among puts of one
   key the last wins, a key both put and deleted is a ValueError, deleting an
   absent row is not an error.  Each row is replaced whole: a reader sees its
   old or its new value, never a mix.  The batch is durable when ``write``
   returns.  It is atomic on kvs targets but **not on dir targets**, which
   apply it row by row: after an exception any subset of it may be applied.
   Callers that need an order write in that order (DESIGN §3 rule 5: nodes,
   then the root, then deletes).
3. **Reads.** :meth:`Container.get` sees every write that returned.
   :meth:`Container.scan` yields ``(key, value)`` ascending, ``start``
   inclusive, ``stop`` exclusive.  A scan need not be a snapshot: a row written
   or deleted while it runs may or may not be seen, but every row unchanged
   throughout is seen exactly once.  (On kvs targets a scan is a snapshot.)
   Close a scan you stop early (``contextlib.closing``): it holds files or a
   store handle open.
4. **Conditional operations.** :meth:`Container.compare_and_set` (one row),
   :meth:`Container.swap_lease` (the lease record) and
   :meth:`Container.write_if_lease` (a batch applied only while the lease
   record holds an expected value: the fencing primitive) are atomic and
   linearizable with respect to each other, across every handle in every
   process and host that reaches the target.  On kvs targets they are also
   atomic with respect to :meth:`Container.write`.  On dir targets a row that
   was ever given a value by a conditional operation lives in the container's
   state log (docs/remote.md) and stays there: later writes of it go through
   the log too and stay linearizable; only the *first* conditional operation on
   a row that ``write`` created is not ordered against a concurrent ``write``
   of that same row.  A conditional batch is small (the root switch of a push):
   at most :data:`MAX_CONDITIONAL_SIZE` bytes of rows.
5. **The lease record** is metadata of the container: opaque ``bytes`` of at
   most :data:`MAX_LEASE_RECORD_SIZE`, never a row, never seen by ``get`` or
   ``scan``, never copied with the container.  :mod:`persist.remote.lease`
   gives it its meaning.
6. **Containers.** A container is named by :func:`check_container_name`; the
   *default container* has the name ``""`` and always exists while the target
   does (on a kvs target it is the store itself, so a replica there opens with
   ``persist.open(location, read_only=True)``).  A named container exists from
   :meth:`Target.create_container` (or a copy into it) until
   :meth:`Target.delete_container`; reading a missing one finds nothing,
   writing to it raises :class:`~persist.errors.ContainerNotFound`.
   ``create`` of an existing empty container changes nothing; of one that
   holds rows it raises :class:`~persist.errors.ContainerExists` (it never
   overwrites a live database).  ``copy`` copies rows as ciphertext, no key
   needed, into a container that holds no rows and whose lease nobody holds.
7. **Sharing.** Every method may be called from any thread, and any number of
   handles in any number of processes may use one target at once.  A kvs
   target opens its store for the duration of each operation only, so that
   handles in other processes can take turns; it waits up to ``lock_timeout``
   for a store another process holds, then raises
   :class:`~persist.errors.StoreLocked`.
8. **Hostile bytes.** Everything read from a target may have been written by
   its host.  Metadata (lease records, dir layout markers, state logs,
   container markers, file names) is parsed strictly; what does not parse
   raises :class:`~persist.errors.IntegrityError`, never a crash and never a
   decision in the caller's favour.  Rows are returned as stored: the layers
   above authenticate them.
9. **Errors and closing.** Failures of the medium raise the
   :mod:`persist.errors` tree (``StoreIOError``: the outcome is unknown).
   After :meth:`Target.close` every method raises
   :class:`~persist.errors.ClosedError`; ``close`` is idempotent.

**asyncio.** Every blocking method ``f`` here has an ``af`` twin (``aget``,
``awrite``, ``ascan`` ...) that runs it in a worker thread, so the event loop
never blocks; the same naming rule holds across :mod:`persist.remote`.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Mapping
from types import TracebackType
from typing import Self, TypeAlias

from ..errors import ClosedError, ContainerNotFound, ReadOnlyError

__all__ = [
    "DEFAULT_CONTAINER",
    "MAX_CONDITIONAL_SIZE",
    "MAX_LEASE_RECORD_SIZE",
    "MAX_ROW_KEY_SIZE",
    "MAX_ROW_SIZE",
    "Container",
    "Progress",
    "Puts",
    "Rows",
    "Target",
    "check_container_name",
    "normalize_rows",
]

#: The longest row key: twice a storage key, and its hex form fits a file name.
MAX_ROW_KEY_SIZE = 64
#: The largest row (the ebs writes rows of at most about 64 KiB: chunks).
MAX_ROW_SIZE = 64 * 1024 * 1024
#: Bound on the rows of one conditional batch (and of a dir container's state log).
MAX_CONDITIONAL_SIZE = 16 * 1024 * 1024
#: Bound on a lease record (persist.remote.leaserecord writes 77 to 331 bytes).
MAX_LEASE_RECORD_SIZE = 4096
#: The name of the default container.
DEFAULT_CONTAINER = ""
#: Rows per batch when a container is copied.
COPY_BATCH_ROWS = 4096
COPY_BATCH_BYTES = 16 * 1024 * 1024

#: Container names: lower-case letters, digits, ``.``, ``_``, ``-``; 1 to 64
#: characters that start and end with a letter or digit.  Lower case only, so
#: that two names never meet on a case-insensitive file system or mount.
_NAME = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?")

Puts: TypeAlias = Mapping[bytes, bytes] | Iterable[tuple[bytes, bytes]]
#: What a scan returns: a generator, so that it can be closed early.
Rows: TypeAlias = Generator[tuple[bytes, bytes], None, None]
#: Called with the number of rows copied so far.
Progress: TypeAlias = Callable[[int], None]


def check_container_name(name: object) -> str:
    """Return ``name`` if it is a valid container name ("" is the default), else raise."""
    if not isinstance(name, str):
        raise TypeError(f"a container name is a str, not {type(name).__name__}")
    if name and not _NAME.fullmatch(name):
        raise ValueError(
            f"invalid container name {name!r}: use 1 to 64 of a-z 0-9 . _ -, "
            "starting and ending with a letter or digit"
        )
    return name


def check_row_key(key: object) -> bytes:
    if type(key) is not bytes:
        raise TypeError(f"row keys must be bytes, not {type(key).__name__}")
    if not 1 <= len(key) <= MAX_ROW_KEY_SIZE:
        raise ValueError(f"a row key is 1 to {MAX_ROW_KEY_SIZE} bytes, not {len(key)}")
    return key


def check_row_value(value: object) -> bytes:
    if type(value) is not bytes:
        raise TypeError(f"row values must be bytes, not {type(value).__name__}")
    if len(value) > MAX_ROW_SIZE:
        raise ValueError(f"a row is at most {MAX_ROW_SIZE} bytes, not {len(value)}")
    return value


def normalize_rows(puts: Puts, deletes: Iterable[bytes]) -> tuple[dict[bytes, bytes], list[bytes]]:
    """Check a batch whole, before any of it is written: ``(puts, deletes)``."""
    items: Iterable[tuple[bytes, bytes]] = puts.items() if isinstance(puts, Mapping) else puts
    checked: dict[bytes, bytes] = {}
    for pair in items:
        try:
            key, value = pair
        except (TypeError, ValueError):
            raise TypeError("puts must be (key, value) pairs") from None
        checked[check_row_key(key)] = check_row_value(value)
    dels = list(dict.fromkeys(check_row_key(k) for k in deletes))
    if any(k in checked for k in dels):
        raise ValueError("a key may not be both put and deleted in one batch")
    return checked, dels


class Container(abc.ABC):
    """The rows and the lease record of one database on a target (module contract)."""

    def __init__(self, target: Target, name: str) -> None:
        self.target = target
        self.name = check_container_name(name)
        self._owns_target = False

    @property
    def location(self) -> str:
        """``TARGET#name``, or ``TARGET`` for the default container."""
        return self.target.location + (f"#{self.name}" if self.name else "")

    # -- what each kind of target implements --------------------------------------

    @abc.abstractmethod
    def _get(self, key: bytes) -> bytes | None: ...

    @abc.abstractmethod
    def _scan(self, start: bytes, stop: bytes | None) -> Rows: ...

    @abc.abstractmethod
    def _write(self, puts: dict[bytes, bytes], deletes: list[bytes]) -> None: ...

    @abc.abstractmethod
    def _compare_and_set(self, key: bytes, expected: bytes | None, new: bytes | None) -> bool: ...

    @abc.abstractmethod
    def _read_lease(self) -> bytes | None: ...

    @abc.abstractmethod
    def _swap_lease(self, expected: bytes | None, new: bytes | None) -> bool: ...

    @abc.abstractmethod
    def _write_if_lease(
        self, expected: bytes, puts: dict[bytes, bytes], deletes: list[bytes]
    ) -> bool: ...

    @abc.abstractmethod
    def _exists(self) -> bool: ...

    # -- the public surface -------------------------------------------------------

    def get(self, key: bytes) -> bytes | None:
        """The row stored under ``key``, or ``None`` when there is none."""
        self._check_open()
        return self._get(check_row_key(key))

    def scan(self, start: bytes = b"", stop: bytes | None = None) -> Rows:
        """``(key, value)`` with ``start <= key < stop``, ascending (contract rule 3)."""
        self._check_open()
        if type(start) is not bytes or (stop is not None and type(stop) is not bytes):
            raise TypeError("scan bounds must be bytes")
        if stop is not None and stop <= start:
            return _no_rows()
        return self._scan(start, stop)

    def write(self, puts: Puts = (), deletes: Iterable[bytes] = ()) -> None:
        """Put and delete rows, durably on return (contract rule 2: atomic only on kvs)."""
        self._check_writable()
        checked, dels = normalize_rows(puts, deletes)
        if checked or dels:
            self._write(checked, dels)

    def delete(self, keys: Iterable[bytes]) -> None:
        """Delete rows (absent ones are not an error), durably on return."""
        self.write(deletes=keys)

    def compare_and_set(self, key: bytes, expected: bytes | None, new: bytes | None) -> bool:
        """Set row ``key`` to ``new`` (``None``: delete) if it holds ``expected``
        (``None``: absent); return whether it did.  Atomic (contract rule 4)."""
        self._check_writable()
        check_row_key(key)
        if expected is not None:
            check_row_value(expected)
        if new is not None:
            check_row_value(new)
        return self._compare_and_set(key, expected, new)

    def read_lease(self) -> bytes | None:
        """The stored lease record, unparsed; ``None`` when there is none."""
        self._check_open()
        return self._read_lease()

    def swap_lease(self, expected: bytes | None, new: bytes | None) -> bool:
        """Replace the lease record if it holds ``expected``; return whether it did."""
        self._check_writable()
        for value in (expected, new):
            if value is not None:
                _check_lease_bytes(value)
        return self._swap_lease(expected, new)

    def write_if_lease(
        self, expected: bytes, puts: Puts = (), deletes: Iterable[bytes] = ()
    ) -> bool:
        """Apply a batch only if the lease record is byte for byte ``expected``.

        The check and the batch are one atomic step on every kind of target
        (docs/remote.md, "Fencing"), so a holder whose lease was taken over
        writes nothing.  Returns whether the batch was applied.  The rows of
        the batch total at most :data:`MAX_CONDITIONAL_SIZE` bytes.
        """
        self._check_writable()
        _check_lease_bytes(expected)
        checked, dels = normalize_rows(puts, deletes)
        size = sum(len(k) + len(v) for k, v in checked.items()) + sum(len(k) for k in dels)
        if size > MAX_CONDITIONAL_SIZE:
            raise ValueError(f"a conditional batch is at most {MAX_CONDITIONAL_SIZE} bytes")
        return self._write_if_lease(expected, checked, dels)

    def write_atomic(self, puts: Puts = (), deletes: Iterable[bytes] = ()) -> None:
        """Apply a small batch (a push's root switch) as one atomic step, durably.

        On kvs targets every batch is atomic; on dir targets this one goes
        through the state log like :meth:`write_if_lease`, without its lease
        check.  At most :data:`MAX_CONDITIONAL_SIZE` bytes of rows.
        """
        self._check_writable()
        checked, dels = normalize_rows(puts, deletes)
        size = sum(len(k) + len(v) for k, v in checked.items()) + sum(len(k) for k in dels)
        if size > MAX_CONDITIONAL_SIZE:
            raise ValueError(f"an atomic batch is at most {MAX_CONDITIONAL_SIZE} bytes")
        if checked or dels:
            self._write_atomic(checked, dels)

    def _write_atomic(self, puts: dict[bytes, bytes], deletes: list[bytes]) -> None:
        self._write(puts, deletes)  # atomic on kvs targets (contract rule 2)

    def _session(self) -> contextlib.AbstractContextManager[object]:
        """Keep what the target needs open for a sequence of operations (a push):
        a kvs target then opens its store once, not once per call."""
        return contextlib.nullcontext()

    def exists(self) -> bool:
        """Whether the container exists (the default container does while its target does)."""
        self._check_open()
        return self._exists()

    def holds_rows(self) -> bool:
        """Whether the container holds at least one row (a live database)."""
        self._check_open()
        with contextlib.closing(self.scan()) as rows:
            return next(rows, None) is not None

    # -- lifecycle ------------------------------------------------------------------

    def close(self) -> None:
        """Close the target too when this handle came from ``open_container``."""
        if self._owns_target:
            self.target.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _check_open(self) -> None:
        self.target._check_open()

    def _check_writable(self) -> None:
        self.target._check_writable()

    def _missing(self) -> ContainerNotFound:
        return ContainerNotFound(f"no container {self.location}")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.location!r}>"

    # -- asyncio twins (module docstring) -------------------------------------------

    async def aget(self, key: bytes) -> bytes | None:
        return await asyncio.to_thread(self.get, key)

    async def ascan(
        self, start: bytes = b"", stop: bytes | None = None, *, batch: int = 256
    ) -> AsyncIterator[tuple[bytes, bytes]]:
        """The rows of :meth:`scan`, fetched ``batch`` at a time in a worker thread."""
        rows = await asyncio.to_thread(self.scan, start, stop)
        try:
            while True:
                chunk = await asyncio.to_thread(_take, rows, batch)
                for item in chunk:
                    yield item
                if len(chunk) < batch:
                    return
        finally:
            await asyncio.to_thread(rows.close)

    async def awrite(self, puts: Puts = (), deletes: Iterable[bytes] = ()) -> None:
        await asyncio.to_thread(self.write, puts, deletes)

    async def awrite_atomic(self, puts: Puts = (), deletes: Iterable[bytes] = ()) -> None:
        await asyncio.to_thread(self.write_atomic, puts, deletes)

    async def adelete(self, keys: Iterable[bytes]) -> None:
        await asyncio.to_thread(self.delete, keys)

    async def acompare_and_set(self, key: bytes, expected: bytes | None, new: bytes | None) -> bool:
        return await asyncio.to_thread(self.compare_and_set, key, expected, new)

    async def aread_lease(self) -> bytes | None:
        return await asyncio.to_thread(self.read_lease)

    async def aswap_lease(self, expected: bytes | None, new: bytes | None) -> bool:
        return await asyncio.to_thread(self.swap_lease, expected, new)

    async def awrite_if_lease(
        self, expected: bytes, puts: Puts = (), deletes: Iterable[bytes] = ()
    ) -> bool:
        return await asyncio.to_thread(self.write_if_lease, expected, puts, deletes)

    async def aexists(self) -> bool:
        return await asyncio.to_thread(self.exists)

    async def aholds_rows(self) -> bool:
        return await asyncio.to_thread(self.holds_rows)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)


def _no_rows() -> Rows:
    yield from ()


def _take(rows: Rows, n: int) -> list[tuple[bytes, bytes]]:
    out = []
    for item in rows:
        out.append(item)
        if len(out) == n:
            break
    return out


def _check_lease_bytes(value: object) -> None:
    if type(value) is not bytes:
        raise TypeError(f"a lease record is bytes, not {type(value).__name__}")
    if not 1 <= len(value) <= MAX_LEASE_RECORD_SIZE:
        raise ValueError(f"a lease record is 1 to {MAX_LEASE_RECORD_SIZE} bytes")


class CopySink(abc.ABC):
    """Where :meth:`Target.copy_container` puts rows: a container being filled.

    REQUIRES: ``commit`` or ``abort`` is called exactly once.  Until
    ``commit``, the rows are not visible as the destination container on a dir
    target (they are staged); on a kvs target they are, in a container that
    ``list`` does not show yet.
    """

    @abc.abstractmethod
    def put(self, rows: list[tuple[bytes, bytes]]) -> None: ...

    @abc.abstractmethod
    def commit(self) -> None: ...

    @abc.abstractmethod
    def abort(self) -> None: ...


class Target(abc.ABC):
    """A place holding containers (module contract).  Open one with
    :func:`persist.remote.open_target`."""

    #: The target's location, without a container name.
    location: str
    read_only: bool

    def __init__(self, location: str, *, read_only: bool) -> None:
        self.location = location
        self.read_only = read_only
        self._closed = False

    # -- what each kind of target implements --------------------------------------

    @abc.abstractmethod
    def _container(self, name: str) -> Container: ...

    @abc.abstractmethod
    def _list(self) -> list[str]: ...

    @abc.abstractmethod
    def _create(self, name: str) -> None: ...

    @abc.abstractmethod
    def _delete(self, name: str, force: bool) -> None: ...

    @abc.abstractmethod
    def _sink(self, name: str) -> CopySink:
        """A sink for a copy into container ``name``.

        Raises ContainerExists when it holds rows and LeaseHeld when its lease
        is held."""

    @abc.abstractmethod
    def _close(self) -> None: ...

    def _copy_within(
        self, name: str, dest: Target, dest_name: str, progress: Progress | None
    ) -> int | None:
        """A faster (or the only possible) copy between two containers of one
        store; ``None`` when this target has none for ``dest``."""
        return None

    # -- the public surface -------------------------------------------------------

    def container(self, name: str = DEFAULT_CONTAINER) -> Container:
        """A handle on container ``name``; it need not exist (see :meth:`Container.exists`)."""
        self._check_open()
        return self._container(check_container_name(name))

    def list_containers(self) -> list[str]:
        """The names of the named containers, sorted (the default one is not listed)."""
        self._check_open()
        return sorted(self._list())

    def create_container(self, name: str = DEFAULT_CONTAINER) -> Container:
        """Create container ``name`` unless it exists; ContainerExists if it holds rows."""
        self._check_writable()
        self._create(check_container_name(name))
        return self._container(name)

    def delete_container(self, name: str = DEFAULT_CONTAINER, *, force: bool = False) -> None:
        """Delete container ``name``: its rows and its lease (the default
        container is emptied, not removed).

        Raises ContainerNotFound when it does not exist and LeaseHeld when its
        lease is held, unless ``force``.  Deleting the lease first fences out
        its holder: a holder's conditional batch after the delete fails.
        """
        self._check_writable()
        self._delete(check_container_name(name), force)

    def copy_container(
        self,
        name: str,
        dest: Target,
        dest_name: str = DEFAULT_CONTAINER,
        *,
        progress: Progress | None = None,
    ) -> int:
        """Copy the rows of container ``name`` into ``dest_name`` on ``dest``
        (this target or another); return the number of rows copied.

        Rows are copied as stored (ciphertext: no key needed); the lease is
        not copied.  The destination is created if missing and must hold no
        rows (ContainerExists) and have no held lease (LeaseHeld).  The copy is
        consistent when nothing writes the source meanwhile; a kvs source is
        read from one snapshot in any case.  An interrupted copy leaves nothing
        on a dir destination and a partial container that ``delete_container``
        removes on a kvs destination.
        """
        self._check_open()
        dest._check_writable()
        check_container_name(name)
        check_container_name(dest_name)
        if dest is self and name == dest_name:
            raise ValueError("a container cannot be copied onto itself")
        source = self._container(name)
        if not source._exists():
            raise source._missing()
        fast = self._copy_within(name, dest, dest_name, progress)
        if fast is not None:
            return fast
        sink = dest._sink(dest_name)
        try:
            copied = copy_rows(source.scan(), sink.put, progress)
            sink.commit()
        except BaseException:
            sink.abort()
            raise
        return copied

    def close(self) -> None:
        """Release the target.  Idempotent."""
        if not self._closed:
            self._closed = True
            self._close()

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"target {self.location} is closed")

    def _check_writable(self) -> None:
        self._check_open()
        if self.read_only:
            raise ReadOnlyError(f"target {self.location} is open read-only")

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("read-only" if self.read_only else "open")
        return f"<{type(self).__name__} {self.location!r} {state}>"

    # -- asyncio twins --------------------------------------------------------------

    async def alist_containers(self) -> list[str]:
        return await asyncio.to_thread(self.list_containers)

    async def acreate_container(self, name: str = DEFAULT_CONTAINER) -> Container:
        return await asyncio.to_thread(self.create_container, name)

    async def adelete_container(
        self, name: str = DEFAULT_CONTAINER, *, force: bool = False
    ) -> None:
        await asyncio.to_thread(lambda: self.delete_container(name, force=force))

    async def acopy_container(
        self,
        name: str,
        dest: Target,
        dest_name: str = DEFAULT_CONTAINER,
        *,
        progress: Progress | None = None,
    ) -> int:
        return await asyncio.to_thread(
            lambda: self.copy_container(name, dest, dest_name, progress=progress)
        )

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)


def copy_rows(
    rows: Rows,
    put: Callable[[list[tuple[bytes, bytes]]], None],
    progress: Progress | None,
) -> int:
    """Feed ``rows`` to ``put`` in batches of bounded count and size; return the count."""
    copied = 0
    batch: list[tuple[bytes, bytes]] = []
    size = 0
    with contextlib.closing(rows):
        for key, value in rows:
            batch.append((key, value))
            size += len(key) + len(value)
            if len(batch) >= COPY_BATCH_ROWS or size >= COPY_BATCH_BYTES:
                put(batch)
                copied += len(batch)
                batch, size = [], 0
                if progress is not None:
                    progress(copied)
    if batch:
        put(batch)
        copied += len(batch)
    if progress is not None:
        progress(copied)
    return copied
