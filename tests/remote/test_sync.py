"""Push, poll, pull and restore (issue 15 part 2; docs/remote.md "Push" ...)."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import persist
from persist.db import rootlog, treestore
from persist.db.rootlog import LogLimits
from persist.db.verify import Issue, verify_database
from persist.ebs import EncryptedStore, KdfParams
from persist.errors import (
    ForkDetected,
    IntegrityError,
    LeaseHeld,
    LeaseLost,
    RollbackDetected,
    StoreExists,
    WrongDatabase,
)
from persist.remote import (
    ContainerStore,
    acquire,
    open_container,
    poll,
    pull,
    push,
    reach,
    restore,
)
from persist.remote.sync import INTENT_KEY

from .conftest import target_location_for

PW = "pw"
WEAK: dict[str, Any] = {"allow_weak_kdf": True}


@pytest.fixture(autouse=True)
def _state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERSIST_STATE_DIR", str(tmp_path / "state"))


def source_location(kind: str, tmp_path: Path, name: str = "src") -> str:
    if kind == "sqlite":
        return str(tmp_path / f"{name}.db")
    return f"leveldb://{tmp_path / name}.ldb"


def new_db(location: str, **kw: Any) -> persist.Database:
    return persist.open(location, PW, kdf=KdfParams.weak_for_tests(), allow_weak_kdf=True, **kw)


def fill(db: persist.Database, n: int, start: int = 0, tag: str = "v") -> None:
    t = db.table("t")
    with db.atomic():
        for i in range(start, start + n):
            t[i] = f"{tag} {i}"
    db.root["blob"] = b"B" * 200_000  # a chunked blob
    db.root["meta"] = {"n": n, "tag": tag}
    db.commit_wait()


def contents(location: str) -> dict[str, Any]:
    with persist.open(location, PW, read_only=True, **WEAK) as db:
        out = {f"{name}:{k!r}": v for name in db.tables() for k, v in db.table(name).items()}
        out.update({f"root:{k!r}": v for k, v in db.root.items()})
        return out


@contextlib.contextmanager
def replica_store(target: str) -> Iterator[EncryptedStore]:
    container = open_container(target, read_only=True)
    with ContainerStore(container, owns=True) as store:
        ebs = EncryptedStore.open(store, PW, allow_weak_kdf=True, freshness=False)
        try:
            yield ebs
        finally:
            ebs.close()


def replica_issues(target: str) -> tuple[int, list[Issue]]:
    with replica_store(target) as ebs, ebs.pin() as snap:
        return ebs.root.count, verify_database(ebs, snap)


def replica_keys(target: str) -> set[bytes]:
    with (
        contextlib.closing(open_container(target, read_only=True)) as c,
        contextlib.closing(c.scan()) as rows,
    ):
        return {k for k, _ in rows}


def test_the_catalog_names_agree_with_the_db_layer() -> None:
    assert reach.TABLE_PREFIX == treestore.TABLE_PREFIX
    assert reach.COUNT_TABLE_PREFIX == treestore.COUNT_TABLE_PREFIX
    assert reach.LOG_DESCRIPTOR == rootlog.LOG_DESCRIPTOR
    assert reach._SEGMENT_KEY.pack(7, 3) == rootlog.segment_key(7, 3)
    assert reach._LOG_META.format == rootlog._META.format
    assert reach._LOG_VERSIONS == (rootlog._VERSION, rootlog._TAIL_VERSION)
    assert reach._LOG_META3.format == rootlog._META3.format
    assert rootlog._MASK_VERSION == 3


def test_the_log_catalog_entry_is_read_with_and_without_a_tail() -> None:
    """A root whose log tail rides in it (version 2) names the same segment rows;
    a version 1 entry with trailing bytes or a version 2 entry without a tail is
    malformed, an unknown version is refused."""

    class Root:
        def __init__(self, meta: bytes) -> None:
            self.catalog = {"log": meta}

    zero = bytes(32)
    header = reach._LOG_META.pack(1, 4, 2, b"c" * 32)
    assert reach._log_segments(Root(header)) == (4, 0, 2, zero, b"c" * 32)  # type: ignore[arg-type]
    tail = reach._LOG_META.pack(2, 4, 2, b"c" * 32) + b"\0\0\0\3abc"
    assert reach._log_segments(Root(tail)) == (4, 0, 2, zero, b"c" * 32)  # type: ignore[arg-type]
    # version 3: rows 5..8 remain, the chain before row 5 is given
    masked = reach._LOG_META3.pack(3, 4, 5, 9, b"s" * 32, b"c" * 32, 0)
    assert reach._log_segments(Root(masked)) == (4, 5, 9, b"s" * 32, b"c" * 32)  # type: ignore[arg-type]
    for bad in (
        header + b"x",
        reach._LOG_META.pack(2, 4, 2, b"c" * 32),
        header[:-1],
        reach._LOG_META.pack(3, 4, 2, b"c" * 32),  # too short for version 3
        reach._LOG_META3.pack(3, 4, 9, 5, b"s" * 32, b"c" * 32, 0),  # first after the last
        reach._LOG_META.pack(4, 4, 2, b"c" * 32),
    ):
        with pytest.raises(IntegrityError):
            reach._log_segments(Root(bad))  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["sqlite", "leveldb"])
@pytest.mark.parametrize("tkind", ["dir", "sqlite", "leveldb"])
def test_round_trip(kind: str, tkind: str, tmp_path: Path) -> None:
    src = source_location(kind, tmp_path)
    target = target_location_for(tkind, tmp_path) + "#rep"
    # the first wave goes to the trees, the later ones to the root log, then a fold
    with new_db(src, root_log=LogLimits(max_entries=1000)) as db:
        fill(db, 3000)
        first = push(db, target)
        assert first.previous is None and first.written > 100
        fill(db, 500, start=2800, tag="w")
        db.table("t").pop(5)
        second = push(db, target)
        assert second.previous == first.count and second.count > first.count
        assert 0 < second.written < first.written
        fill(db, 800, start=100, tag="fold")
        third = push(db, target)
        assert third.deleted > 0
    count, issues = replica_issues(target)
    assert issues == [] and count == third.count
    back = str(tmp_path / "back.db")
    restored = restore(target, back, passphrase=PW, **WEAK)
    assert restored.count == third.count
    assert contents(back) == contents(src)
    with persist.open(back, PW, read_only=True, **WEAK) as db:
        assert db.verify() == []
    # the restored store is a store like any other: it takes commits
    with persist.open(back, PW, **WEAK) as db:
        db.root["after"] = 1


@pytest.mark.parametrize("tkind", ["dir", "sqlite"])
def test_a_log_folded_in_masked_pieces_round_trips(tkind: str, tmp_path: Path) -> None:
    """A root log whose pieces masked ranges and dropped rows (format version 3:
    rows from ``first`` on) is pushed row for row, the dropped rows deleted from
    the replica, and restored intact."""
    import random

    src = str(tmp_path / "s.db")
    target = target_location_for(tkind, tmp_path) + "#rep"
    limits = LogLimits(max_entries=2000, fold_nodes=128, tail_bytes=300, piece_nodes=8)
    rng = random.Random(3)
    pushes, firsts = [], []
    with new_db(src, root_log=limits) as db:
        t = db.table("t")
        with db.atomic():
            t.update({i: "tree" for i in range(3000)})
        for n in range(1200):
            t[rng.randrange(6000)] = f"v{n}" + "x" * 100
            db.commit_wait()
            if n % 300 == 299:
                pushes.append(push(db, target))
                firsts.append(db._trees._state.log.first)
        assert max(firsts) > 0 and db._trees._state.log.masks  # rows dropped, ranges masked
        assert sum(p.deleted for p in pushes[1:]) > 0  # the dropped rows left the replica
        count, issues = replica_issues(target)
        assert issues == [] and count == pushes[-1].count
        back = str(tmp_path / "back.db")
        restore(target, back, passphrase=PW, **WEAK)
        with persist.open(back, PW, read_only=True, **WEAK) as copy:
            assert dict(copy.table("t").items()) == dict(t.items())
            assert copy.verify() == []


def test_incremental_push_writes_a_handful_of_rows(tmp_path: Path) -> None:
    """One changed key in a 20,000-key table: O(depth) rows (docs/remote.md figures)."""
    target = target_location_for("dir", tmp_path)
    with new_db(str(tmp_path / "s.db"), root_log=LogLimits(0, 0, 0)) as db:
        t = db.table("t")
        with db.atomic():
            for i in range(20_000):
                t[i] = f"value {i:08d}"
        db.commit_wait()
        push(db, target)
        before = replica_keys(target)
        t[12_345] = "changed"
        db.commit_wait()
        result = push(db, target)
        after = replica_keys(target)
        new_rows = after - before
        # the leaf, the internal nodes above it (20,000 keys: 3 levels), one root slot
        assert len(new_rows) == result.written - 1  # the root slot's key was there already
        assert result.written <= 6, result
        assert result.deleted == len(before - after) <= 5
        # with the root log on (the default), the change is one segment and a root
    with new_db(str(tmp_path / "l.db")) as db:
        t = db.table("t")
        with db.atomic():
            for i in range(20_000):
                t[i] = f"value {i:08d}"
        db.commit_wait()
        push(db, target + "#log")
        t[12_345] = "changed"
        db.commit_wait()
        assert push(db, target + "#log").written <= 3


def test_push_again_is_a_no_op_and_poll_reads_only_the_roots(tmp_path: Path) -> None:
    target = target_location_for("dir", tmp_path)
    with new_db(str(tmp_path / "s.db")) as db:
        fill(db, 100)
        push(db, target)
        assert push(db, target).up_to_date
        seen = poll(db, target)
        assert (seen.local, seen.replica, seen.newer) == (seen.replica, seen.local, False)
        db.root["x"] = 1
        db.commit_wait()
        behind = poll(db, target)
        assert behind.replica is not None and behind.replica < behind.local
        assert not behind.newer


def test_push_from_a_closed_location_and_pull_follows(tmp_path: Path) -> None:
    src, mirror = str(tmp_path / "s.db"), str(tmp_path / "m.db")
    target = target_location_for("sqlite", tmp_path)
    with new_db(src) as db:
        fill(db, 1000)
    push(src, target, passphrase=PW, **WEAK)
    restore(target, mirror, passphrase=PW, **WEAK)
    with persist.open(src, PW, **WEAK) as db:
        fill(db, 300, start=900, tag="second")
        db.table("t").pop(3)
    push(src, target, passphrase=PW, **WEAK)
    assert poll(mirror, target, passphrase=PW, **WEAK).newer
    pulled = pull(mirror, target, passphrase=PW, **WEAK)
    assert pulled.count > pulled.previous and pulled.written > 0 and pulled.deleted > 0
    assert contents(mirror) == contents(src)
    with persist.open(mirror, PW, read_only=True, **WEAK) as db:
        assert db.verify() == []
    assert pull(mirror, target, passphrase=PW, **WEAK).up_to_date


def test_pull_refuses_an_older_or_forked_replica(tmp_path: Path) -> None:
    src, mirror = str(tmp_path / "s.db"), str(tmp_path / "m.db")
    target = target_location_for("dir", tmp_path)
    with new_db(src) as db:
        fill(db, 200)
        push(db, target)
    restore(target, mirror, passphrase=PW, **WEAK)
    with persist.open(mirror, PW, **WEAK) as db:  # the mirror moves on by itself
        db.root["local"] = 1
    with pytest.raises(RollbackDetected):
        pull(mirror, target, passphrase=PW, **WEAK)
    with persist.open(src, PW, **WEAK) as db:  # and the source, differently
        db.root["remote"] = 2
    push(src, target, passphrase=PW, **WEAK)
    with pytest.raises(ForkDetected):
        pull(mirror, target, passphrase=PW, **WEAK)
    with pytest.raises(ForkDetected):
        push(mirror, target, passphrase=PW, **WEAK)  # the replica holds another transaction


def test_restore_refuses_to_overwrite_unless_asked(tmp_path: Path) -> None:
    src, other = str(tmp_path / "s.db"), str(tmp_path / "o.db")
    target = target_location_for("dir", tmp_path)
    with new_db(src) as db:
        fill(db, 50)
        push(db, target)
    with new_db(other) as db:
        db.root["other"] = 1
    with pytest.raises(StoreExists):
        restore(target, other, passphrase=PW, **WEAK)
    assert contents(other) == {"root:'other'": 1}
    restore(target, other, passphrase=PW, overwrite=True, **WEAK)
    assert contents(other) == contents(src)
    with persist.open(other, PW, read_only=True, **WEAK) as db:
        assert db.verify() == []


def test_a_replica_of_another_database_is_refused(tmp_path: Path) -> None:
    target = target_location_for("dir", tmp_path)
    with new_db(str(tmp_path / "a.db")) as db:
        db.root["a"] = 1
        push(db, target)
    with new_db(str(tmp_path / "b.db")) as db:
        db.root["b"] = 1
        with pytest.raises(WrongDatabase):
            push(db, target)
        push(db, target, replace=True)
    assert replica_issues(target)[1] == []


def test_live_push_pins_one_committed_state(tmp_path: Path) -> None:
    """Writers keep committing during the push; the replica holds one committed state."""
    target = target_location_for("dir", tmp_path)
    stop = threading.Event()
    with new_db(str(tmp_path / "s.db")) as db:
        fill(db, 2000)
        t = db.table("t")

        def writer() -> None:
            i = 0
            while not stop.is_set():
                with db.atomic():
                    t[i % 2000] = f"live {i}"
                    db.root["last"] = i
                i += 1

        thread = threading.Thread(target=writer)
        thread.start()
        try:
            results = [push(db, target) for _ in range(3)]
        finally:
            stop.set()
            thread.join()
        assert len({r.count for r in results}) == 3  # the writer committed meanwhile
    count, issues = replica_issues(target)
    assert issues == [] and count == results[-1].count


def test_a_lease_fences_the_root_switch(tmp_path: Path) -> None:
    target = target_location_for("dir", tmp_path)
    with new_db(str(tmp_path / "s.db")) as db:
        fill(db, 50)
        container = open_container(target, create=True)
        lease = acquire(container, lease_time=30)
        with pytest.raises(LeaseHeld):
            push(db, target)  # someone holds it: no push without it
        push(db, container, lease=lease)
        db.root["next"] = 1
        db.commit_wait()
        lease.release()
        with pytest.raises(LeaseLost):
            push(db, container, lease=lease)
        container.close()
        count, _ = replica_issues(target)
        assert count == db._ebs.root.count - 1  # the second push published nothing


def test_a_holder_that_lost_its_lease_after_the_switch_deletes_nothing(tmp_path: Path) -> None:
    """A pushes with a lease, switches the root, and stalls before deleting
    the rows its new root no longer reaches (its clock stopped: a paused
    process).  B takes the lease and pushes a state that reaches those rows
    again (B's store is a copy of A's older one).  A's deletes must then be
    refused: unfenced, they removed rows of B's root (the replica failed
    verify with missing rows before the deletes were fenced).

    On a kvs target the same cannot happen: A's push holds the store's write
    lock, so B's takeover waits for it (StoreLocked); a dir target has no
    lock held across a push, only per step."""
    target = target_location_for("dir", tmp_path)
    a_loc, b_loc = str(tmp_path / "a.db"), str(tmp_path / "b.db")
    root_log = LogLimits(0, 0)  # every change rewrites tree nodes
    with new_db(a_loc, root_log=root_log) as a:
        fill(a, 300)
        push(a, target, freshness=False)
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(a_loc + suffix):
            shutil.copyfile(a_loc + suffix, b_loc + suffix)
    with new_db(b_loc, root_log=root_log, freshness=False) as b:
        b.table("t")[299] = "b's own"  # B is two transactions ahead of the replica
        b.commit_wait()
        b.root["b"] = 1
        b.commit_wait()
    frozen = [0.0]
    a_container = open_container(target)
    b_container = open_container(target)
    a_lease = acquire(a_container, holder="A", lease_time=0.5, clock=lambda: frozen[0])
    stalled: list[int] = []

    def stall(phase: str, done: int, total: int | None) -> None:
        if phase == "deleting garbage" and done == 0 and total and not stalled:
            stalled.append(total)
            b_lease = acquire(b_container, holder="B", lease_time=0.5, timeout=10)
            with new_db(b_loc, root_log=root_log, freshness=False) as b:
                push(b, b_container, lease=b_lease, freshness=False)

    try:
        with new_db(a_loc, root_log=root_log) as a:
            a.table("t")[0] = "a's change"  # replaces the path B still reaches
            a.commit_wait()
            with pytest.raises(LeaseLost):
                push(a, a_container, lease=a_lease, freshness=False, progress=stall)
    finally:
        a_container.close()
        b_container.close()
    assert stalled and stalled[0] > 0
    assert replica_issues(target)[1] == []
    restore(target, str(tmp_path / "r.db"), passphrase=PW, freshness=False, **WEAK)
    assert contents(str(tmp_path / "r.db")) == contents(b_loc)


def test_fenced_garbage_deletes_leave_no_tombstones_in_a_dir_state_log(tmp_path: Path) -> None:
    target = target_location_for("dir", tmp_path)
    with new_db(str(tmp_path / "s.db"), root_log=LogLimits(0, 0)) as db:
        container = open_container(target, create=True)
        lease = acquire(container, lease_time=30)
        deleted = 0
        for round_ in range(3):
            fill(db, 200, tag=f"round {round_}")
            deleted += push(db, container, lease=lease, freshness=False).deleted
        lease.release()
        with container._open(write=False) as cdir:  # type: ignore[attr-defined]
            state_rows = dict(cdir.state().rows)
        container.close()
    assert deleted >= 10  # each round replaced the table's leaves
    # only the rows a switch gave a value: both root slots and the keyslot
    assert len(state_rows) == 3 and None not in state_rows.values()
    assert replica_issues(target)[1] == []


# -- a tampered replica -----------------------------------------------------------


def _node_row(target: str) -> bytes:
    """The storage key of a row the root reaches (not a root slot or keyslot)."""
    with replica_store(target) as ebs, ebs.pin() as snap:
        rows = reach.reachable(ebs, snap.get, ebs.root).puts
        return sorted(rows)[len(rows) // 2]


@pytest.fixture
def pushed(tmp_path: Path) -> tuple[str, str]:
    src = str(tmp_path / "s.db")
    target = target_location_for("dir", tmp_path)
    with new_db(src) as db:
        fill(db, 1000)
        push(db, target)
    return src, target


def _flip(target: str, key: bytes) -> None:
    with contextlib.closing(open_container(target)) as c:
        value = bytearray(c.get(key) or b"")
        value[len(value) // 2] ^= 0x01
        c.write({key: bytes(value)})


def _delete(target: str, key: bytes) -> None:
    with contextlib.closing(open_container(target)) as c:
        c.delete([key])


def _log_row(target: str) -> bytes:
    """The storage key of one of the replica's root log segment rows."""
    with replica_store(target) as ebs, ebs.pin() as snap:
        table = ebs.table(rootlog.LOG_DESCRIPTOR)
        meta = ebs.root.catalog.get(rootlog.LOG_DESCRIPTOR, b"")
        keys = rootlog.RootLog.load(meta, lambda k: table.read_row(k, snap.get)).segment_keys()
        assert keys, "the pushed root log has no segment rows"
        return table.row_key(keys[0])


