"""Continuous replication: committed waves pushed to replicas off the commit path.

Theory of operation (docs/remote.md "Continuous replication"):

1. A post-commit hook of the multiplexer only records the newest committed
   transaction count and wakes the **replication thread**; a local commit
   never waits for a replica.
2. The thread pushes (:func:`persist.remote.push`, which pins one committed
   state) to every replica that is behind.  One push carries every wave
   committed since the last, so waves are pipelined: while a push runs, the
   next waves commit locally.
3. A failing replica is logged (a warning), reported by
   :meth:`Replicator.status`, and retried with exponential backoff; it never
   poisons the local database, and the other replicas go on.
4. :meth:`Replicator.wait` returns once every replica holds a root at least
   as new as the given count (``commit_wait(replicated=True)``).
5. ``Database.close`` commits what is pending, then :meth:`Replicator.drain`
   gives each replica a bounded last push of that final state (the
   ``replica_close_timeout`` of :func:`persist.open`), and a replica left
   behind is logged; then the thread stops.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass

from ..ebs import EncryptedStore
from ..errors import ClosedError, PersistError
from ..kvs import display_location
from ..remote import sync

__all__ = ["ReplicaStatus", "Replicator"]

_log = logging.getLogger("persist.replication")


@dataclass(frozen=True)
class ReplicaStatus:
    """One replica as the replication thread last saw it."""

    target: str
    #: the transaction count the replica is known to hold (-1: none yet)
    replicated: int
    #: the local committed count it should reach
    committed: int
    #: the last push's error (its type and message), None when it succeeded
    error: str | None
    #: consecutive failed pushes
    failures: int


class Replicator:
    """The replication thread of one database (module docstring)."""

    def __init__(
        self,
        ebs: EncryptedStore,
        targets: list[str],
        *,
        backoff: float = 0.05,
        max_backoff: float = 5.0,
        close_timeout: float = 10.0,
    ) -> None:
        self._ebs = ebs
        self._targets = list(targets)
        self._cond = threading.Condition()
        self._wanted = ebs.root.count
        self._done = {t: -1 for t in self._targets}
        self._errors: dict[str, str | None] = dict.fromkeys(self._targets)
        self._failures = dict.fromkeys(self._targets, 0)
        self._retry_at = dict.fromkeys(self._targets, 0.0)
        self._backoff, self._max_backoff = backoff, max_backoff
        #: seconds :meth:`drain` waits at most (``replica_close_timeout`` of persist.open)
        self.close_timeout = close_timeout
        #: when the push that last failed started, per replica (drain tells by it)
        self._failed_started: dict[str, float] = {}
        #: when a drain began (close): a push in flight before it that fails is retried at once
        self._drain_since: float | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="persist:replication", daemon=True)
        self._thread.start()

    def on_commit(self, wave: int) -> None:
        """The post-commit hook: note the new committed state (never blocks on I/O)."""
        with self._cond:
            self._wanted = self._ebs.root.count
            self._cond.notify_all()

    def _behind(self, now: float) -> list[str]:
        return [
            t for t in self._targets if self._done[t] < self._wanted and self._retry_at[t] <= now
        ]

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed:
                    now = time.monotonic()
                    if self._behind(now):
                        break
                    waits = [
                        self._retry_at[t] - now
                        for t in self._targets
                        if self._done[t] < self._wanted
                    ]
                    self._cond.wait(min(waits) if waits else None)
                if self._closed:
                    return
                todo = self._behind(time.monotonic())
            for target in todo:
                self._push(target)

    def _push(self, target: str) -> None:
        started = time.monotonic()
        try:
            result = sync.push(self._ebs, target)
        except ClosedError:
            return
        except (PersistError, OSError) as exc:
            with self._cond:
                self._failures[target] += 1
                self._failed_started[target] = started
                delay = min(self._backoff * 2 ** (self._failures[target] - 1), self._max_backoff)
                if self._drain_since is not None and started < self._drain_since:
                    delay = 0.0  # it was in flight when close began: the last try is still due
                self._retry_at[target] = time.monotonic() + delay
                self._errors[target] = f"{type(exc).__name__}: {exc}"
                self._cond.notify_all()
            _log.warning(
                "replica %s failed (%s); retrying in %.2f s",
                display_location(target),
                type(exc).__name__,
                delay,
            )
            return
        with self._cond:
            self._done[target] = max(self._done[target], result.count)
            self._errors[target] = None
            self._failures[target] = 0
            self._retry_at[target] = 0.0
            self._cond.notify_all()

    def wait(self, count: int, timeout: float | None = None) -> bool:
        """Block until every replica holds transaction ``count`` or newer; False on timeout."""
        with self._cond:
            self._wanted = max(self._wanted, count)
            self._cond.notify_all()
            return (
                self._cond.wait_for(
                    lambda: self._closed or all(d >= count for d in self._done.values()), timeout
                )
                and not self._closed
            )

    def drain(self, count: int) -> list[str]:
        """Give every replica behind ``count`` one more chance, for at most ``close_timeout`` s.

        Returns when each replica holds ``count`` or newer, or has failed a
        push that started after this call (no waiting out a backoff), or the
        time is up; the result names the replicas left behind (shown as
        locations).  Used by ``Database.close`` before the thread stops.
        """
        since = time.monotonic()
        deadline = since + max(0.0, self.close_timeout)
        with self._cond:
            self._wanted = max(self._wanted, count)
            self._drain_since = since
            for t in self._targets:
                self._retry_at[t] = 0.0  # a replica in backoff gets its last try now
            self._cond.notify_all()

            def settled(t: str) -> bool:
                return self._done[t] >= count or self._failed_started.get(t, -math.inf) >= since

            while not self._closed and not all(map(settled, self._targets)):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return [display_location(t) for t in self._targets if self._done[t] < count]

    def status(self) -> list[ReplicaStatus]:
        with self._cond:
            return [
                ReplicaStatus(
                    display_location(t),
                    self._done[t],
                    self._wanted,
                    self._errors[t],
                    self._failures[t],
                )
                for t in self._targets
            ]

    def close(self) -> None:
        """Stop the thread (a push in flight finishes first)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()
