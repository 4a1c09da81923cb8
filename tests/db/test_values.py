"""Issue 13, "Values and keys": what is stored comes back, what cannot be stored
is refused at the write.

Every value either reads back exactly (same types all the way down, same
value) or raises TypeError (ValueError for a size limit) at ``t[k] = v``,
writing nothing.  Checked on the codec with Hypothesis, on a real database
for each listed case, and at the boundary of every limit.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import decimal
import enum
import fractions
import ipaddress
import math
import re
import subprocess
import sys
import uuid
import zoneinfo
from email.mime.text import MIMEText
from pathlib import Path
from typing import Any, NamedTuple

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import persist
from persist.db import rootlog, values
from persist.db.objects import OBJECTS
from persist.db.values import MAX_DEPTH, MAX_VALUE_SIZE, RecordRegistry, ValueCodec
from persist.ebs import KdfParams
from tests.db.test_codec_fast_paths import NoObjects

D = decimal.Decimal

# The recursive strategies below describe themselves at length (each level's
# repr holds the one below); Hypothesis warns about that repr, not about data.
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")


@pytest.fixture
def db(sqlite_db: persist.Database) -> persist.Database:
    return sqlite_db


def reopen(db: persist.Database) -> persist.Database:
    db.close()
    return persist.open(db.location, "pw", allow_weak_kdf=True, freshness=False)


@persist.record(name="tests.values.Holder")
@dataclasses.dataclass
class Holder:
    items: Any
    more: Any = None


@persist.record(name="tests.values.Frozen")
@dataclasses.dataclass(frozen=True)
class Frozen:
    a: Any
    b: Any = ()


@persist.record(name="tests.values.Derived")
@dataclasses.dataclass
class Derived:
    base: int
    double: int = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.double = 2 * self.base


def same(a: Any, b: Any) -> bool:
    """Exactly the same value: the same type at every level, NaN equal to NaN,
    the sign of zeros and Decimal's exponent and payload kept."""
    if type(a) is not type(b):
        return False
    if type(a) is float:
        if math.isnan(a):
            return math.isnan(b)
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if type(a) is complex:
        return same(a.real, b.real) and same(a.imag, b.imag)
    if type(a) is D:
        return a.as_tuple() == b.as_tuple() and a.is_nan() == b.is_nan()
    if type(a) is datetime.datetime:
        return a == b and a.tzinfo == b.tzinfo and a.utcoffset() == b.utcoffset()
    if type(a) in (list, tuple):
        return len(a) == len(b) and all(map(same, a, b))
    if type(a) is dict:
        if len(a) != len(b):
            return False
        keys_b = {(type(k), k): k for k in b}
        return all(
            (type(k), k) in keys_b
            and same(k, keys_b[type(k), k])
            and same(v, b[keys_b[type(k), k]])
            for k, v in a.items()
        )
    if type(a) in (set, frozenset):
        return {(type(x), x) for x in a} == {(type(x), x) for x in b}
    if dataclasses.is_dataclass(a):
        return all(same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    return bool(a == b)


codec = ValueCodec(persist.db.records, NoObjects(), lambda cls, name: None)


# -- what round-trips --------------------------------------------------------------

text = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
offsets = st.integers(min_value=-(24 * 60 - 1), max_value=24 * 60 - 1).map(
    lambda m: datetime.timezone(datetime.timedelta(minutes=m))
)
hashable_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers() | st.integers(min_value=-(2**200), max_value=2**200),
    st.floats(allow_nan=False),
    text,
    st.binary(max_size=20),
    st.decimals(allow_nan=False, allow_infinity=False),
    st.fractions(),
    st.uuids(),
    st.dates(),
    st.datetimes(timezones=offsets),
    st.ip_addresses(),
    st.ip_addresses().map(ipaddress.ip_network),
    st.ip_addresses().map(ipaddress.ip_interface),
)
scalars = hashable_scalars | st.one_of(
    st.floats(),  # NaN and the infinities too
    st.complex_numbers(),
    st.decimals(),  # NaN, sNaN, infinities
    st.sampled_from([D("-0"), D("-0.00"), D("-NaN"), D("sNaN12"), D("-Infinity"), D("1E+9999")]),
)
hashables = st.recursive(
    hashable_scalars,
    lambda inner: (
        st.lists(inner, max_size=3).map(tuple)
        | st.frozensets(inner, max_size=3)
        | st.builds(Frozen, inner, st.lists(inner, max_size=2).map(tuple))
    ),
    max_leaves=8,
)
stored_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(hashables, inner, max_size=4),
        st.sets(hashables, max_size=4),
        st.frozensets(hashables, max_size=4),
        st.builds(Holder, inner, inner),
        st.builds(Frozen, inner),
        st.integers(-100, 100).map(Derived),
    ),
    max_leaves=25,
)


