"""Encoding of application values: CBOR plus records and object references.

Plain data is CBOR (RFC 8949) through cbor2.  A value is stored only if it
comes back as it was: every type it holds must be in :data:`_SCALARS`, a
container of them (list, tuple, dict, set, frozenset), a registered record
or a persistent object, nested at most :data:`MAX_DEPTH` deep; anything else
raises ``TypeError`` before anything is written (docs/api.md, "Values").
Tags of ours (docs/format.md, "Values"):

* tag 27 ``[type name, {field: value}]`` -- a registered record (dataclass);
  27 is the registered tag for "serialised language-independent object";
* tag 39990 ``[items]`` -- a tuple, so tuples come back as tuples, not lists;
* tag 39991 ``oid`` -- a reference to a :class:`~persist.db.objects.Persistent`
  object stored in the database's object table;
* tag 39992 ``[items]`` -- a frozenset (CBOR's set tag 258 reads back as a set);
* tag 39993 ``text`` -- a Decimal that CBOR's decimal fraction (tag 4) cannot
  carry: NaN, sNaN, an infinity, or a negative zero, as ``str(value)``.

Decoding hands each tag's content to its decoder as decoded (cbor2's
``semantic_decoders``), so a list inside a tuple or a record field comes
back a list; cbor2's ``tag_hook`` would see it frozen into a tuple.
"""

from __future__ import annotations

import dataclasses
import datetime
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal
from fractions import Fraction
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
)
from itertools import repeat
from operator import itemgetter, sub
from typing import Any, Protocol
from uuid import UUID

import cbor2

from ..btree import MAX_KEY_SIZE
from ..errors import IntegrityError, PersistError, SchemaError
from .keys import encode_key

__all__ = [
    "MAX_DEPTH",
    "MAX_VALUE_SIZE",
    "TAG_DECIMAL",
    "TAG_FROZENSET",
    "TAG_RECORD",
    "TAG_REF",
    "TAG_TUPLE",
    "ObjectResolver",
    "RecordRegistry",
    "SchemaError",
    "StoredObject",
    "StoredRecord",
    "Undecodable",
    "ValueCodec",
    "decode_stored",
    "record",
]

TAG_RECORD = 27
TAG_TUPLE = 39990
TAG_REF = 39991
TAG_FROZENSET = 39992
TAG_DECIMAL = 39993

#: Containers (list, tuple, dict, set, frozenset, records) nest at most this
#: deep in one value.  A level costs the decoder at most three levels of its
#: own (a record: tag, array, map) and a leaf two more (Decimal: tag, array),
#: so the deepest value stays within :data:`_DECODE_DEPTH`; cbor2's encoder
#: has no limit of its own and overflows its stack some thousands deep.
MAX_DEPTH = 100
#: The decoder's limit (cbor2's default, fixed here so that it cannot move).
_DECODE_DEPTH = 400
#: The most bytes one encoded value may take: the root log writes a value's
#: length as a u32 and 0xFFFFFFFF marks a delete (docs/format.md "Root log").
MAX_VALUE_SIZE = 0xFFFFFFFF - 1


