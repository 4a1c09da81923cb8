"""Stored values as strict JSON, for ``persist dump`` (its --help lists the forms).

JSON has null, booleans, numbers, strings, arrays and objects with string
keys.  Everything else a value may hold becomes an object with one member
whose name starts with ``$``; a dict whose keys are all str and none starts
with ``$`` stays an object, so no stored dict can pass for one of these.
"""

from __future__ import annotations

import base64
import datetime
import json
import math
from collections.abc import Mapping
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
from typing import Any
from uuid import UUID

import cbor2

from ..db.values import StoredObject, StoredRecord, Undecodable

__all__ = ["to_json"]

_IP = (IPv4Address, IPv6Address, IPv4Network, IPv6Network, IPv4Interface, IPv6Interface)


def _float(x: float) -> Any:
    if math.isfinite(x):
        return x
    return {"$float": "NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity")}


def _sorted(items: list[Any]) -> list[Any]:
    """Set members in a stable order (by their JSON text)."""
    return sorted(items, key=lambda v: json.dumps(v, sort_keys=True))


def to_json(value: Any) -> Any:
    """``value`` (as :func:`persist.db.values.decode_stored` gives it) as JSON data."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode()}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    if isinstance(value, tuple):
        return {"$tuple": [to_json(v) for v in value]}
    if isinstance(value, frozenset):
        return {"$frozenset": _sorted([to_json(v) for v in value])}
    if isinstance(value, set):
        return {"$set": _sorted([to_json(v) for v in value])}
    if isinstance(value, Mapping):  # a dict, or cbor2's frozendict inside a set or a key
        if all(isinstance(k, str) and not k.startswith("$") for k in value):
            return {k: to_json(v) for k, v in value.items()}
        return {"$map": [[to_json(k), to_json(v)] for k, v in value.items()]}
    if isinstance(value, StoredRecord):
        return {"$record": value.name, "fields": {k: to_json(v) for k, v in value.fields.items()}}
    if isinstance(value, StoredObject):
        return {"$object": value.oid, "class": value.class_path}
    if isinstance(value, Undecodable):
        return {"$undecodable": value.reason}
    if isinstance(value, Decimal):
        return {"$decimal": str(value)}
    if isinstance(value, Fraction):
        return {"$fraction": str(value)}
    if isinstance(value, complex):
        return {"$complex": [_float(value.real), _float(value.imag)]}
    if isinstance(value, datetime.datetime):
        return {"$datetime": value.isoformat()}
    if isinstance(value, datetime.date):
        return {"$date": value.isoformat()}
    if isinstance(value, UUID):
        return {"$uuid": str(value)}
    if isinstance(value, _IP):
        return {"$ip": str(value)}
    if isinstance(value, cbor2.CBORTag):
        return {"$tag": value.tag, "value": to_json(value.value)}
    return {"$repr": repr(value)}
