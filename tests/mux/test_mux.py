"""The multiplexer's rules (persist/mux/multiplexer.py), on real stores."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from persist.errors import ClosedError, CommitFailed
from persist.kvs import open_store
from persist.kvs.memory import MemoryStore
from persist.mux import Multiplexer, MuxConfig
from persist.testing.faults import FaultyStore, InjectedFault
from persist.testing.wavestore import PlainWaveStore


class RecordingStore(PlainWaveStore):
    """Keeps every committed wave's changes; can be slowed down."""

    def __init__(self, delay: float = 0.0) -> None:
        super().__init__(MemoryStore())
        self.delay = delay
        self.waves: list[dict[str, dict[bytes, bytes | None]]] = []
        self.closed = False

    def close(self) -> None:  # keep the contents readable after the mux closes
        self.closed = True

    def commit_wave(self, number: int, changes: Mapping[str, Mapping[bytes, bytes | None]]) -> None:
        if self.delay:
            time.sleep(self.delay)
        self.waves.append({t: dict(c) for t, c in changes.items()})
        super().commit_wave(number, changes)


@pytest.fixture
def rec() -> RecordingStore:
    return RecordingStore()


def make(store: PlainWaveStore, **cfg: float) -> Multiplexer:
    return Multiplexer(store, MuxConfig(**cfg))  # type: ignore[arg-type]


def test_lone_writer_commits_at_once(rec: RecordingStore) -> None:
    mux = make(rec, max_delay=10.0)  # a timer of 10 s must not delay a waiter
    t = time.monotonic()
    for i in range(20):
        mux.put("t", b"k%d" % i, b"v")
        mux.commit_wait()
    assert time.monotonic() - t < 5
    assert len(rec.waves) == 20
    mux.close()


def test_200_threads_land_in_a_handful_of_waves() -> None:
    rec = RecordingStore(delay=0.02)  # a disk whose commit takes 20 ms
    mux = make(rec)
    start = threading.Barrier(200)

    def worker(i: int) -> None:
        start.wait()
        mux.put("t", b"k%03d" % i, b"v%d" % i)
        mux.commit_wait()
        assert rec.get("t", b"k%03d" % i) == b"v%d" % i  # durable on return

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(200)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    m = mux.metrics()
    assert m.writes_committed == 200
    assert 1 <= m.waves_committed <= 10, m
    assert m.writes_per_wave >= 20
    mux.close()


def test_unwaited_writes_commit_after_max_delay(rec: RecordingStore) -> None:
    mux = make(rec, max_delay=0.05)
    mux.put("t", b"a", b"1")
    mux.put("t", b"b", b"2")
    assert rec.waves == []  # nothing forces a commit yet
    deadline = time.monotonic() + 5
    while not rec.waves and time.monotonic() < deadline:
        time.sleep(0.01)
    assert rec.waves == [{"t": {b"a": b"1", b"b": b"2"}}]
    mux.close()


def test_read_your_writes_within_and_across_threads(rec: RecordingStore) -> None:
    mux = make(rec, max_delay=60.0)
    mux.put("t", b"k", b"1")
    assert mux.get("t", b"k") == b"1"
    seen: list[bytes | None] = []
    th = threading.Thread(target=lambda: seen.append(mux.get("t", b"k")))
    th.start()
    th.join()
    assert seen == [b"1"]
    with mux.atomic():
        mux.put("t", b"k", b"2")
        assert mux.get("t", b"k") == b"2"
        mux.delete("t", b"k")
        assert mux.get("t", b"k") is None
    mux.commit_wait()
    assert mux.get("t", b"k") is None and rec.get("t", b"k") is None
    mux.close()


def test_reads_do_not_wait_for_a_commit_in_flight() -> None:
    gate = threading.Event()

    class Stuck(RecordingStore):
        def commit_wave(
            self, number: int, changes: Mapping[str, Mapping[bytes, bytes | None]]
        ) -> None:
            gate.wait(10)
            super().commit_wave(number, changes)

    store = Stuck()
    mux = make(store)
    mux.put("t", b"k", b"v")
    waiter = threading.Thread(target=mux.commit_wait)
    waiter.start()
    time.sleep(0.05)  # the commit is now stuck in the store
    t = time.monotonic()
    assert mux.get("t", b"k") == b"v"
    assert list(mux.scan("t")) == [(b"k", b"v")]
    assert time.monotonic() - t < 1
    gate.set()
    waiter.join()
    mux.close()


