"""The root log: small waves committed in one row each, folded into the trees later.

Theory of operation (docs/design.md, "The root log").

A wave of a few writes would otherwise rewrite, hash and encrypt a whole
root-to-leaf path of every tree it touches (three or four nodes per table),
and a lone writer doing a commit-wait after every write would pay that on
each commit.  Instead, a wave whose changes fit the log's bounds is committed
as one **segment**: a mutable row of the ebs table ``log`` holding the wave's
changes, written with the next root, whose catalog entry ``log`` says which
segments exist.  When the log would outgrow its bounds, the commit **folds**
it: the log and the wave are applied to the trees as one sorted batch per
table, and the segments are deleted, in the same atomic batch.

1. The committed state is the trees with the log laid over them, segment by
   segment in order: a key in the log has its newest logged value (``None``:
   deleted), any other key the tree's.
2. The catalog entry names the log's generation (incremented by every fold),
   its number of segments and a hash chain over their plaintexts; segment
   ``i`` of generation ``g`` is the row ``g || i``.  Opening reads every
   segment and checks the chain, so a segment deleted, rolled back or
   swapped is an IntegrityError; the root's coverage digest of the table
   covers the rows as well (verify).
3. A commit writes one new row and the root, whatever the size of the log;
   the bounds (:class:`LogLimits`: keys and bytes of segments, and the tree
   nodes a fold would rewrite) only cap the memory of the log, the time to
   read it on open, and the work of a fold.
4. Deletes of keys the tree does not hold stay in the log until the fold,
   where they are no-ops.
5. **The tail.**  The newest segments, while they total at most
   ``LogLimits.tail_bytes``, are not rows at all: they ride in the log's
   catalog payload, inside the encrypted root the commit writes anyway, so
   a small commit writes ONE row (the root slot).  The commit that would
   pass the bound writes the tail and its own wave as one merged segment
   row and empties the tail.  The root authenticates the tail (it is part
   of the root's plaintext); the chain covers the rows.  The tail is laid
   over the rows, in order.
6. **Folding in pieces.**  Once the log is due, a commit of a small wave
   folds only one key range of it -- the next keys of one table in key
   order after a cursor, as many as ``LogLimits.piece_nodes`` tree nodes
   are estimated to hold, and at least as many as the wave adds -- and
   **masks** that range: the catalog payload records (table, range, upto),
   meaning "the entries of this table in this key range in segment rows
   before ``upto`` are in the trees", and every reader skips them.  The
   tail is written as a row first, so a mask never covers a tail segment;
   the wave goes after it, unmasked.  The log's value of a folded key is its
   newest, so moving it into the tree changes no read; the log of the new
   state is the unmasked entries plus the wave.  A piece thus writes its
   bounded number of nodes and the root, and rewrites none of the log.
   A wave too large for the log, a log whose whole fold is about as cheap
   as a piece, and ``close()`` fold everything.
7. **Dropping rows.**  Once the masks of every table a segment row holds
   cover the whole key space for that row (a cursor went once around),
   nothing in the row is live: the commits that follow delete it, and the
   rows before it, at most :data:`DROP_ROWS` per commit (so that a cursor's
   round does not end in one commit deleting a thousand rows), and the
   log's first row moves past them; the payload
   carries the chain value before its first row (``chain_start``) so the
   chain is still checked over every row that remains.  Masks that cover
   no remaining row are dropped.  Should the masks reach
   :data:`MAX_MASKS` (a table that never completes a round), a piece
   rewrites what is live as the first segment of the next generation
   instead, as a fold does.

Formats (docs/format.md "Root log"): the catalog payload is
:data:`_META` (version 1: no tail; version 2: then the tail, each segment
as ``u32`` length and bytes), or :data:`_META3` (version 3, once a row was
dropped or a range masked: the first row, the chain before it, the masks,
then the tail as in version 2); a segment is one version byte, then per entry ``u16``
table-name length, ``u16`` key length, ``u32`` value length (``0xFFFFFFFF``
for a delete), then the name (UTF-8), the key and the value; at most one
entry per (table, key) in a segment.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import struct
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from ..errors import IntegrityError
from ..mux import merge_pending

__all__ = [
    "LOG_DESCRIPTOR",
    "MAX_MASKS",
    "PIECES_PER_ROUND",
    "LogLimits",
    "Mask",
    "Piece",
    "RootLog",
    "decode_segment",
    "encode_segment",
    "fold_estimate",
]

#: The catalog entry and the ebs table of the log.
LOG_DESCRIPTOR = "log"
_VERSION = 1
#: The catalog payload's version when a tail follows the header.
_TAIL_VERSION = 2
#: version, generation, number of segments, chain digest
_META = struct.Struct(">BQI32s")
#: version 3: version, generation, first row, number of rows, chain before the
#: first row, chain after the last, number of masks
_MASK_VERSION = 3
_META3 = struct.Struct(">BQII32s32sH")
#: table-name length, low-key length, high-key length (_NO_HIGH: unbounded), upto
_MASK = struct.Struct(">HHHI")
_NO_HIGH = 0xFFFF
#: masks a log may carry before a piece rewrites the live log instead (rule 7)
MAX_MASKS = 64
#: Most pieces a round of a cursor takes (about): a piece is made at least
#: 1/PIECES_PER_ROUND of the log's whole fold, so that the masks of the two
#: rounds a log holds at most (plus a wrap-around each) fit in MAX_MASKS.
PIECES_PER_ROUND = MAX_MASKS * 3 // 8
#: rows nothing live is left in that one commit deletes at most (rule 7)
DROP_ROWS = 8
_TAIL_LEN = struct.Struct(">I")
_SEGMENT_KEY = struct.Struct(">QI")
_ENTRY = struct.Struct(">HHI")
_DELETED = 0xFFFFFFFF
_CHAIN_PERSON = b"persist-log-v1"
_NO_CHAIN = bytes(32)
#: keys in a log's recent layer before a commit merges it into the base layer
_RECENT_MAX = 64

Pending = dict[bytes, bytes | None]
Changes = Mapping[str, Mapping[bytes, bytes | None]]


class Mask(NamedTuple):
    """Rule 6: the entries of ``table`` with ``lo <= key < hi`` (``hi`` None:
    no upper bound) in segment rows before ``upto`` are in the trees."""

    table: str
    lo: bytes
    hi: bytes | None
    upto: int


class Piece(NamedTuple):
    """What one partial fold takes: the log's keys of ``table`` in ``ranges``
    (half-open, ``hi`` None: unbounded), all of them, and only them."""

    table: str
    keys: list[bytes]
    ranges: tuple[tuple[bytes, bytes | None], ...]


#: keys added to a log since its hint's sorted keys: (keys, the earlier ones)
_Added = tuple[tuple[bytes, ...], "_Added"] | None


class _Row(NamedTuple):
    """What a reader keeps of one segment row: its size, the tables it holds,
    and the chain value after it."""

    size: int
    tables: frozenset[str]
    chain: bytes


def _union(ranges: Iterable[tuple[bytes, bytes | None]]) -> tuple[list[bytes], list[bytes | None]]:
    """The union of half-open ranges, as sorted disjoint ``(lows, highs)``."""
    lows: list[bytes] = []
    highs: list[bytes | None] = []
    for lo, hi in sorted(ranges, key=lambda r: r[0]):
        if highs and (highs[-1] is None or lo <= highs[-1]):
            if highs[-1] is not None and (hi is None or hi > highs[-1]):
                highs[-1] = hi
            continue
        lows.append(lo)
        highs.append(hi)
    return lows, highs


def _outside(keys: list[bytes], ranges: Iterable[tuple[bytes, bytes | None]]) -> list[bytes]:
    """The ascending ``keys`` that lie in none of the half-open ``ranges``."""
    lows, highs = _union(ranges)
    out: list[bytes] = []
    at = 0
    for lo, hi in zip(lows, highs, strict=True):
        start = bisect_left(keys, lo, at)
        out += keys[at:start]
        if hi is None:
            return out
        at = max(start, bisect_left(keys, hi, start))
    out += keys[at:]
    return out


def _inside(lows: list[bytes], highs: list[bytes | None], key: bytes) -> bool:
    i = bisect_right(lows, key) - 1
    if i < 0:
        return False
    high = highs[i]
    return high is None or key < high


def _covered_before(masks: Iterable[Mask], table: str) -> int:
    """The largest ``u`` such that the masks of ``table`` reaching at least row
    ``u`` cover every key: rows of ``table`` before it hold nothing live (rule 7)."""
    ranges: list[tuple[bytes, bytes | None]] = []
    for mask in sorted((m for m in masks if m.table == table), key=lambda m: -m.upto):
        ranges.append((mask.lo, mask.hi))
        lows, highs = _union(ranges)
        if lows == [b""] and highs == [None]:
            return mask.upto
    return 0


class _Masking:
    """Whether an entry of row ``i`` is masked, for rows read in ascending order."""

    def __init__(self, masks: Iterable[Mask]) -> None:
        self.masks = list(masks)
        #: the row at which the active masks change next (one stops applying)
        self.change = 0
        self.active: dict[str, tuple[list[bytes], list[bytes | None]]] = {}

    def at(self, row: int) -> None:
        if row < self.change:
            return
        self.change = min((m.upto for m in self.masks if m.upto > row), default=1 << 32)
        by_table: dict[str, list[tuple[bytes, bytes | None]]] = {}
        for m in self.masks:
            if m.upto > row:
                by_table.setdefault(m.table, []).append((m.lo, m.hi))
        self.active = {t: _union(r) for t, r in by_table.items()}

    def masked(self, table: str, key: bytes) -> bool:
        ranges = self.active.get(table)
        return ranges is not None and _inside(ranges[0], ranges[1], key)


@dataclass(frozen=True)
class LogLimits:
    """How much the root log holds before a commit folds it into the trees.

    A commit folds when the log plus its wave would pass ``max_entries`` keys
    or ``max_bytes`` of segments (what the log may cost in memory and in
    reading on open), or when the fold would rewrite about ``fold_nodes``
    tree nodes (:func:`fold_estimate`: what one fold may cost the commit
    that does it).  While a tree is small, the log's keys share its leaves
    and a fold rewrites the tree once for many keys, so the log grows to
    ``max_entries``; in a large tree each logged key costs about one leaf and
    the fold comes after about ``fold_nodes`` keys.

    ``LogLimits(0, 0)`` turns the log off: every wave goes to the trees.
    """

    #: Most keys the log holds.
    max_entries: int = 8192
    #: Most bytes of segments (per change: table name, key and value, plus 8 bytes).
    max_bytes: int = 2 * 1024 * 1024
    #: Tree nodes a fold may rewrite (estimated); the log folds once it would reach this.
    fold_nodes: int = 4096
    #: Bytes of the newest segments carried inside the root instead of as rows
    #: (the tail: a small commit then writes one row); 0 writes every segment as a row.
    tail_bytes: int = 1024
    #: Tree nodes a commit folds at most (estimated) once the log is due, by
    #: folding one key range of it (rule 6); 0 folds the whole log at once.
    piece_nodes: int = 64

    def __post_init__(self) -> None:
        if min(self.max_entries, self.max_bytes, self.fold_nodes, self.tail_bytes) < 0:
            raise ValueError("log limits are not negative (0 turns the log off)")
        if self.piece_nodes < 0:
            raise ValueError("piece_nodes is not negative (0 folds the whole log at once)")


#: Entries of a leaf on average (three quarters full), for :func:`fold_estimate`.
_LEAF_FILL = 24


def fold_estimate(keys: int, entries: int) -> float:
    """About how many nodes a fold of ``keys`` logged keys into a tree of ``entries``
    rewrites: the leaves they fall into, if spread evenly over the tree's
    ``entries / 24`` leaves (a balls-into-bins expectation), plus new leaves
    for the keys themselves (an upper bound: a logged key may replace one).
    Interior nodes add about a sixteenth and are not counted.
    """
    leaves = max(entries / _LEAF_FILL, 1.0)
    return leaves * -math.expm1(-keys / leaves) + keys / _LEAF_FILL


def segment_key(generation: int, index: int) -> bytes:
    """The logical key of segment ``index`` of generation ``generation``."""
    return _SEGMENT_KEY.pack(generation, index)


def _chain(chain: bytes, segment: bytes) -> bytes:
    return hashlib.blake2b(chain + segment, digest_size=32, person=_CHAIN_PERSON).digest()


def encode_segment(changes: Changes) -> bytes:
    """One segment: every change of ``changes`` (tables with no change are skipped)."""
    parts = [bytes([_VERSION])]
    for table, tab in changes.items():
        name = table.encode("utf-8")
        for key, value in tab.items():
            if value is None:
                parts += [_ENTRY.pack(len(name), len(key), _DELETED), name, key]
            else:
                parts += [_ENTRY.pack(len(name), len(key), len(value)), name, key, value]
    return b"".join(parts)


def _fields(
    data: bytes, pos: int, name_len: int, first_len: int, second_len: int, absent: int
) -> tuple[str, bytes, bytes | None, int]:
    """The fields after a record's header, whose lengths it gave: a name (UTF-8,
    not empty), a first and a second field (None when ``second_len`` is
    ``absent``), and the position after them; ValueError when ``data`` ends first."""
    name = data[pos : pos + name_len].decode("utf-8")
    pos += name_len
    first = data[pos : pos + first_len]
    pos += first_len
    second: bytes | None = None
    if second_len != absent:
        second = data[pos : pos + second_len]
        pos += second_len
    if pos > len(data) or not name:
        raise ValueError("truncated")
    return name, first, second, pos


def decode_segment(payload: bytes) -> dict[str, Pending]:
    """A segment's changes, table -> key -> value; IntegrityError when malformed."""
    if payload[:1] != bytes([_VERSION]):
        raise IntegrityError("a root log segment has an unknown version")
    out: dict[str, Pending] = {}
    pos, end = 1, len(payload)
    try:
        while pos < end:
            name_len, key_len, value_len = _ENTRY.unpack_from(payload, pos)
            name, key, value, pos = _fields(
                payload, pos + _ENTRY.size, name_len, key_len, value_len, _DELETED
            )
            table = out.setdefault(name, {})
            if key in table:
                raise ValueError("a key twice")
            table[key] = value
    except (ValueError, struct.error, UnicodeDecodeError):
        raise IntegrityError("a root log segment is malformed") from None
    return out


