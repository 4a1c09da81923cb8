"""The application API (DESIGN §2.5): ``persist.open``, tables, records, objects."""

from .database import Database, open
from .keys import decode_key, encode_key
from .objects import Persistent, PersistentDict, PersistentList
from .rootlog import LogLimits
from .table import ItemsRange, KeysRange, RangeView, Table, ValuesRange
from .values import RecordRegistry, SchemaError, record, records

__all__ = [
    "Database",
    "ItemsRange",
    "KeysRange",
    "LogLimits",
    "Persistent",
    "PersistentDict",
    "PersistentList",
    "RangeView",
    "RecordRegistry",
    "SchemaError",
    "Table",
    "ValuesRange",
    "decode_key",
    "encode_key",
    "open",
    "record",
    "records",
]
