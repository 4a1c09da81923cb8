"""The PostgreSQL backend's pure parts: the location, the statements, the error mapping.

Nothing here talks to a server; :mod:`persist.kvs.postgresql` does.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import threading
import urllib.parse
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql as pgsql

from ..errors import (
    CorruptStore,
    PersistError,
    ReadOnlyError,
    StoreError,
    StoreFull,
    StoreIOError,
    StoreLocked,
    StoreNotFound,
)

__all__ = [
    "BEGIN_SNAPSHOT",
    "COLUMNS",
    "DEFAULT_TABLE",
    "KV_COLUMNS",
    "LEASE_COLUMNS",
    "LEASE_SUFFIX",
    "PostgresLocation",
    "Session",
    "Statements",
    "advisory_key",
    "cause",
    "engine_of",
    "is_disconnect",
    "parse_postgres_location",
    "translate",
]

DEFAULT_TABLE = "persist"
LEASE_SUFFIX = "_lease"
_TABLE_NAME = re.compile(r"[a-z_][a-z0-9_]*")
_MAX_TABLE_NAME = 63 - len(LEASE_SUFFIX)  # PostgreSQL truncates identifiers at 63 bytes


# -- the location ------------------------------------------------------------------


@dataclass(frozen=True)
class PostgresLocation:
    """A parsed ``postgresql://`` location.  ``repr`` hides the connection string."""

    location: str  # canonical: no password, query sorted, ``table=`` always present
    table: str
    _conninfo: str  # what libpq gets: the URI without ``table=``, password included
    _secrets: tuple[str, ...]

    def __repr__(self) -> str:
        return f"PostgresLocation({self.location!r})"

    def scrub(self, text: str) -> str:
        """``text`` with every form of the password replaced by ``***``."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


def parse_postgres_location(location: str) -> PostgresLocation:
    """Split a ``postgresql://`` (or ``postgres://``) URI; ValueError when malformed."""
    scheme, sep, rest = location.partition("://")
    if scheme not in ("postgresql", "postgres") or not sep:
        raise ValueError("a PostgreSQL location starts with postgresql://")
    rest, _, fragment = rest.partition("#")
    if fragment:
        raise ValueError("a PostgreSQL location has no #fragment")
    authority_path, _, query = rest.partition("?")
    authority, slash, path = authority_path.partition("/")
    userinfo, at, hosts = authority.rpartition("@")
    user, _, password = userinfo.partition(":")
    secrets = [password, urllib.parse.unquote(password)] if password else []
    table: str | None = None
    kept: list[tuple[str, str]] = []  # raw "key", "value" text, as libpq will decode it
    for item in filter(None, query.split("&")):
        raw_key, _, raw_value = item.partition("=")
        key = urllib.parse.unquote(raw_key)
        if key == "table":
            if table is not None:
                raise ValueError("table= is given twice in the location")
            table = urllib.parse.unquote(raw_value)
            continue
        if key == "password" and raw_value:
            secrets += [raw_value, urllib.parse.unquote(raw_value)]
        kept.append((raw_key, raw_value))
    table = DEFAULT_TABLE if table is None else table
    if not _TABLE_NAME.fullmatch(table) or len(table) > _MAX_TABLE_NAME:
        raise ValueError(
            f"table={table!r} is not a plain SQL identifier (lowercase letters, digits and "
            f"underscores, not starting with a digit, at most {_MAX_TABLE_NAME} characters)"
        )

    def query_text(items: list[tuple[str, str]]) -> str:
        return "&".join(f"{k}={v}" for k, v in items)

    conninfo = f"{scheme}://{authority}{slash}{path}"
    if kept:
        conninfo += "?" + query_text(kept)
    shown = sorted((k, v) for k, v in kept if urllib.parse.unquote(k) != "password")
    shown.append(("table", table))
    canonical = f"postgresql://{user + at if at else ''}{hosts}{slash}{path}?{query_text(shown)}"
    # Longest first, so that a secret containing another is replaced whole.
    ordered = tuple(sorted({s for s in secrets if s}, key=len, reverse=True))
    return PostgresLocation(canonical, table, conninfo, ordered)


