"""Durable writes/s with and without one dir replica, and the replication lag.

``python bench/replication.py [SECONDS]``: for T = 1 and T = 64 threads, each
thread loops ``put; commit_wait()`` for SECONDS; then the same database opened
with ``replicas=[dir://...]``.  The lag is the time from a durable local
commit to ``commit_wait(replicated=True)`` returning, measured after the run.
Results go into docs/remote.md by hand.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import threading
import time

import persist
from persist.ebs import KdfParams


def run(threads: int, seconds: float, replica: bool) -> tuple[float, float | None]:
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["PERSIST_STATE_DIR"] = tmp + "/state"
        replicas = [f"dir://{tmp}/replica"] if replica else []
        db = persist.open(
            tmp + "/s.db",
            "pw",
            kdf=KdfParams.weak_for_tests(),
            allow_weak_kdf=True,
            replicas=replicas,
        )
        table = db.table("t")
        stop = time.monotonic() + seconds
        counts = [0] * threads

        def worker(n: int) -> None:
            i = 0
            while time.monotonic() < stop:
                table[(n, i)] = f"value {i}"
                db.commit_wait()
                i += 1
            counts[n] = i

        pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        rate = sum(counts) / seconds
        lag = None
        if replica:
            lags = []
            for i in range(20):
                table["lag"] = i
                db.commit_wait()
                t0 = time.perf_counter()
                db.commit_wait(replicated=True)
                lags.append(time.perf_counter() - t0)
            lag = statistics.median(lags)
        db.close()
        return rate, lag


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
    for threads in (1, 64):
        base, _ = run(threads, seconds, False)
        rep, lag = run(threads, seconds, True)
        print(
            f"T={threads:<3} no replica {base:8.0f} writes/s   one dir replica {rep:8.0f} "
            f"writes/s ({rep / base:.2f}x)   median lag {lag * 1000 if lag else 0:.1f} ms"
        )


if __name__ == "__main__":
    main()
