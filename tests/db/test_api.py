"""The application API (persist.open, tables, records, objects) on real stores."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import persist
from persist.ebs import KdfParams
from persist.errors import (
    ClosedError,
    NotFound,
    ReadOnlyError,
    StoreLocked,
    StoreNotFound,
    WrongPassphrase,
)

WEAK = {"kdf": KdfParams.weak_for_tests(), "allow_weak_kdf": True}

Opener = Callable[..., persist.Database]


@pytest.fixture
def open_db(location: str, tmp_path: Path) -> Iterator[Opener]:
    """Opens the test's location with the weak test KDF and a private freshness record."""
    opened: list[persist.Database] = []

    def opener(passphrase: str = "correct horse", **kw: Any) -> persist.Database:
        args = {**WEAK, "freshness": str(tmp_path / "fresh"), **kw}
        db = persist.open(location, passphrase, **args)
        opened.append(db)
        return db

    yield opener
    for db in opened:
        db.close()


@persist.record
@dataclasses.dataclass
class Account:
    owner: str
    balance: int = 0


class Person(persist.Persistent):
    def __init__(self, name: str) -> None:
        self.name = name
        self.friends: list[Person] = []
        self.best: Person | None = None


def test_tables_are_ordered_mappings(open_db: Opener) -> None:
    db = open_db()
    t = db.table("t")
    for k in [3, -1, 10**30, 0, 7]:
        t[k] = {"k": k}
    assert list(t) == [-1, 0, 3, 7, 10**30]
    assert len(t) == 5 and 3 in t and 4 not in t and "x" not in t
    assert list(t.keys(0, 7)) == [0, 3]
    assert list(t.keys(0, 7, reverse=True)) == [3, 0]
    assert list(t.values(stop=0)) == [{"k": -1}]
    assert list(t.items(7)) == [(7, {"k": 7}), (10**30, {"k": 10**30})]
    assert list(reversed(t.keys())) == [10**30, 7, 3, 0, -1]
    assert t.pop(3) == {"k": 3} and 3 not in t
    assert t.setdefault(3, "d") == "d" and t[3] == "d"
    t.update({("a", 1): b"x", ("a", 2): b"y"})
    assert list(t.keys(("a",), ("b",))) == [("a", 1), ("a", 2)]
    with pytest.raises(KeyError):
        t[12345]
    with pytest.raises(NotFound):
        del t[12345]
    t.clear()
    assert len(t) == 0 and list(t) == []


def test_state_survives_reopen(open_db: Opener) -> None:
    db = open_db()
    db.root["config"] = {"retries": 3, "tags": {"a", "b"}, "when": (1, 2)}
    db.table("accounts")["alice"] = Account("alice", 10)
    db.close()
    db = open_db()
    assert db.root["config"] == {"retries": 3, "tags": {"a", "b"}, "when": (1, 2)}
    assert db.table("accounts")["alice"] == Account("alice", 10)
    assert db.tables() == ["accounts"]
    assert "tests.db.test_api.Account" in db.record_types()


def test_persistent_objects_keep_identity_and_cycles(open_db: Opener) -> None:
    db = open_db()
    ann, bob = Person("ann"), Person("bob")
    ann.best, bob.best = bob, ann
    ann.friends = [bob]
    db.root["ann"] = ann
    bob.name = "Bob"  # a change after the object became persistent is saved too
    db.close()
    db = open_db()
    ann2 = db.root["ann"]
    assert isinstance(ann2, Person) and ann2.name == "ann"
    assert ann2.best.name == "Bob"
    assert ann2.best.best is ann2  # a cycle comes back as a cycle
    assert ann2.friends[0] is ann2.best  # one stored object, one Python object
    assert db.root["ann"] is ann2
    ann2.best.name = "Robert"
    del ann2.friends
    db.close()
    db = open_db()
    ann3 = db.root["ann"]
    assert ann3.best.name == "Robert"
    assert not hasattr(ann3, "friends")


def test_persistent_containers_save_in_place_changes(open_db: Opener) -> None:
    db = open_db()
    d = persist.PersistentDict(a=1)
    lst = persist.PersistentList([1])
    db.root["d"], db.root["l"] = d, lst
    d["b"] = 2
    del d["a"]
    lst.append(2)
    lst[0] = 0
    db.close()
    db = open_db()
    assert dict(db.root["d"]) == {"b": 2}
    assert list(db.root["l"]) == [0, 2]


def test_collect_garbage_deletes_unreachable_objects(open_db: Opener) -> None:
    db = open_db()
    keep, drop = Person("keep"), Person("drop")
    keep.best = keep
    db.root["keep"], db.root["drop"] = keep, drop
    del db.root["drop"]
    assert db.collect_garbage() == 1
    db.close()
    db = open_db()
    assert db.root["keep"].best is db.root["keep"]
    assert db.collect_garbage() == 0


@dataclasses.dataclass
class EvolvingV1:
    a: int


@dataclasses.dataclass
class EvolvingV2:
    a: int
    b: str = "default"


@dataclasses.dataclass
class EvolvingV3:
    b: str = "default"


def _registry(cls: type | None) -> persist.RecordRegistry:
    reg = persist.RecordRegistry()
    if cls is not None:
        reg.register(cls, "test.Evolving")
    return reg