# -- errors ------------------------------------------------------------------------

_CONNECTION_LOST = (pgerrors.AdminShutdown, pgerrors.CrashShutdown, pgerrors.CannotConnectNow)


def is_disconnect(exc: BaseException, conn: psycopg.Connection[Any] | None) -> bool:
    if isinstance(exc, _CONNECTION_LOST):
        return True
    if conn is not None and (conn.broken or conn.closed):
        return True
    return isinstance(exc, psycopg.OperationalError) and exc.sqlstate is None


def translate(exc: psycopg.Error, where: PostgresLocation, doing: str) -> PersistError:
    """Map a psycopg exception onto the persist error tree (message scrubbed)."""
    loc = where.location
    detail = where.scrub(
        str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    )
    if isinstance(exc, pgerrors.SerializationFailure) and "recovery" in str(exc):
        return StoreIOError(
            f"{doing} on store {loc} was cancelled by the hot standby: it conflicts with WAL "
            "replay (the primary removed row versions this read still needed); open a new "
            "snapshot, or give the standby hot_standby_feedback=on or a longer "
            "max_standby_streaming_delay"
        )
    if isinstance(exc, pgerrors.ReadOnlySqlTransaction):
        return ReadOnlyError(f"store {loc} is on a read-only server (a standby?): {detail}")
    if isinstance(exc, pgerrors.DiskFull | pgerrors.ProgramLimitExceeded):
        return StoreFull(f"store {loc} is full: {doing} was not done ({detail})")
    if isinstance(exc, pgerrors.DataCorrupted | pgerrors.IndexCorrupted):
        return CorruptStore(f"PostgreSQL reports store {loc} as corrupt: {detail}")
    if isinstance(exc, pgerrors.UndefinedTable | pgerrors.InvalidCatalogName):
        return StoreNotFound(f"no store at {loc}: {detail}")
    if isinstance(exc, pgerrors.LockNotAvailable):
        return StoreLocked(f"store {loc} is locked by another session: {detail}")
    if isinstance(exc, pgerrors.InsufficientPrivilege):
        return StoreError(f"not allowed on store {loc}: {detail}")
    if isinstance(exc, pgerrors.InvalidAuthorizationSpecification | pgerrors.InvalidPassword):
        return StoreError(f"the server refused the credentials for store {loc}: {detail}")
    return StoreIOError(f"{doing} on store {loc} failed: {detail}")


def cause(exc: BaseException, where: PostgresLocation) -> BaseException | None:
    """What to chain a translated error to (``raise ... from cause(exc, where)``):
    ``exc`` itself, unless its own text carries the password (libpq quotes a URI
    it cannot parse); then nothing."""
    text = str(exc)
    return None if any(s in text for s in where._secrets) else exc


# -- connections -------------------------------------------------------------------


