"""Waves: the unit of group commit, and the interface of what they commit into.

A :class:`Wave` is an in-memory overlay of changes, ``table -> key -> value``
where ``None`` means "deleted".  It lives in the multiplexer's queue from its
first write until it is durable.  States, in order::

    OPEN      the newest wave; plain writes and new atomic blocks join it
    CLOSING   a seal was requested: no new block joins, its open blocks finish
    SEALED    no block is open and the pre-commit hooks have run: immutable
    DONE      committed (``future`` resolved) or failed (``future`` raised)
"""

from __future__ import annotations

import enum
import threading
import time
from bisect import bisect_right
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future
from typing import Protocol, TypeAlias

__all__ = [
    "Changes",
    "Columns",
    "CommittedState",
    "StaleState",
    "Wave",
    "WaveState",
    "WaveStore",
    "merge_columns",
    "merge_pending",
]

#: A wave's content: table name -> key -> new value, ``None`` for a delete.
Changes = dict[str, dict[bytes, bytes | None]]
#: A run of entries as two columns: ascending keys and their values, never empty.
Columns: TypeAlias = tuple[Sequence[bytes], Sequence[bytes]]


class WaveState(enum.Enum):
    OPEN = "open"
    CLOSING = "closing"
    SEALED = "sealed"
    DONE = "done"


class Wave:
    """One commit wave.  Mutated only under the multiplexer's lock until SEALED."""

    __slots__ = (
        "_wake_lock",
        "block_threads",
        "bytes",
        "changes",
        "deadline",
        "failure",
        "first_write",
        "future",
        "leader",
        "number",
        "open_blocks",
        "state",
        "waiters",
        "wakers",
        "woken",
        "writes",
    )

    def __init__(self, number: int) -> None:
        self.number = number
        self.changes: Changes = {}
        self.state = WaveState.OPEN
        self.open_blocks = 0
        #: thread ident -> atomic blocks of that thread open in this wave
        self.block_threads: dict[int, int] = {}
        self.waiters = 0
        #: ident of the thread that commits this wave itself (multiplexer rule 12)
        self.leader: int | None = None
        self.writes = 0  # write calls, including overwrites of one key
        self.bytes = 0  # approximate memory held: keys plus values
        self.first_write: float | None = None
        self.deadline: float | None = None
        self.future: Future[None] = Future()  # for asyncio waiters
        #: locks of waiting threads, released one by one when the wave is
        #: done: the baton (see :meth:`wake_next`)
        self.wakers: deque[threading.Lock] = deque()
        self._wake_lock = threading.Lock()
        #: wakers released so far (the persistence thread watches it move)
        self.woken = 0
        #: set when the wave failed, before its wakers are released
        self.failure: BaseException | None = None

    def record(self, table: str, key: bytes, value: bytes | None, max_delay: float) -> None:
        """REQUIRES: the multiplexer's lock held and the wave not SEALED."""
        tab = self.changes.get(table)
        if tab is None:
            tab = self.changes[table] = {}
        tab[key] = value
        self.writes += 1
        self.bytes += len(key) + (len(value) if value is not None else 0)
        if self.first_write is None:
            self.first_write = time.monotonic()
            self.deadline = self.first_write + max_delay

    @property
    def empty(self) -> bool:
        return self.writes == 0

    # -- waking the waiting threads (multiplexer rule 11) --------------------------

    def add_waker(self, waker: threading.Lock) -> None:
        """``waker`` (held by its thread) is released when the wave is done."""
        with self._wake_lock:
            self.wakers.append(waker)

    def wake_next(self) -> None:
        """Release the newest waker not yet released (no-op when none is left).

        The persistence thread wakes one waiter of a done wave, and each woken
        waiter wakes the next one: waiters wake one at a time instead of all
        becoming runnable at once and fighting the persistence thread for the
        GIL while it commits the next wave.  Newest first: the thread that
        blocked last is the warmest to resume (measured: about a third more
        writes/s at T=64 than oldest first); a whole chain takes about a
        millisecond, so the order is not a fairness matter.
        """
        with self._wake_lock:
            if not self.wakers:
                return
            waker = self.wakers.pop()
            self.woken += 1
        waker.release()

    def wake_all(self) -> None:
        """Release every waker not yet released (failure, closing, a stalled chain)."""
        with self._wake_lock:
            wakers, self.wakers = self.wakers, deque()
            self.woken += len(wakers)
        for waker in wakers:
            waker.release()

    def cancel_waker(self, waker: threading.Lock) -> bool:
        """Withdraw ``waker``; False when it was already taken to be released."""
        with self._wake_lock:
            try:
                self.wakers.remove(waker)
            except ValueError:
                return False
            return True

    def lookup(self, table: str, key: bytes) -> tuple[bool, bytes | None]:
        """``(found, value)``: whether this wave changed ``key``, and to what."""
        tab = self.changes.get(table)
        if tab is None or key not in tab:
            return False, None
        return True, tab[key]

    def __repr__(self) -> str:
        return (
            f"<Wave {self.number} {self.state.value} writes={self.writes} "
            f"blocks={self.open_blocks} waiters={self.waiters}>"
        )


