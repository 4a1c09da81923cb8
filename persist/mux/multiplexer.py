"""The transaction multiplexer: many mutators, one persistence thread, commit waves.

Theory of operation
-------------------
Mutators (threads or asyncio tasks) never touch storage.  A write is a
dictionary update in the newest :class:`~persist.mux.wave.Wave` under one
lock.  One persistence thread per database takes waves, oldest first, runs the
pre-commit hooks, and hands each wave to the :class:`WaveStore` as one atomic,
durable batch.  Numbered rules (docs/design.md repeats them):

1. **Order.** Waves commit in number order.  The serialization order of all
   writes is (wave number, order of the writes within the wave); every reader
   sees that one order.  Reads look at the waves newest first, then at the
   committed state, and never wait for a commit in flight.  The pending
   waves and the committed state they lie over are published as ONE pair
   (the *view*), swapped by one reference assignment after each commit, so
   a ``get``, a ``len`` and a whole iteration each see one state: a prefix
   of the waves over one committed state (``len``, a scan and its columns
   form copy the pending changes of their table under the lock, so that
   prefix is exact).
2. **Queue.** The queue holds every wave not yet durable; its newest wave is
   OPEN, all others are CLOSING or being committed.  Plain writes go to the
   newest wave.
3. **Blocks.** An atomic block joins the newest wave when it starts (nested
   blocks join their outermost block) and all its writes go to that wave.  A
   CLOSING wave admits no new block; blocks starting meanwhile join the next
   wave without waiting.  A wave is sealed only when none of its blocks is
   open, and the close of its last block wakes the persistence thread, so no
   other trigger is needed (liveness).
4. **Scheduling.** The newest wave is closed (a new OPEN wave appended) when
   (a) someone waits on it, no older wave is pending, and either as many
   waiters are in as were active around the last commit (its waiters plus
   those already waiting on the next wave) or the last commit's duration has
   passed since it ended -- so a lone writer commits at once, and threads
   woken by a commit get the time of one commit to join the next wave;
   (b) ``max_delay`` has passed since its first write; (c) it reached its
   size cap; (d) the database is closing.  While a commit runs, the next
   wave gathers every write and waiter that arrives meanwhile: the group
   commit.  While writes keep coming the idle persistence thread polls every
   ``max_delay`` (rule b still holds), so a first write needs not wake it.
5. **Back-pressure.** When ``max_queued_waves`` closed waves wait, plain
   writes and new blocks block until one is durable.  Writes inside an open
   block never block (their wave cannot seal before the block ends).
6. **Commit-wait** waits for the newest non-empty wave, which covers every
   change made before the call, since waves commit in order.  Inside an
   atomic block, or on the persistence thread, it raises ``RuntimeError``.
7. **No rollback.** Nothing a mutator wrote is ever undone, not even when its
   atomic block raised: a crash loses a suffix of waves, never part of one.
8. **Poison.** If a pre-commit hook or the store fails, that wave and every
   later one fail with :class:`~persist.errors.CommitFailed`, the overlays are
   dropped (reads show the committed state) and every later write,
   block or commit-wait raises until the database is reopened.
9. **Hooks.** Pre-commit hooks run on the committing thread (the persistence
   thread, or a leader: rule 12) before a wave is sealed and their writes go
   into that wave.  Post-commit hooks run on the same thread after the wave
   is durable, before the next wave may start committing; an exception in
   one is logged and ignored.
10. **Exit.** ``close()`` commits what is pending and joins the persistence
    thread (a daemon: a hard exit loses only the waves not yet committed).
11. **Wake-ups.** A done wave's waiting threads wake one at a time, newest
    first: the persistence thread releases one, and each woken thread
    releases the next before it returns (the baton).  So the persistence
    thread makes one wake-up call per wave, and the waiters do not all
    compete with it for the GIL while it commits the next wave.  A chain
    that stalls (a waiter interrupted between the two steps) is finished by
    the persistence thread once it has not moved for ``_CHAIN_STALL``
    seconds.  A failed wave wakes all its waiters at once.
12. **One committer; the leader.**  One thread at a time holds the committer
    role (``_committer``): it takes the oldest wave, runs the hooks, commits
    and publishes it, and only then lets go.  The persistence thread takes
    the role for timed, capped and grouped waves.  A thread that calls
    ``commit_wait()`` (no timeout) when the database is idle -- no wave
    committing or queued, its wave the only one, no block open in it, not
    closing -- and whose wait would seal the wave at once by rule 4a takes
    the role itself: it closes the wave, commits it on its own thread and
    wakes the wave's other waiters, as LevelDB's leader writer does.  So a
    lone writer pays no hand-off between threads, and under load the waiter
    that completes a group commits it.  Writes and waiters arriving
    meanwhile form the next wave, exactly as while the persistence thread
    commits.  A failure on the leader's thread poisons like any other
    (rule 8): every waiter of every queued wave gets it, the leader too.
    ``acommit_wait`` never leads (a commit would block the event loop).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import TypeVar

from ..errors import ClosedError, CommitFailed, IntegrityError
from .wave import (
    Columns,
    CommittedState,
    StaleState,
    Wave,
    WaveState,
    WaveStore,
    merge_columns,
    merge_pending,
)

__all__ = ["AtomicBlock", "Metrics", "Multiplexer", "MuxConfig"]

_T = TypeVar("_T")

log = logging.getLogger("persist.mux")

#: Seconds a chain of wake-ups may stand still before the persistence thread
#: wakes the rest of its waiters at once (rule 11).  Well above the GIL's
#: switch interval (5 ms), which a woken thread may wait to run at all.
_CHAIN_STALL = 0.05
#: Seconds after a wave's first write during which the idle persistence thread
#: keeps polling every ``max_delay`` instead of sleeping until notified, so a
#: first write need not wake it (rule 4b).  Shorter ``max_delay`` values than
#: :data:`_POLL_MIN` do not poll.
_POLL_ACTIVE = 1.0
_POLL_MIN = 0.001


@dataclass(frozen=True)
class MuxConfig:
    """The multiplexer's knobs (documented in docs/design.md)."""

    #: Longest time a write waits before its wave starts committing, in seconds.
    #: About 20 ms suits a local disk; a remote-backed store wants about 0.5 s.
    max_delay: float = 0.020
    #: A wave is closed early once it holds this many writes ...
    wave_max_writes: int = 100_000
    #: ... or this many bytes of keys and values.
    wave_max_bytes: int = 64 * 1024 * 1024
    #: Closed waves that may wait for the writer before mutators block.
    max_queued_waves: int = 4

    def __post_init__(self) -> None:
        if not self.max_delay >= 0:
            raise ValueError("max_delay must be >= 0")
        if self.wave_max_writes < 1 or self.wave_max_bytes < 1 or self.max_queued_waves < 1:
            raise ValueError("wave caps and max_queued_waves must be >= 1")


