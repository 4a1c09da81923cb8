"""The freshness record: what this machine last saw of a store, kept outside it.

A host that keeps an old copy of the whole store can serve it back; every row
in it authenticates, so nothing inside the store can tell.  The freshness
record (db id, transaction count, root digest; docs/format.md "Freshness
record") lives where the host cannot reach it, by default in the user's state
directory, and turns such a store into an error on open:

* another database id               -> :class:`~persist.errors.WrongDatabase`
* a lower transaction count         -> :class:`~persist.errors.RollbackDetected`
* the same count, another root      -> :class:`~persist.errors.ForkDetected`
* one or two commits ahead, not descended from the recorded root (the other
  root slot holds the current root's predecessor, so two commits ahead its
  own predecessor must be the recorded root) -> :class:`~persist.errors.ForkDetected`
* an empty or missing store where a record names a database
                                    -> :class:`~persist.errors.RollbackDetected`
  (unless the caller asks to replace it)

A store further ahead is accepted (another writer, or a crash between the
store's commit and the record's update); only its last two roots are in the
store, so a fork more than two commits back cannot be told from progress.
Without a record the first open trusts what it finds (trust on first use).

The record is keyed by the store's canonical location (a resolved path, a
normalized URI: :attr:`persist.kvs.base.Store.canonical_location`), so two
spellings of one store share a record and two stores never do; it names the
database id, and another id at that location is :class:`WrongDatabase`.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeAlias

from ..errors import ForkDetected, IntegrityError, RollbackDetected, WrongDatabase
from .root import RootRecord

__all__ = [
    "FreshnessLocation",
    "FreshnessRecord",
    "HintWriter",
    "check_freshness",
    "resolve_location",
]

#: ``None``: the default location; a path: that file; ``False``: no record.
FreshnessLocation: TypeAlias = "str | os.PathLike[str] | Literal[False] | None"

_FORMAT = "persist-freshness"
_VERSION = 1


@dataclass(frozen=True, slots=True)
class FreshnessRecord:
    """The last root of a store this machine committed or opened."""

    db_id: bytes
    count: int
    root_digest: bytes

    @classmethod
    def of(cls, root: RootRecord) -> FreshnessRecord:
        return cls(root.db_id, root.count, root.digest)

    @classmethod
    def load(cls, path: Path) -> FreshnessRecord | None:
        """The newest trustworthy record for ``path``: None if there is none.

        The durable record at ``path`` is the baseline (IntegrityError if it
        is unreadable).  The per-commit hint at ``path.latest`` (see
        :class:`HintWriter`) replaces it when it is readable, names the same
        database and is not older; an unreadable hint (a power loss before it
        reached the disk) is ignored, which can only make detection weaker,
        never raise a false alarm.
        """
        durable = cls._read(path)
        try:
            hint = cls._read(_hint_path(path))
        except IntegrityError:
            hint = None
        if hint is not None and (
            durable is None
            or (hmac.compare_digest(hint.db_id, durable.db_id) and hint.count >= durable.count)
        ):
            return hint
        return durable

    @classmethod
    def _read(cls, path: Path) -> FreshnessRecord | None:
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            data = json.loads(raw.decode("utf-8"))
            if data["format"] != _FORMAT or data["version"] != _VERSION:
                raise ValueError("unknown format")
            record = cls(
                bytes.fromhex(data["db_id"]), int(data["count"]), bytes.fromhex(data["root_digest"])
            )
            if len(record.db_id) != 16 or len(record.root_digest) != 32 or record.count < 0:
                raise ValueError("bad field")
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            raise IntegrityError(
                f"freshness record {path} is unreadable; delete it to trust the store as it is"
            ) from None
        return record

    def save(self, path: Path) -> None:
        """Replace the record at ``path`` atomically and durably (open, close)."""
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(self.to_json())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        with contextlib.suppress(FileNotFoundError):
            _hint_path(path).unlink()

    def to_json(self) -> str:
        # The same text as json.dumps of the dict, formatted directly: this runs per commit.
        return (
            f'{{"format": "{_FORMAT}", "version": {_VERSION}, "db_id": "{self.db_id.hex()}", '
            f'"count": {int(self.count)}, "root_digest": "{self.root_digest.hex()}"}}'
        )


class HintWriter:
    """Writes the per-commit hint of one record in place: one ``pwrite``, no fsync.

    The hint is the record's JSON padded with spaces to a fixed size, so each
    commit overwrites the same bytes of an open file (docs/format.md
    "Freshness record").  A write torn by a power failure leaves unreadable
    JSON, which :meth:`FreshnessRecord.load` ignores; a commit must not pay a
    file creation, a rename and two more syncs for the record.  Not
    thread-safe: the store's writer lock serializes commits.
    """

    __slots__ = ("_fd", "_path")

    def __init__(self, record_path: Path) -> None:
        self._path = _hint_path(record_path)
        self._fd: int | None = None

    def write(self, record: FreshnessRecord) -> None:
        data = record.to_json().encode("ascii").ljust(_HINT_SIZE - 1) + b"\n"
        if self._fd is None:
            self._path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            os.ftruncate(self._fd, _HINT_SIZE)
        if os.pwrite(self._fd, data, 0) != _HINT_SIZE:
            raise OSError(f"short write to {self._path}")

    def close(self) -> None:
        """Close the file (before :meth:`FreshnessRecord.save` removes it)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