@settings(max_examples=1500)
@given(stored_values)
def test_every_supported_value_reads_back_exactly(value: Any) -> None:
    assert same(codec.decode(codec.encode(value)), value)


@settings(max_examples=50)
@given(st.lists(stored_values, min_size=1, max_size=5))
def test_supported_values_read_back_exactly_from_a_store(tmp_path_factory: Any, vs: list) -> None:
    path = tmp_path_factory.mktemp("v") / "s.db"
    opts = {"allow_weak_kdf": True, "freshness": False}
    with persist.open(str(path), "pw", kdf=KdfParams.weak_for_tests(), **opts) as db:
        t = db.table("t")
        for i, v in enumerate(vs):
            t[i] = v
        assert all(same(t[i], v) for i, v in enumerate(vs))  # from the wave
    with persist.open(str(path), "pw", **opts) as db:
        t = db.table("t")
        assert all(same(t[i], v) for i, v in enumerate(vs))  # from the trees
        assert all(same(a, b) for a, b in zip(t.values(), vs, strict=True))


def test_list_inside_tuple_stays_a_list(db: persist.Database) -> None:
    t = db.table("t")
    t["a"] = ("alice", [1, 2, 3])
    t[()] = ([],)
    t["b"] = ({"x": [1]}, {1, 2}, (3, [4]))
    db = reopen(db)
    t = db.table("t")
    assert same(t["a"], ("alice", [1, 2, 3]))
    t["a"][1].append(4)  # mutable, as it was stored
    assert same(t[()], ([],))
    assert same(t["b"], ({"x": [1]}, {1, 2}, (3, [4])))
    db.close()


def test_list_in_a_record_field_stays_a_list(db: persist.Database) -> None:
    db.root["h"] = Holder([1, 2], {"k": {3}})
    db = reopen(db)
    h = db.root["h"]
    assert same(h, Holder([1, 2], {"k": {3}}))
    h.items.append(3)
    db.close()


def test_record_with_an_init_false_field_reads_back(db: persist.Database) -> None:
    d = Derived(4)
    d.double = 99  # what is stored is what comes back, not what __post_init__ makes
    db.root["d"] = d
    db = reopen(db)
    assert same(db.root["d"], d)
    db.close()


@pytest.mark.parametrize(
    "value",
    [
        frozenset({1, "a"}),
        frozenset(),
        {frozenset({1}): {frozenset({2})}},
        D("NaN"),
        D("-NaN"),
        D("sNaN"),
        D("Infinity"),
        D("-Infinity"),
        D("-0"),
        D("-0.000"),
        D("0E+5"),
        D("1.10"),
        -0.0,
        float("nan"),
        2**100,
        1 + 2j,
        datetime.datetime(2020, 1, 1, 1, 2, 3, 456789, tzinfo=datetime.UTC),
        datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone(datetime.timedelta(hours=-5))),
        datetime.date(1, 1, 1),
        ipaddress.ip_address("fe80::1%eth0"),
        ipaddress.ip_interface("10.0.0.1/8"),
        fractions.Fraction(-1, 3),
        uuid.UUID(int=7),
    ],
    ids=lambda v: type(v).__name__,  # not repr: a set's order changes with the hash seed
)
def test_listed_value_reads_back_exactly(db: persist.Database, value: Any) -> None:
    db.root["v"] = value
    db.root["in"] = [value, (value,)]
    db = reopen(db)
    assert same(db.root["v"], value)
    assert same(db.root["in"], [value, (value,)])
    db.close()


