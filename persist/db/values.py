"""Encoding of application values: CBOR plus records and object references.

Plain data is CBOR (RFC 8949) through cbor2: None, bool, int, float, str,
bytes, list, dict, set, frozenset, timezone-aware datetime, Decimal, UUID ...
Three tags of ours (docs/format.md, "Values"):

* tag 27 ``[type name, {field: value}]`` -- a registered record (dataclass);
  27 is the registered tag for "serialised language-independent object";
* tag 39990 ``[items]`` -- a tuple, so tuples come back as tuples, not lists;
* tag 39991 ``oid`` -- a reference to a :class:`~persist.db.objects.Persistent`
  object stored in the database's object table.

A value CBOR cannot carry raises ``TypeError`` before anything is written.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from itertools import repeat
from operator import itemgetter, sub
from typing import Any, Protocol

import cbor2

from ..errors import IntegrityError, PersistError, SchemaError

__all__ = [
    "TAG_RECORD",
    "TAG_REF",
    "TAG_TUPLE",
    "ObjectResolver",
    "RecordRegistry",
    "SchemaError",
    "ValueCodec",
    "record",
]

TAG_RECORD = 27
TAG_TUPLE = 39990
TAG_REF = 39991


class RecordRegistry:
    """Record types by their stored name.  One process-wide default, :data:`records`."""

    def __init__(self) -> None:
        self._by_name: dict[str, type[Any]] = {}
        self._by_type: dict[type[Any], str] = {}

    def register(self, cls: type[Any], name: str | None = None) -> type[Any]:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"records must be dataclasses, not {cls!r}")
        name = name or f"{cls.__module__}.{cls.__qualname__}"
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
    """Class decorator registering a dataclass as a record type (``@persist.record``)."""

    def wrap(c: type[Any]) -> type[Any]:
        return records.register(c, name)

    return wrap(cls) if cls is not None else wrap


class ObjectResolver(Protocol):
    """How the codec turns Persistent objects into oids and back."""

    def oid_of(self, obj: Any) -> int | None:
        """The oid of a Persistent object (storing it first if new), or None if not one."""

    def load(self, oid: int) -> Any:
        """The object with this oid, from the identity map or as a lazily loaded ghost."""


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
        self._known = -1

    def _current_encoders(self) -> dict[type, Callable[[Any, Any], None]]:
        if self._known != len(self._object_classes):
            classes = list(self._object_classes)
            encoders: dict[type, Callable[[Any, Any], None]] = {tuple: self._encode_tuple}
            for cls in classes:
                encoders[cls] = self._encode_object
            self._encoders = encoders
            self._known = len(classes)
        return self._encoders

    def encode(self, value: Any) -> bytes:
        if type(value) is bytes and len(value) < 0x100:  # the commonest value: one lookup
            return _BYTES_HEADS[len(value)] + value
        plain = _encode_plain(value)
        if plain is not None:
            return plain
        try:
            return cbor2.dumps(value, default=self._default, encoders=self._current_encoders())
        except cbor2.CBOREncodeError as exc:
            raise TypeError(f"cannot store value: {exc}") from None
        except (ValueError, OverflowError) as exc:
            raise TypeError(f"cannot store value: {exc}") from None

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
        try:
            return cbor2.loads(data, tag_hook=self._tag_hook)
        except cbor2.CBORDecodeError as exc:
            if isinstance(exc.__cause__, PersistError):
                raise exc.__cause__ from None
            raise IntegrityError("a stored value does not decode") from None

    def decode_many(self, data: Sequence[bytes]) -> list[Any]:
        """Decode several values: ``[self.decode(d) for d in data]``, faster."""
        plain = _decode_plain_run(data)
        return plain if plain is not None else list(map(self.decode, data))

    def _encode_tuple(self, encoder: Any, value: Any) -> None:
        encoder.encode(cbor2.CBORTag(TAG_TUPLE, list(value)))

    def _encode_object(self, encoder: Any, value: Any) -> None:
        encoder.encode(cbor2.CBORTag(TAG_REF, self._resolver.oid_of(value)))

    def _default(self, encoder: Any, value: Any) -> None:
        cls = type(value)
        name = self._registry.name_of(cls)
        if name is None:
            raise TypeError(
                f"cannot store a {cls.__qualname__}: use plain data, a @persist.record "
                "dataclass or a persist.Persistent subclass"
            )
        self._on_record_type(cls, name)
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        encoder.encode(cbor2.CBORTag(TAG_RECORD, [name, fields]))

    def _tag_hook(self, tag: cbor2.CBORTag, *_: Any) -> Any:
        if tag.tag == TAG_TUPLE:
            return tuple(tag.value)
        if tag.tag == TAG_REF:
            return self._resolver.load(int(tag.value))
        if tag.tag == TAG_RECORD:
            name, fields = tag.value
            return self._build_record(str(name), dict(fields))
        return tag

    def _build_record(self, name: str, fields: dict[str, Any]) -> Any:
        cls = self._registry.lookup(name)
        known = {f.name for f in dataclasses.fields(cls)}
        extra = set(fields) - known
        if extra:
            raise SchemaError(
                f"stored {name} has fields {sorted(extra)} that the class no longer declares"
            )
        try:
            return cls(**fields)
        except TypeError as exc:
            raise SchemaError(f"stored {name} does not fit the class: {exc}") from None
