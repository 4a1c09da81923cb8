"""Tables: named, ordered, persistent ``MutableMapping`` s (DESIGN §2.5).

Keys are encoded order-preservingly (:mod:`.keys`), values with the
database's codec (:mod:`.values`).  Every write is one dictionary update in
the current wave; reads merge the waves with the committed tree.

``t.keys()``, ``t.values()`` and ``t.items()`` are the views of
:mod:`collections.abc` (a keys or items view is a ``Set``: equality with
``dict.keys()``, set operations, membership by one point lookup), restricted
to ``start <= key < stop`` when bounds are given, and iterated in reverse
when asked.
"""

from __future__ import annotations

from collections.abc import (
    Callable,
    ItemsView,
    Iterable,
    Iterator,
    KeysView,
    MappingView,
    MutableMapping,
    Sequence,
    ValuesView,
)
from itertools import chain, islice
from typing import TYPE_CHECKING, Any

from ..errors import NotFound
from .keys import MAX_KEY_SIZE, check_key_size, decode_keys, encode_key

if TYPE_CHECKING:
    from ..mux import Columns
    from .database import Database

__all__ = ["ItemsRange", "KeysRange", "RangeView", "Table", "ValuesRange"]

#: Iteration decodes entries in runs (a C-level loop per run): the first run
#: is short, for callers that take only the first few; later runs double up
#: to this many entries, or fewer when the values are large, so that what is
#: read ahead stays around _RUN_BYTES (it is read ahead of the caller).
_RUN_MAX = 128
_RUN_FIRST = 4
_RUN_BYTES = 64 * 1024


