"""Load: 64 writer threads with commit-waits beside readers that iterate and count;
100 asyncio tasks on one loop.  No deadlock (every wait has a timeout that
fails the test), every read consistent, verify clean, peak RSS and the event
loop's worst lag reported.

Consistency: writer ``w`` writes ``t[(w, i)] = i`` for i = 0, 1, 2, ... in
order, so every state some wave produced holds, per writer, exactly a prefix
``0..m``; a reader's iteration (one state, docs/api.md "Reads") must show such
prefixes, and a later iteration of the same reader never shows less.  ``len``
must lie between the sizes of the states before and after it.
"""

from __future__ import annotations

import asyncio
import resource
import threading
import time
from pathlib import Path

import pytest

import persist
from persist.ebs import KdfParams

from .conftest import record, scale

WEAK = {"kdf": KdfParams.weak_for_tests(), "allow_weak_kdf": True, "freshness": False}
WRITERS = 64
READERS = 4


def _location(tmp_path: Path, backend: str) -> str:
    return str(tmp_path / "s.db") if backend == "sqlite" else f"leveldb://{tmp_path / 's.ldb'}"


def _check_prefixes(items: list[tuple[tuple[int, int], int]], writers: int) -> dict[int, int]:
    per: dict[int, list[int]] = {}
    for (w, i), value in items:
        assert value == i
        per.setdefault(w, []).append(i)
    for w, seen in per.items():
        assert seen == list(range(len(seen))), f"writer {w}: not a prefix"
    return {w: len(seen) for w, seen in per.items()}


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "leveldb"])
def test_64_writers_and_readers(tmp_path: Path, backend: str) -> None:
    writes = scale(40, 10_000)
    db = persist.open(_location(tmp_path, backend), "pw", **WEAK)  # type: ignore[arg-type]
    t = db.table("t")
    errors: list[BaseException] = []
    done = threading.Event()
    reads = [0]

    def writer(w: int) -> None:
        try:
            for i in range(writes):
                t[(w, i)] = i
                if i % 4 == 3 or i == writes - 1:
                    db.commit_wait()
        except BaseException as exc:
            errors.append(exc)

    def reader() -> None:
        last: dict[int, int] = {}
        try:
            while not done.is_set():
                before = len(t)
                seen = _check_prefixes(list(t.items()), WRITERS)
                after = len(t)
                total = sum(seen.values())
                assert before <= total <= after, (before, total, after)
                for w, n in last.items():
                    assert seen.get(w, 0) >= n, "a later read saw less"
                last = seen
                reads[0] += 1
        except BaseException as exc:
            errors.append(exc)

    started = time.monotonic()
    threads = [threading.Thread(target=writer, args=(w,), daemon=True) for w in range(WRITERS)]
    readers = [threading.Thread(target=reader, daemon=True) for _ in range(READERS)]
    for th in threads + readers:
        th.start()
    for th in threads:
        th.join(timeout=600)
        assert not th.is_alive(), "deadlock: a writer never finished"
    done.set()
    for th in readers:
        th.join(timeout=120)
        assert not th.is_alive(), "deadlock: a reader never finished"
    assert not errors, errors[0]
    assert len(t) == WRITERS * writes
    assert db.verify() == []
    db.close()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    record(f"load.{backend}.writes", WRITERS * writes)
    record(f"load.{backend}.reader_iterations", reads[0])
    record(f"load.{backend}.seconds", round(time.monotonic() - started, 1))
    record(f"load.{backend}.peak_rss_MiB_of_the_test_process", rss)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "leveldb"])
def test_100_asyncio_tasks(tmp_path: Path, backend: str) -> None:
    writes = scale(20, 1000)
    db = persist.open(_location(tmp_path, backend), "pw", **WEAK)  # type: ignore[arg-type]
    t = db.table("t")
    worst = [0.0]

    async def task(n: int) -> None:
        for i in range(writes):
            if i % 2:
                async with db.atomic():
                    t[(n, i)] = i
            else:
                await t.aset((n, i), i)
            if i % 5 == 4:
                await db.acommit_wait()
        await db.acommit_wait()

    async def lag(stop: asyncio.Event) -> None:
        while not stop.is_set():
            before = time.monotonic()
            await asyncio.sleep(0.005)
            worst[0] = max(worst[0], time.monotonic() - before - 0.005)

    async def main() -> None:
        stop = asyncio.Event()
        monitor = asyncio.create_task(lag(stop))
        await asyncio.wait_for(asyncio.gather(*(task(n) for n in range(100))), timeout=600)
        stop.set()
        await monitor

    asyncio.run(main())
    assert len(t) == 100 * writes
    _check_prefixes(list(t.items()), 100)
    assert db.verify() == []
    db.close()
    record(f"load.asyncio.{backend}.writes", 100 * writes)
    record(f"load.asyncio.{backend}.worst_loop_lag_ms", round(worst[0] * 1000, 1))
    assert worst[0] < 1.0, f"the event loop was blocked for {worst[0]:.3f} s"
