"""Tables: named, ordered, persistent ``MutableMapping`` s (DESIGN §2.5).

Keys are encoded order-preservingly (:mod:`.keys`), values with the
database's codec (:mod:`.values`).  Every write is one dictionary update in
the current wave; reads merge the waves with the committed tree.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import TYPE_CHECKING, Any

from ..errors import NotFound
from .keys import decode_key, encode_key

if TYPE_CHECKING:
    from .database import Database

__all__ = ["RangeView", "Table"]


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
        decode = self._table._db._codec.decode
        for k, v in self._pairs(reverse):
            if self._part == "keys":
                yield decode_key(k)
            elif self._part == "values":
                yield decode(v)
            else:
                yield decode_key(k), decode(v)

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
        self._db._check_writable()
        v = self._db._codec.encode(value)  # a TypeError here writes nothing
        self._db._access.put(self.name, k, v)

    def __delitem__(self, key: Any) -> None:
        k = encode_key(key)
        self._db._check_writable()
        if self._db._access.get(self.name, k) is None:
            raise NotFound(key)
        self._db._access.delete(self.name, k)

    def __iter__(self) -> Iterator[Any]:
        for k, _ in self._db._access.scan(self.name, None, None, False):
            yield decode_key(k)

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

    def clear(self) -> None:
        """Delete every entry, in one atomic block."""
        with self._db.atomic():
            keys = [k for k, _ in self._db._access.scan(self.name, None, None, False)]
            self._db._access.write_many(self.name, ((k, None) for k in keys))

    def __repr__(self) -> str:
        return f"<persist.Table {self.name!r}>"