def _encoded_before(value: Any) -> bytes:
    """The bytes the codec wrote before frozensets and special decimals had tags:
    cbor2 with the tuple encoder (which also wraps the arrays inside cbor2's
    own tags, such as a set's or a decimal's, in tag 39990)."""

    def tuple_encoder(encoder: Any, v: Any) -> None:
        encoder.encode(cbor2.CBORTag(values.TAG_TUPLE, list(v)))

    def record_encoder(encoder: Any, v: Any) -> None:
        fields = {f.name: getattr(v, f.name) for f in dataclasses.fields(v)}
        name = persist.db.records.name_of(type(v))
        encoder.encode(cbor2.CBORTag(values.TAG_RECORD, [name, fields]))

    return cbor2.dumps(value, encoders={tuple: tuple_encoder}, default=record_encoder)


def _has_new_tag(value: Any) -> bool:
    if type(value) is frozenset or (type(value) is D and not value.is_finite()):
        return True
    if type(value) is D:
        return value.is_zero() and value.is_signed()
    if type(value) in (list, tuple, set):
        return any(map(_has_new_tag, value))
    if type(value) is dict:
        return any(map(_has_new_tag, value)) or any(map(_has_new_tag, value.values()))
    if dataclasses.is_dataclass(value):
        return any(_has_new_tag(getattr(value, f.name)) for f in dataclasses.fields(value))
    return False


@settings(max_examples=1000)
@given(stored_values.filter(lambda v: not _has_new_tag(v)))
def test_values_of_the_old_types_keep_their_stored_bytes(value: Any) -> None:
    """The fix changes how values are read, not how they are written: every value
    that was storable before encodes to the same bytes (the golden store, too)."""
    assert codec.encode(value) == _encoded_before(value)


def test_only_the_values_without_a_faithful_old_form_take_the_new_tags() -> None:
    tag = cbor2.CBORTag
    assert codec.encode(D("-0")) == cbor2.dumps(tag(values.TAG_DECIMAL, "-0"))
    assert codec.encode(D("-sNaN7")) == cbor2.dumps(tag(values.TAG_DECIMAL, "-sNaN7"))
    assert codec.encode(frozenset({1})) == cbor2.dumps(tag(values.TAG_FROZENSET, [1]))
    # a frozenset stored before its tag (as CBOR's set) still reads as it did: a set
    assert codec.decode(_encoded_before(frozenset({1}))) == {1}


# -- what is refused -----------------------------------------------------------------


class Color(enum.IntEnum):
    RED = 1


class Shade(enum.Enum):
    DARK = "dark"


Point = collections.namedtuple("Point", "x y")


class TypedPoint(NamedTuple):
    x: int
    y: str


@dataclasses.dataclass
class Unregistered:
    x: int = 0


class MyStr(str):
    pass


class MyList(list):  # type: ignore[type-arg]
    pass


REFUSED = {
    "namedtuple": Point(1, 2),
    "IntEnum": Color.RED,
    "Enum": Shade.DARK,
    "bytearray": bytearray(b"x"),
    "memoryview": memoryview(b"xy"),
    "range": range(3),
    "OrderedDict": collections.OrderedDict(a=1),
    "defaultdict": collections.defaultdict(int, a=1),
    "Counter": collections.Counter("aa"),
    "str subclass": MyStr("x"),
    "list subclass": MyList([1]),
    "naive datetime": datetime.datetime(2020, 1, 1),
    "ZoneInfo datetime": datetime.datetime(2020, 1, 1, tzinfo=zoneinfo.ZoneInfo("Europe/Berlin")),
    "named timezone": datetime.datetime(
        2020, 1, 1, tzinfo=datetime.timezone(datetime.timedelta(hours=2), "CEST")
    ),
    "sub-minute offset": datetime.datetime(
        2020, 1, 1, tzinfo=datetime.timezone(datetime.timedelta(seconds=30))
    ),
    "time": datetime.time(1, 2),
    "timedelta": datetime.timedelta(1),
    "regex": re.compile("a+", re.I),
    "MIMEText": MIMEText("hi"),
    "CBORTag": cbor2.CBORTag(values.TAG_REF, 1),
    "CBORSimpleValue": cbor2.CBORSimpleValue(5),
    "undefined": cbor2.undefined,
    "object": object(),
    "function": lambda: 1,
    "type": int,
    "Ellipsis": ...,
    "unregistered dataclass": Unregistered(),
}