def _next_size(size: int, values: Sequence[bytes]) -> int:
    """The next run's length after a run of ``values``: twice ``size``, at most
    :data:`_RUN_MAX`, fewer when the values are large (about _RUN_BYTES read ahead)."""
    held = sum(map(len, values))
    return max(1, min(_RUN_MAX, 2 * size, _RUN_BYTES * len(values) // max(held, 1)))


def _decoded(
    part: str,
    keys: Sequence[bytes],
    values: Sequence[bytes],
    decode_values: Callable[[Sequence[bytes]], list[Any]],
) -> Iterable[Any]:
    """One run's keys, values or items, decoded by C-level loops."""
    if part == "keys":
        return decode_keys(keys)
    if part == "values":
        return decode_values(values)
    return zip(decode_keys(keys), decode_values(values), strict=True)


class RangeView(MappingView):
    """Keys, values or items of a table between bounds, forward or reversed.

    Iterating reads the table as it is at that moment.  ``len`` of an
    unbounded view is the table's (cheap); of a bounded one it iterates.
    """

    __slots__ = ("_hi", "_lo", "_reverse", "_start", "_stop")
    _part = "items"
    _mapping: Table

    def __init__(self, table: Table, start: Any, stop: Any, reverse: bool) -> None:
        super().__init__(table)
        self._start = start
        self._stop = stop
        self._lo = None if start is None else encode_key(start)
        self._hi = None if stop is None else encode_key(stop)
        self._reverse = reverse

    def _pairs(self, reverse: bool) -> Iterator[tuple[bytes, bytes]]:
        t = self._mapping
        return t._db._access.scan(t.name, self._lo, self._hi, reverse)

    def _iterate(self, reverse: bool) -> Iterator[Any]:
        # The state is taken now, when the iterator is made, not at its first item.
        if reverse:
            return chain.from_iterable(self._decoded_runs(self._pairs(reverse)))
        t = self._mapping
        columns = t._db._access.columns(t.name, self._lo, self._hi)
        return chain.from_iterable(self._decoded_columns(columns))

    def _decoded_columns(self, runs: Iterator[Columns]) -> Iterator[Iterable[Any]]:
        """:meth:`_decoded_runs` of runs of columns: a leaf's keys and values are
        gathered as they are (no tuple per entry) until a run is long enough."""
        decode_values = self._mapping._db._codec.decode_many
        part = self._part
        size = _RUN_FIRST
        keys: list[bytes] = []
        values: list[bytes] = []
        for run_keys, run_values in runs:
            keys += run_keys
            values += run_values
            if len(keys) < size:
                continue
            yield _decoded(part, keys, values, decode_values)
            size = _next_size(size, values)
            keys, values = [], []
        if keys:
            yield _decoded(part, keys, values, decode_values)

    def _decoded_runs(self, pairs: Iterator[tuple[bytes, bytes]]) -> Iterator[Iterable[Any]]:
        """Yield the entries run by run, each run decoded by C-level loops."""
        decode_values = self._mapping._db._codec.decode_many
        part = self._part
        size = _RUN_FIRST
        while True:
            run = list(islice(pairs, size))
            if not run:
                return
            keys, values = zip(*run, strict=True)
            yield _decoded(part, keys, values, decode_values)
            if len(run) < size:
                return  # the scan is exhausted
            size = _next_size(size, values)

    def _lookup(self, key: object) -> bytes | None:
        """The stored value of ``key`` if it lies in this view's range (one point
        lookup), else None; a key that cannot be a key is in no view."""
        try:
            k = encode_key(key)
        except (TypeError, ValueError):
            return None
        if len(k) > MAX_KEY_SIZE:
            return None
        if (self._lo is not None and k < self._lo) or (self._hi is not None and k >= self._hi):
            return None
        t = self._mapping
        return t._db._access.get(t.name, k)

    def __iter__(self) -> Iterator[Any]:
        return self._iterate(self._reverse)

    def __reversed__(self) -> Iterator[Any]:
        return self._iterate(not self._reverse)

    def __len__(self) -> int:
        if self._lo is None and self._hi is None:
            return len(self._mapping)
        return sum(1 for _ in self._pairs(False))

    def __repr__(self) -> str:
        bounds = ""
        if self._start is not None or self._stop is not None:
            bounds = f" [{self._start!r}, {self._stop!r})"
        order = " reversed" if self._reverse else ""
        return f"<{self._part} of table {self._mapping.name!r}{bounds}{order}>"


class KeysRange(RangeView, KeysView[Any]):
    """The keys of a table (in a range): a ``collections.abc.KeysView``."""

    __slots__ = ()
    _part = "keys"

    def __contains__(self, key: object) -> bool:
        return self._lookup(key) is not None


class ValuesRange(RangeView, ValuesView[Any]):
    """The values of a table (in a range): a ``collections.abc.ValuesView``.

    Membership compares with every value, as ``dict.values()`` does.
    """

    __slots__ = ()
    _part = "values"

    def __contains__(self, value: object) -> bool:
        return any(v is value or v == value for v in self)


class ItemsRange(RangeView, ItemsView[Any, Any]):
    """The ``(key, value)`` pairs of a table (in a range): a ``collections.abc.ItemsView``."""

    __slots__ = ()
    _part = "items"

    def __contains__(self, item: object) -> bool:
        if not isinstance(item, tuple) or len(item) != 2:
            return False
        raw = self._lookup(item[0])
        if raw is None:
            return False
        value = self._mapping._db._codec.decode(raw)
        return value is item[1] or bool(value == item[1])


class Table(MutableMapping[Any, Any]):
    """A named persistent map; get one with ``db.table(name)`` (or ``db.root``).

    A key that cannot be stored (a type other than str, bytes, int or tuples
    of them: TypeError; over ``MAX_KEY_SIZE`` bytes encoded: ValueError) is
    refused by every access that names one; ``in`` answers False for it.
    """

    __slots__ = ("_db", "name")

    def __init__(self, db: Database, name: str) -> None:
        self._db = db
        self.name = name

    def __getitem__(self, key: Any) -> Any:
        k = encode_key(key)
        if len(k) > MAX_KEY_SIZE:
            check_key_size(k)
        raw = self._db._access.get(self.name, k)
        if raw is None:
            raise NotFound(key)
        return self._db._codec.decode(raw)

    def get(self, key: Any, default: Any = None) -> Any:
        k = encode_key(key)
        if len(k) > MAX_KEY_SIZE:
            check_key_size(k)
        raw = self._db._access.get(self.name, k)
        return default if raw is None else self._db._codec.decode(raw)

    def __contains__(self, key: object) -> bool:
        try:
            k = encode_key(key)
        except (TypeError, ValueError):
            return False
        return len(k) <= MAX_KEY_SIZE and self._db._access.get(self.name, k) is not None

    def __setitem__(self, key: Any, value: Any) -> None:
        k = encode_key(key)
        if len(k) > MAX_KEY_SIZE:
            check_key_size(k)
        db = self._db
        if db._closed or db._mux is None:  # the common case skips two calls: a hot path
            db._check_writable()
        v = db._codec.encode(value)  # a TypeError here writes nothing
        db._access.put(self.name, k, v)

    def __delitem__(self, key: Any) -> None:
        k = check_key_size(encode_key(key))
        self._db._check_writable()
        if self._db._access.get(self.name, k) is None:
            raise NotFound(key)
        self._db._access.delete(self.name, k)

    def __iter__(self) -> Iterator[Any]:
        return iter(KeysRange(self, None, None, False))

    def __len__(self) -> int:
        return self._db._access.count(self.name)

    def keys(self, start: Any = None, stop: Any = None, *, reverse: bool = False) -> KeysRange:
        """Keys in ``[start, stop)`` (either bound may be None), optionally reversed."""
        return KeysRange(self, start, stop, reverse)

    def values(self, start: Any = None, stop: Any = None, *, reverse: bool = False) -> ValuesRange:
        """Values of the keys in ``[start, stop)``, optionally reversed."""
        return ValuesRange(self, start, stop, reverse)

    def items(self, start: Any = None, stop: Any = None, *, reverse: bool = False) -> ItemsRange:
        """``(key, value)`` pairs of the keys in ``[start, stop)``, optionally reversed."""
        return ItemsRange(self, start, stop, reverse)

    async def aset(self, key: Any, value: Any) -> None:
        """``t[key] = value`` for asyncio: waits for room without blocking the loop."""
        await self._db._writer().await_room()
        self[key] = value

    async def adelete(self, key: Any) -> None:
        """``del t[key]`` for asyncio (NotFound when absent)."""
        await self._db._writer().await_room()
        del self[key]

    async def aupdate(self, items: Any = (), /, **kw: Any) -> None:
        """``t.update(...)`` for asyncio: one wait for room, then the writes."""
        await self._db._writer().await_room()
        self.update(items, **kw)

    def clear(self) -> None:
        """Delete every entry, in one atomic block."""
        with self._db.atomic():
            keys = [k for k, _ in self._db._access.scan(self.name, None, None, False)]
            self._db._access.write_many(self.name, ((k, None) for k in keys))

    def __repr__(self) -> str:
        return f"<persist.Table {self.name!r}>"
