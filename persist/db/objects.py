"""Transparent persistence of objects: :class:`Persistent` and its containers.

Storage (the internal table ``__objects__``, docs/format.md "Objects"): an
object with oid ``n`` has a class row at key ``(n,)`` holding
``"module:qualname"`` and one row per attribute at ``(n, name)``.  Assigning
an attribute writes one row: per-write work stays one encode and one
dictionary update.  Attributes whose names start with ``_p_`` (bookkeeping)
or ``_v_`` (volatile) are never stored.

Life cycle:

* A new object becomes persistent when it is first stored in a table, the
  root, or an attribute of a persistent object: it gets an oid and all its
  attributes are written, in the same wave as (or an earlier wave than) the
  reference to it, so a reference never outlives a crash without its object.
  The encode that meets new objects only gives them oids; once it succeeded,
  :meth:`ObjectSpace.settle` encodes their attributes (adopting the new
  objects those reach, in a loop, not by recursion) and writes every row in
  one batch.  If any attribute cannot be stored, no row is written and every
  object adopted on the way is new again (:meth:`ObjectSpace.abandon`).
* A reference loads lazily: decoding gives a *ghost* (right class, no state)
  whose state is read on first attribute access.  Within one database an oid
  always maps to the same Python object while it is alive (identity map).
* Cycles are fine: an oid is assigned before the attributes are encoded.
* Objects are not collected automatically: :meth:`Database.collect_garbage`
  deletes the objects no table reaches (docs/api.md).
"""

from __future__ import annotations

import importlib
import threading
import weakref
from collections.abc import Iterable, Iterator, MutableMapping, MutableSequence
from typing import TYPE_CHECKING, Any, Protocol, SupportsIndex, overload

import cbor2

from ..btree import MAX_KEY_SIZE
from ..mux import Columns
from .keys import decode_key, encode_key
from .values import TAG_REF, SchemaError

if TYPE_CHECKING:
    from .values import ValueCodec

__all__ = [
    "OBJECTS",
    "PERSISTENT_CLASSES",
    "ObjectSpace",
    "Persistent",
    "PersistentDict",
    "PersistentList",
]

OBJECTS = "__objects__"


class Access(Protocol):
    """The read and write path the object space uses (the multiplexer, or a reader)."""

    def get(self, table: str, key: bytes) -> bytes | None: ...

    def scan(
        self,
        table: str,
        start: bytes | None = None,
        stop: bytes | None = None,
        reverse: bool = False,
    ) -> Iterator[tuple[bytes, bytes]]: ...

    def columns(
        self, table: str, start: bytes | None = None, stop: bytes | None = None
    ) -> Iterator[Columns]: ...

    def count(self, table: str) -> int: ...

    def put(self, table: str, key: bytes, value: bytes) -> None: ...

    def delete(self, table: str, key: bytes) -> None: ...

    def write_many(self, table: str, items: Iterable[tuple[bytes, bytes | None]]) -> None: ...


def _stored(name: str) -> bool:
    return not (name.startswith("_p_") or name.startswith("_v_") or name.startswith("__"))


#: Every Persistent class, so the codec can give each an exact-type encoder
#: (cbor2 matches encoders by exact type and would otherwise encode a
#: PersistentDict as a plain map).  Only ever grows.
PERSISTENT_CLASSES: list[type[Persistent]] = []


class Persistent:
    """Subclass this; attribute assignments are saved with no persistence code.

    Values of attributes follow the rules of table values (plain data,
    records, other persistent objects).  Methods and class attributes are not
    stored; an instance attribute shadowing a class attribute is.
    """

    _p_space: ObjectSpace | None = None
    _p_oid: int | None = None
    _p_ghost: bool = False

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        PERSISTENT_CLASSES.append(cls)

    def __getattribute__(self, name: str) -> Any:
        if name[0] != "_" or not (name.startswith("_p_") or name.startswith("__")):
            d = object.__getattribute__(self, "__dict__")
            if d.get("_p_ghost"):
                d["_p_space"].activate(self)
        return object.__getattribute__(self, name)

    def __setattr__(self, name: str, value: Any) -> None:
        d = object.__getattribute__(self, "__dict__")
        space = d.get("_p_space")
        if space is not None and _stored(name):
            if d.get("_p_ghost"):
                space.activate(self)
            space.save_attr(d["_p_oid"], name, value)
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        d = object.__getattribute__(self, "__dict__")
        space = d.get("_p_space")
        if d.get("_p_ghost"):
            space.activate(self)
        object.__delattr__(self, name)
        if space is not None and _stored(name):
            space.delete_attr(d["_p_oid"], name)

    def _p_state(self) -> dict[str, Any]:
        """The attributes that are stored."""
        return {k: v for k, v in object.__getattribute__(self, "__dict__").items() if _stored(k)}

    def __repr__(self) -> str:
        d = object.__getattribute__(self, "__dict__")
        oid = d.get("_p_oid")
        where = f" oid={oid}" if oid is not None else ""
        return f"<{type(self).__qualname__}{where}{' ghost' if d.get('_p_ghost') else ''}>"


