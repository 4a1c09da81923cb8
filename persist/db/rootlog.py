"""The root log: small waves committed in the root record, folded into the trees later.

Theory of operation (docs/design.md, "The committed state").

A wave of a few writes would otherwise rewrite, hash and encrypt a whole
root-to-leaf path of every tree it touches (three or four nodes per table),
and a lone writer doing a commit-wait after every write would pay that on
each commit.  Instead, a wave whose changes fit the log's bounds is committed
by adding them to the **log**: an opaque payload of the root record's catalog
(descriptor ``log``), so the commit writes one row, the root, which it writes
anyway.  When the log would outgrow its bounds, the commit **folds** it: the
log and the wave are applied to the trees as one sorted batch per table and
the log is emptied, in the same root.

1. The committed state is the trees with the log laid over them: a key in the
   log has the log's value (``None``: deleted), any other key the tree's.
2. The log is part of the root, so it is authenticated, covered by the
   freshness chain and switched atomically with the trees; a crash keeps or
   loses a wave whole, like any other commit (DESIGN §3 rule 4).
3. Bounds: at most ``max_entries`` keys and ``max_bytes`` of encoded entries.
   Every commit rewrites the whole log, so the bounds trade the cost of each
   small commit (encrypting the log) against the cost of a fold (amortized
   over the log's entries); the defaults suit 16-byte keys and 100-byte
   values on a local disk.
4. Deletes of keys the tree does not hold stay in the log until the fold,
   where they are no-ops.

Payload (docs/format.md "Root log"): one version byte, then per entry ``u16``
table-name length, ``u16`` key length, ``u32`` value length (``0xFFFFFFFF`` for
a delete), then the name (UTF-8), the key and the value.  At most one entry
per (table, key).
"""

from __future__ import annotations

import struct
from bisect import bisect_left
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from ..errors import IntegrityError
from ..mux import merge_pending

__all__ = ["LOG_DESCRIPTOR", "LogLimits", "RootLog", "decode_log"]

LOG_DESCRIPTOR = "log"
_VERSION = b"\x01"
_ENTRY = struct.Struct(">HHI")
_DELETED = 0xFFFFFFFF

Pending = dict[bytes, bytes | None]


@dataclass(frozen=True)
class LogLimits:
    """How much the root log holds before a commit folds it into the trees.

    ``LogLimits(0, 0)`` turns the log off: every wave goes to the trees.
    """

    #: Most keys the log holds.
    max_entries: int = 256
    #: Most bytes of encoded entries (table name, key and value, plus 8 bytes each).
    max_bytes: int = 32 * 1024

    def __post_init__(self) -> None:
        if self.max_entries < 0 or self.max_bytes < 0:
            raise ValueError("log limits are not negative (0 turns the log off)")


def encode_entry(table: str, key: bytes, value: bytes | None) -> bytes:
    name = table.encode("utf-8")
    if value is None:
        return _ENTRY.pack(len(name), len(key), _DELETED) + name + key
    return _ENTRY.pack(len(name), len(key), len(value)) + name + key + value


def decode_log(payload: bytes) -> dict[str, Pending]:
    """The log's changes, table -> key -> value; IntegrityError when malformed."""
    if not payload:
        return {}
    if payload[:1] != _VERSION:
        raise IntegrityError("the root log has an unknown version")
    out: dict[str, Pending] = {}
    pos, end = 1, len(payload)
    try:
        while pos < end:
            name_len, key_len, value_len = _ENTRY.unpack_from(payload, pos)
            pos += _ENTRY.size
            name = payload[pos : pos + name_len].decode("utf-8")
            pos += name_len
            key = payload[pos : pos + key_len]
            pos += key_len
            value: bytes | None = None
            if value_len != _DELETED:
                value = payload[pos : pos + value_len]
                pos += value_len
            if pos > end or not name:
                raise ValueError("truncated")
            table = out.setdefault(name, {})
            if key in table:
                raise ValueError("a key twice")
            table[key] = value
    except (ValueError, struct.error, UnicodeDecodeError):
        raise IntegrityError("the root log is malformed") from None
    return out


class RootLog:
    """One committed log: immutable once built, shared by every reader of its state."""

    __slots__ = ("_encoded", "_sorted", "nbytes", "tables")

    def __init__(
        self,
        tables: Mapping[str, Pending] | None = None,
        encoded: dict[tuple[str, bytes], bytes] | None = None,
    ) -> None:
        #: table -> key -> value (None: deleted)
        self.tables: dict[str, Pending] = dict(tables or {})
        if encoded is None:
            encoded = {
                (t, k): encode_entry(t, k, v)
                for t, tab in self.tables.items()
                for k, v in tab.items()
            }
        self._encoded = encoded
        self.nbytes = sum(map(len, encoded.values()))
        self._sorted: dict[str, tuple[list[bytes], list[bytes | None]]] = {}

    @classmethod
    def from_payload(cls, payload: bytes) -> RootLog:
        return cls(decode_log(payload))

    def __len__(self) -> int:
        return len(self._encoded)

    def payload(self) -> bytes:
        """The catalog payload (empty for an empty log)."""
        if not self._encoded:
            return b""
        return _VERSION + b"".join(self._encoded.values())

    def extended(self, changes: Mapping[str, Mapping[bytes, bytes | None]]) -> RootLog:
        """A new log: this one with ``changes`` laid over it (this one is unchanged)."""
        tables = dict(self.tables)
        encoded = dict(self._encoded)
        for table, tab in changes.items():
            if not tab:
                continue
            merged = dict(tables.get(table, {}))
            merged.update(tab)
            tables[table] = merged
            for key, value in tab.items():
                encoded[(table, key)] = encode_entry(table, key, value)
        return RootLog(tables, encoded)

    def fits(self, changes: Mapping[str, Mapping[bytes, bytes | None]], limits: LogLimits) -> bool:
        """Whether this log plus ``changes`` stays within ``limits`` (an upper bound)."""
        entries = len(self._encoded) + sum(map(len, changes.values()))
        if entries > limits.max_entries:
            return False
        size = self.nbytes
        for table, tab in changes.items():
            overhead = _ENTRY.size + len(table.encode("utf-8"))
            for key, value in tab.items():
                size += overhead + len(key) + (0 if value is None else len(value))
                if size > limits.max_bytes:
                    return False
        return True

    # -- reading (any thread) --------------------------------------------------

    def lookup(self, table: str, key: bytes) -> tuple[bool, bytes | None]:
        tab = self.tables.get(table)
        if tab is None or key not in tab:
            return False, None
        return True, tab[key]

    def overlay(
        self,
        table: str,
        committed: Iterator[tuple[bytes, bytes]],
        start: bytes | None,
        stop: bytes | None,
        reverse: bool,
    ) -> Iterator[tuple[bytes, bytes]]:
        """``committed`` (a tree scan of ``[start, stop)``) with this log laid over it."""
        tab = self.tables.get(table)
        if not tab:
            return committed
        index = self._sorted.get(table)
        if index is None:  # a benign race: two readers may both build it
            keys = sorted(tab)
            index = self._sorted[table] = (keys, [tab[k] for k in keys])
        keys, values = index
        lo = 0 if start is None else bisect_left(keys, start)
        hi = len(keys) if stop is None else bisect_left(keys, stop)
        pending = list(zip(keys[lo:hi], values[lo:hi], strict=True))
        if not pending:
            return committed
        if reverse:
            pending.reverse()
        return merge_pending(committed, pending, reverse)