def test_timer_fires_while_block_open_then_block_closes(rec: RecordingStore) -> None:
    """Liveness: the close of the last block seals the wave with no other trigger."""
    mux = make(rec, max_delay=0.01)
    with mux.atomic():
        mux.put("t", b"a", b"1")
        time.sleep(0.1)  # the timer has fired: the wave is closing, waiting for us
        mux.put("t", b"b", b"1")  # still the block's wave, although a new one is open
        assert rec.waves == []
    deadline = time.monotonic() + 5
    while not rec.waves and time.monotonic() < deadline:
        time.sleep(0.005)
    assert rec.waves[0] == {"t": {b"a": b"1", b"b": b"1"}}
    mux.close()


def test_blocks_starting_during_a_pending_seal_join_the_next_wave(rec: RecordingStore) -> None:
    mux = make(rec, max_delay=0.01)
    inside = threading.Event()
    release = threading.Event()

    def long_block() -> None:
        with mux.atomic():
            mux.put("t", b"long", b"1")
            inside.set()
            release.wait(10)

    th = threading.Thread(target=long_block)
    th.start()
    inside.wait(5)
    time.sleep(0.05)  # the first wave is now closing, held open by long_block
    t = time.monotonic()
    with mux.atomic():  # must not wait for long_block
        mux.put("t", b"short", b"1")
    assert time.monotonic() - t < 1
    release.set()
    th.join()
    mux.commit_wait()
    assert rec.waves == [{"t": {b"long": b"1"}}, {"t": {b"short": b"1"}}]
    mux.close()


