"""A host that deletes or replays any single row: the library never acts on it.

Format v2 (DESIGN §2.2): only the root and the keyslots are mutable, every
other row is content-addressed or authenticated from the root when it is
read, and no decision (free, skip, trust) rests on an unauthenticated row.
For every row of a real database, and every earlier version of a row the
store ever held, the host deletes it or puts the old version back; then the
application goes on as usual -- deletes a key whose large value another key
shares, writes, folds -- and fails only with an IntegrityError (detection).
With the tampering undone, every key the application did not delete still
reads its value.  (Under format v1 a deleted or replayed count row made the
next ordinary delete free a blob another key still used.)
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import persist
from persist.ebs import KdfParams
from persist.errors import CommitFailed, IntegrityError, PersistError
from persist.kvs import MemoryStore
from persist.kvs.memory import drop_named_store

SHARED = b"S" * 400  # stored once, counted twice
OPTS = {"kdf": KdfParams.weak_for_tests(), "allow_weak_kdf": True}
_STATE = Path(tempfile.mkdtemp(prefix="persist-tamper-"))


Model = dict[str, dict[object, bytes]]


def _history() -> tuple[dict[bytes, bytes], list[dict[bytes, bytes]], Model]:
    """A database built in steps; its rows now, its rows after each step, the model."""
    name = uuid.uuid4().hex
    location = f"memory:{name}"
    versions: list[dict[bytes, bytes]] = []
    model: dict[str, dict[object, bytes]] = {"a": {}, "b": {}}

    def rows() -> dict[bytes, bytes]:
        with MemoryStore(name, read_only=True) as ro:
            return dict(ro.scan())

    log = persist.LogLimits(max_entries=6)
    with persist.open(location, "pw", freshness=False, root_log=log, **OPTS) as db:
        a, b = db.table("a"), db.table("b")
        for i in range(40):
            a[i] = b"v%d" % i
            model["a"][i] = b"v%d" % i
        a["x"] = a["y"] = SHARED
        b["z"] = SHARED
        model["a"].update(x=SHARED, y=SHARED)
        model["b"]["z"] = SHARED
        db.commit_wait()
        db._trees.fold()
        versions.append(rows())
        for i in range(3):  # small waves: root log segments
            a[100 + i] = b"log %d" % i
            model["a"][100 + i] = b"log %d" % i
            db.commit_wait()
            versions.append(rows())
        del a[5]
        del model["a"][5]
        db.commit_wait()
        db._trees.fold()
        versions.append(rows())
        a["w"] = b"W" * 300  # a blob of its own
        model["a"]["w"] = b"W" * 300
        db.commit_wait()
        versions.append(rows())
        db._trees.fold = lambda: None  # type: ignore[method-assign]  # keep the log
    final = rows()
    drop_named_store(name)
    return final, versions, model


FINAL, VERSIONS, MODEL = _history()


def _cases() -> Iterator[tuple[str, bytes, bytes | None]]:
    """(what, address, value): delete every row, replay every earlier version."""
    for address in sorted(FINAL):
        yield "delete", address, None
    seen = set()
    for version in VERSIONS:
        for address, value in sorted(version.items()):
            if FINAL.get(address) != value and (address, value) not in seen:
                seen.add((address, value))
                yield "replay", address, value


CASES = list(_cases())


def _run_application(location: str, fresh: Path, model: dict[str, dict[object, bytes]]) -> None:
    """Ordinary work; any IntegrityError is the library noticing the tampering."""
    try:
        with persist.open(location, "pw", freshness=fresh, **OPTS) as db:
            a, b = db.table("a"), db.table("b")
            a["v"] = SHARED  # a third reference to the shared blob (equal content: one blob)
            model["a"]["v"] = SHARED
            db.commit_wait()
            db._trees.fold()
            del a["x"]  # then two go: a count that forgot one would free v's value
            del model["a"]["x"]
            db.commit_wait()
            del a["y"]
            del model["a"]["y"]
            for i in range(20, 30):
                del a[i]
                del model["a"][i]
            b["new"] = b"n"
            model["b"]["new"] = b"n"
            db.commit_wait()
            db._trees.fold()
    except CommitFailed as exc:
        assert isinstance(exc.__cause__, IntegrityError), repr(exc.__cause__)
    except IntegrityError:
        return


@pytest.mark.parametrize(
    "what, address, value",
    CASES,
    ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)],  # addresses are random: ids by position
)
def test_single_row_tampering_never_loses_data(
    what: str, address: bytes, value: bytes | None
) -> None:
    name = uuid.uuid4().hex
    location = f"memory:{name}"
    fresh = _STATE / f"{name}.json"
    with MemoryStore(name) as kvs:
        kvs.write(FINAL)
    with persist.open(location, "pw", freshness=fresh, **OPTS):  # the machine saw this state
        pass
    with MemoryStore(name) as kvs:
        original = kvs.get(address)
        if what == "delete":
            kvs.write(deletes=[address])
        else:
            assert value is not None
            kvs.write({address: value})
    model = {t: dict(m) for t, m in MODEL.items()}
    before = {t: dict(m) for t, m in model.items()}
    _run_application(location, fresh, model)
    with MemoryStore(name) as kvs:  # the host undoes what it did, if the row is still its own
        if what == "delete" and kvs.get(address) is None and original is not None:
            kvs.write({address: original})
        elif what == "replay" and kvs.get(address) == value:
            if original is None:
                kvs.write(deletes=[address])
            else:
                kvs.write({address: original})
    try:
        with persist.open(location, "pw", freshness=fresh, read_only=True, **OPTS) as db:
            for table in ("a", "b"):
                got = dict(db.table(table).items())
                # either the application's work committed, or it stopped before: never a loss
                assert got in (model[table], before[table]) or _prefix_of(got, model, table)
    except PersistError as exc:  # the only acceptable reason to stop: detection
        assert isinstance(exc, IntegrityError), repr(exc)
        pytest.fail(f"tampering undone, the store still does not open: {exc!r}")
    finally:
        drop_named_store(name)


def _prefix_of(got: dict[object, bytes], model: dict[str, dict[object, bytes]], table: str) -> bool:
    """The application stopped part-way: every key it did not delete has its value."""
    for key, value in MODEL[table].items():
        if key in model[table] and got.get(key) != value:
            return False
    return all(got[k] == model[table].get(k, got[k]) for k in got)
