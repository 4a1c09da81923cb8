"""A replica pushed to another replica without the key (persist/remote/mirroring.py)."""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import persist
from persist.errors import LeaseHeld, LeaseLost, StoreNotFound, WrongDatabase
from persist.remote import acquire, mirror, open_container, push, restore, sync
from persist.remote import mirroring as mirror_module
from persist.remote.sync import INTENT_KEY

from .conftest import target_location_for
from .test_push_kill import _push
from .test_sync import PW, WEAK, contents, fill, new_db, replica_issues, replica_keys

BIN = str(Path(sys.executable).parent / "persist")


@pytest.fixture(autouse=True)
def _state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERSIST_STATE_DIR", str(tmp_path / "state"))


def _restored(target: str, tmp_path: Path, name: str = "r.db") -> dict[str, Any]:
    where = str(tmp_path / name)
    restore(target, where, passphrase=PW, freshness=False, **WEAK)
    return contents(where)


@pytest.fixture
def source(tmp_path: Path) -> tuple[str, str]:
    """(local store, its dir replica A)."""
    local, a = str(tmp_path / "s.db"), f"dir://{tmp_path}/a#db"
    with new_db(local) as db:
        fill(db, 2000)
    push(local, a, passphrase=PW, freshness=False, **WEAK)  # the folded state at rest
    return local, a


@pytest.mark.parametrize("kind", ["dir", "sqlite", "leveldb"])
def test_a_mirror_is_an_exact_copy(kind: str, source: tuple[str, str], tmp_path: Path) -> None:
    local, a = source
    b = target_location_for(kind, tmp_path, "b") + "#db"
    done = mirror(a, b)
    assert done.written == len(replica_keys(a)) and done.deleted == 0
    assert replica_keys(b) == replica_keys(a)
    assert replica_issues(b) == replica_issues(a)
    assert replica_issues(b)[1] == []
    assert _restored(b, tmp_path) == contents(local)
    assert mirror(a, b).up_to_date  # again: nothing to do
    c = f"dir://{tmp_path}/c"  # and on, replica to replica
    mirror(b, c)
    assert _restored(c, tmp_path, "rc.db") == contents(local)


def test_an_incremental_mirror_writes_what_the_push_wrote(
    source: tuple[str, str], tmp_path: Path
) -> None:
    local, a = source
    b = f"dir://{tmp_path}/b#db"
    mirror(a, b)
    with new_db(local) as db:
        db.table("t")[1234] = "changed"
        db.commit_wait()
        pushed = push(db, a, freshness=False)
    done = mirror(a, b)
    assert 0 < done.written <= pushed.written  # the same rows (the keyslot is unchanged)
    assert done.deleted == pushed.deleted
    assert done.unchanged > 50
    assert replica_keys(b) == replica_keys(a)
    count, issues = replica_issues(b)
    assert issues == [] and count == replica_issues(a)[0]
    assert _restored(b, tmp_path)["t:1234"] == "changed"


def _check_during(target: str, allowed: set[int | None]) -> Any:
    """A progress callback: at every step the target opens at an allowed root
    (None: does not open) and verifies, orphans aside."""
    seen: list[int | None] = []

    def check(phase: str, done: int, total: int | None) -> None:
        try:
            count, issues = replica_issues(target)
        except (StoreNotFound, persist.NotAStore):
            count, issues = None, []
        except persist.IntegrityError as exc:  # mid-fill: the rows came, the keyslots not yet
            assert "no keyslot" in str(exc)
            count, issues = None, []
        seen.append(count)
        assert count in allowed, (phase, done, count)
        assert {i.kind for i in issues} <= {"orphan"}, (phase, done, issues)

    check.seen = seen  # type: ignore[attr-defined]
    return check


def test_no_reader_sees_a_root_before_its_rows(source: tuple[str, str], tmp_path: Path) -> None:
    local, a = source
    b = f"dir://{tmp_path}/b#db"
    mirror(a, b)
    before = replica_issues(b)[0]
    with new_db(local) as db:
        fill(db, 300, start=5000, tag="more")
        push(db, a, freshness=False)
    after = replica_issues(a)[0]
    check = _check_during(b, {before, after})
    monkey = pytest.MonkeyPatch()
    with monkey.context() as m:
        m.setattr(sync, "_batches", _one_row_batches)  # check after every row
        mirror(a, b, progress=check)
    assert set(check.seen) == {before, after}
    assert replica_issues(b) == (after, [])


def _one_row_batches(rows: Any) -> Iterator[list[tuple[bytes, bytes]]]:
    for row in rows:
        yield [row]


def test_a_replica_of_an_empty_database_is_rebuilt_unopenable_until_done(
    tmp_path: Path,
) -> None:
    """A replica of a database at transaction 0 holds one root slot: the
    source's other slot must not land before its rows (theory rule 5)."""
    local, a, b = str(tmp_path / "s.db"), f"dir://{tmp_path}/a", f"dir://{tmp_path}/b"
    with new_db(local) as db:
        push(db, a, freshness=False)
        push(db, b, freshness=False)  # both hold transaction 0
        assert replica_issues(b)[0] == 0
        fill(db, 500)
        push(db, a, freshness=False)
    check = _check_during(b, {0, None, replica_issues(a)[0]})
    with pytest.MonkeyPatch().context() as m:
        m.setattr(sync, "_batches", _one_row_batches)
        mirror(a, b, progress=check)
    assert None in check.seen  # it stopped opening while it was filled
    assert replica_issues(b) == (replica_issues(a)[0], [])
    assert _restored(b, tmp_path) == contents(local)


