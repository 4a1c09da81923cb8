"""SIGKILL a real process at random moments of its push (DESIGN §3 rule 5).

After every kill the replica opens at its previous root or at the new one,
and verifies with nothing worse than orphans (rows of the push in flight);
the next push completes it, and the last leaves it exact.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import persist
from persist.db.rootlog import LogLimits
from persist.ebs import KdfParams
from persist.remote.sync import INTENT_KEY

from .conftest import target_location_for
from .test_sync import contents, replica_issues, replica_keys

ROOT = Path(__file__).resolve().parents[2]
KILLS = 22


def _change(location: str, rng: random.Random, round_: int) -> int:
    with persist.open(location, "pw", allow_weak_kdf=True, freshness=False) as db:
        t = db.table("t")
        with db.atomic():
            for i in rng.sample(range(6_000), 500):
                t[i] = f"round {round_} {i}"
            if round_ % 3 == 0:
                db.root[f"blob{round_}"] = os.urandom(70_000)
    with persist.open(location, "pw", read_only=True, allow_weak_kdf=True, freshness=False) as db:
        return int(db._ebs.root.count)


def _push(source: str, target: str, kill_after: float | None, *mode: str) -> bool:
    """Run push_child (a push, or the restore or mirror ``mode`` names); kill it
    ``kill_after`` seconds after it starts. True: it finished."""
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.remote.push_child", source, target, *mode],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "go"
    if kill_after is None:
        out = child.stdout.read()
        assert child.wait(timeout=120) == 0
        return "done" in out
    time.sleep(kill_after)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=60)
    return child.returncode == 0


def test_push_survives_sigkill_at_random_moments(tmp_path: Path) -> None:
    rng = random.Random(15)
    source = str(tmp_path / "s.db")
    target = target_location_for("dir", tmp_path)
    with persist.open(
        source,
        "pw",
        kdf=KdfParams.weak_for_tests(),
        allow_weak_kdf=True,
        freshness=False,
        root_log=LogLimits(0, 0, 0),
    ) as db:
        t = db.table("t")
        with db.atomic():
            for i in range(6_000):
                t[i] = f"start {i}"
    assert _push(source, target, None)
    started = time.monotonic()
    previous = _change(source, rng, 0)
    assert _push(source, target, None)
    duration = time.monotonic() - started
    interrupted = 0
    for round_ in range(1, KILLS + 1):
        before, _ = replica_issues(target)
        new = _change(source, rng, round_)
        finished = _push(source, target, rng.uniform(0.0, duration))
        count, issues = replica_issues(target)
        assert count in (before, new), (round_, before, new, count)
        assert {i.kind for i in issues} <= {"orphan"}, issues
        if INTENT_KEY in replica_keys(target):
            interrupted += 1
            assert not finished
        previous = new
    assert interrupted >= KILLS // 4, interrupted  # the kills did land inside pushes
    assert _push(source, target, None)
    count, issues = replica_issues(target)
    assert issues == [] and count == previous
    assert INTENT_KEY not in replica_keys(target)
    restored = str(tmp_path / "back.db")
    persist.remote.restore(target, restored, passphrase="pw", allow_weak_kdf=True, freshness=False)
    assert contents(restored) == contents(source)


RESTORE_KILLS = 10


def test_restore_survives_sigkill_at_random_moments(tmp_path: Path) -> None:
    """A restore killed anywhere leaves no store that opens (keyslots and roots come
    last), or the whole one; a restore asked to overwrite then completes it."""
    rng = random.Random(18)
    source = str(tmp_path / "s.db")
    target = target_location_for("dir", tmp_path)
    with (
        persist.open(
            source, "pw", kdf=KdfParams.weak_for_tests(), allow_weak_kdf=True, freshness=False
        ) as db,
        db.atomic(),
    ):
        db.table("t").update({i: f"value {i}" for i in range(6_000)})
        db.root["blob"] = os.urandom(200_000)
    assert _push(source, target, None)
    want = contents(source)
    started = time.monotonic()  # a restore alone (the kill clock starts after start-up)
    persist.remote.restore(
        target, str(tmp_path / "timed.db"), passphrase="pw", allow_weak_kdf=True, freshness=False
    )
    duration = time.monotonic() - started
    cut = 0
    for round_ in range(RESTORE_KILLS):
        dest = str(tmp_path / f"r{round_}.db")
        finished = _push(dest, target, rng.uniform(0.0, duration), "restore")
        try:
            opened = contents(dest)
        except (persist.StoreNotFound, persist.NotAStore):
            assert not finished
            cut += 1
            persist.remote.restore(
                target,
                dest,
                passphrase="pw",
                allow_weak_kdf=True,
                freshness=False,
                overwrite=True,
            )
            opened = contents(dest)
        assert opened == want, round_
        with persist.open(dest, "pw", read_only=True, allow_weak_kdf=True, freshness=False) as db:
            assert db.verify() == []
    assert cut >= RESTORE_KILLS // 4, cut  # the kills did land inside restores