@pytest.mark.parametrize("value", list(REFUSED.values()), ids=list(REFUSED))
def test_unfaithful_type_is_refused_at_the_write(db: persist.Database, value: Any) -> None:
    t = db.table("t")
    t["ok"] = 1
    nests = [value, [value], (1, value), {"k": value}, Holder([value])]
    try:
        nests.append({value})  # as a set element and a dict key, where hashable
        nests.append({(value,): 1})
    except TypeError:
        pass
    for v in nests:
        with pytest.raises(TypeError):
            t["bad"] = v
    assert "bad" not in t
    db = reopen(db)
    assert dict(db.table("t").items()) == {"ok": 1}
    db.close()


def test_a_table_stored_as_a_value_is_refused(db: persist.Database) -> None:
    other = db.table("other")
    other["a"] = 1
    with pytest.raises(TypeError, match=r"db\.table\(name\)"):
        db.root["t"] = other
    assert "t" not in db.root


many_types = st.sampled_from(
    [
        int,
        str,
        bytes,
        float,
        complex,
        bool,
        D,
        fractions.Fraction,
        datetime.datetime,
        datetime.date,
        datetime.time,
        datetime.timedelta,
        datetime.timezone,
        uuid.UUID,
        ipaddress.IPv4Address,
        ipaddress.IPv6Network,
        bytearray,
        memoryview,
        range,
        slice,
        Color,
        Shade,
        TypedPoint,
        collections.OrderedDict,
        collections.Counter,
        collections.deque,
        type(None),
        Unregistered,
    ]
)
anything = st.recursive(
    many_types.flatmap(st.from_type),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.lists(inner, max_size=3).map(tuple)
        | st.sets(st.from_type(int) | text | st.from_type(TypedPoint), max_size=3)
        | st.dictionaries(st.from_type(int) | text, inner, max_size=3)
        | st.builds(Holder, inner, inner)
    ),
    max_leaves=10,
)


@settings(max_examples=1500)
@given(anything)
def test_any_value_reads_back_exactly_or_is_refused(value: Any) -> None:
    """By trying: whatever a value holds, the write refuses it or the read gives it back."""
    try:
        data = codec.encode(value)
    except TypeError:
        return
    assert same(codec.decode(data), value)


# -- limits ----------------------------------------------------------------------------


def nest(kind: str, depth: int) -> Any:
    """A value of ``depth`` containers of ``kind``, one inside the other."""
    v: Any = 0
    for _ in range(depth):
        if kind == "list":
            v = [v]
        elif kind == "tuple":
            v = (v,)
        elif kind == "dict":
            v = {"k": v}
        elif kind == "set":
            v = {v} if isinstance(v, int) else {frozenset(v) if isinstance(v, set) else v}
        elif kind == "frozenset":
            v = frozenset({v})
        else:
            v = Holder(v)
    return v


KINDS = ["list", "tuple", "dict", "frozenset", "record"]


@pytest.mark.parametrize("kind", KINDS)
def test_values_nested_max_depth_deep_read_back(db: persist.Database, kind: str) -> None:
    value = nest(kind, MAX_DEPTH)
    db.root["deep"] = value
    db = reopen(db)
    assert same(db.root["deep"], value)
    assert db.verify() == []
    db.close()


@pytest.mark.parametrize("kind", KINDS)
def test_value_nested_too_deep_is_refused_at_the_write(db: persist.Database, kind: str) -> None:
    with pytest.raises(TypeError, match=f"more than {MAX_DEPTH}"):
        db.root["deep"] = nest(kind, MAX_DEPTH + 1)
    assert "deep" not in db.root


def test_the_deepest_value_fits_the_decoder() -> None:
    """MAX_DEPTH records (three decoder levels each) around a Decimal (two more)."""
    value: Any = D("1.5")
    for _ in range(MAX_DEPTH):
        value = Holder(value)
    assert same(codec.decode(codec.encode(value)), value)


def test_a_value_that_contains_itself_is_refused(db: persist.Database) -> None:
    cycle: list[Any] = []
    cycle.append(cycle)
    d: dict[str, Any] = {}
    d["self"] = [d]
    for v in (cycle, d):
        with pytest.raises(TypeError, match="contains itself"):
            db.root["c"] = v
    assert "c" not in db.root