class RecordRegistry:
    """Record types by their stored name.  One process-wide default, :data:`records`."""

    def __init__(self) -> None:
        self._by_name: dict[str, type[Any]] = {}
        self._by_type: dict[type[Any], str] = {}

    def register(
        self, cls: type[Any], name: str | None = None, *, _stacklevel: int = 2
    ) -> type[Any]:
        """Register ``cls`` under ``name`` (default: ``module.qualname``).

        A class defined in ``__main__`` without a name gets a ``UserWarning``:
        its default name changes as soon as the class moves into a module,
        and every value stored under the old name stops reading.
        """
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"records must be dataclasses, not {cls!r}")
        if name is None and cls.__module__ == "__main__":
            warnings.warn(
                f"record {cls.__qualname__} is defined in __main__ and stored as "
                f"'__main__.{cls.__qualname__}': moving the class into a module would make "
                "its stored values unreadable; give it a lasting name with "
                "@persist.record(name=...)",
                UserWarning,
                stacklevel=_stacklevel,
            )
        name = name or f"{cls.__module__}.{cls.__qualname__}"
        if not isinstance(name, str) or not name:
            raise TypeError("a record name is a non-empty str")
        if len(encode_key(name)) > MAX_KEY_SIZE:  # its schema row is keyed by the name
            raise ValueError(f"a record name encodes to at most {MAX_KEY_SIZE} bytes as a key")
        other = self._by_name.get(name)
        if other is not None and other is not cls:
            raise ValueError(f"record name {name!r} is already registered for {other!r}")
        self._by_name[name] = cls
        self._by_type[cls] = name
        return cls

    def name_of(self, cls: type[Any]) -> str | None:
        return self._by_type.get(cls)

    def lookup(self, name: str) -> type[Any]:
        cls = self._by_name.get(name)
        if cls is None:
            raise SchemaError(
                f"unknown record type {name!r}: register it with @persist.record before reading"
            )
        return cls

    @staticmethod
    def descriptor(cls: type[Any]) -> dict[str, Any]:
        """The schema descriptor stored in the database for a record type."""
        fields = []
        for f in dataclasses.fields(cls):
            has_default = (
                f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
            )
            fields.append([f.name, has_default])
        return {"fields": fields}


records = RecordRegistry()


def record(cls: type[Any] | None = None, *, name: str | None = None) -> Any:
    """Class decorator registering a dataclass as a record type (``@persist.record``).

    ``name`` is the type's stored name (default ``module.qualname``); give one
    that outlives renames and moves of the class.
    """
    if cls is not None:
        return records.register(cls, name, _stacklevel=3)

    def wrap(c: type[Any]) -> type[Any]:
        return records.register(c, name, _stacklevel=3)

    return wrap


class ObjectResolver(Protocol):
    """How the codec turns Persistent objects into oids and back.

    An encode that meets new objects gets oids for them (:meth:`oid_of`)
    but writes nothing until it succeeded as a whole: then :meth:`settle`
    stores the new objects, or :meth:`abandon` forgets them.
    """

    def oid_of(self, obj: Any) -> int | None:
        """The oid of a Persistent object (a new one is held for :meth:`settle`),
        or None if ``obj`` is not one."""

    def load(self, oid: int) -> Any:
        """The object with this oid, from the identity map or as a lazily loaded ghost."""

    def settle(self) -> None:
        """Store the objects this thread's encode met first (TypeError or
        ValueError, writing none of them, when one cannot be stored)."""

    def abandon(self) -> None:
        """Forget the objects this thread's failed encode met first."""


# -- plain bytes, str and int: the bytes cbor2 writes, without calling it ---------------------
#
# A CBOR head is the major type (3 bits) and an argument: below 24 in the same
# byte, else 1, 2, 4 or 8 big-endian bytes after 24..27 (RFC 8949 section 3).
# cbor2 always writes the shortest form, so these functions give its bytes exactly.

_MAJOR_UINT = 0x00
_MAJOR_NEGINT = 0x20
_MAJOR_BYTES = 0x40
_MAJOR_TEXT = 0x60
_INT_LIMIT = 1 << 64


def _head(major: int, n: int) -> bytes:
    """The CBOR head of major type ``major`` with argument ``0 <= n < 2**64``."""
    if n < 24:
        return bytes((major | n,))
    if n < 0x100:
        return bytes((major | 24, n))
    if n < 0x10000:
        return bytes((major | 25,)) + n.to_bytes(2, "big")
    if n < 0x100000000:
        return bytes((major | 26,)) + n.to_bytes(4, "big")
    return bytes((major | 27,)) + n.to_bytes(8, "big")


#: The heads of byte strings of 0 to 255 bytes.
_BYTES_HEADS = tuple(_head(_MAJOR_BYTES, n) for n in range(0x100))


