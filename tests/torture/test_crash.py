"""SIGKILL a real writer at random moments on every backend (DESIGN §3 rules 3 and 4).

The writer is a process forked by the zygote (persist.testing.crash): sixteen
threads of transfers in atomic blocks with commit-waits, acknowledgements in a
side file.  After each kill the test process opens the store read-only and
checks: it opens, verify is clean, the total holds, every acknowledged
transfer is there, and the state is a prefix of the wave sequence
(:func:`persist.testing.crash.check_transfers`).  The next round's writer
then reopens the same store (recovery, root log, folds) and goes on.

CI: 110 kills on SQLite, 110 on LevelDB, 70 on PostgreSQL, 5 PostgreSQL
server crashes (``pg_ctl stop -m immediate``), 20 runs of a v1->v2 upgrade
and 20 of ``persist rekey`` killed at a random moment of their measured
duration (the figures count the ones the kill caught before they finished).
``PERSIST_TORTURE=long``: ten times as many.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest

import persist
from persist.testing import crash
from persist.testing.crash import Acks, Zygote, wait_for_line
from persist.testing.pgserver import PostgresServer

from ..conftest import PG_DATABASE, pg_location
from .conftest import record, scale

PW = "pw"
#: A root log this small folds every few commits: kills land inside folds too.
TINY_LOG = [48, 1 << 16, 32]
#: a log folded in masked pieces (rootlog rules 6 and 7): small pieces, a small tail
PIECE_LOG = [48, 1 << 16, 32, 256, 2]


def _kill(pid: int) -> None:
    """SIGKILL the writer; it may have finished already (the zygote reaped it)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _open_ro(location: str, freshness: Any, passphrase: str = PW) -> persist.Database:
    return persist.open(
        location, passphrase, read_only=True, allow_weak_kdf=True, freshness=freshness
    )


class TransferRun:
    """Rounds of the transfer job on one store, checked after each kill."""

    def __init__(self, zygote: Zygote, location: str, work: Path, seed: int, **extra: Any):
        self.zygote, self.location, self.work = zygote, location, work
        self.seed, self.extra = seed, extra
        self.freshness: Any = str(work / "freshness")
        self.initialized = False
        self.opened = False  # some writer finished opening (so the store exists)
        self.acked: dict[tuple[int, int], int] = {}
        self.kills = 0
        self.round = 0
        self.transfers = 0
        self.failures: list[str] = []
        work.mkdir(parents=True, exist_ok=True)

    def start(self) -> tuple[int, Path]:
        acks = self.work / f"acks-{self.round}"
        pid = self.zygote.start(
            "transfers",
            location=self.location,
            acks=str(acks),
            round=self.round,
            seed=self.seed,
            freshness=self.freshness,
            stderr=str(self.work / "stderr"),
            **self.extra,
        )
        return pid, acks

    def finish(self, acks: Path, status: int, *, may_fail: bool = False) -> None:
        """After the writer died: fold its acknowledgements in and check the store.

        ``may_fail``: the writer may also have stopped on its own with an error
        of the library (the server under it died), which it noted as ``failed``.
        """
        failed = [line for line in Acks.read(acks) if line.startswith("failed ")]
        if may_fail and status == 3 and failed:
            self.failures.append(failed[0].split()[1])
        elif status != -signal.SIGKILL:
            err = (self.work / "stderr").read_text() if (self.work / "stderr").exists() else ""
            raise AssertionError(f"writer exited {status} instead of being killed:\n{err[-3000:]}")
        lines = Acks.read(acks)
        self.initialized |= "init" in lines
        self.opened |= "open" in lines
        crash.acknowledged(lines, self.round, self.acked)
        self.check()
        self.kills += 1
        self.round += 1

    def check(self) -> None:
        try:
            db = _open_ro(self.location, self.freshness)
        except persist.StoreNotFound:
            assert not self.opened, "a store that was opened is gone"
            return  # killed before the first open created it
        with db:
            state = crash.read_transfers(db)
            state.acked = self.acked
            crash.check_transfers(state, self.initialized)
            assert db.verify() == []
        self.transfers = len(state.log)

    def kill_round(self, rng: random.Random) -> None:
        pid, acks = self.start()
        # during open: recovery, the root log, a fold (kills during a store's creation
        # are test_a_kill_while_creating_a_sqlite_store_leaves_it_readable's)
        if self.opened and rng.random() < 0.15:
            time.sleep(rng.uniform(0, 0.08))
        else:
            assert wait_for_line(acks, "open", 60), (self.work / "stderr").read_text()
            time.sleep(rng.uniform(0, 0.25))
        os.kill(pid, signal.SIGKILL)
        self.finish(acks, self.zygote.wait())