@settings(max_examples=15, deadline=None)
@given(
    blocks=st.lists(st.integers(1, 12), min_size=2, max_size=24),
    max_delay=st.sampled_from([0.0, 0.001, 0.01]),
    cap=st.sampled_from([3, 50, 100_000]),
)
def test_no_block_is_split_across_waves(blocks: list[int], max_delay: float, cap: int) -> None:
    rec = RecordingStore(delay=0.001)
    mux = make(rec, max_delay=max_delay, wave_max_writes=cap)

    def run(b: int, n: int) -> None:
        with mux.atomic():
            for j in range(n):
                mux.put("t", b"%03d/%03d" % (b, j), b"x")
                if j % 3 == 0:
                    time.sleep(0.0005)
                    with mux.atomic():  # nested blocks join the outer one
                        mux.put("n", b"%03d" % b, b"%d" % j)
        if b % 2:
            mux.commit_wait()

    threads = [threading.Thread(target=run, args=(b, n)) for b, n in enumerate(blocks)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    mux.close()
    for b, n in enumerate(blocks):
        holding = [
            i
            for i, w in enumerate(rec.waves)
            if any(k.startswith(b"%03d/" % b) for k in w.get("t", {}))
        ]
        assert len(holding) == 1, (b, holding)
        assert sum(1 for k in rec.waves[holding[0]]["t"] if k.startswith(b"%03d/" % b)) == n


def test_commit_wait_inside_atomic_block_raises_at_once(rec: RecordingStore) -> None:
    mux = make(rec)
    with mux.atomic():
        mux.put("t", b"k", b"v")
        with pytest.raises(RuntimeError, match="atomic block"):
            mux.commit_wait()
        with pytest.raises(RuntimeError):
            mux.close()
    mux.commit_wait()
    mux.close()


def test_exception_in_block_does_not_undo_its_writes(rec: RecordingStore) -> None:
    mux = make(rec)
    with pytest.raises(KeyError), mux.atomic():
        mux.put("t", b"a", b"1")
        raise KeyError("application error")
    mux.commit_wait()
    assert rec.get("t", b"a") == b"1"
    mux.close()


def test_failed_commit_reaches_every_waiter_and_poisons(tmp_path: Path) -> None:
    loc = str(tmp_path / "s.db")
    faulty = FaultyStore(open_store(loc))
    mux = make(PlainWaveStore(faulty), max_delay=0.05)
    mux.put("t", b"before", b"ok")
    mux.commit_wait()
    faulty.fail_next_write()  # the next batch fails like a failed fsync
    start = threading.Barrier(8)
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        mux.put("t", b"k%d" % i, b"v")
        start.wait()
        try:
            mux.commit_wait()
        except CommitFailed as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(errors) == 8
    assert all(isinstance(e.__cause__, InjectedFault) for e in errors)
    with pytest.raises(CommitFailed):
        mux.put("t", b"later", b"v")
    with pytest.raises(CommitFailed):
        mux.atomic().__enter__()
    with pytest.raises(CommitFailed):
        mux.commit_wait()
    assert mux.get("t", b"k0") is None  # reads show the committed state
    mux.close()
    with open_store(loc, read_only=True) as s:
        store = PlainWaveStore(s)
        assert store.get("t", b"before") == b"ok"
        assert [k for k, _ in store.scan("t", None, None, False)] == [b"before"]


def test_pre_commit_hook_writes_into_the_sealing_wave(rec: RecordingStore) -> None:
    mux = make(rec)
    count = [0]

    def snapshot() -> None:
        count[0] += 1
        mux.put("proc", b"state", b"%d" % count[0])

    mux.add_pre_commit_hook(snapshot)
    committed: list[int] = []
    mux.add_post_commit_hook(committed.append)
    mux.put("t", b"a", b"1")
    mux.commit_wait()
    assert rec.waves[0] == {"t": {b"a": b"1"}, "proc": {b"state": b"1"}}
    assert committed == [1]
    mux.close()


def test_failing_pre_commit_hook_poisons(rec: RecordingStore) -> None:
    mux = make(rec)

    def bad() -> None:
        raise ValueError("hook bug")

    mux.add_pre_commit_hook(bad)
    mux.put("t", b"a", b"1")
    with pytest.raises(CommitFailed) as info:
        mux.commit_wait()
    assert isinstance(info.value.__cause__, ValueError)
    assert rec.waves == []
    mux.close()


def test_failing_post_commit_hook_is_logged_and_ignored(
    rec: RecordingStore, caplog: pytest.LogCaptureFixture
) -> None:
    mux = make(rec)

    def bad(n: int) -> None:
        raise ValueError("post hook bug")

    mux.add_post_commit_hook(bad)
    with caplog.at_level(logging.ERROR, logger="persist.mux"):
        mux.put("t", b"a", b"1")
        mux.commit_wait()
        mux.put("t", b"b", b"1")
        mux.commit_wait()
    assert rec.get("t", b"b") == b"1"
    assert "post-commit hook" in caplog.text
    mux.close()


def test_back_pressure_bounds_the_queue() -> None:
    rec = RecordingStore(delay=0.02)
    mux = make(rec, wave_max_writes=10, max_queued_waves=2)
    depths: list[int] = []
    for i in range(300):
        mux.put("t", b"%04d" % i, b"v")
        depths.append(mux.metrics().queue_depth)
    assert max(depths) <= 2
    mux.close()
    assert len(list(rec.scan("t", None, None, False))) == 300
    assert max(len(w["t"]) for w in rec.waves) <= 10


def test_close_commits_pending_and_refuses_later_use(tmp_path: Path) -> None:
    loc = str(tmp_path / "s.db")
    mux = make(PlainWaveStore(open_store(loc)), max_delay=60.0)
    mux.put("t", b"a", b"1")
    mux.close()
    mux.close()  # idempotent
    with pytest.raises(ClosedError):
        mux.put("t", b"b", b"2")
    with pytest.raises(ClosedError):
        mux.atomic().__enter__()
    with open_store(loc, read_only=True) as s:
        assert PlainWaveStore(s).get("t", b"a") == b"1"


def test_close_waits_for_an_open_block(rec: RecordingStore) -> None:
    mux = make(rec)
    inside = threading.Event()

    def block() -> None:
        with mux.atomic():
            mux.put("t", b"a", b"1")
            inside.set()
            time.sleep(0.1)
            mux.put("t", b"b", b"1")

    th = threading.Thread(target=block)
    th.start()
    inside.wait(5)
    mux.close()
    th.join()
    assert rec.waves == [{"t": {b"a": b"1", b"b": b"1"}}]


def test_asyncio_blocks_and_commit_wait(rec: RecordingStore) -> None:
    mux = make(rec, max_delay=60.0)

    async def task(i: int) -> None:
        async with mux.atomic():
            mux.put("t", b"%d/a" % i, b"1")
            await asyncio.sleep(0.001)
            mux.put("t", b"%d/b" % i, b"1")
        await mux.acommit_wait()
        assert rec.get("t", b"%d/b" % i) == b"1"

    async def main() -> float:
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.001)

        tick = asyncio.create_task(ticker())
        await asyncio.gather(*(task(i) for i in range(50)))
        stop.set()
        await tick
        return ticks

    ticks = asyncio.run(main())
    assert ticks > 0  # the loop kept running while tasks waited for durability
    for w in rec.waves:  # each task's block is whole in one wave
        for i in range(50):
            assert (b"%d/a" % i in w["t"]) == (b"%d/b" % i in w["t"])
    mux.close()