def test_a_value_thousands_deep_is_refused_not_a_crash(tmp_path: Path) -> None:
    """cbor2's encoder overflows its stack some thousands deep: the check comes first."""
    code = f"""
import persist
from persist.ebs import KdfParams
from tests.db.test_codec_fast_paths import NoObjects
db = persist.open({str(tmp_path / "s.db")!r}, "pw", kdf=KdfParams.weak_for_tests(),
                  allow_weak_kdf=True, freshness=False)
v = 0
for _ in range(100_000):
    v = [v]
try:
    db.root["deep"] = v
except TypeError:
    print("refused")
db.close()
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "refused", out.stderr


def test_value_at_the_size_limit_is_stored_and_one_byte_more_refused(
    db: persist.Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(values, "MAX_VALUE_SIZE", 300)
    t = db.table("t")
    t["at"] = b"x" * 297  # 3 bytes of CBOR head + 297
    t["list"] = [b"x" * 296]  # 1 + 3 + 296
    with pytest.raises(ValueError, match="at most 300 bytes"):
        t["over"] = b"x" * 298
    with pytest.raises(ValueError, match="at most 300 bytes"):
        t["over"] = [b"x" * 297]
    assert "over" not in t and len(t["at"]) == 297 and len(t["list"][0]) == 296


def test_the_value_limit_is_what_the_root_log_can_carry() -> None:
    assert rootlog._ENTRY.pack(1, 1, MAX_VALUE_SIZE)  # a u32 length ...
    assert MAX_VALUE_SIZE < rootlog._DELETED  # ... that is not the delete mark


# -- records -----------------------------------------------------------------------


def test_record_defined_in_main_without_a_name_warns() -> None:
    cls = dataclasses.make_dataclass("ScriptRecord", [("x", int)])
    cls.__module__ = "__main__"
    with pytest.warns(UserWarning, match=r"@persist\.record\(name=\.\.\.\)") as caught:
        persist.record(cls)
    assert caught[0].filename == __file__  # it points at the decorated class, not at persist
    named = dataclasses.make_dataclass("NamedScriptRecord", [("x", int)])
    named.__module__ = "__main__"
    with _no_warnings():
        persist.record(name="tests.values.NamedScriptRecord")(named)


def test_record_name_too_long_for_its_schema_key_is_refused() -> None:
    registry = RecordRegistry()
    cls = dataclasses.make_dataclass("Long", [("x", int)])
    registry.register(cls, "n" * 1021)  # key: tag, 1021 bytes, terminator = 1023
    with pytest.raises(ValueError, match="1024"):
        registry.register(dataclasses.make_dataclass("Longer", [("x", int)]), "n" * 1023)


class _no_warnings:
    def __enter__(self) -> None:
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(*exc)


# -- persistent objects: nothing written before the whole value encodes ---------------


class Node(persist.Persistent):
    def __init__(self, **attrs: Any) -> None:
        for k, v in attrs.items():
            setattr(self, k, v)


def object_rows(db: persist.Database) -> list[tuple[bytes, bytes]]:
    return list(db._access.scan(OBJECTS))


def test_persistent_with_an_unstorable_attribute_writes_no_row(db: persist.Database) -> None:
    child = Node(name="child")
    bad = Node(child=child, good=1, bad=object())
    with pytest.raises(TypeError):
        db.root["x"] = bad
    with pytest.raises(TypeError):
        db.root["y"] = [Node(ok=1), object()]  # the new object before the bad item
    assert object_rows(db) == [] and "x" not in db.root and "y" not in db.root
    assert bad._p_oid is None and child._p_oid is None  # new again
    del bad.bad
    db.root["x"] = bad  # and storable once fixed
    db = reopen(db)
    assert db.root["x"].child.name == "child" and db.root["x"].good == 1
    db.close()


def test_a_long_chain_of_new_objects_is_stored_without_recursion(db: persist.Database) -> None:
    head = None
    for i in range(3000):
        head = Node(i=i, next=head)
    db.root["chain"] = head
    db = reopen(db)
    node, n = db.root["chain"], 0
    while node is not None:
        node, n = node.next, n + 1
    assert n == 3000
    db.close()
