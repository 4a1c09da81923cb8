"""The outside finding of issue 18: a torn last LevelDB log write after a real kill.

A writer (16 threads of transfers) is SIGKILLed; then the tail of the newest
log file is torn the way a power cut leaves an unsynced write (cut short, a
hole of zeros, garbage).  The store must open, ``persist verify`` must exit 0,
and the state must still be whole and a prefix of the waves (what was torn
may have been acknowledged after the kill -- a real cut tears only what was
not synced -- so acknowledgements are not checked here; test_power.py checks
them with cuts that respect syncs).  A store LevelDB cannot open at all makes
``persist verify`` exit 2 ("could not open"), not 1.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import persist
from persist.testing import crash
from persist.testing.crash import Zygote, wait_for_line

from .conftest import tear_tail

BIN = str(Path(sys.executable).parent / "persist")


def _verify(location: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    (tmp_path / "pw").write_text("pw\n")
    return subprocess.run(
        [BIN, "verify", location, "--passphrase-file", str(tmp_path / "pw"), "--allow-weak-kdf",
         "--no-freshness"],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip


def _killed_store(zygote: Zygote, tmp_path: Path, n: int) -> tuple[str, Path]:
    directory = tmp_path / f"s{n}.ldb"
    location = f"leveldb://{directory}"
    acks = tmp_path / f"acks{n}"
    pid = zygote.start("transfers", location=location, acks=str(acks), round=0, seed=n)
    assert wait_for_line(acks, "t ", 60)
    time.sleep(random.uniform(0.05, 0.2))
    os.kill(pid, signal.SIGKILL)
    assert zygote.wait() == -signal.SIGKILL
    return location, directory


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["cut", "zeros", "garbage"])
def test_a_torn_tail_after_a_kill_opens_and_verifies(
    zygote: Zygote, tmp_path: Path, damage: str
) -> None:
    location, directory = _killed_store(zygote, tmp_path, 0)
    log = max(directory.glob("*.log"), key=lambda p: int(p.stem))
    size = log.stat().st_size
    assert size > 4096
    tear_tail(log, random.randrange(size - 4096, size - 16), damage)
    out = _verify(location, tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    with persist.open(location, "pw", read_only=True, allow_weak_kdf=True, freshness=False) as db:
        crash.check_transfers(crash.read_transfers(db), initialized=True)


def test_verify_of_a_store_leveldb_cannot_open_exits_2(zygote: Zygote, tmp_path: Path) -> None:
    location, directory = _killed_store(zygote, tmp_path, 1)
    manifest = directory / (directory / "CURRENT").read_text().strip()
    manifest.write_bytes(os.urandom(manifest.stat().st_size))
    out = _verify(location, tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
