"""Byte key-value stores: the contract (:mod:`.base`) and its backends.

Locations (DESIGN §2.1):

==============================  =============================================
``/a/path`` or ``sqlite:///a``  SQLite through apsw (the embedded default)
``leveldb:///abs/dir``          LevelDB through plyvel
``memory:`` / ``memory:NAME``   in-memory reference backend (the oracle)
``postgresql://user@host/db``   PostgreSQL through psycopg 3 (``?table=NAME``,
                                ``?host=/socket/dir``; ``postgres://`` too)
==============================  =============================================
"""

from __future__ import annotations

import os

from .base import MAX_KEY_SIZE, Puts, Snapshot, Store
from .memory import MemoryStore

__all__ = [
    "MAX_KEY_SIZE",
    "MemoryStore",
    "Puts",
    "Snapshot",
    "Store",
    "display_location",
    "open_store",
    "parse_location",
]


def parse_location(location: str) -> tuple[str, str]:
    """Split a location string into ``(scheme, rest)``; a plain path is ``sqlite``."""
    if not isinstance(location, str | os.PathLike):
        raise TypeError(f"a store location is a str or path, not {type(location).__name__}")
    location = os.fspath(location)
    if location.startswith("memory:"):
        return "memory", location[len("memory:") :]
    if location.startswith(("postgresql://", "postgres://")):
        return "postgresql", location  # the whole URI: the backend parses it
    for scheme in ("sqlite", "leveldb"):
        prefix = scheme + "://"
        if location.startswith(prefix):
            path = location[len(prefix) :]
            if not path.startswith("/"):
                raise ValueError(f"{scheme} locations take an absolute path: {scheme}:///abs/path")
            return scheme, path
    if "://" in location:
        raise ValueError(f"unknown store location scheme in {location!r}")
    if not location:
        raise ValueError("empty store location")
    return "sqlite", location


def display_location(location: str | os.PathLike[str]) -> str:
    """``location`` fit to print: a password in a URI is replaced by ``***``."""
    text = os.fspath(location)
    if "://" not in text or "@" not in text:
        return text
    import urllib.parse

    parts = urllib.parse.urlsplit(text)
    if parts.password is None:
        return text
    netloc = parts.netloc.replace(":" + parts.password + "@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def open_store(
    location: str, *, durable: bool = True, read_only: bool = False, create: bool = True
) -> Store:
    """Open the store at ``location``, creating it when missing unless ``read_only``
    or ``create=False`` (then nothing is created: no file, no directory).

    Raises :class:`~persist.errors.StoreNotFound` for a missing store opened
    read-only or with ``create=False``, :class:`~persist.errors.NotAStore`
    when the location holds something else, and
    :class:`~persist.errors.StoreLocked` when another writer has it.
    """
    scheme, rest = parse_location(location)
    if scheme == "memory":
        if not create and not read_only and not MemoryStore.exists(rest):
            from ..errors import StoreNotFound

            raise StoreNotFound(f"no store at memory:{rest}")
        return MemoryStore(rest, durable=durable, read_only=read_only)
    if scheme == "sqlite":
        from .sqlite import SQLiteStore

        return SQLiteStore(rest, durable=durable, read_only=read_only, create=create)
    if scheme == "postgresql":
        from .postgresql import PostgreSQLStore

        return PostgreSQLStore(rest, durable=durable, read_only=read_only, create=create)
    from .leveldb import LevelDBStore

    return LevelDBStore(rest, durable=durable, read_only=read_only, create=create)
