"""Rule 12 of the multiplexer: one committer at a time, and the leader path.

Each interleaving is forced: a store whose commit blocks on a gate holds the
committer role while the test brings in the writer, waiter or failure it is
about.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping

import pytest

from persist.errors import CommitFailed
from persist.kvs.memory import MemoryStore
from persist.mux import Multiplexer, MuxConfig
from persist.testing.wavestore import PlainWaveStore


class ThreadStore(PlainWaveStore):
    """Records which thread committed each wave; commits may wait on a gate or fail.

    ``gates``: wave number -> Event the commit of that wave waits for.
    ``fail``: wave numbers whose commit raises (after its gate).
    """

    def __init__(self) -> None:
        super().__init__(MemoryStore())
        self.committed: list[tuple[int, int, dict[str, dict[bytes, bytes | None]]]] = []
        self.gates: dict[int, threading.Event] = {}
        self.entered: dict[int, threading.Event] = {}
        self.fail: set[int] = set()
        self.active = 0
        self.overlaps = 0
        self._lock = threading.Lock()

    def close(self) -> None:
        pass

    def gate(self, number: int) -> threading.Event:
        self.entered[number] = threading.Event()
        gate = self.gates[number] = threading.Event()
        return gate

    def commit_wave(self, number: int, changes: Mapping[str, Mapping[bytes, bytes | None]]) -> None:
        with self._lock:
            self.active += 1
            self.overlaps += self.active > 1
        try:
            if number in self.entered:
                self.entered[number].set()
            if number in self.gates:
                assert self.gates[number].wait(10), "the test forgot to open the gate"
            if number in self.fail:
                raise OSError("disk on fire")
            self.committed.append(
                (number, threading.get_ident(), {t: dict(c) for t, c in changes.items()})
            )
            super().commit_wave(number, changes)
        finally:
            with self._lock:
                self.active -= 1


def _in_thread(fn: object) -> tuple[threading.Thread, list[BaseException | None]]:
    out: list[BaseException | None] = []

    def run() -> None:
        try:
            fn()  # type: ignore[operator]
            out.append(None)
        except BaseException as exc:
            out.append(exc)

    th = threading.Thread(target=run)
    th.start()
    return th, out


def _wait_until(cond: object, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition never came true"
        time.sleep(0.002)


def test_lone_writer_commits_on_its_own_thread() -> None:
    store = ThreadStore()
    mux = Multiplexer(store, MuxConfig(max_delay=10.0))
    me = threading.get_ident()
    for i in range(10):
        mux.put("t", b"k%d" % i, b"v")
        mux.commit_wait()
        assert store.get("t", b"k%d" % i) == b"v"  # durable on return
    assert [ident for _, ident, _ in store.committed] == [me] * 10
    assert mux.metrics().leader_waves == 10
    mux.close()


def test_commit_wait_with_a_timeout_leaves_the_commit_to_the_persistence_thread() -> None:
    store = ThreadStore()
    mux = Multiplexer(store)
    mux.put("t", b"k", b"v")
    mux.commit_wait(timeout=5)
    assert store.committed[0][1] == mux._thread.ident
    assert mux.metrics().leader_waves == 0
    mux.close()


def test_a_writer_arriving_while_the_leader_commits_forms_the_next_wave() -> None:
    store = ThreadStore()
    mux = Multiplexer(store, MuxConfig(max_delay=10.0))
    gate = store.gate(1)
    mux.put("t", b"a", b"1")
    leader, leader_out = _in_thread(mux.commit_wait)
    assert store.entered[1].wait(5)  # the leader is inside its commit

    def second() -> None:
        mux.put("t", b"b", b"2")
        mux.commit_wait()

    follower, follower_out = _in_thread(second)
    _wait_until(lambda: mux._waves[-1].waiters == 1)
    time.sleep(0.05)
    assert len(store.committed) == 0  # nobody committed beside the leader
    assert mux.get("t", b"b") == b"2"  # the write is visible, in the next wave
    gate.set()
    leader.join(5)
    follower.join(5)
    assert leader_out == [None] and follower_out == [None]
    assert [n for n, _, _ in store.committed] == [1, 2]
    assert store.committed[0][0:2] == (1, leader.ident)
    assert store.committed[1][2] == {"t": {b"b": b"2"}}
    assert store.overlaps == 0  # one committer at a time
    mux.close()


def test_a_failure_on_the_leader_thread_reaches_every_waiter() -> None:
    store = ThreadStore()
    mux = Multiplexer(store, MuxConfig(max_delay=10.0))
    gate = store.gate(1)
    store.fail.add(1)
    mux.put("t", b"a", b"1")
    leader, leader_out = _in_thread(mux.commit_wait)
    assert store.entered[1].wait(5)
    # One waiter of the leader's own wave (it wrote nothing since), one of
    # the next wave, queued behind it.
    same, same_out = _in_thread(mux.commit_wait)
    _wait_until(lambda: len(mux._waves[0].wakers) == 1)

    def later() -> None:
        mux.put("t", b"b", b"2")
        mux.commit_wait()

    nxt, nxt_out = _in_thread(later)
    _wait_until(lambda: mux._waves[-1].waiters == 1)
    gate.set()
    for th in (leader, same, nxt):
        th.join(5)
        assert not th.is_alive()
    for out in (leader_out, same_out, nxt_out):
        assert len(out) == 1 and isinstance(out[0], CommitFailed)
        assert isinstance(out[0].__cause__, OSError)
    assert mux.get("t", b"b") is None  # overlays dropped: the committed state
    with pytest.raises(CommitFailed):
        mux.put("t", b"c", b"3")
    with pytest.raises(CommitFailed):
        mux.commit_wait()
    assert store.committed == []
    mux.close()


def test_pre_commit_hooks_run_on_the_committing_thread() -> None:
    store = ThreadStore()
    mux = Multiplexer(store, MuxConfig(max_delay=10.0))
    ran: list[int] = []
    post: list[tuple[int, int]] = []

    def hook() -> None:
        ran.append(threading.get_ident())
        mux.put("proc", b"state", b"%d" % len(ran))

    mux.add_pre_commit_hook(hook)
    mux.add_post_commit_hook(lambda n: post.append((n, threading.get_ident())))
    me = threading.get_ident()
    mux.put("t", b"a", b"1")
    mux.commit_wait()  # a leader: the hooks run here
    mux.put("t", b"b", b"2")
    mux.commit_wait(timeout=5)  # the persistence thread commits: its hooks run there
    assert ran == [me, mux._thread.ident]
    assert post == [(1, me), (2, mux._thread.ident)]
    assert store.committed[0][2] == {"t": {b"a": b"1"}, "proc": {b"state": b"1"}}
    assert store.committed[1][2] == {"t": {b"b": b"2"}, "proc": {b"state": b"2"}}
    mux.close()


def test_commit_wait_in_a_hook_on_the_leader_thread_raises() -> None:
    store = ThreadStore()
    mux = Multiplexer(store)
    seen: list[BaseException] = []

    def hook() -> None:
        try:
            mux.commit_wait()
        except RuntimeError as exc:
            seen.append(exc)
        try:
            mux.atomic().__enter__()
        except RuntimeError as exc:
            seen.append(exc)

    mux.add_pre_commit_hook(hook)
    mux.put("t", b"a", b"1")
    mux.commit_wait()
    assert len(seen) == 2 and mux.metrics().leader_waves == 1
    mux.close()


def test_a_wave_with_a_block_open_is_not_taken_by_a_leader() -> None:
    store = ThreadStore()
    mux = Multiplexer(store, MuxConfig(max_delay=10.0))
    inside, leave = threading.Event(), threading.Event()

    def block() -> None:
        with mux.atomic():
            mux.put("t", b"x", b"1")
            inside.set()
            assert leave.wait(5)
            mux.put("t", b"y", b"2")

    th, out = _in_thread(block)
    assert inside.wait(5)
    mux.put("t", b"a", b"1")
    waiter, waiter_out = _in_thread(mux.commit_wait)
    time.sleep(0.05)
    assert waiter.is_alive() and store.committed == []
    leave.set()
    th.join(5)
    waiter.join(5)
    assert out == [None] and waiter_out == [None]
    assert store.committed[0][2] == {"t": {b"x": b"1", b"y": b"2", b"a": b"1"}}
    assert store.committed[0][1] == mux._thread.ident
    mux.close()


def test_acommit_wait_never_commits_on_the_event_loop() -> None:
    store = ThreadStore()
    mux = Multiplexer(store, MuxConfig(max_delay=10.0))
    gate = store.gate(1)

    async def main() -> int:
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.005)

        task = asyncio.create_task(ticker())
        mux.put("t", b"a", b"1")
        waiting = asyncio.create_task(mux.acommit_wait())
        await asyncio.sleep(0.1)  # the commit is gated: the loop must keep running
        assert not waiting.done()
        gate.set()
        await waiting
        stop.set()
        await task
        return ticks

    ticks = asyncio.run(main())
    assert ticks >= 5
    assert store.committed[0][1] == mux._thread.ident
    assert mux.metrics().leader_waves == 0
    mux.close()


def test_many_writers_with_leaders_keep_order_and_group() -> None:
    store = ThreadStore()
    mux = Multiplexer(store)
    n, rounds = 8, 40

    def worker(i: int) -> None:
        for r in range(rounds):
            mux.put("t", b"%d-%d" % (i, r), b"%d" % r)
            mux.put("last", b"%d" % i, b"%d" % r)
            mux.commit_wait()
            assert store.get("t", b"%d-%d" % (i, r)) == b"%d" % r

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    assert [w for w, _, _ in store.committed] == sorted(w for w, _, _ in store.committed)
    assert store.overlaps == 0
    assert sum(len(c.get("t", {})) for _, _, c in store.committed) == n * rounds
    assert all(store.get("last", b"%d" % i) == b"%d" % (rounds - 1) for i in range(n))
    mux.close()


def test_an_unwaited_write_after_a_leader_commit_still_commits_within_max_delay() -> None:
    """The idle persistence thread polls instead of being woken by each first
    write; rule 4b must hold all the same."""
    store = ThreadStore()
    mux = Multiplexer(store, MuxConfig(max_delay=0.05))
    mux.put("t", b"a", b"1")
    mux.commit_wait()  # a leader; the persistence thread now polls
    time.sleep(0.12)
    assert not mux._runner_asleep  # polling: a first write will not notify it
    started = time.monotonic()
    mux.put("t", b"b", b"2")  # nobody waits for it
    _wait_until(lambda: len(store.committed) == 2, within=2.0)
    assert time.monotonic() - started < 1.0
    assert store.committed[1][1] == mux._thread.ident
    mux.close()
