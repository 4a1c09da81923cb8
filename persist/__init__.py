"""persist: encrypted orthogonal persistence for Python.

The application API (``persist.open``) arrives with the db layer; today the
package offers the key-value store layer (:mod:`persist.kvs`) and the error
hierarchy, re-exported here.
"""

from .errors import (
    ClosedError,
    CommitFailed,
    CorruptStore,
    ForkDetected,
    IntegrityError,
    NotAStore,
    NotFound,
    PersistError,
    ReadOnlyError,
    RollbackDetected,
    StoreError,
    StoreFull,
    StoreIOError,
    StoreLocked,
    StoreNotFound,
    WrongDatabase,
    WrongPassphrase,
)

__version__ = "0.1.0"

__all__ = [
    "ClosedError",
    "CommitFailed",
    "CorruptStore",
    "ForkDetected",
    "IntegrityError",
    "NotAStore",
    "NotFound",
    "PersistError",
    "ReadOnlyError",
    "RollbackDetected",
    "StoreError",
    "StoreFull",
    "StoreIOError",
    "StoreLocked",
    "StoreNotFound",
    "WrongDatabase",
    "WrongPassphrase",
    "__version__",
]