def _encode_plain(value: object) -> bytes | None:
    """The CBOR of a plain bytes, str or int (below 2**64 in magnitude), else None."""
    if type(value) is bytes:
        return _head(_MAJOR_BYTES, len(value)) + value
    if type(value) is str:
        try:
            raw = value.encode("utf-8")
        except UnicodeEncodeError:
            return None  # a lone surrogate: the general path reports it
        return _head(_MAJOR_TEXT, len(raw)) + raw
    if type(value) is int and -_INT_LIMIT <= value < _INT_LIMIT:
        return _head(_MAJOR_UINT, value) if value >= 0 else _head(_MAJOR_NEGINT, -1 - value)
    return None


_first = itemgetter(0)
_second = itemgetter(1)
_from1 = itemgetter(slice(1, None))
_from2 = itemgetter(slice(2, None))
_SHORT_BYTES = frozenset(range(_MAJOR_BYTES, _MAJOR_BYTES + 24))
_SHORT_TEXT = frozenset(range(_MAJOR_TEXT, _MAJOR_TEXT + 24))
_BYTES_1 = frozenset([_MAJOR_BYTES | 24])
_TEXT_1 = frozenset([_MAJOR_TEXT | 24])
_TWO = frozenset([2])
_UTF8 = repeat("utf-8")


def _decode_plain_run(data: Sequence[bytes]) -> list[Any] | None:
    """Decode values that are all byte strings, or all text, below 256 bytes; else None.

    Only items that are exactly one head and its content qualify (what
    cbor2.loads would read completely), so the result equals decoding each.
    Every step is a C-level ``map``: this is the scan's hot loop.
    """
    try:
        heads = set(map(_first, data))
        if heads in (_BYTES_1, _TEXT_1):  # head, one length byte, content
            if set(map(sub, map(len, data), map(_second, data))) != _TWO:
                return None
            content = map(_from2, data)
        elif heads and (heads <= _SHORT_BYTES or heads <= _SHORT_TEXT):  # head (major | n), content
            major = min(heads) & 0xE0
            if set(map(sub, map(len, data), map(_first, data))) != {1 - major}:
                return None
            content = map(_from1, data)
        else:
            return None
    except IndexError:  # an empty or truncated item
        return None
    if min(heads) < _MAJOR_TEXT:
        return list(content)
    try:
        return list(map(bytes.decode, content, _UTF8))
    except UnicodeDecodeError:
        return None  # not valid text: the general path reports it


#: Types stored as themselves that hold no other value (docs/api.md, "Values").
#: Exact types only: a subclass (IntEnum, a str subclass ...) would come back
#: as its base.  datetime is checked on its own (its timezone must survive).
_SCALARS: frozenset[type] = frozenset(
    {
        type(None),
        bool,
        int,
        float,
        complex,
        str,
        bytes,
        Decimal,
        Fraction,
        UUID,
        datetime.date,
        IPv4Address,
        IPv6Address,
        IPv4Network,
        IPv6Network,
        IPv4Interface,
        IPv6Interface,
    }
)
_SEQUENCES: frozenset[type] = frozenset({list, tuple, set, frozenset})
_MINUTE = datetime.timedelta(minutes=1)


def _refusal(value: Any) -> str:
    """Why ``value`` (of a type outside the table) cannot be stored, with a way out."""
    cls = type(value)
    what = f"cannot store a {cls.__module__}.{cls.__qualname__}"
    from enum import Enum

    from .table import Table

    if isinstance(value, Table):
        return f"{what}: store the table's name and open it with db.table(name)"
    if isinstance(value, Enum):
        return f"{what}: an enum member would come back as its value; store .value or .name"
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return f"{what}: a namedtuple would come back as a tuple; use a @persist.record dataclass"
    if isinstance(value, bytearray | memoryview):
        return f"{what}: store bytes(value)"
    if isinstance(value, range):
        return f"{what}: store list(value) or its (start, stop, step)"
    if isinstance(value, Mapping):
        return f"{what}: it would come back as a dict; store dict(value)"
    base = next((b for b in cls.__mro__[1:] if b in _SCALARS or b in _SEQUENCES), None)
    if base is not None:
        return f"{what}: it would come back as a {base.__name__}; store {base.__name__}(value)"
    return (
        f"{what}: use plain data (docs/api.md, 'Values'), a @persist.record dataclass "
        "or a persist.Persistent subclass"
    )