# A record's JSON is about 160 bytes; one size for all keeps each write in one sector.
_HINT_SIZE = 256


def _hint_path(path: Path) -> Path:
    return path.with_name(path.name + ".latest")


def _state_dir() -> Path:
    explicit = os.environ.get("PERSIST_STATE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return base / "persist"


def _record_name(location: str) -> str:
    return hashlib.blake2b(location.encode("utf-8"), digest_size=16).hexdigest() + ".json"


def resolve_location(
    freshness: FreshnessLocation, store_location: str, legacy_location: str | None = None
) -> Path | None:
    """Where the record of the store at ``store_location`` (canonical) lives, or None.

    The default is ``$PERSIST_STATE_DIR`` (else ``$XDG_STATE_HOME/persist``,
    else ``~/.local/state/persist``) ``/freshness/<hash of the location>.json``.
    An anonymous ``memory:`` store has no stable location and gets no record.
    A record kept under ``legacy_location`` (the location as typed, the key of
    earlier versions) is moved to the canonical name.
    """
    if freshness is False:
        return None
    if freshness is not None:
        if not isinstance(freshness, str | os.PathLike):
            raise TypeError("freshness is a path, None (default location) or False")
        return Path(freshness)
    if store_location == "memory:":
        return None
    directory = _state_dir() / "freshness"
    path = directory / _record_name(store_location)
    if legacy_location is not None and legacy_location != store_location:
        old = directory / _record_name(legacy_location)
        if old.exists() and not path.exists():
            with contextlib.suppress(OSError):
                os.replace(old, path)
                with contextlib.suppress(FileNotFoundError):
                    os.replace(_hint_path(old), _hint_path(path))
    return path


def _same(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


def check_freshness(
    record: FreshnessRecord | None,
    current: RootRecord,
    previous: RootRecord | None = None,
) -> None:
    """Raise if ``current`` cannot be the successor of (or equal to) ``record``.

    ``previous`` is the root in the other slot when it is valid and links to
    ``current`` (the caller checks the link), which proves one more step of
    the history.
    """
    if record is None:
        return
    if not _same(record.db_id, current.db_id):
        raise WrongDatabase("the store holds another database than the freshness record names")
    if current.count < record.count:
        raise RollbackDetected(
            f"the store is at transaction {current.count}, "
            f"but this machine has seen transaction {record.count}"
        )
    if current.count == record.count and not _same(current.digest, record.root_digest):
        raise ForkDetected(f"transaction {current.count} differs from the one this machine saw")
    if current.count == record.count + 1 and not _same(current.prev_digest, record.root_digest):
        raise ForkDetected(
            f"transaction {current.count} does not follow the transaction this machine saw"
        )
    if (
        current.count == record.count + 2
        and previous is not None
        and not _same(previous.prev_digest, record.root_digest)
    ):
        raise ForkDetected(
            f"transaction {previous.count} does not follow the transaction this machine saw"
        )