def test_another_database_is_refused_unless_replaced(
    source: tuple[str, str], tmp_path: Path
) -> None:
    local, a = source
    b = f"dir://{tmp_path}/b#db"
    with new_db(str(tmp_path / "other.db")) as other:
        fill(other, 10, tag="other")
        push(other, b, freshness=False)
    keys = replica_keys(b)
    with pytest.raises(WrongDatabase):
        mirror(a, b)
    assert replica_keys(b) == keys  # nothing written
    with open_container(b) as c:
        c.write({b"\x07" * 32: b"junk"})  # rows without keyslots: refused too
        c.delete([k for k, _ in c.scan() if k != b"\x07" * 32])
    with pytest.raises(WrongDatabase):
        mirror(a, b)
    mirror(a, b, replace=True)
    assert replica_keys(b) == replica_keys(a)
    assert _restored(b, tmp_path) == contents(local)


def test_a_source_without_a_database_and_the_same_container_are_refused(
    source: tuple[str, str], tmp_path: Path
) -> None:
    _, a = source
    empty = f"dir://{tmp_path}/empty"
    open_container(empty, create=True).close()
    with pytest.raises(StoreNotFound):
        mirror(empty, f"dir://{tmp_path}/b")
    with pytest.raises(ValueError, match="same container"):
        mirror(a, a)


def test_the_lease_of_the_target_fences_a_mirror(source: tuple[str, str], tmp_path: Path) -> None:
    local, a = source
    b = f"dir://{tmp_path}/b#db"
    mirror(a, b)
    with new_db(local) as db:
        db.root["next"] = 1
        db.commit_wait()
        push(db, a, freshness=False)
    container = open_container(b)
    try:
        held = acquire(container, holder="someone", lease_time=30)
        with pytest.raises(LeaseHeld):
            mirror(a, b)
        mirror(a, container, lease=held)
        assert replica_keys(b) == replica_keys(a)
        with new_db(local) as db:
            db.root["next"] = 2
            db.commit_wait()
            push(db, a, freshness=False)
        before = replica_issues(b)[0]
        held.release()
        with pytest.raises(LeaseLost):
            mirror(a, container, lease=held)
        assert replica_issues(b)[0] == before  # published nothing
    finally:
        container.close()


def test_a_dir_source_whose_root_switches_mid_scan_is_read_again(
    source: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local, a = source
    b = f"dir://{tmp_path}/b#db"
    real = mirror_module._rows
    scans = [0]

    def rows(container: Any) -> dict[bytes, bytes]:
        if container.location != open_container(a).location or scans[0]:
            return real(container)
        scans[0] += 1
        out: dict[bytes, bytes] = {}
        with contextlib.closing(container.scan()) as it:
            for i, (k, v) in enumerate(it):
                if k != INTENT_KEY:
                    out[k] = v
                if i == 50:  # a push lands mid-scan: new root, old rows deleted
                    with new_db(local) as db:
                        fill(db, 2000, tag="rewritten")
                        push(db, a, freshness=False)
        return out

    monkeypatch.setattr(mirror_module, "_rows", rows)
    mirror(a, b)
    assert scans[0] == 1
    assert replica_issues(b) == (replica_issues(a)[0], [])
    assert _restored(b, tmp_path) == contents(local)


def test_persist_push_of_a_replica_needs_no_key(source: tuple[str, str], tmp_path: Path) -> None:
    local, a = source
    b = f"dir://{tmp_path}/b#db"
    env = {k: v for k, v in os.environ.items() if k != "PERSIST_PASSPHRASE"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [BIN, *args],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            stdin=subprocess.DEVNULL,
        )

    done = run("push", a, b, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["written"] == len(replica_keys(a)) and not report["up_to_date"]
    again = run("push", a, b, "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["up_to_date"]
    assert _restored(b, tmp_path) == contents(local)
    other = f"dir://{tmp_path}/other#db"
    with new_db(str(tmp_path / "o.db")) as db:
        push(db, other, freshness=False)
    refused = run("push", a, other, "--json")
    assert refused.returncode == 1 and json.loads(refused.stdout)["refused"] == "WrongDatabase"
    usage = run("push", a, b, "--sweep")
    assert usage.returncode == 2
    assert run("push", a, other, "--replace").returncode == 0


KILLS = 12


@pytest.mark.slow
def test_a_mirror_survives_sigkill_at_random_moments(
    source: tuple[str, str], tmp_path: Path
) -> None:
    local, a = source
    b = f"dir://{tmp_path}/b#db"
    rng = random.Random(19)
    assert _push(a, b, None, "mirror")

    def change(round_: int) -> None:
        with new_db(local) as db:
            t = db.table("t")
            with db.atomic():
                for i in rng.sample(range(2000), 300):
                    t[i] = f"round {round_} {i}"
            db.root[f"blob{round_}"] = os.urandom(50_000)
            db.commit_wait()
            push(db, a, freshness=False)

    change(-1)
    started = time.monotonic()  # an incremental mirror alone: the kill window
    mirror(a, b)
    duration = time.monotonic() - started
    cut = 0
    for round_ in range(KILLS):
        before = replica_issues(b)[0]
        change(round_)
        new = replica_issues(a)[0]
        finished = _push(a, b, rng.uniform(0.0, duration), "mirror")
        count, issues = replica_issues(b)
        assert count in (before, new), (round_, before, new, count)
        assert {i.kind for i in issues} <= {"orphan"}, issues
        if not finished:
            cut += 1
    assert cut >= KILLS // 4, cut  # the kills did land inside mirrors
    assert _push(a, b, None, "mirror")
    assert replica_keys(b) == replica_keys(a)
    assert replica_issues(b) == (replica_issues(a)[0], [])
    assert _restored(b, tmp_path) == contents(local)