@dataclass(frozen=True)
class Metrics:
    waves_committed: int
    writes_committed: int
    max_writes_per_wave: int
    commit_seconds_total: float
    last_commit_seconds: float
    max_commit_seconds: float
    queue_depth: int
    #: waves committed by a leader on its own thread (rule 12)
    leader_waves: int = 0

    @property
    def writes_per_wave(self) -> float:
        return self.writes_committed / self.waves_committed if self.waves_committed else 0.0

    @property
    def mean_commit_seconds(self) -> float:
        return self.commit_seconds_total / self.waves_committed if self.waves_committed else 0.0


def _owner() -> tuple[int, int]:
    """The identity of the running thread and asyncio task (0 outside a task).

    ``_get_running_loop`` returns None outside an event loop instead of raising,
    as ``current_task`` would: this runs on every write inside a block.
    """
    loop = asyncio._get_running_loop()
    task = asyncio.current_task(loop) if loop is not None else None
    return threading.get_ident(), id(task) if task is not None else 0


class _Block:
    """An open outermost atomic block.  It binds only its owner: a task spawned
    inside it inherits the context variable but writes outside the block."""

    __slots__ = ("active", "depth", "mux", "owner", "wave")

    def __init__(self, mux: Multiplexer, wave: Wave) -> None:
        self.mux = mux
        self.wave = wave
        self.depth = 1
        self.active = True
        self.owner = _owner()

    def binds(self, mux: Multiplexer) -> bool:
        return self.active and self.mux is mux and self.owner == _owner()