class Session:
    """A connection and the lock that keeps one call at a time on it."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        self.lock = threading.Lock()
        self.used = False  # reused from the pool at least once

    def close(self) -> None:
        with self.lock, contextlib.suppress(psycopg.Error):
            self.conn.close()


def engine_of(version: str) -> str:
    if "CockroachDB" in version:
        return "cockroachdb"
    if "-YB-" in version:
        return "yugabytedb"
    return "postgresql"


def advisory_key(schema: str, table: str) -> int:
    digest = hashlib.blake2b(f"persist lease {schema}.{table}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class Statements:
    """Every statement this backend sends, for one table (docs/kvs.md lists them)."""

    def __init__(self, table: str) -> None:
        names = {"t": pgsql.Identifier(table), "lease": pgsql.Identifier(table + LEASE_SUFFIX)}

        def q(template: str) -> str:
            return pgsql.SQL(template).format(**names).as_string(None)

        self.create = q("CREATE TABLE IF NOT EXISTS {t} (k bytea PRIMARY KEY, v bytea NOT NULL)")
        self.storage = q("ALTER TABLE {t} ALTER COLUMN v SET STORAGE EXTERNAL")
        self.create_lease = q(
            "CREATE TABLE IF NOT EXISTS {lease} (id integer PRIMARY KEY, holder text NOT NULL, "
            "generation bigint NOT NULL, expires timestamptz NOT NULL, locked boolean NOT NULL)"
        )
        self.get = q("SELECT v FROM {t} WHERE k = %b")
        self.scan_from = q("SELECT k, v FROM {t} WHERE k >= %b ORDER BY k LIMIT %s")
        self.scan_after = q("SELECT k, v FROM {t} WHERE k > %b ORDER BY k LIMIT %s")
        self.scan_from_to = q("SELECT k, v FROM {t} WHERE k >= %b AND k < %b ORDER BY k LIMIT %s")
        self.scan_after_to = q("SELECT k, v FROM {t} WHERE k > %b AND k < %b ORDER BY k LIMIT %s")
        self.upsert = q(
            "INSERT INTO {t} (k, v) SELECT * FROM unnest(%b::bytea[], %b::bytea[]) "
            "ON CONFLICT (k) DO UPDATE SET v = excluded.v"
        )
        self.delete = q("DELETE FROM {t} WHERE k = ANY(%b::bytea[])")
        # The fence and the upsert in one statement: it inserts or updates every pair
        # if the fence matched the lease row, and nothing otherwise.
        self.fenced_upsert = q(
            "WITH fence AS (UPDATE {lease} SET expires = now() + %s "
            "WHERE id = 1 AND holder = %s AND generation = %s RETURNING 1) "
            "INSERT INTO {t} (k, v) SELECT * FROM unnest(%b::bytea[], %b::bytea[]) "
            "WHERE EXISTS (SELECT 1 FROM fence) ON CONFLICT (k) DO UPDATE SET v = excluded.v"
        )
        self.cas_insert = q("INSERT INTO {t} (k, v) VALUES (%b, %b) ON CONFLICT (k) DO NOTHING")
        self.cas_update = q("UPDATE {t} SET v = %b WHERE k = %b AND v = %b")
        self.cas_delete = q("DELETE FROM {t} WHERE k = %b AND v = %b")
        self.fence = q(
            "UPDATE {lease} SET expires = now() + %s "
            "WHERE id = 1 AND holder = %s AND generation = %s"
        )
        self.lease_read = q(
            "SELECT holder, generation, expires, expires <= now(), locked FROM {lease} WHERE id = 1"
        )
        self.lease_insert = q(
            "INSERT INTO {lease} (id, holder, generation, expires, locked) "
            "VALUES (1, %s, 1, now() + %s, %s) ON CONFLICT (id) DO NOTHING"
        )
        self.lease_take = q(
            "UPDATE {lease} SET holder = %s, generation = generation + 1, expires = now() + %s, "
            "locked = %s WHERE id = 1 AND holder = %s AND generation = %s RETURNING generation"
        )
        self.lease_release = q(
            "UPDATE {lease} SET expires = now() WHERE id = 1 AND holder = %s AND generation = %s"
        )


COLUMNS = (
    "SELECT table_name, column_name, data_type FROM information_schema.columns "
    "WHERE table_schema = current_schema() AND table_name IN (%s, %s) ORDER BY ordinal_position"
)
KV_COLUMNS = [("k", "bytea"), ("v", "bytea")]
LEASE_COLUMNS = [
    ("id", "integer"),
    ("holder", "text"),
    ("generation", "bigint"),
    ("expires", "timestamp with time zone"),
    ("locked", "boolean"),
]
BEGIN_SNAPSHOT = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"