def _kill_many(zygote: Zygote, make_location: Any, tmp_path: Path, kills: int, name: str) -> None:
    seed = int.from_bytes(os.urandom(4))
    rng = random.Random(seed)
    per_store = 20  # a fresh store now and then keeps each verify small
    total = transfers = 0
    started = time.monotonic()
    for n in range(0, kills, per_store):
        logs: list[dict[str, Any]] = [{}, {"root_log": TINY_LOG}, {"root_log": PIECE_LOG}]
        extra = logs[n // per_store % 3]
        run = TransferRun(zygote, make_location(n), tmp_path / f"s{n}", seed + n, **extra)
        for _ in range(min(per_store, kills - n)):
            try:
                run.kill_round(rng)
            except AssertionError as exc:
                raise AssertionError(f"seed {seed}, store {n}, round {run.round}: {exc}") from exc
        # (the "init" line itself may be the one a kill cut off: count what is stored)
        assert run.transfers and run.acked, "the writers never got going between kills"
        total += run.kills
        transfers += run.transfers
    record(f"crash.{name}.kills", total)
    record(f"crash.{name}.transfers_stored", transfers)
    record(f"crash.{name}.seconds", round(time.monotonic() - started, 1))


@pytest.mark.slow
def test_kills_on_sqlite(zygote: Zygote, tmp_path: Path) -> None:
    _kill_many(zygote, lambda n: str(tmp_path / f"s{n}.db"), tmp_path, scale(110, 1100), "sqlite")


@pytest.mark.slow
def test_kills_on_leveldb(zygote: Zygote, tmp_path: Path) -> None:
    loc = lambda n: f"leveldb://{tmp_path / f's{n}.ldb'}"  # noqa: E731
    _kill_many(zygote, loc, tmp_path, scale(110, 1100), "leveldb")


@pytest.mark.slow
def test_kills_on_postgresql(zygote: Zygote, tmp_path: Path, pg_server: PostgresServer) -> None:
    _kill_many(zygote, lambda n: pg_location(pg_server), tmp_path, scale(70, 700), "postgresql")


@pytest.mark.slow
def test_postgresql_server_crashes(zygote: Zygote, tmp_path: Path) -> None:
    """The server itself dies (immediate shutdown: no checkpoint) under the writer."""
    from persist.testing.pgserver import start_server

    rng = random.Random(int.from_bytes(os.urandom(4)))
    crashes = scale(5, 30)
    with start_server() as server:
        server.create_database(PG_DATABASE)
        run = TransferRun(zygote, pg_location(server), tmp_path / "pg", rng.randrange(1 << 30))
        data = str(server.data)
        for _ in range(crashes):
            pid, acks = run.start()
            assert wait_for_line(acks, "open", 60), (run.work / "stderr").read_text()
            time.sleep(rng.uniform(0.05, 0.3))
            server.run("pg_ctl", "stop", "-D", data, "-m", "immediate", "-w")
            time.sleep(rng.uniform(0, 0.1))  # the writer meets the dead server
            _kill(pid)  # it may have stopped on the error already
            status = zygote.wait()
            log = str(server.log_file)
            server.run("pg_ctl", "start", "-D", data, "-l", log, "-w", "-t", "60")
            run.finish(acks, status, may_fail=True)
        assert run.acked
        # what the writer raised when its server vanished: a library error, never another
        assert all(hasattr(persist.errors, name) for name in run.failures), run.failures
    record("crash.postgresql_server.immediate_stops", crashes)
    record("crash.postgresql_server.writer_errors", sorted(set(run.failures)))


# -- a kill during the v1 -> v2 upgrade ---------------------------------------------------

GOLDEN = Path(__file__).parents[1] / "db" / "golden_db_v1.json"
GOLDEN_PW = "golden db passphrase"


def _contents(db: persist.Database) -> dict[str | None, list[tuple[Any, Any]]]:
    return {name: list(db.inspect(name)) for name in [None, *sorted(db.tables())]}


def _job_duration(zygote: Zygote, name: str, acks: Path, **args: Any) -> float:
    started = time.monotonic()
    zygote.start(name, acks=str(acks), **args)
    assert zygote.wait() == 0, acks.read_text() if acks.exists() else ""
    return time.monotonic() - started


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "leveldb"])
def test_kills_during_the_format_upgrade(zygote: Zygote, tmp_path: Path, backend: str) -> None:
    import json

    from persist.ebs import EncryptedStore
    from persist.kvs import open_store

    rows = {
        bytes.fromhex(k): bytes.fromhex(v)
        for k, v in json.loads(GOLDEN.read_text())["rows"].items()
    }

    def fresh_copy(name: str) -> str:
        loc = f"leveldb://{tmp_path / name}"
        if backend == "sqlite":
            loc = str(tmp_path / f"{name}.db")
        with open_store(loc) as kvs:
            kvs.write(rows)
        return loc

    def version(loc: str) -> int:
        with open_store(loc, read_only=True) as kvs:
            ebs = EncryptedStore.open(kvs, GOLDEN_PW, allow_weak_kdf=True, freshness=False)
            return ebs.version

    reference = fresh_copy("reference")
    with _open_ro(reference, False, GOLDEN_PW) as db:
        want = _contents(db)
    common = {"passphrase": GOLDEN_PW, "freshness": False}
    timing = tmp_path / "timing"
    duration = _job_duration(zygote, "open-close", timing, location=reference, **common)
    rng = random.Random(int.from_bytes(os.urandom(4)))
    kills = scale(10, 100)
    versions = []
    finished = 0
    for n in range(kills):
        loc = fresh_copy(f"u{n}") if n % 3 == 0 else loc  # noqa: F821 - set on n == 0
        acks = tmp_path / f"acks-{n}"
        pid = zygote.start("open-close", location=loc, acks=str(acks), **common)
        time.sleep(rng.uniform(0, duration))
        _kill(pid)
        status = zygote.wait()
        assert status in (0, -signal.SIGKILL)
        finished += status == 0
        versions.append(version(loc))
        with _open_ro(loc, False, GOLDEN_PW) as db:
            assert _contents(db) == want, f"kill {n}: the upgrade changed the contents"
            assert db.verify() == []
    with persist.open(loc, GOLDEN_PW, allow_weak_kdf=True, freshness=False) as db:
        assert db._ebs.version == 2 and _contents(db) == want and db.verify() == []
    record(f"crash.upgrade.{backend}.kills", kills - finished)
    record(f"crash.upgrade.{backend}.finished_before_the_kill", finished)
    record(f"crash.upgrade.{backend}.left_v1_v2", [versions.count(1), versions.count(2)])


