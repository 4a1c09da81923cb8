"""Issue 13: keys the trees cannot hold are refused at the write, and no
accepted key can ever stop a fold.

The trees hold keys of at most MAX_KEY_SIZE (1024) encoded bytes; the root
log records a key's length as a u16.  A key is checked once, where the
application names it; every later commit (root log, fold, close) must then
succeed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import persist
from persist.btree import MAX_KEY_SIZE
from persist.db import rootlog
from persist.db.keys import encode_key
from persist.db.objects import OBJECTS
from persist.ebs import KdfParams

SMALL_LOG = persist.LogLimits(max_entries=16, max_bytes=64 * 1024, fold_nodes=8)


Opener = Callable[..., persist.Database]


@pytest.fixture
def open_db(location: str, tmp_path: Path) -> Iterator[Opener]:
    """Opens the test's location (every backend), with a root log that folds often."""
    opened: list[persist.Database] = []

    def opener(**kw: Any) -> persist.Database:
        args = {
            "kdf": KdfParams.weak_for_tests(),
            "allow_weak_kdf": True,
            "freshness": str(tmp_path / "fresh"),
            "root_log": SMALL_LOG,
            **kw,
        }
        db = persist.open(location, "pw", **args)
        opened.append(db)
        return db

    yield opener
    for db in opened:
        db.close()


@pytest.fixture
def db(open_db: Opener) -> persist.Database:
    return open_db()


def str_key(size: int) -> str:
    """A str key whose encoding is ``size`` bytes (tag, text, terminator)."""
    return "k" * (size - 2)


def tuple_key(size: int) -> tuple[str, int]:
    """A tuple key of ``size`` encoded bytes: tag, str element, int 7, terminator."""
    return ("t" * (size - 6), 7)


def test_the_limit_is_the_trees_and_the_root_log_holds_it() -> None:
    assert len(encode_key(str_key(MAX_KEY_SIZE))) == MAX_KEY_SIZE
    assert len(encode_key(tuple_key(MAX_KEY_SIZE))) == MAX_KEY_SIZE
    assert rootlog._ENTRY.pack(255, MAX_KEY_SIZE, 0)  # u16: the log is no tighter


def test_key_over_the_limit_is_refused_at_the_write(db: persist.Database) -> None:
    t = db.table("t")
    over = [str_key(MAX_KEY_SIZE + 1), tuple_key(MAX_KEY_SIZE + 1), b"b" * 1023, 1 << 8200]
    for key in over:
        assert len(encode_key(key)) > MAX_KEY_SIZE
        for write in (
            lambda k: t.__setitem__(k, 1),
            lambda k: db.root.__setitem__(k, 1),
            lambda k: t.setdefault(k, 1),
            lambda k: t.update({k: 1}),
            lambda k: t.__delitem__(k),
            lambda k: t[k],
        ):
            with pytest.raises(ValueError, match=f"at most {MAX_KEY_SIZE} bytes"):
                write(key)
        view = t.keys()
        assert key not in t and key not in view  # membership: just False
    db.commit_wait()
    assert len(t) == 0 and len(db.root) == 0


def test_keys_at_the_limit_fold_reopen_and_clear(open_db: Opener) -> None:
    """Keys of exactly MAX_KEY_SIZE bytes in the root log and the trees, with
    folds at nearly every commit: every commit and every close succeeds."""
    keys: list[Any] = [str_key(MAX_KEY_SIZE)[:-3] + f"{i:03}" for i in range(60)]
    keys += [("t" * (MAX_KEY_SIZE - 7) + chr(65 + i), 7) for i in range(20)]
    db = open_db()
    t = db.table("t")
    for i, k in enumerate(keys):
        assert len(encode_key(k)) == MAX_KEY_SIZE
        t[k] = i
        db.root[k] = b"v" * (i * 10)
        if i % 7 == 0:
            db.commit_wait()
    db.close()
    db = open_db()
    t = db.table("t")
    assert [t[k] for k in keys] == list(range(len(keys)))
    assert db.verify() == []
    for k in keys[::2]:
        del t[k]
    db.commit_wait()
    t.clear()
    db.root.clear()
    db.close()
    db = open_db()
    assert len(db.table("t")) == 0 and len(db.root) == 0
    assert db.verify() == []


near_limit = st.one_of(
    st.integers(MAX_KEY_SIZE - 40, MAX_KEY_SIZE + 40).map(str_key),
    st.integers(MAX_KEY_SIZE - 40, MAX_KEY_SIZE + 40).map(lambda n: b"\x00" * (n // 2)),
    st.tuples(
        st.text(min_size=300, max_size=520), st.integers(), st.binary(min_size=0, max_size=20)
    ),
    st.integers(min_value=1 << 8000, max_value=1 << 8300),
)


@settings(max_examples=30, deadline=None)
@given(st.lists(near_limit, min_size=1, max_size=25, unique_by=encode_key))
def test_no_accepted_key_can_stop_a_fold(tmp_path_factory: Any, keys: list[Any]) -> None:
    """Keys around the limit: each is refused at the write or survives every fold."""
    path = str(tmp_path_factory.mktemp("k") / "s.db")
    args = {"allow_weak_kdf": True, "freshness": False, "root_log": SMALL_LOG}
    accepted = []
    with persist.open(path, "pw", kdf=KdfParams.weak_for_tests(), **args) as db:
        t = db.table("t")
        for i, k in enumerate(keys):
            try:
                t[k] = i
            except ValueError:
                assert len(encode_key(k)) > MAX_KEY_SIZE
                continue
            accepted.append((k, i))
            db.commit_wait()  # one wave per key: the log fills and folds
    with persist.open(path, "pw", **args) as db:
        t = db.table("t")
        assert [(k, t[k]) for k, _ in accepted] == accepted
        for k, _ in accepted:
            del t[k]
            db.commit_wait()
        assert len(t) == 0


class Box(persist.Persistent):
    pass


def test_attribute_name_too_long_for_its_key_is_refused(open_db: Opener) -> None:
    db = open_db()
    box = Box()
    db.root["box"] = box
    oid = box._p_oid
    longest = "a" * (MAX_KEY_SIZE - 4 - len(encode_key(oid)))  # tuple, str tag, two ends
    assert len(encode_key((oid, longest))) == MAX_KEY_SIZE
    setattr(box, longest, 1)
    with pytest.raises(ValueError, match=f"at most {MAX_KEY_SIZE} bytes"):
        setattr(box, longest + "a", 1)
    assert not hasattr(box, longest + "a")
    fresh = Box()
    setattr(fresh, "b" * 2000, 1)  # not persistent yet: nothing is checked
    with pytest.raises(ValueError, match=f"at most {MAX_KEY_SIZE} bytes"):
        db.root["fresh"] = fresh
    assert fresh._p_oid is None and "fresh" not in db.root
    db.close()
    db = open_db()
    assert getattr(db.root["box"], longest) == 1
    assert all(len(k) <= MAX_KEY_SIZE for k, _ in db._access.scan(OBJECTS))
    assert db.verify() == []
