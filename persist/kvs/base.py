"""The key-value store contract: the least common denominator of every backend.

A :class:`Store` maps ``bytes`` keys to ``bytes`` values.  It sees only opaque
bytes: no plaintext, no key material, no structure.  Everything above it
(the encrypted byte store, the trees) is written against this module alone.

Contract (checked for every backend by :mod:`persist.testing.kvs`):

1. **Order.** Keys are ordered by unsigned byte order (``memcmp``, a shorter
   key before any key it prefixes).  ``b""`` is a valid key and sorts first.
2. **Types.** Keys and values are ``bytes`` (exactly; ``bytearray`` and
   ``memoryview`` are refused) or :class:`TypeError` is raised before anything
   is written.  Keys longer than :data:`MAX_KEY_SIZE` raise :class:`ValueError`.
3. **Atomic batches.** :meth:`Store.write` applies all its puts and deletes or
   none of them, even when the process is killed mid-write or the iterable of
   puts raises while being consumed.  A key may not be both put and deleted in
   one batch (:class:`ValueError`); among puts of the same key the last wins.
4. **Durability.** When the store was opened ``durable=True`` (the default),
   a batch is on stable storage when :meth:`Store.write` returns: it survives
   ``kill -9`` and power loss.  With ``durable=False`` a batch survives a
   killed process but the last batches may be lost on power loss; the store is
   never corrupted.  Use it for tests and bulk imports only.
5. **Snapshots.** :meth:`Store.scan` yields from a consistent snapshot taken no
   later than its first item: a batch written during the scan is seen whole or
   not at all.  :meth:`Store.get` sees every batch whose ``write`` returned.
6. **Threads.** Every method may be called from any thread.  Writes are
   serialized by the store; reads do not wait for a write in flight.  An
   unfinished scan holds its snapshot until the iterator is exhausted or
   closed: close it (or use ``contextlib.closing``) when stopping early.
7. **One writer.** Opening a store for writing while another handle, in this
   or another process, has it open for writing raises
   :class:`~persist.errors.StoreLocked` promptly.  Read-only handles never
   take the writer's lock; whether they may coexist with a writer is
   backend-specific (SQLite: yes; LevelDB: no, it raises ``StoreLocked``).
8. **Errors.** Backend exceptions are translated into :mod:`persist.errors`
   (``raise ... from``).  After :meth:`Store.close`, every method but ``close``
   raises :class:`~persist.errors.ClosedError`; ``close`` is idempotent.
9. **Pinned snapshots.** :meth:`Store.snapshot` returns a :class:`Snapshot`:
   a read-only view that reflects every batch whose ``write`` returned before
   the call and no later one, for as long as it stays open, whatever is
   written meanwhile.  Its ``get`` and ``scan`` may be called from any thread
   (concurrently; a backend that must serialize them does so itself) and never
   wait for a write in flight.  Close it when done: an open snapshot may keep
   old versions alive in the backend (SQLite WAL frames, a LevelDB snapshot, a
   PostgreSQL transaction).  Closing the store closes its snapshots; their
   later calls raise :class:`~persist.errors.ClosedError`.
10. **Compare-and-set.** :meth:`Store.compare_and_set` replaces one key's value
    only if it still holds the expected one (``None``: absent), atomically with
    respect to every other write of any handle, and durably when the store is
    durable.  It is how leases are taken and renewed (DESIGN §2.1, §2.6).
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator, Mapping
from types import TracebackType
from typing import Self, TypeAlias

from ..errors import ClosedError, ReadOnlyError

__all__ = [
    "MAX_KEY_SIZE",
    "RESERVED_PREFIX",
    "Puts",
    "Snapshot",
    "Store",
    "check_key",
    "check_value",
    "normalize_batch",
]

#: The longest key every backend must accept.  PostgreSQL's b-tree index limits
#: keys to about 2.7 kB, so the contract fixes a portable bound well below it.
MAX_KEY_SIZE = 1024

#: Keys from here up are the remote layer's bookkeeping in a replica target (container
#: markers, lease records, named containers: docs/remote.md); the encrypted store
#: never writes there (its keys are 32 bytes) and verify does not count them as rows.
RESERVED_PREFIX = b"\xff" * 16 + b"persist-remote"

#: The puts of a batch: a mapping or an iterable of ``(key, value)`` pairs.
Puts: TypeAlias = Mapping[bytes, bytes] | Iterable[tuple[bytes, bytes]]


def check_key(key: object) -> bytes:
    """Return ``key`` if it is a valid store key, else raise TypeError/ValueError."""
    if type(key) is not bytes:
        raise TypeError(f"store keys must be bytes, not {type(key).__name__}")
    if len(key) > MAX_KEY_SIZE:
        raise ValueError(f"store key of {len(key)} bytes exceeds {MAX_KEY_SIZE}")
    return key


def check_value(value: object) -> bytes:
    """Return ``value`` if it is ``bytes``, else raise TypeError."""
    if type(value) is not bytes:
        raise TypeError(f"store values must be bytes, not {type(value).__name__}")
    return value


def normalize_batch(
    puts: Puts, deletes: Iterable[bytes]
) -> tuple[Iterator[tuple[bytes, bytes]], list[bytes]]:
    """Check a batch's deletes and return ``(lazily checked puts, deletes)``.

    The puts stay lazy so a backend can stream a large batch into its
    transaction; each pair is type-checked as it is consumed, so a bad pair
    raises inside the backend's transaction and the batch is rolled back.
    """
    dels = [check_key(k) for k in deletes]
    dset = frozenset(dels)
    items: Iterable[tuple[bytes, bytes]] = puts.items() if isinstance(puts, Mapping) else puts

    def checked() -> Iterator[tuple[bytes, bytes]]:
        for pair in items:
            try:
                key, value = pair
            except (TypeError, ValueError):
                raise TypeError("puts must be (key, value) pairs") from None
            check_key(key)
            check_value(value)
            if key in dset:
                raise ValueError("a key may not be both put and deleted in one batch")
            yield key, value

    return checked(), dels


class Snapshot(abc.ABC):
    """A read-only, pinned view of a store (contract rule 9).

    Get one with :meth:`Store.snapshot`; use it as a context manager or call
    :meth:`close`.  ``get`` and ``scan`` behave as the store's own, over the
    pinned state.
    """

    def __init__(self, store: Store) -> None:
        self.location = store.location
        self._store = store
        self._closed = False

    @abc.abstractmethod
    def _get(self, key: bytes) -> bytes | None: ...

    @abc.abstractmethod
    def _scan(self, start: bytes, stop: bytes | None) -> Iterator[tuple[bytes, bytes]]: ...

    @abc.abstractmethod
    def _close(self) -> None:
        """Release the backend's resources; the store may be closed already."""

    def get(self, key: bytes) -> bytes | None:
        """The value of ``key`` in the pinned state, or ``None`` when absent."""
        self._check_open()
        return self._get(check_key(key))

    def scan(self, start: bytes = b"", stop: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """``(key, value)`` of the pinned state with ``start <= key < stop``, ascending."""
        self._check_open()
        check_key(start)
        if stop is not None:
            check_key(stop)
            if stop <= start:
                return iter(())
        return self._scan_checked(start, stop)

    def _scan_checked(self, start: bytes, stop: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        for item in self._scan(start, stop):
            if self._closed or self._store.closed:
                raise ClosedError(f"a snapshot of {self.location} was closed during a scan")
            yield item

    def close(self) -> None:
        """Release the pinned state.  Idempotent."""
        if not self._closed:
            self._closed = True
            self._close()

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed or self._store.closed:
            raise ClosedError(f"the snapshot of {self.location} is closed")

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
        return f"<{type(self).__name__} of {self.location!r}{' closed' if self._closed else ''}>"


class Store(abc.ABC):
    """An ordered byte key-value store.  See the module docstring for the contract."""

    #: The location string the store was opened with (never contains secrets).
    location: str
    durable: bool
    read_only: bool

    def __init__(self, location: str, *, durable: bool, read_only: bool) -> None:
        self.location = location
        self.durable = durable
        self.read_only = read_only
        self._closed = False

    # -- the operations every backend implements -------------------------------

    @abc.abstractmethod
    def _get(self, key: bytes) -> bytes | None: ...

    @abc.abstractmethod
    def _scan(self, start: bytes, stop: bytes | None) -> Iterator[tuple[bytes, bytes]]: ...

    @abc.abstractmethod
    def _write(self, puts: Iterator[tuple[bytes, bytes]], deletes: list[bytes]) -> None: ...

    @abc.abstractmethod
    def _close(self) -> None: ...

    @abc.abstractmethod
    def _snapshot(self) -> Snapshot: ...

    @abc.abstractmethod
    def _compare_and_set(self, key: bytes, expected: bytes | None, new: bytes | None) -> bool:
        """REQUIRES: serialized with every write of this handle (the backend's write lock)."""

    @abc.abstractmethod
    def _write_if(
        self,
        key: bytes,
        expected: bytes | None,
        puts: Iterator[tuple[bytes, bytes]],
        deletes: list[bytes],
    ) -> bool:
        """REQUIRES: the check and the batch in one transaction of the backend."""

    # -- the public surface, with the checks every backend shares --------------

    def get(self, key: bytes) -> bytes | None:
        """Return the value stored under ``key``, or ``None`` when it is absent."""
        self._check_open()
        return self._get(check_key(key))

    def scan(self, start: bytes = b"", stop: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Yield ``(key, value)`` with ``start <= key < stop`` in ascending order.

        ``stop=None`` scans to the end.  An empty range yields nothing.
        """
        self._check_open()
        check_key(start)
        if stop is not None:
            check_key(stop)
            if stop <= start:
                return iter(())
        return self._scan_checked(start, stop)

    def _scan_checked(self, start: bytes, stop: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        for item in self._scan(start, stop):
            if self._closed:
                raise ClosedError(f"store {self.location} was closed during a scan")
            yield item

    def write(self, puts: Puts = (), deletes: Iterable[bytes] = ()) -> None:
        """Apply ``puts`` and ``deletes`` as one atomic batch (durable on return).

        Deleting an absent key is not an error.  On any exception nothing of
        the batch is visible, except :class:`~persist.errors.StoreIOError`
        after which the batch may or may not have been applied.
        """
        self._check_open()
        if self.read_only:
            raise ReadOnlyError(f"store {self.location} is open read-only")
        checked_puts, dels = normalize_batch(puts, deletes)
        self._write(checked_puts, dels)

    def snapshot(self) -> Snapshot:
        """A pinned, read-only view of the store as it is now (contract rule 9)."""
        self._check_open()
        return self._snapshot()

    def compare_and_set(self, key: bytes, expected: bytes | None, new: bytes | None) -> bool:
        """Set ``key`` to ``new`` (``None``: delete) if it holds ``expected`` (``None``: absent).

        Returns whether it did.  Atomic with respect to every other write,
        durable on return when the store is durable (contract rule 10).
        """
        self._check_open()
        if self.read_only:
            raise ReadOnlyError(f"store {self.location} is open read-only")
        check_key(key)
        if expected is not None:
            check_value(expected)
        if new is not None:
            check_value(new)
        return self._compare_and_set(key, expected, new)

    def compact(self) -> None:
        """Drop what the backend still keeps of deleted and overwritten rows, where it can.

        Called after a master-key rotation (docs/security.md).  The default
        does nothing; SQLite checkpoints and truncates its WAL (its deleted
        cells were already zeroed: ``secure_delete``), LevelDB compacts.
        """
        self._check_open()

    @property
    def canonical_location(self) -> str:
        """One spelling of this store's location for all the ways to name it (a
        resolved path, a normalized URI): the key of its freshness record."""
        return self.location

    def write_if(
        self,
        key: bytes,
        expected: bytes | None,
        puts: Puts = (),
        deletes: Iterable[bytes] = (),
    ) -> bool:
        """Apply the batch only if ``key`` holds ``expected`` (``None``: absent); whether it did.

        The check and the batch are one atomic step (contract rule 11); the
        batch may itself change ``key``.
        """
        self._check_open()
        if self.read_only:
            raise ReadOnlyError(f"store {self.location} is open read-only")
        check_key(key)
        if expected is not None:
            check_value(expected)
        checked_puts, dels = normalize_batch(puts, deletes)
        return self._write_if(key, expected, checked_puts, dels)

    def close(self) -> None:
        """Release the store.  Idempotent; later calls of other methods raise ClosedError."""
        if not self._closed:
            self._closed = True
            self._close()

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"store {self.location} is closed")

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