# -- a kill during `persist rekey` ------------------------------------------------------------


#: What verify reports of a rotation a kill interrupted, before `persist rekey` finishes it.
ROTATION_LEFTOVERS = {"journal", "orphan"}


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "leveldb"])
def test_kills_during_a_rotation(zygote: Zygote, tmp_path: Path, backend: str) -> None:
    from persist.ebs import KdfParams

    loc = str(tmp_path / "r.db") if backend == "sqlite" else f"leveldb://{tmp_path / 'r.ldb'}"
    passphrases = [f"passphrase {i}" for i in range(scale(10, 100) + 2)]
    for i, p in enumerate(passphrases):
        (tmp_path / f"p{i}").write_text(p + "\n")
    with persist.open(
        loc, passphrases[0], kdf=KdfParams.weak_for_tests(), allow_weak_kdf=True, freshness=False
    ) as db:
        db.table("t").update({i: os.urandom(i % 300) for i in range(400)})
        db.root["x"] = {"nested": [1, 2, 3]}
    with _open_ro(loc, False, passphrases[0]) as db:
        want = _contents(db)
        assert len(want["t"]) == 400

    def argv(i: int) -> list[str]:
        return [
            "rekey",
            loc,
            "--passphrase-file",
            str(tmp_path / f"p{i}"),
            "--new-passphrase-file",
            str(tmp_path / f"p{i + 1}"),
            "--allow-weak-kdf",
            "--weak-kdf-for-tests",
            "--no-freshness",
        ]

    duration = 0.0
    current, rng = 0, random.Random(int.from_bytes(os.urandom(4)))
    kills = scale(10, 100)
    phases = {"before": 0, "copy": 0, "switched": 0, "done": 0}
    for n in range(kills):
        acks = tmp_path / f"acks-{n}"
        pid = zygote.start("cli", argv=argv(current), acks=str(acks))
        started = time.monotonic()
        assert wait_for_line(acks, "start", 60)
        time.sleep(rng.uniform(0, duration or 0.5))
        _kill(pid)
        status = zygote.wait()
        lines = Acks.read(acks)
        if "exit 0" in lines:
            duration = max(duration, time.monotonic() - started)
        else:
            assert status == -signal.SIGKILL, lines
        # the store opens, under the old or the new passphrase, and holds the same data
        opened = None
        for which in (current, current + 1):
            try:
                db = _open_ro(loc, False, passphrases[which])
            except persist.WrongPassphrase:
                continue
            with db:
                assert _contents(db) == want, f"kill {n}: the rotation changed the contents"
                phase = db._ebs.rekey_phase
                issues = db.verify()
                if phase is None:
                    assert issues == []
                else:  # verify names the unfinished rotation (and its partial copy), only that
                    assert issues and all(i.kind in ROTATION_LEFTOVERS for i in issues), issues
            opened = which
            break
        assert opened is not None, f"kill {n}: neither passphrase opens the store"
        if "exit 0" in lines:
            # (also after a kill in the cleanup of the rotation before: rekey finishes
            # that cleanup, then rotates to the passphrase it was given)
            phases["done"] += 1
            assert opened == current + 1 and phase is None
            current += 1
        elif opened == current + 1:  # killed after the key switch: the new passphrase rules
            phases["switched"] += 1
            current += 1
        else:
            phases["copy" if phase else "before"] += 1
    record(f"crash.rekey.{backend}.kills", kills - phases["done"])
    record(f"crash.rekey.{backend}.outcomes", phases)