def _datetime_refusal(value: datetime.datetime) -> str | None:
    tz = value.tzinfo
    if tz is None:
        return "cannot store a naive datetime: give it a timezone (datetime.timezone.utc)"
    offset = tz.utcoffset(value)
    if (
        type(tz) is not datetime.timezone
        or offset is None
        or offset % _MINUTE
        or tz.tzname(None) != datetime.timezone(offset).tzname(None)
    ):
        return (
            f"cannot store a datetime whose tzinfo is {tz!r}: only a fixed offset of whole "
            "minutes without a name comes back as it was; convert it with "
            ".astimezone(datetime.timezone.utc) and store the zone's name beside it"
        )
    return None


class ValueCodec:
    """Encodes and decodes values for one database."""

    def __init__(
        self,
        registry: RecordRegistry,
        resolver: ObjectResolver,
        on_record_type: Callable[[type[Any], str], None],
        object_classes: list[type[Any]] | None = None,
    ) -> None:
        self._registry = registry
        self._resolver = resolver
        self._on_record_type = on_record_type  # records the schema on first use
        # cbor2 matches encoders by exact type: every object class gets its own.
        self._object_classes = object_classes if object_classes is not None else []
        self._encoders: dict[type, Callable[[Any, Any], None]] = {}
        self._object_types: frozenset[type] = frozenset()
        self._known = -1
        self._semantic: dict[int, Callable[[Any, bool], Any]] = {
            TAG_TUPLE: _decode_tuple,
            TAG_FROZENSET: _decode_frozenset,
            TAG_DECIMAL: _decode_decimal,
            TAG_RECORD: self._decode_record,
            TAG_REF: self._decode_ref,
        }

    def _current_encoders(self) -> dict[type, Callable[[Any, Any], None]]:
        if self._known != len(self._object_classes):
            classes = list(self._object_classes)
            encoders: dict[type, Callable[[Any, Any], None]] = {
                tuple: _encode_tuple,
                frozenset: _encode_frozenset,
                Decimal: _encode_decimal,
            }
            for cls in classes:
                encoders[cls] = self._encode_object
            self._encoders = encoders
            self._object_types = frozenset(classes)
            self._known = len(classes)
        return self._encoders

    # -- encoding ----------------------------------------------------------------

    def encode(self, value: Any) -> bytes:
        """The stored form of ``value``; TypeError or ValueError, writing nothing,
        when it cannot be stored.  New persistent objects it reaches are stored
        (all of them, or none) before this returns."""
        if type(value) is bytes and len(value) < 0x100:  # the commonest value: one lookup
            return _BYTES_HEADS[len(value)] + value
        plain = _encode_plain(value)
        if plain is not None:
            if len(plain) > MAX_VALUE_SIZE:
                raise ValueError(_too_large(len(plain)))
            return plain
        try:
            data, types = self.encode_deferred(value)
        except BaseException:
            self._resolver.abandon()
            raise
        self._resolver.settle()
        self.note_record_types(types)
        return data

    def encode_deferred(self, value: Any) -> tuple[bytes, list[tuple[type[Any], str]]]:
        """``(stored form, record types in it)``, with no write: new objects it
        reaches are held for the resolver's ``settle``, and the record types
        are for :meth:`note_record_types` once the encoded value is kept."""
        encoders = self._current_encoders()
        types = self._check(value)
        try:
            data = cbor2.dumps(value, default=self._default, encoders=encoders)
        except cbor2.CBOREncodeError as exc:
            if isinstance(exc.__cause__, PersistError):
                raise exc.__cause__ from None
            raise TypeError(f"cannot store value: {exc.__cause__ or exc}") from None
        except (ValueError, OverflowError) as exc:  # a lone surrogate in a str, say
            raise TypeError(f"cannot store value: {exc}") from None
        if len(data) > MAX_VALUE_SIZE:
            raise ValueError(_too_large(len(data)))
        return data, types

    def note_record_types(self, types: Iterable[tuple[type[Any], str]]) -> None:
        """Store the schema of each record type (once per database)."""
        for cls, name in types:
            self._on_record_type(cls, name)

    def _check(self, value: Any) -> list[tuple[type[Any], str]]:
        """Raise TypeError unless ``value`` reads back as it is: every type in the
        table, containers nested at most MAX_DEPTH deep (so no cycle either).
        Returns the record types met.  Persistent objects are leaves here: their
        attributes are values of their own.

        This runs before every encode of a container, so it is written for
        speed: a container of more than a few items that holds only scalars
        costs one C-level pass over their types.
        """
        scalars = _SCALARS
        found: list[tuple[type[Any], str]] = []
        if type(value) in scalars:
            return found
        objects = self._object_types
        todo: list[tuple[Any, int]] = [(value, 0)]
        pop, push = todo.pop, todo.append
        while todo:
            item, depth = pop()
            cls = type(item)
            if cls is list or cls is tuple or cls is set or cls is frozenset:
                groups: tuple[Any, ...] = (item,)
            elif cls is dict:
                groups = (item.keys(), item.values())
            elif cls in scalars or cls in objects:
                continue
            elif cls is datetime.datetime:
                reason = _datetime_refusal(item)
                if reason is not None:
                    raise TypeError(reason)
                continue
            else:
                name = self._registry.name_of(cls)
                if name is None:
                    raise TypeError(_refusal(item))
                found.append((cls, name))
                try:
                    groups = ([getattr(item, f) for f in _field_names(cls)],)
                except AttributeError as exc:
                    raise TypeError(
                        f"cannot store a {name} without all its fields: {exc}"
                    ) from None
            depth += 1
            if depth > MAX_DEPTH:
                raise TypeError(
                    f"cannot store a value nested more than {MAX_DEPTH} containers deep "
                    "(or one that contains itself)"
                )
            for members in groups:
                if len(members) > 8 and set(map(type, members)) <= scalars:
                    continue
                for x in members:
                    if type(x) not in scalars:
                        push((x, depth))
        return found

    def _encode_object(self, encoder: Any, value: Any) -> None:
        encoder.encode(cbor2.CBORTag(TAG_REF, self._resolver.oid_of(value)))

    def _default(self, encoder: Any, value: Any) -> None:
        """A record (the only type :meth:`_check` passes that cbor2 lacks)."""
        cls = type(value)
        name = self._registry.name_of(cls)
        if name is None:
            raise TypeError(_refusal(value))
        fields = {f: getattr(value, f) for f in _field_names(cls)}
        encoder.encode(cbor2.CBORTag(TAG_RECORD, [name, fields]))

    # -- decoding ----------------------------------------------------------------

    def decode(self, data: bytes) -> Any:
        # Fast paths: a byte string below 256 bytes, or a small int, exactly.
        n = len(data)
        if n > 1:
            head = data[0]
            if head == _MAJOR_BYTES | 24:
                if n - data[1] == 2:
                    return data[2:]
            elif _MAJOR_BYTES <= head < _MAJOR_BYTES + 24 and n == head - _MAJOR_BYTES + 1:
                return data[1:]
        elif n == 1 and data[0] < 24:
            return data[0]
        return self.decode_general(data)

    def decode_general(self, data: bytes) -> Any:
        """:meth:`decode` without its shortcuts."""
        try:
            return cbor2.loads(data, semantic_decoders=self._semantic, max_depth=_DECODE_DEPTH)
        except cbor2.CBORDecodeError as exc:
            if isinstance(exc.__cause__, PersistError):
                raise exc.__cause__ from None
            raise IntegrityError("a stored value does not decode") from None

    def decode_many(self, data: Sequence[bytes]) -> list[Any]:
        """Decode several values: ``[self.decode(d) for d in data]``, faster."""
        plain = _decode_plain_run(data)
        return plain if plain is not None else list(map(self.decode, data))

    def _decode_ref(self, oid: Any, immutable: bool) -> Any:
        return self._resolver.load(int(oid))

    def _decode_record(self, content: Any, immutable: bool) -> Any:
        name, fields = content
        return self._build_record(str(name), dict(fields))

    def _build_record(self, name: str, fields: dict[str, Any]) -> Any:
        cls = self._registry.lookup(name)
        declared = dataclasses.fields(cls)
        extra = set(fields) - {f.name for f in declared}
        if extra:
            raise SchemaError(
                f"stored {name} has fields {sorted(extra)} that the class no longer declares"
            )
        late = {f.name for f in declared if not f.init and f.name in fields}
        try:
            obj = cls(**{k: v for k, v in fields.items() if k not in late})
        except TypeError as exc:
            raise SchemaError(f"stored {name} does not fit the class: {exc}") from None
        for k in late:  # fields the constructor does not take, as they were stored
            object.__setattr__(obj, k, fields[k])
        return obj


