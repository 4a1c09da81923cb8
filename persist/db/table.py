"""Tables: named, ordered, persistent ``MutableMapping`` s (DESIGN §2.5).

Keys are encoded order-preservingly (:mod:`.keys`), values with the
database's codec (:mod:`.values`).  Every write is one dictionary update in
the current wave; reads merge the waves with the committed tree.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, MutableMapping
from itertools import chain, islice
from typing import TYPE_CHECKING, Any

from ..errors import NotFound
from .keys import decode_keys, encode_key

if TYPE_CHECKING:
    from .database import Database

__all__ = ["RangeView", "Table"]

#: Iteration decodes entries in runs (a C-level loop per run): the first run
#: is short, for callers that take only the first few; later runs double up
#: to this many entries, or fewer when the values are large, so that what is
#: read ahead stays around _RUN_BYTES (it is read ahead of the caller).
_RUN_MAX = 128
_RUN_FIRST = 4
_RUN_BYTES = 64 * 1024


class RangeView:
    """Keys, values or items of a table between bounds, forward or reversed.

    Iterating reads the table as it is at that moment; ``len`` iterates.
    """

    __slots__ = ("_part", "_reverse", "_start", "_stop", "_table")

    def __init__(self, table: Table, part: str, start: Any, stop: Any, reverse: bool) -> None:
        self._table = table
        self._part = part
        self._start = start
        self._stop = stop
        self._reverse = reverse

    def _pairs(self, reverse: bool) -> Iterator[tuple[bytes, bytes]]:
        t = self._table
        lo = None if self._start is None else encode_key(self._start)
        hi = None if self._stop is None else encode_key(self._stop)
        return t._db._access.scan(t.name, lo, hi, reverse)

    def _iterate(self, reverse: bool) -> Iterator[Any]:
        # The state is taken now, when the iterator is made, not at its first item.
        return chain.from_iterable(self._decoded_runs(self._pairs(reverse)))

    def _decoded_runs(self, pairs: Iterator[tuple[bytes, bytes]]) -> Iterator[Iterable[Any]]:
        """Yield the entries run by run, each run decoded by C-level loops."""
        decode_values = self._table._db._codec.decode_many
        part = self._part
        size = _RUN_FIRST
        while True:
            run = list(islice(pairs, size))
            if not run:
                return
            keys, values = zip(*run, strict=True)
            if part == "keys":
                yield decode_keys(keys)
            elif part == "values":
                yield decode_values(values)
            else:
                yield zip(decode_keys(keys), decode_values(values), strict=True)
            if len(run) < size:
                return  # the scan is exhausted
            held = sum(map(len, values))
            size = max(1, min(_RUN_MAX, 2 * size, _RUN_BYTES * size // max(held, 1)))

    def __iter__(self) -> Iterator[Any]:
        return self._iterate(self._reverse)

    def __reversed__(self) -> Iterator[Any]:
        return self._iterate(not self._reverse)

    def __len__(self) -> int:
        return sum(1 for _ in self._pairs(False))

    def __contains__(self, item: object) -> bool:
        return any(x == item for x in self)

    def __repr__(self) -> str:
        return f"<{self._part} of table {self._table.name!r}>"


class Table(MutableMapping[Any, Any]):
    """A named persistent map; get one with ``db.table(name)`` (or ``db.root``)."""

    __slots__ = ("_db", "name")

    def __init__(self, db: Database, name: str) -> None:
        self._db = db
        self.name = name

    def __getitem__(self, key: Any) -> Any:
        raw = self._db._access.get(self.name, encode_key(key))
        if raw is None:
            raise NotFound(key)
        return self._db._codec.decode(raw)

    def get(self, key: Any, default: Any = None) -> Any:
        raw = self._db._access.get(self.name, encode_key(key))
        return default if raw is None else self._db._codec.decode(raw)

    def __contains__(self, key: object) -> bool:
        try:
            k = encode_key(key)
        except TypeError:
            return False
        return self._db._access.get(self.name, k) is not None

    def __setitem__(self, key: Any, value: Any) -> None:
        k = encode_key(key)
        db = self._db
        if db._closed or db._mux is None:  # the common case skips two calls: a hot path
            db._check_writable()
        v = db._codec.encode(value)  # a TypeError here writes nothing
        db._access.put(self.name, k, v)

    def __delitem__(self, key: Any) -> None:
        k = encode_key(key)
        self._db._check_writable()
        if self._db._access.get(self.name, k) is None:
            raise NotFound(key)
        self._db._access.delete(self.name, k)

    def __iter__(self) -> Iterator[Any]:
        return iter(RangeView(self, "keys", None, None, False))

    def __len__(self) -> int:
        return self._db._access.count(self.name)

    def keys(  # type: ignore[override]
        self, start: Any = None, stop: Any = None, *, reverse: bool = False
    ) -> RangeView:
        """Keys in ``[start, stop)`` (either bound may be None), optionally reversed."""
        return RangeView(self, "keys", start, stop, reverse)

    def values(  # type: ignore[override]
        self, start: Any = None, stop: Any = None, *, reverse: bool = False
    ) -> RangeView:
        return RangeView(self, "values", start, stop, reverse)

    def items(  # type: ignore[override]
        self, start: Any = None, stop: Any = None, *, reverse: bool = False
    ) -> RangeView:
        return RangeView(self, "items", start, stop, reverse)

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