def _parse_tail(data: bytes) -> tuple[bytes, ...]:
    """The tail segments after a version-2 catalog header (rule 5)."""
    out: list[bytes] = []
    pos, end = 0, len(data)
    while pos < end:
        if pos + _TAIL_LEN.size > end:
            raise IntegrityError("the root log's catalog entry is malformed")
        (n,) = _TAIL_LEN.unpack_from(data, pos)
        pos += _TAIL_LEN.size
        if n == 0 or pos + n > end:
            raise IntegrityError("the root log's catalog entry is malformed")
        out.append(data[pos : pos + n])
        pos += n
    if not out:
        raise IntegrityError("the root log's catalog entry is malformed")
    return tuple(out)


def _merge_segments(segments: tuple[bytes, ...]) -> tuple[bytes, frozenset[str]]:
    """One segment holding what ``segments`` say, in order (a later entry wins),
    and the tables it holds."""
    merged: dict[str, Pending] = {}
    for segment in segments:
        for table, tab in decode_segment(segment).items():
            merged.setdefault(table, {}).update(tab)
    return encode_segment(merged), frozenset(t for t, tab in merged.items() if tab)


def _parse_v3(
    meta: bytes,
) -> tuple[int, int, int, bytes, bytes, tuple[Mask, ...], bytes]:
    """(first, generation, segments, chain_start, chain, masks, tail bytes) of a
    version-3 payload; IntegrityError when malformed."""
    bad = IntegrityError("the root log's catalog entry is malformed")
    try:
        _v, generation, first, segments, chain_start, chain, count = _META3.unpack_from(meta)
        pos = _META3.size
        masks: list[Mask] = []
        for _ in range(count):
            name_len, lo_len, hi_len, upto = _MASK.unpack_from(meta, pos)
            name, lo, hi, pos = _fields(meta, pos + _MASK.size, name_len, lo_len, hi_len, _NO_HIGH)
            if not first < upto <= segments or (hi is not None and hi <= lo):
                raise bad
            masks.append(Mask(name, lo, hi, upto))
    except (struct.error, ValueError):  # UnicodeDecodeError is a ValueError
        raise bad from None
    if first > segments or (first == segments and chain_start != chain):
        raise bad
    return first, generation, segments, chain_start, chain, tuple(masks), meta[pos:]