class StaleState(Exception):
    """A read met a committed state that was retired meanwhile: read the newer one.

    Raised by a :class:`CommittedState` read only before it returned anything
    (a point read, or a scan or count before its first result); the
    multiplexer then takes its newest view and reads again.  Never reaches
    the application.
    """


class CommittedState(Protocol):
    """One committed state, immutable: every read of it sees that one state.

    Reads may run in any thread, never wait for a commit, and are never broken
    by one: a state keeps what it needs readable while a read is in flight.
    """

    def get(self, table: str, key: bytes) -> bytes | None:
        """The committed value of ``key`` (None: absent).  May raise StaleState."""

    def scan(
        self, table: str, start: bytes | None, stop: bytes | None, reverse: bool
    ) -> Iterator[tuple[bytes, bytes]]:
        """``(key, value)`` pairs with ``start <= key < stop`` in order.  StaleState
        only before the first pair."""

    def columns(self, table: str, start: bytes | None, stop: bytes | None) -> Iterator[Columns]:
        """:meth:`scan` ascending, as runs of two columns (:data:`Columns`), each
        run's keys above the previous run's.  StaleState only when called."""

    def count(self, table: str, pending: list[tuple[bytes, bool]] | None = None) -> int:
        """Entries of ``table`` once ``pending`` is laid over it: ascending keys, each
        True if set, False if deleted (keys the state holds count once).
        StaleState is possible."""


class WaveStore(Protocol):
    """What the multiplexer commits into: the committed, durable state.

    Implementations: the tree-backed store of the db layer, and the plain
    reference store in :mod:`persist.testing.wavestore`.
    """

    def commit_wave(self, number: int, changes: Mapping[str, Mapping[bytes, bytes | None]]) -> None:
        """Make ``changes`` durable as one atomic batch; :meth:`state` then shows them.

        Called only from the committing thread, once per wave, in wave order.
        On an exception nothing of it may be visible through :meth:`state`;
        whether it reached the disk is unknown (the multiplexer then poisons
        the database).
        """

    def state(self) -> CommittedState:
        """The newest committed state."""

    def published(self) -> None:
        """The multiplexer now shows readers the newest :meth:`state` (with the waves
        still pending over it): states it superseded may be retired once the reads
        in flight on them are done."""

    def close(self) -> None:
        """Release the store; called once, after the last commit."""


def merge_pending(
    committed: Iterator[tuple[bytes, bytes]],
    pending: list[tuple[bytes, bytes | None]],
    reverse: bool,
) -> Iterator[tuple[bytes, bytes]]:
    """Merge two sorted streams; ``pending`` wins on equal keys, ``None`` deletes."""
    i = 0
    n = len(pending)

    def before(a: bytes, b: bytes) -> bool:
        return a > b if reverse else a < b

    for key, value in committed:
        while i < n and before(pending[i][0], key):
            pk, pv = pending[i]
            i += 1
            if pv is not None:
                yield pk, pv
        if i < n and pending[i][0] == key:
            pv = pending[i][1]
            i += 1
            if pv is not None:
                yield key, pv
            continue
        yield key, value
    for pk, pv in pending[i:]:
        if pv is not None:
            yield pk, pv


def merge_columns(
    runs: Iterator[Columns], pending: list[tuple[bytes, bytes | None]]
) -> Iterator[Columns]:
    """:func:`merge_pending` for ascending runs of columns: ``pending`` (sorted,
    ``None`` deletes) laid over ``runs``.  A run that no pending key falls in or
    before passes through as it is; only the runs the pending keys reach are
    merged entry by entry."""
    keys_pending = [k for k, _ in pending]
    i, n = 0, len(pending)
    for keys, values in runs:
        last = keys[-1]
        if i == n or keys_pending[i] > last:
            yield keys, values
            continue
        j = bisect_right(keys_pending, last, i)
        merged = list(merge_pending(zip(keys, values, strict=True), pending[i:j], False))
        i = j
        if merged:
            mk, mv = zip(*merged, strict=True)
            yield mk, mv
    rest = [(k, v) for k, v in pending[i:] if v is not None]
    if rest:
        mk, mv = zip(*rest, strict=True)
        yield mk, mv