@pytest.mark.parametrize("row", ["reached", "log segment"])
@pytest.mark.parametrize("damage", ["flip", "delete"])
def test_a_damaged_replica_is_refused(
    damage: str, row: str, pushed: tuple[str, str], tmp_path: Path
) -> None:
    src, target = pushed
    mirror = str(tmp_path / "m.db")
    restore(target, mirror, passphrase=PW, **WEAK)
    with persist.open(src, PW, **WEAK) as db:
        fill(db, 2000, tag="x")
        for i in range(40):  # small commits: the root log's tail spills into segment rows
            db.table("t")[i] = f"small {i}"
            db.commit_wait()
        push(db, target)
    # "reached": any row the root reaches, chosen by its (random) storage key; a log
    # segment among them once failed the issue check below (its issue named no key)
    key = _node_row(target) if row == "reached" else _log_row(target)
    (_flip if damage == "flip" else _delete)(target, key)
    _, issues = replica_issues(target)
    assert any(key.hex() in i.storage_key or key.hex() in i.description for i in issues), issues
    with pytest.raises(IntegrityError):
        restore(target, str(tmp_path / "r.db"), passphrase=PW, **WEAK)
    assert not os.path.exists(tmp_path / "r.db") or not _opens(str(tmp_path / "r.db"))
    before = contents(mirror)
    with pytest.raises(IntegrityError):
        pull(mirror, target, passphrase=PW, **WEAK)
    assert contents(mirror) == before  # nothing was written
    # a sweeping push repairs it (a plain push trusts the rows the diff skips)
    with persist.open(src, PW, **WEAK) as db:
        db.root["repair"] = 1
        assert push(db, target, sweep=True).swept
    assert replica_issues(target)[1] == []


