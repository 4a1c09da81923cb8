"""Every get, len and whole iteration sees ONE state, whatever commits land meanwhile.

Each race is made to happen: a hook in the read path, on the reading thread,
runs a commit to completion (in another thread, through the multiplexer) at
the chosen point of the read, and only then lets the read go on.  Regression
tests of issue 13 ("Reads: one consistent state"); each failed on the code
before the fix (len over or under by a wave; IntegrityError "node row ... is
missing" from a read of trees a fold had just replaced; verify beside a
writer reporting damage).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import persist
from persist.btree import cache as btree_cache
from persist.db import treestore
from persist.ebs import KdfParams

OPTS = {"kdf": KdfParams.weak_for_tests(), "allow_weak_kdf": True, "freshness": False}
LOCATIONS = ["sqlite", "leveldb", "memory"]


def _location(kind: str, tmp_path: Path) -> str:
    if kind == "sqlite":
        return str(tmp_path / "db.sqlite")
    if kind == "leveldb":
        return f"leveldb://{tmp_path / 'db.ldb'}"
    return f"memory:{tmp_path.name}"


@pytest.fixture(params=LOCATIONS)
def location(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    loc = _location(str(request.param), tmp_path)
    yield loc
    if loc.startswith("memory:"):
        from persist.kvs.memory import drop_named_store

        drop_named_store(loc[len("memory:") :])


def _open(location: str, **kw: object) -> persist.Database:
    return persist.open(location, "pw", **OPTS, **kw)  # type: ignore[arg-type]


@contextlib.contextmanager
def commit_lands_at(
    patch: pytest.MonkeyPatch,
    owner: object,
    name: str,
    commit: Callable[[], None],
    *,
    after: int = 0,
) -> Iterator[list[int]]:
    """Make ``commit()`` run, to completion, on another thread during the reading
    thread's call number ``after + 1`` of ``owner.name``; the read then goes on."""
    original = getattr(owner, name)
    reader = threading.get_ident()
    calls = [0]
    fired: list[int] = []

    def hooked(*args: object, **kwargs: object) -> object:
        if threading.get_ident() == reader and not fired:
            calls[0] += 1
            if calls[0] > after:
                fired.append(calls[0])
                errors: list[BaseException] = []

                def run() -> None:
                    try:
                        commit()
                    except BaseException as exc:
                        errors.append(exc)

                worker = threading.Thread(target=run)
                worker.start()
                worker.join(timeout=60)
                assert not worker.is_alive(), "the commit did not finish"
                if errors:
                    raise errors[0]
        return original(*args, **kwargs)

    patch.setattr(owner, name, hooked)
    try:
        yield fired
    finally:
        patch.setattr(owner, name, original)