# -- findings -------------------------------------------------------------------------


def test_a_kill_while_creating_a_sqlite_store_leaves_it_readable(
    zygote: Zygote, tmp_path: Path
) -> None:
    """A store is created whole under a temporary name and linked into place, so a
    kill leaves no store (StoreNotFound) or an empty one, never a hot rollback journal
    a read-only open cannot roll back (ReadOnlyError) nor a file it calls NotAStore;
    and no temporary file is left once a writer has opened the store."""
    landed = _kill_creations(zygote, tmp_path, lambda n: str(tmp_path / f"new{n}.db"))
    left = [p.name for p in tmp_path.iterdir() if ".creating-" in p.name]
    record("crash.sqlite_creation.kills_after_the_link", landed)
    record("crash.sqlite_creation.unfinished_creations_left", len(left))
    # a writer cleans up what killed creations left under their temporary names
    stores = sorted({name[1:].split(".creating-")[0] for name in left})[:3]
    for store in stores:
        with persist.open(
            str(tmp_path / store),
            PW,
            kdf=persist.ebs.KdfParams.weak_for_tests(),
            allow_weak_kdf=True,
            freshness=False,
        ) as db:
            db.root["ok"] = True
    stale = [p.name for p in tmp_path.iterdir() if p.name[1:].startswith(tuple(stores))]
    assert not stale, (stale, left)


def test_a_kill_while_creating_a_leveldb_store_leaves_it_readable(
    zygote: Zygote, tmp_path: Path
) -> None:
    """The same kills on LevelDB, whose creation (plyvel's ``create_if_missing``, then
    the keyslot and the first root in one batch) needed no change."""
    landed = _kill_creations(zygote, tmp_path, lambda n: f"leveldb://{tmp_path / f'new{n}.ldb'}")
    record("crash.leveldb_creation.kills_inside", landed)


def _kill_creations(zygote: Zygote, tmp_path: Path, location_of: Any) -> int:
    """Kill writers opening new stores at random moments until 30 kills landed after
    the store appeared at its location and before the open returned; after each, a
    read-only open finds no store or an empty one, without an error."""
    rng = random.Random(int.from_bytes(os.urandom(4)))
    # How long a creation takes on this machine (the kills are spread over it)
    spans = []
    for n in range(3):
        acks = tmp_path / f"calibrate{n}"
        started = time.monotonic()
        zygote.start("open-close", location=location_of(-1 - n), acks=str(acks), passphrase=PW)
        assert wait_for_line(acks, "open", 60), "a creation did not finish"
        spans.append(time.monotonic() - started)
        zygote.wait()
    span = max(0.03, 1.2 * sorted(spans)[1])
    landed = 0
    for n in range(300):
        location = location_of(n)
        acks = tmp_path / f"acks{n}"
        pid = zygote.start("open-close", location=location, acks=str(acks), passphrase=PW)
        time.sleep(rng.uniform(0, span))
        _kill(pid)
        zygote.wait()
        path = Path(location.removeprefix("leveldb://"))
        if "open" in Acks.read(acks) or not path.exists():
            continue
        landed += 1
        # the first open never returned: no store, or an empty one; not an error
        with contextlib.suppress(persist.StoreNotFound):
            _open_ro(location, False).close()
        if landed == 30:
            break
    assert landed, "no kill landed inside the creation of a store"
    return landed
