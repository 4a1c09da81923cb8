"""persist: encrypted orthogonal persistence for Python.

::

    import persist
    with persist.open("state.db", passphrase="...") as db:
        db.root["config"] = {"retries": 3}
        db.table("accounts")["alice"] = 10
        db.commit_wait()

See docs/api.md.
"""

from .db import (
    Database,
    LogLimits,
    Persistent,
    PersistentDict,
    PersistentList,
    RecordRegistry,
    Table,
    open,
    record,
)
from .errors import (
    ClosedError,
    CommitFailed,
    ContainerExists,
    ContainerNotFound,
    CorruptStore,
    ForkDetected,
    IntegrityError,
    LeaseError,
    LeaseHeld,
    LeaseLost,
    NotAStore,
    NotFound,
    PersistError,
    ReadOnlyError,
    RollbackDetected,
    RotationUnfinished,
    SchemaError,
    StoreError,
    StoreExists,
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
    "ContainerExists",
    "ContainerNotFound",
    "CorruptStore",
    "Database",
    "ForkDetected",
    "IntegrityError",
    "LeaseError",
    "LeaseHeld",
    "LeaseLost",
    "LogLimits",
    "NotAStore",
    "NotFound",
    "PersistError",
    "Persistent",
    "PersistentDict",
    "PersistentList",
    "ReadOnlyError",
    "RecordRegistry",
    "RollbackDetected",
    "RotationUnfinished",
    "SchemaError",
    "StoreError",
    "StoreExists",
    "StoreFull",
    "StoreIOError",
    "StoreLocked",
    "StoreNotFound",
    "Table",
    "WrongDatabase",
    "WrongPassphrase",
    "__version__",
    "open",
    "record",
]