_FIELD_NAMES: dict[type[Any], tuple[str, ...]] = {}


def _field_names(cls: type[Any]) -> tuple[str, ...]:
    """The fields of a record class, in order (a dataclass's fields never change)."""
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


def _too_large(size: int) -> str:
    return f"a value encodes to {size} bytes; stored values are at most {MAX_VALUE_SIZE} bytes"


def _encode_tuple(encoder: Any, value: Any) -> None:
    encoder.encode(cbor2.CBORTag(TAG_TUPLE, list(value)))


def _encode_frozenset(encoder: Any, value: Any) -> None:
    encoder.encode(cbor2.CBORTag(TAG_FROZENSET, list(value)))


def _encode_decimal(encoder: Any, value: Decimal) -> None:
    if value.is_finite() and not (value.is_zero() and value.is_signed()):
        encoder.encode_decimal(value)  # CBOR's decimal fraction, as always
    else:
        encoder.encode(cbor2.CBORTag(TAG_DECIMAL, str(value)))


def _decode_tuple(items: Any, immutable: bool) -> tuple[Any, ...]:
    return tuple(items)


def _decode_frozenset(items: Any, immutable: bool) -> frozenset[Any]:
    return frozenset(items)


def _decode_decimal(text: Any, immutable: bool) -> Decimal:
    if type(text) is not str:
        raise ValueError("a special decimal is stored as text")
    value = Decimal(text)
    if value.is_finite() and not (value.is_zero() and value.is_signed()):
        raise ValueError("tag 39993 holds only what tag 4 cannot")
    return value