def test_a_sweep_rewrites_a_damaged_row_the_root_still_reaches(
    pushed: tuple[str, str],
) -> None:
    """The damaged row stays reachable (the same root is pushed again): the
    sweep must compare the replica's bytes, not only which keys it holds (it
    kept the flipped row before; the test above hit that when its random
    row was one the repair commit did not replace)."""
    src, target = pushed
    push(src, target, passphrase=PW, **WEAK)  # the store at rest (closing folded its log)
    count = replica_issues(target)[0]
    key = _node_row(target)
    _flip(target, key)
    assert replica_issues(target)[1] != []
    result = push(src, target, passphrase=PW, sweep=True, **WEAK)
    assert result.swept and result.count == count and result.written == 1
    assert replica_issues(target) == (count, [])


def _opens(location: str) -> bool:
    try:
        with persist.open(location, PW, read_only=True, **WEAK, freshness=False):
            return True
    except Exception:
        return False


def test_an_old_root_replayed_is_refused(pushed: tuple[str, str], tmp_path: Path) -> None:
    src, target = pushed
    ring_slots = {}
    with replica_store(target) as ebs:
        ring = ebs.keyring
        slots = [ring.root_slot_key(0), ring.root_slot_key(1)]
    with contextlib.closing(open_container(target)) as c:
        ring_slots = {k: c.get(k) for k in slots}
    with persist.open(src, PW, **WEAK) as db:
        for i in range(3):
            db.root["more"] = i
            db.commit_wait()
            push(db, target)
    mirror = str(tmp_path / "m.db")
    restore(target, mirror, passphrase=PW, **WEAK)
    with contextlib.closing(open_container(target)) as c:  # the host puts the old roots back
        c.write_atomic({k: v for k, v in ring_slots.items() if v is not None})
    with pytest.raises(RollbackDetected):
        pull(mirror, target, passphrase=PW, **WEAK)
    with pytest.raises(RollbackDetected):  # this machine's record of the replica
        restore(target, str(tmp_path / "r.db"), passphrase=PW, **WEAK)
    # a machine without a record still finds the rows of the old root gone
    with pytest.raises(IntegrityError):
        restore(target, str(tmp_path / "r2.db"), passphrase=PW, freshness=False, **WEAK)
    _, issues = replica_issues(target)
    assert issues


def test_an_interrupted_push_is_completed_by_the_next(
    pushed: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The in-process half of the kill test: a push that stops after its writes,
    or after its root switch, leaves a replica the next push makes exact."""
    src, target = pushed
    from persist.remote import sync

    for stop_at in ("write_atomic", "delete"):
        with persist.open(src, PW, **WEAK) as db:
            fill(db, 500, tag=stop_at)
            real = getattr(sync.Container, stop_at)

            def boom(self: Any, *a: Any, _real: Any = real, **k: Any) -> Any:
                raise KeyboardInterrupt

            monkeypatch.setattr(sync.Container, stop_at, boom)
            with pytest.raises(KeyboardInterrupt):
                push(db, target)
            monkeypatch.setattr(sync.Container, stop_at, real)
            assert INTENT_KEY in replica_keys(target)
            _, issues = replica_issues(target)
            assert {i.kind for i in issues} <= {"orphan"} and issues
            assert push(db, target).swept
        _, issues = replica_issues(target)
        assert issues == [] and INTENT_KEY not in replica_keys(target)