PERSISTENT_CLASSES.append(Persistent)


class PersistentDict(Persistent, MutableMapping[Any, Any]):
    """A dict whose in-place changes are saved (the whole dict per change: O(size)).

    For large maps use ``db.table(name)``, which writes one row per key.
    """

    def __init__(self, *args: Any, **kw: Any) -> None:
        self.data = dict(*args, **kw)

    def _save(self) -> None:
        self.data = self.data  # re-assigning writes the attribute row

    def __getitem__(self, key: Any) -> Any:
        return self.data[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        self.data[key] = value
        self._save()

    def __delitem__(self, key: Any) -> None:
        del self.data[key]
        self._save()

    def __iter__(self) -> Iterator[Any]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


class PersistentList(Persistent, MutableSequence[Any]):
    """A list whose in-place changes are saved (the whole list per change: O(size))."""

    def __init__(self, items: Iterable[Any] = ()) -> None:
        self.data = list(items)

    @overload
    def __getitem__(self, i: SupportsIndex) -> Any: ...
    @overload
    def __getitem__(self, i: slice) -> list[Any]: ...
    def __getitem__(self, i: SupportsIndex | slice) -> Any:
        return self.data[i]

    def __setitem__(self, i: Any, value: Any) -> None:
        self.data[i] = value
        self.data = self.data

    def __delitem__(self, i: Any) -> None:
        del self.data[i]
        self.data = self.data

    def __len__(self) -> int:
        return len(self.data)

    def insert(self, index: int, value: Any) -> None:
        self.data.insert(index, value)
        self.data = self.data


class ObjectSpace:
    """The objects of one database: oids, the identity map, loading and saving."""

    def __init__(self, access: Access, codec: ValueCodec | None = None) -> None:
        self.access = access
        self.codec: ValueCodec = codec  # type: ignore[assignment]  # set by the database
        self._lock = threading.RLock()
        self._identity: weakref.WeakValueDictionary[int, Persistent] = weakref.WeakValueDictionary()
        self._next_oid: int | None = None  # read at the first adoption, not at open
        self._local = threading.local()  # .pending: objects adopted by this thread's encode

    # -- the codec's resolver ----------------------------------------------------

    def oid_of(self, obj: Any) -> int | None:
        if not isinstance(obj, Persistent):
            return None
        d = object.__getattribute__(obj, "__dict__")
        space = d.get("_p_space")
        if space is self:
            return int(d["_p_oid"])
        if space is not None:
            raise ValueError("a persistent object belongs to another database")
        return self._adopt(obj)

    def settle(self) -> None:
        """Store the objects this thread's encode adopted, and the objects their
        attributes reach, as one batch of rows: all of them, or (TypeError,
        ValueError) none, each object then back to new."""
        pending: list[Persistent] | None = getattr(self._local, "pending", None)
        if not pending:
            return
        try:
            rows: list[tuple[bytes, bytes | None]] = []
            types: list[tuple[type[Any], str]] = []
            i = 0
            while i < len(pending):  # encoding an object's attributes may adopt more
                obj = pending[i]
                i += 1
                oid = object.__getattribute__(obj, "__dict__")["_p_oid"]
                cls = type(obj)
                rows.append(
                    (encode_key((oid,)), cbor2.dumps(f"{cls.__module__}:{cls.__qualname__}"))
                )
                for name, value in obj._p_state().items():
                    key = attribute_key(oid, name)
                    data, found = self.codec.encode_deferred(value)
                    rows.append((key, data))
                    types.extend(found)
            self.codec.note_record_types(types)
            self.access.write_many(OBJECTS, rows)
        except BaseException:
            self.abandon()
            raise
        pending.clear()

    def abandon(self) -> None:
        """Forget the objects this thread's failed encode adopted: new again."""
        pending: list[Persistent] | None = getattr(self._local, "pending", None)
        if not pending:
            return
        with self._lock:
            for obj in pending:
                d = object.__getattribute__(obj, "__dict__")
                oid = d.pop("_p_oid", None)
                d.pop("_p_space", None)
                if oid is not None and self._identity.get(oid) is obj:
                    del self._identity[oid]
        pending.clear()

    def load(self, oid: int) -> Persistent:
        with self._lock:
            obj = self._identity.get(oid)
            if obj is not None:
                return obj
            raw = self.access.get(OBJECTS, encode_key((oid,)))
            if raw is None:
                raise SchemaError(f"a reference names object {oid}, which does not exist")
            cls = _import_class(str(cbor2.loads(raw)))
            obj = cls.__new__(cls)
            d = object.__getattribute__(obj, "__dict__")
            d.update(_p_space=self, _p_oid=oid, _p_ghost=True)
            self._identity[oid] = obj
            return obj

    def class_path(self, oid: int) -> str | None:
        """The stored ``module:qualname`` of object ``oid`` (nothing imported),
        or None when it has no class row."""
        raw = self.access.get(OBJECTS, encode_key((oid,)))
        if raw is None:
            return None
        path = cbor2.loads(raw)
        return path if isinstance(path, str) else None

    # -- saving and loading state ------------------------------------------------

    def _first_free_oid(self) -> int:
        last = next(self.access.scan(OBJECTS, None, None, True), None)
        if last is None:
            return 1
        key = decode_key(last[0])
        if not (isinstance(key, tuple) and key and isinstance(key[0], int)):
            raise SchemaError("the object table holds a malformed key")
        return key[0] + 1

    def _adopt(self, obj: Persistent) -> int:
        """Give a new object its oid at once (so cycles close); its rows wait
        for :meth:`settle`, which the encode that met it calls."""
        with self._lock:
            if self._next_oid is None:
                self._next_oid = self._first_free_oid()
            oid = self._next_oid
            self._next_oid += 1
            d = object.__getattribute__(obj, "__dict__")
            d.update(_p_space=self, _p_oid=oid)
            self._identity[oid] = obj
        pending = getattr(self._local, "pending", None)
        if pending is None:
            pending = self._local.pending = []
        pending.append(obj)
        return oid

    def save_attr(self, oid: int, name: str, value: Any) -> None:
        key = attribute_key(oid, name)
        self.access.put(OBJECTS, key, self.codec.encode(value))

    def delete_attr(self, oid: int, name: str) -> None:
        self.access.delete(OBJECTS, encode_key((oid, name)))

    def activate(self, obj: Persistent) -> None:
        """Load a ghost's state (REQUIRES: ``obj`` belongs to this space)."""
        d = object.__getattribute__(obj, "__dict__")
        with self._lock:
            if not d.get("_p_ghost"):
                return
            oid = d["_p_oid"]
            lo = encode_key((oid,))
            hi = encode_key((oid + 1,))
            state: dict[str, Any] = {}
            for k, v in self.access.scan(OBJECTS, lo, hi):
                key = decode_key(k)
                assert isinstance(key, tuple)
                if len(key) == 2:
                    state[str(key[1])] = self.codec.decode(v)
            d.update(state)
            d["_p_ghost"] = False

    def delete_object(self, oid: int) -> None:
        """Delete every row of object ``oid`` (used by garbage collection)."""
        lo, hi = encode_key((oid,)), encode_key((oid + 1,))
        for k, _ in list(self.access.scan(OBJECTS, lo, hi)):
            self.access.delete(OBJECTS, k)

    def collect(self, tables: Iterable[str]) -> int:
        """Delete the objects no row of ``tables`` reaches (directly or through
        other objects); return how many.  The caller holds an atomic block."""
        found: set[int] = set()
        todo: list[int] = []

        def mark(tag: cbor2.CBORTag, *_: Any) -> None:
            if tag.tag == TAG_REF and int(tag.value) not in found:
                found.add(int(tag.value))
                todo.append(int(tag.value))

        for name in tables:
            for _, raw in self.access.scan(name):
                cbor2.loads(raw, tag_hook=mark)
        while todo:
            oid = todo.pop()
            for _, raw in self.access.scan(OBJECTS, encode_key((oid,)), encode_key((oid + 1,))):
                cbor2.loads(raw, tag_hook=mark)
        dead = [oid for oid in self.all_oids() if oid not in found]
        for oid in dead:
            self.delete_object(oid)
        return len(dead)

    def all_oids(self) -> Iterator[int]:
        for k, _ in self.access.scan(OBJECTS):
            key = decode_key(k)
            if isinstance(key, tuple) and len(key) == 1 and isinstance(key[0], int):
                yield key[0]


def attribute_key(oid: int, name: str) -> bytes:
    """The key of attribute ``name`` of object ``oid``; ValueError when the
    name is too long for a key (``MAX_KEY_SIZE`` encoded bytes)."""
    key = encode_key((oid, name))
    if len(key) > MAX_KEY_SIZE:
        raise ValueError(
            f"an attribute name of {len(name)} characters is too long: the key "
            f"(oid, name) of a stored attribute is at most {MAX_KEY_SIZE} bytes encoded"
        )
    return key


def _import_class(path: str) -> type[Persistent]:
    module, _, qualname = path.partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        raise SchemaError(f"stored object of class {path!r}, which cannot be imported") from None
    if not (isinstance(obj, type) and issubclass(obj, Persistent)):
        raise SchemaError(f"stored object class {path!r} is not a persist.Persistent")
    return obj
