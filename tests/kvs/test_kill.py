"""SIGKILL a writer at random moments; every acknowledged batch must survive whole.

A real child process (``kill_child.py``) writes numbered batches on a durable
store and prints each batch number after ``write`` returned.  After each kill,
the store must open, hold every acknowledged batch, and hold no partial batch:
the batches present are exactly 0..k for some k >= the last acknowledged one.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from persist.kvs import open_store

from .kill_child import BATCH, SHARED

KILLS = 20


def _check(location: str, acked: int) -> int:
    with open_store(location, read_only=True) as s:
        shared = {s.get(b"s/%03d" % j) for j in range(SHARED)}
        assert len(shared) == 1, f"shared keys torn: {shared}"
        (val,) = shared
        if val is None:
            assert acked < 0
            assert list(s.scan()) == []
            return -1
        last = int(val)
        assert last >= acked, f"acknowledged batch {acked} lost (store at {last})"
        for i in range(last + 1):
            present = [s.get(b"b/%08d/%03d" % (i, j)) for j in range(BATCH)]
            expect = [b"%08d" % i * 8] * BATCH
            if i <= last - 3:  # the batch three later deleted this one's key 0
                expect[0] = None  # type: ignore[call-overload]
            assert present == expect, f"batch {i} is partial"
        assert s.get(b"b/%08d/%03d" % (last + 1, 1)) is None
        return last


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "leveldb"])
def test_kill_minus_nine(location: str, tmp_path: Path) -> None:
    rng = random.Random(int.from_bytes(os.urandom(4)))
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    last = -1
    for _ in range(KILLS):
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.kvs.kill_child", location, str(last + 1)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=Path(__file__).resolve().parents[2],
        )
        acked = [last]

        def read_acks(p: subprocess.Popen[str] = proc, acks: list[int] = acked) -> None:
            assert p.stdout is not None
            for line in p.stdout:
                if not line.endswith("\n"):  # cut by the kill: not an acknowledgement
                    break
                acks.append(int(line))

        reader = threading.Thread(target=read_acks)
        reader.start()
        deadline = time.monotonic() + 20
        while acked[-1] < last + 1 and time.monotonic() < deadline:  # let it start writing
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.15))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        reader.join()
        assert proc.returncode == -signal.SIGKILL
        last = _check(location, acked[-1])
    assert last > KILLS  # the child made progress between kills