def test_task_spawned_in_a_block_is_not_bound_to_it(rec: RecordingStore) -> None:
    mux = make(rec, max_delay=60.0)

    async def main() -> None:
        async with mux.atomic():
            mux.put("t", b"outer", b"1")
            child = asyncio.create_task(mux.acommit_wait())  # not inside the block
        await child

    asyncio.run(main())
    mux.close()


@settings(max_examples=40, deadline=None)
@given(
    committed=st.dictionaries(st.binary(max_size=2), st.binary(max_size=3), max_size=10),
    pending=st.lists(
        st.dictionaries(st.binary(max_size=2), st.none() | st.binary(max_size=3), max_size=6),
        max_size=3,
    ),
    start=st.none() | st.binary(max_size=2),
    stop=st.none() | st.binary(max_size=2),
    reverse=st.booleans(),
)
def test_scan_merges_waves_over_committed_state(
    committed: dict[bytes, bytes],
    pending: list[dict[bytes, bytes | None]],
    start: bytes | None,
    stop: bytes | None,
    reverse: bool,
) -> None:
    store = RecordingStore()
    store.commit_wave(0, {"t": dict(committed)})
    mux = make(store, max_delay=3600.0)
    model: dict[bytes, bytes | None] = dict(committed)
    for changes in pending:
        with mux.atomic():
            mux.write_many("t", changes.items())
        model.update(changes)
    want = sorted(
        (
            (k, v)
            for k, v in model.items()
            if v is not None and (start is None or k >= start) and (stop is None or k < stop)
        ),
        reverse=reverse,
    )
    assert list(mux.scan("t", start, stop, reverse)) == want
    if not reverse:  # the columns form of the same view (a table's forward iteration)
        runs = list(mux.columns("t", start, stop))
        assert all(keys for keys, _ in runs)
        assert [(k, v) for ks, vs in runs for k, v in zip(ks, vs, strict=True)] == want
    mux.close()


