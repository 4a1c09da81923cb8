"""kill -9 a 16-thread workload of atomic blocks; acknowledged blocks survive whole.

After every SIGKILL the store opens; for each thread every acknowledged block
is present, every block present is complete, and the blocks present are a
prefix 0..last of that thread's sequence (waves commit in order).  On the
encrypted stack the store must also pass ``verify`` (DESIGN §3 rule 4).
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

import persist
from persist.kvs import open_store
from persist.testing.wavestore import PlainWaveStore

from .kill_child import OPTS, PASSPHRASE, RELATED, THREADS

KILLS = 50
ROOT = Path(__file__).resolve().parents[2]


def _check_rows(rows: dict[bytes, bytes], acked: dict[int, int]) -> int:
    total = 0
    for t in range(THREADS):
        raw = rows.get(b"%02d/last" % t)
        last = int(raw) if raw is not None else -1
        assert last >= acked.get(t, -1), f"thread {t}: acknowledged block lost"
        keys = sorted(k for k in rows if k.startswith(b"%02d/0" % t))
        want = [b"%02d/%08d/%d" % (t, s, j) for s in range(last + 1) for j in range(RELATED)]
        assert keys == want, f"thread {t}: partial or missing blocks"
        total += last + 1
    return total


def _check(mode: str, location: str, acked: dict[int, int]) -> int:
    if mode == "plain":
        with open_store(location, read_only=True) as s:
            rows = dict(PlainWaveStore(s).scan("w", None, None, False))
        return _check_rows(rows, acked)
    with persist.open(location, PASSPHRASE, read_only=True, **OPTS) as db:
        rows = dict(db.table("w").items())
        assert db.verify() == []
    return _check_rows(rows, acked)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["plain", "encrypted"])
def test_kill_minus_nine_during_atomic_blocks(tmp_path: Path, mode: str) -> None:
    location = str(tmp_path / "mux.db")
    rng = random.Random(int.from_bytes(os.urandom(4)))
    acked: dict[int, int] = {}
    progress = []
    for _ in range(KILLS):
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.mux.kill_child", mode, location],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )
        lines = [0]

        def read(p: subprocess.Popen[str] = proc, n: list[int] = lines) -> None:
            assert p.stdout is not None
            for line in p.stdout:
                if not line.endswith("\n"):  # cut by the kill: not an acknowledgement
                    break
                t, s = map(int, line.split())
                acked[t] = max(acked.get(t, -1), s)
                n[0] += 1

        reader = threading.Thread(target=read)
        reader.start()
        deadline = time.monotonic() + 30
        while lines[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.2))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        reader.join()
        progress.append(_check(mode, location, acked))
    assert progress[-1] > KILLS * THREADS  # work was done between kills
