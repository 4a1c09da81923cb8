"""Commit-wait latency of durable writes: p50, p99 and max per system, at T threads.

    .venv/bin/python -m bench.latency [WRITES_AT_T1] [SECONDS_AT_T64]
    .venv/bin/python -m bench.latency --preload N [WRITES_AT_T1]

T=1: one thread makes WRITES_AT_T1 durable writes (default 20,000: the issue's
figure, enough to include several folds of persist's root log) and the latency
of each one is kept.  T=64: 64 threads write for SECONDS_AT_T64 seconds (default
4) and every write's latency is kept.  Each system starts on a fresh store in a
scratch directory; the systems are the writers of :mod:`bench.writers`.  Not
part of ``python -m bench`` (it takes a few minutes); its output goes into
docs/benchmarks.md by hand, beside the throughput of the same run.

``--preload N``: T=1 only, each system's store first filled with N random
pairs in its fastest bulk path (persist: atomic blocks of 10,000 writes;
apsw: one transaction; plyvel: write batches of 10,000), so that the lone
writer writes into a large tree: its folds then rewrite about a leaf per
key, where a fresh store's log folds into a few leaves.
"""

from __future__ import annotations

import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import apsw

from .workload import DEFAULT_SCRATCH, KEY_SIZE, SEED, VALUE_SIZE
from .writers import SYSTEMS, ApswWriters, PersistWriters, PlyvelWriters

LATENCY_SYSTEMS = ["persist-sqlite", "persist-leveldb", "apsw", "plyvel", "plyvel-group"]


def _percentiles(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    n = len(s)
    return {
        "writes": n,
        "p50_ms": s[n // 2] * 1e3,
        "p99_ms": s[min(n - 1, int(n * 0.99))] * 1e3,
        "max_ms": s[-1] * 1e3,
    }


def at_one_thread(sid: str, writes: int, directory: Path, pairs: int = 0) -> dict[str, float]:
    """One thread's ``writes`` durable writes, each timed; first :func:`preload`
    of ``pairs`` pairs when ``pairs``."""
    system = SYSTEMS[sid][1](directory, 1)
    rng = random.Random(SEED)
    if pairs:
        preload(system, pairs, rng)
    write = system.writer()
    lat = []
    start = time.perf_counter()
    for _ in range(writes):
        t = time.perf_counter()
        write(rng.randbytes(KEY_SIZE), rng.randbytes(VALUE_SIZE))
        lat.append(time.perf_counter() - t)
    elapsed = time.perf_counter() - start
    system.close()
    return {**_percentiles(lat), "rate": writes / elapsed}


def preload(system: object, pairs: int, rng: random.Random) -> None:
    """Fill a fresh system's store with ``pairs`` random pairs, in bulk."""
    chunk = 10_000
    for done in range(0, pairs, chunk):
        batch = [
            (rng.randbytes(KEY_SIZE), rng.randbytes(VALUE_SIZE))
            for _ in range(min(chunk, pairs - done))
        ]
        if isinstance(system, PersistWriters):
            with system.db.atomic():
                for key, value in batch:
                    system.table[key] = value
            system.db.commit_wait()
        elif isinstance(system, ApswWriters):
            conn = apsw.Connection(system.path)
            with conn:
                conn.executemany("INSERT OR REPLACE INTO kv VALUES (?, ?)", batch)
            conn.close()
        elif isinstance(system, PlyvelWriters):
            with system.ldb.write_batch(sync=True) as wb:
                for key, value in batch:
                    wb.put(key, value)
        else:
            raise TypeError(f"no bulk path for {type(system).__name__}")


def at_threads(sid: str, threads: int, seconds: float, directory: Path) -> dict[str, float]:
    system = SYSTEMS[sid][1](directory, threads)
    barrier = threading.Barrier(threads + 1)
    lats: list[list[float]] = [[] for _ in range(threads)]
    deadline = [0.0]

    def work(i: int) -> None:
        rng = random.Random(SEED * 31 + i)
        write = system.writer()
        barrier.wait()
        mine = lats[i]
        while time.perf_counter() < deadline[0]:
            t = time.perf_counter()
            write(rng.randbytes(KEY_SIZE), rng.randbytes(VALUE_SIZE))
            mine.append(time.perf_counter() - t)

    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for th in pool:
        th.start()
    deadline[0] = time.perf_counter() + seconds
    barrier.wait()
    for th in pool:
        th.join()
    system.close()
    samples = [x for lat in lats for x in lat]
    return {**_percentiles(samples), "rate": len(samples) / seconds}


def main() -> None:
    args = sys.argv[1:]
    pairs = 0
    if args[:1] == ["--preload"]:
        pairs, args = int(args[1]), args[2:]
    writes = int(args[0]) if args else 20_000
    if pairs:
        _large(pairs, writes)
        return
    seconds = float(args[1]) if len(args) > 1 else 4.0
    _fresh(writes, seconds)


def _large(pairs: int, writes: int) -> None:
    print(f"| system (T=1, {pairs:,} pairs first) | writes | writes/s | p50 ms | p99 ms | max ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for sid in LATENCY_SYSTEMS:
        if sid == "plyvel-group":
            continue  # one thread: the same as plyvel's locked put
        DEFAULT_SCRATCH.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="latency-", dir=DEFAULT_SCRATCH) as tmp:
            r = at_one_thread(sid, writes, Path(tmp), pairs)
        print(
            f"| {SYSTEMS[sid][0]} | {r['writes']:,.0f} | {r['rate']:,.0f} | "
            f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['max_ms']:.1f} |",
            flush=True,
        )


def _fresh(writes: int, seconds: float) -> None:
    print("| system | T | writes | writes/s | p50 ms | p99 ms | max ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for threads in (1, 64):
        for sid in LATENCY_SYSTEMS:
            DEFAULT_SCRATCH.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix="latency-", dir=DEFAULT_SCRATCH) as tmp:
                if threads == 1:
                    r = at_one_thread(sid, writes, Path(tmp))
                else:
                    r = at_threads(sid, threads, seconds, Path(tmp))
            print(
                f"| {SYSTEMS[sid][0]} | {threads} | {r['writes']:,.0f} | {r['rate']:,.0f} | "
                f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['max_ms']:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