class RootLog:
    """One committed log: immutable once built, shared by every reader of its state.

    Its changes are kept in two layers, ``recent`` over ``base`` (table ->
    key -> value, ``None``: deleted), so that a commit copies the small
    recent layer and the whole log only when the recent layer outgrows an
    eighth of it (and at least :data:`_RECENT_MAX` keys).  Masked entries
    (rule 6) are in neither: the layers hold what is live.
    """

    __slots__ = (
        "_covered",
        "_hint",
        "_merged",
        "_sorted",
        "_sorted_keys",
        "base",
        "bound",
        "chain",
        "chain_start",
        "first",
        "generation",
        "masks",
        "nbytes",
        "recent",
        "rows",
        "segments",
        "tail",
    )

    def __init__(
        self,
        tables: Mapping[str, Pending] | None = None,
        *,
        recent: Mapping[str, Pending] | None = None,
        generation: int = 0,
        segments: int = 0,
        chain: bytes = _NO_CHAIN,
        nbytes: int = 0,
        tail: tuple[bytes, ...] = (),
        first: int = 0,
        chain_start: bytes = _NO_CHAIN,
        masks: tuple[Mask, ...] = (),
        rows: tuple[_Row, ...] | None = None,
    ) -> None:
        self.base: dict[str, Pending] = {t: tab for t, tab in (tables or {}).items() if tab}
        self.recent: dict[str, Pending] = {t: tab for t, tab in (recent or {}).items() if tab}
        self.generation = generation
        #: the rows are ``first .. segments - 1`` of the generation (rule 7)
        self.first = first
        self.segments = segments
        #: the chain value before row ``first``, and after the last row
        self.chain_start = chain_start
        self.chain = chain
        #: the masked ranges (rule 6)
        self.masks = masks
        #: what is known of each row (None: not tracked; pieces then rewrite)
        self.rows = rows if rows is not None or segments > first else ()
        #: the newest segments, carried in the catalog payload (rule 5)
        self.tail = tail
        #: bytes of all segments, the tail's included (masked entries too)
        self.nbytes = nbytes
        #: at least the number of keys in the log (keys in both layers count twice)
        self.bound = sum(map(len, self.base.values())) + sum(map(len, self.recent.values()))
        self._merged: dict[str, Pending] | None = None
        self._sorted: dict[str, tuple[list[bytes], list[bytes | None]]] = {}
        self._sorted_keys: dict[str, list[bytes]] = {}
        #: per table, an earlier log's sorted keys and the keys added since
        #: (a linked list of tuples), so that the sort is a merge (see sorted_changes)
        self._hint: dict[str, tuple[list[bytes], _Added]] = {}
        #: per table of the masks, the rows before which they cover every key
        self._covered: dict[str, int] | None = None

    @property
    def tables(self) -> dict[str, Pending]:
        """The log's changes, table -> key -> value (built once; do not modify)."""
        merged = self._merged
        if merged is None:  # a benign race: two readers may both build it
            if not self.recent:
                merged = self.base
            else:
                merged = dict(self.base)
                for table, tab in self.recent.items():
                    merged[table] = {**merged.get(table, {}), **tab}
            self._merged = merged
        return merged

    def lookup(self, table: str, key: bytes) -> tuple[bool, bytes | None]:
        """``(found, value)``: whether the log holds ``key`` and its value."""
        tab = self.recent.get(table)
        if tab is not None and key in tab:
            return True, tab[key]
        tab = self.base.get(table)
        if tab is not None and key in tab:
            return True, tab[key]
        return False, None

    def __len__(self) -> int:
        """The number of keys in the log."""
        return sum(map(len, self.tables.values()))

    # -- the catalog entry and the segments -------------------------------------

    def meta(self) -> bytes:
        """The catalog payload; empty while nothing was ever logged."""
        if self.first or self.masks:
            parts = [
                _META3.pack(
                    _MASK_VERSION,
                    self.generation,
                    self.first,
                    self.segments,
                    self.chain_start,
                    self.chain,
                    len(self.masks),
                )
            ]
            for m in self.masks:
                name = m.table.encode("utf-8")
                high = b"" if m.hi is None else m.hi
                high_len = _NO_HIGH if m.hi is None else len(high)
                parts += [
                    _MASK.pack(len(name), len(m.lo), high_len, m.upto),
                    name,
                    m.lo,
                    high,
                ]
        elif self.generation == 0 and self.segments == 0 and not self.tail:
            return b""
        elif not self.tail:
            return _META.pack(_VERSION, self.generation, self.segments, self.chain)
        else:
            parts = [_META.pack(_TAIL_VERSION, self.generation, self.segments, self.chain)]
        for segment in self.tail:
            parts += [_TAIL_LEN.pack(len(segment)), segment]
        return b"".join(parts)

    @property
    def tail_bytes(self) -> int:
        return sum(map(len, self.tail))

    def segment_keys(self) -> list[bytes]:
        """The logical keys of the log's rows (``first`` to the last)."""
        return [segment_key(self.generation, i) for i in range(self.first, self.segments)]

    @classmethod
    def load(cls, meta: bytes, read_row: Callable[[bytes], bytes | None]) -> RootLog:
        """The log a catalog payload names, its segments read with ``read_row``."""
        if not meta:
            return cls()
        version = meta[0]
        first, chain_start = 0, _NO_CHAIN
        masks: tuple[Mask, ...] = ()
        if version == _MASK_VERSION:
            first, generation, segments, chain_start, chain, masks, rest = _parse_v3(meta)
            tail = _parse_tail(rest) if rest else ()
        else:
            try:
                version, generation, segments, chain = _META.unpack_from(meta)
            except struct.error:
                raise IntegrityError("the root log's catalog entry is malformed") from None
            if version not in (_VERSION, _TAIL_VERSION):
                raise IntegrityError("the root log has an unknown version")
            tail = _parse_tail(meta[_META.size :]) if version == _TAIL_VERSION else ()
            if version == _VERSION and len(meta) != _META.size:
                raise IntegrityError("the root log's catalog entry is malformed")
        tables: dict[str, Pending] = {}
        running, nbytes = chain_start, 0
        masking = _Masking(masks)
        rows: list[_Row] = []
        for i in range(first, segments):
            segment = read_row(segment_key(generation, i))
            if segment is None:
                raise IntegrityError(f"root log segment {i} is missing")
            running = _chain(running, segment)
            nbytes += len(segment)
            decoded = decode_segment(segment)
            rows.append(_Row(len(segment), frozenset(decoded), running))
            masking.at(i)
            for table, tab in decoded.items():
                live = tables.setdefault(table, {})
                if table in masking.active:
                    for key, value in tab.items():
                        if not masking.masked(table, key):
                            live[key] = value
                else:
                    live.update(tab)
        if not hmac.compare_digest(running, chain):
            raise IntegrityError("the root log's segments are not the ones its root names")
        for segment in tail:
            nbytes += len(segment)
            for table, tab in decode_segment(segment).items():
                tables.setdefault(table, {}).update(tab)
        return cls(
            tables,
            generation=generation,
            segments=segments,
            chain=chain,
            nbytes=nbytes,
            tail=tail,
            first=first,
            chain_start=chain_start,
            masks=masks,
            rows=tuple(rows),
        )

    def _next(
        self,
        base: Mapping[str, Pending],
        recent: Mapping[str, Pending],
        *,
        segments: int | None = None,
        chain: bytes | None = None,
        nbytes: int | None = None,
        tail: tuple[bytes, ...] | None = None,
        first: int | None = None,
        chain_start: bytes | None = None,
        masks: tuple[Mask, ...] | None = None,
        rows: tuple[_Row, ...] | None = None,
    ) -> RootLog:
        """This log's generation with the fields given changed."""
        log = RootLog(
            base,
            recent=recent,
            generation=self.generation,
            segments=self.segments if segments is None else segments,
            chain=self.chain if chain is None else chain,
            nbytes=self.nbytes if nbytes is None else nbytes,
            tail=self.tail if tail is None else tail,
            first=self.first if first is None else first,
            chain_start=self.chain_start if chain_start is None else chain_start,
            masks=self.masks if masks is None else masks,
            rows=self.rows if rows is None else rows,
        )
        if masks is None:
            log._covered = self._covered
        return log

    def _with_row(
        self, row: bytes, tables: frozenset[str]
    ) -> tuple[int, bytes, tuple[_Row, ...] | None]:
        """(segments, chain, rows) once ``row`` is appended as the next row."""
        chain = _chain(self.chain, row)
        rows = None if self.rows is None else (*self.rows, _Row(len(row), tables, chain))
        return self.segments + 1, chain, rows

    def _carried_hints(self, skip: str | None = None) -> dict[str, tuple[list[bytes], _Added]]:
        """The sort hints of this log's tables for a log with the same keys
        (but ``skip``'s)."""
        hints = {t: h for t, h in self._hint.items() if t != skip}
        for table, keys in list(self._sorted_keys.items()):
            if table != skip:
                hints[table] = (keys, None)
        return hints

    def _hints_after(self, changes: Changes) -> dict[str, tuple[list[bytes], _Added]]:
        """The sort hints of this log plus ``changes`` (keys are only added)."""
        hints = self._carried_hints()
        for table, tab in changes.items():
            hint = hints.get(table)
            if hint is None or not tab:
                continue
            new = tuple(k for k in tab if not self.lookup(table, k)[0])
            if new:
                hints[table] = (hint[0], (new, hint[1]))
        return hints

    def appended(
        self, changes: Changes, segment: bytes | None = None, tail_bytes: int = 0
    ) -> tuple[RootLog, bytes | None, bytes | None]:
        """``(new log, segment key, segment row)``: this log plus ``changes``.

        ``segment``: ``encode_segment(changes)``, when the caller has it already.
        While the tail plus the segment stays within ``tail_bytes``, the
        segment joins the tail and no row is written (key and row None);
        otherwise the tail and ``changes`` become one row, and the tail empties.
        """
        if segment is None:
            segment = encode_segment(changes)
        base, recent = self.base, dict(self.recent)
        for table, tab in changes.items():
            if tab:
                recent[table] = {**recent.get(table, {}), **tab}
        # The base is copied when the recent layer outgrows an eighth of it,
        # so a commit copies O(its own keys) on average, however large the log.
        base_keys = sum(map(len, base.values()))
        if sum(map(len, recent.values())) > max(_RECENT_MAX, base_keys >> 3):
            base = dict(base)
            for table, tab in recent.items():
                base[table] = {**base.get(table, {}), **tab}
            recent = {}
        old_tail = self.tail_bytes
        if old_tail + len(segment) <= tail_bytes:
            log = self._next(
                base, recent, nbytes=self.nbytes + len(segment), tail=(*self.tail, segment)
            )
            log._hint = self._hints_after(changes)
            return log, None, None
        if not self.tail:
            row, tables = segment, frozenset(t for t, tab in changes.items() if tab)
        else:
            row, tables = _merge_segments((*self.tail, segment))
        segments, chain, rows = self._with_row(row, tables)
        log = self._next(
            base,
            recent,
            segments=segments,
            chain=chain,
            nbytes=self.nbytes - old_tail + len(row),
            tail=(),
            rows=rows,
        )
        log._hint = self._hints_after(changes)
        return log, segment_key(self.generation, self.segments), row

    def folded(self) -> RootLog:
        """The empty log of the next generation (after a fold)."""
        return RootLog(generation=self.generation + 1, rows=())

    def masked(self, piece: Piece) -> tuple[RootLog, tuple[bytes, bytes] | None, list[bytes]]:
        """``(log, tail row, dropped rows)``: this log once ``piece`` is in the
        trees (rules 6 and 7), as the same generation with its ranges masked.

        The tail, if any, becomes a row first (its key and bytes: ``tail
        row``, else None), so that the masks cover it; ``dropped`` are the
        logical keys of the rows nothing live is left in, for the caller to
        delete in the same batch.  REQUIRES: :meth:`can_mask`.
        """
        assert self.rows is not None
        tables = dict(self.tables)
        tab = dict(tables.get(piece.table, {}))
        for key in piece.keys:
            del tab[key]
        if tab:
            tables[piece.table] = tab
        else:
            tables.pop(piece.table, None)
        segments, chain, rows = self.segments, self.chain, self.rows
        flushed: tuple[bytes, bytes] | None = None
        nbytes = self.nbytes
        if self.tail:
            row, row_tables = _merge_segments(self.tail)
            flushed = (segment_key(self.generation, segments), row)
            nbytes += len(row) - self.tail_bytes
            segments, chain, new_rows = self._with_row(row, row_tables)
            assert new_rows is not None
            rows = new_rows
        masks = (*self.masks, *(Mask(piece.table, lo, hi, segments) for lo, hi in piece.ranges))
        log = self._next(
            tables,
            {},
            segments=segments,
            chain=chain,
            nbytes=nbytes,
            tail=(),
            masks=masks,
            rows=rows,
        )
        log._hint = self._carried_hints(skip=piece.table)
        if tab:  # the piece's table: its sorted keys (built to choose the piece) less the piece
            keys = self.sorted_keys(piece.table)
            rest = _outside(keys, piece.ranges)  # slices: no look-up per key
            if len(rest) != len(tab):  # not the piece's contract: filter key by key
                rest = [k for k in keys if k in tab]
            log._hint[piece.table] = (rest, None)
        log, dropped = log.dropping()
        return log, flushed, dropped

    def dropping(self, limit: int = DROP_ROWS) -> tuple[RootLog, list[bytes]]:
        """``(log, dropped)``: this log without its first rows that nothing live
        is left in (rule 7), at most ``limit`` of them, and their logical keys,
        for the caller to delete in its batch."""
        rows = self.rows
        if not self.masks or not rows:
            return self, []
        covered = self._covered
        if covered is None:
            covered = {t: _covered_before(self.masks, t) for t in {m.table for m in self.masks}}
            self._covered = covered
        first, n = self.first, 0
        while n < min(limit, len(rows)) and all(
            first + n < covered.get(t, 0) for t in rows[n].tables
        ):
            n += 1
        if not n:
            return self, []
        first += n
        masks = tuple(m for m in self.masks if m.upto > first)
        log = self._next(
            self.base,
            self.recent,
            nbytes=self.nbytes - sum(r.size for r in rows[:n]),
            first=first,
            chain_start=rows[n - 1].chain,
            masks=masks,
            rows=rows[n:],
        )
        if len(masks) == len(self.masks):
            log._covered = covered
        # the same live keys
        log._sorted, log._sorted_keys, log._hint = self._sorted, self._sorted_keys, self._hint
        return log, [segment_key(self.generation, i) for i in range(first - n, first)]

    def can_mask(self, piece: Piece) -> bool:
        """Whether :meth:`masked` may take ``piece`` (else :meth:`without` must)."""
        return self.rows is not None and len(self.masks) + len(piece.ranges) <= MAX_MASKS

    def without(
        self, piece: Mapping[str, Iterable[bytes]]
    ) -> tuple[RootLog, bytes | None, bytes | None]:
        """``(log, segment key, segment row)``: the next generation holding this
        log's changes except the keys of ``piece`` (rule 7's rewrite).

        What is left is written as the new generation's first segment (key and
        row; None when nothing is left); the caller deletes this generation's
        segments in the same batch, as a fold does.
        """
        left: dict[str, Pending] = {}
        for table, tab in self.tables.items():
            drop = piece.get(table)
            if drop is None:
                left[table] = tab
                continue
            gone = set(drop)
            rest = {k: v for k, v in tab.items() if k not in gone}
            if rest:
                left[table] = rest
        generation = self.generation + 1
        if not left:
            return RootLog(generation=generation, rows=()), None, None
        row = encode_segment(left)
        chain = _chain(_NO_CHAIN, row)
        log = RootLog(
            left,
            generation=generation,
            segments=1,
            chain=chain,
            nbytes=len(row),
            rows=(_Row(len(row), frozenset(left), chain),),
        )
        return log, segment_key(generation, 0), row

    def table_bound(self, table: str) -> int:
        """At least the number of keys of ``table`` in the log."""
        return len(self.base.get(table, ())) + len(self.recent.get(table, ()))

    def segment_within(self, changes: Changes, limits: LogLimits) -> bytes | None:
        """The segment of ``changes`` if this log plus it stays within the key
        and byte bounds of ``limits`` (keys: an upper bound), else None.

        Keys are counted first, so a wave far too large is never encoded.
        """
        if self.bound + sum(map(len, changes.values())) > limits.max_entries:
            return None
        segment = encode_segment(changes)
        return segment if self.nbytes + len(segment) <= limits.max_bytes else None

    # -- reading (any thread) --------------------------------------------------

    def sorted_keys(self, table: str) -> list[bytes]:
        """The keys of ``table`` in the log, ascending (built once; do not modify)."""
        keys = self._sorted_keys.get(table)
        if keys is None:  # a benign race: two readers may both build it
            hint = self._hint.get(table)
            if hint is None:
                keys = sorted(self.tables.get(table, {}))
            else:
                # An earlier log's sorted keys plus the keys added since: one
                # long sorted run and a short tail, which timsort merges in
                # about linear time instead of sorting the whole log again.
                keys, added = list(hint[0]), hint[1]
                while added is not None:
                    keys += added[0]
                    added = added[1]
                keys.sort()
            self._sorted_keys[table] = keys
        return keys

    def sorted_changes(self, table: str) -> tuple[list[bytes], list[bytes | None]]:
        """The keys of ``table`` in the log, ascending, and their values (built
        once).  A piece needs the keys alone (:meth:`sorted_keys`): looking up
        the values of a full log's 8,192 keys costs three times their sort."""
        index = self._sorted.get(table)
        if index is None:
            keys = self.sorted_keys(table)
            tab = self.tables.get(table, {})
            index = self._sorted[table] = (keys, [tab[k] for k in keys])
        return index

    def overlay(
        self,
        table: str,
        committed: Iterator[tuple[bytes, bytes]],
        start: bytes | None,
        stop: bytes | None,
        reverse: bool,
    ) -> Iterator[tuple[bytes, bytes]]:
        """``committed`` (a tree scan of ``[start, stop)``) with this log laid over it;
        ``committed`` itself when the log holds no change in the range."""
        pending = self.changes_in(table, start, stop)
        if not pending:
            return committed
        if reverse:
            pending.reverse()
        return merge_pending(committed, pending, reverse)

    def changes_in(
        self, table: str, start: bytes | None, stop: bytes | None
    ) -> list[tuple[bytes, bytes | None]]:
        """The log's changes of ``table`` in ``[start, stop)``, ascending
        (``None``: a delete)."""
        if not self.tables.get(table):
            return []
        keys, values = self.sorted_changes(table)
        lo = 0 if start is None else bisect_left(keys, start)
        hi = len(keys) if stop is None else bisect_left(keys, stop)
        return list(zip(keys[lo:hi], values[lo:hi], strict=True))