_current_block: contextvars.ContextVar[_Block | None] = contextvars.ContextVar(
    "persist_atomic_block", default=None
)


class Multiplexer:
    """Folds the writes of many threads and tasks into commit waves."""

    def __init__(self, store: WaveStore, config: MuxConfig | None = None, *, name: str = "persist"):
        self._store = store
        self.config = config or MuxConfig()
        self._cond = threading.Condition()
        self._waves: deque[Wave] = deque([Wave(1)])
        # Readers' lock-free view: the waves not yet durable, over the
        # committed state they lie on (rule 1), swapped as one reference.
        self._view: tuple[tuple[Wave, ...], CommittedState] = (tuple(self._waves), store.state())
        self._next_number = 2
        self._poison: BaseException | None = None
        self._closing = False
        self._hook_wave: Wave | None = None
        #: ident of the thread holding the committer role (rule 12), or None
        self._committer: int | None = None
        self._leader_waves = 0
        #: writers blocked by back-pressure (rule 5), waiting on ``_cond``
        self._room_waiters = 0
        #: the persistence thread waits without a bound of ``max_delay``: a first
        #: write must notify it.  While writes keep coming it polls instead
        #: (every ``max_delay``), which spares a lone writer a thread wake-up
        #: per write (about 90 µs of GIL contention on the development machine).
        self._runner_asleep = True
        self._last_first_write = 0.0
        self._pre_hooks: list[Callable[[], None]] = []
        self._post_hooks: list[Callable[[int], None]] = []
        self._waves_committed = 0
        self._writes_committed = 0
        self._max_writes = 0
        self._commit_total = 0.0
        self._commit_last = 0.0
        self._commit_max = 0.0
        # Adaptive scheduling (rule 4a): when the last commit ended, how long it
        # took, and how many waiters were active around it.
        self._last_end = 0.0
        self._expected_waiters = 1
        # Done waves whose waiters are still being woken one by one (rule 11),
        # with the count of wakers released at the last look and its time;
        # used by the persistence thread alone.
        self._chains: dict[Wave, tuple[int, float] | None] = {}
        self._thread = threading.Thread(target=self._run, name=f"{name}-persistence", daemon=True)
        self._thread.start()

    # -- writes ------------------------------------------------------------------

    def put(self, table: str, key: bytes, value: bytes) -> None:
        self.write_many(table, ((key, value),))

    def delete(self, table: str, key: bytes) -> None:
        self.write_many(table, ((key, None),))

    def write_many(self, table: str, items: Iterable[tuple[bytes, bytes | None]]) -> None:
        """Record ``(key, value-or-None)`` changes in one wave, under one lock."""
        blk = _current_block.get()
        with self._cond:
            wave = self._target_wave(blk)
            first = wave.empty
            over = self._over_cap(wave)  # within an open block a wave grows past its cap
            for key, value in items:
                wave.record(table, key, value, self.config.max_delay)
            if first:
                self._last_first_write = wave.first_write or 0.0
            # A first write starts the max_delay clock (rule 4b): the persistence
            # thread must hear of it only if it sleeps longer than max_delay.
            if (first and self._runner_asleep) or (not over and self._over_cap(wave)):
                self._cond.notify_all()

    def _target_wave(self, blk: _Block | None) -> Wave:
        """REQUIRES: lock held.  The wave a write from this context belongs to."""
        if blk is not None and blk.binds(self):
            self._check_poison()
            return blk.wave
        if self._hook_wave is not None and threading.get_ident() == self._committer:
            return self._hook_wave
        self._check_writable()
        self._wait_for_room()
        wave = self._waves[-1]
        if self._over_cap(wave):
            self._close_newest()
            self._wait_for_room()
            wave = self._waves[-1]
        return wave

    def _over_cap(self, wave: Wave) -> bool:
        cfg = self.config
        return wave.writes >= cfg.wave_max_writes or wave.bytes >= cfg.wave_max_bytes

    def _wait_for_room(self) -> None:
        """REQUIRES: lock held.  Back-pressure (rule 5)."""
        while len(self._waves) - 1 >= self.config.max_queued_waves:
            self._room_waiters += 1
            try:
                self._cond.wait()
            finally:
                self._room_waiters -= 1
            self._check_writable()

    def _check_poison(self) -> None:
        if self._poison is not None:
            raise CommitFailed(f"an earlier commit failed: {self._poison!r}") from self._poison

    def _check_writable(self) -> None:
        self._check_poison()
        if self._closing:
            raise ClosedError("the database is closed")

    def _close_newest(self, *, notify: bool = True) -> None:
        """REQUIRES: lock held.  Close the OPEN wave and append a new one (rule 2)."""
        newest = self._waves[-1]
        newest.state = WaveState.CLOSING
        self._waves.append(Wave(self._next_number))
        self._next_number += 1
        self._view = (tuple(self._waves), self._view[1])
        if notify:
            self._cond.notify_all()

    def _in_commit(self) -> bool:
        """True on the thread that holds the committer role or runs the loop (rule 12)."""
        return threading.get_ident() == self._committer or (
            threading.current_thread() is self._thread
        )

    # -- atomic blocks -----------------------------------------------------------

    def atomic(self) -> AtomicBlock:
        """A context manager (``with`` and ``async with``) whose writes land in one wave."""
        return AtomicBlock(self)

    def in_atomic_block(self) -> bool:
        """True when the calling thread (or task) is inside one of this
        multiplexer's atomic blocks."""
        blk = _current_block.get()
        return blk is not None and blk.binds(self)

    def _enter_block(self, *, wait: bool) -> contextvars.Token[_Block | None] | None:
        outer = _current_block.get()
        if outer is not None and outer.binds(self):
            outer.depth += 1
            return None
        if self._in_commit():
            raise RuntimeError("atomic blocks cannot start in a commit hook")
        with self._cond:
            self._check_writable()
            if wait:
                self._wait_for_room()
            wave = self._waves[-1]
            wave.open_blocks += 1
            me = threading.get_ident()
            wave.block_threads[me] = wave.block_threads.get(me, 0) + 1
        return _current_block.set(_Block(self, wave))

    def _exit_block(self, token: contextvars.Token[_Block | None] | None) -> None:
        blk = _current_block.get()
        if blk is None or blk.mux is not self:
            # Left in another thread or task than the one that entered it (its
            # context does not hold the block): refused, nothing changes, the
            # block stays open for its owner to leave.
            raise RuntimeError("an atomic block must be left by the thread or task that entered it")
        if token is None:  # a nested block
            blk.depth -= 1
            return
        with self._cond:
            blk.active = False
            blk.wave.open_blocks -= 1
            owner = blk.owner[0]
            left = blk.wave.block_threads[owner] - 1
            if left:
                blk.wave.block_threads[owner] = left
            else:
                del blk.wave.block_threads[owner]
            if blk.wave.open_blocks == 0 and blk.wave.state is WaveState.CLOSING:
                self._cond.notify_all()  # rule 3: the last block's end seals the wave
        _current_block.reset(token)

    def _room_available(self) -> bool:
        with self._cond:
            return len(self._waves) - 1 < self.config.max_queued_waves

    def _block_until_room(self) -> None:
        with self._cond:
            self._check_writable()
            self._wait_for_room()

    async def await_room(self) -> None:
        """Wait, without blocking the event loop, until a plain write would not block.

        Back-pressure (rule 5) makes a plain write block its thread while too
        many sealed waves queue up; a coroutine that writes a lot awaits this
        first (``Table.aset`` and friends do), or writes inside
        ``async with db.atomic()``, whose writes never block.
        """
        if not self._room_available():
            await asyncio.to_thread(self._block_until_room)

    # -- commit-wait -------------------------------------------------------------

    def commit_wait(self, timeout: float | None = None) -> None:
        """Return when every change made before the call is durable (rule 6).

        On an idle database, without a timeout, the caller commits its wave
        itself (rule 12).  Otherwise it waits on a lock of its own, released
        once the wave is done by the committing thread or by the waiter woken
        before it (rule 11); it then releases the next waiter's lock.
        """
        waker = threading.Lock()
        waker.acquire()
        wave = self._request_wait(waker, blocking=True, lead=timeout is None)
        if wave is None:
            return
        if wave.leader == threading.get_ident():
            failure = self._commit(wave, leader=True)
            if failure is None:
                return
            if not isinstance(failure, Exception):
                raise failure  # KeyboardInterrupt and the like, after poisoning
            raise CommitFailed(str(wave.failure)) from failure
        try:
            woken = waker.acquire(timeout=-1 if timeout is None else timeout)
        except BaseException:  # interrupted: leave the chain of wake-ups intact
            if not wave.cancel_waker(waker):
                wave.wake_next()  # our turn had come: pass it on
            raise
        if not woken:
            if wave.cancel_waker(waker):
                raise TimeoutError("the commit did not finish in time")
            waker.acquire()  # taken for release the instant before: the wave is done
        wave.wake_next()  # rule 11: the baton to the next waiter
        if wave.failure is not None:
            raise CommitFailed(str(wave.failure)) from wave.failure.__cause__  # one per waiter

    async def acommit_wait(self) -> None:
        """``commit_wait`` for asyncio: awaits without blocking the event loop."""
        wave = self._request_wait(None)
        if wave is not None:
            try:
                await asyncio.wrap_future(wave.future)
            except CommitFailed as exc:
                raise CommitFailed(str(exc)) from exc.__cause__

    def _request_wait(
        self, waker: threading.Lock | None, *, blocking: bool = False, lead: bool = False
    ) -> Wave | None:
        """The wave to wait for (None: nothing pending); ``waker`` joins its wakers.

        ``lead``: the caller may take the committer role (rule 12); it then
        gets its wave closed, with ``wave.leader`` set to its thread, and
        must commit it (:meth:`_commit`).

        ``blocking``: the caller will block its thread.  On a thread that runs
        an event loop that deadlocks when another task of the loop has an
        atomic block open in a wave the caller would wait for (the task can
        never run to close it): RuntimeError instead.
        """
        blk = _current_block.get()
        if blk is not None and blk.binds(self):
            raise RuntimeError("commit_wait inside an atomic block would wait for itself")
        if self._in_commit():
            raise RuntimeError("commit_wait in a commit hook would wait for itself")
        loop_thread = blocking and asyncio._get_running_loop() is not None
        with self._cond:
            self._check_poison()
            target = next((w for w in reversed(self._waves) if not w.empty), None)
            if target is None:
                return None
            if loop_thread:
                me = threading.get_ident()
                for wave in self._waves:
                    if me in wave.block_threads:
                        raise RuntimeError(
                            "commit_wait() in a coroutine would deadlock: another task of "
                            "this event loop has an atomic block open; use "
                            "await db.acommit_wait()"
                        )
                    if wave is target:
                        break
            target.waiters += 1
            if (
                lead
                and self._committer is None
                and len(self._waves) == 1
                and target.open_blocks == 0
                and not self._closing
                and (
                    target.waiters >= self._expected_waiters
                    or time.monotonic() >= self._last_end + self._commit_last
                )
            ):
                self._committer = target.leader = threading.get_ident()
                self._close_newest(notify=False)
                return target
            if waker is not None:
                target.add_waker(waker)
            # Wake the persistence thread only when the sealing rule (rule 4)
            # may have changed for it: the first waiter starts the pacing
            # clock, the expected number of waiters seals at once.  Waking it
            # for every waiter would cost a thread switch per write.
            if target.waiters == 1 or target.waiters >= self._expected_waiters:
                self._cond.notify_all()
            return target

    # -- reads -------------------------------------------------------------------

    def get(self, table: str, key: bytes) -> bytes | None:
        """The newest value of ``key``: waves newest first, then committed (rule 1)."""
        seen = None
        while True:
            view = self._view
            _check_newer(view, seen)
            seen = view
            waves, state = view
            for wave in reversed(waves):
                found, value = wave.lookup(table, key)
                if found:
                    return value
            try:
                return state.get(table, key)
            except StaleState:  # retired under the read: the newer view has it
                continue

    def _pending(
        self,
        table: str,
        start: bytes | None = None,
        stop: bytes | None = None,
        seen: object = None,
    ) -> tuple[dict[bytes, bytes | None], CommittedState, object]:
        """The changes of ``table`` in ``[start, stop)`` the waves hold, newest winning,
        the state they lie over (one exact prefix of the waves, under the lock),
        and the view they came from."""
        pending: dict[bytes, bytes | None] = {}
        with self._cond:
            view = self._view
            _check_newer(view, seen)
            waves, state = view
            for wave in waves:  # oldest first, so newer waves win
                tab = wave.changes.get(table)
                if tab:
                    if start is None and stop is None:
                        pending.update(tab)
                    else:
                        for k, v in tab.items():
                            if (start is None or k >= start) and (stop is None or k < stop):
                                pending[k] = v
        return pending, state, view

    def scan(
        self,
        table: str,
        start: bytes | None = None,
        stop: bytes | None = None,
        reverse: bool = False,
    ) -> Iterator[tuple[bytes, bytes]]:
        """Merged ``(key, value)`` pairs of the waves and the committed state.

        The whole iteration sees the one view it started from (rule 1): the
        pending changes are copied and the committed state pinned when the
        iteration begins, so later writes, and commits landing meanwhile,
        change nothing it yields.
        """
        pending, committed = self._over_pending(
            table, start, stop, lambda state: state.scan(table, start, stop, reverse)
        )
        if not pending:
            return committed
        return merge_pending(committed, sorted(pending.items(), reverse=reverse), reverse)

    def columns(
        self, table: str, start: bytes | None = None, stop: bytes | None = None
    ) -> Iterator[Columns]:
        """:meth:`scan` ascending, as runs of two columns (the fast path of a
        table's iteration); the same one view, taken now (rule 1)."""
        pending, committed = self._over_pending(
            table, start, stop, lambda state: state.columns(table, start, stop)
        )
        if not pending:
            return committed
        return merge_columns(committed, sorted(pending.items()))

    def _over_pending(
        self,
        table: str,
        start: bytes | None,
        stop: bytes | None,
        read: Callable[[CommittedState], _T],
    ) -> tuple[dict[bytes, bytes | None], _T]:
        """The pending changes of ``table`` in ``[start, stop)`` and ``read`` of the
        committed state they lie over (rule 1), taken again from a newer view when
        that state went stale."""
        seen = None
        while True:
            pending, state, seen = self._pending(table, start, stop, seen)
            try:
                return pending, read(state)
            except StaleState:
                continue

    def count(self, table: str) -> int:
        """Entries of ``table``: the committed count with the pending changes over it.

        Costs a tree look-up per pending key of the table (nothing when
        nothing is pending): docs/api.md.
        """
        seen = None
        while True:
            pending, state, seen = self._pending(table, seen=seen)
            changes = [(k, pending[k] is not None) for k in sorted(pending)]
            try:
                return state.count(table, changes)
            except StaleState:
                continue

    # -- hooks and metrics -------------------------------------------------------

    def add_pre_commit_hook(self, hook: Callable[[], None]) -> None:
        """``hook()`` runs on the persistence thread before each wave seals (rule 9)."""
        self._pre_hooks.append(hook)

    def add_post_commit_hook(self, hook: Callable[[int], None]) -> None:
        """``hook(wave_number)`` runs after each wave is durable (rule 9)."""
        self._post_hooks.append(hook)

    def metrics(self) -> Metrics:
        with self._cond:
            return Metrics(
                waves_committed=self._waves_committed,
                writes_committed=self._writes_committed,
                max_writes_per_wave=self._max_writes,
                commit_seconds_total=self._commit_total,
                last_commit_seconds=self._commit_last,
                max_commit_seconds=self._commit_max,
                queue_depth=len(self._waves) - 1,
                leader_waves=self._leader_waves,
            )

    @property
    def poisoned(self) -> BaseException | None:
        return self._poison

    # -- closing -----------------------------------------------------------------

    def close(self) -> None:
        """Commit what is pending, stop the persistence thread, close the store."""
        blk = _current_block.get()
        if blk is not None and blk.binds(self):
            raise RuntimeError("close inside an atomic block would wait for itself")
        if self._in_commit():
            raise RuntimeError("close in a commit hook would wait for itself")
        with self._cond:
            already = self._closing
            self._closing = True
            self._cond.notify_all()
        self._thread.join()
        if not already:
            self._store.close()

    @property
    def closed(self) -> bool:
        return self._closing

    # -- the persistence thread --------------------------------------------------

    def _run(self) -> None:
        while True:
            wave = self._next_wave()
            if wave is None:
                return
            if self._commit(wave, leader=False) is not None:
                return

    def _commit(self, wave: Wave, *, leader: bool) -> BaseException | None:
        """Seal, commit and publish ``wave``, then give up the committer role.

        REQUIRES: the calling thread holds the role (rule 12) and ``wave`` is
        the oldest, CLOSING, with no block open.  Returns the failure (the
        database is then poisoned: rule 8), None on success.
        """
        try:
            self._run_pre_hooks(wave)
            with self._cond:
                wave.state = WaveState.SEALED
            started = time.monotonic()
            self._store.commit_wave(wave.number, wave.changes)
            elapsed = time.monotonic() - started
        except BaseException as exc:  # every failure poisons (rule 8)
            self._fail(exc)
            return exc
        self._finish(wave, elapsed, leader=leader)
        return None

    def _next_wave(self) -> Wave | None:
        """Wait until the oldest wave may seal (rules 3, 4); None when done."""
        with self._cond:
            while True:
                if self._poison is not None:
                    return None
                now = time.monotonic()
                if self._chains:
                    self._watch_chains(now)
                newest = self._waves[-1]
                paced_until = self._last_end + self._commit_last
                waited = bool(newest.waiters) and len(self._waves) == 1
                if not newest.empty and (
                    self._closing
                    or (waited and (newest.waiters >= self._expected_waiters or now >= paced_until))
                    or (newest.deadline is not None and now >= newest.deadline)
                    or self._over_cap(newest)
                ):
                    self._close_newest()
                oldest = self._waves[0]
                if self._committer is not None:
                    pass  # a leader commits (rule 12): it notifies when done
                elif oldest.state is WaveState.CLOSING and oldest.open_blocks == 0:
                    self._committer = threading.get_ident()
                    return oldest
                elif self._closing and len(self._waves) == 1 and oldest.open_blocks == 0:
                    self._finish_chains()
                    return None
                timeout = None
                if newest.state is WaveState.OPEN and not newest.empty:
                    wake = [newest.deadline] if newest.deadline is not None else []
                    if waited:
                        wake.append(paced_until)
                    if wake:
                        timeout = max(min(wake) - now, 0.0)
                if self._chains:
                    timeout = _CHAIN_STALL if timeout is None else min(timeout, _CHAIN_STALL)
                delay = self.config.max_delay
                if (
                    timeout is None
                    and delay >= _POLL_MIN
                    and now - self._last_first_write < _POLL_ACTIVE
                ):
                    timeout = delay  # poll: a first write meanwhile needs no wake-up
                self._runner_asleep = timeout is None or timeout > delay
                self._cond.wait(timeout)
                self._runner_asleep = False  # it looks at everything before it waits again

    def _watch_chains(self, now: float) -> None:
        """Drop finished chains of wake-ups; finish those that stalled (rule 11)."""
        for wave, seen in list(self._chains.items()):
            if not wave.wakers:
                del self._chains[wave]
            elif seen is None or seen[0] != wave.woken:
                self._chains[wave] = (wave.woken, now)
            elif now - seen[1] >= _CHAIN_STALL:
                wave.wake_all()
                del self._chains[wave]

    def _finish_chains(self) -> None:
        """Wake every waiter still waiting for a done wave (closing, failure)."""
        for wave in self._chains:
            wave.wake_all()
        self._chains.clear()

    def _run_pre_hooks(self, wave: Wave) -> None:
        if not self._pre_hooks:
            return
        with self._cond:
            self._hook_wave = wave
        try:
            for hook in self._pre_hooks:
                hook()
        finally:
            with self._cond:
                self._hook_wave = None

    def _finish(self, wave: Wave, elapsed: float, *, leader: bool) -> None:
        state = self._store.state()
        hooks = self._post_hooks
        with self._cond:
            assert self._waves[0] is wave
            self._waves.popleft()
            self._view = (tuple(self._waves), state)
            wave.state = WaveState.DONE
            self._last_end = time.monotonic()
            # Those who waited on this wave will likely be back: the next wave
            # seals at once only when they (and those already waiting) are in.
            self._expected_waiters = max(1, wave.waiters + self._waves[0].waiters)
            self._waves_committed += 1
            self._leader_waves += leader
            self._writes_committed += wave.writes
            self._max_writes = max(self._max_writes, wave.writes)
            self._commit_total += elapsed
            self._commit_last = elapsed
            self._commit_max = max(self._commit_max, elapsed)
            # Rule 11: wake one waiter; it wakes the next.  No waker joins a
            # wave that left the queue, so the chain's length is fixed now.
            if wave.wakers:
                self._chains[wave] = None
            if not hooks:
                self._release_role()
            else:
                self._cond.notify_all()  # back-pressure: a wave left the queue
        self._store.published()
        wave.future.set_result(None)
        wave.wake_next()
        if hooks:
            for hook in hooks:
                try:
                    hook(wave.number)
                except Exception:
                    log.exception("post-commit hook %r failed; the wave is durable", hook)
            with self._cond:
                self._release_role()

    def _release_role(self) -> None:
        """REQUIRES: lock held, by the committer.  Let the next committer in (rule 12).

        Nobody needs waking when the queue is down to an empty OPEN wave and
        no chain of wake-ups is watched: the lone writer's case, where it
        would only cost the persistence thread a useless turn.
        """
        self._committer = None
        if (
            len(self._waves) > 1
            or not self._waves[-1].empty
            or self._chains
            or self._closing
            or self._room_waiters
        ):
            self._cond.notify_all()

    def _fail(self, exc: BaseException) -> None:
        log.error("commit failed; the database is poisoned until reopened: %r", exc)
        with self._cond:
            self._poison = exc
            self._committer = None
            failed = list(self._waves)
            for wave in failed:
                wave.state = WaveState.DONE
            self._waves = deque([Wave(self._next_number)])
            self._next_number += 1
            self._view = ((), self._store.state())
            self._cond.notify_all()
        error = CommitFailed(f"commit failed: {exc!r}")
        error.__cause__ = exc
        for wave in failed:
            wave.failure = error
            wave.future.set_exception(error)
            wave.wake_all()
        with self._cond:
            self._finish_chains()


def _check_newer(view: object, seen: object) -> None:
    """A read retried after StaleState must find a newer view (or it would spin)."""
    if view is seen:
        raise IntegrityError("a retired committed state is still the published one")


class AtomicBlock:
    """``with mux.atomic():`` / ``async with mux.atomic():`` -- see rule 3 and rule 7."""

    __slots__ = ("_mux", "_token")

    def __init__(self, mux: Multiplexer) -> None:
        self._mux = mux
        self._token: contextvars.Token[_Block | None] | None = None

    def __enter__(self) -> AtomicBlock:
        self._token = self._mux._enter_block(wait=True)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._mux._exit_block(self._token)

    async def __aenter__(self) -> AtomicBlock:
        # Back-pressure must not block the event loop: wait in a worker thread,
        # then enter here so the block is bound to this task's context.
        if not self._mux._room_available():
            await asyncio.to_thread(self._mux._block_until_room)
        self._token = self._mux._enter_block(wait=False)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._mux._exit_block(self._token)