# -- decoding without the application's classes (tools: persist dump) ----------------


@dataclasses.dataclass(frozen=True)
class StoredRecord:
    """A record as stored: its type name and fields, without its class."""

    name: str
    fields: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class StoredObject:
    """A reference to a persistent object: its oid and stored class path
    (``module:qualname``; None when the object's class row is missing)."""

    oid: int
    class_path: str | None


@dataclasses.dataclass(frozen=True)
class Undecodable:
    """A stored value that does not decode, and why."""

    reason: str


def decode_stored(data: bytes, class_path: Callable[[int], str | None]) -> Any:
    """Decode a stored value without importing or constructing anything of the
    application's: records become :class:`StoredRecord`, references
    :class:`StoredObject` (``class_path(oid)`` names the class); a value that
    does not decode is an :class:`Undecodable`."""

    def record(content: Any, immutable: bool) -> StoredRecord:
        name, fields = content
        return StoredRecord(str(name), fields)

    def reference(oid: Any, immutable: bool) -> StoredObject:
        return StoredObject(int(oid), class_path(int(oid)))

    decoders: dict[int, Callable[[Any, bool], Any]] = {
        TAG_TUPLE: _decode_tuple,
        TAG_FROZENSET: _decode_frozenset,
        TAG_DECIMAL: _decode_decimal,
        TAG_RECORD: record,
        TAG_REF: reference,
    }
    try:
        return cbor2.loads(data, semantic_decoders=decoders, max_depth=_DECODE_DEPTH)
    except cbor2.CBORDecodeError as exc:
        return Undecodable(str(exc.__cause__ or exc))