def test_schema_evolution(open_db: Opener) -> None:
    db = open_db(registry=_registry(EvolvingV1))
    db.root["r"] = EvolvingV1(1)
    db.close()
    db = open_db(registry=_registry(EvolvingV2))
    assert db.root["r"] == EvolvingV2(1, "default")  # a field added with a default
    assert db.record_types()["test.Evolving"] == {"fields": [["a", False]]}
    db.close()
    db = open_db(registry=_registry(None))
    with pytest.raises(persist.SchemaError, match=r"unknown record type 'test\.Evolving'"):
        db.root["r"]
    db.close()
    db = open_db(registry=_registry(EvolvingV3))
    with pytest.raises(persist.SchemaError, match="no longer declares"):
        db.root["r"]  # a stored field the class dropped is refused, not lost


def test_bad_input_writes_nothing(open_db: Opener) -> None:
    db = open_db()
    t = db.table("t")
    t["ok"] = 1
    for bad_key in [1.5, None, [1], True, bytearray(b"x")]:
        with pytest.raises(TypeError):
            t[bad_key] = 1
    for bad_value in [object(), {1: object()}, lambda: 1]:
        with pytest.raises(TypeError):
            t["bad"] = bad_value
    with pytest.raises(TypeError):
        db.table(5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        db.table("__objects__")
    db.close()
    db = open_db()
    assert dict(db.table("t").items()) == {"ok": 1}


def test_use_after_close(open_db: Opener) -> None:
    db = open_db()
    t = db.table("t")
    db.close()
    db.close()  # idempotent
    for call in (
        lambda: t.__setitem__("k", 1),
        lambda: db.table("t"),
        lambda: db.root,
        db.commit_wait,
        db.atomic,
    ):
        with pytest.raises(ClosedError):
            call()
    assert "closed" in repr(db)


def test_wrong_passphrase_leaves_the_store_intact(open_db: Opener, location: str) -> None:
    db = open_db()
    db.root["k"] = "v"
    db.close()
    with pytest.raises(WrongPassphrase):
        open_db("wrong")
    db = open_db()
    assert db.root["k"] == "v"


def test_read_only_database(open_db: Opener, backend: str) -> None:
    db = open_db()
    db.root["k"] = "v"
    db.close()
    ro = open_db(read_only=True)
    assert ro.root["k"] == "v"
    with pytest.raises(ReadOnlyError):
        ro.root["k"] = "w"
    with pytest.raises(ReadOnlyError):
        ro.atomic()
    if backend == "sqlite":  # a reader beside a writer, following its commits
        w = open_db()
        w.root["k"] = "new"
        w.commit_wait()
        assert ro.root["k"] == "v"
        ro.refresh()
        assert ro.root["k"] == "new"
    elif backend == "leveldb":
        with pytest.raises(StoreLocked):
            open_db()


def test_missing_store(tmp_path: Path) -> None:
    with pytest.raises(StoreNotFound):
        persist.open(str(tmp_path / "none.db"), "pw", read_only=True, **WEAK)
    with pytest.raises(StoreNotFound):
        persist.open(str(tmp_path / "none.db"), "pw", create=False, **WEAK)
    with pytest.raises(TypeError):
        persist.open(str(tmp_path / "x.db"), **WEAK)  # neither passphrase nor key


@pytest.mark.parametrize("backend", ["sqlite"])
def test_second_writer_process(open_db: Opener, location: str) -> None:
    db = open_db()
    db.root["k"] = "v"
    db.commit_wait()
    code = (
        "import persist, sys\n"
        "try:\n"
        "    persist.open(sys.argv[1], 'correct horse', allow_weak_kdf=True, freshness=False)\n"
        "except persist.StoreLocked:\n"
        "    print('locked')\n"
    )
    out = subprocess.run([sys.executable, "-c", code, location], capture_output=True, text=True)
    assert out.stdout.strip() == "locked", out.stderr
    assert db.root["k"] == "v"


def test_threads_and_atomic_transfers(open_db: Opener) -> None:
    db = open_db()
    accounts = db.table("accounts")
    for i in range(10):
        accounts[i] = 100
    lock = threading.Lock()

    def transfer(seed: int) -> None:
        for j in range(30):
            a, b = (seed + j) % 10, (seed + 3 * j + 1) % 10
            if a == b:
                continue
            with lock, db.atomic():  # the lock is the application's read-modify-write
                accounts[a] -= 1
                accounts[b] += 1
            db.commit_wait()

    threads = [threading.Thread(target=transfer, args=(s,)) for s in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sum(accounts.values()) == 1000
    m = db.metrics()
    assert m.waves_committed < m.writes_committed
    db.close()
    db = open_db()
    assert sum(db.table("accounts").values()) == 1000


def test_asyncio(open_db: Opener) -> None:
    db = open_db()
    t = db.table("t")

    async def worker(i: int) -> None:
        async with db.atomic():
            t[i, "a"] = i
            await asyncio.sleep(0)
            t[i, "b"] = i
        await db.acommit_wait()

    async def main() -> None:
        await asyncio.gather(*(worker(i) for i in range(20)))

    asyncio.run(main())
    db.close()
    db = open_db()
    assert len(db.table("t")) == 40


def test_default_kdf_is_strong(tmp_path: Path) -> None:
    with pytest.raises(persist.IntegrityError):
        db = persist.open(str(tmp_path / "w.db"), "pw", **WEAK, freshness=False)
        db.close()
        persist.open(str(tmp_path / "w.db"), "pw", freshness=False)  # weak refused
