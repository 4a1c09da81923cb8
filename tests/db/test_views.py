"""Issue 13: ``t.keys()``, ``t.values()``, ``t.items()`` behave as the views of
``collections.abc`` do, and their ranges keep start, stop and reverse."""

from __future__ import annotations

from collections.abc import ItemsView, KeysView, ValuesView
from typing import Any

import pytest

import persist

CONTENT = {i: i * i for i in range(10)} | {"a": [1], ("t", 1): {"x": 1}}


@pytest.fixture
def t(sqlite_db: persist.Database) -> persist.Table:
    table = sqlite_db.table("t")
    table.update(CONTENT)
    sqlite_db.commit_wait()
    return table


class NoScans:
    """The database's read path, refusing scans: membership must be a point lookup."""

    def __init__(self, access: Any) -> None:
        self._access = access
        self.gets = 0

    def get(self, table: str, key: bytes) -> bytes | None:
        self.gets += 1
        return self._access.get(table, key)  # type: ignore[no-any-return]

    def scan(self, *args: Any, **kw: Any) -> Any:
        raise AssertionError("a membership test scanned the table")

    def count(self, table: str) -> int:
        return self._access.count(table)  # type: ignore[no-any-return]


def test_unbounded_views_equal_the_dict_views(t: persist.Table) -> None:
    assert isinstance(t.keys(), KeysView) and isinstance(t.items(), ItemsView)
    assert isinstance(t.values(), ValuesView)
    assert t.keys() == CONTENT.keys() and CONTENT.keys() == t.keys()
    assert t.items() == CONTENT.items() and CONTENT.items() == t.items()
    assert t.keys() != {1, 2} and t.keys() != CONTENT.keys() - {1}
    assert len(t.keys()) == len(t.items()) == len(t.values()) == len(CONTENT)
    assert list(t.values()) == [CONTENT[k] for k in t]


def test_key_and_item_views_support_set_operations(t: persist.Table) -> None:
    other = {3, 4, 99, "a"}
    assert t.keys() & other == CONTENT.keys() & other
    assert t.keys() | other == CONTENT.keys() | other
    assert t.keys() - other == CONTENT.keys() - other
    assert t.keys() ^ other == CONTENT.keys() ^ other
    assert other - t.keys() == {99}
    assert t.keys().isdisjoint({"zz", 1000}) and not t.keys().isdisjoint({3})
    assert {1, 2} <= t.keys() and t.keys() >= {1, 2} and not t.keys() <= {1, 2}
    assert t.items() & {(3, 9), (3, 8)} == {(3, 9)}
    assert t.items(0, 10) - {(k, k * k) for k in range(10) if k != 5} == {(5, 25)}


def test_membership_is_a_point_lookup_never_a_scan(t: persist.Table) -> None:
    spy = NoScans(t._db._access)
    t._db._access = spy  # type: ignore[assignment]
    keys = t.keys()
    assert 3 in keys and 99 not in keys and ("t", 1) in keys
    assert 1.5 not in keys and None not in keys and "x" * 5000 not in keys
    assert (3, 9) in t.items() and (3, 8) not in t.items() and (99, 0) not in t.items()
    assert ("a", [1]) in t.items() and "a" not in t.items() and (1, 2, 3) not in t.items()
    assert 3 in t.keys(2, 5) and 5 not in t.keys(2, 5) and 1 not in t.keys(2)
    assert (4, 16) in t.items(stop=5) and (7, 49) not in t.items(stop=5)
    assert spy.gets == 9  # one per key in range; out-of-range and unstorable ones need none


def test_range_views_keep_their_extras(t: persist.Table) -> None:
    assert list(t.keys(2, 5)) == [2, 3, 4]
    assert list(t.keys(2, 5, reverse=True)) == [4, 3, 2]
    assert list(reversed(t.keys(2, 5))) == [4, 3, 2]
    assert list(reversed(t.keys(2, 5, reverse=True))) == [2, 3, 4]
    assert list(t.items(8, reverse=True)) == [(9, 81), (8, 64)]
    assert list(t.values(0, 2)) == [0, 1]
    assert list(t.keys(stop=0)) == ["a", ("t", 1)]  # bytes < str < tuple < int
    assert len(t.keys(2, 5)) == 3 and len(t.items(stop=2)) == 4
    assert t.keys(2, 5) == {2, 3, 4}  # a range of keys is the set of its keys
    assert t.keys(2, 5, reverse=True) == {2, 3, 4}
    assert t.items(0, 2) == {(0, 0), (1, 1)}
    assert 81 in t.values(8) and 1 not in t.values(8)
    assert "[2, 5)" in repr(t.keys(2, 5)) and "reversed" in repr(t.keys(reverse=True))


def test_views_read_the_table_as_it_is_now(t: persist.Table) -> None:
    keys = t.keys()
    t["new"] = 1
    assert "new" in keys and len(keys) == len(CONTENT) + 1
    del t["new"]
    assert keys == CONTENT.keys()