def test_len_counts_one_state_while_a_wave_commits_mid_count(
    location: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Old code: pending waves, then the committed count, then a look-up per pending
    key, each against whatever was current: the wave counted twice or not at all."""
    config = persist.mux.MuxConfig(max_delay=60)  # nothing commits unless asked
    for log in (persist.LogLimits(), persist.LogLimits(0, 0)):  # into the log; folds
        with _open(location, config=config, root_log=log) as db:
            t = db.table("t")
            t.clear()
            t.update({i: b"old" for i in range(500)})
            db.commit_wait()
            for i in range(500, 800):  # 300 new keys, pending in the open wave
                t[i] = b"new"
            for i in range(0, 100):  # and 100 deletions
                del t[i]
            with commit_lands_at(monkeypatch, treestore._State, "count", db.commit_wait) as hit:
                n = len(t)
            assert hit and n == 700
            assert len(t) == 700


def test_clear_then_len_is_never_negative(location: str, monkeypatch: pytest.MonkeyPatch) -> None:
    config = persist.mux.MuxConfig(max_delay=60)
    with _open(location, config=config, root_log=persist.LogLimits(0, 0)) as db:
        t = db.table("t")
        for _ in range(3):
            t.update({i: b"v" for i in range(200)})
            db.commit_wait()
            t.clear()
            with commit_lands_at(monkeypatch, treestore._State, "count", db.commit_wait) as hit:
                n = len(t)
            assert hit and n == 0


def test_an_iteration_sees_the_state_it_started_from_across_a_fold(
    location: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Old code: IntegrityError "node row ... is missing" once the fold deleted the
    nodes of the trees the iteration was walking (a small node cache: no help)."""
    with _open(location, cache_nodes=16, root_log=persist.LogLimits(0, 0)) as db:
        t = db.table("t")
        t.update({i: b"old %d" % i for i in range(6000)})
        db.commit_wait()
        db._trees.cache.clear()
        items = iter(t.items())
        first = [next(items) for _ in range(3000)]

        def rewrite_second_half() -> None:
            with db.atomic():
                for i in range(3000, 6000):
                    t[i] = b"new %d" % i
            db.commit_wait()

        rewrite_second_half()  # the fold lands between two steps of the iteration
        db._trees.cache.clear()
        rest = list(items)
        assert first + rest == [(i, b"old %d" % i) for i in range(6000)]
        assert t[4000] == b"new 4000" and len(t) == 6000
        assert db.verify() == []


def test_a_point_read_interrupted_by_a_fold_reads_the_newer_state(
    location: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A get does not register on its state (its hot path is the cache); a fold that
    lands mid-descent retires the trees, and the get reads the newer state."""
    with _open(location, cache_nodes=4, root_log=persist.LogLimits(0, 0)) as db:
        t = db.table("t")
        t.update({i: b"v0" for i in range(3000)})
        db.commit_wait()
        rounds = [0]

        def rewrite() -> None:
            rounds[0] += 1
            t.update({i: b"v%d" % rounds[0] for i in range(3000)})
            db.commit_wait()

        db._trees.cache.clear()
        with commit_lands_at(monkeypatch, btree_cache.NodeReader, "tree_node", rewrite) as hit:
            value = t[2500]  # descends: root, internal, leaf; the fold lands at the root
        assert hit and value in (b"v0", b"v1")
        assert t[2500] == b"v1"
        db._trees.cache.clear()
        with commit_lands_at(
            monkeypatch, btree_cache.NodeReader, "tree_node", rewrite, after=2
        ) as hit:
            got = list(iter(t.items(1000, 2000)))  # the fold lands once the scan is under way
        assert hit and got == [(i, b"v1") for i in range(1000, 2000)]
        assert t[1500] == b"v2"


def test_verify_beside_a_writer_checks_one_committed_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only handle (persist verify) beside a live writer on SQLite: old code
    reported undecodable nodes, wrong counts and orphans on a healthy store."""
    location = str(tmp_path / "db.sqlite")
    with _open(location, root_log=persist.LogLimits(0, 0)) as writer:
        t = writer.table("t")
        t.update({i: (b"B" * 300 if i % 7 == 0 else b"v%d" % i) for i in range(4000)})
        writer.commit_wait()
        reader = _open(location, read_only=True)
        try:

            def writes() -> None:
                t.update({i: b"w%d" % i for i in range(0, 4000, 3)})
                writer.commit_wait()

            from persist.db import verify as db_verify

            with commit_lands_at(monkeypatch, db_verify._VerifyStore, "load", writes) as hit:
                assert reader.verify() == []
            assert hit
            reader.refresh()
            assert reader.table("t")[3] == b"w3" and reader.verify() == []
        finally:
            reader.close()
        assert writer.verify() == []


def test_a_read_only_handle_iterates_one_state_beside_a_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    location = str(tmp_path / "db.sqlite")
    with _open(location, root_log=persist.LogLimits(0, 0)) as writer:
        t = writer.table("t")
        t.update({i: b"old" for i in range(5000)})
        writer.commit_wait()
        with _open(location, read_only=True, cache_nodes=8) as reader:
            items = iter(reader.table("t").items())
            head = [next(items) for _ in range(100)]
            for rnd in range(3):  # the writer folds three times: old nodes deleted
                t.update({i: b"new %d" % rnd for i in range(5000)})
                writer.commit_wait()
            reader._trees.cache.clear()
            assert head + list(items) == [(i, b"old") for i in range(5000)]
            assert len(reader.table("t")) == 5000 and reader.table("t")[7] == b"old"
            reader.refresh()
            assert reader.table("t")[7] == b"new 2"


@pytest.mark.parametrize("location", ["sqlite", "memory"], indirect=True)  # LevelDB: one handle
def test_a_read_only_open_beside_a_writer_reads_the_state_its_pin_holds(
    location: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer's fold lands between the read-only open's reading of the root and the
    pin it reads the trees through (as a killed client's last commit lands on
    PostgreSQL after the client is gone): the pin no longer holds the nodes of that
    root. The handle reads the root through its pin, so it sees one whole state."""
    from persist.ebs import EncryptedStore

    with _open(location, root_log=persist.LogLimits(0, 0)) as writer:
        t = writer.table("t")
        t.update({i: b"old" for i in range(3000)})
        writer.commit_wait()

        def fold() -> None:
            t.update({i: b"new" for i in range(3000)})  # every leaf replaced, old ones deleted
            writer.commit_wait()

        with commit_lands_at(monkeypatch, EncryptedStore, "pin", fold) as fired:
            reader = _open(location, read_only=True)
        with reader:
            assert fired == [1]
            got = dict(reader.table("t").items())
            assert got == dict.fromkeys(range(3000), b"new")
            assert len(reader.table("t")) == 3000 and reader.table("t")[5] == b"new"
            assert reader.verify() == []


def test_an_iteration_dropped_unfinished_or_never_started_releases_its_state(
    tmp_path: Path,
) -> None:
    """A scan registers as a reader of its tree set; the set's pin (which keeps
    the nodes a fold deletes readable) closes when the last reader leaves.  An
    iterator dropped half way, or before its first item, must leave too."""
    import gc

    with _open(str(tmp_path / "db.sqlite"), root_log=persist.LogLimits(0, 0)) as db:
        t = db.table("t")
        with db.atomic():
            t.update({i: f"v{i}" for i in range(2000)})
        db.commit_wait()
        old = db._trees._state.trees
        half = iter(t.items())
        assert next(half) == (0, "v0")
        never = iter(t.values())  # made, never read
        t[5] = "new"
        db.commit_wait()  # a fold: the old tree set is retired, pinned for its readers
        assert old.retired and old.pin is not None and not old.pin.closed
        assert old._readers == 2
        del half
        gc.collect()
        assert old._readers == 1 and not old.pin.closed
        del never
        gc.collect()
        assert old._readers == 0 and old.pin.closed
        assert t[5] == "new" and len(t) == 2000
