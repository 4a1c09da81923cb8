"""Power loss: cut at every sync point and inside batches; the store obeys DESIGN §3 rule 4.

A workload of waves (transfers in atomic blocks, inserts, deletes, large
values, a root log small enough to fold often) runs on a
:class:`~persist.testing.faults.PowerCutStore`, which records every durable
batch.  Then:

* **every batch boundary** on the memory oracle (:func:`power_cut`): what a
  cut after batch n leaves must open, verify clean, and equal the state after
  some wave k at least the last acknowledged one;
* **real files** (SQLite, LevelDB): the wrapper copies the store's files at
  every sync point (what is on disk when ``write`` returned, which is all that
  survives a cut then); each copy is checked, and so is a *torn* version of
  the next batch: the files of the next sync point with the newly appended
  log tail (SQLite's WAL, LevelDB's ``.log``) cut short at a random byte or
  overwritten with zeros or garbage from a random byte on.  This is the last,
  unsynced write of a power cut; the backends' own recovery drops it, and
  persist's authentication judges what remains.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import pytest

from persist.db import Database
from persist.db.rootlog import LogLimits
from persist.ebs import EncryptedStore, KdfParams
from persist.kvs import open_store
from persist.kvs.base import Store
from persist.testing.faults import PowerCutStore, power_cut

from .conftest import record, scale, tear_tail

WEAK = {"kdf": KdfParams.weak_for_tests(), "allow_weak_kdf": True, "freshness": False}
Model = dict[str, dict[Any, Any]]


def _database(store: Store, create: bool) -> Database:
    if create:
        ebs = EncryptedStore.create(store, "pw", **WEAK)  # type: ignore[arg-type]
    else:
        ebs = EncryptedStore.open(store, "pw", allow_weak_kdf=True, freshness=False)
    return Database(ebs, root_log=LogLimits(40, 1 << 15, 24))


def _state(db: Database) -> Model:
    return {name: dict(db.table(name).items()) for name in ("a", "b")}


def run_workload(store: PowerCutStore, waves: int, seed: int) -> tuple[list[Model], list[int]]:
    """Run the waves; return the model after each and the batches durable at each ack."""
    rng = random.Random(seed)
    db = _database(store, create=True)
    model: Model = {"a": {}, "b": {}}
    models, acked_at = [], []
    a, b = db.table("a"), db.table("b")
    with db.atomic():
        for i in range(16):
            a[i] = model["a"][i] = 100
    db.commit_wait()
    models.append({k: dict(v) for k, v in model.items()})
    acked_at.append(len(store.batches))
    for _ in range(waves):
        with db.atomic():
            for _ in range(rng.randint(1, 4)):
                x, y = rng.sample(range(16), 2)
                amount = rng.randint(1, 10)
                a[x] = model["a"][x] = model["a"][x] - amount
                a[y] = model["a"][y] = model["a"][y] + amount
            for _ in range(rng.randint(0, 20)):
                k = rng.randrange(300)
                if rng.random() < 0.3 and k in model["b"]:
                    del b[k]
                    del model["b"][k]
                else:
                    v = os.urandom(rng.choice([0, 10, 100, 300, 3000, 70_000]))
                    b[k] = model["b"][k] = v
        db.commit_wait()
        models.append({k: dict(v) for k, v in model.items()})
        acked_at.append(len(store.batches))
    db.close()
    return models, acked_at


def _check_cut(store: Store, n: int, models: list[Model], acked_at: list[int]) -> int:
    """The cut after ``n`` durable batches is the state after a wave k >= the last
    acknowledged; return k."""
    acked = max(i for i, at in enumerate(acked_at) if at <= n)
    db = _database(store, create=False)
    try:
        state = _state(db)
        assert db.verify() == [], f"cut after batch {n}"
    finally:
        db.close()
    matches = [k for k in range(acked, len(models)) if models[k] == state]
    assert matches, f"cut after batch {n}: not the state after any wave >= {acked}"
    return matches[0]


def test_a_cut_at_every_batch_boundary() -> None:
    seed = int.from_bytes(os.urandom(4))
    store = PowerCutStore(MemoryStoreFactory())
    models, acked_at = run_workload(store, scale(60, 600), seed)
    cuts = 0
    for n in range(acked_at[0], len(store.batches) + 1):
        _check_cut(power_cut(store.batches, n), n, models, acked_at)
        cuts += 1
    record("power.memory.cuts_replayed", cuts)
    record("power.memory.batches", len(store.batches))


def MemoryStoreFactory() -> Store:
    from persist.kvs.memory import MemoryStore

    return MemoryStore()


def _log_file(files: Path, backend: str) -> Path:
    if backend == "sqlite":
        return files / "s.db-wal"  # may be absent right after a checkpoint
    return max(files.glob("*.log"), key=lambda p: int(p.stem))


def _copy_store(src: Path, dst: Path, backend: str) -> None:
    if backend == "sqlite":
        dst.mkdir()
        for suffix in ("", "-wal"):
            if (src / f"s.db{suffix}").exists():
                shutil.copyfile(src / f"s.db{suffix}", dst / f"s.db{suffix}")
    else:
        shutil.copytree(src / "s.ldb", dst, ignore=shutil.ignore_patterns("LOCK"))


def _location(files: Path, backend: str) -> str:
    return str(files / "s.db") if backend == "sqlite" else f"leveldb://{files}"


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "leveldb"])
def test_power_cuts_on_real_files(tmp_path: Path, backend: str) -> None:
    seed = int.from_bytes(os.urandom(4))
    rng = random.Random(seed)
    live = tmp_path / "live"
    live.mkdir()
    snaps = tmp_path / "snaps"
    snaps.mkdir()
    inner = open_store(str(live / "s.db") if backend == "sqlite" else f"leveldb://{live / 's.ldb'}")

    def snapshot(n: int) -> None:
        _copy_store(live, snaps / str(n), backend)

    store = PowerCutStore(inner, after_sync=snapshot)
    models, acked_at = run_workload(store, scale(25, 250), seed)
    cuts = torn = 0
    for n in range(acked_at[0], len(store.batches) + 1):
        files = snaps / str(n)
        check = tmp_path / "check"  # opening recovers (and changes) the files: a copy
        shutil.copytree(files, check)
        with open_store(_location(check, backend)) as kvs:
            _check_cut(kvs, n, models, acked_at)
        shutil.rmtree(check)
        cuts += 1
        if n == len(store.batches):
            break
        # the next batch, torn: its files with the appended log tail damaged
        nxt, before = snaps / str(n + 1), _log_file(files, backend)
        torn_dir = tmp_path / f"torn{n}"
        shutil.copytree(nxt, torn_dir)
        log = _log_file(torn_dir, backend)
        same = before.name == log.name and before.exists()
        start = before.stat().st_size if same else 0
        end = log.stat().st_size
        if end <= start + 1:
            shutil.rmtree(torn_dir)
            continue
        cut = rng.randrange(start + 1, end)
        tear_tail(log, cut, rng.choice(["cut", "zeros", "garbage"]))
        with open_store(_location(torn_dir, backend)) as kvs:
            _check_cut(kvs, n, models, acked_at)
        shutil.rmtree(torn_dir)
        torn += 1
    record(f"power.{backend}.sync_points_replayed", cuts)
    record(f"power.{backend}.torn_tails_replayed", torn)
