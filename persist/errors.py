"""The one exception hierarchy of persist.

Everything raised because of stored data or the environment derives from
:class:`PersistError`.  A caller's own mistake (a wrong type, a bad argument)
raises the builtin exception instead (``TypeError``, ``ValueError``).

The tree, in the spirit of trio's "you closed it / something outside broke /
two users collided":

* :class:`ClosedError` -- the object was closed by its user.
* :class:`StoreError` -- the storage environment failed or refused:
  :class:`StoreLocked` (another writer holds it), :class:`StoreExists`,
  :class:`StoreNotFound`,
  :class:`NotAStore`, :class:`StoreFull`, :class:`StoreIOError`,
  :class:`ReadOnlyError`.
* :class:`IntegrityError` -- stored bytes are damaged, tampered with or out of
  date: :class:`RollbackDetected`, :class:`ForkDetected`,
  :class:`WrongDatabase`, :class:`CorruptStore`.
* :class:`WrongPassphrase` -- the key material does not open this store.
* :class:`NotFound` -- a missing entry; also a :class:`KeyError`.
* :class:`CommitFailed` -- a commit failed; the database is poisoned until
  reopened.
* :class:`RotationUnfinished` -- an interrupted master-key rotation awaits
  ``resume_rekey`` or ``abort_rekey``.
* :class:`LeaseError` -- two writers collided over a remote target's lease:
  :class:`LeaseHeld` (another holder has it), :class:`LeaseLost` (this holder
  no longer has it; nothing was written).

Containers of a remote target (docs/remote.md) reuse the store errors:
:class:`ContainerExists` is a :class:`StoreExists`, :class:`ContainerNotFound`
a :class:`StoreNotFound`.

Messages never contain key material, passphrases or plaintext.
"""

from __future__ import annotations

__all__ = [
    "ClosedError",
    "CommitFailed",
    "ContainerExists",
    "ContainerNotFound",
    "CorruptStore",
    "ForkDetected",
    "IntegrityError",
    "LeaseError",
    "LeaseHeld",
    "LeaseLost",
    "NotAStore",
    "NotFound",
    "PersistError",
    "ReadOnlyError",
    "RollbackDetected",
    "RotationUnfinished",
    "SchemaError",
    "StoreError",
    "StoreExists",
    "StoreFull",
    "StoreIOError",
    "StoreLocked",
    "StoreNotFound",
    "WrongDatabase",
    "WrongPassphrase",
]


class PersistError(Exception):
    """Root of every error persist raises for stored data or the environment."""


class ClosedError(PersistError):
    """The store or database was closed; open it again to use it."""


class StoreError(PersistError):
    """The storage backend failed or refused an operation."""


class StoreExists(StoreError):
    """A new store was to be created where one already exists."""


class ContainerExists(StoreExists):
    """A container to be created or copied into already holds a database (rows)."""


class StoreLocked(StoreError):
    """Another writer (process or open handle) holds the store."""


class StoreNotFound(StoreError):
    """No store exists at the location (and creating one was not allowed)."""


class ContainerNotFound(StoreNotFound):
    """The named container does not exist on the remote target."""


class NotAStore(StoreError):
    """Something exists at the location, but it is not a store of this kind."""


class StoreFull(StoreError):
    """The disk or the backend is out of space; the batch was not written."""


class StoreIOError(StoreError):
    """An I/O error from the backend; the batch may or may not be durable."""


class ReadOnlyError(StoreError):
    """A write was attempted on a store or database opened read-only."""


class IntegrityError(PersistError):
    """Stored data failed authentication or a structural check.

    Decryption failures carry no detail that could serve as an oracle.
    """


class CorruptStore(IntegrityError):
    """The backend itself reports its files as corrupt."""


class RollbackDetected(IntegrityError):
    """The store is older than the freshness record says it must be."""


class ForkDetected(IntegrityError):
    """The store has diverged from the history the freshness record holds."""


class WrongDatabase(IntegrityError):
    """The store is a different database than the one expected."""


class WrongPassphrase(PersistError):
    """The passphrase or key does not open this store."""


class NotFound(PersistError, KeyError):
    """A requested entry does not exist."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep it plain
        return Exception.__str__(self)


class RotationUnfinished(PersistError):
    """A master-key rotation was interrupted: resume or abort it first."""


class SchemaError(PersistError):
    """Stored data does not fit the record or object types this process knows."""


class CommitFailed(PersistError):
    """A commit failed after writing may have begun.

    The database refuses every later write with this error until it is
    reopened; the original exception is chained as ``__cause__``.
    """


class LeaseError(PersistError):
    """Two writers collided over the lease of a remote container (docs/remote.md)."""


class LeaseHeld(LeaseError):
    """Another holder has the lease: it was not acquired, renewed or released.

    ``record`` is the lease record as read from the target, when there was one.
    """

    def __init__(self, message: str, record: object = None) -> None:
        super().__init__(message)
        self.record = record


class LeaseLost(LeaseError):
    """This holder no longer has the lease (superseded, released, or past its
    own deadline); the operation wrote nothing."""