def _items(it: Iterator[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return list(it)


class Gated(RecordingStore):
    """A store whose commits wait for ``gate`` (set it to let them through)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.entered = threading.Event()

    def commit_wave(self, number: int, changes: Mapping[str, Mapping[bytes, bytes | None]]) -> None:
        self.entered.set()
        assert self.gate.wait(10), "the test forgot to open the gate"
        super().commit_wave(number, changes)


def _waiters(mux: Multiplexer, n: int) -> tuple[list[threading.Thread], list[BaseException | None]]:
    """``n`` threads in commit_wait; each records None or what it raised."""
    results: list[BaseException | None] = []

    def wait() -> None:
        try:
            mux.commit_wait()
            results.append(None)
        except BaseException as exc:
            results.append(exc)

    threads = [threading.Thread(target=wait) for _ in range(n)]
    for th in threads:
        th.start()
    return threads, results


def _gated_wave(
    waiters: int,
) -> tuple[Gated, Multiplexer, list[threading.Thread], list[BaseException | None]]:
    """A wave stuck in a gated commit, with ``waiters`` threads waiting for it."""
    store = Gated()
    mux = make(store)
    mux.put("t", b"k", b"v")
    threads, results = _waiters(mux, waiters)
    assert store.entered.wait(5)
    return store, mux, threads, results


def _join_all(threads: list[threading.Thread], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    for th in threads:
        th.join(max(deadline - time.monotonic(), 0))
    assert not any(th.is_alive() for th in threads), "a waiter was never woken"


def test_every_waiter_of_a_wave_wakes_one_after_another() -> None:
    """Rule 11: the chain of wake-ups reaches all waiters; each wakes once."""
    store, mux, threads, results = _gated_wave(50)
    time.sleep(0.05)  # let all 50 join the wave being committed
    store.gate.set()
    _join_all(threads)
    assert results == [None] * 50
    assert len(store.waves) == 1
    mux.close()


def test_commit_wait_timeout_raises_and_leaves_the_others_waiting() -> None:
    store, mux, threads, results = _gated_wave(8)
    t = time.monotonic()
    with pytest.raises(TimeoutError):
        mux.commit_wait(timeout=0.05)
    assert time.monotonic() - t < 5
    store.gate.set()  # the timed-out waiter is out of the chain: the 8 still wake
    _join_all(threads)
    assert results == [None] * 8
    mux.put("t", b"k2", b"v")
    mux.commit_wait(timeout=5)  # a timeout that is not reached returns normally
    assert store.get("t", b"k2") == b"v"
    mux.close()


def test_timeouts_racing_the_wake_ups_never_strand_a_waiter() -> None:
    """Waiters with tiny timeouts, some expiring just as their turn comes."""
    rec = RecordingStore(delay=0.001)
    mux = make(rec)
    stop = time.monotonic() + 1.0
    outcomes = {"ok": 0, "timeout": 0}
    lock = threading.Lock()

    def worker(i: int) -> None:
        n = 0
        while time.monotonic() < stop:
            mux.put("t", b"%d-%d" % (i, n), b"v")
            try:
                mux.commit_wait(timeout=(None, 0.0005, 0.001, 0.002)[(i + n) % 4])
                kind = "ok"
            except TimeoutError:
                kind = "timeout"
            with lock:
                outcomes[kind] += 1
            n += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for th in threads:
        th.start()
    _join_all(threads, within=30)
    mux.commit_wait()
    assert outcomes["ok"] > 0
    assert mux.metrics().writes_committed == sum(outcomes.values())
    mux.close()


def test_a_stalled_chain_of_wake_ups_is_finished_by_the_persistence_thread() -> None:
    """A waiter that never passes the baton on (rule 11) strands nobody."""
    store, mux, threads, results = _gated_wave(5)
    dead = threading.Lock()
    dead.acquire()
    wave = mux._request_wait(dead)  # a waiter that will never wake the next one
    assert wave is not None
    time.sleep(0.05)
    # Make the dead waker the first one released (newest first: it goes last).
    wave.cancel_waker(dead)
    wave.add_waker(dead)
    store.gate.set()
    _join_all(threads)
    assert results == [None] * 5
    mux.close()


def test_an_interrupted_waiter_passes_its_turn_on() -> None:
    """Ctrl-C in a waiting main thread: it raises, and the other waiters still wake."""
    import signal

    store, mux, threads, results = _gated_wave(5)
    main = threading.main_thread().ident
    assert main == threading.get_ident()
    wave = mux._waves[0]

    def interrupt_once_main_waits() -> None:
        deadline = time.monotonic() + 10
        # 5 waiters and main; one of the 5 may commit the wave itself (rule 12)
        while len(wave.wakers) + (wave.leader is not None) < 6 and time.monotonic() < deadline:
            time.sleep(0.005)
        signal.pthread_kill(main, signal.SIGINT)  # type: ignore[arg-type]

    killer = threading.Thread(target=interrupt_once_main_waits)
    killer.start()
    with pytest.raises(KeyboardInterrupt):
        mux.commit_wait()
    killer.join()
    store.gate.set()
    _join_all(threads)
    assert results == [None] * 5
    mux.close()
