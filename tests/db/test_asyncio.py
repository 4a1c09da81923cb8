"""asyncio code under back-pressure and around atomic blocks (issue 13, "Life cycle")."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

import persist
from persist.ebs import KdfParams


def _open(tmp_path: Path, **kw: object) -> persist.Database:
    return persist.open(
        str(tmp_path / "db.sqlite"),
        "pw",
        kdf=KdfParams.weak_for_tests(),
        allow_weak_kdf=True,
        freshness=False,
        **kw,  # type: ignore[arg-type]
    )


def test_aset_waits_for_room_without_blocking_the_loop(tmp_path: Path) -> None:
    """Old code: a plain write under back-pressure blocked the event loop."""
    config = persist.mux.MuxConfig(max_queued_waves=1, wave_max_writes=10)
    with _open(tmp_path, config=config) as db:
        t = db.table("t")
        gate, sealing = threading.Event(), threading.Event()

        def stall() -> None:  # the commit stalls until we say
            sealing.set()
            gate.wait(10)

        db._mux.add_pre_commit_hook(stall)
        for i in range(10):  # a full wave: sealed at once, its commit stalls
            t[i] = b"v"
        assert sealing.wait(10)
        assert not db._mux._room_available()  # the next plain write would block

        async def main() -> tuple[float, bool]:
            ticks = 0
            done = asyncio.Event()

            async def ticker() -> None:
                nonlocal ticks
                while not done.is_set():
                    ticks += 1
                    await asyncio.sleep(0.005)

            async def writer() -> None:
                await t.aset("late", b"x")
                done.set()

            tick = asyncio.create_task(ticker())
            w = asyncio.create_task(writer())
            await asyncio.sleep(0.1)  # the writer waits for room; the loop keeps running
            running = ticks >= 5 and not done.is_set()
            gate.set()
            await asyncio.wait_for(w, 10)
            await tick
            return ticks, running

        ticks, running = asyncio.run(main())
        assert running and ticks >= 5
        db.commit_wait()
        assert t["late"] == b"x" and len(t) == 11


def test_sync_commit_wait_beside_an_open_block_of_another_task_is_an_error(
    tmp_path: Path,
) -> None:
    """Old code: deadlocked forever (the block's task can never run to close it)."""
    with _open(tmp_path) as db:
        t = db.table("t")

        async def main() -> None:
            opened = asyncio.Event()
            release = asyncio.Event()

            async def block() -> None:
                async with db.atomic():
                    t["a"] = b"1"
                    opened.set()
                    await release.wait()

            task = asyncio.create_task(block())
            await opened.wait()
            t["b"] = b"2"
            with pytest.raises(RuntimeError, match="acommit_wait"):
                db.commit_wait()
            release.set()
            await task
            await db.acommit_wait()

        asyncio.run(asyncio.wait_for(main(), 10))
        assert t["a"] == b"1" and t["b"] == b"2"


def test_sync_commit_wait_in_a_coroutine_without_open_blocks_works(tmp_path: Path) -> None:
    with _open(tmp_path) as db:

        async def main() -> None:
            db.table("t")["k"] = b"v"
            start = time.monotonic()
            db.commit_wait()  # blocks the loop for one commit, but cannot deadlock
            assert time.monotonic() - start < 10

        asyncio.run(main())
        assert db.table("t")["k"] == b"v"
